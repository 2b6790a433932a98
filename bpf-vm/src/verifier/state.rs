//! Abstract machine state: registers, stack slots, call frames and acquired
//! references, plus the inclusion test used for state pruning.

use super::scalar::Scalar;
use crate::insn::NUM_REGS;
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// What a pointer points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PtrKind {
    /// The program's context.
    Ctx,
    /// The stack of call frame `frame` (0 = the program's own frame).
    Stack {
        /// Frame number.
        frame: u8,
    },
    /// A map itself (only helpers accept it; no arithmetic, no dereference).
    MapPtr {
        /// Map index in [`super::Env::maps`].
        map: u32,
    },
    /// A value of a map.
    MapValue {
        /// Map index.
        map: u32,
    },
    /// Memory returned by an allocating helper (ring buffer record).
    Mem {
        /// Size in bytes.
        size: u32,
        /// Reference that must be released (0 if none).
        ref_id: u32,
    },
}

impl PtrKind {
    /// Linux-style type name for messages.
    pub fn name(&self, nullable: bool) -> &'static str {
        match (self, nullable) {
            (PtrKind::Ctx, _) => "ctx",
            (PtrKind::Stack { .. }, _) => "fp",
            (PtrKind::MapPtr { .. }, _) => "map_ptr",
            (PtrKind::MapValue { .. }, false) => "map_value",
            (PtrKind::MapValue { .. }, true) => "map_value_or_null",
            (PtrKind::Mem { .. }, false) => "mem",
            (PtrKind::Mem { .. }, true) => "mem_or_null",
        }
    }
}

/// The type of a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegType {
    /// Never written on this path; reading it is an error.
    NotInit,
    /// A number.
    Scalar,
    /// A pointer; `nullable` means it may be NULL and must be checked first.
    Ptr {
        /// Region.
        kind: PtrKind,
        /// May be NULL.
        nullable: bool,
    },
}

/// One register (or a spilled copy of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reg {
    /// Type.
    pub ty: RegType,
    /// Fixed part of a pointer's offset.
    pub off: i32,
    /// Identity shared by copies of a maybe-NULL pointer (0: none).
    pub id: u32,
    /// The value of a scalar, or the variable part of a pointer's offset.
    pub val: Scalar,
}

impl Reg {
    /// An uninitialised register.
    pub const NOT_INIT: Reg = Reg {
        ty: RegType::NotInit,
        off: 0,
        id: 0,
        val: Scalar::constant(0),
    };

    /// A scalar with the given value.
    pub fn scalar(val: Scalar) -> Reg {
        Reg {
            ty: RegType::Scalar,
            off: 0,
            id: 0,
            val,
        }
    }

    /// An unknown scalar.
    pub fn unknown() -> Reg {
        Reg::scalar(Scalar::unknown())
    }

    /// A pointer with offset 0.
    pub fn ptr(kind: PtrKind) -> Reg {
        Reg {
            ty: RegType::Ptr {
                kind,
                nullable: false,
            },
            off: 0,
            id: 0,
            val: Scalar::constant(0),
        }
    }

    /// True for scalars.
    pub fn is_scalar(&self) -> bool {
        self.ty == RegType::Scalar
    }

    /// True for pointers of any kind.
    pub fn is_ptr(&self) -> bool {
        matches!(self.ty, RegType::Ptr { .. })
    }

    /// True when initialised.
    pub fn is_init(&self) -> bool {
        self.ty != RegType::NotInit
    }

    /// The pointer kind and nullability, if a pointer.
    pub fn ptr_kind(&self) -> Option<(PtrKind, bool)> {
        match self.ty {
            RegType::Ptr { kind, nullable } => Some((kind, nullable)),
            _ => None,
        }
    }

    /// Linux-style type name.
    pub fn type_name(&self) -> &'static str {
        match self.ty {
            RegType::NotInit => "uninit",
            RegType::Scalar => "scalar",
            RegType::Ptr { kind, nullable } => kind.name(nullable),
        }
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ty {
            RegType::NotInit => write!(f, "uninit"),
            RegType::Scalar => {
                if let Some(c) = self.val.as_const() {
                    write!(f, "{}", c as i64)
                } else {
                    write!(f, "scalar{}", self.val)
                }
            }
            RegType::Ptr { kind, nullable } => {
                if let PtrKind::Stack { frame } = kind {
                    if frame != 0 {
                        write!(f, "fp[{frame}]")?;
                    } else {
                        write!(f, "fp")?;
                    }
                    write!(f, "{}", self.off)?;
                    if self.val.as_const() != Some(0) {
                        write!(f, "+var{}", self.val)?;
                    }
                    return Ok(());
                }
                write!(f, "{}(", kind.name(nullable))?;
                let mut sep = "";
                if self.id != 0 {
                    write!(f, "id={}", self.id)?;
                    sep = ",";
                }
                match kind {
                    PtrKind::MapPtr { map } | PtrKind::MapValue { map } => {
                        write!(f, "{sep}map={map}")?;
                        sep = ",";
                    }
                    PtrKind::Mem { size, ref_id } => {
                        write!(f, "{sep}sz={size}")?;
                        if ref_id != 0 {
                            write!(f, ",ref_obj_id={ref_id}")?;
                        }
                        sep = ",";
                    }
                    _ => {}
                }
                if self.off != 0 {
                    write!(f, "{sep}off={}", self.off)?;
                    sep = ",";
                }
                if self.val.as_const() != Some(0) {
                    write!(f, "{sep}var_off={}", self.val)?;
                }
                write!(f, ")")
            }
        }
    }
}

/// What one stack byte holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteState {
    /// Never written: reading is an error.
    Invalid,
    /// Some initialised data.
    Misc,
    /// Known zero.
    Zero,
    /// Part of a spilled 8-byte register (see [`Slot::spill`]).
    Spill,
}

/// An 8-byte stack slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// State of each byte, lowest address first.
    pub bytes: [ByteState; 8],
    /// The spilled register when all bytes are [`ByteState::Spill`].
    pub spill: Reg,
    /// `(n, value)`: the slot's first `n` bytes (`n` < 8) hold `value`,
    /// stored there by one narrow store of a known constant at the slot's
    /// start (Linux's narrow spill of a scalar). Only constant map keys use
    /// it. Any later write to the slot clears it ([`Frame::byte_mut`]).
    pub narrow_const: Option<(u8, u64)>,
}

impl Slot {
    /// A slot never written.
    pub const INVALID: Slot = Slot {
        bytes: [ByteState::Invalid; 8],
        spill: Reg::NOT_INIT,
        narrow_const: None,
    };

    /// True when the slot holds a spilled register.
    pub fn is_spill(&self) -> bool {
        self.bytes[0] == ByteState::Spill
    }

    /// True when the slot holds a spilled pointer.
    pub fn is_ptr_spill(&self) -> bool {
        self.is_spill() && self.spill.is_ptr()
    }

    fn letters(&self) -> [u8; 8] {
        let mut out = [b'?'; 8];
        for (i, b) in self.bytes.iter().enumerate() {
            out[7 - i] = match b {
                ByteState::Invalid => b'?',
                ByteState::Misc => b'm',
                ByteState::Zero => b'0',
                ByteState::Spill => b'r',
            };
        }
        out
    }
}

/// One call frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// r0..=r10.
    pub regs: [Reg; NUM_REGS],
    /// Slot `i` covers bytes `[-8 (i + 1), -8 i)` from the frame pointer.
    pub stack: Vec<Slot>,
    /// Index of the `call` that created the frame (unused for frame 0).
    pub callsite: usize,
    /// Subprogram this frame runs.
    pub subprog: usize,
}

impl Frame {
    /// A fresh frame whose r10 points at the top of stack frame `frame`.
    pub fn new(frame: u8, callsite: usize, subprog: usize) -> Frame {
        let mut regs = [Reg::NOT_INIT; NUM_REGS];
        regs[10] = Reg::ptr(PtrKind::Stack { frame });
        Frame {
            regs,
            stack: Vec::new(),
            callsite,
            subprog,
        }
    }

    /// The slot and byte index of stack byte `off` (`-512..0`), growing the
    /// stack, for a write: the slot's narrow constant, if any, is forgotten
    /// (the one store that records it does so after this).
    pub fn byte_mut(&mut self, off: i64) -> (&mut Slot, usize) {
        let (s, b) = slot_of(off);
        if self.stack.len() <= s {
            self.stack.resize(s + 1, Slot::INVALID);
        }
        self.stack[s].narrow_const = None;
        (&mut self.stack[s], b)
    }

    /// The state of stack byte `off` (`-512..0`).
    pub fn byte(&self, off: i64) -> (Slot, usize) {
        let (s, b) = slot_of(off);
        (self.stack.get(s).copied().unwrap_or(Slot::INVALID), b)
    }
}

/// Slot index and byte-in-slot of a (negative) frame offset.
pub fn slot_of(off: i64) -> (usize, usize) {
    let s = ((-off - 1) / 8) as usize;
    let b = (off + 8 * (s as i64 + 1)) as usize;
    (s, b)
}

/// A reference a helper handed out and the program must release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RefState {
    /// Reference id (the `ref_id` of the pointer).
    pub id: u32,
    /// Instruction that acquired it.
    pub insn: usize,
}

/// The whole abstract state of one path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Call frames, outermost first.
    pub frames: Vec<Frame>,
    /// Unreleased references.
    pub refs: Vec<RefState>,
    /// Next id to hand out (not part of the state's meaning).
    pub next_id: u32,
}

impl State {
    /// The innermost frame.
    pub fn cur(&self) -> &Frame {
        // A state always has at least one frame (checked where frames are popped).
        &self.frames[self.frames.len() - 1]
    }

    /// The innermost frame, mutably.
    pub fn cur_mut(&mut self) -> &mut Frame {
        let n = self.frames.len() - 1;
        &mut self.frames[n]
    }

    /// Heap bytes this state owns (its frames, their stacks and its
    /// references), which the verifier charges against
    /// [`Config::max_state_bytes`](super::Config::max_state_bytes).
    pub fn heap_bytes(&self) -> usize {
        let stacks: usize = self
            .frames
            .iter()
            .map(|f| f.stack.capacity() * core::mem::size_of::<Slot>())
            .sum();
        self.frames.capacity() * core::mem::size_of::<Frame>()
            + stacks
            + self.refs.capacity() * core::mem::size_of::<RefState>()
    }

    /// A fresh id for a new maybe-NULL pointer or reference.
    pub fn new_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Applies `f` to every register and spilled register of every frame.
    pub fn for_each_reg(&mut self, mut f: impl FnMut(&mut Reg)) {
        for fr in &mut self.frames {
            for r in &mut fr.regs {
                f(r);
            }
            for s in &mut fr.stack {
                if s.is_spill() {
                    f(&mut s.spill);
                }
            }
        }
    }

    /// Linux-like dump of the innermost frame: initialised registers, then
    /// non-empty stack slots.
    pub fn dump(&self, out: &mut alloc::string::String) {
        let fr = self.cur();
        let mut first = true;
        if self.frames.len() > 1 {
            let _ = write!(out, "frame{}: ", self.frames.len() - 1);
        }
        for (i, r) in fr.regs.iter().enumerate() {
            if r.is_init() {
                let _ = write!(out, "{}R{i}={r}", if first { "" } else { " " });
                first = false;
            }
        }
        for (i, s) in fr.stack.iter().enumerate() {
            if *s == Slot::INVALID {
                continue;
            }
            let off = -8 * (i as i64 + 1);
            if s.is_spill() {
                let _ = write!(out, " fp{off}={}", s.spill);
            } else {
                let l = s.letters();
                let _ = write!(out, " fp{off}={}", core::str::from_utf8(&l).unwrap_or("?"));
            }
        }
    }
}

/// Consistent renaming of ids between an old and a new state.
#[derive(Default)]
pub struct IdMap {
    pairs: Vec<(u32, u32)>,
}

impl IdMap {
    /// True when `old` and `cur` can be the same identity.
    pub fn check(&mut self, old: u32, cur: u32) -> bool {
        if old == 0 && cur == 0 {
            return true;
        }
        if old == 0 || cur == 0 {
            return false;
        }
        for &(o, c) in &self.pairs {
            if o == old || c == cur {
                return o == old && c == cur;
            }
        }
        self.pairs.push((old, cur));
        true
    }
}

/// True when every concrete register value `cur` stands for is one `old`
/// stands for, with ids renamed consistently. With `precise` false, scalar
/// values are not compared (the explored paths never depended on them).
pub fn reg_includes(old: &Reg, cur: &Reg, ids: &mut IdMap, precise: bool) -> bool {
    match old.ty {
        RegType::NotInit => true,
        RegType::Scalar if !precise => cur.ty == RegType::Scalar,
        RegType::Scalar => {
            cur.ty == RegType::Scalar
                && old.val.includes(&cur.val)
                && (old.id == 0 || ids.check(old.id, cur.id))
        }
        RegType::Ptr { kind, nullable } => {
            let RegType::Ptr {
                kind: ck,
                nullable: cn,
            } = cur.ty
            else {
                return false;
            };
            let kinds_match = match (kind, ck) {
                (
                    PtrKind::Mem { size, ref_id },
                    PtrKind::Mem {
                        size: cs,
                        ref_id: cr,
                    },
                ) => size == cs && ids.check(ref_id, cr),
                _ => kind == ck,
            };
            kinds_match
                && nullable == cn
                && old.off == cur.off
                && old.val.includes(&cur.val)
                && ids.check(old.id, cur.id)
        }
    }
}

/// True when `cur`'s stack is included in `old`'s.
fn stack_includes(old: &Frame, cur: &Frame, ids: &mut IdMap, precise: bool) -> bool {
    for (i, os) in old.stack.iter().enumerate() {
        let cs = cur.stack.get(i).copied().unwrap_or(Slot::INVALID);
        // A narrow constant the explored paths relied on (a constant map
        // key) must be there, the same, in the new state.
        if precise && os.narrow_const.is_some() && os.narrow_const != cs.narrow_const {
            return false;
        }
        if os.is_spill() {
            if cs.is_spill() {
                if !reg_includes(&os.spill, &cs.spill, ids, precise) {
                    return false;
                }
                continue;
            }
            // An unknown spilled scalar reads like initialised bytes.
            let any_scalar =
                os.spill.is_scalar() && (!precise || os.spill.val == Scalar::unknown());
            if !(any_scalar
                && cs
                    .bytes
                    .iter()
                    .all(|b| matches!(b, ByteState::Misc | ByteState::Zero)))
            {
                return false;
            }
            continue;
        }
        for b in 0..8 {
            let ok = match os.bytes[b] {
                ByteState::Invalid => true,
                ByteState::Misc => match cs.bytes[b] {
                    ByteState::Misc | ByteState::Zero => true,
                    ByteState::Spill => cs.spill.is_scalar(),
                    ByteState::Invalid => false,
                },
                ByteState::Zero if !precise => match cs.bytes[b] {
                    ByteState::Misc | ByteState::Zero => true,
                    ByteState::Spill => cs.spill.is_scalar(),
                    ByteState::Invalid => false,
                },
                ByteState::Zero => {
                    cs.bytes[b] == ByteState::Zero
                        || (cs.is_spill()
                            && cs.spill.is_scalar()
                            && cs.spill.val.as_const() == Some(0))
                }
                ByteState::Spill => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

/// True when `old` includes `cur`: every register live at the frame's
/// current instruction (`live[frame]`, bit `r` for register r), every
/// stack slot and every reference. `precise`: compare scalar values too.
pub fn state_includes(old: &State, cur: &State, live: &[u16], precise: bool) -> bool {
    if old.frames.len() != cur.frames.len() || old.refs.len() != cur.refs.len() {
        return false;
    }
    let mut ids = IdMap::default();
    for (fi, (of, cf)) in old.frames.iter().zip(&cur.frames).enumerate() {
        if of.callsite != cf.callsite || of.subprog != cf.subprog {
            return false;
        }
        let mask = live.get(fi).copied().unwrap_or(u16::MAX);
        for r in 0..NUM_REGS {
            if mask & (1 << r) != 0 && !reg_includes(&of.regs[r], &cf.regs[r], &mut ids, precise) {
                return false;
            }
        }
        if !stack_includes(of, cf, &mut ids, precise) {
            return false;
        }
    }
    // References: same set up to renaming, in acquisition order.
    old.refs
        .iter()
        .zip(&cur.refs)
        .all(|(o, c)| ids.check(o.id, c.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(r: Reg) -> State {
        let mut f = Frame::new(0, 0, 0);
        f.regs[1] = r;
        State {
            frames: alloc::vec![f],
            refs: Vec::new(),
            next_id: 0,
        }
    }

    #[test]
    fn inclusion_of_registers() {
        let all = [u16::MAX];
        let wide = state_with(Reg::scalar(Scalar::urange(0, 100)));
        let narrow = state_with(Reg::scalar(Scalar::urange(10, 20)));
        assert!(state_includes(&wide, &narrow, &all, true));
        assert!(!state_includes(&narrow, &wide, &all, true));
        // Imprecise: scalars compare by type only.
        assert!(state_includes(&narrow, &wide, &all, false));
        // A dead register is not compared.
        assert!(state_includes(&narrow, &wide, &[!(1 << 1)], true));
        // Uninit in the old state accepts anything; a pointer never matches a scalar.
        let uninit = state_with(Reg::NOT_INIT);
        let ctx = state_with(Reg::ptr(PtrKind::Ctx));
        assert!(state_includes(&uninit, &ctx, &all, true));
        assert!(!state_includes(&wide, &ctx, &all, false));
        let mut off = Reg::ptr(PtrKind::Ctx);
        off.off = 8;
        assert!(!state_includes(&ctx, &state_with(off), &all, true));
    }

    #[test]
    fn ids_must_rename_consistently() {
        let mut ids = IdMap::default();
        assert!(ids.check(3, 7));
        assert!(ids.check(3, 7));
        assert!(!ids.check(3, 8));
        assert!(!ids.check(4, 7));
        assert!(!ids.check(0, 7));
    }

    #[test]
    fn stack_slots() {
        assert_eq!(slot_of(-1), (0, 7));
        assert_eq!(slot_of(-8), (0, 0));
        assert_eq!(slot_of(-9), (1, 7));
        assert_eq!(slot_of(-512), (63, 0));
        let all = [u16::MAX];
        let mut old = state_with(Reg::NOT_INIT);
        let mut cur = old.clone();
        let (s, b) = old.frames[0].byte_mut(-8);
        s.bytes[b] = ByteState::Misc;
        // cur's byte is uninitialised: old (initialised) does not include it.
        assert!(!state_includes(&old, &cur, &all, true));
        let (s, b) = cur.frames[0].byte_mut(-8);
        s.bytes[b] = ByteState::Zero;
        assert!(state_includes(&old, &cur, &all, true));
        let mut dump = alloc::string::String::new();
        cur.dump(&mut dump);
        assert_eq!(dump, "R10=fp0 fp-8=???????0");
    }
}
