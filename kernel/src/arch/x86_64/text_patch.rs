//! Safe text patching and the memory the kprobe engine executes from.
//!
//! Writing kernel text is only sound for someone who knows no instruction
//! is being changed under another patch and that the bytes decode where
//! they are put: the owner of kernel text (`trace::text`, which keeps the
//! claims, and through it the kprobe boundary check and the static-key
//! table). So the write is a method of [`TextPoke`], of which one exists:
//! [`TextPoke::take`] hands it out once, and the text owner takes it at boot.
//!
//! Kernel text is mapped read+execute and stays so: [`TextPoke::write`] maps the
//! physical page(s) behind the target at a temporary writable alias above
//! `ALIAS_BASE`, writes there, and unmaps the alias, with interrupts off and
//! under a lock (Linux's `text_poke`). With one CPU and interrupts off, no
//! instruction can execute the bytes while they change. Out-of-line
//! single-step slots live in pages allocated from the frame allocator and
//! remapped read+execute ([`alloc_exec_page`]), written the same way.
//!

use core::sync::atomic::{AtomicBool, Ordering};

use super::paging::{self, flags, ALIAS_BASE};
use crate::sync::SpinLock;

/// Serialises alias use; interrupts stay off while held.
static PATCH_LOCK: SpinLock<()> = SpinLock::new(());
/// The alias window: two pages, so a write may cross one page boundary.
const ALIAS: u64 = ALIAS_BASE;

/// Why a patch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchError {
    /// The target is not mapped.
    NotMapped(u64),
    /// The write is longer than one page.
    TooLong,
    /// No frame for a page table.
    OutOfMemory,
}

/// The right to write kernel text: one exists.
#[must_use = "dropping the one TextPoke leaves kernel text unpatchable"]
pub struct TextPoke {
    _only_through_take: (),
}

/// Whether the one [`TextPoke`] was handed out.
static POKE_TAKEN: AtomicBool = AtomicBool::new(false);

impl TextPoke {
    /// The one `TextPoke`, on the first call; `None` after.
    #[must_use = "the one TextPoke is lost if dropped"]
    pub fn take() -> Option<TextPoke> {
        (!POKE_TAKEN.swap(true, Ordering::AcqRel)).then_some(TextPoke {
            _only_through_take: (),
        })
    }

    /// Write `bytes` at `addr` in mapped, non-writable memory (kernel text
    /// or an executable slot page) through a temporary writable alias.
    pub fn write(&self, addr: ktrace_kprobe::TextAddr, bytes: &[u8]) -> Result<(), PatchError> {
        write_text(addr.get(), bytes)
    }
}

// Never inlined: the blacklist refuses probes in this module by name, and
// its callers elsewhere must not carry its body.
#[inline(never)]
fn write_text(addr: u64, bytes: &[u8]) -> Result<(), PatchError> {
    if bytes.is_empty() {
        return Ok(());
    }
    if bytes.len() > 4096 {
        return Err(PatchError::TooLong);
    }
    let first = addr & !0xfff;
    let last = (addr + bytes.len() as u64 - 1) & !0xfff;
    let (p0, _) = paging::translate(first).ok_or(PatchError::NotMapped(first))?;
    let p1 = if last != first {
        Some(
            paging::translate(last)
                .ok_or(PatchError::NotMapped(last))?
                .0,
        )
    } else {
        None
    };
    let _g = PATCH_LOCK.lock();
    let alloc = crate::mm::frame::alloc_zeroed;
    paging::map_page(ALIAS, p0 & !0xfff, flags::DATA, alloc)
        .map_err(|_| PatchError::OutOfMemory)?;
    if let Some(p1) = p1 {
        if paging::map_page(ALIAS + 4096, p1 & !0xfff, flags::DATA, alloc).is_err() {
            let _ = paging::unmap_page(ALIAS, alloc);
            return Err(PatchError::OutOfMemory);
        }
    }
    let dst = ALIAS + (addr & 0xfff);
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: `dst..dst+len` lies in the one or two alias pages just
        // mapped writable onto the target's frames; nothing else uses the
        // alias while PATCH_LOCK is held.
        unsafe { core::ptr::write_volatile((dst + i as u64) as *mut u8, *b) };
    }
    let _ = paging::unmap_page(ALIAS, alloc);
    if p1.is_some() {
        let _ = paging::unmap_page(ALIAS + 4096, alloc);
    }
    serialize();
    Ok(())
}

/// A serialising instruction, so the CPU does not run stale prefetched
/// bytes of the patched code.
fn serialize() {
    // SAFETY: cpuid only writes the four registers declared clobbered.
    unsafe {
        core::arch::asm!(
            "push rbx", "xor eax, eax", "cpuid", "pop rbx",
            out("eax") _, out("ecx") _, out("edx") _,
            options(preserves_flags)
        )
    }
}

/// A fresh page mapped read+execute (and no longer writable at its
/// identity address), filled with `int3`. Its contents are written with
/// [`TextPoke::write`].
#[must_use = "the page is leaked if its address is dropped"]
pub fn alloc_exec_page() -> Option<u64> {
    let page = crate::mm::frame::alloc_zeroed()?;
    // Fill with int3 while it is still writable data.
    for i in 0..4096u64 {
        // SAFETY: the frame was just allocated for us and is identity
        // mapped writable.
        unsafe { core::ptr::write_volatile((page + i) as *mut u8, 0xcc) };
    }
    paging::map_page(page, page, flags::TEXT, crate::mm::frame::alloc_zeroed).ok()?;
    Some(page)
}

/// Read one byte of kernel memory, fault-safe.
pub fn read_byte(addr: u64) -> Option<u8> {
    let mut b = [0u8; 1];
    super::trap::copy_from_kernel_nofault(&mut b, addr).ok()?;
    Some(b[0])
}

/// Read a word of kernel memory, fault-safe.
pub fn read_u64(addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    super::trap::copy_from_kernel_nofault(&mut b, addr).ok()?;
    Some(u64::from_le_bytes(b))
}

/// Read a word of kernel memory only if its page is mapped: never faults,
/// so it is safe in an NMI handler (a fault's `iret` would unmask NMIs
/// while the handler still runs on the NMI stack).
pub fn read_u64_if_mapped(addr: u64) -> Option<u64> {
    if !addr.is_multiple_of(8) || addr >= 0x0000_8000_0000_0000 {
        return None;
    }
    paging::translate(addr)?;
    read_u64(addr)
}

unsafe extern "C" {
    /// The kretprobe return trampoline (probe_entry.S).
    fn kretprobe_trampoline();
}

/// Address of the kretprobe trampoline.
pub fn kretprobe_trampoline_addr() -> u64 {
    kretprobe_trampoline as unsafe extern "C" fn() as usize as u64
}

// Unmangled (the trampoline calls it by name), so no module prefix of the
// blacklist covers it.
crate::nokprobe!(kretprobe_trampoline_handler);

/// Called by the kretprobe trampoline (probe_entry.S) with the registers at
/// return; returns the original return address.
#[unsafe(no_mangle)]
extern "C" fn kretprobe_trampoline_handler(regs: &mut super::PtRegs) -> u64 {
    crate::trace::kretprobe::on_return(regs)
}
