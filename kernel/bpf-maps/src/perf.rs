//! The perf event array (`BPF_MAP_TYPE_PERF_EVENT_ARRAY`) as an output
//! channel: `bpf_perf_event_output` appends a record to the buffer of the
//! chosen CPU; the runtime drains every CPU's buffer to the host. Records
//! that do not fit are counted per CPU, like Linux's `PERF_RECORD_LOST`.
//!
//! Each CPU's buffer is a [`RingBuf`], so writers on every CPU (a program
//! may also write another CPU's buffer by index) and the one draining
//! reader work at once through `&self`, under the ring's own protocol.

use alloc::vec::Vec;

use crate::ringbuf::{RingBuf, RingStats};
use crate::{MapError, MapSpec};

/// `BPF_F_CURRENT_CPU`: the index meaning "this CPU's buffer".
pub const F_CURRENT_CPU: u64 = 0xffff_ffff;
/// `BPF_F_INDEX_MASK`.
pub const F_INDEX_MASK: u64 = 0xffff_ffff;
/// Bytes of buffer per CPU.
pub const PER_CPU_BUFFER: u32 = 256 * 1024;

/// One drained record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerfRecord {
    /// CPU whose buffer held it.
    pub cpu: u32,
    /// The bytes the program passed.
    pub data: Vec<u8>,
}

/// Per-CPU output buffers.
pub struct PerfEventArray {
    spec: MapSpec,
    rings: Vec<RingBuf>,
}

impl PerfEventArray {
    /// Buffers for `min(ncpus, max_entries)` CPUs, `buffer` bytes each.
    pub fn new(spec: MapSpec, ncpus: usize, buffer: u32) -> Result<PerfEventArray, MapError> {
        if spec.key_size != 4 || spec.value_size != 4 || spec.max_entries == 0 {
            return Err(MapError::Invalid);
        }
        let n = ncpus.max(1).min(spec.max_entries as usize);
        let mut rings = Vec::new();
        rings.try_reserve_exact(n).map_err(|_| MapError::NoMemory)?;
        for _ in 0..n {
            rings.push(RingBuf::new(buffer)?);
        }
        Ok(PerfEventArray { spec, rings })
    }

    /// The creation parameters.
    pub fn spec(&self) -> &MapSpec {
        &self.spec
    }

    /// Bytes of storage.
    pub fn memory_bytes(&self) -> usize {
        self.rings.iter().map(RingBuf::memory_bytes).sum()
    }

    /// `bpf_perf_event_output` from `cpu` with `flags` (index in the low 32 bits).
    pub fn output(&self, flags: u64, cpu: usize, data: &[u8]) -> Result<(), MapError> {
        if flags & !F_INDEX_MASK != 0 {
            return Err(MapError::Invalid);
        }
        let index = if flags & F_INDEX_MASK == F_CURRENT_CPU {
            cpu
        } else {
            (flags & F_INDEX_MASK) as usize
        };
        if index >= self.spec.max_entries as usize {
            return Err(MapError::TooBig);
        }
        let ring = self.rings.get(index).ok_or(MapError::NotFound)?;
        ring.output(data, 0, cpu)
    }

    /// Moves up to `max` records into `out`, CPU by CPU.
    pub fn drain(&self, max: usize, out: &mut Vec<PerfRecord>) -> usize {
        let mut n = 0;
        let mut buf = Vec::new();
        for (cpu, ring) in self.rings.iter().enumerate() {
            while n < max && ring.pop(&mut buf) {
                out.push(PerfRecord {
                    cpu: cpu as u32,
                    data: core::mem::take(&mut buf),
                });
                n += 1;
            }
        }
        n
    }

    /// Counters of each CPU's buffer, by CPU.
    pub fn cpu_stats(&self) -> impl Iterator<Item = RingStats> + '_ {
        self.rings.iter().map(RingBuf::stats)
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> RingStats {
        let mut s = RingStats::default();
        for t in self.cpu_stats() {
            s.submitted += t.submitted;
            s.lost += t.lost;
            s.consumed += t.consumed;
            s.discarded += t.discarded;
        }
        s
    }

    /// Bytes waiting in all buffers.
    pub fn pending_bytes(&self) -> u64 {
        self.rings.iter().map(RingBuf::pending_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map_type;

    #[test]
    fn index_rules_and_loss() {
        let spec = MapSpec {
            map_type: map_type::PERF_EVENT_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 4,
            flags: 0,
        };
        let p = PerfEventArray::new(spec, 2, 4096).unwrap();
        p.output(F_CURRENT_CPU, 1, b"a").unwrap();
        p.output(0, 1, b"b").unwrap();
        assert_eq!(p.output(3, 0, b"c"), Err(MapError::NotFound));
        assert_eq!(p.output(4, 0, b"c"), Err(MapError::TooBig));
        assert_eq!(p.output(1 << 40, 0, b"c"), Err(MapError::Invalid));
        let mut out = Vec::new();
        assert_eq!(p.drain(10, &mut out), 2);
        assert_eq!(
            out[0],
            PerfRecord {
                cpu: 0,
                data: b"b".to_vec()
            }
        );
        assert_eq!(
            out[1],
            PerfRecord {
                cpu: 1,
                data: b"a".to_vec()
            }
        );
        let big = [0u8; 1000];
        let mut lost = 0;
        for _ in 0..10 {
            if p.output(F_CURRENT_CPU, 0, &big) == Err(MapError::NoSpace) {
                lost += 1;
            }
        }
        assert_eq!(lost, 6);
        assert_eq!(p.stats().lost, 6);
        let per_cpu: Vec<u64> = p.cpu_stats().map(|s| s.lost).collect();
        assert_eq!(per_cpu, [6, 0]);
    }
}
