//! The in-kernel workload generator as commands and tools drive it: the
//! arguments of `ktrace workload` (which every tool also takes after `--`),
//! turning them into a [`WorkloadSpec`], running a workload while pushed
//! events keep arriving, and the progress line and report it prints.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ktrace_abi::block::{
    BlockRequest, BlockResponse, RwMode, WorkloadLimit, WorkloadProgress, WorkloadReport,
    WorkloadSpec,
};
use ktrace_abi::bpf::{BpfResponse, EventBatch};
use ktrace_abi::{Request, Response};
use probe_sdk::client::Client;
use probe_sdk::vm::parse_size;

/// Arguments of `ktrace workload`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Device(s) to drive: `vda`, `ram0`, ...; repeat or separate with
    /// commas to drive several at once.
    #[arg(long, value_name = "DEV", required = true, value_delimiter = ',')]
    pub dev: Vec<String>,
    /// Access pattern: read, write, randread, randwrite, randrw.
    #[arg(long, value_name = "MODE", default_value = "randread")]
    pub rw: String,
    /// Bytes per I/O (a multiple of 512; K/M suffixes).
    #[arg(long, value_name = "SIZE", default_value = "4k")]
    pub bs: String,
    /// I/Os each job keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub iodepth: u32,
    /// Jobs (kernel tasks) per device.
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Stop after this many I/Os per job.
    #[arg(long, conflicts_with = "time")]
    pub count: Option<u64>,
    /// Stop after this long: seconds, or with a unit (`500ms`, `10s`).
    #[arg(long, value_name = "DURATION")]
    pub time: Option<String>,
    /// Write recognisable patterns and read every written block back.
    #[arg(long)]
    pub verify: bool,
    /// Share of reads in randrw, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 50)]
    pub rwmix_read: u8,
    /// First byte of the region to use (K/M/G suffixes; default 0).
    #[arg(long)]
    pub offset: Option<String>,
    /// Size of the region (default: to the end of the device).
    #[arg(long)]
    pub size: Option<String>,
    /// Seed of offsets and patterns.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Submit every I/O on its own instead of plugging each batch.
    #[arg(long)]
    pub no_plug: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parse a duration: `10` (seconds), `1.5s`, `500ms`.
pub fn parse_duration_ms(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (t, 1000.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| {
            format!("invalid duration {text:?}: expected a positive number of seconds, e.g. 10, 1.5s or 500ms")
        })?;
    let ms = (v * scale).round() as u64;
    if ms == 0 {
        bail!("invalid duration {text:?}: shorter than a millisecond");
    }
    Ok(ms)
}

/// Turn the arguments into a spec (all checks the host can make).
pub fn spec_from_args(args: &Args) -> anyhow::Result<WorkloadSpec> {
    let rw = RwMode::parse(&args.rw).with_context(|| {
        format!(
            "invalid --rw {:?}: expected read, write, randread, randwrite or randrw",
            args.rw
        )
    })?;
    let bs = parse_size(&args.bs).map_err(|e| anyhow::anyhow!("--bs: {e}"))?;
    if bs == 0 || bs % 512 != 0 || bs > u64::from(u32::MAX) {
        bail!(
            "invalid --bs {}: the block size must be a non-zero multiple of 512 bytes",
            args.bs
        );
    }
    let limit = match (&args.time, args.count) {
        (Some(t), _) => WorkloadLimit::TimeMs(parse_duration_ms(t).context("--time")?),
        (None, Some(0)) => bail!("invalid --count 0: at least one I/O per job"),
        (None, Some(n)) => WorkloadLimit::Count(n),
        (None, None) => WorkloadLimit::Count(1000),
    };
    if args.rwmix_read > 100 {
        bail!(
            "invalid --rwmix-read {}: a percentage, 0 to 100",
            args.rwmix_read
        );
    }
    if args.dev.iter().any(|d| d.is_empty()) {
        bail!("invalid --dev: empty device name");
    }
    let mut spec = WorkloadSpec::new(&args.dev[0], rw);
    spec.devices = args.dev.clone();
    spec.block_size = bs as u32;
    spec.iodepth = args.iodepth;
    spec.jobs = args.jobs;
    spec.limit = limit;
    spec.verify = args.verify;
    spec.read_percent = args.rwmix_read;
    if let Some(o) = &args.offset {
        spec.offset = match o.trim() {
            "0" => 0,
            o => parse_size(o).map_err(|e| anyhow::anyhow!("--offset: {e}"))?,
        };
    }
    if let Some(size) = &args.size {
        spec.size = parse_size(size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
    }
    if let Some(seed) = args.seed {
        spec.seed = seed;
    }
    spec.plug = !args.no_plug;
    Ok(spec)
}

/// Parses `ktrace workload` arguments given after `--`.
pub fn workload_spec(args: &[String]) -> anyhow::Result<WorkloadSpec> {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    #[command(name = "workload", no_binary_name = true)]
    struct W {
        #[command(flatten)]
        args: Args,
    }
    let w = W::try_parse_from(args).map_err(|e| {
        anyhow::anyhow!(
            "bad workload arguments after `--` (those of `ktrace workload`):\n{}",
            e.render().to_string().trim_end()
        )
    })?;
    spec_from_args(&w.args)
}

/// Runs a workload in the kernel and returns its report, handing every
/// pushed event batch that arrives meanwhile to `on_events` and every
/// progress frame to `on_progress`.
pub fn run_workload_with_events(
    client: &mut Client,
    spec: &WorkloadSpec,
    mut on_progress: impl FnMut(&WorkloadProgress),
    mut on_events: impl FnMut(EventBatch),
) -> anyhow::Result<WorkloadReport> {
    let id = client.send_request(&Request::Block(BlockRequest::Workload(spec.clone())))?;
    let budget = match spec.limit {
        ktrace_abi::block::WorkloadLimit::TimeMs(ms) => {
            Duration::from_millis(ms) + Duration::from_secs(120)
        }
        ktrace_abi::block::WorkloadLimit::Count(_) => Duration::from_secs(3600),
    };
    let deadline = Instant::now() + budget;
    let mut told = false;
    loop {
        // The kernel runs a workload to its end (there is no request to
        // cut it short) and answers nothing else on this channel until
        // then, so a tool asked to stop waits for the report before it can
        // remove its probe.
        if crate::stop::stop_requested() && !crate::stop::stdout_closed() && !told {
            errln!(
                "stopping when the in-kernel workload ends ({}); a second Ctrl-C quits at once",
                match spec.limit {
                    ktrace_abi::block::WorkloadLimit::Count(n) => format!("{n} I/Os"),
                    ktrace_abi::block::WorkloadLimit::TimeMs(ms) => format!("{ms} ms"),
                }
            );
            told = true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the workload did not finish within {} s", budget.as_secs());
        }
        let Some(env) = client.recv_any(left.min(Duration::from_secs(1)))? else {
            continue;
        };
        match (env.id == id, env.body) {
            (_, Response::Block(BlockResponse::Progress(p))) => on_progress(&p),
            (_, Response::Bpf(BpfResponse::Events(b))) => on_events(b),
            (true, Response::Block(BlockResponse::Workload(r))) => return Ok(r),
            (true, Response::Error(reply)) => {
                bail!("the kernel refused the workload: {}", reply.message)
            }
            (true, other) => bail!("unexpected answer to the workload: {other:?}"),
            (false, _) => {}
        }
    }
}

/// The progress line shown while a workload runs.
pub fn progress_line(p: &WorkloadProgress) -> String {
    let secs = p.elapsed_ns as f64 / 1e9;
    let iops = if secs > 0.0 { p.ios as f64 / secs } else { 0.0 };
    let mbs = if secs > 0.0 {
        p.bytes as f64 / 1e6 / secs
    } else {
        0.0
    };
    format!(
        "[{secs:7.1}s] {} I/Os, {iops:.0} IOPS, {mbs:.2} MB/s, {} errors",
        p.ios, p.errors
    )
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// The human-readable report.
pub fn render(spec: &WorkloadSpec, r: &WorkloadReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} {} bs={} iodepth={} jobs={}{}: {} I/Os ({} reads, {} writes) in {:.3} s",
        spec.devices.join(","),
        spec.rw.name(),
        spec.block_size,
        spec.iodepth,
        spec.jobs,
        if spec.plug { "" } else { " no-plug" },
        r.ios,
        r.reads,
        r.writes,
        r.elapsed_ns as f64 / 1e9
    );
    let _ = writeln!(
        s,
        "  IOPS {:.0}   bandwidth {:.2} MB/s ({:.2} MiB/s)",
        r.iops(),
        r.mb_per_s(),
        r.mb_per_s() * 1e6 / (1u64 << 20) as f64
    );
    let l = &r.latency;
    let _ = writeln!(
        s,
        "  latency (us): min {}  mean {}  p50 {}  p90 {}  p99 {}  max {}",
        us(l.min),
        us(l.mean),
        us(l.p50),
        us(l.p90),
        us(l.p99),
        us(l.max)
    );
    let _ = writeln!(s, "  errors {}", r.errors);
    if let Some(e) = &r.first_error {
        let _ = writeln!(s, "  first error: {e}");
    }
    if spec.verify {
        let _ = writeln!(
            s,
            "  verify: {} blocks read back, {} mismatches",
            r.verified_blocks, r.verify_failures
        );
        if let Some(m) = &r.first_mismatch {
            let _ = writeln!(s, "  first mismatch: {m}");
        }
    }
    if r.per_device.len() > 1 {
        for d in &r.per_device {
            let _ = writeln!(
                s,
                "  {}: {} I/Os, {:.2} MB, {} errors",
                d.dev,
                d.ios,
                d.bytes as f64 / 1e6,
                d.errors
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn spec(argv: &[&str]) -> anyhow::Result<WorkloadSpec> {
        let mut v = vec!["workload"];
        v.extend_from_slice(argv);
        spec_from_args(&Cli::try_parse_from(v)?.args)
    }

    #[test]
    fn builds_a_spec() {
        let s = spec(&[
            "--dev",
            "vda,ram0",
            "--rw",
            "randwrite",
            "--bs",
            "8k",
            "--iodepth",
            "8",
            "--jobs",
            "2",
            "--time",
            "1.5s",
            "--verify",
            "--no-plug",
        ])
        .unwrap();
        assert_eq!(s.devices, vec!["vda", "ram0"]);
        assert_eq!(s.rw, RwMode::RandWrite);
        assert_eq!((s.block_size, s.iodepth, s.jobs), (8192, 8, 2));
        assert_eq!(s.limit, WorkloadLimit::TimeMs(1500));
        assert!(s.verify && !s.plug);
    }

    #[test]
    fn bad_arguments_are_clear() {
        let e = spec(&["--dev", "vda", "--rw", "sideways"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --rw \"sideways\": expected read, write, randread, randwrite or randrw"
        );
        let e = spec(&["--dev", "vda", "--bs", "1000"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --bs 1000: the block size must be a non-zero multiple of 512 bytes"
        );
        let e = spec(&["--dev", "vda", "--time", "soon"]).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "--time: invalid duration \"soon\": expected a positive number of seconds, e.g. 10, 1.5s or 500ms"
        );
        assert!(spec(&["--dev", "vda", "--count", "5", "--time", "1"]).is_err());
        let e = spec(&["--dev", "vda", "--count", "0"]).unwrap_err();
        assert_eq!(e.to_string(), "invalid --count 0: at least one I/O per job");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("10").unwrap(), 10_000);
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("2m").unwrap(), 120_000);
        assert!(parse_duration_ms("-1").is_err());
    }
}
