//! The BPF instruction set (RFC 9669 plus the v4 additions): opcode constants,
//! the raw 8-byte instruction, a decoded [`Insn`] enum and [`decode`]/[`encode`].
//!
//! An instruction is 8 bytes, little-endian:
//!
//! ```text
//!  byte 0      byte 1            bytes 2-3      bytes 4-7
//! +--------+--------+--------+---------------+-------------------+
//! | opcode | src:4  | dst:4  |  off (i16)    |     imm (i32)     |
//! +--------+--------+--------+---------------+-------------------+
//!            (high nibble = src, low nibble = dst)
//! ```
//!
//! The opcode byte is split two ways, depending on the class (low 3 bits):
//!
//! ```text
//! ALU / ALU64 / JMP / JMP32:   | op:4 | source:1 | class:3 |
//! LD / LDX / ST / STX:         | mode:3 | size:2 | class:3 |
//! ```
//!
//! `ld_imm64` (`lddw`) is the only 16-byte instruction: its second 8-byte slot
//! carries the upper 32 bits of the immediate. A [`Program`] is indexed by
//! *slot*, so jump offsets map directly onto indices; the second slot of a
//! `ld_imm64` decodes to [`Insn::LdImm64Tail`], which is never a valid jump target.

use alloc::vec::Vec;
use core::fmt;

/// Instruction classes (low 3 bits of the opcode).
pub mod class {
    /// Non-standard loads (only `ld_imm64` is supported).
    pub const LD: u8 = 0x00;
    /// Loads into a register.
    pub const LDX: u8 = 0x01;
    /// Stores of an immediate.
    pub const ST: u8 = 0x02;
    /// Stores of a register (and atomics).
    pub const STX: u8 = 0x03;
    /// 32-bit arithmetic.
    pub const ALU: u8 = 0x04;
    /// 64-bit jumps, calls and exit.
    pub const JMP: u8 = 0x05;
    /// 32-bit jumps.
    pub const JMP32: u8 = 0x06;
    /// 64-bit arithmetic.
    pub const ALU64: u8 = 0x07;
    /// Mask extracting the class.
    pub const MASK: u8 = 0x07;
}

/// Access sizes of load/store opcodes (bits 3-4).
pub mod size {
    /// 4 bytes.
    pub const W: u8 = 0x00;
    /// 2 bytes.
    pub const H: u8 = 0x08;
    /// 1 byte.
    pub const B: u8 = 0x10;
    /// 8 bytes.
    pub const DW: u8 = 0x18;
    /// Mask extracting the size.
    pub const MASK: u8 = 0x18;
}

/// Modes of load/store opcodes (bits 5-7).
pub mod mode {
    /// 64-bit immediate (`ld_imm64`).
    pub const IMM: u8 = 0x00;
    /// Legacy packet access (not supported).
    pub const ABS: u8 = 0x20;
    /// Legacy packet access (not supported).
    pub const IND: u8 = 0x40;
    /// Regular memory access.
    pub const MEM: u8 = 0x60;
    /// Sign-extending load.
    pub const MEMSX: u8 = 0x80;
    /// Atomic read-modify-write.
    pub const ATOMIC: u8 = 0xc0;
    /// Mask extracting the mode.
    pub const MASK: u8 = 0xe0;
}

/// Operand source bit of ALU/JMP opcodes (bit 3); for `END` it selects the byte order.
pub mod source {
    /// Immediate operand (`imm`); for `END`: to little endian.
    pub const K: u8 = 0x00;
    /// Register operand (`src`); for `END`: to big endian.
    pub const X: u8 = 0x08;
    /// Mask extracting the source bit.
    pub const MASK: u8 = 0x08;
}

/// ALU operations (high 4 bits of ALU/ALU64 opcodes).
pub mod alu {
    #![allow(missing_docs)]
    pub const ADD: u8 = 0x00;
    pub const SUB: u8 = 0x10;
    pub const MUL: u8 = 0x20;
    pub const DIV: u8 = 0x30;
    pub const OR: u8 = 0x40;
    pub const AND: u8 = 0x50;
    pub const LSH: u8 = 0x60;
    pub const RSH: u8 = 0x70;
    pub const NEG: u8 = 0x80;
    pub const MOD: u8 = 0x90;
    pub const XOR: u8 = 0xa0;
    pub const MOV: u8 = 0xb0;
    pub const ARSH: u8 = 0xc0;
    pub const END: u8 = 0xd0;
    /// Mask extracting the operation.
    pub const MASK: u8 = 0xf0;
}

/// Jump operations (high 4 bits of JMP/JMP32 opcodes).
pub mod jmp {
    #![allow(missing_docs)]
    pub const JA: u8 = 0x00;
    pub const JEQ: u8 = 0x10;
    pub const JGT: u8 = 0x20;
    pub const JGE: u8 = 0x30;
    pub const JSET: u8 = 0x40;
    pub const JNE: u8 = 0x50;
    pub const JSGT: u8 = 0x60;
    pub const JSGE: u8 = 0x70;
    pub const CALL: u8 = 0x80;
    pub const EXIT: u8 = 0x90;
    pub const JLT: u8 = 0xa0;
    pub const JLE: u8 = 0xb0;
    pub const JSLT: u8 = 0xc0;
    pub const JSLE: u8 = 0xd0;
}

/// Atomic operations (the `imm` field of `STX | ATOMIC` instructions).
pub mod atomic {
    /// `*ptr += src`.
    pub const ADD: i32 = 0x00;
    /// `*ptr |= src`.
    pub const OR: i32 = 0x40;
    /// `*ptr &= src`.
    pub const AND: i32 = 0x50;
    /// `*ptr ^= src`.
    pub const XOR: i32 = 0xa0;
    /// Modifier: the old value is returned in `src`.
    pub const FETCH: i32 = 0x01;
    /// Exchange (always fetching): `0xe0 | FETCH`.
    pub const XCHG: i32 = 0xe0 | FETCH;
    /// Compare and exchange with `r0` (always fetching): `0xf0 | FETCH`.
    pub const CMPXCHG: i32 = 0xf0 | FETCH;
}

/// `src` values of `ld_imm64` (pseudo sources, as in Linux).
pub mod pseudo {
    /// Plain 64-bit immediate.
    pub const IMM: u8 = 0;
    /// `imm` is a map file descriptor.
    pub const MAP_FD: u8 = 1;
    /// `imm` is a map fd, the second slot's `imm` an offset into its value.
    pub const MAP_VALUE: u8 = 2;
    /// `imm` is an index into the program's map array.
    pub const MAP_IDX: u8 = 5;
    /// `imm` is a map index, the second slot's `imm` an offset into its value.
    pub const MAP_IDX_VALUE: u8 = 6;
    /// `src` of `call` for a bpf-to-bpf call.
    pub const CALL_LOCAL: u8 = 1;
}

/// The frame pointer register (read-only).
pub const R10: u8 = 10;
/// Number of registers `r0..=r10`.
pub const NUM_REGS: usize = 11;
/// Bytes of stack each call frame gets.
pub const STACK_SIZE: usize = 512;

/// One raw 8-byte instruction slot, fields split but not interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RawInsn {
    /// Opcode byte.
    pub code: u8,
    /// Destination register (low nibble of byte 1).
    pub dst: u8,
    /// Source register (high nibble of byte 1).
    pub src: u8,
    /// Signed 16-bit offset.
    pub off: i16,
    /// Signed 32-bit immediate.
    pub imm: i32,
}

impl RawInsn {
    /// Splits 8 little-endian bytes into fields.
    pub fn from_bytes(b: [u8; 8]) -> RawInsn {
        RawInsn {
            code: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// Joins the fields into 8 little-endian bytes (registers are masked to 4 bits).
    pub fn to_bytes(self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code,
            (self.dst & 0x0f) | (self.src << 4),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }

    /// The instruction as one 64-bit word (byte 0 in the low bits), as in the
    /// conformance suite's `-- raw` sections.
    pub fn to_u64(self) -> u64 {
        u64::from_le_bytes(self.to_bytes())
    }

    /// Inverse of [`RawInsn::to_u64`].
    pub fn from_u64(word: u64) -> RawInsn {
        RawInsn::from_bytes(word.to_le_bytes())
    }
}

/// Operand width of ALU and jump instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    /// 32-bit (`ALU`, `JMP32`): operands are the low halves; ALU results zero-extend.
    W32,
    /// 64-bit (`ALU64`, `JMP`).
    W64,
}

/// Second operand of ALU and conditional jump instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// A register `r0..=r10`.
    Reg(u8),
    /// The immediate, sign-extended to 64 bits (and truncated back for 32-bit ops).
    Imm(i32),
}

/// Binary ALU operations (`NEG`, `END` and `movsx` are separate [`Insn`] variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    /// `dst += src`
    Add,
    /// `dst -= src`
    Sub,
    /// `dst *= src`
    Mul,
    /// Unsigned `dst /= src`; division by zero yields 0.
    Div,
    /// Signed division (`DIV` with `off = 1`); division by zero yields 0.
    SDiv,
    /// `dst |= src`
    Or,
    /// `dst &= src`
    And,
    /// `dst <<= src` (shift masked to the width)
    Lsh,
    /// Logical `dst >>= src`
    Rsh,
    /// Unsigned `dst %= src`; modulo by zero leaves `dst` unchanged.
    Mod,
    /// Signed modulo (`MOD` with `off = 1`); modulo by zero leaves `dst` unchanged.
    SMod,
    /// `dst ^= src`
    Xor,
    /// `dst = src`
    Mov,
    /// Arithmetic `dst >>= src`
    Arsh,
}

/// Conditions of conditional jumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JmpCond {
    /// `==`
    Eq,
    /// unsigned `>`
    Gt,
    /// unsigned `>=`
    Ge,
    /// `dst & src != 0`
    Set,
    /// `!=`
    Ne,
    /// signed `>`
    Sgt,
    /// signed `>=`
    Sge,
    /// unsigned `<`
    Lt,
    /// unsigned `<=`
    Le,
    /// signed `<`
    Slt,
    /// signed `<=`
    Sle,
}

/// Memory access size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// 1 byte.
    B,
    /// 2 bytes.
    H,
    /// 4 bytes.
    W,
    /// 8 bytes.
    DW,
}

impl Size {
    /// Size in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Size::B => 1,
            Size::H => 2,
            Size::W => 4,
            Size::DW => 8,
        }
    }

    fn from_code(code: u8) -> Size {
        match code & size::MASK {
            size::W => Size::W,
            size::H => Size::H,
            size::B => Size::B,
            _ => Size::DW,
        }
    }

    const fn code(self) -> u8 {
        match self {
            Size::B => size::B,
            Size::H => size::H,
            Size::W => size::W,
            Size::DW => size::DW,
        }
    }
}

/// Atomic read-modify-write operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    /// `*ptr += src` (with `fetch`: `src` = old value).
    Add,
    /// `*ptr |= src`
    Or,
    /// `*ptr &= src`
    And,
    /// `*ptr ^= src`
    Xor,
    /// `src = xchg(*ptr, src)` (always fetches).
    Xchg,
    /// `r0 = cmpxchg(*ptr, r0, src)` (always fetches, into `r0`).
    CmpXchg,
}

/// Byte-order operations (`END`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// `le16/32/64`: convert to little endian (on our little-endian VM: truncate).
    Le,
    /// `be16/32/64`: convert to big endian (swap, then truncate).
    Be,
    /// `bswap16/32/64` (`ALU64 | END`): unconditional swap.
    Swap,
}

/// What a `ld_imm64` loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LdImm64Src {
    /// A plain 64-bit constant (`src = 0`).
    Imm(u64),
    /// The map whose file descriptor is given (`src = 1`).
    MapFd(i32),
    /// The address of a map value plus an offset (`src = 2`).
    MapValueFd {
        /// Map file descriptor.
        fd: i32,
        /// Offset into the value (second slot's `imm`).
        off: u32,
    },
    /// The map at an index of the program's map array (`src = 5`).
    MapIdx(i32),
    /// The address of the value of the map at an index, plus an offset (`src = 6`).
    MapValueIdx {
        /// Map index.
        idx: i32,
        /// Offset into the value.
        off: u32,
    },
}

/// One decoded instruction slot.
///
/// Registers are `u8` in `0..=10`; [`decode`] guarantees it, and that `r10`
/// is never written. Offsets are relative as in the encoding: a jump at slot
/// `pc` with offset `off` goes to `pc + 1 + off` (see [`Insn::jump_target`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Insn {
    /// `dst = dst op src` on 32 or 64 bits.
    Alu {
        /// Operand width.
        width: Width,
        /// Operation.
        op: AluOp,
        /// Destination register.
        dst: u8,
        /// Second operand.
        src: Operand,
    },
    /// `dst = -dst`.
    Neg {
        /// Operand width.
        width: Width,
        /// Destination register.
        dst: u8,
    },
    /// `dst = (sign-extend bits of src)`: `movsx` (`MOV | X` with `off` 8/16/32).
    MovSx {
        /// Width of the result (W32 zero-extends it to 64 bits; 32→W32 is not valid).
        width: Width,
        /// Number of low bits of `src` taken: 8, 16 or 32.
        bits: u8,
        /// Destination register.
        dst: u8,
        /// Source register.
        src: u8,
    },
    /// Byte-order conversion of the low `bits` (16, 32 or 64) of `dst`.
    Endian {
        /// Le, Be or unconditional Swap.
        order: ByteOrder,
        /// 16, 32 or 64.
        bits: u8,
        /// Register converted in place.
        dst: u8,
    },
    /// Unconditional jump: `ja` (16-bit offset) or `gotol`/`ja32` (32-bit, in `imm`).
    Ja {
        /// Relative offset in slots.
        off: i32,
        /// Whether this is the `JMP32 | JA` form with the offset in `imm`.
        long: bool,
    },
    /// Conditional jump: `if dst cond src goto pc + 1 + off`.
    Jmp {
        /// Comparison width.
        width: Width,
        /// Condition.
        cond: JmpCond,
        /// Left operand.
        dst: u8,
        /// Right operand.
        src: Operand,
        /// Relative offset in slots.
        off: i16,
    },
    /// Call of helper function number `id` (r1..r5 arguments, result in r0).
    Call {
        /// Helper id (Linux numbering).
        id: i32,
    },
    /// bpf-to-bpf call of the function at `pc + 1 + off`.
    CallLocal {
        /// Relative offset in slots.
        off: i32,
    },
    /// Call of the helper whose id is in register `reg` (`callx`).
    CallX {
        /// Register holding the helper id.
        reg: u8,
    },
    /// Return from the current function (from the program in the outermost frame).
    Exit,
    /// `dst = *(size *)(src + off)`, zero-extended.
    Load {
        /// Access size.
        size: Size,
        /// Destination register.
        dst: u8,
        /// Base address register.
        src: u8,
        /// Offset from the base.
        off: i16,
    },
    /// `dst = *(size *)(src + off)`, sign-extended (`MEMSX`; sizes B, H, W).
    LoadSx {
        /// Access size.
        size: Size,
        /// Destination register.
        dst: u8,
        /// Base address register.
        src: u8,
        /// Offset from the base.
        off: i16,
    },
    /// `*(size *)(dst + off) = src`.
    Store {
        /// Access size.
        size: Size,
        /// Base address register.
        dst: u8,
        /// Offset from the base.
        off: i16,
        /// Register stored.
        src: u8,
    },
    /// `*(size *)(dst + off) = imm` (truncated to the size).
    StoreImm {
        /// Access size.
        size: Size,
        /// Base address register.
        dst: u8,
        /// Offset from the base.
        off: i16,
        /// Value stored.
        imm: i32,
    },
    /// Atomic read-modify-write of `*(size *)(dst + off)` with `src` (sizes W, DW).
    Atomic {
        /// Access size (W or DW).
        size: Size,
        /// Operation.
        op: AtomicOp,
        /// Whether the old value is returned (always true for Xchg/CmpXchg).
        fetch: bool,
        /// Base address register.
        dst: u8,
        /// Offset from the base.
        off: i16,
        /// Operand register (receives the old value when fetching).
        src: u8,
    },
    /// `dst = imm64` (first slot of a two-slot `ld_imm64`).
    LdImm64 {
        /// Destination register.
        dst: u8,
        /// What is loaded.
        src: LdImm64Src,
    },
    /// Second slot of a `ld_imm64`; not an instruction of its own.
    LdImm64Tail,
}

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

/// A decoded program, indexed by slot: `program[pc]` is the instruction at
/// byte offset `8 * pc`, and the second slot of every `ld_imm64` holds
/// [`Insn::LdImm64Tail`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Program {
    insns: Vec<Insn>,
}

impl Program {
    /// Builds a program from slots, checking that every instruction is one
    /// [`decode`] could have produced (registers in range, `r10` never
    /// written, valid widths and sizes, fields that fit their encoding),
    /// that every `LdImm64` is followed by exactly one `LdImm64Tail` and
    /// that tails appear nowhere else.
    pub fn from_insns(insns: Vec<Insn>) -> Result<Program, DecodeError> {
        let mut i = 0;
        while i < insns.len() {
            let insn = insns[i];
            if insn != Insn::LdImm64Tail {
                // Encoding then decoding must give the instruction back.
                let (raw, n) = insn.to_raw();
                let back = decode_one(raw[0], (n == 2).then_some(raw[1]))
                    .map_err(|kind| DecodeError { index: i, kind })?;
                if back != insn {
                    return Err(DecodeError {
                        index: i,
                        kind: DecodeErrorKind::Unencodable,
                    });
                }
            }
            match insn {
                Insn::LdImm64 { .. } => {
                    if insns.get(i + 1) != Some(&Insn::LdImm64Tail) {
                        return Err(DecodeError {
                            index: i,
                            kind: DecodeErrorKind::TruncatedLdImm64,
                        });
                    }
                    i += 2;
                }
                Insn::LdImm64Tail => {
                    return Err(DecodeError {
                        index: i,
                        kind: DecodeErrorKind::BadLdImm64Tail,
                    })
                }
                _ => i += 1,
            }
        }
        Ok(Program { insns })
    }

    /// The slots.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The instruction at slot `pc`.
    pub fn get(&self, pc: usize) -> Option<&Insn> {
        self.insns.get(pc)
    }

    /// Encodes back to bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.insns)
    }
}

impl core::ops::Deref for Program {
    type Target = [Insn];
    fn deref(&self) -> &[Insn] {
        &self.insns
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

/// A register that the instruction writes.
fn wreg(r: u8) -> Result<u8, DecodeErrorKind> {
    match reg(r)? {
        R10 => Err(DecodeErrorKind::WritesFramePointer),
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
fn decode_one(r: RawInsn, next: Option<RawInsn>) -> Result<Insn, DecodeErrorKind> {
    let code = r.code;
    match code & class::MASK {
        class::ALU | class::ALU64 => decode_alu(r),
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

fn decode_alu(r: RawInsn) -> Result<Insn, DecodeErrorKind> {
    let code = r.code;
    let width = if code & class::MASK == class::ALU64 {
        Width::W64
    } else {
        Width::W32
    };
    let x = code & source::MASK == source::X;
    let op = code & alu::MASK;
    let dst = wreg(r.dst)?;
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
