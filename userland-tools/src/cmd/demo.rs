//! `ktrace demo`: the whole user story in one command. Boot the kernel
//! with a virtio disk, load the Rust `biolatency` probe embedded in this
//! binary, run a random-read workload while counting block and scheduler
//! events, print the latency histogram and a `perf stat` table, check both
//! against the kernel's own statistics, and shut down.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ktrace_abi::block::{RwMode, WorkloadLimit, WorkloadSpec};
use probe_sdk::runtime::Runtime;
use probe_sdk::trace::TraceClient;
use probe_sdk::vm::{Vm, VmConfig};

use crate::kernel::{self, LoadedProbe};
use crate::report::stat;
use crate::tools::{self, biolatency as bl, kperf as kp};
use crate::workload;

/// Arguments of `ktrace demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// I/Os the workload performs.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// I/Os in flight.
    #[arg(long, default_value_t = 4)]
    pub iodepth: u32,
    /// Leave the VM running at the end (stop it with `ktrace vm stop`).
    #[arg(long)]
    pub keep: bool,
}

/// Events of the `kperf stat` table.
const EVENTS: &[&str] = &[
    "task-clock",
    "context-switches",
    "irqs",
    "block:block_bio_queue",
    "block:block_rq_insert",
    "block:block_rq_issue",
    "block:block_rq_complete",
    "sched:sched_switch",
    "sched:sched_wakeup",
    "cycles",
];

fn step(n: u32, text: &str) {
    outln!("\n[{n}/6] {text}");
}

/// Run `ktrace demo` as VM `vm_name`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    step(1, "Checking the setup");
    let object = tools::embedded_probe("biolatency")?;
    outln!(
        "  biolatency probe: {} bytes of eBPF, compiled from Rust (examples/biolatency) with this binary",
        object.len()
    );
    if probe_sdk::vm::find_in_path(
        "qemu-system-x86_64",
        &std::env::var_os("PATH").unwrap_or_default(),
    )
    .is_none()
    {
        bail!("qemu-system-x86_64 is not installed: run `bash scripts/setup.sh` (Debian: apt-get install qemu-system-x86)");
    }
    outln!("  qemu-system-x86_64 found");
    if Vm::attach(vm_name).is_ok() {
        bail!(
            "VM `{vm_name}` is already running; stop it (`ktrace --vm {vm_name} vm stop`) or pick another name with --vm"
        );
    }

    step(
        2,
        "Building the kernel if needed and booting it in QEMU (TCG) with a 64 MiB virtio disk",
    );
    let mut cfg = VmConfig::new(vm_name);
    let disk = probe_sdk::vm::runtime_root().join(format!("{vm_name}-demo-disk.img"));
    cfg.disks = vec![disk];
    // cargo's own progress shows while the kernel builds (minutes the
    // first time), so the demo is never silent.
    cfg.quiet_build = false;
    let vm = Vm::start(&cfg)?;
    // Ctrl-C, SIGTERM or a closed stdout from here on end the story early
    // but still remove the probe and stop the VM.
    crate::stop::catch_signals();
    let result = if crate::stop::stop_requested() {
        Ok(())
    } else {
        story(&args, &vm, object)
    };
    if args.keep {
        outln!("\nVM `{vm_name}` left running (ktrace --vm {vm_name} vm stop)");
    } else {
        step(6, "Shutting down");
        let report = vm.stop(Duration::from_secs(10));
        outln!("  VM stopped ({:?})", report.how);
    }
    result?;
    outln!("\ndemo finished in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn story(args: &Args, vm: &Vm, object: &[u8]) -> anyhow::Result<()> {
    if let Some(boot) = vm.boot_info() {
        outln!(
            "  kernel {} answered in {:.2} s; {} symbols embedded",
            boot.hello.kernel_version,
            boot.boot_time.as_secs_f64(),
            boot.image.symbols
        );
    }
    let mut client = vm.connect(&probe_sdk::client::ConnectOptions {
        client_name: "ktrace demo".into(),
        ..Default::default()
    })?;
    let disks = client.disk_stats()?;
    let Some(vda) = disks.iter().find(|d| d.kind == "virtio-blk") else {
        bail!("the kernel found no virtio disk");
    };
    outln!(
        "  disk {}: {} MiB, {} scheduler, queue depth {}",
        vda.name,
        vda.capacity_sectors / 2048,
        vda.scheduler,
        vda.hw_queue_depth
    );
    let dev = vda.name.clone();
    let names = kernel::disk_names(&mut client)?;

    step(3, "Loading the Rust biolatency probe into the kernel");
    let mut rt = Runtime::new(&mut client);
    let opts = bl::Options::default();
    let probe = kernel::load_probe(
        &mut rt,
        "biolatency",
        object,
        &opts.settings(),
        &[opts.unused_program()],
    )?;
    for p in &probe.programs {
        outln!(
            "  prog {:<12} {:<34} {:>3} insns, verified ({} insns processed)",
            p.name,
            p.section,
            p.insns,
            p.verifier.insns_processed
        );
    }
    let r = measure(args, &mut rt, &probe, &dev, &names);
    let removed = probe.remove(&mut rt);
    r?;
    removed.context("detaching the probe")
}

fn measure(
    args: &Args,
    rt: &mut Runtime,
    probe: &LoadedProbe,
    dev: &str,
    names: &[(u32, String)],
) -> anyhow::Result<()> {
    step(
        4,
        &format!(
            "Running a random-read workload on {dev}: {} x 4 KiB, {} in flight, counting block and scheduler events",
            args.count, args.iodepth
        ),
    );
    let mut spec = WorkloadSpec::new(dev, RwMode::RandRead);
    spec.limit = WorkloadLimit::Count(args.count);
    spec.iodepth = args.iodepth;
    spec.block_size = 4096;
    let evs: Vec<(String, kp::EventSpec)> = EVENTS
        .iter()
        .map(|e| Ok((e.to_string(), kp::parse_event(e)?)))
        .collect::<anyhow::Result<_>>()?;
    let client = rt.client();
    let before = client.disk_stats_of(dev)?.context("the disk vanished")?;
    let counters = kp::open_counters(client, &evs)?;
    let r = (|| -> anyhow::Result<(Vec<Option<u64>>, f64, u64)> {
        // Elapsed spans enable to disable: the window the counters count.
        let t = Instant::now();
        let ids: Vec<u32> = counters.iter().filter_map(|c| c.id).collect();
        client.perf_enable_group(&ids)?;
        let report = workload::run_workload_with_events(
            client,
            &spec,
            |p| {
                use std::io::Write as _;
                out!("\r  {}", workload::progress_line(p));
                let _ = std::io::stdout().flush();
            },
            |_| {},
        )?;
        client.perf_disable_group(&ids)?;
        let elapsed = t.elapsed().as_secs_f64();
        outln!(
            "\r  {} I/Os in {:.2} s: {:.0} IOPS, mean latency {:.1} us, {} errors{}",
            report.ios,
            report.elapsed_ns as f64 / 1e9,
            report.iops(),
            report.latency.mean as f64 / 1e3,
            report.errors,
            " ".repeat(20)
        );
        let mut vals = Vec::new();
        for c in &counters {
            vals.push(match c.id {
                Some(id) => Some(client.perf_read(id)?.value),
                None => None,
            });
        }
        Ok((vals, elapsed, report.ios))
    })();
    kp::close_counters(client, &counters);
    let (vals, elapsed, ios) = r?;
    let after = client.disk_stats_of(dev)?.context("the disk vanished")?;

    step(5, "Results");
    let h = bl::read(rt, probe, names)?;
    outln!("\n  Block I/O latency (issue -> complete), from the Rust probe's LATENCY_US map:\n");
    for line in bl::render(&h, &bl::Options::default()).lines() {
        outln!("  {line}");
    }
    let rows: Vec<stat::CounterRow> = counters
        .iter()
        .zip(&vals)
        .map(|(c, v)| stat::CounterRow {
            event: c.name.clone(),
            values: v.map(|v| {
                vec![if c.name == "task-clock" {
                    (v + 500_000) / 1_000_000
                } else {
                    v
                }]
            }),
            unit: if c.name == "task-clock" {
                "msec".into()
            } else {
                String::new()
            },
            cpu: None,
        })
        .collect();
    for line in stat::render(
        &format!("workload randread {dev} x{ios}"),
        1,
        &rows,
        elapsed,
    )
    .lines()
    {
        outln!("  {line}");
    }
    let completed = after.completed() - before.completed();
    let issued = after.issued - before.issued;
    let value = |name: &str| {
        counters
            .iter()
            .position(|c| c.name == name)
            .and_then(|i| vals[i])
    };
    outln!("\n  Cross-check against the kernel's disk statistics ({dev}):");
    outln!(
        "    requests completed (diskstats)       {completed:>8}\n    \
         histogram total (Rust probe)         {:>8}  {}\n    \
         block:block_rq_complete (kperf)      {:>8}  {}\n    \
         block:block_rq_issue (kperf)         {:>8}  {}  (issued: {issued})",
        h.count(),
        verdict(h.count() == completed),
        value("block:block_rq_complete").unwrap_or(0),
        verdict(value("block:block_rq_complete") == Some(completed)),
        value("block:block_rq_issue").unwrap_or(0),
        verdict(value("block:block_rq_issue") == Some(issued)),
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "= diskstats"
    } else {
        "MISMATCH"
    }
}
