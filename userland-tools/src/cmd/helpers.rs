//! `ktrace helpers`: the BPF helpers the kernel implements, which program
//! types may call each, and the same as a C header for probes written in C.
//!
//! Everything comes from the platform description the kernel and the
//! verifier are built from (`ktrace_bpf_platform`), so no VM is needed and
//! the listing cannot disagree with what the kernel accepts.

use ktrace_bpf_platform::helper::HELPERS;
use ktrace_bpf_platform::{map_type, CHeader, Helper, ProgramType};
use serde::Serialize;

/// Arguments of `ktrace helpers`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only the helpers this program type may call.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    prog_type: Option<ProgType>,
    /// Print JSON.
    #[arg(long, conflicts_with = "c_header")]
    json: bool,
    /// Print a C header declaring every helper and map type (save it as
    /// `ktrace_helpers.h` and `#include` it).
    #[arg(long, conflicts_with = "prog_type")]
    c_header: bool,
}

/// Program types by their section prefix.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ProgType {
    Kprobe,
    Kretprobe,
    Tracepoint,
    #[value(name = "perf_event")]
    PerfEvent,
}

impl ProgType {
    const ALL: [ProgType; 4] = [
        ProgType::Kprobe,
        ProgType::Kretprobe,
        ProgType::Tracepoint,
        ProgType::PerfEvent,
    ];

    fn platform(self) -> ProgramType {
        match self {
            ProgType::Kprobe => ProgramType::Kprobe,
            ProgType::Kretprobe => ProgramType::Kretprobe,
            ProgType::Tracepoint => ProgramType::Tracepoint,
            ProgType::PerfEvent => ProgramType::PerfEvent,
        }
    }

    fn section(self) -> &'static str {
        match self {
            ProgType::Kprobe => "kprobe",
            ProgType::Kretprobe => "kretprobe",
            ProgType::Tracepoint => "tracepoint",
            ProgType::PerfEvent => "perf_event",
        }
    }
}

/// One helper as `--json` prints it.
#[derive(Serialize, Debug, PartialEq)]
pub struct HelperInfo {
    /// Linux's id (`call ID`).
    pub id: i32,
    /// `bpf_map_lookup_elem`, ...
    pub name: &'static str,
    /// The C prototype.
    pub prototype: &'static str,
    /// Section prefixes of the program types that may call it.
    pub program_types: Vec<&'static str>,
    /// Map types its map argument accepts (empty: it takes no map).
    pub map_types: Vec<&'static str>,
}

fn info(h: &Helper) -> HelperInfo {
    HelperInfo {
        id: h.id,
        name: h.name,
        prototype: h.c_prototype,
        program_types: ProgType::ALL
            .iter()
            .filter(|t| t.platform().allowed_helpers().contains(&h.id))
            .map(|t| t.section())
            .collect(),
        map_types: h.map_types.iter().map(|&t| map_type::name(t)).collect(),
    }
}

/// The helpers `prog_type` may call (all of them without one), by id.
fn listed(prog_type: Option<ProgType>) -> Vec<HelperInfo> {
    HELPERS
        .iter()
        .filter(|h| prog_type.is_none_or(|t| t.platform().allowed_helpers().contains(&h.id)))
        .map(info)
        .collect()
}

/// The table: id, name, program types, prototype (and the map types a
/// map argument accepts).
pub fn render(helpers: &[HelperInfo]) -> String {
    let mut s = format!(
        "{:<4} {:<27} {:<20} PROTOTYPE\n",
        "ID", "NAME", "PROGRAM TYPES"
    );
    for h in helpers {
        let types = if h.program_types.len() == ProgType::ALL.len() {
            "all".to_string()
        } else {
            h.program_types.join(",")
        };
        s += &format!("{:<4} {:<27} {:<20} {}", h.id, h.name, types, h.prototype);
        if !h.map_types.is_empty() {
            s += &format!("  (maps: {})", h.map_types.join(","));
        }
        s += "\n";
    }
    s
}

/// Run `ktrace helpers`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.c_header {
        out!("{CHeader}");
        return Ok(());
    }
    let helpers = listed(args.prog_type);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&helpers)?);
    } else {
        out!("{}", render(&helpers));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_func_ip_is_for_kprobes_only_and_the_rest_for_all() {
        let all = listed(None);
        assert_eq!(all.len(), HELPERS.len());
        let func_ip = all.iter().find(|h| h.name == "bpf_get_func_ip").unwrap();
        assert_eq!(func_ip.program_types, ["kprobe", "kretprobe"]);
        let tracepoint = listed(Some(ProgType::Tracepoint));
        assert_eq!(tracepoint.len(), HELPERS.len() - 1);
        assert!(tracepoint.iter().all(|h| h.name != "bpf_get_func_ip"));
        let table = render(&all);
        assert!(table.contains("bpf_ringbuf_output"), "{table}");
        assert!(table.contains("(maps: ringbuf)"), "{table}");
        assert_eq!(table.lines().count(), HELPERS.len() + 1, "{table}");
    }
}
