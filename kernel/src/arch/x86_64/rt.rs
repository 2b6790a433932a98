//! Symbols the prebuilt `core`/`alloc` expect from a C runtime.
//!
//! They are written in assembly (`rep stosb`, `rep movsb`, `memcpy`'s word
//! loop): a Rust loop could be turned back into a call to `memcpy` by the
//! optimiser.

use core::arch::asm;

// The trap path and the probe handlers copy and compare with these: a
// breakpoint in one would trap inside its own handling.
crate::nokprobe!(memcpy, memmove, memset, memcmp, bcmp);

/// # Safety
/// C `memcpy` contract: `dst` and `src` valid for `n` bytes, not overlapping.
///
/// Whole 32-byte blocks go as four 8-byte loads and stores per loop turn,
/// the rest (under 32 bytes) with `rep movsb`. QEMU's TCG, which runs this
/// kernel, translates each iteration of a `rep` string instruction as one
/// step that jumps back to the instruction, so `rep movsb` pays a step per
/// byte: a 4 KiB block copy (the RAM disk's, per request) was 4,096 steps,
/// and is 128 turns of this loop. The copy runs forward, a word read before
/// it is written, so [`memmove`] still uses it when `dst` is below `src`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds memcpy's contract: the loop reads
    // `src .. src + n / 32 * 32` and writes the same range of `dst`, a word
    // at a time, and `rep movsb` the remaining `n % 32` bytes after them.
    unsafe {
        asm!(
            "mov {blocks}, rcx",
            "shr {blocks}, 5",
            "jz 3f",
            "2:",
            "mov {a}, [rsi]",
            "mov {b}, [rsi + 8]",
            "mov [rdi], {a}",
            "mov [rdi + 8], {b}",
            "mov {a}, [rsi + 16]",
            "mov {b}, [rsi + 24]",
            "mov [rdi + 16], {a}",
            "mov [rdi + 24], {b}",
            "add rsi, 32",
            "add rdi, 32",
            "dec {blocks}",
            "jnz 2b",
            "3:",
            "and ecx, 31",
            "rep movsb",
            blocks = out(reg) _,
            a = out(reg) _,
            b = out(reg) _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            inout("rcx") n => _,
            options(nostack),
        );
    }
    dst
}

/// # Safety
/// C `memmove` contract: `dst` and `src` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dst does not start inside src.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: copy backwards (direction flag set for the copy only).
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rdi") dst.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                inout("rcx") n => _,
                options(nostack)
            );
        }
        dst
    }
}

/// # Safety
/// C `memset` contract: `dst` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds memset's contract.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") value as u8, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// C `memcmp` contract: both pointers valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both are valid for n bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// `core` references the unwinder's personality routine even with
/// `panic = "abort"`; it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// The prebuilt `alloc` has landing pads that call this; with
/// `panic = "abort"` no unwinding ever starts, so it is unreachable.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::arch::qemu_exit(ktrace_abi::vm::EXIT_PANIC)
}
