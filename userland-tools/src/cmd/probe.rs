//! `ktrace probe`: list, add and remove kprobes and kretprobes with the
//! kernel's built-in counting handler.

use anyhow::{bail, Context};
use clap::Subcommand;
use ktrace_abi::trace::{ProbeInfo, ProbeKind, ProbeMode, ProbeTarget, RetprobePool};
use probe_sdk::client::ConnectOptions;
use probe_sdk::trace::TraceClient;
use probe_sdk::vm::Vm;

/// Arguments of `ktrace probe`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: ProbeCommand,
}

/// The `ktrace probe` subcommands.
#[derive(Subcommand, Debug)]
pub enum ProbeCommand {
    /// Registered probes: address, symbol+offset, hits, misses, calls in
    /// flight (kretprobes), mode (int3, boosted, optimised) and why a probe
    /// is not jump-optimised; then the return-probe instance pool.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register a probe (with the counting handler).
    Add {
        /// What `ktrace symbols` resolves: `path::to::function[+offset]`
        /// (demangled, a unique suffix is enough), `file.rs:LINE` (every
        /// copy the compiler made of the line gets a probe), or a hex
        /// address (`0x...`).
        target: String,
        /// A name or line that matches several functions: a probe on every
        /// one (as `ktrace symbols --all`, bpftrace's wildcards).
        #[arg(long)]
        all: bool,
        /// A return probe instead of an instruction probe.
        #[arg(long)]
        ret: bool,
        /// Return probes: calls tracked at once (0 = kernel default).
        #[arg(long, default_value_t = 0)]
        maxactive: u32,
        /// The kernel ELF the name is resolved against (default: as `ktrace
        /// symbols`; without one the kernel takes the exact path only).
        #[arg(long, value_name = "ELF")]
        kernel: Option<std::path::PathBuf>,
    },
    /// Unregister a probe by id.
    Remove {
        /// Probe id (see `ktrace probe list`).
        id: u32,
    },
    /// The blacklist: code that can never be probed, and why.
    Blacklist,
    /// Jump optimisation of kprobes, kernel-wide: `on` optimises every
    /// eligible probe now and from now on, `off` puts every `int3` back
    /// (Linux's `debug.kprobes-optimization`); without an argument, show it.
    Optimise {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
    },
}

/// The MODE column.
pub fn mode_name(m: ProbeMode) -> &'static str {
    match m {
        ProbeMode::Int3 => "int3",
        ProbeMode::Boosted => "boosted",
        ProbeMode::Optimised => "optimised",
    }
}

/// Parse `path+0x10`, `path+16`, `path` or `0xaddr`.
pub fn parse_target(s: &str) -> anyhow::Result<ProbeTarget> {
    if let Some(hex) = s.strip_prefix("0x") {
        let addr = u64::from_str_radix(hex, 16).with_context(|| format!("bad address {s:?}"))?;
        return Ok(ProbeTarget::Address(addr));
    }
    let (name, offset) = match s.rsplit_once('+') {
        Some((n, off)) => {
            let off = match off.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => off.parse(),
            }
            .with_context(|| format!("bad offset {off:?} in {s:?}"))?;
            (n, off)
        }
        None => (s, 0),
    };
    if name.is_empty() {
        bail!("empty function name in {s:?}");
    }
    Ok(ProbeTarget::Symbol {
        name: name.to_string(),
        offset,
    })
}

/// What the user wrote, resolved the way `ktrace symbols` does (a unique
/// suffix such as `RequestQueue::submit_bio`, a legacy hash, `file.rs:LINE`)
/// to the probe points the kernel takes: full path plus offset, one per
/// point (a line the compiler duplicated has several). A name that
/// resolves to nothing or, without `all`, to several functions is refused
/// with the index's candidates and suggestions. Without a kernel ELF the
/// name goes to the kernel as typed. The second value is the resolver's
/// note (how points were picked), if any.
fn resolve_on_host(
    text: &str,
    kernel: Option<&std::path::Path>,
    all: bool,
) -> anyhow::Result<(Vec<ProbeTarget>, Option<String>)> {
    let target = parse_target(text);
    if let Ok(ProbeTarget::Address(_)) = target {
        return Ok((vec![target?], None));
    }
    let elf = match super::symbols::kernel_elf(kernel) {
        Ok(elf) => elf,
        Err(_) if kernel.is_none() => return Ok((vec![target?], None)),
        Err(e) => return Err(e),
    };
    let index = ktrace_symbols::SymbolIndex::open(&elf)
        .with_context(|| format!("reading kernel symbols from {}", elf.display()))?;
    let res = index.resolve(
        text,
        ktrace_symbols::ResolveOptions {
            all,
            allow_raw_address: false,
        },
    )?;
    let targets = res
        .points
        .iter()
        .map(|p| match &p.function {
            // The kernel finds a function by name: a shared name (copies
            // of one function, closures) goes by address.
            Some(f) if index.name_is_unique(f) => ProbeTarget::Symbol {
                name: f.clone(),
                offset: p.offset,
            },
            _ => ProbeTarget::Address(p.addr),
        })
        .collect::<Vec<_>>();
    if targets.is_empty() {
        bail!("`{text}` matches no function that can hold a probe");
    }
    Ok((targets, res.note))
}

fn kind_name(k: ProbeKind) -> String {
    match k {
        ProbeKind::Kprobe => "kprobe".into(),
        ProbeKind::Kretprobe { maxactive } => format!("kretprobe(maxactive {maxactive})"),
    }
}

/// One line per probe, then the return-probe pool.
pub fn render(probes: &[ProbeInfo], pool: &RetprobePool) -> String {
    let mut s = String::new();
    if probes.is_empty() {
        s += "no probes registered\n";
    } else {
        s += &format!(
            "{:>4}  {:<26} {:<18} {:>10} {:>8} {:>9} {:<9}  {}\n",
            "ID", "KIND", "ADDRESS", "HITS", "MISSED", "IN-FLIGHT", "MODE", "SYMBOL"
        );
        for p in probes {
            let in_flight = match p.kind {
                ProbeKind::Kretprobe { .. } => p.in_flight.to_string(),
                ProbeKind::Kprobe => "-".into(),
            };
            s += &format!(
                "{:>4}  {:<26} {:<18} {:>10} {:>8} {:>9} {:<9}  {}+{:#x}\n",
                p.id,
                kind_name(p.kind),
                format!("{:#x}", p.addr),
                p.hits,
                p.missed,
                in_flight,
                mode_name(p.mode),
                p.symbol,
                p.offset
            );
            if p.mode != ProbeMode::Optimised && !p.not_optimised.is_empty() {
                s += &format!("      not optimised: {}\n", p.not_optimised);
            }
        }
    }
    s += &format!(
        "return-probe instances: {} of {} free",
        pool.free, pool.size
    );
    if pool.held_by_removed > 0 {
        s += &format!(
            ", {} held by calls in flight of removed probes",
            pool.held_by_removed
        );
    }
    s.push('\n');
    s
}

/// Run `ktrace probe`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let vm = Vm::attach(vm_name)?;
    let mut client = vm.connect(&ConnectOptions {
        client_name: "ktrace probe".into(),
        ..ConnectOptions::default()
    })?;
    match args.command {
        ProbeCommand::List { json } => {
            let probes = client.list_probes()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&probes)?);
            } else {
                let pool = client.retprobe_pool()?;
                out!("{}", render(&probes, &pool));
            }
        }
        ProbeCommand::Add {
            target,
            all,
            ret,
            maxactive,
            kernel,
        } => {
            let kind = if ret {
                ProbeKind::Kretprobe { maxactive }
            } else {
                ProbeKind::Kprobe
            };
            let (targets, note) = resolve_on_host(&target, kernel.as_deref(), all)?;
            if let Some(note) = note {
                errln!("note: {note}");
            }
            let mut added = Vec::new();
            for target in targets {
                let p = match client.add_probe(target, kind) {
                    Ok(p) => p,
                    Err(e) => {
                        // All or nothing: the probes of this command that
                        // were registered go again.
                        for id in added {
                            let _ = client.remove_probe(id);
                        }
                        return Err(e.into());
                    }
                };
                added.push(p.id);
                outln!(
                    "probe {} registered: {} at {:#x} ({}+{:#x}){}",
                    p.id,
                    kind_name(p.kind),
                    p.addr,
                    p.symbol,
                    p.offset,
                    match p.mode {
                        ProbeMode::Optimised => ", optimised".to_string(),
                        m => format!(", {} (not optimised: {})", mode_name(m), p.not_optimised),
                    }
                );
            }
        }
        ProbeCommand::Remove { id } => {
            client.remove_probe(id)?;
            outln!("probe {id} removed");
        }
        ProbeCommand::Optimise { state } => {
            let (on, optimised) = client.optimisation(state.map(|s| s == "on"))?;
            outln!(
                "kprobe jump optimisation is {}: {optimised} probe{} optimised",
                if on { "on" } else { "off" },
                if optimised == 1 { "" } else { "s" }
            );
        }
        ProbeCommand::Blacklist => {
            for b in client.blacklist()? {
                if b.end > b.start {
                    outln!(
                        "{:#x}..{:#x}  {:<40} {}",
                        b.start,
                        b.end,
                        b.symbol,
                        b.reason
                    );
                } else {
                    outln!("{:<38}  {:<40} {}", "(symbol prefix)", b.symbol, b.reason);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("0x1000").unwrap(),
            ProbeTarget::Address(0x1000)
        );
        assert_eq!(
            parse_target("kernel::a::b+0x10").unwrap(),
            ProbeTarget::Symbol {
                name: "kernel::a::b".into(),
                offset: 16
            }
        );
        assert_eq!(
            parse_target("kernel::a::b+8").unwrap(),
            ProbeTarget::Symbol {
                name: "kernel::a::b".into(),
                offset: 8
            }
        );
        assert_eq!(
            parse_target("kernel::a::b").unwrap(),
            ProbeTarget::Symbol {
                name: "kernel::a::b".into(),
                offset: 0
            }
        );
        assert!(parse_target("0xzz").is_err());
        assert!(parse_target("f+x").is_err());
        assert!(parse_target("+4").is_err());
    }

    #[test]
    fn list_shows_calls_in_flight_and_the_pool() {
        let probe = |id, kind, in_flight| ProbeInfo {
            id,
            kind,
            addr: 0x1000,
            symbol: "kernel::f".into(),
            offset: 0,
            hits: 3,
            missed: 1,
            mode: if id == 1 {
                ProbeMode::Optimised
            } else {
                ProbeMode::Boosted
            },
            not_optimised: if id == 1 {
                String::new()
            } else {
                "the branch at 0x1010 lands at 0x1002, inside the 5 bytes a jump would replace"
                    .into()
            },
            boosted_hits: 0,
            handler: "count".into(),
            last_value: 0,
            total_ns: 0,
            in_flight,
        };
        let pool = RetprobePool {
            size: 512,
            free: 509,
            held_by_removed: 2,
        };
        let out = render(
            &[
                probe(1, ProbeKind::Kretprobe { maxactive: 64 }, 1),
                probe(2, ProbeKind::Kprobe, 0),
            ],
            &pool,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].contains("IN-FLIGHT"), "{out}");
        assert!(lines[0].contains("MODE"), "{out}");
        assert!(
            lines[1].contains("        1 optimised  kernel::f+0x0"),
            "{out}"
        );
        assert!(
            lines[2].contains("        - boosted    kernel::f+0x0"),
            "{out}"
        );
        assert_eq!(
            lines[3],
            "      not optimised: the branch at 0x1010 lands at 0x1002, inside the 5 bytes a jump would replace"
        );
        assert_eq!(
            lines[4],
            "return-probe instances: 509 of 512 free, 2 held by calls in flight of removed probes"
        );
        let empty = render(
            &[],
            &RetprobePool {
                size: 512,
                free: 512,
                held_by_removed: 0,
            },
        );
        assert_eq!(
            empty,
            "no probes registered\nreturn-probe instances: 512 of 512 free\n"
        );
    }
}
