//! Running `biosnoop`: load the probe (with `-d`'s disk filter), stream
//! its ring buffer records until Ctrl-C, `--duration` or the end of a
//! workload, and print one line (or JSON object) per request; the probe is
//! removed however it ends.

use std::time::Duration;

use ktrace_abi::bpf::{EventBatch, EventSource};
use probe_sdk::runtime::Runtime;

use crate::{kernel, stop, workload};

/// Arguments of `biosnoop`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Include the OS queued time (insert → issue) as a column.
    #[arg(short = 'Q', long)]
    pub queue: bool,
    /// Add a CPU column: the CPU that completed the request (BCC's
    /// biosnoop has none; JSON always carries `cpu`).
    #[arg(long)]
    pub cpu: bool,
    /// Print one JSON object per request.
    #[arg(long)]
    pub json: bool,
    /// Only this disk (e.g. `vda`), as BCC's `-d`.
    #[arg(short = 'd', long, value_name = "DISK")]
    pub disk: Option<String>,
    /// Stop after this many seconds (default: until Ctrl-C, or the end of
    /// the workload).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// The VM to trace (see `ktrace vm list`).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub vm: String,
    /// Run this in-kernel workload (arguments of `ktrace workload`) while
    /// tracing, then exit.
    #[arg(last = true, value_name = "WORKLOAD ARGS")]
    pub workload: Vec<String>,
}

/// Prints the records of event batches as lines.
struct Printer<'a> {
    cli: &'a Args,
    disks: &'a [(u32, String)],
    decoder: super::Decoder,
    map: u32,
    t0: Option<u64>,
    lines: u64,
    lost: u64,
}

impl Printer<'_> {
    fn columns(&self) -> super::Columns {
        super::Columns {
            queue: self.cli.queue,
            cpu: self.cli.cpu,
        }
    }

    fn batch(&mut self, b: EventBatch) {
        for r in &b.records {
            if r.source != (EventSource::RingBuf { map: self.map }) {
                continue;
            }
            let Some(e) = self.decoder.decode(&r.data, self.disks) else {
                errln!("biosnoop: short record ({} bytes) skipped", r.data.len());
                continue;
            };
            let t0 = *self.t0.get_or_insert(e.ts_ns);
            self.lines += 1;
            if self.cli.json {
                outln!("{}", serde_json::to_string(&e).unwrap_or_default());
            } else {
                outln!("{}", super::line(&e, t0, self.columns()));
            }
        }
        for l in &b.lost {
            if l.map == self.map && l.lost > self.lost {
                errln!(
                    "biosnoop: {} records lost (ring buffer full)",
                    l.lost - self.lost
                );
                self.lost = l.lost;
            }
        }
    }
}

/// Run `biosnoop`.
pub fn run(cli: Args) -> anyhow::Result<()> {
    let spec = if cli.workload.is_empty() {
        None
    } else {
        Some(workload::workload_spec(&cli.workload)?)
    };
    if cli.duration.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    let object = crate::tools::embedded_probe("biosnoop")?;
    let mut client = kernel::connect(&cli.vm, "biosnoop")?;
    let disks = kernel::disk_names(&mut client)?;
    let mut settings = Vec::new();
    if let Some(disk) = &cli.disk {
        let dev = kernel::disk_dev(&disks, disk).map_err(|e| {
            if disk.parse::<f64>().is_ok() {
                anyhow::anyhow!(
                    "{e}; -d is the disk, as in BCC's biosnoop: for a duration use --duration {disk}"
                )
            } else {
                e
            }
        })?;
        let entry = |i: u32, v: u64| ("CONFIG", i.to_le_bytes().to_vec(), v.to_le_bytes().to_vec());
        settings = vec![entry(0, 1), entry(1, u64::from(dev))];
    }
    let mut rt = Runtime::new(&mut client);
    // From here on a signal or a closed stdout stops the tracing loop, so
    // the probe is always removed before the process ends.
    stop::catch_signals();
    let probe = kernel::load_probe(&mut rt, "biosnoop", object, &settings, &[])?;
    let result = (|| -> anyhow::Result<u64> {
        let events = probe.map("EVENTS")?;
        let map = events.id;
        let mut p = Printer {
            cli: &cli,
            disks: &disks,
            decoder: super::Decoder::new(events.types.record.as_ref())?,
            map,
            t0: None,
            lines: 0,
            lost: 0,
        };
        rt.subscribe(vec![map], false)?;
        if !cli.json {
            outln!(
                "{}",
                super::header(super::Columns {
                    queue: cli.queue,
                    cpu: cli.cpu,
                })
            );
        }
        if let Some(spec) = spec.as_ref().filter(|_| !stop::stop_requested()) {
            workload::run_workload_with_events(rt.client(), spec, |_| {}, |b| p.batch(b))?;
        } else {
            let end = cli
                .duration
                .map(|d| std::time::Instant::now() + Duration::from_secs_f64(d));
            while !stop::stop_requested() && end.is_none_or(|e| std::time::Instant::now() < e) {
                if let Some(b) = rt.next_events(Duration::from_millis(100))? {
                    p.batch(b);
                }
            }
        }
        rt.subscribe(Vec::new(), false)?;
        // Whatever completed before the subscription ended.
        for b in rt.client().take_pushes() {
            if let ktrace_abi::Response::Bpf(ktrace_abi::bpf::BpfResponse::Events(b)) = b {
                p.batch(b);
            }
        }
        loop {
            let b = rt.poll(vec![map], false, 4096)?;
            if b.records.is_empty() {
                p.batch(b);
                break;
            }
            p.batch(b);
        }
        Ok(p.lines)
    })();
    let removed = probe.remove(&mut rt);
    let lines = result?;
    removed.map_err(|e| e.context("detaching the probe"))?;
    if !cli.json && !stop::stdout_closed() {
        errln!("{lines} requests");
    }
    Ok(())
}
