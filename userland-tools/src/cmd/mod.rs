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
pub mod bpf_common;
pub mod events;
pub mod link;
pub mod load;
pub mod map;
pub mod prog;
