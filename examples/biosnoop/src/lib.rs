//! One record per completed block request, like BCC's `biosnoop`: the
//! task that queued it, the disk, the operation, the sector and size, the
//! time queued in the scheduler (`block_rq_insert` → `block_rq_issue`) and
//! the service time (`block_rq_issue` → `block_rq_complete`), streamed
//! through a ring buffer as each request completes.
#![no_std]

use ktrace_probe::helpers::ktime_get_ns;
use ktrace_probe::maps::{Array, HashMap, RingBuf};
use ktrace_probe::tracepoints::block::{BlockRqComplete, BlockRqInsert, BlockRqIssue};
use ktrace_probe::{map, tracepoint, TracepointContext};

/// What is known about a request in flight.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Start {
    /// `block_rq_insert` time (0 if the probe missed it).
    pub insert_ns: u64,
    /// `block_rq_issue` time (0 until issued).
    pub issue_ns: u64,
    /// Task that queued the request.
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// The record sent to the tool, 80 bytes, little-endian.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// Completion time, ns since boot.
    pub ts_ns: u64,
    pub sector: u64,
    /// Nanoseconds between insert and issue (0 when the insert was missed).
    pub queue_ns: u64,
    /// Nanoseconds between issue and completion.
    pub service_ns: u64,
    pub dev: u32,
    pub bytes: u32,
    pub pid: u32,
    pub error: i32,
    pub rwbs: [u8; 8],
    pub comm: [u8; 16],
    /// CPU that completed the request (`block_rq_complete`'s `cpu`).
    pub cpu: u32,
    /// CPU that issued it to the driver.
    pub issue_cpu: u32,
}

/// Settings the tool writes before attaching: `CONFIG[0]` bit 0 = only
/// the disk whose `dev` is `CONFIG[1]` (`biosnoop -d DISK`).
#[map]
static CONFIG: Array<u64> = Array::with_max_entries(2);

/// Requests in flight, by request id.
#[map]
static START: HashMap<u64, Start> = HashMap::with_max_entries(10240);

/// Completed requests, for the tool. Declaring the record type lets
/// `ktrace events` print each record field by field.
#[map]
static EVENTS: RingBuf<Event> = RingBuf::typed_with_byte_size(1024 * 1024);

#[tracepoint("block:block_rq_insert")]
fn rq_insert(ctx: TracepointContext<BlockRqInsert>) -> u32 {
    let rq = ctx.read(|r| &r.rq_id);
    let s = Start {
        insert_ns: ktime_get_ns(),
        issue_ns: 0,
        pid: ctx.read(|r| &r.pid),
        _pad: 0,
        comm: ctx.read(|r| &r.comm),
    };
    let _ = START.insert(&rq, &s, 0);
    0
}

#[tracepoint("block:block_rq_issue")]
fn rq_issue(ctx: TracepointContext<BlockRqIssue>) -> u32 {
    let rq = ctx.read(|r| &r.rq_id);
    let now = ktime_get_ns();
    match START.get_ptr_mut(&rq) {
        // SAFETY: the map hands out a pointer to a live, aligned value.
        Some(p) => unsafe { (*p).issue_ns = now },
        None => {
            // Inserted before the probe was attached: no queue time.
            let s = Start {
                insert_ns: 0,
                issue_ns: now,
                pid: ctx.read(|r| &r.pid),
                _pad: 0,
                comm: ctx.read(|r| &r.comm),
            };
            let _ = START.insert(&rq, &s, 0);
        }
    }
    0
}

#[tracepoint("block:block_rq_complete")]
fn rq_complete(ctx: TracepointContext<BlockRqComplete>) -> u32 {
    let rq = ctx.read(|r| &r.rq_id);
    let Some(s) = START.get(&rq) else {
        return 0;
    };
    let _ = START.remove(&rq);
    if s.issue_ns == 0 {
        return 0;
    }
    let dev = ctx.read(|r| &r.dev);
    if CONFIG.get(0).unwrap_or(0) & 1 != 0 && u64::from(dev) != CONFIG.get(1).unwrap_or(0) {
        return 0;
    }
    let now = ktime_get_ns();
    let e = Event {
        ts_ns: now,
        sector: ctx.read(|r| &r.sector),
        queue_ns: if s.insert_ns == 0 {
            0
        } else {
            s.issue_ns.wrapping_sub(s.insert_ns)
        },
        service_ns: now.wrapping_sub(s.issue_ns),
        dev,
        bytes: ctx.read(|r| &r.bytes),
        pid: s.pid,
        error: ctx.read(|r| &r.error),
        rwbs: ctx.read(|r| &r.rwbs),
        comm: s.comm,
        cpu: ctx.read(|r| &r.cpu),
        issue_cpu: ctx.read(|r| &r.issue_cpu),
    };
    let _ = EVENTS.output(&e);
    0
}

ktrace_probe::license!("GPL");
