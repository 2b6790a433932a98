//! Sections the linker script bounds and the macros that fill them:
//! `.text.entry` (interrupt entry, context switch, the kretprobe
//! trampoline), `.nokprobe` ([`nokprobe!`](crate::nokprobe): functions
//! never to probe) and `.static_keys` ([`static_branch!`](crate::static_branch):
//! tracepoint call sites). The linker symbols are only named here; the
//! rest of the kernel sees address ranges.

use core::ops::Range;

unsafe extern "C" {
    static __entry_text_start: u8;
    static __entry_text_end: u8;
    static __nokprobe_start: u64;
    static __nokprobe_end: u64;
    static __static_keys_start: u64;
    static __static_keys_end: u64;
}

/// The `.text.entry` section.
pub fn entry_text() -> Range<u64> {
    // Only the addresses of the linker's symbols are taken, never their
    // contents: no unsafe needed.
    (&raw const __entry_text_start as u64)..(&raw const __entry_text_end as u64)
}

/// The `.nokprobe` section: one 8-byte function address per entry.
pub fn nokprobe_table() -> Range<u64> {
    (&raw const __nokprobe_start as u64)..(&raw const __nokprobe_end as u64)
}

/// The `.static_keys` section: (site, target, key) triples of 8-byte words.
pub fn static_keys_table() -> Range<u64> {
    (&raw const __static_keys_start as u64)..(&raw const __static_keys_end as u64)
}

/// Mark functions as never probe-able (Linux's `NOKPROBE_SYMBOL`): their
/// addresses go to the `.nokprobe` section, which the blacklist reads.
#[macro_export]
macro_rules! nokprobe {
    ($($f:path),* $(,)?) => {$(
        core::arch::global_asm!(
            ".pushsection .nokprobe, \"a\"",
            ".balign 8",
            ".quad {f}",
            ".popsection",
            f = sym $f,
        );
    )*};
}

/// Is this call site enabled? Expands to an `asm goto` whose `nop` is
/// patched into a `jmp` to the `true` path. Use [`trace_event!`](crate::trace_event).
#[macro_export]
macro_rules! static_branch {
    ($tp:path) => {{
        let mut enabled = false;
        #[allow(unsafe_code)]
        // SAFETY: the block is a 5-byte nop plus a table entry in
        // `.static_keys` naming the nop, the label and the tracepoint; it
        // touches no register or memory. The tracepoint code patches the nop
        // into a jump to the label, which the compiler knows may be taken.
        unsafe {
            core::arch::asm!(
                "2: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
                ".pushsection .static_keys, \"a\"",
                ".balign 8",
                ".quad 2b, {target}, {key}",
                ".popsection",
                key = sym $tp,
                target = label { enabled = true; },
                options(nostack, preserves_flags),
            );
        }
        enabled
    }};
}
