//! Time: a monotonic nanosecond clock from the TSC (calibrated against the
//! PIT) and the periodic local APIC timer that drives the scheduler.

use crate::arch::{self, apic, pit, trap};
use core::sync::atomic::{AtomicU64, Ordering};

/// Timer interrupts per second.
pub const TIMER_HZ: u32 = 1000;

static TSC_BOOT: AtomicU64 = AtomicU64::new(0);
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Remember the boot TSC (first thing in `kernel_main`).
pub fn mark_boot() {
    TSC_BOOT.store(arch::rdtsc(), Ordering::Relaxed);
}

/// Nanoseconds since boot (0 until calibrated).
pub fn now_ns() -> u64 {
    let khz = TSC_KHZ.load(Ordering::Relaxed);
    if khz == 0 {
        return 0;
    }
    tsc_to_ns(arch::rdtsc().wrapping_sub(TSC_BOOT.load(Ordering::Relaxed)))
}

/// Nanoseconds since boot at TSC reading `tsc` (taken earlier, e.g. in an
/// NMI handler that must not call into probe-able code).
pub fn ns_at_tsc(tsc: u64) -> u64 {
    tsc_to_ns(tsc.wrapping_sub(TSC_BOOT.load(Ordering::Relaxed)))
}

/// Convert a TSC delta to nanoseconds.
pub fn tsc_to_ns(delta: u64) -> u64 {
    let khz = TSC_KHZ.load(Ordering::Relaxed).max(1);
    (u128::from(delta) * 1_000_000 / u128::from(khz)) as u64
}

/// TSC frequency in kHz.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Timer interrupts since boot, on all CPUs.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

fn on_timer(_regs: &mut arch::PtRegs, _vector: u8) -> bool {
    // Every CPU has a timer: the count is of all of them (as the perf
    // counter `timer-ticks` and a probe on this function see them).
    TICKS.fetch_add(1, Ordering::Relaxed);
    crate::cpustat::add(crate::cpustat::Stat::TimerTicks);
    crate::task::timer_tick();
    true
}

/// Start the periodic timer of an application processor, with the boot
/// CPU's calibration (its local APIC is enabled already).
pub fn init_ap() {
    apic::start_timer_like_boot_cpu(trap::TIMER_VECTOR);
}

/// Calibrate the TSC and start the periodic timer.
pub fn init() {
    let khz = pit::calibrate_tsc_khz(20);
    TSC_KHZ.store(khz, Ordering::Relaxed);
    apic::disable_pic();
    apic::init_lapic();
    // APIC timer ticks in 10 ms, measured against the TSC.
    let per_10ms = apic::measure_timer_ticks(khz * 10);
    let per_period = (u64::from(per_10ms) * 100 / u64::from(TIMER_HZ)) as u32;
    trap::set_handler(trap::TIMER_VECTOR, on_timer);
    apic::set_timer_period(per_period);
    apic::start_periodic_timer(trap::TIMER_VECTOR, per_period);
    log::info!(
        "clock: TSC {}.{:03} MHz, APIC timer {} ticks per {} Hz period",
        khz / 1000,
        khz % 1000,
        per_period,
        TIMER_HZ
    );
}
