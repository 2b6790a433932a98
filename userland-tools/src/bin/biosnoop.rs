//! `biosnoop`: one line per completed block request, like BCC's, from a
//! Rust probe (`examples/biosnoop`) embedded at build time that streams
//! records through a ring buffer.
//!
//! ```text
//! biosnoop                       # until Ctrl-C
//! biosnoop -Q -- --dev vda --rw randread --count 200
//! ```

// Output goes through `outln!`/`errln!` (see `stop`): `println!` panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use ktrace_tools::stop;
use ktrace_tools::tools::biosnoop;

#[derive(Parser)]
#[command(
    name = "biosnoop",
    version,
    about = "Trace block I/O: one line per completed request",
    after_help = "Examples:\n  biosnoop                # trace until Ctrl-C\n  biosnoop -Q             # include the time queued in the scheduler\n  biosnoop -d vda         # only disk vda\n  biosnoop -- --dev vda --rw randread --count 100   # run a workload while tracing"
)]
struct Cli {
    #[command(flatten)]
    args: biosnoop::run::Args,
}

fn main() -> ExitCode {
    stop::exit("biosnoop", biosnoop::run::run(Cli::parse().args))
}
