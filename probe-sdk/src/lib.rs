//! Host SDK (work in progress).

pub mod block;
pub mod build;
pub mod check;
pub mod client;
pub mod kernel_image;
pub mod linux_bpf;
pub mod object;
mod object_lines;
mod object_types;
pub mod runtime;
pub mod trace;
pub mod typed;
pub mod vm;
