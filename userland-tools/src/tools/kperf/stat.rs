//! `kperf stat`: count events while a workload runs (or for a while), as
//! `perf stat`: on every CPU (`-a`, the default) or some (`-C 0,2-3`),
//! summed or one line per CPU (`-A`), repeated runs with their spread
//! (`-r`), counts per interval (`-I`), JSON or `-x` CSV-like output.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ktrace_abi::block::WorkloadLimit;
use ktrace_abi::trace::{PerfEvent, PerfValue};
use probe_sdk::client::Client;
use probe_sdk::trace::TraceClient;

use super::work::{do_work, work_from, Work};
use crate::report::stat;
use crate::{kernel, stop, workload};

/// Arguments of `kperf stat`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Events, comma separated (default: software events and hardware
    /// counters, as `perf stat` does).
    #[arg(
        short = 'e',
        long = "event",
        value_delimiter = ',',
        value_name = "EVENTS"
    )]
    pub events: Vec<String>,
    /// Print counts every this many milliseconds.
    #[arg(short = 'I', long = "interval-print", value_name = "MS")]
    pub interval_ms: Option<u64>,
    /// Repeat the measurement this many times and show the spread.
    #[arg(short = 'r', long = "repeat", default_value_t = 1)]
    pub repeat: u32,
    /// Count for this many seconds when no workload is given.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Print JSON.
    #[arg(long, conflicts_with = "separator")]
    pub json: bool,
    /// CSV-like output with this field separator, as `perf stat -x,`:
    /// value, unit, event, [variance,] run time, percentage, metric value,
    /// metric unit.
    #[arg(short = 'x', long = "field-separator", value_name = "SEP")]
    pub separator: Option<String>,
    /// System-wide counting on every CPU, as `perf stat -a`. It is the
    /// default (the kernel's counters count every CPU); accepted for habit.
    #[arg(short = 'a', long = "all-cpus")]
    pub all_cpus: bool,
    /// One line per CPU and event instead of their sum, as `perf stat -A`.
    #[arg(short = 'A', long = "no-aggregate")]
    pub no_aggregate: bool,
    /// Count only these CPUs: numbers and ranges, e.g. `0,2-3` (as
    /// `perf stat -C`). A CPU the VM does not have is refused.
    #[arg(short = 'C', long = "cpu", value_name = "LIST")]
    pub cpus: Option<String>,
    /// The kernel ELF that `kprobe:` events are resolved against (default:
    /// as `ktrace symbols`).
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// A `kprobe:` name several functions share counts each of them (one
    /// row per function, as `perf probe` makes one event per location).
    #[arg(long)]
    pub all: bool,
    /// The in-kernel workload to measure (arguments of `ktrace workload`).
    #[arg(last = true, value_name = "WORKLOAD ARGS")]
    pub workload: Vec<String>,
}

/// Events the user named, parsed and (for kprobes) resolved.
fn events(
    names: &[String],
    kernel: Option<&Path>,
    all: bool,
) -> anyhow::Result<Vec<(String, super::EventSpec)>> {
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
        let spec = super::parse_event(&n)?;
        if matches!(spec, super::EventSpec::Counter(PerfEvent::Kprobe { .. })) {
            if index.is_none() {
                let elf = kernel::kernel_elf(kernel)?;
                index =
                    Some(ktrace_symbols::SymbolIndex::open(&elf).with_context(|| {
                        format!("reading kernel symbols from {}", elf.display())
                    })?);
            }
            out.extend(super::resolve_kprobe(
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

/// Counter values: task-clock in msec, others as counted.
fn value_of(c: &super::Counter, raw: u64) -> u64 {
    if is_clock(&c.name) {
        (raw + 500_000) / 1_000_000
    } else {
        raw
    }
}

fn is_clock(name: &str) -> bool {
    name == "task-clock" || name == "cpu-clock"
}

/// What one read of a counter gives for `cpus`: each selected CPU's value
/// (a CPU the reading lacks counts 0).
fn per_cpu(v: &PerfValue, cpus: &[u32]) -> Vec<u64> {
    cpus.iter()
        .map(|&c| v.per_cpu.get(c as usize).map_or(0, |p| p.value))
        .collect()
}

/// Run `kperf stat` against VM `vm`.
pub fn run(args: Args, vm: &str) -> anyhow::Result<()> {
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
    let mut client = kernel::connect(vm, "kperf stat")?;
    let cpus = super::select_cpus(args.cpus.as_deref(), client.info()?.cpus)?;
    stop::catch_signals();
    if let Some(ms) = args.interval_ms {
        let format = match (&args.separator, args.json) {
            (Some(sep), _) => IntervalFormat::Csv(sep.clone()),
            (None, true) => IntervalFormat::Json,
            (None, false) => IntervalFormat::Table,
        };
        let per_cpu = args.no_aggregate.then_some(cpus.as_slice());
        return interval_stat(&mut client, &evs, &work, ms, &format, &cpus, per_cpu);
    }
    // values[event][run][i]: the value of CPU cpus[i]. task-clock is
    // rounded to msec per CPU before the sum, so the `-A` lines add up to
    // the summed line exactly.
    let mut values: Vec<Vec<Vec<u64>>> = vec![Vec::new(); evs.len()];
    let mut unsupported = vec![false; evs.len()];
    let mut elapsed = Vec::new();
    for _ in 0..args.repeat {
        let counters = super::open_counters(&mut client, &evs)?;
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
                    Some(id) => {
                        let v = client.perf_read(id)?;
                        values[i].push(
                            per_cpu(&v, &cpus)
                                .into_iter()
                                .map(|raw| value_of(c, raw))
                                .collect(),
                        );
                    }
                    None => unsupported[i] = true,
                }
            }
            Ok(())
        })();
        super::close_counters(&mut client, &counters);
        r?;
        if stop::stop_requested() {
            break;
        }
    }
    let row = |i: usize, name: &str, cpu: Option<usize>| stat::CounterRow {
        event: name.to_string(),
        values: (!unsupported[i]).then(|| {
            values[i]
                .iter()
                .map(|run| match cpu {
                    Some(k) => run[k],
                    None => run.iter().sum(),
                })
                .collect()
        }),
        unit: if is_clock(name) {
            "msec".into()
        } else {
            String::new()
        },
        cpu: cpu.map(|k| cpus[k]),
    };
    let rows: Vec<stat::CounterRow> = evs
        .iter()
        .enumerate()
        .flat_map(|(i, (name, _))| {
            if args.no_aggregate {
                (0..cpus.len()).map(|k| row(i, name, Some(k))).collect()
            } else {
                vec![row(i, name, None)]
            }
        })
        .collect();
    let mean_elapsed = elapsed.iter().sum::<f64>() / elapsed.len().max(1) as f64;
    if args.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({
                    "event": r.event, "values": r.values, "unit": r.unit,
                    "mean": r.mean(), "variance_pct": r.variance_pct(),
                    "supported": r.values.is_some(),
                });
                if let Some(cpu) = r.cpu {
                    v["cpu"] = cpu.into();
                }
                v
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "title": title, "runs": elapsed.len(), "elapsed_s": elapsed,
                "cpus": cpus, "counters": v,
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
    evs: &[(String, super::EventSpec)],
    work: &Work,
    ms: u64,
    format: &IntervalFormat,
    cpus: &[u32],
    no_aggregate: Option<&[u32]>,
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
    let counters = super::open_counters(client, evs)?;
    let r = (|| -> anyhow::Result<()> {
        let ids: Vec<u32> = counters.iter().filter_map(|c| c.id).collect();
        client.perf_enable_group(&ids)?;
        if matches!(format, IntervalFormat::Table) {
            outln!("#           time             counts unit events");
        }
        let start = Instant::now();
        let mut last_t = 0.0;
        // last[counter][i]: the previous reading of CPU cpus[i].
        let mut last = vec![vec![0u64; cpus.len()]; counters.len()];
        let mut done = 0u64;
        while done < total_ms && !stop::stop_requested() {
            let slice = ms.min(total_ms - done);
            match work {
                Work::Workload(spec, _) => {
                    let mut s = spec.clone();
                    s.limit = WorkloadLimit::TimeMs(slice);
                    workload::run_workload_with_events(client, &s, |_| {}, |_| {})?;
                }
                Work::Sleep(_) => {
                    stop::sleep_unless_stopped(Duration::from_millis(slice));
                }
            }
            done += slice;
            let t = start.elapsed().as_secs_f64();
            for (i, c) in counters.iter().enumerate() {
                // Deltas of each selected CPU since the last interval.
                let deltas = match c.id {
                    Some(id) => {
                        let now: Vec<u64> = per_cpu(&client.perf_read(id)?, cpus)
                            .into_iter()
                            .map(|raw| value_of(c, raw))
                            .collect();
                        let d: Vec<u64> = now
                            .iter()
                            .zip(&last[i])
                            .map(|(v, l)| v - (*l).min(*v))
                            .collect();
                        last[i] = now;
                        Some(d)
                    }
                    None => None,
                };
                // One line per CPU with -A, else one for their sum.
                let lines: Vec<(Option<u32>, Option<u64>)> = match no_aggregate {
                    Some(list) => list
                        .iter()
                        .enumerate()
                        .map(|(k, &cpu)| (Some(cpu), deltas.as_ref().map(|d| d[k])))
                        .collect(),
                    None => vec![(None, deltas.as_ref().map(|d| d.iter().sum()))],
                };
                for (cpu, d) in lines {
                    let label = cpu.map(|c| format!("CPU{c:<4}")).unwrap_or_default();
                    match (format, d) {
                        (IntervalFormat::Table, None) => {
                            outln!("{t:16.9} {label}{:>18}      {}", "<not supported>", c.name)
                        }
                        (IntervalFormat::Table, Some(d)) => {
                            outln!("{t:16.9} {label}{:>18}      {}", stat::thousands(d), c.name)
                        }
                        (IntervalFormat::Json, None) => {}
                        (IntervalFormat::Json, Some(d)) => {
                            let mut v =
                                serde_json::json!({ "time": t, "event": c.name, "count": d });
                            if let Some(cpu) = cpu {
                                v["cpu"] = cpu.into();
                            }
                            outln!("{v}")
                        }
                        (IntervalFormat::Csv(sep), d) => {
                            let row = stat::CounterRow {
                                event: c.name.clone(),
                                values: d.map(|d| vec![d]),
                                unit: if is_clock(&c.name) {
                                    "msec".into()
                                } else {
                                    String::new()
                                },
                                cpu: None,
                            };
                            let cpu_field = cpu.map(|c| format!("CPU{c}{sep}")).unwrap_or_default();
                            let prefix = format!("{t:.9}{sep}{cpu_field}");
                            outln!("{}", stat::csv_line(&prefix, &row, t - last_t, sep));
                        }
                    }
                }
            }
            last_t = t;
        }
        Ok(())
    })();
    super::close_counters(client, &counters);
    r
}
