//! Self test `hit_cost`: what one probe hit with a BPF program costs,
//! piece by piece, in one boot (issue 18's per-hit goals). Each piece is
//! timed over many iterations with interrupts off, the cheapest of five
//! batches, less the cost of the empty timing loop; then whole hits on the
//! probe target (`testing::target`, less the unprobed `testing::baseline`)
//! with a jump-optimised kprobe and an empty native handler, an empty JIT
//! program and an empty interpreted program, with run timing off (the
//! default) and on. Figures are reported, never asserted; asserted are
//! the mode of the probe and that every call was counted or ran the
//! program.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ktrace_abi::bpf::{AttachTarget, Engine, ProgramLoad, ProgramType};
use ktrace_kprobe::TextAddr;

use super::prog::{self, Choice, HitInfo, Program};
use super::testing::{baseline, target};
use crate::arch::{self, PtRegs};
use crate::sync::SpinLock;
use crate::trace::kprobe::{self, KprobeHandler};

/// Iterations per batch.
const N: u64 = 5_000;

/// Cycles per iteration of `f`, cheapest of five batches of [`N`],
/// interrupts off (the loop's own cost included).
fn per_iter(mut f: impl FnMut(u64)) -> f64 {
    let mut best = u64::MAX;
    for _ in 0..5 {
        let was = arch::irq_save();
        let t0 = arch::rdtsc();
        for i in 0..N {
            f(black_box(i));
        }
        let t = arch::rdtsc().wrapping_sub(t0);
        arch::irq_restore(was);
        best = best.min(t);
    }
    best as f64 / N as f64
}

/// [`per_iter`] through a `dyn` call the compiler cannot see through.
fn per_iter_dyn(f: &mut dyn FnMut(u64)) -> f64 {
    let f = black_box(f);
    per_iter(f)
}

/// `mov r0, 0; exit`.
const EMPTY: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];

fn load_empty(engine: Engine, out: &mut Vec<String>) -> Option<Arc<Program>> {
    let load = ProgramLoad {
        name: String::from("empty"),
        section: String::from("kprobe/kernel::bpf::testing::target"),
        prog_type: ProgramType::Kprobe,
        attach: AttachTarget::Kprobe {
            spec: String::from("kernel::bpf::testing::target"),
            points: Vec::new(),
        },
        insns: EMPTY.to_vec(),
        license: String::from("GPL"),
        lines: None,
    };
    // An id no runtime program has (they count up from 1).
    match prog::load(u32::MAX - 1, &load, Vec::new(), 0, 0, Choice::Asked(engine)) {
        Ok(p) => Some(Arc::new(p)),
        Err(_) => {
            out.push(format!(
                "FAIL: the empty program does not load ({engine:?})"
            ));
            None
        }
    }
}

/// A kprobe handler that runs a program on the frame, as an attached
/// program's link does (`attach.rs`, less the link's hit counter).
struct RunProgram(Arc<Program>);

impl KprobeHandler for RunProgram {
    fn pre(&self, regs: &mut PtRegs) {
        self.0.run(
            arch::regs_bytes(regs),
            &HitInfo {
                func_ip: regs.rip,
                rip: regs.rip,
                rbp: regs.rbp,
            },
        );
    }
}

struct Nothing;

impl KprobeHandler for Nothing {
    fn pre(&self, _regs: &mut PtRegs) {}
}

fn call_target(i: u64) {
    black_box(target(black_box(i)));
}

fn call_baseline(i: u64) {
    black_box(baseline(black_box(i)));
}

/// Cycles per call of the probe target with `handler` on a kprobe there,
/// less the unprobed call; `None` (and a failure line) when the probe is
/// not jump-optimised or missed calls.
fn hit_cost(handler: Arc<dyn KprobeHandler>, bare: f64, out: &mut Vec<String>) -> Option<f64> {
    let at = TextAddr(target as fn(u64) -> u64 as usize as u64);
    let p = match kprobe::register(at, handler) {
        Ok(p) => p,
        Err(e) => {
            out.push(format!("FAIL: kprobe on the target: {e}"));
            return None;
        }
    };
    let mode = kprobe::site_mode(at).map(|(m, _)| m);
    let before = p.hits();
    let c = per_iter(call_target);
    let hits = p.hits() - before;
    let _ = kprobe::unregister(p.id());
    if mode != Some(kprobe::Mode::Optimised) || hits != 5 * N {
        out.push(format!(
            "FAIL: the probe is {mode:?} (want Optimised) and counted {hits} of {} calls",
            5 * N
        ));
        return None;
    }
    Some(c - bare)
}

/// The self test.
pub fn hit_cost_test(out: &mut Vec<String>) -> bool {
    let mut ok = true;
    let was_timed = prog::run_time_stats();
    let loop_cost = per_iter(|i| {
        black_box(i);
    });
    // The pieces run through a `dyn` call (one closure type per piece
    // would inline differently); its own cost is measured the same way and
    // taken off.
    let dyn_loop_cost = per_iter_dyn(&mut |i| {
        black_box(i);
    });
    let mut rows: Vec<(&str, f64)> = Vec::new();
    let mut piece = |what: &'static str, f: &mut dyn FnMut(u64)| {
        rows.push((what, (per_iter_dyn(f) - dyn_loop_cost).max(0.0)));
    };
    let mut xmm = arch::cpu::XmmArea([0; 256]);
    piece(
        "save + restore xmm0-15 with movaps (the detour's)",
        &mut |_| {
            arch::cpu::xmm_save_restore(&mut xmm);
        },
    );
    piece("pushfq; cli; popfq (the detour's)", &mut |_| {
        arch::cpu::flags_save_cli_restore();
    });
    piece("two rdtsc (a timed run's clock reads)", &mut |_| {
        black_box(arch::rdtsc());
        black_box(arch::rdtsc());
    });
    let lock = SpinLock::new(0u64);
    piece(
        "SpinLock try_lock + unlock (each run took one before)",
        &mut |i| {
            if let Some(mut g) = lock.try_lock() {
                *g = i;
            }
        },
    );
    let flag = AtomicBool::new(false);
    piece("locked swap + clear of a flag", &mut |_| {
        if !flag.swap(true, Ordering::Acquire) {
            flag.store(false, Ordering::Release);
        }
    });
    let cpu = crate::percpu::this_cpu().id as usize;
    piece("epoch enter + exit", &mut |_| {
        black_box(super::epochs().enter(cpu));
    });
    let counter = AtomicU64::new(0);
    piece("one locked add", &mut |i| {
        counter.fetch_add(i, Ordering::Relaxed);
    });
    let per_cpu = crate::percpu::PerCpuCounter::new();
    piece(
        "one per-CPU counter add (each run makes 2, 3 when timed)",
        &mut |i| {
            per_cpu.add(i);
        },
    );
    let regs = PtRegs::default();
    piece(
        "pt_regs copied to context bytes (each kprobe run did)",
        &mut |_| {
            black_box(black_box(&regs).to_bytes());
        },
    );
    let frame = &crate::percpu::this_cpu().trap_frame;
    piece(
        "trap_frame swap + restore (the detour's before)",
        &mut |i| {
            let outer = frame.swap(i, Ordering::AcqRel);
            frame.store(outer, Ordering::Release);
        },
    );
    let at = target as fn(u64) -> u64 as usize as u64;
    let nothing = kprobe::register(TextAddr(at), Arc::new(Nothing));
    let mut found = true;
    piece("kprobe site lookup + recursion guard", &mut |_| {
        found &= kprobe::lookup_and_guard(at);
    });
    if let Ok(p) = &nothing {
        let _ = kprobe::unregister(p.id());
    }
    if !found {
        out.push(String::from("FAIL: the site lookup missed the probe"));
        ok = false;
    }
    let progs: Vec<(Engine, Arc<Program>)> = [Engine::Jit, Engine::Interpreter]
        .into_iter()
        .filter_map(|e| load_empty(e, out).map(|p| (e, p)))
        .collect();
    ok &= progs.len() == 2;
    let ctx = regs.to_bytes();
    let hit = HitInfo::default();
    let mut runs = Vec::new();
    for (engine, p) in &progs {
        for timed in [false, true] {
            prog::set_run_time_stats(timed);
            let before = p.stats.run_count.sum();
            let mut ran = true;
            let c = (per_iter(|_| {
                ran &= p.run(&ctx, &hit) == Some(0);
            }) - loop_cost)
                .max(0.0);
            let count = p.stats.run_count.sum() - before;
            if !ran || count != 5 * N {
                out.push(format!(
                    "FAIL: {engine:?}: {count} of {} runs returned 0",
                    5 * N
                ));
                ok = false;
            }
            runs.push((*engine, timed, c));
        }
    }
    prog::set_run_time_stats(false);
    let bare = per_iter(call_baseline);
    let mut hits = Vec::new();
    match hit_cost(Arc::new(Nothing), bare, out) {
        Some(c) => hits.push((String::from("empty native handler"), c)),
        None => ok = false,
    }
    for (engine, p) in &progs {
        match hit_cost(Arc::new(RunProgram(p.clone())), bare, out) {
            Some(c) => hits.push((format!("empty program, {engine:?}"), c)),
            None => ok = false,
        }
    }
    prog::set_run_time_stats(was_timed);
    out.push(format!(
        "TSC {} kHz; cycles per iteration, cheapest of 5 batches of {N}, interrupts off, less the empty loop ({loop_cost:.1}; {dyn_loop_cost:.1} through a dyn call)",
        crate::time::tsc_khz()
    ));
    for (what, c) in &rows {
        out.push(format!("  {what:<56} {c:>8.1}"));
    }
    for (engine, timed, c) in &runs {
        out.push(format!(
            "  Program::run, empty program, {:<32} {c:>8.1}",
            format!("{engine:?}, timing {}", if *timed { "on" } else { "off" })
        ));
    }
    out.push(format!(
        "jump-optimised kprobe hit on the probe target, cycles over the unprobed call ({bare:.1}), timing off:"
    ));
    for (what, c) in &hits {
        out.push(format!("  {what:<56} {c:>8.1}"));
    }
    ok
}
