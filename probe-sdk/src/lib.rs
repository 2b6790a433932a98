//! Host SDK (work in progress).

pub mod block;
pub mod build;
pub mod check;
pub mod client;
pub mod kernel_image;
pub mod linux_bpf;
pub mod object;
mod object_lines;
pub mod runtime;
pub mod trace;
pub mod vm;
