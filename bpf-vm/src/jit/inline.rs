//! Map lookups compiled inline, as Linux's `map_gen_lookup` does for
//! arrays: a `bpf_map_lookup_elem` call on an array map the verifier proved
//! is the same map on every path becomes the bounds check of the `u32` key
//! and `base + key * stride`, with no helper call.
//!
//! The embedder decides which calls qualify (it knows which helper id is
//! the lookup and which maps are arrays) from the verifier's
//! [`Report::call_maps`](crate::verifier::Report::call_maps) and describes
//! each with an [`InlineLookup`]. The compiled code then:
//! - loads the key as a `u32` from `r2` (the verifier proved `r2` points at
//!   the map's 4 key bytes);
//! - compares it with `max_entries` and, when it is not below, sets `r0` to
//!   NULL, as the helper does;
//! - otherwise sets `r0 = base + key * stride`.
//!
//! Against Spectre v1 the index is clamped without a branch before it is
//! used: a `cmov` on the comparison's flags makes it 0 when out of bounds,
//! so a mispredicted bounds check computes the address of entry 0, never
//! one past the end (Linux masks with `index_mask` over storage rounded up
//! to a power of two instead; the clamp needs no change to the storage).
//!
//! With constant blinding, `max_entries`, the stride and the base are
//! emitted blinded like every other immediate (the loader chooses the
//! first two, and Linux blinds the map address too).
//!
//! Per-CPU arrays are not inlined: the address of this CPU's copy needs the
//! CPU number, which the compiled code has no cheap way to read here; they
//! stay helper calls.

/// One helper call the JIT replaces with an inline array lookup.
///
/// The embedder guarantees that the call at `pc` looks `r2`'s 4-byte key
/// up in an array whose `max_entries` values lie `stride` bytes apart from
/// `base`, that this storage stays in place and valid for as long as the
/// compiled code may run (an array never moves; the program holds its
/// maps), and that the helper would return exactly that address (or NULL
/// for a key at or past `max_entries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineLookup {
    /// Slot of the `call` instruction.
    pub pc: usize,
    /// Address of value 0.
    pub base: u64,
    /// Bytes between consecutive values (below 2^31).
    pub stride: u32,
    /// Number of values.
    pub max_entries: u32,
}
