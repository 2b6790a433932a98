//! Raw, preallocated byte storage shared with BPF programs.
//!
//! Map values are handed to programs as plain addresses: the interpreter
//! reads and writes them through raw pointers, outside any Rust borrow. So
//! the storage must never be reached through a `&`/`&mut [u8]` either (that
//! would claim exclusivity the program breaks): [`Slab`] owns a raw
//! allocation and every access from Rust is a raw copy. This module and
//! `lock` (the data behind a lock) are the crate's only `unsafe` code.
#![allow(unsafe_code)]

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

use crate::MapError;

/// A zeroed, 8-byte-aligned block of `len` bytes, freed on drop.
pub(crate) struct Slab {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Slab` owns its allocation; moving it to another thread moves
// ownership. Concurrent access from programs is arbitrated by the embedder
// (map locks, the epoch scheme), as for any memory programs touch.
unsafe impl Send for Slab {}
// SAFETY: `&Slab` methods only copy bytes through raw pointers; callers
// serialise writers (the kernel holds the map lock while calling them).
unsafe impl Sync for Slab {}

impl Slab {
    /// Allocates `len` zeroed bytes (`len` may be 0).
    pub fn new(len: usize) -> Result<Slab, MapError> {
        if len == 0 {
            return Ok(Slab {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        let layout = Layout::from_size_align(len, 8).map_err(|_| MapError::TooBig)?;
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(MapError::NoMemory)?;
        Ok(Slab { ptr, len })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    fn check(&self, off: usize, n: usize) -> Result<(), MapError> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MapError::Internal),
        }
    }

    /// The address of byte `off`, as a program sees it.
    pub fn addr(&self, off: usize) -> u64 {
        self.ptr.as_ptr() as u64 + off as u64
    }

    /// Whether `addr..addr+n` lies inside this slab; returns the offset.
    pub fn offset_of(&self, addr: u64, n: usize) -> Option<usize> {
        let base = self.ptr.as_ptr() as u64;
        let off = addr.checked_sub(base)? as usize;
        self.check(off, n).ok().map(|()| off)
    }

    /// Copies `out.len()` bytes from offset `off`.
    pub fn read(&self, off: usize, out: &mut [u8]) -> Result<(), MapError> {
        self.check(off, out.len())?;
        let src = self.ptr.as_ptr().wrapping_add(off);
        if (src as usize).is_multiple_of(8) {
            let len = out.len();
            let mut chunks = out.chunks_exact_mut(8);
            for (i, c) in (&mut chunks).enumerate() {
                // SAFETY: 8 bytes inside the allocation (checked above),
                // 8-aligned (checked above, `i * 8` keeps it).
                let w = unsafe { core::ptr::read_volatile(src.add(i * 8).cast::<u64>()) };
                c.copy_from_slice(&w.to_ne_bytes());
            }
            let rest = chunks.into_remainder();
            let done = len - rest.len();
            for (i, b) in rest.iter_mut().enumerate() {
                // SAFETY: inside the allocation (checked above).
                *b = unsafe { core::ptr::read_volatile(src.add(done + i)) };
            }
            return Ok(());
        }
        // SAFETY: the range is inside the allocation (checked above) and
        // `out` is a distinct Rust buffer.
        unsafe { core::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies `data` to offset `off`.
    ///
    /// Keys and values are a few words: they are copied a word at a time
    /// (volatile, so the optimiser cannot turn the loop back into a
    /// `memcpy` call) instead of through `memcpy`, whose `rep movsb` runs
    /// a byte per step under emulation. Unaligned offsets take `memcpy`.
    pub fn write(&self, off: usize, data: &[u8]) -> Result<(), MapError> {
        self.check(off, data.len())?;
        let dst = self.ptr.as_ptr().wrapping_add(off);
        if (dst as usize).is_multiple_of(8) {
            let mut chunks = data.chunks_exact(8);
            for (i, c) in (&mut chunks).enumerate() {
                let w = u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
                // SAFETY: 8 bytes inside the allocation (checked above),
                // 8-aligned.
                unsafe { core::ptr::write_volatile(dst.add(i * 8).cast::<u64>(), w) };
            }
            let rest = chunks.remainder();
            let done = data.len() - rest.len();
            for (i, &b) in rest.iter().enumerate() {
                // SAFETY: inside the allocation (checked above).
                unsafe { core::ptr::write_volatile(dst.add(done + i), b) };
            }
            return Ok(());
        }
        // SAFETY: as in `read`, in the other direction.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Zeroes `n` bytes at `off` (a word at a time when aligned, as `write`).
    pub fn zero(&self, off: usize, n: usize) -> Result<(), MapError> {
        self.check(off, n)?;
        let dst = self.ptr.as_ptr().wrapping_add(off);
        if (dst as usize).is_multiple_of(8) && n <= 256 {
            let words = n / 8;
            for i in 0..words {
                // SAFETY: inside the allocation (checked above), 8-aligned.
                unsafe { core::ptr::write_volatile(dst.add(i * 8).cast::<u64>(), 0) };
            }
            for i in words * 8..n {
                // SAFETY: inside the allocation (checked above).
                unsafe { core::ptr::write_volatile(dst.add(i), 0) };
            }
            return Ok(());
        }
        // SAFETY: the range is inside the allocation.
        unsafe { core::ptr::write_bytes(dst, 0, n) };
        Ok(())
    }

    /// Whether the `n` bytes at `off` equal `key` (a word at a time, without
    /// materialising a slice of shared memory).
    pub fn eq(&self, off: usize, key: &[u8]) -> bool {
        if self.check(off, key.len()).is_err() {
            return false;
        }
        let src = self.ptr.as_ptr().wrapping_add(off);
        let aligned = (src as usize).is_multiple_of(8);
        let mut chunks = key.chunks_exact(8);
        for (i, c) in (&mut chunks).enumerate() {
            let want = u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
            let p = src.wrapping_add(i * 8).cast::<u64>();
            // SAFETY: 8 bytes inside the allocation (checked above); the
            // volatile read only when 8-aligned.
            let have = unsafe {
                if aligned {
                    core::ptr::read_volatile(p)
                } else {
                    core::ptr::read_unaligned(p)
                }
            };
            if have != want {
                return false;
            }
        }
        let rest = chunks.remainder();
        let done = key.len() - rest.len();
        rest.iter().enumerate().all(|(i, &b)| {
            // SAFETY: inside the allocation (checked above).
            (unsafe { core::ptr::read_volatile(src.add(done + i)) }) == b
        })
    }

    /// Writes a little-endian u32 at `off`.
    pub fn write_u32(&self, off: usize, v: u32) -> Result<(), MapError> {
        self.write(off, &v.to_le_bytes())
    }

    /// The naturally aligned u32 at `off` as an atomic, for words that
    /// several CPUs touch at once (ring buffer record headers). Every
    /// access to such a word goes through this.
    pub fn atomic_u32(&self, off: usize) -> Result<&AtomicU32, MapError> {
        self.check(off, 4)?;
        if !off.is_multiple_of(4) {
            return Err(MapError::Internal);
        }
        // SAFETY: (1) the 4 bytes at `off` lie inside the allocation
        // (checked above), which lives as long as `&self`; (2) the base is
        // 8-aligned and `off` a multiple of 4, so the pointer is aligned for
        // `AtomicU32`; (3) the bytes are only ever accessed atomically while
        // this reference is used concurrently (the ring buffer reaches
        // headers only through this method).
        Ok(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast::<u32>()) })
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: allocated in `new` with this exact layout (which was valid then).
            unsafe {
                dealloc(
                    self.ptr.as_ptr(),
                    Layout::from_size_align_unchecked(self.len, 8),
                )
            };
        }
    }
}

/// `n` copies of `value`, or [`MapError::NoMemory`]: creating a map must
/// end in a refusal, not an aborted kernel, when the heap is short.
pub(crate) fn try_filled<T: Clone>(value: T, n: usize) -> Result<alloc::vec::Vec<T>, MapError> {
    let mut v = alloc::vec::Vec::new();
    v.try_reserve_exact(n).map_err(|_| MapError::NoMemory)?;
    v.resize(n, value);
    Ok(v)
}
