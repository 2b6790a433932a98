//! Attach points end to end: kprobes, kretprobes, tracepoints and perf
//! events in a booted kernel. The in-kernel self tests (kernel
//! `probe_tests`) probe `#[inline(never)]` test functions and check exact
//! counts and results; the protocol tests drive the same machinery from the
//! host through `probe_sdk::trace`, and the CLI tests through `ktrace`.
//!
//! The long stress run (30 s) replaces the 10 s one when
//! `KTRACE_STRESS_LONG=1`.

use std::time::Duration;

use ktrace_abi::block::{RwMode, WorkloadLimit, WorkloadSpec};
use ktrace_abi::trace::{HardwareEvent, PerfEvent, ProbeKind, ProbeTarget, SoftwareEvent};
use ktrace_abi::ErrorCode;
use ktrace_tests::{ktrace_ok, unique_name, CliVmGuard, TestVm};
use probe_sdk::client::Client;
use probe_sdk::trace::TraceClient;

fn run_self_tests(client: &mut Client, names: &[&str]) {
    client.set_request_timeout(Duration::from_secs(180));
    let mut failed = Vec::new();
    for name in names {
        let r = client
            .self_test(name)
            .unwrap_or_else(|e| panic!("self test {name}: {e}"));
        eprintln!("--- {name}: {}", if r.passed { "passed" } else { "FAILED" });
        for line in &r.output {
            eprintln!("    {line}");
        }
        if !r.passed {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "self tests failed: {failed:?}");
}

#[test]
fn kprobe_self_tests() {
    let mut vm = TestVm::boot("kprobes");
    let mut client = vm.client();
    run_self_tests(
        &mut client,
        &[
            "kprobe_args",
            "kprobe_fixups",
            "kprobe_boost",
            "kprobe_refusals",
            "kprobe_recursion",
            "kprobe_multi",
            "kprobe_register_race",
            "kretprobe_basic",
            "kretprobe_sleep",
        ],
    );
    // The kernel is still healthy and has no probe left.
    assert!(client.list_probes().unwrap().is_empty());
    client.info().expect("alive after the kprobe tests");
}

#[test]
fn tracepoint_and_perf_self_tests() {
    let mut vm = TestVm::boot("tracepoints");
    let mut client = vm.client();
    run_self_tests(
        &mut client,
        &[
            "tracepoint_counts",
            "tracepoint_sched_irq",
            "perf_counters",
            "perf_sampling",
        ],
    );
}

#[test]
fn stress_timer_and_scheduler_probes() {
    let long = std::env::var("KTRACE_STRESS_LONG").is_ok_and(|v| v == "1");
    let mut vm = TestVm::boot("stress");
    let mut client = vm.client();
    run_self_tests(&mut client, &[if long { "stress_long" } else { "stress" }]);
    client.info().expect("alive after the stress run");
}

#[test]
fn benchmark_reports_ratios() {
    let mut vm = TestVm::boot("bench");
    let mut client = vm.client();
    run_self_tests(&mut client, &["bench"]);
}

#[test]
fn protocol_probes_refusals_and_counts() {
    let mut vm = TestVm::boot("trace-proto");
    let mut client = vm.client();
    // A kprobe by symbol on the scheduler's wake-up path counts hits.
    let sym = |name: &str, offset| ProbeTarget::Symbol {
        name: name.into(),
        offset,
    };
    let p = client
        .add_probe(sym("kernel::probe_tests::add3", 0), ProbeKind::Kprobe)
        .expect("probe on add3");
    assert_eq!(p.symbol, "kernel::probe_tests::add3");
    assert_eq!(p.offset, 0);
    assert_eq!(p.handler, "count");
    // The self test calls add3 exactly once with (11, 22, 33).
    let r = client.self_test("kprobe_args").unwrap();
    // kprobe_args registers its own probe too: both share the patch.
    assert!(r.passed, "{:?}", r.output);
    let listed = client.list_probes().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].hits, 2, "add3 called twice by kprobe_args");
    assert_eq!(listed[0].last_value, 1, "last rdi: add3(1, 2, 3)");
    client.remove_probe(p.id).unwrap();
    assert!(client.list_probes().unwrap().is_empty());

    // Refusals name their reason.
    let refusal = |client: &mut Client, target: ProbeTarget| {
        let e = client.add_probe(target, ProbeKind::Kprobe).unwrap_err();
        let reply = e.kernel_reply().expect("an error frame").clone();
        (reply.code, reply.message)
    };
    let (code, msg) = refusal(
        &mut client,
        sym("kernel::arch::imp::text_patch::write_text", 0),
    );
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(msg.ends_with("is blacklisted: text patching"), "{msg}");
    // Unmangled functions of the trap path are marked one by one (a
    // kretprobe on `trap_dispatch` once reset the CPU).
    for f in [
        "trap_dispatch",
        "kretprobe_trampoline_handler",
        "memcpy",
        "memset",
    ] {
        let (code, msg) = refusal(&mut client, sym(f, 0));
        assert_eq!(code, ErrorCode::InvalidArgument, "{f}: {msg}");
        assert!(
            msg.ends_with("is blacklisted: marked NOKPROBE (.nokprobe section)"),
            "{f}: {msg}"
        );
    }
    let (_, msg) = refusal(&mut client, sym("kernel::probe_tests::add3", 2));
    assert!(msg.contains("is not on an instruction boundary"), "{msg}");
    let (_, msg) = refusal(&mut client, ProbeTarget::Address(0x1000));
    assert_eq!(msg, "0x1000 is not in kernel text");
    let (code, msg) = refusal(&mut client, sym("kernel::no::such_fn", 0));
    assert_eq!(code, ErrorCode::NotFound);
    assert_eq!(msg, "no kernel function named \"kernel::no::such_fn\"");
    let e = client.remove_probe(9999).unwrap_err();
    assert_eq!(e.kernel_reply().unwrap().message, "no probe with id 9999");

    // The blacklist lists entry code and the engine.
    let bl = client.blacklist().unwrap();
    assert!(bl
        .iter()
        .any(|b| b.reason.contains(".text.entry") && b.end > b.start));
    assert!(bl
        .iter()
        .any(|b| b.symbol == "kernel::trace::kprobe::*" && b.reason == "the kprobe engine"));

    // A kretprobe on a sleeping function sees its return value.
    let rp = client
        .add_probe(
            sym("kernel::probe_tests::sleeper", 0),
            ProbeKind::Kretprobe { maxactive: 4 },
        )
        .unwrap();
    assert_eq!(rp.kind, ProbeKind::Kretprobe { maxactive: 4 });
    let r = client.self_test("kretprobe_sleep").unwrap();
    assert!(r.passed, "{:?}", r.output);
    let info = client
        .list_probes()
        .unwrap()
        .into_iter()
        .find(|i| i.id == rp.id)
        .unwrap();
    // kretprobe_sleep: three calls, sleeper(40), (20), (30).
    assert_eq!(info.hits, 3, "{info:?}");
    assert_eq!(info.missed, 0);
    assert!([401, 201, 301].contains(&info.last_value), "{info:?}");
    assert!(info.total_ns >= 90_000_000, "{info:?}");
    client.remove_probe(rp.id).unwrap();

    // Tracepoints: formats, counting attachment, refcount.
    let tps = client.list_tracepoints().unwrap();
    let sw = tps.iter().find(|t| t.name == "sched_switch").unwrap();
    assert_eq!(sw.category, "sched");
    assert_eq!(sw.sites, 1);
    assert_eq!(
        sw.fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        [
            "prev_state",
            "prev_pid",
            "next_pid",
            "prev_comm",
            "next_comm",
            "cpu",
            "next_last_cpu"
        ]
    );
    assert!(sw.fields[0].signed && sw.fields[0].size == 8);
    let id = client.attach_tracepoint("sched:sched_switch").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = client.list_tracepoints().unwrap();
    let sw = after.iter().find(|t| t.name == "sched_switch").unwrap();
    assert_eq!(sw.refcount, 1);
    assert!(sw.hits > 0, "{sw:?}");
    client.detach_tracepoint(id).unwrap();
    let e = client.attach_tracepoint("sched:nope").unwrap_err();
    assert_eq!(e.kernel_reply().unwrap().code, ErrorCode::NotFound);

    // Perf: software counters count; hardware is not supported under TCG.
    let ticks = client
        .perf_open(PerfEvent::Software(SoftwareEvent::TimerTicks))
        .unwrap();
    client.perf_enable(ticks).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.perf_disable(ticks).unwrap();
    let v = client.perf_read(ticks).unwrap();
    assert!(v.value >= 100 && v.time_enabled_ns > 0, "{v:?}");
    assert_eq!(
        client.perf_read(ticks).unwrap().value,
        v.value,
        "disabled: frozen"
    );
    // A group starts all or nothing: an unknown id leaves the others off.
    let e = client.perf_enable_group(&[ticks, 999_999]).unwrap_err();
    assert_eq!(e.kernel_reply().unwrap().code, ErrorCode::NotFound);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        client.perf_read(ticks).unwrap().value,
        v.value,
        "not started"
    );
    client.perf_enable_group(&[ticks]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    client.perf_disable_group(&[ticks]).unwrap();
    assert!(client.perf_read(ticks).unwrap().value > v.value);
    client.perf_close(ticks).unwrap();
    let e = client
        .perf_open(PerfEvent::Hardware(HardwareEvent::Instructions))
        .unwrap_err();
    let reply = e.kernel_reply().unwrap();
    assert_eq!(reply.code, ErrorCode::NotSupported);
    assert!(
        reply.message.contains("no architectural PMU"),
        "{}",
        reply.message
    );
    let s = client
        .perf_open(PerfEvent::Sampling {
            freq_hz: 500,
            max_stack: 8,
        })
        .unwrap();
    let e = client
        .perf_open(PerfEvent::Sampling {
            freq_hz: 100,
            max_stack: 8,
        })
        .unwrap_err();
    assert_eq!(e.kernel_reply().unwrap().code, ErrorCode::Limit);
    client.perf_enable(s).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.perf_disable(s).unwrap();
    let v = client.perf_read(s).unwrap();
    let (samples, lost) = client.perf_drain(s, 10_000).unwrap();
    assert_eq!(samples.len() as u64, v.samples);
    assert_eq!(lost, v.lost);
    // 300 ms at 500 Hz: about 150 periods on every CPU, recorded or lost
    // to a loaded host coalescing the timer.
    assert_eq!(v.per_cpu.len() as u32, ktrace_tests::test_cpus(), "{v:?}");
    assert_eq!(v.per_cpu.iter().map(|c| c.value).sum::<u64>(), v.value);
    assert!(
        v.per_cpu.iter().all(|c| (100..=250).contains(&c.value)),
        "{v:?}"
    );
    assert!(!samples.is_empty());
    assert!(samples.iter().all(|s| s.ip != 0));
    client.perf_close(s).unwrap();
    assert_eq!(
        client
            .perf_read(s)
            .unwrap_err()
            .kernel_reply()
            .unwrap()
            .code,
        ErrorCode::NotFound
    );
    client.info().expect("alive");
}

#[test]
fn cli_probe_and_tracepoint_commands() {
    let name = unique_name("cli-trace");
    let _guard = CliVmGuard(name.clone());
    ktrace_ok(&["vm", "start", "--name", &name]);
    let vm = ["--vm", name.as_str()];
    let out = ktrace_ok(&[&vm[..], &["probe", "add", "kernel::task::sched::wake"]].concat());
    assert!(out.contains("kernel::task::sched::wake+0x0"), "{out}");
    let out = ktrace_ok(
        &[
            &vm[..],
            &["probe", "add", "--ret", "kernel::probe_tests::add3"],
        ]
        .concat(),
    );
    assert!(out.contains("kretprobe"), "{out}");
    let out = ktrace_ok(&[&vm[..], &["probe", "list"]].concat());
    assert!(out.contains("kernel::task::sched::wake+0x0"), "{out}");
    assert!(out.contains("kernel::probe_tests::add3"), "{out}");
    let json = ktrace_ok(&[&vm[..], &["probe", "list", "--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    for id in ids {
        ktrace_ok(&[&vm[..], &["probe", "remove", &id.to_string()]].concat());
    }
    let out = ktrace_ok(&[&vm[..], &["probe", "list"]].concat());
    assert!(out.contains("no probes"), "{out}");
    let out = ktrace_ok(&[&vm[..], &["tracepoint", "list"]].concat());
    assert!(out.contains("sched:sched_switch"), "{out}");
    assert!(out.contains("block:block_rq_issue"), "{out}");
    let out = ktrace_ok(&[&vm[..], &["tracepoint", "list", "-v"]].concat());
    assert!(
        out.contains("field:u32 next_pid;\toffset:12;\tsize:4;\tsigned:0;"),
        "{out}"
    );
    ktrace_ok(&[&vm[..], &["vm", "stop"]].concat());
}

const EXIT_CURRENT: &str = "kernel::task::sched::exit_current";
const REAP_ZOMBIES: &str = "kernel::task::sched::reap_zombies";
const SUBMIT_BIO: &str = "kernel::block::queue::RequestQueue::submit_bio";

/// `ktrace probe list --json`, the probe on `symbol`.
fn cli_probe(vm: &[&str], symbol: &str) -> serde_json::Value {
    let json = ktrace_ok(&[vm, &["probe", "list", "--json"]].concat());
    let all: serde_json::Value = serde_json::from_str(&json).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|p| p["symbol"] == symbol)
        .unwrap_or_else(|| panic!("no probe on {symbol} in {json}"))
        .clone()
}

/// The pool line of `ktrace probe list`: (free, size).
fn cli_pool(vm: &[&str]) -> (u32, u32) {
    let out = ktrace_ok(&[vm, &["probe", "list"]].concat());
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("return-probe instances: "))
        .unwrap_or_else(|| panic!("no pool line in:\n{out}"));
    let mut words = line.split(' ');
    let free = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("of"), "{line}");
    let size = words.next().unwrap().parse().unwrap();
    (free, size)
}

fn cli_workload(vm: &[&str], extra: &[&str]) {
    let out = ktrace_ok(&[vm, &["workload", "--dev", "ram0", "-q"], extra].concat());
    assert!(out.contains("errors 0"), "{out}");
}

/// Issue 14, item 7, through the CLI. Return probes on a function that
/// never returns (`exit_current`) and on the reaper: a task that exits
/// leaves its instance keyed by a slot of its stack; the next task given
/// that memory used to find it first and "return" into freed text (#BP on
/// the third workload). And with a large `maxactive`, those instances
/// filled the shared pool for good: a new return probe missed every call.
#[test]
fn cli_kretprobes_on_task_exit_paths() {
    let name = unique_name("cli-retprobe-exit");
    let _guard = CliVmGuard(name.clone());
    ktrace_ok(&["vm", "start", "--name", &name]);
    let vm = ["--vm", name.as_str()];
    let (free, size) = cli_pool(&vm);
    assert_eq!(free, size, "an idle kernel holds no return-probe instance");

    ktrace_ok(&[&vm[..], &["probe", "add", "--ret", EXIT_CURRENT]].concat());
    ktrace_ok(&[&vm[..], &["probe", "add", "--ret", REAP_ZOMBIES]].concat());
    for _ in 0..5 {
        cli_workload(&vm, &["--count", "20"]);
    }
    ktrace_ok(&[&vm[..], &["info"]].concat());
    let exit = cli_probe(&vm, EXIT_CURRENT);
    assert_eq!(exit["hits"], 0, "exit_current never returns: {exit}");
    assert_eq!(exit["missed"], 0, "{exit}");
    let reap = cli_probe(&vm, REAP_ZOMBIES);
    assert!(reap["hits"].as_u64().unwrap() >= 5, "{reap}");
    assert_eq!(reap["missed"], 0, "{reap}");
    // What `probe list` shows in flight is what the pool lacks.
    let in_flight = exit["in_flight"].as_u64().unwrap() + reap["in_flight"].as_u64().unwrap();
    let (free, _) = cli_pool(&vm);
    assert_eq!(u64::from(size - free), in_flight);
    for p in [exit, reap] {
        ktrace_ok(&[&vm[..], &["probe", "remove", &p["id"].to_string()]].concat());
    }
    assert_eq!(cli_pool(&vm), (size, size), "removal gives everything back");

    // 34 runs of 16 jobs: 544 tasks exit inside exit_current, more than the
    // whole pool. Each one's instance goes when it is reaped.
    let max = size.to_string();
    ktrace_ok(
        &[
            &vm[..],
            &["probe", "add", "--ret", "--maxactive", &max, EXIT_CURRENT],
        ]
        .concat(),
    );
    for _ in 0..34 {
        cli_workload(&vm, &["--jobs", "16", "--count", "4"]);
    }
    let exit = cli_probe(&vm, EXIT_CURRENT);
    assert_eq!(exit["missed"], 0, "{exit}");
    let in_flight = exit["in_flight"].as_u64().unwrap();
    assert!(
        in_flight <= 16,
        "only the last run's tasks await reaping: {exit}"
    );
    assert_eq!(u64::from(size - cli_pool(&vm).0), in_flight);
    ktrace_ok(&[&vm[..], &["probe", "remove", &exit["id"].to_string()]].concat());
    assert_eq!(cli_pool(&vm), (size, size));

    // A new return probe gets every call.
    ktrace_ok(&[&vm[..], &["probe", "add", "--ret", SUBMIT_BIO]].concat());
    cli_workload(&vm, &["--count", "100"]);
    let bio = cli_probe(&vm, SUBMIT_BIO);
    assert_eq!(
        (bio["hits"].as_u64(), bio["missed"].as_u64()),
        (Some(100), Some(0)),
        "{bio}"
    );
    assert_eq!(bio["in_flight"], 0, "{bio}");
    ktrace_ok(&[&vm[..], &["vm", "stop"]].concat());
}

/// 100 cycles of: a return probe on `exit_current` with the whole pool as
/// `maxactive`, a workload of 4 jobs (4 tasks exit inside it), removal.
/// The pool's free count comes back to its starting figure exactly.
#[test]
fn kretprobe_pool_returns_to_its_start_after_100_cycles() {
    let mut vm = TestVm::boot("retprobe-pool-cycles");
    let mut client = vm.client();
    let before = client.retprobe_pool().unwrap();
    let mut spec = WorkloadSpec::new("ram0", RwMode::RandRead);
    spec.jobs = 4;
    spec.limit = WorkloadLimit::Count(2);
    for cycle in 0..100 {
        let p = client
            .add_probe(
                ProbeTarget::Symbol {
                    name: EXIT_CURRENT.into(),
                    offset: 0,
                },
                ProbeKind::Kretprobe {
                    maxactive: before.size,
                },
            )
            .unwrap();
        let r = client.run_workload(&spec, |_| {}).unwrap();
        assert_eq!(r.errors, 0, "cycle {cycle}");
        let listed = client.list_probes().unwrap();
        let listed = listed.iter().find(|l| l.id == p.id).unwrap();
        assert_eq!(listed.missed, 0, "cycle {cycle}: {listed:?}");
        client.remove_probe(p.id).unwrap();
    }
    let after = client.retprobe_pool().unwrap();
    println!(
        "return-probe pool: {} of {} free before, {} of {} free after 100 cycles",
        before.free, before.size, after.free, after.size
    );
    assert_eq!(before.free, before.size);
    assert_eq!(after, before);
    client.info().expect("alive");
}
