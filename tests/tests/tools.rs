//! The user-facing tools against ground truth, in QEMU: `biolatency`'s
//! histogram total and `biosnoop`'s line count equal the requests the
//! block layer completed, `kperf stat` counts equal diskstats and the
//! scheduler's counters, `kperf record`'s folded stacks hold the
//! workload's functions, and bad arguments or a stopped VM give clear
//! messages and exit codes.

use std::io::{BufReader, Read as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ktrace_abi::block::DeviceStats;
use ktrace_tests::{json, TestVm};
use ktrace_tests::{run_tool as run, run_tool_ok as run_ok, tool};
use probe_sdk::client::Client;
use probe_sdk::kernel_image;

fn boot(test: &str) -> (TestVm, PathBuf) {
    TestVm::boot_with_disks(test, 1)
}

fn vda(vm: &mut TestVm) -> DeviceStats {
    vm.disk_stats("vda")
}

#[test]
fn biolatency_and_biosnoop_count_every_completed_request() {
    let (mut vm, dir) = boot("tools-bio");
    let name = vm.name().to_string();

    let before = vda(&mut vm);
    let out = run_ok(
        "biolatency",
        &[
            "--vm",
            &name,
            "--json",
            "-F",
            "--",
            "--dev",
            "vda",
            "--rw",
            "randrw",
            "--count",
            "400",
            "--iodepth",
            "4",
            "--quiet",
        ],
    );
    let after = vda(&mut vm);
    let v = json(out.trim());
    let completed = after.completed() - before.completed();
    assert!(completed >= 400, "completed {completed}");
    assert_eq!(v["total"].as_u64(), Some(completed), "{v}");
    let bucket_sum: u64 = v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(bucket_sum, completed);
    // Per operation: reads and writes as the block layer counted them.
    let op_total = |op: &str| -> u64 {
        v["operations"][op]
            .as_array()
            .map(|a| a.iter().map(|b| b["count"].as_u64().unwrap()).sum())
            .unwrap_or(0)
    };
    let ops_ending = |suffix: &str| -> u64 {
        v["operations"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.ends_with(suffix))
            .map(|k| op_total(k))
            .sum()
    };
    assert_eq!(ops_ending("Read"), after.read.ios - before.read.ios, "{v}");
    assert_eq!(
        ops_ending("Write"),
        after.write.ios - before.write.ios,
        "{v}"
    );

    // The probe is gone afterwards: no program, no map, no link left.
    let mut c = vm.client();
    let mut rt = probe_sdk::runtime::Runtime::new(&mut c);
    assert_eq!(rt.progs().unwrap().len(), 0);
    assert_eq!(rt.maps().unwrap().len(), 0);
    assert_eq!(rt.links().unwrap().len(), 0);
    drop(c);

    let before = vda(&mut vm);
    let out = run_ok(
        "biosnoop",
        &[
            "--vm",
            &name,
            "--json",
            "-Q",
            "--",
            "--dev",
            "vda",
            "--rw",
            "randread",
            "--count",
            "300",
            "--iodepth",
            "2",
            "--quiet",
        ],
    );
    let after = vda(&mut vm);
    let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
    let completed = after.completed() - before.completed();
    assert_eq!(lines.len() as u64, completed);
    let bytes: u64 = lines.iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, after.read.sectors * 512 - before.read.sectors * 512);
    for l in &lines {
        assert_eq!(l["disk"], "vda", "{l}");
        assert!(l["rwbs"].as_str().unwrap().starts_with('R'), "{l}");
        assert_eq!(l["error"], 0, "{l}");
        assert!(l["latency_ns"].as_u64().unwrap() > 0, "{l}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kperf_counts_equal_the_kernels_counters_and_stacks_hold_the_workload() {
    let (mut vm, dir) = boot("tools-kperf");
    let name = vm.name().to_string();

    let before = vda(&mut vm);
    let out = run_ok(
        "kperf",
        &[
            "--vm",
            &name,
            "stat",
            "--json",
            "-e",
            "block:block_bio_queue,block:block_rq_issue,block:block_rq_complete,context-switches,sched:sched_switch,cycles",
            "--",
            "--dev",
            "vda",
            "--count",
            "300",
            "--quiet",
        ],
    );
    let after = vda(&mut vm);
    let v = json(&out);
    let count = |ev: &str| -> Option<u64> {
        v["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["event"] == ev)
            .and_then(|c| c["values"][0].as_u64())
    };
    assert_eq!(
        count("block:block_bio_queue"),
        Some(after.bios - before.bios)
    );
    assert_eq!(
        count("block:block_rq_issue"),
        Some(after.issued - before.issued)
    );
    assert_eq!(
        count("block:block_rq_complete"),
        Some(after.completed() - before.completed())
    );
    // The software counter and the tracepoint see the same switches, and
    // kperf enables and disables them as one group, at one instant with
    // interrupts off: the counts are equal.
    let sw = count("context-switches").unwrap();
    let tp = count("sched:sched_switch").unwrap();
    // Each I/O at depth 1 waits for its completion, so the workload
    // switches tasks at least once per few I/Os.
    assert!(sw >= 50, "context switches {sw}");
    assert_eq!(sw, tp, "context-switches and sched:sched_switch");
    // No PMU under TCG: reported, not pretended.
    let cycles = v["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["event"] == "cycles")
        .unwrap();
    assert_eq!(cycles["supported"], false, "{v}");

    // Sampling: the folded stacks name the workload's Rust functions.
    let data = dir.join("kperf.data");
    let data_s = data.to_str().unwrap();
    let out = run(
        "kperf",
        &[
            "--vm", &name, "record", "-F", "499", "-g", "-o", data_s, "--", "--dev", "vda",
            "--count", "1500", "--quiet",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = dir.join("kperf.svg");
    let report = run_ok(
        "kperf",
        &[
            "report",
            "-i",
            data_s,
            "--flamegraph",
            svg.to_str().unwrap(),
        ],
    );
    assert!(report.contains("# Samples: "), "{report}");
    let folded = std::fs::read_to_string(dir.join("kperf.folded")).unwrap();
    assert!(
        folded
            .lines()
            .any(|l| l.contains("kernel::block::workload::")),
        "no workload frame in the folded stacks:\n{folded}"
    );
    let samples: u64 = folded
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    let recorded = std::fs::read_to_string(&data).unwrap().lines().count() as u64 - 1;
    assert_eq!(samples, recorded);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<?xml"), "not an SVG");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_arguments_and_a_stopped_vm_give_clear_errors() {
    let stopped = "t-tools-none-running";
    let cases: &[(&str, &[&str], i32, &str)] = &[
        (
            "biolatency",
            &["--vm", stopped],
            1,
            "biolatency: VM t-tools-none-running is not running (start it with `ktrace vm start --name t-tools-none-running`)",
        ),
        (
            "biosnoop",
            &["--vm", stopped],
            1,
            "biosnoop: VM t-tools-none-running is not running",
        ),
        (
            "kperf",
            &["--vm", stopped, "stat", "--duration", "1"],
            1,
            "kperf: VM t-tools-none-running is not running",
        ),
        ("biolatency", &["0"], 1, "biolatency: interval must be at least 1 second"),
        ("biolatency", &["-D", "-F"], 2, "cannot be used with"),
        (
            "biolatency",
            &["--", "--dev", "vda", "--bs", "100"],
            1,
            "invalid --bs 100: the block size must be a non-zero multiple of 512 bytes",
        ),
        (
            "kperf",
            &["stat", "-e", "bogus", "--duration", "1"],
            1,
            "kperf: unknown event `bogus`; see `kperf list`",
        ),
        (
            "kperf",
            &["stat", "-e", "block:"],
            1,
            "kperf: event `block:`: a tracepoint is `category:name`",
        ),
        (
            "kperf",
            &["stat", "-e", "irqs"],
            1,
            "kperf: nothing to measure: give --duration SECONDS or a workload after `--`",
        ),
        ("kperf", &["record", "-F", "0", "--duration", "1"], 1, "kperf: -F 0: the frequency must be 1 to 10000 Hz"),
        ("kperf", &["report", "-i", "/nonexistent/kperf.data"], 1, "kperf: cannot open /nonexistent/kperf.data (record one with `kperf record`)"),
        ("kperf", &["frobnicate"], 2, "unrecognized subcommand 'frobnicate'"),
    ];
    for (bin, args, code, message) in cases {
        let out = run(bin, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{bin} {args:?}: {stderr}");
        assert!(stderr.contains(message), "{bin} {args:?}:\n{stderr}");
    }
}

const SIGINT: i32 = 2;
const SIGPIPE: i32 = 13;
const SIGTERM: i32 = 15;

/// Sends `signal` to `child` (by its pid, through kill(1)).
fn send_signal(child: &Child, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{signal} {}", child.id());
}

/// Starts tool `name` with stdout and stderr piped.
fn spawn(name: &str, args: &[&str]) -> Child {
    tool(name)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Reads lines from `r` until one contains `what`; panics at the end of
/// the stream.
fn read_until(r: &mut impl std::io::BufRead, what: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            panic!("no line with `{what}` in:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains(what) {
            return line;
        }
    }
}

/// What a tool can leave behind in the kernel of VM `vm`, as `ktrace prog
/// list`, `map list`, `link list` and `probe list` show it.
fn leftovers(vm: &str) -> Vec<String> {
    let mut left = Vec::new();
    for what in ["prog", "map", "link", "probe"] {
        let v = json(&run_ok("ktrace", &["--vm", vm, what, "list", "--json"]));
        for item in v.as_array().unwrap_or_else(|| panic!("{what} list: {v}")) {
            left.push(format!("{what} {} {}", item["id"], item["name"]));
        }
    }
    left
}

/// The sum of the count column of a text histogram (`biolatency`).
fn histogram_total(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains(" -> "))
        .map(|l| {
            let count = l.split(':').nth(1).unwrap().split('|').next().unwrap();
            count.trim().parse::<u64>().unwrap()
        })
        .sum()
}

fn workload(vm: &str, count: &str) {
    run_ok(
        "ktrace",
        &[
            "--vm", vm, "workload", "--dev", "vda", "--count", count, "--quiet",
        ],
    );
}

#[test]
fn a_closed_pipe_or_a_signal_ends_every_tool_quietly_and_leaves_nothing_in_the_kernel() {
    let (mut vm, dir) = boot("tools-stop");
    let name = vm.name().to_string();
    let vm_args = ["--vm", name.as_str()];

    // `biosnoop -- <workload> | head -1`: the reader leaves after the
    // header, before the workload starts, so every record line meets a
    // closed pipe. biosnoop waits for the workload (the kernel cannot cut
    // it short), removes its probe and ends by SIGPIPE, like `cat`.
    let mut child = spawn(
        "biosnoop",
        &[
            &vm_args[..],
            &["--", "--dev", "vda", "--count", "200", "--quiet"],
        ]
        .concat(),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let header = read_until(&mut stdout, "TIME(s)");
    assert!(header.contains("LAT(ms)"), "{header}");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(SIGPIPE),
        "{}: {stderr}",
        out.status
    );
    assert_eq!(stderr, "", "biosnoop into a closed pipe is quiet");
    assert_eq!(
        leftovers(&name),
        Vec::<String>::new(),
        "after biosnoop | head"
    );

    // SIGTERM while biosnoop streams: the probe is there, then it is not,
    // and the status says SIGTERM.
    let mut child = spawn("biosnoop", &vm_args);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut stdout, "TIME(s)");
    let loaded = leftovers(&name);
    assert_eq!(
        loaded.iter().filter(|l| l.starts_with("prog ")).count(),
        3,
        "biosnoop's programs while it runs: {loaded:?}"
    );
    workload(&name, "20");
    // The 20 records, then the signal.
    for _ in 0..20 {
        read_until(&mut stdout, "fio-vda");
    }
    send_signal(&child, SIGTERM);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.signal(), Some(SIGTERM), "{status}: {stderr}");
    assert_eq!(stderr.trim(), "20 requests");
    assert_eq!(leftovers(&name), Vec::<String>::new(), "after SIGTERM");

    // Ctrl-C is how biolatency is asked for its histogram: it prints the
    // requests completed meanwhile, removes its probe, exits 0.
    let mut child = spawn("biolatency", &vm_args);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    read_until(&mut stderr, "Hit Ctrl-C to end");
    let before = vda(&mut vm);
    workload(&name, "150");
    let after = vda(&mut vm);
    send_signal(&child, SIGINT);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}: {text}", out.status);
    assert_eq!(
        histogram_total(&text),
        after.completed() - before.completed(),
        "{text}"
    );
    assert_eq!(leftovers(&name), Vec::<String>::new(), "after Ctrl-C");

    // kperf stat -I: Ctrl-C ends the counting; its kprobe goes away and
    // the intervals add up to the bios submitted.
    let mut child = spawn(
        "kperf",
        &[
            &vm_args[..],
            &[
                "stat",
                "-I",
                "200",
                "--duration",
                "600",
                "-e",
                "kprobe:RequestQueue::submit_bio",
            ],
        ]
        .concat(),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut stdout, "counts unit events");
    assert_eq!(
        leftovers(&name)
            .iter()
            .filter(|l| l.starts_with("probe "))
            .count(),
        1
    );
    let before = vda(&mut vm);
    workload(&name, "100");
    let after = vda(&mut vm);
    send_signal(&child, SIGINT);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let counted: u64 = rest
        .lines()
        .map(|l| {
            let count = l.split_whitespace().nth(1).unwrap();
            count.replace(',', "").parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(counted, after.bios - before.bios, "{rest}");
    assert_eq!(leftovers(&name), Vec::<String>::new(), "after kperf stat");

    // Into a pipe whose reader already left: every binary ends by SIGPIPE
    // without a word, and what it loaded is gone.
    let c_object = ktrace_tests::compile_c(
        &dir,
        "two",
        "__attribute__((section(\"tracepoint/block/block_rq_issue\"), used))\n\
         int two(void *ctx) { return 2; }\n\
         char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
    );
    let object = c_object.to_str().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("ktrace", &["check", "--log-level", "2", object]),
        ("ktrace", &["symbols", "submit_bio"]),
        ("ktrace", &["--vm", &name, "tracepoint", "list", "-v"]),
        ("kperf", &["--vm", &name, "list"]),
        ("biolatency", &["--vm", &name, "1", "1"]),
        (
            "biosnoop",
            &["--vm", &name, "--", "--dev", "vda", "--count", "10"],
        ),
    ];
    for (bin, args) in cases {
        ktrace_tests::assert_ends_by_sigpipe(bin, args);
        assert_eq!(
            leftovers(&name),
            Vec::<String>::new(),
            "after {bin} {args:?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn biolatency_intervals_add_up_to_the_requests_completed() {
    let (mut vm, dir) = boot("tools-interval");
    let name = vm.name().to_string();
    // `biolatency 1 3`: three one-second histograms. The first workload
    // runs in the first interval, the second after the first histogram
    // was printed; the second interval used to fail with EINVAL.
    let mut child = spawn("biolatency", &["--vm", &name, "1", "3"]);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    read_until(&mut stderr, "Hit Ctrl-C to end.");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let before = vda(&mut vm);
    workload(&name, "40");
    read_until(&mut stdout, "usecs");
    workload(&name, "25");
    let after = vda(&mut vm);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut errors = String::new();
    stderr.read_to_string(&mut errors).unwrap();
    assert!(status.success(), "{status}: {errors}");
    // The first histogram's header was read above; its rows and the two
    // other histograms follow.
    let histograms: Vec<&str> = rest.split("usecs : count").collect();
    assert_eq!(histograms.len(), 3, "three intervals:\n{rest}");
    let counts: Vec<u64> = histograms.iter().map(|h| histogram_total(h)).collect();
    assert_eq!(
        counts.iter().sum::<u64>(),
        after.completed() - before.completed(),
        "{counts:?}\n{rest}"
    );
    assert_eq!(leftovers(&name), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(dir);
}

fn disk_stats(vm: &mut TestVm, disk: &str) -> DeviceStats {
    let mut c: Client = vm.client();
    c.disk_stats_of(disk).unwrap().expect(disk)
}

#[test]
fn the_flags_users_bring_from_bcc_and_perf_mean_the_same_here() {
    let (mut vm, dir) = boot("tools-habits");
    let name = vm.name().to_string();
    let on_both = ["--", "--dev", "vda,ram0", "--count", "60", "--quiet"];

    // biosnoop -d DISK (BCC: trace this disk only), with I/O on two disks.
    let (vda0, ram0) = (disk_stats(&mut vm, "vda"), disk_stats(&mut vm, "ram0"));
    let out = run_ok(
        "biosnoop",
        &[
            &["--vm", name.as_str(), "--json", "-d", "vda"][..],
            &on_both,
        ]
        .concat(),
    );
    let (vda1, ram1) = (disk_stats(&mut vm, "vda"), disk_stats(&mut vm, "ram0"));
    assert!(ram1.completed() > ram0.completed(), "ram0 saw no I/O");
    let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(lines.len() as u64, vda1.completed() - vda0.completed());
    assert!(lines.iter().all(|l| l["disk"] == "vda"), "{out}");
    // `-d 5` from the old habit of -d as a duration: the error says so.
    let out = run("biosnoop", &["--vm", &name, "-d", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "biosnoop: no disk `5` (disks: ram0, vda; see `ktrace disk stats`); -d is the disk, \
         as in BCC's biosnoop: for a duration use --duration 5\n"
    );

    // biolatency -d DISK -e -j (BCC: one disk; average, total and count;
    // JSON).
    let (vda0, ram0) = (disk_stats(&mut vm, "vda"), disk_stats(&mut vm, "ram0"));
    let out = run_ok(
        "biolatency",
        &[
            &["--vm", name.as_str(), "-d", "ram0", "-e", "-j"][..],
            &on_both,
        ]
        .concat(),
    );
    let (vda1, ram1) = (disk_stats(&mut vm, "vda"), disk_stats(&mut vm, "ram0"));
    assert!(vda1.completed() > vda0.completed(), "vda saw no I/O");
    let v = json(out.trim());
    let completed = ram1.completed() - ram0.completed();
    assert_eq!(v["total"].as_u64(), Some(completed), "{v}");
    let ext = &v["extension"];
    assert_eq!(ext["count"].as_u64(), Some(completed), "{v}");
    assert_eq!(
        ext["avg"].as_u64(),
        Some(ext["total"].as_u64().unwrap() / completed),
        "{v}"
    );
    // The text form prints BCC's line after the histogram.
    let out = run_ok(
        "biolatency",
        &[
            "--vm", &name, "-e", "--", "--dev", "vda", "--count", "20", "--quiet",
        ],
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("avg = ")
            && last.ends_with(" usecs, count: 20")
            && last.contains(" usecs, total: "),
        "{out}"
    );

    // kperf stat -a -x, (perf: system-wide, CSV).
    let before = vda(&mut vm);
    let out = run_ok(
        "kperf",
        &[
            "--vm",
            &name,
            "stat",
            "-a",
            "-x,",
            "-e",
            "block:block_rq_issue,cycles",
            "--",
            "--dev",
            "vda",
            "--count",
            "50",
            "--quiet",
        ],
    );
    let after = vda(&mut vm);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0].len(), 7, "{out}");
    assert_eq!(
        rows[0][0],
        (after.issued - before.issued).to_string(),
        "{out}"
    );
    assert_eq!(&rows[0][1..3], ["", "block:block_rq_issue"], "{out}");
    assert!(rows[0][3].parse::<u64>().unwrap() > 0, "run time: {out}");
    assert_eq!((rows[0][4], rows[0][6]), ("100.00", "/sec"), "{out}");
    assert_eq!(
        rows[1],
        ["<not supported>", "", "cycles", "0", "100.00", "", ""]
    );

    // kperf list 'sched:*' (perf list takes globs) and a glob that matches
    // nothing.
    let out = run_ok("kperf", &["--vm", &name, "list", "sched:*"]);
    let events: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.contains(':'))
        .collect();
    assert!(events.contains(&"sched:sched_switch"), "{out}");
    assert!(events.iter().all(|e| e.starts_with("sched:")), "{out}");
    let out = run("kperf", &["--vm", &name, "list", "shed:*"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("kperf: no event matches `shed:*`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kperf stat --kernel ELF: the kprobe resolves against that ELF.
    let elf = ktrace_tests::kernel_image().source.clone();
    let out = tool("kperf")
        .env_remove(kernel_image::KERNEL_ENV)
        .args(["--vm", &name, "stat", "-x,", "--kernel"])
        .arg(&elf)
        .args(["-e", "kprobe:RequestQueue::submit_bio", "--duration", "0.2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("0,,kprobe:RequestQueue::submit_bio,"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(
        "kperf",
        &[
            "--vm",
            &name,
            "stat",
            "--kernel",
            "/nonexistent/kernel",
            "-e",
            "kprobe:RequestQueue::submit_bio",
            "--duration",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kernel"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A tracepoint typo gets the closest name, before anything is opened.
    let out = run(
        "kperf",
        &[
            "--vm",
            &name,
            "stat",
            "-e",
            "block:blok_rq_issue",
            "--duration",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kperf: no tracepoint `block:blok_rq_issue` in this kernel; did you mean \
         `block:block_rq_issue`?\n"
    );
    // `probe add` takes the names `ktrace symbols` takes (a unique suffix)
    // and suggests close ones.
    let out = run_ok("ktrace", &["--vm", &name, "probe", "add", "submit_bio"]);
    assert!(
        out.contains("(kernel::block::queue::RequestQueue::submit_bio+0x0)"),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    run_ok("ktrace", &["--vm", &name, "probe", "remove", &id]);
    let out = run(
        "ktrace",
        &["--vm", &name, "probe", "add", "RequestQueue::submit_bioo"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("did you mean:\n  kernel::block::queue::RequestQueue::submit_bio"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leftovers(&name), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(dir);
}

/// The README's tour, run line by line as written: each command must
/// succeed (the tour once checked a file `ktrace build` does not write and
/// dumped a map the probe does not have). Each command gets `--vm` of this
/// test's VM, the disk goes to a scratch directory, and `examples/` is the
/// workspace's.
#[test]
fn the_readme_tour_runs_as_written() {
    let root = kernel_image::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let tour = readme
        .split("## A short tour")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the README has a tour in a sh block");
    let name = ktrace_tests::unique_name("readme-tour");
    let scratch = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&scratch).unwrap();
    let _guard = ktrace_tests::CliVmGuard(name.clone());
    let mut ran = 0;
    for line in tour.lines() {
        let command = line.split(" #").next().unwrap().trim();
        for step in command.split("&&").map(str::trim).filter(|s| !s.is_empty()) {
            let words = shell_words(step);
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            if words[0] == "cargo" {
                continue; // `tool` builds the tools
            }
            let args: Vec<String> = words[1..]
                .iter()
                .map(|w| match w.strip_prefix("examples/") {
                    Some(rest) => root.join("examples").join(rest).display().to_string(),
                    None if w.ends_with(".img") => scratch.join("vda.img").display().to_string(),
                    None => w.to_string(),
                })
                .collect();
            let out = tool(words[0])
                .current_dir(&scratch)
                .args(["--vm", &name])
                .args(&args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {step}: {e}"));
            assert!(
                out.status.success(),
                "`{step}` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 14, "only {ran} commands in the tour:\n{tour}");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The words of a command line as `sh` splits them, for the README's
/// lines: whitespace separates, single quotes keep everything.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// `ktrace symbols` through its cache: the first call writes
/// `b-<build id>.idx`, and every kind of query then answers exactly as
/// without a cache (names, globs, offsets, lines, addresses).
#[test]
fn ktrace_symbols_answers_the_same_from_its_cache() {
    let elf = ktrace_tests::kernel_image().source.clone();
    let dir = std::env::temp_dir().join(ktrace_tests::unique_name("symbols-cache"));
    let _ = std::fs::remove_dir_all(&dir);
    let symbols = |cache: &Path, args: &[&str]| {
        let out = tool("ktrace")
            .env("KTRACE_CACHE_DIR", cache)
            .arg("symbols")
            .args(args)
            .output()
            .unwrap();
        format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let id = ktrace_symbols::cache::build_id(&elf)
        .unwrap()
        .expect("the kernel is linked with a build id");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let first = symbols(&dir, &["RequestQueue::submit_bio"]);
    assert!(
        first.contains("kernel::block::queue::RequestQueue::submit_bio"),
        "{first}"
    );
    assert!(
        dir.join(format!("b-{hex}.idx")).is_file(),
        "no cache file for build {hex}"
    );
    let queries: &[&[&str]] = &[
        &["RequestQueue::submit_bio"],
        &["kernel::block::*", "--json"],
        &["RequestQueue::submit_bio+1"],
        &["kernel/src/block/queue.rs:180", "--all"],
        &["--addr", "0x142a30"],
        &["submit_bioo"],
    ];
    for q in queries {
        let uncached = symbols(Path::new(""), q);
        assert_eq!(symbols(&dir, q), uncached, "ktrace symbols {q:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Figures, not pass/fail (timings are not asserted): a one-shot
/// `ktrace symbols NAME` from the README's debug build, cached and not,
/// against `nm -C <elf> | grep -F NAME`. Run with
/// `cargo test -p ktrace-tests --test tools -- --ignored --nocapture symbols_lookup_vs_nm`.
#[test]
#[ignore]
fn symbols_lookup_vs_nm() {
    let elf = ktrace_tests::kernel_image().source.clone();
    let needle = "RequestQueue::submit_bio";
    let dir = std::env::temp_dir().join(ktrace_tests::unique_name("symbols-bench"));
    let runs = 30;
    let time = |make: &dyn Fn() -> Command| -> (f64, f64) {
        let _ = make().output(); // warm: page cache, and the index cache
        let cpu0 = children_cpu_s();
        let mut walls: Vec<f64> = (0..runs)
            .map(|_| {
                let t = std::time::Instant::now();
                let out = make().output().unwrap();
                assert!(out.status.success());
                t.elapsed().as_secs_f64()
            })
            .collect();
        walls.sort_by(f64::total_cmp);
        (walls[runs / 2], (children_cpu_s() - cpu0) / runs as f64)
    };
    let ktrace = |cache: PathBuf| {
        let elf = elf.clone();
        move || {
            let mut c = tool("ktrace");
            c.env("KTRACE_CACHE_DIR", &cache)
                .args(["symbols", "--kernel"])
                .arg(&elf)
                .arg(needle);
            c
        }
    };
    let nm = || {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("nm -C '{}' | grep -F -- '{needle}'", elf.display()));
        c
    };
    let (nm_wall, nm_cpu) = time(&nm);
    let (cached_wall, cached_cpu) = time(&ktrace(dir.clone()));
    let (uncached_wall, uncached_cpu) = time(&ktrace(PathBuf::new()));
    println!("median wall / mean CPU per lookup of {needle}, {runs} runs each:");
    println!(
        "  nm -C | grep -F        {:7.1} ms  {:6.1} ms",
        nm_wall * 1e3,
        nm_cpu * 1e3
    );
    println!(
        "  ktrace symbols, cached {:7.1} ms  {:6.1} ms   ({:.1}x faster than nm by wall, {:.1}x by CPU)",
        cached_wall * 1e3,
        cached_cpu * 1e3,
        nm_wall / cached_wall,
        nm_cpu / cached_cpu
    );
    println!(
        "  ktrace symbols, no cache {:5.1} ms  {:6.1} ms",
        uncached_wall * 1e3,
        uncached_cpu * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU time (user + system) of this process's reaped children, in seconds
/// (`/proc/self/stat` fields 16 and 17, in clock ticks of 10 ms).
fn children_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): cutime is field 16, cstime 17.
    let ticks: u64 = fields[13].parse::<u64>().unwrap() + fields[14].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
