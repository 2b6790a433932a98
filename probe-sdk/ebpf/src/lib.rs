//! Probe-side crate (work in progress).
#![no_std]
