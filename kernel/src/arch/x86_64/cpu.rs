//! Single-instruction wrappers.

use core::arch::asm;
use core::sync::atomic::AtomicU64;

/// Write a byte to an I/O port.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the callers
    // only address devices the kernel owns (serial, PIT, PIC, debug exit).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Read a byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Read the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Adds `n` to a counter that only this CPU writes, with one `add`
/// without the `lock` prefix (Linux's `this_cpu_add`): an interrupt or NMI
/// on this CPU lands before or after the instruction, never inside it, so
/// no increment is lost, and other CPUs only read the counter (an aligned
/// 8-byte load sees the value before or after). Far cheaper than a locked
/// add, above all under emulation. The caller keeps the task on this CPU
/// (interrupts off).
#[inline]
pub fn cpu_local_add(counter: &AtomicU64, n: u64) {
    // SAFETY: the pointer comes from a live reference to an aligned
    // `AtomicU64`; the single read-modify-write is atomic with respect to
    // this CPU's interrupts and NMIs, and no other CPU writes it (the
    // caller's contract), so no store is lost or torn.
    unsafe {
        asm!("add qword ptr [{c}], {n}", c = in(reg) counter.as_ptr(), n = in(reg) n, options(nostack));
    }
}

/// 256 bytes for xmm0-15, 16-byte aligned (self test `hit_cost`).
#[cfg(feature = "self-tests")]
#[repr(C, align(16))]
pub struct XmmArea(pub [u8; 256]);

/// What a jump-optimised probe's detour does to the SSE registers: 16
/// `movaps` stores and 16 loads (self test `hit_cost` times it).
#[cfg(feature = "self-tests")]
pub fn xmm_save_restore(area: &mut XmmArea) {
    // SAFETY: `area` is 256 writable bytes, 16-byte aligned; every register
    // is loaded back with the value just stored, so none changes.
    unsafe {
        asm!(
            "movaps [{a}], xmm0", "movaps [{a}+16], xmm1", "movaps [{a}+32], xmm2",
            "movaps [{a}+48], xmm3", "movaps [{a}+64], xmm4", "movaps [{a}+80], xmm5",
            "movaps [{a}+96], xmm6", "movaps [{a}+112], xmm7", "movaps [{a}+128], xmm8",
            "movaps [{a}+144], xmm9", "movaps [{a}+160], xmm10", "movaps [{a}+176], xmm11",
            "movaps [{a}+192], xmm12", "movaps [{a}+208], xmm13", "movaps [{a}+224], xmm14",
            "movaps [{a}+240], xmm15",
            "movaps xmm0, [{a}]", "movaps xmm1, [{a}+16]", "movaps xmm2, [{a}+32]",
            "movaps xmm3, [{a}+48]", "movaps xmm4, [{a}+64]", "movaps xmm5, [{a}+80]",
            "movaps xmm6, [{a}+96]", "movaps xmm7, [{a}+112]", "movaps xmm8, [{a}+128]",
            "movaps xmm9, [{a}+144]", "movaps xmm10, [{a}+160]", "movaps xmm11, [{a}+176]",
            "movaps xmm12, [{a}+192]", "movaps xmm13, [{a}+208]", "movaps xmm14, [{a}+224]",
            "movaps xmm15, [{a}+240]",
            a = in(reg) area.0.as_mut_ptr(),
            options(nostack, preserves_flags),
        );
    }
}

/// Resumes at the next instruction through `iretq`, which ends the CPU's
/// NMI blocking: in an NMI handler, a pending NMI is then taken at once,
/// nested on the NMI stack (self test `nmi_nesting`, which checks the entry
/// code survives that).
#[cfg(feature = "self-tests")]
pub fn iret_to_self() {
    // SAFETY: the frame built is this CPU's current SS, RSP (before the
    // pushes), RFLAGS and CS with the address of the next instruction, so
    // `iretq` pops exactly what was pushed and resumes here with nothing
    // changed but NMI blocking; no `nostack`, so the compiler keeps no data
    // in the red zone under the pushes.
    unsafe {
        asm!(
            "mov {sp}, rsp",
            "xor {t:e}, {t:e}",
            "mov {t:x}, ss",
            "push {t}",
            "push {sp}",
            "pushfq",
            "mov {t:x}, cs",
            "push {t}",
            "lea {t}, [rip + 2f]",
            "push {t}",
            "iretq",
            "2:",
            sp = out(reg) _,
            t = out(reg) _,
        );
    }
}

/// What a detour does to the flags: `pushfq; cli` on the way in, `popfq`
/// on the way out (self test `hit_cost` times it; IF ends as it was).
#[cfg(feature = "self-tests")]
pub fn flags_save_cli_restore() {
    // SAFETY: pushes and pops one word of the stack; RFLAGS ends as it
    // was, IF included.
    unsafe { asm!("pushfq", "cli", "popfq") }
}

/// Whether interrupts are enabled (RFLAGS.IF).
#[inline]
pub fn irq_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; no other effect.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) }
    flags & (1 << 9) != 0
}

/// Disable interrupts.
#[inline]
pub fn irq_disable() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Enable interrupts.
#[inline]
pub fn irq_enable() {
    // SAFETY: the IDT is loaded before the first call (init order in main).
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disable interrupts and return whether they were enabled.
#[inline]
pub fn irq_save() -> bool {
    let was = irq_enabled();
    irq_disable();
    was
}

/// Re-enable interrupts if `was_enabled`.
#[inline]
pub fn irq_restore(was_enabled: bool) {
    if was_enabled {
        irq_enable();
    }
}

/// Enable interrupts and halt until the next one, atomically (`sti; hlt`),
/// so a wake-up interrupt cannot slip in between.
#[inline]
pub fn enable_and_halt() {
    // SAFETY: as for `irq_enable`; `sti` delays interrupts by one
    // instruction, so none is taken before `hlt`.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
}

/// Halt until the next interrupt.
#[inline]
pub fn halt() {
    // SAFETY: hlt only waits.
    unsafe { asm!("hlt", options(nomem, nostack)) }
}

/// Read CR2 (the faulting address of the last page fault).
#[inline]
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Read CR3.
#[inline]
pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// The caller's frame pointer.
#[inline(always)]
pub fn frame_pointer() -> u64 {
    let v: u64;
    // SAFETY: copies rbp.
    unsafe { asm!("mov {}, rbp", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// The calling function's frame record: its frame pointer, the frame
/// pointer it saved (its caller's) and its return address. Plain loads:
/// the tracepoint path calls this on every event, where a fault-safe copy
/// (`rep movsb`) costs a step per byte under emulation.
#[inline(always)]
pub fn frame_record() -> (u64, u64, u64) {
    let (fp, saved, ret): (u64, u64, u64);
    // SAFETY: the kernel is built with frame pointers (`.cargo/config.toml`),
    // so in the function this is inlined into, rbp holds the address of the
    // record its prologue pushed: [saved rbp, return address], 16 bytes of
    // its own live stack, readable for as long as it runs.
    unsafe {
        asm!(
            "mov {fp}, rbp",
            "mov {saved}, [rbp]",
            "mov {ret}, [rbp + 8]",
            fp = out(reg) fp,
            saved = out(reg) saved,
            ret = out(reg) ret,
            options(readonly, nostack, preserves_flags)
        )
    }
    (fp, saved, ret)
}

/// Read the `u32` at `offset` from this CPU's GS base (its `PerCpu`).
#[inline(always)]
pub fn gs_read_u32(offset: usize) -> u32 {
    let v: u32;
    // SAFETY: every CPU's GS base points at its `PerCpu` from its first
    // instruction of Rust on (boot.S for the boot CPU, the AP trampoline
    // for the others), and callers pass the offset of a `u32` field of it.
    unsafe {
        asm!("mov {:e}, dword ptr gs:[{}]", out(reg) v, in(reg) offset,
             options(nostack, preserves_flags, readonly))
    }
    v
}

/// `fetch_add` on the `u32` at `offset` from this CPU's GS base (a field
/// of its `PerCpu` that only this CPU writes), one `xadd` without the
/// `lock` prefix, for the same reason as [`cpu_local_add`]: an interrupt
/// or NMI on this CPU lands before or after it, and other CPUs only read.
/// Returns the value before.
#[inline(always)]
pub fn gs_fetch_add_u32(offset: usize, n: u32) -> u32 {
    let mut old = n;
    // SAFETY: as `gs_read_u32` for the address (the caller passes the
    // offset of a `u32` field of `PerCpu`, which GS points at), and as
    // `cpu_local_add` for the single read-modify-write.
    unsafe {
        asm!("xadd dword ptr gs:[{}], {:e}", in(reg) offset, inout(reg) old,
             options(nostack))
    }
    old
}

/// Read the `u64` at `offset` from this CPU's GS base (its `PerCpu`).
#[inline(always)]
pub fn gs_read_u64(offset: usize) -> u64 {
    let v: u64;
    // SAFETY: as `gs_read_u32`, for the offset of a `u64` field.
    unsafe {
        asm!("mov {}, qword ptr gs:[{}]", out(reg) v, in(reg) offset,
             options(nostack, preserves_flags, readonly))
    }
    v
}

/// Write the `u64` at `offset` from this CPU's GS base (a field of its
/// `PerCpu` that only this CPU writes).
#[inline(always)]
pub fn gs_write_u64(offset: usize, v: u64) {
    // SAFETY: as `gs_read_u64`; one aligned store, atomic with respect to
    // this CPU's interrupts and to readers on other CPUs.
    unsafe {
        asm!("mov qword ptr gs:[{}], {}", in(reg) offset, in(reg) v,
             options(nostack, preserves_flags))
    }
}

/// Serialise this CPU's instruction stream (CPUID is architecturally
/// serialising): no instruction fetched before it survives.
#[inline]
pub fn serialize() {
    let _ = super::perf_timer::cpuid(0, 0);
}
