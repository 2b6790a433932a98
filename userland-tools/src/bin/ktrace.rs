//! `ktrace`: boot the ktrace kernel, resolve symbols, build, check and load
//! probes, and read what they collect.

// Output goes through `outln!`/`errln!` (see `stop`): `println!` panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ktrace",
    version,
    about = "Tracing for a Rust kernel: kprobes, tracepoints and BPF probes written in Rust"
)]
struct Cli {
    /// The VM to talk to (see `ktrace vm list`).
    #[arg(long, global = true, value_name = "NAME", default_value = "default")]
    vm: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start, inspect and stop the VM that runs the kernel.
    Vm(ktrace_tools::cmd::vm::Args),
    /// Uptime, memory and tasks of the running kernel.
    Info(ktrace_tools::cmd::info::Args),
    /// Compile a probe crate written in Rust to an eBPF object.
    Build(ktrace_tools::cmd::build::Args),
    /// Verify an eBPF object on the host with the kernel's verifier.
    Check(ktrace_tools::cmd::check::Args),
    /// Resolve Rust paths, globs, offsets and source lines to kernel addresses (and back).
    Symbols(ktrace_tools::cmd::symbols::Args),
    /// Block devices: statistics (like /proc/diskstats) and schedulers.
    Disk(ktrace_tools::cmd::disk::Args),
    /// Run the in-kernel I/O workload generator (fio-like).
    Workload(ktrace_tools::cmd::workload::Args),
    /// List, add and remove kprobes and kretprobes (counting handler).
    Probe(ktrace_tools::cmd::probe::Args),
    /// List the kernel's static tracepoints and their formats.
    Tracepoint(ktrace_tools::cmd::tracepoint::Args),
    /// Load a probe crate or eBPF object into the kernel and attach its programs (pinned: it stays after the command).
    Load(ktrace_tools::cmd::load::Args),
    /// Detach, unload and free a whole object (by pin, object id or name).
    Unload(ktrace_tools::cmd::pin::UnloadArgs),
    /// Pinned objects (what outlives the command that loaded it): list, rm.
    Pin(ktrace_tools::cmd::pin::Args),
    /// Loaded BPF programs: list, show, dump, unload; jit on/off/harden.
    Prog(ktrace_tools::cmd::prog::Args),
    /// BPF maps: list, dump, lookup, update, delete, free.
    Map(ktrace_tools::cmd::map::Args),
    /// The BPF helpers the kernel implements, per program type; --c-header writes them as a C header.
    Helpers(ktrace_tools::cmd::helpers::Args),
    /// Links of programs to attach points: list, detach.
    Link(ktrace_tools::cmd::link::Args),
    /// Open perf events (kperf's counters and sampling timer, BPF perf_event links) and who holds them.
    Perf(ktrace_tools::cmd::perf::Args),
    /// Stream ring buffer, perf output and trace_printk records.
    Events(ktrace_tools::cmd::events::Args),
    /// bpftrace-style one-liners over Rust paths, compiled on the host (no LLVM).
    Trace(ktrace_tools::cmd::trace::Args),
    /// The whole story in one command: boot, load the Rust biolatency probe, run a workload, print the histogram and counters, shut down.
    Demo(ktrace_tools::cmd::demo::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Vm(args) => ktrace_tools::cmd::vm::run(args, &cli.vm),
        Command::Info(args) => ktrace_tools::cmd::info::run(args, &cli.vm),
        Command::Build(args) => ktrace_tools::cmd::build::run(args),
        Command::Check(args) => ktrace_tools::cmd::check::run(args),
        Command::Symbols(args) => ktrace_tools::cmd::symbols::run(args),
        Command::Disk(args) => ktrace_tools::cmd::disk::run(args, &cli.vm),
        Command::Workload(args) => ktrace_tools::cmd::workload::run(args, &cli.vm),
        Command::Probe(args) => ktrace_tools::cmd::probe::run(args, &cli.vm),
        Command::Tracepoint(args) => ktrace_tools::cmd::tracepoint::run(args, &cli.vm),
        Command::Load(args) => ktrace_tools::cmd::load::run(args, &cli.vm),
        Command::Unload(args) => ktrace_tools::cmd::pin::unload(args, &cli.vm),
        Command::Pin(args) => ktrace_tools::cmd::pin::run(args, &cli.vm),
        Command::Prog(args) => ktrace_tools::cmd::prog::run(args, &cli.vm),
        Command::Map(args) => ktrace_tools::cmd::map::run(args, &cli.vm),
        Command::Helpers(args) => ktrace_tools::cmd::helpers::run(args),
        Command::Link(args) => ktrace_tools::cmd::link::run(args, &cli.vm),
        Command::Perf(args) => ktrace_tools::cmd::perf::run(args, &cli.vm),
        Command::Events(args) => ktrace_tools::cmd::events::run(args, &cli.vm),
        Command::Trace(args) => ktrace_tools::cmd::trace::run(args, &cli.vm),
        Command::Demo(args) => ktrace_tools::cmd::demo::run(args, &cli.vm),
    };
    ktrace_tools::stop::exit("ktrace", result)
}
