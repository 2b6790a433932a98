//! `ktrace events`: print ring buffer, perf output and `trace_printk`
//! records as the kernel pushes them, with lost-record counts.
//!
//! Records of a map with a declared record type (`RingBuf<Event>`,
//! `PerfEventArray<Event>`) and of that type's size print field by field
//! (`{ ts_ns: 1, comm: "fio" }`; with `--json` a `record` object next to the
//! raw `data`); other records print as before.
//!
//! ```text
//! ktrace events                  # every ring buffer / perf array, and trace_printk
//! ktrace events --map EVENTS --count 100 --json
//! ```

use std::time::{Duration, Instant};

use ktrace_abi::bpf::EventSource;
use ktrace_abi::types::TypeDesc;
use probe_sdk::runtime::Runtime;
use probe_sdk::typed;
use serde_json::json;

use super::bpf_common::find_map;
use crate::kernel::connect;

/// Arguments of `ktrace events`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Maps to stream (ids or names); default: every ring buffer and perf event array.
    #[arg(long = "map", value_name = "MAP")]
    pub maps: Vec<String>,
    /// Leave out `trace_printk` output.
    #[arg(long)]
    pub no_printk: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// One JSON object per record (and per lost-count change).
    #[arg(long)]
    pub json: bool,
}

fn render(data: &[u8]) -> String {
    if data.len().is_multiple_of(8) && !data.is_empty() && data.len() <= 64 {
        data.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        data.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("")
    }
}

/// Run `ktrace events`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let mut client = connect(vm_name, "ktrace events")?;
    let mut rt = Runtime::new(&mut client);
    let maps = rt.maps()?;
    // Record types by map id, for the maps that declared one.
    let record_types: std::collections::HashMap<u32, TypeDesc> = maps
        .iter()
        .filter_map(|m| m.types.record.clone().map(|t| (m.id, t)))
        .collect();
    let typed_text = |map: &u32, data: &[u8]| {
        record_types
            .get(map)
            .and_then(|t| typed::format(t, data))
            .unwrap_or_else(|| render(data))
    };
    let typed_json =
        |map: &u32, data: &[u8]| record_types.get(map).and_then(|t| typed::to_json(t, data));
    let ids: Vec<u32> = if args.maps.is_empty() {
        maps.iter()
            .filter(|m| matches!(m.map_type, 4 | 27))
            .map(|m| m.id)
            .collect()
    } else {
        args.maps
            .iter()
            .map(|m| find_map(&mut rt, m).map(|m| m.id))
            .collect::<Result<_, _>>()?
    };
    rt.subscribe(ids.clone(), !args.no_printk)?;
    if !args.json {
        errln!(
            "streaming maps {ids:?}{}; Ctrl-C to stop",
            if args.no_printk {
                ""
            } else {
                " and trace_printk"
            }
        );
    }
    let start = Instant::now();
    let mut seen = 0u64;
    let mut lost_seen: std::collections::BTreeMap<u32, u64> = Default::default();
    loop {
        if args.count.is_some_and(|c| seen >= c)
            || args
                .duration
                .is_some_and(|d| start.elapsed().as_secs_f64() >= d)
        {
            break;
        }
        let Some(batch) = rt.next_events(Duration::from_millis(200))? else {
            continue;
        };
        for r in &batch.records {
            if args.count.is_some_and(|c| seen >= c) {
                break;
            }
            seen += 1;
            let t = start.elapsed().as_secs_f64();
            match (&r.source, args.json) {
                (EventSource::Printk { prog }, true) => {
                    outln!(
                        "{}",
                        json!({ "t": t, "printk": { "prog": prog, "text": String::from_utf8_lossy(&r.data) } })
                    )
                }
                (EventSource::Printk { prog }, false) => outln!(
                    "{t:10.6} printk prog {prog}: {}",
                    String::from_utf8_lossy(&r.data)
                ),
                (EventSource::RingBuf { map }, true) => {
                    let mut o = json!({ "t": t, "map": map, "data": r.data });
                    if let Some(rec) = typed_json(map, &r.data) {
                        o["record"] = rec;
                    }
                    outln!("{o}")
                }
                (EventSource::RingBuf { map }, false) => {
                    outln!("{t:10.6} ringbuf {map}: {}", typed_text(map, &r.data))
                }
                (EventSource::Perf { map, cpu }, true) => {
                    let mut o = json!({ "t": t, "map": map, "cpu": cpu, "data": r.data });
                    if let Some(rec) = typed_json(map, &r.data) {
                        o["record"] = rec;
                    }
                    outln!("{o}")
                }
                (EventSource::Perf { map, cpu }, false) => {
                    outln!(
                        "{t:10.6} perf {map} cpu {cpu}: {}",
                        typed_text(map, &r.data)
                    )
                }
            }
        }
        for l in &batch.lost {
            let prev = lost_seen.insert(l.map, l.lost).unwrap_or(0);
            if l.lost > prev {
                let stream = if l.map == u32::MAX {
                    "trace_printk".to_string()
                } else {
                    format!("map {}", l.map)
                };
                if args.json {
                    outln!(
                        "{}",
                        json!({ "lost": { "stream": stream, "total": l.lost, "new": l.lost - prev } })
                    );
                } else {
                    errln!(
                        "{stream}: {} records lost ({} in total)",
                        l.lost - prev,
                        l.lost
                    );
                }
            }
        }
    }
    rt.subscribe(Vec::new(), false)?;
    if !args.json {
        errln!("{seen} records, {} lost", lost_seen.values().sum::<u64>());
    }
    Ok(())
}
