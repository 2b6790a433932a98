//! Self-describing sector patterns for write-then-verify workloads.
//!
//! Every 512-byte sector written by a verifying workload starts with a
//! header (magic, the sector's own number, the job's seed, a write
//! generation) followed by pseudo-random bytes derived from those three
//! values. A read-back therefore detects data landing in the wrong sector
//! (a merge or split bug), stale data (an older generation), foreign data
//! (another job's seed) and corruption, and says which.

use core::fmt;

use crate::bio::SECTOR_SIZE;

/// First 8 bytes of every pattern sector.
pub const MAGIC: [u8; 8] = *b"KTRVRFY1";
const HEADER: usize = 32;

/// What a verified sector held instead of the expected pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// No pattern magic: never written by a verifying workload, or garbage.
    NoMagic { sector: u64 },
    /// The data of another sector.
    WrongSector { sector: u64, found: u64 },
    /// Written by another job or run.
    WrongSeed {
        sector: u64,
        expected: u64,
        found: u64,
    },
    /// An older or newer write of this sector.
    WrongGeneration {
        sector: u64,
        expected: u32,
        found: u32,
    },
    /// The header is right but a payload byte differs.
    Corrupt { sector: u64, offset: usize },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::NoMagic { sector } => {
                write!(f, "sector {sector}: no pattern (never written?)")
            }
            Mismatch::WrongSector { sector, found } => {
                write!(f, "sector {sector}: holds the data of sector {found}")
            }
            Mismatch::WrongSeed {
                sector,
                expected,
                found,
            } => {
                write!(
                    f,
                    "sector {sector}: written by seed {found:#x}, expected {expected:#x}"
                )
            }
            Mismatch::WrongGeneration {
                sector,
                expected,
                found,
            } => {
                write!(f, "sector {sector}: generation {found}, expected {expected} (stale or lost write)")
            }
            Mismatch::Corrupt { sector, offset } => {
                write!(f, "sector {sector}: byte {offset} differs")
            }
        }
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: a cheap, well-spread hash.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn payload_word(sector: u64, seed: u64, generation: u32, i: usize) -> u64 {
    mix(seed ^ mix(sector ^ (u64::from(generation) << 40) ^ ((i as u64) << 20)))
}

/// Fill `buf` (a whole number of sectors) with the pattern of the sectors
/// starting at `sector`.
pub fn fill(buf: &mut [u8], sector: u64, seed: u64, generation: u32) {
    for (k, chunk) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
        let s = sector + k as u64;
        chunk[..8].copy_from_slice(&MAGIC);
        chunk[8..16].copy_from_slice(&s.to_le_bytes());
        chunk[16..24].copy_from_slice(&seed.to_le_bytes());
        chunk[24..28].copy_from_slice(&generation.to_le_bytes());
        chunk[28..32].copy_from_slice(&0u32.to_le_bytes());
        for (i, w) in chunk[HEADER..].chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&payload_word(s, seed, generation, i).to_le_bytes());
        }
    }
}

/// Check that `buf` holds the pattern [`fill`] wrote; the first mismatch.
pub fn check(buf: &[u8], sector: u64, seed: u64, generation: u32) -> Result<(), Mismatch> {
    for (k, chunk) in buf.chunks_exact(SECTOR_SIZE).enumerate() {
        let s = sector + k as u64;
        let word = |r: core::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&chunk[r]);
            u64::from_le_bytes(b)
        };
        if chunk[..8] != MAGIC {
            return Err(Mismatch::NoMagic { sector: s });
        }
        let found = word(8..16);
        if found != s {
            return Err(Mismatch::WrongSector { sector: s, found });
        }
        let found = word(16..24);
        if found != seed {
            return Err(Mismatch::WrongSeed {
                sector: s,
                expected: seed,
                found,
            });
        }
        let found = word(24..28) as u32;
        if found != generation {
            return Err(Mismatch::WrongGeneration {
                sector: s,
                expected: generation,
                found,
            });
        }
        for (i, w) in chunk[HEADER..].chunks_exact(8).enumerate() {
            if w != payload_word(s, seed, generation, i).to_le_bytes() {
                return Err(Mismatch::Corrupt {
                    sector: s,
                    offset: HEADER + i * 8,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn round_trip_and_each_kind_of_mismatch() {
        let mut buf = vec![0u8; 4 * SECTOR_SIZE];
        fill(&mut buf, 100, 7, 3);
        assert_eq!(check(&buf, 100, 7, 3), Ok(()));
        assert_eq!(
            check(&buf, 101, 7, 3),
            Err(Mismatch::WrongSector {
                sector: 101,
                found: 100
            })
        );
        assert_eq!(
            check(&buf, 100, 8, 3),
            Err(Mismatch::WrongSeed {
                sector: 100,
                expected: 8,
                found: 7
            })
        );
        assert_eq!(
            check(&buf, 100, 7, 4),
            Err(Mismatch::WrongGeneration {
                sector: 100,
                expected: 4,
                found: 3
            })
        );
        buf[2 * SECTOR_SIZE + 200] ^= 1;
        assert_eq!(
            check(&buf, 100, 7, 3),
            Err(Mismatch::Corrupt {
                sector: 102,
                offset: 200
            })
        );
        assert_eq!(
            check(&[0u8; 512], 5, 7, 3).unwrap_err().to_string(),
            "sector 5: no pattern (never written?)"
        );
    }

    #[test]
    fn generations_and_sectors_differ_in_payload() {
        let mut a = vec![0u8; SECTOR_SIZE];
        let mut b = vec![0u8; SECTOR_SIZE];
        fill(&mut a, 9, 1, 1);
        fill(&mut b, 9, 1, 2);
        assert_ne!(a[HEADER..], b[HEADER..]);
        fill(&mut b, 10, 1, 1);
        assert_ne!(a[HEADER..], b[HEADER..]);
    }
}
