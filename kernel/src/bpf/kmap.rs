//! Kernel map objects: a [`Map`] from `ktrace-bpf-maps` under a lock, with
//! its id and definition.
//!
//! # Who waits for whom (SMP)
//! The lock disables interrupts and records the CPU holding it. Task
//! context (host requests) takes it with [`KMap::lock`]. Program context
//! (helpers, any CPU) takes it with [`KMap::prog_lock`], which
//! - fails at once when *this* CPU holds the lock: a probe fired inside
//!   map code, and waiting would deadlock;
//! - otherwise waits for the other CPU, at most [`PROG_WAIT_NS`]. The
//!   holder runs one map operation (or one host batch) with interrupts
//!   off, so it cannot be preempted and finishes in bounded time; the
//!   bound is there for what is not covered by that argument (a holder's
//!   vCPU descheduled by the host, two CPUs each in a probe inside map
//!   code wanting the other's map). An operation that gives up is counted
//!   in [`KMap::busy`] (reported as `MapInfo::busy`) and fails as on a
//!   locked map: a NULL lookup, `-EBUSY` from update and delete.
//!
//! The hot paths take no map lock at all: an array lookup is address
//! arithmetic over storage that never moves ([`ArrayLayout`]), ring
//! buffers and perf event arrays have their own many-producer protocol
//! (`ktrace_bpf_maps::RingBuf`), and hash maps (plain, per-CPU, LRU) lock
//! one bucket per write and none per lookup (`ktrace_bpf_maps::HashMap`
//! argues it); all are used through shared handles ([`KMap::ring`],
//! [`KMap::perf`], [`KMap::hash`]) without the map lock. The bucket locks
//! follow the policy above: [`prog_wait`] is the bounded wait, and a hash
//! operation that gives up is counted in [`KMap::busy`] the same way.
//! Host requests still take the map lock (one host operation at a time
//! per map), and inside it the hash map's bucket locks, which they wait
//! for as long as it takes; [`KMap::lock`] names the CPU they run on, so
//! a program nested in one by a probe fails at once.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ktrace_abi::bpf::{MapDefinition, MapInfo};
use ktrace_abi::types::MapTypes;
use ktrace_bpf_maps::{
    ArrayLayout, Epochs, HashMap, Map, MapError, MapSpec, PerfEventArray, RingBuf,
};

use crate::sync::{SpinLock, SpinLockGuard};

/// Longest a program waits for a map another CPU holds: long enough that a
/// holder whose vCPU thread the host preempted (several milliseconds on a
/// loaded machine under TCG; a 1 ms bound lost counts there) finishes
/// first, short enough to end the wait nobody would end.
pub const PROG_WAIT_NS: u64 = 50_000_000;
/// Most 64-spin rounds of that wait, whatever the clock says.
const MAX_WAIT_ROUNDS: u32 = 1 << 20;
/// `holder` when no CPU holds the lock.
const NO_HOLDER: u32 = 0;

/// One map the runtime holds.
pub struct KMap {
    pub id: u32,
    pub name: String,
    pub spec: MapSpec,
    /// Programs may not write it (`.rodata`).
    pub read_only: bool,
    inner: SpinLock<Map>,
    /// CPU + 1 of the lock's holder, or [`NO_HOLDER`].
    holder: AtomicU32,
    /// Program operations refused because the lock stayed held.
    busy: AtomicU64,
    /// Arrays: where the values lie (lookups without the lock).
    array: Option<ArrayLayout>,
    /// Ring buffers and perf event arrays, shared outside the lock.
    ring: Option<Arc<RingBuf>>,
    perf: Option<Arc<PerfEventArray>>,
    /// Hash maps, shared outside the lock (bucket locks inside).
    hash: Option<Arc<HashMap>>,
    /// Bytes of storage (fixed at creation: everything is preallocated).
    pub memory_bytes: u64,
    /// Value size as the host sees it.
    pub host_value_size: u32,
    /// Declared key/value/record types (checked at creation), kept like
    /// Linux keeps a map's BTF ids so any later reader prints typed.
    pub types: MapTypes,
}

impl KMap {
    /// Creates and preallocates the map described by `def`.
    pub fn create(id: u32, def: &MapDefinition, epochs: Arc<Epochs>) -> Result<KMap, MapError> {
        let spec = MapSpec {
            map_type: def.map_type,
            key_size: def.key_size,
            value_size: def.value_size,
            max_entries: def.max_entries,
            flags: def.flags,
        };
        // Only the preallocation runs guarded (see `heap::guarded`): the
        // clones below are infallible, and sized by the host.
        let mut map = crate::mm::heap::guarded(|| {
            Map::create(spec, crate::percpu::cpu_count() as usize, epochs)
        })?;
        if !def.initial_value.is_empty() {
            match &mut map {
                Map::Array(a) if def.max_entries == 1 => a.init_value(&def.initial_value)?,
                _ => return Err(MapError::Invalid),
            }
        }
        let memory_bytes = map.memory_bytes() as u64;
        let host_value_size = map.host_value_size() as u32;
        Ok(KMap {
            id,
            name: def.name.clone(),
            spec,
            read_only: def.read_only,
            holder: AtomicU32::new(NO_HOLDER),
            busy: AtomicU64::new(0),
            array: map.array_layout(),
            ring: map.ring(),
            perf: map.perf(),
            hash: map.hash(),
            inner: SpinLock::new(map),
            memory_bytes,
            host_value_size,
            types: def.types.clone(),
        })
    }

    /// Takes the lock from task context (host requests).
    pub fn lock(&self) -> MapGuard<'_> {
        let guard = self.inner.lock();
        let tag = this_cpu_tag();
        self.holder.store(tag, Ordering::Relaxed);
        if let Some(h) = &self.hash {
            // Interrupts are off while the guard lives: the CPU stays.
            h.set_host_cpu(tag as usize - 1);
        }
        MapGuard {
            holder: &self.holder,
            guard,
        }
    }

    /// Takes the lock from program context on `cpu` (see the module
    /// overview): `None` if this CPU holds it or another CPU held it
    /// longer than [`PROG_WAIT_NS`].
    pub fn prog_lock(&self, cpu: usize) -> Option<MapGuard<'_>> {
        let me = cpu as u32 + 1;
        let mut wait = prog_wait();
        loop {
            if let Some(guard) = self.inner.try_lock() {
                self.holder.store(me, Ordering::Relaxed);
                return Some(MapGuard {
                    holder: &self.holder,
                    guard,
                });
            }
            // Relaxed: a stale value can only name another CPU (this
            // CPU's own stores are always seen), which costs a bounded
            // wait, never a deadlock.
            if self.holder.load(Ordering::Relaxed) == me {
                break;
            }
            if !wait() {
                break;
            }
            for _ in 0..64 {
                core::hint::spin_loop();
            }
        }
        self.count_busy();
        None
    }

    /// Counts a program operation refused because a lock of the map
    /// stayed held.
    pub fn count_busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// Program operations refused because the map stayed locked.
    pub fn busy(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    /// An array's layout: program lookups compute addresses with it,
    /// lock-free.
    pub fn array(&self) -> Option<&ArrayLayout> {
        self.array.as_ref()
    }

    /// The ring buffer, used without the lock by producers and the consumer.
    pub fn ring(&self) -> Option<&RingBuf> {
        self.ring.as_deref()
    }

    /// The hash map, used without the map lock (it locks its buckets).
    pub fn hash(&self) -> Option<&HashMap> {
        self.hash.as_deref()
    }

    /// The perf event array, used without the lock.
    pub fn perf(&self) -> Option<&PerfEventArray> {
        self.perf.as_deref()
    }

    /// The description the host lists.
    pub fn info(&self, programs: Vec<u32>) -> MapInfo {
        let (submitted, lost, consumed) = if let Some(r) = self.ring() {
            let s = r.stats();
            (s.submitted, s.lost, s.consumed)
        } else if let Some(p) = self.perf() {
            let s = p.stats();
            (s.submitted, s.lost, s.consumed)
        } else {
            (0, 0, 0)
        };
        let lost_per_cpu = self
            .perf()
            .map(|p| p.cpu_stats().map(|s| s.lost).collect())
            .unwrap_or_default();
        let m = self.lock();
        MapInfo {
            id: self.id,
            name: self.name.clone(),
            map_type: self.spec.map_type,
            key_size: self.spec.key_size,
            value_size: self.spec.value_size,
            max_entries: self.spec.max_entries,
            flags: self.spec.flags,
            host_value_size: self.host_value_size,
            memory_bytes: self.memory_bytes,
            entries: m.entries().map(|n| n as u64),
            submitted,
            lost,
            consumed,
            lost_per_cpu,
            busy: self.busy(),
            programs,
            types: self.types.clone(),
        }
    }
}

/// How long a program waits for a lock another CPU holds: asked between
/// spin rounds, it says to go on until [`PROG_WAIT_NS`] have passed (or
/// [`MAX_WAIT_ROUNDS`] rounds, should the clock not run).
pub fn prog_wait() -> impl FnMut() -> bool {
    let mut deadline = None;
    let mut rounds = 0u32;
    move || {
        let now = crate::time::now_ns();
        match deadline {
            None => deadline = Some(now + PROG_WAIT_NS),
            Some(d) if now >= d => return false,
            Some(_) => {}
        }
        rounds += 1;
        rounds <= MAX_WAIT_ROUNDS
    }
}

fn this_cpu_tag() -> u32 {
    crate::percpu::this_cpu().id + 1
}

/// The map, locked; clears the holder before unlocking.
pub struct MapGuard<'a> {
    holder: &'a AtomicU32,
    guard: SpinLockGuard<'a, Map>,
}

impl Deref for MapGuard<'_> {
    type Target = Map;
    fn deref(&self) -> &Map {
        &self.guard
    }
}

impl DerefMut for MapGuard<'_> {
    fn deref_mut(&mut self) -> &mut Map {
        &mut self.guard
    }
}

impl Drop for MapGuard<'_> {
    fn drop(&mut self) {
        // Before the lock is released (the guard field drops after this).
        self.holder.store(NO_HOLDER, Ordering::Relaxed);
    }
}
