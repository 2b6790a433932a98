//! `ktrace map list|dump|lookup|update|delete|free`: read, change and free
//! maps.
//!
//! Maps created with declared types (a Rust probe's `HashMap<u64, Start>`,
//! read from its debug information at load time) print typed: structs as
//! `{ field: value, ... }`, C strings in byte arrays as strings, enums by
//! variant; `--json` gives objects. They take typed input too: integers,
//! variant names, or JSON for structs (`'{"pid": 7}'`, missing fields zero).
//! Untyped keys and values are integers when they are 1, 2, 4 or 8 bytes
//! (stored little-endian, as the probe sees them), else `hex:BYTES`, which
//! every map accepts. A 65-slot array of `u64` (a probe crate's
//! `Log2Histogram`) can be printed as a histogram with `--hist`.

use probe_sdk::runtime::Runtime;
use serde_json::json;

use ktrace_abi::bpf::{map_type, MapEntry, MapInfo};

use super::bpf_common::{
    find_map, json_entry, parse_typed, parse_value, per_cpu_copies, per_cpu_sum, show_key,
    show_one, show_value, table, type_name,
};
use crate::kernel::connect;

/// Arguments of `ktrace map`.
pub type Args = super::bpf_common::ObjectArgs<Command>;

/// `ktrace map` subcommands. MAP is an id or a unique name.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Every map: type, sizes, entries, memory, stream counters.
    List {
        /// Also print each map's declared key, value and record types.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Every entry (fetched in batches).
    Dump {
        map: String,
        /// Print a 65-slot u64 array as a log2 histogram.
        #[arg(long)]
        hist: bool,
        /// Unit shown in the histogram.
        #[arg(long, default_value = "ns")]
        unit: String,
        /// Entries per round trip.
        #[arg(long, default_value_t = 4096)]
        batch: u32,
    },
    /// One value.
    Lookup { map: String, key: String },
    /// Create or change one entry. Typed maps take integers, enum variant
    /// names, or JSON for structs and arrays (`'{"pid": 7}'`, fields left
    /// out are zero); every map takes `hex:BYTES`.
    Update {
        map: String,
        key: String,
        value: String,
        /// any (BPF_ANY), noexist (BPF_NOEXIST) or exist (BPF_EXIST).
        #[arg(long, default_value = "any")]
        flags: String,
    },
    /// Delete one entry.
    Delete { map: String, key: String },
    /// Free a map: it leaves the table at once; programs that use it keep
    /// it until they are unloaded, then its memory comes back.
    Free { map: String },
}

/// A per-CPU map's entries as a table: the key, each CPU's value, and
/// their sum when the values are integers (`-` otherwise), like
/// bpftool's `value (CPU 00)` lines side by side.
fn per_cpu_table(m: &MapInfo, entries: &[MapEntry]) -> String {
    let stride = (m.value_size as usize).div_ceil(8) * 8;
    let cpus = (m.host_value_size as usize / stride.max(1)).max(1);
    let mut header = vec!["KEY".to_string()];
    header.extend((0..cpus).map(|c| format!("CPU{c}")));
    header.push("SUM".into());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![show_key(m, &e.key)];
            match per_cpu_copies(m, &e.value) {
                Some(copies) => row.extend(copies.iter().map(|c| show_one(m, c))),
                None => row.push(show_value(m, &e.value)),
            }
            row.push(per_cpu_sum(m, &e.value).map_or("-".into(), |s| s.to_string()));
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut out = table(&header, &rows);
    let plural = if cpus == 1 { "" } else { "s" };
    out.push_str(&format!("{} entries, {cpus} CPU{plural}\n", entries.len()));
    out
}

/// Run `ktrace map`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let mut client = connect(vm_name, "ktrace map")?;
    let mut rt = Runtime::new(&mut client);
    match args.command {
        Command::List { verbose } => {
            let maps = rt.maps()?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&maps)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = maps
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.name.clone(),
                        type_name(m.map_type).into(),
                        m.key_size.to_string(),
                        m.value_size.to_string(),
                        m.max_entries.to_string(),
                        m.entries.map_or("-".into(), |e| e.to_string()),
                        m.memory_bytes.to_string(),
                        if matches!(m.map_type, 4 | 27) {
                            format!("{}/{}", m.consumed, m.lost)
                        } else {
                            "-".into()
                        },
                        m.programs
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &[
                        "ID",
                        "NAME",
                        "TYPE",
                        "KEY",
                        "VALUE",
                        "MAX",
                        "ENTRIES",
                        "BYTES",
                        "READ/LOST",
                        "PROGS"
                    ],
                    &rows
                )
            );
            // What the table has no room for: where a perf array lost
            // records, and program operations that found a map locked.
            for m in &maps {
                if m.lost_per_cpu.iter().any(|&l| l > 0) {
                    let each: Vec<String> = m
                        .lost_per_cpu
                        .iter()
                        .enumerate()
                        .map(|(cpu, l)| format!("cpu{cpu} {l}"))
                        .collect();
                    outln!("{} {} lost per CPU: {}", m.id, m.name, each.join(", "));
                }
                if m.busy > 0 {
                    outln!(
                        "{} {}: {} program operations found the map locked (lookups NULL, updates EBUSY)",
                        m.id,
                        m.name,
                        m.busy
                    );
                }
            }
            if verbose {
                for m in &maps {
                    for (role, d) in [
                        ("key", &m.types.key),
                        ("value", &m.types.value),
                        ("record", &m.types.record),
                    ] {
                        if let Some(d) = d {
                            outln!(
                                "{} {} {role}: {}",
                                m.id,
                                m.name,
                                probe_sdk::typed::describe(d)
                            );
                        }
                    }
                }
            }
        }
        Command::Dump {
            map,
            hist,
            unit,
            batch,
        } => {
            let m = find_map(&mut rt, &map)?;
            let entries = rt.map_dump(m.id, batch)?;
            if hist {
                if m.map_type != 2 || m.value_size != 8 {
                    anyhow::bail!(
                        "map `{}` is not an array of u64 slots; --hist needs a Log2Histogram",
                        m.name
                    );
                }
                let slots: Vec<u64> = entries
                    .iter()
                    .map(|e| u64::from_le_bytes(e.value[..8].try_into().unwrap_or([0; 8])))
                    .collect();
                if args.json {
                    outln!(
                        "{}",
                        json!({ "map": m.name, "slots": slots, "total": crate::report::hist::total(&slots) })
                    );
                } else {
                    out!(
                        "{}",
                        crate::report::hist::render(&unit, &crate::report::hist::buckets(&slots))
                    );
                }
                return Ok(());
            }
            if args.json {
                let v: Vec<_> = entries
                    .iter()
                    .map(|e| json_entry(&m, &e.key, &e.value))
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else if map_type::is_per_cpu(m.map_type) {
                out!("{}", per_cpu_table(&m, &entries));
            } else {
                for e in &entries {
                    outln!("{}: {}", show_key(&m, &e.key), show_value(&m, &e.value));
                }
                outln!("{} entries", entries.len());
            }
        }
        Command::Lookup { map, key } => {
            let m = find_map(&mut rt, &map)?;
            let k = parse_typed(m.types.key.as_ref(), &key, m.key_size as usize, "key")?;
            match rt.map_lookup(m.id, &k)? {
                Some(v) if args.json => outln!("{}", json_entry(&m, &k, &v)),
                Some(v) => outln!("{}: {}", show_key(&m, &k), show_value(&m, &v)),
                None => anyhow::bail!("map `{}` has no key {key}", m.name),
            }
        }
        Command::Update {
            map,
            key,
            value,
            flags,
        } => {
            let m = find_map(&mut rt, &map)?;
            let f = match flags.as_str() {
                "any" => 0,
                "noexist" => 1,
                "exist" => 2,
                other => anyhow::bail!("--flags {other}: expected any, noexist or exist"),
            };
            let k = parse_typed(m.types.key.as_ref(), &key, m.key_size as usize, "key")?;
            let v = parse_value(&m, &value)?;
            rt.map_update(m.id, &k, &v, f)?;
            if args.json {
                outln!("{}", json!({ "updated": true }));
            }
        }
        Command::Delete { map, key } => {
            let m = find_map(&mut rt, &map)?;
            let k = parse_typed(m.types.key.as_ref(), &key, m.key_size as usize, "key")?;
            rt.map_delete(m.id, &k)?;
            if args.json {
                outln!("{}", json!({ "deleted": true }));
            }
        }
        Command::Free { map } => {
            let m = find_map(&mut rt, &map)?;
            rt.map_free(m.id)?;
            if args.json {
                outln!("{}", json!({ "freed": m.id, "programs": m.programs }));
            } else if m.programs.is_empty() {
                outln!("freed map {} ({}, {} bytes)", m.id, m.name, m.memory_bytes);
            } else {
                outln!(
                    "freed map {} ({}): its {} bytes come back when programs {} are unloaded",
                    m.id,
                    m.name,
                    m.memory_bytes,
                    m.programs
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    Ok(())
}
