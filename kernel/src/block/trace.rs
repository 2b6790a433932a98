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

/// What the bio events record about a bio, taken before the bio moves
/// into the scheduler (which may merge it away).
#[derive(Clone, Copy)]
pub struct BioFacts {
    id: u64,
    sector: u64,
    nr_sector: u32,
    bytes: u32,
    rwbs: [u8; 8],
    pid: u32,
}

impl BioFacts {
    /// The facts of `bio` (its id must be assigned).
    pub fn of(bio: &Bio) -> BioFacts {
        BioFacts {
            id: bio.id,
            sector: bio.sector,
            nr_sector: bio.nr_sectors(),
            bytes: bio.bytes(),
            rwbs: bio.rwbs(),
            pid: bio.submitter,
        }
    }
}

/// Which side of a request a bio joined.
#[derive(Clone, Copy)]
pub enum Merge {
    /// The bio continues the request (`block:block_bio_backmerge`).
    Back,
    /// The bio precedes the request (`block:block_bio_frontmerge`).
    Front,
}

/// `block:block_bio_queue`.
#[inline]
pub fn bio_queue(dev: u32, bio: &BioFacts) {
    crate::trace_event!(
        points::BLOCK_BIO_QUEUE,
        BlockBioQueue {
            sector: bio.sector,
            bio_id: bio.id,
            dev,
            nr_sector: bio.nr_sector,
            bytes: bio.bytes,
            pid: bio.pid,
            rwbs: bio.rwbs,
            comm: comm(),
        }
    );
}

/// `block:block_bio_backmerge` or `block:block_bio_frontmerge`: the two
/// events have the same fields.
#[inline]
pub fn bio_merge(dev: u32, rq_id: u64, bio: &BioFacts, side: Merge) {
    macro_rules! merge_event {
        ($point:path, $event:ident) => {
            crate::trace_event!(
                $point,
                $event {
                    sector: bio.sector,
                    bio_id: bio.id,
                    rq_id,
                    dev,
                    nr_sector: bio.nr_sector,
                    bytes: bio.bytes,
                    pid: bio.pid,
                    rwbs: bio.rwbs,
                    comm: comm()
                }
            )
        };
    }
    match side {
        Merge::Back => merge_event!(points::BLOCK_BIO_BACKMERGE, BlockBioBackmerge),
        Merge::Front => merge_event!(points::BLOCK_BIO_FRONTMERGE, BlockBioFrontmerge),
    }
}

/// `block:block_rq_insert`: a bio became a new request.
#[inline]
pub fn rq_insert(dev: u32, rq_id: u64, bio: &BioFacts) {
    crate::trace_event!(
        points::BLOCK_RQ_INSERT,
        BlockRqInsert {
            sector: bio.sector,
            rq_id,
            dev,
            nr_sector: bio.nr_sector,
            bytes: bio.bytes,
            pid: bio.pid,
            rwbs: bio.rwbs,
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
            cpu: crate::percpu::this_cpu().id,
            issue_cpu: rq.issue_cpu,
        }
    );
}
