//! One module per `ktrace` subcommand.

pub mod build;
pub mod check;
pub mod disk;
pub mod info;
pub mod symbols;
pub mod vm;
pub mod workload;
