//! The control-flow pass that runs before abstract interpretation: jump
//! targets, subprograms, reachability, call graph depth, prune points and
//! register liveness.

use super::error::Rule;
use super::platform::HelperTable;
use crate::insn::{Insn, Operand};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Maximum number of nested frames (the program's own included), as in Linux.
pub const MAX_CALL_FRAMES: usize = 8;

/// A control-flow failure: instruction, rule, message.
pub type CfgError = (usize, Rule, String);

/// Facts about the program's control flow.
#[derive(Debug)]
pub struct Cfg {
    /// First instruction of each subprogram, ascending (0 first).
    pub subprogs: Vec<usize>,
    /// Subprogram of each instruction.
    pub subprog_of: Vec<u32>,
    /// Where states are stored and compared (jump targets, after branches and calls).
    pub prune_point: Vec<bool>,
    /// Registers live before each instruction (bit r).
    pub live_in: Vec<u16>,
}

fn bit(r: u8) -> u16 {
    1 << r
}

const ARGS: u16 = 0b11_1110; // r1..r5
const CALLER_SAVED: u16 = 0b11_1111; // r0..r5

/// Registers an instruction reads and writes.
fn uses_defs(insn: &Insn, helpers: &HelperTable) -> (u16, u16) {
    let op = |o: &Operand| match o {
        Operand::Reg(r) => bit(*r),
        Operand::Imm(_) => 0,
    };
    match insn {
        Insn::Alu {
            op: alu_op,
            dst,
            src,
            ..
        } => {
            let u = if *alu_op == crate::insn::AluOp::Mov {
                0
            } else {
                bit(*dst)
            };
            (u | op(src), bit(*dst))
        }
        Insn::Neg { dst, .. } | Insn::Endian { dst, .. } => (bit(*dst), bit(*dst)),
        Insn::MovSx { dst, src, .. } => (bit(*src), bit(*dst)),
        Insn::Ja { .. } | Insn::LdImm64Tail => (0, 0),
        Insn::Jmp { dst, src, .. } => (bit(*dst) | op(src), 0),
        Insn::Call { id } => {
            let n = helpers.get(*id).map_or(5, |p| p.args.len().min(5));
            (((1u16 << n) - 1) << 1, CALLER_SAVED)
        }
        Insn::CallLocal { .. } => (ARGS, CALLER_SAVED),
        Insn::CallX { reg } => (ARGS | bit(*reg), CALLER_SAVED),
        Insn::Exit => (bit(0), 0),
        Insn::Load { dst, src, .. } | Insn::LoadSx { dst, src, .. } => (bit(*src), bit(*dst)),
        Insn::Store { dst, src, .. } => (bit(*dst) | bit(*src), 0),
        Insn::StoreImm { dst, .. } => (bit(*dst), 0),
        Insn::Atomic {
            op,
            fetch,
            dst,
            src,
            ..
        } => {
            if *op == crate::insn::AtomicOp::CmpXchg {
                (bit(*dst) | bit(*src) | bit(0), bit(0))
            } else if *fetch {
                (bit(*dst) | bit(*src), bit(*src))
            } else {
                (bit(*dst) | bit(*src), 0)
            }
        }
        Insn::LdImm64 { dst, .. } => (0, bit(*dst)),
    }
}

/// Why a write to r10 is refused, from the decoder or from a hand-built
/// instruction alike.
pub(crate) const FRAME_POINTER_WRITE: &str =
    "frame pointer r10 is read-only: copy it (r1 = r10) and change the copy";

/// Registers above r10, or a write to r10.
fn bad_registers(insn: &Insn) -> Option<(Rule, String)> {
    let opr = |o: &Operand| match o {
        Operand::Reg(r) => *r,
        Operand::Imm(_) => 0,
    };
    // (registers read or written, register written)
    let (regs, written): ([u8; 3], Option<u8>) = match insn {
        Insn::Alu { dst, src, .. } => ([*dst, opr(src), 0], Some(*dst)),
        Insn::Neg { dst, .. } | Insn::Endian { dst, .. } => ([*dst, 0, 0], Some(*dst)),
        Insn::MovSx { dst, src, .. } => ([*dst, *src, 0], Some(*dst)),
        Insn::Jmp { dst, src, .. } => ([*dst, opr(src), 0], None),
        Insn::CallX { reg } => ([*reg, 0, 0], None),
        Insn::Load { dst, src, .. } | Insn::LoadSx { dst, src, .. } => {
            ([*dst, *src, 0], Some(*dst))
        }
        Insn::Store { dst, src, .. } => ([*dst, *src, 0], None),
        Insn::StoreImm { dst, .. } => ([*dst, 0, 0], None),
        Insn::Atomic {
            dst, src, fetch, ..
        } => ([*dst, *src, 0], fetch.then_some(*src)),
        Insn::LdImm64 { dst, .. } => ([*dst, 0, 0], Some(*dst)),
        _ => ([0; 3], None),
    };
    if let Some(r) = regs.iter().find(|&&r| r > 10) {
        return Some((Rule::BadInput, format!("invalid register r{r}")));
    }
    if written == Some(10) {
        return Some((Rule::FramePointer, FRAME_POINTER_WRITE.into()));
    }
    None
}

/// Successors of instruction `pc` inside its function (calls fall through).
fn successors(prog: &[Insn], pc: usize) -> ([Option<usize>; 2], bool) {
    let next = pc + prog[pc].slots().max(1);
    let tgt = prog[pc]
        .jump_target(pc)
        .and_then(|t| usize::try_from(t).ok());
    match prog[pc] {
        Insn::Exit => ([None, None], false),
        Insn::Ja { .. } => ([tgt, None], false),
        Insn::Jmp { .. } => ([Some(next), tgt], true),
        _ => ([Some(next), None], false),
    }
}

/// Runs every control-flow check. Errors name the offending instruction.
pub fn analyze(prog: &[Insn], helpers: &HelperTable) -> Result<Cfg, CfgError> {
    let n = prog.len();
    if n == 0 {
        return Err((0, Rule::ControlFlow, "program is empty".into()));
    }
    // Register fields (the decoder guarantees these; a hand-built slice may not).
    for (pc, insn) in prog.iter().enumerate() {
        if let Some((rule, msg)) = bad_registers(insn) {
            return Err((pc, rule, msg));
        }
    }
    // The two slots of every ld_imm64 go together (a decoded `Program`
    // guarantees it; a hand-built slice may not).
    for (pc, insn) in prog.iter().enumerate() {
        let ok = match insn {
            Insn::LdImm64 { .. } => prog.get(pc + 1) == Some(&Insn::LdImm64Tail),
            Insn::LdImm64Tail => pc > 0 && matches!(prog[pc - 1], Insn::LdImm64 { .. }),
            _ => true,
        };
        if !ok {
            return Err((
                pc,
                Rule::BadInput,
                format!("ld_imm64 halves do not pair up at insn {pc}"),
            ));
        }
    }
    // Subprogram entries: 0 and every bpf-to-bpf call target.
    let mut subprogs = vec![0usize];
    for (pc, insn) in prog.iter().enumerate() {
        match insn {
            Insn::CallLocal { .. } => {
                let t = insn.jump_target(pc).unwrap_or(-1);
                if t < 0 || t >= n as i64 || prog[t as usize] == Insn::LdImm64Tail {
                    return Err((
                        pc,
                        Rule::ControlFlow,
                        format!("call to invalid destination {t}"),
                    ));
                }
                subprogs.push(t as usize);
            }
            Insn::CallX { .. } => {
                return Err((
                    pc,
                    Rule::ControlFlow,
                    "indirect call (callx) is not supported".into(),
                ))
            }
            _ => {}
        }
    }
    subprogs.sort_unstable();
    subprogs.dedup();
    let mut subprog_of = vec![0u32; n];
    for (i, &start) in subprogs.iter().enumerate() {
        let end = subprogs.get(i + 1).copied().unwrap_or(n);
        for s in &mut subprog_of[start..end] {
            *s = i as u32;
        }
        // The function must end in exit or an unconditional jump.
        let mut last = end - 1;
        if prog[last] == Insn::LdImm64Tail && last > start {
            last -= 1;
        }
        if !matches!(prog[last], Insn::Exit | Insn::Ja { .. }) {
            let what = if i == 0 && end == n {
                "program"
            } else {
                "function"
            };
            return Err((
                last,
                Rule::ControlFlow,
                format!(
                    "last insn is not an exit or jmp: execution falls off the end of the {what}"
                ),
            ));
        }
    }
    // Jump targets.
    let mut prune_point = vec![false; n];
    for (pc, insn) in prog.iter().enumerate() {
        if let (Insn::Ja { .. } | Insn::Jmp { .. }, Some(t)) = (insn, insn.jump_target(pc)) {
            if t < 0 || t >= n as i64 {
                return Err((
                    pc,
                    Rule::ControlFlow,
                    format!("jump out of range from insn {pc} to {t}"),
                ));
            }
            let t = t as usize;
            if prog[t] == Insn::LdImm64Tail {
                return Err((
                    pc,
                    Rule::ControlFlow,
                    format!("jump into the middle of ldimm64 insn {}", t - 1),
                ));
            }
            if subprog_of[t] != subprog_of[pc] {
                return Err((
                    pc,
                    Rule::ControlFlow,
                    format!(
                        "jump out of range from insn {pc} to {t}: target is in another function"
                    ),
                ));
            }
            prune_point[t] = true;
            if matches!(insn, Insn::Jmp { .. }) && pc + 1 < n {
                prune_point[pc + 1] = true;
            }
        }
        if matches!(insn, Insn::CallLocal { .. }) && pc + 1 < n {
            prune_point[pc + 1] = true;
        }
    }
    // Reachability from the entry, through calls into callees.
    let mut seen = vec![false; n];
    let mut work = vec![0usize];
    seen[0] = true;
    while let Some(pc) = work.pop() {
        let (succ, _) = successors(prog, pc);
        let callee = match prog[pc] {
            Insn::CallLocal { .. } => prog[pc].jump_target(pc).map(|t| t as usize),
            _ => None,
        };
        for s in succ.into_iter().chain([callee]).flatten() {
            if s < n && !seen[s] {
                seen[s] = true;
                work.push(s);
            }
        }
    }
    for pc in 0..n {
        if !seen[pc] && prog[pc] != Insn::LdImm64Tail {
            return Err((pc, Rule::ControlFlow, format!("unreachable insn {pc}")));
        }
    }
    check_call_graph(prog, &subprogs, &subprog_of)?;
    let live_in = liveness(prog, helpers);
    Ok(Cfg {
        subprogs,
        subprog_of,
        prune_point,
        live_in,
    })
}

/// Rejects recursion and call chains deeper than [`MAX_CALL_FRAMES`].
fn check_call_graph(prog: &[Insn], subprogs: &[usize], subprog_of: &[u32]) -> Result<(), CfgError> {
    let ns = subprogs.len();
    // Calls of each subprogram: (call insn, callee subprogram).
    let mut calls: Vec<Vec<(usize, usize)>> = vec![Vec::new(); ns];
    for (pc, insn) in prog.iter().enumerate() {
        if let Insn::CallLocal { .. } = insn {
            let t = insn.jump_target(pc).unwrap_or(0) as usize;
            let callee = subprogs.binary_search(&t).unwrap_or(0);
            calls[subprog_of[pc] as usize].push((pc, callee));
        }
    }
    // Memoised iterative DFS: colour 1 = on the current path (recursion if
    // met again), 2 = done with `frames[sp]` known.
    let mut colour = vec![0u8; ns];
    let mut frames = vec![1usize; ns];
    let mut deepest: Vec<Option<(usize, usize)>> = vec![None; ns];
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    colour[0] = 1;
    while let Some(top) = stack.last_mut() {
        let (sp, idx) = *top;
        if idx < calls[sp].len() {
            top.1 += 1;
            let (pc, callee) = calls[sp][idx];
            match colour[callee] {
                1 => {
                    return Err((
                        pc,
                        Rule::CallDepth,
                        format!(
                        "recursive call from insn {pc} to {}: bpf-to-bpf recursion is not allowed",
                        subprogs[callee]
                    ),
                    ))
                }
                0 => {
                    colour[callee] = 1;
                    stack.push((callee, 0));
                }
                _ => {}
            }
        } else {
            for &(pc, callee) in &calls[sp] {
                if frames[callee] + 1 > frames[sp] {
                    frames[sp] = frames[callee] + 1;
                    deepest[sp] = Some((pc, callee));
                }
            }
            colour[sp] = 2;
            stack.pop();
        }
    }
    if frames[0] > MAX_CALL_FRAMES {
        // Walk the deepest chain to the call that exceeds the limit.
        let (mut sp, mut depth) = (0usize, 1usize);
        while let Some((pc, callee)) = deepest[sp] {
            depth += 1;
            if depth > MAX_CALL_FRAMES {
                return Err((
                    pc,
                    Rule::CallDepth,
                    format!(
                        "the call stack of {} frames is too deep (max {MAX_CALL_FRAMES})",
                        frames[0]
                    ),
                ));
            }
            sp = callee;
        }
    }
    Ok(())
}

/// Backward may-liveness of registers, per function (calls are opaque:
/// they read r1..r5 and define r0..r5).
fn liveness(prog: &[Insn], helpers: &HelperTable) -> Vec<u16> {
    let n = prog.len();
    let ud: Vec<(u16, u16)> = prog.iter().map(|i| uses_defs(i, helpers)).collect();
    let mut live = vec![0u16; n];
    // Reverse sweeps until stable; each sweep only adds bits, so at most
    // 11 * n changes in total bound the loop.
    loop {
        let mut changed = false;
        for pc in (0..n).rev() {
            if prog[pc] == Insn::LdImm64Tail {
                continue;
            }
            let (succ, _) = successors(prog, pc);
            let mut out = 0u16;
            for s in succ.into_iter().flatten() {
                if s < n {
                    out |= live[s];
                }
            }
            let (u, d) = ud[pc];
            // r10 is always live: it is the same everywhere, so this costs nothing.
            let inn = u | (out & !d) | bit(10);
            if inn != live[pc] {
                live[pc] = inn;
                changed = true;
            }
        }
        if !changed {
            return live;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::assemble;

    #[test]
    fn liveness_and_prune_points() {
        let p = assemble(
            "mov %r1, 1\nmov %r2, 2\njeq %r1, 0, skip\nmov %r0, %r2\nexit\nskip:\nmov %r0, 0\nexit",
        )
        .unwrap();
        let g = analyze(p.insns(), &HelperTable::default()).unwrap();
        let r = |regs: &[u8]| regs.iter().fold(1u16 << 10, |m, r| m | 1 << r);
        assert_eq!(g.live_in[0], r(&[]));
        assert_eq!(g.live_in[2], r(&[1, 2]));
        assert_eq!(g.live_in[3], r(&[2]));
        assert_eq!(g.live_in[5], r(&[]));
        assert_eq!(
            g.prune_point,
            [false, false, false, true, false, true, false]
        );
        assert_eq!(g.subprogs, [0]);
    }

    #[test]
    fn subprograms_and_their_ends() {
        let p = assemble("call local f\nexit\nf:\nmov %r0, 1\nexit").unwrap();
        let g = analyze(p.insns(), &HelperTable::default()).unwrap();
        assert_eq!(g.subprogs, [0, 2]);
        assert_eq!(g.subprog_of, [0, 0, 1, 1]);
        let p = assemble("call local f\nmov %r0, 0\nexit\nf:\nmov %r0, 1").unwrap();
        let e = analyze(p.insns(), &HelperTable::default()).unwrap_err();
        assert_eq!(e.0, 3);
        assert_eq!(
            e.2,
            "last insn is not an exit or jmp: execution falls off the end of the function"
        );
    }
}
