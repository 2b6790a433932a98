//! Perf events and the tools per CPU, through the real binaries in QEMU:
//! `kperf stat -A` lines add up to the kernel's own counts, `-C` picks
//! CPUs and refuses ones the VM lacks, `kperf record` samples carry their
//! CPU (and every CPU samples), `kperf report --sort cpu`, `biosnoop
//! --cpu`; each new flag into a closed pipe and under Ctrl-C. The VM has
//! the test suite's CPU count (`KTRACE_TEST_CPUS` once SMP is in); the
//! assertions take the count from the kernel.

use std::collections::BTreeMap;
use std::io::{BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ktrace_abi::block::DeviceStats;
use ktrace_tests::{json, TestVm};
use ktrace_tests::{run_tool as run, run_tool_ok as run_ok, tool};

const SIGINT: i32 = 2;

fn boot(test: &str) -> (TestVm, std::path::PathBuf) {
    TestVm::boot_with_disks(test, 1)
}

fn vda(vm: &mut TestVm) -> DeviceStats {
    vm.disk_stats("vda")
}

fn online_cpus(vm: &mut TestVm) -> u32 {
    vm.client().info().unwrap().cpus
}

/// The `CPUn  value  event` lines of a `kperf stat -A` table:
/// (event, cpu) → value.
fn per_cpu_lines(table: &str) -> BTreeMap<(String, u32), u64> {
    let mut out = BTreeMap::new();
    for line in table.lines() {
        let Some(rest) = line.strip_prefix("CPU") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let cpu: u32 = words.next().unwrap().parse().unwrap();
        let value = words.next().unwrap();
        if value == "<not" {
            continue;
        }
        let value: u64 = value.replace(',', "").parse().unwrap_or_else(|_| {
            panic!("bad value in {line:?}");
        });
        let event = words.next().unwrap().to_string();
        assert!(
            out.insert((event, cpu), value).is_none(),
            "two lines for one CPU: {line}"
        );
    }
    out
}

/// The JSON `kperf stat --json` counter named `event`, its first value.
fn json_value(v: &serde_json::Value, event: &str) -> u64 {
    v["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["event"] == event)
        .and_then(|c| c["values"][0].as_u64())
        .unwrap_or_else(|| panic!("no {event} in {v}"))
}

const EVENTS: &str = "block:block_rq_issue,block:block_rq_complete,context-switches,sched:sched_switch,cpu-migrations";

#[test]
fn kperf_stat_per_cpu_lines_add_up_to_the_kernels_counts_and_c_picks_cpus() {
    let (mut vm, dir) = boot("perfcpu-stat");
    let name = vm.name().to_string();
    let cpus = online_cpus(&mut vm);
    let workload = ["--", "--dev", "vda", "--count", "150", "--quiet"];

    // -A: one line per CPU and event; for each event the CPUs add up to
    // what the block layer counted itself over the same run.
    let before = vda(&mut vm);
    let table = run_ok(
        "kperf",
        &[&["--vm", &name, "stat", "-A", "-e", EVENTS][..], &workload].concat(),
    );
    let after = vda(&mut vm);
    let lines = per_cpu_lines(&table);
    assert_eq!(
        lines.len(),
        5 * cpus as usize,
        "one line per event and CPU:\n{table}"
    );
    let sum = |event: &str| -> u64 {
        (0..cpus)
            .map(|c| lines[&(event.to_string(), c)])
            .sum::<u64>()
    };
    assert_eq!(
        sum("block:block_rq_issue"),
        after.issued - before.issued,
        "{table}"
    );
    assert_eq!(
        sum("block:block_rq_complete"),
        after.completed() - before.completed(),
        "{table}"
    );
    // The scheduler's per-CPU count and the tracepoint fired at the same
    // switch on the same CPU, enabled and disabled as one group: equal on
    // every CPU, not only in sum.
    for c in 0..cpus {
        assert_eq!(
            lines[&("context-switches".to_string(), c)],
            lines[&("sched:sched_switch".to_string(), c)],
            "CPU{c}:\n{table}"
        );
    }
    assert!(sum("context-switches") >= 50, "{table}");
    if cpus == 1 {
        assert_eq!(sum("cpu-migrations"), 0, "one CPU: no migration\n{table}");
    }

    // -a (the default, summed) in JSON: the totals are the kernel's.
    let before = vda(&mut vm);
    let out = run_ok(
        "kperf",
        &[
            &["--vm", &name, "stat", "-a", "--json", "-e", EVENTS][..],
            &workload,
        ]
        .concat(),
    );
    let after = vda(&mut vm);
    let v = json(&out);
    assert_eq!(
        v["cpus"],
        serde_json::json!((0..cpus).collect::<Vec<_>>()),
        "{v}"
    );
    assert_eq!(
        json_value(&v, "block:block_rq_complete"),
        after.completed() - before.completed()
    );
    assert_eq!(
        json_value(&v, "context-switches"),
        json_value(&v, "sched:sched_switch")
    );

    // -C 0 counts CPU 0 only: with one CPU that is everything the kernel
    // counted; with more, at most that, and `-C` of every CPU is all of it.
    let mut csv = |args: &[&str]| -> (u64, DeviceStats, DeviceStats) {
        let before = vda(&mut vm);
        let out = run_ok(
            "kperf",
            &[
                &[
                    "--vm",
                    &name,
                    "stat",
                    "-x",
                    ",",
                    "-e",
                    "block:block_rq_complete",
                ][..],
                args,
                &workload,
            ]
            .concat(),
        );
        let after = vda(&mut vm);
        let fields: Vec<&str> = out.trim().split(',').collect();
        assert_eq!(fields[2], "block:block_rq_complete", "{out}");
        (fields[0].parse().unwrap(), before, after)
    };
    let (cpu0, before, after) = csv(&["-C", "0"]);
    let done = after.completed() - before.completed();
    if cpus == 1 {
        assert_eq!(cpu0, done);
    } else {
        assert!(cpu0 <= done, "CPU 0 counted {cpu0} of {done}");
    }
    let all = format!("0-{}", cpus - 1);
    let (every, before, after) = csv(&["-C", &all]);
    assert_eq!(every, after.completed() - before.completed());
    // -C 0 -A -x,: perf's `CPU0,value,...` line, and only CPU 0's.
    let out = run_ok(
        "kperf",
        &[
            &[
                "--vm",
                &name,
                "stat",
                "-A",
                "-C",
                "0",
                "-x",
                ",",
                "-e",
                "cpu-migrations",
            ][..],
            &workload,
        ]
        .concat(),
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("CPU0,"), "{out}");

    // A CPU the VM does not have: refused before anything is opened.
    for (sub, extra) in [("stat", "--duration"), ("record", "--duration")] {
        let out = run("kperf", &["--vm", &name, sub, "-C", "0,7", extra, "1"]);
        assert_eq!(out.status.code(), Some(1));
        let have = if cpus == 1 {
            "1 CPU (CPU 0)".to_string()
        } else {
            format!("{cpus} CPUs (0-{})", cpus - 1)
        };
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!("kperf: -C 0,7: CPU 7 does not exist; this VM has {have}")
        );
    }
    let out = run(
        "kperf",
        &["--vm", &name, "stat", "-C", "zero", "--duration", "1"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "kperf: -C zero: `zero` is not a CPU number or range (expected e.g. 0,2-3)"
    );
    let probes = json(&run_ok(
        "ktrace",
        &["--vm", &name, "probe", "list", "--json"],
    ));
    assert_eq!(probes, serde_json::json!([]), "nothing left behind");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kperf_record_samples_carry_their_cpu_and_every_cpu_samples() {
    let (mut vm, dir) = boot("perfcpu-record");
    let name = vm.name().to_string();
    let cpus = online_cpus(&mut vm);
    let data = dir.join("kperf.data");
    let data_s = data.to_str().unwrap();
    let out = run(
        "kperf",
        &[
            "--vm", &name, "record", "-F", "499", "-o", data_s, "--", "--dev", "vda", "--count",
            "600", "--quiet",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&data).unwrap();
    let mut per_cpu = BTreeMap::<u64, u64>::new();
    for line in text.lines().skip(1) {
        let s = json(line);
        *per_cpu.entry(s["cpu"].as_u64().unwrap()).or_default() += 1;
    }
    // Every CPU samples (the timer's CPU passes the NMI on), no sample
    // names a CPU the VM lacks.
    assert_eq!(
        per_cpu.keys().copied().collect::<Vec<_>>(),
        (0..u64::from(cpus)).collect::<Vec<_>>(),
        "samples per CPU {per_cpu:?}"
    );
    let summary = (0..u64::from(cpus))
        .map(|c| format!("CPU{c} {}", per_cpu[&c]))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        stderr.contains(&format!("[ kperf record: samples per CPU: {summary} ]")),
        "{stderr}"
    );

    // report --sort cpu: one row per CPU, its share of the samples.
    let total: u64 = per_cpu.values().sum();
    let report = run_ok(
        "kperf",
        &["report", "-i", data_s, "--sort", "cpu", "--json"],
    );
    let v = json(&report);
    let rows = v["overhead"].as_array().unwrap();
    assert_eq!(rows.len(), cpus as usize, "{v}");
    for r in rows {
        let cpu = r["cpu"].as_u64().unwrap();
        assert_eq!(r["samples"].as_u64(), Some(per_cpu[&cpu]), "{v}");
    }
    let table = run_ok("kperf", &["report", "-i", data_s, "--sort", "cpu"]);
    assert!(table.contains("# Overhead  CPU\n"), "{table}");
    assert!(table.contains(&format!("# Samples: {total}\n")), "{table}");
    // report -C 0: CPU 0's samples only.
    let only0 = json(&run_ok(
        "kperf",
        &["report", "-i", data_s, "-C", "0", "--json"],
    ));
    assert_eq!(only0["samples"].as_u64(), Some(per_cpu[&0]));

    // record -C 0 keeps CPU 0's samples.
    let out = run(
        "kperf",
        &[
            "--vm",
            &name,
            "record",
            "-C",
            "0",
            "-F",
            "499",
            "-o",
            data_s,
            "--duration",
            "0.5",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&data).unwrap();
    assert!(text.lines().count() > 1, "no sample on CPU 0");
    for line in text.lines().skip(1) {
        assert_eq!(json(line)["cpu"], 0, "{line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn biosnoop_cpu_names_the_completing_cpu_for_every_request() {
    let (mut vm, dir) = boot("perfcpu-biosnoop");
    let name = vm.name().to_string();
    let cpus = online_cpus(&mut vm);
    let before = vda(&mut vm);
    let out = run_ok(
        "biosnoop",
        &[
            "--vm", &name, "--cpu", "--", "--dev", "vda", "--count", "80", "--quiet",
        ],
    );
    let after = vda(&mut vm);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("TIME(s)     COMM              PID CPU DISK"),
        "{header}"
    );
    let mut n = 0;
    for line in lines {
        let cpu: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(cpu < cpus, "{line}");
        n += 1;
    }
    assert_eq!(n, after.completed() - before.completed(), "{out}");
    // JSON always carries the CPU.
    let out = run_ok(
        "biosnoop",
        &[
            "--vm", &name, "--json", "--", "--dev", "vda", "--count", "5", "--quiet",
        ],
    );
    for line in out.lines() {
        assert!(
            json(line)["cpu"].as_u64().unwrap() < u64::from(cpus),
            "{line}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn spawn(bin: &str, args: &[&str]) -> Child {
    tool(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

fn probes(vm: &str) -> usize {
    json(&run_ok("ktrace", &["--vm", vm, "probe", "list", "--json"]))
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn the_per_cpu_flags_end_quietly_in_a_closed_pipe_and_on_ctrl_c() {
    let (mut vm, dir) = boot("perfcpu-stop");
    let name = vm.name().to_string();
    let cpus = online_cpus(&mut vm);
    let data = dir.join("kperf.data");
    let data_s = data.to_str().unwrap();
    run_ok(
        "kperf",
        &["--vm", &name, "record", "-o", data_s, "--duration", "0.3"],
    );
    // `| head -0`: each ends by SIGPIPE, says nothing, leaves nothing.
    let cases: &[(&str, &[&str])] = &[
        (
            "kperf",
            &[
                "--vm",
                &name,
                "stat",
                "-A",
                "-e",
                "kprobe:RequestQueue::submit_bio",
                "-I",
                "100",
                "--duration",
                "30",
            ],
        ),
        (
            "kperf",
            &["--vm", &name, "stat", "-C", "0", "--duration", "0.2"],
        ),
        (
            "kperf",
            &["report", "-i", data_s, "--sort", "cpu", "-C", "0"],
        ),
        (
            "biosnoop",
            &[
                "--vm", &name, "--cpu", "--", "--dev", "vda", "--count", "10",
            ],
        ),
    ];
    for (bin, args) in cases {
        ktrace_tests::assert_ends_by_sigpipe(bin, args);
        assert_eq!(probes(&name), 0, "after {bin} {args:?}");
    }

    // Ctrl-C ends `kperf stat -A`: it prints the CPUs' lines, whose sum is
    // the bios submitted meanwhile, and removes its kprobe.
    let mut child = spawn(
        "kperf",
        &[
            "--vm",
            &name,
            "stat",
            "-A",
            "-e",
            "kprobe:RequestQueue::submit_bio",
            "--duration",
            "600",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while probes(&name) != 1 {
        assert!(
            Instant::now() < deadline,
            "kperf stat never opened its kprobe"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = vda(&mut vm);
    run_ok(
        "ktrace",
        &[
            "--vm", &name, "workload", "--dev", "vda", "--count", "60", "--quiet",
        ],
    );
    let after = vda(&mut vm);
    let status = Command::new("kill")
        .arg(format!("-{SIGINT}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut out = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {out}");
    let lines = per_cpu_lines(&out);
    assert_eq!(lines.len(), cpus as usize, "{out}");
    assert_eq!(
        lines.values().sum::<u64>(),
        after.bios - before.bios,
        "{out}"
    );
    assert_eq!(probes(&name), 0, "after Ctrl-C");
    let _ = std::fs::remove_dir_all(dir);
}
