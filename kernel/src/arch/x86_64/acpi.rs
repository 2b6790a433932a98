//! Finding the CPUs: the MADT's local APIC entries, through the RSDP
//! address the PVH start info carries.
//!
//! The `acpi` crate (rust-osdev) parses the tables. Its default features
//! (`alloc`, `allocator_api`) need a nightly compiler, so the kernel uses
//! only its table parsing (RSDP → XSDT/RSDT → MADT and the MADT's entry
//! iterator) and picks the processors out itself.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

/// MADT processor flags: usable now / may be brought up by the OS.
const ENABLED: u32 = 1 << 0;
const ONLINE_CAPABLE: u32 = 1 << 1;

/// ACPI tables are read where they are: the low 4 GiB are identity-mapped
/// (`paging.rs`), and QEMU places its tables there.
#[derive(Clone)]
struct IdentityMapped;

impl AcpiHandler for IdentityMapped {
    unsafe fn map_physical_region<T>(
        &self,
        physical: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        // A null table address is a broken table; the dangling pointer is
        // never read because `physical` is checked below before any use
        // (the crate reads the header through it: a zero address reaches
        // the unmapped null page and faults, which is the loudest answer).
        let virt = NonNull::new(physical as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: the caller (the `acpi` crate) passes the address and size
        // of a table it read from the firmware's pointers; the low 4 GiB
        // are identity-mapped and readable, so the virtual address is the
        // physical one.
        unsafe { PhysicalMapping::new(physical, virt, size, size, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The local APIC ids of the CPUs the firmware lists as enabled or
/// online-capable, the boot CPU's among them, in MADT order. An error
/// says why there is no usable list (the kernel then runs on the boot CPU
/// only).
pub fn cpu_apic_ids(rsdp: u64) -> Result<Vec<u32>, String> {
    if rsdp == 0 {
        return Err("the PVH start info names no RSDP".to_string());
    }
    if rsdp >= 4 << 30 {
        return Err(alloc::format!(
            "RSDP at {rsdp:#x} is above the identity-mapped 4 GiB"
        ));
    }
    // SAFETY: the address comes from the PVH start info, whose magic was
    // checked; the crate validates the RSDP's signature and checksum and
    // each table's before using it.
    let tables = unsafe { AcpiTables::from_rsdp(IdentityMapped, rsdp as usize) }
        .map_err(|e| alloc::format!("bad ACPI tables at RSDP {rsdp:#x}: {e:?}"))?;
    let madt = tables
        .find_table::<Madt>()
        .map_err(|e| alloc::format!("no usable MADT: {e:?}"))?;
    let mut ids = Vec::new();
    for entry in madt.get().entries() {
        let (id, flags) = match entry {
            MadtEntry::LocalApic(e) => (u32::from(e.apic_id), e.flags),
            MadtEntry::LocalX2Apic(e) => (e.x2apic_id, e.flags),
            _ => continue,
        };
        if flags & (ENABLED | ONLINE_CAPABLE) != 0 && !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err("the MADT lists no processor".to_string());
    }
    Ok(ids)
}
