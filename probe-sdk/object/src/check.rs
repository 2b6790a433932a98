//! `ktrace check`: run the kernel's verifier on the host.
//!
//! The kernel verifies every program with `bpf_vm::verifier` and the
//! Linux-compatible platform description in `bpf_vm::verifier::linux`; this
//! module feeds the same verifier the same inputs — the program's
//! instructions after loading, its program type (for tracepoints, the
//! record layout from `ktrace-tracepoints`), the helper table and the maps —
//! so the verdict and message are the ones the kernel would give. What the
//! host adds is the source: each rejection carries the Rust (or C) line of
//! the failing instruction from the object's DWARF line table.

use bpf_vm::verifier::{self, linux, Config, Env, MapDef, ProgramType as VmProgramType};
use ktrace_abi::bpf::{LineTable, MapDefinition, ProgramLoad};

use crate::object::Object;

/// Verification policy, as the kernel would apply it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Linux's privileged mode: allow pointer leaks and uninitialised stack
    /// reads. ktrace's kernel runs unprivileged by default.
    pub privileged: bool,
    /// Verifier log level (0 none, 1 branches, 2 every instruction).
    pub log_level: u8,
}

/// The verdict on one program.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The program's symbol.
    pub program: String,
    /// Its section.
    pub section: String,
    /// Instruction slots after loading (subprograms appended).
    pub insns: usize,
    /// Accepted (with statistics), or rejected.
    pub outcome: Outcome,
    /// The verifier log, when asked for.
    pub log: String,
    /// The verifier's statistics, as the kernel reports them for the same
    /// load (all zero when the program could not be set up).
    pub stats: verifier::Stats,
}

/// Accepted or rejected.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The verifier accepted the program.
    Accepted {
        /// Instructions processed over all paths.
        insns_processed: u64,
        /// Peak number of stored states.
        peak_states: u64,
    },
    /// The verifier (or the program's setup) refused it.
    Rejected(Rejection),
}

/// Why a program was refused, with its source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Instruction slot of the failure (`None` when the program could not
    /// be set up at all, e.g. an unknown tracepoint).
    pub insn: Option<usize>,
    /// The instruction's disassembly.
    pub insn_text: String,
    /// The verifier's message.
    pub message: String,
    /// `file:line` of the instruction, from DWARF.
    pub location: Option<String>,
    /// Register and stack state at the instruction.
    pub state: String,
    /// The rule broken (`NullCheck`, `MemoryAccess`, ...).
    pub rule: String,
    /// The verifier's own one-line rendering — word for word the message
    /// the kernel returns when it refuses the load.
    pub verifier_message: String,
}

impl Verdict {
    /// Whether the program passed.
    pub fn accepted(&self) -> bool {
        matches!(self.outcome, Outcome::Accepted { .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Outcome::Accepted {
                insns_processed,
                peak_states,
            } => write!(
                f,
                "{} ({}): accepted ({} insns, {} processed, peak {} states)",
                self.program, self.section, self.insns, insns_processed, peak_states
            ),
            Outcome::Rejected(r) => {
                writeln!(f, "{} ({}): REJECTED", self.program, self.section)?;
                if let Some(loc) = &r.location {
                    writeln!(f, "  at {loc}")?;
                }
                if let Some(i) = r.insn {
                    writeln!(f, "  insn {i}: {}", r.insn_text)?;
                }
                write!(f, "  {}", r.message)?;
                if !r.state.is_empty() {
                    write!(f, "\n  state: {}", r.state)?;
                }
                Ok(())
            }
        }
    }
}

/// The verifier's program type for a loaded program: the kernel's own
/// set-up ([`linux::program_type`]), so an unknown tracepoint is refused
/// with the kernel's words.
pub fn program_type(p: &ProgramLoad) -> Result<VmProgramType, String> {
    linux::program_type(p.prog_type, p.attach.platform()).map_err(|e| e.to_string())
}

/// Map descriptions as the verifier sees them (position = map index).
fn vm_maps(maps: &[MapDefinition]) -> Vec<MapDef> {
    maps.iter()
        .enumerate()
        .map(|(i, m)| MapDef {
            fd: i as i32,
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
        })
        .collect()
}

/// Line rows as the verifier's locations, exactly as the kernel builds
/// them ([`ktrace_abi::bpf::line_locations`]).
fn vm_lines(lines: Option<&LineTable>) -> Vec<verifier::LineInfo> {
    let Some(t) = lines else { return Vec::new() };
    ktrace_abi::bpf::line_locations(t)
        .into_iter()
        .map(|(insn, location)| verifier::LineInfo { insn, location })
        .collect()
}

/// Verify one program against the object's maps.
pub fn check_program(p: &ProgramLoad, maps: &[MapDefinition], opts: CheckOptions) -> Verdict {
    let verdict = |outcome, log, stats| Verdict {
        program: p.name.clone(),
        section: p.section.clone(),
        insns: p.insns.len() / 8,
        outcome,
        log,
        stats,
    };
    let prog_type = match program_type(p) {
        Ok(t) => t,
        Err(message) => {
            return verdict(
                Outcome::Rejected(Rejection {
                    insn: None,
                    insn_text: String::new(),
                    verifier_message: message.clone(),
                    message,
                    location: None,
                    state: String::new(),
                    rule: "BadInput".into(),
                }),
                String::new(),
                verifier::Stats::default(),
            )
        }
    };
    let helpers = linux::helpers();
    let maps = vm_maps(maps);
    let lines = vm_lines(p.lines.as_ref());
    let env = Env {
        prog_type: &prog_type,
        helpers: &helpers,
        maps: &maps,
    };
    let config = Config {
        allow_ptr_leaks: opts.privileged,
        allow_uninit_stack: opts.privileged,
        log_level: opts.log_level,
        line_info: &lines,
        // The kernel's bound: a program it refuses for memory is refused here.
        max_state_bytes: ktrace_abi::bpf::MAX_VERIFIER_STATE_BYTES,
        ..Config::default()
    };
    match verifier::verify_bytes(&p.insns, &env, &config) {
        Ok(report) => verdict(
            Outcome::Accepted {
                insns_processed: report.stats.insns_processed,
                peak_states: report.stats.peak_states,
            },
            report.log,
            report.stats,
        ),
        Err(rej) => {
            let e = &rej.error;
            verdict(
                Outcome::Rejected(Rejection {
                    insn: Some(e.insn_index),
                    insn_text: e.insn_text.clone(),
                    message: e.message.clone(),
                    location: e.location.clone(),
                    state: e.regs.clone(),
                    rule: format!("{:?}", e.rule),
                    verifier_message: rej.to_string(),
                }),
                rej.log.clone(),
                rej.stats.clone(),
            )
        }
    }
}

/// Verify every program of an object.
pub fn check_object(obj: &Object, opts: CheckOptions) -> Vec<Verdict> {
    obj.programs
        .iter()
        .map(|p| check_program(p, &obj.maps, opts))
        .collect()
}
