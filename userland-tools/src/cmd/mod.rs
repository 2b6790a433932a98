//! One module per `ktrace` subcommand.

pub mod bpf_common;
pub mod build;
pub mod check;
pub mod demo;
pub mod disk;
pub mod events;
pub mod helpers;
pub mod info;
pub mod link;
pub mod load;
pub mod map;
pub mod perf;
pub mod pin;
pub mod probe;
pub mod prog;
pub mod symbols;
pub mod trace;
pub mod tracepoint;
pub mod vm;
pub mod workload;
