//! `BPF_MAP_TYPE_RINGBUF`: one buffer shared by all CPUs, records reserved
//! in place and then submitted or discarded.

use core::marker::PhantomData;
use core::mem::{ManuallyDrop, MaybeUninit};

use super::{map_type, MapDef};
use crate::helpers::{map_ptr, raw};

/// A ring buffer of `max_entries` bytes (a power of two, a multiple of the
/// page size).
///
/// `T` optionally declares the record type the probe sends (`RingBuf<Event>`);
/// the loader reads it from the object's debug information and tools such
/// as `ktrace events` print records of that size field by field. The
/// default `()` declares nothing: records print as bytes. `T` is only a
/// declaration: [`output`](Self::output) and [`reserve`](Self::reserve)
/// still take any type.
#[repr(C)]
pub struct RingBuf<T = ()> {
    def: MapDef,
    _record: PhantomData<T>,
}

// SAFETY: a definition only; records go through helpers.
unsafe impl<T> Sync for RingBuf<T> {}

const fn ringbuf_def(bytes: u32) -> MapDef {
    MapDef {
        map_type: map_type::RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: bytes,
        map_flags: 0,
    }
}

impl RingBuf {
    /// An untyped ring buffer of `bytes` bytes.
    ///
    /// Only on `RingBuf<()>`, so `RingBuf::with_byte_size(n)` needs no type
    /// annotation (a default type parameter does not drive inference).
    pub const fn with_byte_size(bytes: u32) -> Self {
        Self::typed_with_byte_size(bytes)
    }
}

impl<T> RingBuf<T> {
    /// A ring buffer of `bytes` bytes whose records are `T`s:
    /// `static EVENTS: RingBuf<Event> = RingBuf::typed_with_byte_size(1 << 20);`
    pub const fn typed_with_byte_size(bytes: u32) -> Self {
        Self {
            def: ringbuf_def(bytes),
            _record: PhantomData,
        }
    }

    /// The definition the object file carries.
    pub const fn def(&self) -> &MapDef {
        &self.def
    }

    /// Reserve room for one `R`. `None` when the buffer is full.
    #[inline(always)]
    pub fn reserve<R>(&self) -> Option<RingBufEntry<R>> {
        // SAFETY: the helper returns null or a writable area of the size
        // asked for.
        let p = unsafe { raw::ringbuf_reserve(map_ptr(self), core::mem::size_of::<R>() as u64, 0) };
        if p.is_null() {
            None
        } else {
            Some(RingBufEntry { data: p.cast() })
        }
    }

    /// Copy `record` into the buffer in one step.
    #[inline(always)]
    pub fn output<R>(&self, record: &R) -> Result<(), i64> {
        // SAFETY: `record` is readable for `size_of::<R>()` bytes.
        let rc = unsafe {
            raw::ringbuf_output(
                map_ptr(self),
                (record as *const R).cast(),
                core::mem::size_of::<R>() as u64,
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
