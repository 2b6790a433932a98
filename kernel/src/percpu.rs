//! Per-CPU data. There is one CPU today; everything per-CPU goes through
//! [`this_cpu`] so SMP can come later by switching the lookup to GS base.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// State owned by one CPU.
pub struct PerCpu {
    /// CPU number.
    pub id: u32,
    /// Pid of the task running on this CPU; readable from any context
    /// without locks (probe handlers and BPF helpers use it).
    pub current_pid: AtomicU32,
    /// Name of the running task, NUL padded, as two little-endian words.
    current_comm: [AtomicU64; 2],
    /// Nesting depth of probe/BPF handlers on this CPU (recursion guard).
    pub probe_depth: AtomicU32,
    /// A handler's `missed` callout is running on this CPU (see
    /// `DepthGuard::report_miss`).
    pub miss_callout: AtomicBool,
    /// Address of the trap frame of the innermost trap this CPU is
    /// handling (0 outside traps): only that frame's interrupted stack may
    /// be written (`arch::trap::write_interrupted_stack`).
    pub trap_frame: AtomicU64,
}

/// The one CPU's data. Only [`this_cpu`] should read it; the coverage
/// callback of the fuzzing build (assembly) reads `current_pid` directly.
pub(crate) static CPU0: PerCpu = PerCpu {
    id: 0,
    current_pid: AtomicU32::new(0),
    current_comm: [AtomicU64::new(0), AtomicU64::new(0)],
    probe_depth: AtomicU32::new(0),
    miss_callout: AtomicBool::new(false),
    trap_frame: AtomicU64::new(0),
};

/// This CPU's data.
pub fn this_cpu() -> &'static PerCpu {
    &CPU0
}

/// Number of CPUs running.
pub fn cpu_count() -> u32 {
    1
}

impl PerCpu {
    /// Record the task now running.
    pub fn set_current(&self, pid: u32, name: &str) {
        let mut comm = [0u8; 16];
        let n = name.len().min(15);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.current_pid.store(pid, Ordering::Relaxed);
        self.current_comm[0].store(
            u64::from_le_bytes(comm[..8].try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
        self.current_comm[1].store(
            u64::from_le_bytes(comm[8..].try_into().unwrap_or([0; 8])),
            Ordering::Relaxed,
        );
    }

    /// The running task's name, NUL padded (Linux `comm`).
    pub fn current_comm(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.current_comm[0].load(Ordering::Relaxed).to_le_bytes());
        out[8..].copy_from_slice(&self.current_comm[1].load(Ordering::Relaxed).to_le_bytes());
        out
    }
}
