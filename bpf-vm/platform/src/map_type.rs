//! Linux map type numbers (`enum bpf_map_type`) of the maps ktrace's kernel
//! implements.

/// `BPF_MAP_TYPE_HASH`
pub const HASH: u32 = 1;
/// `BPF_MAP_TYPE_ARRAY`
pub const ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PERF_EVENT_ARRAY`
pub const PERF_EVENT_ARRAY: u32 = 4;
/// `BPF_MAP_TYPE_PERCPU_HASH`
pub const PERCPU_HASH: u32 = 5;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`
pub const PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_STACK_TRACE`
pub const STACK_TRACE: u32 = 7;
/// `BPF_MAP_TYPE_LRU_HASH`
pub const LRU_HASH: u32 = 9;
/// `BPF_MAP_TYPE_RINGBUF`
pub const RINGBUF: u32 = 27;

/// Every map type the kernel creates, by number.
pub const ALL: &[u32] = &[
    HASH,
    ARRAY,
    PERF_EVENT_ARRAY,
    PERCPU_HASH,
    PERCPU_ARRAY,
    STACK_TRACE,
    LRU_HASH,
    RINGBUF,
];

/// Map types whose values live in ordinary memory the program can address
/// (the map helpers take them).
pub const WITH_VALUES: &[u32] = &[HASH, ARRAY, PERCPU_HASH, PERCPU_ARRAY, LRU_HASH];

/// Name of a map type, as bpftool prints it (`unknown` for a number the
/// kernel does not implement).
pub fn name(t: u32) -> &'static str {
    match t {
        HASH => "hash",
        ARRAY => "array",
        PERF_EVENT_ARRAY => "perf_event_array",
        PERCPU_HASH => "percpu_hash",
        PERCPU_ARRAY => "percpu_array",
        STACK_TRACE => "stack_trace",
        LRU_HASH => "lru_hash",
        RINGBUF => "ringbuf",
        _ => "unknown",
    }
}

/// True for the array types: an `ld_imm64` may take the address of their
/// value directly (global data), and a constant key in range always finds a
/// value.
pub fn is_array(t: u32) -> bool {
    t == ARRAY || t == PERCPU_ARRAY
}

/// True for the per-CPU types: a lookup from the host returns one value per
/// CPU, each padded to 8 bytes.
pub fn is_per_cpu(t: u32) -> bool {
    t == PERCPU_HASH || t == PERCPU_ARRAY
}
