//! The trigger benchmark in the shape of Linux's `bench trig-*` (issue 17):
//! hits per second of a kprobe, a kretprobe and a tracepoint program, with
//! trigger workers pinned to 1 CPU and then to 2 (and 4) CPUs of the same
//! boot, each with a per-CPU-counter program (`BPF_MAP_TYPE_PERCPU_ARRAY`,
//! plain add) and with a shared-counter program (one array slot,
//! `lock add`) for contrast.
//!
//! `BpfRequest::TriggerBench { cpus, ms }` runs one kernel task pinned to
//! each CPU of `cpus`; one trigger call fires the probe target and the
//! `ktrace:bench` tracepoint once each. The quick tests check the path the
//! benchmark measures exactly: the per-CPU counter of each CPU equals the
//! calls of the worker pinned there, the shared counter and every link's
//! hits equal all calls, nothing is missed, on the suite's CPUs and on 4
//! vCPUs; and bad requests are refused with what was wrong. The benchmark
//! itself is `#[ignore]`d (it reports rates, and rates are not asserted):
//!
//! ```text
//! cargo test -p ktrace-tests --test trigger_bench -- --ignored --nocapture
//! ```
//!
//! `KTRACE_TRIGGER_BENCH_CPUS` (default 2) vCPUs, `KTRACE_TRIGGER_BENCH_MS`
//! (default 1000) per measurement, `KTRACE_TRIGGER_BENCH_ROUNDS` (default
//! 3) interleaved rounds whose medians are reported.

use ktrace_abi::bpf::{map_type, AttachTarget, LoadOptions, ProgramLoad, ProgramType};
use ktrace_tests::{
    asm_program, create_map, link_info, prog_info, u64s, TestVm, COUNT_IN_SLOT_0,
    PER_CPU_COUNT_IN_SLOT_0,
};
use probe_sdk::runtime::{Runtime, RuntimeError};

const TARGET: &str = "kernel::bpf::testing::target";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Point {
    Tracepoint,
    Kprobe,
    Kretprobe,
}

const POINTS: [Point; 3] = [Point::Tracepoint, Point::Kprobe, Point::Kretprobe];

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Tracepoint => "tracepoint",
            Point::Kprobe => "kprobe",
            Point::Kretprobe => "kretprobe",
        }
    }

    fn target(self) -> AttachTarget {
        match self {
            Point::Tracepoint => AttachTarget::Tracepoint {
                category: "ktrace".into(),
                name: "bench".into(),
            },
            Point::Kprobe | Point::Kretprobe => ktrace_tests::kprobe_at(TARGET),
        }
    }

    fn load(self, name: &str, asm: &str) -> ProgramLoad {
        let (prog_type, section) = match self {
            Point::Tracepoint => (
                ProgramType::Tracepoint,
                "tracepoint/ktrace/bench".to_string(),
            ),
            Point::Kprobe => (ProgramType::Kprobe, format!("kprobe/{TARGET}")),
            Point::Kretprobe => (ProgramType::Kprobe, format!("kretprobe/{TARGET}")),
        };
        asm_program(name, section, prog_type, self.target(), asm)
    }
}

/// Which counter a program keeps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Counter {
    PerCpu,
    Shared,
}

/// A counter map with its program attached at a point.
struct Attached {
    map: u32,
    prog: u32,
    link: u32,
}

fn attach(rt: &mut Runtime, point: Point, counter: Counter) -> Attached {
    let (map_kind, asm, tag) = match counter {
        Counter::PerCpu => (map_type::PERCPU_ARRAY, PER_CPU_COUNT_IN_SLOT_0, "percpu"),
        Counter::Shared => (map_type::ARRAY, COUNT_IN_SLOT_0, "shared"),
    };
    let name = format!("{tag}_{}", point.name());
    let map = create_map(rt, &name, map_kind, 4, 8, 1);
    let prog = rt
        .prog_load(point.load(&name, asm), vec![map], LoadOptions::default())
        .unwrap()
        .id;
    let link = rt
        .attach(prog, point.target(), point == Point::Kretprobe)
        .unwrap()
        .id;
    Attached { map, prog, link }
}

fn detach(rt: &mut Runtime, a: Attached) {
    rt.detach(a.link).unwrap();
    rt.prog_unload(a.prog).unwrap();
    rt.map_free(a.map).unwrap();
}

/// The counter's values: one per CPU for a per-CPU map, one for a shared one.
fn values(rt: &mut Runtime, map: u32) -> Vec<u64> {
    u64s(
        &rt.map_lookup(map, &0u32.to_le_bytes())
            .unwrap()
            .expect("slot 0"),
    )
}

/// `(hits through the link, runs, misses, faults)` of an attached program.
fn counts(rt: &mut Runtime, a: &Attached) -> (u64, u64, u64, u64) {
    let hits = link_info(rt, a.link).hits;
    let p = prog_info(rt, a.prog);
    (hits, p.run_count, p.misses, p.faults)
}

fn refusal(rt: &mut Runtime, cpus: &[u32], ms: u32) -> String {
    match rt.trigger_bench(cpus, ms) {
        Err(RuntimeError::Client(c)) => c.kernel_reply().expect("an error frame").message.clone(),
        other => panic!("TriggerBench {cpus:?} {ms} ms was not refused: {other:?}"),
    }
}

/// Both programs at each point at once; a run on CPU 0 alone, then on
/// every CPU: each CPU's per-CPU count equals the calls of the worker
/// pinned to it, the shared count and every link's hits equal all calls.
fn exact_counts(mut vm: TestVm) {
    let mut client = vm.client();
    let cpus = client.info().unwrap().cpus;
    let mut rt = Runtime::new(&mut client);
    let all: Vec<u32> = (0..cpus).collect();
    for point in POINTS {
        let per_cpu = attach(&mut rt, point, Counter::PerCpu);
        let shared = attach(&mut rt, point, Counter::Shared);
        let mut want = vec![0u64; cpus as usize];
        for run in [&[0][..], &all[..]] {
            let r = rt.trigger_bench(run, 50).unwrap();
            assert_eq!(
                r.workers.iter().map(|w| w.cpu).collect::<Vec<_>>(),
                run,
                "{r:?}"
            );
            for w in &r.workers {
                assert!(w.calls > 0, "{point:?}: no calls on CPU {}: {r:?}", w.cpu);
                want[w.cpu as usize] += w.calls;
            }
        }
        let total: u64 = want.iter().sum();
        eprintln!("{point:?}: per CPU {want:?}, {total} calls");
        assert_eq!(values(&mut rt, per_cpu.map), want, "{point:?} per CPU");
        assert_eq!(values(&mut rt, shared.map), [total], "{point:?} shared");
        for a in [&per_cpu, &shared] {
            assert_eq!(counts(&mut rt, a), (total, total, 0, 0), "{point:?}");
        }
        detach(&mut rt, per_cpu);
        detach(&mut rt, shared);
    }
    // Nothing attached: the calls still run and count nowhere.
    let r = rt.trigger_bench(&all, 20).unwrap();
    assert!(r.calls() > 0, "{r:?}");
    assert!(rt.links().unwrap().is_empty());
}

#[test]
fn per_cpu_and_shared_counts_equal_the_calls_of_each_pinned_worker() {
    exact_counts(TestVm::boot("trig-exact"));
}

#[test]
fn the_same_on_4_vcpus() {
    exact_counts(TestVm::boot_cpus("trig-exact4", 4));
}

#[test]
fn bad_trigger_bench_requests_are_refused_with_the_reason() {
    let mut vm = TestVm::boot_cpus("trig-refuse", 2);
    let mut client = vm.client();
    let mut rt = Runtime::new(&mut client);
    assert_eq!(
        refusal(&mut rt, &[], 10),
        "TriggerBench: no CPUs given; this VM has 2 CPUs (0-1)"
    );
    assert_eq!(
        refusal(&mut rt, &[0, 7], 10),
        "TriggerBench: CPU 7 does not exist; this VM has 2 CPUs (0-1)"
    );
    assert_eq!(
        refusal(&mut rt, &[1, 0, 1], 10),
        "TriggerBench: CPU 1 is given twice"
    );
    assert_eq!(
        refusal(&mut rt, &[0], 0),
        "TriggerBench: 0 ms is outside 1 to 10000 ms"
    );
    assert_eq!(
        refusal(&mut rt, &[0], 10_001),
        "TriggerBench: 10001 ms is outside 1 to 10000 ms"
    );
    // Nothing was left running: a good request still works.
    let r = rt.trigger_bench(&[1], 10).unwrap();
    assert_eq!(r.workers.len(), 1);
    assert_eq!(r.workers[0].cpu, 1);
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number"))
        })
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: reports rates; run with --ignored --nocapture"]
fn trigger_benchmark_hits_per_second_on_1_and_more_cpus() {
    let vcpus = env_u32("KTRACE_TRIGGER_BENCH_CPUS", 2);
    let ms = env_u32("KTRACE_TRIGGER_BENCH_MS", 1000);
    let rounds = env_u32("KTRACE_TRIGGER_BENCH_ROUNDS", 3).max(1);
    let mut vm = TestVm::boot_cpus("trig-bench", vcpus);
    let mut client = vm.client();
    assert_eq!(client.info().unwrap().cpus, vcpus);
    let mut rt = Runtime::new(&mut client);
    // 1, 2, 4, ... CPUs up to the VM's.
    let sets: Vec<Vec<u32>> = std::iter::successors(Some(1u32), |n| Some(n * 2))
        .take_while(|&n| n <= vcpus)
        .map(|n| (0..n).collect())
        .collect();
    let header: Vec<String> = sets
        .iter()
        .map(|s| format!("{} CPU{}", s.len(), if s.len() == 1 { "" } else { "s" }))
        .collect();
    println!(
        "trigger benchmark: {vcpus} vCPUs, {ms} ms per measurement, medians of {rounds} rounds, hits/s (calls/s with nothing attached)"
    );
    // The scaling with nothing attached is what the host gave the vCPUs
    // (on a loaded host well below N): each case's ratio is also shown
    // divided by it.
    let mut table = vec![format!(
        "| | {} | {} | {} |",
        header.join(" | "),
        sets[1..]
            .iter()
            .map(|s| format!("{}/1", s.len()))
            .collect::<Vec<_>>()
            .join(" | "),
        sets[1..]
            .iter()
            .map(|s| format!("{}/1 ÷ nothing's", s.len()))
            .collect::<Vec<_>>()
            .join(" | ")
    )];
    table.push(format!("|---|{}", "---|".repeat(3 * sets.len() - 2)));
    let mut host_scaling: Option<Vec<f64>> = None;
    let mut cases: Vec<(String, Option<(Point, Counter)>)> =
        vec![("nothing attached".into(), None)];
    for point in POINTS {
        for counter in [Counter::PerCpu, Counter::Shared] {
            let tag = match counter {
                Counter::PerCpu => "per-CPU counter",
                Counter::Shared => "shared counter",
            };
            cases.push((format!("{}, {tag}", point.name()), Some((point, counter))));
        }
    }
    for (label, case) in cases {
        let attached = case.map(|(point, counter)| attach(&mut rt, point, counter));
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
        let mut calls = 0u64;
        // Interleaved: each round measures every CPU set once.
        for _ in 0..rounds {
            for (i, set) in sets.iter().enumerate() {
                let r = rt.trigger_bench(set, ms).unwrap();
                calls += r.calls();
                rates[i].push(r.calls_per_sec());
            }
        }
        if let Some(a) = attached {
            // The rates are of exact hits.
            let (hits, runs, misses, faults) = counts(&mut rt, &a);
            assert_eq!(
                (hits, runs, misses, faults),
                (calls, calls, 0, 0),
                "{label}"
            );
            assert_eq!(values(&mut rt, a.map).iter().sum::<u64>(), calls, "{label}");
            detach(&mut rt, a);
        }
        let medians: Vec<f64> = rates.into_iter().map(median).collect();
        let ratios: Vec<f64> = medians[1..].iter().map(|r| r / medians[0]).collect();
        let host = host_scaling.get_or_insert_with(|| ratios.clone()).clone();
        table.push(format!(
            "| {label} | {} | {} | {} |",
            medians
                .iter()
                .map(|r| format!("{:.0}", r))
                .collect::<Vec<_>>()
                .join(" | "),
            ratios
                .iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(" | "),
            ratios
                .iter()
                .zip(&host)
                .map(|(r, h)| format!("{:.2}", r / h))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    for line in table {
        println!("{line}");
    }
}
