//! `ktrace check <object>`: verify an eBPF object on the host with the
//! kernel's own verifier and platform description, and point each rejection
//! at its source line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use probe_sdk::check::{check_object, CheckOptions, Outcome, Verdict};
use probe_sdk::object;

/// Verify an eBPF object as the kernel would.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The object (`<name>.bpf.o` from `ktrace build`, or clang's output).
    pub object: PathBuf,
    /// Also resolve kprobe targets against this kernel ELF.
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Only this program.
    #[arg(long, value_name = "NAME")]
    pub program: Option<String>,
    /// Linux's privileged policy (pointer leaks, uninitialised stack reads).
    #[arg(long)]
    pub privileged: bool,
    /// Print the verifier log (1: branches, 2: every instruction).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub log_level: u8,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Also load each program into the host's Linux kernel (root) and show
    /// its verdict, for comparison; compare with `--privileged`.
    #[arg(long)]
    pub linux: bool,
}

/// Verify, print the verdicts, fail if any program is rejected.
pub fn run(args: Args) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.object)
        .with_context(|| format!("reading {}", args.object.display()))?;
    let mut obj = object::parse(&bytes).with_context(|| format!("{}", args.object.display()))?;
    if let Some(kernel) = &args.kernel {
        let index = ktrace_symbols::SymbolIndex::open(kernel)
            .with_context(|| format!("reading kernel symbols from {}", kernel.display()))?;
        obj.resolve_targets(&index)?;
    }
    if let Some(name) = &args.program {
        if obj.program(name).is_none() {
            let names: Vec<&str> = obj.programs.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "no program `{name}` in {} (it has: {})",
                args.object.display(),
                names.join(", ")
            );
        }
        obj.programs.retain(|p| &p.name == name);
    }
    let opts = CheckOptions {
        privileged: args.privileged,
        log_level: args.log_level,
    };
    let verdicts = check_object(&obj, opts);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&json(&verdicts))?);
    } else {
        for v in &verdicts {
            if !v.log.is_empty() {
                out!("{}", v.log);
            }
            outln!("{v}");
            if let Outcome::Rejected(r) = &v.outcome {
                if let Some(snippet) = r.location.as_deref().and_then(source_snippet) {
                    outln!("{snippet}");
                }
            }
            if args.linux {
                outln!("  {}", linux_verdict(&obj, &v.program)?);
            }
        }
    }
    let rejected = verdicts.iter().filter(|v| !v.accepted()).count();
    if rejected > 0 {
        bail!("{rejected} of {} programs rejected", verdicts.len());
    }
    Ok(())
}

/// Linux's verdict on one program, as one line.
fn linux_verdict(obj: &object::Object, program: &str) -> anyhow::Result<String> {
    use probe_sdk::linux_bpf::{verify_on_linux, LinuxVerdict};
    let Some(p) = obj.program(program) else {
        return Ok(String::new());
    };
    Ok(match verify_on_linux(obj, p)? {
        LinuxVerdict::Accepted => "host Linux: accepted".to_string(),
        LinuxVerdict::Rejected { errno, reason, .. } => {
            format!("host Linux: REJECTED (errno {errno}): {reason}")
        }
    })
}

/// The source line a `file:line` location names, when the file is
/// readable from here.
fn source_snippet(location: &str) -> Option<String> {
    // `src/lib.rs:22` or `src/lib.rs:22 (inlined ...)`.
    let position = location.split(' ').next()?;
    let (file, line) = position.rsplit_once(':')?;
    let line: usize = line.parse().ok()?;
    let text = std::fs::read_to_string(Path::new(file)).ok()?;
    let src = text.lines().nth(line.checked_sub(1)?)?;
    Some(format!("  {line:>5} | {src}"))
}

fn json(verdicts: &[Verdict]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|v| match &v.outcome {
            Outcome::Accepted {
                insns_processed,
                peak_states,
            } => serde_json::json!({
                "program": v.program, "section": v.section, "insns": v.insns,
                "accepted": true, "insns_processed": insns_processed, "peak_states": peak_states,
            }),
            Outcome::Rejected(r) => serde_json::json!({
                "program": v.program, "section": v.section, "insns": v.insns,
                "accepted": false, "insn": r.insn, "insn_text": r.insn_text,
                "message": r.message, "location": r.location, "state": r.state, "rule": r.rule,
                "verifier_message": r.verifier_message,
            }),
        })
        .collect();
    serde_json::Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_sdk::check::Rejection;

    #[test]
    fn snippets_come_from_the_named_line() {
        let dir = std::env::temp_dir().join(format!("ktrace-check-snippet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lib.rs");
        std::fs::write(&file, "fn a() {}\n    let x = *p;\n").unwrap();
        let loc = format!("{}:2 (inlined ebpf/src/helpers.rs:70)", file.display());
        assert_eq!(
            source_snippet(&loc).as_deref(),
            Some("      2 |     let x = *p;")
        );
        assert_eq!(source_snippet(&format!("{}:9", file.display())), None);
        assert_eq!(source_snippet("no-such-file.rs:1"), None);
        assert_eq!(source_snippet("garbage"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_lists_each_verdict() {
        let verdicts = vec![
            Verdict {
                program: "ok".into(),
                section: "perf_event".into(),
                insns: 2,
                outcome: Outcome::Accepted {
                    insns_processed: 2,
                    peak_states: 0,
                },
                log: String::new(),
                stats: Default::default(),
            },
            Verdict {
                program: "bad".into(),
                section: "kprobe/f".into(),
                insns: 3,
                outcome: Outcome::Rejected(Rejection {
                    insn: Some(1),
                    insn_text: "r0 = *(u64 *)(r1 + 0)".into(),
                    message: "m".into(),
                    location: Some("src/lib.rs:3".into()),
                    state: "R1=scalar()".into(),
                    rule: "MemoryAccess".into(),
                    verifier_message: "insn 1 (src/lib.rs:3): r0 = *(u64 *)(r1 + 0): m".into(),
                }),
                log: String::new(),
                stats: Default::default(),
            },
        ];
        let j = json(&verdicts);
        assert_eq!(j[0]["accepted"], true);
        assert_eq!(j[0]["insns_processed"], 2);
        assert_eq!(j[1]["accepted"], false);
        assert_eq!(j[1]["insn"], 1);
        assert_eq!(j[1]["location"], "src/lib.rs:3");
        assert_eq!(j[1]["rule"], "MemoryAccess");
    }
}
