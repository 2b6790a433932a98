//! Rejections, statistics, configuration and the verifier log.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The family of rule a rejected program broke (for tools that group or
/// filter rejections; the message says what exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Jumps, calls, unreachable code, falling off the end.
    ControlFlow,
    /// Call chain too deep or recursive.
    CallDepth,
    /// Too many instructions processed or states stored, or an infinite loop.
    Complexity,
    /// Reading a register that was never written.
    UninitRegister,
    /// Reading stack bytes that were never written.
    UninitStack,
    /// Memory access outside its region or through a non-pointer.
    MemoryAccess,
    /// Dereference (or arithmetic) of a pointer that may be NULL.
    NullCheck,
    /// A pointer value escaping to where the program or user could read it.
    PointerLeak,
    /// Arithmetic or comparison not allowed on pointers.
    PointerArithmetic,
    /// Access to the context outside its descriptor.
    Context,
    /// A helper unknown or not allowed for the program type.
    HelperNotAllowed,
    /// A helper argument of the wrong kind or size.
    HelperArgument,
    /// Reference (ring buffer record) not released, released twice, or misused.
    Reference,
    /// A write to r10, the read-only frame pointer.
    FramePointer,
    /// Malformed input (a map that does not exist, a bad ld_imm64).
    BadInput,
    /// A verifier invariant failed (a bug in the verifier; the program is rejected).
    Internal,
}

/// Why a program was rejected, at which instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// Slot index of the instruction.
    pub insn_index: usize,
    /// Its disassembly.
    pub insn_text: String,
    /// What is wrong, in words a probe author can act on.
    pub message: String,
    /// `file:line` of the instruction when the caller supplied line info.
    pub location: Option<String>,
    /// Register (and stack) state at the instruction, Linux-style.
    pub regs: String,
    /// The rule broken.
    pub rule: Rule,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "insn {}", self.insn_index)?;
        if let Some(loc) = &self.location {
            write!(f, " ({loc})")?;
        }
        write!(f, ": {}: {}", self.insn_text, self.message)?;
        if !self.regs.is_empty() {
            write!(f, "\n  state: {}", self.regs)?;
        }
        Ok(())
    }
}

impl core::error::Error for VerifyError {}

/// Counters of one verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Instructions symbolically executed (all paths).
    pub insns_processed: u64,
    /// States stored at prune points.
    pub states_stored: u64,
    /// Largest number of stored states plus pending branches at any time.
    pub peak_states: u64,
    /// Most heap bytes held by stored and pending states at any time.
    pub peak_state_bytes: u64,
    /// Paths cut short because an explored state included them.
    pub states_pruned: u64,
    /// Deepest stack use of each subprogram, in bytes.
    pub stack_depth: Vec<u32>,
    /// Divisions or modulos by a register that may be zero (allowed: the
    /// result is defined, but often a bug).
    pub possibly_zero_divisions: u64,
    /// Wall time in nanoseconds, when a clock was given.
    pub time_ns: Option<u64>,
}

/// A source location for a range of instructions (like BTF line info: it
/// applies from `insn` up to the next entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineInfo {
    /// First instruction slot.
    pub insn: usize,
    /// `file:line` (or anything the caller wants shown).
    pub location: String,
}

/// Verification policy and limits.
#[derive(Clone, Debug)]
pub struct Config<'a> {
    /// Stop with "program too complex" after this many instructions (Linux: 1,000,000).
    pub max_insns: u64,
    /// Stop with "program too complex" after storing this many states.
    pub max_states: u64,
    /// Stop with "program too complex" when the states stored at prune
    /// points and the branches waiting to be explored would take more than
    /// this many bytes of heap. An embedder with a bounded heap (a kernel)
    /// sets it from the memory it can spare, so verifying a hostile program
    /// ends in a refusal rather than an allocation failure.
    pub max_state_bytes: usize,
    /// Stored states kept per instruction (older ones still prune; newer are not stored).
    pub max_states_per_insn: usize,
    /// Allow pointers to escape into maps, helpers and r0 (Linux privileged mode).
    pub allow_ptr_leaks: bool,
    /// Allow reading uninitialised stack (Linux privileged mode).
    pub allow_uninit_stack: bool,
    /// 0: no log; 1: the path walked and branch states; 2: state after every instruction.
    pub log_level: u8,
    /// Log bytes kept (the rest is dropped, with a note).
    pub log_limit: usize,
    /// Source locations, sorted by `insn`.
    pub line_info: &'a [LineInfo],
    /// Monotonic clock in nanoseconds (no_std has none of its own).
    pub clock: Option<fn() -> u64>,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            max_insns: 1_000_000,
            max_states: 64 * 1024,
            max_states_per_insn: 64,
            max_state_bytes: 512 << 20,
            allow_ptr_leaks: false,
            allow_uninit_stack: false,
            log_level: 0,
            log_limit: 1 << 20,
            line_info: &[],
            clock: None,
        }
    }
}

impl Config<'_> {
    /// The location of instruction `pc`, if line info covers it.
    pub fn location(&self, pc: usize) -> Option<&str> {
        let i = self.line_info.partition_point(|l| l.insn <= pc);
        i.checked_sub(1)
            .map(|i| self.line_info[i].location.as_str())
    }
}

/// Result of a successful verification.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Counters.
    pub stats: Stats,
    /// The verifier log (empty at log level 0).
    pub log: String,
    /// Helper calls whose map argument (`r1` for the map helpers) is the
    /// same map on every path the verifier walked: (slot, index of the map
    /// in [`crate::verifier::Env::maps`]). A JIT may specialise such a
    /// call for that map (see `bpf_vm::jit::InlineLookup`), as Linux does
    /// with the map pointer it keeps per call instruction.
    pub call_maps: Vec<(usize, usize)>,
}

/// Result of a failed verification: the error, plus what was gathered.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// Why.
    pub error: VerifyError,
    /// Counters up to the failure.
    pub stats: Stats,
    /// The verifier log up to the failure.
    pub log: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl core::error::Error for Rejection {}

/// A size-capped text log.
pub(crate) struct Log {
    pub level: u8,
    pub buf: String,
    limit: usize,
    full: bool,
}

impl Log {
    pub fn new(level: u8, limit: usize) -> Log {
        Log {
            level,
            buf: String::new(),
            limit,
            full: false,
        }
    }

    /// Appends one line when the log is on at `level` or more.
    pub fn line(&mut self, level: u8, args: fmt::Arguments<'_>) {
        if self.level < level || self.full {
            return;
        }
        let start = self.buf.len();
        let _ = fmt::Write::write_fmt(&mut self.buf, args);
        self.buf.push('\n');
        if self.buf.len() > self.limit {
            self.buf.truncate(start);
            self.buf.push_str("... log truncated\n");
            self.full = true;
        }
    }

    pub fn on(&self, level: u8) -> bool {
        self.level >= level && !self.full
    }
}
