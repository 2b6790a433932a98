//! Running JIT-compiled code in the test process: map it read-execute
//! (written while read-write, never both), call it, and serve its helper
//! calls through an interpreter [`Helpers`] implementation.

use std::ffi::c_void;

use bpf_vm::interp::{HelperMem, Helpers, RunError};
use bpf_vm::jit::{HelperRet, JitEntry, JitHelperFn, JitImage, JitRun};

/// Compiled code in its own read-execute mapping, unmapped on drop.
pub struct ExecCode {
    ptr: *mut u8,
    len: usize,
    entry: JitEntry,
}

impl ExecCode {
    pub fn new(image: &JitImage) -> ExecCode {
        let len = image.code().len().max(1);
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        let ptr = ptr as *mut u8;
        // SAFETY: `ptr` is a writable mapping of at least `code.len()` bytes
        // that nothing else references.
        unsafe { std::ptr::copy_nonoverlapping(image.code().as_ptr(), ptr, image.code().len()) };
        // SAFETY: changes the protection of our own mapping only.
        let rc =
            unsafe { libc::mprotect(ptr as *mut c_void, len, libc::PROT_READ | libc::PROT_EXEC) };
        assert_eq!(rc, 0, "mprotect failed");
        assert!(image.entry() < image.code().len());
        // SAFETY: the entry offset lies inside the mapping, which holds code
        // the JIT generated with the `JitEntry` calling convention; the
        // pointer is only called while `self` (the mapping) is alive.
        let entry: JitEntry = unsafe { std::mem::transmute(ptr.add(image.entry())) };
        ExecCode { ptr, len, entry }
    }

    /// Calls the code. `helpers` indexed by id, `env` passed to them.
    ///
    /// # Safety
    /// The program must be one the verifier accepted for a context like
    /// `ctx` and the helpers in `table` (or, for hand-written test programs,
    /// one that provably only touches its stack and `ctx`).
    pub unsafe fn call(&self, ctx: &mut [u8], run: &mut JitRun<'_>) -> Result<u64, RunError> {
        // SAFETY: per the caller's contract; `ctx` and `run` are live for the call.
        let r0 = unsafe {
            (self.entry)(
                ctx.as_mut_ptr(),
                ctx.len() as u64,
                run as *mut JitRun<'_> as *mut c_void,
            )
        };
        run.finish(r0)
    }
}

impl Drop for ExecCode {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in `new`; no code pointer
        // into it outlives `self`.
        unsafe { libc::munmap(self.ptr as *mut c_void, self.len) };
    }
}

/// Calls the `Helpers` implementation behind the run's `env` as helper `ID`.
extern "sysv64" fn dispatch<H: Helpers, const ID: u32>(
    r1: u64,
    r2: u64,
    r3: u64,
    r4: u64,
    r5: u64,
    run: *mut JitRun<'_>,
) -> HelperRet {
    // SAFETY: compiled code passes the `JitRun` it was called with, which
    // `run_jit` created with `env` pointing at an `H` it borrows mutably
    // for the whole run; nothing else touches either while the helper runs.
    let run = unsafe { &mut *run };
    let helpers = unsafe { &mut *(run.env() as *mut H) };
    let id = ID;
    // SAFETY: the program was verified (the contract of `ExecCode::call`),
    // so its helper pointer arguments are valid.
    let res =
        unsafe { HelperMem::with_unchecked(|mem| helpers.call(id, [r1, r2, r3, r4, r5], mem)) };
    match res {
        Ok(v) => HelperRet::ok(v),
        Err(e) => {
            run.set_helper_error(e);
            HelperRet::err()
        }
    }
}

/// Helper ids below this are routed to the `Helpers` implementation.
pub const HELPER_IDS: usize = 256;

/// The helper table that routes every id below [`HELPER_IDS`] to `H`
/// (one trampoline per id: a direct call does not pass the id).
pub fn table<H: Helpers>() -> Vec<Option<JitHelperFn>> {
    let mut t: Vec<Option<JitHelperFn>> = vec![None; HELPER_IDS];
    macro_rules! route16 {
        ($($base:literal)*) => {$(
            route16!(@ $base 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        )*};
        (@ $base:literal $($i:literal)*) => {$(
            t[$base + $i] = Some(dispatch::<H, { $base + $i }> as JitHelperFn);
        )*};
    }
    route16!(0 16 32 48 64 80 96 112 128 144 160 176 192 208 224 240);
    t
}

/// Runs code compiled with [`table`]`::<H>()` with `helpers`; returns the
/// outcome and the instructions charged.
///
/// # Safety
/// As [`ExecCode::call`].
pub unsafe fn run_jit<H: Helpers>(
    code: &ExecCode,
    ctx: &mut [u8],
    helpers: &mut H,
    budget: u64,
) -> (Result<u64, RunError>, u64) {
    let mut run = JitRun::new(helpers as *mut H as *mut c_void, budget);
    // SAFETY: forwarded from the caller.
    let res = unsafe { code.call(ctx, &mut run) };
    (res, run.executed())
}
