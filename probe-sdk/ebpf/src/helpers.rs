//! Safe wrappers over the kernel's helper functions.
//!
//! A helper is called the way Linux BPF defines it: `call <id>` with
//! arguments in `r1`–`r5` and the result in `r0`. In Rust that is a call
//! through a function pointer whose value is the helper id; LLVM's BPF
//! backend turns a call to a constant address into `call <id>`. The ids are
//! Linux's, so the objects also make sense to Linux tools.
//!
//! On the host (unit tests) these functions must not be called: the
//! "function pointer" is a small integer.

use core::ffi::c_void;
use core::mem::MaybeUninit;

/// Linux helper ids, from the platform description the kernel and the
/// verifier use (as `usize`: a helper is called through a function pointer
/// whose value is its id).
pub mod id {
    use ktrace_bpf_platform::helper as h;

    /// `void *bpf_map_lookup_elem(map, key)`
    pub const MAP_LOOKUP_ELEM: usize = h::MAP_LOOKUP_ELEM as usize;
    /// `long bpf_map_update_elem(map, key, value, flags)`
    pub const MAP_UPDATE_ELEM: usize = h::MAP_UPDATE_ELEM as usize;
    /// `long bpf_map_delete_elem(map, key)`
    pub const MAP_DELETE_ELEM: usize = h::MAP_DELETE_ELEM as usize;
    /// `u64 bpf_ktime_get_ns(void)`
    pub const KTIME_GET_NS: usize = h::KTIME_GET_NS as usize;
    /// `long bpf_trace_printk(fmt, fmt_size, ...)`
    pub const TRACE_PRINTK: usize = h::TRACE_PRINTK as usize;
    /// `u32 bpf_get_smp_processor_id(void)`
    pub const GET_SMP_PROCESSOR_ID: usize = h::GET_SMP_PROCESSOR_ID as usize;
    /// `u64 bpf_get_current_pid_tgid(void)`
    pub const GET_CURRENT_PID_TGID: usize = h::GET_CURRENT_PID_TGID as usize;
    /// `long bpf_get_current_comm(buf, size)`
    pub const GET_CURRENT_COMM: usize = h::GET_CURRENT_COMM as usize;
    /// `long bpf_perf_event_output(ctx, map, flags, data, size)`
    pub const PERF_EVENT_OUTPUT: usize = h::PERF_EVENT_OUTPUT as usize;
    /// `long bpf_get_stackid(ctx, map, flags)`
    pub const GET_STACKID: usize = h::GET_STACKID as usize;
    /// `long bpf_probe_read_kernel(dst, size, unsafe_ptr)`
    pub const PROBE_READ_KERNEL: usize = h::PROBE_READ_KERNEL as usize;
    /// `long bpf_probe_read_kernel_str(dst, size, unsafe_ptr)`
    pub const PROBE_READ_KERNEL_STR: usize = h::PROBE_READ_KERNEL_STR as usize;
    /// `long bpf_ringbuf_output(ringbuf, data, size, flags)`
    pub const RINGBUF_OUTPUT: usize = h::RINGBUF_OUTPUT as usize;
    /// `void *bpf_ringbuf_reserve(ringbuf, size, flags)`
    pub const RINGBUF_RESERVE: usize = h::RINGBUF_RESERVE as usize;
    /// `void bpf_ringbuf_submit(data, flags)`
    pub const RINGBUF_SUBMIT: usize = h::RINGBUF_SUBMIT as usize;
    /// `void bpf_ringbuf_discard(data, flags)`
    pub const RINGBUF_DISCARD: usize = h::RINGBUF_DISCARD as usize;
    /// `u64 bpf_get_func_ip(ctx)`
    pub const GET_FUNC_IP: usize = h::GET_FUNC_IP as usize;
}

/// Declares a raw helper: an `unsafe fn` that calls helper `$id`.
macro_rules! raw_helper {
    ($(#[$m:meta])* $name:ident = $id:expr; fn($($arg:ident: $t:ty),*) -> $ret:ty) => {
        $(#[$m])*
        ///
        /// # Safety
        /// Pointer arguments must satisfy the helper's Linux contract; the
        /// verifier enforces it at load time.
        #[inline(always)]
        pub unsafe fn $name($($arg: $t),*) -> $ret {
            // SAFETY: on the BPF target a call to the constant address `$id`
            // is the `call $id` instruction; the signature matches the
            // helper's Linux prototype.
            let f: unsafe extern "C" fn($($t),*) -> $ret = unsafe { core::mem::transmute::<usize, _>($id) };
            // SAFETY: the caller upholds the helper's contract.
            unsafe { f($($arg),*) }
        }
    };
}

/// Direct helper calls with raw pointers, for what the safe wrappers do not
/// cover.
pub mod raw {
    use super::id;
    use core::ffi::c_void;

    raw_helper!(/// `bpf_map_lookup_elem`
        map_lookup_elem = id::MAP_LOOKUP_ELEM; fn(map: *mut c_void, key: *const c_void) -> *mut c_void);
    raw_helper!(/// `bpf_map_update_elem`
        map_update_elem = id::MAP_UPDATE_ELEM; fn(map: *mut c_void, key: *const c_void, value: *const c_void, flags: u64) -> i64);
    raw_helper!(/// `bpf_map_delete_elem`
        map_delete_elem = id::MAP_DELETE_ELEM; fn(map: *mut c_void, key: *const c_void) -> i64);
    raw_helper!(/// `bpf_ktime_get_ns`
        ktime_get_ns = id::KTIME_GET_NS; fn() -> u64);
    raw_helper!(/// `bpf_trace_printk` with up to three arguments
        trace_printk = id::TRACE_PRINTK; fn(fmt: *const u8, fmt_size: u32, a: u64, b: u64, c: u64) -> i64);
    raw_helper!(/// `bpf_get_smp_processor_id`
        get_smp_processor_id = id::GET_SMP_PROCESSOR_ID; fn() -> u32);
    raw_helper!(/// `bpf_get_current_pid_tgid`
        get_current_pid_tgid = id::GET_CURRENT_PID_TGID; fn() -> u64);
    raw_helper!(/// `bpf_get_current_comm`
        get_current_comm = id::GET_CURRENT_COMM; fn(buf: *mut c_void, size: u32) -> i64);
    raw_helper!(/// `bpf_perf_event_output`
        perf_event_output = id::PERF_EVENT_OUTPUT; fn(ctx: *mut c_void, map: *mut c_void, flags: u64, data: *const c_void, size: u64) -> i64);
    raw_helper!(/// `bpf_get_stackid`
        get_stackid = id::GET_STACKID; fn(ctx: *mut c_void, map: *mut c_void, flags: u64) -> i64);
    raw_helper!(/// `bpf_probe_read_kernel`
        probe_read_kernel = id::PROBE_READ_KERNEL; fn(dst: *mut c_void, size: u32, src: *const c_void) -> i64);
    raw_helper!(/// `bpf_probe_read_kernel_str`
        probe_read_kernel_str = id::PROBE_READ_KERNEL_STR; fn(dst: *mut c_void, size: u32, src: *const c_void) -> i64);
    raw_helper!(/// `bpf_ringbuf_output`
        ringbuf_output = id::RINGBUF_OUTPUT; fn(ringbuf: *mut c_void, data: *const c_void, size: u64, flags: u64) -> i64);
    raw_helper!(/// `bpf_ringbuf_reserve`
        ringbuf_reserve = id::RINGBUF_RESERVE; fn(ringbuf: *mut c_void, size: u64, flags: u64) -> *mut c_void);
    raw_helper!(/// `bpf_ringbuf_submit`
        ringbuf_submit = id::RINGBUF_SUBMIT; fn(data: *mut c_void, flags: u64) -> ());
    raw_helper!(/// `bpf_ringbuf_discard`
        ringbuf_discard = id::RINGBUF_DISCARD; fn(data: *mut c_void, flags: u64) -> ());
    raw_helper!(/// `bpf_get_func_ip`
        get_func_ip = id::GET_FUNC_IP; fn(ctx: *mut c_void) -> u64);
}

/// Nanoseconds since boot (monotonic).
#[inline(always)]
pub fn ktime_get_ns() -> u64 {
    // SAFETY: no arguments.
    unsafe { raw::ktime_get_ns() }
}

/// `tgid << 32 | pid` of the current task (Linux's convention: the low half
/// is the thread id).
#[inline(always)]
pub fn current_pid_tgid() -> u64 {
    // SAFETY: no arguments.
    unsafe { raw::get_current_pid_tgid() }
}

/// The CPU the program runs on.
#[inline(always)]
pub fn smp_processor_id() -> u32 {
    // SAFETY: no arguments.
    unsafe { raw::get_smp_processor_id() }
}

/// The current task's name, NUL padded.
#[inline(always)]
pub fn current_comm() -> Result<[u8; 16], i64> {
    let mut comm = [0u8; 16];
    // SAFETY: `comm` is a writable 16-byte stack buffer.
    let rc = unsafe { raw::get_current_comm(comm.as_mut_ptr().cast(), 16) };
    if rc < 0 {
        Err(rc)
    } else {
        Ok(comm)
    }
}

/// Copy a `T` from kernel memory at `src`, which may be any address: a bad
/// one gives `Err(errno)` (negative) rather than a fault.
#[inline(always)]
pub fn probe_read_kernel<T>(src: *const T) -> Result<T, i64> {
    let mut out = MaybeUninit::<T>::uninit();
    // SAFETY: `out` is a writable buffer of `size_of::<T>()` bytes; the helper
    // checks `src` itself.
    let rc = unsafe {
        raw::probe_read_kernel(
            out.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            src.cast(),
        )
    };
    if rc < 0 {
        Err(rc)
    } else {
        // SAFETY: the helper succeeded, so all bytes of `out` are written.
        Ok(unsafe { out.assume_init() })
    }
}

/// Copy a NUL-terminated string from kernel memory into `dst`. Returns the
/// number of bytes written including the NUL.
#[inline(always)]
pub fn probe_read_kernel_str(src: *const u8, dst: &mut [u8]) -> Result<usize, i64> {
    // SAFETY: `dst` is a writable buffer of `dst.len()` bytes.
    let rc = unsafe {
        raw::probe_read_kernel_str(dst.as_mut_ptr().cast(), dst.len() as u32, src.cast())
    };
    if rc < 0 {
        Err(rc)
    } else {
        Ok(rc as usize)
    }
}

/// The address of the probed function (kprobes: the attach address).
#[inline(always)]
pub fn func_ip<C: crate::context::EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: `ctx` wraps the pointer the program received.
    unsafe { raw::get_func_ip(ctx.as_ptr()) }
}

/// Print to the kernel's trace log: `trace_printk!("pid %d\n", pid)`. Up to
/// three integer arguments, formatted by the kernel (`%d %u %x %llu %lld
/// %llx %p %s`-style, as Linux's `bpf_trace_printk`).
#[macro_export]
macro_rules! trace_printk {
    ($fmt:literal $(,)?) => { $crate::trace_printk!(@call $fmt, 0u64, 0u64, 0u64) };
    ($fmt:literal, $a:expr $(,)?) => { $crate::trace_printk!(@call $fmt, $a, 0u64, 0u64) };
    ($fmt:literal, $a:expr, $b:expr $(,)?) => { $crate::trace_printk!(@call $fmt, $a, $b, 0u64) };
    ($fmt:literal, $a:expr, $b:expr, $c:expr $(,)?) => { $crate::trace_printk!(@call $fmt, $a, $b, $c) };
    ($fmt:literal, $a:expr, $b:expr, $c:expr, $($more:expr),+ $(,)?) => {
        compile_error!("trace_printk! takes at most three arguments (Linux's bpf_trace_printk)")
    };
    (@call $fmt:literal, $a:expr, $b:expr, $c:expr) => {{
        // The format is a NUL-terminated constant; LLVM places it in
        // `.rodata`, which the loader turns into a read-only array map (as
        // clang does for C probes), and the helper reads it from there.
        const FMT: [u8; { concat!($fmt, "\0").len() }] = $crate::helpers::fmt_bytes(concat!($fmt, "\0"));
        let fmt = FMT;
        // SAFETY: `fmt` is NUL terminated and `fmt.len()` bytes long.
        unsafe {
            $crate::helpers::raw::trace_printk(fmt.as_ptr(), fmt.len() as u32, $a as u64, $b as u64, $c as u64)
        }
    }};
}

/// Copy a string into a byte array of the same length (used by
/// [`trace_printk!`]; `N` must equal `s.len()`).
#[doc(hidden)]
#[inline(always)]
pub const fn fmt_bytes<const N: usize>(s: &str) -> [u8; N] {
    let src = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N && i < src.len() {
        out[i] = src[i];
        i += 1;
    }
    out
}

/// `flags` for [`crate::maps::PerfEventArray::output`]: the current CPU's
/// buffer.
pub const BPF_F_CURRENT_CPU: u64 = 0xffff_ffff;

/// A pointer to a map definition, as helpers want it.
#[inline(always)]
pub(crate) fn map_ptr<M>(map: &M) -> *mut c_void {
    (map as *const M).cast_mut().cast()
}
