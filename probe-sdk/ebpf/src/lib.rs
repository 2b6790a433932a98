//! Write ktrace probes in Rust.
//!
//! A probe crate is a `no_std` library that `ktrace build` compiles to a
//! standard eBPF ELF object (Rust → LLVM bitcode → `llc -march=bpfel`). This
//! crate is everything such a crate needs:
//!
//! - **Attributes** (re-exported from `ktrace-probe-macros`): [`kprobe`],
//!   [`kretprobe`], [`tracepoint`], [`perf_event`] turn a function into a
//!   program section; [`map`] places a static in the `maps` section.
//! - **Contexts** ([`KprobeContext`], [`KretprobeContext`],
//!   [`TracepointContext`], [`PerfEventContext`]): typed access to what the
//!   kernel hands a program (Linux's `struct pt_regs` layout, tracepoint
//!   records from [`tracepoints`]).
//! - **Maps** ([`maps`]): [`HashMap`](maps::HashMap), [`Array`](maps::Array),
//!   [`PerCpuArray`](maps::PerCpuArray), [`LruHashMap`](maps::LruHashMap),
//!   [`RingBuf`](maps::RingBuf), [`PerfEventArray`](maps::PerfEventArray),
//!   [`StackTrace`](maps::StackTrace) and the histograms
//!   [`Log2Histogram`](maps::Log2Histogram) /
//!   [`LinearHistogram`](maps::LinearHistogram). Each is a legacy
//!   `struct bpf_map_def` with Linux's map type numbers.
//! - **Helpers** ([`helpers`]): safe wrappers over Linux helper ids.
//!
//! Map type numbers, helper ids and the `pt_regs` layout come from
//! `ktrace-bpf-platform`, the description the kernel and its verifier use,
//! so a probe and the kernel cannot disagree on them.
//!
//! ```ignore
//! #![no_std]
//! use ktrace_probe::{kprobe, map, maps::HashMap, KprobeContext};
//!
//! #[map]
//! static CALLS: HashMap<u64, u64> = HashMap::with_max_entries(1024);
//!
//! #[kprobe("kernel::block::queue::RequestQueue::submit_bio")]
//! fn submit_bio(ctx: KprobeContext) -> u32 {
//!     let pid = ktrace_probe::helpers::current_pid_tgid();
//!     CALLS.increment(&pid);
//!     0
//! }
//! ```
#![no_std]

pub mod context;
pub mod helpers;
pub mod maps;

pub use context::{
    FromContext, KprobeContext, KretprobeContext, PerfEventContext, PtRegs, TracepointContext,
};
pub use ktrace_probe_macros::{kprobe, kretprobe, map, perf_event, tracepoint};
/// The tracepoint record layouts shared with the kernel.
pub use ktrace_tracepoints as tracepoints;

/// The license string of a probe object (`license` section). Probes that call
/// GPL-only helpers in Linux need `"GPL"`; ktrace records it as given.
#[macro_export]
macro_rules! license {
    ($text:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "license")]
        #[used]
        static _license: [u8; { $text.len() + 1 }] = {
            let src = $text.as_bytes();
            let mut out = [0u8; { $text.len() + 1 }];
            let mut i = 0;
            while i < src.len() {
                out[i] = src[i];
                i += 1;
            }
            out
        };
    };
}

/// Every program must be free of panics: the BPF target has nowhere to unwind
/// to, so a panic path is declared unreachable and LLVM removes it. Indexing
/// and arithmetic in probes must therefore be checked by the probe itself
/// (`get`, `checked_*`), which the verifier then sees as bounds checks.
#[cfg(ktrace_bpf)]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: `ktrace build` compiles with `panic = "abort"` and the probe
    // APIs never panic; a remaining panic path is dead code, and declaring it
    // unreachable lets LLVM drop it instead of emitting a call the verifier
    // would refuse.
    unsafe { core::hint::unreachable_unchecked() }
}

/// Support code for the attribute macros; not a public API.
#[doc(hidden)]
pub mod __private {
    use ktrace_tracepoints::TracepointEvent;

    const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Compile-time check that a `#[tracepoint("category:name")]` function's
    /// context record `E` is that tracepoint's.
    pub const fn check_tracepoint<E: TracepointEvent>(category: &str, name: &str) {
        assert!(
            str_eq(E::CATEGORY, category) && str_eq(E::NAME, name),
            "the TracepointContext<E> event type does not match the tracepoint named in #[tracepoint(..)]"
        );
    }
}
