//! Array maps: `max_entries` values indexed by a `u32` key, all present
//! from creation (zeroed), never deleted. The per-CPU flavour keeps one copy
//! of each value per CPU.

use alloc::vec;
use alloc::vec::Vec;

use crate::store::Slab;
use crate::{round8, update_flags, MapError, MapSpec, MAX_VALUE_SIZE};

/// Where an array's values lie: enough to compute a value's address
/// without the map. An array never moves, grows or deletes, so this stays
/// true for the map's whole life, and program lookups need no lock (as
/// in Linux, where an array lookup is address arithmetic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayLayout {
    base: u64,
    max_entries: u32,
    ncpus: usize,
    stride: usize,
}

impl ArrayLayout {
    /// The address of `cpu`'s copy of value `index` (non-per-CPU arrays
    /// have one copy, whatever `cpu`), or `None` past the end.
    pub fn value_addr(&self, index: u32, cpu: usize) -> Option<u64> {
        (index < self.max_entries).then(|| {
            let slot = index as usize * self.ncpus + cpu % self.ncpus;
            self.base + (slot * self.stride) as u64
        })
    }

    /// `(base, stride, max_entries)` when every CPU's lookup of value `i`
    /// is `base + i * stride` (one copy per value: plain arrays, and
    /// per-CPU arrays on one CPU), for a JIT to compute it inline; `None`
    /// when the address depends on the CPU or the stride does not fit 32
    /// bits.
    pub fn shared_values(&self) -> Option<(u64, u32, u32)> {
        let stride = u32::try_from(self.stride).ok()?;
        (self.ncpus == 1).then_some((self.base, stride, self.max_entries))
    }
}

/// `BPF_MAP_TYPE_ARRAY` and `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub struct ArrayMap {
    spec: MapSpec,
    percpu: bool,
    ncpus: usize,
    /// Bytes between consecutive values (per-CPU copies are 8-aligned).
    stride: usize,
    values: Slab,
}

impl ArrayMap {
    /// Creates an array; `percpu` keeps `ncpus` copies of each value.
    pub fn new(spec: MapSpec, ncpus: usize, percpu: bool) -> Result<ArrayMap, MapError> {
        if spec.key_size != 4
            || spec.value_size == 0
            || spec.value_size > MAX_VALUE_SIZE
            || spec.max_entries == 0
        {
            return Err(MapError::Invalid);
        }
        let ncpus = if percpu { ncpus.max(1) } else { 1 };
        let stride = if percpu {
            round8(spec.value_size as usize)
        } else {
            spec.value_size as usize
        };
        let total = stride
            .checked_mul(ncpus)
            .and_then(|n| n.checked_mul(spec.max_entries as usize))
            .ok_or(MapError::TooBig)?;
        Ok(ArrayMap {
            spec,
            percpu,
            ncpus,
            stride,
            values: Slab::new(total)?,
        })
    }

    /// The creation parameters.
    pub fn spec(&self) -> &MapSpec {
        &self.spec
    }

    /// Bytes of storage.
    pub fn memory_bytes(&self) -> usize {
        self.values.len()
    }

    fn index(&self, key: &[u8]) -> Result<usize, MapError> {
        let k: [u8; 4] = key.try_into().map_err(|_| MapError::Invalid)?;
        Ok(u32::from_le_bytes(k) as usize)
    }

    fn offset(&self, index: usize, cpu: usize) -> usize {
        (index * self.ncpus + cpu % self.ncpus) * self.stride
    }

    /// Program lookup: the address of `cpu`'s copy of value `index`, or
    /// `None` past the end.
    pub fn value_addr(&self, index: u32, cpu: usize) -> Option<u64> {
        self.layout().value_addr(index, cpu)
    }

    /// Where the values lie (see [`ArrayLayout`]).
    pub fn layout(&self) -> ArrayLayout {
        ArrayLayout {
            base: self.values.addr(0),
            max_entries: self.spec.max_entries,
            ncpus: self.ncpus,
            stride: self.stride,
        }
    }

    /// Host lookup: the value (per-CPU: every CPU's copy, each padded to a
    /// multiple of 8 bytes, as Linux returns them).
    pub fn lookup(&self, key: &[u8]) -> Result<Vec<u8>, MapError> {
        let i = self.index(key)?;
        if i >= self.spec.max_entries as usize {
            return Err(MapError::NotFound);
        }
        let vs = self.spec.value_size as usize;
        if !self.percpu {
            let mut out = vec![0; vs];
            self.values.read(self.offset(i, 0), &mut out)?;
            return Ok(out);
        }
        let mut out = vec![0; self.stride * self.ncpus];
        for cpu in 0..self.ncpus {
            self.values.read(
                self.offset(i, cpu),
                &mut out[cpu * self.stride..cpu * self.stride + vs],
            )?;
        }
        Ok(out)
    }

    /// Update. `cpu = Some(c)` is a program's update (one value, CPU `c`'s
    /// copy); `None` is the host's (per-CPU: one padded value per CPU).
    pub fn update(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u64,
        cpu: Option<usize>,
    ) -> Result<(), MapError> {
        if flags > update_flags::EXIST {
            return Err(MapError::Invalid);
        }
        let i = self.index(key)?;
        if i >= self.spec.max_entries as usize {
            return Err(MapError::TooBig);
        }
        if flags == update_flags::NOEXIST {
            // Every element of an array exists.
            return Err(MapError::Exists);
        }
        let vs = self.spec.value_size as usize;
        match cpu {
            Some(c) => {
                if value.len() != vs {
                    return Err(MapError::Invalid);
                }
                self.values.write(self.offset(i, c), value)
            }
            None if !self.percpu => {
                if value.len() != vs {
                    return Err(MapError::Invalid);
                }
                self.values.write(self.offset(i, 0), value)
            }
            None => {
                if value.len() != self.stride * self.ncpus {
                    return Err(MapError::Invalid);
                }
                for c in 0..self.ncpus {
                    self.values.write(
                        self.offset(i, c),
                        &value[c * self.stride..c * self.stride + vs],
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Arrays cannot delete (`-EINVAL`, as Linux).
    pub fn delete(&mut self, key: &[u8]) -> Result<(), MapError> {
        self.index(key)?;
        Err(MapError::Invalid)
    }

    /// The key after `key` (the first for `None` or an out-of-range key).
    pub fn next_key(&self, key: Option<&[u8]>) -> Result<Vec<u8>, MapError> {
        let next = match key {
            None => 0,
            Some(k) => {
                let i = self.index(k)?;
                if i >= self.spec.max_entries as usize {
                    0
                } else {
                    i + 1
                }
            }
        };
        if next >= self.spec.max_entries as usize {
            return Err(MapError::NotFound);
        }
        Ok((next as u32).to_le_bytes().to_vec())
    }

    /// Size in bytes of a host-side value (per-CPU: all copies).
    pub fn host_value_size(&self) -> usize {
        if self.percpu {
            self.stride * self.ncpus
        } else {
            self.spec.value_size as usize
        }
    }

    /// Writes `data` into value 0 at creation (global data sections).
    pub fn init_value(&mut self, data: &[u8]) -> Result<(), MapError> {
        if data.len() > self.spec.value_size as usize {
            return Err(MapError::Invalid);
        }
        self.values.write(0, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map_type;

    fn spec(t: u32, vs: u32, n: u32) -> MapSpec {
        MapSpec {
            map_type: t,
            key_size: 4,
            value_size: vs,
            max_entries: n,
            flags: 0,
        }
    }

    /// What a JIT computes inline from `shared_values` is what
    /// `value_addr` gives on every CPU; per-CPU arrays on more than one CPU
    /// have none.
    #[test]
    fn shared_values_give_the_lookup_address() {
        let cases = [
            (map_type::ARRAY, 12, 3, false, true),
            (map_type::PERCPU_ARRAY, 12, 1, true, true),
            (map_type::PERCPU_ARRAY, 12, 2, true, false),
        ];
        for (t, vs, ncpus, percpu, shared) in cases {
            let a = ArrayMap::new(spec(t, vs, 5), ncpus, percpu).unwrap();
            let layout = a.layout();
            let Some((base, stride, max)) = layout.shared_values() else {
                assert!(!shared, "{t} on {ncpus} CPUs");
                continue;
            };
            assert!(shared, "{t} on {ncpus} CPUs");
            assert_eq!(max, 5);
            for i in 0..7u32 {
                let want = (i < max).then(|| base + u64::from(i) * u64::from(stride));
                for cpu in 0..3 {
                    assert_eq!(layout.value_addr(i, cpu), want, "{t} index {i} cpu {cpu}");
                }
            }
        }
    }

    #[test]
    fn flags_and_bounds() {
        let mut a = ArrayMap::new(spec(map_type::ARRAY, 8, 4), 1, false).unwrap();
        let k = 2u32.to_le_bytes();
        assert_eq!(a.lookup(&k).unwrap(), vec![0; 8]);
        assert_eq!(
            a.update(&k, &7u64.to_le_bytes(), update_flags::NOEXIST, None),
            Err(MapError::Exists)
        );
        a.update(&k, &7u64.to_le_bytes(), update_flags::EXIST, None)
            .unwrap();
        assert_eq!(a.lookup(&k).unwrap(), 7u64.to_le_bytes());
        assert_eq!(
            a.update(&4u32.to_le_bytes(), &[0; 8], 0, None),
            Err(MapError::TooBig)
        );
        assert_eq!(a.update(&k, &[0; 8], 3, None), Err(MapError::Invalid));
        assert_eq!(a.update(&k, &[0; 7], 0, None), Err(MapError::Invalid));
        assert_eq!(a.lookup(&4u32.to_le_bytes()), Err(MapError::NotFound));
        assert_eq!(a.delete(&k), Err(MapError::Invalid));
        assert_eq!(a.delete(&k).unwrap_err().errno(), -22);
        assert_eq!(a.next_key(None).unwrap(), 0u32.to_le_bytes());
        assert_eq!(
            a.next_key(Some(&2u32.to_le_bytes())).unwrap(),
            3u32.to_le_bytes()
        );
        assert_eq!(
            a.next_key(Some(&3u32.to_le_bytes())),
            Err(MapError::NotFound)
        );
        assert_eq!(a.value_addr(4, 0), None);
        assert!(a.value_addr(3, 0).is_some());
    }

    #[test]
    fn percpu_copies_are_separate() {
        let mut a = ArrayMap::new(spec(map_type::PERCPU_ARRAY, 4, 2), 3, true).unwrap();
        let k = 1u32.to_le_bytes();
        a.update(&k, &5u32.to_le_bytes(), 0, Some(1)).unwrap();
        a.update(&k, &9u32.to_le_bytes(), 0, Some(2)).unwrap();
        let v = a.lookup(&k).unwrap();
        assert_eq!(v.len(), 24);
        assert_eq!(&v[0..4], &[0; 4]);
        assert_eq!(&v[8..12], &5u32.to_le_bytes());
        assert_eq!(&v[16..20], &9u32.to_le_bytes());
        assert_ne!(a.value_addr(1, 0), a.value_addr(1, 1));
        let mut all = vec![0u8; 24];
        all[0] = 1;
        all[8] = 2;
        all[16] = 3;
        a.update(&k, &all, 0, None).unwrap();
        assert_eq!(a.lookup(&k).unwrap(), all);
        assert_eq!(a.update(&k, &[0; 12], 0, None), Err(MapError::Invalid));
    }
}
