//! What tracing costs block I/O: issue 18's IOPS benchmark (`cargo test
//! -p ktrace-tests --test iops -- --ignored --nocapture`).
//!
//! The issue's figure is IOPS traced ÷ untraced "with biolatency and all
//! block tracepoints attached". biolatency alone (as the tool runs it)
//! attaches two programs, to `block_rq_issue` and `block_rq_complete`; the
//! other four block tracepoints would stay off (a 5-byte `nop`). So the
//! traced mode of the figure is biolatency plus a counting program (one
//! per-CPU array slot incremented, what `kperf stat`-like BPF counting
//! does) on each of the six block tracepoints, every one of them then
//! carrying at least one program. biolatency alone is measured too.

use std::collections::BTreeMap;
use std::time::Duration;

use ktrace_abi::block::{RwMode, WorkloadLimit, WorkloadSpec};
use ktrace_abi::bpf::{Engine, LoadOptions};
use ktrace_tests::{disk_config, kernel_image, TestVm};
use probe_sdk::build::{build, BuildOptions};
use probe_sdk::runtime::{prepare, Runtime};

/// The six block tracepoints, in the counting program's slot order.
const BLOCK_EVENTS: [&str; 6] = [
    "block_bio_queue",
    "block_bio_backmerge",
    "block_bio_frontmerge",
    "block_rq_insert",
    "block_rq_issue",
    "block_rq_complete",
];

/// One program per block tracepoint, each adding one to its own slot of a
/// per-CPU array (slots in [`BLOCK_EVENTS`] order).
const COUNT_PROG: &str = r#"
#include "ktrace_helpers.h"
__attribute__((section("maps"), used)) struct bpf_map_def events = { 6, 4, 8, 6, 0 };
#define COUNT(name, slot) \
__attribute__((section("tracepoint/block/" #name), used)) \
int name(void *ctx) { \
    unsigned int k = slot; \
    unsigned long long *v = bpf_map_lookup_elem(&events, &k); \
    if (v) *v += 1; \
    return 0; \
}
COUNT(block_bio_queue, 0)
COUNT(block_bio_backmerge, 1)
COUNT(block_bio_frontmerge, 2)
COUNT(block_rq_insert, 3)
COUNT(block_rq_issue, 4)
COUNT(block_rq_complete, 5)
char _license[] __attribute__((section("license"), used)) = "GPL";
"#;

/// Programs for `ProgTestRun`: an empty one; one updating one key of a
/// hash map (key 4, value 8 bytes); one looking up an array slot (the
/// cheapest map helper call); and biolatency's pattern on a hash map:
/// insert a new key, look it up, delete it.
const UPDATE_COST_PROG: &str = r#"
#include "ktrace_helpers.h"
__attribute__((section("maps"), used)) struct bpf_map_def counts = { 1, 4, 8, 1024, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def starts = { 1, 8, 8, 10240, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def slots = { 2, 4, 8, 1, 0 };
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int empty(void *ctx) { return 0; }
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int update(void *ctx) {
    unsigned int key = 7;
    unsigned long long one = 1;
    bpf_map_update_elem(&counts, &key, &one, 0);
    return 0;
}
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int array_lookup(void *ctx) {
    unsigned int key = 0;
    unsigned long long *v = bpf_map_lookup_elem(&slots, &key);
    return v ? 0 : 1;
}
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int insert_lookup_delete(void *ctx) {
    unsigned long long key = 42, now = 1;
    bpf_map_update_elem(&starts, &key, &now, 0);
    unsigned long long *v = bpf_map_lookup_elem(&starts, &key);
    if (v) bpf_map_delete_elem(&starts, &key);
    return 0;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"#;

/// What a round attaches.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Untraced,
    /// biolatency as the tool runs it (`CONFIG[0]` given), on `engine`.
    Biolatency {
        config: u64,
        engine: Engine,
    },
    /// biolatency (JIT) and a counting program on every block tracepoint:
    /// the issue's figure.
    AllBlock,
    /// The counting programs alone: what the tracepoints and a minimal
    /// program cost, without biolatency's maps and clock reads.
    Counters,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::AllBlock => "biolatency + all 6 block tps",
            Mode::Counters => "counters on all 6 block tps",
            Mode::Biolatency {
                config: 0,
                engine: Engine::Jit,
            } => "biolatency",
            Mode::Biolatency {
                engine: Engine::Jit,
                ..
            } => "biolatency -D -F -e",
            Mode::Biolatency { .. } => "biolatency interpreted",
        }
    }
}

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// `v`'s value at quantile `q` (nearest rank; `v` non-empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// A sum of the little-endian u64s of `bytes` (one per CPU, or slots).
fn sum_u64(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .sum()
}

/// IOPS traced ÷ untraced: 4 KiB random reads at queue depth 8 (one job,
/// 2 vCPUs) for `IOPS_BENCH_MS` (default 300) ms per run, on each device
/// of `IOPS_BENCH_DEVS` (default `ram0,vda`: the RAM disk, whose copy is
/// guest CPU work, and a virtio-blk disk, whose data moves in QEMU), over
/// `IOPS_BENCH_ROUNDS` (default 15) rounds in one boot. A round runs every
/// mode once per device, in an order that rotates from round to round, so
/// a drift in host load reaches every mode alike. Modes: untraced;
/// biolatency + a counting program on all six block tracepoints (the
/// issue's figure); biolatency alone as the tool runs it (JIT); the
/// counting programs alone (the tracepoints' and a minimal program's
/// share, without biolatency's maps and clock reads); with
/// `IOPS_BENCH_EXTRA=1` also biolatency `-D -F -e` and biolatency
/// interpreted. `IOPS_BENCH_ICOUNT=shift=N` runs QEMU with `-icount`
/// (guest time counts guest instructions, printed per I/O: host load no
/// longer moves the RAM disk's figure; a virtio disk's time while the
/// guest idles still follows the host's clock).
/// `IOPS_BENCH_KERNEL=ELF` boots that kernel (a self-tests build, e.g. of
/// another commit) instead of this tree's, for before/after runs on one
/// host.
///
/// Printed per device and mode: the median IOPS, the median of the
/// per-round ratios (each round's traced run over the same round's
/// untraced run: THE figure, since the two ran next to each other and a
/// slow drift of host load cancels in it), its quartiles, and the ratio of
/// the median IOPS as a cross-check (when it leaves the quartile range,
/// the run was noise-bound). Then, in the same boot, what one hash map
/// update, one array lookup and a hash insert + lookup + delete (the
/// pattern of biolatency's programs) add to an empty program's run
/// (`ProgTestRun`). Never asserts timing; asserts that every traced run counted
/// every request exactly (the counters against the workload's own count,
/// biolatency's histogram against the requests it saw), with no program
/// fault and no busy map.
#[test]
#[ignore = "benchmark: a minute or more of QEMU time"]
fn biolatency_iops() {
    let ms = env("IOPS_BENCH_MS", 300);
    let rounds = env("IOPS_BENCH_ROUNDS", 15) as usize;
    let devs: Vec<String> = std::env::var("IOPS_BENCH_DEVS")
        .unwrap_or_else(|_| "ram0,vda".into())
        .split(',')
        .map(String::from)
        .collect();
    let mut modes = vec![
        Mode::Untraced,
        Mode::AllBlock,
        Mode::Biolatency {
            config: 0,
            engine: Engine::Jit,
        },
        Mode::Counters,
    ];
    if env("IOPS_BENCH_EXTRA", 0) != 0 {
        // Bits 3, 4 and 5 of CONFIG[0] are `-D`, `-F` and `-e`.
        modes.push(Mode::Biolatency {
            config: 8 | 16 | 32,
            engine: Engine::Jit,
        });
        modes.push(Mode::Biolatency {
            config: 0,
            engine: Engine::Interpreter,
        });
    }

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let scratch = std::env::temp_dir().join(format!("ktrace-iops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let mut opts = BuildOptions::new(root.join("examples/biolatency"));
    opts.out_dir = Some(scratch.clone());
    opts.target_dir = Some(scratch.join("target"));
    let obj = build(&opts, &mut |_| {}).unwrap().object;
    let kernel = &kernel_image().source;
    let bio = prepare(&obj, kernel, &mut |_| {}).unwrap();
    let count_obj = ktrace_tests::compile_c(&scratch, "count", COUNT_PROG);
    let count = prepare(&count_obj, kernel, &mut |_| {}).unwrap();
    let update_obj = ktrace_tests::compile_c(&scratch, "update", UPDATE_COST_PROG);
    let update = prepare(&update_obj, kernel, &mut |_| {}).unwrap();

    let (mut cfg, disk_dir) = disk_config("iops", 1);
    cfg.cpus = 2;
    if let Ok(kernel) = std::env::var("IOPS_BENCH_KERNEL") {
        cfg.kernel = Some(kernel.into());
    }
    let shift = ktrace_tests::icount_from_env(&mut cfg, "IOPS_BENCH_ICOUNT");
    let mut vm = TestVm::boot_with(cfg);
    let mut client = vm.client();
    client.set_request_timeout(Duration::from_secs(60));
    let spec = |dev: &str, rw: RwMode, bs: u32, limit: WorkloadLimit| {
        let mut s = WorkloadSpec::new(dev, rw);
        s.iodepth = 8;
        s.block_size = bs;
        s.limit = limit;
        s
    };
    if devs.iter().any(|d| d == "vda") {
        // Write the whole disk once so the reads find allocated blocks.
        let r = client
            .run_workload(
                &spec("vda", RwMode::Write, 128 << 10, WorkloadLimit::Count(256)),
                |_| {},
            )
            .unwrap();
        assert_eq!(r.errors, 0);
    }

    // Everything loaded once; a round attaches and detaches.
    let mut rt = Runtime::new(&mut client);
    let load = |rt: &mut Runtime, name: &str, object: &probe_sdk::runtime::Prepared, engine| {
        rt.load_object(
            name,
            object.object.clone().into_load(),
            false,
            LoadOptions {
                engine: Some(engine),
                ..LoadOptions::default()
            },
        )
        .unwrap()
    };
    let bio_jit = load(&mut rt, "biolatency", &bio, Engine::Jit);
    let bio_interp = load(&mut rt, "biolatency-interp", &bio, Engine::Interpreter);
    let counters = load(&mut rt, "count", &count, Engine::Jit);
    let map_id = |l: &ktrace_abi::bpf::ObjectLoaded, name: &str| {
        l.maps.iter().find(|m| m.name == name).unwrap().id
    };
    let attach_all = |rt: &mut Runtime, l: &ktrace_abi::bpf::ObjectLoaded, skip: &[&str]| {
        let mut links = Vec::new();
        for p in l
            .programs
            .iter()
            .filter(|p| !skip.contains(&p.name.as_str()))
        {
            let target = [&bio, &count]
                .iter()
                .flat_map(|o| &o.object.programs)
                .find(|q| q.name == p.name)
                .unwrap()
                .attach
                .clone();
            links.push(rt.attach(p.id, target, false).unwrap().id);
        }
        links
    };

    // (device, mode) -> IOPS per round.
    let mut iops: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    // What the traced runs did, from the workload's report and the
    // kernel's disk statistics: I/Os and completed requests of the runs
    // with the counters, completed requests of the runs with each
    // biolatency object (JIT, interpreted).
    let (mut counted_ios, mut counted_requests) = (0u64, 0u64);
    let mut bio_requests = [0u64; 2];
    for round in 0..rounds {
        for (d, dev) in devs.iter().enumerate() {
            for k in 0..modes.len() {
                let m = (round + k) % modes.len();
                let mut rt = Runtime::new(&mut client);
                let mut links = Vec::new();
                let (bio_obj, config) = match modes[m] {
                    Mode::Untraced | Mode::Counters => (None, 0),
                    Mode::AllBlock => (Some(0), 0),
                    Mode::Biolatency { config, engine } => {
                        (Some(usize::from(engine != Engine::Jit)), config)
                    }
                };
                if let Some(i) = bio_obj {
                    let l = [&bio_jit, &bio_interp][i];
                    // As the tool: settings first, then the programs
                    // without `-Q`'s `rq_insert`.
                    rt.map_update(
                        map_id(l, "CONFIG"),
                        &0u32.to_le_bytes(),
                        &config.to_le_bytes(),
                        0,
                    )
                    .unwrap();
                    links.extend(attach_all(&mut rt, l, &["rq_insert"]));
                }
                let counted = matches!(modes[m], Mode::AllBlock | Mode::Counters);
                if counted {
                    links.extend(attach_all(&mut rt, &counters, &[]));
                }
                let completed = |rt: &mut Runtime| {
                    let s = rt.client().disk_stats_of(dev).unwrap().unwrap();
                    s.read.ios + s.write.ios + s.flush.ios
                };
                let before = completed(&mut rt);
                let r = rt
                    .client()
                    .run_workload(
                        &spec(dev, RwMode::RandRead, 4096, WorkloadLimit::TimeMs(ms)),
                        |_| {},
                    )
                    .unwrap();
                assert_eq!(r.errors, 0);
                let requests = completed(&mut rt) - before;
                for link in links {
                    rt.detach(link).unwrap();
                }
                if counted {
                    counted_ios += r.ios;
                    counted_requests += requests;
                }
                if let Some(i) = bio_obj {
                    bio_requests[i] += requests;
                }
                iops.entry((d, m)).or_default().push(r.iops());
            }
        }
    }

    // Every request counted exactly: the counters by event against the
    // workload's I/Os and the disk's completed requests, biolatency's
    // histogram against the requests completed while it was attached
    // (each was issued while it was attached too: nothing else does I/O).
    let mut rt = Runtime::new(&mut client);
    let events = map_id(&counters, "events");
    let seen: Vec<u64> = (0..BLOCK_EVENTS.len() as u32)
        .map(|i| sum_u64(&rt.map_lookup(events, &i.to_le_bytes()).unwrap().unwrap()))
        .collect();
    assert_eq!(seen[0], counted_ios, "block_bio_queue: {seen:?}");
    assert_eq!(seen[1] + seen[2] + seen[3], counted_ios, "bios: {seen:?}");
    assert_eq!(
        (seen[3], seen[4], seen[5]),
        (counted_requests, counted_requests, counted_requests),
        "requests: {seen:?}"
    );
    for (i, l) in [&bio_jit, &bio_interp].into_iter().enumerate() {
        let hist = rt.map_dump(map_id(l, "LATENCY_US"), 64).unwrap();
        let total: u64 = hist.iter().map(|e| sum_u64(&e.value)).sum();
        assert_eq!(total, bio_requests[i], "biolatency's histogram ({i})");
    }
    for p in rt.progs().unwrap() {
        assert_eq!((p.faults, p.budget_exhausted), (0, 0), "{p:?}");
    }
    for map in rt.maps().unwrap() {
        assert_eq!(map.busy, 0, "{map:?}");
    }

    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "4 KiB random reads, QD 8, 1 job, 2 vCPUs; {ms} ms x {rounds} rounds, modes rotating; host load average {}",
        load_avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("| device | mode | median IOPS | traced/untraced: median of per-round ratios [p25, p75] | ratio of median IOPS |");
    println!("|---|---|---|---|---|");
    for (d, dev) in devs.iter().enumerate() {
        let base = &iops[&(d, 0)];
        let base_median = quantile(base, 0.5);
        println!("| {dev} | untraced | {base_median:.0} | – | – |");
        for (m, mode) in modes.iter().enumerate().skip(1) {
            let v = &iops[&(d, m)];
            let ratios: Vec<f64> = v.iter().zip(base).map(|(t, u)| t / u).collect();
            println!(
                "| {dev} | {} | {:.0} | **{:.3}** [{:.3}, {:.3}] | {:.3} |",
                mode.name(),
                quantile(v, 0.5),
                quantile(&ratios, 0.5),
                quantile(&ratios, 0.25),
                quantile(&ratios, 0.75),
                quantile(v, 0.5) / base_median
            );
        }
    }
    // Under `-icount shift=N` guest time is 2^N ns per instruction: the
    // median IOPS say how many instructions one I/O took (on a virtio disk
    // also the host's time for the disk while the guest idled).
    if let Some(shift) = shift {
        println!("guest instructions per I/O (icount shift={shift}), from the median IOPS:");
        for (d, dev) in devs.iter().enumerate() {
            let per_io = |m: usize| 1e9 / quantile(&iops[&(d, m)], 0.5) / f64::from(1u32 << shift);
            let base = per_io(0);
            let cells: Vec<String> = (1..modes.len())
                .map(|m| format!("{} +{:.0}", modes[m].name(), per_io(m) - base))
                .collect();
            println!("  {dev}: untraced {base:.0}; {}", cells.join("; "));
        }
    }
    for l in [&bio_jit, &bio_interp, &counters] {
        rt.object_unload(&l.object.id.to_string()).unwrap();
    }

    // One hash map update: the same key of a `BPF_MAP_TYPE_HASH`, run
    // with `ProgTestRun`, less the empty program, per engine. The cost is
    // read from the programs' run time, counted only while runs are timed
    // (a kernel from before the switch, `IOPS_BENCH_KERNEL`, always times
    // them and refuses the request).
    let _ = rt.run_time_stats(Some(true));
    let n = 20_000;
    for engine in [Engine::Jit, Engine::Interpreter] {
        let l = load(&mut rt, &format!("update-{engine:?}"), &update, engine);
        let mut per_run: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for _ in 0..5 {
            for p in &l.programs {
                let time = |rt: &mut Runtime| {
                    rt.progs()
                        .unwrap()
                        .into_iter()
                        .find(|q| q.id == p.id)
                        .unwrap()
                        .run_time_ns
                };
                let before = time(&mut rt);
                let r = rt.test_run(p.id, vec![0; 168], n).unwrap();
                assert_eq!((r.runs, r.error.as_deref()), (n, None), "{}", p.name);
                let after = time(&mut rt);
                per_run
                    .entry(p.name.clone())
                    .or_default()
                    .push((after - before) as f64 / f64::from(n));
            }
        }
        let empty = quantile(&per_run["empty"], 0.5);
        let cost = |name: &str| quantile(&per_run[name], 0.5) - empty;
        println!(
            "{engine:?}: program run empty {empty:.0} ns; over it: one hash update {:.0} ns, one array lookup {:.0} ns, hash insert + lookup + delete {:.0} ns",
            cost("update"),
            cost("array_lookup"),
            cost("insert_lookup_delete")
        );
        rt.object_unload(&l.object.id.to_string()).unwrap();
    }
    drop(vm);
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(&disk_dir);
}
