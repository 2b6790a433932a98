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
//!
//! # Many producers, one consumer
//! Every method takes `&self`, so programs on all CPUs and the consumer
//! use the ring at once without a map lock. The protocol is Linux's:
//! - *Reserve* is serialised by a small producer lock (one word holding
//!   the holder's CPU + 1). Under it a producer checks the room against
//!   `cons`, writes the record's header with the BUSY bit (and a padding
//!   header before a wrap), and only then publishes the new `prod` with a
//!   release store. So the consumer, which reads `prod` with acquire,
//!   never sees a header older than the reservation.
//! - *Commit* needs no lock: it swaps the header from BUSY to done (or
//!   DISCARD) with a release compare-exchange, after the program wrote
//!   the data; the compare-exchange makes a second commit of a record
//!   still in the ring fail. Once the consumer passed it, its space may
//!   hold a newer reservation, which a stale address would then commit:
//!   programs cannot do that (the verifier's reference tracking releases
//!   a reservation exactly once), and host callers must not.
//! - The *consumer* reads headers with acquire from `cons` up to `prod`,
//!   stops at the first BUSY one (so records come out in reservation
//!   order, and a record is seen only once committed), copies the data,
//!   then releases `cons`, which is what lets producers reuse the space.
//!   One consumer at a time: a second one finds the consumer flag taken
//!   and gets nothing this round.
//!
//! Waiting: a producer that finds the lock held by *another* CPU spins,
//! at most [`PRODUCER_SPINS`] times; the holder runs a few dozen
//! instructions with interrupts off (in the kernel), so the bound is only
//! reached if the holder's CPU stops (a vCPU descheduled by the host), and
//! then the record is counted lost rather than waited for without end. A
//! producer that finds its *own* CPU holding the lock (a probe that fired
//! inside the reservation code) fails at once: waiting would deadlock.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

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

/// Most spins of a producer waiting for another CPU's reservation.
pub const PRODUCER_SPINS: u32 = 1 << 20;

/// Counters of one ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Records submitted (visible to the consumer).
    pub submitted: u64,
    /// Records discarded by the program.
    pub discarded: u64,
    /// Reservations refused for lack of space (or a producer lock held
    /// too long), and records too large for their reader
    /// ([`RingBuf::pop_within`]): records lost.
    pub lost: u64,
    /// Records handed to the consumer.
    pub consumed: u64,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    discarded: AtomicU64,
    lost: AtomicU64,
    consumed: AtomicU64,
}

/// A ring of `size` bytes (a power of two).
pub struct RingBuf {
    data: Slab,
    size: usize,
    /// Producer lock: 0 when free, else the holding CPU + 1.
    producer: AtomicU32,
    /// Bytes ever reserved (released after the headers are written).
    prod: AtomicU64,
    /// Bytes ever consumed (released after the data was copied out).
    cons: AtomicU64,
    /// A consumer is draining.
    consumer: AtomicBool,
    stats: Counters,
    wakeup: AtomicBool,
}

/// Holds the producer lock; releases it on drop.
struct ProducerGuard<'a>(&'a AtomicU32);

impl Drop for ProducerGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Holds the consumer flag; releases it on drop.
struct ConsumerGuard<'a>(&'a AtomicBool);

impl Drop for ConsumerGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
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
            producer: AtomicU32::new(0),
            prod: AtomicU64::new(0),
            cons: AtomicU64::new(0),
            consumer: AtomicBool::new(false),
            stats: Counters::default(),
            wakeup: AtomicBool::new(false),
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
        let c = &self.stats;
        RingStats {
            submitted: c.submitted.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            consumed: c.consumed.load(Ordering::Relaxed),
        }
    }

    /// Bytes produced and not yet consumed.
    pub fn pending_bytes(&self) -> u64 {
        let cons = self.cons.load(Ordering::Acquire);
        self.prod.load(Ordering::Acquire).saturating_sub(cons)
    }

    /// Whether a submit asked for the consumer to be woken; clears the request.
    pub fn take_wakeup(&self) -> bool {
        self.wakeup.swap(false, Ordering::AcqRel)
    }

    fn lose(&self) -> Option<u64> {
        self.stats.lost.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Takes the producer lock for `cpu` (see the module overview).
    fn lock_producer(&self, cpu: usize) -> Option<ProducerGuard<'_>> {
        let me = (cpu as u32).wrapping_add(1).max(1);
        let mut spins = 0;
        loop {
            match self
                .producer
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Some(ProducerGuard(&self.producer)),
                Err(holder) if holder == me => return None,
                Err(_) => {}
            }
            spins += 1;
            if spins > PRODUCER_SPINS {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// Reserves `len` bytes for a program on `cpu`; returns the address of
    /// the record's data, or `None` (and counts a lost record) when there
    /// is no room.
    pub fn reserve(&self, len: usize, cpu: usize) -> Option<u64> {
        let total = round8(len + HDR);
        if len == 0 || len as u32 > LEN_MASK || total > self.size / 2 {
            return self.lose();
        }
        let Some(_guard) = self.lock_producer(cpu) else {
            return self.lose();
        };
        // Only lock holders write `prod`.
        let prod = self.prod.load(Ordering::Relaxed);
        let mut pos = (prod as usize) & (self.size - 1);
        let pad = if pos + total > self.size {
            self.size - pos
        } else {
            0
        };
        // Acquire: the consumer's copy out of the space is done before we
        // reuse it.
        let cons = self.cons.load(Ordering::Acquire);
        if prod + (pad + total) as u64 - cons > self.size as u64 {
            return self.lose();
        }
        if pad > 0 {
            self.header(pos)?
                .store((pad - HDR) as u32 | PAD, Ordering::Relaxed);
            pos = 0;
        }
        self.header(pos)?
            .store(len as u32 | BUSY, Ordering::Relaxed);
        self.data.write_u32(pos + 4, 0).ok()?;
        // Release: the headers above are visible before the new `prod`.
        self.prod
            .store(prod + (pad + total) as u64, Ordering::Release);
        Some(self.data.addr(pos + HDR))
    }

    fn header(&self, off: usize) -> Option<&AtomicU32> {
        self.data.atomic_u32(off).ok()
    }

    /// Commits (or with `discard`, drops) the record whose data starts at
    /// `addr`. `-EINVAL` if `addr` is not a reserved record.
    pub fn commit(&self, addr: u64, discard: bool, flags: u64) -> Result<(), MapError> {
        let off = self
            .data
            .offset_of(addr.wrapping_sub(HDR as u64), HDR)
            .ok_or(MapError::Invalid)?;
        let word = self.data.atomic_u32(off).map_err(|_| MapError::Invalid)?;
        let hdr = word.load(Ordering::Relaxed);
        if hdr & BUSY == 0 || hdr & PAD != 0 {
            return Err(MapError::Invalid);
        }
        let new = (hdr & !BUSY) | if discard { DISCARD } else { 0 };
        // Release: the data the program wrote is visible before the
        // header says it is done.
        word.compare_exchange(hdr, new, Ordering::Release, Ordering::Relaxed)
            .map_err(|_| MapError::Invalid)?;
        if discard {
            self.stats.discarded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.submitted.fetch_add(1, Ordering::Relaxed);
            if flags & RB_NO_WAKEUP == 0 {
                self.wakeup.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// `bpf_ringbuf_output` from `cpu`: reserve, copy, submit. `-ENOSPC`
    /// (and a lost record) when full.
    pub fn output(&self, data: &[u8], flags: u64, cpu: usize) -> Result<(), MapError> {
        let addr = self.reserve(data.len(), cpu).ok_or(MapError::NoSpace)?;
        self.fill(addr, data)?;
        self.commit(addr, false, flags)
    }

    /// Copies `data` into the record at `addr`, which the caller reserved
    /// and has not committed (what a program does with the pointer
    /// `reserve` gave it).
    pub fn fill(&self, addr: u64, data: &[u8]) -> Result<(), MapError> {
        let off = self
            .data
            .offset_of(addr, data.len())
            .ok_or(MapError::Invalid)?;
        self.data.write(off, data)
    }

    /// Copies the next committed record into `out` (replacing its
    /// contents). Returns false when the ring is empty, the oldest record
    /// is still being written, or another consumer is draining.
    pub fn pop(&self, out: &mut Vec<u8>) -> bool {
        self.pop_within(out, usize::MAX)
    }

    /// [`RingBuf::pop`] for a reader that can take records of at most
    /// `max_len` bytes: a longer one is passed over without being copied
    /// and counted lost (its reader could never deliver it, and a copy of
    /// a record as large as the ring could fail to allocate).
    pub fn pop_within(&self, out: &mut Vec<u8>, max_len: usize) -> bool {
        if self
            .consumer
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let _guard = ConsumerGuard(&self.consumer);
        // Only the consumer writes `cons`.
        let mut cons = self.cons.load(Ordering::Relaxed);
        let prod = self.prod.load(Ordering::Acquire);
        while cons < prod {
            let pos = (cons as usize) & (self.size - 1);
            let Some(word) = self.header(pos) else {
                return false;
            };
            // Acquire: pairs with the commit's release (the data).
            let hdr = word.load(Ordering::Acquire);
            if hdr & BUSY != 0 {
                return false;
            }
            let len = (hdr & LEN_MASK) as usize;
            let total = if hdr & PAD != 0 {
                len + HDR
            } else {
                round8(len + HDR)
            };
            let too_large = len > max_len && hdr & (DISCARD | PAD) == 0;
            if too_large {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
            }
            let skip = hdr & (DISCARD | PAD) != 0 || too_large;
            if !skip {
                out.clear();
                out.resize(len, 0);
                if self.data.read(pos + HDR, out).is_err() {
                    return false;
                }
            }
            cons += total as u64;
            // Release: the copy above is done before producers may reuse
            // the space.
            self.cons.store(cons, Ordering::Release);
            if !skip {
                self.stats.consumed.fetch_add(1, Ordering::Relaxed);
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
    fn a_record_too_large_for_the_reader_is_passed_over_and_counted_lost() {
        let r = RingBuf::new(4096).unwrap();
        r.output(&[1; 100], 0, 0).unwrap();
        r.output(&[2; 2000], 0, 0).unwrap();
        r.output(&[3; 100], 0, 0).unwrap();
        let mut out = Vec::new();
        assert!(r.pop_within(&mut out, 1000));
        assert_eq!(out, [1; 100]);
        assert!(r.pop_within(&mut out, 1000));
        assert_eq!(out, [3; 100]);
        assert!(!r.pop_within(&mut out, 1000));
        let s = r.stats();
        assert_eq!((s.submitted, s.consumed, s.lost), (3, 2, 1));
        // The space went back to producers.
        r.output(&[4; 1500], 0, 0).unwrap();
        assert!(r.pop(&mut out));
        assert_eq!(out.len(), 1500);
    }

    #[test]
    fn order_discard_and_loss() {
        let r = RingBuf::new(4096).unwrap();
        r.output(b"one", 0, 0).unwrap();
        let a = r.reserve(5, 0).unwrap();
        let b = r.reserve(6, 0).unwrap();
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
        let r = RingBuf::new(4096).unwrap();
        let rec = [7u8; 100];
        // 112 bytes each (8-byte header, padded): 36 fit in 4096.
        let mut ok = 0;
        for _ in 0..50 {
            if r.output(&rec, 0, 0).is_ok() {
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
            r.output(&[i; 100], 0, 0).unwrap();
        }
        while r.pop(&mut out) {
            got += 1;
        }
        assert_eq!(got, 56);
        assert_eq!(out, [19u8; 100]);
        assert_eq!(r.pending_bytes(), 0);
        assert_eq!(r.reserve(0, 0), None);
        assert_eq!(r.reserve(3000, 0), None);
        assert_eq!(r.stats().lost, 16);
        assert!(RingBuf::new(5000).is_err());
    }

    #[test]
    fn a_producer_inside_its_own_reservation_fails_at_once() {
        let r = RingBuf::new(4096).unwrap();
        // CPU 3 holds the producer lock (a probe fired in `reserve`).
        let guard = r.lock_producer(3).unwrap();
        assert_eq!(r.reserve(8, 3), None);
        assert_eq!(r.stats().lost, 1);
        drop(guard);
        assert!(r.reserve(8, 3).is_some());
    }

    #[test]
    fn a_second_consumer_gets_nothing_while_the_first_drains() {
        let r = RingBuf::new(4096).unwrap();
        r.output(b"x", 0, 0).unwrap();
        let flag = ConsumerGuard(&r.consumer);
        r.consumer.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        assert!(!r.pop(&mut out));
        drop(flag);
        assert!(r.pop(&mut out));
        assert_eq!(out, b"x");
    }
}
