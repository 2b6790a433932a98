//! The block tracepoints, with Linux's names and fields: one function per
//! event that fills the event's record (`ktrace_tracepoints::block`) and
//! hands it to [`emit`].
//!
//! Until the kernel's generic tracepoint machinery is in place, [`emit`]
//! feeds a built-in counting handler (turned on and off by the host, see
//! [`set_enabled`]); switching an event to the generic tracepoint macro is
//! a one-line change in its function. When counting is off, each function
//! costs one relaxed atomic load.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ktrace_block::BlockError;
use ktrace_tracepoints::block::{
    BlockBioBackmerge, BlockBioFrontmerge, BlockBioQueue, BlockRqComplete, BlockRqInsert, BlockRqIssue,
};
use ktrace_tracepoints::TracepointEvent;

use super::queue::{Bio, Req};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The block events, in the order of [`COUNTS`].
pub const EVENTS: [&str; 6] = [
    BlockBioQueue::NAME,
    BlockBioBackmerge::NAME,
    BlockBioFrontmerge::NAME,
    BlockRqInsert::NAME,
    BlockRqIssue::NAME,
    BlockRqComplete::NAME,
];

static COUNTS: [AtomicU64; 6] =
    [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Turn the counting handler on or off.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether the counting handler is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Zero the counts.
pub fn reset() {
    for c in &COUNTS {
        c.store(0, Ordering::SeqCst);
    }
}

/// `(category:name, count)` of every block event.
pub fn counts() -> alloc::vec::Vec<(alloc::string::String, u64)> {
    EVENTS
        .iter()
        .zip(&COUNTS)
        .map(|(name, c)| (alloc::format!("block:{name}"), c.load(Ordering::Relaxed)))
        .collect()
}

/// The handler every event reaches: count it. The record is passed through
/// `black_box` so that building it is not optimised away; a real handler
/// reads it.
#[inline(never)]
fn emit<E: TracepointEvent>(index: usize, record: &E) {
    core::hint::black_box(record);
    COUNTS[index].fetch_add(1, Ordering::Relaxed);
}

fn comm() -> [u8; 16] {
    crate::percpu::this_cpu().current_comm()
}

/// `block:block_bio_queue`.
#[inline]
pub fn bio_queue(dev: u32, bio: &Bio) {
    if !enabled() {
        return;
    }
    let rec = BlockBioQueue {
        sector: bio.sector,
        bio_id: bio.id,
        dev,
        nr_sector: bio.nr_sectors(),
        bytes: bio.bytes(),
        pid: bio.submitter,
        rwbs: bio.rwbs(),
        comm: comm(),
    };
    emit(0, &rec);
}

/// `block:block_bio_backmerge`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn bio_backmerge(dev: u32, bio_id: u64, rq_id: u64, sector: u64, nr_sector: u32, bytes: u32, rwbs: [u8; 8], pid: u32) {
    if !enabled() {
        return;
    }
    let rec = BlockBioBackmerge { sector, bio_id, rq_id, dev, nr_sector, bytes, pid, rwbs, comm: comm() };
    emit(1, &rec);
}

/// `block:block_bio_frontmerge`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn bio_frontmerge(dev: u32, bio_id: u64, rq_id: u64, sector: u64, nr_sector: u32, bytes: u32, rwbs: [u8; 8], pid: u32) {
    if !enabled() {
        return;
    }
    let rec = BlockBioFrontmerge { sector, bio_id, rq_id, dev, nr_sector, bytes, pid, rwbs, comm: comm() };
    emit(2, &rec);
}

/// `block:block_rq_insert`.
#[inline]
pub fn rq_insert(dev: u32, rq_id: u64, sector: u64, nr_sector: u32, bytes: u32, rwbs: [u8; 8], pid: u32) {
    if !enabled() {
        return;
    }
    let rec = BlockRqInsert { sector, rq_id, dev, nr_sector, bytes, pid, rwbs, comm: comm() };
    emit(3, &rec);
}

/// `block:block_rq_issue`.
#[inline]
pub fn rq_issue(dev: u32, rq: &Req) {
    if !enabled() {
        return;
    }
    let rec = BlockRqIssue {
        sector: rq.sector,
        rq_id: rq.id,
        dev,
        nr_sector: rq.nr_sectors,
        bytes: rq.bytes(),
        pid: rq.submitter,
        rwbs: rq.rwbs(),
        comm: comm(),
    };
    emit(4, &rec);
}

/// `block:block_rq_complete` (`error` is 0 or a negative errno).
#[inline]
pub fn rq_complete(dev: u32, rq: &Req, status: Result<(), BlockError>) {
    if !enabled() {
        return;
    }
    let rec = BlockRqComplete {
        sector: rq.sector,
        rq_id: rq.id,
        dev,
        nr_sector: rq.nr_sectors,
        bytes: rq.bytes(),
        error: status.err().map_or(0, |e| e.errno()),
        rwbs: rq.rwbs(),
    };
    emit(5, &rec);
}
