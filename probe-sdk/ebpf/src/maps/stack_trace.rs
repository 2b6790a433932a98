//! `BPF_MAP_TYPE_STACK_TRACE`: stacks stored by id.

use super::{map_type, MapDef};
use crate::context::EbpfContext;
use crate::helpers::{map_ptr, raw};

/// Frames per stack (Linux's `PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: u32 = 127;

/// Stack traces keyed by a `u32` id that [`get_stackid`](Self::get_stackid)
/// returns; the value is up to 127 return addresses.
#[repr(C)]
pub struct StackTrace {
    def: MapDef,
}

// SAFETY: a definition only; stacks are stored by the helper.
unsafe impl Sync for StackTrace {}

impl StackTrace {
    /// Room for `max_entries` distinct stacks.
    pub const fn with_max_entries(max_entries: u32) -> Self {
        Self {
            def: MapDef {
                map_type: map_type::STACK_TRACE,
                key_size: 4,
                value_size: MAX_STACK_DEPTH * 8,
                max_entries,
                map_flags: 0,
            },
        }
    }

    /// The definition the object file carries.
    pub const fn def(&self) -> &MapDef {
        &self.def
    }

    /// Store the current kernel stack and return its id (`flags`: Linux's
    /// `BPF_F_*` stack flags, 0 for a kernel stack).
    #[inline(always)]
    pub fn get_stackid<C: EbpfContext>(&self, ctx: &C, flags: u64) -> Result<u32, i64> {
        // SAFETY: `ctx` is the program's context pointer.
        let rc = unsafe { raw::get_stackid(ctx.as_ptr(), map_ptr(self), flags) };
        if rc < 0 {
            Err(rc)
        } else {
            Ok(rc as u32)
        }
    }
}
