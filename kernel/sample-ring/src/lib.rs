//! A lock-free ring of fixed-size records for a producer that may take no
//! lock and allocate nothing: an NMI handler.
//!
//! An NMI interrupts anything, including code that holds a spinlock with
//! interrupts off; a handler that took that lock would wait forever. So
//! the sampler's NMI handler writes each sample into a [`SampleRing`]:
//! a fixed number of records of `WORDS` 64-bit words, stored as atomics (no
//! `unsafe`, no torn reads by construction), with one producer (the NMI
//! handler of the ring's CPU) and one consumer (the task that drains it).
//! The slots are allocated once, when the ring is made (in task context):
//! a kernel makes one ring per CPU as CPUs come online, instead of a
//! static table sized for the most CPUs it supports.
//!
//! # Why it is correct
//! `head` counts records written, `tail` records read; only the producer
//! stores `head`, only the consumer stores `tail`.
//! - The producer reads `tail` with `Acquire` before overwriting a slot:
//!   the consumer's `Release` store of `tail` comes after it finished
//!   reading that slot, so a slot is never overwritten while being read.
//! - The producer publishes a record by storing `head + 1` with `Release`
//!   after writing its words; the consumer loads `head` with `Acquire`
//!   before reading them, so it never reads a half-written record.
//! - A full ring refuses the record (the caller counts it lost) instead of
//!   overwriting: the oldest samples stay, as in perf's ring buffer.
//!
//! "One producer" holds because NMIs do not nest on a CPU and each CPU has
//! its own ring; "one consumer" is the caller's duty (the kernel drains
//! under its perf-event lock).

#![no_std]

extern crate alloc;

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};

/// Records of `WORDS` words each.
pub struct SampleRing<const WORDS: usize> {
    slots: Box<[[AtomicU64; WORDS]]>,
    head: AtomicU64,
    tail: AtomicU64,
}

impl<const WORDS: usize> SampleRing<WORDS> {
    /// An empty ring of `slots` records (at least one), allocated here one
    /// record at a time (a large ring never passes through the stack).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1))
                .map(|_| [const { AtomicU64::new(0) }; WORDS])
                .collect(),
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
        }
    }

    /// Records the ring holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Producer: append `record` (its first `WORDS` words; missing words
    /// are zero). `false` when the ring is full.
    pub fn push(&self, record: &[u64]) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let slots = self.slots.len() as u64;
        if head.wrapping_sub(tail) >= slots {
            return false;
        }
        let slot = &self.slots[(head % slots) as usize];
        for (i, w) in slot.iter().enumerate() {
            w.store(record.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
        self.head.store(head.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer: take the oldest record into `out`. `false` when empty.
    pub fn pop(&self, out: &mut [u64; WORDS]) -> bool {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        if tail == head {
            return false;
        }
        let slot = &self.slots[(tail % self.slots.len() as u64) as usize];
        for (o, w) in out.iter_mut().zip(slot) {
            *o = w.load(Ordering::Relaxed);
        }
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        true
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        let head = self.head.load(Ordering::Acquire);
        head.wrapping_sub(self.tail.load(Ordering::Acquire)) as usize
    }

    /// Whether no record waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Consumer: drop every record (when the producer is known to be
    /// stopped, or as a drain that keeps nothing).
    pub fn clear(&self) {
        let head = self.head.load(Ordering::Acquire);
        self.tail.store(head, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::vec::Vec;

    #[test]
    fn records_come_out_in_order_and_a_full_ring_refuses() {
        let r: SampleRing<3> = SampleRing::new(4);
        assert_eq!(r.capacity(), 4);
        let mut out = [0u64; 3];
        assert!(!r.pop(&mut out));
        for i in 0..4u64 {
            assert!(r.push(&[i, i * 10]));
        }
        assert!(!r.push(&[99]), "full: the oldest records stay");
        assert_eq!(r.len(), 4);
        for i in 0..4u64 {
            assert!(r.pop(&mut out));
            assert_eq!(out, [i, i * 10, 0]);
        }
        assert!(r.is_empty());
        // Wrapping around the slots.
        for round in 0..10u64 {
            assert!(r.push(&[round, round, round]));
            assert!(r.pop(&mut out));
            assert_eq!(out, [round; 3]);
        }
        r.push(&[1]);
        r.clear();
        assert!(!r.pop(&mut out));
    }

    /// A producer thread and a consumer thread: every record arrives whole
    /// (its words agree with each other), in order, or is counted refused.
    #[test]
    fn concurrent_producer_and_consumer_never_tear_or_lose_a_record() {
        const N: u64 = 200_000;
        let r: Arc<SampleRing<8>> = Arc::new(SampleRing::new(64));
        let done = Arc::new(AtomicBool::new(false));
        let producer = {
            let (r, done) = (r.clone(), done.clone());
            std::thread::spawn(move || {
                let mut refused = 0u64;
                for i in 0..N {
                    if !r.push(&[i; 8]) {
                        refused += 1;
                    }
                }
                done.store(true, Ordering::Release);
                refused
            })
        };
        let mut got = Vec::new();
        let mut out = [0u64; 8];
        loop {
            if r.pop(&mut out) {
                assert!(out.iter().all(|w| *w == out[0]), "torn record {out:?}");
                got.push(out[0]);
            } else if done.load(Ordering::Acquire) && r.is_empty() {
                break;
            }
        }
        let refused = producer.join().unwrap();
        assert_eq!(got.len() as u64 + refused, N);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");
    }
}
