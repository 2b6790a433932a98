//! `biolatency`: block I/O latency as a log2 histogram, like BCC's, from a
//! Rust probe (`examples/biolatency`) embedded at build time.
//!
//! ```text
//! biolatency                   # until Ctrl-C
//! biolatency -m 1 5            # five 1-second histograms in ms
//! biolatency -D -- --dev vda --rw randread --count 2000
//! ```

// Output goes through `outln!`/`errln!` (see `stop`): `println!` panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use ktrace_tools::stop;
use ktrace_tools::tools::biolatency;

#[derive(Parser)]
#[command(
    name = "biolatency",
    version,
    about = "Summarize block device I/O latency as a histogram",
    after_help = "Examples:\n  biolatency              # summarize until Ctrl-C\n  biolatency -m 1 10      # ten 1 s summaries in milliseconds\n  biolatency -Q -D        # include queued time, one histogram per disk\n  biolatency -d vda -e    # only disk vda, with the average and total\n  biolatency -F -- --dev vda --rw randrw --count 1000   # run a workload, per operation"
)]
struct Cli {
    #[command(flatten)]
    args: biolatency::run::Args,
}

fn main() -> ExitCode {
    stop::exit("biolatency", biolatency::run::run(Cli::parse().args))
}
