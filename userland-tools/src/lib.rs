//! The ktrace command-line tools. Each `ktrace` subcommand lives in its own
//! module with a clap `Args` struct and a `run` function; the binaries in
//! `src/bin/` only parse and dispatch.
//!
//! | module | what | uses |
//! |---|---|---|
//! | [`cmd`] | one module per `ktrace` subcommand | `tools` (demo), `kernel`, `workload`, `report` |
//! | [`tools`] | `biolatency`, `biosnoop`, `kperf`: their embedded probes and data | `kernel`, `workload`, `report` |
//! | [`kernel`] | connecting to a VM, loading and removing a probe, naming disks | |
//! | [`workload`] | the in-kernel workload: arguments, spec, running it while events arrive | |
//! | [`report`] | histograms, `perf stat` tables, profiles: pure formatting | |
//! | [`stop`] | Ctrl-C, closed pipes and the `outln!`/`errln!` macros | |
//!
//! Dependencies go one way, down this table: `tools` never reaches into
//! `cmd`.

// Output goes through `outln!`/`errln!` (see `stop`): `println!` panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
pub mod stop;

pub mod cmd;
pub mod kernel;
pub mod report;
pub mod tools;
pub mod workload;
