//! `kperf`: Linux `perf` for the ktrace kernel: list events, count them
//! (`stat`), sample the kernel (`record`) and read the samples back
//! (`report`, flame graphs).
//!
//! ```text
//! kperf list
//! kperf stat -e block:block_rq_issue,context-switches -r 3 -- --dev vda --count 500
//! kperf record -F 999 -g -- --dev vda --rw randread --time 3s
//! kperf report --flamegraph kperf.svg
//! ```

// Output goes through `outln!`/`errln!` (see `stop`): `println!` panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ktrace_tools::stop;
use ktrace_tools::tools::kperf;

#[derive(Parser)]
#[command(
    name = "kperf",
    version,
    about = "Performance counters and sampling for the ktrace kernel, like Linux perf"
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
    /// List the events the kernel can count.
    List(kperf::list::Args),
    /// Count events while a workload runs (or for a while).
    Stat(kperf::stat::Args),
    /// Sample the kernel's instruction pointer (and call stacks) from a timer.
    Record(kperf::record::Args),
    /// Top symbols of a recording; flame graphs.
    Report(kperf::report::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::List(a) => kperf::list::run(a, &cli.vm),
        Command::Stat(a) => kperf::stat::run(a, &cli.vm),
        Command::Record(a) => kperf::record::run(a, &cli.vm),
        Command::Report(a) => kperf::report::run(a),
    };
    stop::exit("kperf", r)
}
