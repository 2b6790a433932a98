//! What the embedder tells the verifier about its world: program types and
//! their context, helper prototypes and the maps a program may use.
//!
//! The verifier core knows nothing of any kernel; everything kernel-specific
//! comes through these tables. ktrace's platform is described once, as
//! constants, in `ktrace-bpf-platform`; [`super::linux`] builds these
//! tables from it.

use alloc::string::String;
use alloc::vec::Vec;

/// A readable span of the context structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtxField {
    /// Byte offset of the field.
    pub offset: u32,
    /// Size of the field in bytes.
    pub size: u32,
}

/// Layout of the context a program receives in r1.
///
/// A load is allowed when it is 1, 2, 4 or 8 bytes, naturally aligned, and
/// lies entirely inside one field. Stores need `writable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextDescriptor {
    /// Name used in messages, e.g. `struct pt_regs`.
    pub name: String,
    /// Total size in bytes.
    pub size: u32,
    /// The readable fields.
    pub fields: Vec<CtxField>,
    /// Whether programs may store into the context.
    pub writable: bool,
}

impl ContextDescriptor {
    /// A context made of `count` consecutive 8-byte fields.
    pub fn u64_fields(name: &str, count: u32, writable: bool) -> ContextDescriptor {
        ContextDescriptor {
            name: name.into(),
            size: count * 8,
            fields: (0..count)
                .map(|i| CtxField {
                    offset: i * 8,
                    size: 8,
                })
                .collect(),
            writable,
        }
    }

    /// The field containing `[off, off + size)`, if any.
    pub fn field_for(&self, off: u32, size: u32) -> Option<CtxField> {
        let end = off.checked_add(size)?;
        self.fields
            .iter()
            .copied()
            .find(|f| f.offset <= off && end <= f.offset.saturating_add(f.size))
    }
}

/// Argument and return kinds of helper prototypes: the platform
/// description's vocabulary (see [`ktrace_bpf_platform::helper`]).
pub use ktrace_bpf_platform::{ArgKind, RetKind};

/// Prototype of one helper function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperProto {
    /// Helper id (the `imm` of `call`).
    pub id: i32,
    /// Name used in messages, e.g. `bpf_map_lookup_elem`.
    pub name: String,
    /// Argument kinds for r1, r2, ... (at most 5; registers past the list are unchecked).
    pub args: Vec<ArgKind>,
    /// Return kind.
    pub ret: RetKind,
    /// Map types accepted by the [`ArgKind::ConstMapPtr`] argument (empty: any).
    pub map_types: Vec<u32>,
}

impl HelperProto {
    /// A prototype with no map restriction.
    pub fn new(id: i32, name: &str, args: &[ArgKind], ret: RetKind) -> HelperProto {
        HelperProto {
            id,
            name: name.into(),
            args: args.to_vec(),
            ret,
            map_types: Vec::new(),
        }
    }

    /// Restricts the map argument to the given map types.
    pub fn with_map_types(mut self, types: &[u32]) -> HelperProto {
        self.map_types = types.to_vec();
        self
    }
}

/// A program type: its context and the helpers it may call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramType {
    /// Name used in messages, e.g. `kprobe`.
    pub name: String,
    /// The context in r1 at entry.
    pub ctx: ContextDescriptor,
    /// Helper ids this program type may call.
    pub allowed_helpers: Vec<i32>,
}

/// A map the program may reference through `ld_imm64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// The number `ld_imm64` pseudo "map fd" forms use (index forms use the
    /// position in the slice instead).
    pub fd: i32,
    /// Map type (Linux numbering, e.g. 1 = hash, 2 = array, 27 = ringbuf).
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Maximum number of entries (ring buffer: its size in bytes).
    pub max_entries: u32,
}

/// The helper table shared by all program types of an embedder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelperTable {
    protos: Vec<HelperProto>,
}

impl HelperTable {
    /// Builds the table (a later prototype with the same id replaces an earlier one).
    pub fn new(protos: Vec<HelperProto>) -> HelperTable {
        let mut t = HelperTable { protos: Vec::new() };
        for p in protos {
            t.insert(p);
        }
        t
    }

    /// Adds or replaces a prototype.
    pub fn insert(&mut self, p: HelperProto) {
        match self.protos.binary_search_by_key(&p.id, |q| q.id) {
            Ok(i) => self.protos[i] = p,
            Err(i) => self.protos.insert(i, p),
        }
    }

    /// The prototype of helper `id`.
    pub fn get(&self, id: i32) -> Option<&HelperProto> {
        self.protos
            .binary_search_by_key(&id, |q| q.id)
            .ok()
            .map(|i| &self.protos[i])
    }

    /// All prototypes, by id.
    pub fn iter(&self) -> impl Iterator<Item = &HelperProto> {
        self.protos.iter()
    }
}

/// Everything the verifier needs to know about where a program will run.
#[derive(Clone, Copy, Debug)]
pub struct Env<'a> {
    /// The program's type.
    pub prog_type: &'a ProgramType,
    /// All helper prototypes.
    pub helpers: &'a HelperTable,
    /// The maps the program may reference.
    pub maps: &'a [MapDef],
}

impl Env<'_> {
    /// Index of the map that `ld_imm64` with a map fd refers to.
    pub fn map_by_fd(&self, fd: i32) -> Option<usize> {
        self.maps.iter().position(|m| m.fd == fd)
    }

    /// Index of the map at position `idx`.
    pub fn map_by_idx(&self, idx: i32) -> Option<usize> {
        usize::try_from(idx).ok().filter(|&i| i < self.maps.len())
    }
}
