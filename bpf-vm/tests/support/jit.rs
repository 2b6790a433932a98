//! Running JIT-compiled code in the test process: map it read-execute
//! (written while read-write, never both), call it, and serve its helper
//! calls through an interpreter [`Helpers`] implementation.

use std::ffi::c_void;

use bpf_vm::interp::{Helpers, RunError};
use bpf_vm::jit::{JitEntry, JitHelperFn, JitImage, JitRun};

/// Compiled code in its own read-execute mapping, unmapped on drop.
pub struct ExecCode {
    ptr: *mut u8,
    len: usize,
    entry: JitEntry,
}

impl ExecCode {
    /// Maps the code near this binary's own code (see [`near_hint`]).
    pub fn new(image: &JitImage) -> ExecCode {
        let len = image.code().len().max(1);
        // SAFETY: a fresh private anonymous mapping; without MAP_FIXED the
        // address is only a hint, so no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                near_hint(),
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

    /// Where the code is mapped.
    pub fn addr(&self) -> usize {
        self.ptr as usize
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

/// Where to ask for the code's mapping: 1.5 GiB past this binary's code,
/// usually free (the heap starts within 1 GiB after the binary, other
/// mappings sit terabytes higher), so that compiled code and the helpers
/// it calls are within 2 GiB of each other, as in the kernel (both in its
/// low identity map), in rbpf (its code is on the heap) and in Linux
/// (modules and BPF programs within reach of a `call rel32` from the
/// kernel text). Left to itself, `mmap` picks an address some 2^45 bytes
/// from the binary, and on AMD Zen 4 every call and return across 2^37
/// bytes or more costs about 0.8 ns more (`docs/jit.md`). When the hint
/// is taken, the kernel picks the address as before ([`ExecCode::addr`]
/// tells).
fn near_hint() -> *mut c_void {
    let here = near_hint as *const () as usize;
    ((here & !0xfff) + (3 << 29)) as *mut c_void
}

impl Drop for ExecCode {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in `new`; no code pointer
        // into it outlives `self`.
        unsafe { libc::munmap(self.ptr as *mut c_void, self.len) };
    }
}

/// The helper table that routes every id below `HELPER_IDS` to `H`
/// (the library's, which the kernel uses too).
pub fn table<H: Helpers>() -> Vec<Option<JitHelperFn>> {
    bpf_vm::jit::helper_table::<H>()
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
    // SAFETY: forwarded from the caller; `code` keeps the mapping alive.
    unsafe { bpf_vm::jit::run(code.entry, ctx.as_mut_ptr(), ctx.len(), helpers, budget) }
}
