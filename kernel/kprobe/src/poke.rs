//! The order of writes that changes an instruction other CPUs may be
//! executing (Linux's `text_poke_bp` protocol), as data the kernel replays
//! and host tests check.
//!
//! A CPU fetching an instruction while its bytes change could decode half
//! the old and half the new one. Only a one-byte store is atomic for
//! instruction fetch, so a multi-byte change goes in three writes, each
//! followed by a synchronisation of every CPU (every CPU executes a
//! serialising instruction, so none runs bytes it fetched earlier):
//!
//! 1. `int3` over the first byte. From the sync on, a CPU reaching the
//!    instruction traps; the trap handler emulates the instruction being
//!    installed, so it never decodes the rest.
//! 2. The tail (bytes 1..). No CPU decodes them: the first byte is `int3`.
//! 3. The new first byte. A CPU now fetches either `int3` (and is
//!    emulated) or the whole new instruction (its tail was synced first).
//!
//! A one-byte change (a kprobe's `int3`, or putting back the byte it
//! replaced) is a single write plus a sync.

/// One write: `bytes` at `offset` from the instruction's first byte. Every
/// write is followed by a sync of all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PokeStep<'a> {
    /// Offset of the first byte written.
    pub offset: usize,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// The breakpoint a multi-byte change plants first.
const INT3: &[u8] = &[crate::x86_64::INT3];

/// The writes that turn an instruction into `new` (same length), in order.
/// One step for one byte, three for more; none for no bytes.
pub fn poke_steps(new: &[u8]) -> impl Iterator<Item = PokeStep<'_>> {
    let multi = new.len() > 1;
    let steps = [
        multi.then_some(PokeStep {
            offset: 0,
            bytes: INT3,
        }),
        multi.then(|| PokeStep {
            offset: 1,
            bytes: &new[1..],
        }),
        new.first().map(|_| PokeStep {
            offset: 0,
            bytes: &new[..1],
        }),
    ];
    steps.into_iter().flatten()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
    const JMP: [u8; 5] = [0xe9, 0x10, 0x20, 0x30, 0x00];

    /// Text after each step (each state a CPU may fetch between syncs).
    fn states(old: &[u8], new: &[u8]) -> Vec<Vec<u8>> {
        let mut text = old.to_vec();
        let mut out = alloc::vec![text.clone()];
        for s in poke_steps(new) {
            text[s.offset..s.offset + s.bytes.len()].copy_from_slice(s.bytes);
            out.push(text.clone());
        }
        out
    }

    #[test]
    fn every_state_is_old_new_or_a_trap() {
        for (old, new) in [(NOP5, JMP), (JMP, NOP5)] {
            let seen = states(&old, &new);
            assert_eq!(seen.len(), 4, "three writes");
            for s in &seen {
                assert!(
                    s[..] == old[..] || s[..] == new[..] || s[0] == 0xcc,
                    "a CPU could decode the torn instruction {s:x?}"
                );
            }
            assert_eq!(seen.last().unwrap()[..], new[..]);
            // The tail is only written while the first byte is int3.
            assert_eq!(seen[1][0], 0xcc);
            assert_eq!(seen[2][0], 0xcc);
            assert_eq!(seen[2][1..], new[1..]);
        }
    }

    #[test]
    fn one_byte_is_one_write() {
        let steps: Vec<_> = poke_steps(&[0xcc]).collect();
        assert_eq!(
            steps,
            [PokeStep {
                offset: 0,
                bytes: &[0xcc]
            }]
        );
        assert_eq!(poke_steps(&[]).count(), 0);
    }
}
