//! BPF atomics are atomic across CPUs, in the interpreter and in the JIT.
//!
//! Host threads stand for CPUs. Each runs a program that looks up a
//! counter through a helper (as `bpf_map_lookup_elem` hands out a map
//! value) and adds 1 to it with `lock add`, many times. With every thread
//! on one counter the total must be exact, which only holds if the
//! interpreter uses real atomic read-modify-writes and the JIT emits
//! `lock`-prefixed instructions; a plain `add [mem], reg` loses updates
//! as soon as two cores race. The same programs on one counter per thread
//! (a per-CPU map's layout) give the contrast, printed as updates/s.
#![cfg(target_arch = "x86_64")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use bpf_vm::asm::assemble;
use bpf_vm::interp::{HelperError, HelperMem, HelperTable, Vm};
use bpf_vm::jit::{compile, JitOptions};
use bpf_vm::Executable;
use support::jit::{run_jit, table, ExecCode};

/// Adds per run: `BPF_ATOMICS_ADDS`, default 200,000 (a release build
/// measuring rates wants millions).
fn adds() -> u64 {
    std::env::var("BPF_ATOMICS_ADDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

fn program(fetch: bool) -> Executable {
    let add = if fetch {
        // `lock xadd`, the form with a result.
        "lock fetch add [%r0+0], %r1"
    } else {
        "lock add [%r0+0], %r1"
    };
    let src = format!(
        "mov %r6, 0\nloop:\ncall 1\nmov %r1, 1\n{add}\nadd %r6, 1\njlt %r6, {}, loop\nmov %r0, 0\nexit",
        adds()
    );
    Executable::new(&assemble(&src).unwrap()).unwrap()
}

/// Helper 1: the counter's address (the thread's "map value").
fn lookup(slot: &mut u64, _: &mut HelperMem<'_>, _: [u64; 5]) -> Result<u64, HelperError> {
    Ok(*slot)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Interpreter,
    Jit,
}

/// 64-byte spaced counters, one cache line each.
#[repr(align(64))]
struct Line(AtomicU64);

/// Runs the program on `threads` threads at once; `shared` puts them all
/// on counter 0, else each on its own. Returns the counters and updates/s.
fn race(engine: Engine, fetch: bool, threads: usize, shared: bool) -> (Vec<u64>, f64) {
    let counters: Arc<Vec<Line>> =
        Arc::new((0..threads).map(|_| Line(AtomicU64::new(0))).collect());
    let start = Arc::new(Barrier::new(threads));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (counters, start) = (counters.clone(), start.clone());
            thread::spawn(move || {
                let exe = program(fetch);
                let slot = &counters[if shared { 0 } else { t }].0;
                let mut helpers = HelperTable::new(slot.as_ptr() as u64);
                helpers.register(1, lookup);
                let mut ctx = [0u8; 8];
                let budget = adds() * 6 + 16;
                start.wait();
                let r = match engine {
                    Engine::Interpreter => {
                        let mut vm = Vm::new();
                        // SAFETY: the program touches only its stack and the
                        // address helper 1 returns, an `AtomicU64` that
                        // `counters` keeps alive until every thread joined;
                        // it only accesses it with atomic instructions.
                        unsafe {
                            vm.run_fast(&exe, ctx.as_mut_ptr(), ctx.len(), &mut helpers, budget)
                        }
                    }
                    Engine::Jit => {
                        let image =
                            compile(&exe, &JitOptions::default(), &table::<HelperTable<u64>>())
                                .unwrap();
                        let code = ExecCode::new(&image);
                        // SAFETY: as for the interpreter.
                        unsafe { run_jit(&code, &mut ctx, &mut helpers, budget).0 }
                    }
                };
                assert_eq!(r, Ok(0), "{engine:?}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let values = counters
        .iter()
        .map(|c| c.0.load(Ordering::SeqCst))
        .collect();
    (values, (threads as u64 * adds()) as f64 / secs)
}

#[test]
fn atomic_adds_from_every_thread_give_an_exact_total() {
    let threads = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    for engine in [Engine::Interpreter, Engine::Jit] {
        for fetch in [false, true] {
            // Best of 3 for the rates (a shared machine is noisy); every
            // run's totals are checked.
            let (mut shared_rate, mut own_rate) = (0f64, 0f64);
            for _ in 0..3 {
                let (shared, rate) = race(engine, fetch, threads, true);
                assert_eq!(
                    shared[0],
                    threads as u64 * adds(),
                    "{engine:?} fetch={fetch}: updates lost"
                );
                shared_rate = shared_rate.max(rate);
                let (own, rate) = race(engine, fetch, threads, false);
                assert_eq!(own, vec![adds(); threads], "{engine:?} fetch={fetch}");
                own_rate = own_rate.max(rate);
            }
            eprintln!(
                "{engine:?} {} on {threads} threads: one shared counter {:.1} M updates/s, one counter per thread {:.1} M updates/s (ratio {:.2})",
                if fetch { "lock xadd" } else { "lock add" },
                shared_rate / 1e6,
                own_rate / 1e6,
                own_rate / shared_rate
            );
        }
    }
}
