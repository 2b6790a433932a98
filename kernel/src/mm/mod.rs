//! Memory: the PVH memory map, a frame allocator, the kernel page tables
//! (W^X) and the heap.

pub mod frame;
pub mod heap;
pub mod pvh;

use crate::arch::paging::{self, flags};

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
