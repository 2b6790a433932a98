//! Handshake, system information, shutdown and debug requests.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// First request of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the host speaks.
    pub protocol_version: u32,
    /// Free-form client name, for the kernel log.
    pub client: String,
}

/// The kernel's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub kernel_version: String,
    pub protocol_version: u32,
    /// Nanoseconds since boot when the handshake was answered.
    pub uptime_ns: u64,
    /// Which client of its control session this is (the session's count
    /// of departed clients). Event batches carry the generation they were
    /// made for, so a client can drop the ones an earlier client of the
    /// same session left in flight.
    pub client_generation: u64,
    /// The control session (port) this client is on: with
    /// `client_generation`, how the kernel names a client (e.g. as the
    /// holder of a perf event).
    pub session: u32,
}

/// Most CPUs the kernel brings up (its per-CPU tables are this long);
/// `ktrace vm start --cpus` refuses more.
pub const MAX_CPUS: u32 = 16;

/// State of a kernel task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Running,
    Ready,
    Sleeping,
    Blocked,
    Exited,
}

/// One kernel task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub pid: u32,
    pub name: String,
    pub state: TaskState,
    /// CPU time consumed, in nanoseconds.
    pub runtime_ns: u64,
    /// Times this task was switched in.
    pub switches: u64,
    /// CPU the task runs on, or last ran on.
    pub cpu: u32,
    /// Times the task ran on a different CPU than the time before
    /// (Linux's `cpu-migrations`).
    pub migrations: u64,
}

/// Answer to [`crate::Request::Info`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub kernel_version: String,
    pub uptime_ns: u64,
    pub cpus: u32,
    /// TSC frequency the clock was calibrated to, in kHz.
    pub tsc_khz: u64,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub heap_total_bytes: u64,
    pub heap_used_bytes: u64,
    /// Timer interrupts taken since boot.
    pub timer_ticks: u64,
    /// Timer frequency in Hz.
    pub timer_hz: u32,
    /// Context switches since boot.
    pub context_switches: u64,
    pub tasks: Vec<TaskInfo>,
    /// Control-channel frames refused since boot (bad frames, decode errors).
    pub bad_frames: u64,
    /// What the control channel runs on: `virtio-serial` or `COM2`.
    pub control_link: String,
    /// Bytes received from / sent to the host on the control channel.
    pub control_rx_bytes: u64,
    pub control_tx_bytes: u64,
    /// Times the kernel found every transmit buffer in flight and waited:
    /// the host read more slowly than the kernel wrote.
    pub control_tx_waits: u64,
    /// Host clients that went away (closed, or killed at any byte).
    pub control_disconnects: u64,
    /// Bytes those clients left behind: received but never a whole frame,
    /// and sent to them but never read.
    pub control_abandoned_rx_bytes: u64,
    pub control_abandoned_tx_bytes: u64,
    /// Received bytes dropped as no part of a good frame: garbage skipped,
    /// the headers of damaged or stalled frames, frames there was no memory
    /// for. Every byte received is in a whole frame, left behind by a
    /// client that went, or here.
    pub control_dropped_rx_bytes: u64,
    /// Transmit descriptors QEMU kept from clients that left (each leaves
    /// a port one buffer short), and transmit queues reset and rebuilt to
    /// get them back.
    pub control_tx_slots_lost: u64,
    pub control_tx_queue_rebuilds: u64,
    /// Clients that left while the next client of their session had
    /// already connected by the time the kernel looked: the bytes the two
    /// sent around then could not be told apart and went to the new one
    /// (whose first frame may then be refused as a bad frame).
    pub control_closes_after_reopen: u64,
    /// What the event task pushed to each control session's clients, and
    /// what it could not (one entry per session, in session order).
    pub event_sessions: Vec<EventSessionStats>,
}

/// Event streaming to the clients of one control session, since boot.
///
/// The event task takes records out of the streams a session subscribed
/// to only while its client reads: when the link is full it keeps the
/// batch it collected (`batches_held`) and takes nothing more, so the
/// records wait in their buffers, and a full buffer counts its losses in
/// the stream's lost count, as a perf buffer's consumer is told of lost
/// samples. Every record the task took out is pushed, waiting, or dropped:
/// the sum over the sessions of `records_pushed + records_waiting +
/// records_dropped` is what the task consumed from the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventSessionStats {
    /// The control session (virtio-serial port index, 0 on COM2).
    pub session: u32,
    /// Batches and their records queued on the link for the session's
    /// clients.
    pub batches_pushed: u64,
    pub records_pushed: u64,
    /// Batches that found the link full (the client read too slowly) and
    /// were kept until it had room.
    pub batches_held: u64,
    /// Batches and records taken out of the streams for a client that then
    /// left (or closed its socket) before the link had room for them.
    pub batches_dropped: u64,
    pub records_dropped: u64,
    /// Records in the batch kept now, if any (at most one batch).
    pub records_waiting: u64,
}

/// Requests that exist for the test harness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DebugRequest {
    /// Panic in the kernel on purpose (the harness checks the report).
    Panic,
    /// Run an in-kernel self test by name; answers [`crate::Response::SelfTest`].
    SelfTest { name: String },
    /// List the in-kernel self tests.
    ListSelfTests,
    /// Edge coverage of this session's control task (fuzzing builds only;
    /// other kernels answer `NotSupported`). Answers
    /// [`crate::Response::Coverage`].
    Coverage(CoverageOp),
}

/// What a [`DebugRequest::Coverage`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoverageOp {
    /// Start recording the edges this session's task runs, from an empty
    /// set (recording stays on until `Disable` or the client leaves).
    Enable,
    /// Hand over the edges recorded since the last reset; `reset` empties
    /// the set afterwards.
    Collect { reset: bool },
    /// Stop recording and empty the set.
    Disable,
}

/// Edges one session's task ran (answer to [`DebugRequest::Coverage`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CoverageReport {
    /// Instrumented edges in the kernel (its `__sancov_guards` entries).
    pub edges_total: u32,
    /// Whether this session records coverage now.
    pub enabled: bool,
    /// Each edge reached: its guard index and the address of the
    /// instrumented call (host tools map it to a function).
    pub edges: Vec<CoveredEdge>,
}

/// One edge reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoveredEdge {
    pub guard: u32,
    pub pc: u64,
}

/// Result of an in-kernel self test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfTestResult {
    pub name: String,
    pub passed: bool,
    /// What the test observed, one line per fact.
    pub output: Vec<String>,
}

/// Byte the kernel writes to the `isa-debug-exit` port (0xf4) on a clean
/// shutdown. QEMU then exits with status `(byte << 1) | 1` = 33.
pub const EXIT_SHUTDOWN: u8 = 0x10;
/// Byte written to the exit port after a kernel panic (QEMU status 35).
pub const EXIT_PANIC: u8 = 0x11;
/// Byte written to the exit port after a fatal CPU exception (QEMU status 37).
pub const EXIT_EXCEPTION: u8 = 0x12;
/// I/O port of QEMU's `isa-debug-exit` device, as the host configures it.
pub const EXIT_PORT: u16 = 0xf4;

/// The exit status QEMU reports when the kernel wrote `byte` to [`EXIT_PORT`].
pub const fn qemu_exit_status(byte: u8) -> i32 {
    ((byte as i32) << 1) | 1
}
