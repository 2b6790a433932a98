//! Time: a monotonic nanosecond clock from the TSC (calibrated against the
//! PIT) and the periodic local APIC timer that drives the scheduler.

use crate::arch::{self, apic, pit, trap};
use core::sync::atomic::{AtomicU64, Ordering};

/// Timer interrupts per second.
pub const TIMER_HZ: u32 = 1000;

static TSC_BOOT: AtomicU64 = AtomicU64::new(0);
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// `tsc_to_ns(d)` is `d * NS_MULT >> NS_SHIFT`: a multiplication, where
/// `d * 1_000_000 / khz` is a 128-bit division (`__udivti3`, a software
/// loop). Set with the calibration; until then the factor of 1 kHz.
static NS_MULT: AtomicU64 = AtomicU64::new(1_000_000);
static NS_SHIFT: AtomicU64 = AtomicU64::new(0);
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

/// Convert a TSC delta to nanoseconds. Every clock read goes through here
/// (the block layer several times per request, `bpf_ktime_get_ns`, trace
/// records), so it multiplies instead of dividing: at most 1 ns below
/// `delta * 1_000_000 / khz` (see [`ns_factor`]).
pub fn tsc_to_ns(delta: u64) -> u64 {
    let mult = NS_MULT.load(Ordering::Relaxed);
    let shift = NS_SHIFT.load(Ordering::Relaxed);
    ((u128::from(delta) * u128::from(mult)) >> shift) as u64
}

/// `(mult, shift)` with `mult = 1_000_000 * 2^shift / khz` rounded down and
/// as large as a `u64` holds, so at least 2^63 (for any TSC of 1 kHz to
/// 2^44 kHz). Then `delta * mult >> shift` falls short of the exact
/// `delta * 1_000_000 / khz` by less than `delta / 2^shift`, which is less
/// than `exact / 2^63` since `2^shift >= 2^63 * khz / 10^6`: under 1 ns for
/// any time below 2^63 ns (292 years). Rounded down, it is the exact
/// quotient or 1 ns less (the `tsc_to_ns` self test checks it).
fn ns_factor(khz: u64) -> (u64, u64) {
    let khz = u128::from(khz.max(1));
    let mut shift = 0;
    while shift < 100 && (1_000_000u128 << (shift + 1)) / khz <= u128::from(u64::MAX) {
        shift += 1;
    }
    (((1_000_000u128 << shift) / khz) as u64, shift as u64)
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
    let (mult, shift) = ns_factor(khz);
    NS_MULT.store(mult, Ordering::Relaxed);
    NS_SHIFT.store(shift, Ordering::Relaxed);
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
