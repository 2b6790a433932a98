//! A probe target the host can call on demand, for tests and benchmarks:
//! `kernel::bpf::testing::target` is an ordinary, never-inlined kernel
//! function; [`trigger`] calls it N times from the control task, and
//! [`bench`] measures the per-call cost of whatever is attached to it
//! against an identical function nothing is attached to.

use core::hint::black_box;

use ktrace_abi::bpf::BenchResult;

/// The probe target: cheap, with an argument and a result a kretprobe
/// program can read (`rdi` in, `rax` out).
#[inline(never)]
pub fn target(x: u64) -> u64 {
    black_box(x).wrapping_mul(3).wrapping_add(1)
}

/// The same body, never probed: the baseline.
#[inline(never)]
pub fn baseline(x: u64) -> u64 {
    black_box(x).wrapping_mul(3).wrapping_add(1)
}

/// Calls [`target`] `count` times with `arg, arg+1, ...`; returns the
/// wrapping sum of the results (so the calls cannot be optimised away).
pub fn trigger(count: u32, arg: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..u64::from(count) {
        acc = acc.wrapping_add(target(arg.wrapping_add(i)));
    }
    acc
}

/// Mean TSC cycles per call of [`target`] and of [`baseline`], each over
/// `count` calls with interrupts off (so timer ticks do not land in one of
/// the two loops).
pub fn bench(count: u32) -> BenchResult {
    let count = count.max(1);
    let was = crate::arch::irq_save();
    let t0 = crate::arch::rdtsc();
    let mut acc = 0u64;
    for i in 0..u64::from(count) {
        acc = acc.wrapping_add(baseline(i));
    }
    let t1 = crate::arch::rdtsc();
    for i in 0..u64::from(count) {
        acc = acc.wrapping_add(target(i));
    }
    let t2 = crate::arch::rdtsc();
    crate::arch::irq_restore(was);
    black_box(acc);
    BenchResult {
        count,
        cycles_per_call: (t2 - t1) / u64::from(count),
        baseline_cycles: (t1 - t0) / u64::from(count),
    }
}
