//! Locks.
//!
//! [`SpinLock`] disables interrupts while held, so an interrupt handler that
//! takes the same lock on the same CPU cannot deadlock against the code it
//! interrupted. [`IrqRawMutex`] is the same thing as a `lock_api` raw mutex,
//! for the heap allocator.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch;

/// A spinlock that keeps interrupts disabled while held.
pub struct SpinLock<T: ?Sized> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `value`.
unsafe impl<T: ?Sized + Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value.
unsafe impl<T: ?Sized + Send> Send for SpinLock<T> {}

/// Guard of a [`SpinLock`]; restores the interrupt state on drop.
pub struct SpinLockGuard<'a, T: ?Sized> {
    lock: &'a SpinLock<T>,
    irq_was_enabled: bool,
}

impl<T> SpinLock<T> {
    /// A new unlocked lock.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }
}

impl<T: ?Sized> SpinLock<T> {
    /// Disable interrupts and take the lock.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let irq_was_enabled = arch::irq_save();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        SpinLockGuard {
            lock: self,
            irq_was_enabled,
        }
    }

    /// Take the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let irq_was_enabled = arch::irq_save();
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(SpinLockGuard {
                lock: self,
                irq_was_enabled,
            })
        } else {
            arch::irq_restore(irq_was_enabled);
            None
        }
    }
}

impl<T: ?Sized> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves exclusive access.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T: ?Sized> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves exclusive access.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T: ?Sized> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        arch::irq_restore(self.irq_was_enabled);
    }
}

/// A `lock_api` raw mutex that disables interrupts while held.
pub struct IrqRawMutex {
    locked: AtomicBool,
    irq_was_enabled: AtomicBool,
}

// SAFETY: `lock` spins until it owns `locked` (acquire) and `unlock`
// releases it (release), so at most one holder exists at a time.
unsafe impl lock_api::RawMutex for IrqRawMutex {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self {
        locked: AtomicBool::new(false),
        irq_was_enabled: AtomicBool::new(false),
    };
    type GuardMarker = lock_api::GuardNoSend;

    fn lock(&self) {
        let was = arch::irq_save();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        self.irq_was_enabled.store(was, Ordering::Relaxed);
    }

    fn try_lock(&self) -> bool {
        let was = arch::irq_save();
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.irq_was_enabled.store(was, Ordering::Relaxed);
            true
        } else {
            arch::irq_restore(was);
            false
        }
    }

    unsafe fn unlock(&self) {
        let was = self.irq_was_enabled.load(Ordering::Relaxed);
        self.locked.store(false, Ordering::Release);
        arch::irq_restore(was);
    }
}
