//! Code shared by several test binaries: the program generator of the
//! fuzzers and the glue that runs JIT-compiled code in the test process.
#![allow(dead_code)]

pub mod gen;
#[cfg(target_arch = "x86_64")]
pub mod jit;
