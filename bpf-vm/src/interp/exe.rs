//! Pre-decoding of a [`Program`] into the interpreter's flat operation array.
//!
//! Each slot becomes one [`Op`] with the operation, width and operand kind
//! folded into the variant, immediates pre-extended and jump offsets turned
//! into absolute slot indices, so the run loop does a single `match` per
//! instruction and never re-decodes. All targets are validated here, which
//! is what lets the run loop index the array without further checks: every
//! jump lands on an instruction, and falling off the end lands on a sentinel.

use alloc::vec::Vec;
use core::fmt;

use crate::insn::{AluOp, ByteOrder, Insn, JmpCond, LdImm64Src, Operand, Program, Size, Width};

/// One pre-decoded operation. `u8` fields are registers (always `<= 10`),
/// `u32` fields named `t` are absolute slot indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub(crate) enum Op {
    // 64-bit ALU, immediate (pre-sign-extended) and register forms.
    Add64I(u8, u64),
    Sub64I(u8, u64),
    Mul64I(u8, u64),
    Div64I(u8, u64),
    SDiv64I(u8, u64),
    Or64I(u8, u64),
    And64I(u8, u64),
    Lsh64I(u8, u64),
    Rsh64I(u8, u64),
    Mod64I(u8, u64),
    SMod64I(u8, u64),
    Xor64I(u8, u64),
    Mov64I(u8, u64),
    Arsh64I(u8, u64),
    Add64R(u8, u8),
    Sub64R(u8, u8),
    Mul64R(u8, u8),
    Div64R(u8, u8),
    SDiv64R(u8, u8),
    Or64R(u8, u8),
    And64R(u8, u8),
    Lsh64R(u8, u8),
    Rsh64R(u8, u8),
    Mod64R(u8, u8),
    SMod64R(u8, u8),
    Xor64R(u8, u8),
    Mov64R(u8, u8),
    Arsh64R(u8, u8),
    // 32-bit ALU.
    Add32I(u8, u32),
    Sub32I(u8, u32),
    Mul32I(u8, u32),
    Div32I(u8, u32),
    SDiv32I(u8, u32),
    Or32I(u8, u32),
    And32I(u8, u32),
    Lsh32I(u8, u32),
    Rsh32I(u8, u32),
    Mod32I(u8, u32),
    SMod32I(u8, u32),
    Xor32I(u8, u32),
    Mov32I(u8, u32),
    Arsh32I(u8, u32),
    Add32R(u8, u8),
    Sub32R(u8, u8),
    Mul32R(u8, u8),
    Div32R(u8, u8),
    SDiv32R(u8, u8),
    Or32R(u8, u8),
    And32R(u8, u8),
    Lsh32R(u8, u8),
    Rsh32R(u8, u8),
    Mod32R(u8, u8),
    SMod32R(u8, u8),
    Xor32R(u8, u8),
    Mov32R(u8, u8),
    Arsh32R(u8, u8),
    Neg64(u8),
    Neg32(u8),
    /// movsx: dst, src, (width, bits) folded as 0: 8→32, 1: 16→32, 2: 8→64, 3: 16→64, 4: 32→64.
    MovSx(u8, u8, u8),
    Le16(u8),
    Le32(u8),
    Swap16(u8),
    Swap32(u8),
    Swap64(u8),
    Nop,
    LdImm64(u8, u64),
    // Jumps: t = absolute target.
    Ja(u32),
    Jmp64I(JmpCond, u8, u32, u64),
    Jmp64R(JmpCond, u8, u8, u32),
    Jmp32I(JmpCond, u8, u32, u32),
    Jmp32R(JmpCond, u8, u8, u32),
    JEq64I(u8, u32, u64),
    JNe64I(u8, u32, u64),
    JEq64R(u8, u8, u32),
    JNe64R(u8, u8, u32),
    JGt64R(u8, u8, u32),
    JLt64R(u8, u8, u32),
    JGt64I(u8, u32, u64),
    JLt64I(u8, u32, u64),
    Call(u32),
    CallLocal(u32),
    CallX(u8),
    Exit,
    // Memory: dst, base, off.
    // One variant per size, so an access costs a single dispatch.
    LdxB(u8, u8, i16),
    LdxH(u8, u8, i16),
    LdxW(u8, u8, i16),
    LdxDW(u8, u8, i16),
    LdxSx(Size, u8, u8, i16),
    // Stores: base, src, off.
    StxB(u8, u8, i16),
    StxH(u8, u8, i16),
    StxW(u8, u8, i16),
    StxDW(u8, u8, i16),
    // Stores of immediates: base, off, imm (pre-sign-extended).
    StB(u8, i16, u64),
    StH(u8, i16, u64),
    StW(u8, i16, u64),
    StDW(u8, i16, u64),
    Atomic(crate::insn::AtomicOp, bool, Size, u8, u8, i16),
    /// Second slot of ld_imm64; never reached (targets are validated).
    Tail,
    /// Sentinel after the last slot: reached only by falling off the end.
    FellOff,
}

/// Why a program cannot be prepared for execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepareError {
    /// A jump or call at `pc` targets a slot outside the program.
    JumpOutOfRange {
        /// Slot of the jump.
        pc: usize,
        /// Its target.
        target: i64,
    },
    /// A jump or call at `pc` targets the second slot of a `ld_imm64`.
    JumpIntoLdImm64 {
        /// Slot of the jump.
        pc: usize,
        /// Its target.
        target: usize,
    },
    /// A `ld_imm64` at `pc` refers to a map the resolver did not resolve.
    UnresolvedMap {
        /// Slot of the `ld_imm64`.
        pc: usize,
    },
    /// The program is empty or longer than `u32::MAX` slots.
    BadLength(usize),
}

impl Op {
    /// Where a conditional jump goes when taken (`ja` is unconditional:
    /// see [`Op::jump_target`]).
    pub(crate) fn cond_jump_target(&self) -> Option<usize> {
        match *self {
            Op::Jmp64I(_, _, t, _)
            | Op::Jmp64R(_, _, _, t)
            | Op::Jmp32I(_, _, t, _)
            | Op::Jmp32R(_, _, _, t)
            | Op::JEq64I(_, t, _)
            | Op::JNe64I(_, t, _)
            | Op::JGt64I(_, t, _)
            | Op::JLt64I(_, t, _)
            | Op::JEq64R(_, _, t)
            | Op::JNe64R(_, _, t)
            | Op::JGt64R(_, _, t)
            | Op::JLt64R(_, _, t) => Some(t as usize),
            _ => None,
        }
    }

    /// Whether the operation ends a straight-line run: a jump, a local
    /// call, `exit` or the end sentinel. The interpreter charges the budget
    /// a run at a time (`run_len`), and the JIT's budget blocks end at the
    /// same places (`jit::budget`).
    pub(crate) fn ends_run(&self) -> bool {
        matches!(self, Op::Ja(_) | Op::CallLocal(_) | Op::Exit | Op::FellOff)
            || self.cond_jump_target().is_some()
    }

    /// Where a jump, conditional or not, goes when taken.
    pub(crate) fn jump_target(&self) -> Option<usize> {
        match *self {
            Op::Ja(t) => Some(t as usize),
            _ => self.cond_jump_target(),
        }
    }
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PrepareError::JumpOutOfRange { pc, target } => {
                write!(
                    f,
                    "instruction {pc}: jump target {target} is outside the program"
                )
            }
            PrepareError::JumpIntoLdImm64 { pc, target } => write!(
                f,
                "instruction {pc}: jump target {target} is the second slot of ld_imm64"
            ),
            PrepareError::UnresolvedMap { pc } => {
                write!(f, "instruction {pc}: map reference was not resolved")
            }
            PrepareError::BadLength(n) => write!(f, "program length {n} is not executable"),
        }
    }
}

impl core::error::Error for PrepareError {}

/// A program ready to run: decoded once into a flat operation array.
#[derive(Clone, Debug)]
pub struct Executable {
    pub(crate) ops: Vec<Op>,
    /// Per slot: the number of operations from it up to and including the
    /// next control transfer (jump, local call, exit, end sentinel). The
    /// budget is charged a whole straight-line run at a time.
    pub(crate) run_len: Vec<u32>,
}

impl Executable {
    /// Prepares a program that has no map references (`ld_imm64` pseudo
    /// sources other than plain immediates are rejected).
    pub fn new(program: &Program) -> Result<Executable, PrepareError> {
        Executable::with_resolver(program, |_| None)
    }

    /// Prepares a program, turning each map reference of a `ld_imm64` into
    /// the 64-bit value `resolve` returns for it (a map handle or the address
    /// of a map value); `None` fails with [`PrepareError::UnresolvedMap`].
    pub fn with_resolver(
        program: &Program,
        mut resolve: impl FnMut(LdImm64Src) -> Option<u64>,
    ) -> Result<Executable, PrepareError> {
        let insns = program.insns();
        let n = insns.len();
        if n == 0 || n >= u32::MAX as usize {
            return Err(PrepareError::BadLength(n));
        }
        let target = |pc: usize, insn: &Insn| -> Result<u32, PrepareError> {
            let t = insn.jump_target(pc).unwrap_or(0);
            if t < 0 || t >= n as i64 {
                return Err(PrepareError::JumpOutOfRange { pc, target: t });
            }
            if insns[t as usize] == Insn::LdImm64Tail {
                return Err(PrepareError::JumpIntoLdImm64 {
                    pc,
                    target: t as usize,
                });
            }
            Ok(t as u32)
        };
        let mut ops = Vec::with_capacity(n + 1);
        for (pc, insn) in insns.iter().enumerate() {
            let op = match *insn {
                Insn::Alu {
                    width,
                    op,
                    dst,
                    src,
                } => alu(width, op, dst, src),
                Insn::Neg { width, dst } => match width {
                    Width::W64 => Op::Neg64(dst),
                    Width::W32 => Op::Neg32(dst),
                },
                Insn::MovSx {
                    width,
                    bits,
                    dst,
                    src,
                } => {
                    let k = match (width, bits) {
                        (Width::W32, 8) => 0,
                        (Width::W32, _) => 1,
                        (Width::W64, 8) => 2,
                        (Width::W64, 16) => 3,
                        (Width::W64, _) => 4,
                    };
                    Op::MovSx(dst, src, k)
                }
                Insn::Endian { order, bits, dst } => match (order, bits) {
                    (ByteOrder::Le, 16) => Op::Le16(dst),
                    (ByteOrder::Le, 32) => Op::Le32(dst),
                    // Our VM is little endian: le64 changes nothing.
                    (ByteOrder::Le, _) => Op::Nop,
                    (_, 16) => Op::Swap16(dst),
                    (_, 32) => Op::Swap32(dst),
                    (_, _) => Op::Swap64(dst),
                },
                Insn::Ja { .. } => Op::Ja(target(pc, insn)?),
                Insn::Jmp {
                    width,
                    cond,
                    dst,
                    src,
                    ..
                } => {
                    let t = target(pc, insn)?;
                    jmp(width, cond, dst, src, t)
                }
                Insn::Call { id } => Op::Call(id as u32),
                Insn::CallLocal { .. } => Op::CallLocal(target(pc, insn)?),
                Insn::CallX { reg } => Op::CallX(reg),
                Insn::Exit => Op::Exit,
                Insn::Load {
                    size,
                    dst,
                    src,
                    off,
                } => match size {
                    Size::B => Op::LdxB(dst, src, off),
                    Size::H => Op::LdxH(dst, src, off),
                    Size::W => Op::LdxW(dst, src, off),
                    Size::DW => Op::LdxDW(dst, src, off),
                },
                Insn::LoadSx {
                    size,
                    dst,
                    src,
                    off,
                } => Op::LdxSx(size, dst, src, off),
                Insn::Store {
                    size,
                    dst,
                    off,
                    src,
                } => match size {
                    Size::B => Op::StxB(dst, src, off),
                    Size::H => Op::StxH(dst, src, off),
                    Size::W => Op::StxW(dst, src, off),
                    Size::DW => Op::StxDW(dst, src, off),
                },
                Insn::StoreImm {
                    size,
                    dst,
                    off,
                    imm,
                } => {
                    let v = imm as i64 as u64;
                    match size {
                        Size::B => Op::StB(dst, off, v),
                        Size::H => Op::StH(dst, off, v),
                        Size::W => Op::StW(dst, off, v),
                        Size::DW => Op::StDW(dst, off, v),
                    }
                }
                Insn::Atomic {
                    size,
                    op,
                    fetch,
                    dst,
                    off,
                    src,
                } => Op::Atomic(op, fetch, size, dst, src, off),
                Insn::LdImm64 { dst, src } => {
                    let v = match src {
                        LdImm64Src::Imm(v) => v,
                        other => resolve(other).ok_or(PrepareError::UnresolvedMap { pc })?,
                    };
                    Op::LdImm64(dst, v)
                }
                Insn::LdImm64Tail => Op::Tail,
            };
            ops.push(op);
        }
        ops.push(Op::FellOff);
        let mut run_len = alloc::vec![0u32; ops.len()];
        for i in (0..ops.len()).rev() {
            run_len[i] = match ops[i] {
                op if op.ends_run() => 1,
                // Never entered: jumps into it are rejected above.
                Op::Tail => 0,
                // Executes as one operation and continues two slots on.
                Op::LdImm64(..) => 1 + run_len[i + 2],
                _ => 1 + run_len[i + 1],
            };
        }
        Ok(Executable { ops, run_len })
    }

    /// Number of program slots (excluding the internal end sentinel).
    pub fn len(&self) -> usize {
        self.ops.len() - 1
    }

    /// Always false: an executable has at least one slot.
    pub fn is_empty(&self) -> bool {
        false
    }
}

fn alu(width: Width, op: AluOp, dst: u8, src: Operand) -> Op {
    macro_rules! pick {
        ($($name:ident => $i64:ident, $r64:ident, $i32:ident, $r32:ident;)*) => {
            match (op, width, src) {
                $(
                    (AluOp::$name, Width::W64, Operand::Imm(i)) => Op::$i64(dst, i as i64 as u64),
                    (AluOp::$name, Width::W64, Operand::Reg(s)) => Op::$r64(dst, s),
                    (AluOp::$name, Width::W32, Operand::Imm(i)) => Op::$i32(dst, i as u32),
                    (AluOp::$name, Width::W32, Operand::Reg(s)) => Op::$r32(dst, s),
                )*
            }
        };
    }
    pick! {
        Add => Add64I, Add64R, Add32I, Add32R;
        Sub => Sub64I, Sub64R, Sub32I, Sub32R;
        Mul => Mul64I, Mul64R, Mul32I, Mul32R;
        Div => Div64I, Div64R, Div32I, Div32R;
        SDiv => SDiv64I, SDiv64R, SDiv32I, SDiv32R;
        Or => Or64I, Or64R, Or32I, Or32R;
        And => And64I, And64R, And32I, And32R;
        Lsh => Lsh64I, Lsh64R, Lsh32I, Lsh32R;
        Rsh => Rsh64I, Rsh64R, Rsh32I, Rsh32R;
        Mod => Mod64I, Mod64R, Mod32I, Mod32R;
        SMod => SMod64I, SMod64R, SMod32I, SMod32R;
        Xor => Xor64I, Xor64R, Xor32I, Xor32R;
        Mov => Mov64I, Mov64R, Mov32I, Mov32R;
        Arsh => Arsh64I, Arsh64R, Arsh32I, Arsh32R;
    }
}

fn jmp(width: Width, cond: JmpCond, dst: u8, src: Operand, t: u32) -> Op {
    // The most frequent compiler-emitted conditions get their own variants.
    match (width, src, cond) {
        (Width::W64, Operand::Imm(i), JmpCond::Eq) => Op::JEq64I(dst, t, i as i64 as u64),
        (Width::W64, Operand::Imm(i), JmpCond::Ne) => Op::JNe64I(dst, t, i as i64 as u64),
        (Width::W64, Operand::Imm(i), JmpCond::Gt) => Op::JGt64I(dst, t, i as i64 as u64),
        (Width::W64, Operand::Imm(i), JmpCond::Lt) => Op::JLt64I(dst, t, i as i64 as u64),
        (Width::W64, Operand::Reg(s), JmpCond::Eq) => Op::JEq64R(dst, s, t),
        (Width::W64, Operand::Reg(s), JmpCond::Ne) => Op::JNe64R(dst, s, t),
        (Width::W64, Operand::Reg(s), JmpCond::Gt) => Op::JGt64R(dst, s, t),
        (Width::W64, Operand::Reg(s), JmpCond::Lt) => Op::JLt64R(dst, s, t),
        (Width::W64, Operand::Imm(i), c) => Op::Jmp64I(c, dst, t, i as i64 as u64),
        (Width::W64, Operand::Reg(s), c) => Op::Jmp64R(c, dst, s, t),
        (Width::W32, Operand::Imm(i), c) => Op::Jmp32I(c, dst, t, i as u32),
        (Width::W32, Operand::Reg(s), c) => Op::Jmp32R(c, dst, s, t),
    }
}
