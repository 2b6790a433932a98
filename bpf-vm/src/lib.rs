//! bpf-vm: the BPF instruction set, assembler/disassembler, verifier and
//! interpreter, `no_std` + `alloc` so the kernel can embed it and host tools
//! can reuse it.
//!
//! - [`insn`]: opcode constants, [`insn::RawInsn`], the decoded [`insn::Insn`]
//!   enum, [`insn::decode`] and [`insn::encode`].
//! - [`asm`] / [`disasm`]: text syntax of the conformance suite (and LLVM
//!   syntax for output).
//! - [`interp`]: the interpreter, in checked mode (any program, every access
//!   checked) and fast mode (verified programs only).
#![no_std]
extern crate alloc;

pub mod asm;
pub mod disasm;
pub mod insn;
pub mod interp;
pub mod verifier;

pub use insn::{decode, encode, DecodeError, Insn, Program, RawInsn};
pub use interp::{run_checked, Executable, HelperTable, Helpers, RunError, Vm};
