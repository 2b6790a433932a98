//! `kperf report`: the top symbols of a recording, its folded stacks and
//! an SVG flame graph.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::report::profile;

/// Arguments of `kperf report`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recording.
    #[arg(short = 'i', long, default_value = "kperf.data")]
    pub input: PathBuf,
    /// Write an SVG flame graph here (and the folded stacks next to it,
    /// `<name>.folded`).
    #[arg(long, value_name = "SVG")]
    pub flamegraph: Option<PathBuf>,
    /// Write the folded stacks here.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,
    /// Rows of the top-symbols table.
    #[arg(long, default_value_t = 25)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Group the overhead by these keys, comma separated, as `perf report
    /// --sort`: `cpu`, `comm`, `pid`, `symbol` (`sym`). Default: symbols
    /// with their children and self overhead.
    #[arg(short = 's', long = "sort", value_name = "KEYS", value_delimiter = ',')]
    pub sort: Vec<String>,
    /// Only the samples of these CPUs (`0,2-3`), as `perf report -C`.
    #[arg(short = 'C', long = "cpu", value_name = "LIST")]
    pub cpus: Option<String>,
}

/// A `--sort` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortKey {
    Cpu,
    Comm,
    Pid,
    Symbol,
}

impl SortKey {
    fn parse(key: &str) -> anyhow::Result<SortKey> {
        Ok(match key.trim() {
            "cpu" => SortKey::Cpu,
            "comm" => SortKey::Comm,
            "pid" => SortKey::Pid,
            "symbol" | "sym" => SortKey::Symbol,
            other => bail!("--sort {other}: unknown key; use cpu, comm, pid or symbol"),
        })
    }

    fn header(self) -> &'static str {
        match self {
            SortKey::Cpu => "CPU",
            SortKey::Comm => "Command",
            SortKey::Pid => "Pid",
            SortKey::Symbol => "Symbol",
        }
    }

    /// This key's column for sample `s` (its innermost frame for `symbol`).
    fn value(self, s: &super::DataSample) -> String {
        match self {
            SortKey::Cpu => format!("{:>3}", s.cpu),
            SortKey::Comm => s.comm.clone(),
            SortKey::Pid => s.pid.to_string(),
            SortKey::Symbol => s.frames.first().cloned().unwrap_or_default(),
        }
    }
}

/// The overhead of each distinct combination of `keys`, largest first:
/// (percentage, samples, the keys' columns).
fn overhead_by(data: &[super::DataSample], keys: &[SortKey]) -> Vec<(f64, u64, Vec<String>)> {
    let mut counts: std::collections::BTreeMap<Vec<String>, u64> = Default::default();
    for s in data {
        *counts
            .entry(keys.iter().map(|k| k.value(s)).collect())
            .or_default() += 1;
    }
    let total = data.len().max(1) as f64;
    let mut rows: Vec<_> = counts
        .into_iter()
        .map(|(cols, n)| (n as f64 * 100.0 / total, n, cols))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.2.cmp(&b.2)));
    rows
}

/// `perf report --sort` output: an Overhead column, then one per key.
fn render_overhead(
    rows: &[(f64, u64, Vec<String>)],
    keys: &[SortKey],
    total: usize,
    limit: usize,
) -> String {
    let headers: Vec<&str> = keys.iter().map(|k| k.header()).collect();
    let mut out = format!(
        "# Samples: {total}\n#\n# Overhead  {}\n# ........  {}\n#\n",
        headers.join("  "),
        headers
            .iter()
            .map(|h| ".".repeat(h.len()))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for (pct, _, cols) in rows.iter().take(limit) {
        out.push_str(&format!("  {pct:>7.2}%  {}\n", cols.join("  ")));
    }
    out
}

/// Run `kperf report`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (header, mut data) = super::read_data(&args.input)?;
    if data.is_empty() {
        bail!("{}: no samples", args.input.display());
    }
    let keys = args
        .sort
        .iter()
        .map(|k| SortKey::parse(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(list) = &args.cpus {
        let cpus = super::parse_cpu_list(list)?;
        data.retain(|s| cpus.contains(&s.cpu));
        if data.is_empty() {
            bail!(
                "{}: no samples on CPU {list} (`kperf report --sort cpu` shows the CPUs sampled)",
                args.input.display()
            );
        }
    }
    let (samples, names) = super::profile_samples(&data);
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
    let by_keys = (!keys.is_empty()).then(|| overhead_by(&data, &keys));
    if args.json {
        let mut v = serde_json::json!({
            "samples": data.len(), "lost": header.lost, "freq_hz": header.freq_hz,
            "symbols": rows.iter().take(args.limit).collect::<Vec<_>>(),
        });
        if let Some(by) = &by_keys {
            v["overhead"] = by
                .iter()
                .take(args.limit)
                .map(|(pct, n, cols)| {
                    let mut o = serde_json::json!({ "overhead_pct": pct, "samples": n });
                    for (k, c) in keys.iter().zip(cols) {
                        o[k.header().to_lowercase()] = match k {
                            SortKey::Cpu | SortKey::Pid => {
                                c.trim().parse::<u64>().unwrap_or_default().into()
                            }
                            _ => c.clone().into(),
                        };
                    }
                    o
                })
                .collect();
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
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
        match &by_keys {
            Some(by) => out!("{}", render_overhead(by, &keys, data.len(), args.limit)),
            None => out!("{}", profile::render_top(&rows, data.len(), args.limit)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu: u32, frame: &str) -> super::super::DataSample {
        super::super::DataSample {
            time_ns: 0,
            pid: 1,
            cpu,
            comm: "t".into(),
            stack: vec![0],
            frames: vec![frame.into()],
        }
    }

    #[test]
    fn overhead_by_cpu_as_perf_report_sort_cpu() {
        let data = vec![
            sample(1, "a"),
            sample(0, "a"),
            sample(1, "b"),
            sample(1, "a"),
        ];
        let keys = [SortKey::Cpu];
        let rows = overhead_by(&data, &keys);
        assert_eq!(
            render_overhead(&rows, &keys, data.len(), 10),
            "# Samples: 4\n#\n# Overhead  CPU\n# ........  ...\n#\n    75.00%    1\n    25.00%    0\n"
        );
        let keys = [SortKey::Cpu, SortKey::Symbol];
        let rows = overhead_by(&data, &keys);
        assert_eq!(rows[0].2, vec!["  1".to_string(), "a".to_string()]);
        assert_eq!(rows[0].1, 2);
        assert_eq!(
            SortKey::parse("dso").unwrap_err().to_string(),
            "--sort dso: unknown key; use cpu, comm, pid or symbol"
        );
    }
}
