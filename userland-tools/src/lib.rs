//! The ktrace command-line tools. Each `ktrace` subcommand lives in its own
//! module with a clap `Args` struct and a `run` function; the binaries in
//! `src/bin/` only parse and dispatch.

// Output goes through `outln!`/`errln!` (see `stop`): `println!` panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
pub mod stop;

pub mod cmd;
pub mod report;
pub mod tools;
