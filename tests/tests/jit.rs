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
/// page: -EFAULT each time); `spin` loops `arg & 63` times, so a small
/// instruction budget stops some runs and not others.
const C_PROG: &str = r#"
struct bpf_map_def { unsigned int type, key_size, value_size, max_entries, map_flags; };
__attribute__((section("maps"), used)) struct bpf_map_def sums = { 1, 8, 8, 16, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def totals = { 2, 4, 8, 4, 0 };
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *) 1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, unsigned long long flags) = (void *) 2;
static long (*bpf_probe_read_kernel)(void *dst, unsigned int size, const void *src) = (void *) 113;
struct pt_regs { unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss; };

__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int mix(struct pt_regs *ctx) {
    unsigned long long x = ctx->di;
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
    unsigned long long n = ctx->di & 63, acc = 1;
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
                    assert_eq!(
                        exec_line,
                        format!(
                            "exec:         JIT-compiled, {bytes} bytes of native code{}",
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
        exec.ends_with("bytes of native code, constants blinded"),
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
struct bpf_map_def { unsigned int type, key_size, value_size, max_entries, map_flags; };
__attribute__((section("maps"), used)) struct bpf_map_def counts = { 1, 4, 8, 4, 0 };
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, unsigned long long flags) = (void *) 2;
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

/// Per-hit cost of an empty, a map-update and a 100-iteration ALU loop
/// program (no helper) on the kprobe of the
/// probe target, interpreted and JIT-compiled, in one boot: five rounds,
/// the engines alternating which goes first, each round's figure the
/// cheapest of ten batches (robust to the rare calls a loaded host stalls
/// for milliseconds), medians printed. Timing is
/// reported, never asserted; what is asserted is that every call ran the
/// program. The same boot runs the self test of the JIT's executable
/// memory (W^X).
#[test]
fn per_hit_cost_interpreter_vs_jit() {
    use ktrace_abi::bpf::{Engine, LoadOptions};
    use ktrace_tests::{kernel_image, TestVm};
    use probe_sdk::runtime::prepare;

    let dir = std::env::temp_dir().join(format!("ktrace-jit-bench-{}", std::process::id()));
    let obj = ktrace_tests::compile_c(&dir, "bench", BENCH_PROG);
    let prepared = prepare(&obj, &kernel_image().source, &mut |_| {}).unwrap();

    let mut vm = TestVm::boot("jit-bench");
    let mut client = vm.client();
    // The code's memory first: executable and never writable, writable
    // data again once freed.
    let r = client.self_test("exec_mem_wx").unwrap();
    assert!(r.passed, "exec_mem_wx: {:#?}", r.output);
    let mut rt = Runtime::new(&mut client);
    let engines = [Engine::Interpreter, Engine::Jit];
    // (engine, program name) -> (prog id, attach target)
    let mut progs = Vec::new();
    for engine in engines {
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
            progs.push((engine, p.name.clone(), p.id, target));
        }
    }
    let n = 20_000;
    let rounds = 5;
    // Each round's calls go in short batches and the cheapest batch counts:
    // the figures are means over many calls, and on a loaded host a few
    // calls in a thousand take 4,000 to 16,000,000 cycles (the vCPU thread
    // descheduled), which a mean over all calls charges to whichever
    // program happened to be running (see docs/jit.md).
    let batches = 10;
    let per_batch = n / batches;
    let mut none = Vec::new();
    // (engine, name) -> (per-hit cycles over the bare call, in-program ns,
    // in-program ns as the mean over all calls)
    type Figures = (Vec<u64>, Vec<u64>, Vec<u64>);
    let mut cost: std::collections::BTreeMap<(String, String), Figures> = Default::default();
    let stats = |rt: &mut Runtime<'_>, id: u32| {
        rt.progs()
            .unwrap()
            .into_iter()
            .find(|p| p.id == id)
            .unwrap()
    };
    for round in 0..rounds {
        none.push(
            (0..batches)
                .map(|_| rt.bench(per_batch).unwrap().cycles_per_call)
                .min()
                .unwrap(),
        );
        let order: Vec<_> = if round % 2 == 0 {
            progs.iter().collect()
        } else {
            progs.iter().rev().collect()
        };
        for (engine, name, id, target) in order {
            let first = stats(&mut rt, *id);
            let link = rt.attach(*id, target.clone(), false).unwrap();
            let (mut hit, mut run) = (u64::MAX, u64::MAX);
            for _ in 0..batches {
                let before = stats(&mut rt, *id);
                let b = rt.bench(per_batch).unwrap();
                let after = stats(&mut rt, *id);
                assert_eq!(
                    after.run_count - before.run_count,
                    u64::from(per_batch),
                    "{name}"
                );
                hit = hit.min(b.cycles_per_call);
                run = run.min((after.run_time_ns - before.run_time_ns) / u64::from(per_batch));
            }
            rt.detach(link.id).unwrap();
            let last = stats(&mut rt, *id);
            assert_eq!(last.run_count - first.run_count, u64::from(n), "{name}");
            assert_eq!(last.faults, 0, "{name}: {:?}", last.last_error);
            let e = cost
                .entry((format!("{engine:?}"), name.clone()))
                .or_default();
            e.0.push(hit);
            e.1.push(run);
            e.2.push((last.run_time_ns - first.run_time_ns) / u64::from(n));
        }
    }
    let base = median(none);
    println!(
        "per-hit cost, cheapest of {batches} batches of {per_batch} calls, median of {rounds} rounds; bare call {base} cycles"
    );
    for ((engine, name), (hit, run, mean)) in &cost {
        println!(
            "  {engine:<12} {name:<7} kprobe hit +{} cycles, program run {} ns (mean over all calls {} ns)",
            median(hit.clone()).saturating_sub(base),
            median(run.clone()),
            median(mean.clone())
        );
    }
    for name in ["empty", "update", "loop"] {
        let run = |e: &str| median(cost[&(e.to_string(), name.to_string())].1.clone()).max(1);
        println!(
            "  {name}: program run interpreter/JIT = {:.2}x",
            run("Interpreter") as f64 / run("Jit") as f64
        );
    }
}

/// Per-hit cost by probe mode, in one boot (issue 18): TSC cycles per call
/// of the probe target unprobed, and with an `int3` (single-stepped),
/// boosted and jump-optimised kprobe on its first instruction, each with
/// no program (the built-in counting handler), an empty program and a
/// map-update program, interpreted and JIT-compiled. Three rounds, the
/// modes rotating, medians printed as cycles over the unprobed call and
/// as ratios to the optimised probe. Timing is reported, never asserted;
/// asserted are the mode each probe runs in and that every call was
/// counted or ran the program (`cargo test -p ktrace-tests --test jit --
/// --ignored --nocapture per_hit_cost_by_probe_mode`; about a minute of
/// QEMU time, so not in the default run: `tests/tests/optprobe.rs` checks
/// the modes and counts there).
#[test]
#[ignore = "benchmark: a minute of QEMU time"]
fn per_hit_cost_by_probe_mode() {
    use ktrace_abi::bpf::{Engine, LoadOptions};
    use ktrace_abi::trace::{ProbeKind, ProbeMode, ProbeTarget};
    use ktrace_tests::{kernel_image, TestVm};
    use probe_sdk::runtime::prepare;
    use probe_sdk::trace::TraceClient;

    let dir = std::env::temp_dir().join(format!("ktrace-mode-bench-{}", std::process::id()));
    let obj = ktrace_tests::compile_c(&dir, "bench", BENCH_PROG);
    let prepared = prepare(&obj, &kernel_image().source, &mut |_| {}).unwrap();
    let mut vm = TestVm::boot("mode-bench");
    let mut client = vm.client();
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
        for p in loaded.programs.iter().filter(|p| p.name != "loop") {
            let target = prepared
                .object
                .programs
                .iter()
                .find(|q| q.name == p.name)
                .unwrap()
                .attach
                .clone();
            progs.push((format!("{} {engine:?}", p.name), p.id, target));
        }
    }
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
    let n = 10_000u32;
    let rounds = 3;
    let modes = [ProbeMode::Int3, ProbeMode::Boosted, ProbeMode::Optimised];
    let mut bare = Vec::new();
    // (mode, handler) -> cycles per call
    let mut cost: std::collections::BTreeMap<(String, String), Vec<u64>> = Default::default();
    for round in 0..rounds {
        bare.push(rt.bench(n).unwrap().cycles_per_call);
        for k in 0..modes.len() {
            let mode = modes[(k + round) % modes.len()];
            set_mode(&mut rt, mode);
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
            let b = rt.bench(n).unwrap();
            let listed = rt.client().list_probes().unwrap();
            assert_eq!(listed[0].hits, u64::from(n), "{mode:?}: every call counted");
            rt.client().remove_probe(p.id).unwrap();
            cost.entry((format!("{mode:?}"), "no program".into()))
                .or_default()
                .push(b.cycles_per_call);
            for (name, id, target) in &progs {
                let before = rt
                    .progs()
                    .unwrap()
                    .into_iter()
                    .find(|p| p.id == *id)
                    .unwrap();
                let link = rt.attach(*id, target.clone(), false).unwrap();
                let listed = rt.client().list_probes().unwrap();
                assert_eq!(listed[0].mode, mode, "{name}: {listed:?}");
                let b = rt.bench(n).unwrap();
                rt.detach(link.id).unwrap();
                let after = rt
                    .progs()
                    .unwrap()
                    .into_iter()
                    .find(|p| p.id == *id)
                    .unwrap();
                assert_eq!(after.run_count - before.run_count, u64::from(n), "{name}");
                cost.entry((format!("{mode:?}"), name.clone()))
                    .or_default()
                    .push(b.cycles_per_call);
            }
        }
    }
    set_mode(&mut rt, ProbeMode::Optimised);
    let base = median(bare);
    println!("TSC cycles per call over {n} calls x {rounds} rounds (medians); unprobed call {base} cycles");
    println!(
        "  {:<20} {:>10} {:>10} {:>10}  int3/opt  boosted/opt",
        "handler", "int3", "boosted", "optimised"
    );
    let mut handlers: Vec<String> = vec!["no program".into()];
    handlers.extend(progs.iter().map(|p| p.0.clone()));
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
    let _ = std::fs::remove_dir_all(&dir);
}
