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
//!
//! Files: `opcode.rs` (constants), `encode.rs` ([`Insn`] to raw slots),
//! `decode.rs` (raw slots to [`Insn`], errors), `program.rs` ([`Program`]).

mod decode;
mod encode;
mod opcode;
mod program;

pub use decode::{decode, decode_for_message, decode_raw, DecodeError, DecodeErrorKind};
pub use encode::encode;
pub use opcode::{alu, atomic, class, jmp, mode, pseudo, size, source, NUM_REGS, R10, STACK_SIZE};
pub use program::Program;

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
