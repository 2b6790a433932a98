//! `BPF_MAP_TYPE_PERF_EVENT_ARRAY`: per-CPU event buffers.

use core::marker::PhantomData;

use super::{map_type, MapDef};
use crate::context::EbpfContext;
use crate::helpers::{map_ptr, raw, BPF_F_CURRENT_CPU};

/// Per-CPU buffers of `T` records, written with `perf_event_output`.
#[repr(C)]
pub struct PerfEventArray<T> {
    def: MapDef,
    _t: PhantomData<T>,
}

// SAFETY: a definition only; records go through helpers.
unsafe impl<T> Sync for PerfEventArray<T> {}

impl<T> PerfEventArray<T> {
    /// One buffer per CPU (`max_entries` 0: the loader sizes it to the CPU
    /// count, as libbpf does).
    pub const fn new() -> Self {
        Self::with_max_entries(0)
    }

    /// With an explicit number of CPU slots.
    pub const fn with_max_entries(max_entries: u32) -> Self {
        Self {
            def: MapDef::new::<u32, u32>(map_type::PERF_EVENT_ARRAY, max_entries, 0),
            _t: PhantomData,
        }
    }

    /// The definition the object file carries.
    pub const fn def(&self) -> &MapDef {
        &self.def
    }

    /// Append `record` to the current CPU's buffer.
    #[inline(always)]
    pub fn output<C: EbpfContext>(&self, ctx: &C, record: &T) -> Result<(), i64> {
        // SAFETY: `record` is readable for `size_of::<T>()` bytes.
        let rc = unsafe {
            raw::perf_event_output(
                ctx.as_ptr(),
                map_ptr(self),
                BPF_F_CURRENT_CPU,
                (record as *const T).cast(),
                core::mem::size_of::<T>() as u64,
            )
        };
        if rc < 0 {
            Err(rc)
        } else {
            Ok(())
        }
    }
}

impl<T> Default for PerfEventArray<T> {
    fn default() -> Self {
        Self::new()
    }
}
