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
//! - [`jit`]: an x86-64 compiler for verified programs, producing
//!   position-independent code with the interpreter's semantics.
//! - [`verifier`]: proves programs safe before they run; it knows no kernel,
//!   and [`verifier::linux`] feeds it ktrace's platform, described once in
//!   the `ktrace-bpf-platform` crate (`bpf-vm/platform`).
//!
//! ```
//! use bpf_vm::asm::assemble;
//! use bpf_vm::interp::{run_checked, Executable, HelperTable};
//!
//! let program = assemble("ldxb %r0, [%r1+2]\nexit").unwrap();
//! let exe = Executable::new(&program).unwrap();
//! let mut helpers = HelperTable::new(());
//! let r0 = run_checked(&exe, &mut [1, 2, 3], &mut helpers, &[], 1_000).unwrap();
//! assert_eq!(r0, 3);
//! ```
#![no_std]
extern crate alloc;

pub mod asm;
pub mod disasm;
pub mod insn;
pub mod interp;
pub mod jit;
pub mod verifier;

pub use insn::{decode, encode, DecodeError, Insn, Program, RawInsn};
pub use interp::{run_checked, Executable, HelperTable, Helpers, RunError, Vm};
