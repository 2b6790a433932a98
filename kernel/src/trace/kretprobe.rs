//! Return probes.
//!
//! A kretprobe is a kprobe on a function's first instruction whose handler
//! claims an instance from a fixed pool (`maxactive` per probe, see
//! `ktrace_kprobe::pool`), saves the return address found at `[rsp]` with
//! the entry timestamp and handler data, and replaces it with the address
//! of `kretprobe_trampoline` (`arch/x86_64/probe_entry.S`). When the
//! function returns, the trampoline saves the registers and calls
//! [`on_return`], which finds the instance **by the
//! stack slot** that held the return address. Stack slots are unique among
//! calls in flight, whichever task made them, so a function that sleeps
//! while another task enters it (or recursion) gets each return address
//! back exactly. Pool exhaustion counts a miss and leaves that call
//! untraced; it never breaks the function.
//!
//! On several CPUs: each CPU claims from its own share of the pool first
//! (so CPUs entering probed functions at once rarely contend for an
//! entry), and any CPU finds an instance by its slot, since a task may
//! return on another CPU than the one it entered on. Entries change state
//! by compare-and-swap only. [`unregister`] clears `registered` before the
//! entry probe's removal, whose grace period waits out every return
//! handler that had already read it as set: none runs after it returns.
//!
//! Instances never outlive the stack their slot lies in. A task that exits
//! inside a probed function (`exit_current` never returns) leaves its
//! instances behind; when its stack is freed, [`release_stack`] gives them
//! back first, so a later task reusing that memory cannot find them, and
//! the pool does not fill up with calls that will never return.
//!
//! Unregistering frees what can never be returned through: it reaps the
//! tasks that already exited (their stacks, and the instances in them, are
//! released). The probe's instances on live stacks stay in the pool: their
//! calls still return through the trampoline to the right place (without
//! running the handler) and give the entry back then. Freeing one of those
//! earlier would lose a return address a live task still needs.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use ktrace_kprobe::pool::{Pool, Quota};

use super::kprobe::{self, DepthGuard, Kprobe, KprobeError, KprobeHandler};
use crate::arch::{text_patch, trap, PtRegs};
use ktrace_kprobe::{Refusal, TextAddr};

/// Instances shared by all return probes.
const POOL_SIZE: usize = 512;
/// Words per instance: entry tsc, entry ns, pid, function, 4 handler words.
const WORDS: usize = 8;
/// `maxactive` when the caller passes 0.
pub const DEFAULT_MAXACTIVE: u32 = 64;

static POOL: Pool<POOL_SIZE, WORDS> = Pool::new();
static RETPROBES: spin::RwLock<Vec<Arc<Kretprobe>>> = spin::RwLock::new(Vec::new());

/// What the return handler gets from the entry.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // every field is for handlers; the built-in ones use a few
pub struct RetInstance {
    /// The probed function.
    pub func: u64,
    /// `time::now_ns()` at entry.
    pub entry_ns: u64,
    /// TSC at entry.
    pub entry_tsc: u64,
    /// Task that entered.
    pub pid: u32,
    /// Words the entry handler stashed.
    pub data: [u64; 4],
}

/// A native return-probe handler. Both callbacks run with interrupts
/// disabled under the recursion guard.
pub trait KretprobeHandler: Send + Sync {
    /// At function entry: stash up to 4 words; return false to leave this
    /// call untraced.
    fn entry(&self, _regs: &PtRegs, _data: &mut [u64; 4]) -> bool {
        true
    }
    /// At return: `regs.rax` is the return value, `regs.rip` the return
    /// address, `regs.rsp` the caller's stack pointer after the return.
    fn ret(&self, regs: &mut PtRegs, inst: &RetInstance);
    /// A hit this handler did not see: it came while another probe's
    /// handler ran on this CPU (the recursion guard), or no return
    /// instance was free. Lets a handler count its own misses.
    fn missed(&self) {}
    /// A short name for listings.
    fn kind(&self) -> &'static str {
        "native"
    }
}

/// A registered return probe.
pub struct Kretprobe {
    id: u32,
    func: TextAddr,
    handler: Arc<dyn KretprobeHandler>,
    quota: Quota,
    hits: AtomicU64,
    missed: AtomicU64,
    registered: AtomicBool,
    entry_id: AtomicU32,
}

impl Kretprobe {
    /// Probe id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The probed function.
    pub fn func(&self) -> TextAddr {
        self.func
    }
    /// Return handlers run.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    /// Calls not traced: pool/maxactive exhaustion, recursion at entry or
    /// at return.
    pub fn missed(&self) -> u64 {
        let entry = kprobe::get(self.entry_id.load(Ordering::Relaxed))
            .map(|k| k.missed())
            .unwrap_or(0);
        self.missed.load(Ordering::Relaxed) + entry
    }
    /// The `maxactive` limit.
    pub fn maxactive(&self) -> u32 {
        self.quota.maxactive
    }
    /// Calls in flight now (entered, not yet returned, their task alive or
    /// not yet reaped).
    pub fn active(&self) -> u32 {
        self.quota.active.load(Ordering::Relaxed)
    }
    /// The handler.
    pub fn handler(&self) -> &Arc<dyn KretprobeHandler> {
        &self.handler
    }
}

/// The entry kprobe's handler.
struct Entry(Arc<Kretprobe>);

impl KprobeHandler for Entry {
    fn pre(&self, regs: &mut PtRegs) {
        let rp = &self.0;
        if !rp.registered.load(Ordering::Acquire) {
            return;
        }
        let Some(orig) = text_patch::read_u64(regs.rsp) else {
            return;
        };
        let mut data = [0u64; 4];
        if !rp.handler.entry(regs, &mut data) {
            return;
        }
        let words = [
            crate::arch::rdtsc(),
            crate::time::now_ns(),
            u64::from(crate::task::current_pid()),
            rp.func.get(),
            data[0],
            data[1],
            data[2],
            data[3],
        ];
        // From this CPU's share of the pool first (see `Pool::claim_near`).
        let cpu = crate::percpu::this_cpu().id as usize;
        let cpus = crate::percpu::cpu_count() as usize;
        let Some(i) = POOL.claim_near(cpu, cpus, rp.id, &rp.quota, regs.rsp, orig, words) else {
            rp.missed.fetch_add(1, Ordering::Relaxed);
            rp.handler.missed();
            return;
        };
        let trampoline = text_patch::kretprobe_trampoline_addr();
        if trap::write_interrupted_stack(regs, regs.rsp, trampoline).is_err() {
            let _ = POOL.release(i, Some(&rp.quota));
            rp.missed.fetch_add(1, Ordering::Relaxed);
            rp.handler.missed();
        }
    }

    /// The entry kprobe's own misses count in `Kretprobe::missed` through
    /// the entry probe; the return handler hears of them too.
    fn missed(&self) {
        self.0.handler.missed();
    }

    fn kind(&self) -> &'static str {
        "kretprobe-entry"
    }
}

fn find(owner: u32) -> Option<Arc<Kretprobe>> {
    let all = RETPROBES.read();
    let mut i = 0;
    while let Some(rp) = all.get(i) {
        if rp.id == owner {
            return Some(rp.clone());
        }
        i += 1;
    }
    None
}

/// Called by the trampoline (through
/// `arch::text_patch::kretprobe_trampoline_handler`) with the registers at
/// return. Returns (and stores in `regs.rip`) the original return address.
pub fn on_return(regs: &mut PtRegs) -> u64 {
    let ret_slot = regs.rsp;
    let Some(i) = POOL.find_preferring(ret_slot, text_patch::kretprobe_trampoline_addr()) else {
        // The return address is lost: nothing can continue correctly.
        panic!("kretprobe trampoline: no instance for return slot {ret_slot:#x}");
    };
    let owner = POOL.entry(i).map(|e| e.owner()).unwrap_or(0);
    let rp = find(owner);
    let Some((_, orig, w)) = POOL.release(i, rp.as_ref().map(|r| &r.quota)) else {
        panic!("kretprobe trampoline: instance {i} released twice");
    };
    regs.rip = orig;
    regs.rsp = ret_slot + 8;
    if let Some(rp) = rp.filter(|r| r.registered.load(Ordering::Acquire)) {
        match DepthGuard::enter() {
            Some(_g) => {
                rp.hits.fetch_add(1, Ordering::Relaxed);
                let inst = RetInstance {
                    entry_tsc: w[0],
                    entry_ns: w[1],
                    pid: w[2] as u32,
                    func: w[3],
                    data: [w[4], w[5], w[6], w[7]],
                };
                rp.handler.ret(regs, &inst);
            }
            None => {
                rp.missed.fetch_add(1, Ordering::Relaxed);
                DepthGuard::report_miss(|| rp.handler.missed());
            }
        }
    }
    regs.rip
}

/// Register a return probe on the function starting at `func`.
pub fn register(
    at: TextAddr,
    maxactive: u32,
    handler: Arc<dyn KretprobeHandler>,
) -> Result<Arc<Kretprobe>, KprobeError> {
    let func = at.get();
    match crate::ksyms::lookup(func) {
        Some((_, 0)) => {}
        Some((s, off)) => {
            return Err(KprobeError::Refused(Refusal::Instruction {
                addr: func,
                mnemonic: "(not a function entry)",
                why: if off > 0 && s.size > 0 {
                    "return probes go on a function's first instruction"
                } else {
                    "unknown function"
                },
            }))
        }
        None => return Err(KprobeError::Refused(Refusal::NoSymbol { addr: func })),
    }
    let maxactive = if maxactive == 0 {
        DEFAULT_MAXACTIVE
    } else {
        maxactive.min(POOL_SIZE as u32)
    };
    let rp = Arc::new(Kretprobe {
        id: kprobe::next_id(),
        func: at,
        handler,
        quota: Quota::new(maxactive),
        hits: AtomicU64::new(0),
        missed: AtomicU64::new(0),
        registered: AtomicBool::new(true),
        entry_id: AtomicU32::new(0),
    });
    {
        let was = crate::arch::irq_save();
        let mut next = RETPROBES.read().clone();
        next.push(rp.clone());
        let old = core::mem::replace(&mut *RETPROBES.write(), next);
        crate::arch::irq_restore(was);
        drop(old);
    }
    match kprobe::register(at, Arc::new(Entry(rp.clone()))) {
        Ok(k) => {
            rp.entry_id.store(k.id(), Ordering::Relaxed);
            Ok(rp)
        }
        Err(e) => {
            remove(rp.id);
            Err(e)
        }
    }
}

fn remove(id: u32) {
    let was = crate::arch::irq_save();
    let mut next = RETPROBES.read().clone();
    next.retain(|r| r.id != id);
    let old = core::mem::replace(&mut *RETPROBES.write(), next);
    crate::arch::irq_restore(was);
    drop(old);
}

/// Unregister a return probe. Calls in flight on live stacks still return
/// correctly; instances of tasks that exited are freed now.
pub fn unregister(id: u32) -> Result<(), KprobeError> {
    let rp = get(id).ok_or(KprobeError::NotFound(id))?;
    rp.registered.store(false, Ordering::Release);
    kprobe::unregister(rp.entry_id.load(Ordering::Relaxed))?;
    remove(id);
    // A zombie never runs again, so none of its instances can be returned
    // through; reaping frees its stack, which releases them
    // (`release_stack`). The caller is a live task, never a zombie.
    crate::task::reap_zombies();
    Ok(())
}

/// Give back every instance whose return slot lies in `stack`, the stack
/// of a task that exited and is being freed. Called before the memory goes
/// back to the allocator, so no later task can find these instances.
///
/// Why this is safe: an instance is only ever returned through by the task
/// whose stack holds its slot, when a function of that task returns. The
/// task has exited and will never run again, so none of these can be
/// returned through; and nothing else claims a slot in a stack no task
/// runs on. (The pool's generation tags cover an instance elsewhere being
/// recycled while we scan.)
pub fn release_stack(stack: core::ops::Range<u64>) -> usize {
    POOL.release_range(stack, |owner| {
        if let Some(rp) = find(owner) {
            rp.quota.active.fetch_sub(1, Ordering::AcqRel);
        }
    })
}

/// The shared instance pool: (entries in all, free now, held by calls in
/// flight of return probes that were removed).
pub fn pool_stats() -> (u32, u32, u32) {
    let all = RETPROBES.read();
    let orphaned = POOL.live_unowned(|owner| all.iter().any(|r| r.id == owner));
    (POOL.size() as u32, POOL.free() as u32, orphaned as u32)
}

/// A return probe by id.
pub fn get(id: u32) -> Option<Arc<Kretprobe>> {
    find(id)
}

/// All return probes.
pub fn probes() -> Vec<Arc<Kretprobe>> {
    RETPROBES.read().clone()
}

/// Whether `kprobe_id` is the entry probe of a return probe (listings
/// show the return probe instead).
pub fn is_entry_probe(kprobe: &Kprobe) -> bool {
    kprobe.handler().kind() == "kretprobe-entry"
}
