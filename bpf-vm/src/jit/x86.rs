//! A small x86-64 encoder: just the instructions the JIT emits, with labels
//! for forward and backward `rel32` branches resolved at the end.
//!
//! Memory operands are always `[base + disp]` with an 8- or 32-bit
//! displacement (never the `mod = 00` form), so `rbp`/`r13` need no special
//! case and `rsp`/`r12` just take the extra SIB byte.

use alloc::vec::Vec;

pub const RAX: u8 = 0;
pub const RCX: u8 = 1;
pub const RDX: u8 = 2;
pub const RBX: u8 = 3;
pub const RSP: u8 = 4;
pub const RBP: u8 = 5;
pub const RSI: u8 = 6;
pub const RDI: u8 = 7;
pub const R8: u8 = 8;
pub const R9: u8 = 9;
pub const R10: u8 = 10;
pub const R11: u8 = 11;
pub const R12: u8 = 12;
pub const R13: u8 = 13;
pub const R14: u8 = 14;
pub const R15: u8 = 15;

/// Condition codes (the low nibble of `jcc`); `cc ^ 1` is the negation.
pub mod cc {
    pub const B: u8 = 0x2;
    pub const AE: u8 = 0x3;
    pub const E: u8 = 0x4;
    pub const NE: u8 = 0x5;
    pub const BE: u8 = 0x6;
    pub const A: u8 = 0x7;
    pub const L: u8 = 0xc;
    pub const GE: u8 = 0xd;
    pub const LE: u8 = 0xe;
    pub const G: u8 = 0xf;
}

/// `/digit` extensions of the group-1 ALU opcodes (`0x81`, `0x83`).
pub mod ext {
    pub const ADD: u8 = 0;
    pub const OR: u8 = 1;
    pub const AND: u8 = 4;
    pub const SUB: u8 = 5;
    pub const XOR: u8 = 6;
    pub const CMP: u8 = 7;
}

/// Register-to-r/m opcodes of the same operations (`op r/m, reg`).
pub mod rm_op {
    pub const ADD: u8 = 0x01;
    pub const OR: u8 = 0x09;
    pub const AND: u8 = 0x21;
    pub const SUB: u8 = 0x29;
    pub const XOR: u8 = 0x31;
    pub const CMP: u8 = 0x39;
    pub const MOV: u8 = 0x89;
    pub const TEST: u8 = 0x85;
}

/// Shift and rotate `/digit` extensions (`0xC1`, `0xD3`).
pub mod shift {
    pub const ROR: u8 = 1;
    pub const SHL: u8 = 4;
    pub const SHR: u8 = 5;
    pub const SAR: u8 = 7;
}

/// A label: an index into the assembler's label table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// Operand width of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum W {
    /// 32-bit: writes zero-extend to 64 bits.
    D,
    /// 64-bit (`REX.W`).
    Q,
}

/// Access size of a load or store, in bytes: 1, 2, 4 or 8.
pub type Bytes = u8;

#[derive(Default)]
pub struct Asm {
    pub code: Vec<u8>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

/// A label was used but never bound (a compiler bug, reported rather than panicking).
#[derive(Debug)]
pub struct Unbound;

fn fits_i8(v: i32) -> bool {
    v == v as i8 as i32
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    pub fn pos(&self) -> usize {
        self.code.len()
    }

    fn b(&mut self, byte: u8) {
        self.code.push(byte);
    }

    fn d(&mut self, v: i32) {
        self.code.extend_from_slice(&v.to_le_bytes());
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    pub fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.code.len());
    }

    /// Patches every `rel32` with its label's position.
    pub fn finish(mut self) -> Result<Vec<u8>, Unbound> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].ok_or(Unbound)?;
            let rel = target as i64 - (at as i64 + 4);
            let rel = i32::try_from(rel).map_err(|_| Unbound)?;
            self.code[at..at + 4].copy_from_slice(&rel.to_le_bytes());
        }
        self.fixups.clear();
        Ok(self.code)
    }

    fn rel32(&mut self, l: Label) {
        self.fixups.push((self.code.len(), l));
        self.d(0);
    }

    /// REX prefix; `byte_reg` forces one so that `sil`/`dil`/`bpl`/`spl`
    /// are addressable as 8-bit registers.
    fn rex(&mut self, w: bool, r: u8, x: u8, base: u8, byte_reg: bool) {
        let v =
            0x40 | (w as u8) << 3 | ((r >> 3) & 1) << 2 | ((x >> 3) & 1) << 1 | ((base >> 3) & 1);
        if v != 0x40 || byte_reg {
            self.b(v);
        }
    }

    fn modrm_rr(&mut self, reg: u8, rm: u8) {
        self.b(0xc0 | (reg & 7) << 3 | (rm & 7));
    }

    fn modrm_mem(&mut self, reg: u8, base: u8, disp: i32) {
        let short = fits_i8(disp);
        self.b(if short { 0x40 } else { 0x80 } | (reg & 7) << 3 | (base & 7));
        if base & 7 == 4 {
            self.b(0x24);
        }
        if short {
            self.b(disp as u8);
        } else {
            self.d(disp);
        }
    }

    /// `op dst, src` for the register-to-r/m opcodes in [`rm_op`].
    pub fn alu_rr(&mut self, w: W, opc: u8, dst: u8, src: u8) {
        self.rex(w == W::Q, src, 0, dst, false);
        self.b(opc);
        self.modrm_rr(src, dst);
    }

    /// `op dst, src` with a memory source (`opc` is the r/m-to-register form).
    pub fn alu_r_mem(&mut self, w: W, opc: u8, dst: u8, base: u8, disp: i32) {
        self.rex(w == W::Q, dst, 0, base, false);
        self.b(opc);
        self.modrm_mem(dst, base, disp);
    }

    /// `op dst, imm` for the extensions in [`ext`] (64-bit: imm sign-extended).
    pub fn alu_ri(&mut self, w: W, e: u8, dst: u8, imm: i32) {
        self.rex(w == W::Q, 0, 0, dst, false);
        if fits_i8(imm) {
            self.b(0x83);
            self.modrm_rr(e, dst);
            self.b(imm as u8);
        } else {
            self.b(0x81);
            self.modrm_rr(e, dst);
            self.d(imm);
        }
    }

    pub fn mov_rr(&mut self, w: W, dst: u8, src: u8) {
        self.alu_rr(w, rm_op::MOV, dst, src);
    }

    /// `test r, imm32` (64-bit: imm sign-extended).
    pub fn test_ri(&mut self, w: W, r: u8, imm: i32) {
        self.rex(w == W::Q, 0, 0, r, false);
        self.b(0xf7);
        self.modrm_rr(0, r);
        self.d(imm);
    }

    /// `test r8, imm8` on the low byte of `r`.
    pub fn test_r8_i(&mut self, r: u8, imm: u8) {
        self.rex(false, 0, 0, r, (4..8).contains(&r));
        self.b(0xf6);
        self.modrm_rr(0, r);
        self.b(imm);
    }

    /// `mov r32, imm32`: zero-extends.
    pub fn mov_r32_i(&mut self, dst: u8, imm: u32) {
        self.rex(false, 0, 0, dst, false);
        self.b(0xb8 + (dst & 7));
        self.d(imm as i32);
    }

    /// `mov r64, simm32`: sign-extends.
    pub fn mov_r64_si(&mut self, dst: u8, imm: i32) {
        self.rex(true, 0, 0, dst, false);
        self.b(0xc7);
        self.modrm_rr(0, dst);
        self.d(imm);
    }

    /// Loads a 64-bit constant in the shortest form (clobbers the flags:
    /// zero is `xor r32, r32`).
    pub fn mov_ri(&mut self, dst: u8, v: u64) {
        if v == 0 {
            self.alu_rr(W::D, rm_op::XOR, dst, dst);
        } else if v <= u32::MAX as u64 {
            self.mov_r32_i(dst, v as u32);
        } else if v as i64 == v as i64 as i32 as i64 {
            self.mov_r64_si(dst, v as i64 as i32);
        } else {
            self.rex(true, 0, 0, dst, false);
            self.b(0xb8 + (dst & 7));
            self.code.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// `movabs r64, imm64` (always the 10-byte form, for blinded constants).
    pub fn movabs(&mut self, dst: u8, v: u64) {
        self.rex(true, 0, 0, dst, false);
        self.b(0xb8 + (dst & 7));
        self.code.extend_from_slice(&v.to_le_bytes());
    }

    pub fn imul_rr(&mut self, w: W, dst: u8, src: u8) {
        self.rex(w == W::Q, dst, 0, src, false);
        self.b(0x0f);
        self.b(0xaf);
        self.modrm_rr(dst, src);
    }

    /// `cmov<c> dst, src`.
    pub fn cmov(&mut self, w: W, c: u8, dst: u8, src: u8) {
        self.rex(w == W::Q, dst, 0, src, false);
        self.b(0x0f);
        self.b(0x40 | c);
        self.modrm_rr(dst, src);
    }

    pub fn imul_rri(&mut self, w: W, dst: u8, src: u8, imm: i32) {
        self.rex(w == W::Q, dst, 0, src, false);
        self.b(0x69);
        self.modrm_rr(dst, src);
        self.d(imm);
    }

    /// Group-3 unary ops: `/3` neg, `/6` div, `/7` idiv.
    pub fn unary(&mut self, w: W, e: u8, r: u8) {
        self.rex(w == W::Q, 0, 0, r, false);
        self.b(0xf7);
        self.modrm_rr(e, r);
    }

    pub fn shift_cl(&mut self, w: W, e: u8, r: u8) {
        self.rex(w == W::Q, 0, 0, r, false);
        self.b(0xd3);
        self.modrm_rr(e, r);
    }

    pub fn shift_ri(&mut self, w: W, e: u8, r: u8, n: u8) {
        self.rex(w == W::Q, 0, 0, r, false);
        self.b(0xc1);
        self.modrm_rr(e, r);
        self.b(n);
    }

    /// `ror r16, 8`: swaps the two low bytes.
    pub fn ror16_8(&mut self, r: u8) {
        self.b(0x66);
        self.rex(false, 0, 0, r, false);
        self.b(0xc1);
        self.modrm_rr(shift::ROR, r);
        self.b(8);
    }

    pub fn bswap(&mut self, w: W, r: u8) {
        self.rex(w == W::Q, 0, 0, r, false);
        self.b(0x0f);
        self.b(0xc8 + (r & 7));
    }

    /// `movzx r32, r16`.
    pub fn movzx16(&mut self, dst: u8, src: u8) {
        self.rex(false, dst, 0, src, false);
        self.b(0x0f);
        self.b(0xb7);
        self.modrm_rr(dst, src);
    }

    /// `movzx dst32, src8`.
    pub fn movzx8(&mut self, dst: u8, src: u8) {
        self.rex(false, dst, 0, src, (4..8).contains(&src));
        self.b(0x0f);
        self.b(0xb6);
        self.modrm_rr(dst, src);
    }

    /// Sign-extending register move of the low `bits` (8, 16, 32) of `src`.
    pub fn movsx_rr(&mut self, w: W, bits: u8, dst: u8, src: u8) {
        match bits {
            8 => {
                self.rex(w == W::Q, dst, 0, src, (4..8).contains(&src));
                self.b(0x0f);
                self.b(0xbe);
            }
            16 => {
                self.rex(w == W::Q, dst, 0, src, false);
                self.b(0x0f);
                self.b(0xbf);
            }
            _ => {
                self.rex(true, dst, 0, src, false);
                self.b(0x63);
            }
        }
        self.modrm_rr(dst, src);
    }

    /// Zero-extending load of `size` bytes.
    pub fn load(&mut self, size: Bytes, dst: u8, base: u8, disp: i32) {
        match size {
            1 | 2 => {
                self.rex(false, dst, 0, base, false);
                self.b(0x0f);
                self.b(if size == 1 { 0xb6 } else { 0xb7 });
            }
            4 => {
                self.rex(false, dst, 0, base, false);
                self.b(0x8b);
            }
            _ => {
                self.rex(true, dst, 0, base, false);
                self.b(0x8b);
            }
        }
        self.modrm_mem(dst, base, disp);
    }

    /// Sign-extending load of `size` (1, 2, 4) bytes to 64 bits.
    pub fn load_sx(&mut self, size: Bytes, dst: u8, base: u8, disp: i32) {
        self.rex(true, dst, 0, base, false);
        match size {
            1 => {
                self.b(0x0f);
                self.b(0xbe);
            }
            2 => {
                self.b(0x0f);
                self.b(0xbf);
            }
            _ => self.b(0x63),
        }
        self.modrm_mem(dst, base, disp);
    }

    /// Store of the low `size` bytes of `src`.
    pub fn store(&mut self, size: Bytes, base: u8, disp: i32, src: u8) {
        if size == 2 {
            self.b(0x66);
        }
        self.rex(size == 8, src, 0, base, size == 1 && (4..8).contains(&src));
        self.b(if size == 1 { 0x88 } else { 0x89 });
        self.modrm_mem(src, base, disp);
    }

    /// Store of an immediate (truncated to `size`; 8 bytes: sign-extended imm32).
    pub fn store_imm(&mut self, size: Bytes, base: u8, disp: i32, imm: i32) {
        if size == 2 {
            self.b(0x66);
        }
        self.rex(size == 8, 0, 0, base, false);
        self.b(if size == 1 { 0xc6 } else { 0xc7 });
        self.modrm_mem(0, base, disp);
        match size {
            1 => self.b(imm as u8),
            2 => self.code.extend_from_slice(&(imm as u16).to_le_bytes()),
            _ => self.d(imm),
        }
    }

    /// `mov dword [base + disp], imm32`.
    pub fn store32_imm(&mut self, base: u8, disp: i32, imm: u32) {
        self.store_imm(4, base, disp, imm as i32);
    }

    pub fn lea(&mut self, dst: u8, base: u8, disp: i32) {
        self.rex(true, dst, 0, base, false);
        self.b(0x8d);
        self.modrm_mem(dst, base, disp);
    }

    /// `lock <op> [base + disp], src` for `add`/`or`/`and`/`xor` (`opc` from [`rm_op`]).
    pub fn lock_rm(&mut self, w: W, opc: u8, base: u8, disp: i32, src: u8) {
        self.b(0xf0);
        self.rex(w == W::Q, src, 0, base, false);
        self.b(opc);
        self.modrm_mem(src, base, disp);
    }

    /// `lock xadd [base + disp], src`.
    pub fn lock_xadd(&mut self, w: W, base: u8, disp: i32, src: u8) {
        self.b(0xf0);
        self.rex(w == W::Q, src, 0, base, false);
        self.b(0x0f);
        self.b(0xc1);
        self.modrm_mem(src, base, disp);
    }

    /// `lock cmpxchg [base + disp], src` (compares with `rax`/`eax`).
    pub fn lock_cmpxchg(&mut self, w: W, base: u8, disp: i32, src: u8) {
        self.b(0xf0);
        self.rex(w == W::Q, src, 0, base, false);
        self.b(0x0f);
        self.b(0xb1);
        self.modrm_mem(src, base, disp);
    }

    /// `xchg [base + disp], src` (implicitly locked).
    pub fn xchg_mem(&mut self, w: W, base: u8, disp: i32, src: u8) {
        self.rex(w == W::Q, src, 0, base, false);
        self.b(0x87);
        self.modrm_mem(src, base, disp);
    }

    /// `lea dst, [rip + label]`.
    pub fn lea_rip(&mut self, dst: u8, l: Label) {
        self.rex(true, dst, 0, 0, false);
        self.b(0x8d);
        self.b((dst & 7) << 3 | 0x05);
        self.rel32(l);
    }

    /// Pads with `int3` up to a multiple of `n` bytes.
    pub fn align(&mut self, n: usize) {
        while !self.code.len().is_multiple_of(n) {
            self.b(0xcc);
        }
    }

    /// Pads with multi-byte `nop`s (the forms AMD's and Intel's
    /// optimisation manuals recommend) up to a multiple of `n` bytes.
    pub fn align_nop(&mut self, n: usize) {
        const NOPS: [&[u8]; 9] = [
            &[0x90],
            &[0x66, 0x90],
            &[0x0f, 0x1f, 0x00],
            &[0x0f, 0x1f, 0x40, 0x00],
            &[0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
            &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        ];
        let mut pad = self.code.len().next_multiple_of(n) - self.code.len();
        while pad > 0 {
            let k = pad.min(NOPS.len());
            self.code.extend_from_slice(NOPS[k - 1]);
            pad -= k;
        }
    }

    /// A 64-bit data word.
    pub fn data64(&mut self, v: u64) {
        self.code.extend_from_slice(&v.to_le_bytes());
    }

    /// `mov r11, [r10 + r11 * 8]`.
    pub fn load_r11_table_r10(&mut self) {
        self.code.extend_from_slice(&[0x4f, 0x8b, 0x1c, 0xda]);
    }

    /// `cqo` (64-bit) or `cdq` (32-bit).
    pub fn sign_extend_rax(&mut self, w: W) {
        if w == W::Q {
            self.b(0x48);
        }
        self.b(0x99);
    }

    pub fn push(&mut self, r: u8) {
        if r >= 8 {
            self.b(0x41);
        }
        self.b(0x50 + (r & 7));
    }

    pub fn pop(&mut self, r: u8) {
        if r >= 8 {
            self.b(0x41);
        }
        self.b(0x58 + (r & 7));
    }

    pub fn call_r(&mut self, r: u8) {
        self.rex(false, 0, 0, r, false);
        self.b(0xff);
        self.modrm_rr(2, r);
    }

    pub fn call(&mut self, l: Label) {
        self.b(0xe8);
        self.rel32(l);
    }

    pub fn ret(&mut self) {
        self.b(0xc3);
    }

    /// The displacement of a jump of `len` bytes (with its 8-bit
    /// displacement) from here to `l`, if `l` is already placed and that near.
    fn short_to(&self, l: Label, len: usize) -> Option<u8> {
        let target = self.labels[l.0]?;
        let rel = target as i64 - (self.code.len() + len) as i64;
        i8::try_from(rel).ok().map(|r| r as u8)
    }

    /// `jmp`, in two bytes back to a label within reach.
    pub fn jmp(&mut self, l: Label) {
        if let Some(rel) = self.short_to(l, 2) {
            self.b(0xeb);
            self.b(rel);
            return;
        }
        self.b(0xe9);
        self.rel32(l);
    }

    /// `jcc`, in two bytes back to a label within reach.
    pub fn jcc(&mut self, c: u8, l: Label) {
        if let Some(rel) = self.short_to(l, 2) {
            self.b(0x70 | c);
            self.b(rel);
            return;
        }
        self.b(0x0f);
        self.b(0x80 | c);
        self.rel32(l);
    }
}
