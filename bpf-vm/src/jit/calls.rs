//! What the JIT can know about bpf-to-bpf calls before running them: how
//! deep they can nest and which callee-saved registers (`r6`-`r9`) each
//! callee may write.
//!
//! Both are read off the code itself, not taken from the verifier: a
//! function is everything reachable from its entry through jumps and
//! fall-through (a local call continues after itself), so even a program
//! whose jumps leave their function gets a superset of what it writes.

use alloc::vec;
use alloc::vec::Vec;

use crate::interp::exe::Op;
use crate::interp::MAX_CALL_FRAMES;

/// Above this many distinct call targets the analysis is skipped (it is
/// quadratic in the worst case) and every call checks its depth and saves
/// all four registers.
const MAX_FUNCTIONS: usize = 64;

/// The outcome of [`analyse`].
pub(super) struct CallPlan {
    /// No chain of calls can go past [`MAX_CALL_FRAMES`] frames (the call
    /// graph is acyclic and shallow enough), so the run-time depth check
    /// can never fire and is left out.
    pub bounded: bool,
    /// Per slot that is a call target: the BPF registers among `r6`-`r9`
    /// (bit `r`) the function there writes. Its own calls restore what
    /// their callees write, so only its own code counts.
    pub writes: Vec<u16>,
}

/// BPF registers `r6`-`r9`.
pub(super) const CALLEE_SAVED: u16 = 0b11_1100_0000;

pub(super) fn analyse(ops: &[Op]) -> CallPlan {
    let n = ops.len();
    let mut targets: Vec<usize> = ops
        .iter()
        .filter_map(|op| match *op {
            Op::CallLocal(t) => Some(t as usize),
            _ => None,
        })
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let mut writes = vec![CALLEE_SAVED; n];
    if targets.len() > MAX_FUNCTIONS {
        return CallPlan {
            bounded: false,
            writes,
        };
    }
    // Function i: entry 0 (the program) or targets[i - 1].
    let entries: Vec<usize> = core::iter::once(0).chain(targets.iter().copied()).collect();
    let mut callees: Vec<Vec<usize>> = Vec::with_capacity(entries.len());
    let mut seen = vec![false; n];
    for &entry in &entries {
        seen.iter_mut().for_each(|s| *s = false);
        let mut work = vec![entry];
        let mut mask = 0u16;
        let mut calls = Vec::new();
        while let Some(pc) = work.pop() {
            if pc >= n || seen[pc] {
                continue;
            }
            seen[pc] = true;
            let op = &ops[pc];
            mask |= written(op);
            match *op {
                Op::Ja(t) => work.push(t as usize),
                Op::Exit | Op::FellOff => {}
                Op::CallLocal(t) => {
                    let callee = targets.binary_search(&(t as usize)).map_or(0, |i| i + 1);
                    calls.push(callee);
                    work.push(pc + 1);
                }
                _ => {
                    if let Some(t) = op.cond_jump_target() {
                        work.push(t);
                    }
                    work.push(pc + 1);
                }
            }
        }
        writes[entry] = mask & CALLEE_SAVED;
        calls.sort_unstable();
        calls.dedup();
        callees.push(calls);
    }
    // Longest chain of frames from the program, or None on a cycle.
    fn depth(
        f: usize,
        callees: &[Vec<usize>],
        memo: &mut [Option<usize>],
        on_path: &mut [bool],
    ) -> Option<usize> {
        if on_path[f] {
            return None;
        }
        if let Some(d) = memo[f] {
            return Some(d);
        }
        on_path[f] = true;
        let mut d = 1;
        for &c in &callees[f] {
            d = d.max(1 + depth(c, callees, memo, on_path)?);
        }
        on_path[f] = false;
        memo[f] = Some(d);
        Some(d)
    }
    let mut memo = vec![None; entries.len()];
    let mut on_path = vec![false; entries.len()];
    let bounded = depth(0, &callees, &mut memo, &mut on_path).is_some_and(|d| d <= MAX_CALL_FRAMES);
    CallPlan { bounded, writes }
}

/// The registers `op` writes (bit `r`), as far as `r6`-`r10` matter: helper
/// calls write `r0`-`r5` only, and a local call's callee is accounted at
/// its own call site.
pub(super) fn written(op: &Op) -> u16 {
    use Op::*;
    let reg = match *op {
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
        | Arsh64I(d, _) => d,
        Add64R(d, _)
        | Sub64R(d, _)
        | Mul64R(d, _)
        | Div64R(d, _)
        | SDiv64R(d, _)
        | Or64R(d, _)
        | And64R(d, _)
        | Lsh64R(d, _)
        | Rsh64R(d, _)
        | Mod64R(d, _)
        | SMod64R(d, _)
        | Xor64R(d, _)
        | Mov64R(d, _)
        | Arsh64R(d, _) => d,
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
        | Arsh32I(d, _) => d,
        Add32R(d, _)
        | Sub32R(d, _)
        | Mul32R(d, _)
        | Div32R(d, _)
        | SDiv32R(d, _)
        | Or32R(d, _)
        | And32R(d, _)
        | Lsh32R(d, _)
        | Rsh32R(d, _)
        | Mod32R(d, _)
        | SMod32R(d, _)
        | Xor32R(d, _)
        | Mov32R(d, _)
        | Arsh32R(d, _) => d,
        Neg64(d)
        | Neg32(d)
        | MovSx(d, _, _)
        | Le16(d)
        | Le32(d)
        | Swap16(d)
        | Swap32(d)
        | Swap64(d)
        | LdImm64(d, _) => d,
        LdxB(d, _, _) | LdxH(d, _, _) | LdxW(d, _, _) | LdxDW(d, _, _) | LdxSx(_, d, _, _) => d,
        Atomic(crate::insn::AtomicOp::CmpXchg, ..) => 0,
        Atomic(crate::insn::AtomicOp::Xchg, _, _, _, s, _) | Atomic(_, true, _, _, s, _) => s,
        _ => return 0,
    };
    1u16.checked_shl(u32::from(reg)).unwrap_or(u16::MAX)
}
