//! Wait queues: tasks block until a condition holds and someone wakes them.

use super::sched::{self, Pid};
use crate::arch;
use crate::sync::SpinLock;
use alloc::collections::VecDeque;

/// A queue of blocked tasks.
pub struct WaitQueue {
    waiters: SpinLock<VecDeque<Pid>>,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        Self {
            waiters: SpinLock::new(VecDeque::new()),
        }
    }

    /// Block until `cond()` returns true. `cond` is checked with interrupts
    /// disabled, so a wake-up from an interrupt handler between the check
    /// and blocking cannot be lost (one CPU; SMP will need the queue lock
    /// held across the check).
    pub fn wait_until(&self, mut cond: impl FnMut() -> bool) {
        loop {
            let was = arch::irq_save();
            if cond() {
                arch::irq_restore(was);
                return;
            }
            self.waiters.lock().push_back(sched::current_pid());
            sched::block_current();
            arch::irq_restore(was);
        }
    }

    /// Like [`wait_until`](Self::wait_until) but gives up after `timeout_ns`;
    /// returns whether the condition became true.
    pub fn wait_until_timeout(&self, mut cond: impl FnMut() -> bool, timeout_ns: u64) -> bool {
        let deadline = crate::time::now_ns().saturating_add(timeout_ns);
        let me = sched::current_pid();
        loop {
            let was = arch::irq_save();
            if cond() {
                arch::irq_restore(was);
                return true;
            }
            let now = crate::time::now_ns();
            if now >= deadline {
                arch::irq_restore(was);
                return false;
            }
            self.waiters.lock().push_back(me);
            // A wake-up ends the sleep early.
            sched::sleep_ns(deadline - now);
            arch::irq_restore(was);
            self.remove(me);
        }
    }

    fn remove(&self, pid: Pid) {
        self.waiters.lock().retain(|&p| p != pid);
    }

    /// Wake every waiter.
    pub fn wake_all(&self) {
        let waiters = core::mem::take(&mut *self.waiters.lock());
        for pid in waiters {
            sched::wake(pid);
        }
    }

    /// Number of blocked tasks.
    pub fn len(&self) -> usize {
        self.waiters.lock().len()
    }

    /// Whether no task waits.
    #[allow(dead_code)] // pairs with `len`
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
