//! Histograms for latency work, on top of plain maps so any map reader can
//! print them.
//!
//! [`Log2Histogram`] is an [`Array`](super::Array) of [`LOG2_SLOTS`] `u64`
//! counters: slot 0 counts the value 0, slot `k >= 1` counts values in
//! `[2^(k-1), 2^k)` (BCC's and bpftrace's `hist()` buckets).
//! [`LinearHistogram`] has a slot below `MIN`, one per `STEP` and one at or
//! above `MAX` (bpftrace's `lhist()`). [`KeyedLog2Histogram`] keeps one log2
//! histogram per key (per disk, per operation) in a hash map.

use core::marker::PhantomData;
use core::mem::MaybeUninit;

use super::{atomic_add, map_type, update, Array, HashMap, MapDef};

/// Slots of a [`Log2Histogram`]: the value 0 plus one per bit of a `u64`.
pub const LOG2_SLOTS: u32 = 65;

/// The log2 slot of `value`: 0 for 0, else `floor(log2(value)) + 1`.
#[inline(always)]
pub const fn log2_slot(value: u64) -> u32 {
    64 - value.leading_zeros()
}

/// A log2 histogram of `u64` values (`BPF_MAP_TYPE_ARRAY`, 65 slots).
#[repr(transparent)]
pub struct Log2Histogram {
    slots: Array<u64>,
}

impl Log2Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            slots: Array::with_max_entries(LOG2_SLOTS),
        }
    }

    /// The definition the object file carries.
    pub const fn def(&self) -> &MapDef {
        self.slots.def()
    }

    /// Count `value` once.
    #[inline(always)]
    pub fn record(&self, value: u64) {
        self.slots.add(log2_slot(value), 1);
    }
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A linear histogram: slot 0 counts values below `MIN`, slot `i` in
/// `1..=n` counts `[MIN + (i-1)*STEP, MIN + i*STEP)`, the last slot counts
/// values at or above `MAX`, where `n = (MAX - MIN) / STEP`.
#[repr(transparent)]
pub struct LinearHistogram<const MIN: u64, const MAX: u64, const STEP: u64> {
    slots: Array<u64>,
}

impl<const MIN: u64, const MAX: u64, const STEP: u64> LinearHistogram<MIN, MAX, STEP> {
    /// Slots between `MIN` and `MAX`.
    const STEPS: u64 = {
        assert!(
            STEP > 0 && MAX > MIN,
            "LinearHistogram needs STEP > 0 and MAX > MIN"
        );
        (MAX - MIN).div_ceil(STEP)
    };

    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            slots: Array::with_max_entries(Self::STEPS as u32 + 2),
        }
    }

    /// The definition the object file carries.
    pub const fn def(&self) -> &MapDef {
        self.slots.def()
    }

    /// The slot of `value`.
    #[inline(always)]
    pub const fn slot(value: u64) -> u32 {
        if value < MIN {
            0
        } else if value >= MAX {
            Self::STEPS as u32 + 1
        } else {
            ((value - MIN) / STEP) as u32 + 1
        }
    }

    /// Count `value` once.
    #[inline(always)]
    pub fn record(&self, value: u64) {
        self.slots.add(Self::slot(value), 1);
    }
}

impl<const MIN: u64, const MAX: u64, const STEP: u64> Default for LinearHistogram<MIN, MAX, STEP> {
    fn default() -> Self {
        Self::new()
    }
}

/// The key of a [`KeyedLog2Histogram`]: the user's key, then the slot.
/// Padding is zeroed so equal keys hash equally (and the verifier sees no
/// uninitialised stack bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistKey<K> {
    /// The user's key (a disk, an operation...).
    pub key: K,
    /// The log2 slot.
    pub slot: u32,
}

/// One log2 histogram per key, in a hash map keyed by [`HistKey`].
#[repr(transparent)]
pub struct KeyedLog2Histogram<K> {
    counts: HashMap<HistKey<K>, u64>,
    _k: PhantomData<K>,
}

impl<K: Copy> KeyedLog2Histogram<K> {
    /// A histogram map with room for `max_entries` (key, slot) pairs.
    pub const fn with_max_entries(max_entries: u32) -> Self {
        Self {
            counts: HashMap::with_max_entries(max_entries),
            _k: PhantomData,
        }
    }

    /// The definition the object file carries.
    pub const fn def(&self) -> &MapDef {
        self.counts.def()
    }

    /// Count `value` once under `key`.
    #[inline(always)]
    pub fn record(&self, key: K, value: u64) {
        let mut k = MaybeUninit::<HistKey<K>>::uninit();
        let p = k.as_mut_ptr();
        // SAFETY: `p` points to a writable `HistKey<K>`. The zeroing stores
        // are volatile because LLVM otherwise proves that the field writes
        // overwrite every byte it cares about and drops the zeroes of the
        // padding (a `u64` key leaves 4 bytes after the `u32` slot): the
        // verifier then rejects the lookup for reading uninitialised
        // stack, and equal keys would hash differently. Writing the
        // fields in place keeps the zeroed padding.
        unsafe {
            // Word by word: a zeroed struct *value* would only carry its
            // fields (padding is not part of a value). `HistKey` holds a
            // `u32`, so it is 4-aligned and a whole number of words.
            let words = p.cast::<u32>();
            for i in 0..core::mem::size_of::<HistKey<K>>() / 4 {
                core::ptr::write_volatile(words.add(i), 0);
            }
            core::ptr::addr_of_mut!((*p).key).write(key);
            core::ptr::addr_of_mut!((*p).slot).write(log2_slot(value));
        }
        // SAFETY: every byte was initialised above.
        let k = unsafe { &*k.as_ptr() };
        // A named local, not `&1`: a promoted constant would live in
        // `.rodata` and cost the program a global-data map.
        let one: u64 = 1;
        if let Some(c) = self.counts.get_ptr_mut(k) {
            atomic_add(c, 1);
        } else if self.counts.insert(k, &one, update::NOEXIST).is_err() {
            if let Some(c) = self.counts.get_ptr_mut(k) {
                atomic_add(c, 1);
            }
        }
    }
}

const _: () = assert!(map_type::ARRAY == 2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_slots_match_bcc_buckets() {
        assert_eq!(log2_slot(0), 0);
        assert_eq!(log2_slot(1), 1);
        assert_eq!(log2_slot(2), 2);
        assert_eq!(log2_slot(3), 2);
        assert_eq!(log2_slot(4), 3);
        assert_eq!(log2_slot(1023), 10);
        assert_eq!(log2_slot(1024), 11);
        assert_eq!(log2_slot(u64::MAX), 64);
    }

    #[test]
    fn linear_slots_have_underflow_and_overflow() {
        type H = LinearHistogram<100, 200, 25>;
        assert_eq!(H::slot(0), 0);
        assert_eq!(H::slot(99), 0);
        assert_eq!(H::slot(100), 1);
        assert_eq!(H::slot(124), 1);
        assert_eq!(H::slot(125), 2);
        assert_eq!(H::slot(199), 4);
        assert_eq!(H::slot(200), 5);
        assert_eq!(H::new().def().max_entries, 6);
    }
}
