//! The kernel's page tables.
//!
//! Physical memory is identity-mapped (virtual = physical) for the low
//! 4 GiB, which covers RAM, the kernel image and the APIC/IOAPIC/PCI MMIO
//! holes. Large regions use 2 MiB pages; the kernel image uses 4 KiB pages
//! so each section gets its own permissions: text read+execute, rodata
//! read-only, data and everything else read+write but never executable
//! (W^X). The null page is unmapped. Pages above [`ALIAS_BASE`] are
//! temporary aliases (text patching maps a text page writable there).

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};

/// Page-table entry bits.
pub mod flags {
    pub const PRESENT: u64 = 1;
    pub const WRITABLE: u64 = 1 << 1;
    pub const HUGE: u64 = 1 << 7;
    pub const GLOBAL: u64 = 1 << 8;
    pub const NO_EXECUTE: u64 = 1 << 63;
    /// Read+write data.
    pub const DATA: u64 = PRESENT | WRITABLE | NO_EXECUTE;
    /// Read-only data.
    pub const RODATA: u64 = PRESENT | NO_EXECUTE;
    /// Read+execute code.
    pub const TEXT: u64 = PRESENT;
}

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PAGE: u64 = 4096;
const HUGE_PAGE: u64 = 2 << 20;
/// Where temporary aliases are mapped (PML4 slot 256).
pub const ALIAS_BASE: u64 = 0xffff_8000_0000_0000;

static ROOT: AtomicU64 = AtomicU64::new(0);

/// Allocates zeroed 4 KiB frames for page tables.
pub type FrameSource = fn() -> Option<u64>;

/// Errors from mapping operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// No frame was available for a page table.
    OutOfMemory,
}

fn table(phys: u64) -> *mut u64 {
    phys as *mut u64
}

fn read_entry(t: u64, i: usize) -> u64 {
    // SAFETY: `t` is the physical (= virtual) address of a page table this
    // module allocated or the CPU uses; `i` < 512.
    unsafe { read_volatile(table(t).add(i)) }
}

fn write_entry(t: u64, i: usize, v: u64) {
    // SAFETY: as for `read_entry`.
    unsafe { write_volatile(table(t).add(i), v) }
}

fn index(virt: u64, level: u32) -> usize {
    ((virt >> (12 + 9 * level)) & 0x1ff) as usize
}

/// Walk to the page table (level 0) covering `virt`, creating tables and
/// splitting 2 MiB pages on the way.
fn walk_create(root: u64, virt: u64, alloc: FrameSource) -> Result<u64, MapError> {
    let mut t = root;
    for level in (1..4).rev() {
        let i = index(virt, level);
        let e = read_entry(t, i);
        if e & flags::PRESENT == 0 {
            let new = alloc().ok_or(MapError::OutOfMemory)?;
            write_entry(t, i, new | flags::PRESENT | flags::WRITABLE);
            t = new;
        } else if e & flags::HUGE != 0 {
            // Split a 2 MiB page into 512 4 KiB pages with the same rights.
            debug_assert_eq!(level, 1);
            let new = alloc().ok_or(MapError::OutOfMemory)?;
            let base = e & ADDR_MASK & !(HUGE_PAGE - 1);
            let rights = e & (flags::WRITABLE | flags::NO_EXECUTE | flags::GLOBAL | flags::PRESENT);
            for j in 0..512 {
                write_entry(new, j, (base + j as u64 * PAGE) | rights);
            }
            write_entry(t, i, new | flags::PRESENT | flags::WRITABLE);
            flush_all();
            t = new;
        } else {
            t = e & ADDR_MASK;
        }
    }
    Ok(t)
}

/// Drop this CPU's TLB entry for `virt`.
pub fn flush_local(virt: u64) {
    // SAFETY: invlpg only drops a TLB entry.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) virt, options(nostack, preserves_flags)) }
}

/// Drop this CPU's non-global TLB entries.
pub fn flush_local_all() {
    flush_all();
}

fn flush(virt: u64) {
    flush_local(virt);
}

fn flush_all() {
    let cr3 = super::cpu::cr3();
    // SAFETY: reloading the same CR3 only flushes non-global TLB entries.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) }
}

/// Map one 4 KiB page. When it replaces a present mapping (new rights,
/// e.g. a W^X flip), every other CPU drops its TLB entry for the page
/// before this returns: none can keep using the old rights.
pub fn map_page(virt: u64, phys: u64, page_flags: u64, alloc: FrameSource) -> Result<(), MapError> {
    let root = ROOT.load(Ordering::Acquire);
    let pt = walk_create(root, virt, alloc)?;
    let new = (phys & ADDR_MASK) | page_flags;
    let old = read_entry(pt, index(virt, 0));
    write_entry(pt, index(virt, 0), new);
    flush(virt);
    if old & flags::PRESENT != 0 && old != new {
        super::smp::flush_tlb_others(Some(virt));
    }
    Ok(())
}

/// Unmap one 4 KiB page (e.g. a stack guard page); every other CPU drops
/// its TLB entry for it before this returns.
pub fn unmap_page(virt: u64, alloc: FrameSource) -> Result<(), MapError> {
    let root = ROOT.load(Ordering::Acquire);
    let pt = walk_create(root, virt, alloc)?;
    let old = read_entry(pt, index(virt, 0));
    write_entry(pt, index(virt, 0), 0);
    flush(virt);
    if old & flags::PRESENT != 0 {
        super::smp::flush_tlb_others(Some(virt));
    }
    Ok(())
}

/// The entry mapping `virt`, if any: (physical address, flags).
pub fn translate(virt: u64) -> Option<(u64, u64)> {
    let mut t = ROOT.load(Ordering::Acquire);
    if t == 0 {
        return None;
    }
    for level in (0..4).rev() {
        let e = read_entry(t, index(virt, level));
        if e & flags::PRESENT == 0 {
            return None;
        }
        if level == 0 || (level == 1 && e & flags::HUGE != 0) {
            let size = if level == 0 { PAGE } else { HUGE_PAGE };
            let phys = (e & ADDR_MASK & !(size - 1)) + (virt & (size - 1));
            return Some((phys, e & !ADDR_MASK));
        }
        t = e & ADDR_MASK;
    }
    None
}

/// Build the kernel's final tables and switch to them.
///
/// `sections` lists `(start, end, flags)` ranges (page-aligned) of the
/// kernel image; everything else in the low 4 GiB is data (no execute);
/// page 0 is left unmapped.
pub fn init(sections: &[(u64, u64, u64)], alloc: FrameSource) -> Result<(), MapError> {
    let root = alloc().ok_or(MapError::OutOfMemory)?;
    let image_end = sections.iter().map(|s| s.1).max().unwrap_or(0);
    let fine_end = (image_end + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    ROOT.store(root, Ordering::Release);
    // 2 MiB data pages above the finely mapped region.
    let mut addr = fine_end;
    while addr < (4u64 << 30) {
        let pd = walk_to_pd(root, addr, alloc)?;
        write_entry(pd, index(addr, 1), addr | flags::DATA | flags::HUGE);
        addr += HUGE_PAGE;
    }
    // 4 KiB pages below, with per-section rights.
    let mut addr = PAGE;
    while addr < fine_end {
        let rights = sections
            .iter()
            .find(|(s, e, _)| addr >= *s && addr < *e)
            .map(|s| s.2)
            .unwrap_or(flags::DATA);
        let pt = walk_create(root, addr, alloc)?;
        write_entry(pt, index(addr, 0), addr | rights);
        addr += PAGE;
    }
    // SAFETY: the new tables map the running code (text RX), the stack and
    // all data the kernel uses at the same addresses as the boot tables.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
    Ok(())
}

fn walk_to_pd(root: u64, virt: u64, alloc: FrameSource) -> Result<u64, MapError> {
    let mut t = root;
    for level in (2..4).rev() {
        let i = index(virt, level);
        let e = read_entry(t, i);
        if e & flags::PRESENT == 0 {
            let new = alloc().ok_or(MapError::OutOfMemory)?;
            write_entry(t, i, new | flags::PRESENT | flags::WRITABLE);
            t = new;
        } else {
            t = e & ADDR_MASK;
        }
    }
    Ok(t)
}
