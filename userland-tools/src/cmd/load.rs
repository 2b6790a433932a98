//! `ktrace load`: build (for a probe crate), parse, resolve kprobe targets
//! against the kernel ELF, load into the running kernel, and attach every
//! program where its section says.
//!
//! What a client loads is freed when the client goes; `ktrace load` is one
//! command, so it pins what it loads, under the object's name unless
//! `--pin NAME` says otherwise (bpftool pins for the same reason). `ktrace
//! unload NAME` frees it; `ktrace pin list` shows what is pinned.
//!
//! ```text
//! ktrace load examples/count-calls
//! ktrace load probe.bpf.o --no-attach --json --pin probe2
//! ```

use std::path::PathBuf;

use ktrace_abi::bpf::{LinkTarget, LoadOptions};
use probe_sdk::runtime::{self, Runtime, RuntimeError};

use super::bpf_common::type_name;
use crate::kernel::connect;

/// Arguments of `ktrace load`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A probe crate directory (built first) or an eBPF object file.
    pub path: PathBuf,
    /// Load without attaching.
    #[arg(long)]
    pub no_attach: bool,
    /// Pin the object as NAME (default: the object's name). A pinned object
    /// stays loaded after this command, until `ktrace unload NAME`.
    #[arg(long, value_name = "NAME")]
    pub pin: Option<String>,
    /// Do not pin: the object is freed as soon as this command exits (a
    /// check that it loads and attaches).
    #[arg(long, conflicts_with = "pin")]
    pub no_pin: bool,
    /// The kernel ELF to resolve kprobe targets against (default: as `ktrace symbols`).
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Verifier log level (0-2); the log is printed.
    #[arg(long, default_value_t = 0)]
    pub log_level: u8,
    /// Instructions one run may execute (0: the kernel's default).
    #[arg(long, default_value_t = 0)]
    pub insn_budget: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One line per link target.
pub fn link_target(t: &LinkTarget) -> String {
    match t {
        LinkTarget::Kprobe {
            function,
            offset: 0,
            ..
        } => format!("kprobe {function}"),
        LinkTarget::Kprobe {
            function, offset, ..
        } => format!("kprobe {function}+{offset:#x}"),
        LinkTarget::Kretprobe { function, .. } => format!("kretprobe {function}"),
        LinkTarget::Tracepoint { category, name } => format!("tracepoint {category}:{name}"),
        LinkTarget::PerfEvent { sample_hz } => format!("perf_event {sample_hz} Hz"),
    }
}

/// Run `ktrace load`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let elf = match &args.kernel {
        Some(p) => p.clone(),
        None => super::symbols::kernel_elf(None)?,
    };
    let quiet = args.json;
    let prepared = runtime::prepare(&args.path, &elf, &mut |line| {
        if !quiet {
            errln!("{line}");
        }
    })?;
    let mut client = connect(vm_name, "ktrace load")?;
    let mut rt = Runtime::new(&mut client);
    let options = LoadOptions {
        log_level: args.log_level,
        insn_budget: args.insn_budget,
    };
    let pin = if args.no_pin {
        None
    } else {
        Some(args.pin.clone().unwrap_or_else(|| prepared.name.clone()))
    };
    let loaded = match rt.load_object_pinned(
        &prepared.name,
        prepared.object.into_load(),
        !args.no_attach,
        options,
        pin.clone(),
    ) {
        Ok(l) => l,
        Err(RuntimeError::Rejected(r)) => {
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&*r)?);
            } else if !r.report.log.is_empty() {
                errln!("{}", r.report.log.trim_end());
            }
            anyhow::bail!(
                "the kernel verifier rejected program `{}` (section `{}`):\n{}",
                r.program,
                r.section,
                r.report.message.as_deref().unwrap_or("(no message)")
            );
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&loaded)?);
        return Ok(());
    }
    match &pin {
        Some(p) => outln!(
            "loaded `{}` as object {}, pinned as `{p}` (free it with `ktrace unload {p}`)",
            prepared.name,
            loaded.object.id
        ),
        None => outln!(
            "loaded `{}` as object {}, not pinned: freed when this command exits",
            prepared.name,
            loaded.object.id
        ),
    }
    for m in &loaded.maps {
        outln!(
            "  map  {:>3}  {:<16} {:<14} key {} B  value {} B  max {}  ({} bytes)",
            m.id,
            m.name,
            type_name(m.map_type),
            m.key_size,
            m.value_size,
            m.max_entries,
            m.memory_bytes
        );
    }
    for p in &loaded.programs {
        outln!(
            "  prog {:>3}  {:<16} {:<40} {} insns, verified in {} insns processed ({} us)",
            p.id,
            p.name,
            p.section,
            p.insns,
            p.verifier.insns_processed,
            p.verifier.time_ns / 1000
        );
        if args.log_level > 0 && !p.verifier.log.is_empty() {
            outln!("{}", p.verifier.log.trim_end());
        }
    }
    for l in &loaded.links {
        outln!(
            "  link {:>3}  prog {}  {}",
            l.id,
            l.prog,
            link_target(&l.target)
        );
    }
    Ok(())
}
