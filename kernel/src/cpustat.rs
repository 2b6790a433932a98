//! The kernel's own event counts, per CPU: context switches, external
//! interrupts, timer ticks, page faults and migrations. Each is one
//! relaxed atomic add into the slot of the CPU that saw the event, where
//! the event happens (the scheduler, trap dispatch, the timer); the perf
//! software events read them per CPU, so `kperf stat -A` shows which CPU
//! did what and the CPUs sum to the total.
//!
//! The global counts (`crate::task::context_switches()`,
//! `crate::time::ticks()`) stay as they are:
//! they count at the same points, so for each statistic the sum over CPUs
//! equals the global count, which tests compare.
//!
//! Every function here is safe from any context, NMIs included: atomics
//! only, and no CPU writes another CPU's slot. The counting functions are
//! `#[inline(always)]`: their code lives inside their callers (trap
//! dispatch, the scheduler), which the kprobe blacklist covers, so no
//! probe can be placed on a count taken from trap dispatch.

use core::sync::atomic::{AtomicU64, Ordering};

/// Most CPUs the per-CPU tables hold: the kernel's own limit (the cast
/// keeps this a `usize` whichever integer type `percpu` declares it with).
#[allow(clippy::unnecessary_cast)]
pub const MAX_CPUS: usize = crate::percpu::MAX_CPUS as usize;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    /// The scheduler switched tasks.
    ContextSwitches,
    /// An external interrupt (vector ≥ 32) was taken.
    Irqs,
    /// A scheduler timer interrupt.
    TimerTicks,
    /// A page fault (vector 14).
    PageFaults,
    /// A task ran on a different CPU than the time before: the scheduler
    /// adds one where it counts a task's migration (at switch-in, on the
    /// CPU the task arrived on). One CPU never migrates: 0.
    Migrations,
    /// An NMI was taken (a sampling tick, a TLB shootdown, or both).
    Nmis,
}

const STATS: usize = 6;

/// One row per CPU, one column per [`Stat`].
static COUNTS: [[AtomicU64; STATS]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; STATS] }; MAX_CPUS];

/// This CPU's slot in per-CPU tables of [`MAX_CPUS`] entries (a CPU
/// beyond the table counts in the last slot rather than nowhere, so sums
/// stay exact).
#[inline(always)]
pub fn this_slot() -> usize {
    (crate::percpu::this_cpu().id as usize).min(MAX_CPUS - 1)
}

/// Count one `stat` on this CPU.
#[inline(always)]
pub fn add(stat: Stat) {
    COUNTS[this_slot()][stat as usize].fetch_add(1, Ordering::Relaxed);
}

/// Count a trap taken on this CPU (called once per trap by the dispatcher):
/// external interrupts and page faults.
#[inline(always)]
pub fn trap_taken(vector: u8) {
    if vector >= crate::arch::trap::IRQ_BASE {
        add(Stat::Irqs);
    } else if vector == 14 {
        add(Stat::PageFaults);
    } else if vector == 2 {
        add(Stat::Nmis);
    }
}

/// `stat` as counted by CPU `cpu` since boot.
pub fn read(stat: Stat, cpu: usize) -> u64 {
    COUNTS
        .get(cpu)
        .map_or(0, |row| row[stat as usize].load(Ordering::Relaxed))
}

/// CPUs online (the length of per-CPU readings), at most [`MAX_CPUS`].
pub fn online() -> usize {
    (crate::percpu::cpu_count() as usize).clamp(1, MAX_CPUS)
}
