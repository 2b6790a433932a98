//! Block I/O latency, like BCC's `biolatency`: the time from
//! `block:block_rq_issue` (handed to the driver) to `block:block_rq_complete`
//! for each request, keyed by the request's id, counted in log2 histograms
//! of microseconds: one over all disks and one per disk (`dev`).
#![no_std]

use ktrace_probe::helpers::ktime_get_ns;
use ktrace_probe::maps::{HashMap, KeyedLog2Histogram, Log2Histogram};
use ktrace_probe::tracepoints::block::{BlockRqComplete, BlockRqIssue};
use ktrace_probe::{map, tracepoint, TracepointContext};

/// Issue time of each request in flight, by request id.
#[map]
static ISSUED: HashMap<u64, u64> = HashMap::with_max_entries(10240);

/// Latency over all disks, µs, log2 slots.
#[map]
static LATENCY_US: Log2Histogram = Log2Histogram::new();

/// Latency per disk (`dev` = major << 20 | minor), µs, log2 slots.
#[map]
static LATENCY_US_BY_DISK: KeyedLog2Histogram<u32> = KeyedLog2Histogram::with_max_entries(1024);

#[tracepoint("block:block_rq_issue")]
fn rq_issue(ctx: TracepointContext<BlockRqIssue>) -> u32 {
    let rq = ctx.read(|r| &r.rq_id);
    let now = ktime_get_ns();
    let _ = ISSUED.insert(&rq, &now, 0);
    0
}

#[tracepoint("block:block_rq_complete")]
fn rq_complete(ctx: TracepointContext<BlockRqComplete>) -> u32 {
    let rq = ctx.read(|r| &r.rq_id);
    // Requests issued before the probe was attached have no start.
    let Some(issued) = ISSUED.get(&rq) else {
        return 0;
    };
    let us = ktime_get_ns().wrapping_sub(issued) / 1000;
    LATENCY_US.record(us);
    LATENCY_US_BY_DISK.record(ctx.read(|r| &r.dev), us);
    let _ = ISSUED.remove(&rq);
    0
}

ktrace_probe::license!("GPL");
