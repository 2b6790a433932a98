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
//!
//! An instance is keyed by the stack slot of the return address, so it
//! must not outlive that stack: when a task's stack is freed, every
//! instance whose slot lies in it is given back with
//! [`Pool::release_range`] (the task can never return through them, and a
//! later task reusing the memory would otherwise find them first).
//!
//! Each entry's state word carries a generation, bumped at every claim, so
//! a release that read an entry and then lost the CPU cannot release the
//! entry's next life by mistake (compare-and-swap on the whole word fails).

use core::ops::Range;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Low bits of the state word: what the entry is doing.
const FREE: u64 = 0;
const BUSY: u64 = 1;
const LIVE: u64 = 2;
const STATE_MASK: u64 = 0b11;
/// The generation lives above the state bits.
const GEN_ONE: u64 = 1 << 2;

fn state_of(word: u64) -> u64 {
    word & STATE_MASK
}

fn with_state(word: u64, state: u64) -> u64 {
    (word & !STATE_MASK) | state
}

/// One instance: who owns it, where its return address lived on the stack
/// and what to return to, plus a few words of entry data.
pub struct Entry<const WORDS: usize> {
    /// Generation (upper bits) and state (low two bits).
    state: AtomicU64,
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
        state: AtomicU64::new(FREE),
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
        self.claim_near(0, 1, owner, quota, ret_slot, orig_ret, data)
    }

    /// Like [`claim`](Self::claim), for CPU `cpu` of `cpus`: the search
    /// starts in that CPU's own share of the entries (the `cpu`-th of
    /// `cpus` equal parts) and wraps around into the others only when its
    /// share is full. CPUs claiming at once then rarely touch the same
    /// entries (no compare-and-swap lost to another CPU, no cache line
    /// bounced), while any CPU can still use the whole pool. Lookups and
    /// releases are unchanged: an instance is found by its stack slot
    /// whichever CPU claimed it (a task may return on another CPU).
    #[allow(clippy::too_many_arguments)]
    pub fn claim_near(
        &self,
        cpu: usize,
        cpus: usize,
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
        let start = if cpus == 0 {
            0
        } else {
            (cpu % cpus) * (N / cpus)
        };
        let order = (start..N).chain(0..start);
        for (i, e) in order.map(|i| (i, &self.entries[i])) {
            let word = e.state.load(Ordering::Relaxed);
            if state_of(word) != FREE {
                continue;
            }
            let busy = with_state(word.wrapping_add(GEN_ONE), BUSY);
            if e.state
                .compare_exchange(word, busy, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                e.owner.store(owner, Ordering::Relaxed);
                e.ret_slot.store(ret_slot, Ordering::Relaxed);
                e.orig_ret.store(orig_ret, Ordering::Relaxed);
                for (w, v) in e.data.iter().zip(data) {
                    w.store(v, Ordering::Relaxed);
                }
                e.state.store(with_state(busy, LIVE), Ordering::Release);
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
            state_of(e.state.load(Ordering::Acquire)) == LIVE
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
            if state_of(e.state.load(Ordering::Acquire)) == LIVE
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
        let word = e.state.load(Ordering::Acquire);
        if state_of(word) != LIVE
            || e.state
                .compare_exchange(
                    word,
                    with_state(word, BUSY),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return None;
        }
        Some(self.finish_release(e, word, quota))
    }

    /// Read out an entry this caller moved from LIVE (`word`) to BUSY, free
    /// it, and give the quota back.
    fn finish_release(
        &self,
        e: &Entry<WORDS>,
        word: u64,
        quota: Option<&Quota>,
    ) -> (u32, u64, [u64; WORDS]) {
        let owner = e.owner.load(Ordering::Relaxed);
        let ret = e.orig_ret.load(Ordering::Relaxed);
        let mut data = [0u64; WORDS];
        for (d, w) in data.iter_mut().zip(&e.data) {
            *d = w.load(Ordering::Relaxed);
        }
        e.state.store(with_state(word, FREE), Ordering::Release);
        if let Some(q) = quota {
            q.active.fetch_sub(1, Ordering::AcqRel);
        }
        (owner, ret, data)
    }

    /// Release every live entry whose return slot lies in `stack` (a stack
    /// that is going away), calling `released(owner)` for each so the
    /// caller can give the owner's quota back. Returns how many.
    ///
    /// Only the owner of `stack` ever claims or returns through entries
    /// with slots in it, and that task no longer runs, so no entry in the
    /// range can be claimed or released by anyone else meanwhile; entries
    /// outside the range are only read. An entry that is released and
    /// claimed again (by another stack) between our read and our
    /// compare-and-swap has a new generation, so the swap fails and the
    /// new instance is left alone.
    pub fn release_range(&self, stack: Range<u64>, mut released: impl FnMut(u32)) -> usize {
        let mut n = 0;
        for e in &self.entries {
            let word = e.state.load(Ordering::Acquire);
            if state_of(word) != LIVE || !stack.contains(&e.ret_slot.load(Ordering::Relaxed)) {
                continue;
            }
            if e.state
                .compare_exchange(
                    word,
                    with_state(word, BUSY),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                let (owner, _, _) = self.finish_release(e, word, None);
                released(owner);
                n += 1;
            }
        }
        n
    }

    /// Live entries of `owner`.
    pub fn live_of(&self, owner: u32) -> usize {
        self.entries
            .iter()
            .filter(|e| state_of(e.state.load(Ordering::Acquire)) == LIVE && e.owner() == owner)
            .count()
    }

    /// Live entries whose owner `is_known` does not recognise (return
    /// probes removed while these calls were in flight).
    pub fn live_unowned(&self, mut is_known: impl FnMut(u32) -> bool) -> usize {
        self.entries
            .iter()
            .filter(|e| state_of(e.state.load(Ordering::Acquire)) == LIVE && !is_known(e.owner()))
            .count()
    }

    /// Entries free to claim now.
    pub fn free(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| state_of(e.state.load(Ordering::Acquire)) == FREE)
            .count()
    }

    /// Entries in all.
    pub const fn size(&self) -> usize {
        N
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

    /// Each CPU claims from its own share first, spills over into the
    /// others when its share is full, and any CPU finds and releases any
    /// instance (a task may return on another CPU than it entered on).
    #[test]
    fn claims_start_in_the_cpus_own_share() {
        let pool: Pool<8, 1> = Pool::new();
        let q = Quota::new(8);
        assert_eq!(pool.claim_near(0, 4, 1, &q, 0x10, 1, [0]), Some(0));
        assert_eq!(pool.claim_near(1, 4, 1, &q, 0x20, 2, [0]), Some(2));
        assert_eq!(pool.claim_near(3, 4, 1, &q, 0x30, 3, [0]), Some(6));
        assert_eq!(pool.claim_near(3, 4, 1, &q, 0x40, 4, [0]), Some(7));
        // CPU 3's share is full: it wraps around to the first free entry.
        assert_eq!(pool.claim_near(3, 4, 1, &q, 0x50, 5, [0]), Some(1));
        // CPU 9 of 4 (a bad hint) is CPU 1's share, not out of bounds.
        assert_eq!(pool.claim_near(9, 4, 1, &q, 0x60, 6, [0]), Some(3));
        // Found by slot and released whichever CPU asks.
        let i = pool.find(0x30).unwrap();
        assert_eq!(pool.release(i, Some(&q)), Some((1, 3, [0])));
        assert_eq!(q.active.load(Ordering::Relaxed), 5);
        assert_eq!(pool.claim_near(0, 0, 1, &q, 0x70, 7, [0]), Some(4));
    }

    /// The crash of issue 14: a task exits inside a probed function (it
    /// never returns), its stack is freed and a later task reuses it. The
    /// dead task's instance must be gone before the later task's return,
    /// which has the same slot, looks its own up.
    #[test]
    fn a_freed_stack_gives_its_instances_back() {
        const TRAMPOLINE: u64 = 0x7ee7;
        let pool: Pool<4, 1> = Pool::new();
        let exit_probe = Quota::new(4);
        let reap_probe = Quota::new(4);
        let stack = 0x10_000..0x20_000;
        // The exiting task's call, slot near the top of its stack.
        pool.claim(1, &exit_probe, 0x1_ff00, 0xdead, [0]).unwrap();
        // An instance on another (live) stack stays.
        let other = pool.claim(2, &reap_probe, 0x3_ff00, 0x5555, [0]).unwrap();
        let mut owners = [0u32; 4];
        let mut n = 0;
        assert_eq!(
            pool.release_range(stack.clone(), |o| {
                owners[n] = o;
                n += 1;
            }),
            1
        );
        assert_eq!(&owners[..n], &[1]);
        assert_eq!(pool.free(), 3);
        assert_eq!(pool.entry(other).unwrap().owner(), 2);
        // A new task on the same memory enters a probed function at the
        // same depth: its return finds its own instance.
        let mine = pool.claim(2, &reap_probe, 0x1_ff00, 0xbeef, [7]).unwrap();
        let found = pool.find_preferring(0x1_ff00, TRAMPOLINE).unwrap();
        assert_eq!(found, mine);
        assert_eq!(
            pool.release(found, Some(&reap_probe)),
            Some((2, 0xbeef, [7]))
        );
        assert_eq!(pool.release_range(stack, |_| {}), 0, "nothing left there");
    }

    /// Instances of tasks that exited used to stay forever: one probe with
    /// a large `maxactive` filled the shared pool for good.
    #[test]
    fn exited_tasks_do_not_exhaust_the_pool() {
        const STACK: u64 = 0x1_0000;
        let pool: Pool<8, 1> = Pool::new();
        let exit_probe = Quota::new(8);
        for round in 0..100u64 {
            // Eight tasks exit inside the probed function, each on its own
            // stack; then they are reaped.
            for t in 0..8u64 {
                let slot = (t + 1) * STACK - 0x100;
                assert!(
                    pool.claim(1, &exit_probe, slot, round, [t]).is_some(),
                    "round {round}"
                );
            }
            assert_eq!(pool.free(), 0);
            for t in 0..8u64 {
                let released = pool.release_range(t * STACK..(t + 1) * STACK, |owner| {
                    assert_eq!(owner, 1);
                    exit_probe.active.fetch_sub(1, Ordering::AcqRel);
                });
                assert_eq!(released, 1);
            }
            assert_eq!(pool.free(), 8);
            assert_eq!(exit_probe.active.load(Ordering::Relaxed), 0);
        }
        // A new probe gets every entry.
        let new_probe = Quota::new(8);
        for i in 0..8u64 {
            assert!(pool.claim(2, &new_probe, 0x100 + 8 * i, 0, [0]).is_some());
        }
    }

    #[test]
    fn counts_free_and_unowned_entries() {
        let pool: Pool<4, 1> = Pool::new();
        let q = Quota::new(4);
        assert_eq!((pool.size(), pool.free()), (4, 4));
        pool.claim(1, &q, 0x100, 0, [0]).unwrap();
        pool.claim(9, &q, 0x200, 0, [0]).unwrap();
        assert_eq!(pool.free(), 2);
        assert_eq!(pool.live_unowned(|owner| owner == 1), 1);
    }

    /// One thread plays tasks that call and return on live stacks (each
    /// return must find its own instance with its own data); another plays
    /// the reaper, claiming on dead stacks and releasing them by range. The
    /// reaper never takes a live stack's instance, and the pool ends empty.
    #[test]
    fn releasing_a_dead_stack_races_with_live_calls() {
        extern crate std;
        use std::sync::Arc;
        use std::thread;

        let pool: Arc<Pool<16, 1>> = Arc::new(Pool::new());
        let live_quota = Arc::new(Quota::new(8));
        let dead_quota = Arc::new(Quota::new(8));
        let live = {
            let (pool, q) = (pool.clone(), live_quota.clone());
            thread::spawn(move || {
                for i in 0..200_000u64 {
                    let slot = 0x10_0000 + 8 * (i % 4);
                    let Some(e) = pool.claim(1, &q, slot, i, [i]) else {
                        continue;
                    };
                    assert_eq!(pool.find(slot), Some(e));
                    assert_eq!(pool.release(e, Some(&q)), Some((1, i, [i])));
                }
            })
        };
        let reaper = {
            let (pool, q) = (pool.clone(), dead_quota.clone());
            thread::spawn(move || {
                for _ in 0..50_000 {
                    let mut claimed = 0;
                    for t in 0..4u64 {
                        if pool.claim(2, &q, 0x20_0000 + 8 * t, 0, [0]).is_some() {
                            claimed += 1;
                        }
                    }
                    let released = pool.release_range(0x20_0000..0x30_0000, |owner| {
                        assert_eq!(owner, 2);
                        q.active.fetch_sub(1, Ordering::AcqRel);
                    });
                    assert_eq!(released, claimed);
                }
            })
        };
        live.join().unwrap();
        reaper.join().unwrap();
        assert_eq!(pool.free(), 16);
        assert_eq!(live_quota.active.load(Ordering::Relaxed), 0);
        assert_eq!(dead_quota.active.load(Ordering::Relaxed), 0);
    }
}
