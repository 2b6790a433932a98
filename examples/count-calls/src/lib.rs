//! Count calls to a kernel function, keyed by the calling task's id.
//!
//! The target is a demangled Rust path; `ktrace` resolves it against the
//! kernel's symbols when the object is loaded.
#![no_std]

use ktrace_probe::helpers::current_pid_tgid;
use ktrace_probe::maps::{Array, HashMap};
use ktrace_probe::{kprobe, map, KprobeContext};

/// Calls per task id (the low half of `pid_tgid`).
#[map]
static CALLS: HashMap<u32, u64> = HashMap::with_max_entries(1024);

/// Calls in total, in slot 0.
#[map]
static TOTAL: Array<u64> = Array::with_max_entries(1);

#[kprobe("kernel::block::queue::RequestQueue::submit_bio")]
fn submit_bio(_ctx: KprobeContext) -> u32 {
    let tid = current_pid_tgid() as u32;
    CALLS.increment(&tid);
    TOTAL.add(0, 1);
    0
}

ktrace_probe::license!("GPL");
