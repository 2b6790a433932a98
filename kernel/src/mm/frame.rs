//! 4 KiB physical frame allocator: a bump pointer over the RAM regions above
//! the kernel image, plus a free list threaded through freed frames.

use super::pvh::{MemoryMap, Region};
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicU64, Ordering};

const PAGE: u64 = 4096;

struct Frames {
    regions: [Region; 32],
    len: usize,
    current: usize,
    next: u64,
    free_head: u64,
}

static FRAMES: SpinLock<Frames> = SpinLock::new(Frames {
    regions: [Region { start: 0, end: 0 }; 32],
    len: 0,
    current: 0,
    next: 0,
    free_head: 0,
});
static TOTAL: AtomicU64 = AtomicU64::new(0);
static PAGE_TABLE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Take over the RAM regions, skipping everything below `kernel_end`.
pub fn init(map: &MemoryMap, kernel_end: u64) {
    let mut f = FRAMES.lock();
    let mut total = 0;
    for r in &map.regions[..map.len] {
        total += r.end - r.start;
        let start = (r.start.max(kernel_end).max(1 << 20) + PAGE - 1) & !(PAGE - 1);
        let end = r.end & !(PAGE - 1);
        // Stay inside the identity-mapped low 4 GiB.
        let end = end.min(4 << 30);
        if start < end && f.len < f.regions.len() {
            let i = f.len;
            f.regions[i] = Region { start, end };
            f.len += 1;
        }
    }
    f.current = 0;
    f.next = f.regions[0].start;
    TOTAL.store(total, Ordering::Relaxed);
}

/// Total RAM in bytes.
pub fn total_bytes() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

/// Bytes of frames handed out for page tables.
pub fn page_table_bytes() -> u64 {
    PAGE_TABLE_BYTES.load(Ordering::Relaxed)
}

/// Allocate `count` physically contiguous frames (never from the free list).
#[must_use = "the frames are never handed out again"]
pub fn alloc_contiguous(count: u64) -> Option<u64> {
    let mut f = FRAMES.lock();
    let size = count * PAGE;
    while f.current < f.len {
        let r = f.regions[f.current];
        if f.next + size <= r.end {
            let addr = f.next;
            f.next += size;
            return Some(addr);
        }
        f.current += 1;
        if f.current < f.len {
            f.next = f.regions[f.current].start;
        }
    }
    None
}

/// `count` contiguous frames as zeroed memory of the caller's for good
/// (a RAM disk's storage), or `None` when memory is short.
#[must_use = "the frames are never handed out again"]
pub fn alloc_forever(count: u64) -> Option<&'static mut [u8]> {
    let base = alloc_contiguous(count)?;
    let len = usize::try_from(count * PAGE).ok()?;
    // SAFETY: `alloc_contiguous` handed these identity-mapped frames to us
    // alone and never hands them out again, so the slice aliases nothing
    // and lives forever.
    let memory = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, len) };
    memory.fill(0);
    Some(memory)
}

/// Allocate one zeroed frame (used for page tables).
#[must_use = "a dropped frame is leaked"]
pub fn alloc_zeroed() -> Option<u64> {
    let reused = {
        let mut f = FRAMES.lock();
        let head = f.free_head;
        if head != 0 {
            // SAFETY: free frames are identity-mapped RAM whose first word
            // holds the next free frame's address (written by `free`).
            f.free_head = unsafe { core::ptr::read(head as *const u64) };
            Some(head)
        } else {
            None
        }
    };
    let frame = reused.or_else(|| alloc_contiguous(1))?;
    // SAFETY: the frame is ours alone and identity-mapped.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE as usize) };
    PAGE_TABLE_BYTES.fetch_add(PAGE, Ordering::Relaxed);
    Some(frame)
}
