//! A kprobe engine core that another Rust kernel can reuse.
//!
//! The crate holds everything about kprobes that does not need the running
//! kernel, so it is tested on the host with plain `cargo test`:
//!
//! - [`x86_64`]: instruction analysis with `iced-x86`. [`x86_64::analyze`]
//!   decides how a probed instruction is executed after the `int3`: copied to
//!   an out-of-line slot and single-stepped (with RIP-relative displacements
//!   rewritten for the slot, see [`x86_64::build_slot`]), *boosted* (the slot
//!   jumps back to the next original instruction, no second trap), or
//!   *emulated* (relative `call`/`jmp`/`jcc`/`loop`/`jrcxz`, see
//!   [`x86_64::emulate`]). Instructions that cannot be executed out of line
//!   safely (`ret`, `iret`, `pushf`, `popf`, `cli`, `sti`, `int3`, `hlt`,
//!   `syscall`, far transfers, ...) are refused with a [`Refusal`] naming the
//!   reason. [`x86_64::check_boundary`] checks that an address is an
//!   instruction boundary by decoding from the function's start.
//! - [`blacklist`]: ranges and symbol-name rules for code that must never
//!   trap (interrupt entry, the engine itself, text patching, the panic
//!   console), listable with their reasons.
//! - [`pool`]: the lock-free, fixed-size instance pool of return probes
//!   (`maxactive`), usable from a trap handler (no allocation, no lock).
//! - [`poke`]: the order of writes (and CPU syncs) that changes an
//!   instruction other CPUs may be running (`int3` first).
//! - [`claims`]: who owns each patched instruction of kernel text, with
//!   the bytes the compiler put there; overlapping claims are refused.
//! - [`opt`]: jump-optimised probes: which points may take a `jmp` to a
//!   detour instead of an `int3` (and why not), and the detour's code.
//! - [`Refusal`]: why a probe point was refused.
//! - [`TextAddr`]: a kernel text address, as the kprobe API takes it.
//!
//! The kernel side (patching text, the trap handlers, the registry) lives in
//! the kernel and uses these pieces.
#![no_std]

extern crate alloc;

pub mod blacklist;
pub mod claims;
pub mod opt;
pub mod poke;
pub mod pool;
pub mod x86_64;

use core::fmt;

/// An address in kernel text, or in the executable slots the engine runs
/// probed instructions from: what probes, claims and text patches are
/// about. A newtype, so a stack or data address cannot be handed to the
/// kprobe API by mistake; the kernel makes one from a symbol (`resolve`)
/// or a host-given address it then checks (`check_address`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct TextAddr(pub u64);

impl TextAddr {
    /// The address as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The address `n` bytes further.
    #[must_use]
    pub const fn add(self, n: u64) -> TextAddr {
        TextAddr(self.0.wrapping_add(n))
    }
}

impl fmt::Display for TextAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for TextAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Why an address cannot carry a probe. Every variant names the reason in
/// its `Display` output, which the kernel sends back to the host verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // `addr` is always the refused address
pub enum Refusal {
    /// The address is outside kernel text.
    NotText { addr: u64 },
    /// No symbol covers the address (the image has no symbol table, or the
    /// address is padding between functions).
    NoSymbol { addr: u64 },
    /// The address falls inside an instruction.
    MidInstruction {
        addr: u64,
        /// Start of the instruction that covers it.
        insn_start: u64,
        /// Its length.
        insn_len: u8,
    },
    /// The address is past the end of the function's bytes.
    PastFunctionEnd { addr: u64, func_end: u64 },
    /// The bytes do not decode as an instruction.
    Undecodable { addr: u64 },
    /// The address is blacklisted: code that must never trap.
    Blacklisted { addr: u64, reason: &'static str },
    /// The instruction at the address cannot be probed.
    Instruction {
        addr: u64,
        /// Mnemonic, e.g. `popfq`.
        mnemonic: &'static str,
        /// Why it cannot be single-stepped out of line.
        why: &'static str,
    },
    /// A rewritten RIP-relative displacement or jump does not fit in 32 bits
    /// from the slot's address.
    OutOfReach { addr: u64, slot: u64 },
    /// Another mechanism already patches bytes the probe would need.
    Claimed {
        addr: u64,
        /// Start of the claimed instruction.
        start: u64,
        /// Its length.
        len: u8,
        /// Who patches it.
        owner: claims::Owner,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotText { addr } => write!(f, "{addr:#x} is not in kernel text"),
            Refusal::NoSymbol { addr } => write!(f, "no function symbol covers {addr:#x}"),
            Refusal::MidInstruction { addr, insn_start, insn_len } => write!(
                f,
                "{addr:#x} is not on an instruction boundary: it is inside the {insn_len}-byte instruction at {insn_start:#x}"
            ),
            Refusal::PastFunctionEnd { addr, func_end } => {
                write!(f, "{addr:#x} is past the end of its function ({func_end:#x})")
            }
            Refusal::Undecodable { addr } => write!(f, "the bytes at {addr:#x} do not decode as an instruction"),
            Refusal::Blacklisted { addr, reason } => write!(f, "{addr:#x} is blacklisted: {reason}"),
            Refusal::Instruction { addr, mnemonic, why } => {
                write!(f, "the instruction at {addr:#x} ({mnemonic}) cannot be probed: {why}")
            }
            Refusal::OutOfReach { addr, slot } => {
                write!(f, "the instruction at {addr:#x} cannot be relocated to the slot at {slot:#x}: out of rel32 reach")
            }
            Refusal::Claimed { addr, start, len, owner: claims::Owner::StaticKey { category, name } } => write!(
                f,
                "{addr:#x} is inside the static-key site of tracepoint {category}:{name} ({len} bytes at {start:#x}), which attaching a program rewrites: attach to the tracepoint instead"
            ),
            Refusal::Claimed { addr, start, len, owner: claims::Owner::Kprobe } => write!(
                f,
                "{addr:#x} overlaps the {len}-byte instruction at {start:#x}, which a kprobe already patches"
            ),
            Refusal::Claimed { addr, start, len, owner: claims::Owner::OptimisedRange } => write!(
                f,
                "{addr:#x} is inside the {len} bytes at {start:#x} that the jump of an optimised kprobe replaces"
            ),
        }
    }
}
