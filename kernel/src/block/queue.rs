//! A block device and its request queue: where bios meet the scheduler,
//! the driver and the statistics.
//!
//! Everything of one device sits behind one [`SpinLock`] (interrupts off
//! while held): the scheduler, the driver with its hardware queue, the
//! statistics. Task context (submission) and the device interrupt
//! (completion) take the same lock, so a request is never half-way between
//! the two.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use ktrace_block::sched::{self, SchedConfig};
use ktrace_block::{check_bio, AddOutcome, BlockError, DiskStats, Request, Scheduler};

use super::trace;
use crate::sync::SpinLock;
use crate::task::WaitQueue;

/// Where completed bios go: the submitter's queue of finished bios and the
/// wait queue it sleeps on. One submitter may keep many bios in flight on
/// one `Completion`.
pub struct Completion {
    done: SpinLock<VecDeque<Bio>>,
    wq: WaitQueue,
}

impl Completion {
    /// An empty completion.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            done: SpinLock::new(VecDeque::new()),
            wq: WaitQueue::new(),
        })
    }

    fn complete(&self, bio: Bio) {
        self.done.lock().push_back(bio);
        self.wq.wake_all();
    }

    /// Block until a bio completes and take it.
    pub fn wait(&self) -> Bio {
        loop {
            if let Some(b) = self.done.lock().pop_front() {
                return b;
            }
            self.wq.wait_until(|| !self.done.lock().is_empty());
        }
    }

    /// A completed bio, if one is waiting.
    pub fn try_take(&self) -> Option<Bio> {
        self.done.lock().pop_front()
    }
}

/// The submitter's token a bio carries through the block layer.
pub struct Token {
    /// Where the bio goes when it completes.
    pub completion: Arc<Completion>,
    /// The submitter's own tag (e.g. a block index).
    pub tag: u64,
    /// A second submitter value (e.g. a write generation).
    pub aux: u64,
    /// Submission time (ns), for latency.
    pub submitted_ns: u64,
}

/// A bio of this kernel.
pub type Bio = ktrace_block::Bio<Token>;
/// A request of this kernel.
pub type Req = Request<Token>;

/// A device driver: the hardware queue below the scheduler.
pub trait Driver: Send {
    /// `virtio-blk`, `ramdisk`.
    fn kind(&self) -> &'static str;
    /// Size in sectors.
    fn capacity(&self) -> u64;
    /// Requests the hardware queue holds at once.
    fn depth(&self) -> usize;
    /// Requests issued and not yet reaped.
    fn in_flight(&self) -> usize;
    /// Start a request. `Err` gives it back untouched when the hardware
    /// queue is full. A request the device refuses outright is accepted
    /// and comes back from [`reap`](Self::reap) with an error status.
    // The request comes back by value on the rare full-ring path; boxing
    // it would cost an allocation on every issue.
    #[allow(clippy::result_large_err)]
    fn issue(&mut self, rq: Req) -> Result<(), Req>;
    /// Move finished requests (status set) to `out`.
    fn reap(&mut self, out: &mut Vec<Req>);
    /// Acknowledge the device's interrupt; whether it had raised one.
    fn ack_interrupt(&mut self) -> bool {
        false
    }
    /// Fail I/O touching sectors `start .. start + count` (fault
    /// injection), or stop failing (`None`).
    fn inject_errors(&mut self, _range: Option<(u64, u64)>) -> Result<(), &'static str> {
        Err("this device does not support error injection")
    }
}

struct Inner {
    sched: Box<dyn Scheduler<Token>>,
    driver: Box<dyn Driver>,
    stats: DiskStats,
    reaped: Vec<Req>,
}

/// One block device and its request queue: bios come in through
/// [`RequestQueue::submit_bio`], the scheduler merges them into requests, the
/// driver runs them.
pub struct RequestQueue {
    /// `vda`, `ram0`, ...
    pub name: String,
    pub major: u32,
    pub minor: u32,
    /// Size in sectors.
    pub capacity: u64,
    kind: &'static str,
    inner: SpinLock<Inner>,
    interrupts: AtomicU64,
}

static NEXT_BIO_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_RQ_ID: AtomicU64 = AtomicU64::new(1);

impl RequestQueue {
    /// A device over `driver` with the `deadline` scheduler.
    pub fn new(name: &str, major: u32, minor: u32, driver: Box<dyn Driver>) -> Self {
        let sched = sched::by_name::<Token>("deadline", SchedConfig::default())
            .unwrap_or_else(|| Box::new(sched::Noop::new()));
        Self {
            name: String::from(name),
            major,
            minor,
            capacity: driver.capacity(),
            kind: driver.kind(),
            inner: SpinLock::new(Inner {
                sched,
                driver,
                stats: DiskStats::default(),
                reaped: Vec::new(),
            }),
            interrupts: AtomicU64::new(0),
        }
    }

    /// Linux's `dev_t` as trace records carry it: `major << 20 | minor`.
    pub fn dev_t(&self) -> u32 {
        (self.major << 20) | self.minor
    }

    /// Submit bios, as one plugged batch: all reach the scheduler (and may
    /// merge with each other) before any is dispatched. A bio that fails
    /// the size or range check completes at once with that error.
    pub fn submit(&self, bios: Vec<Bio>) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        for bio in bios {
            self.submit_bio(inner, bio);
        }
        self.run(inner);
    }

    /// One bio enters the queue: checked, counted, traced
    /// (`block:block_bio_queue`), then inserted as a new request or merged
    /// into a queued one. Not inlined: it is the natural kprobe target for
    /// "every bio submitted" (`kernel::block::queue::RequestQueue::submit_bio`).
    #[inline(never)]
    fn submit_bio(&self, inner: &mut Inner, mut bio: Bio) {
        let dev = self.dev_t();
        let now = crate::time::now_ns();
        if let Err(e) = check_bio(bio.op, bio.sector, bio.data.len(), self.capacity) {
            inner.stats.bio_rejected();
            bio.status = Err(e);
            let c = bio.private.completion.clone();
            c.complete(bio);
            return;
        }
        bio.id = NEXT_BIO_ID.fetch_add(1, Ordering::Relaxed);
        bio.queued_ns = now;
        inner.stats.bio_queued();
        let facts = trace::BioFacts::of(&bio);
        trace::bio_queue(dev, &facts);
        let op = bio.op;
        // Ids a merge leaves unused are skipped: ids only need to be unique.
        let new_id = NEXT_RQ_ID.fetch_add(1, Ordering::Relaxed);
        match inner.sched.add_bio(bio, new_id, now) {
            AddOutcome::Inserted { rq_id } => {
                inner.stats.inserted(now);
                trace::rq_insert(dev, rq_id, &facts);
            }
            AddOutcome::BackMerge { rq_id } => {
                inner.stats.merged(op);
                trace::bio_merge(dev, rq_id, &facts, trace::Merge::Back);
            }
            AddOutcome::FrontMerge { rq_id } => {
                inner.stats.merged(op);
                trace::bio_merge(dev, rq_id, &facts, trace::Merge::Front);
            }
        }
    }

    /// Dispatch while the hardware has room, and complete what the driver
    /// finished, until neither makes progress.
    fn run(&self, inner: &mut Inner) {
        let dev = self.dev_t();
        loop {
            let mut progress = false;
            while inner.driver.in_flight() < inner.driver.depth() {
                let now = crate::time::now_ns();
                let Some(mut rq) = inner.sched.dispatch(now) else {
                    break;
                };
                rq.times.issued = now;
                rq.issue_cpu = crate::percpu::this_cpu().id;
                inner.stats.issued();
                trace::rq_issue(dev, &rq);
                match inner.driver.issue(rq) {
                    Ok(()) => progress = true,
                    Err(rq) => {
                        // The hardware queue is full after all: the request
                        // goes back to the front of the scheduler (a
                        // requeue, as Linux counts it).
                        inner.stats.requeued();
                        inner.sched.requeue(rq);
                        break;
                    }
                }
            }
            let mut reaped = core::mem::take(&mut inner.reaped);
            inner.driver.reap(&mut reaped);
            for mut rq in reaped.drain(..) {
                progress = true;
                let now = crate::time::now_ns();
                rq.times.completed = now;
                let status = rq.status.unwrap_or(Ok(()));
                trace::rq_complete(dev, &rq, status);
                inner
                    .stats
                    .completed(rq.op, rq.nr_sectors, rq.times.queued, now, status.is_ok());
                for bio in rq.finish(status) {
                    let c = bio.private.completion.clone();
                    c.complete(bio);
                }
            }
            inner.reaped = reaped;
            if !progress {
                break;
            }
        }
    }

    /// The device interrupt: acknowledge, complete, dispatch more.
    pub fn interrupt(&self) -> bool {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let ours = inner.driver.ack_interrupt();
        if ours {
            self.interrupts.fetch_add(1, Ordering::Relaxed);
        }
        // Reap even on a shared line's foreign interrupt: cheap, and a lost
        // acknowledgement must not strand a completion.
        self.run(inner);
        ours
    }

    /// The statistics for the control protocol.
    pub fn stats(&self) -> ktrace_abi::block::DeviceStats {
        let g = self.inner.lock();
        let s = g.stats.snapshot(crate::time::now_ns());
        let op = |o: &ktrace_block::OpStats| ktrace_abi::block::OpStats {
            ios: o.ios,
            merges: o.merges,
            sectors: o.sectors,
            ticks_ns: o.ticks_ns,
        };
        ktrace_abi::block::DeviceStats {
            name: self.name.clone(),
            kind: String::from(self.kind),
            major: self.major,
            minor: self.minor,
            capacity_sectors: self.capacity,
            scheduler: String::from(g.sched.name()),
            hw_queue_depth: g.driver.depth() as u32,
            read: op(&s.read),
            write: op(&s.write),
            flush: op(&s.flush),
            in_flight: s.in_flight,
            hw_in_flight: s.hw_in_flight,
            io_ticks_ns: s.io_ticks_ns,
            time_in_queue_ns: s.time_in_queue_ns,
            bios: s.bios,
            rejected: s.rejected,
            inserted: s.inserted,
            issued: s.issued,
            errors: s.errors,
            interrupts: self.interrupts.load(Ordering::Relaxed),
        }
    }

    /// Switch the scheduler; queued requests move over.
    // Out of line in every build: a probe target of `ktrace trace`'s tests
    // and docs (its `&str` parameter lives in a frame slot).
    #[inline(never)]
    pub fn set_scheduler(&self, name: &str) -> Result<(), String> {
        let Some(mut new) = sched::by_name::<Token>(name, SchedConfig::default()) else {
            return Err(alloc::format!(
                "unknown scheduler {name:?} for {}; known: {}",
                self.name,
                sched::NAMES.join(", ")
            ));
        };
        let mut g = self.inner.lock();
        for rq in g.sched.drain() {
            new.requeue(rq);
        }
        g.sched = new;
        Ok(())
    }

    /// Fault injection (RAM disks).
    pub fn inject_errors(&self, range: Option<(u64, u64)>) -> Result<(), &'static str> {
        self.inner.lock().driver.inject_errors(range)
    }
}

/// Submit one bio and wait for it: the synchronous path.
// Out of line in every build: a probe target of the docs and tests
// (`ktrace trace -l 'kprobe:*::submit_*'`), which inlining decisions, moved
// by unrelated code, would otherwise make come and go.
#[inline(never)]
pub fn submit_and_wait(
    dev: &RequestQueue,
    op: ktrace_block::Op,
    sector: u64,
    data: Vec<u8>,
) -> (Vec<u8>, Result<(), BlockError>, u64) {
    let completion = Completion::new();
    let now = crate::time::now_ns();
    let token = Token {
        completion: completion.clone(),
        tag: 0,
        aux: 0,
        submitted_ns: now,
    };
    let pid = crate::task::current_pid();
    let bio = Bio::new(op, ktrace_block::BioFlags::SYNC, sector, data, pid, token);
    dev.submit(alloc::vec![bio]);
    let done = completion.wait();
    let latency = crate::time::now_ns().saturating_sub(now);
    (done.data, done.status, latency)
}
