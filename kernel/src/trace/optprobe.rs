//! The machinery of jump-optimised kprobes: detour memory, the switch,
//! and the two tables that let the kprobe engine know no context is
//! inside bytes it is about to change. The decisions (eligibility, the
//! detour's code) are in `ktrace_kprobe::opt`; the life cycle of an
//! optimised site is in `kprobe`.
//!
//! # Why no CPU and no task is inside the range when the jump goes in
//! A `jmp rel32` overwrites instructions 2..n of the range. A context
//! stopped between them would resume in the middle of the `jmp`. Contexts
//! are either running on a CPU or switched out, and a task is switched
//! out inside straight-line code only by preemption at the end of an
//! interrupt (`trap_dispatch`: the range has no call, so no return address
//! points into it, and no trap handler enables interrupts or sleeps).
//!
//! 1. The kprobe's `int3` is armed and its site publishes the detour: from
//!    then on a CPU reaching byte 0 runs the handlers and continues in the
//!    detour's copy of the whole range, never in bytes 1.. of the
//!    original; and no branch lands there (the whole function was decoded,
//!    `ktrace_kprobe::opt::plan`). Nothing new enters the range.
//! 2. The range is published as *no-preempt* ([`no_preempt_at`]): an
//!    interrupt that lands there returns to it instead of switching tasks.
//! 3. A sync of every CPU: a CPU that had decided to preempt a task inside
//!    the range before step 2 (interrupts off) has finished switching it
//!    out, and recorded it (4).
//! 4. The *preempted* table ([`preempt_enter`]) holds the interrupted RIP
//!    of every task switched out by an interrupt, from boot on: none may
//!    lie in the range. (A task in it is runnable and leaves on its own;
//!    we wait and look again.)
//! 5. Every CPU is interrupted ([`smp::on_each_cpu`]) and reports the RIP
//!    it was interrupted at: none may be in the range. A CPU running in the
//!    range at step 4 could not be switched out (2), so it is seen here, or
//!    it has left for good (1). A task resuming between 4 and 5 runs with
//!    interrupts off until its `iretq`, so 5 sees where it resumes.
//!
//! The same holds for the detour's own first bytes, which run with the
//! caller's IF before the `cli` ([`PROLOGUE_IF_BYTES`]): they are
//! no-preempt for the detour's whole life, so no task is ever switched out
//! there, and freeing waits for step 5 on the whole detour (the rest of
//! the detour runs with IF clear, so step 5's interrupt also proves each
//! CPU left it: the grace period).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ktrace_kprobe::opt::{DETOUR_SIZE, PROLOGUE_IF_BYTES};

use crate::arch::{smp, smp_sync::sync_all_cpus, text_patch, PtRegs};
use crate::percpu::this_cpu;
use crate::sync::SpinLock;

/// Kernel-wide switch (Linux's `debug.kprobes-optimization`).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether new probes are optimised.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Sets the switch; the caller (un)optimises existing probes.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Ranges where an interrupt never preempts: (start, end), 0 = free.
const NO_PREEMPT_SLOTS: usize = 64;
static NO_PREEMPT: [(AtomicU64, AtomicU64); NO_PREEMPT_SLOTS] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; NO_PREEMPT_SLOTS];

/// Whether an interrupt that landed at `rip` must return there rather
/// than switch tasks. Called by `trap_dispatch` on every interrupt.
#[inline(never)]
pub fn no_preempt_at(rip: u64) -> bool {
    let mut i = 0;
    while i < NO_PREEMPT_SLOTS {
        let (s, e) = &NO_PREEMPT[i];
        if rip >= s.load(Ordering::Acquire) && rip < e.load(Ordering::Acquire) {
            return true;
        }
        i += 1;
    }
    false
}

/// Publishes `start..end` as no-preempt; `None` when the table is full.
fn add_no_preempt(start: u64, end: u64) -> Option<usize> {
    for (i, (s, e)) in NO_PREEMPT.iter().enumerate() {
        if e.compare_exchange(0, end, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            s.store(start, Ordering::Release);
            return Some(i);
        }
    }
    None
}

fn remove_no_preempt(i: usize) {
    let (s, e) = &NO_PREEMPT[i];
    // Start first: an empty range (start >= end) never matches.
    s.store(u64::MAX, Ordering::Release);
    e.store(0, Ordering::Release);
}

/// Interrupted RIPs of tasks switched out by an interrupt (0 = free).
const PREEMPTED_SLOTS: usize = 256;
static PREEMPTED: [AtomicU64; PREEMPTED_SLOTS] = [const { AtomicU64::new(0) }; PREEMPTED_SLOTS];
/// Tasks switched out by an interrupt while the table was full.
static UNTRACKED: AtomicU64 = AtomicU64::new(0);
/// [`preempt_enter`]'s answer when no slot was free.
const NO_SLOT: usize = usize::MAX;

/// Called by `trap_dispatch` before a possible preemption at the end of
/// an interrupt that landed at `rip`; the returned token goes to
/// [`preempt_exit`] when the task runs again.
#[inline(never)]
pub fn preempt_enter(rip: u64) -> usize {
    let start = (this_cpu().id as usize * 16) % PREEMPTED_SLOTS;
    let mut k = 0;
    while k < PREEMPTED_SLOTS {
        let i = (start + k) % PREEMPTED_SLOTS;
        if PREEMPTED[i]
            .compare_exchange(0, rip.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return i;
        }
        k += 1;
    }
    UNTRACKED.fetch_add(1, Ordering::AcqRel);
    NO_SLOT
}

/// The task of [`preempt_enter`]'s token runs again.
#[inline(never)]
pub fn preempt_exit(token: usize) {
    match PREEMPTED.get(token) {
        Some(slot) => slot.store(0, Ordering::Release),
        None => {
            UNTRACKED.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn inside(ranges: &[(u64, u64)], rip: u64) -> bool {
    ranges.iter().any(|&(s, e)| rip >= s && rip < e)
}

/// Step 4 of the module docs: a task switched out inside `ranges` (or one
/// we could not record).
fn preempted_inside(ranges: &[(u64, u64)]) -> bool {
    UNTRACKED.load(Ordering::Acquire) != 0
        || PREEMPTED
            .iter()
            .any(|r| inside(ranges, r.load(Ordering::Acquire)))
}

struct Observe<'a> {
    ranges: &'a [(u64, u64)],
    seen: AtomicBool,
}

/// Step 5: every CPU reports where it was interrupted.
fn cpu_inside(ranges: &[(u64, u64)]) -> bool {
    let o = Observe {
        ranges,
        seen: AtomicBool::new(false),
    };
    smp::on_each_cpu(&o, |o| {
        // The innermost trap frame: the call-function IPI's, naming where
        // this CPU was interrupted. A CPU that served the call by polling
        // (it waits in `call_on` itself) or the caller's own CPU has none,
        // or an older one; that only makes us look again.
        let frame = this_cpu().trap_frame.load(Ordering::Acquire);
        if frame == 0 {
            return;
        }
        let rip = text_patch::read_u64(frame + core::mem::offset_of!(PtRegs, rip) as u64);
        if rip.is_some_and(|r| inside(o.ranges, r)) {
            o.seen.store(true, Ordering::Relaxed);
        }
    });
    o.seen.load(Ordering::Relaxed)
}

/// Waits (up to about a second) until no CPU and no preempted task is
/// inside `ranges`, which are already no-preempt and which nothing new can
/// enter (see the module docs). False if some context stayed.
pub fn wait_until_outside(ranges: &[(u64, u64)]) -> bool {
    for _ in 0..200 {
        sync_all_cpus();
        if !preempted_inside(ranges) && !cpu_inside(ranges) {
            return true;
        }
        crate::task::sleep_ms(5);
    }
    false
}

/// A detour's memory and its no-preempt entries; returned to the pool on
/// drop. Only dropped once no CPU can be inside (`kprobe` waits with
/// [`wait_until_outside`] on [`Detour::range`] first).
pub struct Detour {
    addr: u64,
    /// No-preempt entries: the detour's prologue, the original range.
    no_preempt: [Option<usize>; 2],
}

static FREE_DETOURS: SpinLock<alloc::vec::Vec<u64>> = SpinLock::new(alloc::vec::Vec::new());

impl Detour {
    /// A fresh detour (memory only) with its prologue no-preempt, and the
    /// original range `range` no-preempt too.
    pub fn new(range: (u64, u64)) -> Option<Detour> {
        // Popped before the match: the guard must not live into the arm
        // that takes the lock again.
        let reused = FREE_DETOURS.lock().pop();
        let addr = match reused {
            Some(a) => a,
            None => {
                let page = text_patch::alloc_exec_page()?;
                let mut free = FREE_DETOURS.lock();
                for i in (1..4096 / DETOUR_SIZE as u64).rev() {
                    free.push(page + i * DETOUR_SIZE as u64);
                }
                page
            }
        };
        let mut d = Detour {
            addr,
            no_preempt: [None, None],
        };
        d.no_preempt[0] = Some(add_no_preempt(addr, addr + PROLOGUE_IF_BYTES as u64)?);
        d.no_preempt[1] = Some(add_no_preempt(range.0, range.1)?);
        Some(d)
    }

    /// Its address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The whole detour, for [`wait_until_outside`] before it is freed.
    pub fn range(&self) -> (u64, u64) {
        (self.addr, self.addr + DETOUR_SIZE as u64)
    }
}

impl Drop for Detour {
    fn drop(&mut self) {
        for i in self.no_preempt.iter().flatten() {
            remove_no_preempt(*i);
        }
        FREE_DETOURS.lock().push(self.addr);
    }
}
