//! Per-CPU data, reached through the GS base.
//!
//! Each CPU's GS base holds the address of its own [`PerCpu`] (set by
//! `arch::smp` before the CPU runs any other kernel code), so
//! [`this_cpu`] is one `gs`-relative load of the CPU's id plus an index:
//! no lock, usable from NMIs. A task may migrate between two reads, so a
//! caller that needs a stable answer runs with interrupts disabled (probe
//! handlers and BPF programs do).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

pub use ktrace_abi::vm::MAX_CPUS;

/// State owned by one CPU.
pub struct PerCpu {
    /// CPU number (0 is the boot CPU; APs in MADT order).
    pub id: u32,
    /// Local APIC id of the CPU (IPIs address it).
    pub apic_id: AtomicU32,
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
    /// The scheduler wants this CPU to switch tasks on its way out of the
    /// current interrupt.
    pub need_resched: AtomicBool,
}

const fn per_cpu_table() -> [PerCpu; MAX_CPUS as usize] {
    let mut t = [const {
        PerCpu {
            id: 0,
            apic_id: AtomicU32::new(0),
            current_pid: AtomicU32::new(0),
            current_comm: [AtomicU64::new(0), AtomicU64::new(0)],
            probe_depth: AtomicU32::new(0),
            miss_callout: AtomicBool::new(false),
            trap_frame: AtomicU64::new(0),
            need_resched: AtomicBool::new(false),
        }
    }; MAX_CPUS as usize];
    let mut i = 0;
    while i < MAX_CPUS as usize {
        t[i].id = i as u32;
        i += 1;
    }
    t
}

/// Every CPU's data, indexed by CPU number. Only [`this_cpu`] and
/// [`cpu`] should read it (and `boot.S`, which points the boot CPU's GS
/// base at its first entry before any Rust code runs).
pub(crate) static CPUS: [PerCpu; MAX_CPUS as usize] = per_cpu_table();

/// CPUs that finished coming up (the boot CPU counts from the start).
static ONLINE: AtomicU32 = AtomicU32::new(1);

/// The data of CPU `id` (for the GS base of that CPU, and for code that
/// looks at another CPU, e.g. IPI targets).
pub fn cpu(id: u32) -> Option<&'static PerCpu> {
    CPUS.get(id as usize)
}

/// This CPU's data.
#[inline]
pub fn this_cpu() -> &'static PerCpu {
    let id = crate::arch::cpu::gs_read_u32(core::mem::offset_of!(PerCpu, id));
    // The GS base points at `CPUS[id]`, whose `id` field is `id`; an index
    // out of range cannot happen, but falling back to CPU 0 beats a panic
    // in the code that reports panics.
    CPUS.get(id as usize).unwrap_or(&CPUS[0])
}

/// This CPU's number: the one `gs`-relative load of [`this_cpu`], without
/// the load of the same number back from `CPUS` that going through the
/// reference costs (every program run and probe hit asks).
#[inline]
pub fn cpu_id() -> u32 {
    let id = crate::arch::cpu::gs_read_u32(core::mem::offset_of!(PerCpu, id));
    // As in `this_cpu`: never out of range, and CPU 0 beats a panic.
    if id < MAX_CPUS {
        id
    } else {
        0
    }
}

/// Adds `n` to this CPU's probe handler depth (the recursion guard of
/// `trace::kprobe::DepthGuard`), returning the depth before: one unlocked
/// `gs`-relative `xadd`. The caller has interrupts off; see
/// [`crate::arch::cpu::gs_fetch_add_u32`] for why no add is lost.
#[inline]
pub fn probe_depth_add(n: u32) -> u32 {
    crate::arch::cpu::gs_fetch_add_u32(core::mem::offset_of!(PerCpu, probe_depth), n)
}

/// This CPU's `trap_frame` (see [`PerCpu::trap_frame`]), one `gs`-relative
/// load.
#[inline]
pub fn trap_frame() -> u64 {
    crate::arch::cpu::gs_read_u64(core::mem::offset_of!(PerCpu, trap_frame))
}

/// Sets this CPU's `trap_frame`, one `gs`-relative store (only this CPU
/// writes it; interrupts are off, and a nested context puts back what it
/// found before the outer one resumes).
#[inline]
pub fn set_trap_frame(frame: u64) {
    crate::arch::cpu::gs_write_u64(core::mem::offset_of!(PerCpu, trap_frame), frame);
}

/// Number of CPUs online. CPU numbers are `0..cpu_count()`: CPUs come up
/// in order and never go down.
pub fn cpu_count() -> u32 {
    ONLINE.load(Ordering::Acquire)
}

/// Count CPU `id` as online (called by that CPU once it can take IPIs).
/// CPUs come up one at a time, in order (the boot CPU waits for each).
pub fn mark_online(id: u32) {
    ONLINE.store(id + 1, Ordering::Release);
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

/// A counter every CPU adds to in a slot of its own, on a cache line of
/// its own: no locked instruction and no line shared between CPUs on the
/// hot path (Linux's per-CPU counters). [`PerCpuCounter::add`] is for
/// callers with interrupts off, so the task cannot move to another CPU
/// between reading the CPU number and the add (see
/// [`crate::arch::cpu_local_add`]); [`PerCpuCounter::sum`] reads every slot,
/// a snapshot that may miss adds in flight, as any relaxed counter read.
pub struct PerCpuCounter {
    slots: [CounterSlot; MAX_CPUS as usize],
}

#[repr(align(64))]
struct CounterSlot(AtomicU64);

impl PerCpuCounter {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            slots: [const { CounterSlot(AtomicU64::new(0)) }; MAX_CPUS as usize],
        }
    }

    /// Adds `n` on this CPU (interrupts off).
    #[inline]
    pub fn add(&self, n: u64) {
        self.add_on(cpu_id() as usize, n);
    }

    /// Adds `n` in the slot of CPU `cpu`, which must be this CPU's number
    /// ([`cpu_id`], read once by a caller that makes several adds) with
    /// interrupts off, as for [`PerCpuCounter::add`].
    #[inline]
    pub fn add_on(&self, cpu: usize, n: u64) {
        if let Some(slot) = self.slots.get(cpu) {
            crate::arch::cpu_local_add(&slot.0, n);
        }
    }

    /// The total over every CPU.
    pub fn sum(&self) -> u64 {
        self.slots
            .iter()
            .fold(0u64, |t, s| t.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

impl Default for PerCpuCounter {
    fn default() -> Self {
        Self::new()
    }
}
