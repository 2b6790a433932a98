//! Hash maps: plain, per-CPU and LRU, over preallocated slots, safe for
//! programs on every CPU and the host at once.
//!
//! # Layout
//! Keys and values live in two [`Slab`]s indexed by slot (each key and
//! value padded to 8 bytes, so they are compared and copied a word at a
//! time). A fixed array of buckets (a power of two, at least the slot
//! count, as Linux's `htab` sizes it) holds the first slot of each chain;
//! `next` links the slots of a chain. Nothing is ever resized or moved:
//! the table is as preallocated as the slots. Keys are hashed with
//! foldhash (hashbrown's default hasher), seeded per map.
//!
//! # Concurrency: one lock per bucket, lookups without a lock
//! - **Lookups from programs take no lock.** They walk the chain through
//!   atomic links (acquire loads). A writer publishes a slot only after
//!   its key, hash and value are written (release store of the link), and
//!   unlinking a slot leaves that slot's own `next` intact, so a walker
//!   standing on it still reaches the rest of the chain. A removed slot is
//!   reused — its key and links rewritten — only after every program that
//!   could have reached it has finished (the [`Epochs`] of the crate
//!   overview, which programs enter before they run): a walk never sees a
//!   slot change under it, it sees the old chain or the new one. This is
//!   what Linux's RCU gives its `htab` lookups.
//! - **Writers lock one bucket.** Update, insert and delete take the lock
//!   of the key's bucket ([`CpuLock`]), so operations on different buckets
//!   run in parallel on different CPUs, and two writers of one chain are
//!   serialised. Updating an existing key writes its value in place under
//!   that lock (concurrent readers may see a partly written value, as in
//!   Linux without `BPF_F_LOCK`).
//! - **Slots come from a pool under its own short lock.** An insert or a
//!   delete also takes the pool lock (free slots, slots waiting for their
//!   epoch), held for a push or a pop, always *after* the bucket lock, and
//!   taken before anything is changed, so a refused lock leaves the map as
//!   it was. The entry count changes only under the pool lock (every
//!   insert and every removal holds it), so inserts on different buckets
//!   never exceed `max_entries` together; it is an atomic only so that
//!   [`HashMap::len`] can read it without the lock, and is written with a
//!   plain store (under emulation a locked read-modify-write costs a call
//!   out of the translated code).
//! - **LRU maps keep one exact recency order**, which is state of the
//!   whole map: their inserts, updates and deletes take the pool lock
//!   (which holds the recency list) *first* and then the bucket lock —
//!   eviction picks the victim from the list and then needs the victim's
//!   bucket. The order differs from the other flavours but is fixed per
//!   map, so no cycle can form. A lookup moves its entry to the front
//!   when the list's lock is free at once, and skips that otherwise
//!   (recency is then approximate; the lookup never fails).
//! - **Host requests** (dumps, updates from `ktrace map`) take bucket
//!   locks like programs do and wait as long as it takes; the embedder
//!   names the CPU they run on ([`HashMap::set_host_cpu`]) so that a
//!   program on that CPU, nested in a host operation by a probe in map
//!   code, fails at once instead of waiting for itself.
//!
//! Every lock fails at once when its holder is the caller's own CPU and
//! otherwise waits as the caller's [`Waiter`] allows (see [`crate::lock`]).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::hash::{BuildHasher, Hasher};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use foldhash::fast::FixedState;

use crate::epoch::Epochs;
use crate::lock::{CpuLock, CpuMutex, Guard, Waiter};
use crate::store::{try_filled, Slab};
use crate::{round8, update_flags, MapError, MapSpec, MAX_KEY_SIZE, MAX_VALUE_SIZE};

const NIL: u32 = u32::MAX;
/// Slots beyond `max_entries` for inserts while deleted slots are pinned.
const RESERVE: usize = 16;
/// `host_cpu` before the embedder names one: a tag no CPU has.
const NO_CPU: usize = u32::MAX as usize - 1;

/// One chain of the table.
struct Bucket {
    lock: CpuLock,
    /// First slot of the chain, or [`NIL`].
    head: AtomicU32,
}

/// What the pool lock guards.
struct Pool {
    /// Slots never used or reusable now; popped from the back.
    free: Vec<u32>,
    /// Deleted slots and their epoch tags, oldest first.
    retired: VecDeque<(u32, u64)>,
    /// LRU maps: the recency list (most recent at `head`), by slot.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
}

/// `BPF_MAP_TYPE_HASH`, `BPF_MAP_TYPE_PERCPU_HASH` and `BPF_MAP_TYPE_LRU_HASH`.
pub struct HashMap {
    spec: MapSpec,
    percpu: bool,
    lru: bool,
    ncpus: usize,
    /// Bytes between two keys (the key size rounded up to 8).
    key_stride: usize,
    /// Bytes between per-CPU copies of one value (the value size rounded
    /// up to 8).
    stride: usize,
    /// Bytes of value storage per slot (all CPUs).
    slot_bytes: usize,
    keys: Slab,
    values: Slab,
    hasher: FixedState,
    buckets: Vec<Bucket>,
    mask: usize,
    /// Per slot: the next slot of its chain.
    next: Vec<AtomicU32>,
    /// Per slot: the hash of its key.
    hashes: Vec<AtomicU64>,
    /// Per slot: whether it holds an entry.
    live: Vec<AtomicBool>,
    count: AtomicUsize,
    pool: CpuMutex<Pool>,
    evictions: AtomicU64,
    /// The CPU host requests run on ([`HashMap::set_host_cpu`]).
    host_cpu: AtomicUsize,
    epochs: Arc<Epochs>,
}

/// Waits as long as it takes (host requests).
fn forever() -> bool {
    true
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
        let key_stride = round8(spec.key_size as usize);
        let stride = round8(spec.value_size as usize);
        let slot_bytes = stride * ncpus;
        let cap = spec.max_entries as usize + RESERVE;
        let key_bytes = cap.checked_mul(key_stride).ok_or(MapError::TooBig)?;
        let value_bytes = cap.checked_mul(slot_bytes).ok_or(MapError::TooBig)?;
        let nbuckets = cap.next_power_of_two();
        let mut buckets = Vec::new();
        buckets
            .try_reserve_exact(nbuckets)
            .map_err(|_| MapError::NoMemory)?;
        buckets.extend((0..nbuckets).map(|_| Bucket {
            lock: CpuLock::new(),
            head: AtomicU32::new(NIL),
        }));
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
        let keys = Slab::new(key_bytes)?;
        // A seed per map (where its keys live), as Linux draws `hashrnd`
        // per map: keys that collide in one map do not in another.
        let hasher = FixedState::with_seed(keys.addr(0));
        Ok(HashMap {
            spec,
            percpu,
            lru,
            ncpus,
            key_stride,
            stride,
            slot_bytes,
            keys,
            values: Slab::new(value_bytes)?,
            hasher,
            buckets,
            mask: nbuckets - 1,
            next: atomics(cap, || AtomicU32::new(NIL))?,
            hashes: atomics(cap, || AtomicU64::new(0))?,
            live: atomics(cap, || AtomicBool::new(false))?,
            count: AtomicUsize::new(0),
            pool: CpuMutex::new(Pool {
                free,
                retired,
                prev,
                next,
                head: NIL,
                tail: NIL,
            }),
            evictions: AtomicU64::new(0),
            host_cpu: AtomicUsize::new(NO_CPU),
            epochs,
        })
    }

    /// The creation parameters.
    pub fn spec(&self) -> &MapSpec {
        &self.spec
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted by the LRU policy since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Names the CPU the host's requests run on from now on (the embedder
    /// serialises host requests and calls this when it takes them up).
    pub fn set_host_cpu(&self, cpu: usize) {
        self.host_cpu.store(cpu, Ordering::Relaxed);
    }

    /// Bytes of storage (keys, values, buckets, bookkeeping).
    pub fn memory_bytes(&self) -> usize {
        let cap = self.live.len();
        self.keys.len()
            + self.values.len()
            + self.buckets.len() * core::mem::size_of::<Bucket>()
            + cap * (4 + 8 + 1 + 4 + 12)
            + if self.lru { cap * 8 } else { 0 }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        h.finish()
    }

    fn bucket(&self, hash: u64) -> &Bucket {
        &self.buckets[hash as usize & self.mask]
    }

    fn key_off(&self, slot: u32) -> usize {
        slot as usize * self.key_stride
    }

    fn value_off(&self, slot: u32, cpu: usize) -> usize {
        slot as usize * self.slot_bytes + (cpu % self.ncpus) * self.stride
    }

    fn check_key(&self, key: &[u8]) -> Result<(), MapError> {
        if key.len() == self.spec.key_size as usize {
            Ok(())
        } else {
            Err(MapError::Invalid)
        }
    }

    /// The slot holding `key` in `b`'s chain. Safe without the bucket lock
    /// for a caller inside an epoch (see the module overview).
    fn find_in(&self, b: &Bucket, hash: u64, key: &[u8]) -> Option<u32> {
        let mut s = b.head.load(Ordering::Acquire);
        while s != NIL {
            let i = s as usize;
            if self.hashes[i].load(Ordering::Relaxed) == hash && self.keys.eq(self.key_off(s), key)
            {
                return Some(s);
            }
            s = self.next[i].load(Ordering::Acquire);
        }
        None
    }

    /// Takes `s` out of `b`'s chain (bucket lock held). `s`'s own link
    /// stays, for walkers standing on it.
    fn unlink(&self, b: &Bucket, s: u32) {
        let after = self.next[s as usize].load(Ordering::Relaxed);
        let first = b.head.load(Ordering::Relaxed);
        if first == s {
            b.head.store(after, Ordering::Release);
            return;
        }
        let mut p = first;
        while p != NIL {
            let n = self.next[p as usize].load(Ordering::Relaxed);
            if n == s {
                self.next[p as usize].store(after, Ordering::Release);
                return;
            }
            p = n;
        }
    }

    /// Removes live slot `s` of bucket `b` (its lock and the pool lock
    /// held): out of the chain, the count and the recency list, into the
    /// retired queue.
    fn remove_slot(&self, pool: &mut Pool, b: &Bucket, s: u32) {
        self.unlink(b, s);
        self.live[s as usize].store(false, Ordering::Relaxed);
        if self.lru {
            lru_unlink(pool, s);
        }
        self.count_add(-1);
        let tag = self.epochs.retire();
        // Capacity was reserved for every slot: this never reallocates.
        pool.retired.push_back((s, tag));
    }

    /// Adds `delta` to the entry count. Only with the pool lock held (see
    /// the module overview): a load and a store, no atomic
    /// read-modify-write, since no other writer can come between them.
    fn count_add(&self, delta: isize) {
        let n = self.count.load(Ordering::Relaxed);
        self.count
            .store(n.wrapping_add_signed(delta), Ordering::Relaxed);
    }

    fn alloc_slot(&self, pool: &mut Pool) -> Result<u32, MapError> {
        if let Some(s) = pool.free.pop() {
            return Ok(s);
        }
        match pool.retired.front() {
            Some(&(s, tag)) if self.epochs.reusable(tag) => {
                pool.retired.pop_front();
                Ok(s)
            }
            _ => Err(MapError::NoMemory),
        }
    }

    fn host_waiter<'a>(&self, wait: &'a mut dyn FnMut() -> bool) -> Waiter<'a> {
        Waiter::on_cpu(self.host_cpu.load(Ordering::Relaxed), wait)
    }

    /// Program lookup: the address of `cpu`'s copy of the value. Takes no
    /// lock (an LRU map's recency update excepted, skipped unless its lock
    /// is free at once); the caller must be inside an epoch guard of
    /// [`Epochs`].
    pub fn value_addr_on(
        &self,
        key: &[u8],
        cpu: usize,
        w: &mut Waiter<'_>,
    ) -> Result<Option<u64>, MapError> {
        self.check_key(key)?;
        let h = self.hash(key);
        let Some(s) = self.find_in(self.bucket(h), h, key) else {
            return Ok(None);
        };
        if self.lru {
            // Recency is worth no wait: move the entry only if the list is
            // free now.
            if let Ok(mut pool) = self.pool.lock(&mut w.without_waiting()) {
                // Deletes of an LRU map hold this lock: `live` is stable.
                if self.live[s as usize].load(Ordering::Relaxed) {
                    lru_touch(&mut pool, s);
                }
            }
        }
        Ok(Some(self.values.addr(self.value_off(s, cpu))))
    }

    /// [`HashMap::value_addr_on`] for the host's CPU, waiting as long as it
    /// takes.
    pub fn value_addr(&self, key: &[u8], cpu: usize) -> Option<u64> {
        let mut wait = forever;
        let mut w = self.host_waiter(&mut wait);
        self.value_addr_on(key, cpu, &mut w).ok().flatten()
    }

    /// Host lookup: the value (per-CPU: every CPU's copy, each padded to 8 bytes).
    pub fn lookup(&self, key: &[u8]) -> Result<Vec<u8>, MapError> {
        self.check_key(key)?;
        let mut wait = forever;
        let mut w = self.host_waiter(&mut wait);
        let h = self.hash(key);
        let b = self.bucket(h);
        let _held = b.lock.acquire(&mut w)?;
        let s = self.find_in(b, h, key).ok_or(MapError::NotFound)?;
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

    /// Update, with the host's waiting (see [`HashMap::update_on`]).
    pub fn update(
        &self,
        key: &[u8],
        value: &[u8],
        flags: u64,
        cpu: Option<usize>,
    ) -> Result<(), MapError> {
        let mut wait = forever;
        let mut w = self.host_waiter(&mut wait);
        self.update_on(key, value, flags, cpu, &mut w)
    }

    /// Update. `cpu = Some(c)` is a program's update (one value, CPU `c`'s
    /// copy; a new per-CPU entry starts zeroed on the other CPUs); `None`
    /// is the host's (per-CPU: one padded value per CPU). Locks as `w`
    /// allows; [`MapError::Busy`] if it gave up, with nothing changed.
    pub fn update_on(
        &self,
        key: &[u8],
        value: &[u8],
        flags: u64,
        cpu: Option<usize>,
        w: &mut Waiter<'_>,
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
        self.check_key(key)?;
        let h = self.hash(key);
        let b = self.bucket(h);
        // LRU: the recency list first, then the bucket (module overview).
        let mut lru_pool = if self.lru {
            Some(self.pool.lock(w)?)
        } else {
            None
        };
        let held = b.lock.acquire(w)?;
        let s = match (self.find_in(b, h, key), flags) {
            (Some(_), update_flags::NOEXIST) => return Err(MapError::Exists),
            (None, update_flags::EXIST) => return Err(MapError::NotFound),
            (Some(s), _) => {
                if let Some(pool) = lru_pool.as_mut() {
                    lru_touch(pool, s);
                }
                s
            }
            (None, _) => {
                let mut pool = match lru_pool.take() {
                    Some(p) => p,
                    None => self.pool.lock(w)?,
                };
                self.insert(&mut pool, b, h, key, w)?
            }
        };
        let r = self.write_value(s, value, cpu);
        drop(held);
        r
    }

    /// Inserts `key` into `b` (its lock and the pool lock held), evicting
    /// the least recently used entry of a full LRU map.
    fn insert(
        &self,
        pool: &mut Guard<'_, Pool>,
        b: &Bucket,
        h: u64,
        key: &[u8],
        w: &mut Waiter<'_>,
    ) -> Result<u32, MapError> {
        let max = self.spec.max_entries as usize;
        if self.count.load(Ordering::Relaxed) >= max {
            if !self.lru || pool.tail == NIL {
                return Err(MapError::TooBig);
            }
            // LRU inserts hold the pool lock, so nothing else inserts now.
            let victim = pool.tail;
            let vh = self.hashes[victim as usize].load(Ordering::Relaxed);
            let vb = self.bucket(vh);
            if core::ptr::eq(vb, b) {
                self.remove_slot(pool, b, victim);
            } else {
                let _victim_held = vb.lock.acquire(w)?;
                self.remove_slot(pool, vb, victim);
            }
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let s = self.alloc_slot(pool)?;
        self.count_add(1);
        let i = s as usize;
        // Unreachable until published below: no walker can see these writes.
        self.keys.write(self.key_off(s), key)?;
        self.values.zero(i * self.slot_bytes, self.slot_bytes)?;
        self.hashes[i].store(h, Ordering::Relaxed);
        self.live[i].store(true, Ordering::Relaxed);
        self.next[i].store(b.head.load(Ordering::Relaxed), Ordering::Relaxed);
        // Publish: a walker that loads this link (acquire) sees all of it.
        b.head.store(s, Ordering::Release);
        if self.lru {
            lru_push_front(pool, s);
        }
        Ok(s)
    }

    fn write_value(&self, s: u32, value: &[u8], cpu: Option<usize>) -> Result<(), MapError> {
        match cpu {
            Some(c) => self.values.write(self.value_off(s, c), value),
            None => {
                let vs = self.spec.value_size as usize;
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

    /// Deletes `key` with the host's waiting (see [`HashMap::delete_on`]).
    pub fn delete(&self, key: &[u8]) -> Result<(), MapError> {
        let mut wait = forever;
        let mut w = self.host_waiter(&mut wait);
        self.delete_on(key, &mut w)
    }

    /// Deletes `key` (`-ENOENT` if absent). The slot is reused only after
    /// programs that may hold it finish. [`MapError::Busy`] if `w` gave up
    /// on a lock, with nothing changed.
    pub fn delete_on(&self, key: &[u8], w: &mut Waiter<'_>) -> Result<(), MapError> {
        self.check_key(key)?;
        let h = self.hash(key);
        let b = self.bucket(h);
        let lru_pool = if self.lru {
            Some(self.pool.lock(w)?)
        } else {
            None
        };
        let _held = b.lock.acquire(w)?;
        let s = self.find_in(b, h, key).ok_or(MapError::NotFound)?;
        let mut pool = match lru_pool {
            Some(p) => p,
            None => self.pool.lock(w)?,
        };
        self.remove_slot(&mut pool, b, s);
        Ok(())
    }

    /// Slot `i`'s key if it holds an entry, read under its bucket's lock
    /// (so the slot cannot be deleted and reused while it is copied).
    fn key_if_live(&self, i: usize, w: &mut Waiter<'_>) -> Result<Option<Vec<u8>>, MapError> {
        if !self.live[i].load(Ordering::Acquire) {
            return Ok(None);
        }
        let h = self.hashes[i].load(Ordering::Relaxed);
        let _held = self.bucket(h).lock.acquire(w)?;
        // Deleted, or reused for a key of another bucket, meanwhile.
        if !self.live[i].load(Ordering::Relaxed) || self.hashes[i].load(Ordering::Relaxed) != h {
            return Ok(None);
        }
        let mut out = vec![0; self.spec.key_size as usize];
        self.keys.read(self.key_off(i as u32), &mut out)?;
        Ok(Some(out))
    }

    /// The key after `key` in slot order; the first key for `None` or a
    /// key not in the map (as Linux does).
    pub fn next_key(&self, key: Option<&[u8]>) -> Result<Vec<u8>, MapError> {
        let mut wait = forever;
        let mut w = self.host_waiter(&mut wait);
        let start = match key {
            None => 0,
            Some(k) => {
                self.check_key(k)?;
                let h = self.hash(k);
                let b = self.bucket(h);
                let _held = b.lock.acquire(&mut w)?;
                match self.find_in(b, h, k) {
                    Some(s) => s as usize + 1,
                    None => 0,
                }
            }
        };
        for i in start..self.live.len() {
            if let Some(k) = self.key_if_live(i, &mut w)? {
                return Ok(k);
            }
        }
        Err(MapError::NotFound)
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

/// `n` atomics made by `make`, or [`MapError::NoMemory`].
fn atomics<T>(n: usize, make: impl Fn() -> T) -> Result<Vec<T>, MapError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| MapError::NoMemory)?;
    v.extend((0..n).map(|_| make()));
    Ok(v)
}

fn lru_unlink(pool: &mut Pool, s: u32) {
    let (p, n) = (pool.prev[s as usize], pool.next[s as usize]);
    if p == NIL {
        pool.head = n;
    } else {
        pool.next[p as usize] = n;
    }
    if n == NIL {
        pool.tail = p;
    } else {
        pool.prev[n as usize] = p;
    }
    pool.prev[s as usize] = NIL;
    pool.next[s as usize] = NIL;
}

fn lru_push_front(pool: &mut Pool, s: u32) {
    pool.prev[s as usize] = NIL;
    pool.next[s as usize] = pool.head;
    if pool.head != NIL {
        pool.prev[pool.head as usize] = s;
    }
    pool.head = s;
    if pool.tail == NIL {
        pool.tail = s;
    }
}

fn lru_touch(pool: &mut Pool, s: u32) {
    if pool.head != s {
        lru_unlink(pool, s);
        lru_push_front(pool, s);
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
        let m = map(map_type::HASH, 3, 1);
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
        let m = map(map_type::HASH, 100, 1);
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
    fn churn_reuses_every_slot() {
        let m = map(map_type::HASH, 64, 1);
        let bytes = m.memory_bytes();
        for round in 0..200u32 {
            for i in 0..64 {
                m.update(&k(round * 1000 + i), &v(1), 0, None).unwrap();
            }
            assert_eq!(m.update(&k(99_999), &v(1), 0, None), Err(MapError::TooBig));
            for i in 0..64 {
                m.delete(&k(round * 1000 + i)).unwrap();
            }
        }
        assert_eq!(m.memory_bytes(), bytes);
        assert!(m.is_empty());
        assert!(m
            .buckets
            .iter()
            .all(|b| b.head.load(Ordering::Relaxed) == NIL));
    }

    #[test]
    fn colliding_keys_share_a_chain() {
        // A map of 1 entry has 32 buckets for 17 slots: 17 keys cannot all
        // land in different chains, and each must still be found, updated
        // and deleted from the middle of its chain.
        let m = map(map_type::HASH, 1 + RESERVE as u32, 1);
        for i in 0..17 {
            m.update(&k(i), &v(u64::from(i)), 0, None).unwrap();
        }
        for i in (0..17).step_by(2) {
            m.delete(&k(i)).unwrap();
        }
        for i in 0..17 {
            let want = if i % 2 == 0 {
                Err(MapError::NotFound)
            } else {
                Ok(v(u64::from(i)).to_vec())
            };
            assert_eq!(m.lookup(&k(i)), want, "key {i}");
        }
        assert_eq!(m.len(), 8);
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        let m = map(map_type::LRU_HASH, 3, 1);
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
        let m = map(map_type::PERCPU_HASH, 4, 2);
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
        let m = HashMap::new(spec, 1, false, false, epochs.clone()).unwrap();
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
