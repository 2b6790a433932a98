//! bpf-vm (work in progress).
#![no_std]
extern crate alloc;
