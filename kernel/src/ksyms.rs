//! The kernel's own symbol table, embedded in the image after linking by
//! the host tooling (`probe_sdk::kernel_image`): the reserved `.ksyms`
//! section is overwritten in the ELF file with the encoded table, so no
//! address moves and no second link is needed.

use core::cell::UnsafeCell;
use ktrace_abi::ksyms::{Ksym, KsymTable, EMPTY_MAGIC, RESERVED_BYTES};

/// The reserved bytes. Interior mutability keeps the compiler from
/// assuming the (patched-later) contents are the initial zeros; the kernel
/// never writes them (they are mapped read-only).
#[repr(C, align(16))]
pub struct KsymsBlob(UnsafeCell<[u8; RESERVED_BYTES]>);

// SAFETY: never written at run time.
unsafe impl Sync for KsymsBlob {}

const fn empty_blob() -> [u8; RESERVED_BYTES] {
    let mut b = [0u8; RESERVED_BYTES];
    b[0] = EMPTY_MAGIC[0];
    b[1] = EMPTY_MAGIC[1];
    b[2] = EMPTY_MAGIC[2];
    b[3] = EMPTY_MAGIC[3];
    b
}

/// Filled in by the host after linking (name fixed by
/// `ktrace_abi::ksyms::SYMBOL_NAME`).
#[unsafe(no_mangle)]
#[used]
#[unsafe(link_section = ".ksyms")]
pub static KTRACE_KSYMS: KsymsBlob = KsymsBlob(UnsafeCell::new(empty_blob()));

/// The table, or `None` when the image was not post-processed.
pub fn table() -> Option<KsymTable<'static>> {
    // SAFETY: the blob is never written after boot (read-only mapping), so a
    // shared view of it is sound.
    let bytes: &'static [u8; RESERVED_BYTES] = unsafe { &*KTRACE_KSYMS.0.get() };
    KsymTable::parse(bytes)
}

/// The function containing `addr` and the offset into it.
pub fn lookup(addr: u64) -> Option<(Ksym<'static>, u64)> {
    table()?.lookup(addr)
}

/// Find a function by its demangled path (without hash).
pub fn find(name: &str) -> Option<Ksym<'static>> {
    table()?.iter().find(|s| s.name == name)
}
