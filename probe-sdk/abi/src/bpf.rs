//! BPF programs, maps, links and event streams: the requests of the
//! kernel's BPF runtime, and the load requests the host's object loader
//! (`ktrace-object`) makes from eBPF objects.

use serde::{Deserialize, Serialize};

/// Requests to the BPF runtime. Maps, programs and links are named by the
/// ids the kernel returned when creating them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BpfRequest {
    /// Create an object's maps, verify and load its programs and (with
    /// `attach`) attach each where its section says; all or nothing.
    /// Answer: [`BpfResponse::Object`], or an error carrying the verifier
    /// message of the first rejected program.
    ///
    /// What a request creates (an object here, a map, a program or a link
    /// below) belongs to the session that asked and is freed when that
    /// session's client goes, however it goes, unless it is pinned.
    LoadObject {
        /// The object's name (its file or crate), shown in listings.
        name: String,
        object: Box<ObjectLoad>,
        attach: bool,
        options: LoadOptions,
        /// Also pin the object under this name: it then outlives the
        /// session until [`BpfRequest::Unpin`] or
        /// [`BpfRequest::ObjectUnload`]. A name already pinned is refused.
        pin: Option<String>,
    },
    /// Every object (what one load, map create, program load or attach
    /// made) with its owner. Answer: [`BpfResponse::Objects`].
    ObjectList,
    /// Detach, unload and free a whole object: by pin name, by object id,
    /// or by object name when one object has it. Answer:
    /// [`BpfResponse::Objects`] with what was freed.
    ObjectUnload { object: String },
    /// Remove a pin. The object is freed unless a live session holds it.
    /// Answer: [`BpfResponse::Objects`] with the object as it is now
    /// (freed when it has neither pin nor session).
    Unpin { name: String },
    /// Create one map. Answer: [`BpfResponse::Map`].
    MapCreate(Box<MapDefinition>),
    /// Answer: [`BpfResponse::Value`] (per-CPU maps: one 8-byte-padded
    /// value per CPU).
    MapLookup { map: u32, key: Vec<u8> },
    /// `BPF_ANY` / `BPF_NOEXIST` / `BPF_EXIST` in `flags`. Answer: `Ok`.
    MapUpdate {
        map: u32,
        key: Vec<u8>,
        value: Vec<u8>,
        flags: u64,
    },
    /// Answer: `Ok`.
    MapDelete { map: u32, key: Vec<u8> },
    /// The key after `key` (the first for `None`). Answer:
    /// [`BpfResponse::Key`], or a `NotFound` error (errno -2) at the end.
    MapNextKey { map: u32, key: Option<Vec<u8>> },
    /// Up to `max` entries after `after`. Answer: [`BpfResponse::Entries`].
    MapDump {
        map: u32,
        after: Option<Vec<u8>>,
        max: u32,
    },
    /// Many updates in one round trip; stops at the first failure.
    /// Answer: [`BpfResponse::Batch`].
    MapUpdateBatch {
        map: u32,
        entries: Vec<MapEntry>,
        flags: u64,
    },
    /// Many deletes in one round trip. Answer: [`BpfResponse::Batch`].
    MapDeleteBatch { map: u32, keys: Vec<Vec<u8>> },
    /// Answer: [`BpfResponse::Maps`].
    MapList,
    /// Drop the map from the table (programs using it keep it alive).
    MapFree { map: u32 },
    /// Verify and load one program using already created maps
    /// (`maps[i]` is the id for map index `i`). Answer: [`BpfResponse::Program`].
    ProgLoad {
        prog: Box<ProgramLoad>,
        maps: Vec<u32>,
        options: LoadOptions,
    },
    /// Answer: [`BpfResponse::Programs`].
    ProgList,
    /// Answer: [`BpfResponse::ProgramDump`].
    ProgDump { prog: u32 },
    /// Detach the program's links and unload it.
    ProgUnload { prog: u32 },
    /// Run a program on a context the host supplies, `repeat` times
    /// (Linux's `BPF_PROG_TEST_RUN`). Answer: [`BpfResponse::TestRun`].
    ProgTestRun {
        prog: u32,
        ctx: Vec<u8>,
        repeat: u32,
    },
    /// Attach a loaded program. Answer: [`BpfResponse::Link`].
    Attach {
        prog: u32,
        target: Box<AttachTarget>,
        kretprobe: bool,
    },
    /// Detach a link. Answer: `Ok`.
    Detach { link: u32 },
    /// Answer: [`BpfResponse::Links`].
    LinkList,
    /// Start (or stop, with an empty list) pushing the records of these
    /// ring buffer / perf event array maps, plus `trace_printk` output, as
    /// [`BpfResponse::Events`] frames with id 0. Answer: `Ok`.
    ///
    /// Ordering: the answer comes after every batch the kernel collected
    /// under the session's previous subscription (batches it already took
    /// out of the streams are pushed first, or dropped if the client left).
    /// So after the answer to an unsubscribe no batch of that session
    /// arrives, and what is still in the streams can be taken with
    /// [`BpfRequest::EventsPoll`]; after a subscribe, batches of the new set
    /// may come before the answer.
    ///
    /// A client that stops reading falls behind: the kernel keeps the one
    /// batch the link could not take and takes no more records out of the
    /// session's streams until it went out, so they fill and count their
    /// losses (each batch carries the streams' cumulative lost counts);
    /// `vm::SystemInfo::event_sessions` counts per session what was
    /// pushed, held back and dropped.
    EventsSubscribe { maps: Vec<u32>, printk: bool },
    /// Take up to `max` pending records now. Answer: [`BpfResponse::Events`].
    EventsPoll {
        maps: Vec<u32>,
        printk: bool,
        max: u32,
    },
    /// Answer: [`BpfResponse::Limits`].
    GetLimits,
    /// Change the limits (refused if current use already exceeds them).
    SetLimits(Box<Limits>),
    /// Call the kernel's probe target function `kernel::bpf::testing::target`
    /// `count` times (tests and benchmarks attach to it). Answer:
    /// [`BpfResponse::Triggered`].
    Trigger { count: u32, arg: u64 },
    /// Like `Trigger`, from a new kernel task running alongside the
    /// control channel (so the host can detach while the target fires).
    /// Answer: `Ok` at once.
    TriggerSpawn { count: u32 },
    /// Measure per-hit cost of what is attached to the probe target:
    /// calls it `count` times with interrupts off and reports TSC cycles.
    /// Answer: [`BpfResponse::Bench`].
    Bench { count: u32 },
    /// How programs loaded without [`LoadOptions::engine`] run from now on
    /// (`Some`), or only ask (`None`); programs already loaded keep theirs
    /// (Linux's `net.core.bpf_jit_enable` / `bpf_jit_harden`). Answer:
    /// [`BpfResponse::DefaultEngine`] with the setting now.
    DefaultEngine { set: Option<Engine> },
    /// The trigger benchmark (the shape of Linux's `bench trig-*`): one
    /// kernel task pinned to each CPU of `cpus` (distinct, online, at least
    /// one) makes trigger calls in a loop for `ms` milliseconds (1 to
    /// 10,000), all starting together. One call is one call of the probe
    /// target plus one `ktrace:bench` tracepoint site, so a kprobe, a
    /// kretprobe or a tracepoint program each fire once per call. Answer:
    /// [`BpfResponse::TriggerBench`].
    TriggerBench { cpus: Vec<u32>, ms: u32 },
    /// Whether programs' runs are timed into [`ProgInfo::run_time_ns`]:
    /// turns it on or off (`Some`), or only asks (`None`). Off by default,
    /// as Linux's `kernel.bpf_stats_enabled`: the timing is a large part of
    /// what a short program costs. [`ProgInfo::run_count`] and
    /// [`ProgInfo::insns_executed`] are kept either way. Answer:
    /// [`BpfResponse::RunTimeStats`] with the setting now.
    RunTimeStats { set: Option<bool> },
}

/// Answers from the BPF runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BpfResponse {
    Object(Box<ObjectLoaded>),
    Map(Box<MapInfo>),
    Maps(Vec<MapInfo>),
    Value(Vec<u8>),
    Key(Vec<u8>),
    Entries {
        entries: Vec<MapEntry>,
        more: bool,
    },
    /// `done` items succeeded; `error` says why the next one failed.
    Batch {
        done: u32,
        error: Option<crate::ErrorReply>,
    },
    Program(Box<ProgInfo>),
    Programs(Vec<ProgInfo>),
    ProgramDump(Box<ProgDump>),
    TestRun(Box<TestRunResult>),
    Link(Box<LinkInfo>),
    Links(Vec<LinkInfo>),
    Events(EventBatch),
    Objects(Vec<ObjectInfo>),
    Limits {
        limits: Box<Limits>,
        usage: Box<Usage>,
    },
    Triggered {
        count: u32,
        result: u64,
    },
    Bench(Box<BenchResult>),
    DefaultEngine(Engine),
    /// The verifier rejected a program of a load: nothing was loaded.
    Rejected(Box<Rejected>),
    TriggerBench(Box<TriggerBenchResult>),
    /// Whether runs are timed now.
    RunTimeStats(bool),
}

/// A program the verifier refused, with everything it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub program: String,
    pub section: String,
    pub report: VerifierReport,
}

// ---------------------------------------------------------------------------
// Load requests: what the host's object loader produces from an eBPF ELF
// object and the in-kernel runtime accepts.
// ---------------------------------------------------------------------------

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

/// `src_reg` of an `ld_imm64` whose `imm` is an index into
/// [`ObjectLoad::maps`]: the instruction loads that map's pointer
/// (Linux's `BPF_PSEUDO_MAP_IDX`).
pub const PSEUDO_MAP_IDX: u8 = 5;
/// `src_reg` of an `ld_imm64` whose first `imm` is a map index and second
/// `imm` an offset into the map's single value: the instruction loads the
/// address of that byte (Linux's `BPF_PSEUDO_MAP_IDX_VALUE`; used for
/// `.rodata`/`.data`/`.bss`).
pub const PSEUDO_MAP_IDX_VALUE: u8 = 6;
/// `src_reg` of a `call` to a BPF function in the same program, `imm` being
/// the pc-relative offset (Linux's `BPF_PSEUDO_CALL`).
pub const PSEUDO_CALL: u8 = 1;

/// Linux map type numbers (`enum bpf_map_type`), from the platform
/// description.
pub use ktrace_bpf_platform::map_type;

/// One map to create before the programs are loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDefinition {
    /// The map's symbol (`COUNTS`), or `.rodata`/`.data`/`.bss`.
    pub name: String,
    /// A Linux map type number ([`map_type`]).
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `BPF_F_*` creation flags.
    pub flags: u32,
    /// Initial contents of the single value of a global-data array map
    /// (`.rodata`, `.data`); empty for other maps (`.bss` starts zeroed).
    pub initial_value: Vec<u8>,
    /// Programs may not write it (`.rodata`).
    pub read_only: bool,
    /// Declared key/value (or record) types, when the object's debug
    /// information named them; checked against the sizes above.
    pub types: crate::types::MapTypes,
}

/// Kinds of program, by the section they came from: the platform
/// description's type, sent as it is.
pub use ktrace_bpf_platform::ProgramType;

/// Where a program attaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachTarget {
    /// A kprobe or kretprobe target.
    Kprobe {
        /// As written in the section name (path, suffix, glob, `file:line`,
        /// `path+0x10`).
        spec: String,
        /// Where it resolved in the kernel ELF: one point, or several for a
        /// glob. Empty until the host resolves it.
        points: Vec<KprobePoint>,
    },
    /// A static tracepoint.
    Tracepoint { category: String, name: String },
    /// A perf event; which one is chosen when attaching (the sampling
    /// timer at 99 Hz).
    PerfEvent,
    /// The sampling timer at `sample_hz` samples a second (bpftrace's
    /// `profile:hz:N`), from [`crate::trace::SAMPLE_MIN_HZ`] to
    /// [`crate::trace::SAMPLE_MAX_HZ`].
    PerfEventHz { sample_hz: u32 },
}

impl AttachTarget {
    /// What the program's context depends on (the platform description's
    /// view of the target).
    pub fn platform(&self) -> ktrace_bpf_platform::Attach<'_> {
        match self {
            AttachTarget::Kprobe { .. } => ktrace_bpf_platform::Attach::Kprobe,
            AttachTarget::Tracepoint { category, name } => {
                ktrace_bpf_platform::Attach::Tracepoint { category, name }
            }
            AttachTarget::PerfEvent | AttachTarget::PerfEventHz { .. } => {
                ktrace_bpf_platform::Attach::PerfEvent
            }
        }
    }
}

/// One resolved kprobe address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KprobePoint {
    /// The probed instruction.
    pub address: u64,
    /// The demangled function holding it.
    pub function: String,
    /// `address` minus the function's start.
    pub offset: u64,
}

/// Source position of one instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineInfo {
    /// Instruction index (in 8-byte slots) in [`ProgramLoad::insns`].
    pub insn: u32,
    /// Index into [`LineTable::files`].
    pub file: u32,
    pub line: u32,
    pub column: u32,
    /// When the instruction is code inlined from another function: the
    /// call sites that led to it, innermost first (the call of the inlined
    /// function, then the call of the function that called it, ...).
    pub call_sites: Vec<CallSite>,
}

/// A call of an inlined function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSite {
    /// Index into [`LineTable::files`].
    pub file: u32,
    pub line: u32,
}

/// Instruction → source line, for verifier messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineTable {
    pub files: Vec<String>,
    /// Sorted by `insn`; a row covers instructions up to the next row's.
    pub rows: Vec<LineInfo>,
}

/// Most heap the kernel's verifier gives one program's states (less when
/// the heap has less to spare). Linux bounds its verifier by instructions
/// processed; a kernel whose heap is one fixed block must bound the states'
/// memory as well. `ktrace check` uses the same bound.
pub const MAX_VERIFIER_STATE_BYTES: usize = 48 << 20;

/// One program to verify and load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramLoad {
    /// The function's symbol (`submit_bio`).
    pub name: String,
    /// The ELF section it came from.
    pub section: String,
    pub prog_type: ProgramType,
    pub attach: AttachTarget,
    /// Little-endian instructions, 8 bytes each; map references are
    /// `ld_imm64` with `src_reg` [`PSEUDO_MAP_IDX`] / [`PSEUDO_MAP_IDX_VALUE`],
    /// calls to subprograms (appended after the main body) use
    /// [`PSEUDO_CALL`].
    pub insns: Vec<u8>,
    /// The object's license string.
    pub license: String,
    /// Source lines, when the object carried DWARF line tables.
    pub lines: Option<LineTable>,
}

/// Everything one object file asks the kernel to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLoad {
    pub maps: Vec<MapDefinition>,
    pub programs: Vec<ProgramLoad>,
}

// ---------------------------------------------------------------------------
// Runtime: maps, programs, links, event streams, limits.
// ---------------------------------------------------------------------------

/// How to load programs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadOptions {
    /// Verifier log level: 0 none, 1 paths and branch states, 2 every instruction.
    pub log_level: u8,
    /// Instructions one run may execute before it is stopped (0: the
    /// kernel's default).
    pub insn_budget: u64,
    /// How the programs run (`None`: the kernel's default, JIT-compiled
    /// unless [`BpfRequest::DefaultEngine`] changed it).
    pub engine: Option<Engine>,
}

/// How a program runs: compiled to native code or interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Engine {
    /// JIT-compiled (the default).
    Jit,
    /// JIT-compiled with constant blinding: immediates never appear
    /// verbatim in executable memory (Linux's `bpf_jit_harden`).
    JitHardened,
    /// Interpreted.
    Interpreter,
}

/// How a loaded program runs, as `ktrace prog show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecInfo {
    /// JIT-compiled into `native_bytes` bytes of code, with
    /// `inlined_lookups` array map lookups computed inline (no helper call).
    Jit {
        native_bytes: u32,
        blinded: bool,
        inlined_lookups: u32,
    },
    /// Interpreted, and why (asked for, or the JIT refused the program).
    Interpreter { why: String },
}

/// A key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A map the kernel holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapInfo {
    pub id: u32,
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// Size of a value as lookups return it (per-CPU maps: one padded copy per CPU).
    pub host_value_size: u32,
    /// Bytes of preallocated storage.
    pub memory_bytes: u64,
    /// Live entries, for types that keep a count.
    pub entries: Option<u64>,
    /// Ring buffers and perf arrays: records submitted, lost, consumed.
    pub submitted: u64,
    pub lost: u64,
    pub consumed: u64,
    /// Perf event arrays: records lost on each CPU's buffer, by CPU (their
    /// sum is `lost`); empty for other maps.
    pub lost_per_cpu: Vec<u64>,
    /// Program operations refused because the map stayed locked: by the
    /// same CPU (a probe inside map code) or by another CPU past the
    /// kernel's wait bound. Lookups then return NULL, updates `-EBUSY`.
    pub busy: u64,
    /// Programs holding the map.
    pub programs: Vec<u32>,
    /// The types the map was created with (empty when none were declared).
    pub types: crate::types::MapTypes,
}

/// What the verifier said about one program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierReport {
    /// Whether it was accepted.
    pub accepted: bool,
    /// The rejection, formatted exactly as `ktrace check` prints it.
    pub message: Option<String>,
    /// The verifier log at the requested level.
    pub log: String,
    pub insns_processed: u64,
    pub states_stored: u64,
    pub peak_states: u64,
    pub states_pruned: u64,
    /// Deepest stack use per subprogram.
    pub stack_depth: Vec<u32>,
    pub time_ns: u64,
}

/// A loaded program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgInfo {
    pub id: u32,
    pub name: String,
    pub section: String,
    pub prog_type: ProgramType,
    /// Instruction slots.
    pub insns: u32,
    /// Map ids it uses.
    pub maps: Vec<u32>,
    /// Runs completed (including those that faulted).
    pub run_count: u64,
    /// Total time in runs, nanoseconds, counted only while runs are timed
    /// ([`BpfRequest::RunTimeStats`], off by default).
    pub run_time_ns: u64,
    /// Instructions executed in all runs.
    pub insns_executed: u64,
    /// Hits that did not run the program (nested in another program on the
    /// same CPU, or the interpreter busy).
    pub misses: u64,
    /// Runs stopped by the instruction budget.
    pub budget_exhausted: u64,
    /// Runs stopped by a helper fault or another run-time error.
    pub faults: u64,
    /// The last run-time error, if any.
    pub last_error: Option<String>,
    /// Instruction budget per run.
    pub insn_budget: u64,
    /// JIT-compiled or interpreted.
    pub exec: ExecInfo,
    pub verifier: VerifierReport,
    /// Links attaching it.
    pub links: Vec<u32>,
    /// Nanoseconds since boot when it was loaded.
    pub loaded_at_ns: u64,
}

/// The instructions of a loaded program, as the kernel runs them (map
/// references resolved to map ids), plus its source lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgDump {
    pub info: ProgInfo,
    /// Instructions as loaded (8 bytes each, map references by index).
    pub insns: Vec<u8>,
    pub lines: Option<LineTable>,
}

/// Where a link is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkTarget {
    Kprobe {
        address: u64,
        function: String,
        offset: u64,
    },
    Kretprobe {
        address: u64,
        function: String,
    },
    Tracepoint {
        category: String,
        name: String,
    },
    PerfEvent {
        sample_hz: u32,
    },
}

/// A program attached somewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub id: u32,
    pub prog: u32,
    pub target: LinkTarget,
    /// Hits that ran the program through this link.
    pub hits: u64,
    /// Position among the programs on the same attach point (0 runs first).
    pub order: u32,
}

/// The result of [`BpfRequest::LoadObject`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectLoaded {
    /// The object as the kernel keeps it (id, owner).
    pub object: ObjectInfo,
    pub maps: Vec<MapInfo>,
    pub programs: Vec<ProgInfo>,
    pub links: Vec<LinkInfo>,
}

/// What one request created, and who keeps it alive: a session (its
/// client), a pin, or both. It is freed when it has neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub id: u32,
    /// The object's name (the loaded file or crate, or the map or
    /// program a single request created).
    pub name: String,
    pub pin: Option<String>,
    /// The control session whose client holds it.
    pub session: Option<u32>,
    pub maps: Vec<u32>,
    pub programs: Vec<u32>,
    pub links: Vec<u32>,
}

/// The result of [`BpfRequest::ProgTestRun`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRunResult {
    /// r0 of the last run.
    pub retval: u64,
    /// Runs that completed.
    pub runs: u32,
    /// Mean time per run, nanoseconds.
    pub duration_ns: u64,
    /// Mean TSC cycles per run.
    pub cycles: u64,
    /// The run-time error that stopped the runs, if any.
    pub error: Option<String>,
}

/// Where an event record came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventSource {
    /// A `BPF_MAP_TYPE_RINGBUF` map.
    RingBuf { map: u32 },
    /// A `BPF_MAP_TYPE_PERF_EVENT_ARRAY` map, from this CPU's buffer.
    Perf { map: u32, cpu: u32 },
    /// `bpf_trace_printk` output of a program (the data is the text).
    Printk { prog: u32 },
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub source: EventSource,
    pub data: Vec<u8>,
}

/// Lost-record counter of one stream, cumulative since it was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostCount {
    /// The map, or `u32::MAX` for the `trace_printk` stream.
    pub map: u32,
    pub lost: u64,
}

/// Records in production order per stream, and every stream's lost count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Batch number within the subscription: its batches count up from 1
    /// (a new `EventsSubscribe` starts again at 1), so a gap means a batch
    /// was lost in transit. The first batch of a subscription also carries
    /// its streams' lost counts so far, records or not.
    pub seq: u64,
    pub records: Vec<EventRecord>,
    pub lost: Vec<LostCount>,
    /// The client generation (see `vm::HelloReply::client_generation`) of
    /// the subscription the batch serves.
    pub client_generation: u64,
}

/// Resource limits of the BPF runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Total bytes of map storage.
    pub map_memory_bytes: u64,
    /// Loaded programs.
    pub programs: u32,
    /// Instruction slots per program.
    pub insns_per_program: u32,
    /// Maps.
    pub maps: u32,
}

/// Current use of the limited resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub map_memory_bytes: u64,
    pub programs: u32,
    pub maps: u32,
    pub links: u32,
}

/// Per-hit cost of the probe target, with whatever is attached to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchResult {
    pub count: u32,
    /// Mean TSC cycles per call of the target (probe hit included).
    pub cycles_per_call: u64,
    /// Mean TSC cycles per call with nothing attached, measured in the same request.
    pub baseline_cycles: u64,
}

/// What a [`BpfRequest::TriggerBench`] measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerBenchResult {
    /// One per CPU of the request, in its order.
    pub workers: Vec<TriggerBenchWorker>,
    /// From the first worker's start to the last one's end.
    pub elapsed_ns: u64,
}

impl TriggerBenchResult {
    /// Calls of all workers.
    pub fn calls(&self) -> u64 {
        self.workers.iter().map(|w| w.calls).sum()
    }

    /// Calls per second of all workers together.
    pub fn calls_per_sec(&self) -> f64 {
        self.calls() as f64 * 1e9 / self.elapsed_ns.max(1) as f64
    }
}

/// One pinned worker of a [`BpfRequest::TriggerBench`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerBenchWorker {
    /// The CPU it ran on (every call; a call elsewhere fails the request).
    pub cpu: u32,
    /// Trigger calls it made: each fired the probe target and `ktrace:bench` once.
    pub calls: u64,
    /// Its own running time, start to end.
    pub ns: u64,
}

/// The `file:line` locations of a line table, one per row, as the verifier
/// shows them: the host's `ktrace check` and the kernel both use this so
/// their rejection messages are identical.
pub fn line_locations(lines: &LineTable) -> Vec<(usize, String)> {
    lines
        .rows
        .iter()
        .map(|r| (r.insn as usize, describe_row(lines, r)))
        .collect()
}

/// Where one row's code came from, for people: the innermost position in
/// the probe's own files (relative paths; dependencies and the standard
/// library have absolute ones), followed by the inlined code's own position
/// when that differs — `src/lib.rs:22 (inlined ebpf/src/helpers.rs:70)`.
pub fn describe_row(lines: &LineTable, row: &LineInfo) -> String {
    let file = |i: u32| {
        lines
            .files
            .get(i as usize)
            .map(String::as_str)
            .unwrap_or("?")
    };
    let here = (file(row.file), row.line);
    let own = core::iter::once(here)
        .chain(row.call_sites.iter().map(|c| (file(c.file), c.line)))
        .find(|(f, _)| !f.starts_with('/') && *f != "?");
    match own {
        Some(pos) if pos == here => alloc::format!("{}:{}", here.0, here.1),
        Some(pos) => alloc::format!(
            "{}:{} (inlined {}:{})",
            pos.0,
            pos.1,
            short_path(here.0),
            here.1
        ),
        None => alloc::format!("{}:{}", short_path(here.0), here.1),
    }
}

/// An absolute source path shortened to its crate: `.../ebpf/src/helpers.rs`
/// becomes `ebpf/src/helpers.rs`, `/rustc/<hash>/library/core/src/x.rs`
/// becomes `core/src/x.rs`; relative paths are kept.
pub fn short_path(path: &str) -> &str {
    if !path.starts_with('/') {
        return path;
    }
    match path.rfind("/src/") {
        Some(i) => {
            let crate_start = path[..i].rfind('/').map(|j| j + 1).unwrap_or(0);
            &path[crate_start..]
        }
        None => path.rsplit('/').next().unwrap_or(path),
    }
}
