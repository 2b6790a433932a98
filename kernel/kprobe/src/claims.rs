//! Who owns each patched instruction of kernel text.
//!
//! Several mechanisms rewrite kernel text: kprobes plant an `int3` on an
//! instruction's first byte, static keys turn a 5-byte `nop` into a `jmp`,
//! and later optimised probes replace whole instructions with a `jmp` to a
//! detour. Each one alone is simple; where two meet on the same bytes, one
//! restores what it saved over the other's patch and leaves a torn
//! instruction behind. So every patch goes through one table of
//! **claims**: a claim covers whole instructions, names its owner and keeps
//! the bytes the compiler put there.
//!
//! - A claim that overlaps another is refused, naming the owner
//!   ([`Refusal::Claimed`]). Linux refuses kprobes on jump-label sites for
//!   the same reason.
//! - [`TextClaims::restore_original`] puts the original bytes back into a
//!   copy of live text, so boundary checks, decoding and slot copies see
//!   the text as compiled and never the `int3` or `jmp` a neighbour
//!   planted.
//!
//! The table does no I/O: the kernel reads and writes text and keeps this
//! table beside it, under the lock that serialises patching.

use alloc::vec::Vec;

use crate::x86_64::MAX_INSN_LEN;
use crate::{Refusal, TextAddr};

/// Who patches a claimed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A kprobe site (the `int3` on the first byte; several probes on one
    /// address share one claim).
    Kprobe,
    /// The instructions after a jump-optimised kprobe's first one, which
    /// its `jmp rel32` (partly) overwrites and its detour runs instead.
    OptimisedRange,
    /// A static-key call site of a tracepoint (`nop` or `jmp` to the
    /// enabled path).
    StaticKey {
        /// Tracepoint category, e.g. `block`.
        category: &'static str,
        /// Tracepoint name, e.g. `block_bio_queue`.
        name: &'static str,
    },
}

/// One claimed instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// First byte of the instruction.
    pub start: TextAddr,
    /// Its length (1 to 15 bytes).
    pub len: u8,
    /// Who patches it.
    pub owner: Owner,
    original: [u8; MAX_INSN_LEN],
}

impl Claim {
    /// One past the last byte.
    pub fn end(&self) -> TextAddr {
        self.start.add(u64::from(self.len))
    }

    /// The bytes the compiler put there.
    pub fn original(&self) -> &[u8] {
        &self.original[..usize::from(self.len)]
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start.get() < end && start < self.end().get()
    }
}

/// The claims, sorted by start and never overlapping.
#[derive(Debug, Default)]
pub struct TextClaims {
    claims: Vec<Claim>,
}

/// Why a claim could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// Another owner holds some of the bytes.
    Refused(Refusal),
    /// The table could not grow.
    OutOfMemory,
}

impl TextClaims {
    /// An empty table.
    pub const fn new() -> Self {
        Self { claims: Vec::new() }
    }

    /// Claims the instruction at `start` whose original bytes are
    /// `original` (its whole length) for `owner`.
    pub fn claim(&mut self, at: TextAddr, original: &[u8], owner: Owner) -> Result<(), ClaimError> {
        let start = at.get();
        let len = original.len();
        if len == 0 || len > MAX_INSN_LEN {
            return Err(ClaimError::Refused(Refusal::Undecodable { addr: start }));
        }
        let end = start.saturating_add(len as u64);
        if let Some(c) = self.claims.iter().find(|c| c.overlaps(start, end)) {
            return Err(ClaimError::Refused(Refusal::Claimed {
                addr: start,
                start: c.start.get(),
                len: c.len,
                owner: c.owner,
            }));
        }
        if self.claims.try_reserve(1).is_err() {
            return Err(ClaimError::OutOfMemory);
        }
        let mut saved = [0u8; MAX_INSN_LEN];
        saved[..len].copy_from_slice(original);
        let i = self.claims.partition_point(|c| c.start < at);
        self.claims.insert(
            i,
            Claim {
                start: at,
                len: len as u8,
                owner,
                original: saved,
            },
        );
        Ok(())
    }

    /// Checks, without recording anything, that `start..start + len` could
    /// be claimed.
    pub fn check_free(&self, at: TextAddr, len: u8) -> Result<(), Refusal> {
        let start = at.get();
        let end = start.saturating_add(u64::from(len.max(1)));
        match self.claims.iter().find(|c| c.overlaps(start, end)) {
            Some(c) => Err(Refusal::Claimed {
                addr: start,
                start: c.start.get(),
                len: c.len,
                owner: c.owner,
            }),
            None => Ok(()),
        }
    }

    /// Removes and returns the claim starting at `start`.
    pub fn release(&mut self, start: TextAddr) -> Option<Claim> {
        let i = self.claims.iter().position(|c| c.start == start)?;
        Some(self.claims.remove(i))
    }

    /// The claim starting exactly at `start`.
    pub fn get(&self, start: TextAddr) -> Option<&Claim> {
        self.claims.iter().find(|c| c.start == start)
    }

    /// The claim covering `addr`, if any.
    pub fn covering(&self, at: TextAddr) -> Option<&Claim> {
        let addr = at.get();
        self.claims.iter().find(|c| c.overlaps(addr, addr + 1))
    }

    /// All claims, by address.
    pub fn iter(&self) -> impl Iterator<Item = &Claim> {
        self.claims.iter()
    }

    /// `buf` holds live text read at `addr`: put back the original bytes of
    /// every claim that overlaps it.
    pub fn restore_original(&self, at: TextAddr, buf: &mut [u8]) {
        let addr = at.get();
        let end = addr.saturating_add(buf.len() as u64);
        for c in self.claims.iter().filter(|c| c.overlaps(addr, end)) {
            for (i, b) in c.original().iter().enumerate() {
                let at = c.start.get() + i as u64;
                if at >= addr && at < end {
                    buf[(at - addr) as usize] = *b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{format, vec::Vec};

    const TP: Owner = Owner::StaticKey {
        category: "block",
        name: "block_bio_queue",
    };

    #[test]
    fn overlapping_claims_are_refused_with_the_owner() {
        let mut t = TextClaims::new();
        // A 6-byte `call *disp32(%rip)` at 0x1000.
        t.claim(TextAddr(0x1000), &[0xff, 0x15, 1, 2, 3, 4], Owner::Kprobe)
            .unwrap();
        let e = t
            .claim(TextAddr(0x1001), &[0x15, 1, 2], Owner::Kprobe)
            .unwrap_err();
        assert_eq!(
            e,
            ClaimError::Refused(Refusal::Claimed {
                addr: 0x1001,
                start: 0x1000,
                len: 6,
                owner: Owner::Kprobe
            })
        );
        // The next instruction is free.
        t.claim(TextAddr(0x1006), &[0x90], Owner::Kprobe).unwrap();
        assert_eq!(t.iter().count(), 2);
        // Touching a range from below is refused, adjacent is fine.
        assert!(t.check_free(TextAddr(0xffe), 3).is_err());
        assert!(t.check_free(TextAddr(0xffb), 5).is_ok());
    }

    #[test]
    fn a_static_key_site_refuses_a_probe_on_any_of_its_bytes() {
        let mut t = TextClaims::new();
        t.claim(TextAddr(0x2000), &[0x0f, 0x1f, 0x44, 0, 0], TP)
            .unwrap();
        for addr in 0x2000..0x2005 {
            let e = t.check_free(TextAddr(addr), 1).unwrap_err();
            assert_eq!(
                format!("{e}"),
                format!(
                    "{addr:#x} is inside the static-key site of tracepoint block:block_bio_queue (5 bytes at 0x2000), which attaching a program rewrites: attach to the tracepoint instead"
                )
            );
        }
        assert!(t.check_free(TextAddr(0x2005), 1).is_ok());
    }

    #[test]
    fn original_bytes_replace_patched_ones_in_a_view() {
        let mut t = TextClaims::new();
        t.claim(TextAddr(0x1000), &[0xff, 0x15, 1, 2, 3, 4], Owner::Kprobe)
            .unwrap();
        t.claim(TextAddr(0x1008), &[0x0f, 0x1f, 0x44, 0, 0], TP)
            .unwrap();
        // Live text: an int3 at 0x1000 and a jmp at 0x1008.
        let mut live = [0xcc, 0x15, 1, 2, 3, 4, 0x90, 0x90, 0xe9, 9, 9, 9, 9];
        // A view starting in the middle of the first claim.
        let mut part: Vec<u8> = live[1..].to_vec();
        t.restore_original(TextAddr(0x1001), &mut part);
        assert_eq!(part, [0x15, 1, 2, 3, 4, 0x90, 0x90, 0x0f, 0x1f, 0x44, 0, 0]);
        t.restore_original(TextAddr(0x1000), &mut live);
        assert_eq!(
            live,
            [0xff, 0x15, 1, 2, 3, 4, 0x90, 0x90, 0x0f, 0x1f, 0x44, 0, 0]
        );
    }

    #[test]
    fn release_frees_the_range() {
        let mut t = TextClaims::new();
        t.claim(TextAddr(0x1000), &[0x55], Owner::Kprobe).unwrap();
        assert_eq!(
            t.covering(TextAddr(0x1000)).map(|c| c.original()),
            Some(&[0x55][..])
        );
        let c = t.release(TextAddr(0x1000)).unwrap();
        assert_eq!(c.original(), &[0x55]);
        assert!(t.release(TextAddr(0x1000)).is_none());
        assert!(t.check_free(TextAddr(0x1000), 1).is_ok());
        assert!(t.claim(TextAddr(0x1000), &[], Owner::Kprobe).is_err());
    }
}
