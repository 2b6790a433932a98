//! Stack samples → `perf report`-style tables, folded stacks and flame
//! graphs (through `inferno`).
//!
//! A sample is the interrupted instruction pointer followed by return
//! addresses from a frame-pointer walk (innermost first). Frames are turned
//! into names by a caller-supplied symbolizer (the symbol index), so this
//! module stays pure and testable.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One stack sample, innermost frame first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub pid: u32,
    pub comm: String,
    pub stack: Vec<u64>,
}

/// A row of the top-symbols table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SymbolRow {
    pub symbol: String,
    /// Samples whose innermost frame is in this symbol.
    pub self_samples: u64,
    /// Samples with this symbol anywhere on the stack.
    pub children_samples: u64,
    pub self_pct: f64,
    pub children_pct: f64,
}

/// Symbolize each sample's frames, outermost first (the order folded stacks
/// use). The task name is the root frame, as `perf script | stackcollapse`
/// does.
fn named_frames(s: &Sample, symbolize: &dyn Fn(u64) -> String) -> Vec<String> {
    let mut frames: Vec<String> = s.stack.iter().rev().map(|&a| symbolize(a)).collect();
    frames.insert(
        0,
        if s.comm.is_empty() {
            format!("pid-{}", s.pid)
        } else {
            s.comm.clone()
        },
    );
    frames
}

/// Folded stacks (`root;caller;callee count`), sorted, one line per stack.
pub fn fold(samples: &[Sample], symbolize: &dyn Fn(u64) -> String) -> Vec<String> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for s in samples {
        let line = named_frames(s, symbolize)
            .iter()
            // ';' separates frames and ' ' the count: keep names unambiguous.
            .map(|f| f.replace(';', ":").replace(' ', "_"))
            .collect::<Vec<_>>()
            .join(";");
        *counts.entry(line).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect()
}

/// Top symbols by self samples, with children (inclusive) counts.
pub fn top_symbols(samples: &[Sample], symbolize: &dyn Fn(u64) -> String) -> Vec<SymbolRow> {
    let total = samples.len().max(1) as f64;
    let mut selfc: HashMap<String, u64> = HashMap::new();
    let mut children: HashMap<String, u64> = HashMap::new();
    for s in samples {
        let names: Vec<String> = s.stack.iter().map(|&a| symbolize(a)).collect();
        if let Some(first) = names.first() {
            *selfc.entry(first.clone()).or_default() += 1;
        }
        let unique: HashSet<&String> = names.iter().collect();
        for n in unique {
            *children.entry(n.clone()).or_default() += 1;
        }
    }
    let mut rows: Vec<SymbolRow> = children
        .into_iter()
        .map(|(symbol, c)| {
            let sc = selfc.get(&symbol).copied().unwrap_or(0);
            SymbolRow {
                self_pct: sc as f64 * 100.0 / total,
                children_pct: c as f64 * 100.0 / total,
                symbol,
                self_samples: sc,
                children_samples: c,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.self_samples
            .cmp(&a.self_samples)
            .then(b.children_samples.cmp(&a.children_samples))
            .then(a.symbol.cmp(&b.symbol))
    });
    rows
}

/// Render the top-symbols table like `perf report --children`.
pub fn render_top(rows: &[SymbolRow], total: usize, limit: usize) -> String {
    let mut out = format!(
        "# Samples: {total}\n#\n# Children      Self  Symbol\n# ........  ........  ......\n#\n"
    );
    for r in rows.iter().take(limit) {
        out.push_str(&format!(
            "  {:>7.2}%  {:>7.2}%  {}\n",
            r.children_pct, r.self_pct, r.symbol
        ));
    }
    out
}

/// An SVG flame graph of folded stacks.
pub fn flamegraph_svg(folded: &[String], title: &str) -> Result<Vec<u8>, String> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".to_string();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, folded.iter().map(|s| s.as_str()), &mut svg)
        .map_err(|e| format!("flame graph: {e}"))?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(a: u64) -> String {
        match a {
            0x10..=0x1f => "kernel::block::submit_bio".into(),
            0x20..=0x2f => "kernel::workload::run".into(),
            0x30..=0x3f => "kernel::task::idle".into(),
            _ => format!("{a:#x}"),
        }
    }

    fn samples() -> Vec<Sample> {
        let s = |stack: Vec<u64>| Sample {
            pid: 3,
            comm: "wl0".into(),
            stack,
        };
        vec![
            s(vec![0x11, 0x21]),
            s(vec![0x12, 0x22]),
            s(vec![0x25]),
            s(vec![0x31]),
        ]
    }

    #[test]
    fn folds_outermost_first_with_counts() {
        let f = fold(&samples(), &sym);
        assert_eq!(
            f,
            vec![
                "wl0;kernel::task::idle 1".to_string(),
                "wl0;kernel::workload::run 1".to_string(),
                "wl0;kernel::workload::run;kernel::block::submit_bio 2".to_string(),
            ]
        );
    }

    #[test]
    fn top_symbols_self_and_children() {
        let rows = top_symbols(&samples(), &sym);
        assert_eq!(rows[0].symbol, "kernel::block::submit_bio");
        assert_eq!(rows[0].self_samples, 2);
        let run = rows
            .iter()
            .find(|r| r.symbol == "kernel::workload::run")
            .unwrap();
        assert_eq!((run.self_samples, run.children_samples), (1, 3));
        assert!((run.children_pct - 75.0).abs() < 1e-9);
    }

    #[test]
    fn flamegraph_contains_frame_names() {
        let svg = flamegraph_svg(&fold(&samples(), &sym), "test").unwrap();
        let text = String::from_utf8(svg).unwrap();
        assert!(text.contains("kernel::block::submit_bio"));
    }
}
