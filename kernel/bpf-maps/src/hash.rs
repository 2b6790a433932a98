//! Hash maps: plain, per-CPU and LRU, over preallocated slots.
//!
//! Keys and values live in two [`Slab`]s indexed by slot; a
//! `hashbrown::HashTable<u32>` maps key hashes to slots. The table is
//! created with room for twice `max_entries`, which is what guarantees that
//! hashbrown never reallocates: with at most half its capacity in use, an
//! insert that runs out of tombstone-free buckets rehashes in place instead
//! of growing. Deleted slots go through the epoch scheme of the crate
//! overview before reuse, so `RESERVE` extra slots exist for inserts while a
//! program still holds a just-deleted slot.
//!
//! The LRU flavour keeps an exact recency list (intrusive, by slot index):
//! lookups and updates move an entry to the front; inserting into a full map
//! evicts the entry at the back.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use hashbrown::HashTable;

use crate::epoch::Epochs;
use crate::store::{try_filled, Slab};
use crate::{round8, update_flags, MapError, MapSpec, MAX_KEY_SIZE, MAX_VALUE_SIZE};

const NIL: u32 = u32::MAX;
/// Slots beyond `max_entries` for inserts while deleted slots are pinned.
const RESERVE: usize = 16;

/// `BPF_MAP_TYPE_HASH`, `BPF_MAP_TYPE_PERCPU_HASH` and `BPF_MAP_TYPE_LRU_HASH`.
pub struct HashMap {
    spec: MapSpec,
    percpu: bool,
    lru: bool,
    ncpus: usize,
    /// Bytes between per-CPU copies of one value.
    stride: usize,
    /// Bytes of value storage per slot (all CPUs).
    slot_bytes: usize,
    keys: Slab,
    values: Slab,
    table: HashTable<u32>,
    /// Cached hash of each slot's key (rehashing needs it).
    hashes: Vec<u64>,
    live: Vec<bool>,
    free: Vec<u32>,
    /// Deleted slots and their epoch tags, oldest first.
    retired: VecDeque<(u32, u64)>,
    count: usize,
    epochs: Arc<Epochs>,
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    evictions: u64,
}

fn hash_key(key: &[u8]) -> u64 {
    // FNV-1a, then a final avalanche so the low bits hashbrown uses mix well.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl HashMap {
    /// Creates a hash map of `spec`; `percpu` keeps one value per CPU,
    /// `lru` evicts the least recently used entry instead of failing when full.
    pub fn new(
        spec: MapSpec,
        ncpus: usize,
        percpu: bool,
        lru: bool,
        epochs: Arc<Epochs>,
    ) -> Result<HashMap, MapError> {
        if spec.key_size == 0
            || spec.key_size > MAX_KEY_SIZE
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
        let slot_bytes = stride * ncpus;
        let cap = spec.max_entries as usize + RESERVE;
        let key_bytes = cap
            .checked_mul(spec.key_size as usize)
            .ok_or(MapError::TooBig)?;
        let value_bytes = cap.checked_mul(slot_bytes).ok_or(MapError::TooBig)?;
        let mut table = HashTable::new();
        table
            .try_reserve(2 * cap, |_| 0)
            .map_err(|_| MapError::NoMemory)?;
        let mut retired = VecDeque::new();
        retired
            .try_reserve_exact(cap)
            .map_err(|_| MapError::NoMemory)?;
        // Popped from the back: hand out low slots first.
        let mut free = Vec::new();
        free.try_reserve_exact(cap)
            .map_err(|_| MapError::NoMemory)?;
        free.extend((0..cap as u32).rev());
        let (prev, next) = if lru {
            (try_filled(NIL, cap)?, try_filled(NIL, cap)?)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(HashMap {
            spec,
            percpu,
            lru,
            ncpus,
            stride,
            slot_bytes,
            keys: Slab::new(key_bytes)?,
            values: Slab::new(value_bytes)?,
            table,
            hashes: try_filled(0, cap)?,
            live: try_filled(false, cap)?,
            free,
            retired,
            count: 0,
            epochs,
            prev,
            next,
            head: NIL,
            tail: NIL,
            evictions: 0,
        })
    }

    /// The creation parameters.
    pub fn spec(&self) -> &MapSpec {
        &self.spec
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entries evicted by the LRU policy since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Bytes of storage (keys, values, table, bookkeeping).
    pub fn memory_bytes(&self) -> usize {
        let cap = self.live.len();
        self.keys.len()
            + self.values.len()
            + self.table.capacity() * 5
            + cap * (8 + 1 + 4 + 12)
            + if self.lru { cap * 8 } else { 0 }
    }

    fn key_off(&self, slot: u32) -> usize {
        slot as usize * self.spec.key_size as usize
    }

    fn value_off(&self, slot: u32, cpu: usize) -> usize {
        slot as usize * self.slot_bytes + (cpu % self.ncpus) * self.stride
    }

    fn find(&self, key: &[u8]) -> Result<Option<u32>, MapError> {
        if key.len() != self.spec.key_size as usize {
            return Err(MapError::Invalid);
        }
        let h = hash_key(key);
        let keys = &self.keys;
        let ks = key.len();
        Ok(self
            .table
            .find(h, |&s| keys.eq(s as usize * ks, key))
            .copied())
    }

    fn lru_unlink(&mut self, s: u32) {
        let (p, n) = (self.prev[s as usize], self.next[s as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[s as usize] = NIL;
        self.next[s as usize] = NIL;
    }

    fn lru_push_front(&mut self, s: u32) {
        self.prev[s as usize] = NIL;
        self.next[s as usize] = self.head;
        if self.head != NIL {
            self.prev[self.head as usize] = s;
        }
        self.head = s;
        if self.tail == NIL {
            self.tail = s;
        }
    }

    fn touch(&mut self, s: u32) {
        if self.lru && self.head != s {
            self.lru_unlink(s);
            self.lru_push_front(s);
        }
    }

    /// Program lookup: the address of `cpu`'s copy of the value.
    pub fn value_addr(&mut self, key: &[u8], cpu: usize) -> Option<u64> {
        let s = self.find(key).ok()??;
        self.touch(s);
        Some(self.values.addr(self.value_off(s, cpu)))
    }

    /// Host lookup: the value (per-CPU: every CPU's copy, each padded to 8 bytes).
    pub fn lookup(&self, key: &[u8]) -> Result<Vec<u8>, MapError> {
        let s = self.find(key)?.ok_or(MapError::NotFound)?;
        let vs = self.spec.value_size as usize;
        let mut out = vec![0; if self.percpu { self.slot_bytes } else { vs }];
        for cpu in 0..self.ncpus {
            self.values.read(
                self.value_off(s, cpu),
                &mut out[cpu * self.stride..cpu * self.stride + vs],
            )?;
        }
        Ok(out)
    }

    fn alloc_slot(&mut self) -> Result<u32, MapError> {
        if let Some(s) = self.free.pop() {
            return Ok(s);
        }
        match self.retired.front() {
            Some(&(s, tag)) if self.epochs.reusable(tag) => {
                self.retired.pop_front();
                Ok(s)
            }
            _ => Err(MapError::NoMemory),
        }
    }

    fn remove_slot(&mut self, s: u32) {
        let h = self.hashes[s as usize];
        if let Ok(e) = self.table.find_entry(h, |&x| x == s) {
            e.remove();
        }
        self.live[s as usize] = false;
        if self.lru {
            self.lru_unlink(s);
        }
        self.count -= 1;
        let tag = self.epochs.retire();
        // Capacity was reserved for every slot: this never reallocates.
        self.retired.push_back((s, tag));
    }

    /// Update. `cpu = Some(c)` is a program's update (one value, CPU `c`'s
    /// copy; a new per-CPU entry starts zeroed on the other CPUs); `None`
    /// is the host's (per-CPU: one padded value per CPU).
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
        let vs = self.spec.value_size as usize;
        let want = if cpu.is_none() && self.percpu {
            self.slot_bytes
        } else {
            vs
        };
        if value.len() != want {
            return Err(MapError::Invalid);
        }
        let existing = self.find(key)?;
        let s = match (existing, flags) {
            (Some(_), update_flags::NOEXIST) => return Err(MapError::Exists),
            (None, update_flags::EXIST) => return Err(MapError::NotFound),
            (Some(s), _) => {
                self.touch(s);
                s
            }
            (None, _) => {
                if self.count >= self.spec.max_entries as usize {
                    if !self.lru || self.tail == NIL {
                        return Err(MapError::TooBig);
                    }
                    let victim = self.tail;
                    self.remove_slot(victim);
                    self.evictions += 1;
                }
                let s = self.alloc_slot()?;
                let h = hash_key(key);
                self.keys.write(self.key_off(s), key)?;
                self.values
                    .zero(s as usize * self.slot_bytes, self.slot_bytes)?;
                self.hashes[s as usize] = h;
                let hashes = &self.hashes;
                self.table.insert_unique(h, s, |&x| hashes[x as usize]);
                self.live[s as usize] = true;
                self.count += 1;
                if self.lru {
                    self.lru_push_front(s);
                }
                s
            }
        };
        match cpu {
            Some(c) => self.values.write(self.value_off(s, c), value),
            None => {
                for c in 0..self.ncpus {
                    self.values.write(
                        self.value_off(s, c),
                        &value[c * self.stride..c * self.stride + vs],
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Deletes `key` (`-ENOENT` if absent). The slot is reused only after
    /// programs that may hold it finish.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), MapError> {
        let s = self.find(key)?.ok_or(MapError::NotFound)?;
        self.remove_slot(s);
        Ok(())
    }

    /// The key after `key` in slot order; the first key for `None` or a
    /// key not in the map (as Linux does).
    pub fn next_key(&self, key: Option<&[u8]>) -> Result<Vec<u8>, MapError> {
        let start = match key {
            None => 0,
            Some(k) => match self.find(k)? {
                Some(s) => s as usize + 1,
                None => 0,
            },
        };
        let s = (start..self.live.len())
            .find(|&i| self.live[i])
            .ok_or(MapError::NotFound)?;
        let mut out = vec![0; self.spec.key_size as usize];
        self.keys.read(self.key_off(s as u32), &mut out)?;
        Ok(out)
    }

    /// Size in bytes of a host-side value (per-CPU: all copies).
    pub fn host_value_size(&self) -> usize {
        if self.percpu {
            self.slot_bytes
        } else {
            self.spec.value_size as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map_type;

    fn map(t: u32, n: u32, ncpus: usize) -> HashMap {
        let spec = MapSpec {
            map_type: t,
            key_size: 4,
            value_size: 8,
            max_entries: n,
            flags: 0,
        };
        let percpu = t == map_type::PERCPU_HASH;
        let lru = t == map_type::LRU_HASH;
        HashMap::new(spec, ncpus, percpu, lru, Arc::new(Epochs::new(ncpus))).unwrap()
    }
    fn k(i: u32) -> [u8; 4] {
        i.to_le_bytes()
    }
    fn v(i: u64) -> [u8; 8] {
        i.to_le_bytes()
    }

    #[test]
    fn flags_limits_and_errnos() {
        let mut m = map(map_type::HASH, 3, 1);
        assert_eq!(
            m.update(&k(1), &v(10), update_flags::EXIST, None),
            Err(MapError::NotFound)
        );
        m.update(&k(1), &v(10), update_flags::NOEXIST, None)
            .unwrap();
        assert_eq!(
            m.update(&k(1), &v(11), update_flags::NOEXIST, None)
                .unwrap_err()
                .errno(),
            -17
        );
        m.update(&k(1), &v(12), update_flags::EXIST, None).unwrap();
        assert_eq!(m.lookup(&k(1)).unwrap(), v(12));
        m.update(&k(2), &v(20), 0, None).unwrap();
        m.update(&k(3), &v(30), 0, None).unwrap();
        assert_eq!(m.update(&k(4), &v(40), 0, None).unwrap_err().errno(), -7);
        // Updating an existing key in a full map is fine.
        m.update(&k(3), &v(31), 0, None).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.delete(&k(9)).unwrap_err().errno(), -2);
        m.delete(&k(2)).unwrap();
        assert_eq!(m.lookup(&k(2)), Err(MapError::NotFound));
        m.update(&k(4), &v(40), 0, None).unwrap();
        assert_eq!(m.update(&k(5), &v(1), 4, None), Err(MapError::Invalid));
        assert_eq!(m.update(&[1, 2], &v(1), 0, None), Err(MapError::Invalid));
        assert_eq!(m.update(&k(5), &[1, 2], 0, None), Err(MapError::Invalid));
    }

    #[test]
    fn iteration_visits_every_key_once() {
        let mut m = map(map_type::HASH, 100, 1);
        for i in 0..100 {
            m.update(&k(i * 7), &v(i as u64), 0, None).unwrap();
        }
        for i in 0..50 {
            m.delete(&k(i * 14)).unwrap();
        }
        let mut seen = Vec::new();
        let mut cur: Option<Vec<u8>> = None;
        while let Ok(nk) = m.next_key(cur.as_deref()) {
            seen.push(u32::from_le_bytes(nk[..4].try_into().unwrap()));
            cur = Some(nk);
        }
        seen.sort();
        let want: Vec<u32> = (0..100).map(|i| i * 7).filter(|x| x % 14 != 0).collect();
        assert_eq!(seen, want);
        // An unknown key restarts from the first.
        assert_eq!(m.next_key(Some(&k(1))).unwrap(), m.next_key(None).unwrap());
    }

    #[test]
    fn churn_never_grows_the_table() {
        let mut m = map(map_type::HASH, 64, 1);
        let cap = m.table.capacity();
        for round in 0..200u32 {
            for i in 0..64 {
                m.update(&k(round * 1000 + i), &v(1), 0, None).unwrap();
            }
            for i in 0..64 {
                m.delete(&k(round * 1000 + i)).unwrap();
            }
        }
        assert_eq!(m.table.capacity(), cap);
        assert!(m.is_empty());
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let mut m = map(map_type::LRU_HASH, 3, 1);
        for i in 1..=3 {
            m.update(&k(i), &v(i as u64), 0, None).unwrap();
        }
        // Use 1, so 2 is now the oldest.
        assert!(m.value_addr(&k(1), 0).is_some());
        m.update(&k(4), &v(4), 0, None).unwrap();
        assert_eq!(m.lookup(&k(2)), Err(MapError::NotFound));
        assert_eq!(m.len(), 3);
        assert_eq!(m.evictions(), 1);
        m.update(&k(5), &v(5), 0, None).unwrap();
        assert_eq!(m.lookup(&k(3)), Err(MapError::NotFound));
        for i in [1, 4, 5] {
            assert_eq!(m.lookup(&k(i)).unwrap(), v(i as u64));
        }
        assert_eq!(
            m.update(&k(4), &v(0), update_flags::NOEXIST, None),
            Err(MapError::Exists)
        );
    }

    #[test]
    fn percpu_hash_values() {
        let mut m = map(map_type::PERCPU_HASH, 4, 2);
        m.update(&k(1), &v(5), 0, Some(1)).unwrap();
        let all = m.lookup(&k(1)).unwrap();
        assert_eq!(all.len(), 16);
        assert_eq!(&all[..8], &v(0));
        assert_eq!(&all[8..], &v(5));
        m.update(&k(1), &v(7), 0, Some(0)).unwrap();
        let all = m.lookup(&k(1)).unwrap();
        assert_eq!(&all[..8], &v(7));
        assert_eq!(&all[8..], &v(5));
    }

    #[test]
    fn deleted_slot_not_reused_while_a_program_runs() {
        let epochs = Arc::new(Epochs::new(1));
        let spec = MapSpec {
            map_type: map_type::HASH,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            flags: 0,
        };
        let mut m = HashMap::new(spec, 1, false, false, epochs.clone()).unwrap();
        m.update(&k(1), &v(111), 0, None).unwrap();
        let guard = epochs.enter(0);
        let addr = m.value_addr(&k(1), 0).unwrap();
        m.delete(&k(1)).unwrap();
        // Every insert while the program runs lands in a different slot.
        for i in 2..2 + RESERVE as u32 {
            m.update(&k(i), &v(222), 0, None).unwrap();
            assert_ne!(m.value_addr(&k(i), 0).unwrap(), addr);
            m.delete(&k(i)).unwrap();
        }
        // The reserve is exhausted: refuse rather than reuse a pinned slot.
        assert_eq!(m.update(&k(99), &v(1), 0, None), Err(MapError::NoMemory));
        drop(guard);
        m.update(&k(99), &v(1), 0, None).unwrap();
    }
}
