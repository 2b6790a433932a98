//! One module per `ktrace` subcommand.

pub mod info;
pub mod vm;
