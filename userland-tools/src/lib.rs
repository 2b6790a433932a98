//! The ktrace command-line tools. Each `ktrace` subcommand lives in its own
//! module with a clap `Args` struct and a `run` function; the binaries in
//! `src/bin/` only parse and dispatch.

pub mod cmd;
pub mod report;
pub mod tools;
