//! Kernel text has one owner: this module.
//!
//! Every change to kernel text goes through here: kprobes arm and disarm
//! their `int3`, static keys switch a tracepoint call site between its
//! `nop` and its `jmp`, and the kprobe engine fills its out-of-line slots.
//! Jump-optimised kprobes replace their `int3` and the bytes after it by
//! a `jmp rel32` ([`install_jump`], [`remove_jump`]). The module keeps a table of claims (`ktrace_kprobe::claims`):
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
//! A claim is recorded before the first write to its bytes and released
//! after the last one, and text outside every claim is never written. So
//! whatever a write in progress on another CPU has done to claimed bytes,
//! [`read_original`] (which reads live text and puts back the original of
//! every claim, under the claims lock) shows text as compiled.
//!
//! # Cross-modifying code
//! Other CPUs run the text while it changes. Every change follows the
//! order of `ktrace_kprobe::poke` (Linux's `text_poke_bp`), with
//! [`sync_all_cpus`] after each write, so that no CPU ever decodes an
//! instruction made of old and new bytes:
//!
//! - **One byte** (a kprobe's `int3`, or the byte it replaced): a one-byte
//!   store is atomic for instruction fetch, so a CPU fetches the old or
//!   the new instruction; the sync makes every CPU fetch the new one from
//!   then on. [`arm_breakpoint`] returns only once every CPU traps at the
//!   site; [`disarm_breakpoint`] only once none can trap there any more.
//! - **Several bytes** (a static key's `nop` <-> `jmp`): [`poke_multi`]
//!   publishes the patch record ([`BP_SITE`], [`BP_RESUME`]), then writes
//!   `int3` on the first byte, syncs, writes the tail, syncs, writes the
//!   first byte, syncs, and clears the record.
//!   - Between the first and the last sync a CPU reaching the site fetches
//!     `int3` (or, before the first sync completes, the whole old
//!     instruction, whose bytes do not change until then). The trap
//!     handler ([`on_patch_int3`], which the kprobe `int3` handler asks
//!     first) finds the record and resumes where the new instruction
//!     would go: the `jmp` target, or past the `nop`. It never decodes
//!     the tail.
//!   - The tail is written only after every CPU has synced with the
//!     `int3`: no CPU still holds the old first byte to combine with the
//!     new tail.
//!   - After the last write a CPU fetches `int3` (emulated) or the new
//!     first byte with the tail that was synced before it: the whole new
//!     instruction.
//!   - The record is published (store, release) before the `int3` is
//!     written, and x86 makes stores visible in program order, so a CPU
//!     that fetched the `int3` and then takes the trap (which discards
//!     anything it loaded speculatively) reads the record.
//!   - The record is cleared only after the last sync. A CPU that trapped
//!     on the `int3` runs the handler with interrupts off (interrupt
//!     gate), so it takes the sync's IPI only after leaving the handler:
//!     when the last sync returns, no handler still reads the record, and
//!     no CPU can fetch the `int3` again.
//!
//! - **Once more**: after the last write and its sync, the same bytes are
//!   written again and synced ([`confirm`]). Real CPUs need nothing more;
//!   an emulator that caches translated code may have linked a
//!   translation of the old bytes made while the write was in progress,
//!   and the second write invalidates it (see [`confirm`]).
//!
//! Writers hold [`TEXT_MUTEX`] (a spin mutex that leaves interrupts on)
//! across a whole change, never the claims lock (interrupts off): a sync
//! waits for every other CPU to take an interrupt, which a CPU spinning
//! on a lock with interrupts off would never do. A patching task may be
//! preempted between two steps; meanwhile the site is an emulated `int3`.
//!
//! # NMIs
//! An NMI on any CPU while another patches is safe: the NMI path (the
//! perf sampler, `trace::perf`, the trap entry, and arch code that other
//! NMI users such as TLB shootdowns run) runs no patchable site. Every function of it is refused to kprobes by the blacklist, and
//! it contains no tracepoint site (the `irq` tracepoints of the trap
//! dispatch are behind its "external interrupt" test, false for the NMI
//! vector). So an NMI never traps on an `int3`, ours or a kprobe's (a trap
//! inside an NMI would `iret` and unblock NMIs early). It takes no lock,
//! so the patching CPU can take it anywhere, and it does not delay a sync
//! for longer than its own run.

use core::sync::atomic::{AtomicU64, Ordering};

use ktrace_kprobe::claims::{ClaimError, Owner, TextClaims};
use ktrace_kprobe::poke::poke_steps;
use ktrace_kprobe::x86_64::{Insn, INT3};
use ktrace_kprobe::{Refusal, TextAddr};

use crate::arch::smp_sync::sync_all_cpus;
use crate::arch::text_patch::TextPoke;
use crate::arch::{trap, PtRegs};
use crate::sync::SpinLock;

/// The claims on kernel text. Held (interrupts off) only while the table
/// is read or changed, never across a write of text and its sync.
static CLAIMS: SpinLock<TextClaims> = SpinLock::new(TextClaims::new());

/// Serialises every change to kernel text and slots, start to end.
/// Interrupts stay on while it is held (see the module docs).
static TEXT_MUTEX: spin::Mutex<()> = spin::Mutex::new(());

/// The one right to write kernel text, taken at the first patch.
static POKE: spin::Once<TextPoke> = spin::Once::new();

/// First byte of the multi-byte patch in progress (0: none). Its `int3`
/// is emulated by [`on_patch_int3`].
static BP_SITE: AtomicU64 = AtomicU64::new(0);
/// Where a CPU that traps on [`BP_SITE`]'s `int3` resumes: what the
/// instruction being installed does (the `jmp` target, or past the `nop`).
static BP_RESUME: AtomicU64 = AtomicU64::new(0);
/// Traps on a patch's temporary `int3` emulated since boot.
static BP_EMULATED: AtomicU64 = AtomicU64::new(0);

/// Milliseconds a multi-byte patch sleeps after each of its syncs (0: no
/// pause). The `smp_text` self test sets it so that, even on one CPU,
/// tasks run into the temporary `int3` and its emulation is exercised.
#[cfg(feature = "self-tests")]
static STEP_PAUSE_MS: AtomicU64 = AtomicU64::new(0);

/// Sets the pause between the steps of a multi-byte patch (self tests).
#[cfg(feature = "self-tests")]
pub fn set_patch_step_pause(ms: u64) {
    STEP_PAUSE_MS.store(ms, Ordering::Relaxed);
}

/// After each sync of a multi-byte patch: the self tests' pause.
fn between_steps() {
    #[cfg(feature = "self-tests")]
    match STEP_PAUSE_MS.load(Ordering::Relaxed) {
        0 => {}
        ms => crate::task::sleep_ms(ms),
    }
}

/// Writes through the one [`TextPoke`]. Callers hold [`TEXT_MUTEX`].
fn poke() -> &'static TextPoke {
    POKE.call_once(|| TextPoke::take().expect("kernel text has one owner: trace::text"))
}

/// Writes `new` over the instruction at `at` in the order of
/// `ktrace_kprobe::poke`, syncing every CPU after each write. For more
/// than one byte, `resume` is where a CPU trapping on the temporary `int3`
/// continues (what `new` does when executed); see the module docs for why
/// no CPU runs a torn instruction. The caller holds [`TEXT_MUTEX`], and
/// `old` is what the text holds now.
///
/// A write that fails part-way (the alias mapping found no frame) leaves
/// text every CPU can run: before the `int3`, nothing changed; after it,
/// the old first byte goes back, or, if even that fails (or the tail was
/// already new), the `int3` stays with its record naming what the bytes
/// behind it do, and later multi-byte patches are refused rather than
/// reuse the record.
fn poke_multi(
    at: TextAddr,
    old: &[u8],
    new: &[u8],
    resume: u64,
    resume_old: u64,
) -> Result<(), TextError> {
    let addr = at.get();
    let failed = Err(TextError::Patch(addr));
    let mut steps = poke_steps(new);
    if new.len() <= 1 {
        for step in steps {
            if poke().write(at, step.bytes).is_err() {
                return failed;
            }
            sync_all_cpus();
        }
        confirm(at, new);
        return Ok(());
    }
    if BP_SITE.load(Ordering::Acquire) != 0 {
        return failed;
    }
    BP_RESUME.store(resume, Ordering::Relaxed);
    BP_SITE.store(addr, Ordering::Release);
    let (Some(int3), Some(tail), Some(head)) = (steps.next(), steps.next(), steps.next()) else {
        BP_SITE.store(0, Ordering::Release);
        return failed;
    };
    if poke().write(at, int3.bytes).is_err() {
        BP_SITE.store(0, Ordering::Release);
        return failed;
    }
    sync_all_cpus();
    between_steps();
    if poke()
        .write(at.add(tail.offset as u64), tail.bytes)
        .is_err()
    {
        // `int3` + the old tail: the old instruction, once its byte is back.
        BP_RESUME.store(resume_old, Ordering::Release);
        if poke().write(at, &old[..1]).is_ok() {
            sync_all_cpus();
            BP_SITE.store(0, Ordering::Release);
        }
        return failed;
    }
    sync_all_cpus();
    between_steps();
    if poke().write(at, head.bytes).is_err() {
        // `int3` + the new tail: the record already says what it does.
        return failed;
    }
    sync_all_cpus();
    confirm(at, head.bytes);
    BP_SITE.store(0, Ordering::Release);
    Ok(())
}

/// Writes the last step's bytes once more and syncs again.
///
/// On a CPU this changes nothing. It is for emulated CPUs that cache
/// translated code: QEMU's multi-threaded TCG (7.2, `-accel
/// tcg,thread=multi`) can finish translating code on one vCPU from bytes
/// it read just before another vCPU's write, and link that translation
/// after the write has invalidated the old one; the vCPU then runs the
/// old bytes for as long as nothing writes there again, whatever the
/// memory holds and however often it is synced. The `smp_text` test saw
/// it on 2 vCPUs: armed probes missing hits, and a removed `int3` trapping
/// millions of times with the restored byte in memory. A second write,
/// after the sync, invalidates any such translation, and one made while
/// it is in progress reads the new bytes, which memory already holds.
fn confirm(at: TextAddr, bytes: &[u8]) {
    if poke().write(at, bytes).is_ok() {
        sync_all_cpus();
    }
}

/// The `int3` handler's first question: is this the temporary `int3` of a
/// multi-byte patch in progress? Then it resumes where the instruction
/// being installed goes and returns true. Runs in the breakpoint trap,
/// interrupts off (see the module docs for why the record it reads is the
/// one of the `int3` it trapped on).
pub fn on_patch_int3(regs: &mut PtRegs) -> bool {
    let addr = regs.rip.wrapping_sub(1);
    if addr == 0 || BP_SITE.load(Ordering::Acquire) != addr {
        return false;
    }
    regs.rip = BP_RESUME.load(Ordering::Acquire);
    BP_EMULATED.fetch_add(1, Ordering::Relaxed);
    true
}

/// Traps on a multi-byte patch's temporary `int3` emulated since boot.
#[allow(dead_code)] // diagnostics API, used by the self tests
pub fn patch_traps_emulated() -> u64 {
    BP_EMULATED.load(Ordering::Relaxed)
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
/// Returns once every CPU traps at the site.
pub fn arm_breakpoint(insn: &Insn) -> Result<(), TextError> {
    let _text = TEXT_MUTEX.lock();
    let at = TextAddr(insn.addr);
    CLAIMS
        .lock()
        .claim(at, &insn.bytes[..usize::from(insn.len)], Owner::Kprobe)?;
    let first = insn.bytes[0];
    if let Err(e) = poke_multi(at, &[first], &[INT3], 0, 0) {
        CLAIMS.lock().release(at);
        return Err(e);
    }
    Ok(())
}

/// Puts back the first byte of the kprobe site at `addr` and releases its
/// claim. Returns once no CPU can trap at the site any more (a CPU already
/// in its `int3` handler has left it: the sync waits for that).
pub fn disarm_breakpoint(at: TextAddr) -> Result<(), TextError> {
    let addr = at.get();
    let _text = TEXT_MUTEX.lock();
    let first = match CLAIMS.lock().get(at) {
        Some(c) if c.owner == Owner::Kprobe => c.original()[0],
        _ => return Err(TextError::NotClaimed(addr)),
    };
    poke_multi(at, &[INT3], &[first], 0, 0)?;
    CLAIMS.lock().release(at);
    Ok(())
}

/// Replaces the armed kprobe `int3` at `at` and the 4 bytes after it with
/// `jmp` (a `jmp rel32` to the probe's detour), claiming the rest of the
/// range (`range_original[first_len..]`, the instructions the detour runs
/// instead) for the optimised probe. The `int3` is already on the first
/// byte, so this is the last two steps of the multi-byte protocol: the
/// tail, sync, the first byte, sync (and [`confirm`]). A CPU arriving
/// meanwhile traps on the `int3`, whose handler sends it through the
/// detour's copy of the whole range (the kprobe engine publishes the
/// detour before calling this), so no CPU decodes the new tail or runs
/// the old one from byte 1 on. The caller has made sure no CPU or
/// preempted task is inside the range (`optprobe::wait_until_outside`).
pub fn install_jump(
    at: TextAddr,
    first_len: u8,
    range_original: &[u8],
    jmp: &[u8; 5],
) -> Result<(), TextError> {
    let addr = at.get();
    let _text = TEXT_MUTEX.lock();
    match CLAIMS.lock().get(at) {
        Some(c) if c.owner == Owner::Kprobe => {}
        _ => return Err(TextError::NotClaimed(addr)),
    }
    let first = usize::from(first_len);
    let rest = at.add(u64::from(first_len));
    if range_original.len() > first {
        CLAIMS
            .lock()
            .claim(rest, &range_original[first..], Owner::OptimisedRange)?;
    }
    let release = || {
        if range_original.len() > first {
            CLAIMS.lock().release(rest);
        }
    };
    if poke().write(at.add(1), &jmp[1..]).is_err() {
        release();
        return Err(TextError::Patch(addr));
    }
    sync_all_cpus();
    between_steps();
    if poke().write(at, &jmp[..1]).is_err() {
        // `int3` + the jump's tail: the kprobe's handler still sends every
        // hit through the detour; put the old tail back.
        if poke().write(at.add(1), &range_original[1..5]).is_ok() {
            sync_all_cpus();
            release();
        }
        return Err(TextError::Patch(addr));
    }
    sync_all_cpus();
    confirm(at, &jmp[..1]);
    Ok(())
}

/// Puts the kprobe `int3` back over the `jmp` at `at` and the original
/// bytes after it (`range_original`, the range [`install_jump`] was given),
/// and releases the range's claim: `int3`, sync, tail, sync (and
/// [`confirm`]). Meanwhile a CPU traps on the `int3` and goes through the
/// detour (still published by the caller), so none decodes a mix.
pub fn remove_jump(at: TextAddr, first_len: u8, range_original: &[u8]) -> Result<(), TextError> {
    let addr = at.get();
    let _text = TEXT_MUTEX.lock();
    if poke().write(at, &[INT3]).is_err() {
        return Err(TextError::Patch(addr));
    }
    sync_all_cpus();
    between_steps();
    if poke().write(at.add(1), &range_original[1..5]).is_err() {
        return Err(TextError::Patch(addr));
    }
    sync_all_cpus();
    confirm(at.add(1), &range_original[1..5]);
    if range_original.len() > usize::from(first_len) {
        CLAIMS.lock().release(at.add(u64::from(first_len)));
    }
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
/// `None` the original `nop`, by the three-step patch (see the module
/// docs). Nothing is written when the site already holds those bytes.
pub fn set_static_key(at: TextAddr, target: Option<TextAddr>) -> Result<(), TextError> {
    let site = at.get();
    let _text = TEXT_MUTEX.lock();
    let original: [u8; 5] = match CLAIMS.lock().get(at) {
        Some(c) if matches!(c.owner, Owner::StaticKey { .. }) && c.len == 5 => c
            .original()
            .try_into()
            .map_err(|_| TextError::NotClaimed(site))?,
        _ => return Err(TextError::NotClaimed(site)),
    };
    let jmp_to = |target: TextAddr| -> Result<[u8; 5], TextError> {
        let rel = i32::try_from(target.get().wrapping_sub(site + 5) as i64)
            .map_err(|_| TextError::Patch(site))?;
        let mut b = [0xe9, 0, 0, 0, 0];
        b[1..].copy_from_slice(&rel.to_le_bytes());
        Ok(b)
    };
    let mut live = [0u8; 5];
    trap::copy_from_kernel_nofault(&mut live, site).map_err(|_| TextError::Patch(site))?;
    let (new, resume) = match target {
        Some(t) => (jmp_to(t)?, t.get()),
        None => (original, site + 5),
    };
    if live == new {
        return Ok(());
    }
    // What the live instruction does, should the patch stop part-way.
    let resume_old = match live {
        [0xe9, a, b, c, d] => site
            .wrapping_add(5)
            .wrapping_add(i32::from_le_bytes([a, b, c, d]) as i64 as u64),
        _ => site + 5,
    };
    poke_multi(at, &live, &new, resume, resume_old)
}

/// Fills an out-of-line slot (executable memory of the kprobe engine, not
/// kernel text: never claimed). No CPU executes it before this returns,
/// and none runs stale bytes of its previous use afterwards: a slot is
/// entered only by the `iret` of a breakpoint trap (serialising), after
/// the site's `int3` was armed, which is after this write.
pub fn write_slot(slot: TextAddr, code: &[u8]) -> Result<(), TextError> {
    let _text = TEXT_MUTEX.lock();
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
