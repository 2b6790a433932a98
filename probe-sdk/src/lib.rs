//! Host SDK (work in progress).

pub mod build;
pub mod client;
pub mod kernel_image;
pub mod vm;
