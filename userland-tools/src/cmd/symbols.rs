//! `ktrace symbols`: resolve what a user writes (a Rust path, a glob,
//! `path+0xOFF`, `file.rs:LINE`) to kernel addresses, and addresses back to
//! functions and source lines.
//!
//! ```text
//! ktrace symbols RequestQueue::submit_bio
//! ktrace symbols 'kernel::block::*' --json
//! ktrace symbols kernel/src/block/queue.rs:120 --all
//! ktrace symbols --addr 0xffffffff80012345
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use ktrace_symbols::{ResolveOptions, SymbolError, SymbolIndex};
use serde_json::json;

// The lookup lives in `kernel` so that the tools share it; `ktrace` subcommands
// reach it here.
pub use crate::kernel::kernel_elf;

/// Arguments of `ktrace symbols`.
#[derive(clap::Args, Debug)]
#[command(after_help = "QUERY forms:\n  \
    kernel::block::queue::RequestQueue::submit_bio   exact path\n  \
    RequestQueue::submit_bio                         unique suffix of path segments\n  \
    'kernel::block::*'  '*::submit_*'                glob (every match)\n  \
    RequestQueue::submit_bio+0x1a                    offset (checked against instruction boundaries)\n  \
    kernel/src/block/queue.rs:120                    source line (path suffix; every copy the compiler made)\n  \
    'tracepoint::emit::<SchedSwitch>'                one monomorphization, by its type arguments\n  \
    'bpf::handle::{closure}@bpf/mod.rs:697'          a path narrowed to where the function starts (closures)\n  \
    0xffffffff80012345                               raw address (needs --unsafe-address)")]
pub struct Args {
    /// What to resolve (see the forms below).
    #[arg(required_unless_present = "addr", conflicts_with = "addr")]
    pub query: Option<String>,
    /// Reverse lookup: the function, offset and source line of an address.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Resolve an ambiguous name or line to every match.
    #[arg(long)]
    pub all: bool,
    /// Accept a raw address as QUERY.
    #[arg(long = "unsafe-address")]
    pub unsafe_address: bool,
    /// Kernel ELF (default: $KTRACE_KERNEL, else the workspace's kernel
    /// build: kernel/kernel/kernel in $CARGO_TARGET_DIR or target/).
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Print names in full on a terminal too (they are elided in the
    /// middle to fit its width otherwise; piped output is always full), as
    /// `ps -w`.
    #[arg(long, short = 'w')]
    pub wide: bool,
}

/// Run `ktrace symbols`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let elf = kernel_elf(args.kernel.as_deref())?;
    // Freed by the process's exit rather than one allocation at a time.
    let index = std::mem::ManuallyDrop::new(SymbolIndex::open(&elf)?);
    if let Some(addr) = &args.addr {
        return reverse(&index, addr, args.json);
    }
    let query = args.query.as_deref().unwrap_or_default();
    let opts = ResolveOptions {
        all: args.all,
        allow_raw_address: args.unsafe_address,
    };
    match index.resolve(query, opts) {
        Ok(res) => {
            if args.json {
                return emit(&serde_json::to_string_pretty(&res)?);
            }
            let rows: Vec<[String; 4]> = res
                .points
                .iter()
                .map(|p| {
                    let name = match (&p.function, p.offset) {
                        (Some(f), 0) => f.clone(),
                        (Some(f), off) => format!("{f}+{off:#x}"),
                        (None, _) => "?".into(),
                    };
                    let name = match &p.inlined_from {
                        Some(from) => format!("{name} (inlined `{from}`)"),
                        None => name,
                    };
                    [
                        name,
                        format!("{:#x}", p.addr),
                        p.function_size
                            .map_or_else(String::new, |s| format!("{s} bytes")),
                        p.location
                            .as_ref()
                            .map_or_else(String::new, |l| l.to_string()),
                    ]
                })
                .collect();
            let mut out = table(&rows, fit_width(args.wide));
            if let Some(note) = &res.note {
                let _ = writeln!(out, "note: {note}");
            }
            for (c, why) in &res.skipped {
                let _ = writeln!(out, "skipped {} at {:#x}: {why}", c.name, c.addr);
            }
            emit(out.trim_end())
        }
        Err(e) => {
            if args.json {
                emit(&serde_json::to_string_pretty(&error_json(&e))?)?;
            }
            Err(e.into())
        }
    }
}

fn reverse(index: &SymbolIndex, text: &str, json_out: bool) -> anyhow::Result<()> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let addr = u64::from_str_radix(&digits.replace('_', ""), 16)
        .with_context(|| format!("`{text}` is not a hexadecimal address"))?;
    let Some(s) = index.symbolize(addr) else {
        bail!("{addr:#x} is not inside any function of the kernel");
    };
    if json_out {
        return emit(&serde_json::to_string_pretty(&s)?);
    }
    let mut out = format!(
        "{addr:#x} = {}+{:#x} ({} bytes at {:#x})",
        s.function.name, s.offset, s.function.size, s.function.addr
    );
    for f in &s.frames {
        let at = f
            .location
            .as_ref()
            .map_or_else(|| "?".into(), |l| l.to_string());
        let inl = if f.inlined { " [inlined]" } else { "" };
        let _ = write!(out, "\n  {}{inl} at {at}", f.function);
    }
    emit(&out)
}

/// Print `text` and a newline (a closed pipe ends the process quietly,
/// see [`crate::stop`]).
fn emit(text: &str) -> anyhow::Result<()> {
    outln!("{text}");
    crate::stop::flush_stdout();
    Ok(())
}

/// The structured form of an error for `--json`.
fn error_json(e: &SymbolError) -> serde_json::Value {
    let mut v = json!({ "error": e.to_string() });
    match e {
        SymbolError::Ambiguous {
            kind, candidates, ..
        } => {
            v["kind"] = json!("ambiguous");
            v["ambiguity"] = json!(kind);
            v["candidates"] = json!(candidates);
        }
        SymbolError::NotFound { suggestions, .. } => {
            v["kind"] = json!("not_found");
            v["suggestions"] = json!(suggestions);
        }
        SymbolError::InlinedAway { name, sites, .. } => {
            v["kind"] = json!("inlined_away");
            v["name"] = json!(name);
            v["sites"] = json!(sites);
        }
        SymbolError::NotOnBoundary { before, after, .. } => {
            v["kind"] = json!("not_on_boundary");
            v["before"] = json!(before);
            v["after"] = json!(after);
        }
        SymbolError::NotProbeable { function, reason } => {
            v["kind"] = json!("not_probeable");
            v["function"] = json!(function);
            v["reason"] = json!(reason);
        }
        SymbolError::FileNotFound { suggestions, .. } => {
            v["kind"] = json!("file_not_found");
            v["suggestions"] = json!(suggestions);
        }
        _ => {}
    }
    v
}

/// The width rows must fit: that of the terminal stdout is (`$COLUMNS`
/// when set, as `ls` reads it), or `None` (no limit) when stdout is a pipe
/// or a file, or with `--wide`.
fn fit_width(wide: bool) -> Option<usize> {
    use std::io::IsTerminal as _;
    if wide || !std::io::stdout().is_terminal() {
        return None;
    }
    let columns = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
    columns
        .filter(|&c: &usize| c > 0)
        .or_else(|| terminal_size::terminal_size().map(|(w, _)| usize::from(w.0)))
}

/// `text` in at most `max` characters: the middle replaced by `…` (a Rust
/// path's crate and last segments say the most), or with `keep_end` the
/// start (a file path's end says the most).
fn elide(text: &str, max: usize, keep_end: bool) -> String {
    let n = text.chars().count();
    if n <= max || max < 2 {
        return text.to_string();
    }
    let tail = if keep_end { max - 1 } else { (max - 1) / 2 };
    let head = max - 1 - tail;
    let mut out: String = text.chars().take(head).collect();
    out.push('…');
    out.extend(text.chars().skip(n - tail));
    out
}

/// Rows aligned in columns, one per line. With `fit`, the name and source
/// columns are elided so that a row fits in `fit` characters (the location
/// down to 24, then the name down to 24).
fn table(rows: &[[String; 4]], fit: Option<usize>) -> String {
    let mut width = [0usize; 4];
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut rows = rows.to_vec();
    if let Some(fit) = fit {
        let total = |w: &[usize; 4]| w.iter().sum::<usize>() + 6;
        if total(&width) > fit {
            width[3] = width[3].min(24.max(fit.saturating_sub(total(&width) - width[3])));
        }
        if total(&width) > fit {
            width[0] = width[0].min(24.max(fit.saturating_sub(total(&width) - width[0])));
        }
        for row in &mut rows {
            row[0] = elide(&row[0], width[0], false);
            row[3] = elide(&row[3], width[3], true);
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line = format!(
            "{:w0$}  {:>w1$}  {:>w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = [
            [
                "a::f".to_string(),
                "0x10".into(),
                "4 bytes".into(),
                "x.rs:1".into(),
            ],
            [
                "a::long".to_string(),
                "0x1000".into(),
                "40 bytes".into(),
                String::new(),
            ],
        ];
        assert_eq!(
            table(&rows, None),
            "a::f       0x10   4 bytes  x.rs:1\na::long  0x1000  40 bytes\n"
        );
    }

    #[test]
    fn a_terminal_gets_names_elided_in_the_middle() {
        let long = format!(
            "<kernel::a::Type<{}> as kernel::Trait>::method",
            "u8,".repeat(150)
        );
        let rows = [[
            long.clone(),
            "0x1000".into(),
            "40 bytes".into(),
            "/rustc/0123456789abcdef/library/core/src/ptr/mod.rs:805".into(),
        ]];
        // Piped (no width): every character.
        assert!(table(&rows, None).contains(&long));
        let fitted = table(&rows, Some(100));
        assert_eq!(fitted.trim_end().chars().count(), 100, "{fitted}");
        assert!(fitted.starts_with("<kernel::a::Type<u8,"), "{fitted}");
        assert!(
            fitted.contains("…> as kernel::Trait>::method  0x1000  40 bytes  …"),
            "{fitted}"
        );
        assert!(
            fitted.trim_end().ends_with("  …core/src/ptr/mod.rs:805"),
            "{fitted}"
        );
        assert_eq!(elide("abcdefgh", 5, false), "ab…gh");
        assert_eq!(elide("abcdefgh", 5, true), "…efgh");
        assert_eq!(elide("abc", 5, false), "abc");
    }
}
