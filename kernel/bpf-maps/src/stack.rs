//! Stack trace maps (`BPF_MAP_TYPE_STACK_TRACE`) and the frame-pointer walk
//! that fills them.
//!
//! `bpf_get_stackid` hashes the instruction pointers of a stack into one of
//! `max_entries` buckets and returns the bucket as the stack id. A bucket
//! holding another stack is a collision: `-EEXIST`, unless
//! `BPF_F_REUSE_STACKID` asks to overwrite it (Linux's semantics).

use alloc::vec;
use alloc::vec::Vec;

use crate::store::{try_filled, Slab};
use crate::{MapError, MapSpec};

/// `BPF_F_SKIP_FIELD_MASK`: frames to skip, in the low 8 bits.
pub const F_SKIP_FIELD_MASK: u64 = 0xff;
/// `BPF_F_USER_STACK`: user stacks do not exist in this kernel.
pub const F_USER_STACK: u64 = 1 << 8;
/// `BPF_F_FAST_STACK_CMP`: compare stacks by hash only.
pub const F_FAST_STACK_CMP: u64 = 1 << 9;
/// `BPF_F_REUSE_STACKID`: overwrite a bucket holding another stack.
pub const F_REUSE_STACKID: u64 = 1 << 10;
/// Deepest stack stored (Linux's `sysctl_perf_event_max_stack` default).
pub const MAX_DEPTH: u32 = 127;

/// Walks a frame-pointer chain: `out[0] = rip`, then the return address of
/// each frame from `rbp` upwards. `read` fetches a word and returns `None`
/// for an unreadable address (the kernel passes a fault-safe read). Stops
/// at a null or misaligned frame pointer, a chain that does not move up the
/// stack, or when `out` is full. Returns the number of addresses written.
pub fn walk_frame_pointers(
    rip: u64,
    mut rbp: u64,
    out: &mut [u64],
    mut read: impl FnMut(u64) -> Option<u64>,
) -> usize {
    if out.is_empty() {
        return 0;
    }
    out[0] = rip;
    let mut n = 1;
    while n < out.len() && rbp != 0 && rbp.is_multiple_of(8) {
        let (Some(next), Some(ret)) = (read(rbp), read(rbp.wrapping_add(8))) else {
            break;
        };
        if ret == 0 {
            break;
        }
        out[n] = ret;
        n += 1;
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    n
}

/// Stacks by id.
pub struct StackTraceMap {
    spec: MapSpec,
    depth: usize,
    ips: Slab,
    /// Frames stored per bucket (0 = empty).
    lens: Vec<u32>,
    hashes: Vec<u64>,
}

fn hash_ips(ips: &[u64]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &ip in ips {
        h = (h ^ ip).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    }
    h
}

impl StackTraceMap {
    /// Key: `u32` stack id; value: `value_size / 8` addresses.
    pub fn new(spec: MapSpec) -> Result<StackTraceMap, MapError> {
        if spec.key_size != 4
            || spec.value_size == 0
            || !spec.value_size.is_multiple_of(8)
            || spec.value_size / 8 > MAX_DEPTH
            || spec.max_entries == 0
        {
            return Err(MapError::Invalid);
        }
        let n = spec.max_entries as usize;
        let bytes = n
            .checked_mul(spec.value_size as usize)
            .ok_or(MapError::TooBig)?;
        Ok(StackTraceMap {
            spec,
            depth: spec.value_size as usize / 8,
            ips: Slab::new(bytes)?,
            lens: try_filled(0, n)?,
            hashes: try_filled(0, n)?,
        })
    }

    /// The creation parameters.
    pub fn spec(&self) -> &MapSpec {
        &self.spec
    }

    /// Frames kept per stack.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Bytes of storage.
    pub fn memory_bytes(&self) -> usize {
        self.ips.len() + self.lens.len() * 12
    }

    fn stored(&self, id: usize, ips: &[u64]) -> bool {
        if self.lens[id] as usize != ips.len() {
            return false;
        }
        let base = id * self.spec.value_size as usize;
        ips.iter().enumerate().all(|(i, &ip)| {
            let mut b = [0u8; 8];
            self.ips.read(base + i * 8, &mut b).is_ok() && u64::from_le_bytes(b) == ip
        })
    }

    /// `bpf_get_stackid` on a walked stack (innermost first).
    pub fn get_stackid(&mut self, ips: &[u64], flags: u64) -> Result<u32, MapError> {
        if flags & !(F_SKIP_FIELD_MASK | F_USER_STACK | F_FAST_STACK_CMP | F_REUSE_STACKID) != 0 {
            return Err(MapError::Invalid);
        }
        if flags & F_USER_STACK != 0 {
            return Err(MapError::NotSupported);
        }
        let skip = ((flags & F_SKIP_FIELD_MASK) as usize).min(ips.len());
        let trace = &ips[skip..];
        let trace = &trace[..trace.len().min(self.depth)];
        if trace.is_empty() {
            return Err(MapError::Fault);
        }
        let h = hash_ips(trace);
        let id = (h % self.spec.max_entries as u64) as usize;
        if self.lens[id] != 0 {
            let same =
                self.hashes[id] == h && (flags & F_FAST_STACK_CMP != 0 || self.stored(id, trace));
            if same {
                return Ok(id as u32);
            }
            if flags & F_REUSE_STACKID == 0 {
                return Err(MapError::Exists);
            }
        }
        let base = id * self.spec.value_size as usize;
        for (i, &ip) in trace.iter().enumerate() {
            self.ips.write(base + i * 8, &ip.to_le_bytes())?;
        }
        self.lens[id] = trace.len() as u32;
        self.hashes[id] = h;
        Ok(id as u32)
    }

    fn id(&self, key: &[u8]) -> Result<usize, MapError> {
        let k: [u8; 4] = key.try_into().map_err(|_| MapError::Invalid)?;
        Ok(u32::from_le_bytes(k) as usize)
    }

    /// The stack stored under `key`, zero-padded to `value_size` bytes.
    pub fn lookup(&self, key: &[u8]) -> Result<Vec<u8>, MapError> {
        let id = self.id(key)?;
        if self.lens.get(id).copied().unwrap_or(0) == 0 {
            return Err(MapError::NotFound);
        }
        let mut out = vec![0; self.spec.value_size as usize];
        let n = self.lens[id] as usize * 8;
        self.ips
            .read(id * self.spec.value_size as usize, &mut out[..n])?;
        Ok(out)
    }

    /// Frees the bucket `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), MapError> {
        let id = self.id(key)?;
        match self.lens.get_mut(id) {
            Some(l) if *l != 0 => {
                *l = 0;
                Ok(())
            }
            _ => Err(MapError::NotFound),
        }
    }

    /// The next stored stack id after `key`.
    pub fn next_key(&self, key: Option<&[u8]>) -> Result<Vec<u8>, MapError> {
        let start = match key {
            None => 0,
            Some(k) => {
                let id = self.id(k)?;
                if id < self.lens.len() {
                    id + 1
                } else {
                    0
                }
            }
        };
        let id = (start..self.lens.len())
            .find(|&i| self.lens[i] != 0)
            .ok_or(MapError::NotFound)?;
        Ok((id as u32).to_le_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map_type;

    #[test]
    fn walk_follows_the_chain() {
        // Frames at 0x1000 -> 0x1100 -> 0x1200 -> end (saved rbp 0).
        let mem = |a: u64| -> Option<u64> {
            match a {
                0x1000 => Some(0x1100),
                0x1008 => Some(0xaaa),
                0x1100 => Some(0x1200),
                0x1108 => Some(0xbbb),
                0x1200 => Some(0),
                0x1208 => Some(0xccc),
                _ => None,
            }
        };
        let mut out = [0u64; 8];
        let n = walk_frame_pointers(0x999, 0x1000, &mut out, mem);
        assert_eq!(&out[..n], &[0x999, 0xaaa, 0xbbb, 0xccc]);
        let n = walk_frame_pointers(0x999, 0x1000, &mut out[..2], mem);
        assert_eq!(n, 2);
        // Unreadable frame pointer: only rip.
        assert_eq!(walk_frame_pointers(0x999, 0x5000, &mut out, mem), 1);
        // A loop (rbp pointing to itself) terminates.
        assert_eq!(
            walk_frame_pointers(1, 0x1000, &mut out, |a| if a == 0x1000 {
                Some(0x1000)
            } else {
                Some(5)
            }),
            2
        );
    }

    #[test]
    fn ids_collisions_and_reuse() {
        let spec = MapSpec {
            map_type: map_type::STACK_TRACE,
            key_size: 4,
            value_size: 32,
            max_entries: 1,
            flags: 0,
        };
        let mut m = StackTraceMap::new(spec).unwrap();
        let a = [1u64, 2, 3, 4, 5, 6];
        let id = m.get_stackid(&a, 0).unwrap();
        assert_eq!(id, 0);
        assert_eq!(m.get_stackid(&a, 0).unwrap(), 0, "same stack, same id");
        let v = m.lookup(&0u32.to_le_bytes()).unwrap();
        assert_eq!(v.len(), 32);
        assert_eq!(
            u64::from_le_bytes(v[24..32].try_into().unwrap()),
            4,
            "truncated to 4 frames"
        );
        // One bucket: a different stack collides.
        assert_eq!(m.get_stackid(&[9, 9], 0).unwrap_err().errno(), -17);
        assert_eq!(m.get_stackid(&[9, 9], F_REUSE_STACKID).unwrap(), 0);
        assert_eq!(
            &m.lookup(&0u32.to_le_bytes()).unwrap()[..16],
            &[9, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]
        );
        // Skip 1 frame.
        assert_eq!(m.get_stackid(&[7, 9, 9], 1).unwrap(), 0);
        assert_eq!(m.get_stackid(&a, F_USER_STACK), Err(MapError::NotSupported));
        assert_eq!(m.get_stackid(&a, 1 << 20), Err(MapError::Invalid));
        m.delete(&0u32.to_le_bytes()).unwrap();
        assert_eq!(m.next_key(None), Err(MapError::NotFound));
        assert!(StackTraceMap::new(MapSpec {
            value_size: 12,
            ..spec
        })
        .is_err());
    }
}
