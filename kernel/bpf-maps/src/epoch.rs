//! Epochs: when may a deleted map slot be reused?
//!
//! The runtime calls [`Epochs::enter`] before running a program on a CPU and
//! drops the guard after. A deletion takes a tag with [`Epochs::retire`]; a
//! slot retired with tag `t` may be reused once [`Epochs::reusable`] says so,
//! i.e. when every CPU is either idle or running a program that entered
//! after `t` (and so could not have looked the slot up before it died).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// Per-CPU program activity, for deferred reuse of deleted map slots.
pub struct Epochs {
    /// Current epoch; starts at 1 (0 marks an idle CPU).
    global: AtomicU64,
    /// Per CPU: the epoch the running program entered at, or 0.
    active: Vec<AtomicU64>,
}

impl Epochs {
    /// Epoch tracking for `ncpus` CPUs (at least one).
    pub fn new(ncpus: usize) -> Epochs {
        Epochs {
            global: AtomicU64::new(1),
            active: (0..ncpus.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Number of CPUs tracked.
    pub fn cpus(&self) -> usize {
        self.active.len()
    }

    /// Marks `cpu` as running a program until the guard drops. Nested
    /// entries (a program run from inside another's probe) keep the outer,
    /// older epoch, which is the conservative one.
    /// (Inlined: every program run calls it, and a call into another
    /// crate is an indirect call through the GOT, slow under emulation.)
    #[inline]
    pub fn enter(&self, cpu: usize) -> EpochGuard<'_> {
        // The remainder only for a CPU number past the table (never, in
        // the kernel): a division is a slow helper call under emulation,
        // on every program run.
        let n = self.active.len();
        let slot = &self.active[if cpu < n { cpu } else { cpu % n }];
        let prev = slot.load(Ordering::Relaxed);
        if prev == 0 {
            // Sequentially consistent, i.e. a locked `xchg` on x86, although
            // only this CPU writes its slot (with interrupts off): the slot
            // is a Dekker flag against `reusable`. The run's next loads
            // (a bucket's slot pointer) must not be satisfied before this
            // store is visible to other CPUs; x86 may otherwise hold the
            // store in its store buffer while those loads read the slot
            // before a concurrent delete unlinks it, and the deleting CPU,
            // after its `retire` (a full barrier), would then read 0 here
            // and let the slot be reused under the run. A plain store would
            // be enough only if `reusable` could make every CPU drain its
            // store buffer first (an IPI, as Linux's membarrier), which it
            // cannot from probe context, where inserts call it.
            slot.store(self.global.load(Ordering::Acquire), Ordering::SeqCst);
        }
        EpochGuard { slot, prev }
    }

    /// A tag for a slot deleted now.
    pub fn retire(&self) -> u64 {
        self.global.fetch_add(1, Ordering::SeqCst)
    }

    /// Whether a slot retired with `tag` can no longer be referenced by a
    /// running program.
    pub fn reusable(&self, tag: u64) -> bool {
        self.active.iter().all(|a| {
            let e = a.load(Ordering::SeqCst);
            e == 0 || e > tag
        })
    }
}

/// Marks a CPU busy; restores the previous state on drop.
pub struct EpochGuard<'a> {
    slot: &'a AtomicU64,
    prev: u64,
}

impl Drop for EpochGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.slot.store(self.prev, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_slot_waits_for_older_programs() {
        let e = Epochs::new(2);
        let g = e.enter(1);
        let tag = e.retire();
        assert!(!e.reusable(tag), "CPU 1 entered before the deletion");
        let g0 = e.enter(0);
        assert!(!e.reusable(tag));
        drop(g);
        assert!(e.reusable(tag), "CPU 0 entered after the deletion");
        drop(g0);
        assert!(e.reusable(tag));
    }

    #[test]
    fn nested_enter_keeps_outer_epoch() {
        let e = Epochs::new(1);
        let outer = e.enter(0);
        let tag = e.retire();
        {
            let _inner = e.enter(0);
            assert!(!e.reusable(tag));
        }
        assert!(!e.reusable(tag));
        drop(outer);
        assert!(e.reusable(tag));
    }
}
