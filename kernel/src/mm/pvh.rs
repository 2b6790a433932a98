//! The PVH `hvm_start_info` structure QEMU hands over in %ebx.

/// A RAM region.
#[derive(Debug, Clone, Copy, Default)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

/// Up to 32 usable RAM regions, and where the firmware's other hand-overs
/// are.
pub struct MemoryMap {
    pub regions: [Region; 32],
    pub len: usize,
    /// Physical address of the ACPI RSDP (0: none given).
    pub rsdp: u64,
    /// Physical addresses of the start info, its memory map and the
    /// command line (memory the kernel must not reuse while it reads
    /// them; the AP trampoline keeps clear of their pages).
    pub boot_info: [u64; 3],
}

const START_INFO_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Read the usable RAM regions.
pub fn read_memory_map(paddr: u64) -> MemoryMap {
    let mut map = MemoryMap {
        regions: [Region::default(); 32],
        len: 0,
        rsdp: 0,
        boot_info: [paddr, 0, 0],
    };
    // SAFETY: QEMU places the start info in low RAM, identity-mapped by the
    // boot page tables; the magic is checked before anything else is used.
    let info = unsafe { &*(paddr as *const StartInfo) };
    if info.magic != START_INFO_MAGIC || info.version < 1 {
        panic!(
            "PVH start info at {paddr:#x} has bad magic {:#x}",
            info.magic
        );
    }
    map.rsdp = info.rsdp_paddr;
    map.boot_info = [paddr, info.memmap_paddr, info.cmdline_paddr];
    for i in 0..info.memmap_entries.min(128) as u64 {
        // SAFETY: the memory map has `memmap_entries` entries at
        // `memmap_paddr` (PVH ABI version >= 1), identity-mapped.
        let e = unsafe { &*((info.memmap_paddr + i * 24) as *const MemmapEntry) };
        if e.kind == E820_RAM && map.len < map.regions.len() {
            map.regions[map.len] = Region {
                start: e.addr,
                end: e.addr + e.size,
            };
            map.len += 1;
        }
    }
    map
}
