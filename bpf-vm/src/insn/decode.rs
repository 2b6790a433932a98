//! Decoding: bytes and raw slots to [`Insn`], with errors naming the slot.

use alloc::vec::Vec;
use core::fmt;

use super::*;

/// What is wrong with an instruction (see [`DecodeError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The byte length is not a multiple of 8.
    TrailingBytes(usize),
    /// The program has no instructions.
    Empty,
    /// The opcode byte is not a known instruction.
    UnknownOpcode(u8),
    /// A register field above 10.
    BadRegister(u8),
    /// An instruction writes the read-only frame pointer r10.
    WritesFramePointer,
    /// A field the instruction does not use is not zero (names the field).
    ReservedField(&'static str),
    /// A field holds a value the instruction does not define (names it and the value).
    BadField(&'static str, i64),
    /// `ld_imm64` is the last slot, missing its second half.
    TruncatedLdImm64,
    /// The second slot of a `ld_imm64` is not all zeros except `imm`.
    BadLdImm64Tail,
    /// Legacy packet access (`LD | ABS/IND`) is not supported.
    LegacyPacketAccess,
    /// A constructed instruction has a field its encoding cannot hold
    /// (e.g. a 16-bit jump offset out of range); see [`Program::from_insns`].
    Unencodable,
}

/// A decoding failure at a given slot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Slot index of the offending instruction.
    pub index: usize,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeErrorKind::TrailingBytes(n) => {
                write!(f, "length is not a multiple of 8 ({n} trailing bytes)")
            }
            DecodeErrorKind::Empty => write!(f, "program is empty"),
            DecodeErrorKind::UnknownOpcode(c) => write!(f, "unknown opcode {c:#04x}"),
            DecodeErrorKind::BadRegister(r) => write!(f, "invalid register r{r}"),
            DecodeErrorKind::WritesFramePointer => write!(f, "frame pointer r10 is read-only"),
            DecodeErrorKind::ReservedField(name) => {
                write!(f, "reserved field `{name}` is not zero")
            }
            DecodeErrorKind::BadField(name, v) => write!(f, "invalid `{name}` value {v}"),
            DecodeErrorKind::TruncatedLdImm64 => write!(f, "ld_imm64 is missing its second slot"),
            DecodeErrorKind::BadLdImm64Tail => {
                write!(
                    f,
                    "second slot of ld_imm64 has non-zero fields other than imm"
                )
            }
            DecodeErrorKind::LegacyPacketAccess => {
                write!(f, "legacy packet access (ld abs/ind) is not supported")
            }
            DecodeErrorKind::Unencodable => {
                write!(f, "instruction has a field its encoding cannot hold")
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instruction {}: {}", self.index, self.kind)
    }
}

impl core::error::Error for DecodeError {}

/// Decodes a program from bytes. Never panics; the error names the slot
/// index and what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Program, DecodeError> {
    let n = bytes.len() / 8;
    if !bytes.len().is_multiple_of(8) {
        return Err(DecodeError {
            index: n,
            kind: DecodeErrorKind::TrailingBytes(bytes.len() % 8),
        });
    }
    if n == 0 {
        return Err(DecodeError {
            index: 0,
            kind: DecodeErrorKind::Empty,
        });
    }
    let raws: Vec<RawInsn> = bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            RawInsn::from_bytes(b)
        })
        .collect();
    decode_raw(&raws)
}

/// Decodes a program from raw slots (see [`decode`]).
pub fn decode_raw(raws: &[RawInsn]) -> Result<Program, DecodeError> {
    let mut insns = Vec::with_capacity(raws.len());
    let mut i = 0;
    while i < raws.len() {
        let r = raws[i];
        let insn = decode_one(r, raws.get(i + 1).copied())
            .map_err(|kind| DecodeError { index: i, kind })?;
        insns.push(insn);
        if let Insn::LdImm64 { .. } = insn {
            insns.push(Insn::LdImm64Tail);
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(Program { insns })
}

fn reg(r: u8) -> Result<u8, DecodeErrorKind> {
    if r > 10 {
        Err(DecodeErrorKind::BadRegister(r))
    } else {
        Ok(r)
    }
}

/// A register that the instruction writes (r10 only when `fp_writable`).
fn wreg(r: u8, fp_writable: bool) -> Result<u8, DecodeErrorKind> {
    match reg(r)? {
        R10 if !fp_writable => Err(DecodeErrorKind::WritesFramePointer),
        r => Ok(r),
    }
}

fn zero(v: i64, name: &'static str) -> Result<(), DecodeErrorKind> {
    if v != 0 {
        Err(DecodeErrorKind::ReservedField(name))
    } else {
        Ok(())
    }
}

/// Decodes one instruction; `next` is the following slot (for `ld_imm64`).
pub(super) fn decode_one(r: RawInsn, next: Option<RawInsn>) -> Result<Insn, DecodeErrorKind> {
    decode_slot(r, next, false)
}

/// The instruction at slot `index` of `bytes`, for an error message about
/// it: decoded like [`decode`] does, except that a write to r10 is given
/// back as the instruction it is (the program is still refused; this only
/// lets the refusal show what was written). `None` when the slot does not
/// decode for another reason.
pub fn decode_for_message(bytes: &[u8], index: usize) -> Option<Insn> {
    let slot = |i: usize| {
        let b = bytes.get(i.checked_mul(8)?..i.checked_mul(8)? + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(RawInsn::from_bytes(a))
    };
    decode_slot(slot(index)?, index.checked_add(1).and_then(slot), true).ok()
}

fn decode_slot(
    r: RawInsn,
    next: Option<RawInsn>,
    fp_writable: bool,
) -> Result<Insn, DecodeErrorKind> {
    let wreg = |r: u8| wreg(r, fp_writable);
    let code = r.code;
    match code & class::MASK {
        class::ALU | class::ALU64 => decode_alu(r, fp_writable),
        class::JMP | class::JMP32 => decode_jmp(r),
        class::LD => {
            match code & mode::MASK {
                mode::ABS | mode::IND => return Err(DecodeErrorKind::LegacyPacketAccess),
                mode::IMM if code & size::MASK == size::DW => {}
                _ => return Err(DecodeErrorKind::UnknownOpcode(code)),
            }
            let dst = wreg(r.dst)?;
            zero(r.off as i64, "off")?;
            let t = next.ok_or(DecodeErrorKind::TruncatedLdImm64)?;
            if t.code != 0 || t.dst != 0 || t.src != 0 || t.off != 0 {
                return Err(DecodeErrorKind::BadLdImm64Tail);
            }
            let src = match r.src {
                pseudo::IMM => {
                    LdImm64Src::Imm((r.imm as u32 as u64) | ((t.imm as u32 as u64) << 32))
                }
                pseudo::MAP_FD => {
                    zero(t.imm as i64, "imm of second slot")?;
                    LdImm64Src::MapFd(r.imm)
                }
                pseudo::MAP_VALUE => LdImm64Src::MapValueFd {
                    fd: r.imm,
                    off: t.imm as u32,
                },
                pseudo::MAP_IDX => {
                    zero(t.imm as i64, "imm of second slot")?;
                    LdImm64Src::MapIdx(r.imm)
                }
                pseudo::MAP_IDX_VALUE => LdImm64Src::MapValueIdx {
                    idx: r.imm,
                    off: t.imm as u32,
                },
                s => {
                    return Err(DecodeErrorKind::BadField(
                        "src (ld_imm64 pseudo source)",
                        s as i64,
                    ))
                }
            };
            Ok(Insn::LdImm64 { dst, src })
        }
        class::LDX => {
            let size = Size::from_code(code);
            zero(r.imm as i64, "imm")?;
            let (dst, src, off) = (wreg(r.dst)?, reg(r.src)?, r.off);
            match code & mode::MASK {
                mode::MEM => Ok(Insn::Load {
                    size,
                    dst,
                    src,
                    off,
                }),
                mode::MEMSX if size != Size::DW => Ok(Insn::LoadSx {
                    size,
                    dst,
                    src,
                    off,
                }),
                _ => Err(DecodeErrorKind::UnknownOpcode(code)),
            }
        }
        class::ST => {
            if code & mode::MASK != mode::MEM {
                return Err(DecodeErrorKind::UnknownOpcode(code));
            }
            zero(r.src as i64, "src")?;
            Ok(Insn::StoreImm {
                size: Size::from_code(code),
                dst: reg(r.dst)?,
                off: r.off,
                imm: r.imm,
            })
        }
        _ => {
            // class::STX
            let size = Size::from_code(code);
            let (dst, src, off) = (reg(r.dst)?, reg(r.src)?, r.off);
            match code & mode::MASK {
                mode::MEM => {
                    zero(r.imm as i64, "imm")?;
                    Ok(Insn::Store {
                        size,
                        dst,
                        off,
                        src,
                    })
                }
                mode::ATOMIC if matches!(size, Size::W | Size::DW) => {
                    let (op, fetch) = match r.imm {
                        atomic::ADD => (AtomicOp::Add, false),
                        atomic::OR => (AtomicOp::Or, false),
                        atomic::AND => (AtomicOp::And, false),
                        atomic::XOR => (AtomicOp::Xor, false),
                        x if x == atomic::ADD | atomic::FETCH => (AtomicOp::Add, true),
                        x if x == atomic::OR | atomic::FETCH => (AtomicOp::Or, true),
                        x if x == atomic::AND | atomic::FETCH => (AtomicOp::And, true),
                        x if x == atomic::XOR | atomic::FETCH => (AtomicOp::Xor, true),
                        atomic::XCHG => (AtomicOp::Xchg, true),
                        atomic::CMPXCHG => (AtomicOp::CmpXchg, true),
                        x => {
                            return Err(DecodeErrorKind::BadField(
                                "imm (atomic operation)",
                                x as i64,
                            ))
                        }
                    };
                    // Fetching writes the old value into src (r0 for cmpxchg).
                    if fetch && op != AtomicOp::CmpXchg {
                        wreg(src)?;
                    }
                    Ok(Insn::Atomic {
                        size,
                        op,
                        fetch,
                        dst,
                        off,
                        src,
                    })
                }
                _ => Err(DecodeErrorKind::UnknownOpcode(code)),
            }
        }
    }
}

fn decode_alu(r: RawInsn, fp_writable: bool) -> Result<Insn, DecodeErrorKind> {
    let code = r.code;
    let width = if code & class::MASK == class::ALU64 {
        Width::W64
    } else {
        Width::W32
    };
    let x = code & source::MASK == source::X;
    let op = code & alu::MASK;
    let dst = wreg(r.dst, fp_writable)?;
    match op {
        alu::NEG => {
            if x {
                return Err(DecodeErrorKind::UnknownOpcode(code));
            }
            zero(r.src as i64, "src")?;
            zero(r.off as i64, "off")?;
            zero(r.imm as i64, "imm")?;
            return Ok(Insn::Neg { width, dst });
        }
        alu::END => {
            zero(r.src as i64, "src")?;
            zero(r.off as i64, "off")?;
            let order = match (width, x) {
                (Width::W32, false) => ByteOrder::Le,
                (Width::W32, true) => ByteOrder::Be,
                (Width::W64, false) => ByteOrder::Swap,
                (Width::W64, true) => return Err(DecodeErrorKind::UnknownOpcode(code)),
            };
            let bits = match r.imm {
                16 => 16,
                32 => 32,
                64 => 64,
                v => return Err(DecodeErrorKind::BadField("imm (byte-swap width)", v as i64)),
            };
            return Ok(Insn::Endian { order, bits, dst });
        }
        _ => {}
    }
    let src = if x {
        zero(r.imm as i64, "imm")?;
        Operand::Reg(reg(r.src)?)
    } else {
        zero(r.src as i64, "src")?;
        Operand::Imm(r.imm)
    };
    let signed = match (op, r.off) {
        (alu::DIV | alu::MOD, 0) => false,
        (alu::DIV | alu::MOD, 1) => true,
        (alu::DIV | alu::MOD, o) => {
            return Err(DecodeErrorKind::BadField("off (signedness)", o as i64))
        }
        (alu::MOV, 0) => false,
        (alu::MOV, o) => {
            let Operand::Reg(s) = src else {
                return Err(DecodeErrorKind::ReservedField("off"));
            };
            let bits = match (o, width) {
                (8, _) | (16, _) | (32, Width::W64) => o as u8,
                _ => return Err(DecodeErrorKind::BadField("off (movsx width)", o as i64)),
            };
            return Ok(Insn::MovSx {
                width,
                bits,
                dst,
                src: s,
            });
        }
        (_, o) => {
            zero(o as i64, "off")?;
            false
        }
    };
    let op = match op {
        alu::ADD => AluOp::Add,
        alu::SUB => AluOp::Sub,
        alu::MUL => AluOp::Mul,
        alu::DIV if signed => AluOp::SDiv,
        alu::DIV => AluOp::Div,
        alu::OR => AluOp::Or,
        alu::AND => AluOp::And,
        alu::LSH => AluOp::Lsh,
        alu::RSH => AluOp::Rsh,
        alu::MOD if signed => AluOp::SMod,
        alu::MOD => AluOp::Mod,
        alu::XOR => AluOp::Xor,
        alu::MOV => AluOp::Mov,
        alu::ARSH => AluOp::Arsh,
        _ => return Err(DecodeErrorKind::UnknownOpcode(code)),
    };
    Ok(Insn::Alu {
        width,
        op,
        dst,
        src,
    })
}

fn decode_jmp(r: RawInsn) -> Result<Insn, DecodeErrorKind> {
    let code = r.code;
    let wide = code & class::MASK == class::JMP;
    let width = if wide { Width::W64 } else { Width::W32 };
    let x = code & source::MASK == source::X;
    let op = code & alu::MASK;
    let cond = match op {
        jmp::JA => {
            if x {
                return Err(DecodeErrorKind::UnknownOpcode(code));
            }
            zero(r.dst as i64, "dst")?;
            zero(r.src as i64, "src")?;
            return if wide {
                zero(r.imm as i64, "imm")?;
                Ok(Insn::Ja {
                    off: r.off as i32,
                    long: false,
                })
            } else {
                zero(r.off as i64, "off")?;
                Ok(Insn::Ja {
                    off: r.imm,
                    long: true,
                })
            };
        }
        jmp::CALL if wide => {
            zero(r.off as i64, "off")?;
            if x {
                zero(r.src as i64, "src")?;
                zero(r.imm as i64, "imm")?;
                return Ok(Insn::CallX { reg: reg(r.dst)? });
            }
            zero(r.dst as i64, "dst")?;
            return match r.src {
                0 => Ok(Insn::Call { id: r.imm }),
                pseudo::CALL_LOCAL => Ok(Insn::CallLocal { off: r.imm }),
                s => Err(DecodeErrorKind::BadField("src (call kind)", s as i64)),
            };
        }
        jmp::EXIT if wide && !x => {
            zero(r.dst as i64, "dst")?;
            zero(r.src as i64, "src")?;
            zero(r.off as i64, "off")?;
            zero(r.imm as i64, "imm")?;
            return Ok(Insn::Exit);
        }
        jmp::JEQ => JmpCond::Eq,
        jmp::JGT => JmpCond::Gt,
        jmp::JGE => JmpCond::Ge,
        jmp::JSET => JmpCond::Set,
        jmp::JNE => JmpCond::Ne,
        jmp::JSGT => JmpCond::Sgt,
        jmp::JSGE => JmpCond::Sge,
        jmp::JLT => JmpCond::Lt,
        jmp::JLE => JmpCond::Le,
        jmp::JSLT => JmpCond::Slt,
        jmp::JSLE => JmpCond::Sle,
        _ => return Err(DecodeErrorKind::UnknownOpcode(code)),
    };
    let src = if x {
        zero(r.imm as i64, "imm")?;
        Operand::Reg(reg(r.src)?)
    } else {
        zero(r.src as i64, "src")?;
        Operand::Imm(r.imm)
    };
    Ok(Insn::Jmp {
        width,
        cond,
        dst: reg(r.dst)?,
        src,
        off: r.off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    fn raw(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        RawInsn {
            code,
            dst,
            src,
            off,
            imm,
        }
        .to_bytes()
    }

    #[test]
    fn raw_roundtrip() {
        let r = RawInsn::from_u64(0x5566778800000018);
        assert_eq!(r.code, 0x18);
        assert_eq!(r.imm, 0x55667788);
        assert_eq!(r.to_u64(), 0x5566778800000018);
    }

    #[test]
    fn ld_imm64_two_slots() {
        let mut b = Vec::new();
        b.extend_from_slice(&RawInsn::from_u64(0x5566778800000018).to_bytes());
        b.extend_from_slice(&RawInsn::from_u64(0x1122334400000000).to_bytes());
        b.extend_from_slice(&RawInsn::from_u64(0x95).to_bytes());
        let p = decode(&b).unwrap();
        assert_eq!(
            p.insns(),
            &[
                Insn::LdImm64 {
                    dst: 0,
                    src: LdImm64Src::Imm(0x1122334455667788)
                },
                Insn::LdImm64Tail,
                Insn::Exit
            ]
        );
        assert_eq!(p.encode(), b);
    }

    #[test]
    fn errors_name_index_and_problem() {
        let mut b = Vec::new();
        b.extend_from_slice(&raw(0xb7, 0, 0, 0, 1));
        b.extend_from_slice(&raw(0xb7, 11, 0, 0, 1));
        let e = decode(&b).unwrap_err();
        assert_eq!(e.index, 1);
        assert_eq!(e.to_string(), "instruction 1: invalid register r11");

        let e = decode(&raw(0x18, 0, 0, 0, 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instruction 0: ld_imm64 is missing its second slot"
        );
        let e = decode(&raw(0xff, 0, 0, 0, 0)).unwrap_err();
        assert_eq!(e.to_string(), "instruction 0: unknown opcode 0xff");
        let e = decode(&raw(0x95, 0, 0, 0, 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instruction 0: reserved field `imm` is not zero"
        );
        let e = decode(&raw(0xb7, 10, 0, 0, 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instruction 0: frame pointer r10 is read-only"
        );
        let e = decode(&[0u8; 5]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instruction 0: length is not a multiple of 8 (5 trailing bytes)"
        );
    }

    #[test]
    fn from_insns_validates_like_decode() {
        let bad = |i: Insn| Program::from_insns(alloc::vec![i, Insn::Exit]).unwrap_err();
        let e = bad(Insn::Neg {
            width: Width::W64,
            dst: 10,
        });
        assert_eq!(
            e.to_string(),
            "instruction 0: frame pointer r10 is read-only"
        );
        let e = bad(Insn::Load {
            size: Size::W,
            dst: 1,
            src: 12,
            off: 0,
        });
        assert_eq!(e.to_string(), "instruction 0: invalid register r12");
        let e = bad(Insn::Ja {
            off: 40_000,
            long: false,
        });
        assert_eq!(
            e.to_string(),
            "instruction 0: instruction has a field its encoding cannot hold"
        );
        let e = bad(Insn::LoadSx {
            size: Size::DW,
            dst: 1,
            src: 2,
            off: 0,
        });
        assert_eq!(e.to_string(), "instruction 0: unknown opcode 0x99");
        assert!(Program::from_insns(alloc::vec![
            Insn::Ja {
                off: 40_000,
                long: true
            },
            Insn::Exit
        ])
        .is_ok());
    }

    #[test]
    fn v4_forms() {
        // sdiv64 r1, 3
        let p = decode(&raw(0x37, 1, 0, 1, 3)).unwrap();
        assert_eq!(
            p[0],
            Insn::Alu {
                width: Width::W64,
                op: AluOp::SDiv,
                dst: 1,
                src: Operand::Imm(3)
            }
        );
        // movsx32 r1, (s16) r2
        let p = decode(&raw(0xbc, 1, 2, 16, 0)).unwrap();
        assert_eq!(
            p[0],
            Insn::MovSx {
                width: Width::W32,
                bits: 16,
                dst: 1,
                src: 2
            }
        );
        // gotol +5
        let p = decode(&raw(0x06, 0, 0, 0, 5)).unwrap();
        assert_eq!(p[0], Insn::Ja { off: 5, long: true });
        assert_eq!(p[0].jump_target(10), Some(16));
    }

    #[test]
    fn every_single_slot_encoding_roundtrips_or_errors() {
        // Exhaustive over opcode and registers with a few off/imm values: decode
        // never panics, and whatever decodes re-encodes to the same bytes.
        for code in 0..=255u8 {
            for regs in [0x00u8, 0x21, 0x1a, 0xa1, 0xbb, 0x01, 0x10] {
                for (off, imm) in [
                    (0i16, 0i32),
                    (1, 0),
                    (8, 0),
                    (16, 16),
                    (32, 32),
                    (0, 64),
                    (-1, -1),
                    (0, 0xe1),
                    (0, 0xf1),
                    (0, 1),
                ] {
                    let b = [
                        code,
                        regs,
                        off as u8,
                        (off >> 8) as u8,
                        imm as u8,
                        (imm >> 8) as u8,
                        (imm >> 16) as u8,
                        (imm >> 24) as u8,
                    ];
                    let mut two = b.to_vec();
                    two.extend_from_slice(&[0, 0, 0, 0, 7, 0, 0, 0]);
                    for bytes in [&b[..], &two[..]] {
                        if let Ok(p) = decode(bytes) {
                            assert_eq!(p.encode(), bytes, "code {code:#x}");
                        }
                    }
                }
            }
        }
    }
}
