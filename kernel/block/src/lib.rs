//! The reusable core of ktrace's block layer, free of any kernel or
//! hardware dependency so it can be tested on the host (`cargo test -p
//! ktrace-block`) and reused by another kernel.
//!
//! The flow it models is Linux's:
//!
//! ```text
//! submitter ──Bio──▶ request queue ──▶ Scheduler::add_bio ──▶ new Request, or
//!                                          │                 back/front merge
//!                                          ▼
//!                                  Scheduler::dispatch ──Request──▶ driver
//!                                                                    │
//!                    submitter ◀──Bio (status, data)── completion ◀──┘
//! ```
//!
//! - [`bio`]: [`Bio`] (one I/O from one submitter: operation, flags, start
//!   sector, data buffer, an opaque completion token `P`), [`Op`],
//!   [`BioFlags`], [`BlockError`] and [`check_bio`] (the checks every bio
//!   passes before it is queued).
//! - [`request`]: [`Request`], the unit a driver executes: one or more bios
//!   covering contiguous sectors, with timestamps and a status.
//! - [`sched`]: the [`Scheduler`] trait and two schedulers,
//!   [`sched::Deadline`] (merging, sector-sorted batches with FIFO expiry,
//!   reads preferred over writes up to a starvation limit) and
//!   [`sched::Noop`] (FIFO, never merges).
//! - [`stats`]: [`DiskStats`], the `/proc/diskstats` counters.
//! - [`histogram`]: [`LatencyHistogram`], log-linear buckets for latency
//!   percentiles.
//! - [`pattern`]: self-describing sector patterns for write-then-verify
//!   workloads.
#![no_std]

extern crate alloc;

pub mod bio;
pub mod histogram;
pub mod pattern;
pub mod request;
pub mod sched;
pub mod stats;

pub use bio::{check_bio, Bio, BioFlags, BlockError, Op, SECTOR_SHIFT, SECTOR_SIZE};
pub use histogram::LatencyHistogram;
pub use request::{Request, Timestamps};
pub use sched::{AddOutcome, SchedConfig, Scheduler};
pub use stats::{DiskStats, OpStats};
