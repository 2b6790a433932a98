//! Executable memory for JIT-compiled BPF programs, never writable and
//! executable at once (W^X).
//!
//! [`ExecMem::new`] takes whole pages from the kernel heap (identity-mapped
//! read+write, no-execute), fills them with `int3`, copies the code in
//! while they are still plain data, then remaps each page read+execute
//! (present, not writable, executable): from then on the only mapping of
//! those bytes cannot be written. Remapping flushes each page's TLB entry
//! with `invlpg`, which is also a serialising instruction, so the CPU
//! cannot run stale bytes fetched from the pages' previous (data) life.
//! Dropping an [`ExecMem`] maps the pages back read+write, no-execute,
//! before the heap gets them back.
//!
//! When dropping is safe is the owner's business: the BPF runtime frees a
//! program's code only with the program itself (see `bpf::prog`).

use alloc::alloc::{alloc, dealloc, Layout};

use super::paging::{self, flags};
use crate::sync::SpinLock;

const PAGE: usize = 4096;

/// Serialises page-table edits of executable memory (a split of a 2 MiB
/// page must not interleave with another remap); interrupts are off while
/// held, so no interrupt handler sees a half-edited table either.
static REMAP_LOCK: SpinLock<()> = SpinLock::new(());

/// Why executable memory could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMemError {
    /// The heap or the frame allocator (page tables) is out of memory.
    NoMemory(usize),
    /// The entry offset is not inside the code.
    BadEntry,
}

impl core::fmt::Display for ExecMemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ExecMemError::NoMemory(n) => write!(f, "no memory for {n} bytes of code"),
            ExecMemError::BadEntry => write!(f, "the entry point is outside the code"),
        }
    }
}

/// Machine code in its own read+execute pages, freed on drop.
pub struct ExecMem {
    base: u64,
    pages: usize,
    len: usize,
    entry: usize,
}

fn layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE, PAGE).expect("page-aligned layout")
}

/// Maps the identity page at `addr` with `rights`.
fn remap(addr: u64, rights: u64) -> Result<(), paging::MapError> {
    paging::map_page(addr, addr, rights, crate::mm::frame::alloc_zeroed)
}

impl ExecMem {
    /// Copies `code` into fresh pages and makes them read+execute; the code
    /// is entered at offset `entry`.
    pub fn new(code: &[u8], entry: usize) -> Result<ExecMem, ExecMemError> {
        if entry >= code.len() {
            return Err(ExecMemError::BadEntry);
        }
        let pages = code.len().div_ceil(PAGE);
        // SAFETY: the layout has a non-zero size (code is not empty).
        let base = unsafe { alloc(layout(pages)) };
        if base.is_null() {
            return Err(ExecMemError::NoMemory(pages * PAGE));
        }
        // SAFETY: `base` is a fresh heap block of `pages` pages, ours alone
        // and mapped read+write; `code` cannot overlap it. The tail after
        // the code is `int3`, so a stray jump there traps.
        unsafe {
            core::ptr::write_bytes(base, 0xcc, pages * PAGE);
            core::ptr::copy_nonoverlapping(code.as_ptr(), base, code.len());
        }
        // From here on, dropping `mem` maps every page back to data (a
        // no-op for those not yet remapped) and frees the block.
        let mem = ExecMem {
            base: base as u64,
            pages,
            len: code.len(),
            entry,
        };
        let _g = REMAP_LOCK.lock();
        for i in 0..pages {
            // The heap is identity-mapped (virtual = physical), so the page
            // is remapped onto itself with other rights.
            if remap(mem.base + (i * PAGE) as u64, flags::TEXT).is_err() {
                drop(_g);
                return Err(ExecMemError::NoMemory(pages * PAGE));
            }
        }
        drop(_g);
        Ok(mem)
    }

    /// Bytes of code.
    pub fn code_len(&self) -> usize {
        self.len
    }

    /// Address of the first byte (page-aligned).
    #[cfg_attr(not(feature = "self-tests"), allow(dead_code))] // used by the self test
    pub fn addr(&self) -> u64 {
        self.base
    }

    /// The entry point as a JIT entry function. Calling it is `unsafe`: its
    /// caller must know the bytes are a JIT image with that convention
    /// (`bpf_vm::jit::run` states the contract) and keep `self` alive for
    /// the call.
    pub fn entry(&self) -> bpf_vm::jit::JitEntry {
        let addr = (self.base as usize + self.entry) as *const ();
        // SAFETY: `addr` points into our read+execute pages; turning it into
        // an `unsafe` function pointer calls nothing: every call of it is an
        // `unsafe` block that owes the contract above.
        unsafe { core::mem::transmute::<*const (), bpf_vm::jit::JitEntry>(addr) }
    }
}

impl Drop for ExecMem {
    fn drop(&mut self) {
        {
            let _g = REMAP_LOCK.lock();
            for i in 0..self.pages {
                // The page table covering these pages exists (it was used
                // to map them executable), so this cannot need a frame and
                // cannot fail; a failure would leave the page executable and
                // leak it rather than hand out memory that runs.
                if remap(self.base + (i * PAGE) as u64, flags::DATA).is_err() {
                    log::error!("exec_mem: cannot unmap code page {:#x}; leaking", self.base);
                    return;
                }
            }
        }
        // SAFETY: `base` came from `alloc` with this layout (`pages` is the
        // block's page count), and the pages are plain data again.
        unsafe { dealloc(self.base as *mut u8, layout(self.pages)) };
    }
}
