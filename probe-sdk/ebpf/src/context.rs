//! What the kernel hands a program, with typed accessors.
//!
//! Every program receives one pointer in `r1`. For kprobes it points at the
//! interrupted registers (Linux's x86_64 `struct pt_regs`), for tracepoints at
//! the event's record, for perf events at `struct bpf_perf_event_data`. The
//! verifier only allows loads from it at known offsets, so the accessors read
//! fields directly (one `ldx` each) and never copy the whole block.

use core::ffi::c_void;
use core::marker::PhantomData;

use ktrace_tracepoints::TracepointEvent;

/// Linux's x86_64 `struct pt_regs` and `struct bpf_perf_event_data`, from
/// the platform description the kernel and the verifier use.
pub use ktrace_bpf_platform::{PerfEventData, PtRegs};

/// A value that fits in one register: integers, `bool` and raw pointers.
/// [`KprobeContext::arg`] and [`KretprobeContext::ret`] convert the raw
/// 64-bit register through it (truncating, as the C ABI does).
pub trait FromRegister: Sized {
    /// Reinterpret a register's value.
    fn from_register(raw: u64) -> Self;
}

macro_rules! from_register_int {
    ($($t:ty),*) => {$(
        impl FromRegister for $t {
            #[inline(always)]
            fn from_register(raw: u64) -> Self {
                raw as $t
            }
        }
    )*};
}
from_register_int!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl FromRegister for bool {
    #[inline(always)]
    fn from_register(raw: u64) -> Self {
        raw as u8 != 0
    }
}

impl<T> FromRegister for *const T {
    #[inline(always)]
    fn from_register(raw: u64) -> Self {
        raw as usize as *const T
    }
}

impl<T> FromRegister for *mut T {
    #[inline(always)]
    fn from_register(raw: u64) -> Self {
        raw as usize as *mut T
    }
}

/// Builds a context from the raw pointer a program receives. The attribute
/// macros call this, so a probe function names its context by type only.
pub trait FromContext {
    /// Wrap the pointer passed in `r1`.
    fn from_context(ctx: *mut c_void) -> Self;
}

/// The context of a `#[kprobe]` program: the registers at the probed
/// instruction.
#[derive(Clone, Copy)]
pub struct KprobeContext {
    regs: *mut PtRegs,
}

impl FromContext for KprobeContext {
    #[inline(always)]
    fn from_context(ctx: *mut c_void) -> Self {
        Self { regs: ctx.cast() }
    }
}

/// Reads one `pt_regs` field straight from the context. A volatile read keeps
/// LLVM from widening or merging it into an access the verifier would
/// consider out of the field's bounds.
macro_rules! reg {
    ($regs:expr, $field:ident) => {
        // SAFETY: the kernel passes a valid, aligned `pt_regs` for the whole
        // run of the program, and the field is in bounds by construction.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$regs).$field)) }
    };
}

impl KprobeContext {
    /// Argument `n` (0-based) of the probed function under the System V
    /// x86_64 calling convention: `rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`.
    /// `None` for `n >= 6` (stack arguments are not reachable this way).
    /// Only meaningful when the probe sits on a function's first instruction.
    #[inline(always)]
    pub fn arg<T: FromRegister>(&self, n: usize) -> Option<T> {
        let raw = match n {
            0 => reg!(self.regs, rdi),
            1 => reg!(self.regs, rsi),
            2 => reg!(self.regs, rdx),
            3 => reg!(self.regs, rcx),
            4 => reg!(self.regs, r8),
            5 => reg!(self.regs, r9),
            _ => return None,
        };
        Some(T::from_register(raw))
    }

    /// The probed instruction's address (`rip` as saved; the kernel rewinds
    /// it past the breakpoint).
    #[inline(always)]
    pub fn ip(&self) -> u64 {
        reg!(self.regs, rip)
    }

    /// The stack pointer at the probe.
    #[inline(always)]
    pub fn sp(&self) -> u64 {
        reg!(self.regs, rsp)
    }

    /// The raw register block, for helpers that take the context
    /// (`get_stackid`, `perf_event_output`).
    #[inline(always)]
    pub fn regs(&self) -> *mut PtRegs {
        self.regs
    }

    /// The raw context pointer.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut c_void {
        self.regs.cast()
    }
}

/// The context of a `#[kretprobe]` program: the registers as the probed
/// function returns.
#[derive(Clone, Copy)]
pub struct KretprobeContext {
    regs: *mut PtRegs,
}

impl FromContext for KretprobeContext {
    #[inline(always)]
    fn from_context(ctx: *mut c_void) -> Self {
        Self { regs: ctx.cast() }
    }
}

impl KretprobeContext {
    /// The function's return value (`rax`).
    #[inline(always)]
    pub fn ret<T: FromRegister>(&self) -> T {
        T::from_register(reg!(self.regs, rax))
    }

    /// The return address the function goes back to.
    #[inline(always)]
    pub fn ip(&self) -> u64 {
        reg!(self.regs, rip)
    }

    /// The raw register block.
    #[inline(always)]
    pub fn regs(&self) -> *mut PtRegs {
        self.regs
    }

    /// The raw context pointer.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut c_void {
        self.regs.cast()
    }
}

/// The context of a `#[tracepoint]` program: the record of event `E` (one of
/// the [`ktrace_tracepoints`] structs), read field by field.
pub struct TracepointContext<E: TracepointEvent> {
    record: *mut E,
    _event: PhantomData<E>,
}

impl<E: TracepointEvent> Clone for TracepointContext<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E: TracepointEvent> Copy for TracepointContext<E> {}

impl<E: TracepointEvent> FromContext for TracepointContext<E> {
    #[inline(always)]
    fn from_context(ctx: *mut c_void) -> Self {
        Self {
            record: ctx.cast(),
            _event: PhantomData,
        }
    }
}

impl<E: TracepointEvent> TracepointContext<E> {
    /// Read one field: `ctx.read(|r| &r.sector)`. Only that field is loaded,
    /// so the access stays inside what the verifier allows for the record.
    #[inline(always)]
    pub fn read<F: Copy>(&self, field: impl FnOnce(&E) -> &F) -> F {
        // SAFETY: the kernel passes a valid record of type `E` (the loader
        // checked the section's event name against `E`'s), alive for the
        // whole run; `field` returns a reference into it.
        let record = unsafe { &*self.record };
        // SAFETY: `field` borrows from `record`, which is valid and aligned.
        unsafe { core::ptr::read_volatile(field(record)) }
    }

    /// The whole record, by reference, for reading several fields.
    #[inline(always)]
    pub fn event(&self) -> &E {
        // SAFETY: as in `read`.
        unsafe { &*self.record }
    }

    /// The raw context pointer.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut c_void {
        self.record.cast()
    }
}

/// The context of a `#[perf_event]` program (sampling).
#[derive(Clone, Copy)]
pub struct PerfEventContext {
    data: *mut PerfEventData,
}

impl FromContext for PerfEventContext {
    #[inline(always)]
    fn from_context(ctx: *mut c_void) -> Self {
        Self { data: ctx.cast() }
    }
}

impl PerfEventContext {
    /// The sampled instruction pointer.
    #[inline(always)]
    pub fn ip(&self) -> u64 {
        // SAFETY: the kernel passes a valid `bpf_perf_event_data`.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*self.data).regs.rip)) }
    }

    /// The sampling period.
    #[inline(always)]
    pub fn sample_period(&self) -> u64 {
        // SAFETY: as in `ip`.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*self.data).sample_period)) }
    }

    /// The sampled registers.
    #[inline(always)]
    pub fn regs(&self) -> *mut PtRegs {
        // SAFETY: `regs` is the first field; no read happens here.
        unsafe { core::ptr::addr_of_mut!((*self.data).regs) }
    }

    /// The raw context pointer.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut c_void {
        self.data.cast()
    }
}

/// A context that helpers taking `ctx` accept.
pub trait EbpfContext {
    /// The raw pointer the program received.
    fn as_ptr(&self) -> *mut c_void;
}

impl EbpfContext for KprobeContext {
    fn as_ptr(&self) -> *mut c_void {
        KprobeContext::as_ptr(self)
    }
}
impl EbpfContext for KretprobeContext {
    fn as_ptr(&self) -> *mut c_void {
        KretprobeContext::as_ptr(self)
    }
}
impl<E: TracepointEvent> EbpfContext for TracepointContext<E> {
    fn as_ptr(&self) -> *mut c_void {
        TracepointContext::as_ptr(self)
    }
}
impl EbpfContext for PerfEventContext {
    fn as_ptr(&self) -> *mut c_void {
        PerfEventContext::as_ptr(self)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn pt_regs_matches_linux_layout() {
        assert_eq!(size_of::<PtRegs>(), 21 * 8);
        assert_eq!(offset_of!(PtRegs, rax), 80);
        assert_eq!(offset_of!(PtRegs, rsi), 104);
        assert_eq!(offset_of!(PtRegs, rdi), 112);
        assert_eq!(offset_of!(PtRegs, rip), 128);
        assert_eq!(offset_of!(PtRegs, rsp), 152);
        assert_eq!(offset_of!(PerfEventData, sample_period), 168);
    }

    #[test]
    fn kprobe_arguments_follow_sysv_order() {
        let mut regs = PtRegs {
            rdi: 1,
            rsi: 2,
            rdx: 3,
            rcx: 4,
            r8: 5,
            r9: 6,
            rax: u64::MAX,
            rip: 0xffff_8000_0010_0000,
            ..PtRegs::default()
        };
        let ctx = KprobeContext::from_context(core::ptr::addr_of_mut!(regs).cast());
        let args: std::vec::Vec<u64> = (0..6).map(|n| ctx.arg::<u64>(n).unwrap()).collect();
        assert_eq!(args, [1, 2, 3, 4, 5, 6]);
        assert_eq!(ctx.arg::<u64>(6), None);
        assert_eq!(ctx.ip(), 0xffff_8000_0010_0000);
        let ret = KretprobeContext::from_context(core::ptr::addr_of_mut!(regs).cast());
        assert_eq!(ret.ret::<i32>(), -1);
        assert_eq!(ret.ret::<u64>(), u64::MAX);
    }

    #[test]
    fn tracepoint_fields_read_from_the_record() {
        use ktrace_tracepoints::block::BlockRqIssue;
        let mut rec = BlockRqIssue {
            sector: 2048,
            rq_id: 7,
            nr_sector: 8,
            ..Default::default()
        };
        let ctx =
            TracepointContext::<BlockRqIssue>::from_context(core::ptr::addr_of_mut!(rec).cast());
        assert_eq!(ctx.read(|r| &r.sector), 2048);
        assert_eq!(ctx.read(|r| &r.rq_id), 7);
        assert_eq!(ctx.event().nr_sector, 8);
    }
}
