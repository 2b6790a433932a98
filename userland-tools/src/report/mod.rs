//! Output in the shapes users already read: BCC-style log2 histograms and
//! `perf stat`-style counter tables. Pure formatting, unit-tested.

pub mod hist;
pub mod profile;
pub mod stat;
