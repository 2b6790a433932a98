//! Running `biolatency`: load the probe with the options' settings, trace
//! until Ctrl-C, for `interval count`, or while a workload runs, and print
//! the histograms; the probe is removed however it ends.

use std::time::Duration;

use probe_sdk::runtime::Runtime;

use crate::{kernel, stop, workload};

/// Arguments of `biolatency`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Include timestamps on output.
    #[arg(short = 'T', long)]
    pub timestamp: bool,
    /// Include OS queued time (from block_rq_insert) in the latency.
    #[arg(short = 'Q', long)]
    pub queued: bool,
    /// Millisecond histogram.
    #[arg(short = 'm', long)]
    pub milliseconds: bool,
    /// Print a histogram per disk device.
    #[arg(short = 'D', long, conflicts_with = "flags")]
    pub disks: bool,
    /// Print a histogram per set of I/O flags (Read, Write, Sync-Write, ...).
    #[arg(short = 'F', long)]
    pub flags: bool,
    /// Only this disk (e.g. `vda`), as BCC's `-d`.
    #[arg(short = 'd', long, value_name = "DISK")]
    pub disk: Option<String>,
    /// Also print the average, total and count of the latencies, as BCC's
    /// `-e` (`avg = 412 usecs, total: 41254 usecs, count: 100`).
    #[arg(short = 'e', long)]
    pub extension: bool,
    /// Print the buckets as JSON (one object per interval).
    #[arg(short = 'j', long)]
    pub json: bool,
    /// The VM to trace (see `ktrace vm list`).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub vm: String,
    /// Output interval, in seconds.
    pub interval: Option<u64>,
    /// Number of outputs.
    pub count: Option<u64>,
    /// Run this in-kernel workload (arguments of `ktrace workload`) while
    /// tracing, then print and exit.
    #[arg(last = true, value_name = "WORKLOAD ARGS")]
    pub workload: Vec<String>,
}

/// Run `biolatency`.
pub fn run(cli: Args) -> anyhow::Result<()> {
    if cli.interval == Some(0) {
        anyhow::bail!("interval must be at least 1 second");
    }
    if cli.count == Some(0) {
        anyhow::bail!("count must be at least 1");
    }
    let spec = if cli.workload.is_empty() {
        None
    } else {
        Some(workload::workload_spec(&cli.workload)?)
    };
    let object = crate::tools::embedded_probe("biolatency")?;
    let mut client = kernel::connect(&cli.vm, "biolatency")?;
    let disks = kernel::disk_names(&mut client)?;
    let opts = super::Options {
        queued: cli.queued,
        millis: cli.milliseconds,
        per_disk: cli.disks,
        per_flags: cli.flags,
        disk: cli
            .disk
            .as_deref()
            .map(|d| kernel::disk_dev(&disks, d))
            .transpose()?,
        extension: cli.extension,
    };
    let mut rt = Runtime::new(&mut client);
    // From here on a signal or a closed stdout ends the tracing loop, so
    // the probe is always removed before the process ends.
    stop::catch_signals();
    let probe = kernel::load_probe(
        &mut rt,
        "biolatency",
        object,
        &opts.settings(),
        &[opts.unused_program()],
    )?;
    let result = trace(&cli, &opts, spec.as_ref(), &mut rt, &probe, &disks);
    let removed = probe.remove(&mut rt);
    result?;
    removed.map_err(|e| e.context("detaching the probe"))
}

fn print(cli: &Args, opts: &super::Options, h: &super::Histograms) {
    if cli.json {
        let mut v = super::to_json(h, opts);
        if cli.timestamp {
            v["time"] = serde_json::json!(clock());
        }
        outln!("{v}");
        return;
    }
    if cli.timestamp {
        outln!("{}", clock());
    }
    out!("{}", super::render(h, opts));
}

/// Wall-clock time of day, UTC, as BCC's `-T` prints it.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

fn trace(
    cli: &Args,
    opts: &super::Options,
    spec: Option<&ktrace_abi::block::WorkloadSpec>,
    rt: &mut Runtime,
    probe: &kernel::LoadedProbe,
    disks: &[(u32, String)],
) -> anyhow::Result<()> {
    if let Some(spec) = spec {
        if stop::stop_requested() {
            return Ok(());
        }
        if !cli.json {
            errln!("Tracing block device I/O while the workload runs...");
        }
        let report = workload::run_workload_with_events(rt.client(), spec, |_| {}, |_| {})?;
        if !cli.json {
            errln!(
                "workload: {} I/Os in {:.2} s ({} errors)",
                report.ios,
                report.elapsed_ns as f64 / 1e9,
                report.errors
            );
            outln!();
        }
        print(cli, opts, &super::read(rt, probe, disks)?);
        return Ok(());
    }
    if !cli.json {
        match cli.interval {
            Some(_) => errln!("Tracing block device I/O... Hit Ctrl-C to end."),
            None => errln!("Tracing block device I/O... Hit Ctrl-C to end and print."),
        }
    }
    let interval = Duration::from_secs(cli.interval.unwrap_or(99_999_999));
    let mut printed = 0u64;
    // The maps only grow; each interval prints what was added since the
    // previous read (see `Histograms::since`).
    let mut previous = super::Histograms::default();
    loop {
        let finished = !stop::sleep_unless_stopped(interval);
        let now = super::read(rt, probe, disks)?;
        if !cli.json {
            outln!();
        }
        print(cli, opts, &now.since(&previous));
        previous = now;
        printed += 1;
        if finished || cli.count.is_some_and(|c| printed >= c) || cli.interval.is_none() {
            break;
        }
    }
    Ok(())
}
