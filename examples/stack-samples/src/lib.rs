//! Sampled kernel stacks: on each perf event sample, store the interrupted
//! kernel stack in a stack trace map and count how often each stack id was
//! seen. A reader folds `COUNTS` × `STACKS` into `a;b;c N` lines for a
//! flame graph.
#![no_std]

use ktrace_probe::maps::{HashMap, StackTrace};
use ktrace_probe::{map, perf_event, PerfEventContext};

/// Up to 1024 distinct stacks.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(1024);

/// Samples per stack id.
#[map]
static COUNTS: HashMap<u32, u64> = HashMap::with_max_entries(1024);

/// Samples whose stack could not be stored (map full, no stack).
#[map]
static LOST: HashMap<u32, u64> = HashMap::with_max_entries(1);

#[perf_event]
fn sample(ctx: PerfEventContext) -> u32 {
    match STACKS.get_stackid(&ctx, 0) {
        Ok(id) => COUNTS.increment(&id),
        Err(_) => {
            // A named local rather than `&0`, which would be a promoted
            // constant in `.rodata`.
            let slot = 0u32;
            LOST.increment(&slot)
        }
    }
    0
}

ktrace_probe::license!("GPL");
