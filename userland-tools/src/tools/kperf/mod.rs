//! `kperf`: event names, counting (`stat`) and sampling (`record`,
//! `report`) on the kernel's perf events. This module holds what the
//! subcommands share (event names and their resolution, opened counters,
//! the `kperf.data` format); each subcommand is a module with its clap
//! `Args` and `run`, which the `kperf` binary dispatches to.

pub mod list;
pub mod record;
pub mod report;
pub mod stat;
mod work;

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::Path;

use anyhow::{bail, Context as _};
use ktrace_abi::trace::{HardwareEvent, PerfEvent, PerfSample, ProbeTarget, SoftwareEvent};
use ktrace_abi::ErrorCode;
use probe_sdk::client::{Client, ClientError};
use probe_sdk::trace::TraceClient;
use serde::{Deserialize, Serialize};

use crate::report::profile::Sample;

/// Software events: name, aliases, event, what it counts.
pub const SOFTWARE: &[(&str, &[&str], SoftwareEvent, &str)] = &[
    (
        "task-clock",
        &["cpu-clock"],
        SoftwareEvent::TaskClock,
        "CPU time while counting (msec)",
    ),
    (
        "context-switches",
        &["cs"],
        SoftwareEvent::ContextSwitches,
        "task switches by the scheduler",
    ),
    (
        "cpu-migrations",
        &["migrations"],
        SoftwareEvent::CpuMigrations,
        "times a task ran on another CPU than the time before",
    ),
    (
        "page-faults",
        &["faults"],
        SoftwareEvent::PageFaults,
        "page faults taken by the kernel",
    ),
    (
        "irqs",
        &[],
        SoftwareEvent::Irqs,
        "external interrupts (vectors >= 32)",
    ),
    (
        "timer-ticks",
        &["ticks"],
        SoftwareEvent::TimerTicks,
        "scheduler timer interrupts",
    ),
];

/// Hardware events and their `perf` names.
pub const HARDWARE: &[(&str, HardwareEvent)] = &[
    ("cycles", HardwareEvent::CpuCycles),
    ("instructions", HardwareEvent::Instructions),
    ("cache-misses", HardwareEvent::CacheMisses),
    ("branch-misses", HardwareEvent::BranchMisses),
];

/// An event a user named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSpec {
    /// Counted by the kernel.
    Counter(PerfEvent),
    /// Known but not countable here.
    #[allow(dead_code)] // every event this kernel knows is countable today
    Unsupported(&'static str),
}

/// Parses one event name: a software or hardware event, `category:name`
/// for a tracepoint, or `kprobe:<demangled path>[+offset]`.
pub fn parse_event(name: &str) -> anyhow::Result<EventSpec> {
    let name = name.trim();
    if let Some((_, _, e, _)) = SOFTWARE
        .iter()
        .find(|(n, aliases, _, _)| *n == name || aliases.contains(&name))
    {
        return Ok(EventSpec::Counter(PerfEvent::Software(*e)));
    }
    if let Some((_, e)) = HARDWARE.iter().find(|(n, _)| *n == name) {
        return Ok(EventSpec::Counter(PerfEvent::Hardware(*e)));
    }
    if let Some(path) = name.strip_prefix("kprobe:") {
        if path.is_empty() {
            bail!("event `{name}`: give a function after `kprobe:`, e.g. kprobe:RequestQueue::submit_bio");
        }
        let (sym, offset) = match path.rsplit_once('+') {
            Some((s, off)) => {
                let off = off.strip_prefix("0x").map_or_else(
                    || off.parse::<u64>(),
                    |h| u64::from_str_radix(h, 16).map_err(|_| "x".parse::<u64>().unwrap_err()),
                );
                (
                    s,
                    off.with_context(|| format!("event `{name}`: bad offset after `+`"))?,
                )
            }
            None => (path, 0),
        };
        return Ok(EventSpec::Counter(PerfEvent::Kprobe {
            target: ProbeTarget::Symbol {
                name: sym.to_string(),
                offset,
            },
        }));
    }
    if let Some((cat, ev)) = name.split_once(':') {
        if cat.is_empty() || ev.is_empty() || ev.contains(':') {
            bail!("event `{name}`: a tracepoint is `category:name`, e.g. block:block_rq_complete");
        }
        return Ok(EventSpec::Counter(PerfEvent::Tracepoint {
            name: name.into(),
        }));
    }
    bail!(
        "unknown event `{name}`; see `kperf list` (software events, category:name tracepoints, \
         kprobe:<function>)"
    )
}

/// Resolves a `kprobe:` event's path against the kernel ELF so that a
/// suffix (`RequestQueue::submit_bio`) names the full demangled function
/// the kernel's symbol table knows, and a bad name fails before anything
/// is opened. A query with several points (a `file.rs:LINE` the compiler
/// duplicated, or with `all` a name several functions share) becomes one
/// event per point, named `kprobe:<function>+<offset>`, as `perf probe`
/// makes one event per location; other events pass through as they are.
pub fn resolve_kprobe(
    name: String,
    spec: EventSpec,
    index: &ktrace_symbols::SymbolIndex,
    all: bool,
) -> anyhow::Result<Vec<(String, EventSpec)>> {
    let EventSpec::Counter(PerfEvent::Kprobe {
        target: ProbeTarget::Symbol { name: path, offset },
    }) = &spec
    else {
        return Ok(vec![(name, spec)]);
    };
    let query = if *offset == 0 {
        path.clone()
    } else {
        format!("{path}+{offset:#x}")
    };
    let opts = ktrace_symbols::ResolveOptions {
        all,
        allow_raw_address: false,
    };
    let r = index
        .resolve(&query, opts)
        .map_err(|e| anyhow::anyhow!("kprobe:{query}: {e}"))?;
    let event = |p: &ktrace_symbols::ProbePoint| {
        EventSpec::Counter(PerfEvent::Kprobe {
            target: match &p.function {
                // A shared name (copies, closures) goes by address.
                Some(f) if index.name_is_unique(f) => ProbeTarget::Symbol {
                    name: f.clone(),
                    offset: p.offset,
                },
                _ => ProbeTarget::Address(p.addr),
            },
        })
    };
    match r.points.as_slice() {
        [p] => Ok(vec![(name, event(p))]),
        [] => bail!("kprobe:{query}: no probe point in the kernel"),
        many => Ok(many
            .iter()
            .map(|p| {
                let f = p.function.as_deref().unwrap_or("?");
                let mut name = match p.offset {
                    0 => format!("kprobe:{f}"),
                    off => format!("kprobe:{f}+{off:#x}"),
                };
                // Copies of one function share its name: the address tells
                // their rows apart.
                if !index.name_is_unique(f) {
                    name = format!("{name}@{:#x}", p.addr);
                }
                (name, event(p))
            })
            .collect()),
    }
}

/// An opened counter, or why it is not counted.
#[derive(Debug, Clone)]
pub struct Counter {
    pub name: String,
    pub id: Option<u32>,
    /// `<not supported>` and why.
    pub unsupported: Option<String>,
}

/// Opens `events` (disabled). Hardware events the CPU model does not have
/// become `<not supported>` rows rather than errors, as in `perf stat`.
pub fn open_counters(
    client: &mut Client,
    events: &[(String, EventSpec)],
) -> anyhow::Result<Vec<Counter>> {
    check_tracepoints(client, events)?;
    let mut out = Vec::new();
    for (name, spec) in events {
        let c = match spec {
            EventSpec::Unsupported(why) => Counter {
                name: name.clone(),
                id: None,
                unsupported: Some((*why).into()),
            },
            EventSpec::Counter(ev) => match client.perf_open(ev.clone()) {
                Ok(id) => Counter {
                    name: name.clone(),
                    id: Some(id),
                    unsupported: None,
                },
                Err(ClientError::Kernel { reply, .. }) if reply.code == ErrorCode::NotSupported => {
                    Counter {
                        name: name.clone(),
                        id: None,
                        unsupported: Some(reply.message),
                    }
                }
                Err(e) => {
                    close_counters(client, &out);
                    return Err(anyhow::Error::new(e).context(format!("opening event `{name}`")));
                }
            },
        };
        out.push(c);
    }
    Ok(out)
}

/// Closes every opened counter, ignoring errors (used on every exit path).
pub fn close_counters(client: &mut Client, counters: &[Counter]) {
    for c in counters {
        if let Some(id) = c.id {
            let _ = client.perf_close(id);
        }
    }
}

/// One sample as `kperf.data` stores it (JSON, one per line): the raw
/// addresses and the names they had in the kernel that was sampled, so
/// `kperf report` needs no ELF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSample {
    pub time_ns: u64,
    pub pid: u32,
    /// CPU that took the sample (recordings made before SMP have none: 0).
    #[serde(default)]
    pub cpu: u32,
    pub comm: String,
    /// Interrupted ip, then return addresses, innermost first.
    pub stack: Vec<u64>,
    /// The same frames as demangled function paths.
    pub frames: Vec<String>,
}

/// The first line of `kperf.data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataHeader {
    pub kperf_data: u32,
    pub freq_hz: u32,
    pub call_graph: bool,
    pub duration_ns: u64,
    pub samples: u64,
    pub lost: u64,
    pub kernel: String,
}

/// Turns a kernel sample into a data sample, symbolizing with `index`.
pub fn data_sample(
    s: &PerfSample,
    call_graph: bool,
    index: Option<&ktrace_symbols::SymbolIndex>,
) -> DataSample {
    let mut stack = vec![s.ip];
    if call_graph {
        // Return addresses point after the call; look up the call itself.
        stack.extend(s.stack.iter().copied());
    }
    let frames = stack
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let at = if i == 0 { a } else { a.saturating_sub(1) };
            index
                .and_then(|x| x.lookup_addr(at))
                .map(|(f, _)| f.name.to_string())
                .unwrap_or_else(|| format!("{a:#x}"))
        })
        .collect();
    DataSample {
        time_ns: s.time_ns,
        pid: s.pid,
        cpu: s.cpu,
        comm: crate::kernel::c_str(&s.comm),
        stack,
        frames,
    }
}

/// Writes `kperf.data`.
pub fn write_data(path: &Path, header: &DataHeader, samples: &[DataSample]) -> anyhow::Result<()> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    writeln!(w, "{}", serde_json::to_string(header)?)?;
    for s in samples {
        writeln!(w, "{}", serde_json::to_string(s)?)?;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads `kperf.data`.
pub fn read_data(path: &Path) -> anyhow::Result<(DataHeader, Vec<DataSample>)> {
    let f = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot open {} (record one with `kperf record`)",
            path.display()
        )
    })?;
    let mut lines = std::io::BufReader::new(f).lines();
    let first = lines
        .next()
        .transpose()?
        .with_context(|| format!("{}: empty file, not kperf data", path.display()))?;
    let header: DataHeader = serde_json::from_str(&first)
        .with_context(|| format!("{}:1: not a kperf data header", path.display()))?;
    let mut samples = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        samples.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a kperf sample", path.display(), i + 2))?,
        );
    }
    Ok((header, samples))
}

/// Data samples as profile samples whose "addresses" index `names`, so
/// the report code can symbolize by table lookup.
pub fn profile_samples(samples: &[DataSample]) -> (Vec<Sample>, Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    let out = samples
        .iter()
        .map(|s| Sample {
            pid: s.pid,
            comm: s.comm.clone(),
            stack: s
                .frames
                .iter()
                .map(|f| {
                    *ids.entry(f.clone()).or_insert_with(|| {
                        names.push(f.clone());
                        names.len() as u64 - 1
                    })
                })
                .collect(),
        })
        .collect();
    (out, names)
}

/// Parses a CPU list as `perf -C` takes it: numbers and ranges, comma
/// separated (`0,2-3`), into sorted distinct CPU numbers.
pub fn parse_cpu_list(list: &str) -> anyhow::Result<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let num = |s: &str| {
            s.trim().parse::<u32>().map_err(|_| {
                anyhow::anyhow!(
                    "-C {list}: `{part}` is not a CPU number or range (expected e.g. 0,2-3)"
                )
            })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    bail!("-C {list}: range `{part}` runs backwards");
                }
                if b - a >= ktrace_abi::vm::MAX_CPUS {
                    bail!(
                        "-C {list}: range `{part}` is wider than the kernel's {} CPUs",
                        ktrace_abi::vm::MAX_CPUS
                    );
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The CPUs to count: `list` (from `-C`), each checked against the
/// `online` CPUs of the VM, or every online CPU.
pub fn select_cpus(list: Option<&str>, online: u32) -> anyhow::Result<Vec<u32>> {
    let Some(list) = list else {
        return Ok((0..online.max(1)).collect());
    };
    let cpus = parse_cpu_list(list)?;
    if let Some(bad) = cpus.iter().find(|&&c| c >= online) {
        let have = match online {
            0 | 1 => "1 CPU (CPU 0)".to_string(),
            n => format!("{n} CPUs (0-{})", n - 1),
        };
        bail!("-C {list}: CPU {bad} does not exist; this VM has {have}");
    }
    Ok(cpus)
}

/// Refuses a tracepoint event the kernel does not have, before anything
/// is opened, suggesting the closest names (`block:blok_rq_issue` → did
/// you mean `block:block_rq_issue`).
fn check_tracepoints(client: &mut Client, events: &[(String, EventSpec)]) -> anyhow::Result<()> {
    let wanted: Vec<&str> = events
        .iter()
        .filter_map(|(_, spec)| match spec {
            EventSpec::Counter(PerfEvent::Tracepoint { name }) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let known: Vec<String> = client
        .list_tracepoints()?
        .into_iter()
        .map(|t| format!("{}:{}", t.category, t.name))
        .collect();
    for name in wanted {
        if known.iter().any(|k| k == name) {
            continue;
        }
        let mut close: Vec<(usize, &String)> = known
            .iter()
            .map(|k| (ktrace_symbols::levenshtein(name, k), k))
            .filter(|(d, _)| *d <= 3)
            .collect();
        close.sort();
        let hint = match close.first() {
            Some((_, k)) => format!("; did you mean `{k}`?"),
            None => "; `kperf list 'category:*'` shows the tracepoints".to_string(),
        };
        bail!("no tracepoint `{name}` in this kernel{hint}");
    }
    Ok(())
}

/// Whether a `kperf list` row named `shown` (`task-clock OR cpu-clock`)
/// matches `filter`: a glob against any one of its names (`sched:*`, as
/// `perf list` takes), or a part of the row when there is no `*` or `?`.
pub fn list_filter_matches(filter: &str, shown: &str) -> bool {
    if filter.contains(['*', '?']) {
        shown
            .split(" OR ")
            .any(|name| ktrace_symbols::path::glob_match(filter, name))
    } else {
        shown.contains(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_are_globs_or_parts_of_names() {
        assert!(list_filter_matches("sched:*", "sched:sched_switch"));
        assert!(!list_filter_matches("sched:*", "block:block_rq_issue"));
        assert!(list_filter_matches("cpu-c?ock", "task-clock OR cpu-clock"));
        assert!(list_filter_matches("rq_issue", "block:block_rq_issue"));
        assert!(!list_filter_matches("blk:*", "block:block_rq_issue"));
    }

    #[test]
    fn event_names() {
        assert_eq!(
            parse_event("cs").unwrap(),
            EventSpec::Counter(PerfEvent::Software(SoftwareEvent::ContextSwitches))
        );
        assert_eq!(
            parse_event("block:block_rq_complete").unwrap(),
            EventSpec::Counter(PerfEvent::Tracepoint {
                name: "block:block_rq_complete".into()
            })
        );
        assert_eq!(
            parse_event("kprobe:RequestQueue::submit_bio+0x4").unwrap(),
            EventSpec::Counter(PerfEvent::Kprobe {
                target: ProbeTarget::Symbol {
                    name: "RequestQueue::submit_bio".into(),
                    offset: 4
                }
            })
        );
        assert_eq!(
            parse_event("cpu-migrations").unwrap(),
            EventSpec::Counter(PerfEvent::Software(SoftwareEvent::CpuMigrations))
        );
        assert_eq!(
            parse_event("migrations").unwrap(),
            parse_event("cpu-migrations").unwrap()
        );
        assert_eq!(
            parse_event("bogus").unwrap_err().to_string(),
            "unknown event `bogus`; see `kperf list` (software events, category:name tracepoints, kprobe:<function>)"
        );
        assert!(parse_event("block:").is_err());
    }

    #[test]
    fn cpu_lists_are_perfs() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), vec![0, 2, 3]);
        assert_eq!(parse_cpu_list("3, 1,1").unwrap(), vec![1, 3]);
        assert_eq!(
            parse_cpu_list("0,x").unwrap_err().to_string(),
            "-C 0,x: `x` is not a CPU number or range (expected e.g. 0,2-3)"
        );
        assert_eq!(
            parse_cpu_list("3-1").unwrap_err().to_string(),
            "-C 3-1: range `3-1` runs backwards"
        );
        assert!(parse_cpu_list("0-4000000000").is_err());
        assert_eq!(select_cpus(None, 2).unwrap(), vec![0, 1]);
        assert_eq!(select_cpus(Some("1"), 2).unwrap(), vec![1]);
        assert_eq!(
            select_cpus(Some("7"), 2).unwrap_err().to_string(),
            "-C 7: CPU 7 does not exist; this VM has 2 CPUs (0-1)"
        );
        assert_eq!(
            select_cpus(Some("0-1"), 1).unwrap_err().to_string(),
            "-C 0-1: CPU 1 does not exist; this VM has 1 CPU (CPU 0)"
        );
    }

    #[test]
    fn data_round_trip() {
        let dir = std::env::temp_dir().join(format!("kperf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kperf.data");
        let header = DataHeader {
            kperf_data: 1,
            freq_hz: 99,
            call_graph: true,
            duration_ns: 1_000_000_000,
            samples: 1,
            lost: 0,
            kernel: "k".into(),
        };
        let s = DataSample {
            time_ns: 5,
            pid: 3,
            cpu: 1,
            comm: "fio".into(),
            stack: vec![0x10, 0x20],
            frames: vec!["kernel::a".into(), "kernel::b".into()],
        };
        write_data(&path, &header, std::slice::from_ref(&s)).unwrap();
        let (h, got) = read_data(&path).unwrap();
        assert_eq!(h, header);
        assert_eq!(got, vec![s]);
        let (ps, names) = profile_samples(&got);
        assert_eq!(names, vec!["kernel::a", "kernel::b"]);
        assert_eq!(ps[0].stack, vec![0, 1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
