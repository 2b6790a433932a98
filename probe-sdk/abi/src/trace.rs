//! Kprobes, kretprobes, tracepoints and perf events.
//!
//! The host lists and manages the kernel's attach points here. Before BPF
//! programs exist (and for tests), a built-in *counting handler* can be
//! attached to a kprobe, a kretprobe or a tracepoint: it counts hits and
//! keeps the last argument / return value / record it saw. Perf events are
//! opened, enabled, read and closed like Linux's `perf_event_open`
//! file descriptors, by id. Every refusal is an error frame whose message
//! names the reason (e.g. "… is blacklisted: interrupt entry").

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Where a probe goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeTarget {
    /// A kernel text address.
    Address(u64),
    /// A function by demangled path (without hash), plus a byte offset.
    Symbol { name: String, offset: u64 },
}

/// Kind of probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeKind {
    /// A breakpoint on one instruction; the handler sees the registers
    /// before it runs.
    Kprobe,
    /// A return probe: the handler sees the return value and the entry
    /// time. `maxactive` calls may be tracked at once (0 = default).
    Kretprobe { maxactive: u32 },
}

/// Requests to the trace subsystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TraceRequest {
    /// List registered kprobes and kretprobes: [`TraceResponse::Probes`].
    ListProbes,
    /// Register a probe with the built-in counting handler:
    /// [`TraceResponse::ProbeAdded`].
    AddProbe {
        target: ProbeTarget,
        kind: ProbeKind,
    },
    /// Unregister a probe by id.
    RemoveProbe { id: u32 },
    /// The blacklist (ranges and symbol prefixes with reasons):
    /// [`TraceResponse::Blacklist`].
    ListBlacklist,
    /// Every tracepoint with its format: [`TraceResponse::Tracepoints`].
    ListTracepoints,
    /// Attach the counting handler to `category:name`:
    /// [`TraceResponse::Attached`].
    AttachTracepoint { name: String },
    /// Detach a tracepoint handler by attachment id.
    DetachTracepoint { id: u32 },
    /// Open a perf event (disabled): [`TraceResponse::PerfOpened`].
    PerfOpen { event: PerfEvent },
    /// Start counting / sampling.
    PerfEnable { id: u32 },
    /// Stop counting / sampling (the value is kept).
    PerfDisable { id: u32 },
    /// Start several events at one instant (no interrupt or context switch
    /// in between), so counters of the same thing agree; all or nothing.
    PerfEnableGroup { ids: Vec<u32> },
    /// Stop several events at one instant; all or nothing.
    PerfDisableGroup { ids: Vec<u32> },
    /// Read a counter: [`TraceResponse::PerfValue`].
    PerfRead { id: u32 },
    /// Take up to `max` samples of a sampling event:
    /// [`TraceResponse::PerfSamples`].
    PerfDrain { id: u32, max: u32 },
    /// Close a perf event.
    PerfClose { id: u32 },
    /// The return-probe instance pool shared by all kretprobes:
    /// [`TraceResponse::RetprobePool`].
    RetprobePool,
    /// Jump optimisation of kprobes, kernel-wide (Linux's
    /// `debug.kprobes-optimization`): `Some` turns it on or off (every
    /// probe is optimised or un-optimised at once), `None` only asks:
    /// [`TraceResponse::Optimisation`].
    Optimisation { on: Option<bool> },
    /// The perf events open now and who holds them, read-only (nothing is
    /// opened to find out): [`TraceResponse::PerfEvents`].
    ListPerf,
}

/// How a probed instruction runs when the probe fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeMode {
    /// A breakpoint trap, then the instruction is emulated or
    /// single-stepped out of line (a second trap).
    Int3,
    /// A breakpoint trap, then the instruction's copy jumps back by itself.
    Boosted,
    /// A `jmp` to a detour that calls the handlers: no trap.
    Optimised,
}

/// One registered probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    pub id: u32,
    pub kind: ProbeKind,
    pub addr: u64,
    /// Demangled function path, `?` when unknown.
    pub symbol: String,
    /// Offset of `addr` in the function.
    pub offset: u64,
    /// Times the handler ran (kretprobes: returns seen).
    pub hits: u64,
    /// Times the probe fired but the handler did not run: recursion
    /// (a probe hit inside a probe handler) or, for kretprobes, all
    /// `maxactive` instances in use.
    pub missed: u64,
    /// How the probe runs: `int3`, boosted or jump-optimised.
    pub mode: ProbeMode,
    /// Why it is not jump-optimised (empty when it is).
    pub not_optimised: String,
    /// Hits that took the boosted path.
    pub boosted_hits: u64,
    /// Who handles it: `count`, `bpf`, `native`.
    pub handler: String,
    /// Counting handler: the last first argument (rdi) at entry, or the
    /// last return value (rax) for a kretprobe.
    pub last_value: u64,
    /// Counting handler on a kretprobe: total nanoseconds between entry and
    /// return over all hits.
    pub total_ns: u64,
    /// Kretprobes: calls entered and not yet returned, each holding a pool
    /// instance (a task that exited inside the function holds its
    /// instances until it is reaped). Always 0 for kprobes.
    pub in_flight: u32,
}

/// The instance pool shared by all return probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetprobePool {
    /// Instances in all.
    pub size: u32,
    /// Instances free to claim now.
    pub free: u32,
    /// Instances held by calls still in flight on live stacks for return
    /// probes that were removed: given back when those calls return.
    pub held_by_removed: u32,
}

/// One blacklist rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlacklistEntry {
    /// Address range (`end` exclusive); both 0 for a symbol prefix rule.
    pub start: u64,
    pub end: u64,
    /// Demangled symbol prefix, or the symbol of the range when known.
    pub symbol: String,
    pub reason: String,
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracepointField {
    pub name: String,
    pub type_name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A tracepoint and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracepointInfo {
    pub category: String,
    pub name: String,
    /// Record size in bytes.
    pub size: u32,
    pub fields: Vec<TracepointField>,
    /// Attachments holding it enabled.
    pub refcount: u32,
    /// Patched call sites in kernel text (0 when no code emits it yet).
    pub sites: u32,
    /// Events emitted while enabled.
    pub hits: u64,
}

/// A software counter (Linux `PERF_COUNT_SW_*` where one exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SoftwareEvent {
    /// Nanoseconds of CPU time while enabled (`task-clock` / `cpu-clock`).
    TaskClock,
    /// Context switches.
    ContextSwitches,
    /// External interrupts (vectors ≥ 32).
    Irqs,
    /// Timer interrupts.
    TimerTicks,
    /// Page faults taken by the kernel.
    PageFaults,
    /// Times a task ran on a different CPU than the time before
    /// (`cpu-migrations`).
    CpuMigrations,
}

/// A hardware counter (Linux `PERF_COUNT_HW_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HardwareEvent {
    CpuCycles,
    Instructions,
    CacheMisses,
    BranchMisses,
}

/// Lowest sampling frequency: the PIT's 16-bit divisor of 1.193182 MHz
/// gives no slower interrupt than 18.2 Hz.
pub const SAMPLE_MIN_HZ: u32 = 19;
/// Highest sampling frequency the kernel accepts.
pub const SAMPLE_MAX_HZ: u32 = 20_000;

/// What a perf event counts or samples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PerfEvent {
    Software(SoftwareEvent),
    /// Refused with `NotSupported` where the CPU has no PMU (QEMU TCG).
    Hardware(HardwareEvent),
    /// Count hits of `category:name`.
    Tracepoint {
        name: String,
    },
    /// Count hits of a kprobe placed for this event.
    Kprobe {
        target: ProbeTarget,
    },
    /// Sample the interrupted context `freq_hz` times a second (a timer
    /// separate from the scheduler tick), with a frame-pointer call chain
    /// of up to `max_stack` frames.
    Sampling {
        freq_hz: u32,
        max_stack: u32,
    },
}

/// A counter value, as `perf stat` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfValue {
    /// The sum over CPUs of `per_cpu[..].value`.
    pub value: u64,
    /// Nanoseconds the event was enabled.
    pub time_enabled_ns: u64,
    /// Sampling events: samples taken (including lost ones).
    pub samples: u64,
    /// Sampling events: samples dropped because the buffer was full, plus
    /// timer periods that elapsed without an interrupt (coalesced by a
    /// loaded host). For sampling events `value` = `samples + lost`.
    pub lost: u64,
    /// The same per CPU, indexed by CPU number, one entry per online CPU
    /// (`perf stat -A`); each field sums to the one above.
    pub per_cpu: Vec<PerfCpuValue>,
}

/// What one CPU counted of a [`PerfValue`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfCpuValue {
    pub value: u64,
    pub samples: u64,
    pub lost: u64,
}

/// One sample of a sampling event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfSample {
    /// Nanoseconds since boot.
    pub time_ns: u64,
    /// Interrupted instruction pointer.
    pub ip: u64,
    pub pid: u32,
    /// CPU that took the sample.
    pub cpu: u32,
    /// Task name, NUL padded.
    pub comm: [u8; 16],
    /// Return addresses from the frame-pointer chain, innermost first
    /// (the interrupted `ip` is not repeated).
    pub stack: Vec<u64>,
}

/// Who holds an open perf event (and closes it, by going).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PerfHolder {
    /// A host client, by its control session and generation (as its
    /// [`crate::vm::HelloReply`] names them): the event is closed when
    /// that client goes, however it goes.
    Client {
        session: u32,
        client_generation: u64,
    },
    /// The kernel: the sampling event behind a BPF `perf_event` program's
    /// link (`ktrace link list`), closed when the link is detached.
    Kernel,
}

/// One open perf event, as [`TraceRequest::ListPerf`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfEventInfo {
    pub id: u32,
    /// What it counts or samples, as the kernel runs it: as opened, but a
    /// sampling event's `max_stack` is capped at what the kernel records.
    pub event: PerfEvent,
    /// Counting or sampling now.
    pub enabled: bool,
    pub holder: PerfHolder,
}

/// Answers from the trace subsystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TraceResponse {
    Probes(Vec<ProbeInfo>),
    ProbeAdded(ProbeInfo),
    Blacklist(Vec<BlacklistEntry>),
    Tracepoints(Vec<TracepointInfo>),
    /// Attachment id of a tracepoint handler.
    Attached {
        id: u32,
    },
    PerfOpened {
        id: u32,
    },
    PerfValue(PerfValue),
    PerfSamples {
        samples: Vec<PerfSample>,
        lost: u64,
    },
    RetprobePool(RetprobePool),
    /// Whether jump optimisation is on, and how many probes are optimised.
    Optimisation {
        on: bool,
        optimised: u32,
    },
    /// Answer to [`TraceRequest::ListPerf`], by id.
    PerfEvents(Vec<PerfEventInfo>),
}
