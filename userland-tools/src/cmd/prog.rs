//! `ktrace prog list|show|dump|jit|stats`: loaded programs, their run statistics and
//! verifier figures, and their instructions with source lines.

use bpf_vm::disasm::{self, Syntax};
use bpf_vm::Insn;
use ktrace_abi::bpf::{Engine, ExecInfo, ProgInfo};
use probe_sdk::runtime::Runtime;

use super::bpf_common::table;
use crate::kernel::connect;

/// Arguments of `ktrace prog`.
pub type Args = super::bpf_common::ObjectArgs<Command>;

/// `ktrace prog` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Every loaded program with run count, run time and misses.
    List,
    /// One program in full, verifier statistics included.
    Show { id: u32 },
    /// The program's instructions (LLVM syntax) with source lines.
    Dump { id: u32 },
    /// Detach and unload a program.
    Unload { id: u32 },
    /// How programs loaded from now on run when the load does not say
    /// (`ktrace load --interpreter` / `--jit-harden` do): JIT-compiled
    /// (`on`, the default), with constants blinded (`harden`), or
    /// interpreted (`off`); without an argument, print the setting. Like
    /// Linux's `net.core.bpf_jit_enable` and `bpf_jit_harden`, it does not
    /// change programs already loaded.
    Jit { setting: Option<JitSetting> },
    /// Whether runs are timed into RUN_NS (and NS/RUN): `on` or `off` (the
    /// default, as Linux's `kernel.bpf_stats_enabled`: the two clock reads
    /// are a large part of what a short program costs); without an
    /// argument, print the setting. RUNS is counted either way.
    Stats { setting: Option<StatsSetting> },
}

/// The argument of `ktrace prog stats`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum StatsSetting {
    On,
    Off,
}

/// The argument of `ktrace prog jit`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum JitSetting {
    On,
    Off,
    Harden,
}

fn setting_name(e: Engine) -> &'static str {
    match e {
        Engine::Jit => "on",
        Engine::JitHardened => "harden",
        Engine::Interpreter => "off",
    }
}

/// The EXEC column: `jit`, `jit+blind` or `interp`.
fn engine(p: &ProgInfo) -> &'static str {
    match p.exec {
        ExecInfo::Jit { blinded: false, .. } => "jit",
        ExecInfo::Jit { blinded: true, .. } => "jit+blind",
        ExecInfo::Interpreter { .. } => "interp",
    }
}

/// Bytes of native code, `-` when interpreted.
fn native(p: &ProgInfo) -> String {
    match p.exec {
        ExecInfo::Jit { native_bytes, .. } => native_bytes.to_string(),
        ExecInfo::Interpreter { .. } => "-".to_string(),
    }
}

fn row(p: &ProgInfo) -> Vec<String> {
    let avg = p.run_time_ns.checked_div(p.run_count).unwrap_or(0);
    vec![
        p.id.to_string(),
        p.name.clone(),
        format!("{:?}", p.prog_type).to_lowercase(),
        p.insns.to_string(),
        engine(p).to_string(),
        native(p),
        p.run_count.to_string(),
        p.run_time_ns.to_string(),
        avg.to_string(),
        p.misses.to_string(),
        (p.faults + p.budget_exhausted).to_string(),
        p.maps
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        p.links
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ]
}

const HEADER: [&str; 13] = [
    "ID", "NAME", "TYPE", "INSNS", "EXEC", "NATIVE", "RUNS", "RUN_NS", "NS/RUN", "MISSES",
    "FAULTS", "MAPS", "LINKS",
];

/// Run `ktrace prog`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let mut client = connect(vm_name, "ktrace prog")?;
    let mut rt = Runtime::new(&mut client);
    match args.command {
        Command::List => {
            let progs = rt.progs()?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&progs)?);
            } else {
                out!(
                    "{}",
                    table(&HEADER, &progs.iter().map(row).collect::<Vec<_>>())
                );
            }
        }
        Command::Show { id } => {
            let d = rt.prog_dump(id)?;
            let p = d.info;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&p)?);
                return Ok(());
            }
            out!("{}", table(&HEADER, &[row(&p)]));
            outln!("section:      {}", p.section);
            match &p.exec {
                ExecInfo::Jit {
                    native_bytes,
                    blinded,
                    inlined_lookups,
                } => outln!(
                    "exec:         JIT-compiled, {native_bytes} bytes of native code{}{}",
                    if *blinded { ", constants blinded" } else { "" },
                    match inlined_lookups {
                        0 => String::new(),
                        1 => ", 1 array lookup inlined".to_string(),
                        n => format!(", {n} array lookups inlined"),
                    }
                ),
                ExecInfo::Interpreter { why } => outln!("exec:         interpreted ({why})"),
            }
            outln!("insn budget:  {} per run", p.insn_budget);
            outln!(
                "executed:     {} instructions in all runs",
                p.insns_executed
            );
            outln!(
                "faults:       {} helper/run-time faults, {} budget exhausted",
                p.faults,
                p.budget_exhausted
            );
            if let Some(e) = &p.last_error {
                outln!("last error:   {e}");
            }
            let v = &p.verifier;
            outln!(
                "verifier:     {} insns processed, {} states stored (peak {}), {} pruned, stack {:?} B, {} us",
                v.insns_processed,
                v.states_stored,
                v.peak_states,
                v.states_pruned,
                v.stack_depth,
                v.time_ns / 1000
            );
        }
        Command::Dump { id } => {
            let d = rt.prog_dump(id)?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            let prog = bpf_vm::decode(&d.insns)
                .map_err(|e| anyhow::anyhow!("program {id} does not decode: {e:?}"))?;
            let mut last: Option<(String, u32)> = None;
            for (pc, insn) in prog.insns().iter().enumerate() {
                if *insn == Insn::LdImm64Tail {
                    continue;
                }
                if let Some(lines) = &d.lines {
                    if let Some((file, line, _)) = probe_sdk::object::source_line(lines, pc) {
                        if last.as_ref() != Some(&(file.clone(), line)) {
                            outln!("; {file}:{line}");
                            last = Some((file, line));
                        }
                    }
                }
                let text = disasm::insn(insn, Syntax::Llvm);
                match insn.jump_target(pc) {
                    Some(t) if !matches!(insn, Insn::Call { .. }) => {
                        outln!("{pc:5}: {text}  # -> {t}")
                    }
                    _ => outln!("{pc:5}: {text}"),
                }
            }
        }
        Command::Jit { setting } => {
            let set = setting.map(|s| match s {
                JitSetting::On => Engine::Jit,
                JitSetting::Off => Engine::Interpreter,
                JitSetting::Harden => Engine::JitHardened,
            });
            let now = rt.default_engine(set)?;
            if args.json {
                outln!("{}", serde_json::json!({ "jit": setting_name(now) }));
            } else {
                outln!(
                    "jit: {} ({})",
                    setting_name(now),
                    match now {
                        Engine::Jit => "programs loaded from now on are JIT-compiled",
                        Engine::JitHardened =>
                            "programs loaded from now on are JIT-compiled with constants blinded",
                        Engine::Interpreter => "programs loaded from now on are interpreted",
                    }
                );
            }
        }
        Command::Stats { setting } => {
            let now = rt.run_time_stats(setting.map(|s| matches!(s, StatsSetting::On)))?;
            if args.json {
                outln!("{}", serde_json::json!({ "stats": now }));
            } else if now {
                outln!("stats: on (runs are timed into RUN_NS)");
            } else {
                outln!("stats: off (runs are counted, not timed)");
            }
        }
        Command::Unload { id } => {
            rt.prog_unload(id)?;
            if args.json {
                outln!("{}", serde_json::json!({ "unloaded": id }));
            } else {
                outln!("unloaded program {id}");
            }
        }
    }
    Ok(())
}
