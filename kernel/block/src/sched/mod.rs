//! I/O schedulers: where bios become requests, merge, and wait for
//! dispatch.
//!
//! A request queue owns one [`Scheduler`] (a boxed trait object, so each
//! device picks its own and can switch at run time): it hands every bio to
//! [`Scheduler::add_bio`], which either merges it into a queued request or
//! makes a new one, and asks [`Scheduler::dispatch`] for the next request
//! whenever the hardware queue has room.

mod deadline;
mod noop;

pub use deadline::Deadline;
pub use noop::Noop;

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::bio::Bio;
use crate::request::Request;

/// Tunables shared by the schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedConfig {
    /// Largest request a merge may build, in sectors (Linux's
    /// `max_sectors_kb` × 2; 256 = 128 KiB).
    pub max_sectors: u32,
    /// A read waiting this long is dispatched before anything else (ns).
    pub read_expire_ns: u64,
    /// A write waiting this long is dispatched before anything else (ns).
    pub write_expire_ns: u64,
    /// Read batches that may pass waiting writes before a write batch must
    /// run.
    pub writes_starved: u32,
    /// Requests dispatched in sector order before the FIFO is checked again.
    pub fifo_batch: u32,
}

impl Default for SchedConfig {
    /// Linux mq-deadline's defaults.
    fn default() -> Self {
        Self {
            max_sectors: 256,
            read_expire_ns: 500_000_000,
            write_expire_ns: 5_000_000_000,
            writes_starved: 2,
            fifo_batch: 16,
        }
    }
}

/// What [`Scheduler::add_bio`] did with a bio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new request was made from the bio.
    Inserted {
        /// The new request's id (the one passed in).
        rq_id: u64,
    },
    /// The bio joined the end of a queued request.
    BackMerge {
        /// The request it joined.
        rq_id: u64,
    },
    /// The bio joined the front of a queued request.
    FrontMerge {
        /// The request it joined.
        rq_id: u64,
    },
}

/// An I/O scheduler.
pub trait Scheduler<P>: Send {
    /// Name users select it by (`deadline`, `none`).
    fn name(&self) -> &'static str;

    /// Take a bio: merge it into a queued request, or make a new request
    /// with id `new_id`. `now_ns` is the current time.
    fn add_bio(&mut self, bio: Bio<P>, new_id: u64, now_ns: u64) -> AddOutcome;

    /// The next request for the hardware, if any.
    fn dispatch(&mut self, now_ns: u64) -> Option<Request<P>>;

    /// Requests waiting for dispatch.
    fn queued(&self) -> usize;

    /// Take every queued request out, oldest first (to switch schedulers).
    fn drain(&mut self) -> Vec<Request<P>>;

    /// Put back a request taken out by [`drain`](Self::drain) or one the
    /// driver could not accept, ahead of newer work.
    fn requeue(&mut self, rq: Request<P>);
}

/// The names [`by_name`] accepts.
pub const NAMES: &[&str] = &["deadline", "none"];

/// Make a scheduler by name.
pub fn by_name<P: Send + 'static>(
    name: &str,
    config: SchedConfig,
) -> Option<Box<dyn Scheduler<P>>> {
    match name {
        "deadline" | "mq-deadline" => Some(Box::new(Deadline::new(config))),
        "none" | "noop" => Some(Box::new(Noop::new())),
        _ => None,
    }
}
