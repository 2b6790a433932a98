//! How long `RequestQueue::submit_bio` takes, and how often it runs.
#![no_std]

use ktrace_probe::helpers::{current_pid_tgid, ktime_get_ns};
use ktrace_probe::maps::{Array, HashMap, Log2Histogram};
use ktrace_probe::{kprobe, kretprobe, map, KprobeContext, KretprobeContext};

/// Entry time per task.
#[map]
static START: HashMap<u32, u64> = HashMap::with_max_entries(1024);

/// Calls, in slot 0.
#[map]
static CALLS: Array<u64> = Array::with_max_entries(1);

/// Time in the function, ns, log2 slots.
#[map]
static SUBMIT_NS: Log2Histogram = Log2Histogram::new();

#[kprobe("block::queue::RequestQueue::submit_bio")]
fn submit_entry(_ctx: KprobeContext) -> u32 {
    let tid = current_pid_tgid() as u32;
    let now = ktime_get_ns();
    let _ = START.insert(&tid, &now, 0);
    CALLS.add(0, 1);
    0
}

#[kretprobe("block::queue::RequestQueue::submit_bio")]
fn submit_return(_ctx: KretprobeContext) -> u32 {
    let tid = current_pid_tgid() as u32;
    if let Some(start) = START.get(&tid) {
        SUBMIT_NS.record(ktime_get_ns().wrapping_sub(start));
        let _ = START.remove(&tid);
    }
    0
}

ktrace_probe::license!("GPL");
