//! The BPF verifier: proves, before a program runs, that every path through
//! it terminates, touches only memory it may touch, and leaks no kernel
//! pointer.
//!
//! It follows the design of the Linux verifier, with PREVAIL's habit of
//! keeping the platform out of the core:
//!
//! 1. [`cfg`](mod@cfg): a control-flow pass (jump targets, `ld_imm64` halves,
//!    falling off the end, unreachable code, bpf-to-bpf call depth and
//!    recursion, register liveness).
//! 2. `check`: a path-sensitive abstract interpretation over
//!    [`state::State`]: register types (scalar, ctx, stack, map, map value,
//!    helper memory, maybe-NULL variants), scalars as a [`tnum::Tnum`] plus
//!    signed/unsigned 64- and 32-bit bounds ([`scalar::Scalar`]) refined on
//!    both arms of every conditional jump, per-byte stack state with
//!    spilled registers, NULL checks, reference tracking for ring buffer
//!    records, and state pruning so bounded loops verify while unbounded ones
//!    hit the complexity limit. One module per concern (`check/alu.rs`,
//!    `mem.rs`, `stack.rs`, `atomic.rs`, `jump.rs`, `call.rs`, `helper.rs`,
//!    `walk.rs`), each saying what it checks.
//! 3. [`platform`]: what the embedder supplies (program types and their
//!    context, helper prototypes, maps); [`linux`] builds it from ktrace's
//!    Linux-compatible description, `ktrace-bpf-platform`, and is the one
//!    program set-up the kernel and `ktrace check` share.
//!
//! Entry points: [`verify`] for a decoded program, [`verify_bytes`] for raw
//! instruction bytes. A rejection is a [`Rejection`] holding a
//! [`VerifyError`] (instruction, disassembly, message, register state,
//! [`Rule`]) plus the statistics and log gathered until then. The verifier
//! never panics and always terminates, whatever the input.
//!
//! ```
//! use bpf_vm::asm::assemble;
//! use bpf_vm::verifier::{linux, verify, Config, Env, MapDef, Rule};
//!
//! let prog = assemble(
//!     "stw [%r10-4], 0
//!      lddw %r1, map_fd(0)
//!      mov %r2, %r10
//!      add %r2, -4
//!      call 1                  # bpf_map_lookup_elem
//!      ldxdw %r0, [%r0]        # no NULL check
//!      exit",
//! )?;
//! let helpers = linux::helpers();
//! let kprobe = linux::kprobe();
//! let maps = [MapDef { fd: 0, map_type: linux::map_type::HASH, key_size: 4, value_size: 8, max_entries: 64 }];
//! let env = Env { prog_type: &kprobe, helpers: &helpers, maps: &maps };
//! let err = verify(prog.insns(), &env, &Config::default()).unwrap_err();
//! assert_eq!(err.error.insn_index, 6);
//! assert_eq!(err.error.rule, Rule::NullCheck);
//! assert_eq!(
//!     err.error.message,
//!     "R0 invalid mem access 'map_value_or_null': check the value returned by \
//!      bpf_map_lookup_elem against NULL before dereferencing it"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What is checked, in order of the walk:
//! - registers are written before they are read; r0 holds a scalar at exit;
//! - every load, store, atomic and helper buffer lies inside its region
//!   (stack 512 bytes per frame, map value size, context fields, helper
//!   memory size), for every value a variable offset may take; atomics are
//!   naturally aligned;
//! - stack bytes are written before they are read (unless
//!   [`Config::allow_uninit_stack`]); spilled registers keep their type and
//!   bounds; a spilled pointer is never partially overwritten or read;
//! - maybe-NULL pointers are compared with 0 before use (a check on one copy
//!   refines every copy);
//! - pointers do not escape into maps, ring buffer records, helper
//!   arguments, through stack bytes a helper reads, or through r0 (unless
//!   [`Config::allow_ptr_leaks`]); only add/sub of bounded scalars is
//!   allowed on pointers, and pointers of different types are not compared;
//! - helpers exist, are allowed for the program type, and get arguments of
//!   the kinds their prototypes list; ring buffer records are submitted or
//!   discarded on every path;
//! - loops end: each path is bounded by [`Config::max_insns`] processed
//!   instructions, a state equal to one of its own ancestors is an infinite
//!   loop, and at most 8,192 branches may wait to be explored;
//! - memory is bounded: stored states and pending branches may hold at
//!   most [`Config::max_state_bytes`], and everything else stays within
//!   [`fixed_memory_bytes`], so an embedder with a fixed heap can reserve
//!   both before it verifies.
//!
//! Pruning compares a new state with fully explored ones at the same
//! instruction (register liveness and range/tnum inclusion; scalar values
//! only when some explored path depended on them).

#![forbid(unsafe_code)]

pub mod cfg;
mod check;
pub mod error;
pub mod linux;
pub mod platform;
pub mod scalar;
pub mod state;
pub mod tnum;

pub use error::{Config, LineInfo, Rejection, Report, Rule, Stats, VerifyError};
pub use platform::{
    ArgKind, ContextDescriptor, CtxField, Env, HelperProto, HelperTable, MapDef, ProgramType,
    RetKind,
};

use crate::insn::{DecodeErrorKind, Insn};
use alloc::boxed::Box;
use alloc::string::String;

/// Verifies a decoded program (slots as produced by [`crate::decode`] or the
/// assembler) for the program type, helpers and maps in `env`.
pub fn verify(prog: &[Insn], env: &Env<'_>, config: &Config<'_>) -> Result<Report, Box<Rejection>> {
    let start = config.clock.map(|c| c());
    let elapsed = |stats: &mut Stats| {
        if let (Some(c), Some(s)) = (config.clock, start) {
            stats.time_ns = Some(c().saturating_sub(s));
        }
    };
    let graph =
        match cfg::analyze(prog, env.helpers).and_then(|g| map_references(prog, env).map(|()| g)) {
            Ok(g) => g,
            Err((pc, rule, message)) => {
                let mut stats = Stats::default();
                elapsed(&mut stats);
                let insn_text = prog
                    .get(pc)
                    .map(|i| crate::disasm::insn(i, crate::disasm::Syntax::Llvm))
                    .unwrap_or_default();
                return Err(Box::new(Rejection {
                    error: VerifyError {
                        insn_index: pc,
                        insn_text,
                        message,
                        location: config.location(pc).map(String::from),
                        regs: String::new(),
                        rule,
                    },
                    stats,
                    log: String::new(),
                }));
            }
        };
    let mut checker = check::Checker::new(prog, *env, config, graph);
    let result = checker.run();
    let mut stats = core::mem::take(&mut checker.stats);
    elapsed(&mut stats);
    let mut log = core::mem::take(&mut checker.log.buf);
    let call_maps = checker
        .call_map
        .iter()
        .enumerate()
        .filter(|&(_, &m)| m < check::CALL_MAP_MANY)
        .map(|(pc, &m)| (pc, m as usize))
        .collect();
    match result {
        Ok(()) => {
            if config.log_level > 0 {
                let _ = core::fmt::Write::write_fmt(
                    &mut log,
                    format_args!(
                        "processed {} insns, stored {} states (peak {}), pruned {}\n",
                        stats.insns_processed,
                        stats.states_stored,
                        stats.peak_states,
                        stats.states_pruned
                    ),
                );
            }
            Ok(Report {
                stats,
                log,
                call_maps,
            })
        }
        Err(error) => {
            if config.log_level > 0 {
                let _ = core::fmt::Write::write_fmt(&mut log, format_args!("{error}\n"));
            }
            Err(Box::new(Rejection { error, stats, log }))
        }
    }
}

/// An upper bound on the heap [`verify`] takes for a program of `insns`
/// slots apart from its states (which [`Config::max_state_bytes`] bounds):
/// the control-flow tables, per-instruction state lists and the log. A
/// kernel checks that this plus the state budget is free before verifying,
/// so no allocation of the verifier can fail. (`tests/verifier_memory.rs`
/// measures the real peak against it.)
pub fn fixed_memory_bytes(insns: usize, config: &Config<'_>) -> usize {
    // Per slot: the state lists (24), control-flow and liveness tables
    // (about 40), worklists and the call graph in the worst case (about 40),
    // the map of each helper call (4) and the report's list of them (16).
    const PER_INSN: usize = 148;
    // A String doubles as it grows, so the log may reserve twice its limit.
    let log = if config.log_level > 0 {
        config.log_limit.saturating_mul(2)
    } else {
        0
    };
    insns
        .saturating_mul(PER_INSN)
        .saturating_add(log)
        .saturating_add(64 << 10)
}

/// Every map an `ld_imm64` names exists, reachable or not (Linux resolves
/// them all before verifying; a loader would fail on a dead one anyway).
fn map_references(prog: &[Insn], env: &Env<'_>) -> Result<(), cfg::CfgError> {
    use crate::insn::LdImm64Src;
    for (pc, insn) in prog.iter().enumerate() {
        let Insn::LdImm64 { src, .. } = insn else {
            continue;
        };
        let (found, what, n) = match *src {
            LdImm64Src::Imm(_) => continue,
            LdImm64Src::MapFd(fd) | LdImm64Src::MapValueFd { fd, .. } => {
                (env.map_by_fd(fd), "fd", fd)
            }
            LdImm64Src::MapIdx(i) | LdImm64Src::MapValueIdx { idx: i, .. } => {
                (env.map_by_idx(i), "index", i)
            }
        };
        if found.is_none() {
            return Err((
                pc,
                Rule::BadInput,
                alloc::format!("map {what} {n} does not refer to a map of this program"),
            ));
        }
    }
    Ok(())
}

/// The instruction at slot `index` for a decoding failure's message: its
/// disassembly when it decodes on its own (a write to r10 does), else its
/// raw bytes.
fn slot_text(bytes: &[u8], index: usize) -> String {
    if let Some(insn) = crate::insn::decode_for_message(bytes, index) {
        return crate::disasm::insn(&insn, crate::disasm::Syntax::Llvm);
    }
    let start = index.saturating_mul(8).min(bytes.len());
    let raw = &bytes[start..bytes.len().min(start.saturating_add(8))];
    if raw.is_empty() {
        return String::new();
    }
    let mut text = String::from("raw bytes");
    for b in raw {
        let _ = core::fmt::Write::write_fmt(&mut text, format_args!(" {b:02x}"));
    }
    text
}

/// Decodes raw instruction bytes and verifies them; a decoding failure is a
/// rejection naming the instruction ([`Rule::FramePointer`] for a write to
/// r10, else [`Rule::BadInput`]).
pub fn verify_bytes(
    bytes: &[u8],
    env: &Env<'_>,
    config: &Config<'_>,
) -> Result<Report, Box<Rejection>> {
    match crate::insn::decode(bytes) {
        Ok(p) => verify(p.insns(), env, config),
        Err(e) => Err(Box::new(Rejection {
            error: VerifyError {
                insn_index: e.index,
                insn_text: slot_text(bytes, e.index),
                message: match e.kind {
                    DecodeErrorKind::WritesFramePointer => cfg::FRAME_POINTER_WRITE.into(),
                    kind => alloc::format!("{kind}"),
                },
                location: config.location(e.index).map(String::from),
                regs: String::new(),
                rule: match e.kind {
                    DecodeErrorKind::WritesFramePointer => Rule::FramePointer,
                    _ => Rule::BadInput,
                },
            },
            stats: Stats::default(),
            log: String::new(),
        })),
    }
}
