//! `kperf list`: the events the kernel can count, as `perf list` shows
//! them (software events, hardware counters the CPU model has,
//! tracepoints, kprobes).

use anyhow::bail;
use ktrace_abi::trace::PerfEvent;
use probe_sdk::trace::TraceClient;

use crate::kernel;

/// Arguments of `kperf list`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only events matching this glob (`'sched:*'`, as `perf list`
    /// takes), or whose name contains it when it has no `*` or `?`.
    pub filter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `kperf list` against VM `vm`.
pub fn run(args: Args, vm: &str) -> anyhow::Result<()> {
    let mut client = kernel::connect(vm, "kperf list")?;
    let mut rows: Vec<(String, String)> = Vec::new();
    for (name, aliases, _, what) in super::SOFTWARE {
        let shown = if aliases.is_empty() {
            name.to_string()
        } else {
            format!("{name} OR {}", aliases.join(" OR "))
        };
        rows.push((shown, format!("[Software event] {what}")));
    }
    for (name, ev) in super::HARDWARE {
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
        rows.retain(|(shown, _)| super::list_filter_matches(f, shown));
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
