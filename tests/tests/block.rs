//! The block layer, end to end in QEMU: data integrity through the whole
//! pipeline on virtio-blk and the RAM disk, merge counts, errors reaching
//! the submitter, tracepoint counts against diskstats, two devices at
//! once, and the `ktrace workload` / `ktrace disk` CLI.

use std::collections::HashMap;

use ktrace_abi::block::{DeviceStats, RwMode, WorkloadLimit, WorkloadReport, WorkloadSpec};
use ktrace_abi::trace::{TraceRequest, TraceResponse};
use ktrace_abi::{ErrorCode, Request, Response};
use ktrace_tests::{disk_config, ktrace, ktrace_ok, unique_name, CliVmGuard, TestVm};
use probe_sdk::client::Client;

fn stats(c: &mut Client, dev: &str) -> DeviceStats {
    c.disk_stats_of(dev)
        .expect("Block(Stats)")
        .unwrap_or_else(|| panic!("no device {dev}"))
}

fn workload(c: &mut Client, spec: &WorkloadSpec) -> WorkloadReport {
    match c.run_workload(spec, |_| {}) {
        Ok(r) => r,
        Err(e) => panic!("workload {spec:?} failed: {e}"),
    }
}

fn spec(dev: &str, rw: RwMode, iodepth: u32, count: u64) -> WorkloadSpec {
    let mut s = WorkloadSpec::new(dev, rw);
    s.iodepth = iodepth;
    s.limit = WorkloadLimit::Count(count);
    s
}

fn assert_clean(r: &WorkloadReport, what: &str) {
    assert_eq!(r.errors, 0, "{what}: {:?}", r.first_error);
    assert_eq!(r.verify_failures, 0, "{what}: {:?}", r.first_mismatch);
}

#[test]
fn data_integrity_across_the_pipeline_on_both_device_types() {
    let (mut vm, dir) = TestVm::boot_with_disks("integrity", 1);
    let mut c = vm.client();
    // The kernel's own copies first: the RAM disk moves its data with
    // `memcpy` (words and a byte tail).
    let r = c.self_test("mem_copy").unwrap();
    assert!(r.passed, "mem_copy: {:#?}", r.output);
    assert_eq!(r.output, ["12864 copies of each kind, 0 wrong"]);
    // And its clock: every request reads it several times.
    let r = c.self_test("tsc_to_ns").unwrap();
    assert!(r.passed, "tsc_to_ns: {:#?}", r.output);
    assert!(r.output[0].ends_with(" kHz, 0 wrong"), "{:?}", r.output);
    for dev in ["vda", "ram0"] {
        // Host-written data comes back byte for byte, merged or not.
        let data: Vec<u8> = (0..24 * 512).map(|i| (i * 7 + 3) as u8).collect();
        c.write_sectors(dev, 1000, &data).unwrap();
        assert_eq!(c.read_sectors(dev, 1000, 24 * 512).unwrap(), data);
        assert_eq!(
            c.read_sectors(dev, 1008, 512).unwrap(),
            data[8 * 512..9 * 512]
        );
        c.flush_disk(dev).unwrap();

        let before = stats(&mut c, dev);
        // Sequential writes at depth 16 merge; every block is read back.
        let mut s = spec(dev, RwMode::Write, 16, 1024);
        s.verify = true;
        s.size = 2 << 20;
        let r = workload(&mut c, &s);
        assert_clean(&r, dev);
        assert_eq!((r.ios, r.writes), (1024, 1024));
        // 2 MiB hold 512 blocks of 4 KiB; 1024 writes wrap once.
        assert_eq!(r.verified_blocks, 512);
        let after = stats(&mut c, dev);
        assert!(
            after.write.merges > before.write.merges,
            "{dev}: no merges: {after:?}"
        );

        // Random writes and mixed I/O with many in flight, two jobs.
        for rw in [RwMode::RandWrite, RwMode::RandRw] {
            let mut s = spec(dev, rw, 32, 600);
            s.verify = true;
            s.jobs = 2;
            s.block_size = 8192;
            s.seed = 99;
            let r = workload(&mut c, &s);
            assert_clean(&r, dev);
            assert_eq!(r.ios, 1200);
            assert!(r.verified_blocks > 0 && r.verified_blocks <= r.writes);
        }
        // Large blocks.
        let mut s = spec(dev, RwMode::RandWrite, 4, 64);
        s.verify = true;
        s.block_size = 128 << 10;
        assert_clean(&workload(&mut c, &s), dev);
    }
    let vda = stats(&mut c, "vda");
    assert!(
        vda.interrupts > 0,
        "virtio-blk completes by interrupt: {vda:?}"
    );
    assert_eq!(vda.in_flight, 0);
    assert_eq!(vda.hw_queue_depth, 16);
    drop(vm);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sequential_writes_merge_and_random_ones_mostly_do_not() {
    let (mut vm, dir) = TestVm::boot_with_disks("merge", 1);
    let mut c = vm.client();
    for dev in ["vda", "ram0"] {
        let a = stats(&mut c, dev);
        let r = workload(&mut c, &spec(dev, RwMode::Write, 8, 800));
        assert_clean(&r, dev);
        let b = stats(&mut c, dev);
        let bios = b.bios - a.bios;
        let merges = b.write.merges - a.write.merges;
        let requests = b.write.ios - a.write.ios;
        assert_eq!(bios, 800, "{dev}");
        assert!(merges > 0, "{dev}: sequential writes did not merge");
        assert_eq!(
            requests + merges,
            bios,
            "{dev}: every bio is a request or a merge"
        );
        assert!(
            requests < bios,
            "{dev}: {requests} requests for {bios} bios"
        );

        let r = workload(&mut c, &spec(dev, RwMode::RandWrite, 8, 800));
        assert_clean(&r, dev);
        let c2 = stats(&mut c, dev);
        let merges = c2.write.merges - b.write.merges;
        assert!(
            merges * 20 < 800,
            "{dev}: {merges} of 800 random writes merged"
        );

        // The `none` scheduler never merges.
        c.set_scheduler(dev, "none").unwrap();
        assert_eq!(stats(&mut c, dev).scheduler, "none");
        workload(&mut c, &spec(dev, RwMode::Write, 8, 400));
        let d = stats(&mut c, dev);
        assert_eq!(d.write.merges, c2.write.merges, "{dev}: none merged");
        assert_eq!(d.write.ios - c2.write.ios, 400);
        c.set_scheduler(dev, "deadline").unwrap();
    }
    let err = c.set_scheduler("vda", "cfq").unwrap_err();
    assert_eq!(
        err.kernel_reply().unwrap().message,
        "unknown scheduler \"cfq\" for vda; known: deadline, none"
    );
    drop(vm);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_reach_the_submitter_and_the_queue_keeps_working() {
    let (mut vm, dir) = TestVm::boot_with_disks("errors", 1);
    let mut c = vm.client();
    let cap = stats(&mut c, "vda").capacity_sectors;
    assert_eq!(cap, 65536);

    let err = c.read_sectors("vda", cap - 4, 4096).unwrap_err();
    let reply = err.kernel_reply().expect("an error frame");
    assert_eq!(reply.code, ErrorCode::InvalidArgument);
    assert_eq!(reply.errno, -5);
    assert_eq!(
        reply.message,
        "vda: sectors 65532..65540 are beyond the end of the device (65536 sectors)"
    );
    let err = c.write_sectors("vda", 0, &[1u8; 100]).unwrap_err();
    let reply = err.kernel_reply().unwrap();
    assert_eq!((reply.code, reply.errno), (ErrorCode::InvalidArgument, -22));
    assert_eq!(
        reply.message,
        "vda: size 100 bytes is not a non-zero multiple of the sector size (512 bytes)"
    );
    // The queue keeps working.
    c.write_sectors("vda", cap - 1, &[0xab; 512]).unwrap();
    assert_eq!(
        c.read_sectors("vda", cap - 1, 512).unwrap(),
        vec![0xab; 512]
    );
    let s = stats(&mut c, "vda");
    assert_eq!((s.rejected, s.errors, s.in_flight), (2, 0, 0));
    assert_eq!((s.read.ios, s.write.ios), (1, 1));

    // A device error (injected on the RAM disk) reaches the submitter.
    c.inject_disk_errors("ram0", Some((1000, 8))).unwrap();
    let err = c.read_sectors("ram0", 1004, 512).unwrap_err();
    let reply = err.kernel_reply().unwrap();
    assert_eq!((reply.code, reply.errno), (ErrorCode::Io, -5));
    assert_eq!(
        reply.message,
        "ram0: the device reported an error: I/O error (status 1)"
    );
    // I/O beside the bad range still works, and a workload over it reports
    // the errors without stopping.
    c.read_sectors("ram0", 1008, 512).unwrap();
    // Depth 1: no merges, so exactly one request covers the bad range (a
    // merged request fails as a whole, every bio in it).
    let mut s = spec("ram0", RwMode::Read, 1, 16);
    s.offset = 496 << 10;
    s.size = 64 << 10;
    let r = workload(&mut c, &s);
    assert_eq!(r.ios, 16);
    assert_eq!(r.errors, 1, "one 4 KiB block covers sectors 1000..1008");
    assert_eq!(
        r.first_error.as_deref(),
        Some("ram0: the device reported an error: I/O error (status 1) (sector 1000)")
    );
    assert_eq!(stats(&mut c, "ram0").errors, 2);
    c.inject_disk_errors("ram0", None).unwrap();
    c.read_sectors("ram0", 1000, 4096).unwrap();
    let err = c.inject_disk_errors("vda", Some((0, 1))).unwrap_err();
    assert_eq!(
        err.kernel_reply().unwrap().message,
        "vda: this device does not support error injection"
    );

    // Bad workload arguments are refused with a clear message.
    let cases: Vec<(WorkloadSpec, &str)> = vec![
        (
            {
                let mut s = spec("vda", RwMode::RandRead, 0, 1);
                s.iodepth = 0;
                s
            },
            "iodepth 0 is out of range 1..=256",
        ),
        (
            spec("vdz", RwMode::RandRead, 1, 1),
            "no block device \"vdz\"; devices: vda, ram0",
        ),
        (
            {
                let mut s = spec("vda", RwMode::RandRead, 1, 1);
                s.verify = true;
                s
            },
            "verify needs a workload that writes (write, randwrite or randrw), not randread",
        ),
        (
            {
                let mut s = spec("vda", RwMode::Read, 1, 1);
                s.block_size = 1000;
                s
            },
            "block size 1000 must be a non-zero multiple of 512 bytes, at most 1048576",
        ),
        (
            {
                let mut s = spec("vda", RwMode::Read, 1, 1);
                s.offset = 40 << 20;
                s
            },
            "region 41943040+0 does not fit vda (32 MiB)",
        ),
    ];
    for (s, message) in cases {
        let err = c.run_workload(&s, |_| {}).unwrap_err();
        assert_eq!(
            err.kernel_reply().map(|r| r.message.as_str()),
            Some(message)
        );
    }
    drop(vm);
    std::fs::remove_dir_all(dir).unwrap();
}

const BLOCK_EVENTS: [&str; 6] = [
    "block:block_bio_queue",
    "block:block_bio_backmerge",
    "block:block_bio_frontmerge",
    "block:block_rq_insert",
    "block:block_rq_issue",
    "block:block_rq_complete",
];

/// Attach the kernel's built-in counting handler to a tracepoint.
fn attach_counter(c: &mut Client, name: &str) -> u32 {
    let req = Request::Trace(TraceRequest::AttachTracepoint { name: name.into() });
    match c.request(&req) {
        Ok(Response::Trace(TraceResponse::Attached { id })) => id,
        other => panic!("attach {name}: {other:?}"),
    }
}

fn detach(c: &mut Client, id: u32) {
    let req = Request::Trace(TraceRequest::DetachTracepoint { id });
    assert!(matches!(c.request(&req), Ok(Response::Ok)));
}

/// Events delivered per tracepoint (`category:name`) since boot.
fn hits(c: &mut Client) -> HashMap<String, u64> {
    match c.request(&Request::Trace(TraceRequest::ListTracepoints)) {
        Ok(Response::Trace(TraceResponse::Tracepoints(list))) => list
            .into_iter()
            .map(|t| (format!("{}:{}", t.category, t.name), t.hits))
            .collect(),
        other => panic!("ListTracepoints: {other:?}"),
    }
}

#[test]
fn tracepoint_counts_equal_diskstats() {
    let (mut vm, dir) = TestVm::boot_with_disks("tpstats", 1);
    let mut c = vm.client();
    let ids: Vec<u32> = BLOCK_EVENTS
        .iter()
        .map(|n| attach_counter(&mut c, n))
        .collect();
    let before = hits(&mut c);
    assert!(BLOCK_EVENTS.iter().all(|n| before[*n] == 0), "{before:?}");
    for dev in ["vda", "ram0"] {
        workload(&mut c, &spec(dev, RwMode::Write, 8, 500));
        workload(&mut c, &spec(dev, RwMode::RandRead, 16, 500));
        c.read_sectors(dev, 0, 8192).unwrap();
    }
    // One refused bio: not a bio_queue event (as in Linux).
    c.read_sectors("vda", 1 << 40, 512).unwrap_err();
    let t = hits(&mut c);
    for id in ids {
        detach(&mut c, id);
    }
    let all = c.disk_stats().unwrap();
    let sum = |f: &dyn Fn(&DeviceStats) -> u64| all.iter().map(f).sum::<u64>();
    let get = |n: &str| t[&format!("block:{n}")];
    assert_eq!(get("block_bio_queue"), sum(&|d| d.bios));
    assert_eq!(get("block_bio_queue"), 2 * (500 + 500 + 1));
    assert_eq!(
        get("block_bio_backmerge") + get("block_bio_frontmerge"),
        sum(&|d| d.merges())
    );
    assert!(get("block_bio_backmerge") > 0);
    assert_eq!(get("block_rq_insert"), sum(&|d| d.inserted));
    assert_eq!(get("block_rq_issue"), sum(&|d| d.issued));
    assert_eq!(get("block_rq_complete"), sum(&|d| d.completed()));
    assert_eq!(get("block_rq_insert"), get("block_rq_complete"));
    // Detached: the sites are nops again, counts stay.
    c.read_sectors("vda", 0, 512).unwrap();
    let again = hits(&mut c);
    for n in BLOCK_EVENTS {
        assert_eq!(again[n], t[n], "{n}");
    }
    drop(vm);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn two_devices_at_once() {
    let (mut vm, dir) = TestVm::boot_with_disks("concurrency", 2);
    let mut c = vm.client();
    let names: Vec<String> = c
        .disk_stats()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["vda", "vdb", "ram0"]);
    let mut s = spec("vda", RwMode::RandRw, 8, 300);
    s.devices = vec!["vda".into(), "vdb".into(), "ram0".into()];
    s.jobs = 2;
    s.verify = true;
    let r = workload(&mut c, &s);
    assert_clean(&r, "three devices");
    assert_eq!(r.ios, 3 * 2 * 300);
    for d in &r.per_device {
        assert_eq!((d.ios, d.errors), (600, 0), "{d:?}");
        let st = stats(&mut c, &d.dev);
        // The main phase's 600 bios plus the verify phase's reads.
        assert!(st.bios > 600, "{st:?}");
        assert_eq!((st.errors, st.in_flight), (0, 0), "{st:?}");
        assert_eq!(st.completed() + st.merges(), st.bios, "{st:?}");
    }
    drop(vm);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cli_workload_and_disk_stats() {
    let name = unique_name("blkcli");
    let _guard = CliVmGuard(name.clone());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    ktrace_ok(&[
        "vm",
        "start",
        "--name",
        &name,
        "--disk",
        disk.to_str().unwrap(),
        "--disk-size",
        "16M",
    ]);

    let out = ktrace_ok(&[
        "--vm",
        &name,
        "workload",
        "--dev",
        "vda",
        "--rw",
        "randread",
        "--bs",
        "4k",
        "--iodepth",
        "8",
        "--count",
        "500",
    ]);
    assert!(
        out.starts_with(
            "vda randread bs=4096 iodepth=8 jobs=1: 500 I/Os (500 reads, 0 writes) in "
        ),
        "{out}"
    );
    assert!(out.contains("\n  IOPS "), "{out}");
    assert!(out.contains("\n  latency (us): min "), "{out}");

    let json = ktrace_ok(&[
        "--vm", &name, "workload", "--dev", "ram0", "--rw", "write", "--count", "64", "--verify",
        "--json",
    ]);
    let r: WorkloadReport = serde_json::from_str(&json).unwrap();
    assert_eq!((r.ios, r.verified_blocks, r.verify_failures), (64, 64, 0));

    let table = ktrace_ok(&["--vm", &name, "disk", "stats"]);
    let vda = table.lines().find(|l| l.starts_with("vda ")).expect(&table);
    // 500 reads of 8 sectors (random reads may merge now and then).
    assert!(
        vda.contains("virtio-blk") && vda.contains(" 4000 "),
        "{table}"
    );
    let raw = ktrace_ok(&["--vm", &name, "disk", "stats", "--raw", "--dev", "vda"]);
    let fields: Vec<&str> = raw.split_whitespace().collect();
    assert_eq!(fields[..3], ["253", "0", "vda"], "{raw}");
    let (ios, merges): (u64, u64) = (fields[3].parse().unwrap(), fields[4].parse().unwrap());
    assert_eq!((ios + merges, fields[5]), (500, "4000"), "{raw}");
    assert_eq!(fields.len(), 20, "{raw}");

    let out = ktrace()
        .args([
            "--vm",
            &name,
            "workload",
            "--dev",
            "vda",
            "--rw",
            "randread",
            "--iodepth",
            "999",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ktrace: the kernel refused Block(Workload): iodepth 999 is out of range 1..=256 (InvalidArgument, errno 0)\n"
    );
    let out = ktrace()
        .args(["--vm", &name, "workload", "--dev", "vda", "--rw", "up"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ktrace: invalid --rw \"up\": expected read, write, randread, randwrite or randrw\n"
    );
    ktrace_ok(&["--vm", &name, "vm", "stop"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// One benchmark run: IOPS and MB/s.
fn bench_run(c: &mut Client, dev: &str, rw: RwMode, bs: u32, qd: u32, ms: u64) -> (f64, f64) {
    let mut s = spec(dev, rw, qd, 1);
    s.block_size = bs;
    s.limit = WorkloadLimit::TimeMs(ms);
    let r = workload(c, &s);
    assert_clean(&r, dev);
    (r.iops(), r.mb_per_s())
}

/// The block-layer benchmarks (`cargo test -p ktrace-tests --test block
/// -- --ignored --nocapture block_benchmarks`): 4 KiB random reads at
/// queue depth 1, 8 and 32 and sequential 128 KiB reads on virtio-blk and
/// the RAM disk; each run alternately without and with the counting
/// handler attached to every block tracepoint, in the same boot, and the
/// median over rounds of the traced/untraced IOPS ratio (each round runs
/// both, in alternating order, so host load drifts cancel). Then plugging on and off for sequential 4 KiB
/// writes (the dispatch-trigger measurement).
#[test]
#[ignore = "benchmark: minutes of QEMU time"]
fn block_benchmarks() {
    let ms: u64 = std::env::var("BLOCK_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rounds: usize = std::env::var("BLOCK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let (mut cfg, dir) = disk_config("bench", 1);
    // BLOCK_BENCH_ICOUNT=shift=5 makes guest time count instructions, so
    // host load does not move the figures (device time then runs on the
    // host's clock only while the guest idles).
    ktrace_tests::icount_from_env(&mut cfg, "BLOCK_BENCH_ICOUNT");
    let mut vm = TestVm::boot_with(cfg);
    let mut c = vm.client();
    c.set_request_timeout(std::time::Duration::from_secs(60));
    // Fill the region the reads cover so the disk image is not sparse.
    let mut fill = spec("vda", RwMode::Write, 8, 1);
    fill.block_size = 128 << 10;
    fill.limit = WorkloadLimit::Count(256);
    workload(&mut c, &fill);
    let configs: Vec<(&str, RwMode, u32, u32)> = vec![
        ("vda", RwMode::RandRead, 4096, 1),
        ("vda", RwMode::RandRead, 4096, 8),
        ("vda", RwMode::RandRead, 4096, 32),
        ("vda", RwMode::Read, 128 << 10, 4),
        ("ram0", RwMode::RandRead, 4096, 1),
        ("ram0", RwMode::RandRead, 4096, 8),
        ("ram0", RwMode::RandRead, 4096, 32),
        ("ram0", RwMode::Read, 128 << 10, 4),
    ];
    println!("| device | workload | QD | IOPS (off) | MB/s (off) | IOPS (traced) | MB/s (traced) | median ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for (dev, rw, bs, qd) in configs {
        let (mut off, mut on, mut ratios) = ((0.0, 0.0), (0.0, 0.0), Vec::new());
        for round in 0..rounds {
            // Alternate the order so a drift in host load hits both sides.
            let mut pair = [(0.0, 0.0); 2];
            for traced in [round % 2 == 1, round % 2 == 0] {
                let ids: Vec<u32> = if traced {
                    BLOCK_EVENTS
                        .iter()
                        .map(|n| attach_counter(&mut c, n))
                        .collect()
                } else {
                    Vec::new()
                };
                pair[usize::from(traced)] = bench_run(&mut c, dev, rw, bs, qd, ms);
                for id in ids {
                    detach(&mut c, id);
                }
            }
            off = (off.0 + pair[0].0, off.1 + pair[0].1);
            on = (on.0 + pair[1].0, on.1 + pair[1].1);
            ratios.push(pair[1].0 / pair[0].0);
        }
        ratios.sort_by(f64::total_cmp);
        let n = rounds as f64;
        println!(
            "| {dev} | {} {}k | {qd} | {:.0} | {:.2} | {:.0} | {:.2} | {:.3} |",
            rw.name(),
            bs / 1024,
            off.0 / n,
            off.1 / n,
            on.0 / n,
            on.1 / n,
            ratios[ratios.len() / 2]
        );
    }
    println!();
    println!("| device | sequential 4k writes, QD 8 | IOPS | bios | requests | merges |");
    println!("|---|---|---|---|---|---|");
    for dev in ["vda", "ram0"] {
        // [plug on, plug off]: IOPS sum, bios, requests, merges.
        let mut acc = [(0.0, 0, 0, 0); 2];
        for round in 0..rounds {
            for plug in [round % 2 == 0, round % 2 == 1] {
                let a = stats(&mut c, dev);
                let mut s = spec(dev, RwMode::Write, 8, 1);
                s.limit = WorkloadLimit::TimeMs(ms);
                s.plug = plug;
                let r = workload(&mut c, &s);
                let b = stats(&mut c, dev);
                let e = &mut acc[usize::from(!plug)];
                e.0 += r.iops();
                e.1 += b.bios - a.bios;
                e.2 += b.write.ios - a.write.ios;
                e.3 += b.write.merges - a.write.merges;
            }
        }
        for (i, e) in acc.iter().enumerate() {
            println!(
                "| {dev} | plug {} | {:.0} | {} | {} | {} |",
                if i == 0 { "on" } else { "off" },
                e.0 / rounds as f64,
                e.1,
                e.2,
                e.3
            );
        }
    }
    drop(vm);
    std::fs::remove_dir_all(dir).unwrap();
}
