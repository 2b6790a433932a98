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

use ktrace_abi::bpf::{Engine, LinkTarget, LoadOptions};
use probe_sdk::runtime::{self, Runtime, RuntimeError};

use super::bpf_common::type_name;
use crate::kernel::connect;

/// Arguments of `ktrace load`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A probe crate directory (built first) or an eBPF object file.
    pub path: PathBuf,
    /// Load and verify without attaching; kprobe targets are not resolved,
    /// so an object made for another kernel (`kprobe/do_sys_open`) loads.
    #[arg(long)]
    pub no_attach: bool,
    /// A target several functions share (`Noop::name`, a line the compiler
    /// duplicated in several functions) attaches to every one of them, as
    /// `ktrace symbols --all` lists them.
    #[arg(long)]
    pub all: bool,
    /// Attach kprobe program PROG (its function or section name) to TARGET
    /// instead of what its section says, e.g. `--attach
    /// kprobe/do_sys_open=RequestQueue::submit_bio` (libbpf's
    /// `bpf_program__attach_kprobe` with another function). Repeatable.
    #[arg(long, value_name = "PROG=TARGET", value_parser = parse_retarget, conflicts_with = "no_attach")]
    pub attach: Vec<(String, String)>,
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
    /// Run the programs in the interpreter instead of JIT-compiling them
    /// (compiled is the default, as with Linux's `bpf_jit_enable=1`).
    #[arg(long)]
    pub interpreter: bool,
    /// JIT-compile with constant blinding: no immediate of the program
    /// appears verbatim in executable memory (Linux's `bpf_jit_harden`).
    #[arg(long, conflicts_with = "interpreter")]
    pub jit_harden: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `PROG=TARGET` of `--attach`; the split is at the first `=` (Rust paths
/// have none).
fn parse_retarget(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((p, t)) if !p.is_empty() && !t.trim().is_empty() => {
            Ok((p.to_string(), t.trim().to_string()))
        }
        _ => Err(format!(
            "`{s}`: write PROG=TARGET, e.g. kprobe/do_sys_open=RequestQueue::submit_bio"
        )),
    }
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
        // Nothing is resolved without attaching: no kernel ELF is needed.
        None if args.no_attach => super::symbols::kernel_elf(None).unwrap_or_default(),
        None => super::symbols::kernel_elf(None)?,
    };
    let quiet = args.json;
    let opts = runtime::PrepareOptions {
        no_resolve: args.no_attach,
        all: args.all,
        retarget: args.attach.clone(),
    };
    let prepared = runtime::prepare_with(&args.path, &elf, &opts, &mut |line| {
        if !quiet {
            errln!("{line}");
        }
    })
    .map_err(|e| match e {
        // A target this kernel lacks (an object written for Linux): say
        // how to load it anyway.
        RuntimeError::Prepare(m) if m.contains(": cannot attach to `") => anyhow::anyhow!(
            "{m}\nto attach the program elsewhere: --attach PROG=TARGET; to load and verify it without attaching: --no-attach"
        ),
        e => e.into(),
    })?;
    let mut client = connect(vm_name, "ktrace load")?;
    let mut rt = Runtime::new(&mut client);
    let options = LoadOptions {
        log_level: args.log_level,
        insn_budget: args.insn_budget,
        engine: if args.interpreter {
            Some(Engine::Interpreter)
        } else if args.jit_harden {
            Some(Engine::JitHardened)
        } else {
            None
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_takes_prog_equals_target() {
        assert_eq!(
            parse_retarget("kprobe/do_sys_open=RequestQueue::submit_bio").unwrap(),
            (
                "kprobe/do_sys_open".to_string(),
                "RequestQueue::submit_bio".to_string()
            )
        );
        // A target may hold `=`-free spaces (`<T as Trait>::f`).
        assert_eq!(
            parse_retarget("p=<Deadline<P> as Scheduler<P>>::dispatch")
                .unwrap()
                .1,
            "<Deadline<P> as Scheduler<P>>::dispatch"
        );
        for bad in ["p", "=f", "p=", "p= "] {
            assert_eq!(
                parse_retarget(bad).unwrap_err(),
                format!(
                    "`{bad}`: write PROG=TARGET, e.g. kprobe/do_sys_open=RequestQueue::submit_bio"
                )
            );
        }
    }
}
