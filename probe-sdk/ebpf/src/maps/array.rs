//! Arrays (`BPF_MAP_TYPE_ARRAY`, `BPF_MAP_TYPE_PERCPU_ARRAY`): fixed slots
//! indexed by `u32`, zero-initialised, never deleted.

use core::marker::PhantomData;

use super::{atomic_add, map_type, MapDef};
use crate::helpers::{map_ptr, raw};

macro_rules! array_like {
    ($(#[$m:meta])* $name:ident, $ty:expr) => {
        $(#[$m])*
        #[repr(C)]
        pub struct $name<V> {
            def: MapDef,
            _v: PhantomData<V>,
        }

        // SAFETY: the static is a definition only; entries are reached
        // through helpers.
        unsafe impl<V> Sync for $name<V> {}

        impl<V> $name<V> {
            /// An array of `max_entries` slots.
            pub const fn with_max_entries(max_entries: u32) -> Self {
                Self { def: MapDef::new::<u32, V>($ty, max_entries, 0), _v: PhantomData }
            }

            /// The definition the object file carries.
            pub const fn def(&self) -> &MapDef {
                &self.def
            }

            /// A pointer to slot `index`, or `None` when out of range.
            #[inline(always)]
            pub fn get_ptr_mut(&self, index: u32) -> Option<*mut V> {
                // SAFETY: the key is a `u32` on the stack.
                let p = unsafe { raw::map_lookup_elem(map_ptr(self), (&index as *const u32).cast()) };
                if p.is_null() { None } else { Some(p.cast()) }
            }

            /// A copy of slot `index` (a copy, because other CPUs may write
            /// the slot meanwhile), or `None` when out of range.
            #[inline(always)]
            pub fn get(&self, index: u32) -> Option<V>
            where
                V: Copy,
            {
                // SAFETY: a non-null lookup result is a valid, aligned `V`
                // that stays mapped for the rest of this program run.
                self.get_ptr_mut(index).map(|p| unsafe { core::ptr::read_volatile(p) })
            }

            /// Overwrite slot `index`.
            #[inline(always)]
            pub fn set(&self, index: u32, value: &V) -> Result<(), i64> {
                // SAFETY: key and value point to readable values of the
                // map's sizes.
                let rc = unsafe {
                    raw::map_update_elem(map_ptr(self), (&index as *const u32).cast(), (value as *const V).cast(), 0)
                };
                if rc < 0 { Err(rc) } else { Ok(()) }
            }
        }

        impl $name<u64> {
            /// Add `delta` to slot `index` (ignored when out of range).
            #[inline(always)]
            pub fn add(&self, index: u32, delta: u64) {
                if let Some(p) = self.get_ptr_mut(index) {
                    atomic_add(p, delta);
                }
            }
        }
    };
}

array_like!(
    /// An array shared by all CPUs (`BPF_MAP_TYPE_ARRAY`).
    Array,
    map_type::ARRAY
);
array_like!(
    /// An array with one copy per CPU (`BPF_MAP_TYPE_PERCPU_ARRAY`): no
    /// contention, summed by the reader.
    PerCpuArray,
    map_type::PERCPU_ARRAY
);
