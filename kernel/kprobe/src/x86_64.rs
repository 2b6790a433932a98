//! x86_64 instruction analysis for kprobes.
//!
//! After the `int3` planted at a probe fires, the original instruction still
//! has to run. [`analyze`] decodes it and picks one of three ways:
//!
//! - **Emulate** ([`Exec::Call`], [`Exec::Jmp`], [`Exec::Jcc`],
//!   [`Exec::Loop`]): relative branches depend on their own address, so the
//!   trap handler computes the outcome from the saved registers
//!   ([`emulate`]) and resumes at the target. No slot, no second trap.
//! - **Single-step out of line** ([`Exec::Step`]): the instruction is copied
//!   to an executable slot ([`build_slot`]) with any RIP-relative
//!   displacement rewritten so it still addresses the same byte, run there
//!   with TF set, and the trap after it moves RIP back to the original code
//!   ([`Step::resume_rip`]). Indirect `call`s also get their pushed return
//!   address fixed.
//! - **Boost**: for instructions whose effect does not depend on where they
//!   run and that cannot branch, the slot copy is followed by a `jmp` back to
//!   the next original instruction, so the single-step trap is skipped
//!   ([`Step::boostable`]). The slot holds a second copy followed by `sti`
//!   for callers that ran with interrupts enabled: the trap handler enters
//!   the slot with IF clear, and `sti`'s one-instruction shadow makes IF take
//!   effect only after the `jmp` has left the slot, so no task is ever
//!   preempted inside a slot and a slot can be freed as soon as no CPU runs
//!   a probe handler.
//!
//! Instructions that cannot run out of line are refused with
//! [`Refusal::Instruction`]: `ret`/`iret` (they pop RIP from the stack, but
//! a probe on them is better expressed as a return probe), `pushf`/`popf`
//! (they see or change TF and IF, which the engine owns during a step),
//! `cli`/`sti` (same), `int3`/`int n`/`int1`/`into`, `syscall`/`sysret`/
//! `sysenter`/`sysexit`, `hlt` (it would halt with interrupts off), `ud0-2`,
//! far transfers, transactional memory, and loads of SS (they suppress the
//! debug trap of the next instruction).

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind,
    Register,
};

use crate::Refusal;

/// The breakpoint opcode.
pub const INT3: u8 = 0xcc;
/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;
/// Bytes of one out-of-line slot: the single-step/boost copy at offset 0
/// and the boost copy ending in `sti` at [`SLOT_STI_OFFSET`].
pub const SLOT_SIZE: usize = 64;
/// Offset of the second copy (instruction, `sti`, `jmp` back) in a slot.
pub const SLOT_STI_OFFSET: usize = 32;

/// RFLAGS bits the engine reads or changes.
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Parity.
    pub const PF: u64 = 1 << 2;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Trap (single-step).
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
}

/// A condition of `jcc`, as in the opcode's low nibble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Cond {
    O,
    No,
    B,
    Ae,
    E,
    Ne,
    Be,
    A,
    S,
    Ns,
    P,
    Np,
    L,
    Ge,
    Le,
    G,
}

impl Cond {
    fn from_iced(c: ConditionCode) -> Option<Self> {
        Some(match c {
            ConditionCode::o => Cond::O,
            ConditionCode::no => Cond::No,
            ConditionCode::b => Cond::B,
            ConditionCode::ae => Cond::Ae,
            ConditionCode::e => Cond::E,
            ConditionCode::ne => Cond::Ne,
            ConditionCode::be => Cond::Be,
            ConditionCode::a => Cond::A,
            ConditionCode::s => Cond::S,
            ConditionCode::ns => Cond::Ns,
            ConditionCode::p => Cond::P,
            ConditionCode::np => Cond::Np,
            ConditionCode::l => Cond::L,
            ConditionCode::ge => Cond::Ge,
            ConditionCode::le => Cond::Le,
            ConditionCode::g => Cond::G,
            _ => return None,
        })
    }

    /// Whether the condition holds for these flags.
    pub fn holds(self, flags: u64) -> bool {
        let f = |bit: u64| flags & bit != 0;
        let (cf, zf, sf, of, pf) = (
            f(rflags::CF),
            f(rflags::ZF),
            f(rflags::SF),
            f(rflags::OF),
            f(rflags::PF),
        );
        match self {
            Cond::O => of,
            Cond::No => !of,
            Cond::B => cf,
            Cond::Ae => !cf,
            Cond::E => zf,
            Cond::Ne => !zf,
            Cond::Be => cf || zf,
            Cond::A => !cf && !zf,
            Cond::S => sf,
            Cond::Ns => !sf,
            Cond::P => pf,
            Cond::Np => !pf,
            Cond::L => sf != of,
            Cond::Ge => sf == of,
            Cond::Le => zf || sf != of,
            Cond::G => !zf && sf == of,
        }
    }
}

/// The `loop`/`jrcxz` family: branches on RCX (or ECX with an address-size
/// prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    /// `loop`: decrement, branch if not zero.
    Loop,
    /// `loope`: decrement, branch if not zero and ZF.
    Loope,
    /// `loopne`: decrement, branch if not zero and not ZF.
    Loopne,
    /// `jrcxz`/`jecxz`: branch if zero (no decrement).
    Jrcxz,
}

/// What happens to RIP (and the stack) after a single step in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepFixup {
    /// The instruction falls through: RIP moves from the slot back to the
    /// original code.
    Relocate,
    /// An indirect `jmp`: RIP is the target already.
    IndirectJump,
    /// An indirect `call`: RIP is the target; the return address it pushed
    /// points into the slot and must point after the original instruction.
    IndirectCall,
}

/// How a probed instruction is executed out of line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Offset of a RIP-relative disp32 in the instruction, rewritten in the
    /// slot.
    pub rip_disp_offset: Option<u8>,
    /// The slot copy may jump straight back (no single-step trap).
    pub boostable: bool,
    /// What the trap after the step does.
    pub fixup: StepFixup,
    /// A `rep`-prefixed string instruction: a single step stops after each
    /// iteration with RIP still on the instruction.
    pub repeats: bool,
}

impl Step {
    /// RIP to resume at after the step trap, given the RIP the trap saw, for
    /// the instruction at `addr` of length `len` stepped in the slot copy at
    /// `slot`. `None` means "still inside the slot" (a `rep` iteration):
    /// keep stepping.
    pub fn resume_rip(&self, addr: u64, len: u8, slot: u64, trap_rip: u64) -> Option<u64> {
        match self.fixup {
            StepFixup::IndirectJump | StepFixup::IndirectCall => Some(trap_rip),
            StepFixup::Relocate => {
                if trap_rip == slot && self.repeats {
                    return None;
                }
                Some(
                    trap_rip
                        .wrapping_sub(slot)
                        .wrapping_add(addr)
                        .min(addr + u64::from(len)),
                )
            }
        }
    }
}

/// How the trap handler runs the instruction a probe replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// Copy to a slot and single-step or boost.
    Step(Step),
    /// Relative `call`: push the return address, go to `target`.
    Call {
        /// Branch target.
        target: u64,
    },
    /// Relative `jmp`.
    Jmp {
        /// Branch target.
        target: u64,
    },
    /// Conditional relative jump.
    Jcc {
        /// The condition.
        cond: Cond,
        /// Branch target.
        target: u64,
    },
    /// `loop`/`loope`/`loopne`/`jrcxz`.
    Loop {
        /// Which one.
        kind: LoopKind,
        /// Branch target.
        target: u64,
        /// Uses ECX (address-size prefix) instead of RCX.
        ecx: bool,
    },
}

/// A decoded probe-point instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Its address.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u8,
    /// Its bytes (the first `len` are valid).
    pub bytes: [u8; MAX_INSN_LEN],
    /// How to execute it after the trap.
    pub exec: Exec,
}

impl Insn {
    /// The address of the next instruction.
    pub fn next(&self) -> u64 {
        self.addr + u64::from(self.len)
    }

    /// Whether the slot copy can jump back by itself.
    pub fn boostable(&self) -> bool {
        matches!(
            self.exec,
            Exec::Step(Step {
                boostable: true,
                ..
            })
        )
    }

    /// Whether a slot is needed (the instruction is not emulated).
    pub fn needs_slot(&self) -> bool {
        matches!(self.exec, Exec::Step(_))
    }
}

fn decode_one(bytes: &[u8], addr: u64) -> Option<(Instruction, Decoder<'_>)> {
    let mut d = Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE);
    if !d.can_decode() {
        return None;
    }
    let insn = d.decode();
    if insn.is_invalid() {
        None
    } else {
        Some((insn, d))
    }
}

fn refuse(addr: u64, mnemonic: &'static str, why: &'static str) -> Refusal {
    Refusal::Instruction {
        addr,
        mnemonic,
        why,
    }
}

/// Instructions refused outright, with the name and reason reported.
fn refused(insn: &Instruction, addr: u64) -> Option<Refusal> {
    let m = insn.mnemonic();
    let stack = "it pops RIP from the stack; use a return probe on the function instead";
    let flags = "it reads or writes RFLAGS.TF/IF, which the engine owns while stepping";
    let intr = "it changes the interrupt flag, which the engine owns while stepping";
    let trap = "it raises an exception or interrupt on purpose";
    let sys = "it changes privilege level";
    Some(match m {
        Mnemonic::Ret => refuse(addr, "ret", stack),
        Mnemonic::Retf => refuse(addr, "retf", stack),
        Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => refuse(addr, "iretq", stack),
        Mnemonic::Pushf | Mnemonic::Pushfd | Mnemonic::Pushfq => refuse(addr, "pushfq", flags),
        Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq => refuse(addr, "popfq", flags),
        Mnemonic::Cli => refuse(addr, "cli", intr),
        Mnemonic::Sti => refuse(addr, "sti", intr),
        Mnemonic::Int3 => refuse(
            addr,
            "int3",
            "it is a breakpoint already (another debugger or probe owns it)",
        ),
        Mnemonic::Int => refuse(addr, "int", trap),
        Mnemonic::Int1 => refuse(addr, "int1", trap),
        Mnemonic::Into => refuse(addr, "into", trap),
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => refuse(addr, "ud2", trap),
        Mnemonic::Hlt => refuse(
            addr,
            "hlt",
            "it would halt with interrupts disabled during the step",
        ),
        Mnemonic::Syscall => refuse(addr, "syscall", sys),
        Mnemonic::Sysret | Mnemonic::Sysretq => refuse(addr, "sysretq", sys),
        Mnemonic::Sysenter => refuse(addr, "sysenter", sys),
        Mnemonic::Sysexit | Mnemonic::Sysexitq => refuse(addr, "sysexit", sys),
        Mnemonic::Xbegin | Mnemonic::Xend | Mnemonic::Xabort => refuse(
            addr,
            "xbegin",
            "a transaction would abort on the single-step trap",
        ),
        _ if insn.is_jmp_far() || insn.is_jmp_far_indirect() => {
            refuse(addr, "jmp far", "far transfers are not relocatable")
        }
        _ if insn.is_call_far() || insn.is_call_far_indirect() => {
            refuse(addr, "call far", "far transfers are not relocatable")
        }
        _ if matches!(
            insn.code(),
            Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_r64m16
        ) && insn.op0_register() == Register::SS =>
        {
            refuse(
                addr,
                "mov ss",
                "a load of SS suppresses the single-step trap of the next instruction",
            )
        }
        _ => return None,
    })
}

/// Decode the instruction at `addr` from `bytes` (which start at `addr` and
/// hold at least the instruction; pass up to [`MAX_INSN_LEN`] bytes) and
/// decide how to run it after the breakpoint.
pub fn analyze(bytes: &[u8], addr: u64) -> Result<Insn, Refusal> {
    let window = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let (insn, decoder) = decode_one(window, addr).ok_or(Refusal::Undecodable { addr })?;
    if let Some(r) = refused(&insn, addr) {
        return Err(r);
    }
    let len = insn.len();
    let mut copy = [0u8; MAX_INSN_LEN];
    copy[..len].copy_from_slice(&window[..len]);
    let near = matches!(
        insn.op0_kind(),
        OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
    );
    let exec = match insn.flow_control() {
        FlowControl::Call if near => Exec::Call {
            target: insn.near_branch_target(),
        },
        FlowControl::UnconditionalBranch if near => Exec::Jmp {
            target: insn.near_branch_target(),
        },
        FlowControl::ConditionalBranch => {
            let target = insn.near_branch_target();
            let ecx = |c: Code| {
                matches!(
                    c,
                    Code::Loop_rel8_64_ECX
                        | Code::Loope_rel8_64_ECX
                        | Code::Loopne_rel8_64_ECX
                        | Code::Jecxz_rel8_64
                )
            };
            match insn.code() {
                c @ (Code::Loop_rel8_64_RCX | Code::Loop_rel8_64_ECX) => Exec::Loop {
                    kind: LoopKind::Loop,
                    target,
                    ecx: ecx(c),
                },
                c @ (Code::Loope_rel8_64_RCX | Code::Loope_rel8_64_ECX) => Exec::Loop {
                    kind: LoopKind::Loope,
                    target,
                    ecx: ecx(c),
                },
                c @ (Code::Loopne_rel8_64_RCX | Code::Loopne_rel8_64_ECX) => Exec::Loop {
                    kind: LoopKind::Loopne,
                    target,
                    ecx: ecx(c),
                },
                c @ (Code::Jrcxz_rel8_64 | Code::Jecxz_rel8_64) => Exec::Loop {
                    kind: LoopKind::Jrcxz,
                    target,
                    ecx: ecx(c),
                },
                _ => match Cond::from_iced(insn.condition_code()) {
                    Some(cond) if insn.is_jcc_short_or_near() => Exec::Jcc { cond, target },
                    _ => {
                        return Err(refuse(
                            addr,
                            "jcc",
                            "this conditional branch form is not emulated",
                        ))
                    }
                },
            }
        }
        FlowControl::IndirectBranch => Exec::Step(Step {
            rip_disp_offset: rip_disp(&insn, &decoder, addr)?,
            boostable: false,
            fixup: StepFixup::IndirectJump,
            repeats: false,
        }),
        FlowControl::IndirectCall => Exec::Step(Step {
            rip_disp_offset: rip_disp(&insn, &decoder, addr)?,
            boostable: false,
            fixup: StepFixup::IndirectCall,
            repeats: false,
        }),
        FlowControl::Next => {
            let repeats =
                insn.is_string_instruction() && (insn.has_rep_prefix() || insn.has_repne_prefix());
            Exec::Step(Step {
                rip_disp_offset: rip_disp(&insn, &decoder, addr)?,
                boostable: true,
                fixup: StepFixup::Relocate,
                repeats,
            })
        }
        // Returns, interrupts, exceptions and transactions were refused by
        // name above; anything else here is a form we do not know.
        _ => {
            return Err(refuse(
                addr,
                "(other)",
                "its control flow cannot be run out of line",
            ))
        }
    };
    Ok(Insn {
        addr,
        len: len as u8,
        bytes: copy,
        exec,
    })
}

fn rip_disp(insn: &Instruction, decoder: &Decoder<'_>, addr: u64) -> Result<Option<u8>, Refusal> {
    if !insn.is_ip_rel_memory_operand() {
        return Ok(None);
    }
    let offsets = decoder.get_constant_offsets(insn);
    if offsets.displacement_size() != 4 {
        return Err(refuse(
            addr,
            "(rip-relative)",
            "its RIP-relative displacement is not 32 bits",
        ));
    }
    Ok(Some(offsets.displacement_offset() as u8))
}

fn rel32(from_next: u64, to: u64) -> Option<i32> {
    i32::try_from(to.wrapping_sub(from_next) as i64).ok()
}

/// Write one relocated copy of `insn` at `buf[0..]` as if it lived at
/// `at`; returns its length.
fn place_copy(insn: &Insn, buf: &mut [u8], at: u64) -> Result<usize, Refusal> {
    let len = usize::from(insn.len);
    buf[..len].copy_from_slice(&insn.bytes[..len]);
    if let Exec::Step(Step {
        rip_disp_offset: Some(off),
        ..
    }) = insn.exec
    {
        let off = usize::from(off);
        let old = i32::from_le_bytes([
            insn.bytes[off],
            insn.bytes[off + 1],
            insn.bytes[off + 2],
            insn.bytes[off + 3],
        ]);
        // Same target: addr + len + old == at + len + new.
        let target = insn.next().wrapping_add(old as i64 as u64);
        let new = rel32(at + len as u64, target).ok_or(Refusal::OutOfReach {
            addr: insn.addr,
            slot: at,
        })?;
        buf[off..off + 4].copy_from_slice(&new.to_le_bytes());
    }
    Ok(len)
}

/// Writes a relocated copy of `insn` (a fall-through instruction) at
/// `buf[0..]` as if it lived at `at`, with any RIP-relative displacement
/// re-encoded to address the same byte; returns its length.
pub fn place_copy_at(insn: &Insn, buf: &mut [u8], at: u64) -> Result<usize, Refusal> {
    place_copy(insn, buf, at)
}

fn place_jmp(buf: &mut [u8], at: u64, to: u64, addr: u64) -> Result<usize, Refusal> {
    let rel = rel32(at + 5, to).ok_or(Refusal::OutOfReach { addr, slot: at })?;
    buf[0] = 0xe9;
    buf[1..5].copy_from_slice(&rel.to_le_bytes());
    Ok(5)
}

/// The contents of an out-of-line slot at address `slot` for `insn`:
///
/// - offset 0: the relocated instruction, then `jmp` back to the next
///   original instruction (single-step traps right after the instruction;
///   a boosted hit with interrupts disabled runs on into the `jmp`);
/// - offset [`SLOT_STI_OFFSET`]: the relocated instruction, `sti`, `jmp`
///   back (a boosted hit whose caller had interrupts enabled).
///
/// Unused bytes are `int3`, so a stray jump into the slot traps.
pub fn build_slot(insn: &Insn, slot: u64) -> Result<[u8; SLOT_SIZE], Refusal> {
    let mut s = [INT3; SLOT_SIZE];
    let n = place_copy(insn, &mut s[..], slot)?;
    place_jmp(&mut s[n..], slot + n as u64, insn.next(), insn.addr)?;
    let b = SLOT_STI_OFFSET;
    let n = place_copy(insn, &mut s[b..], slot + b as u64)?;
    s[b + n] = 0xfb; // sti
    place_jmp(
        &mut s[b + n + 1..],
        slot + (b + n + 1) as u64,
        insn.next(),
        insn.addr,
    )?;
    Ok(s)
}

/// What emulating a branch does to the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emulated {
    /// New RIP.
    pub rip: u64,
    /// A return address to push (relative `call`).
    pub push: Option<u64>,
    /// New RCX (`loop` family).
    pub rcx: Option<u64>,
}

/// Emulate an [`Exec::Call`]/[`Exec::Jmp`]/[`Exec::Jcc`]/[`Exec::Loop`]
/// given the flags and RCX at the trap. `None` for [`Exec::Step`].
pub fn emulate(insn: &Insn, eflags: u64, rcx: u64) -> Option<Emulated> {
    let next = insn.next();
    let plain = |rip| Emulated {
        rip,
        push: None,
        rcx: None,
    };
    Some(match insn.exec {
        Exec::Step(_) => return None,
        Exec::Call { target } => Emulated {
            rip: target,
            push: Some(next),
            rcx: None,
        },
        Exec::Jmp { target } => plain(target),
        Exec::Jcc { cond, target } => plain(if cond.holds(eflags) { target } else { next }),
        Exec::Loop { kind, target, ecx } => {
            let mask = if ecx { 0xffff_ffff } else { u64::MAX };
            let zf = eflags & rflags::ZF != 0;
            if kind == LoopKind::Jrcxz {
                plain(if rcx & mask == 0 { target } else { next })
            } else {
                let dec = rcx.wrapping_sub(1) & mask;
                // A 32-bit write to ECX zero-extends into RCX, which the
                // mask already did.
                let new_rcx = dec;
                let go = dec != 0
                    && match kind {
                        LoopKind::Loope => zf,
                        LoopKind::Loopne => !zf,
                        _ => true,
                    };
                Emulated {
                    rip: if go { target } else { next },
                    push: None,
                    rcx: Some(new_rcx),
                }
            }
        }
    })
}

/// Check that `addr` is an instruction boundary of the function whose code
/// is `code`, starting at `func_start`, by decoding from the start.
pub fn check_boundary(code: &[u8], func_start: u64, addr: u64) -> Result<(), Refusal> {
    let func_end = func_start + code.len() as u64;
    if addr < func_start || addr >= func_end {
        return Err(Refusal::PastFunctionEnd { addr, func_end });
    }
    let mut d = Decoder::with_ip(64, code, func_start, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while d.can_decode() {
        let at = d.ip();
        if at == addr {
            return Ok(());
        }
        d.decode_out(&mut insn);
        if insn.is_invalid() {
            // Padding or data after the last instruction: the address is
            // not reachable by decoding.
            return Err(Refusal::Undecodable { addr: at });
        }
        if addr > at && addr < at + insn.len() as u64 {
            return Err(Refusal::MidInstruction {
                addr,
                insn_start: at,
                insn_len: insn.len() as u8,
            });
        }
    }
    Err(Refusal::PastFunctionEnd { addr, func_end })
}

/// Call `f(addr, len)` for each instruction of `code` (which starts at
/// `start`), in order, until `f` returns false or the bytes stop decoding.
pub fn for_each_insn(code: &[u8], start: u64, mut f: impl FnMut(u64, usize) -> bool) {
    let mut d = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while d.can_decode() {
        let at = d.ip();
        d.decode_out(&mut insn);
        if insn.is_invalid() || !f(at, insn.len()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
