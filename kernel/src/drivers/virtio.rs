//! What every virtio driver of the kernel shares: the `virtio-drivers`
//! HAL.
//!
//! The kernel identity-maps the low 4 GiB, so a heap buffer's address is
//! its physical address: buffers are shared in place, with no bounce copy.
//!
//! The frame allocator never takes frames back, so DMA blocks a driver
//! gives up (a virtqueue it rebuilds after a queue reset) are kept here
//! and handed out again for the next block of the same size: rebuilding a
//! queue any number of times costs its memory once.

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::arch::paging::{self, flags};
use crate::sync::SpinLock;

/// DMA blocks given back, `(physical address, pages)`, for reuse.
static FREE_DMA: SpinLock<[Option<(u64, usize)>; 16]> = SpinLock::new([None; 16]);

/// A block of `pages` given back earlier, if any.
fn reuse_dma(pages: usize) -> Option<u64> {
    let mut free = FREE_DMA.lock();
    let slot = free
        .iter_mut()
        .find(|s| s.is_some_and(|(_, n)| n == pages))?;
    slot.take().map(|(paddr, _)| paddr)
}

/// The kernel's `virtio-drivers` HAL.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, identity-mapped frames
// that the frame allocator gives to nobody else; `mmio_phys_to_virt`
// returns the identity mapping of a device BAR (mapped first if it lies
// above 4 GiB); `share` returns the physical address of a buffer, which
// equals its virtual address under the identity map.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(paddr) =
            reuse_dma(pages).or_else(|| crate::mm::frame::alloc_contiguous(pages as u64))
        else {
            // The crate offers no way to fail here; this only runs while
            // drivers initialise at boot, and once per virtio-serial port
            // when it first rebuilds a transmit queue (later rebuilds
            // reuse the blocks given back).
            panic!("virtio: out of memory for {pages} DMA pages");
        };
        // SAFETY: the frames are ours alone and identity-mapped.
        unsafe { core::ptr::write_bytes(paddr as *mut u8, 0, pages * 4096) };
        // Frames start above 1 MiB: never null.
        (
            paddr,
            NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling()),
        )
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        // The frame allocator does not take contiguous blocks back: keep
        // the block for the next allocation of its size (a full list
        // leaves it unused, as before).
        let mut free = FREE_DMA.lock();
        if let Some(slot) = free.iter_mut().find(|s| s.is_none()) {
            *slot = Some((paddr, pages));
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        if paddr.saturating_add(size as u64) > 1 << 32 {
            // A 64-bit BAR above the identity-mapped 4 GiB: map it 1:1.
            let start = paddr & !0xfff;
            let mut page = start;
            while page < paddr + size as u64 {
                if paging::translate(page).is_none() {
                    if let Err(e) =
                        paging::map_page(page, page, flags::DATA, crate::mm::frame::alloc_zeroed)
                    {
                        log::error!("virtio: cannot map BAR page {page:#x}: {e:?}");
                    }
                }
                page += 4096;
            }
        }
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
