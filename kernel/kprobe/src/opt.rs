//! Jump-optimised kprobes (Linux's optprobes): which probe points may have
//! their `int3` replaced by a `jmp rel32` to a detour, and the detour's
//! machine code.
//!
//! # Eligibility ([`plan`])
//! The `jmp` is 5 bytes, so it replaces the probed instruction and as many
//! following ones as it takes to cover 5 bytes (the *range*). All of them
//! then run from the detour instead, so each must:
//! - be an instruction the kprobe engine can boost ([`analyze`] says
//!   [`Step`] with `boostable`: it falls through, and any RIP-relative
//!   operand is re-encoded with a new disp32, which must reach);
//! - have no exception fix-up (a fault must happen at its own address);
//! - lie inside the function (by the symbol's size).
//!
//! And no code may arrive inside the range other than at its first byte:
//! the whole function is decoded, and a relative branch or call whose
//! target lies in bytes 1.. of the range refuses, as does any indirect
//! `jmp` in the function (a jump table could land anywhere; we cannot see
//! its targets, so we refuse rather than guess). Relative calls, returns
//! and any other control flow inside the range are refused by the first
//! rule: a call there would push a return address into the range.
//!
//! # The detour ([`build_detour`])
//! The kernel is compiled with the 128-byte red zone, so the detour steps
//! `rsp` below it before writing anything, then builds the same
//! `struct pt_regs` as the `int3` path (rip = the probe address, rsp = the
//! value at the probe, eflags as they were, cs/ss read from the CPU,
//! orig_rax 0 like a breakpoint), clears IF (as the trap gate does), saves
//! the SSE registers and calls the kernel's handler with the frame and the
//! detour's address. The handler stores in the frame's rip slot where to
//! continue and clears IF in the saved flags; the detour restores every
//! register and the flags, puts `rsp` back and jumps through the rip slot
//! (now below the stack pointer, read with IF clear, so no interrupt can
//! have overwritten it; NMIs and other exceptions use their own stacks):
//! - [`CONT_COPY`]: the relocated instructions, then `jmp` to the end of
//!   the range (the caller had IF clear);
//! - [`CONT_COPY_STI`]: the same, then `sti` and the `jmp`: `sti` takes
//!   effect after the next instruction, so IF comes back only once the CPU
//!   has left the detour (as the boosted slot does);
//! - [`CONT_REDIRECT_STI`]: a handler moved rip: `sti`, then `jmp` to the
//!   address the handler stored in the orig_rax slot (a caller with IF
//!   clear jumps to the new rip directly).
//!
//! Only the first [`PROLOGUE_IF_BYTES`] bytes run with the caller's IF
//! (before `cli`); the kernel never preempts a task there, so no task can
//! be switched out inside a detour.

use crate::x86_64::{analyze, Exec, Insn, Step, StepFixup, MAX_INSN_LEN};
use crate::Refusal;
use core::fmt;
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind};

/// Bytes of a `jmp rel32`.
pub const JMP_LEN: usize = 5;
/// Most instructions a range can hold (5 one-byte instructions).
pub const MAX_RANGE_INSNS: usize = JMP_LEN;
/// Bytes of one detour.
pub const DETOUR_SIZE: usize = 1024;
/// Bytes at the start of a detour that run with the caller's IF (up to and
/// including `cli`).
pub const PROLOGUE_IF_BYTES: usize = 11;
/// Offset of `sti; jmp [rsp-176]` (a redirect with IF to restore).
pub const CONT_REDIRECT_STI: usize = 464;
/// Offset of the relocated instructions + `jmp` back.
pub const CONT_COPY: usize = 480;
/// Offset of the relocated instructions + `sti` + `jmp` back.
pub const CONT_COPY_STI: usize = 512;

/// Why a probe point cannot be jump-optimised (it stays a boosted or
/// single-stepped `int3`). Shown to the user verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotOptimisable {
    /// An instruction of the range cannot run from the detour.
    Instruction {
        /// Its address.
        addr: u64,
        /// What the kprobe engine said about it.
        why: Refusal,
    },
    /// An instruction of the range branches, calls or returns.
    Branch {
        /// Its address.
        addr: u64,
    },
    /// An instruction of the range has an exception fix-up.
    FixUp {
        /// Its address.
        addr: u64,
    },
    /// The 5 bytes would reach past the function's end.
    PastFunctionEnd {
        /// One past the function's last byte.
        func_end: u64,
    },
    /// A branch elsewhere in the function lands inside the range.
    BranchInto {
        /// The branch.
        from: u64,
        /// Its target.
        target: u64,
    },
    /// The function has an indirect `jmp` (a jump table's targets are
    /// unknown).
    IndirectJump {
        /// The `jmp`.
        at: u64,
    },
    /// The function's bytes stop decoding before its end.
    Undecodable {
        /// Where.
        at: u64,
    },
    /// The relocated copy does not reach (rel32) from the detour.
    OutOfReach,
}

impl fmt::Display for NotOptimisable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotOptimisable::Instruction { addr, why } => {
                write!(f, "the instruction at {addr:#x} cannot be relocated: {why}")
            }
            NotOptimisable::Branch { addr } => write!(
                f,
                "the instruction at {addr:#x} in the 5 bytes branches, calls or returns"
            ),
            NotOptimisable::FixUp { addr } => write!(
                f,
                "the instruction at {addr:#x} in the 5 bytes has an exception fix-up"
            ),
            NotOptimisable::PastFunctionEnd { func_end } => write!(
                f,
                "a 5-byte jump would reach past the function's end at {func_end:#x}"
            ),
            NotOptimisable::BranchInto { from, target } => write!(
                f,
                "the branch at {from:#x} lands at {target:#x}, inside the 5 bytes a jump would replace"
            ),
            NotOptimisable::IndirectJump { at } => write!(
                f,
                "the function has an indirect jmp at {at:#x} (a jump table could land inside the 5 bytes)"
            ),
            NotOptimisable::Undecodable { at } => {
                write!(f, "the function does not decode at {at:#x}")
            }
            NotOptimisable::OutOfReach => {
                write!(f, "the relocated instructions do not reach from the detour")
            }
        }
    }
}

/// The instructions a `jmp` at a probe point replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The probe address (first byte of the range).
    pub addr: u64,
    /// Bytes of the range (5 or more).
    pub len: u8,
    /// The instructions, in order (the first `count`).
    pub insns: [Option<Insn>; MAX_RANGE_INSNS],
    /// How many.
    pub count: u8,
}

impl Plan {
    /// One past the range's last byte: where the detour jumps back to.
    pub fn end(&self) -> u64 {
        self.addr + u64::from(self.len)
    }

    /// The instructions.
    pub fn insns(&self) -> impl Iterator<Item = &Insn> {
        self.insns.iter().flatten()
    }

    /// Length of the first instruction.
    pub fn first_len(&self) -> u8 {
        self.insns[0].map(|i| i.len).unwrap_or(0)
    }
}

/// Decides whether the probe at `addr` in the function whose bytes (as
/// compiled) are `func`, starting at `func_start`, may be jump-optimised.
/// `has_fixup(a)` says whether the instruction at `a` has an exception
/// fix-up.
pub fn plan(
    func: &[u8],
    func_start: u64,
    addr: u64,
    has_fixup: &dyn Fn(u64) -> bool,
) -> Result<Plan, NotOptimisable> {
    let func_end = func_start + func.len() as u64;
    let mut insns = [None; MAX_RANGE_INSNS];
    let mut at = addr;
    let mut count = 0usize;
    while at < addr + JMP_LEN as u64 {
        if at >= func_end {
            return Err(NotOptimisable::PastFunctionEnd { func_end });
        }
        let off = (at - func_start) as usize;
        let end = (off + MAX_INSN_LEN).min(func.len());
        let insn = analyze(&func[off..end], at)
            .map_err(|why| NotOptimisable::Instruction { addr: at, why })?;
        match insn.exec {
            Exec::Step(Step {
                boostable: true,
                fixup: StepFixup::Relocate,
                ..
            }) => {}
            _ => return Err(NotOptimisable::Branch { addr: at }),
        }
        if has_fixup(at) {
            return Err(NotOptimisable::FixUp { addr: at });
        }
        insns[count] = Some(insn);
        count += 1;
        at = insn.next();
    }
    if at > func_end {
        return Err(NotOptimisable::PastFunctionEnd { func_end });
    }
    check_no_entry(func, func_start, addr + 1, at)?;
    Ok(Plan {
        addr,
        len: (at - addr) as u8,
        insns,
        count: count as u8,
    })
}

/// Decodes the whole function: no branch may land in `lo..hi`, and no
/// indirect `jmp` may exist.
fn check_no_entry(func: &[u8], func_start: u64, lo: u64, hi: u64) -> Result<(), NotOptimisable> {
    let mut d = Decoder::with_ip(64, func, func_start, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while d.can_decode() {
        let at = d.ip();
        d.decode_out(&mut insn);
        if insn.is_invalid() {
            return Err(NotOptimisable::Undecodable { at });
        }
        match insn.flow_control() {
            FlowControl::IndirectBranch => return Err(NotOptimisable::IndirectJump { at }),
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call
            | FlowControl::XbeginXabortXend
                if matches!(
                    insn.op0_kind(),
                    OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                ) =>
            {
                let target = insn.near_branch_target();
                if target >= lo && target < hi {
                    return Err(NotOptimisable::BranchInto { from: at, target });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `jmp rel32` at `from` to `to`, if it reaches.
pub fn jmp_bytes(from: u64, to: u64) -> Option<[u8; JMP_LEN]> {
    let rel = i32::try_from(to.wrapping_sub(from + JMP_LEN as u64) as i64).ok()?;
    let mut b = [0xe9, 0, 0, 0, 0];
    b[1..].copy_from_slice(&rel.to_le_bytes());
    Some(b)
}

/// Writes `bytes` at `*pos` and advances it.
fn put(buf: &mut [u8], pos: &mut usize, bytes: &[u8]) {
    buf[*pos..*pos + bytes.len()].copy_from_slice(bytes);
    *pos += bytes.len();
}

/// The register save part, up to (not including) the handler address.
const SAVE: &[u8] = &[
    0x48, 0x8d, 0x64, 0x24, 0x80, // lea rsp, [rsp-128]: below the red zone
    0x6a, 0x10, // push 0x10 (ss slot)
    0x6a, 0x00, // push 0 (rsp slot)
    0x9c, // pushfq
    0xfa, // cli
    0x6a, 0x08, // push 0x08 (cs slot)
    0x6a, 0x00, // push 0 (rip slot)
    0x6a, 0x00, // push 0 (orig_rax, as the breakpoint vector pushes)
    0x57, 0x56, 0x52, 0x51, 0x50, // push rdi, rsi, rdx, rcx, rax
    0x41, 0x50, 0x41, 0x51, 0x41, 0x52, 0x41, 0x53, // push r8..r11
    0x53, 0x55, // push rbx, rbp
    0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57, // push r12..r15
    0x48, 0x8d, 0x84, 0x24, 0x28, 0x01, 0x00, 0x00, // lea rax, [rsp+296]: rsp at the probe
    0x48, 0x89, 0x84, 0x24, 0x98, 0x00, 0x00, 0x00, // mov [rsp+152], rax
    0x48, 0x8c, 0xd0, // mov rax, ss
    0x48, 0x89, 0x84, 0x24, 0xa0, 0x00, 0x00, 0x00, // mov [rsp+160], rax
    0x48, 0x8c, 0xc8, // mov rax, cs
    0x48, 0x89, 0x84, 0x24, 0x88, 0x00, 0x00, 0x00, // mov [rsp+136], rax
    0x48, 0x89, 0xe7, // mov rdi, rsp (the frame)
    0x48, 0x89, 0xe3, // mov rbx, rsp
    0x48, 0x83, 0xe4, 0xf0, // and rsp, -16
    0x48, 0x81, 0xec, 0x00, 0x01, 0x00, 0x00, // sub rsp, 256: xmm0-15 (saved below)
    0xfc, // cld
];

/// After the call: restore and continue through the rip slot.
const RESTORE: &[u8] = &[
    0x48, 0x89, 0xdc, // mov rsp, rbx
    0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, // pop r15..r12
    0x5d, 0x5b, // pop rbp, rbx
    0x41, 0x5b, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, // pop r11..r8
    0x58, 0x59, 0x5a, 0x5e, 0x5f, // pop rax, rcx, rdx, rsi, rdi
    0x48, 0x8d, 0x64, 0x24, 0x18, // lea rsp, [rsp+24]: orig_rax, rip, cs
    0x9d, // popfq (IF as the handler left it: clear)
    0x48, 0x8d, 0xa4, 0x24, 0x90, 0x00, 0x00, 0x00, // lea rsp, [rsp+144]: rsp at the probe
    0xff, 0xa4, 0x24, 0x58, 0xff, 0xff, 0xff, // jmp [rsp-168] (the rip slot)
];

/// `movaps [rsp+16*n], xmmN` (opcode 0x29) or `movaps xmmN, [rsp+16*n]`
/// (0x28) for xmm0-15: the SSE registers the kernel's Rust code may use
/// (all caller-saved, and the probed code may hold live values in any).
/// The kernel uses no x87 and never changes MXCSR, so unlike the trap
/// entry's `fxsave` (512 bytes, slow under emulation) these suffice.
fn put_xmm(buf: &mut [u8], pos: &mut usize, opcode: u8) {
    for n in 0u8..16 {
        if n >= 8 {
            put(buf, pos, &[0x44]); // REX.R: xmm8-15
        }
        let modrm = 0x84 | ((n & 7) << 3); // [rsp + disp32]
        put(buf, pos, &[0x0f, opcode, modrm, 0x24]);
        put(buf, pos, &(u32::from(n) * 16).to_le_bytes());
    }
}

/// `sti; jmp [rsp-176]` (the orig_rax slot).
const REDIRECT_STI: &[u8] = &[0xfb, 0xff, 0xa4, 0x24, 0x50, 0xff, 0xff, 0xff];

/// The detour at address `detour` for `plan`, calling `handler(regs,
/// detour)` (System V: rdi, rsi). Unused bytes are `int3`.
pub fn build_detour(
    plan: &Plan,
    detour: u64,
    handler: u64,
) -> Result<[u8; DETOUR_SIZE], NotOptimisable> {
    let mut b = [crate::x86_64::INT3; DETOUR_SIZE];
    let mut pos = 0;
    put(&mut b, &mut pos, SAVE);
    put(&mut b, &mut pos, &[0x48, 0xb8]); // movabs rax, probe address
    put(&mut b, &mut pos, &plan.addr.to_le_bytes());
    put(
        &mut b,
        &mut pos,
        &[0x48, 0x89, 0x83, 0x80, 0x00, 0x00, 0x00],
    ); // mov [rbx+128], rax: rip
    put_xmm(&mut b, &mut pos, 0x29);
    put(&mut b, &mut pos, &[0x48, 0xbe]); // movabs rsi, detour
    put(&mut b, &mut pos, &detour.to_le_bytes());
    put(&mut b, &mut pos, &[0x48, 0xb8]); // movabs rax, handler
    put(&mut b, &mut pos, &handler.to_le_bytes());
    put(&mut b, &mut pos, &[0xff, 0xd0]); // call rax
    put_xmm(&mut b, &mut pos, 0x28);
    put(&mut b, &mut pos, RESTORE);
    debug_assert!(pos <= CONT_REDIRECT_STI, "save/restore is {pos} bytes");
    let mut pos = CONT_REDIRECT_STI;
    put(&mut b, &mut pos, REDIRECT_STI);
    for (start, sti) in [(CONT_COPY, false), (CONT_COPY_STI, true)] {
        let mut pos = start;
        for insn in plan.insns() {
            let n = crate::x86_64::place_copy_at(insn, &mut b[pos..], detour + pos as u64)
                .map_err(|_| NotOptimisable::OutOfReach)?;
            pos += n;
        }
        if sti {
            put(&mut b, &mut pos, &[0xfb]);
        }
        let j = jmp_bytes(detour + pos as u64, plan.end()).ok_or(NotOptimisable::OutOfReach)?;
        put(&mut b, &mut pos, &j);
        debug_assert!(pos <= DETOUR_SIZE);
    }
    Ok(b)
}

#[cfg(test)]
mod tests;
