//! `biolatency`: block I/O latency as log2 histograms, read from the
//! embedded `examples/biolatency` probe's maps.

pub mod run;

use std::collections::BTreeMap;

use ktrace_abi::bpf::MapEntry;
use probe_sdk::runtime::Runtime;
use serde_json::json;

use crate::kernel::{c_str, disk_name, LoadedProbe};
use crate::report::hist;

/// Slots of the probe's log2 histograms.
pub const SLOTS: usize = 65;

/// What to measure and how to split it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Start at `block_rq_insert` instead of `block_rq_issue` (`-Q`).
    pub queued: bool,
    /// Milliseconds instead of microseconds (`-m`).
    pub millis: bool,
    /// One histogram per disk (`-D`).
    pub per_disk: bool,
    /// One histogram per operation (`-F`).
    pub per_flags: bool,
    /// Only this disk (`-d DISK`: its `dev`, major << 20 | minor).
    pub disk: Option<u32>,
    /// The average, total and count after each histogram (`-e`).
    pub extension: bool,
}

impl Options {
    /// The unit column header, as BCC prints it.
    pub fn unit(&self) -> &'static str {
        if self.millis {
            "msecs"
        } else {
            "usecs"
        }
    }

    /// The `CONFIG` map settings the probe reads: `[0]` the switches,
    /// `[1]` the disk to trace. The per-disk and per-operation histograms
    /// and `-e`'s sums are only kept when asked for (bits 3, 4 and 5), as
    /// BCC compiles them in only then: each costs map updates on every
    /// request.
    pub fn settings(&self) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let bits = u64::from(self.queued)
            | (u64::from(self.millis) << 1)
            | (u64::from(self.disk.is_some()) << 2)
            | (u64::from(self.per_disk) << 3)
            | (u64::from(self.per_flags) << 4)
            | (u64::from(self.extension) << 5);
        let entry = |i: u32, v: u64| ("CONFIG", i.to_le_bytes().to_vec(), v.to_le_bytes().to_vec());
        vec![entry(0, bits), entry(1, u64::from(self.disk.unwrap_or(0)))]
    }

    /// The probe's program that this run leaves unattached: the start of
    /// the span is `block_rq_insert` with `-Q`, else `block_rq_issue`, and,
    /// as BCC attaches only the start probe it uses, the other one would
    /// run on every request for nothing.
    pub fn unused_program(&self) -> &'static str {
        if self.queued {
            "rq_issue"
        } else {
            "rq_insert"
        }
    }
}

/// Histograms read from the probe: slot counts, 65 per histogram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histograms {
    pub total: Vec<u64>,
    /// By disk name.
    pub by_disk: BTreeMap<String, Vec<u64>>,
    /// By operation (`rwbs` decoded: `Read`, `Write`, `Sync-Write`, ...).
    pub by_flags: BTreeMap<String, Vec<u64>>,
    /// The sum of the latencies counted, in the histograms' unit (`-e`).
    pub sum: u64,
    /// How many latencies `sum` adds up.
    pub sum_count: u64,
}

impl Histograms {
    /// Requests counted in the overall histogram.
    pub fn count(&self) -> u64 {
        hist::total(&self.total)
    }

    /// What was counted since `earlier`, a previous read of the same
    /// maps. Interval mode prints these differences instead of zeroing
    /// the maps after each read: a request that completes between a read
    /// and a reset would be lost, one counted between two reads cannot.
    pub fn since(&self, earlier: &Histograms) -> Histograms {
        let minus = |now: &[u64], then: Option<&Vec<u64>>| -> Vec<u64> {
            now.iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(then.and_then(|t| t.get(i)).copied().unwrap_or(0)))
                .collect()
        };
        let keyed = |now: &BTreeMap<String, Vec<u64>>, then: &BTreeMap<String, Vec<u64>>| {
            now.iter()
                .map(|(k, v)| (k.clone(), minus(v, then.get(k))))
                .filter(|(_, v)| v.iter().any(|&c| c != 0))
                .collect()
        };
        Histograms {
            total: minus(&self.total, Some(&earlier.total)),
            by_disk: keyed(&self.by_disk, &earlier.by_disk),
            by_flags: keyed(&self.by_flags, &earlier.by_flags),
            sum: self.sum.saturating_sub(earlier.sum),
            sum_count: self.sum_count.saturating_sub(earlier.sum_count),
        }
    }
}

/// Linux's `rwbs` letters as BCC's `-F` names them: `R` → `Read`, `WS` →
/// `Sync-Write`, `F` → `Flush`, `RA` → `ReadAhead-Read`.
pub fn flags_name(rwbs: &str) -> String {
    let mut prefixes = Vec::new();
    let mut op = "";
    for c in rwbs.chars() {
        match c {
            'R' => op = "Read",
            'W' => op = "Write",
            'D' => op = "Discard",
            'N' => op = "None",
            'F' => prefixes.push("Flush"),
            'S' => prefixes.push("Sync"),
            'M' => prefixes.push("Metadata"),
            'A' => prefixes.push("ReadAhead"),
            'E' => prefixes.push("Secure"),
            _ => {}
        }
    }
    if op.is_empty() && prefixes == ["Flush"] {
        return "Flush".into();
    }
    if op.is_empty() && prefixes.is_empty() {
        return if rwbs.is_empty() {
            "Unknown".into()
        } else {
            rwbs.into()
        };
    }
    let mut parts: Vec<&str> = prefixes;
    if !op.is_empty() {
        parts.push(op);
    }
    parts.join("-")
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Adds keyed-histogram entries (`HistKey { key, slot }` → count) into
/// per-key slot vectors, naming each key with `name`.
fn keyed(
    entries: &[MapEntry],
    key_size: usize,
    name: impl Fn(&[u8]) -> String,
) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // `HistKey<K>` is `#[repr(C)]`: the key, then the u32 slot at the next
    // 4-byte boundary.
    let slot_at = key_size;
    for e in entries {
        let (Some(slot), Some(count)) = (u32_at(&e.key, slot_at), u64_at(&e.value, 0)) else {
            continue;
        };
        let slot = slot as usize;
        if slot >= SLOTS || count == 0 {
            continue;
        }
        let row = out
            .entry(name(&e.key[..key_size]))
            .or_insert_with(|| vec![0; SLOTS]);
        row[slot] += count;
    }
    out
}

/// Reads the histograms. `disks` names devices (see [`super::disk_names`]).
pub fn read(
    rt: &mut Runtime,
    probe: &LoadedProbe,
    disks: &[(u32, String)],
) -> anyhow::Result<Histograms> {
    let mut total = vec![0u64; SLOTS];
    for e in rt.map_dump(probe.map("LATENCY_US")?.id, 256)? {
        if let (Some(i), Some(v)) = (u32_at(&e.key, 0), u64_at(&e.value, 0)) {
            if let Some(s) = total.get_mut(i as usize) {
                *s = v;
            }
        }
    }
    let by_disk = keyed(
        &rt.map_dump(probe.map("LATENCY_US_BY_DISK")?.id, 256)?,
        4,
        |k| disk_name(disks, u32_at(k, 0).unwrap_or(0)),
    );
    let by_flags = keyed(
        &rt.map_dump(probe.map("LATENCY_US_BY_FLAGS")?.id, 256)?,
        4,
        |k| flags_name(&c_str(k)),
    );
    let mut extension = [0u64; 2];
    for e in rt.map_dump(probe.map("EXTENSION")?.id, 2)? {
        if let (Some(i), Some(v)) = (u32_at(&e.key, 0), u64_at(&e.value, 0)) {
            if let Some(slot) = extension.get_mut(i as usize) {
                *slot = v;
            }
        }
    }
    Ok(Histograms {
        total,
        by_disk,
        by_flags,
        sum: extension[0],
        sum_count: extension[1],
    })
}

/// The histograms in BCC's shape: one table, or one per disk (`disk =
/// vda`) or per operation (`operation = Read`).
pub fn render(h: &Histograms, opts: &Options) -> String {
    let unit = opts.unit();
    let mut out = String::new();
    let groups = if opts.per_disk {
        Some(("disk", &h.by_disk))
    } else if opts.per_flags {
        Some(("operation", &h.by_flags))
    } else {
        None
    };
    match groups {
        None => out.push_str(&hist::render(unit, &hist::buckets(&h.total))),
        Some((what, groups)) => {
            for (i, (name, slots)) in groups.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(&format!("{what} = {name}\n"));
                out.push_str(&hist::render(unit, &hist::buckets(slots)));
            }
        }
    }
    // BCC's `-e` line, after the histograms, when something was counted.
    if opts.extension && h.sum_count > 0 {
        out.push_str(&format!(
            "\navg = {} {unit}, total: {} {unit}, count: {}\n",
            h.sum / h.sum_count,
            h.sum,
            h.sum_count
        ));
    }
    out
}

/// The histograms as JSON: `{"unit", "total", "buckets": [{low, high,
/// count}], "disks"/"operations": {name: buckets}}`.
pub fn to_json(h: &Histograms, opts: &Options) -> serde_json::Value {
    let groups = |g: &BTreeMap<String, Vec<u64>>| -> serde_json::Value {
        g.iter()
            .map(|(k, v)| (k.clone(), json!(hist::buckets(v))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut v = json!({
        "unit": opts.unit(),
        "from": if opts.queued { "block_rq_insert" } else { "block_rq_issue" },
        "total": h.count(),
        "buckets": hist::buckets(&h.total),
    });
    if opts.per_disk {
        v["disks"] = groups(&h.by_disk);
    }
    if opts.per_flags {
        v["operations"] = groups(&h.by_flags);
    }
    if opts.extension {
        v["extension"] = json!({
            "avg": h.sum.checked_div(h.sum_count).unwrap_or(0),
            "total": h.sum,
            "count": h.sum_count,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_follow_bcc() {
        assert_eq!(flags_name("R"), "Read");
        assert_eq!(flags_name("W"), "Write");
        assert_eq!(flags_name("WS"), "Sync-Write");
        assert_eq!(flags_name("F"), "Flush");
        assert_eq!(flags_name("FWS"), "Flush-Sync-Write");
        assert_eq!(flags_name("RA"), "ReadAhead-Read");
        assert_eq!(flags_name(""), "Unknown");
    }

    #[test]
    fn an_interval_is_the_difference_of_two_reads() {
        let slots = |pairs: &[(usize, u64)]| {
            let mut v = vec![0u64; SLOTS];
            for &(i, c) in pairs {
                v[i] = c;
            }
            v
        };
        let first = Histograms {
            total: slots(&[(3, 5), (4, 1)]),
            by_disk: [("vda".to_string(), slots(&[(3, 5), (4, 1)]))].into(),
            by_flags: [("Read".to_string(), slots(&[(3, 5), (4, 1)]))].into(),
            sum: 60,
            sum_count: 6,
        };
        let second = Histograms {
            total: slots(&[(3, 7), (4, 1), (9, 2)]),
            by_disk: [
                ("vda".to_string(), slots(&[(3, 5), (4, 1)])),
                ("vdb".to_string(), slots(&[(3, 2), (9, 2)])),
            ]
            .into(),
            by_flags: [
                ("Read".to_string(), slots(&[(3, 7), (4, 1)])),
                ("Write".to_string(), slots(&[(9, 2)])),
            ]
            .into(),
            sum: 1100,
            sum_count: 10,
        };
        let d = second.since(&first);
        assert_eq!(d.total, slots(&[(3, 2), (9, 2)]));
        assert_eq!(d.count(), 4);
        assert_eq!((d.sum, d.sum_count), (1040, 4));
        // A disk with nothing new is left out, as BCC prints only disks
        // that saw I/O in the interval.
        assert_eq!(d.by_disk.keys().collect::<Vec<_>>(), ["vdb"]);
        assert_eq!(d.by_flags["Read"], slots(&[(3, 2)]));
        assert_eq!(d.by_flags["Write"], slots(&[(9, 2)]));
        assert_eq!(second.since(&Histograms::default()), second);
    }

    #[test]
    fn keyed_entries_sum_per_name() {
        let entry = |dev: u32, slot: u32, count: u64| MapEntry {
            key: [dev.to_le_bytes(), slot.to_le_bytes()].concat(),
            value: count.to_le_bytes().to_vec(),
        };
        let disks = vec![(252 << 20, "vda".to_string())];
        let got = keyed(
            &[
                entry(252 << 20, 3, 5),
                entry(252 << 20, 4, 2),
                entry(7, 1, 1),
            ],
            4,
            |k| disk_name(&disks, u32_at(k, 0).unwrap()),
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got["vda"][3], 5);
        assert_eq!(got["vda"][4], 2);
        assert_eq!(got["0:7"][1], 1);
    }
}
