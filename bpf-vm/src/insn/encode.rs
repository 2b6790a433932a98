//! Encoding: [`Insn`] back to raw slots and bytes.

use alloc::vec::Vec;

use super::*;

impl Insn {
    /// The absolute slot a jump or local call at `pc` targets, or `None` when
    /// the instruction does not branch. The result may lie outside the
    /// program (checking that is the verifier's and interpreter's job).
    pub fn jump_target(&self, pc: usize) -> Option<i64> {
        let off = match *self {
            Insn::Ja { off, .. } | Insn::CallLocal { off } => off as i64,
            Insn::Jmp { off, .. } => off as i64,
            _ => return None,
        };
        Some(pc as i64 + 1 + off)
    }

    /// Number of slots the instruction occupies in the encoding (2 for `ld_imm64`, 0 for its tail).
    pub fn slots(&self) -> usize {
        match self {
            Insn::LdImm64 { .. } => 2,
            Insn::LdImm64Tail => 0,
            _ => 1,
        }
    }

    /// Encodes the instruction into raw slots (two for `ld_imm64`, none for its tail).
    pub fn to_raw(&self) -> ([RawInsn; 2], usize) {
        let mut r = RawInsn::default();
        let mut second = RawInsn::default();
        let mut n = 1;
        match *self {
            Insn::Alu {
                width,
                op,
                dst,
                src,
            } => {
                let (code, off) = match op {
                    AluOp::Add => (alu::ADD, 0),
                    AluOp::Sub => (alu::SUB, 0),
                    AluOp::Mul => (alu::MUL, 0),
                    AluOp::Div => (alu::DIV, 0),
                    AluOp::SDiv => (alu::DIV, 1),
                    AluOp::Or => (alu::OR, 0),
                    AluOp::And => (alu::AND, 0),
                    AluOp::Lsh => (alu::LSH, 0),
                    AluOp::Rsh => (alu::RSH, 0),
                    AluOp::Mod => (alu::MOD, 0),
                    AluOp::SMod => (alu::MOD, 1),
                    AluOp::Xor => (alu::XOR, 0),
                    AluOp::Mov => (alu::MOV, 0),
                    AluOp::Arsh => (alu::ARSH, 0),
                };
                r.code = alu_class(width) | code;
                r.dst = dst;
                r.off = off;
                match src {
                    Operand::Reg(s) => {
                        r.code |= source::X;
                        r.src = s;
                    }
                    Operand::Imm(i) => r.imm = i,
                }
            }
            Insn::Neg { width, dst } => {
                r.code = alu_class(width) | alu::NEG;
                r.dst = dst;
            }
            Insn::MovSx {
                width,
                bits,
                dst,
                src,
            } => {
                r.code = alu_class(width) | alu::MOV | source::X;
                r.dst = dst;
                r.src = src;
                r.off = bits as i16;
            }
            Insn::Endian { order, bits, dst } => {
                r.code = match order {
                    ByteOrder::Le => class::ALU | alu::END | source::K,
                    ByteOrder::Be => class::ALU | alu::END | source::X,
                    ByteOrder::Swap => class::ALU64 | alu::END,
                };
                r.dst = dst;
                r.imm = bits as i32;
            }
            Insn::Ja { off, long } => {
                if long {
                    r.code = class::JMP32 | jmp::JA;
                    r.imm = off;
                } else {
                    r.code = class::JMP | jmp::JA;
                    r.off = off as i16;
                }
            }
            Insn::Jmp {
                width,
                cond,
                dst,
                src,
                off,
            } => {
                let cls = match width {
                    Width::W32 => class::JMP32,
                    Width::W64 => class::JMP,
                };
                r.code = cls | cond_code(cond);
                r.dst = dst;
                r.off = off;
                match src {
                    Operand::Reg(s) => {
                        r.code |= source::X;
                        r.src = s;
                    }
                    Operand::Imm(i) => r.imm = i,
                }
            }
            Insn::Call { id } => {
                r.code = class::JMP | jmp::CALL;
                r.imm = id;
            }
            Insn::CallLocal { off } => {
                r.code = class::JMP | jmp::CALL;
                r.src = pseudo::CALL_LOCAL;
                r.imm = off;
            }
            Insn::CallX { reg } => {
                r.code = class::JMP | jmp::CALL | source::X;
                r.dst = reg;
            }
            Insn::Exit => r.code = class::JMP | jmp::EXIT,
            Insn::Load {
                size,
                dst,
                src,
                off,
            } => {
                r.code = class::LDX | mode::MEM | size.code();
                r.dst = dst;
                r.src = src;
                r.off = off;
            }
            Insn::LoadSx {
                size,
                dst,
                src,
                off,
            } => {
                r.code = class::LDX | mode::MEMSX | size.code();
                r.dst = dst;
                r.src = src;
                r.off = off;
            }
            Insn::Store {
                size,
                dst,
                off,
                src,
            } => {
                r.code = class::STX | mode::MEM | size.code();
                r.dst = dst;
                r.src = src;
                r.off = off;
            }
            Insn::StoreImm {
                size,
                dst,
                off,
                imm,
            } => {
                r.code = class::ST | mode::MEM | size.code();
                r.dst = dst;
                r.off = off;
                r.imm = imm;
            }
            Insn::Atomic {
                size,
                op,
                fetch,
                dst,
                off,
                src,
            } => {
                r.code = class::STX | mode::ATOMIC | size.code();
                r.dst = dst;
                r.src = src;
                r.off = off;
                let f = if fetch { atomic::FETCH } else { 0 };
                r.imm = match op {
                    AtomicOp::Add => atomic::ADD | f,
                    AtomicOp::Or => atomic::OR | f,
                    AtomicOp::And => atomic::AND | f,
                    AtomicOp::Xor => atomic::XOR | f,
                    AtomicOp::Xchg => atomic::XCHG,
                    AtomicOp::CmpXchg => atomic::CMPXCHG,
                };
            }
            Insn::LdImm64 { dst, src } => {
                r.code = class::LD | mode::IMM | size::DW;
                r.dst = dst;
                n = 2;
                let (s, lo, hi) = match src {
                    LdImm64Src::Imm(v) => (pseudo::IMM, v as u32 as i32, (v >> 32) as u32 as i32),
                    LdImm64Src::MapFd(fd) => (pseudo::MAP_FD, fd, 0),
                    LdImm64Src::MapValueFd { fd, off } => (pseudo::MAP_VALUE, fd, off as i32),
                    LdImm64Src::MapIdx(i) => (pseudo::MAP_IDX, i, 0),
                    LdImm64Src::MapValueIdx { idx, off } => {
                        (pseudo::MAP_IDX_VALUE, idx, off as i32)
                    }
                };
                r.src = s;
                r.imm = lo;
                second.imm = hi;
            }
            Insn::LdImm64Tail => n = 0,
        }
        ([r, second], n)
    }
}

fn alu_class(width: Width) -> u8 {
    match width {
        Width::W32 => class::ALU,
        Width::W64 => class::ALU64,
    }
}

fn cond_code(cond: JmpCond) -> u8 {
    match cond {
        JmpCond::Eq => jmp::JEQ,
        JmpCond::Gt => jmp::JGT,
        JmpCond::Ge => jmp::JGE,
        JmpCond::Set => jmp::JSET,
        JmpCond::Ne => jmp::JNE,
        JmpCond::Sgt => jmp::JSGT,
        JmpCond::Sge => jmp::JSGE,
        JmpCond::Lt => jmp::JLT,
        JmpCond::Le => jmp::JLE,
        JmpCond::Slt => jmp::JSLT,
        JmpCond::Sle => jmp::JSLE,
    }
}

/// Encodes slots to bytes (`LdImm64` writes both of its slots; `LdImm64Tail` nothing).
pub fn encode(insns: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(insns.len() * 8);
    for insn in insns {
        let (raw, n) = insn.to_raw();
        for r in &raw[..n] {
            out.extend_from_slice(&r.to_bytes());
        }
    }
    out
}
