//! Architecture support. Only x86_64 exists; the rest of the kernel uses the
//! items re-exported here.

#[cfg_attr(target_arch = "x86_64", path = "x86_64/mod.rs")]
mod imp;

pub use imp::*;
