//! Kernel text has one owner: this module.
//!
//! Every change to kernel text goes through here: kprobes arm and disarm
//! their `int3`, static keys switch a tracepoint call site between its
//! `nop` and its `jmp`, and the kprobe engine fills its out-of-line slots.
//! (Later: optimised probes and cross-CPU patching, through the same
//! calls.) The module keeps a table of claims (`ktrace_kprobe::claims`):
//!
//! - each patched instruction is claimed whole by one owner, with the
//!   bytes the compiler put there; a claim that overlaps another is
//!   refused with the owner's name (a kprobe on a tracepoint's static-key
//!   site is refused, as Linux refuses kprobes on jump-label sites);
//! - [`read_original`] shows text as compiled, so the kprobe boundary
//!   check, the instruction decoder and the slot copy never see an `int3`
//!   or a `jmp` that another claim planted;
//! - an instruction with an exception fix-up ([`has_fixup`]) is never
//!   boosted: the kprobe engine single-steps it, and a fault in the copy is
//!   mapped back to the original address before the fix-up table is
//!   searched (`kprobe::on_slot_fault`).
//!
//! # Why the claims and the text cannot disagree
//! The claims lock ([`CLAIMS`], interrupts off while held) is held across
//! every write and every [`read_original`]: a reader sees either the text
//! before a patch with the claims before it, or both after. Text outside
//! any claim is never written. With one CPU and interrupts off, no
//! instruction runs while its bytes change (see `arch::text_patch`).

use ktrace_kprobe::claims::{ClaimError, Owner, TextClaims};
use ktrace_kprobe::x86_64::{Insn, INT3};
use ktrace_kprobe::{Refusal, TextAddr};

use crate::arch::text_patch::TextPoke;
use crate::arch::trap;
use crate::sync::SpinLock;

/// The claims on kernel text. Held (interrupts off) across each patch.
static CLAIMS: SpinLock<TextClaims> = SpinLock::new(TextClaims::new());

/// The one right to write kernel text, taken at the first patch.
static POKE: spin::Once<TextPoke> = spin::Once::new();

/// Writes through the one [`TextPoke`]. Callers hold [`CLAIMS`].
fn poke() -> &'static TextPoke {
    POKE.call_once(|| TextPoke::take().expect("kernel text has one owner: trace::text"))
}

/// Why a text change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// Another owner holds some of the bytes.
    Refused(Refusal),
    /// The claims table could not grow.
    OutOfMemory,
    /// The bytes at this address could not be read or written.
    Patch(u64),
    /// The change names a site nobody claimed (a bug in the caller).
    NotClaimed(u64),
}

impl From<ClaimError> for TextError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Refused(r) => TextError::Refused(r),
            ClaimError::OutOfMemory => TextError::OutOfMemory,
        }
    }
}

/// Reads kernel text at `addr` as the compiler left it: live bytes, with
/// the original bytes of every claimed instruction put back. `Err` when
/// the range is not mapped.
pub fn read_original(at: TextAddr, buf: &mut [u8]) -> Result<(), TextError> {
    let addr = at.get();
    let claims = CLAIMS.lock();
    trap::copy_from_kernel_nofault(buf, addr).map_err(|_| TextError::Patch(addr))?;
    claims.restore_original(at, buf);
    Ok(())
}

/// Whether `len` bytes at `addr` are free for a new claim.
pub fn check_free(at: TextAddr, len: u8) -> Result<(), Refusal> {
    CLAIMS.lock().check_free(at, len)
}

/// Whether the instruction at `addr` has an exception fix-up entry (a
/// fault there resumes at a handler instead of stopping the kernel).
pub fn has_fixup(at: TextAddr) -> bool {
    trap::has_fixup(at.get())
}

/// Claims `insn` for a kprobe and plants `int3` on its first byte.
pub fn arm_breakpoint(insn: &Insn) -> Result<(), TextError> {
    let mut claims = CLAIMS.lock();
    claims.claim(
        TextAddr(insn.addr),
        &insn.bytes[..usize::from(insn.len)],
        Owner::Kprobe,
    )?;
    if poke().write(TextAddr(insn.addr), &[INT3]).is_err() {
        claims.release(TextAddr(insn.addr));
        return Err(TextError::Patch(insn.addr));
    }
    Ok(())
}

/// Puts back the first byte of the kprobe site at `addr` and releases its
/// claim.
pub fn disarm_breakpoint(at: TextAddr) -> Result<(), TextError> {
    let addr = at.get();
    let mut claims = CLAIMS.lock();
    let first = match claims.get(at) {
        Some(c) if c.owner == Owner::Kprobe => c.original()[0],
        _ => return Err(TextError::NotClaimed(addr)),
    };
    poke()
        .write(at, &[first])
        .map_err(|_| TextError::Patch(addr))?;
    claims.release(at);
    Ok(())
}

/// Claims the static-key call site at `site` for tracepoint
/// `category:name`. Its bytes must be the 5-byte `nop` the macro emitted.
pub fn claim_static_key(
    at: TextAddr,
    nop: &[u8; 5],
    category: &'static str,
    name: &'static str,
) -> Result<(), TextError> {
    let site = at.get();
    let mut claims = CLAIMS.lock();
    let mut live = [0u8; 5];
    trap::copy_from_kernel_nofault(&mut live, site).map_err(|_| TextError::Patch(site))?;
    if &live != nop {
        return Err(TextError::Patch(site));
    }
    claims.claim(at, nop, Owner::StaticKey { category, name })?;
    Ok(())
}

/// Switches a claimed static-key site: `Some(target)` writes `jmp target`,
/// `None` the original `nop`.
pub fn set_static_key(at: TextAddr, target: Option<TextAddr>) -> Result<(), TextError> {
    let site = at.get();
    let claims = CLAIMS.lock();
    let original = match claims.get(at) {
        Some(c) if matches!(c.owner, Owner::StaticKey { .. }) && c.len == 5 => c.original(),
        _ => return Err(TextError::NotClaimed(site)),
    };
    let mut bytes = [0u8; 5];
    match target {
        Some(target) => {
            let rel = i32::try_from(target.get().wrapping_sub(site + 5) as i64)
                .map_err(|_| TextError::Patch(site))?;
            bytes[0] = 0xe9;
            bytes[1..].copy_from_slice(&rel.to_le_bytes());
        }
        None => bytes.copy_from_slice(original),
    }
    poke().write(at, &bytes).map_err(|_| TextError::Patch(site))
}

/// Fills an out-of-line slot (executable memory of the kprobe engine, not
/// kernel text: never claimed, never executed before this returns).
pub fn write_slot(slot: TextAddr, code: &[u8]) -> Result<(), TextError> {
    let _claims = CLAIMS.lock();
    poke()
        .write(slot, code)
        .map_err(|_| TextError::Patch(slot.get()))
}

/// Claims, for listings and tests: (start, length, owner).
#[allow(dead_code)] // diagnostics API, used by the self tests
pub fn claims() -> alloc::vec::Vec<(TextAddr, u8, Owner)> {
    CLAIMS
        .lock()
        .iter()
        .map(|c| (c.start, c.len, c.owner))
        .collect()
}
