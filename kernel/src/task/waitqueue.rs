//! Wait queues: tasks block until a condition holds and someone wakes them.
//!
//! No lost wake-ups, on one CPU or several. A waiter first forgets older
//! wake-ups ([`sched::prepare_to_block`]), then puts itself on the queue
//! (under the queue lock), then checks the condition, then blocks. A waker
//! makes the condition true, then takes the queue (under the same lock)
//! and wakes everyone on it. Either the waker took the queue lock after
//! the waiter released it, and so finds the waiter and wakes it: if the
//! waiter has not blocked yet, `sched::wake` leaves a pending wake-up
//! that makes its block return at once; or the waker took it before, and
//! then its write of the condition happened before the waiter's check
//! (the lock orders them), so the waiter sees the condition true and does
//! not block. The condition is checked without the queue lock held, so it
//! may take any lock itself.

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

    /// Put the current task on the queue, after forgetting older wake-ups.
    fn enqueue_current(&self) -> Pid {
        let me = sched::current_pid();
        sched::prepare_to_block();
        let mut w = self.waiters.lock();
        if !w.contains(&me) {
            w.push_back(me);
        }
        me
    }

    /// Block until `cond()` returns true.
    pub fn wait_until(&self, mut cond: impl FnMut() -> bool) {
        loop {
            let was = arch::irq_save();
            let me = self.enqueue_current();
            if cond() {
                self.remove(me);
                arch::irq_restore(was);
                return;
            }
            sched::block_current();
            arch::irq_restore(was);
        }
    }

    /// Like [`wait_until`](Self::wait_until) but gives up after `timeout_ns`;
    /// returns whether the condition became true.
    pub fn wait_until_timeout(&self, mut cond: impl FnMut() -> bool, timeout_ns: u64) -> bool {
        let deadline = crate::time::now_ns().saturating_add(timeout_ns);
        loop {
            let was = arch::irq_save();
            let me = self.enqueue_current();
            if cond() {
                self.remove(me);
                arch::irq_restore(was);
                return true;
            }
            let now = crate::time::now_ns();
            if now >= deadline {
                self.remove(me);
                arch::irq_restore(was);
                return false;
            }
            // A wake-up ends the sleep early.
            sched::sleep_ns_wakeable(deadline - now);
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
