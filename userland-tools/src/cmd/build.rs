//! `ktrace build <probe crate>`: compile a Rust probe crate into an eBPF
//! object (`<name>.bpf.o`) and summarise what it contains.

use std::path::PathBuf;

use anyhow::Context;
use probe_sdk::build::{build, BuildOptions};
use probe_sdk::object;

/// Compile a probe crate written in Rust to an eBPF object.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The probe crate's directory (or its Cargo.toml).
    #[arg(default_value = ".")]
    pub crate_dir: PathBuf,
    /// Directory for `<name>.bpf.o` (default: the current directory).
    #[arg(short = 'o', long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Cargo target directory (default: `<crate>/target`).
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
    /// Then verify every program as `ktrace check` does (fails if one is
    /// rejected).
    #[arg(long)]
    pub check: bool,
    /// With --check: the kernel ELF kprobe targets are resolved against,
    /// so that a misspelt target fails here with suggestions (default: as
    /// `ktrace symbols`; without one, targets are checked at load time).
    #[arg(long, value_name = "ELF", requires = "check")]
    pub kernel: Option<PathBuf>,
    /// Only print errors (and the object's path).
    #[arg(short, long)]
    pub quiet: bool,
}

/// Build, then list the programs and maps of the result.
pub fn run(args: Args) -> anyhow::Result<()> {
    // Accept the manifest itself as well as its directory.
    let crate_dir = match args.crate_dir.file_name() {
        Some(name) if name == "Cargo.toml" && args.crate_dir.is_file() => args
            .crate_dir
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf(),
        _ => args.crate_dir.clone(),
    };
    let mut opts = BuildOptions::new(crate_dir);
    opts.out_dir = args.out_dir;
    opts.target_dir = args.target_dir;
    opts.quiet = args.quiet;
    let quiet = args.quiet;
    let out = build(&opts, &mut |line| {
        if !quiet {
            errln!("{line}");
        }
    })?;
    let bytes =
        std::fs::read(&out.object).with_context(|| format!("reading {}", out.object.display()))?;
    let obj = object::parse(&bytes).with_context(|| format!("{}", out.object.display()))?;
    if !quiet {
        for line in summary(&obj) {
            errln!("{line}");
        }
    }
    outln!("{}", out.object.display());
    if args.check {
        check_targets(&obj, args.kernel.as_deref())?;
        let verdicts = probe_sdk::check::check_object(&obj, Default::default());
        for v in &verdicts {
            errln!("{v}");
        }
        let rejected = verdicts.iter().filter(|v| !v.accepted()).count();
        if rejected > 0 {
            anyhow::bail!(
                "{rejected} of {} programs rejected by the verifier",
                verdicts.len()
            );
        }
    }
    Ok(())
}

/// Resolves the object's kprobe targets against the kernel ELF, when one
/// is at hand (every match counts: whether a shared name needs `--all` is
/// for `ktrace load` to say), so that a misspelt target is refused now
/// with the resolver's suggestions rather than at load time.
fn check_targets(obj: &object::Object, kernel: Option<&std::path::Path>) -> anyhow::Result<()> {
    let has_kprobes = obj
        .programs
        .iter()
        .any(|p| matches!(p.attach, ktrace_abi::bpf::AttachTarget::Kprobe { .. }));
    if !has_kprobes {
        return Ok(());
    }
    let elf = match kernel {
        Some(elf) => elf.to_path_buf(),
        None => {
            match super::symbols::kernel_elf(None) {
                Ok(elf) => elf,
                Err(_) => {
                    errln!("note: kprobe targets not checked: no kernel ELF at hand (pass --kernel ELF)");
                    return Ok(());
                }
            }
        }
    };
    let index = ktrace_symbols::SymbolIndex::open(&elf)
        .with_context(|| format!("reading kernel symbols from {}", elf.display()))?;
    let mut resolved = obj.clone();
    resolved.resolve_targets_with(
        &index,
        ktrace_symbols::ResolveOptions {
            all: true,
            allow_raw_address: false,
        },
    )?;
    Ok(())
}

/// One line per program and map.
pub fn summary(obj: &object::Object) -> Vec<String> {
    let mut lines = Vec::new();
    for p in &obj.programs {
        let lines_note = match &p.lines {
            Some(t) => format!(", {} line rows", t.rows.len()),
            None => String::new(),
        };
        lines.push(format!(
            "  program {:<24} {:<50} {} insns{}",
            p.name,
            p.section,
            p.insns.len() / 8,
            lines_note
        ));
    }
    for m in &obj.maps {
        lines.push(format!(
            "  map     {:<24} type {:<3} key {:<3} value {:<5} max_entries {}",
            m.name, m.map_type, m.key_size, m.value_size, m.max_entries
        ));
    }
    lines
}
