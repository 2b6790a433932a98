//! The BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`): variable-size records,
//! reserved by programs, committed with submit or dropped with discard, and
//! drained in order by one consumer.
//!
//! Layout follows Linux: each record is an 8-byte header (`len` with a BUSY
//! and a DISCARD bit, then 4 bytes of padding) followed by the data, padded
//! to 8 bytes. Linux maps the data pages twice so records can wrap; here a
//! record that would cross the end is preceded by a padding record that
//! fills the tail, so every record is contiguous. The consumer stops at the
//! first BUSY record, which keeps records in reservation order.
//!
//! Unlike Linux, failed reservations are counted ([`RingStats::lost`]) so
//! the host learns about every record it did not get.

use alloc::vec::Vec;

use crate::store::Slab;
use crate::{round8, MapError};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
/// Padding that fills the tail before a wrap; skipped, not counted.
const PAD: u32 = 1 << 29;
const LEN_MASK: u32 = PAD - 1;
const HDR: usize = 8;

/// `BPF_RB_NO_WAKEUP`: do not wake the consumer for this record.
pub const RB_NO_WAKEUP: u64 = 1;

/// Counters of one ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Records submitted (visible to the consumer).
    pub submitted: u64,
    /// Records discarded by the program.
    pub discarded: u64,
    /// Reservations refused for lack of space: records lost.
    pub lost: u64,
    /// Records handed to the consumer.
    pub consumed: u64,
}

/// A ring of `size` bytes (a power of two).
pub struct RingBuf {
    data: Slab,
    size: usize,
    prod: u64,
    cons: u64,
    stats: RingStats,
    wakeup: bool,
}

impl RingBuf {
    /// A ring of `size` bytes: a power of two, at least 4096 (Linux also
    /// wants a multiple of the page size).
    pub fn new(size: u32) -> Result<RingBuf, MapError> {
        if size < 4096 || !size.is_power_of_two() {
            return Err(MapError::Invalid);
        }
        Ok(RingBuf {
            data: Slab::new(size as usize)?,
            size: size as usize,
            prod: 0,
            cons: 0,
            stats: RingStats::default(),
            wakeup: false,
        })
    }

    /// Capacity in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes of storage.
    pub fn memory_bytes(&self) -> usize {
        self.size
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Bytes produced and not yet consumed.
    pub fn pending_bytes(&self) -> u64 {
        self.prod - self.cons
    }

    /// Whether a submit asked for the consumer to be woken; clears the request.
    pub fn take_wakeup(&mut self) -> bool {
        core::mem::take(&mut self.wakeup)
    }

    /// Reserves `len` bytes; returns the address of the record's data, or
    /// `None` (and counts a lost record) when there is no room.
    pub fn reserve(&mut self, len: usize) -> Option<u64> {
        let total = round8(len + HDR);
        if len == 0 || len as u32 > LEN_MASK || total > self.size / 2 {
            self.stats.lost += 1;
            return None;
        }
        let mut pos = (self.prod as usize) & (self.size - 1);
        let pad = if pos + total > self.size {
            self.size - pos
        } else {
            0
        };
        if self.prod + (pad + total) as u64 - self.cons > self.size as u64 {
            self.stats.lost += 1;
            return None;
        }
        if pad > 0 {
            self.data.write_u32(pos, (pad - HDR) as u32 | PAD).ok()?;
            self.prod += pad as u64;
            pos = 0;
        }
        self.data.write_u32(pos, len as u32 | BUSY).ok()?;
        self.data.write_u32(pos + 4, 0).ok()?;
        self.prod += total as u64;
        Some(self.data.addr(pos + HDR))
    }

    /// Commits (or with `discard`, drops) the record whose data starts at
    /// `addr`. `-EINVAL` if `addr` is not a reserved record.
    pub fn commit(&mut self, addr: u64, discard: bool, flags: u64) -> Result<(), MapError> {
        let off = self
            .data
            .offset_of(addr.wrapping_sub(HDR as u64), HDR)
            .ok_or(MapError::Invalid)?;
        let hdr = self.data.read_u32(off)?;
        if hdr & BUSY == 0 || hdr & PAD != 0 {
            return Err(MapError::Invalid);
        }
        let new = (hdr & !BUSY) | if discard { DISCARD } else { 0 };
        self.data.write_u32(off, new)?;
        if discard {
            self.stats.discarded += 1;
        } else {
            self.stats.submitted += 1;
            if flags & RB_NO_WAKEUP == 0 {
                self.wakeup = true;
            }
        }
        Ok(())
    }

    /// `bpf_ringbuf_output`: reserve, copy, submit. `-ENOSPC` (and a lost
    /// record) when full.
    pub fn output(&mut self, data: &[u8], flags: u64) -> Result<(), MapError> {
        let addr = self.reserve(data.len()).ok_or(MapError::NoSpace)?;
        let off = self
            .data
            .offset_of(addr, data.len())
            .ok_or(MapError::Internal)?;
        self.data.write(off, data)?;
        self.commit(addr, false, flags)
    }

    /// Copies the next committed record into `out` (replacing its
    /// contents). Returns false when the ring is empty or the oldest record
    /// is still being written.
    pub fn pop(&mut self, out: &mut Vec<u8>) -> bool {
        while self.cons < self.prod {
            let pos = (self.cons as usize) & (self.size - 1);
            let Ok(hdr) = self.data.read_u32(pos) else {
                return false;
            };
            if hdr & BUSY != 0 {
                return false;
            }
            let len = (hdr & LEN_MASK) as usize;
            let total = if hdr & PAD != 0 {
                len + HDR
            } else {
                round8(len + HDR)
            };
            let skip = hdr & (DISCARD | PAD) != 0;
            if !skip {
                out.clear();
                out.resize(len, 0);
                if self.data.read(pos + HDR, out).is_err() {
                    return false;
                }
            }
            self.cons += total as u64;
            if !skip {
                self.stats.consumed += 1;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_discard_and_loss() {
        let mut r = RingBuf::new(4096).unwrap();
        r.output(b"one", 0).unwrap();
        let a = r.reserve(5).unwrap();
        let b = r.reserve(6).unwrap();
        r.commit(b, false, 0).unwrap();
        let mut out = Vec::new();
        assert!(r.pop(&mut out));
        assert_eq!(out, b"one");
        // `a` is still busy: `b` waits behind it.
        assert!(!r.pop(&mut out));
        r.commit(a, true, 0).unwrap();
        assert!(r.pop(&mut out));
        assert_eq!(out.len(), 6);
        assert!(!r.pop(&mut out));
        assert_eq!(r.commit(a, false, 0), Err(MapError::Invalid));
        assert_eq!(r.commit(12345, false, 0), Err(MapError::Invalid));
        let s = r.stats();
        assert_eq!((s.submitted, s.discarded, s.consumed, s.lost), (2, 1, 2, 0));
    }

    #[test]
    fn full_ring_counts_every_lost_record_and_wraps() {
        let mut r = RingBuf::new(4096).unwrap();
        let rec = [7u8; 100];
        // 112 bytes each (8-byte header, padded): 36 fit in 4096.
        let mut ok = 0;
        for _ in 0..50 {
            if r.output(&rec, 0).is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 36);
        assert_eq!(r.stats().lost, 14);
        let mut out = Vec::new();
        let mut got = 0;
        // Drain 20, refill 20: the 64-byte tail becomes padding and the
        // ring is exactly full again.
        for _ in 0..20 {
            assert!(r.pop(&mut out));
            got += 1;
        }
        for i in 0..20u8 {
            r.output(&[i; 100], 0).unwrap();
        }
        while r.pop(&mut out) {
            got += 1;
        }
        assert_eq!(got, 56);
        assert_eq!(out, [19u8; 100]);
        assert_eq!(r.pending_bytes(), 0);
        assert_eq!(r.reserve(0), None);
        assert_eq!(r.reserve(3000), None);
        assert_eq!(r.stats().lost, 16);
        assert!(RingBuf::new(5000).is_err());
    }
}
