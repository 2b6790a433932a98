//! Host SDK (work in progress).

pub mod client;
pub mod kernel_image;
pub mod vm;
