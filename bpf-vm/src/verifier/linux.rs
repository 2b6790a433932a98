//! ktrace's Linux-compatible platform, as the verifier's tables: built from
//! the one description in [`ktrace_bpf_platform`] (helper ids and
//! prototypes, map type numbers and context layouts are Linux's, so
//! programs built for Linux kprobes/tracepoints/perf events verify the same
//! way).
//!
//! The kernel (at load) and `ktrace check` (on the host) both set a
//! program up with [`program_type`] and [`helpers`], so they give the same
//! verdict with the same message.

use super::platform::{ContextDescriptor, CtxField, HelperProto, HelperTable, ProgramType};
use alloc::string::{String, ToString};
use ktrace_bpf_platform::program::{self, Attach, Context, ContextError};

pub use ktrace_bpf_platform::regs::pt_regs;
pub use ktrace_bpf_platform::regs::{PERF_EVENT_DATA_SIZE, PT_REGS_FIELDS, PT_REGS_SIZE};
/// The platform's program types (`kprobe`, `tracepoint`, ...).
pub use ktrace_bpf_platform::ProgramType as Kind;
pub use ktrace_bpf_platform::{helper, map_type};

/// The prototypes of every helper ktrace implements.
pub fn helpers() -> HelperTable {
    HelperTable::new(
        helper::HELPERS
            .iter()
            .map(|h| HelperProto::new(h.id, h.name, h.args, h.ret).with_map_types(h.map_types))
            .collect(),
    )
}

/// The verifier's description of a context.
pub fn context(ctx: &Context) -> ContextDescriptor {
    ContextDescriptor {
        name: ctx.to_string(),
        size: ctx.size(),
        fields: ctx
            .fields()
            .map(|(offset, size)| CtxField { offset, size })
            .collect(),
        writable: ctx.writable(),
    }
}

/// The verifier's program type for a program of kind `kind` attached at
/// `attach`: its context and the helpers it may call. Refused when the
/// request cannot have a context (an unknown tracepoint, a tracepoint
/// program with another target).
pub fn program_type(kind: Kind, attach: Attach<'_>) -> Result<ProgramType, ContextError<'_>> {
    program::context(kind, attach).map(|ctx| with_context(kind, &ctx))
}

fn with_context(kind: Kind, ctx: &Context) -> ProgramType {
    ProgramType {
        name: kind.name().into(),
        ctx: context(ctx),
        allowed_helpers: kind.allowed_helpers().to_vec(),
    }
}

/// `struct pt_regs`: 21 read-only u64 fields.
pub fn pt_regs_ctx() -> ContextDescriptor {
    context(&Context::PtRegs)
}

/// Kprobes and kretprobes: context `struct pt_regs`, plus `bpf_get_func_ip`.
pub fn kprobe() -> ProgramType {
    with_context(Kind::Kprobe, &Context::PtRegs)
}

/// Perf events: context `struct bpf_perf_event_data` (pt_regs, then u64
/// sample_period, then u64 addr).
pub fn perf_event() -> ProgramType {
    with_context(Kind::PerfEvent, &Context::PerfEventData)
}

/// A tracepoint-like program type over any record layout (total size and
/// fields as (offset, size)), for tests and embedders with records of their
/// own; ktrace's tracepoints come from [`program_type`].
pub fn tracepoint(event: &str, record_size: u32, fields: &[(u32, u32)]) -> ProgramType {
    let mut name = String::from("tracepoint record ");
    name.push_str(event);
    ProgramType {
        name: Kind::Tracepoint.name().into(),
        ctx: ContextDescriptor {
            name,
            size: record_size,
            fields: fields
                .iter()
                .map(|&(offset, size)| CtxField { offset, size })
                .collect(),
            writable: false,
        },
        allowed_helpers: Kind::Tracepoint.allowed_helpers().to_vec(),
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

    #[test]
    fn a_tracepoint_context_is_its_record() {
        let attach = Attach::Tracepoint {
            category: "block",
            name: "block_rq_issue",
        };
        let t = program_type(Kind::Tracepoint, attach).unwrap();
        let Ok(Context::Tracepoint(d)) = program::context(Kind::Tracepoint, attach) else {
            panic!("not a record")
        };
        assert_eq!(t.ctx.size, d.size);
        assert_eq!(t.ctx.fields.len(), d.fields.len());
        assert_eq!(t.ctx.name, "tracepoint record block:block_rq_issue");
        assert_eq!(t.name, "tracepoint");
        assert_eq!(t.allowed_helpers.len(), 18);
        assert_eq!(
            kprobe(),
            program_type(Kind::Kretprobe, Attach::Kprobe).unwrap()
        );
        assert_eq!(
            perf_event(),
            program_type(Kind::PerfEvent, Attach::PerfEvent).unwrap()
        );
    }
}
