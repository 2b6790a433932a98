//! BPF programs, maps, links and event streams (filled in by the
//! BPF runtime work).

use serde::{Deserialize, Serialize};

/// Requests to the BPF runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BpfRequest {}

/// Answers from the BPF runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BpfResponse {}

// ---------------------------------------------------------------------------
// Load requests: what the host's object loader produces from an eBPF ELF
// object and the in-kernel runtime accepts.
// ---------------------------------------------------------------------------

use alloc::string::String;
use alloc::vec::Vec;

/// `src_reg` of an `ld_imm64` whose `imm` is an index into
/// [`ObjectLoad::maps`]: the instruction loads that map's pointer
/// (Linux's `BPF_PSEUDO_MAP_IDX`).
pub const PSEUDO_MAP_IDX: u8 = 5;
/// `src_reg` of an `ld_imm64` whose first `imm` is a map index and second
/// `imm` an offset into the map's single value: the instruction loads the
/// address of that byte (Linux's `BPF_PSEUDO_MAP_IDX_VALUE`; used for
/// `.rodata`/`.data`/`.bss`).
pub const PSEUDO_MAP_IDX_VALUE: u8 = 6;
/// `src_reg` of a `call` to a BPF function in the same program, `imm` being
/// the pc-relative offset (Linux's `BPF_PSEUDO_CALL`).
pub const PSEUDO_CALL: u8 = 1;

/// Linux map type numbers (`enum bpf_map_type`) that probes use.
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERF_EVENT_ARRAY: u32 = 4;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const STACK_TRACE: u32 = 7;
    pub const LRU_HASH: u32 = 9;
    pub const RINGBUF: u32 = 27;
}

/// One map to create before the programs are loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDefinition {
    /// The map's symbol (`COUNTS`), or `.rodata`/`.data`/`.bss`.
    pub name: String,
    /// A Linux map type number ([`map_type`]).
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `BPF_F_*` creation flags.
    pub flags: u32,
    /// Initial contents of the single value of a global-data array map
    /// (`.rodata`, `.data`); empty for other maps (`.bss` starts zeroed).
    pub initial_value: Vec<u8>,
    /// Programs may not write it (`.rodata`).
    pub read_only: bool,
}

/// Kinds of program, by the section they came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProgramType {
    /// `kprobe/<target>`: context is `struct pt_regs`.
    Kprobe,
    /// `kretprobe/<target>`: context is `struct pt_regs` at return.
    Kretprobe,
    /// `tracepoint/<category>/<name>`: context is the event record.
    Tracepoint,
    /// `perf_event`: context is `struct bpf_perf_event_data`.
    PerfEvent,
}

impl ProgramType {
    /// Linux's `enum bpf_prog_type` number (kretprobes are kprobe programs).
    pub fn linux_number(self) -> u32 {
        match self {
            ProgramType::Kprobe | ProgramType::Kretprobe => 2,
            ProgramType::Tracepoint => 5,
            ProgramType::PerfEvent => 7,
        }
    }
}

/// Where a program attaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachTarget {
    /// A kprobe or kretprobe target.
    Kprobe {
        /// As written in the section name (path, suffix, glob, `file:line`,
        /// `path+0x10`).
        spec: String,
        /// Where it resolved in the kernel ELF: one point, or several for a
        /// glob. Empty until the host resolves it.
        points: Vec<KprobePoint>,
    },
    /// A static tracepoint.
    Tracepoint { category: String, name: String },
    /// A perf event; which one is chosen when attaching.
    PerfEvent,
}

/// One resolved kprobe address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KprobePoint {
    /// The probed instruction.
    pub address: u64,
    /// The demangled function holding it.
    pub function: String,
    /// `address` minus the function's start.
    pub offset: u64,
}

/// Source position of one instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineInfo {
    /// Instruction index (in 8-byte slots) in [`ProgramLoad::insns`].
    pub insn: u32,
    /// Index into [`LineTable::files`].
    pub file: u32,
    pub line: u32,
    pub column: u32,
    /// When the instruction is code inlined from another function: the
    /// call sites that led to it, innermost first (the call of the inlined
    /// function, then the call of the function that called it, ...).
    pub call_sites: Vec<CallSite>,
}

/// A call of an inlined function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSite {
    /// Index into [`LineTable::files`].
    pub file: u32,
    pub line: u32,
}

/// Instruction → source line, for verifier messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineTable {
    pub files: Vec<String>,
    /// Sorted by `insn`; a row covers instructions up to the next row's.
    pub rows: Vec<LineInfo>,
}

/// One program to verify and load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramLoad {
    /// The function's symbol (`submit_bio`).
    pub name: String,
    /// The ELF section it came from.
    pub section: String,
    pub prog_type: ProgramType,
    pub attach: AttachTarget,
    /// Little-endian instructions, 8 bytes each; map references are
    /// `ld_imm64` with `src_reg` [`PSEUDO_MAP_IDX`] / [`PSEUDO_MAP_IDX_VALUE`],
    /// calls to subprograms (appended after the main body) use
    /// [`PSEUDO_CALL`].
    pub insns: Vec<u8>,
    /// The object's license string.
    pub license: String,
    /// Source lines, when the object carried DWARF line tables.
    pub lines: Option<LineTable>,
}

/// Everything one object file asks the kernel to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLoad {
    pub maps: Vec<MapDefinition>,
    pub programs: Vec<ProgramLoad>,
}
