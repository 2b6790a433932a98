//! Perf events: counters and a sampling timer, opened, enabled, disabled,
//! read and closed by id (the kernel half of `kperf`).
//!
//! Every counter counts **per CPU** (`perf stat -A`); a read returns the
//! value of each online CPU and their sum.
//!
//! - **Software counters** read the kernel's own per-CPU statistics
//!   ([`crate::cpustat`]: context switches, timer ticks, interrupts, page
//!   faults, migrations) as deltas over the enabled periods; `task-clock`
//!   counts nanoseconds while enabled on each CPU (so `-a` on N CPUs
//!   counts N times the wall time, as `perf stat -a` does).
//! - **Tracepoint and kprobe counters** attach a counting handler that only
//!   counts while the event is enabled, into the slot of the CPU that hit.
//! - **Hardware counters** need an architectural PMU (CPUID leaf 0AH).
//!   QEMU's TCG CPU has none, and the open is refused with `NotSupported`
//!   instead of returning invented numbers.
//! - **Sampling**: PIT channel 0 raises a **non-maskable interrupt** at the
//!   chosen frequency, so code that runs with interrupts disabled (the
//!   block layer's queue locks, the scheduler, virtio completions) is
//!   sampled like everything else. The PIT's NMI arrives on one CPU (the
//!   one that enabled sampling); that CPU passes it on to every other CPU
//!   as an NMI IPI, so every CPU samples at the chosen frequency. Each NMI
//!   records the interrupted IP, the task and a frame-pointer call chain
//!   into its own CPU's lock-free [`SampleRing`], which the host drains
//!   (samples carry the CPU number). A full ring counts lost samples, and
//!   so do timer periods that passed without an NMI (measured with the
//!   TSC: under a loaded host QEMU coalesces timer interrupts), per CPU,
//!   so `samples + lost` tracks the requested frequency on every CPU. One
//!   sampling event at a time (one PIT).
//! - **An NMI may be a sample and a TLB shootdown at once**: NMIs carry no
//!   source, and one raised while another is pending merges into it. So
//!   every NMI checks both: `smp::on_nmi` the shootdown request, then
//!   [`sample_due`] the tick (a flag the timer CPU sets before passing a
//!   tick on; on the timer CPU itself, the time since its last sample).
//!
//! # What runs in the NMI, and why nothing more
//! An NMI arrives anywhere, even inside a spinlock held with interrupts
//! off, and while it runs the CPU blocks further NMIs until the next
//! `iret`. So the NMI handler ([`on_sample_nmi`]) takes no lock, allocates
//! nothing, calls nothing probe-able (this module is blacklisted, and so
//! is everything it calls) and never faults: the stack walk reads only
//! mapped words. A breakpoint or a fault inside it would end with an
//! `iret` that unblocks NMIs while the handler still owns the NMI stack, and
//! the next NMI would overwrite it.
//!
//! On SMP it stays lock-free because nothing it writes is shared with
//! another CPU's NMI: each CPU has its own rings (one producer each: an NMI
//! that nests in this CPU's handler, see `trap.S`, finds `in_nmi` set and
//! records nothing), its own `in_nmi` flag and loss counts
//! ([`CpuSampler`]); the shared [`Sampler`] fields it reads are atomics
//! written only in task context. The rings are found through a
//! `spin::Once` per CPU, whose `get` is one atomic load (no lock, no
//! waiting): they are made in task context when a sampling event opens
//! and live until the kernel stops, so no CPU's NMI can see one freed. The
//! IPI to the other CPUs is one local-APIC register write.
//!
//! Handlers attached with [`attach`] (the BPF runtime's `perf_event`
//! programs) take locks and can be probed, so they do not run in the NMI:
//! the NMI queues the sample and the interrupted registers in a second
//! lock-free ring and sends this CPU a self-IPI
//! ([`SAMPLE_HANDLERS_VECTOR`]); its handler runs them as soon as
//! interrupts are enabled, at once when the sampled code had them enabled.
//! Their `regs` are the sampled registers either way.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use ktrace_abi::trace::{
    PerfCpuValue, PerfEvent, PerfEventInfo, PerfHolder, PerfSample, PerfValue, ProbeTarget,
    SoftwareEvent,
};

use ktrace_sample_ring::SampleRing;

use super::kprobe::{self, DepthGuard, KprobeHandler};
use super::tracepoint::{self, TracepointHandler};
use crate::arch::perf_timer::{self, NMI_VECTOR, SAMPLE_HANDLERS_VECTOR};
use crate::arch::smp;
use crate::arch::{apic, text_patch, trap, PtRegs};
use crate::cpustat::{self, Stat, MAX_CPUS};
use crate::session::Session;

/// Most frames recorded per sample.
pub const MAX_STACK: usize = 32;
/// Samples buffered per CPU before new ones are lost.
pub const RING_CAPACITY: usize = 8192;

/// One sample, as handlers see it.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // every field is for handlers; the built-in ones use a few
pub struct Sample {
    /// Nanoseconds since boot.
    pub time_ns: u64,
    /// Interrupted instruction pointer.
    pub ip: u64,
    /// Interrupted task.
    pub pid: u32,
    /// CPU that took the sample.
    pub cpu: u32,
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
                "a sampling event is already open (one timer drives sampling; `ktrace perf list` shows who holds it); close it first"
            ),
        }
    }
}

/// Counts hits while enabled, per CPU: each CPU adds to its own slot, so
/// hits on several CPUs at once neither contend on one cache line nor
/// lose a count (each add is atomic). Enabled per CPU too: a group is
/// switched on each CPU by that CPU itself (see [`group`]).
struct Counter {
    enabled: [AtomicBool; MAX_CPUS],
    count: [AtomicU64; MAX_CPUS],
}

impl Counter {
    fn new() -> Counter {
        Counter {
            enabled: [const { AtomicBool::new(false) }; MAX_CPUS],
            count: [const { AtomicU64::new(0) }; MAX_CPUS],
        }
    }

    fn hit(&self) {
        let cpu = cpustat::this_slot();
        if self.enabled[cpu].load(Ordering::Relaxed) {
            self.count[cpu].fetch_add(1, Ordering::Relaxed);
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
    /// What was opened, as it runs (for [`list`]).
    spec: PerfEvent,
    /// The host client that opened it, `None` for the kernel's own (a BPF
    /// `perf_event` link's).
    holder: Option<Session>,
    /// [`close`] is taking it down: refused to every other request, but
    /// still listed, since it still holds what it opened (the timer, a
    /// kprobe) until it leaves the table.
    closing: bool,
    enabled: bool,
    /// Raw reading of each CPU when last enabled (software counters).
    base: [u64; MAX_CPUS],
    /// Accumulated over earlier enabled periods, per CPU.
    accum: [u64; MAX_CPUS],
    enabled_at_ns: u64,
    time_enabled_ns: u64,
}

static EVENTS: spin::Mutex<BTreeMap<u32, Event>> = spin::Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Words of one sample in the ring: TSC, IP, pid (low half) and stack
/// depth (high half), the task name (two words), the stack.
const SAMPLE_WORDS: usize = 5 + MAX_STACK;
/// Words of `PtRegs` (the deferred ring stores them, in Linux's order).
const REGS_WORDS: usize = ktrace_bpf_platform::regs::PT_REGS_FIELDS as usize;
/// Samples waiting for their handlers before further ones are missed.
const DEFERRED_CAPACITY: usize = 64;

/// The rings of one CPU, filled by its NMI handler.
struct CpuRings {
    /// Samples for the host. Producer: this CPU's NMI handler; consumer:
    /// [`drain`], under [`CONSUMER`].
    samples: SampleRing<SAMPLE_WORDS>,
    /// Samples and their registers waiting for the handlers. Producer:
    /// this CPU's NMI handler; consumer: this CPU's self-IPI handler
    /// (interrupts off).
    deferred: SampleRing<{ SAMPLE_WORDS + REGS_WORDS }>,
}

/// Each CPU's rings, made when the first sampling event opens while the
/// CPU is online, and kept (see the module docs on why never freed).
static RINGS: [spin::Once<CpuRings>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];
/// Serialises the rings' consumers in task context (drain, close).
static CONSUMER: spin::Mutex<()> = spin::Mutex::new(());

/// Sampling state shared with every CPU's NMI handler: atomics only,
/// written in task context.
struct Sampler {
    /// A sampling event is open (owns the rings).
    open: AtomicBool,
    /// The timer runs and NMIs record samples.
    sampling: AtomicBool,
    max_stack: AtomicU64,
    /// Timer period in TSC cycles.
    period_tsc: AtomicU64,
    /// Handlers attached (the NMI reads this instead of the handler list).
    handlers: AtomicU64,
    /// The CPU that receives the timer's NMI and passes it on to the
    /// others (the CPU that programmed the timer's route).
    timer_cpu: AtomicU32,
}

static SAMPLER: Sampler = Sampler {
    open: AtomicBool::new(false),
    sampling: AtomicBool::new(false),
    max_stack: AtomicU64::new(0),
    period_tsc: AtomicU64::new(0),
    handlers: AtomicU64::new(0),
    timer_cpu: AtomicU32::new(0),
};

/// The sampling state of one CPU, written only by that CPU's NMI handler
/// (and reset in task context while the timer is stopped).
struct CpuSampler {
    /// This CPU's NMI handler is recording (see [`close`] for the
    /// protocol).
    in_nmi: AtomicBool,
    /// Samples taken (recorded or lost to a full ring).
    taken: AtomicU64,
    /// Samples dropped because the ring was full, plus timer periods that
    /// passed without an NMI (a loaded host delays QEMU's timer and
    /// coalesces its interrupts; the TSC shows how many periods elapsed).
    lost: AtomicU64,
    /// TSC at this CPU's previous sample (0 after enable).
    last_tsc: AtomicU64,
    /// Samples whose handlers did not run because the deferred ring was
    /// full (interrupts stayed off for longer than it holds).
    deferred_missed: AtomicU64,
    /// Set by the timer CPU before it passes a tick on to this CPU;
    /// cleared by the NMI that samples it (see [`sample_due`]).
    tick_pending: AtomicBool,
    /// Ticks the timer CPU passed on to this CPU.
    ticks_forwarded: AtomicU64,
    /// NMIs that were a TLB shootdown and a sampling tick at once.
    merged: AtomicU64,
    /// Ticks passed on to this CPU whose NMI came after sampling stopped.
    late: AtomicU64,
    /// Ticks passed on to this CPU while the one before was still pending
    /// (its NMI not taken yet: the two are one NMI and one sample; the TSC
    /// gap counts the other as lost).
    coalesced: AtomicU64,
    /// NMIs this CPU's sampling handler saw (every NMI while it is
    /// installed: the self tests compare this with the CPU's NMI count).
    nmis_seen: AtomicU64,
    /// Timer CPU only: the last sample was taken by a shootdown's NMI on
    /// the guess that the tick had merged into it (see [`sample_due`]).
    guessed: AtomicBool,
    /// NMIs taken inside this CPU's sampling handler (the entry code
    /// survives them, see `trap.S`): they record nothing, and a tick one
    /// carries counts as a sample lost.
    nested: AtomicU64,
    /// The instruction pointer and flags the first nested NMI interrupted
    /// (where in the handler the CPU let it in, and whether interrupts
    /// were on there).
    nested_at: [AtomicU64; 2],
}

static CPU_SAMPLERS: [CpuSampler; MAX_CPUS] = [const {
    CpuSampler {
        in_nmi: AtomicBool::new(false),
        taken: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        last_tsc: AtomicU64::new(0),
        deferred_missed: AtomicU64::new(0),
        tick_pending: AtomicBool::new(false),
        ticks_forwarded: AtomicU64::new(0),
        merged: AtomicU64::new(0),
        late: AtomicU64::new(0),
        coalesced: AtomicU64::new(0),
        nmis_seen: AtomicU64::new(0),
        guessed: AtomicBool::new(false),
        nested: AtomicU64::new(0),
        nested_at: [const { AtomicU64::new(0) }; 2],
    }
}; MAX_CPUS];
static HANDLERS: spin::RwLock<Vec<Arc<dyn PerfHandler>>> = spin::RwLock::new(Vec::new());

/// The raw reading of `ev` on CPU `cpu`.
fn raw(ev: SoftwareEvent, cpu: usize) -> u64 {
    match ev {
        SoftwareEvent::TaskClock => crate::time::now_ns(),
        SoftwareEvent::ContextSwitches => cpustat::read(Stat::ContextSwitches, cpu),
        SoftwareEvent::Irqs => cpustat::read(Stat::Irqs, cpu),
        SoftwareEvent::TimerTicks => cpustat::read(Stat::TimerTicks, cpu),
        SoftwareEvent::PageFaults => cpustat::read(Stat::PageFaults, cpu),
        SoftwareEvent::CpuMigrations => cpustat::read(Stat::Migrations, cpu),
    }
}

/// Open an event for the kernel itself, disabled. Returns its id.
pub fn open(spec: &PerfEvent) -> Result<u32, PerfError> {
    open_held(spec, None)
}

/// Open an event for the host client `client`, disabled: it is that
/// client's ([`close_held_by`]). Returns its id.
pub fn open_for_client(spec: &PerfEvent, client: Session) -> Result<u32, PerfError> {
    open_held(spec, Some(client))
}

fn open_held(spec: &PerfEvent, holder: Option<Session>) -> Result<u32, PerfError> {
    let mut spec = spec.clone();
    let source = match &mut spec {
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
            let counter = Arc::new(Counter::new());
            let attach_id = tracepoint::attach(name, Arc::new(CountingHandler(counter.clone())))
                .map_err(|e| PerfError::Attach(format!("{e}")))?;
            Source::Tracepoint { attach_id, counter }
        }
        PerfEvent::Kprobe { target } => {
            let counter = Arc::new(Counter::new());
            let h = Arc::new(CountingHandler(counter.clone()));
            let probe = match target {
                ProbeTarget::Address(a) => kprobe::register(ktrace_kprobe::TextAddr(*a), h),
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
            if SAMPLER.open.swap(true, Ordering::AcqRel) {
                return Err(PerfError::Busy);
            }
            // The timer is stopped: nothing produces while the rings reset.
            {
                let _c = CONSUMER.lock();
                for once in &RINGS[..cpustat::online()] {
                    let rings = once.call_once(|| CpuRings {
                        samples: SampleRing::new(RING_CAPACITY),
                        deferred: SampleRing::new(DEFERRED_CAPACITY),
                    });
                    rings.samples.clear();
                }
            }
            for c in &CPU_SAMPLERS {
                c.taken.store(0, Ordering::Relaxed);
                c.lost.store(0, Ordering::Relaxed);
                c.tick_pending.store(false, Ordering::Relaxed);
                c.ticks_forwarded.store(0, Ordering::Relaxed);
                c.merged.store(0, Ordering::Relaxed);
                c.late.store(0, Ordering::Relaxed);
                c.coalesced.store(0, Ordering::Relaxed);
                c.guessed.store(false, Ordering::Relaxed);
                c.nested.store(0, Ordering::Relaxed);
                c.nested_at[0].store(0, Ordering::Relaxed);
                c.nested_at[1].store(0, Ordering::Relaxed);
            }
            *max_stack = (*max_stack).min(MAX_STACK as u32);
            SAMPLER
                .max_stack
                .store(u64::from(*max_stack), Ordering::Relaxed);
            trap::set_handler(NMI_VECTOR, on_sample_nmi);
            trap::set_handler(SAMPLE_HANDLERS_VECTOR, on_sample_handlers);
            Source::Sampling { freq_hz: *freq_hz }
        }
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) as u32;
    EVENTS.lock().insert(
        id,
        Event {
            source,
            spec,
            holder,
            closing: false,
            enabled: false,
            base: [0; MAX_CPUS],
            accum: [0; MAX_CPUS],
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

/// Start every event of `ids` at one instant of each CPU (each CPU
/// switches its own counters with interrupts off, see [`switch_this_cpu`]),
/// so no tick, interrupt or context switch falls between them on any CPU.
/// Nothing changes if one id is unknown.
pub fn enable_group(ids: &[u32]) -> Result<(), PerfError> {
    group(ids, true)
}

/// Stop every event of `ids` at one instant (see [`enable_group`]).
pub fn disable_group(ids: &[u32]) -> Result<(), PerfError> {
    group(ids, false)
}

/// What each CPU does for a group: switch its counters and read its
/// software counts, with interrupts off ([`smp::on_each_cpu`]).
struct GroupSwitch {
    on: bool,
    counters: Vec<Arc<Counter>>,
    /// The software events of the group and each CPU's reading.
    software: Vec<(SoftwareEvent, [AtomicU64; MAX_CPUS])>,
}

/// One CPU's part of a group switch. Why the counts of a group agree
/// exactly on every CPU, not only on one: each CPU flips its own flags and
/// reads its own counts while it runs nothing else (interrupts off, in the
/// call-function IPI), and every event is counted by the CPU it happens
/// on (a switch by the scheduler of that CPU, a hit by the CPU that took
/// it). So on each CPU an event falls either before the whole switch or
/// after it, for every counter of the group alike.
fn switch_this_cpu(g: &GroupSwitch) {
    let cpu = cpustat::this_slot();
    for c in &g.counters {
        c.enabled[cpu].store(g.on, Ordering::Relaxed);
    }
    for (ev, readings) in &g.software {
        readings[cpu].store(raw(*ev, cpu), Ordering::Relaxed);
    }
}

fn group(ids: &[u32], on: bool) -> Result<(), PerfError> {
    let mut events = EVENTS.lock();
    for id in ids {
        live(&events, *id)?;
    }
    let mut switch = GroupSwitch {
        on,
        counters: Vec::new(),
        software: Vec::new(),
    };
    for id in ids {
        let ev = &events[id];
        if ev.enabled == on {
            continue;
        }
        match &ev.source {
            Source::Software(s) => switch
                .software
                .push((*s, [const { AtomicU64::new(0) }; MAX_CPUS])),
            Source::Tracepoint { counter, .. } | Source::Kprobe { counter, .. } => {
                switch.counters.push(counter.clone())
            }
            Source::Sampling { .. } => {}
        }
    }
    // `EVENTS` is a task-context lock no CPU waits for with interrupts
    // off, so holding it across the IPIs cannot keep one from answering.
    smp::on_each_cpu(&switch, switch_this_cpu);
    let mut software = switch.software.iter();
    let was = crate::arch::irq_save();
    for id in ids {
        let Some(ev) = events.get_mut(id) else {
            continue;
        };
        if ev.enabled == on {
            continue;
        }
        if let Source::Software(_) = ev.source {
            let (_, readings) = software.next().expect("one reading per software event");
            for (cpu, r) in readings.iter().enumerate() {
                let r = r.load(Ordering::Relaxed);
                if on {
                    ev.base[cpu] = r;
                } else {
                    ev.accum[cpu] += r.wrapping_sub(ev.base[cpu]);
                }
            }
        }
        if on {
            start(ev);
        } else {
            stop(ev);
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
    // Counters and software readings were switched on each CPU by `group`.
    if let Source::Sampling { freq_hz } = &ev.source {
        let hz = perf_timer::exact_hz(*freq_hz);
        SAMPLER.period_tsc.store(
            (crate::time::tsc_khz() as f64 * 1000.0 / hz) as u64,
            Ordering::Relaxed,
        );
        for c in &CPU_SAMPLERS {
            c.last_tsc.store(0, Ordering::Relaxed);
        }
        // Interrupts are off (see `group`): this is the CPU whose local
        // APIC `perf_timer::start` routes the timer to.
        SAMPLER
            .timer_cpu
            .store(crate::percpu::this_cpu().id, Ordering::Relaxed);
        SAMPLER.sampling.store(true, Ordering::SeqCst);
        perf_timer::start(*freq_hz);
    }
}

/// Stop counting or sampling; the value is kept.
pub fn disable(id: u32) -> Result<(), PerfError> {
    disable_group(&[id])
}

fn stop(ev: &mut Event) {
    if !ev.enabled {
        return;
    }
    ev.enabled = false;
    ev.time_enabled_ns += crate::time::now_ns().saturating_sub(ev.enabled_at_ns);
    // Counters and software readings were switched on each CPU by `group`.
    if let Source::Sampling { .. } = ev.source {
        SAMPLER.sampling.store(false, Ordering::SeqCst);
        perf_timer::stop();
    }
}

/// Event `id`, unless it is unknown or being closed.
fn live(events: &BTreeMap<u32, Event>, id: u32) -> Result<&Event, PerfError> {
    events
        .get(&id)
        .filter(|ev| !ev.closing)
        .ok_or(PerfError::NotFound(id))
}

/// Read a counter.
pub fn read(id: u32) -> Result<PerfValue, PerfError> {
    let events = EVENTS.lock();
    let ev = live(&events, id)?;
    let now = crate::time::now_ns();
    let time_enabled_ns = ev.time_enabled_ns
        + if ev.enabled {
            now.saturating_sub(ev.enabled_at_ns)
        } else {
            0
        };
    let per_cpu = (0..cpustat::online())
        .map(|cpu| {
            let mut c = PerfCpuValue::default();
            match &ev.source {
                Source::Software(s) => {
                    c.value = ev.accum[cpu]
                        + if ev.enabled {
                            raw(*s, cpu).wrapping_sub(ev.base[cpu])
                        } else {
                            0
                        }
                }
                Source::Tracepoint { counter, .. } | Source::Kprobe { counter, .. } => {
                    c.value = counter.count[cpu].load(Ordering::Relaxed)
                }
                Source::Sampling { .. } => {
                    c.samples = CPU_SAMPLERS[cpu].taken.load(Ordering::Relaxed);
                    c.lost = CPU_SAMPLERS[cpu].lost.load(Ordering::Relaxed);
                    c.value = c.samples + c.lost;
                }
            }
            c
        })
        .collect::<Vec<_>>();
    Ok(PerfValue {
        value: per_cpu.iter().map(|c| c.value).sum(),
        time_enabled_ns,
        samples: per_cpu.iter().map(|c| c.samples).sum(),
        lost: per_cpu.iter().map(|c| c.lost).sum(),
        per_cpu,
    })
}

/// Take up to `max` buffered samples of a sampling event, oldest first;
/// also returns the lost count so far.
pub fn drain(id: u32, max: usize) -> Result<(Vec<PerfSample>, u64), PerfError> {
    {
        let events = EVENTS.lock();
        let ev = live(&events, id)?;
        if !matches!(ev.source, Source::Sampling { .. }) {
            return Err(PerfError::Invalid(format!(
                "perf event {id} is a counter, not a sampling event"
            )));
        }
    }
    let _c = CONSUMER.lock();
    let mut out = Vec::new();
    let mut w = [0u64; SAMPLE_WORDS];
    // One sample from each CPU's ring in turn, so a busy CPU cannot keep
    // another's samples waiting; then oldest first across CPUs.
    let mut empty = [false; MAX_CPUS];
    let online = cpustat::online();
    while out.len() < max && !empty[..online].iter().all(|e| *e) {
        for (cpu, rings) in RINGS[..online].iter().enumerate() {
            if out.len() >= max || empty[cpu] {
                continue;
            }
            if !rings.get().is_some_and(|r| r.samples.pop(&mut w)) {
                empty[cpu] = true;
                continue;
            }
            let depth = ((w[2] >> 32) as usize).min(MAX_STACK);
            let mut comm = [0u8; 16];
            comm[..8].copy_from_slice(&w[3].to_le_bytes());
            comm[8..].copy_from_slice(&w[4].to_le_bytes());
            out.push(PerfSample {
                time_ns: crate::time::ns_at_tsc(w[0]),
                ip: w[1],
                pid: w[2] as u32,
                cpu: cpu as u32,
                comm,
                stack: w[5..5 + depth].to_vec(),
            });
        }
    }
    out.sort_by_key(|s| s.time_ns);
    let lost = CPU_SAMPLERS
        .iter()
        .map(|c| c.lost.load(Ordering::Relaxed))
        .sum();
    Ok((out, lost))
}

/// What [`close`] takes down after it marked the event closing.
enum Teardown {
    Nothing,
    Tracepoint(u32),
    Kprobe(u32),
    Sampling,
}

/// Close an event (detaching its handler or stopping the timer).
///
/// The event leaves the table only once all it held is given back, so
/// [`list`] never shows the timer free while it is not: a client that sees
/// no sampling event listed can open one. Meanwhile it is marked closing,
/// which every other request treats as gone (and a second close too).
pub fn close(id: u32) -> Result<(), PerfError> {
    let teardown = {
        let mut events = EVENTS.lock();
        let ev = events
            .get_mut(&id)
            .filter(|ev| !ev.closing)
            .ok_or(PerfError::NotFound(id))?;
        ev.closing = true;
        stop(ev);
        match ev.source {
            Source::Software(_) => Teardown::Nothing,
            Source::Tracepoint { attach_id, .. } => Teardown::Tracepoint(attach_id),
            Source::Kprobe { probe_id, .. } => Teardown::Kprobe(probe_id),
            Source::Sampling { .. } => Teardown::Sampling,
        }
    };
    match teardown {
        Teardown::Nothing => {}
        Teardown::Tracepoint(attach_id) => {
            let _ = tracepoint::detach(attach_id);
        }
        Teardown::Kprobe(probe_id) => {
            let _ = kprobe::unregister(probe_id);
        }
        Teardown::Sampling => {
            // `stop` cleared `sampling` (SeqCst) before these loads of
            // each CPU's `in_nmi` (SeqCst); an NMI sets its CPU's `in_nmi`
            // before it loads `sampling`. So for every CPU, either its NMI
            // sees sampling off and records nothing, or this wait sees it
            // recording and lets it finish: no CPU's NMI still writes the
            // rings when they are cleared. (This task's own CPU is never
            // in its NMI handler here: an NMI finishes before the task it
            // interrupted runs again.)
            for c in &CPU_SAMPLERS {
                while c.in_nmi.load(Ordering::SeqCst) {
                    core::hint::spin_loop();
                }
            }
            {
                let _c = CONSUMER.lock();
                for rings in RINGS.iter().filter_map(spin::Once::get) {
                    rings.samples.clear();
                }
            }
            // The deferred rings are not cleared here: each has one
            // consumer, its own CPU's self-IPI handler, which empties it
            // (a sample queued before this close reaches no handler once
            // the list below is empty).
            let was = crate::arch::irq_save();
            SAMPLER.handlers.store(0, Ordering::SeqCst);
            let handlers = core::mem::take(&mut *HANDLERS.write());
            crate::arch::irq_restore(was);
            drop(handlers);
            SAMPLER.open.store(false, Ordering::Release);
        }
    }
    EVENTS.lock().remove(&id);
    Ok(())
}

/// Close every event whose host client `gone` says has gone; returns how
/// many were closed.
pub fn close_held_by(gone: impl Fn(&Session) -> bool) -> usize {
    let ids: Vec<u32> = EVENTS
        .lock()
        .iter()
        .filter(|(_, ev)| !ev.closing && ev.holder.as_ref().is_some_and(&gone))
        .map(|(id, _)| *id)
        .collect();
    // A close that finds the event gone lost a race with the client's own
    // close, which is as good.
    ids.into_iter().filter(|id| close(*id).is_ok()).count()
}

/// The open events by id (those being closed too: they hold what they
/// opened until they leave), with what they count and who holds them.
/// Reads only: nothing is opened to find out.
pub fn list() -> Vec<PerfEventInfo> {
    EVENTS
        .lock()
        .iter()
        .map(|(id, ev)| PerfEventInfo {
            id: *id,
            event: ev.spec.clone(),
            enabled: ev.enabled,
            holder: match ev.holder {
                Some(s) => PerfHolder::Client {
                    session: s.id as u32,
                    client_generation: s.generation,
                },
                None => PerfHolder::Kernel,
            },
        })
        .collect()
}

/// Run `handler` on every sample of the sampling event `id`.
#[allow(dead_code)] // attach point for the BPF runtime's perf_event programs
pub fn attach(id: u32, handler: Arc<dyn PerfHandler>) -> Result<(), PerfError> {
    let events = EVENTS.lock();
    let ev = live(&events, id)?;
    if !matches!(ev.source, Source::Sampling { .. }) {
        return Err(PerfError::Invalid(format!(
            "perf event {id} is a counter; handlers attach to sampling events"
        )));
    }
    let mut next = HANDLERS.read().clone();
    next.push(handler);
    let was = crate::arch::irq_save();
    let old = core::mem::replace(&mut *HANDLERS.write(), next);
    SAMPLER.handlers.fetch_add(1, Ordering::SeqCst);
    crate::arch::irq_restore(was);
    drop(old);
    Ok(())
}

/// Walk the frame-pointer chain from `rbp`. Reads only mapped words, so
/// it never faults (it runs in the NMI handler).
fn walk_stack(mut rbp: u64, out: &mut [u64]) -> usize {
    let mut n = 0;
    while n < out.len() && rbp != 0 && rbp.is_multiple_of(8) {
        let Some(ret) = text_patch::read_u64_if_mapped(rbp + 8) else {
            break;
        };
        if ret == 0 {
            break;
        }
        out[n] = ret;
        n += 1;
        let Some(next) = text_patch::read_u64_if_mapped(rbp) else {
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

/// The sampling NMI, on every CPU. See the module docs for what it may
/// do: atomics, this CPU's lock-free rings, mapped-only reads, one IPI to
/// the other CPUs and one self-IPI.
fn on_sample_nmi(regs: &mut PtRegs, _vector: u8) -> bool {
    let s = &SAMPLER;
    let cpu = crate::percpu::this_cpu();
    let slot = cpustat::this_slot();
    let me = &CPU_SAMPLERS[slot];
    me.nmis_seen.fetch_add(1, Ordering::Relaxed);
    // Announce, then check (the other half of `close`'s protocol). Already
    // announced: this NMI came inside this CPU's handler, which is still
    // writing its ring (one producer per ring) and will clear `in_nmi`
    // itself. It only accounts for a tick passed on to it: a sample lost,
    // or a late tick. On the timer CPU the PIT tick it may carry is not
    // passed on, and the next sample's TSC gap counts it as lost.
    if me.in_nmi.swap(true, Ordering::SeqCst) {
        if me.nested.fetch_add(1, Ordering::Relaxed) == 0 {
            me.nested_at[0].store(regs.rip, Ordering::Relaxed);
            me.nested_at[1].store(regs.eflags, Ordering::Relaxed);
        }
        let timer_cpu = cpu.id == s.timer_cpu.load(Ordering::Relaxed);
        if !timer_cpu && me.tick_pending.swap(false, Ordering::AcqRel) {
            if s.sampling.load(Ordering::SeqCst) {
                me.taken.fetch_add(1, Ordering::Relaxed);
                me.lost.fetch_add(1, Ordering::Relaxed);
            } else {
                me.late.fetch_add(1, Ordering::Relaxed);
            }
        }
        return true;
    }
    if !s.sampling.load(Ordering::SeqCst) {
        // The late tick of a stopped timer, or its copy passed on by
        // another CPU, or a TLB shootdown.
        if me.tick_pending.swap(false, Ordering::AcqRel) {
            me.late.fetch_add(1, Ordering::Relaxed);
        }
        me.in_nmi.store(false, Ordering::SeqCst);
        return true;
    }
    let tsc = crate::arch::rdtsc();
    let period = s.period_tsc.load(Ordering::Relaxed);
    let timer_cpu = cpu.id == s.timer_cpu.load(Ordering::Relaxed);
    let shootdown = crate::arch::smp::nmi_had_shootdown();
    if !sample_due(me, timer_cpu, shootdown, tsc, period) {
        // A TLB shootdown alone.
        me.in_nmi.store(false, Ordering::SeqCst);
        return true;
    }
    if shootdown {
        me.merged.fetch_add(1, Ordering::Relaxed);
    }
    // The timer's NMI comes to one CPU; it passes it on so that every
    // CPU samples. The others' NMIs are copies and are not passed on.
    let online = crate::percpu::cpu_count();
    if timer_cpu && online > 1 {
        for c in (0..online as usize).filter(|&c| c != slot && c < MAX_CPUS) {
            if CPU_SAMPLERS[c].tick_pending.swap(true, Ordering::AcqRel) {
                CPU_SAMPLERS[c].coalesced.fetch_add(1, Ordering::Relaxed);
            }
            CPU_SAMPLERS[c]
                .ticks_forwarded
                .fetch_add(1, Ordering::Relaxed);
        }
        apic::send_nmi_all_but_self();
    }
    let last = me.last_tsc.swap(tsc, Ordering::Relaxed);
    if last != 0 && period != 0 {
        let periods = (tsc.wrapping_sub(last) + period / 2) / period;
        me.lost
            .fetch_add(periods.saturating_sub(1), Ordering::Relaxed);
    }
    me.taken.fetch_add(1, Ordering::Relaxed);
    // A CPU that came online after the event opened has no rings: its
    // samples are counted, as lost.
    let Some(rings) = RINGS[slot].get() else {
        me.lost.fetch_add(1, Ordering::Relaxed);
        me.in_nmi.store(false, Ordering::SeqCst);
        return true;
    };
    let comm = cpu.current_comm();
    let mut rec = [0u64; SAMPLE_WORDS + REGS_WORDS];
    let max_stack = (s.max_stack.load(Ordering::Relaxed) as usize).min(MAX_STACK);
    let depth = walk_stack(regs.rbp, &mut rec[5..5 + max_stack]);
    rec[0] = tsc;
    rec[1] = regs.rip;
    rec[2] = u64::from(cpu.current_pid.load(Ordering::Relaxed)) | (depth as u64) << 32;
    rec[3] = u64::from_le_bytes([
        comm[0], comm[1], comm[2], comm[3], comm[4], comm[5], comm[6], comm[7],
    ]);
    rec[4] = u64::from_le_bytes([
        comm[8], comm[9], comm[10], comm[11], comm[12], comm[13], comm[14], comm[15],
    ]);
    if !rings.samples.push(&rec[..SAMPLE_WORDS]) {
        me.lost.fetch_add(1, Ordering::Relaxed);
    }
    if s.handlers.load(Ordering::SeqCst) != 0 {
        rec[SAMPLE_WORDS..].copy_from_slice(&regs.to_words());
        if rings.deferred.push(&rec) {
            apic::self_ipi(SAMPLE_HANDLERS_VECTOR);
        } else {
            me.deferred_missed.fetch_add(1, Ordering::Relaxed);
        }
    }
    me.in_nmi.store(false, Ordering::SeqCst);
    true
}

/// Whether this NMI carries a sampling tick. An NMI has no source, and
/// one raised while another is pending merges into it, so a TLB
/// shootdown's NMI may carry a tick too: each source is checked on every
/// NMI (the shootdown by `smp::on_nmi`, the tick here).
///
/// - On the other CPUs the tick is a copy the timer CPU passes on, which
///   sets `tick_pending` before sending it: exact. A copy that merged
///   into a shootdown's NMI is sampled there; one held behind it finds
///   the flag clear and is not sampled twice.
/// - On the timer CPU the tick is the PIT's own NMI, with no flag to
///   read. A shootdown's NMI there samples when a full period has passed
///   since the last sample (the tick in between has fired: it merged
///   into this NMI, or it is held behind it); in the second case the
///   held tick arrives well within half a period of that sample, and is
///   skipped. A PIT tick the host delayed by more than half a period
///   past a shootdown's guess is sampled twice (a period's loss count
///   may then be one short): exact counting needs a flag the hardware
///   does not give.
fn sample_due(me: &CpuSampler, timer_cpu: bool, shootdown: bool, tsc: u64, period: u64) -> bool {
    if !timer_cpu {
        return me.tick_pending.swap(false, Ordering::AcqRel);
    }
    let since = tsc.wrapping_sub(me.last_tsc.load(Ordering::Relaxed));
    let first = me.last_tsc.load(Ordering::Relaxed) == 0;
    if shootdown {
        let due = !first && period != 0 && since >= period;
        if due {
            me.guessed.store(true, Ordering::Relaxed);
        }
        return due;
    }
    !(me.guessed.swap(false, Ordering::Relaxed) && since < period / 2)
}

/// One CPU's sampling NMIs since the sampling event opened (the self
/// tests compare them).
#[allow(dead_code)] // the self tests
#[derive(Debug, Clone, Copy)]
pub struct TickCounts {
    /// Ticks the timer CPU passed on to this CPU.
    pub forwarded: u64,
    /// Of those, ones whose NMI came after sampling stopped.
    pub late: u64,
    /// Of those, ones passed on while the one before was still pending.
    pub coalesced: u64,
    /// Samples taken (recorded, or lost to a full ring).
    pub taken: u64,
    /// Samples taken by an NMI that was a TLB shootdown as well.
    pub merged: u64,
    /// NMIs the sampling handler saw (since boot).
    pub nmis_seen: u64,
    /// Of those, NMIs taken inside the sampling handler (nested).
    pub nested: u64,
    /// Instruction pointer and flags the first nested one interrupted.
    pub nested_at: (u64, u64),
}

/// [`TickCounts`] of CPU `cpu`.
#[allow(dead_code)] // the self tests
pub fn tick_counts(cpu: usize) -> TickCounts {
    let c = &CPU_SAMPLERS[cpu.min(MAX_CPUS - 1)];
    TickCounts {
        forwarded: c.ticks_forwarded.load(Ordering::Relaxed),
        late: c.late.load(Ordering::Relaxed),
        coalesced: c.coalesced.load(Ordering::Relaxed),
        taken: c.taken.load(Ordering::Relaxed),
        merged: c.merged.load(Ordering::Relaxed),
        nmis_seen: c.nmis_seen.load(Ordering::Relaxed),
        nested: c.nested.load(Ordering::Relaxed),
        nested_at: (
            c.nested_at[0].load(Ordering::Relaxed),
            c.nested_at[1].load(Ordering::Relaxed),
        ),
    }
}

/// The CPU that takes the timer's NMI and passes it on.
#[allow(dead_code)] // the self tests
pub fn timer_cpu() -> u32 {
    SAMPLER.timer_cpu.load(Ordering::Relaxed)
}

/// The self-IPI: run the attached handlers on the samples this CPU's NMI
/// queued, with their sampled registers (an ordinary interrupt:
/// interrupts off).
fn on_sample_handlers(_regs: &mut PtRegs, _vector: u8) -> bool {
    let slot = cpustat::this_slot();
    let mut w = [0u64; SAMPLE_WORDS + REGS_WORDS];
    let missed = CPU_SAMPLERS[slot]
        .deferred_missed
        .swap(0, Ordering::Relaxed);
    if missed > 0 {
        if let Some(handlers) = HANDLERS.try_read() {
            for _ in 0..missed {
                for h in handlers.iter() {
                    h.missed();
                }
            }
        }
    }
    let Some(rings) = RINGS[slot].get() else {
        return true;
    };
    while rings.deferred.pop(&mut w) {
        let depth = ((w[2] >> 32) as usize).min(MAX_STACK);
        let mut sample = Sample {
            time_ns: crate::time::ns_at_tsc(w[0]),
            ip: w[1],
            pid: w[2] as u32,
            cpu: crate::percpu::this_cpu().id,
            comm: [0; 16],
            stack: [0; MAX_STACK],
            depth: depth as u8,
        };
        sample.comm[..8].copy_from_slice(&w[3].to_le_bytes());
        sample.comm[8..].copy_from_slice(&w[4].to_le_bytes());
        sample.stack[..depth].copy_from_slice(&w[5..5 + depth]);
        let regs = <&[u64; REGS_WORDS]>::try_from(&w[SAMPLE_WORDS..])
            .map(PtRegs::from_words)
            .unwrap_or_default();
        if let Some(_g) = DepthGuard::enter() {
            let handlers = HANDLERS.read();
            for h in handlers.iter() {
                h.sample(&sample, &regs);
            }
        } else if let Some(handlers) = HANDLERS.try_read() {
            DepthGuard::report_miss(|| {
                for h in handlers.iter() {
                    h.missed();
                }
            });
        }
    }
    true
}
