//! An x86-64 JIT for verified programs: [`compile`] turns an [`Executable`]
//! into position-independent machine code ([`JitImage`]) that computes
//! exactly what the interpreter's fast mode computes.
//!
//! The crate only produces bytes. Mapping them executable is the caller's
//! business (write the bytes, make the mapping read-execute, never both
//! writable and executable), and so is calling them: the code is entered at
//! [`JitImage::entry`] as a [`JitEntry`] with `r1` = context address, `r2` =
//! its length and a [`JitRun`] that carries the embedder's state for the
//! helpers, the instruction budget and, after the run, the fault if there
//! was one. Helpers are the caller's [`JitHelperFn`]s, given to [`compile`]
//! as a table indexed by helper id; their addresses are built into the code
//! (as a direct `call` target, and for `callx` as a copy of the table at
//! the end of the image). Apart from those, the code is position-independent.
//! [`JitRun::finish`] turns that into the interpreter's
//! `Result<u64, RunError>`.
//!
//! # What is the same as the interpreter
//! - Every operation the interpreter runs: ALU32/64 including `sdiv`/`smod`,
//!   `movsx` and `bswap`; sign-extending loads; all jumps including `gotol`
//!   and JMP32; atomics (`add`/`or`/`and`/`xor` with and without fetch,
//!   `xchg`, `cmpxchg`); helper calls and `callx`; bpf-to-bpf calls; the
//!   `ld_imm64` forms (map references are resolved when the [`Executable`]
//!   is prepared, so the JIT sees plain constants). Division by zero gives 0,
//!   modulo by zero leaves the dividend (zero-extended for 32 bits),
//!   `INT_MIN / -1` wraps, shift counts are masked to the width.
//! - The instruction budget, charged one straight-line run at a time exactly
//!   as the interpreter charges it (same fault instruction, same
//!   [`JitRun::executed`]); the call depth limit ([`MAX_CALL_FRAMES`]); the
//!   alignment check of atomics; unknown helpers; helper failures; falling
//!   off the end. These are checked at run time, as the interpreter does
//!   even in fast mode, with one exception the compiler proves itself: when
//!   the bpf-to-bpf call graph read off the code is acyclic and at most
//!   [`MAX_CALL_FRAMES`] deep, no call can exceed the limit and the depth
//!   check is left out (each call then also saves only the `r6`-`r9` its
//!   callee writes).
//!
//! # What the JIT relies on the verifier for
//! Where the interpreter's checked mode checks every access at run time,
//! the compiled code does not check anything: it is only for programs the
//! verifier accepted, and it relies on the verifier having proved that
//! 1. every load, store and atomic stays inside the live stack frame (or a
//!    caller's frame it was given a pointer to), the context, or memory a
//!    helper returned;
//! 2. no stack byte is read before it is written in the same frame (the
//!    native stack is not cleared);
//! 3. helper pointer arguments point at the bytes the helper uses;
//! 4. `r1`-`r5` are not read after a helper call before being written again
//!    (helpers clobber them, as under Linux; the interpreter preserves them).
//!
//! Where `r10` is only ever the base of loads and stores (no pointer into
//! the stack exists), 2 lets stack slots that are always accessed whole
//! live in unused callee-saved registers instead of memory (the `slots`
//! module).
//!
//! Nothing else is assumed. Each bpf-to-bpf frame gets its own 512 bytes on
//! the native stack, below the caller's (the interpreter puts them above);
//! programs cannot observe the difference because the verifier keeps stack
//! addresses from escaping. The native stack needed is at most
//! `MAX_CALL_FRAMES * 576 + 48` bytes plus the helpers' own.
//!
//! A helper id missing from the table given to [`compile`] is the
//! interpreter's unknown-helper fault when the call is reached (the
//! verifier rejects such programs anyway).
//!
//! [`compile_inlined`] also replaces the array lookups the embedder
//! describes with inline code (see [`InlineLookup`]); such a call is still
//! charged as one instruction but makes no helper call.
//!
//! # Constant blinding
//! With [`JitOptions::blinding`] every 32- and 64-bit immediate an attacker
//! controls (ALU and jump operands, stored immediates, `ld_imm64`) is
//! emitted as `imm ^ key` followed by `xor key`, with a fresh key per
//! instruction drawn from the seed the caller supplies, so no chosen
//! constant appears verbatim in executable memory (the purpose of Linux's
//! `bpf_jit_harden`). Not blinded: shift counts (6 bits), jump offsets,
//! helper ids, memory offsets (16 bits).
//!
//! # Speculative execution
//! What the code does *not* do, and why it is acceptable only for trusted
//! loaders today:
//! - No retpolines: helper calls are an indirect `call r11` to an address
//!   fixed at compile time (Spectre v2).
//!   A kernel that enables IBRS/eIBRS gets the hardware's protection;
//!   otherwise a retpoline thunk should replace it.
//! - No masking of variable offsets on the speculative path of a bounds
//!   check (Linux's `alu_limit` sanitation, Spectre v1): a mispredicted
//!   bounds check may speculatively load out of bounds.
//! - No `lfence` for speculative store bypass (Spectre v4) after stack
//!   stores (Linux's `nospec` for spilled pointers).
//!
//! What it does: constant blinding (above) limits JIT spraying; inlined
//! array lookups clamp their index with a `cmov` (see [`InlineLookup`]);
//! the code contains no absolute addresses other than `ld_imm64`
//! constants, inlined arrays' base addresses and the helpers'.
//! Loading programs is root-only in ktrace, as in Linux without
//! unprivileged BPF, where these mitigations are optional.
//!
//! [`Executable`]: crate::interp::Executable
//! [`MAX_CALL_FRAMES`]: crate::interp::MAX_CALL_FRAMES

mod budget;
mod calls;
mod compile;
mod glue;
mod inline;
mod slots;
mod x86;

use alloc::vec::Vec;
use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;

use crate::interp::{HelperError, RunError, RunErrorKind};

pub use compile::{compile, compile_inlined};
pub use glue::{helper_table, run, HELPER_IDS};
pub use inline::InlineLookup;

/// Options of [`compile`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitOptions {
    /// Blind immediates with keys drawn from this seed (supply a fresh random
    /// value per program); `None` emits immediates as they are.
    pub blinding: Option<u64>,
}

/// Why a program could not be compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitError {
    /// The program is too long for 32-bit branch displacements.
    TooLarge(usize),
    /// Internal inconsistency (a label never placed): a JIT bug.
    Internal,
}

impl fmt::Display for JitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            JitError::TooLarge(n) => write!(f, "program of {n} slots is too large to compile"),
            JitError::Internal => write!(f, "internal JIT error (unbound label)"),
        }
    }
}

impl core::error::Error for JitError {}

/// Compiled code: position-independent bytes, entered at [`JitImage::entry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitImage {
    pub(crate) code: Vec<u8>,
    pub(crate) entry: usize,
    pub(crate) slot_offsets: Vec<u32>,
}

impl JitImage {
    /// The machine code, to be copied into memory that is then made
    /// read-execute. It contains no relocations.
    pub fn code(&self) -> &[u8] {
        &self.code
    }

    /// Offset of the entry point (a [`JitEntry`]) in [`JitImage::code`].
    pub fn entry(&self) -> usize {
        self.entry
    }

    /// Native size in bytes.
    pub fn len(&self) -> usize {
        self.code.len()
    }

    /// Always false: every image has a prologue.
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// Offset in the code of each program slot (for mapping a native fault
    /// address back to an instruction).
    pub fn slot_offsets(&self) -> &[u32] {
        &self.slot_offsets
    }
}

/// What a helper returns to compiled code: `error == 0` means `value` goes
/// to `r0`; anything else aborts the run with a helper fault (the helper
/// stores the reason with [`JitRun::set_helper_error`]). Returned in
/// `rax:rdx` by the System V ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelperRet {
    /// Result (`r0`).
    pub value: u64,
    /// Non-zero: the helper failed.
    pub error: u64,
}

impl HelperRet {
    /// Success with `value`.
    pub const fn ok(value: u64) -> HelperRet {
        HelperRet { value, error: 0 }
    }

    /// Failure.
    pub const fn err() -> HelperRet {
        HelperRet { value: 0, error: 1 }
    }
}

/// A helper as compiled code calls it: `r1..r5` in the argument registers
/// and the run (for [`JitRun::env`]) last. Helpers are per id: a direct
/// `call` does not tell the helper which id it was called as.
pub type JitHelperFn = extern "sysv64" fn(u64, u64, u64, u64, u64, *mut JitRun<'_>) -> HelperRet;

/// The entry point of a [`JitImage`]: context address, context length and
/// the [`JitRun`]; returns `r0` (meaningful only if [`JitRun::finish`]
/// reports success).
pub type JitEntry = unsafe extern "sysv64" fn(*mut u8, u64, *mut c_void) -> u64;

/// Budgets are capped at 2^62 instructions (decades of run time), so that
/// the compiled code's arithmetic on the instruction count cannot wrap.
pub const MAX_BUDGET: u64 = 1 << 62;

/// Fault codes written by compiled code into [`JitRun`].
pub(crate) mod fault {
    pub const NONE: u32 = 0;
    pub const BUDGET: u32 = 1;
    pub const CALL_DEPTH: u32 = 2;
    pub const UNKNOWN_HELPER: u32 = 3;
    pub const HELPER_FAILED: u32 = 4;
    pub const MISALIGNED: u32 = 5;
    pub const FELL_OFF: u32 = 6;
}

/// The state of one run of compiled code, shared with it by fixed offsets:
/// the embedder's state for helpers, the budget, and the outcome.
#[repr(C)]
pub struct JitRun<'a> {
    env: *mut c_void,
    left: u64,
    stack_limit: u64,
    saved_rsp: u64,
    helper_id: u32,
    fault_kind: u32,
    fault_pc: u64,
    fault_addr: u64,
    fault_len: u64,
    budget: u64,
    helper_error: Option<HelperError>,
    _env: PhantomData<&'a mut ()>,
}

impl<'a> JitRun<'a> {
    /// A run with `env` for the helpers to use and a budget of `budget`
    /// instructions (at most [`MAX_BUDGET`]).
    #[inline]
    pub fn new(env: *mut c_void, budget: u64) -> JitRun<'a> {
        JitRun {
            env,
            left: budget.min(MAX_BUDGET),
            stack_limit: 0,
            saved_rsp: 0,
            helper_id: 0,
            fault_kind: fault::NONE,
            fault_pc: 0,
            fault_addr: 0,
            fault_len: 0,
            budget: budget.min(MAX_BUDGET),
            helper_error: None,
            _env: PhantomData,
        }
    }

    /// Prepares the run for another call of the code with `budget`.
    pub fn reset(&mut self, budget: u64) {
        self.left = budget.min(MAX_BUDGET);
        self.budget = budget.min(MAX_BUDGET);
        self.fault_kind = fault::NONE;
        self.helper_error = None;
    }

    /// The embedder state passed to [`JitRun::new`].
    pub fn env(&self) -> *mut c_void {
        self.env
    }

    /// During a `callx`, the id of the helper being called; after a run
    /// that failed in a helper, that helper's id.
    pub fn helper_id(&self) -> u32 {
        self.helper_id
    }

    /// Records why a helper is about to return [`HelperRet::err`].
    pub fn set_helper_error(&mut self, err: HelperError) {
        self.helper_error = Some(err);
    }

    /// Instructions charged, as [`crate::interp::Vm::executed`] counts them.
    #[inline]
    pub fn executed(&self) -> u64 {
        self.budget - self.left
    }

    /// The outcome of the run that returned `r0`, as the interpreter reports it.
    #[inline]
    pub fn finish(&mut self, r0: u64) -> Result<u64, RunError> {
        // The common case first and alone: inlined into the embedder's run
        // path, a test and a branch, not a dispatch on the fault kind.
        if self.fault_kind == fault::NONE {
            return Ok(r0);
        }
        Err(self.fault())
    }

    /// Why the run stopped, when it faulted.
    #[cold]
    #[inline(never)]
    fn fault(&mut self) -> RunError {
        let pc = self.fault_pc as usize;
        let kind = match self.fault_kind {
            fault::BUDGET => RunErrorKind::BudgetExhausted {
                budget: self.budget,
            },
            fault::CALL_DEPTH => RunErrorKind::CallDepth,
            fault::UNKNOWN_HELPER => RunErrorKind::Helper {
                id: self.helper_id,
                err: HelperError::Unknown(self.helper_id),
            },
            fault::HELPER_FAILED => RunErrorKind::Helper {
                id: self.helper_id,
                err: self
                    .helper_error
                    .take()
                    .unwrap_or(HelperError::Failed("helper failed")),
            },
            fault::MISALIGNED => RunErrorKind::MisalignedAtomic {
                addr: self.fault_addr,
                len: self.fault_len,
            },
            _ => RunErrorKind::FellOffEnd,
        };
        RunError { pc, kind }
    }
}

/// Field offsets of [`JitRun`] used by the generated code.
pub(crate) mod off {
    use super::JitRun;
    use core::mem::offset_of;

    pub const LEFT: i32 = offset_of!(JitRun<'static>, left) as i32;
    pub const STACK_LIMIT: i32 = offset_of!(JitRun<'static>, stack_limit) as i32;
    pub const SAVED_RSP: i32 = offset_of!(JitRun<'static>, saved_rsp) as i32;
    pub const HELPER_ID: i32 = offset_of!(JitRun<'static>, helper_id) as i32;
    pub const FAULT_KIND: i32 = offset_of!(JitRun<'static>, fault_kind) as i32;
    pub const FAULT_PC: i32 = offset_of!(JitRun<'static>, fault_pc) as i32;
    pub const FAULT_ADDR: i32 = offset_of!(JitRun<'static>, fault_addr) as i32;
    pub const FAULT_LEN: i32 = offset_of!(JitRun<'static>, fault_len) as i32;
}
