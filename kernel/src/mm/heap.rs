//! The kernel heap: `talc` over one contiguous block of frames, behind a
//! lock that disables interrupts (interrupt handlers may allocate).

use crate::sync::IrqRawMutex;
use core::sync::atomic::{AtomicU64, Ordering};
use talc::{ErrOnOom, Span, Talc, Talck};

/// Heap size: half of what is left, capped.
const MAX_HEAP: u64 = 96 << 20;

#[global_allocator]
static ALLOCATOR: Talck<IrqRawMutex, ErrOnOom> = Talc::new(ErrOnOom).lock();
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
    ALLOCATOR.lock().get_counters().allocated_bytes
}
