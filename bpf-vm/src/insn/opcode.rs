//! Opcode constants, built from class | size | mode (loads and stores) or
//! class | source | op (arithmetic and jumps); see the diagram in [`super`].

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
