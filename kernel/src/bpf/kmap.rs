//! Kernel map objects: a [`Map`] from `ktrace-bpf-maps` under a lock, with
//! its id and definition.
//!
//! The lock disables interrupts. Task context (host requests, the event
//! task) takes it with `lock`; program context (helpers) only ever uses
//! `try_lock`, so a probe that fires while the same CPU holds the lock gets
//! a failure code instead of a deadlock.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use ktrace_abi::bpf::{MapDefinition, MapInfo};
use ktrace_abi::types::MapTypes;
use ktrace_bpf_maps::{Epochs, Map, MapError, MapSpec};

use crate::sync::SpinLock;

/// One map the runtime holds.
pub struct KMap {
    pub id: u32,
    pub name: String,
    pub spec: MapSpec,
    /// Programs may not write it (`.rodata`).
    pub read_only: bool,
    pub inner: SpinLock<Map>,
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
            inner: SpinLock::new(map),
            memory_bytes,
            host_value_size,
            types: def.types.clone(),
        })
    }

    /// The description the host lists.
    pub fn info(&self, programs: Vec<u32>) -> MapInfo {
        let m = self.inner.lock();
        let (submitted, lost, consumed) = match &*m {
            Map::RingBuf(r) => {
                let s = r.stats();
                (s.submitted, s.lost, s.consumed)
            }
            Map::PerfEventArray(p) => {
                let s = p.stats();
                (s.submitted, s.lost, s.consumed)
            }
            _ => (0, 0, 0),
        };
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
            programs,
            types: self.types.clone(),
        }
    }
}
