//! Stack slots kept in registers: in a program whose frame pointer `r10` is
//! only ever the base of loads and stores at constant offsets, no pointer
//! into the stack exists, so a slot that is always accessed whole (the same
//! offset and size every time, and no other access touching its bytes) can
//! live in a native register instead of memory. Its register holds the
//! slot's bytes zero-extended, as a load of it would return them.
//!
//! Which registers: the native homes of those of `r6`-`r9` the program
//! never writes. They are callee-saved, so helper calls keep them, and
//! (the verifier refuses a read of a register before a write) the program
//! never reads them either. Programs with bpf-to-bpf calls keep their
//! stack in memory (each call has a frame of its own).
//!
//! What this relies on from the verifier is what the compiled code already
//! relies on: no stack byte is read before it is written (so the register
//! is written by a store of the slot before any load of it), and accesses
//! stay inside the frame. Nothing else can see the stack: helpers get only
//! the pointers a program passes them, and `r10` never becomes a value here.

use alloc::vec::Vec;

use crate::interp::exe::Op;

/// A stack slot kept in a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    /// Offset from `r10`.
    pub off: i16,
    /// Bytes.
    pub size: u8,
    /// The native register.
    pub reg: u8,
}

/// How an operation touches the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Load,
    Store,
    /// Atomics and sign-extending loads: their bytes stay in memory.
    Other,
}

/// An access through `r10`: offset, size and kind.
pub(super) fn stack_access(op: &Op) -> Option<(i16, u8, Kind)> {
    use Op::*;
    let (base, off, size, kind) = match *op {
        LdxB(_, b, o) => (b, o, 1, Kind::Load),
        LdxH(_, b, o) => (b, o, 2, Kind::Load),
        LdxW(_, b, o) => (b, o, 4, Kind::Load),
        LdxDW(_, b, o) => (b, o, 8, Kind::Load),
        StxB(b, _, o) | StB(b, o, _) => (b, o, 1, Kind::Store),
        StxH(b, _, o) | StH(b, o, _) => (b, o, 2, Kind::Store),
        StxW(b, _, o) | StW(b, o, _) => (b, o, 4, Kind::Store),
        StxDW(b, _, o) | StDW(b, o, _) => (b, o, 8, Kind::Store),
        LdxSx(size, _, b, o) | Atomic(_, _, size, b, _, o) => {
            (b, o, size.bytes() as u8, Kind::Other)
        }
        _ => return None,
    };
    (base == 10).then_some((off, size, kind))
}

/// Whether `op` uses `r10` other than as the base of a memory access (as a
/// value that could become a pointer, or as a destination).
fn r10_as_value(op: &Op) -> bool {
    use Op::*;
    match *op {
        LdxB(d, ..) | LdxH(d, ..) | LdxW(d, ..) | LdxDW(d, ..) | LdxSx(_, d, ..) => d == 10,
        StxB(_, s, _) | StxH(_, s, _) | StxW(_, s, _) | StxDW(_, s, _) => s == 10,
        Atomic(_, _, _, _, s, _) => s == 10,
        StB(..) | StH(..) | StW(..) | StDW(..) => false,
        Ja(_) | Call(_) | CallLocal(_) | Exit | Nop | Tail | FellOff => false,
        CallX(r) => r == 10,
        Jmp64I(_, d, _, _) | Jmp32I(_, d, _, _) => d == 10,
        JEq64I(d, _, _) | JNe64I(d, _, _) | JGt64I(d, _, _) | JLt64I(d, _, _) => d == 10,
        Jmp64R(_, d, s, _) | Jmp32R(_, d, s, _) => d == 10 || s == 10,
        JEq64R(d, s, _) | JNe64R(d, s, _) | JGt64R(d, s, _) | JLt64R(d, s, _) => d == 10 || s == 10,
        MovSx(d, s, _) => d == 10 || s == 10,
        Neg64(d) | Neg32(d) | Le16(d) | Le32(d) | Swap16(d) | Swap32(d) | Swap64(d) => d == 10,
        LdImm64(d, _) => d == 10,
        Add64I(d, _)
        | Sub64I(d, _)
        | Mul64I(d, _)
        | Div64I(d, _)
        | SDiv64I(d, _)
        | Or64I(d, _)
        | And64I(d, _)
        | Lsh64I(d, _)
        | Rsh64I(d, _)
        | Mod64I(d, _)
        | SMod64I(d, _)
        | Xor64I(d, _)
        | Mov64I(d, _)
        | Arsh64I(d, _) => d == 10,
        Add32I(d, _)
        | Sub32I(d, _)
        | Mul32I(d, _)
        | Div32I(d, _)
        | SDiv32I(d, _)
        | Or32I(d, _)
        | And32I(d, _)
        | Lsh32I(d, _)
        | Rsh32I(d, _)
        | Mod32I(d, _)
        | SMod32I(d, _)
        | Xor32I(d, _)
        | Mov32I(d, _)
        | Arsh32I(d, _) => d == 10,
        Add64R(d, s)
        | Sub64R(d, s)
        | Mul64R(d, s)
        | Div64R(d, s)
        | SDiv64R(d, s)
        | Or64R(d, s)
        | And64R(d, s)
        | Lsh64R(d, s)
        | Rsh64R(d, s)
        | Mod64R(d, s)
        | SMod64R(d, s)
        | Xor64R(d, s)
        | Mov64R(d, s)
        | Arsh64R(d, s) => d == 10 || s == 10,
        Add32R(d, s)
        | Sub32R(d, s)
        | Mul32R(d, s)
        | Div32R(d, s)
        | SDiv32R(d, s)
        | Or32R(d, s)
        | And32R(d, s)
        | Lsh32R(d, s)
        | Rsh32R(d, s)
        | Mod32R(d, s)
        | SMod32R(d, s)
        | Xor32R(d, s)
        | Mov32R(d, s)
        | Arsh32R(d, s) => d == 10 || s == 10,
    }
}

/// The bytes `size` bytes at `off` cover.
pub(super) fn bytes(off: i16, size: u8) -> core::ops::Range<i32> {
    i32::from(off)..i32::from(off) + i32::from(size)
}

/// The slots of `ops` to keep in registers, given the native registers
/// free for it (see the module documentation): the most accessed first.
pub(super) fn plan(ops: &[Op], free: &[u8]) -> Vec<Slot> {
    if free.is_empty()
        || ops
            .iter()
            .any(|op| matches!(op, Op::CallLocal(_)) || r10_as_value(op))
    {
        return Vec::new();
    }
    let accesses: Vec<(i16, u8, Kind)> = ops.iter().filter_map(stack_access).collect();
    // Candidates: (offset, size) of plain accesses, with their counts.
    let mut candidates: Vec<(i16, u8, usize)> = Vec::new();
    for &(off, size, kind) in &accesses {
        if kind == Kind::Other {
            continue;
        }
        match candidates.iter_mut().find(|c| c.0 == off && c.1 == size) {
            Some(c) => c.2 += 1,
            None => candidates.push((off, size, 1)),
        }
    }
    // Every other access that touches a candidate's bytes must be a store
    // of all of them (it then writes the register too: a slot zeroed by a
    // wider store, as compilers initialise structures).
    candidates.retain(|&(off, size, _)| {
        let mine = bytes(off, size);
        accesses.iter().all(|&(o, s, kind)| {
            let theirs = bytes(o, s);
            let overlaps = theirs.start < mine.end && mine.start < theirs.end;
            let exact = o == off && s == size && kind != Kind::Other;
            let covers =
                kind == Kind::Store && theirs.start <= mine.start && mine.end <= theirs.end;
            !overlaps || exact || covers
        })
    });
    candidates.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    candidates
        .iter()
        .zip(free)
        .map(|(&(off, size, _), &reg)| Slot { off, size, reg })
        .collect()
}
