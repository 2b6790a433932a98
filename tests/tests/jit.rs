//! The kernel's JIT end to end, through the CLI: the same clang-built
//! object loaded three times — JIT-compiled (the default), JIT-compiled
//! with constant blinding (`--jit-harden`) and interpreted
//! (`--interpreter`) — and fired by the same calls gives the same maps,
//! the same run statistics, the same faults and the same budget errors;
//! `ktrace prog list/show` say how each one runs, and `ktrace prog jit`
//! changes how loads without a flag run.

use ktrace_tests::{ktrace_ok, unique_name, CliVmGuard};
use probe_sdk::client::ConnectOptions;
use probe_sdk::runtime::Runtime;
use probe_sdk::vm::Vm;
use serde_json::Value;

/// Two programs on the probe target: `mix` updates a hash map from the
/// argument (with a 64-bit constant, which blinding must keep intact) and
/// sums the result of a `probe_read_kernel` of unmapped memory (the null
/// page: -EFAULT each time); `spin` first counts whether `arg & 7` is a
/// key of the 4-entry array `totals` (slot 2) or its lookup is NULL (slot
/// 3), then loops `arg & 63` times, so a small instruction budget stops
/// some runs and not others. The JIT computes the lookups of the array
/// inline (one in `mix`, three in `spin`).
const C_PROG: &str = r#"
#include "ktrace_helpers.h"
__attribute__((section("maps"), used)) struct bpf_map_def sums = { 1, 8, 8, 16, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def totals = { 2, 4, 8, 4, 0 };

__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int mix(struct pt_regs *ctx) {
    unsigned long long x = PT_REGS_PARM1(ctx);
    unsigned long long key = x % 5;
    unsigned long long next = (x * 3 + (x >> 2)) ^ 0x1234567890abcdefULL;
    unsigned long long *old = bpf_map_lookup_elem(&sums, &key);
    if (old) next += *old;
    bpf_map_update_elem(&sums, &key, &next, 0);
    unsigned long long got = 7;
    long r = bpf_probe_read_kernel(&got, 8, (void *)(x & 0xff0));
    unsigned int k = 0;
    unsigned long long *t = bpf_map_lookup_elem(&totals, &k);
    if (t) __sync_fetch_and_add(t, (unsigned long long)r + got);
    return 0;
}

__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int spin(struct pt_regs *ctx) {
    unsigned long long n = PT_REGS_PARM1(ctx) & 63, acc = 1;
    unsigned int j = n & 7;
    unsigned int slot = bpf_map_lookup_elem(&totals, &j) ? 2 : 3;
    unsigned long long *c = bpf_map_lookup_elem(&totals, &slot);
    if (c) __sync_fetch_and_add(c, 1);
#pragma clang loop unroll(disable)
    for (unsigned long long i = 0; i < n; i++) acc = acc * 31 + i;
    unsigned int k = 1;
    unsigned long long *t = bpf_map_lookup_elem(&totals, &k);
    if (t) __sync_fetch_and_add(t, acc);
    return 0;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"#;

const CALLS: u32 = 40;
const BUDGET: &str = "120";

/// What `mix` leaves in `sums` after the calls with arguments 0..CALLS.
fn expected_sums() -> Vec<(u64, u64)> {
    let mut sums = [None::<u64>; 5];
    for x in 0..u64::from(CALLS) {
        let next = (x * 3 + (x >> 2)) ^ 0x1234_5678_90ab_cdef;
        let slot = &mut sums[(x % 5) as usize];
        *slot = Some(next.wrapping_add(slot.unwrap_or(0)));
    }
    (0..5).map(|k| (k, sums[k as usize].unwrap())).collect()
}

/// `key -> value` pairs of a `map dump --json` of u64 keys and values.
fn pairs(dump: &Value) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = dump
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["key"].as_u64().unwrap(), e["value"].as_u64().unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn jit_interpreter_and_blinded_jit_agree_end_to_end() {
    let dir = std::env::temp_dir().join(format!("ktrace-jit-{}", std::process::id()));
    let obj = ktrace_tests::compile_c(&dir, "jit_prog", C_PROG);
    let obj = obj.to_str().unwrap();

    let name = unique_name("jit");
    let _guard = CliVmGuard(name.clone());
    ktrace_ok(&["vm", "start", "--name", &name]);
    let vm = ["--vm", name.as_str()];
    let run = |args: &[&str]| ktrace_ok(&[&vm[..], args].concat());

    // (pin name, extra flags, EXEC column)
    let modes: [(&str, &[&str], &str); 3] = [
        ("jitted", &[], "jit"),
        ("hardened", &["--jit-harden"], "jit+blind"),
        ("interp", &["--interpreter"], "interp"),
    ];
    let mut loaded = Vec::new();
    for (pin, flags, _) in &modes {
        let mut args = vec!["load", obj, "--pin", pin, "--insn-budget", BUDGET, "--json"];
        args.extend_from_slice(flags);
        let out: Value = serde_json::from_str(&run(&args)).unwrap();
        loaded.push(out);
    }
    {
        let v = Vm::attach(&name).unwrap();
        let mut client = v.connect(&ConnectOptions::default()).unwrap();
        Runtime::new(&mut client).trigger(CALLS, 0).unwrap();
    }

    let progs: Value = serde_json::from_str(&run(&["prog", "list", "--json"])).unwrap();
    let progs = progs.as_array().unwrap();
    assert_eq!(progs.len(), 6, "two programs per object");
    let text = run(&["prog", "list"]);
    assert!(text.lines().next().unwrap().contains("EXEC"), "{text}");

    // Per object: its programs' statistics and its maps' contents.
    let mut seen = Vec::new();
    for ((_, _, exec), out) in modes.iter().zip(&loaded) {
        let map_id = |n: &str| {
            out["maps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == n)
                .unwrap_or_else(|| panic!("map {n} in {out}"))["id"]
                .as_u64()
                .unwrap()
                .to_string()
        };
        let sums = pairs(
            &serde_json::from_str(&run(&["map", "dump", &map_id("sums"), "--json"])).unwrap(),
        );
        let totals = pairs(
            &serde_json::from_str(&run(&["map", "dump", &map_id("totals"), "--json"])).unwrap(),
        );
        assert_eq!(sums, expected_sums(), "{exec}: sums");
        // -EFAULT per run, and `got` zeroed by the failed read.
        assert_eq!(
            totals[0],
            (0, (-14i64 as u64).wrapping_mul(u64::from(CALLS))),
            "{exec}"
        );
        // Arguments 0..CALLS: `arg & 7` is below 4 for half of them.
        let found = u64::from(CALLS) / 2;
        assert_eq!(
            (totals[2], totals[3]),
            ((2, found), (3, u64::from(CALLS) - found)),
            "{exec}: lookups in and out of range"
        );
        let mut stats = Vec::new();
        for p in out["programs"].as_array().unwrap() {
            let id = p["id"].as_u64().unwrap();
            let info = progs.iter().find(|q| q["id"] == id).unwrap();
            assert_eq!(info["run_count"], CALLS, "{exec}: {info}");
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
                .unwrap();
            assert_eq!(line.split_whitespace().nth(4), Some(*exec), "{line}");
            let show = run(&["prog", "show", &id.to_string()]);
            let exec_line = show
                .lines()
                .find(|l| l.starts_with("exec:"))
                .unwrap()
                .to_string();
            match *exec {
                "interp" => assert_eq!(
                    exec_line,
                    "exec:         interpreted (the load asked for the interpreter)"
                ),
                _ => {
                    let bytes = info["exec"]["Jit"]["native_bytes"].as_u64().unwrap();
                    assert!(bytes > 0, "{info}");
                    let inlined = match info["name"].as_str().unwrap() {
                        "mix" => "1 array lookup inlined",
                        _ => "3 array lookups inlined",
                    };
                    assert_eq!(
                        exec_line,
                        format!(
                            "exec:         JIT-compiled, {bytes} bytes of native code{}, {inlined}",
                            if *exec == "jit+blind" {
                                ", constants blinded"
                            } else {
                                ""
                            }
                        )
                    );
                }
            }
            stats.push((
                info["name"].clone(),
                info["insns_executed"].clone(),
                info["faults"].clone(),
                info["budget_exhausted"].clone(),
                info["last_error"].clone(),
                info["misses"].clone(),
            ));
        }
        stats.sort_by_key(|s| s.0.to_string());
        seen.push((exec, sums, totals, stats));
    }
    // `spin` ran out of budget on the long loops only.
    let spin = seen[0].3.iter().find(|s| s.0 == "spin").unwrap();
    let stopped = spin.3.as_u64().unwrap();
    assert!(stopped > 0 && stopped < u64::from(CALLS), "{spin:?}");
    assert!(
        spin.4.as_str().unwrap().contains("budget"),
        "last error names the budget: {spin:?}"
    );
    for other in &seen[1..] {
        assert_eq!(
            (&other.1, &other.2, &other.3),
            (&seen[0].1, &seen[0].2, &seen[0].3),
            "{} differs from {}",
            other.0,
            seen[0].0
        );
    }

    // The kernel-wide default (`ktrace prog jit`), for loads without a flag.
    assert_eq!(
        run(&["prog", "jit"]).trim(),
        "jit: on (programs loaded from now on are JIT-compiled)"
    );
    let exec_of = |pin: &str| -> (String, String) {
        let out: Value =
            serde_json::from_str(&run(&["load", obj, "--pin", pin, "--no-attach", "--json"]))
                .unwrap();
        let id = out["programs"][0]["id"].as_u64().unwrap().to_string();
        let list = run(&["prog", "list"]);
        let line = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id.as_str()))
            .unwrap();
        let show = run(&["prog", "show", &id]);
        let exec = show.lines().find(|l| l.starts_with("exec:")).unwrap();
        (
            line.split_whitespace().nth(4).unwrap().to_string(),
            exec.to_string(),
        )
    };
    assert_eq!(
        run(&["prog", "jit", "off"]).trim(),
        "jit: off (programs loaded from now on are interpreted)"
    );
    assert_eq!(
        exec_of("default-off"),
        (
            "interp".to_string(),
            "exec:         interpreted (the default, set by `ktrace prog jit off`)".to_string()
        )
    );
    // Loaded programs keep how they run.
    let list = run(&["prog", "list"]);
    let first = loaded[0]["programs"][0]["id"].as_u64().unwrap().to_string();
    let line = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first.as_str()))
        .unwrap();
    assert_eq!(line.split_whitespace().nth(4), Some("jit"), "{line}");
    // A flag wins over the default.
    let out: Value = serde_json::from_str(&run(&[
        "load",
        obj,
        "--pin",
        "harden-flag",
        "--no-attach",
        "--jit-harden",
        "--json",
    ]))
    .unwrap();
    assert_eq!(out["programs"][0]["exec"]["Jit"]["blinded"], true, "{out}");
    assert_eq!(
        run(&["prog", "jit", "harden", "--json"]).trim(),
        r#"{"jit":"harden"}"#
    );
    let (col, exec) = exec_of("default-harden");
    assert_eq!(col, "jit+blind");
    assert!(
        exec.contains("bytes of native code, constants blinded"),
        "{exec}"
    );
    assert_eq!(
        run(&["prog", "jit", "on"]).trim(),
        "jit: on (programs loaded from now on are JIT-compiled)"
    );
    assert_eq!(exec_of("default-on").0, "jit");
    let bad = ktrace_tests::ktrace()
        .args([&vm[..], &["prog", "jit", "maybe"]].concat())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("[possible values: on, off, harden]"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Run timing (`ktrace prog stats`): off by default, so the runs above
    // were counted but not timed; on, each run adds to RUN_NS; off again,
    // RUN_NS stays while RUNS goes on counting.
    let attached: Vec<u64> = loaded
        .iter()
        .flat_map(|o| o["programs"].as_array().unwrap().clone())
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    let listed = || -> Vec<(u64, u64)> {
        let progs: Value = serde_json::from_str(&run(&["prog", "list", "--json"])).unwrap();
        attached
            .iter()
            .map(|id| {
                let p = progs
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["id"] == *id)
                    .unwrap();
                (
                    p["run_count"].as_u64().unwrap(),
                    p["run_time_ns"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let trigger = || {
        let v = Vm::attach(&name).unwrap();
        let mut client = v.connect(&ConnectOptions::default()).unwrap();
        Runtime::new(&mut client).trigger(CALLS, 0).unwrap();
    };
    let calls = u64::from(CALLS);
    assert_eq!(
        run(&["prog", "stats"]).trim(),
        "stats: off (runs are counted, not timed)"
    );
    assert_eq!(listed(), vec![(calls, 0); attached.len()]);
    assert_eq!(
        run(&["prog", "stats", "on"]).trim(),
        "stats: on (runs are timed into RUN_NS)"
    );
    trigger();
    let timed = listed();
    for &(runs, ns) in &timed {
        assert_eq!(runs, 2 * calls, "{timed:?}");
        assert!(ns > 0, "{timed:?}");
    }
    assert_eq!(
        run(&["prog", "stats", "off", "--json"]).trim(),
        r#"{"stats":false}"#
    );
    trigger();
    assert_eq!(
        listed(),
        timed
            .iter()
            .map(|&(_, ns)| (3 * calls, ns))
            .collect::<Vec<_>>()
    );
    let bad = ktrace_tests::ktrace()
        .args([&vm[..], &["prog", "stats", "sometimes"]].concat())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("[possible values: on, off]"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn interpreter_and_jit_harden_flags_conflict() {
    let out = ktrace_tests::ktrace()
        .args(["load", "x.o", "--interpreter", "--jit-harden"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--jit-harden") && err.contains("cannot be used with"),
        "{err}"
    );
}

const BENCH_PROG: &str = r#"
#include "ktrace_helpers.h"
__attribute__((section("maps"), used)) struct bpf_map_def counts = { 1, 4, 8, 4, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def slots = { 2, 4, 8, 4, 0 };
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int empty(void *ctx) { return 0; }
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int update(void *ctx) {
    unsigned int key = 0;
    unsigned long long one = 1;
    bpf_map_update_elem(&counts, &key, &one, 0);
    return 0;
}
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int lookup(void *ctx) {
    unsigned int key = 1;
    unsigned long long *v = bpf_map_lookup_elem(&slots, &key);
    if (v) __sync_fetch_and_add(v, 1);
    return 0;
}
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int helper(void *ctx) { return bpf_get_smp_processor_id(); }
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int aupdate(void *ctx) {
    unsigned int key = 0;
    unsigned long long one = 1;
    bpf_map_update_elem(&slots, &key, &one, 0);
    return 0;
}
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int loop(unsigned long long *regs) {
    unsigned long long h = regs[14]; /* pt_regs.di */
#pragma clang loop unroll(disable)
    for (unsigned int i = 0; i < 100; i++) h = (h ^ (h >> 29) ^ i) * 0xbf58476d1ce4e5b9ULL;
    return h >> 32;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"#;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// One program of [`BENCH_PROG`], loaded for one engine.
struct BenchProg {
    /// `empty`, `helper` (one call of the cheapest helper: the cost of a
    /// helper call's way in and out), `lookup` (an array lookup and an
    /// atomic add to the value: compiled inline by the JIT), `aupdate` (one
    /// array update through the helper), `update` (one hash map update) or
    /// `loop`.
    name: String,
    engine: ktrace_abi::bpf::Engine,
    id: u32,
    target: ktrace_abi::bpf::AttachTarget,
}

/// The set-up both per-hit benchmarks share: [`BENCH_PROG`] compiled and
/// prepared, a VM booted as `vm_name`, every program loaded once
/// interpreted and once JIT-compiled, then `body` with the runtime and,
/// under `JIT_BENCH_ICOUNT=shift=N` (QEMU `-icount`: the TSC then counts
/// guest instructions, 2^N per instruction), the shift.
/// `JIT_BENCH_KERNEL=ELF` boots that kernel instead of this tree's.
fn with_bench_programs(
    vm_name: &str,
    body: impl FnOnce(&mut Runtime<'_>, &[BenchProg], Option<u32>),
) {
    use ktrace_abi::bpf::{Engine, LoadOptions};
    use ktrace_tests::{kernel_image, TestVm};
    use probe_sdk::runtime::prepare;

    let dir = std::env::temp_dir().join(format!("ktrace-{vm_name}-{}", std::process::id()));
    let obj = ktrace_tests::compile_c(&dir, "bench", BENCH_PROG);
    let mut cfg = ktrace_tests::test_config(vm_name);
    let icount = ktrace_tests::icount_from_env(&mut cfg, "JIT_BENCH_ICOUNT");
    // Another build's kernel (a self-tests build), for before/after runs.
    if let Ok(kernel) = std::env::var("JIT_BENCH_KERNEL") {
        cfg.kernel = Some(kernel.into());
    }
    let kernel = cfg.kernel.clone().unwrap_or(kernel_image().source.clone());
    let prepared = prepare(&obj, &kernel, &mut |_| {}).unwrap();
    let mut vm = TestVm::boot_with(cfg);
    let mut client = vm.client();
    client.set_request_timeout(std::time::Duration::from_secs(120));
    let mut rt = Runtime::new(&mut client);
    let mut progs = Vec::new();
    for engine in [Engine::Interpreter, Engine::Jit] {
        let loaded = rt
            .load_object(
                &format!("bench-{engine:?}"),
                prepared.object.clone().into_load(),
                false,
                LoadOptions {
                    engine: Some(engine),
                    ..LoadOptions::default()
                },
            )
            .unwrap();
        for p in &loaded.programs {
            let target = prepared
                .object
                .programs
                .iter()
                .find(|q| q.name == p.name)
                .unwrap()
                .attach
                .clone();
            progs.push(BenchProg {
                name: p.name.clone(),
                engine,
                id: p.id,
                target,
            });
        }
    }
    body(&mut rt, &progs, icount);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Calls of the probe target in `batches` batches of `per_batch`; the
/// cheapest batch counts (on a loaded host a few calls in a thousand take
/// 4,000 to 16,000,000 cycles, the vCPU thread descheduled, which a mean
/// over all calls charges to whatever happened to be running; see
/// docs/jit.md). Returns its TSC cycles per call and, with `prog`, the
/// cheapest batch's run time per run of that program (ns; 0 unless runs
/// are timed), after checking that every call ran it.
fn cheapest_batch(
    rt: &mut Runtime<'_>,
    prog: Option<&BenchProg>,
    batches: u32,
    per_batch: u32,
) -> (u64, u64) {
    let info = |rt: &mut Runtime<'_>, id: u32| {
        rt.progs()
            .unwrap()
            .into_iter()
            .find(|p| p.id == id)
            .unwrap()
    };
    let (mut cycles, mut run_ns) = (u64::MAX, u64::MAX);
    for _ in 0..batches {
        let before = prog.map(|p| info(rt, p.id));
        let b = rt.bench(per_batch).unwrap();
        cycles = cycles.min(b.cycles_per_call);
        if let (Some(p), Some(before)) = (prog, before) {
            let after = info(rt, p.id);
            assert_eq!(
                after.run_count - before.run_count,
                u64::from(per_batch),
                "{} {:?}: every call ran the program",
                p.name,
                p.engine
            );
            assert_eq!(after.faults, 0, "{}: {:?}", p.name, after.last_error);
            run_ns = run_ns.min((after.run_time_ns - before.run_time_ns) / u64::from(per_batch));
        }
    }
    (cycles, run_ns)
}

/// Per-hit cost of an empty program, one helper call, an array lookup, an
/// array update, a hash map update and a 100-iteration ALU loop (no
/// helper) on a jump-optimised kprobe of the probe target,
/// interpreted and JIT-compiled, in one boot, after the in-kernel
/// breakdown of one hit (self test `hit_cost`, which checks its own
/// counts). Five rounds, the engines alternating which goes first, each
/// figure the cheapest of ten batches, medians printed:
/// - *adds*: TSC cycles a hit costs over a hit of the same probe with no
///   program (its counting handler), run timing off (the default): what
///   running the program costs, all included;
/// - *own*: that less the JIT's empty program, i.e. less the floor every
///   run pays whatever its engine and code (the per-CPU flag, the epoch,
///   the counters, the call into the engine);
/// - *run ns*: the program's `run_time_ns` per run with timing on, which
///   includes the two clock reads.
///
/// Timing is reported, never asserted; what is asserted is that every call
/// ran the program. The same boot runs the self test of the JIT's
/// executable memory (W^X). `JIT_BENCH_ICOUNT=shift=N` counts guest
/// instructions instead (one round; see [`with_bench_programs`]).
#[test]
fn per_hit_cost_interpreter_vs_jit() {
    use ktrace_abi::trace::{ProbeKind, ProbeTarget};
    use probe_sdk::trace::TraceClient;

    with_bench_programs("jit-bench", |rt, progs, icount| {
        // The code's memory first: executable and never writable, writable
        // data again once freed.
        let r = rt.client().self_test("exec_mem_wx").unwrap();
        assert!(r.passed, "exec_mem_wx: {:#?}", r.output);
        let r = rt.client().self_test("hit_cost").unwrap();
        assert!(r.passed, "hit_cost: {:#?}", r.output);
        println!("self test hit_cost:");
        for line in &r.output {
            println!("  {line}");
        }
        // Under icount a batch's count is the same from round to round
        // but for the timer interrupts that land in it: one round, and the
        // cheapest of a few batches drops those.
        let (rounds, batches, per_batch) = match icount {
            Some(_) => (1, 4, 2_000),
            None => (5, 10, 2_000),
        };
        // Cycles under TCG; guest instructions under icount.
        let (unit, scale) = match icount {
            Some(shift) => ("instructions", 1u64 << shift),
            None => ("cycles", 1),
        };
        let (mut bare, mut probe) = (Vec::new(), Vec::new());
        // (engine, name) -> (adds, run ns)
        let mut cost: std::collections::BTreeMap<(String, String), (Vec<u64>, Vec<u64>)> =
            Default::default();
        for round in 0..rounds {
            bare.push(cheapest_batch(rt, None, batches, per_batch).0);
            let p = rt
                .client()
                .add_probe(
                    ProbeTarget::Symbol {
                        name: "kernel::bpf::testing::target".into(),
                        offset: 0,
                    },
                    ProbeKind::Kprobe,
                )
                .unwrap();
            let no_program = cheapest_batch(rt, None, batches, per_batch).0;
            rt.client().remove_probe(p.id).unwrap();
            probe.push(no_program);
            let order: Vec<&BenchProg> = if round % 2 == 0 {
                progs.iter().collect()
            } else {
                progs.iter().rev().collect()
            };
            for p in order {
                let link = rt.attach(p.id, p.target.clone(), false).unwrap();
                let (hit, _) = cheapest_batch(rt, Some(p), batches, per_batch);
                rt.run_time_stats(Some(true)).unwrap();
                let (_, run) = cheapest_batch(rt, Some(p), batches, per_batch);
                rt.run_time_stats(Some(false)).unwrap();
                rt.detach(link.id).unwrap();
                let e = cost
                    .entry((format!("{:?}", p.engine), p.name.clone()))
                    .or_default();
                e.0.push(hit.saturating_sub(no_program));
                e.1.push(run);
            }
        }
        let (bare, probe) = (median(bare) / scale, median(probe) / scale);
        println!(
            "per-hit cost, cheapest of {batches} batches of {per_batch} calls, median of {rounds} rounds{}; \
             bare call {bare} {unit}, jump-optimised kprobe with no program +{} {unit}",
            match icount {
                Some(shift) => format!(" (QEMU -icount shift={shift}: guest instructions)"),
                None => String::new(),
            },
            probe.saturating_sub(bare)
        );
        let adds =
            |e: &str, n: &str| median(cost[&(e.to_string(), n.to_string())].0.clone()) / scale;
        let run_ns = |e: &str, n: &str| median(cost[&(e.to_string(), n.to_string())].1.clone());
        let floor = adds("Jit", "empty");
        let names = ["empty", "helper", "lookup", "aupdate", "update", "loop"];
        for name in names {
            for engine in ["Interpreter", "Jit"] {
                println!(
                    "  {engine:<12} {name:<7} adds {:>6} {unit}, own {:>6} {unit}, run {:>6} ns (timing on)",
                    adds(engine, name),
                    adds(engine, name).saturating_sub(floor),
                    run_ns(engine, name)
                );
            }
        }
        let ratio = |a: u64, b: u64| match b {
            0 => String::from("-"),
            _ => format!("{:.2}x", a as f64 / b as f64),
        };
        for name in names {
            let (i, j) = (adds("Interpreter", name), adds("Jit", name));
            println!(
                "  {name}: interpreter/JIT: adds {}, own (less the floor of {floor} {unit}) {}, run ns {}",
                ratio(i, j),
                ratio(i.saturating_sub(floor), j.saturating_sub(floor)),
                ratio(run_ns("Interpreter", name), run_ns("Jit", name))
            );
        }
    });
}

/// Per-hit cost by probe mode, in one boot (issue 18): TSC cycles per call
/// of the probe target unprobed, and with an `int3` (single-stepped),
/// boosted and jump-optimised kprobe on its first instruction, each with
/// no program (the built-in counting handler), an empty program and a
/// map-update program, interpreted and JIT-compiled, run timing off (the
/// default). Three rounds, the modes rotating, each figure the cheapest of
/// five batches, medians printed as cycles over the unprobed call and as
/// ratios to the optimised probe. Timing is reported, never asserted;
/// asserted are the mode each probe runs in and that every call was
/// counted or ran the program (`cargo test -p ktrace-tests --test jit --
/// --ignored --nocapture per_hit_cost_by_probe_mode`; about a minute of
/// QEMU time, so not in the default run: `tests/tests/optprobe.rs` checks
/// the modes and counts there).
#[test]
#[ignore = "benchmark: a minute of QEMU time"]
fn per_hit_cost_by_probe_mode() {
    use ktrace_abi::trace::{ProbeKind, ProbeMode, ProbeTarget};
    use probe_sdk::trace::TraceClient;

    with_bench_programs("mode-bench", |rt, progs, _| {
        let progs: Vec<&BenchProg> = progs
            .iter()
            .filter(|p| p.name == "empty" || p.name == "update")
            .collect();
        let set_mode = |rt: &mut Runtime<'_>, mode: ProbeMode| {
            let boost = if mode == ProbeMode::Int3 { "off" } else { "on" };
            let r = rt
                .client()
                .self_test(&format!("kprobe_boosting:{boost}"))
                .unwrap();
            assert!(r.passed, "{r:?}");
            rt.client()
                .optimisation(Some(mode == ProbeMode::Optimised))
                .unwrap();
        };
        let (rounds, batches, per_batch) = (3, 5, 2_000u32);
        let modes = [ProbeMode::Int3, ProbeMode::Boosted, ProbeMode::Optimised];
        let mut bare = Vec::new();
        // (mode, handler) -> cycles per call
        let mut cost: std::collections::BTreeMap<(String, String), Vec<u64>> = Default::default();
        for round in 0..rounds {
            bare.push(cheapest_batch(rt, None, batches, per_batch).0);
            for k in 0..modes.len() {
                let mode = modes[(k + round) % modes.len()];
                set_mode(rt, mode);
                // The counting handler: no program.
                let p = rt
                    .client()
                    .add_probe(
                        ProbeTarget::Symbol {
                            name: "kernel::bpf::testing::target".into(),
                            offset: 0,
                        },
                        ProbeKind::Kprobe,
                    )
                    .unwrap();
                assert_eq!(p.mode, mode, "{p:?}");
                let (c, _) = cheapest_batch(rt, None, batches, per_batch);
                let listed = rt.client().list_probes().unwrap();
                assert_eq!(
                    listed[0].hits,
                    u64::from(batches * per_batch),
                    "{mode:?}: every call counted"
                );
                rt.client().remove_probe(p.id).unwrap();
                cost.entry((format!("{mode:?}"), "no program".into()))
                    .or_default()
                    .push(c);
                for p in &progs {
                    let link = rt.attach(p.id, p.target.clone(), false).unwrap();
                    let listed = rt.client().list_probes().unwrap();
                    assert_eq!(listed[0].mode, mode, "{}: {listed:?}", p.name);
                    let (c, _) = cheapest_batch(rt, Some(p), batches, per_batch);
                    rt.detach(link.id).unwrap();
                    cost.entry((format!("{mode:?}"), format!("{} {:?}", p.name, p.engine)))
                        .or_default()
                        .push(c);
                }
            }
        }
        set_mode(rt, ProbeMode::Optimised);
        let base = median(bare);
        println!(
            "TSC cycles per call, cheapest of {batches} batches of {per_batch} calls, median of {rounds} rounds; unprobed call {base} cycles"
        );
        println!(
            "  {:<20} {:>10} {:>10} {:>10}  int3/opt  boosted/opt",
            "handler", "int3", "boosted", "optimised"
        );
        let mut handlers: Vec<String> = vec!["no program".into()];
        handlers.extend(progs.iter().map(|p| format!("{} {:?}", p.name, p.engine)));
        for h in &handlers {
            let c = |m: &str| {
                median(cost[&(m.to_string(), h.clone())].clone())
                    .saturating_sub(base)
                    .max(1)
            };
            let (i, b, o) = (c("Int3"), c("Boosted"), c("Optimised"));
            println!(
                "  {h:<20} {:>+10} {:>+10} {:>+10}  {:>7.1}x  {:>10.1}x",
                i,
                b,
                o,
                i as f64 / o as f64,
                b as f64 / o as f64
            );
        }
    });
}
