//! The in-kernel workload generator (fio-like).
//!
//! The control task validates a [`WorkloadSpec`], splits each device's
//! region evenly among `jobs` kernel tasks per device, starts them and
//! pushes a progress frame about once a second until all are done. Each
//! job keeps `iodepth` bios in flight through the block layer: it submits
//! what it may as one plugged batch, sleeps until a completion arrives,
//! takes every completed bio, refills, and so on until its count or the
//! deadline is reached.
//!
//! With `verify`, every write carries the self-describing pattern of
//! [`ktrace_block::pattern`] for its sectors and a per-block generation;
//! after the main phase each job reads back every block it wrote (in
//! sector order, in plugged batches, so reads merge too) and checks it
//! against the generation of its last successful write. Writes to a block
//! already in flight are avoided so the last write is well defined.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use ktrace_abi::block::{
    limits, BlockResponse, DeviceResult, LatencySummary, RwMode, WorkloadLimit, WorkloadProgress,
    WorkloadReport, WorkloadSpec,
};
use ktrace_abi::{ErrorCode, Response};
use ktrace_block::{pattern, BioFlags, LatencyHistogram, Op, SECTOR_SIZE};

use super::queue::{Bio, Completion, RequestQueue, Token};
use crate::error::{Error, Kind};
use crate::session::{Link, Session};
use crate::sync::SpinLock;
use crate::task::{self, WaitQueue};

/// A workload making no progress this long is abandoned with an error.
const STALL_NS: u64 = 60_000_000_000;
const PROGRESS_NS: u64 = 1_000_000_000;
/// How often the control task checks that the client that asked for the
/// workload is still there.
const CLIENT_CHECK_NS: u64 = 100_000_000;

#[derive(Default)]
struct JobResult {
    dev_index: usize,
    ios: u64,
    reads: u64,
    writes: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    hist: LatencyHistogram,
    verified: u64,
    verify_failures: u64,
    first_mismatch: Option<String>,
    main_end_ns: u64,
}

struct Shared {
    ios: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    finished: AtomicU32,
    stop: AtomicBool,
    results: SpinLock<Vec<JobResult>>,
    wq: WaitQueue,
}

struct Job {
    dev: Arc<RequestQueue>,
    dev_index: usize,
    first_block: u64,
    blocks: u64,
    bs: usize,
    rw: RwMode,
    iodepth: usize,
    verify: bool,
    read_percent: u64,
    plug: bool,
    seed: u64,
    count: Option<u64>,
    deadline_ns: Option<u64>,
}

fn bad(message: String) -> Error {
    Error::plain(ErrorCode::InvalidArgument, message)
}

fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Check a spec and plan its jobs.
fn plan(spec: &WorkloadSpec, start_ns: u64) -> Result<Vec<Job>, Error> {
    if spec.devices.is_empty() {
        return Err(bad(String::from("no device given")));
    }
    let bs = spec.block_size;
    if bs == 0 || !bs.is_multiple_of(SECTOR_SIZE as u32) || bs > limits::MAX_BLOCK_SIZE {
        return Err(bad(format!(
            "block size {bs} must be a non-zero multiple of {SECTOR_SIZE} bytes, at most {}",
            limits::MAX_BLOCK_SIZE
        )));
    }
    if spec.iodepth == 0 || spec.iodepth > limits::MAX_IODEPTH {
        return Err(bad(format!(
            "iodepth {} is out of range 1..={}",
            spec.iodepth,
            limits::MAX_IODEPTH
        )));
    }
    if spec.jobs == 0 || spec.jobs > limits::MAX_JOBS {
        return Err(bad(format!(
            "jobs {} is out of range 1..={}",
            spec.jobs,
            limits::MAX_JOBS
        )));
    }
    let (count, deadline_ns) = match spec.limit {
        WorkloadLimit::Count(0) => return Err(bad(String::from("count must be at least 1"))),
        // A count still stops at the longest allowed time: the control
        // task waits for the workload, and `Count(u64::MAX)` must not hold
        // the channel forever.
        WorkloadLimit::Count(n) => (Some(n), Some(start_ns + limits::MAX_TIME_MS * 1_000_000)),
        WorkloadLimit::TimeMs(ms) if ms == 0 || ms > limits::MAX_TIME_MS => {
            return Err(bad(format!(
                "time {ms} ms is out of range 1..={} ms",
                limits::MAX_TIME_MS
            )))
        }
        WorkloadLimit::TimeMs(ms) => (None, Some(start_ns + ms * 1_000_000)),
    };
    if spec.verify && !spec.rw.writes() {
        return Err(bad(format!(
            "verify needs a workload that writes (write, randwrite or randrw), not {}",
            spec.rw.name()
        )));
    }
    if spec.read_percent > 100 {
        return Err(bad(format!(
            "read percentage {} is above 100",
            spec.read_percent
        )));
    }
    if !spec.offset.is_multiple_of(u64::from(bs)) {
        return Err(bad(format!(
            "offset {} is not a multiple of the block size {bs}",
            spec.offset
        )));
    }
    let buffers =
        u64::from(spec.jobs) * u64::from(spec.iodepth) * u64::from(bs) * spec.devices.len() as u64;
    if buffers > limits::MAX_BUFFER_BYTES {
        return Err(Error::plain(
            ErrorCode::Limit,
            format!(
                "jobs x iodepth x block size x devices = {} of buffers, more than the limit of {}",
                mib(buffers),
                mib(limits::MAX_BUFFER_BYTES)
            ),
        ));
    }
    let mut jobs = Vec::new();
    for (dev_index, name) in spec.devices.iter().enumerate() {
        if spec.devices[..dev_index].contains(name) {
            return Err(bad(format!("device {name} is given twice")));
        }
        let Some(dev) = super::find(name) else {
            let known: Vec<&str> = super::devices().iter().map(|d| d.name.as_str()).collect();
            return Err(Error::plain(
                ErrorCode::NotFound,
                format!("no block device {name:?}; devices: {}", known.join(", ")),
            ));
        };
        let capacity = dev.capacity * SECTOR_SIZE as u64;
        let size = if spec.size == 0 {
            capacity.saturating_sub(spec.offset)
        } else {
            spec.size
        };
        if spec
            .offset
            .checked_add(size)
            .is_none_or(|end| end > capacity)
            || size == 0
        {
            return Err(bad(format!(
                "region {}+{} does not fit {name} ({})",
                spec.offset,
                size,
                mib(capacity)
            )));
        }
        let blocks = size / u64::from(bs);
        let per_job = blocks / u64::from(spec.jobs);
        if per_job < u64::from(spec.iodepth) {
            return Err(bad(format!(
                "{name}: {blocks} blocks of {bs} bytes split over {} jobs leave {per_job} per job, fewer than iodepth {}",
                spec.jobs, spec.iodepth
            )));
        }
        // Verification keeps a 4-byte generation per block; on a large
        // disk with small blocks that table alone would exhaust the heap.
        if spec.verify && blocks > MAX_VERIFY_BLOCKS {
            return Err(bad(format!(
                "{name}: verify tracks {blocks} blocks of {bs} bytes, more than {MAX_VERIFY_BLOCKS}; use a larger block size or a smaller size"
            )));
        }
        for j in 0..u64::from(spec.jobs) {
            jobs.push(Job {
                dev: dev.clone(),
                dev_index,
                first_block: spec.offset / u64::from(bs) + j * per_job,
                blocks: per_job,
                bs: bs as usize,
                rw: spec.rw,
                iodepth: spec.iodepth as usize,
                verify: spec.verify,
                read_percent: u64::from(spec.read_percent),
                plug: spec.plug,
                seed: mix(spec.seed ^ ((dev_index as u64) << 32) ^ j),
                count,
                deadline_ns,
            });
        }
    }
    // Buffers, verification tables and a stack per job: all allocated by
    // the jobs as they start, where a failure could not be answered.
    let tables: u64 = jobs.iter().filter(|j| j.verify).map(|j| j.blocks * 4).sum();
    let stacks = (jobs.len() * crate::task::STACK_BYTES) as u64;
    let needed = usize::try_from(buffers + tables + stacks).unwrap_or(usize::MAX);
    if let Err(full) = crate::mm::heap::check_room(needed) {
        return Err(Error::new(
            Kind::NoMemory,
            format!("the workload's buffers, tables and task stacks {full}"),
        ));
    }
    Ok(jobs)
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One job's task. Kept out of line: profiles (`kperf record`) name the
/// workload by this frame, and LLVM would otherwise fold it into the
/// spawned closure's shim when [`run`] changes shape.
#[inline(never)]
fn job_main(job: Job, shared: Arc<Shared>) {
    let mut r = JobResult {
        dev_index: job.dev_index,
        ..JobResult::default()
    };
    let spb = (job.bs / SECTOR_SIZE) as u64;
    let completion = Completion::new();
    let pid = task::current_pid();
    let mut rng = Rng(job.seed | 1);
    let mut gens: Vec<u32> = if job.verify {
        vec![0; job.blocks as usize]
    } else {
        Vec::new()
    };
    let mut inflight: Vec<u64> = Vec::with_capacity(job.iodepth);
    let mut free: Vec<Vec<u8>> = (0..job.iodepth).map(|_| vec![0u8; job.bs]).collect();
    let mut seq = 0u64;
    let mut issued = 0u64;
    let random = matches!(
        job.rw,
        RwMode::RandRead | RwMode::RandWrite | RwMode::RandRw
    );
    loop {
        let mut batch = Vec::new();
        while inflight.len() < job.iodepth
            && job.count.is_none_or(|n| issued < n)
            && job.deadline_ns.is_none_or(|d| crate::time::now_ns() < d)
            && !shared.stop.load(Ordering::Relaxed)
        {
            let op = match job.rw {
                RwMode::Read | RwMode::RandRead => Op::Read,
                RwMode::Write | RwMode::RandWrite => Op::Write,
                RwMode::RandRw if rng.below(100) < job.read_percent => Op::Read,
                RwMode::RandRw => Op::Write,
            };
            let block = if random {
                let mut b = rng.below(job.blocks);
                // Never two writes of one block in flight: the last write
                // must be well defined for verify.
                for _ in 0..16 {
                    if !inflight.contains(&b) {
                        break;
                    }
                    b = rng.below(job.blocks);
                }
                b
            } else {
                let b = seq % job.blocks;
                seq += 1;
                b
            };
            if inflight.contains(&block) {
                break;
            }
            let mut buf = free.pop().unwrap_or_else(|| vec![0u8; job.bs]);
            let sector = (job.first_block + block) * spb;
            let generation = if op == Op::Write && job.verify {
                let g = gens[block as usize].wrapping_add(1).max(1);
                pattern::fill(&mut buf, sector, job.seed, g);
                g
            } else {
                0
            };
            let token = Token {
                completion: completion.clone(),
                tag: block,
                aux: u64::from(generation),
                submitted_ns: crate::time::now_ns(),
            };
            batch.push(Bio::new(op, BioFlags::SYNC, sector, buf, pid, token));
            inflight.push(block);
            issued += 1;
        }
        if !batch.is_empty() {
            if job.plug {
                job.dev.submit(batch);
            } else {
                for bio in batch {
                    job.dev.submit(vec![bio]);
                }
            }
        }
        if inflight.is_empty() {
            break;
        }
        let mut next = Some(completion.wait());
        while let Some(bio) = next {
            let now = crate::time::now_ns();
            r.hist.record(now.saturating_sub(bio.private.submitted_ns));
            r.ios += 1;
            shared.ios.fetch_add(1, Ordering::Relaxed);
            match bio.op {
                Op::Read => r.reads += 1,
                _ => r.writes += 1,
            }
            match bio.status {
                Ok(()) => {
                    r.bytes += bio.data.len() as u64;
                    shared
                        .bytes
                        .fetch_add(bio.data.len() as u64, Ordering::Relaxed);
                    if bio.op == Op::Write && job.verify {
                        gens[bio.private.tag as usize] = bio.private.aux as u32;
                    }
                }
                Err(e) => {
                    r.errors += 1;
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    if r.first_error.is_none() {
                        r.first_error =
                            Some(format!("{}: {e} (sector {})", job.dev.name, bio.sector));
                    }
                }
            }
            if let Some(i) = inflight.iter().position(|&b| b == bio.private.tag) {
                inflight.swap_remove(i);
            }
            free.push(bio.data);
            next = completion.try_take();
        }
    }
    r.main_end_ns = crate::time::now_ns();
    if job.verify {
        verify(&job, &gens, &completion, &mut free, &mut r);
    }
    shared.results.lock().push(r);
    shared.finished.fetch_add(1, Ordering::SeqCst);
    shared.wq.wake_all();
}

/// Read back every written block in sector order and compare.
fn verify(
    job: &Job,
    gens: &[u32],
    completion: &Arc<Completion>,
    free: &mut Vec<Vec<u8>>,
    r: &mut JobResult,
) {
    let spb = (job.bs / SECTOR_SIZE) as u64;
    let pid = task::current_pid();
    // Walked lazily: a list of every written block would be 8 bytes a
    // block, more than the heap check before the run allows for.
    let mut written = (0..job.blocks).filter(|&b| gens[b as usize] != 0);
    let mut batch: Vec<u64> = Vec::with_capacity(job.iodepth);
    loop {
        batch.clear();
        batch.extend(written.by_ref().take(job.iodepth));
        if batch.is_empty() {
            break;
        }
        let chunk = &batch[..];
        let bios: Vec<Bio> = chunk
            .iter()
            .map(|&b| {
                let buf = free.pop().unwrap_or_else(|| vec![0u8; job.bs]);
                let token = Token {
                    completion: completion.clone(),
                    tag: b,
                    aux: 0,
                    submitted_ns: 0,
                };
                Bio::new(
                    Op::Read,
                    BioFlags::SYNC,
                    (job.first_block + b) * spb,
                    buf,
                    pid,
                    token,
                )
            })
            .collect();
        job.dev.submit(bios);
        for _ in 0..chunk.len() {
            let bio = completion.wait();
            let b = bio.private.tag as usize;
            r.verified += 1;
            let outcome = match bio.status {
                Err(e) => Err(format!(
                    "{}: read-back failed: {e} (sector {})",
                    job.dev.name, bio.sector
                )),
                Ok(()) => pattern::check(&bio.data, bio.sector, job.seed, gens[b])
                    .map_err(|m| format!("{}: {m}", job.dev.name)),
            };
            if let Err(m) = outcome {
                r.verify_failures += 1;
                if r.first_mismatch.is_none() {
                    r.first_mismatch = Some(m);
                }
            }
            free.push(bio.data);
        }
    }
}

fn progress(shared: &Shared, start: u64) -> WorkloadProgress {
    WorkloadProgress {
        elapsed_ns: crate::time::now_ns().saturating_sub(start),
        ios: shared.ios.load(Ordering::Relaxed),
        bytes: shared.bytes.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
    }
}

/// Most blocks a verifying workload may cover on one device (16 MiB of
/// generation table).
const MAX_VERIFY_BLOCKS: u64 = 4 << 20;

/// Run a workload for `client` to the end (control task), pushing progress
/// frames to it through `link`.
pub fn run(
    spec: &WorkloadSpec,
    client: &Session,
    link: &dyn Link,
) -> Result<WorkloadReport, Error> {
    let start = crate::time::now_ns();
    let jobs = plan(spec, start)?;
    let total = jobs.len() as u32;
    let shared = Arc::new(Shared {
        ios: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        finished: AtomicU32::new(0),
        stop: AtomicBool::new(false),
        results: SpinLock::new(Vec::new()),
        wq: WaitQueue::new(),
    });
    let mut started = 0;
    for (i, job) in jobs.into_iter().enumerate() {
        let name = format!("fio-{}-{i}", job.dev.name);
        let s = shared.clone();
        if task::spawn(&name, move || job_main(job, s)).is_none() {
            shared.stop.store(true, Ordering::SeqCst);
            break;
        }
        started += 1;
    }
    let mut last_ios = 0;
    let mut last_change = start;
    let mut last_progress = start;
    // The session that asked: if its client goes (killed, say), the
    // workload stops, so the session can serve its next client at once
    // instead of running I/O for nobody.
    loop {
        let done = shared.wq.wait_until_timeout(
            || shared.finished.load(Ordering::SeqCst) >= started,
            CLIENT_CHECK_NS,
        );
        if done {
            break;
        }
        if !link.present(client) {
            shared.stop.store(true, Ordering::SeqCst);
            // The jobs stop issuing and finish once their I/O in flight
            // completes (or stalls out like any job).
            shared.wq.wait_until_timeout(
                || shared.finished.load(Ordering::SeqCst) >= started,
                STALL_NS,
            );
            return Err(Error::plain(
                ErrorCode::Other,
                format!(
                    "workload stopped after {} I/Os: the client that asked for it went away",
                    shared.ios.load(Ordering::SeqCst)
                ),
            ));
        }
        let now = crate::time::now_ns();
        if now - last_progress < PROGRESS_NS {
            continue;
        }
        last_progress = now;
        let p = progress(&shared, start);
        link.push(client, &Response::Block(BlockResponse::Progress(p)));
        let now = crate::time::now_ns();
        if p.ios != last_ios {
            last_ios = p.ios;
            last_change = now;
        } else if now - last_change > STALL_NS {
            shared.stop.store(true, Ordering::SeqCst);
            return Err(Error::plain(
                ErrorCode::Other,
                format!(
                    "workload stalled: no I/O completed for {} s ({} of {started} jobs finished)",
                    STALL_NS / 1_000_000_000,
                    shared.finished.load(Ordering::SeqCst)
                ),
            ));
        }
    }
    if started < total {
        return Err(Error::plain(
            ErrorCode::Limit,
            format!("could start only {started} of {total} job tasks (out of memory)"),
        ));
    }
    let results = core::mem::take(&mut *shared.results.lock());
    Ok(report(spec, start, results))
}

fn report(spec: &WorkloadSpec, start: u64, results: Vec<JobResult>) -> WorkloadReport {
    let mut hist = LatencyHistogram::new();
    let mut per_device: Vec<DeviceResult> = spec
        .devices
        .iter()
        .map(|d| DeviceResult {
            dev: d.clone(),
            ios: 0,
            bytes: 0,
            errors: 0,
        })
        .collect();
    let mut rep = WorkloadReport {
        elapsed_ns: 0,
        ios: 0,
        reads: 0,
        writes: 0,
        bytes: 0,
        errors: 0,
        first_error: None,
        latency: LatencySummary::default(),
        verified_blocks: 0,
        verify_failures: 0,
        first_mismatch: None,
        per_device: Vec::new(),
    };
    let mut end = start;
    for r in results {
        end = end.max(r.main_end_ns);
        hist.merge(&r.hist);
        rep.ios += r.ios;
        rep.reads += r.reads;
        rep.writes += r.writes;
        rep.bytes += r.bytes;
        rep.errors += r.errors;
        rep.verified_blocks += r.verified;
        rep.verify_failures += r.verify_failures;
        rep.first_error = rep.first_error.or(r.first_error);
        rep.first_mismatch = rep.first_mismatch.or(r.first_mismatch);
        if let Some(d) = per_device.get_mut(r.dev_index) {
            d.ios += r.ios;
            d.bytes += r.bytes;
            d.errors += r.errors;
        }
    }
    rep.elapsed_ns = end - start;
    rep.latency = LatencySummary {
        min: hist.min(),
        mean: hist.mean(),
        p50: hist.quantile(0.50),
        p90: hist.quantile(0.90),
        p99: hist.quantile(0.99),
        max: hist.max(),
    };
    rep.per_device = per_device;
    rep
}
