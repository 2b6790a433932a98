//! Running compiled code with an interpreter [`Helpers`] implementation:
//! the helper table of trampolines [`helper_table`] builds and [`run`],
//! the JIT's counterpart of [`Vm::run_fast`](crate::interp::Vm::run_fast).
//! Embedders (the kernel, host tests) share these so that a helper behaves
//! the same under both engines: the trampolines call the very
//! [`Helpers::call`] the interpreter calls, with the fast mode's unchecked
//! [`HelperMem`].

use alloc::vec;
use alloc::vec::Vec;
use core::ffi::c_void;

use super::{HelperRet, JitEntry, JitHelperFn, JitRun};
use crate::interp::{HelperMem, Helpers, RunError};

/// Helper ids below this get a trampoline in [`helper_table`] (Linux's
/// helper ids are all below it).
pub const HELPER_IDS: usize = 256;

/// Calls the `H` behind the run's `env` as helper `ID`.
extern "sysv64" fn helper_trampoline<H: Helpers, const ID: u32>(
    r1: u64,
    r2: u64,
    r3: u64,
    r4: u64,
    r5: u64,
    run: *mut JitRun<'_>,
) -> HelperRet {
    // SAFETY: compiled code passes the `JitRun` it was entered with, which
    // `run` created with `env` pointing at an `H` it borrows mutably for the
    // whole run (the contract of `run` ties the table to `H`); nothing
    // else touches either while the helper runs.
    let run = unsafe { &mut *run };
    // SAFETY: as above.
    let helpers = unsafe { &mut *(run.env() as *mut H) };
    // SAFETY: the program was verified (the contract of `run`), so its
    // helper pointer arguments point at the bytes the helper uses, as in
    // the interpreter's fast mode.
    let res =
        unsafe { HelperMem::with_unchecked(|mem| helpers.call(ID, [r1, r2, r3, r4, r5], mem)) };
    match res {
        Ok(v) => HelperRet::ok(v),
        Err(e) => {
            run.set_helper_error(e);
            HelperRet::err()
        }
    }
}

/// The helper table for [`compile`](super::compile) that routes every id
/// below [`HELPER_IDS`] to `H::call` (one trampoline per id: a direct call
/// does not pass the id). Code compiled with it must be run with [`run`]
/// and the same `H`.
pub fn helper_table<H: Helpers>() -> Vec<Option<JitHelperFn>> {
    let mut t: Vec<Option<JitHelperFn>> = vec![None; HELPER_IDS];
    macro_rules! route16 {
        ($($base:literal)*) => {$(
            route16!(@ $base 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        )*};
        (@ $base:literal $($i:literal)*) => {$(
            t[$base + $i] = Some(helper_trampoline::<H, { $base + $i }> as JitHelperFn);
        )*};
    }
    route16!(0 16 32 48 64 80 96 112 128 144 160 176 192 208 224 240);
    t
}

/// Runs compiled code entered at `entry` on the context `ctx..ctx+ctx_len`
/// with `helpers`; returns the outcome as the interpreter reports it and the
/// instructions charged ([`Vm::executed`](crate::interp::Vm::executed)).
///
/// # Safety
/// - `entry` is the entry point of a [`JitImage`](super::JitImage) that
///   lies in executable memory for the whole call, compiled with
///   [`helper_table`]`::<H>()` (or a table of helpers that treat the run's
///   env as an `H`);
/// - the image was compiled from a program the verifier accepted for a
///   context of `ctx_len` bytes and for the helpers `H` implements, and
///   `ctx..ctx+ctx_len` is valid, writable memory for the whole run (the
///   contract of [`Vm::run_fast`](crate::interp::Vm::run_fast));
/// - the native stack has room for the program's frames and the helpers'
///   (see the [module documentation](super)).
pub unsafe fn run<H: Helpers>(
    entry: JitEntry,
    ctx: *mut u8,
    ctx_len: usize,
    helpers: &mut H,
    budget: u64,
) -> (Result<u64, RunError>, u64) {
    let mut run = JitRun::new(helpers as *mut H as *mut c_void, budget);
    // SAFETY: per the caller's contract; `run` and `helpers` outlive the call.
    let r0 = unsafe {
        entry(
            ctx,
            ctx_len as u64,
            &mut run as *mut JitRun<'_> as *mut c_void,
        )
    };
    let res = run.finish(r0);
    (res, run.executed())
}
