//! Locks that know which CPU holds them, for maps shared by programs on
//! every CPU and the host.
//!
//! A program runs with interrupts off wherever its probe fired, possibly
//! inside map code on its own CPU (a kprobe in the hash map, a tracepoint
//! emitted under a lock): waiting there for a lock its own CPU holds would
//! never end. So every lock records its holder (CPU + 1), and
//! [`CpuLock::acquire`]
//! - fails at once when the caller's CPU holds it;
//! - otherwise spins, asking the caller's [`Waiter`] between rounds
//!   whether to go on: the kernel bounds a program's wait in time (the
//!   holder runs one short operation with interrupts off, so it finishes
//!   unless its vCPU is descheduled by the host), the host side waits as
//!   long as it takes.
//!
//! A failed acquisition is [`MapError::Busy`] (`-EBUSY`).
#![allow(unsafe_code)]

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::MapError;

/// `holder` of a free lock.
const FREE: u32 = 0;
/// Spins between two questions to the waiter.
const SPINS: u32 = 64;

/// Who takes a lock, and how long they may wait for another holder.
pub struct Waiter<'a> {
    tag: u32,
    /// `None`: do not wait at all.
    wait: Option<&'a mut dyn FnMut() -> bool>,
}

impl<'a> Waiter<'a> {
    /// A caller on `cpu` (a program, or a host thread standing for a CPU
    /// in tests) that goes on waiting while `wait()` returns true.
    pub fn on_cpu(cpu: usize, wait: &'a mut dyn FnMut() -> bool) -> Waiter<'a> {
        Waiter {
            tag: cpu as u32 + 1,
            wait: Some(wait),
        }
    }

    /// The same caller, taking only a lock that is free at once.
    pub(crate) fn without_waiting(&self) -> Waiter<'static> {
        Waiter {
            tag: self.tag,
            wait: None,
        }
    }

    fn go_on(&mut self) -> bool {
        match &mut self.wait {
            Some(wait) => wait(),
            None => false,
        }
    }
}

/// A spin lock that records its holder's CPU (see the module overview).
pub struct CpuLock {
    holder: AtomicU32,
}

impl CpuLock {
    /// A free lock.
    pub const fn new() -> CpuLock {
        CpuLock {
            holder: AtomicU32::new(FREE),
        }
    }

    /// Takes the lock for `w`'s CPU, or [`MapError::Busy`] (see the module
    /// overview). Released when the returned guard drops.
    pub fn acquire(&self, w: &mut Waiter<'_>) -> Result<Held<'_>, MapError> {
        loop {
            if self
                .holder
                .compare_exchange_weak(FREE, w.tag, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(Held { lock: self });
            }
            // Relaxed: this CPU's own store of its tag is always seen, so a
            // stale value can only name another CPU, which costs a bounded
            // wait, never a deadlock.
            if self.holder.load(Ordering::Relaxed) == w.tag {
                return Err(MapError::Busy);
            }
            for _ in 0..SPINS {
                core::hint::spin_loop();
                if self.holder.load(Ordering::Relaxed) == FREE {
                    break;
                }
            }
            if !w.go_on() {
                return Err(MapError::Busy);
            }
        }
    }
}

impl Default for CpuLock {
    fn default() -> Self {
        CpuLock::new()
    }
}

/// A held [`CpuLock`]; releases it on drop.
pub struct Held<'a> {
    lock: &'a CpuLock,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.lock.holder.store(FREE, Ordering::Release);
    }
}

/// Data behind a [`CpuLock`].
pub struct CpuMutex<T> {
    lock: CpuLock,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a `Guard`, and a guard exists
// only while the lock is held, by one holder at a time (acquire/release
// ordering on `holder` orders the accesses of consecutive holders).
unsafe impl<T: Send> Sync for CpuMutex<T> {}
// SAFETY: moving the mutex moves the data it owns.
unsafe impl<T: Send> Send for CpuMutex<T> {}

impl<T> CpuMutex<T> {
    /// `data` behind a free lock.
    pub fn new(data: T) -> CpuMutex<T> {
        CpuMutex {
            lock: CpuLock::new(),
            data: UnsafeCell::new(data),
        }
    }

    /// Locks it (see [`CpuLock::acquire`]).
    pub fn lock(&self, w: &mut Waiter<'_>) -> Result<Guard<'_, T>, MapError> {
        let held = self.lock.acquire(w)?;
        Ok(Guard { held, mutex: self })
    }

    /// The data, through exclusive ownership of the mutex.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// The locked data of a [`CpuMutex`].
pub struct Guard<'a, T> {
    // Dropped after any use of the data through this guard.
    #[allow(dead_code)]
    held: Held<'a>,
    mutex: &'a CpuMutex<T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held for as long as the guard lives, so no
        // other reference to the data exists.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this borrow unique.
        unsafe { &mut *self.mutex.data.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_cpu_fails_at_once_other_cpu_waits_for_its_waiter() {
        let m = CpuMutex::new(5u32);
        let mut forever = || true;
        let mut w0 = Waiter::on_cpu(0, &mut forever);
        let mut g = m.lock(&mut w0).unwrap();
        *g += 1;
        let mut asked = 0;
        let mut again = || panic!("a same-CPU holder must fail without waiting");
        let mut w0b = Waiter::on_cpu(0, &mut again);
        assert_eq!(m.lock(&mut w0b).err(), Some(MapError::Busy));
        let mut three_times = || {
            asked += 1;
            asked < 3
        };
        let mut w1 = Waiter::on_cpu(1, &mut three_times);
        assert_eq!(m.lock(&mut w1).err(), Some(MapError::Busy));
        drop(g);
        assert_eq!(asked, 3);
        let mut w1 = Waiter::on_cpu(1, &mut forever);
        assert_eq!(*m.lock(&mut w1).unwrap(), 6);
    }
}
