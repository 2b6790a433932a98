//! `kperf`: Linux `perf` for the ktrace kernel: list events, count them
//! (`stat`), sample the kernel (`record`) and read the samples back
//! (`report`, flame graphs).
//!
//! ```text
//! kperf list
//! kperf stat -e block:block_rq_issue,context-switches -r 3 -- --dev vda --count 500
//! kperf record -F 999 -g -- --dev vda --rw randread --time 3s
//! kperf report --flamegraph kperf.svg
//! ```

// Output goes through `outln!`/`errln!` (see `stop`): `println!` panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use ktrace_abi::block::{WorkloadLimit, WorkloadSpec};
use ktrace_abi::trace::PerfEvent;
use ktrace_tools::report::{profile, stat};
use ktrace_tools::tools::{self, kperf as kp};
use ktrace_tools::{err, errln, out, outln, stop};
use probe_sdk::client::Client;
use probe_sdk::trace::TraceClient;

#[derive(Parser)]
#[command(
    name = "kperf",
    version,
    about = "Performance counters and sampling for the ktrace kernel, like Linux perf"
)]
struct Cli {
    /// The VM to talk to (see `ktrace vm list`).
    #[arg(long, global = true, value_name = "NAME", default_value = "default")]
    vm: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the events the kernel can count.
    List(ListArgs),
    /// Count events while a workload runs (or for a while).
    Stat(StatArgs),
    /// Sample the kernel's instruction pointer (and call stacks) from a timer.
    Record(RecordArgs),
    /// Top symbols of a recording; flame graphs.
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct ListArgs {
    /// Only events matching this glob (`'sched:*'`, as `perf list`
    /// takes), or whose name contains it when it has no `*` or `?`.
    filter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StatArgs {
    /// Events, comma separated (default: software events and hardware
    /// counters, as `perf stat` does).
    #[arg(
        short = 'e',
        long = "event",
        value_delimiter = ',',
        value_name = "EVENTS"
    )]
    events: Vec<String>,
    /// Print counts every this many milliseconds.
    #[arg(short = 'I', long = "interval-print", value_name = "MS")]
    interval_ms: Option<u64>,
    /// Repeat the measurement this many times and show the spread.
    #[arg(short = 'r', long = "repeat", default_value_t = 1)]
    repeat: u32,
    /// Count for this many seconds when no workload is given.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Print JSON.
    #[arg(long, conflicts_with = "separator")]
    json: bool,
    /// CSV-like output with this field separator, as `perf stat -x,`:
    /// value, unit, event, [variance,] run time, percentage, metric value,
    /// metric unit.
    #[arg(short = 'x', long = "field-separator", value_name = "SEP")]
    separator: Option<String>,
    /// System-wide counting, as `perf stat -a`. The kernel's counters always
    /// count every CPU, so this changes nothing; it is accepted for habit.
    #[arg(short = 'a', long = "all-cpus")]
    all_cpus: bool,
    /// The kernel ELF that `kprobe:` events are resolved against (default:
    /// as `ktrace symbols`).
    #[arg(long, value_name = "ELF")]
    kernel: Option<PathBuf>,
    /// A `kprobe:` name several functions share counts each of them (one
    /// row per function, as `perf probe` makes one event per location).
    #[arg(long)]
    all: bool,
    /// The in-kernel workload to measure (arguments of `ktrace workload`).
    #[arg(last = true, value_name = "WORKLOAD ARGS")]
    workload: Vec<String>,
}

#[derive(clap::Args)]
struct RecordArgs {
    /// Samples per second.
    #[arg(short = 'F', long = "freq", default_value_t = 999)]
    freq: u32,
    /// Record call stacks (frame-pointer walk).
    #[arg(short = 'g', long = "call-graph")]
    call_graph: bool,
    /// Sample for this many seconds when no workload is given.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Where to write the samples.
    #[arg(short = 'o', long, default_value = "kperf.data")]
    output: PathBuf,
    /// The kernel ELF used to name frames (default: as `ktrace symbols`).
    #[arg(long, value_name = "ELF")]
    kernel: Option<PathBuf>,
    /// The in-kernel workload to sample (arguments of `ktrace workload`).
    #[arg(last = true, value_name = "WORKLOAD ARGS")]
    workload: Vec<String>,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// The recording.
    #[arg(short = 'i', long, default_value = "kperf.data")]
    input: PathBuf,
    /// Write an SVG flame graph here (and the folded stacks next to it,
    /// `<name>.folded`).
    #[arg(long, value_name = "SVG")]
    flamegraph: Option<PathBuf>,
    /// Write the folded stacks here.
    #[arg(long, value_name = "FILE")]
    folded: Option<PathBuf>,
    /// Rows of the top-symbols table.
    #[arg(long, default_value_t = 25)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::List(a) => list(a, &cli.vm),
        Command::Stat(a) => stat_cmd(a, &cli.vm),
        Command::Record(a) => record(a, &cli.vm),
        Command::Report(a) => report(a),
    };
    stop::exit("kperf", r)
}

fn list(args: ListArgs, vm: &str) -> anyhow::Result<()> {
    let mut client = tools::connect(vm, "kperf list")?;
    let info = client.info()?;
    let mut rows: Vec<(String, String)> = Vec::new();
    for (name, aliases, _, what) in kp::SOFTWARE {
        let shown = if aliases.is_empty() {
            name.to_string()
        } else {
            format!("{name} OR {}", aliases.join(" OR "))
        };
        rows.push((shown, format!("[Software event] {what}")));
    }
    if info.cpus > 1 {
        rows.push(("cpu-migrations".into(), "[Software event]".into()));
    }
    for (name, ev) in kp::HARDWARE {
        let state = match client.perf_open(PerfEvent::Hardware(*ev)) {
            Ok(id) => {
                let _ = client.perf_close(id);
                "[Hardware event]".to_string()
            }
            Err(_) => "[Hardware event] <not supported>: no PMU in this CPU model".to_string(),
        };
        rows.push((name.to_string(), state));
    }
    let mut tps = client.list_tracepoints()?;
    tps.sort_by(|a, b| (&a.category, &a.name).cmp(&(&b.category, &b.name)));
    for t in &tps {
        rows.push((
            format!("{}:{}", t.category, t.name),
            "[Tracepoint event]".into(),
        ));
    }
    rows.push((
        "kprobe:<function>[+offset]".into(),
        "[Kprobe event] a demangled path or suffix, e.g. kprobe:RequestQueue::submit_bio".into(),
    ));
    if let Some(f) = &args.filter {
        rows.retain(|(shown, _)| kp::list_filter_matches(f, shown));
        if rows.is_empty() {
            bail!(
                "no event matches `{f}`: give a glob (`'sched:*'`) or a part of a name; \
                 `kperf list` shows them all"
            );
        }
    }
    if args.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, k)| serde_json::json!({ "event": n, "kind": k }))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!();
    outln!("List of pre-defined events (to be used in -e):");
    outln!();
    for (n, k) in rows {
        outln!("  {n:<44} {k}");
    }
    outln!();
    Ok(())
}

/// Events the user named, parsed and (for kprobes) resolved.
fn events(
    names: &[String],
    kernel: Option<&Path>,
    all: bool,
) -> anyhow::Result<Vec<(String, kp::EventSpec)>> {
    let names: Vec<String> = if names.is_empty() {
        [
            "task-clock",
            "context-switches",
            "cpu-migrations",
            "page-faults",
            "irqs",
            "timer-ticks",
            "cycles",
            "instructions",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        names.to_vec()
    };
    let mut index = None;
    let mut out = Vec::new();
    for n in names {
        let spec = kp::parse_event(&n)?;
        if matches!(spec, kp::EventSpec::Counter(PerfEvent::Kprobe { .. })) {
            if index.is_none() {
                let elf = ktrace_tools::cmd::symbols::kernel_elf(kernel)?;
                index =
                    Some(ktrace_symbols::SymbolIndex::open(&elf).with_context(|| {
                        format!("reading kernel symbols from {}", elf.display())
                    })?);
            }
            out.extend(kp::resolve_kprobe(
                n,
                spec,
                index.as_ref().expect("set above"),
                all,
            )?);
            continue;
        }
        out.push((n, spec));
    }
    Ok(out)
}

/// What to measure: a workload, or a time.
enum Work {
    Workload(WorkloadSpec, String),
    Sleep(Duration),
}

fn work_from(
    args: &[String],
    duration: Option<f64>,
    default_s: Option<f64>,
) -> anyhow::Result<Work> {
    if !args.is_empty() {
        if duration.is_some() {
            bail!("give either --duration or a workload after `--`, not both");
        }
        return Ok(Work::Workload(
            tools::workload_spec(args)?,
            format!("workload {}", args.join(" ")),
        ));
    }
    match duration.or(default_s) {
        Some(d) if d > 0.0 && d.is_finite() => Ok(Work::Sleep(Duration::from_secs_f64(d))),
        Some(_) => bail!("--duration must be a positive number of seconds"),
        None => bail!(
            "nothing to measure: give --duration SECONDS or a workload after `--` \
             (e.g. `-- --dev vda --rw randread --count 1000`)"
        ),
    }
}

/// Runs the work once; returns its wall time.
fn do_work(client: &mut Client, work: &Work, progress: bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    match work {
        Work::Workload(spec, _) => {
            let mut shown = false;
            let r = tools::run_workload_with_events(
                client,
                spec,
                |p| {
                    if progress {
                        err!("\r{}", ktrace_tools::cmd::workload::progress_line(p));
                        shown = true;
                    }
                },
                |_| {},
            );
            if shown {
                errln!();
            }
            let r = r?;
            if r.errors > 0 {
                errln!(
                    "kperf: the workload saw {} I/O errors ({})",
                    r.errors,
                    r.first_error.as_deref().unwrap_or("?")
                );
            }
        }
        Work::Sleep(d) => {
            stop::sleep_unless_stopped(*d);
        }
    }
    Ok(start.elapsed())
}

/// Counter values: task-clock in msec, others as counted.
fn value_of(c: &kp::Counter, raw: u64) -> u64 {
    if c.name == "task-clock" || c.name == "cpu-clock" {
        (raw + 500_000) / 1_000_000
    } else {
        raw
    }
}

fn stat_cmd(args: StatArgs, vm: &str) -> anyhow::Result<()> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.interval_ms == Some(0) {
        bail!("-I must be at least 1 ms");
    }
    if args.separator.as_deref() == Some("") {
        bail!("-x needs a separator, e.g. -x, or -x';'");
    }
    let _ = args.all_cpus;
    let evs = events(&args.events, args.kernel.as_deref(), args.all)?;
    let work = work_from(&args.workload, args.duration, None)?;
    let title = match &work {
        Work::Workload(_, t) => t.clone(),
        Work::Sleep(d) => format!("{:.3} s", d.as_secs_f64()),
    };
    let mut client = tools::connect(vm, "kperf stat")?;
    stop::catch_signals();
    if let Some(ms) = args.interval_ms {
        let format = match (&args.separator, args.json) {
            (Some(sep), _) => IntervalFormat::Csv(sep.clone()),
            (None, true) => IntervalFormat::Json,
            (None, false) => IntervalFormat::Table,
        };
        return interval_stat(&mut client, &evs, &work, ms, &format);
    }
    let mut values: Vec<Vec<u64>> = vec![Vec::new(); evs.len()];
    let mut unsupported = vec![false; evs.len()];
    let mut elapsed = Vec::new();
    for _ in 0..args.repeat {
        let counters = kp::open_counters(&mut client, &evs)?;
        let r = (|| -> anyhow::Result<()> {
            // Elapsed spans enable to disable: the window task-clock counts.
            let t = Instant::now();
            let ids: Vec<u32> = counters.iter().filter_map(|c| c.id).collect();
            client.perf_enable_group(&ids)?;
            do_work(&mut client, &work, !args.json && args.separator.is_none())?;
            client.perf_disable_group(&ids)?;
            elapsed.push(t.elapsed().as_secs_f64());
            for (i, c) in counters.iter().enumerate() {
                match c.id {
                    Some(id) => values[i].push(value_of(c, client.perf_read(id)?.value)),
                    None => unsupported[i] = true,
                }
            }
            Ok(())
        })();
        kp::close_counters(&mut client, &counters);
        r?;
        if stop::stop_requested() {
            break;
        }
    }
    let rows: Vec<stat::CounterRow> = evs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| stat::CounterRow {
            event: name.clone(),
            values: (!unsupported[i]).then(|| values[i].clone()),
            unit: if name == "task-clock" || name == "cpu-clock" {
                "msec".into()
            } else {
                String::new()
            },
        })
        .collect();
    let mean_elapsed = elapsed.iter().sum::<f64>() / elapsed.len().max(1) as f64;
    if args.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "event": r.event, "values": r.values, "unit": r.unit,
                    "mean": r.mean(), "variance_pct": r.variance_pct(),
                    "supported": r.values.is_some(),
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "title": title, "runs": elapsed.len(), "elapsed_s": elapsed, "counters": v,
            }))?
        );
    } else if let Some(sep) = &args.separator {
        out!("{}", stat::render_csv(&rows, mean_elapsed, sep));
    } else {
        out!(
            "{}",
            stat::render(&title, elapsed.len(), &rows, mean_elapsed)
        );
    }
    Ok(())
}

/// How `-I` prints each interval's counts.
enum IntervalFormat {
    /// `perf stat -I`'s columns.
    Table,
    /// One JSON object per counter and interval.
    Json,
    /// `perf stat -I -x SEP`: the time stamp, then the fields of
    /// [`stat::csv_line`].
    Csv(String),
}

/// `-I`: counts per interval. With a workload, it runs in slices of the
/// interval (the control channel is busy while a workload runs, so the
/// counters are read between slices); it needs a `--time` limit.
fn interval_stat(
    client: &mut Client,
    evs: &[(String, kp::EventSpec)],
    work: &Work,
    ms: u64,
    format: &IntervalFormat,
) -> anyhow::Result<()> {
    let total_ms = match work {
        Work::Workload(spec, _) => match spec.limit {
            WorkloadLimit::TimeMs(t) => t,
            WorkloadLimit::Count(_) => {
                bail!("-I with a workload needs the workload's --time (it runs in {ms} ms slices)")
            }
        },
        Work::Sleep(d) => d.as_millis() as u64,
    };
    let counters = kp::open_counters(client, evs)?;
    let r = (|| -> anyhow::Result<()> {
        let ids: Vec<u32> = counters.iter().filter_map(|c| c.id).collect();
        client.perf_enable_group(&ids)?;
        if matches!(format, IntervalFormat::Table) {
            outln!("#           time             counts unit events");
        }
        let start = Instant::now();
        let mut last_t = 0.0;
        let mut last = vec![0u64; counters.len()];
        let mut done = 0u64;
        while done < total_ms && !stop::stop_requested() {
            let slice = ms.min(total_ms - done);
            match work {
                Work::Workload(spec, _) => {
                    let mut s = spec.clone();
                    s.limit = WorkloadLimit::TimeMs(slice);
                    tools::run_workload_with_events(client, &s, |_| {}, |_| {})?;
                }
                Work::Sleep(_) => {
                    stop::sleep_unless_stopped(Duration::from_millis(slice));
                }
            }
            done += slice;
            let t = start.elapsed().as_secs_f64();
            for (i, c) in counters.iter().enumerate() {
                let d = match c.id {
                    Some(id) => {
                        let v = value_of(c, client.perf_read(id)?.value);
                        let d = v - last[i].min(v);
                        last[i] = v;
                        Some(d)
                    }
                    None => None,
                };
                match (format, d) {
                    (IntervalFormat::Table, None) => {
                        outln!("{t:16.9} {:>18}      {}", "<not supported>", c.name)
                    }
                    (IntervalFormat::Table, Some(d)) => {
                        outln!("{t:16.9} {:>18}      {}", stat::thousands(d), c.name)
                    }
                    (IntervalFormat::Json, None) => {}
                    (IntervalFormat::Json, Some(d)) => outln!(
                        "{}",
                        serde_json::json!({ "time": t, "event": c.name, "count": d })
                    ),
                    (IntervalFormat::Csv(sep), d) => {
                        let row = stat::CounterRow {
                            event: c.name.clone(),
                            values: d.map(|d| vec![d]),
                            unit: if c.name == "task-clock" || c.name == "cpu-clock" {
                                "msec".into()
                            } else {
                                String::new()
                            },
                        };
                        let prefix = format!("{t:.9}{sep}");
                        outln!("{}", stat::csv_line(&prefix, &row, t - last_t, sep));
                    }
                }
            }
            last_t = t;
        }
        Ok(())
    })();
    kp::close_counters(client, &counters);
    r
}

fn record(args: RecordArgs, vm: &str) -> anyhow::Result<()> {
    if args.freq == 0 || args.freq > 10_000 {
        bail!("-F {}: the frequency must be 1 to 10000 Hz", args.freq);
    }
    let work = work_from(&args.workload, args.duration, None)?;
    let elf = match &args.kernel {
        Some(p) => p.clone(),
        None => ktrace_tools::cmd::symbols::kernel_elf(None)?,
    };
    let index = ktrace_symbols::SymbolIndex::open(&elf)
        .with_context(|| format!("reading kernel symbols from {}", elf.display()))?;
    let mut client = tools::connect(vm, "kperf record")?;
    stop::catch_signals();
    let id = client.perf_open(PerfEvent::Sampling {
        freq_hz: args.freq,
        max_stack: if args.call_graph { 64 } else { 0 },
    })?;
    let mut samples = Vec::new();
    let r = (|| -> anyhow::Result<(Duration, u64)> {
        client.perf_enable(id)?;
        // The kernel's ring holds 8192 samples (8 s at 999 Hz): a second
        // session drains it while the work runs, so long recordings lose
        // nothing to a full ring. Without a free session, everything is
        // drained at the end as before.
        let draining = Arc::new(AtomicBool::new(true));
        let drainer = {
            let (draining, vm) = (draining.clone(), vm.to_string());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let Ok(mut c) = tools::connect(&vm, "kperf record (drain)") else {
                    return got;
                };
                while draining.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(250));
                    match c.perf_drain(id, 4096) {
                        Ok((batch, _)) => got.extend(batch),
                        Err(_) => break,
                    }
                }
                got
            })
        };
        let t = do_work(&mut client, &work, true);
        draining.store(false, Ordering::Release);
        let early = drainer.join().unwrap_or_default();
        let t = t?;
        client.perf_disable(id)?;
        samples.extend(
            early
                .iter()
                .map(|s| kp::data_sample(s, args.call_graph, Some(&index))),
        );
        let mut lost = 0;
        loop {
            let (batch, l) = client.perf_drain(id, 4096)?;
            lost = lost.max(l);
            if batch.is_empty() {
                break;
            }
            samples.extend(
                batch
                    .iter()
                    .map(|s| kp::data_sample(s, args.call_graph, Some(&index))),
            );
        }
        let v = client.perf_read(id)?;
        Ok((t, v.lost.max(lost)))
    })();
    let _ = client.perf_close(id);
    let (elapsed, lost) = r?;
    let header = kp::DataHeader {
        kperf_data: 1,
        freq_hz: args.freq,
        call_graph: args.call_graph,
        duration_ns: elapsed.as_nanos() as u64,
        samples: samples.len() as u64,
        lost,
        kernel: client.info().map(|i| i.kernel_version).unwrap_or_default(),
    };
    kp::write_data(&args.output, &header, &samples)?;
    errln!(
        "[ kperf record: {} samples ({} lost) in {:.2} s written to {} ]",
        samples.len(),
        lost,
        elapsed.as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let (header, data) = kp::read_data(&args.input)?;
    if data.is_empty() {
        bail!("{}: no samples", args.input.display());
    }
    let (samples, names) = kp::profile_samples(&data);
    let sym = |a: u64| {
        names
            .get(a as usize)
            .cloned()
            .unwrap_or_else(|| format!("{a:#x}"))
    };
    let rows = profile::top_symbols(&samples, &sym);
    let folded = profile::fold(&samples, &sym);
    let folded_path = args.folded.clone().or_else(|| {
        args.flamegraph
            .as_ref()
            .map(|svg| svg.with_extension("folded"))
    });
    if let Some(p) = &folded_path {
        write_file(p, (folded.join("\n") + "\n").as_bytes())?;
    }
    if let Some(svg) = &args.flamegraph {
        let title = format!(
            "ktrace kernel, {} samples at {} Hz",
            data.len(),
            header.freq_hz
        );
        let bytes = profile::flamegraph_svg(&folded, &title).map_err(|e| anyhow::anyhow!(e))?;
        write_file(svg, &bytes)?;
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "samples": data.len(), "lost": header.lost, "freq_hz": header.freq_hz,
                "symbols": rows.iter().take(args.limit).collect::<Vec<_>>(),
            }))?
        );
    } else {
        outln!(
            "# {} Hz sampling{}, {:.2} s, {} periods lost",
            header.freq_hz,
            if header.call_graph {
                " with call graphs"
            } else {
                ""
            },
            header.duration_ns as f64 / 1e9,
            header.lost
        );
        out!("{}", profile::render_top(&rows, data.len(), args.limit));
    }
    if let Some(p) = &folded_path {
        errln!("folded stacks written to {}", p.display());
    }
    if let Some(p) = &args.flamegraph {
        errln!("flame graph written to {}", p.display());
    }
    Ok(())
}

fn write_file(p: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display()))
}
