//! [`Map`]: every map type behind one interface, as the runtime uses them.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::epoch::Epochs;
use crate::perf::PER_CPU_BUFFER;
use crate::{
    map_type, ArrayLayout, ArrayMap, HashMap, MapError, MapSpec, PerfEventArray, RingBuf,
    StackTraceMap, F_NO_PREALLOC,
};

/// A key and its value, as the host sees them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A map of any supported type.
pub enum Map {
    /// `ARRAY`, `PERCPU_ARRAY`.
    Array(ArrayMap),
    /// `HASH`, `PERCPU_HASH`, `LRU_HASH`. Shared: programs use it through
    /// `&self` without the map's lock ([`Map::hash`]).
    Hash(Arc<HashMap>),
    /// `RINGBUF`. Shared: producers and the consumer use it through
    /// `&self` without the map's lock ([`Map::ring`]).
    RingBuf(Arc<RingBuf>),
    /// `PERF_EVENT_ARRAY`. Shared, as the ring buffer ([`Map::perf`]).
    PerfEventArray(Arc<PerfEventArray>),
    /// `STACK_TRACE`.
    StackTrace(StackTraceMap),
}

impl Map {
    /// Creates (and preallocates) a map. `ncpus` sizes per-CPU maps and
    /// perf buffers; `epochs` governs slot reuse in hash maps.
    pub fn create(spec: MapSpec, ncpus: usize, epochs: Arc<Epochs>) -> Result<Map, MapError> {
        if spec.flags & F_NO_PREALLOC != 0 {
            return Err(MapError::Invalid);
        }
        Ok(match spec.map_type {
            map_type::ARRAY => Map::Array(ArrayMap::new(spec, ncpus, false)?),
            map_type::PERCPU_ARRAY => Map::Array(ArrayMap::new(spec, ncpus, true)?),
            map_type::HASH => Map::Hash(Arc::new(HashMap::new(spec, ncpus, false, false, epochs)?)),
            map_type::PERCPU_HASH => {
                Map::Hash(Arc::new(HashMap::new(spec, ncpus, true, false, epochs)?))
            }
            map_type::LRU_HASH => {
                Map::Hash(Arc::new(HashMap::new(spec, ncpus, false, true, epochs)?))
            }
            map_type::RINGBUF => {
                if spec.key_size != 0 || spec.value_size != 0 {
                    return Err(MapError::Invalid);
                }
                Map::RingBuf(Arc::new(RingBuf::new(spec.max_entries)?))
            }
            map_type::PERF_EVENT_ARRAY => {
                Map::PerfEventArray(Arc::new(PerfEventArray::new(spec, ncpus, PER_CPU_BUFFER)?))
            }
            map_type::STACK_TRACE => Map::StackTrace(StackTraceMap::new(spec)?),
            _ => return Err(MapError::NotSupported),
        })
    }

    /// The ring buffer, for use without the map's lock.
    pub fn ring(&self) -> Option<Arc<RingBuf>> {
        match self {
            Map::RingBuf(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// The hash map, for use without the map's lock.
    pub fn hash(&self) -> Option<Arc<HashMap>> {
        match self {
            Map::Hash(h) => Some(h.clone()),
            _ => None,
        }
    }

    /// The perf event array, for use without the map's lock.
    pub fn perf(&self) -> Option<Arc<PerfEventArray>> {
        match self {
            Map::PerfEventArray(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// Where an array's values lie, for lookups without the map's lock.
    pub fn array_layout(&self) -> Option<ArrayLayout> {
        match self {
            Map::Array(a) => Some(a.layout()),
            _ => None,
        }
    }

    /// Bytes of storage, counted against the runtime's memory limit.
    pub fn memory_bytes(&self) -> usize {
        match self {
            Map::Array(m) => m.memory_bytes(),
            Map::Hash(m) => m.memory_bytes(),
            Map::RingBuf(m) => m.memory_bytes(),
            Map::PerfEventArray(m) => m.memory_bytes(),
            Map::StackTrace(m) => m.memory_bytes(),
        }
    }

    /// Size of a value as the host reads and writes it (per-CPU maps: one
    /// 8-byte-padded copy per CPU). 0 for maps without values.
    pub fn host_value_size(&self) -> usize {
        match self {
            Map::Array(m) => m.host_value_size(),
            Map::Hash(m) => m.host_value_size(),
            Map::StackTrace(m) => m.spec().value_size as usize,
            Map::RingBuf(_) | Map::PerfEventArray(_) => 0,
        }
    }

    /// Host lookup (`BPF_MAP_LOOKUP_ELEM`).
    pub fn lookup(&self, key: &[u8]) -> Result<Vec<u8>, MapError> {
        match self {
            Map::Array(m) => m.lookup(key),
            Map::Hash(m) => m.lookup(key),
            Map::StackTrace(m) => m.lookup(key),
            Map::RingBuf(_) | Map::PerfEventArray(_) => Err(MapError::NotSupported),
        }
    }

    /// Host update (`BPF_MAP_UPDATE_ELEM`).
    pub fn update(&mut self, key: &[u8], value: &[u8], flags: u64) -> Result<(), MapError> {
        match self {
            Map::Array(m) => m.update(key, value, flags, None),
            Map::Hash(m) => m.update(key, value, flags, None),
            Map::StackTrace(_) | Map::RingBuf(_) | Map::PerfEventArray(_) => {
                Err(MapError::NotSupported)
            }
        }
    }

    /// Host delete (`BPF_MAP_DELETE_ELEM`).
    pub fn delete(&mut self, key: &[u8]) -> Result<(), MapError> {
        match self {
            Map::Array(m) => m.delete(key),
            Map::Hash(m) => m.delete(key),
            Map::StackTrace(m) => m.delete(key),
            Map::RingBuf(_) | Map::PerfEventArray(_) => Err(MapError::NotSupported),
        }
    }

    /// `BPF_MAP_GET_NEXT_KEY`: `-ENOENT` after the last key.
    pub fn next_key(&self, key: Option<&[u8]>) -> Result<Vec<u8>, MapError> {
        match self {
            Map::Array(m) => m.next_key(key),
            Map::Hash(m) => m.next_key(key),
            Map::StackTrace(m) => m.next_key(key),
            Map::RingBuf(_) | Map::PerfEventArray(_) => Err(MapError::NotSupported),
        }
    }

    /// A batch of up to `max` entries after `after` (from the start for
    /// `None`), and whether more follow.
    pub fn dump(&self, after: Option<&[u8]>, max: usize) -> Result<(Vec<Entry>, bool), MapError> {
        let mut out = Vec::new();
        let mut cur = after.map(<[u8]>::to_vec);
        loop {
            let next = match self.next_key(cur.as_deref()) {
                Ok(k) => k,
                Err(MapError::NotFound) => return Ok((out, false)),
                Err(e) => return Err(e),
            };
            if out.len() == max {
                return Ok((out, true));
            }
            // Programs may delete a hash map's key between next_key and
            // lookup: it is simply not in the batch.
            match self.lookup(&next) {
                Ok(v) => out.push((next.clone(), v)),
                Err(MapError::NotFound) => {}
                Err(e) => return Err(e),
            }
            cur = Some(next);
        }
    }

    /// Program lookup (`bpf_map_lookup_elem`): the address of the value
    /// (per-CPU: `cpu`'s copy), or `None`.
    pub fn value_addr(&mut self, key: &[u8], cpu: usize) -> Option<u64> {
        match self {
            Map::Array(m) => m
                .layout()
                .value_addr(u32::from_le_bytes(key.try_into().ok()?), cpu),
            Map::Hash(m) => m.value_addr(key, cpu),
            _ => None,
        }
    }

    /// Program update (`bpf_map_update_elem`) from `cpu`.
    pub fn prog_update(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u64,
        cpu: usize,
    ) -> Result<(), MapError> {
        match self {
            Map::Array(m) => m.update(key, value, flags, Some(cpu)),
            Map::Hash(m) => m.update(key, value, flags, Some(cpu)),
            _ => Err(MapError::Invalid),
        }
    }

    /// Map type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Map::Array(m) => map_type::name(m.spec().map_type),
            Map::Hash(m) => map_type::name(m.spec().map_type),
            Map::RingBuf(_) => "ringbuf",
            Map::PerfEventArray(_) => "perf_event_array",
            Map::StackTrace(_) => "stack_trace",
        }
    }

    /// Live entries, where the type keeps a count.
    pub fn entries(&self) -> Option<usize> {
        match self {
            Map::Hash(m) => Some(m.len()),
            Map::Array(m) => Some(m.spec().max_entries as usize),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_validates_and_dump_batches() {
        let e = Arc::new(Epochs::new(1));
        let spec = MapSpec {
            map_type: map_type::HASH,
            key_size: 4,
            value_size: 4,
            max_entries: 10,
            flags: 0,
        };
        assert_eq!(
            Map::create(
                MapSpec {
                    flags: F_NO_PREALLOC,
                    ..spec
                },
                1,
                e.clone()
            )
            .err(),
            Some(MapError::Invalid)
        );
        assert_eq!(
            Map::create(
                MapSpec {
                    map_type: 99,
                    ..spec
                },
                1,
                e.clone()
            )
            .err(),
            Some(MapError::NotSupported)
        );
        assert_eq!(
            Map::create(
                MapSpec {
                    key_size: 0,
                    ..spec
                },
                1,
                e.clone()
            )
            .err(),
            Some(MapError::Invalid)
        );
        let mut m = Map::create(spec, 1, e).unwrap();
        for i in 0..10u32 {
            m.update(&i.to_le_bytes(), &(i * 2).to_le_bytes(), 0)
                .unwrap();
        }
        let (first, more) = m.dump(None, 4).unwrap();
        assert_eq!(first.len(), 4);
        assert!(more);
        let (rest, more) = m.dump(Some(&first[3].0), 100).unwrap();
        assert_eq!(rest.len(), 6);
        assert!(!more);
        let mut all: Vec<u32> = first
            .iter()
            .chain(rest.iter())
            .map(|(k, v)| {
                let k = u32::from_le_bytes(k[..].try_into().unwrap());
                assert_eq!(u32::from_le_bytes(v[..].try_into().unwrap()), k * 2);
                k
            })
            .collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn every_map_type_of_the_platform_is_created_under_its_name() {
        let e = Arc::new(Epochs::new(1));
        for &t in map_type::ALL {
            let (key_size, value_size, max_entries) = match t {
                map_type::RINGBUF => (0, 0, 4096),
                map_type::PERF_EVENT_ARRAY => (4, 4, 1),
                map_type::STACK_TRACE => (4, 8 * 8, 4),
                _ => (4, 8, 4),
            };
            let spec = MapSpec {
                map_type: t,
                key_size,
                value_size,
                max_entries,
                flags: 0,
            };
            let m =
                Map::create(spec, 1, e.clone()).unwrap_or_else(|err| panic!("type {t}: {err:?}"));
            assert_eq!(m.type_name(), map_type::name(t));
            assert_ne!(m.type_name(), "unknown");
        }
        let unknown = MapSpec {
            map_type: 3,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            flags: 0,
        };
        assert_eq!(map_type::name(3), "unknown");
        assert_eq!(
            Map::create(unknown, 1, e).err(),
            Some(MapError::NotSupported)
        );
    }
}
