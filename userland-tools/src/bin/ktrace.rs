//! `ktrace`: boot the ktrace kernel, resolve symbols, build, check and load
//! probes, and read what they collect.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ktrace",
    version,
    about = "Tracing for a Rust kernel: kprobes, tracepoints and BPF probes written in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {};
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ktrace: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
