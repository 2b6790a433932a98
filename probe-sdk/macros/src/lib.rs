//! Probe attribute macros (work in progress).
