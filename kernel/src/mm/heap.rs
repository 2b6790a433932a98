//! The kernel heap: `talc` over one contiguous block of frames, behind a
//! lock that disables interrupts (interrupt handlers may allocate).
//!
//! The last [`RESERVE_BYTES`] are kept for the kernel's own work. Work a
//! host asks for either checks [`check_room`] before it allocates or runs
//! inside [`guarded`], where an allocation that would eat into the reserve
//! fails (and the fallible allocation behind it turns that into a refusal).

use crate::sync::IrqRawMutex;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use talc::{ErrOnOom, Span, Talc, Talck};

/// Heap size: half of what is left, capped.
const MAX_HEAP: u64 = 96 << 20;

/// `talc`, plus the reserve check for a [`guarded`] task.
struct KernelHeap {
    talc: Talck<IrqRawMutex, ErrOnOom>,
}

/// The task whose allocations may not eat into the reserve.
static GUARDED_PID: AtomicU32 = AtomicU32::new(NO_PID);
const NO_PID: u32 = u32::MAX;

impl KernelHeap {
    /// Whether an allocation of `size` more bytes is refused: only in the
    /// guarded task, never in an interrupt handler (those run with
    /// interrupts off, and must not be refused what the reserve is for).
    fn refuses(&self, size: usize) -> bool {
        let guarded = GUARDED_PID.load(Ordering::Relaxed);
        guarded != NO_PID
            && guarded == crate::task::current_pid()
            && crate::arch::irq_enabled()
            && free_bytes() < size.saturating_add(RESERVE_BYTES)
    }
}

// SAFETY: every call goes to talc unchanged, or fails with null before
// reaching it, which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return core::ptr::null_mut();
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { self.talc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return core::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { self.talc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.talc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && self.refuses(new_size) {
            return core::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { self.talc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: KernelHeap = KernelHeap {
    talc: Talc::new(ErrOnOom).lock(),
};
static HEAP_BYTES: AtomicU64 = AtomicU64::new(0);

/// Claim the heap block.
pub fn init() {
    let frames = (super::frame::total_bytes() / 2).min(MAX_HEAP) / 4096;
    let base = super::frame::alloc_contiguous(frames).expect("no memory for the heap");
    let size = frames * 4096;
    // SAFETY: the block is identity-mapped RAM that the frame allocator
    // handed to us alone and will never hand out again.
    unsafe {
        ALLOCATOR
            .talc
            .lock()
            .claim(Span::from_base_size(base as *mut u8, size as usize))
            .expect("talc refused the heap block");
    }
    HEAP_BYTES.store(size, Ordering::Relaxed);
}

/// Heap size in bytes.
pub fn total_bytes() -> u64 {
    HEAP_BYTES.load(Ordering::Relaxed)
}

/// Bytes currently allocated.
pub fn used_bytes() -> usize {
    ALLOCATOR.talc.lock().get_counters().allocated_bytes
}

/// Heap kept for the kernel's own work: interrupt handlers, the kernel's
/// tasks, replies (a frame is at most 4 MiB) and event batches. A request
/// that would eat into it (a map, a program to verify, a task) is refused
/// instead, because an allocation that fails later would stop the kernel.
pub const RESERVE_BYTES: usize = 12 << 20;

/// Bytes not allocated.
pub fn free_bytes() -> usize {
    (total_bytes() as usize).saturating_sub(used_bytes())
}

/// A request for more heap than can be spared.
#[derive(Clone, Copy, Debug)]
pub struct HeapFull {
    /// Bytes asked for.
    pub wanted: usize,
    /// Bytes free when asked.
    pub free: usize,
}

impl core::fmt::Display for HeapFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "needs {} KiB of kernel heap, but {} KiB of the heap's {} KiB are free and the last {} KiB are kept for the kernel itself (ENOMEM)",
            self.wanted.div_ceil(1024),
            self.free / 1024,
            total_bytes() / 1024,
            RESERVE_BYTES / 1024
        )
    }
}

/// Whether `wanted` more bytes can be allocated while keeping
/// [`RESERVE_BYTES`] free; `Ok` holds the spare bytes measured (at least
/// `wanted`), for a caller that sizes more work from the same reading.
pub fn check_room(wanted: usize) -> Result<usize, HeapFull> {
    let free = free_bytes();
    let spare = free.saturating_sub(RESERVE_BYTES);
    if spare >= wanted {
        Ok(spare)
    } else {
        Err(HeapFull { wanted, free })
    }
}

/// Bytes that can be allocated while keeping [`RESERVE_BYTES`] free.
pub fn spare_bytes() -> usize {
    free_bytes().saturating_sub(RESERVE_BYTES)
}

/// Runs `f` with the current task's allocations refused (null, which a
/// fallible allocation reports as an error) when they would leave less than
/// [`RESERVE_BYTES`] free. For work whose size the host chooses, like
/// preallocating a map: it ends in a refusal, never in the reserve.
///
/// Every allocation `f` makes must be fallible. One task at a time is
/// guarded (today's caller runs under the BPF runtime's lock); should a
/// second task ask meanwhile, its `f` runs unguarded rather than take over
/// the first task's guard.
pub fn guarded<T>(f: impl FnOnce() -> T) -> T {
    let me = crate::task::current_pid();
    match GUARDED_PID.compare_exchange(NO_PID, me, Ordering::AcqRel, Ordering::Relaxed) {
        Ok(_) => {
            let out = f();
            GUARDED_PID.store(NO_PID, Ordering::Release);
            out
        }
        // Already guarded (this task, nested) or another task's turn.
        Err(_) => f(),
    }
}

/// The heap's state in words, for refusals.
pub fn describe() -> alloc::string::String {
    alloc::format!(
        "{} KiB of the kernel heap's {} KiB are free, and the last {} KiB are kept for the kernel itself",
        free_bytes() / 1024,
        total_bytes() / 1024,
        RESERVE_BYTES / 1024
    )
}
