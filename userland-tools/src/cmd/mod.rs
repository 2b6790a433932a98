//! One module per `ktrace` subcommand.

pub mod build;
pub mod check;
pub mod disk;
pub mod info;
pub mod probe;
pub mod symbols;
pub mod tracepoint;
pub mod vm;
pub mod workload;
