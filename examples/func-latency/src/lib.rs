//! Latency of a kernel function: a kprobe stamps the entry time per task, a
//! kretprobe on the same function turns it into a duration and counts it in
//! a log2 histogram of nanoseconds.
#![no_std]

use ktrace_probe::helpers::{current_pid_tgid, ktime_get_ns};
use ktrace_probe::maps::{HashMap, Log2Histogram};
use ktrace_probe::{kprobe, kretprobe, map, KprobeContext, KretprobeContext};

/// Entry timestamps by thread id: a call in progress on each task.
#[map]
static START: HashMap<u32, u64> = HashMap::with_max_entries(4096);

/// Latency in nanoseconds, log2 slots (slot k: [2^(k-1), 2^k) ns).
#[map]
static LATENCY_NS: Log2Histogram = Log2Histogram::new();

#[kprobe("kernel::block::queue::RequestQueue::submit_bio")]
fn submit_bio_entry(_ctx: KprobeContext) -> u32 {
    let tid = current_pid_tgid() as u32;
    let now = ktime_get_ns();
    // A full map only loses this sample.
    let _ = START.insert(&tid, &now, 0);
    0
}

#[kretprobe("kernel::block::queue::RequestQueue::submit_bio")]
fn submit_bio_return(_ctx: KretprobeContext) -> u32 {
    let tid = current_pid_tgid() as u32;
    if let Some(start) = START.get(&tid) {
        LATENCY_NS.record(ktime_get_ns().wrapping_sub(start));
        let _ = START.remove(&tid);
    }
    0
}

ktrace_probe::license!("GPL");
