//! The block tracepoints, with Linux's names and fields: one function per
//! event, each a `trace_event!` site of the kernel's static-key
//! tracepoints (`crate::trace::points::BLOCK_*`). While nothing is
//! attached, a site is a 5-byte `nop` and the record is never built; the
//! host attaches handlers (the built-in counting handler, BPF programs)
//! through the trace control requests.

use ktrace_block::BlockError;
use ktrace_tracepoints::block::{
    BlockBioBackmerge, BlockBioFrontmerge, BlockBioQueue, BlockRqComplete, BlockRqInsert,
    BlockRqIssue,
};

use super::queue::{Bio, Req};
use crate::trace::points;

fn comm() -> [u8; 16] {
    crate::percpu::this_cpu().current_comm()
}

/// `block:block_bio_queue`.
#[inline]
pub fn bio_queue(dev: u32, bio: &Bio) {
    crate::trace_event!(
        points::BLOCK_BIO_QUEUE,
        BlockBioQueue {
            sector: bio.sector,
            bio_id: bio.id,
            dev,
            nr_sector: bio.nr_sectors(),
            bytes: bio.bytes(),
            pid: bio.submitter,
            rwbs: bio.rwbs(),
            comm: comm(),
        }
    );
}

/// `block:block_bio_backmerge`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn bio_backmerge(
    dev: u32,
    bio_id: u64,
    rq_id: u64,
    sector: u64,
    nr_sector: u32,
    bytes: u32,
    rwbs: [u8; 8],
    pid: u32,
) {
    crate::trace_event!(
        points::BLOCK_BIO_BACKMERGE,
        BlockBioBackmerge {
            sector,
            bio_id,
            rq_id,
            dev,
            nr_sector,
            bytes,
            pid,
            rwbs,
            comm: comm()
        }
    );
}

/// `block:block_bio_frontmerge`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn bio_frontmerge(
    dev: u32,
    bio_id: u64,
    rq_id: u64,
    sector: u64,
    nr_sector: u32,
    bytes: u32,
    rwbs: [u8; 8],
    pid: u32,
) {
    crate::trace_event!(
        points::BLOCK_BIO_FRONTMERGE,
        BlockBioFrontmerge {
            sector,
            bio_id,
            rq_id,
            dev,
            nr_sector,
            bytes,
            pid,
            rwbs,
            comm: comm()
        }
    );
}

/// `block:block_rq_insert`.
#[inline]
pub fn rq_insert(
    dev: u32,
    rq_id: u64,
    sector: u64,
    nr_sector: u32,
    bytes: u32,
    rwbs: [u8; 8],
    pid: u32,
) {
    crate::trace_event!(
        points::BLOCK_RQ_INSERT,
        BlockRqInsert {
            sector,
            rq_id,
            dev,
            nr_sector,
            bytes,
            pid,
            rwbs,
            comm: comm()
        }
    );
}

/// `block:block_rq_issue`.
#[inline]
pub fn rq_issue(dev: u32, rq: &Req) {
    crate::trace_event!(
        points::BLOCK_RQ_ISSUE,
        BlockRqIssue {
            sector: rq.sector,
            rq_id: rq.id,
            dev,
            nr_sector: rq.nr_sectors,
            bytes: rq.bytes(),
            pid: rq.submitter,
            rwbs: rq.rwbs(),
            comm: comm(),
        }
    );
}

/// `block:block_rq_complete` (`error` is 0 or a negative errno).
#[inline]
pub fn rq_complete(dev: u32, rq: &Req, status: Result<(), BlockError>) {
    crate::trace_event!(
        points::BLOCK_RQ_COMPLETE,
        BlockRqComplete {
            sector: rq.sector,
            rq_id: rq.id,
            dev,
            nr_sector: rq.nr_sectors,
            bytes: rq.bytes(),
            error: status.err().map_or(0, |e| e.errno()),
            rwbs: rq.rwbs(),
        }
    );
}
