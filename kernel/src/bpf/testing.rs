//! A probe target the host can call on demand, for tests and benchmarks:
//! `kernel::bpf::testing::target` is an ordinary, never-inlined kernel
//! function; [`trigger`] calls it N times from the control task, and
//! [`bench`] measures the per-call cost of whatever is attached to it
//! against an identical function nothing is attached to; [`trigger_bench`]
//! runs trigger calls on chosen CPUs at once (the trigger benchmark).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use ktrace_abi::bpf::{BenchResult, TriggerBenchResult, TriggerBenchWorker};

use crate::error::{Error, Kind};
use crate::percpu::cpu_count;
use crate::task::{self, WaitQueue};
use crate::trace::points::BenchEvent;

/// The probe target: cheap, with an argument and a result a kretprobe
/// program can read (`rdi` in, `rax` out).
#[inline(never)]
pub fn target(x: u64) -> u64 {
    black_box(x).wrapping_mul(3).wrapping_add(1)
}

/// The same work, never probed: the baseline. Its constant differs from
/// [`target`]'s so that the compiler's merging of identical functions can
/// never make the two one symbol (it did once the self tests took both
/// addresses, and a probe on the target then hit the baseline too).
#[inline(never)]
pub fn baseline(x: u64) -> u64 {
    black_box(x).wrapping_mul(3).wrapping_add(2)
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

/// One call of the trigger benchmark: the probe target, then the
/// `ktrace:bench` tracepoint site, so a kprobe, a kretprobe or a
/// tracepoint program on them fires exactly once per call.
#[inline(never)]
pub fn bench_call(x: u64) -> u64 {
    let r = target(x);
    crate::trace_event!(crate::trace::points::KTRACE_BENCH, BenchEvent { value: x });
    r
}

/// Longest trigger benchmark a request may ask for (the control task
/// waits for it).
pub const MAX_BENCH_MS: u32 = 10_000;

/// Calls a worker makes between two looks at the stop flag.
const CALLS_PER_CHECK: u64 = 64;

#[derive(Default)]
struct BenchWorker {
    calls: AtomicU64,
    start_tsc: AtomicU64,
    end_tsc: AtomicU64,
    /// Rounds of calls that found the worker on another CPU than its own.
    off_cpu: AtomicU64,
}

struct BenchRun {
    go: AtomicBool,
    stop: AtomicBool,
    /// Workers running on their CPU and waiting for `go`.
    ready: AtomicU32,
    /// Workers not yet finished.
    live: AtomicU32,
    changed: WaitQueue,
    workers: Vec<BenchWorker>,
}

fn bench_worker(run: &BenchRun, i: usize, cpu: u32) {
    let w = &run.workers[i];
    run.ready.fetch_add(1, Ordering::SeqCst);
    run.changed.wake_all();
    // Yield rather than spin: the control task may be queued on this CPU.
    while !run.go.load(Ordering::Acquire) {
        task::yield_now();
    }
    w.start_tsc.store(crate::arch::rdtsc(), Ordering::Relaxed);
    let mut n = 0u64;
    while !run.stop.load(Ordering::Relaxed) {
        for _ in 0..CALLS_PER_CHECK {
            black_box(bench_call(n));
            n += 1;
        }
        if crate::percpu::cpu_id() != cpu {
            w.off_cpu.fetch_add(1, Ordering::Relaxed);
        }
    }
    w.end_tsc.store(crate::arch::rdtsc(), Ordering::Relaxed);
    w.calls.store(n, Ordering::Relaxed);
    run.live.fetch_sub(1, Ordering::SeqCst);
    run.changed.wake_all();
}

/// The trigger benchmark: one task pinned to each CPU of `cpus` makes
/// [`bench_call`]s from a common start until `ms` milliseconds have
/// passed. Each worker times itself; the run's time is from the first
/// start to the last end.
pub fn trigger_bench(cpus: &[u32], ms: u32) -> Result<TriggerBenchResult, Error> {
    let online = cpu_count();
    let have = if online == 1 {
        String::from("1 CPU (CPU 0)")
    } else {
        format!("{online} CPUs (0-{})", online - 1)
    };
    if cpus.is_empty() {
        return Err(Error::new(
            Kind::Invalid,
            format!("TriggerBench: no CPUs given; this VM has {have}"),
        ));
    }
    for (i, &cpu) in cpus.iter().enumerate() {
        if cpu >= online {
            return Err(Error::new(
                Kind::Invalid,
                format!("TriggerBench: CPU {cpu} does not exist; this VM has {have}"),
            ));
        }
        if cpus[..i].contains(&cpu) {
            return Err(Error::new(
                Kind::Invalid,
                format!("TriggerBench: CPU {cpu} is given twice"),
            ));
        }
    }
    if ms == 0 || ms > MAX_BENCH_MS {
        return Err(Error::new(
            Kind::Invalid,
            format!("TriggerBench: {ms} ms is outside 1 to {MAX_BENCH_MS} ms"),
        ));
    }
    let stacks = cpus.len() * task::STACK_BYTES;
    if let Err(full) = crate::mm::heap::check_room(stacks) {
        return Err(Error::new(
            Kind::NoMemory,
            format!("TriggerBench: the worker tasks' stacks {full}"),
        ));
    }
    let run = Arc::new(BenchRun {
        go: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ready: AtomicU32::new(0),
        live: AtomicU32::new(0),
        changed: WaitQueue::new(),
        workers: cpus.iter().map(|_| BenchWorker::default()).collect(),
    });
    let mut spawned_all = true;
    for (i, &cpu) in cpus.iter().enumerate() {
        let r = run.clone();
        run.live.fetch_add(1, Ordering::SeqCst);
        let spawned = task::spawn_on(&format!("trig-bench/{cpu}"), cpu, move || {
            bench_worker(&r, i, cpu)
        });
        if spawned.is_none() {
            run.live.fetch_sub(1, Ordering::SeqCst);
            spawned_all = false;
            break;
        }
    }
    let n = run.live.load(Ordering::SeqCst);
    // Every worker on its CPU before the start, so all start together.
    let started = spawned_all
        && run
            .changed
            .wait_until_timeout(|| run.ready.load(Ordering::SeqCst) == n, 5_000_000_000);
    run.go.store(true, Ordering::Release);
    if started {
        task::sleep_ms(u64::from(ms));
    }
    run.stop.store(true, Ordering::SeqCst);
    // The workers hold their own references to `run`: one that does not
    // end in time still finds it alive.
    let ended = run
        .changed
        .wait_until_timeout(|| run.live.load(Ordering::SeqCst) == 0, 10_000_000_000);
    if !spawned_all {
        return Err(Error::new(
            Kind::NoMemory,
            String::from("TriggerBench: cannot spawn a worker task: no memory for its stack"),
        ));
    }
    if !started || !ended {
        return Err(Error::new(
            Kind::Busy,
            format!(
                "TriggerBench: the workers did not {} in time",
                if started { "stop" } else { "start" }
            ),
        ));
    }
    let off_cpu: u64 = run
        .workers
        .iter()
        .map(|w| w.off_cpu.load(Ordering::Relaxed))
        .sum();
    if off_cpu != 0 {
        return Err(Error::new(
            Kind::Busy,
            format!("TriggerBench: a pinned worker ran off its CPU ({off_cpu} rounds)"),
        ));
    }
    let first = run
        .workers
        .iter()
        .map(|w| w.start_tsc.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    let last = run
        .workers
        .iter()
        .map(|w| w.end_tsc.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    Ok(TriggerBenchResult {
        workers: cpus
            .iter()
            .zip(&run.workers)
            .map(|(&cpu, w)| TriggerBenchWorker {
                cpu,
                calls: w.calls.load(Ordering::Relaxed),
                ns: crate::time::tsc_to_ns(
                    w.end_tsc
                        .load(Ordering::Relaxed)
                        .wrapping_sub(w.start_tsc.load(Ordering::Relaxed)),
                ),
            })
            .collect(),
        elapsed_ns: crate::time::tsc_to_ns(last.wrapping_sub(first)),
    })
}
