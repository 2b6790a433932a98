//! Memory: the PVH memory map, a frame allocator, the kernel page tables
//! (W^X) and the heap.

pub mod frame;
pub mod heap;
pub mod pvh;

use crate::arch::paging::{self, flags};
use core::sync::atomic::{AtomicU64, Ordering};

/// What the firmware handed over besides RAM: the ACPI RSDP and the pages
/// of the PVH start info (see [`pvh::MemoryMap`]).
static RSDP: AtomicU64 = AtomicU64::new(0);
static BOOT_INFO: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// Usable RAM below 1 MiB (start, end), where the AP trampoline may go.
static LOW_RAM: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Physical address of the ACPI RSDP (0 when the firmware gave none).
pub fn rsdp_paddr() -> u64 {
    RSDP.load(Ordering::Relaxed)
}

/// Whether the 4 KiB page at `addr` (below 1 MiB) is RAM nobody uses: in
/// the firmware's first usable region, not holding the start info.
pub fn low_page_is_free(addr: u64) -> bool {
    let (start, end) = (
        LOW_RAM[0].load(Ordering::Relaxed),
        LOW_RAM[1].load(Ordering::Relaxed),
    );
    let page = addr & !0xfff;
    page >= start.max(0x1000)
        && page + 0x1000 <= end.min(1 << 20)
        && BOOT_INFO
            .iter()
            .all(|b| b.load(Ordering::Relaxed) & !0xfff != page)
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __kernel_end: u8;
}

/// Addresses of the kernel image's sections.
#[derive(Debug, Clone, Copy)]
pub struct KernelLayout {
    pub start: u64,
    pub text_start: u64,
    pub text_end: u64,
    pub rodata_start: u64,
    pub rodata_end: u64,
    pub end: u64,
}

/// The kernel image layout from the linker script's symbols.
pub fn layout() -> KernelLayout {
    // Only the addresses of the linker-defined symbols are taken.
    KernelLayout {
        start: core::ptr::addr_of!(__kernel_start) as u64,
        text_start: core::ptr::addr_of!(__text_start) as u64,
        text_end: core::ptr::addr_of!(__text_end) as u64,
        rodata_start: core::ptr::addr_of!(__rodata_start) as u64,
        rodata_end: core::ptr::addr_of!(__rodata_end) as u64,
        end: core::ptr::addr_of!(__kernel_end) as u64,
    }
}

/// Whether `addr` lies in kernel text.
pub fn is_kernel_text(addr: u64) -> bool {
    let l = layout();
    addr >= l.text_start && addr < l.text_end
}

/// Bring up memory management from the PVH start info.
pub fn init(start_info_paddr: u64) {
    let map = pvh::read_memory_map(start_info_paddr);
    RSDP.store(map.rsdp, Ordering::Relaxed);
    for (slot, addr) in BOOT_INFO.iter().zip(map.boot_info) {
        slot.store(addr, Ordering::Relaxed);
    }
    if let Some(low) = map.regions[..map.len].iter().find(|r| r.start < 1 << 20) {
        LOW_RAM[0].store(low.start, Ordering::Relaxed);
        LOW_RAM[1].store(low.end, Ordering::Relaxed);
    }
    let l = layout();
    frame::init(&map, l.end);
    heap::init();
    let sections = [
        (l.start, l.text_start, flags::DATA),
        (l.text_start, l.text_end, flags::TEXT),
        (l.rodata_start, l.rodata_end, flags::RODATA),
        (l.rodata_end, l.end, flags::DATA),
    ];
    if let Err(e) = paging::init(&sections, frame::alloc_zeroed) {
        panic!("cannot build kernel page tables: {e:?}");
    }
    log::info!(
        "memory: {} MiB RAM, kernel {:#x}..{:#x} (text {} KiB), heap {} MiB, W^X page tables on",
        frame::total_bytes() >> 20,
        l.start,
        l.end,
        (l.text_end - l.text_start) >> 10,
        heap::total_bytes() >> 20
    );
}

/// Total RAM and bytes in use (kernel image + frames + heap in use).
pub fn usage() -> (u64, u64) {
    let l = layout();
    let used = (l.end - l.start) + frame::page_table_bytes() + heap::used_bytes() as u64;
    (frame::total_bytes(), used)
}
