//! A fixed-size, lock-free pool of return-probe instances.
//!
//! A return probe needs one instance per call in flight: the original
//! return address and what the entry handler stashed. Instances are claimed
//! in the entry trap and released in the return trampoline, both with
//! interrupts off and possibly on top of any kernel code, so the pool never
//! allocates and never takes a lock: each entry is a small state machine
//! driven by compare-and-swap. Each owner (return probe) may hold at most
//! its `maxactive` entries; a claim beyond that fails and the caller counts
//! a miss (the function itself runs normally, just untraced).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const FREE: u32 = 0;
const BUSY: u32 = 1;
const LIVE: u32 = 2;

/// One instance: who owns it, where its return address lived on the stack
/// and what to return to, plus a few words of entry data.
pub struct Entry<const WORDS: usize> {
    state: AtomicU32,
    owner: AtomicU32,
    /// Address of the stack slot that held the return address.
    pub ret_slot: AtomicU64,
    /// The original return address.
    pub orig_ret: AtomicU64,
    /// Entry data (timestamp, stash), written by the claimer.
    pub data: [AtomicU64; WORDS],
}

impl<const WORDS: usize> Entry<WORDS> {
    // Only used as the repeat operand of the pool's array initialiser,
    // where each element is a fresh copy.
    #[allow(clippy::declare_interior_mutable_const)]
    const NEW: Self = Self {
        state: AtomicU32::new(FREE),
        owner: AtomicU32::new(0),
        ret_slot: AtomicU64::new(0),
        orig_ret: AtomicU64::new(0),
        data: [const { AtomicU64::new(0) }; WORDS],
    };

    /// The owner id.
    pub fn owner(&self) -> u32 {
        self.owner.load(Ordering::Acquire)
    }
}

/// The pool: `N` entries of `WORDS` data words.
pub struct Pool<const N: usize, const WORDS: usize> {
    entries: [Entry<WORDS>; N],
}

impl<const N: usize, const WORDS: usize> Default for Pool<N, WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-owner accounting: how many entries are live, out of `maxactive`.
#[derive(Debug, Default)]
pub struct Quota {
    /// Entries currently claimed.
    pub active: AtomicU32,
    /// The limit.
    pub maxactive: u32,
}

impl Quota {
    /// A quota of `maxactive` entries.
    pub const fn new(maxactive: u32) -> Self {
        Self {
            active: AtomicU32::new(0),
            maxactive,
        }
    }
}

impl<const N: usize, const WORDS: usize> Pool<N, WORDS> {
    /// An empty pool.
    pub const fn new() -> Self {
        Self {
            entries: [const { Entry::NEW }; N],
        }
    }

    /// Claim an entry for `owner` within `quota`, store the return slot,
    /// return address and data, and publish it. `None` when the quota or
    /// the pool is exhausted.
    pub fn claim(
        &self,
        owner: u32,
        quota: &Quota,
        ret_slot: u64,
        orig_ret: u64,
        data: [u64; WORDS],
    ) -> Option<usize> {
        let prev = quota.active.fetch_add(1, Ordering::AcqRel);
        if prev >= quota.maxactive {
            quota.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        for (i, e) in self.entries.iter().enumerate() {
            if e.state
                .compare_exchange(FREE, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                e.owner.store(owner, Ordering::Relaxed);
                e.ret_slot.store(ret_slot, Ordering::Relaxed);
                e.orig_ret.store(orig_ret, Ordering::Relaxed);
                for (w, v) in e.data.iter().zip(data) {
                    w.store(v, Ordering::Relaxed);
                }
                e.state.store(LIVE, Ordering::Release);
                return Some(i);
            }
        }
        quota.active.fetch_sub(1, Ordering::AcqRel);
        None
    }

    /// Find the live entry whose return slot is `ret_slot` (stack slots are
    /// unique among calls in flight, across tasks).
    pub fn find(&self, ret_slot: u64) -> Option<usize> {
        self.entries.iter().position(|e| {
            e.state.load(Ordering::Acquire) == LIVE
                && e.ret_slot.load(Ordering::Relaxed) == ret_slot
        })
    }

    /// Like [`find`](Self::find), but when several live entries share the
    /// slot (two return probes on one function), prefer the one whose saved
    /// return address is `prefer_ret`: the later claim saved the earlier
    /// claim's trampoline address, so it must be unwound first.
    pub fn find_preferring(&self, ret_slot: u64, prefer_ret: u64) -> Option<usize> {
        let mut first = None;
        for (i, e) in self.entries.iter().enumerate() {
            if e.state.load(Ordering::Acquire) == LIVE
                && e.ret_slot.load(Ordering::Relaxed) == ret_slot
            {
                if e.orig_ret.load(Ordering::Relaxed) == prefer_ret {
                    return Some(i);
                }
                first.get_or_insert(i);
            }
        }
        first
    }

    /// The entry at `i`.
    pub fn entry(&self, i: usize) -> Option<&Entry<WORDS>> {
        self.entries.get(i)
    }

    /// Release entry `i`, returning its (owner, original return address,
    /// data) and giving the owner's quota back.
    pub fn release(&self, i: usize, quota: Option<&Quota>) -> Option<(u32, u64, [u64; WORDS])> {
        let e = self.entries.get(i)?;
        if e.state
            .compare_exchange(LIVE, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let owner = e.owner.load(Ordering::Relaxed);
        let ret = e.orig_ret.load(Ordering::Relaxed);
        let mut data = [0u64; WORDS];
        for (d, w) in data.iter_mut().zip(&e.data) {
            *d = w.load(Ordering::Relaxed);
        }
        e.state.store(FREE, Ordering::Release);
        if let Some(q) = quota {
            q.active.fetch_sub(1, Ordering::AcqRel);
        }
        Some((owner, ret, data))
    }

    /// Live entries of `owner`.
    pub fn live_of(&self, owner: u32) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state.load(Ordering::Acquire) == LIVE && e.owner() == owner)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_and_pool_limits() {
        let pool: Pool<3, 2> = Pool::new();
        let q = Quota::new(2);
        let a = pool.claim(7, &q, 0x100, 0xaaa, [1, 2]).unwrap();
        let b = pool.claim(7, &q, 0x200, 0xbbb, [3, 4]).unwrap();
        assert_eq!(pool.claim(7, &q, 0x300, 0xccc, [0, 0]), None, "maxactive 2");
        let q2 = Quota::new(5);
        assert!(pool.claim(8, &q2, 0x400, 0xddd, [0, 0]).is_some());
        assert_eq!(
            pool.claim(8, &q2, 0x500, 0xeee, [0, 0]),
            None,
            "pool of 3 is full"
        );
        assert_eq!(q2.active.load(Ordering::Relaxed), 1);
        assert_eq!(pool.find(0x200), Some(b));
        // Two claims on one slot: the one that saved 0xaaa... is preferred
        // when asked.
        let q3 = Quota::new(5);
        let c = pool.claim(9, &q3, 0x100, 0x7777, [0, 0]);
        assert_eq!(c, None, "pool full (3 entries)");
        assert_eq!(pool.release(b, Some(&q)), Some((7, 0xbbb, [3, 4])));
        assert_eq!(pool.release(b, Some(&q)), None, "double release");
        assert_eq!(pool.find(0x200), None);
        assert_eq!(pool.live_of(7), 1);
        assert_eq!(pool.release(a, Some(&q)), Some((7, 0xaaa, [1, 2])));
        assert_eq!(q.active.load(Ordering::Relaxed), 0);
    }
}
