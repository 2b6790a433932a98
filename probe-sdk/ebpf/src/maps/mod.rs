//! Maps: statics in the `maps` section that the loader turns into kernel
//! maps.
//!
//! Every map type here is `#[repr(C)]` around a [`MapDef`], Linux's legacy
//! `struct bpf_map_def` (five `u32`: type, key size, value size, max entries,
//! flags), so the object file carries exactly what libbpf's legacy loader
//! and ktrace's loader expect. Declare one with the [`map`](crate::map)
//! attribute:
//!
//! ```ignore
//! #[map]
//! static LATENCY: Log2Histogram = Log2Histogram::new();
//! ```
//!
//! Code refers to a map by taking its address; the compiler emits an
//! `ld_imm64` with an `R_BPF_64_64` relocation against the map's symbol,
//! which the loader rewrites into a map reference.

mod array;
mod hash_map;
mod histogram;
mod perf;
mod ringbuf;
mod stack_trace;

pub use array::{Array, PerCpuArray};
pub use hash_map::{HashMap, LruHashMap};
pub use histogram::{
    log2_slot, HistKey, KeyedLog2Histogram, LinearHistogram, Log2Histogram, LOG2_SLOTS,
};
pub use perf::PerfEventArray;
pub use ringbuf::{RingBuf, RingBufEntry};
pub use stack_trace::StackTrace;

/// Linux's legacy `struct bpf_map_def`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapDef {
    /// One of [`map_type`].
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity (entries; bytes for a ring buffer).
    pub max_entries: u32,
    /// `BPF_F_*` creation flags.
    pub map_flags: u32,
}

impl MapDef {
    /// A definition for keys `K` and values `V`.
    pub const fn new<K, V>(map_type: u32, max_entries: u32, map_flags: u32) -> Self {
        Self {
            map_type,
            key_size: core::mem::size_of::<K>() as u32,
            value_size: core::mem::size_of::<V>() as u32,
            max_entries,
            map_flags,
        }
    }
}

/// Linux map type numbers (`enum bpf_map_type`), from the platform
/// description the kernel and the verifier use.
pub use ktrace_bpf_platform::map_type;

/// `flags` of map updates (Linux's `BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`).
pub mod update {
    /// Create or replace.
    pub const ANY: u64 = 0;
    /// Create only; fail with `-EEXIST` if the key exists.
    pub const NOEXIST: u64 = 1;
    /// Replace only; fail with `-ENOENT` if the key is absent.
    pub const EXIST: u64 = 2;
}

/// Add `delta` to a `u64` map value in place, atomically across CPUs.
#[inline(always)]
pub(crate) fn atomic_add(value: *mut u64, delta: u64) {
    // SAFETY: `value` is a non-null map value pointer returned by a lookup:
    // 8 bytes, 8-aligned, valid for the rest of the program run.
    let cell = unsafe { core::sync::atomic::AtomicU64::from_ptr(value) };
    cell.fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn map_definitions_are_bpf_map_def_sized() {
        assert_eq!(size_of::<MapDef>(), 20);
        assert_eq!(size_of::<HashMap<u64, u64>>(), 20);
        assert_eq!(size_of::<Array<[u8; 100]>>(), 20);
        assert_eq!(size_of::<RingBuf>(), 20);
        assert_eq!(size_of::<Log2Histogram>(), 20);
        assert_eq!(size_of::<LinearHistogram<0, 100, 10>>(), 20);
    }

    #[test]
    fn definitions_carry_linux_numbers_and_sizes() {
        let m: HashMap<u32, [u8; 24]> = HashMap::with_max_entries(128);
        assert_eq!(
            m.def(),
            &MapDef {
                map_type: 1,
                key_size: 4,
                value_size: 24,
                max_entries: 128,
                map_flags: 0
            }
        );
        let a: PerCpuArray<u64> = PerCpuArray::with_max_entries(4);
        assert_eq!(
            a.def(),
            &MapDef {
                map_type: 6,
                key_size: 4,
                value_size: 8,
                max_entries: 4,
                map_flags: 0
            }
        );
        let l: LruHashMap<u64, u64> = LruHashMap::with_max_entries(10);
        assert_eq!(l.def().map_type, 9);
        assert_eq!(
            RingBuf::with_byte_size(4096).def(),
            &MapDef {
                map_type: 27,
                key_size: 0,
                value_size: 0,
                max_entries: 4096,
                map_flags: 0
            }
        );
        assert_eq!(
            StackTrace::with_max_entries(16).def(),
            &MapDef {
                map_type: 7,
                key_size: 4,
                value_size: 127 * 8,
                max_entries: 16,
                map_flags: 0
            }
        );
        let p: PerfEventArray<u64> = PerfEventArray::new();
        assert_eq!(p.def().map_type, 4);
        assert_eq!(
            Log2Histogram::new().def(),
            &MapDef {
                map_type: 2,
                key_size: 4,
                value_size: 8,
                max_entries: 65,
                map_flags: 0
            }
        );
        assert_eq!(LinearHistogram::<0, 100, 10>::new().def().max_entries, 12);
        let k: KeyedLog2Histogram<u32> = KeyedLog2Histogram::with_max_entries(1000);
        assert_eq!(
            k.def(),
            &MapDef {
                map_type: 1,
                key_size: 8,
                value_size: 8,
                max_entries: 1000,
                map_flags: 0
            }
        );
    }
}
