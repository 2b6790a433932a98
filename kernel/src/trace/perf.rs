//! Perf events: counters and a sampling timer, opened, enabled, disabled,
//! read and closed by id (the kernel half of `kperf`).
//!
//! - **Software counters** read the kernel's own statistics (the
//!   scheduler's context-switch count, the timer's tick count, trap counts)
//!   as deltas over the enabled periods; `task-clock` counts nanoseconds
//!   while enabled.
//! - **Tracepoint and kprobe counters** attach a counting handler that only
//!   counts while the event is enabled.
//! - **Hardware counters** need an architectural PMU (CPUID leaf 0AH).
//!   QEMU's TCG CPU has none, and the open is refused with `NotSupported`
//!   instead of returning invented numbers.
//! - **Sampling**: PIT channel 0 interrupts at the chosen frequency; each
//!   interrupt records the interrupted IP, the task and a frame-pointer call
//!   chain into a per-CPU ring the host drains. A full ring counts lost
//!   samples, and so do timer periods that passed without an interrupt
//!   (measured with the TSC: under a loaded host QEMU coalesces timer
//!   interrupts), so `samples + lost` tracks the requested frequency.
//!   Handlers attached with [`attach`] (the BPF runtime's
//!   `perf_event` programs) run on every sample with the interrupted
//!   registers. One sampling event at a time (one PIT).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ktrace_abi::trace::{PerfEvent, PerfSample, PerfValue, ProbeTarget, SoftwareEvent};

use super::kprobe::{self, DepthGuard, KprobeHandler};
use super::tracepoint::{self, TracepointHandler};
use crate::arch::perf_timer::{self, SAMPLING_VECTOR};
use crate::arch::{text_patch, trap, PtRegs};
use crate::sync::SpinLock;

/// Most frames recorded per sample.
pub const MAX_STACK: usize = 32;
/// Samples buffered per CPU before new ones are lost.
pub const RING_CAPACITY: usize = 8192;

/// One sample, as recorded in interrupt context (no allocation).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Nanoseconds since boot.
    pub time_ns: u64,
    /// Interrupted instruction pointer.
    pub ip: u64,
    /// Interrupted task.
    pub pid: u32,
    /// Its name.
    pub comm: [u8; 16],
    /// Return addresses, innermost first.
    pub stack: [u64; MAX_STACK],
    /// Valid entries of `stack`.
    pub depth: u8,
}

/// A handler run on every sample of a sampling event.
pub trait PerfHandler: Send + Sync {
    /// One sample; `regs` are the interrupted registers.
    fn sample(&self, sample: &Sample, regs: &PtRegs);
    /// A hit this handler did not see: it came while another probe's
    /// handler ran on this CPU (the recursion guard). Lets a handler count its own misses.
    fn missed(&self) {}
}

/// Why a perf request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerfError {
    /// No event with this id.
    NotFound(u32),
    /// The CPU cannot count this.
    NotSupported(String),
    /// Bad parameters.
    Invalid(String),
    /// Only one sampling event at a time.
    Busy,
    /// The kprobe or tracepoint could not be attached.
    Attach(String),
}

impl core::fmt::Display for PerfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PerfError::NotFound(id) => write!(f, "no perf event with id {id}"),
            PerfError::NotSupported(m) | PerfError::Invalid(m) | PerfError::Attach(m) => {
                f.write_str(m)
            }
            PerfError::Busy => write!(
                f,
                "a sampling event is already open (one timer drives sampling); close it first"
            ),
        }
    }
}

/// Counts hits while enabled.
struct Counter {
    enabled: AtomicBool,
    count: AtomicU64,
}

impl Counter {
    fn hit(&self) {
        if self.enabled.load(Ordering::Relaxed) {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct CountingHandler(Arc<Counter>);

impl KprobeHandler for CountingHandler {
    fn pre(&self, _regs: &mut PtRegs) {
        self.0.hit();
    }
    fn kind(&self) -> &'static str {
        "perf"
    }
}

impl TracepointHandler for CountingHandler {
    fn event(&self, _record: &[u8], _regs: &PtRegs) {
        self.0.hit();
    }
    fn kind(&self) -> &'static str {
        "perf"
    }
}

enum Source {
    Software(SoftwareEvent),
    Tracepoint {
        attach_id: u32,
        counter: Arc<Counter>,
    },
    Kprobe {
        probe_id: u32,
        counter: Arc<Counter>,
    },
    Sampling {
        freq_hz: u32,
    },
}

struct Event {
    source: Source,
    enabled: bool,
    /// Raw reading when last enabled (software counters).
    base: u64,
    /// Accumulated over earlier enabled periods.
    accum: u64,
    enabled_at_ns: u64,
    time_enabled_ns: u64,
}

static EVENTS: spin::Mutex<BTreeMap<u32, Event>> = spin::Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Ring {
    samples: VecDeque<Sample>,
    max_stack: usize,
    taken: u64,
    /// Samples dropped because the ring was full, plus timer periods that
    /// passed without an interrupt (a loaded host delays QEMU's timer and
    /// coalesces its interrupts; the TSC shows how many periods elapsed).
    lost: u64,
    /// Timer period in TSC cycles.
    period_tsc: u64,
    /// TSC at the previous sample (0 after enable).
    last_tsc: u64,
}

/// The sampling ring of this CPU (one CPU today).
static RING: SpinLock<Option<Ring>> = SpinLock::new(None);
static SAMPLING: AtomicBool = AtomicBool::new(false);
static HANDLERS: spin::RwLock<Vec<Arc<dyn PerfHandler>>> = spin::RwLock::new(Vec::new());

fn raw(ev: SoftwareEvent) -> u64 {
    match ev {
        SoftwareEvent::TaskClock => crate::time::now_ns(),
        SoftwareEvent::ContextSwitches => crate::task::context_switches(),
        SoftwareEvent::Irqs => trap::irq_count(),
        SoftwareEvent::TimerTicks => crate::time::ticks(),
        SoftwareEvent::PageFaults => trap::count(14),
    }
}

/// Open an event, disabled. Returns its id.
pub fn open(spec: &PerfEvent) -> Result<u32, PerfError> {
    let source = match spec {
        PerfEvent::Software(ev) => Source::Software(*ev),
        PerfEvent::Hardware(hw) => {
            let v = perf_timer::pmu_version();
            return Err(PerfError::NotSupported(if v == 0 {
                format!(
                    "hardware event {hw:?} is not supported: this CPU exposes no architectural PMU (CPUID leaf 0AH reports version 0; QEMU TCG emulates none)"
                )
            } else {
                format!("hardware event {hw:?} is not supported: PMU version {v} found, but this kernel does not program it yet")
            }));
        }
        PerfEvent::Tracepoint { name } => {
            let counter = Arc::new(Counter {
                enabled: AtomicBool::new(false),
                count: AtomicU64::new(0),
            });
            let attach_id = tracepoint::attach(name, Arc::new(CountingHandler(counter.clone())))
                .map_err(|e| PerfError::Attach(format!("{e}")))?;
            Source::Tracepoint { attach_id, counter }
        }
        PerfEvent::Kprobe { target } => {
            let counter = Arc::new(Counter {
                enabled: AtomicBool::new(false),
                count: AtomicU64::new(0),
            });
            let h = Arc::new(CountingHandler(counter.clone()));
            let probe = match target {
                ProbeTarget::Address(a) => kprobe::register(*a, h),
                ProbeTarget::Symbol { name, offset } => kprobe::register_symbol(name, *offset, h),
            }
            .map_err(|e| PerfError::Attach(format!("{e}")))?;
            Source::Kprobe {
                probe_id: probe.id(),
                counter,
            }
        }
        PerfEvent::Sampling { freq_hz, max_stack } => {
            if !(perf_timer::MIN_HZ..=perf_timer::MAX_HZ).contains(freq_hz) {
                return Err(PerfError::Invalid(format!(
                    "sampling frequency {freq_hz} Hz is outside {}..={} Hz",
                    perf_timer::MIN_HZ,
                    perf_timer::MAX_HZ
                )));
            }
            let mut ring = RING.lock();
            if ring.is_some() {
                return Err(PerfError::Busy);
            }
            // Allocated here, in task context: the interrupt never allocates.
            *ring = Some(Ring {
                samples: VecDeque::with_capacity(RING_CAPACITY),
                max_stack: (*max_stack as usize).min(MAX_STACK),
                taken: 0,
                lost: 0,
                period_tsc: 0,
                last_tsc: 0,
            });
            drop(ring);
            trap::set_handler(SAMPLING_VECTOR, on_sample_timer);
            Source::Sampling { freq_hz: *freq_hz }
        }
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) as u32;
    EVENTS.lock().insert(
        id,
        Event {
            source,
            enabled: false,
            base: 0,
            accum: 0,
            enabled_at_ns: 0,
            time_enabled_ns: 0,
        },
    );
    Ok(id)
}

/// Start counting or sampling.
pub fn enable(id: u32) -> Result<(), PerfError> {
    enable_group(&[id])
}

/// Start every event of `ids` at one instant: interrupts stay off from the
/// first to the last, so no tick, interrupt or context switch falls
/// between them. Nothing changes if one id is unknown.
pub fn enable_group(ids: &[u32]) -> Result<(), PerfError> {
    group(ids, start)
}

/// Stop every event of `ids` at one instant (see [`enable_group`]).
pub fn disable_group(ids: &[u32]) -> Result<(), PerfError> {
    group(ids, stop)
}

fn group(ids: &[u32], f: fn(&mut Event)) -> Result<(), PerfError> {
    let mut events = EVENTS.lock();
    if let Some(&missing) = ids.iter().find(|id| !events.contains_key(id)) {
        return Err(PerfError::NotFound(missing));
    }
    let was = crate::arch::irq_save();
    for id in ids {
        if let Some(ev) = events.get_mut(id) {
            f(ev);
        }
    }
    crate::arch::irq_restore(was);
    Ok(())
}

fn start(ev: &mut Event) {
    if ev.enabled {
        return;
    }
    ev.enabled = true;
    ev.enabled_at_ns = crate::time::now_ns();
    match &ev.source {
        Source::Software(s) => ev.base = raw(*s),
        Source::Tracepoint { counter, .. } | Source::Kprobe { counter, .. } => {
            counter.enabled.store(true, Ordering::Release)
        }
        Source::Sampling { freq_hz } => {
            let hz = perf_timer::start(*freq_hz);
            if let Some(r) = RING.lock().as_mut() {
                r.period_tsc = (crate::time::tsc_khz() as f64 * 1000.0 / hz) as u64;
                r.last_tsc = 0;
            }
            SAMPLING.store(true, Ordering::Release);
        }
    }
}

/// Stop counting or sampling; the value is kept.
pub fn disable(id: u32) -> Result<(), PerfError> {
    let mut events = EVENTS.lock();
    let ev = events.get_mut(&id).ok_or(PerfError::NotFound(id))?;
    stop(ev);
    Ok(())
}

fn stop(ev: &mut Event) {
    if !ev.enabled {
        return;
    }
    ev.enabled = false;
    ev.time_enabled_ns += crate::time::now_ns().saturating_sub(ev.enabled_at_ns);
    match &ev.source {
        Source::Software(s) => ev.accum += raw(*s).wrapping_sub(ev.base),
        Source::Tracepoint { counter, .. } | Source::Kprobe { counter, .. } => {
            counter.enabled.store(false, Ordering::Release)
        }
        Source::Sampling { .. } => {
            SAMPLING.store(false, Ordering::Release);
            perf_timer::stop();
        }
    }
}

/// Read a counter.
pub fn read(id: u32) -> Result<PerfValue, PerfError> {
    let events = EVENTS.lock();
    let ev = events.get(&id).ok_or(PerfError::NotFound(id))?;
    let now = crate::time::now_ns();
    let time_enabled_ns = ev.time_enabled_ns
        + if ev.enabled {
            now.saturating_sub(ev.enabled_at_ns)
        } else {
            0
        };
    let mut v = PerfValue {
        value: 0,
        time_enabled_ns,
        samples: 0,
        lost: 0,
    };
    match &ev.source {
        Source::Software(s) => {
            v.value = ev.accum
                + if ev.enabled {
                    raw(*s).wrapping_sub(ev.base)
                } else {
                    0
                }
        }
        Source::Tracepoint { counter, .. } | Source::Kprobe { counter, .. } => {
            v.value = counter.count.load(Ordering::Relaxed)
        }
        Source::Sampling { .. } => {
            if let Some(r) = RING.lock().as_ref() {
                v.samples = r.taken;
                v.lost = r.lost;
                v.value = r.taken + r.lost;
            }
        }
    }
    Ok(v)
}

/// Take up to `max` buffered samples of a sampling event, oldest first;
/// also returns the lost count so far.
pub fn drain(id: u32, max: usize) -> Result<(Vec<PerfSample>, u64), PerfError> {
    {
        let events = EVENTS.lock();
        let ev = events.get(&id).ok_or(PerfError::NotFound(id))?;
        if !matches!(ev.source, Source::Sampling { .. }) {
            return Err(PerfError::Invalid(format!(
                "perf event {id} is a counter, not a sampling event"
            )));
        }
    }
    let mut out = Vec::new();
    let mut lost = 0;
    loop {
        // Copy in batches so interrupts are not held off for long.
        let batch: Vec<Sample> = {
            let mut ring = RING.lock();
            let Some(r) = ring.as_mut() else { break };
            lost = r.lost;
            let n = r.samples.len().min(max - out.len()).min(256);
            r.samples.drain(..n).collect()
        };
        if batch.is_empty() {
            break;
        }
        out.extend(batch.iter().map(|s| PerfSample {
            time_ns: s.time_ns,
            ip: s.ip,
            pid: s.pid,
            comm: s.comm,
            stack: s.stack[..usize::from(s.depth)].to_vec(),
        }));
        if out.len() >= max {
            break;
        }
    }
    Ok((out, lost))
}

/// Close an event (detaching its handler or stopping the timer).
pub fn close(id: u32) -> Result<(), PerfError> {
    let mut ev = EVENTS.lock().remove(&id).ok_or(PerfError::NotFound(id))?;
    stop(&mut ev);
    match ev.source {
        Source::Software(_) => {}
        Source::Tracepoint { attach_id, .. } => {
            let _ = tracepoint::detach(attach_id);
        }
        Source::Kprobe { probe_id, .. } => {
            let _ = kprobe::unregister(probe_id);
        }
        Source::Sampling { .. } => {
            let old = RING.lock().take();
            drop(old);
            let was = crate::arch::irq_save();
            let handlers = core::mem::take(&mut *HANDLERS.write());
            crate::arch::irq_restore(was);
            drop(handlers);
        }
    }
    Ok(())
}

/// Run `handler` on every sample of the sampling event `id`.
#[allow(dead_code)] // attach point for the BPF runtime's perf_event programs
pub fn attach(id: u32, handler: Arc<dyn PerfHandler>) -> Result<(), PerfError> {
    let events = EVENTS.lock();
    let ev = events.get(&id).ok_or(PerfError::NotFound(id))?;
    if !matches!(ev.source, Source::Sampling { .. }) {
        return Err(PerfError::Invalid(format!(
            "perf event {id} is a counter; handlers attach to sampling events"
        )));
    }
    let mut next = HANDLERS.read().clone();
    next.push(handler);
    let was = crate::arch::irq_save();
    let old = core::mem::replace(&mut *HANDLERS.write(), next);
    crate::arch::irq_restore(was);
    drop(old);
    Ok(())
}

/// Walk the frame-pointer chain from `rbp`, fault-safe.
fn walk_stack(mut rbp: u64, out: &mut [u64]) -> usize {
    let mut n = 0;
    while n < out.len() && rbp != 0 && rbp.is_multiple_of(8) {
        let Some(ret) = text_patch::read_u64(rbp + 8) else {
            break;
        };
        if ret == 0 {
            break;
        }
        out[n] = ret;
        n += 1;
        let Some(next) = text_patch::read_u64(rbp) else {
            break;
        };
        // Frames move up the stack; anything else is the end of the chain.
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    n
}

fn on_sample_timer(regs: &mut PtRegs, _vector: u8) -> bool {
    if !SAMPLING.load(Ordering::Acquire) {
        return true;
    }
    let cpu = crate::percpu::this_cpu();
    let mut s = Sample {
        time_ns: crate::time::now_ns(),
        ip: regs.rip,
        pid: cpu.current_pid.load(Ordering::Relaxed),
        comm: cpu.current_comm(),
        stack: [0; MAX_STACK],
        depth: 0,
    };
    {
        let mut ring = RING.lock();
        let Some(r) = ring.as_mut() else { return true };
        let depth = walk_stack(regs.rbp, &mut s.stack[..r.max_stack]);
        s.depth = depth as u8;
        let now = crate::arch::rdtsc();
        if r.last_tsc != 0 && r.period_tsc != 0 {
            let periods = (now.wrapping_sub(r.last_tsc) + r.period_tsc / 2) / r.period_tsc;
            r.lost += periods.saturating_sub(1);
        }
        r.last_tsc = now;
        r.taken += 1;
        if r.samples.len() >= RING_CAPACITY {
            r.lost += 1;
        } else {
            r.samples.push_back(s);
        }
    }
    if let Some(_g) = DepthGuard::enter() {
        let handlers = HANDLERS.read();
        for h in handlers.iter() {
            h.sample(&s, regs);
        }
    } else if let Some(handlers) = HANDLERS.try_read() {
        DepthGuard::report_miss(|| {
            for h in handlers.iter() {
                h.missed();
            }
        });
    }
    true
}
