//! Block I/O latency, like BCC's `biolatency`: the time from
//! `block:block_rq_issue` (handed to the driver) to `block:block_rq_complete`
//! for each request, keyed by the request's id, counted in log2 histograms
//! of microseconds (milliseconds with bit 1 of `CONFIG[0]`): one over all disks, one per disk (`dev`) and one per
//! operation (`rwbs`).
//!
//! With bit 0 of `CONFIG[0]` set (the `biolatency -Q` switch, written by the
//! tool before it attaches), the span starts at `block:block_rq_insert`
//! instead, so it includes the time spent queued in the I/O scheduler:
//! `rq_insert` records only then, and the tool then leaves `rq_issue`
//! unattached (as BCC attaches only the start probe it uses), so `rq_issue`
//! records without reading `CONFIG` (one map helper call less per request
//! in a plain run).
//! With bit 2 set (`-d DISK`), only requests of the disk whose `dev` is
//! `CONFIG[1]` are counted. The per-disk and per-operation histograms are
//! kept only with bit 3 (`-D`) and bit 4 (`-F`), and `EXTENSION` (the sum
//! and count of the latencies, for `-e`'s average) only with bit 5: as in
//! BCC, a plain run pays for one histogram. The tool attaches only the
//! start program it needs (`rq_insert` with `-Q`, else `rq_issue`).
#![no_std]

use ktrace_probe::helpers::ktime_get_ns;
use ktrace_probe::maps::{Array, HashMap, KeyedLog2Histogram, Log2Histogram};
use ktrace_probe::tracepoints::block::{BlockRqComplete, BlockRqInsert, BlockRqIssue};
use ktrace_probe::{map, tracepoint, TracepointContext};

/// Settings the tool writes before attaching: `CONFIG[0]` bit 0 = measure
/// from insertion (queue) instead of issue, bit 1 = count milliseconds
/// instead of microseconds, bit 2 = only the disk whose `dev` is
/// `CONFIG[1]`, bit 3 = a histogram per disk, bit 4 = a histogram per
/// operation, bit 5 = `EXTENSION`'s sums.
#[map]
static CONFIG: Array<u64> = Array::with_max_entries(2);

/// `EXTENSION[0]`: the sum of the latencies counted (in the histograms'
/// unit), `EXTENSION[1]`: how many there were (with `CONFIG[0]` bit 5).
#[map]
static EXTENSION: Array<u64> = Array::with_max_entries(2);

/// Start time of each request in flight, by request id.
#[map]
static ISSUED: HashMap<u64, u64> = HashMap::with_max_entries(10240);

/// Latency over all disks, µs, log2 slots.
#[map]
static LATENCY_US: Log2Histogram = Log2Histogram::new();

/// Latency per disk (`dev` = major << 20 | minor), µs, log2 slots (with
/// `CONFIG[0]` bit 3).
#[map]
static LATENCY_US_BY_DISK: KeyedLog2Histogram<u32> = KeyedLog2Histogram::with_max_entries(1024);

/// Latency per operation (the first four bytes of `rwbs`: `R`, `W`, `WS`,
/// `FWS`, ...), µs, log2 slots (with `CONFIG[0]` bit 4). A `u32` key keeps `HistKey` free of
/// padding, which the verifier would see as uninitialised stack.
#[map]
static LATENCY_US_BY_FLAGS: KeyedLog2Histogram<u32> = KeyedLog2Histogram::with_max_entries(1024);

/// `true` when the span starts at insertion (`-Q`).
#[inline(always)]
fn from_queue() -> bool {
    CONFIG.get(0).unwrap_or(0) & 1 != 0
}

#[tracepoint("block:block_rq_insert")]
fn rq_insert(ctx: TracepointContext<BlockRqInsert>) -> u32 {
    if from_queue() {
        let rq = ctx.read(|r| &r.rq_id);
        let now = ktime_get_ns();
        let _ = ISSUED.insert(&rq, &now, 0);
    }
    0
}

/// The start without `-Q`. Attached only then (see the crate overview):
/// with every program attached and `CONFIG` left at 0 (`ktrace load`),
/// `rq_insert` records nothing and this is still the start.
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
    // Requests started before the probe was attached have no start.
    let Some(start) = ISSUED.get(&rq) else {
        return 0;
    };
    let _ = ISSUED.remove(&rq);
    let config = CONFIG.get(0).unwrap_or(0);
    let dev = ctx.read(|r| &r.dev);
    if config & 4 != 0 && u64::from(dev) != CONFIG.get(1).unwrap_or(0) {
        return 0;
    }
    // Divide before taking the log2 so `-m` slots are real millisecond
    // ranges, as BCC does.
    let unit_ns: u64 = if config & 2 != 0 {
        1_000_000
    } else {
        1000
    };
    let us = ktime_get_ns().wrapping_sub(start) / unit_ns;
    LATENCY_US.record(us);
    if config & 8 != 0 {
        LATENCY_US_BY_DISK.record(dev, us);
    }
    if config & 16 != 0 {
        let rwbs = ctx.read(|r| &r.rwbs);
        LATENCY_US_BY_FLAGS.record(u32::from_le_bytes([rwbs[0], rwbs[1], rwbs[2], rwbs[3]]), us);
    }
    if config & 32 != 0 {
        EXTENSION.add(0, us);
        EXTENSION.add(1, 1);
    }
    0
}

ktrace_probe::license!("GPL");
