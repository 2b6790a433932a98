//! Hash maps (`BPF_MAP_TYPE_HASH`, `BPF_MAP_TYPE_LRU_HASH`).

use core::marker::PhantomData;

use super::{atomic_add, map_type, update, MapDef};
use crate::helpers::{map_ptr, raw};

/// `-EEXIST`, returned by an insert with [`update::NOEXIST`] that raced with
/// another CPU.
const EEXIST: i64 = -17;

macro_rules! hash_like {
    ($(#[$m:meta])* $name:ident, $ty:expr) => {
        $(#[$m])*
        #[repr(C)]
        pub struct $name<K, V> {
            def: MapDef,
            _kv: PhantomData<(K, V)>,
        }

        // SAFETY: the static is only a definition the loader reads; all
        // access to the entries goes through helpers, which the kernel
        // synchronises.
        unsafe impl<K, V> Sync for $name<K, V> {}

        impl<K, V> $name<K, V> {
            /// A map holding at most `max_entries` keys.
            pub const fn with_max_entries(max_entries: u32) -> Self {
                Self::with_flags(max_entries, 0)
            }

            /// A map with creation flags (`BPF_F_NO_PREALLOC`, ...).
            pub const fn with_flags(max_entries: u32, flags: u32) -> Self {
                Self { def: MapDef::new::<K, V>($ty, max_entries, flags), _kv: PhantomData }
            }

            /// The definition the object file carries.
            pub const fn def(&self) -> &MapDef {
                &self.def
            }

            /// A pointer to the value for `key`, or `None`. The pointer stays
            /// valid for the rest of this program run.
            #[inline(always)]
            pub fn get_ptr_mut(&self, key: &K) -> Option<*mut V> {
                // SAFETY: `key` points to `size_of::<K>()` readable bytes.
                let p = unsafe { raw::map_lookup_elem(map_ptr(self), (key as *const K).cast()) };
                if p.is_null() { None } else { Some(p.cast()) }
            }

            /// A copy of the value for `key`. A copy, not a reference:
            /// another CPU may update the entry while this program runs,
            /// and a Rust reference would promise it does not.
            #[inline(always)]
            pub fn get(&self, key: &K) -> Option<V>
            where
                V: Copy,
            {
                // SAFETY: a non-null lookup result is a valid, aligned `V`
                // that stays mapped for the rest of this program run; one
                // volatile read takes the copy.
                self.get_ptr_mut(key).map(|p| unsafe { core::ptr::read_volatile(p) })
            }

            /// Insert or replace (`flags`: [`update::ANY`], [`update::NOEXIST`],
            /// [`update::EXIST`]). `Err` carries the negative errno.
            #[inline(always)]
            pub fn insert(&self, key: &K, value: &V, flags: u64) -> Result<(), i64> {
                // SAFETY: both pointers reference readable values of the
                // map's key and value sizes.
                let rc = unsafe {
                    raw::map_update_elem(map_ptr(self), (key as *const K).cast(), (value as *const V).cast(), flags)
                };
                if rc < 0 { Err(rc) } else { Ok(()) }
            }

            /// Remove `key`. `Err(-ENOENT)` if it was absent.
            #[inline(always)]
            pub fn remove(&self, key: &K) -> Result<(), i64> {
                // SAFETY: `key` points to a readable key.
                let rc = unsafe { raw::map_delete_elem(map_ptr(self), (key as *const K).cast()) };
                if rc < 0 { Err(rc) } else { Ok(()) }
            }
        }

        impl<K> $name<K, u64> {
            /// Add `delta` to the counter for `key`, creating it at `delta`.
            /// Safe against other CPUs doing the same.
            #[inline(always)]
            pub fn add(&self, key: &K, delta: u64) {
                if let Some(p) = self.get_ptr_mut(key) {
                    atomic_add(p, delta);
                    return;
                }
                if let Err(EEXIST) = self.insert(key, &delta, update::NOEXIST) {
                    // Another CPU created it between our lookup and insert.
                    if let Some(p) = self.get_ptr_mut(key) {
                        atomic_add(p, delta);
                    }
                }
            }

            /// Add one to the counter for `key`.
            #[inline(always)]
            pub fn increment(&self, key: &K) {
                self.add(key, 1)
            }
        }
    };
}

hash_like!(
    /// A hash map (`BPF_MAP_TYPE_HASH`): inserts fail with `-E2BIG` when full.
    HashMap,
    map_type::HASH
);
hash_like!(
    /// A hash map that evicts the least recently used entry when full
    /// (`BPF_MAP_TYPE_LRU_HASH`).
    LruHashMap,
    map_type::LRU_HASH
);
