//! `BPF_MAP_TYPE_RINGBUF`: one buffer shared by all CPUs, records reserved
//! in place and then submitted or discarded.

use core::mem::{ManuallyDrop, MaybeUninit};

use super::{map_type, MapDef};
use crate::helpers::{map_ptr, raw};

/// A ring buffer of `max_entries` bytes (a power of two, a multiple of the
/// page size).
#[repr(C)]
pub struct RingBuf {
    def: MapDef,
}

// SAFETY: a definition only; records go through helpers.
unsafe impl Sync for RingBuf {}

impl RingBuf {
    /// A ring buffer of `bytes` bytes.
    pub const fn with_byte_size(bytes: u32) -> Self {
        Self {
            def: MapDef {
                map_type: map_type::RINGBUF,
                key_size: 0,
                value_size: 0,
                max_entries: bytes,
                map_flags: 0,
            },
        }
    }

    /// The definition the object file carries.
    pub const fn def(&self) -> &MapDef {
        &self.def
    }

    /// Reserve room for one `T`. `None` when the buffer is full.
    #[inline(always)]
    pub fn reserve<T>(&self) -> Option<RingBufEntry<T>> {
        // SAFETY: the helper returns null or a writable area of the size
        // asked for.
        let p = unsafe { raw::ringbuf_reserve(map_ptr(self), core::mem::size_of::<T>() as u64, 0) };
        if p.is_null() {
            None
        } else {
            Some(RingBufEntry { data: p.cast() })
        }
    }

    /// Copy `record` into the buffer in one step.
    #[inline(always)]
    pub fn output<T>(&self, record: &T) -> Result<(), i64> {
        // SAFETY: `record` is readable for `size_of::<T>()` bytes.
        let rc = unsafe {
            raw::ringbuf_output(
                map_ptr(self),
                (record as *const T).cast(),
                core::mem::size_of::<T>() as u64,
                0,
            )
        };
        if rc < 0 {
            Err(rc)
        } else {
            Ok(())
        }
    }
}

/// A reserved record. Write it, then [`submit`](Self::submit) it; dropping
/// it discards it (the verifier insists every reservation is released).
#[must_use = "a reserved record must be submitted or discarded"]
pub struct RingBufEntry<T> {
    data: *mut MaybeUninit<T>,
}

impl<T> RingBufEntry<T> {
    /// Fill the record.
    #[inline(always)]
    pub fn write(&mut self, value: T) {
        // SAFETY: `data` is a reserved, writable, aligned slot for a `T`.
        unsafe { (*self.data).write(value) };
    }

    /// The record's memory.
    #[inline(always)]
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.data.cast()
    }

    /// Publish the record to readers.
    #[inline(always)]
    pub fn submit(self) {
        let this = ManuallyDrop::new(self);
        // SAFETY: `data` came from `ringbuf_reserve` and is released once.
        unsafe { raw::ringbuf_submit(this.data.cast(), 0) }
    }

    /// Drop the record unpublished.
    #[inline(always)]
    pub fn discard(self) {
        drop(self)
    }
}

impl<T> Drop for RingBufEntry<T> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `data` came from `ringbuf_reserve` and is released once
        // (`submit` skips this drop).
        unsafe { raw::ringbuf_discard(self.data.cast(), 0) }
    }
}
