//! A Linux-compatible platform description for ktrace's program types:
//! helper ids and prototypes, map type numbers and context layouts are
//! Linux's, so programs built for Linux kprobes/tracepoints/perf events
//! verify the same way.

use super::platform::{
    ArgKind::{self, *},
    ContextDescriptor, CtxField, HelperProto, HelperTable, ProgramType,
    RetKind::{self, *},
};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Linux map type numbers.
pub mod map_type {
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

    /// Map types whose values live in ordinary memory the program can address.
    pub const WITH_VALUES: &[u32] = &[HASH, ARRAY, PERCPU_HASH, PERCPU_ARRAY, LRU_HASH];

    /// Name of a map type, as bpftool prints it.
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

    /// True for the array types (direct value access through `ld_imm64` is allowed).
    pub fn is_array(t: u32) -> bool {
        t == ARRAY || t == PERCPU_ARRAY
    }
}

/// Linux helper ids.
pub mod helper {
    #![allow(missing_docs)]
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const MAP_UPDATE_ELEM: i32 = 2;
    pub const MAP_DELETE_ELEM: i32 = 3;
    pub const PROBE_READ: i32 = 4;
    pub const KTIME_GET_NS: i32 = 5;
    pub const TRACE_PRINTK: i32 = 6;
    pub const GET_SMP_PROCESSOR_ID: i32 = 8;
    pub const GET_CURRENT_PID_TGID: i32 = 14;
    pub const GET_CURRENT_COMM: i32 = 16;
    pub const PERF_EVENT_OUTPUT: i32 = 25;
    pub const GET_STACKID: i32 = 27;
    pub const PROBE_READ_STR: i32 = 45;
    pub const PROBE_READ_KERNEL: i32 = 113;
    pub const PROBE_READ_KERNEL_STR: i32 = 115;
    pub const RINGBUF_OUTPUT: i32 = 130;
    pub const RINGBUF_RESERVE: i32 = 131;
    pub const RINGBUF_SUBMIT: i32 = 132;
    pub const RINGBUF_DISCARD: i32 = 133;
    pub const GET_FUNC_IP: i32 = 173;
}

/// Number of 8-byte fields of x86-64 `struct pt_regs`.
pub const PT_REGS_FIELDS: u32 = 21;
/// Size of x86-64 `struct pt_regs`.
pub const PT_REGS_SIZE: u32 = PT_REGS_FIELDS * 8;
/// Size of `struct bpf_perf_event_data` (pt_regs, sample_period, addr).
pub const PERF_EVENT_DATA_SIZE: u32 = PT_REGS_SIZE + 16;

/// Offsets of `struct pt_regs` fields (x86-64, Linux order).
pub mod pt_regs {
    #![allow(missing_docs)]
    pub const R15: u32 = 0;
    pub const R14: u32 = 8;
    pub const R13: u32 = 16;
    pub const R12: u32 = 24;
    pub const RBP: u32 = 32;
    pub const RBX: u32 = 40;
    pub const R11: u32 = 48;
    pub const R10: u32 = 56;
    pub const R9: u32 = 64;
    pub const R8: u32 = 72;
    pub const RAX: u32 = 80;
    pub const RCX: u32 = 88;
    pub const RDX: u32 = 96;
    pub const RSI: u32 = 104;
    pub const RDI: u32 = 112;
    pub const ORIG_RAX: u32 = 120;
    pub const RIP: u32 = 128;
    pub const CS: u32 = 136;
    pub const EFLAGS: u32 = 144;
    pub const RSP: u32 = 152;
    pub const SS: u32 = 160;
}

/// The prototypes of every helper ktrace implements.
pub fn helpers() -> HelperTable {
    use helper::*;
    use map_type::*;
    let p = |id, name, args: &[ArgKind], ret: RetKind| HelperProto::new(id, name, args, ret);
    HelperTable::new(vec![
        p(
            MAP_LOOKUP_ELEM,
            "bpf_map_lookup_elem",
            &[ConstMapPtr, PtrToMapKey],
            MapValueOrNull,
        )
        .with_map_types(WITH_VALUES),
        p(
            MAP_UPDATE_ELEM,
            "bpf_map_update_elem",
            &[ConstMapPtr, PtrToMapKey, PtrToMapValue, Anything],
            Integer,
        )
        .with_map_types(WITH_VALUES),
        p(
            MAP_DELETE_ELEM,
            "bpf_map_delete_elem",
            &[ConstMapPtr, PtrToMapKey],
            Integer,
        )
        .with_map_types(WITH_VALUES),
        p(
            PROBE_READ,
            "bpf_probe_read",
            &[PtrToUninitMem, ConstSizeOrZero, UnsafePtr],
            Integer,
        ),
        p(KTIME_GET_NS, "bpf_ktime_get_ns", &[], Integer),
        p(
            TRACE_PRINTK,
            "bpf_trace_printk",
            &[
                PtrToMem,
                ConstSize,
                ScalarOrUninit,
                ScalarOrUninit,
                ScalarOrUninit,
            ],
            Integer,
        ),
        p(
            GET_SMP_PROCESSOR_ID,
            "bpf_get_smp_processor_id",
            &[],
            Integer,
        ),
        p(
            GET_CURRENT_PID_TGID,
            "bpf_get_current_pid_tgid",
            &[],
            Integer,
        ),
        p(
            GET_CURRENT_COMM,
            "bpf_get_current_comm",
            &[PtrToUninitMem, ConstSize],
            Integer,
        ),
        p(
            PERF_EVENT_OUTPUT,
            "bpf_perf_event_output",
            &[PtrToCtx, ConstMapPtr, Anything, PtrToMem, ConstSizeOrZero],
            Integer,
        )
        .with_map_types(&[PERF_EVENT_ARRAY]),
        p(
            GET_STACKID,
            "bpf_get_stackid",
            &[PtrToCtx, ConstMapPtr, Anything],
            Integer,
        )
        .with_map_types(&[STACK_TRACE]),
        p(
            PROBE_READ_STR,
            "bpf_probe_read_str",
            &[PtrToUninitMem, ConstSizeOrZero, UnsafePtr],
            Integer,
        ),
        p(
            PROBE_READ_KERNEL,
            "bpf_probe_read_kernel",
            &[PtrToUninitMem, ConstSizeOrZero, UnsafePtr],
            Integer,
        ),
        p(
            PROBE_READ_KERNEL_STR,
            "bpf_probe_read_kernel_str",
            &[PtrToUninitMem, ConstSizeOrZero, UnsafePtr],
            Integer,
        ),
        p(
            RINGBUF_OUTPUT,
            "bpf_ringbuf_output",
            &[ConstMapPtr, PtrToMem, ConstSizeOrZero, Anything],
            Integer,
        )
        .with_map_types(&[RINGBUF]),
        p(
            RINGBUF_RESERVE,
            "bpf_ringbuf_reserve",
            &[ConstMapPtr, ConstAllocSize, Anything],
            AllocMemOrNull,
        )
        .with_map_types(&[RINGBUF]),
        p(
            RINGBUF_SUBMIT,
            "bpf_ringbuf_submit",
            &[PtrToAllocMem, Anything],
            Void,
        ),
        p(
            RINGBUF_DISCARD,
            "bpf_ringbuf_discard",
            &[PtrToAllocMem, Anything],
            Void,
        ),
        p(GET_FUNC_IP, "bpf_get_func_ip", &[PtrToCtx], Integer),
    ])
}

/// Helpers every tracing program type may call.
fn common_helpers() -> Vec<i32> {
    use helper::*;
    vec![
        MAP_LOOKUP_ELEM,
        MAP_UPDATE_ELEM,
        MAP_DELETE_ELEM,
        PROBE_READ,
        KTIME_GET_NS,
        TRACE_PRINTK,
        GET_SMP_PROCESSOR_ID,
        GET_CURRENT_PID_TGID,
        GET_CURRENT_COMM,
        PERF_EVENT_OUTPUT,
        GET_STACKID,
        PROBE_READ_STR,
        PROBE_READ_KERNEL,
        PROBE_READ_KERNEL_STR,
        RINGBUF_OUTPUT,
        RINGBUF_RESERVE,
        RINGBUF_SUBMIT,
        RINGBUF_DISCARD,
    ]
}

/// `struct pt_regs`: 21 read-only u64 fields.
pub fn pt_regs_ctx() -> ContextDescriptor {
    ContextDescriptor::u64_fields("struct pt_regs", PT_REGS_FIELDS, false)
}

/// Kprobes and kretprobes: context `struct pt_regs`, plus `bpf_get_func_ip`.
pub fn kprobe() -> ProgramType {
    let mut allowed = common_helpers();
    allowed.push(helper::GET_FUNC_IP);
    ProgramType {
        name: "kprobe".into(),
        ctx: pt_regs_ctx(),
        allowed_helpers: allowed,
    }
}

/// Tracepoints: the context is the event record, described by the embedder
/// as its total size and its fields (offset, size).
pub fn tracepoint(event: &str, record_size: u32, fields: &[(u32, u32)]) -> ProgramType {
    let mut name = String::from("tracepoint record ");
    name.push_str(event);
    ProgramType {
        name: "tracepoint".into(),
        ctx: ContextDescriptor {
            name,
            size: record_size,
            fields: fields
                .iter()
                .map(|&(offset, size)| CtxField { offset, size })
                .collect(),
            writable: false,
        },
        allowed_helpers: common_helpers(),
    }
}

/// Perf events: context `struct bpf_perf_event_data` (pt_regs, then u64
/// sample_period, then u64 addr).
pub fn perf_event() -> ProgramType {
    ProgramType {
        name: "perf_event".into(),
        ctx: ContextDescriptor::u64_fields("struct bpf_perf_event_data", PT_REGS_FIELDS + 2, false),
        allowed_helpers: common_helpers(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_table() {
        assert_eq!(kprobe().ctx.size, 168);
        assert_eq!(perf_event().ctx.size, 184);
        let t = helpers();
        assert_eq!(t.iter().count(), 19);
        assert_eq!(t.get(131).unwrap().name, "bpf_ringbuf_reserve");
        assert!(t.get(7).is_none());
        let k = kprobe();
        assert!(k.ctx.field_for(pt_regs::RDI, 8).is_some());
        assert!(k.ctx.field_for(pt_regs::RDI + 4, 4).is_some());
        assert!(k.ctx.field_for(pt_regs::RDI + 4, 8).is_none());
        assert!(k.ctx.field_for(168, 8).is_none());
        let tp = tracepoint("block:block_rq_complete", 32, &[(8, 4), (12, 4), (16, 16)]);
        assert!(tp.ctx.field_for(16, 8).is_some());
        assert!(tp.ctx.field_for(0, 4).is_none());
    }
}
