//! Helper functions: Linux ids (`enum bpf_func_id`) and the prototype of
//! every helper ktrace's kernel implements.
//!
//! A program calls helper `id` with `call id`, arguments in r1–r5 and the
//! result in r0. The prototypes say what the verifier must prove about each
//! argument before the call and what r0 holds after it; the kernel's
//! implementations rely on exactly that.

use crate::map_type::{PERF_EVENT_ARRAY, RINGBUF, STACK_TRACE, WITH_VALUES};

/// `void *bpf_map_lookup_elem(map, key)`
pub const MAP_LOOKUP_ELEM: i32 = 1;
/// `long bpf_map_update_elem(map, key, value, flags)`
pub const MAP_UPDATE_ELEM: i32 = 2;
/// `long bpf_map_delete_elem(map, key)`
pub const MAP_DELETE_ELEM: i32 = 3;
/// `long bpf_probe_read(dst, size, unsafe_ptr)`
pub const PROBE_READ: i32 = 4;
/// `u64 bpf_ktime_get_ns(void)`
pub const KTIME_GET_NS: i32 = 5;
/// `long bpf_trace_printk(fmt, fmt_size, ...)`
pub const TRACE_PRINTK: i32 = 6;
/// `u32 bpf_get_smp_processor_id(void)`
pub const GET_SMP_PROCESSOR_ID: i32 = 8;
/// `u64 bpf_get_current_pid_tgid(void)`
pub const GET_CURRENT_PID_TGID: i32 = 14;
/// `long bpf_get_current_comm(buf, size)`
pub const GET_CURRENT_COMM: i32 = 16;
/// `long bpf_perf_event_output(ctx, map, flags, data, size)`
pub const PERF_EVENT_OUTPUT: i32 = 25;
/// `long bpf_get_stackid(ctx, map, flags)`
pub const GET_STACKID: i32 = 27;
/// `long bpf_probe_read_str(dst, size, unsafe_ptr)`
pub const PROBE_READ_STR: i32 = 45;
/// `long bpf_probe_read_kernel(dst, size, unsafe_ptr)`
pub const PROBE_READ_KERNEL: i32 = 113;
/// `long bpf_probe_read_kernel_str(dst, size, unsafe_ptr)`
pub const PROBE_READ_KERNEL_STR: i32 = 115;
/// `long bpf_ringbuf_output(ringbuf, data, size, flags)`
pub const RINGBUF_OUTPUT: i32 = 130;
/// `void *bpf_ringbuf_reserve(ringbuf, size, flags)`
pub const RINGBUF_RESERVE: i32 = 131;
/// `void bpf_ringbuf_submit(data, flags)`
pub const RINGBUF_SUBMIT: i32 = 132;
/// `void bpf_ringbuf_discard(data, flags)`
pub const RINGBUF_DISCARD: i32 = 133;
/// `u64 bpf_get_func_ip(ctx)`
pub const GET_FUNC_IP: i32 = 173;

/// What a helper expects in one argument register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// Any initialised scalar (pointers are rejected as leaks unless allowed).
    Anything,
    /// A scalar, or not initialised at all (variadic tail of `trace_printk`).
    ScalarOrUninit,
    /// Any initialised value; a pointer is fine because the helper only uses
    /// it as an address to read safely (`probe_read`'s source).
    UnsafePtr,
    /// A map from `ld_imm64` (its type must be one of the helper's map types).
    ConstMapPtr,
    /// Pointer to `key_size` initialised bytes of the map given in an earlier argument.
    PtrToMapKey,
    /// Pointer to `value_size` initialised bytes of the map given in an earlier argument.
    PtrToMapValue,
    /// Pointer to initialised memory whose size is the next argument.
    PtrToMem,
    /// Pointer to memory the helper writes (may be uninitialised); size in the next argument.
    PtrToUninitMem,
    /// Size of the previous memory argument: a bounded scalar, at least 1.
    ConstSize,
    /// Size of the previous memory argument: a bounded scalar, 0 allowed.
    ConstSizeOrZero,
    /// The context pointer, unmodified.
    PtrToCtx,
    /// A known constant giving the size of memory the helper allocates.
    ConstAllocSize,
    /// Memory returned by an allocating helper (non-null, offset 0); the call releases it.
    PtrToAllocMem,
}

/// What a helper returns in r0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetKind {
    /// An integer (unknown scalar).
    Integer,
    /// Nothing useful (r0 becomes an unknown scalar).
    Void,
    /// A pointer to a value of the map argument, or NULL.
    MapValueOrNull,
    /// Memory of the size given by the [`ArgKind::ConstAllocSize`] argument, or
    /// NULL; it must be released (submitted/discarded) on every path.
    AllocMemOrNull,
}

/// The prototype of one helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Helper {
    /// Helper id (the `imm` of `call`).
    pub id: i32,
    /// Linux's name (`bpf_` + the `BPF_FUNC_` name), used in messages.
    pub name: &'static str,
    /// The C prototype, as Linux's `bpf_helper_defs.h` declares it with
    /// plain C types (`void *bpf_map_lookup_elem(void *map, const void
    /// *key)`); [`crate::CHeader`] declares the helper from it.
    pub c_prototype: &'static str,
    /// Argument kinds for r1, r2, ... (registers past the list are unchecked).
    pub args: &'static [ArgKind],
    /// What r0 holds after the call.
    pub ret: RetKind,
    /// Map types the [`ArgKind::ConstMapPtr`] argument accepts (empty: any).
    pub map_types: &'static [u32],
    /// Whether a call can end the run with an error (the interpreter's
    /// helper fault) once the verifier has accepted the program. `false`
    /// is a promise every implementation keeps (the kernel's helpers
    /// return a plain value for these ids, with no error path): the JIT
    /// leaves out the error test after such a call.
    pub aborts: bool,
}

use ArgKind::*;
use RetKind::*;

const fn proto(
    id: i32,
    c_prototype: &'static str,
    args: &'static [ArgKind],
    ret: RetKind,
) -> Helper {
    Helper {
        id,
        name: name_in(c_prototype),
        c_prototype,
        args,
        ret,
        map_types: &[],
        aborts: true,
    }
}

/// The helper's name in its C prototype: from `bpf_` to the `(`.
const fn name_in(c_prototype: &'static str) -> &'static str {
    let bytes = c_prototype.as_bytes();
    let mut start = 0;
    while !(bytes[start] == b'b'
        && bytes[start + 1] == b'p'
        && bytes[start + 2] == b'f'
        && bytes[start + 3] == b'_')
    {
        start += 1;
    }
    let mut end = start;
    while bytes[end] != b'(' {
        end += 1;
    }
    let (_, from_name) = bytes.split_at(start);
    let (name, _) = from_name.split_at(end - start);
    match core::str::from_utf8(name) {
        Ok(name) => name,
        Err(_) => panic!("a helper's name is ASCII"),
    }
}

const fn on_maps(h: Helper, map_types: &'static [u32]) -> Helper {
    Helper { map_types, ..h }
}

/// A helper whose calls always return a value ([`Helper::aborts`] false).
const fn never_aborts(h: Helper) -> Helper {
    Helper { aborts: false, ..h }
}

/// Whether a call of helper `id` can end a verified program's run with an
/// error: unknown ids can (the interpreter's "unknown helper" fault, or an
/// embedder's own helper).
pub fn aborts(id: i32) -> bool {
    find(id).is_none_or(|h| h.aborts)
}

const PROBE_READ_ARGS: &[ArgKind] = &[PtrToUninitMem, ConstSizeOrZero, UnsafePtr];

/// Every helper the kernel implements, by id.
pub const HELPERS: &[Helper] = &[
    never_aborts(on_maps(
        proto(
            MAP_LOOKUP_ELEM,
            "void *bpf_map_lookup_elem(void *map, const void *key)",
            &[ConstMapPtr, PtrToMapKey],
            MapValueOrNull,
        ),
        WITH_VALUES,
    )),
    on_maps(
        proto(
            MAP_UPDATE_ELEM,
            "long bpf_map_update_elem(void *map, const void *key, const void *value, unsigned long long flags)",
            &[ConstMapPtr, PtrToMapKey, PtrToMapValue, Anything],
            Integer,
        ),
        WITH_VALUES,
    ),
    on_maps(
        proto(
            MAP_DELETE_ELEM,
            "long bpf_map_delete_elem(void *map, const void *key)",
            &[ConstMapPtr, PtrToMapKey],
            Integer,
        ),
        WITH_VALUES,
    ),
    proto(PROBE_READ, "long bpf_probe_read(void *dst, unsigned int size, const void *unsafe_ptr)", PROBE_READ_ARGS, Integer),
    never_aborts(proto(KTIME_GET_NS, "unsigned long long bpf_ktime_get_ns(void)", &[], Integer)),
    proto(
        TRACE_PRINTK,
        "long bpf_trace_printk(const char *fmt, unsigned int fmt_size, ...)",
        &[
            PtrToMem,
            ConstSize,
            ScalarOrUninit,
            ScalarOrUninit,
            ScalarOrUninit,
        ],
        Integer,
    ),
    never_aborts(proto(
        GET_SMP_PROCESSOR_ID,
        "unsigned int bpf_get_smp_processor_id(void)",
        &[],
        Integer,
    )),
    never_aborts(proto(
        GET_CURRENT_PID_TGID,
        "unsigned long long bpf_get_current_pid_tgid(void)",
        &[],
        Integer,
    )),
    proto(
        GET_CURRENT_COMM,
        "long bpf_get_current_comm(void *buf, unsigned int size_of_buf)",
        &[PtrToUninitMem, ConstSize],
        Integer,
    ),
    on_maps(
        proto(
            PERF_EVENT_OUTPUT,
            "long bpf_perf_event_output(void *ctx, void *map, unsigned long long flags, void *data, unsigned long long size)",
            &[PtrToCtx, ConstMapPtr, Anything, PtrToMem, ConstSizeOrZero],
            Integer,
        ),
        &[PERF_EVENT_ARRAY],
    ),
    on_maps(
        proto(
            GET_STACKID,
            "long bpf_get_stackid(void *ctx, void *map, unsigned long long flags)",
            &[PtrToCtx, ConstMapPtr, Anything],
            Integer,
        ),
        &[STACK_TRACE],
    ),
    proto(
        PROBE_READ_STR,
        "long bpf_probe_read_str(void *dst, unsigned int size, const void *unsafe_ptr)",
        PROBE_READ_ARGS,
        Integer,
    ),
    proto(
        PROBE_READ_KERNEL,
        "long bpf_probe_read_kernel(void *dst, unsigned int size, const void *unsafe_ptr)",
        PROBE_READ_ARGS,
        Integer,
    ),
    proto(
        PROBE_READ_KERNEL_STR,
        "long bpf_probe_read_kernel_str(void *dst, unsigned int size, const void *unsafe_ptr)",
        PROBE_READ_ARGS,
        Integer,
    ),
    on_maps(
        proto(
            RINGBUF_OUTPUT,
            "long bpf_ringbuf_output(void *ringbuf, void *data, unsigned long long size, unsigned long long flags)",
            &[ConstMapPtr, PtrToMem, ConstSizeOrZero, Anything],
            Integer,
        ),
        &[RINGBUF],
    ),
    on_maps(
        proto(
            RINGBUF_RESERVE,
            "void *bpf_ringbuf_reserve(void *ringbuf, unsigned long long size, unsigned long long flags)",
            &[ConstMapPtr, ConstAllocSize, Anything],
            AllocMemOrNull,
        ),
        &[RINGBUF],
    ),
    proto(
        RINGBUF_SUBMIT,
        "void bpf_ringbuf_submit(void *data, unsigned long long flags)",
        &[PtrToAllocMem, Anything],
        Void,
    ),
    proto(
        RINGBUF_DISCARD,
        "void bpf_ringbuf_discard(void *data, unsigned long long flags)",
        &[PtrToAllocMem, Anything],
        Void,
    ),
    never_aborts(proto(GET_FUNC_IP, "unsigned long long bpf_get_func_ip(void *ctx)", &[PtrToCtx], Integer)),
];

/// The prototype of helper `id`, if the kernel implements it.
pub fn find(id: i32) -> Option<&'static Helper> {
    HELPERS.iter().find(|h| h.id == id)
}

/// Linux's name of helper `id`: the kernel's helpers, and the Linux helpers
/// tracing programs commonly call that ktrace does not implement (so a
/// disassembly or a refusal names them).
pub fn linux_name(id: i32) -> Option<&'static str> {
    if let Some(h) = find(id) {
        return Some(h.name);
    }
    Some(match id {
        7 => "bpf_get_prandom_u32",
        12 => "bpf_tail_call",
        15 => "bpf_get_current_uid_gid",
        35 => "bpf_get_current_task",
        67 => "bpf_get_stack",
        112 => "bpf_probe_read_user",
        114 => "bpf_probe_read_user_str",
        125 => "bpf_ktime_get_boot_ns",
        _ => return None,
    })
}
