//! `block:*` tracepoints. Fields follow Linux's (`dev`, `sector`,
//! `nr_sector`, `bytes`, `rwbs`, `error`), plus ids a probe can key on:
//! `rq_id` (unique per request) and `bio_id` (unique per bio).
//!
//! `dev` is `(major << 20) | minor`, as Linux's `dev_t` in trace records.
//! `rwbs` is Linux's operation string (`R`, `W`, `WS`, `F`, ...), NUL padded.

tracepoints! {
    /// A bio entered the request queue.
    "block": "block_bio_queue" => struct BlockBioQueue {
        sector: u64, bio_id: u64, dev: u32, nr_sector: u32, bytes: u32, pid: u32, rwbs: [u8; 8], comm: [u8; 16],
    }
    /// A bio was merged at the back of a queued request.
    "block": "block_bio_backmerge" => struct BlockBioBackmerge {
        sector: u64, bio_id: u64, rq_id: u64, dev: u32, nr_sector: u32, bytes: u32, pid: u32, rwbs: [u8; 8], comm: [u8; 16],
    }
    /// A bio was merged at the front of a queued request.
    "block": "block_bio_frontmerge" => struct BlockBioFrontmerge {
        sector: u64, bio_id: u64, rq_id: u64, dev: u32, nr_sector: u32, bytes: u32, pid: u32, rwbs: [u8; 8], comm: [u8; 16],
    }
    /// A request was inserted into the scheduler.
    "block": "block_rq_insert" => struct BlockRqInsert {
        sector: u64, rq_id: u64, dev: u32, nr_sector: u32, bytes: u32, pid: u32, rwbs: [u8; 8], comm: [u8; 16],
    }
    /// A request was issued to the driver.
    "block": "block_rq_issue" => struct BlockRqIssue {
        sector: u64, rq_id: u64, dev: u32, nr_sector: u32, bytes: u32, pid: u32, rwbs: [u8; 8], comm: [u8; 16],
    }
    /// A request completed (`error` is 0 or a negative errno). `cpu` is
    /// the CPU that completed it (the one that took the device's
    /// interrupt or polled it), `issue_cpu` the one that issued it to the
    /// driver: on SMP they can differ.
    "block": "block_rq_complete" => struct BlockRqComplete {
        sector: u64, rq_id: u64, dev: u32, nr_sector: u32, bytes: u32, error: i32, rwbs: [u8; 8],
        cpu: u32, issue_cpu: u32,
    }
}
