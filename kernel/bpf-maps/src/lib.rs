//! BPF maps for the ktrace kernel, `no_std` and host-testable.
//!
//! Map types use Linux's numbers and semantics ([`map_type`]): [`HashMap`]
//! (plain, per-CPU and LRU flavours), [`ArrayMap`] (plain and per-CPU),
//! [`RingBuf`], [`PerfEventArray`] and [`StackTraceMap`]; [`Map`] wraps
//! them behind one interface. Errors carry Linux errno values
//! ([`MapError::errno`]).
//!
//! # Preallocation
//! Every map allocates all its storage at creation, as Linux does by
//! default: inserting, updating, deleting, reserving ring space or
//! recording a stack never allocates. Programs run in probe context
//! (interrupts off, possibly inside the allocator or the scheduler), where
//! allocating is not an option.
//!
//! # Pointer validity: deferred reuse by epochs
//! `bpf_map_lookup_elem` hands a program the address of a value. That
//! address must stay valid while the program runs, even if the host deletes
//! the entry meanwhile (on another CPU). Storage is never freed while the
//! map lives (programs hold a reference to their maps), so the address always
//! points at the map's memory; and a deleted slot is not *reused* for
//! another key until every program that might have seen it has finished:
//! [`Epochs`] gives each CPU an "active since epoch E" marker that the
//! runtime sets around each program run; a deletion tags the slot with the
//! epoch at the time, and the slot returns to the free list only when no CPU
//! is running a program that entered at or before that tag. A program
//! therefore reads either the old value or zeroes of a dead slot, never
//! another key's data. Updates of a live entry write in place (as Linux's
//! arrays do); values are plain memory, so a concurrent reader may see a
//! partially written value, which is Linux's behaviour without `BPF_F_LOCK`.
//!
//! # Concurrency
//! - Arrays: values are plain memory at fixed addresses ([`ArrayLayout`]),
//!   so program lookups need no lock; concurrent updates of one value
//!   race as in Linux, and programs that count use atomic instructions.
//! - Ring buffers and perf event arrays take many producers (all CPUs)
//!   and one consumer through `&self` (see [`RingBuf`]'s protocol); the
//!   embedder shares them as `Arc`s ([`Map::ring`], [`Map::perf`]).
//! - Hash maps (plain, per-CPU, LRU) are shared through `&self` as well:
//!   lookups take no lock, writers lock one bucket (see [`HashMap`]); every
//!   lock fails at once on same-CPU recursion and otherwise waits as the
//!   caller's [`Waiter`] allows (the kernel bounds a program's wait in
//!   time, `bpf::kmap`).
//! - Host requests on other maps take `&mut self`: the embedder serialises
//!   them under one lock per map.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod array;
mod epoch;
mod hash;
mod lock;
mod map;
mod perf;
mod ringbuf;
mod stack;
mod store;

pub use array::{ArrayLayout, ArrayMap};
pub use epoch::{EpochGuard, Epochs};
pub use hash::HashMap;
pub use lock::{CpuLock, CpuMutex, Waiter};
pub use map::{Entry, Map};
pub use perf::{PerfEventArray, PerfRecord, F_CURRENT_CPU};
pub use ringbuf::{RingBuf, RingStats, PRODUCER_SPINS, RB_NO_WAKEUP};
pub use stack::{walk_frame_pointers, StackTraceMap, MAX_DEPTH as MAX_STACK_DEPTH};

use core::fmt;

/// Linux map type numbers (`enum bpf_map_type`), from the platform description
/// the verifier and the probe crate use.
pub use ktrace_bpf_platform::map_type;

/// Update flags (`BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`).
pub mod update_flags {
    /// Create or update.
    pub const ANY: u64 = 0;
    /// Create only: fails with `-EEXIST` if the key exists.
    pub const NOEXIST: u64 = 1;
    /// Update only: fails with `-ENOENT` if the key does not exist.
    pub const EXIST: u64 = 2;
}

/// Linux errno values the maps return (positive; [`MapError::errno`] negates).
pub mod errno {
    #![allow(missing_docs)]
    pub const ENOENT: i32 = 2;
    pub const E2BIG: i32 = 7;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const ENOTSUPP: i32 = 524;
}

/// Why a map operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The key does not exist (`-ENOENT`); also the end of iteration.
    NotFound,
    /// The key exists and `BPF_NOEXIST` was given (`-EEXIST`).
    Exists,
    /// The map is full, or an index is out of range (`-E2BIG`).
    TooBig,
    /// No free slot right now (deleted slots still in use by a running
    /// program), or storage could not be allocated (`-ENOMEM`).
    NoMemory,
    /// Bad flags, sizes or an operation the map type does not have (`-EINVAL`).
    Invalid,
    /// The operation is not supported on this map type (`-ENOTSUPP`).
    NotSupported,
    /// A ring buffer or perf buffer has no room (`-ENOSPC`).
    NoSpace,
    /// A pointer did not point where it must (`-EFAULT`).
    Fault,
    /// An internal bound check failed (a bug; reported as `-EFAULT`).
    Internal,
    /// A lock of the map stayed held: by this CPU (a probe fired inside
    /// map code) or longer than the caller would wait (`-EBUSY`).
    Busy,
}

impl MapError {
    /// The negative Linux errno.
    pub fn errno(self) -> i32 {
        -match self {
            MapError::NotFound => errno::ENOENT,
            MapError::Exists => errno::EEXIST,
            MapError::TooBig => errno::E2BIG,
            MapError::NoMemory => errno::ENOMEM,
            MapError::Invalid => errno::EINVAL,
            MapError::NotSupported => errno::ENOTSUPP,
            MapError::NoSpace => errno::ENOSPC,
            MapError::Fault | MapError::Internal => errno::EFAULT,
            MapError::Busy => errno::EBUSY,
        }
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MapError::NotFound => "no such key (ENOENT)",
            MapError::Exists => "key exists and BPF_NOEXIST was given (EEXIST)",
            MapError::TooBig => "map is full or index out of range (E2BIG)",
            MapError::NoMemory => "no free slot or memory (ENOMEM)",
            MapError::Invalid => "invalid argument (EINVAL)",
            MapError::NotSupported => "operation not supported by this map type (ENOTSUPP)",
            MapError::NoSpace => "no space in the buffer (ENOSPC)",
            MapError::Fault => "bad address (EFAULT)",
            MapError::Internal => "internal bound check failed (EFAULT)",
            MapError::Busy => "the map stayed locked (EBUSY)",
        };
        f.write_str(s)
    }
}

impl core::error::Error for MapError {}

/// What a map is asked to be (Linux `bpf_attr` map-create fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// A [`map_type`] number.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Entries (ring buffer: its size in bytes, a power of two multiple of 4096).
    pub max_entries: u32,
    /// `BPF_F_*` creation flags (only `BPF_F_NO_PREALLOC` is refused, since
    /// every map here is preallocated; others are ignored).
    pub flags: u32,
}

/// Largest value size accepted (Linux caps at `KMALLOC_MAX_SIZE`; a tracing
/// kernel has no use for more).
pub const MAX_VALUE_SIZE: u32 = 1 << 16;
/// Largest key size accepted (Linux: `MAX_BPF_STACK` for hash keys).
pub const MAX_KEY_SIZE: u32 = 512;
/// `BPF_F_NO_PREALLOC`.
pub const F_NO_PREALLOC: u32 = 1;

/// Rounds `n` up to a multiple of 8 (per-CPU values and records are 8-aligned).
pub(crate) const fn round8(n: usize) -> usize {
    (n + 7) & !7
}
