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
}

/// Run `kperf report`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (header, data) = super::read_data(&args.input)?;
    if data.is_empty() {
        bail!("{}: no samples", args.input.display());
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
