//! Program types: what each receives in r1, which helpers it may call and
//! what it returns.
//!
//! | type | Linux number | context (r1) | helpers |
//! |---|---|---|---|
//! | `kprobe`, `kretprobe` | 2 | `struct pt_regs`, read-only | [`COMMON_HELPERS`] and `bpf_get_func_ip` |
//! | `tracepoint` | 5 | the event's record ([`ktrace_tracepoints`]), read-only, field by field | [`COMMON_HELPERS`] |
//! | `perf_event` | 7 | `struct bpf_perf_event_data`, read-only | [`COMMON_HELPERS`] |
//!
//! Every type returns a scalar in r0 (never a pointer, unless the verifier
//! runs privileged); the kernel counts the run and ignores the value, as
//! Linux does for kprobes.

use core::fmt;

use ktrace_tracepoints::{TracepointDesc, ALL as TRACEPOINTS};

use crate::helper::*;
use crate::regs::{PERF_EVENT_DATA_SIZE, PT_REGS_SIZE};

/// Kinds of program, by the section they came from. Sent as they are in
/// the control protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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

/// Helpers every program type may call.
pub const COMMON_HELPERS: &[i32] = &[
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
];

/// Kprobes also know the probed function ([`GET_FUNC_IP`]).
const KPROBE_HELPERS: &[i32] = &common_and(GET_FUNC_IP);

const fn common_and(extra: i32) -> [i32; COMMON_HELPERS.len() + 1] {
    let mut out = [extra; COMMON_HELPERS.len() + 1];
    let mut i = 0;
    while i < COMMON_HELPERS.len() {
        out[i] = COMMON_HELPERS[i];
        i += 1;
    }
    out
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

    /// The name used in messages (`kprobe` for both kprobe kinds, as the
    /// verifier treats them alike).
    pub fn name(self) -> &'static str {
        match self {
            ProgramType::Kprobe | ProgramType::Kretprobe => "kprobe",
            ProgramType::Tracepoint => "tracepoint",
            ProgramType::PerfEvent => "perf_event",
        }
    }

    /// Helper ids this type may call.
    pub fn allowed_helpers(self) -> &'static [i32] {
        match self {
            ProgramType::Kprobe | ProgramType::Kretprobe => KPROBE_HELPERS,
            ProgramType::Tracepoint | ProgramType::PerfEvent => COMMON_HELPERS,
        }
    }
}

/// Where a program attaches, as far as its context depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach<'a> {
    /// A kprobe or kretprobe target.
    Kprobe,
    /// A static tracepoint, `category:name`.
    Tracepoint {
        /// `block`, `sched`, ...
        category: &'a str,
        /// `block_rq_issue`, ...
        name: &'a str,
    },
    /// A perf event.
    PerfEvent,
}

impl Attach<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Attach::Kprobe => "kprobe",
            Attach::Tracepoint { .. } => "tracepoint",
            Attach::PerfEvent => "perf event",
        }
    }
}

/// The context a program receives in r1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// `struct pt_regs` ([`crate::PtRegs`]).
    PtRegs,
    /// `struct bpf_perf_event_data` ([`crate::PerfEventData`]).
    PerfEventData,
    /// A tracepoint's record.
    Tracepoint(&'static TracepointDesc),
}

impl Context {
    /// Size in bytes.
    pub fn size(&self) -> u32 {
        match self {
            Context::PtRegs => PT_REGS_SIZE,
            Context::PerfEventData => PERF_EVENT_DATA_SIZE,
            Context::Tracepoint(d) => d.size,
        }
    }

    /// The readable fields as (offset, size): a load must lie inside one.
    pub fn fields(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let words = match self {
            Context::Tracepoint(_) => 0,
            _ => self.size() / 8,
        };
        let records = match self {
            Context::Tracepoint(d) => d.fields,
            _ => &[],
        };
        (0..words)
            .map(|i| (i * 8, 8))
            .chain(records.iter().map(|f| (f.offset, f.size)))
    }

    /// Whether programs may store into it (none may today).
    pub fn writable(&self) -> bool {
        false
    }
}

/// Displays the context's name as messages give it: `struct pt_regs`,
/// `tracepoint record block:block_rq_issue`.
impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Context::PtRegs => f.write_str("struct pt_regs"),
            Context::PerfEventData => f.write_str("struct bpf_perf_event_data"),
            Context::Tracepoint(d) => write!(f, "tracepoint record {}", d.full_name()),
        }
    }
}

/// Why a program has no context: the load request is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextError<'a> {
    /// The kernel has no tracepoint of that name.
    UnknownTracepoint {
        /// As requested.
        category: &'a str,
        /// As requested.
        name: &'a str,
    },
    /// A tracepoint program with another kind of target.
    NotATracepoint {
        /// `kprobe` or `perf event`.
        attach: &'static str,
    },
}

impl fmt::Display for ContextError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextError::UnknownTracepoint { category, name } => {
                write!(f, "unknown tracepoint `{category}:{name}` (the kernel has: ")?;
                for (i, d) in TRACEPOINTS.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", d.full_name())?;
                }
                f.write_str(")")
            }
            ContextError::NotATracepoint { attach } => write!(
                f,
                "a tracepoint program needs a tracepoint target (section `tracepoint/<category>/<name>`), not a {attach} target"
            ),
        }
    }
}

/// The context a program of type `ty` attached at `attach` receives.
/// Kprobe and perf event programs ignore `attach` (their context does not
/// depend on where they attach).
pub fn context(ty: ProgramType, attach: Attach<'_>) -> Result<Context, ContextError<'_>> {
    match (ty, attach) {
        (ProgramType::Kprobe | ProgramType::Kretprobe, _) => Ok(Context::PtRegs),
        (ProgramType::PerfEvent, _) => Ok(Context::PerfEventData),
        (ProgramType::Tracepoint, Attach::Tracepoint { category, name }) => TRACEPOINTS
            .iter()
            .find(|d| d.category == category && d.name == name)
            .map(Context::Tracepoint)
            .ok_or(ContextError::UnknownTracepoint { category, name }),
        (ProgramType::Tracepoint, other) => Err(ContextError::NotATracepoint {
            attach: other.kind(),
        }),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    #[test]
    fn every_allowed_helper_has_a_prototype() {
        for ty in [
            ProgramType::Kprobe,
            ProgramType::Kretprobe,
            ProgramType::Tracepoint,
            ProgramType::PerfEvent,
        ] {
            for &id in ty.allowed_helpers() {
                assert!(
                    find(id).is_some(),
                    "{} may call unknown helper {id}",
                    ty.name()
                );
            }
        }
        // Kprobes may call every helper the kernel has; the other types
        // all but `bpf_get_func_ip`.
        assert_eq!(KPROBE_HELPERS.last(), Some(&GET_FUNC_IP));
        assert_eq!(HELPERS.len(), KPROBE_HELPERS.len());
        assert!(!COMMON_HELPERS.contains(&GET_FUNC_IP));
    }

    #[test]
    fn contexts_and_their_refusals() {
        let c = context(ProgramType::Kretprobe, Attach::Kprobe).unwrap();
        assert_eq!((c.size(), c.fields().count()), (168, 21));
        assert_eq!(c.to_string(), "struct pt_regs");
        let p = context(ProgramType::PerfEvent, Attach::PerfEvent).unwrap();
        assert_eq!((p.size(), p.fields().count()), (184, 23));
        let tp = Attach::Tracepoint {
            category: "block",
            name: "block_rq_issue",
        };
        let t = context(ProgramType::Tracepoint, tp).unwrap();
        assert_eq!(t.to_string(), "tracepoint record block:block_rq_issue");
        let Context::Tracepoint(d) = t else { panic!() };
        let fields: Vec<(u32, u32)> = t.fields().collect();
        assert_eq!(fields.len(), d.fields.len());
        let nothing = Attach::Tracepoint {
            category: "block",
            name: "nothing",
        };
        let e = context(ProgramType::Tracepoint, nothing)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "unknown tracepoint `block:nothing` (the kernel has: block:block_bio_queue, "
            ),
            "{e}"
        );
        assert!(e.ends_with("irq:irq_handler_exit, ktrace:bench)"), "{e}");
        assert_eq!(
            context(ProgramType::Tracepoint, Attach::Kprobe)
                .unwrap_err()
                .to_string(),
            "a tracepoint program needs a tracepoint target (section `tracepoint/<category>/<name>`), not a kprobe target"
        );
    }
}
