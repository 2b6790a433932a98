//! The kprobe engine: registration checks, `int3` planting, the breakpoint
//! and single-step trap handlers, boosting.
//!
//! # Life of a probe
//! 1. [`register`] checks the address: inside kernel text, not blacklisted
//!    ([`blacklist`]), on an instruction boundary (decoded from the start of
//!    its function, found through `ksyms`), and an instruction the engine can
//!    run out of line (`ktrace_kprobe::x86_64::analyze`). A refused address
//!    gets a [`KprobeError`] naming the reason.
//!    The check reads text as compiled ([`text::read_original`]), so a
//!    neighbour's `int3` cannot shift the decoding, and refuses bytes that
//!    another mechanism patches (a tracepoint's static-key site).
//! 2. The probe is **published** in the site table, then its instruction
//!    is claimed from the owner of kernel text ([`text`]) and its first byte
//!    replaced by `int3` through the text-patching alias (text stays
//!    read+execute). Several probes on one address share one
//!    site, one patch and one slot; their handlers run in registration
//!    order.
//! 3. On a hit, the `int3` handler finds the site without taking any lock
//!    that a writer could hold across probe-able code (writers swap a
//!    prepared table under a write lock with interrupts off), sets
//!    `regs.rip` back to the probe address, runs the pre handlers under the
//!    per-CPU recursion guard, then executes the original instruction:
//!    emulated (relative branches), boosted (slot copy + `jmp` back), or
//!    single-stepped in the slot with TF set and IF clear, after which the
//!    debug trap moves RIP back, restores the flags and runs post handlers.
//!    An instruction with an exception fix-up is never boosted: if its
//!    copy faults while stepped, [`on_slot_fault`] moves RIP back to the
//!    original address first, so the fix-up table finds it and the fault
//!    is handled exactly as without the probe.
//! 4. [`unregister`] restores the original byte first (returning once no
//!    CPU can trap there any more), then unpublishes the site, then waits
//!    for a grace period ([`super::grace_period`]) before the site, its
//!    handlers and its slot are dropped.
//!
//! # Why nothing is freed under a running CPU
//! A CPU uses a site from its `int3` trap to the end of the probed
//! instruction's execution: the pre handlers, a single-step in the slot
//! up to the debug trap and the post handlers, or a boosted run through
//! the slot up to its `jmp` back. All of it runs with IF clear: trap
//! handlers run behind interrupt gates, the step and the boost enter the
//! slot with IF clear, and the `sti` of the boost copy takes effect only
//! after the `jmp` has left the slot (`ktrace_kprobe::x86_64`). A grace
//! period is a completed `sync_all_cpus`: every other CPU took an
//! interrupt, so each left whatever IF-clear region it was in when the
//! site was unpublished, and anything it starts afterwards finds the new
//! table. The calling task itself runs with interrupts on, outside any
//! such region. (Linux waits the same way for IRQ-off regions with
//! `synchronize_rcu`.) An NMI may interrupt a CPU in a handler or slot
//! but never runs one itself, so it does not extend the region.
//!
//! Single-step state is per CPU ([`STEP`]): several CPUs step their own
//! copies at once, each with its own saved flags and slot.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use ktrace_kprobe::x86_64::{self as insn, rflags, Exec, Insn, StepFixup};
use ktrace_kprobe::{Refusal, TextAddr};

use super::optprobe;
use super::text::{self, TextError};
use crate::arch::text_patch;
use crate::arch::{trap, PtRegs};
use crate::percpu::{this_cpu, PerCpuCounter};
use crate::sync::SpinLock;
use ktrace_kprobe::opt::{self, CONT_COPY, CONT_COPY_STI, CONT_REDIRECT_STI};

/// A native kprobe handler. Runs with interrupts disabled in trap context.
pub trait KprobeHandler: Send + Sync {
    /// Before the probed instruction; `regs.rip` is the probe address.
    fn pre(&self, regs: &mut PtRegs);
    /// After the probed instruction (only called when [`has_post`]
    /// returns true; a post handler prevents boosting).
    ///
    /// [`has_post`]: KprobeHandler::has_post
    fn post(&self, _regs: &mut PtRegs) {}
    /// Whether [`post`](KprobeHandler::post) must run.
    fn has_post(&self) -> bool {
        false
    }
    /// A short name for listings (`count`, `bpf`, ...).
    fn kind(&self) -> &'static str {
        "native"
    }
    /// A hit this handler did not see: it came while another probe's
    /// handler ran on this CPU (the recursion guard), or no return
    /// instance was free. Lets a handler count its own misses.
    fn missed(&self) {}
}

/// A registered kprobe.
pub struct Kprobe {
    id: u32,
    addr: TextAddr,
    handler: Arc<dyn KprobeHandler>,
    /// Per CPU: hits come from every CPU at once.
    hits: PerCpuCounter,
    missed: AtomicU64,
    boosted_hits: AtomicU64,
}

impl Kprobe {
    /// Probe id (unique since boot, shared with kretprobes).
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The probed address.
    pub fn addr(&self) -> TextAddr {
        self.addr
    }
    /// Times the pre handler ran.
    pub fn hits(&self) -> u64 {
        self.hits.sum()
    }
    /// Hits not handled because of recursion.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
    /// Hits that took the boosted path.
    pub fn boosted_hits(&self) -> u64 {
        self.boosted_hits.load(Ordering::Relaxed)
    }
    /// Whether the instruction runs boosted when its `int3` is hit.
    #[cfg_attr(not(feature = "self-tests"), allow(dead_code))] // used by the self tests
    pub fn boosted(&self) -> bool {
        find_site(self.addr.get()).is_some_and(|s| s.boost)
    }
    /// The handler.
    pub fn handler(&self) -> &Arc<dyn KprobeHandler> {
        &self.handler
    }
}

/// Why a registration failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KprobeError {
    /// The address was refused.
    Refused(Refusal),
    /// No function has this demangled path.
    UnknownSymbol(String),
    /// The offset is past the end of the function.
    OffsetOutOfRange {
        name: String,
        offset: u64,
        size: u64,
    },
    /// No probe with this id.
    NotFound(u32),
    /// Out of slot memory or page-table frames.
    OutOfMemory,
    /// Writing the breakpoint failed.
    Patch(u64),
}

impl fmt::Display for KprobeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KprobeError::Refused(r) => write!(f, "{r}"),
            KprobeError::UnknownSymbol(n) => write!(f, "no kernel function named {n:?}"),
            KprobeError::OffsetOutOfRange { name, offset, size } => {
                write!(
                    f,
                    "offset {offset:#x} is past the end of {name} ({size} bytes)"
                )
            }
            KprobeError::NotFound(id) => write!(f, "no probe with id {id}"),
            KprobeError::OutOfMemory => write!(f, "out of memory for probe slots"),
            KprobeError::Patch(a) => write!(f, "cannot patch kernel text at {a:#x}"),
        }
    }
}

impl From<TextError> for KprobeError {
    fn from(e: TextError) -> Self {
        match e {
            TextError::Refused(r) => KprobeError::Refused(r),
            TextError::OutOfMemory => KprobeError::OutOfMemory,
            TextError::Patch(a) | TextError::NotClaimed(a) => KprobeError::Patch(a),
        }
    }
}

impl From<Refusal> for KprobeError {
    fn from(r: Refusal) -> Self {
        KprobeError::Refused(r)
    }
}

/// One patched address: the decoded instruction, its slot, its probes.
/// Immutable once published; changes publish a new `Site`.
struct Site {
    addr: u64,
    insn: Insn,
    slot: Option<Arc<Slot>>,
    probes: Vec<Arc<Kprobe>>,
    /// Boosted: boostable instruction and no probe has a post handler.
    boost: bool,
    /// Jump-optimised: the `jmp` to this detour replaces the `int3` (or
    /// is being installed or removed: the `int3` handler sends hits
    /// through the detour's copy meanwhile).
    opt: Option<Arc<Optimised>>,
    /// Why the site is not jump-optimised (None while it is).
    why_not: Option<String>,
}

/// A jump-optimised site's detour and the range its `jmp` replaces.
struct Optimised {
    detour: optprobe::Detour,
    plan: opt::Plan,
    /// The range's bytes as compiled.
    original: [u8; 2 * insn::MAX_INSN_LEN],
}

impl Optimised {
    fn original(&self) -> &[u8] {
        &self.original[..usize::from(self.plan.len)]
    }
}

/// How a probed instruction runs after its handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `int3`, then emulated or single-stepped.
    Int3,
    /// `int3`, then the slot copy jumps back.
    Boosted,
    /// A `jmp` to a detour: no trap.
    Optimised,
}

/// An out-of-line slot; returned to the free list when the last site
/// using it is dropped.
struct Slot {
    addr: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        FREE_SLOTS.lock().push(self.addr);
    }
}

/// Published sites, sorted by address. The `int3` handler takes the read
/// lock just long enough to clone an `Arc`; a detour (`on_detour`) holds
/// it while its site's pre handlers run, which saves the `Arc`'s two
/// locked operations per hit. Writers swap in a new vector with
/// interrupts off, calling nothing probe-able while holding it; a writer
/// on another CPU waits at most for those handlers, which never sleep,
/// never wait for another CPU and never take the write lock (probes are
/// registered from task context only, under `REGISTRY`). The lock lets
/// readers in while a writer waits, so a hit nested in a handler (which
/// the recursion guard then refuses) never deadlocks.
static SITES: spin::RwLock<Vec<Arc<Site>>> = spin::RwLock::new(Vec::new());
/// Serialises registration and unregistration (task context only).
static REGISTRY: spin::Mutex<()> = spin::Mutex::new(());
static FREE_SLOTS: SpinLock<Vec<u64>> = SpinLock::new(Vec::new());
static NEXT_ID: AtomicU32 = AtomicU32::new(1);
/// CPUs with a single-step state: as many as the kernel may bring up.
const MAX_CPUS: usize = ktrace_abi::vm::MAX_CPUS as usize;
/// The single-step in progress on each CPU, indexed by CPU number. IF is
/// clear from the `int3` to the debug trap, so a CPU's steps never nest,
/// and only that CPU touches its entry (the lock is uncontended).
static STEP: [SpinLock<Option<StepState>>; MAX_CPUS] = [const { SpinLock::new(None) }; MAX_CPUS];
/// Breakpoints hit at addresses without a site (an unregister raced).
static SPURIOUS: AtomicU64 = AtomicU64::new(0);
static INITIALISED: AtomicBool = AtomicBool::new(false);

struct StepState {
    site: Arc<Site>,
    slot: u64,
    orig_flags: u64,
    run_post: bool,
}

/// A fresh probe id (kretprobes share the sequence).
pub(crate) fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// This CPU's single-step state.
fn this_step() -> &'static SpinLock<Option<StepState>> {
    let cpu = this_cpu().id as usize;
    match STEP.get(cpu) {
        Some(s) => s,
        None => panic!("CPU {cpu} is beyond the {MAX_CPUS} per-CPU step states"),
    }
}

/// Install the `int3` and debug-trap handlers.
pub fn init() {
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return;
    }
    trap::set_handler(3, on_int3);
    trap::set_handler(1, on_debug);
    // Exceptions an instruction copied to a slot can raise: divide error,
    // invalid opcode, #GP, #PF, x87/SIMD errors, alignment check.
    for vector in [0, 6, 13, 14, 16, 17, 19] {
        trap::set_handler(vector, on_slot_fault);
    }
}

/// Boosting for sites registered from now on (the self tests turn it off
/// to measure single-stepped probes).
static BOOSTING: AtomicBool = AtomicBool::new(true);

/// Turns boosting on or off for sites registered from now on (self tests).
#[cfg(feature = "self-tests")]
pub fn set_boosting(on: bool) {
    BOOSTING.store(on, Ordering::Relaxed);
}

/// Whether hits on `insn` may take the boosted path. Never for an
/// instruction with an exception fix-up: a fault in a boosted copy runs
/// with no step state to map it back, and the fix-up would be missed.
fn may_boost(insn: &Insn, probes: &[Arc<Kprobe>]) -> bool {
    BOOSTING.load(Ordering::Relaxed)
        && insn.boostable()
        && !text::has_fixup(TextAddr(insn.addr))
        && probes.iter().all(|p| !p.handler.has_post())
}

/// The site at `addr`. A hand-written search: the trap path must not call
/// generic library code that could itself carry a probe.
fn find_site(addr: u64) -> Option<Arc<Site>> {
    site_in(&SITES.read(), addr).cloned()
}

/// The site at `addr` in the published table `sites` (sorted by address).
fn site_in(sites: &[Arc<Site>], addr: u64) -> Option<&Arc<Site>> {
    let (mut lo, mut hi) = (0usize, sites.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let s = sites.get(mid)?;
        if s.addr == addr {
            return Some(s);
        }
        if s.addr < addr {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    None
}

/// Replace the published table, interrupts off while the write lock is
/// held; the old table is dropped by the caller, outside the lock.
fn publish(new: Vec<Arc<Site>>) -> Vec<Arc<Site>> {
    let was = crate::arch::irq_save();
    let old = {
        let mut w = SITES.write();
        core::mem::replace(&mut *w, new)
    };
    crate::arch::irq_restore(was);
    old
}

/// Check an address: text, symbol, blacklist, boundary, instruction.
pub fn check_address(addr: TextAddr) -> Result<Insn, Refusal> {
    let addr = addr.get();
    if !crate::mm::is_kernel_text(addr) {
        return Err(Refusal::NotText { addr });
    }
    let sym = crate::ksyms::lookup(addr);
    blacklist::check(addr, sym.as_ref().map(|(s, _)| s.name))?;
    let Some((sym, _)) = sym else {
        return Err(Refusal::NoSymbol { addr });
    };
    let size = sym.size.min(1 << 20) as usize;
    let mut code = alloc::vec![0u8; size];
    // As compiled: an `int3` or `jmp` planted by another claim would shift
    // the decoding (a probe one byte after a probed instruction start
    // looked like a boundary) or hide valid boundaries after it.
    if text::read_original(TextAddr(sym.addr), &mut code).is_err() {
        return Err(Refusal::NotText { addr });
    }
    insn::check_boundary(&code, sym.addr, addr)?;
    let off = (addr - sym.addr) as usize;
    let end = (off + insn::MAX_INSN_LEN).min(code.len());
    let decoded = insn::analyze(&code[off..end], addr)?;
    text::check_free(TextAddr(addr), decoded.len)?;
    Ok(decoded)
}

fn alloc_slot() -> Option<Arc<Slot>> {
    if let Some(a) = FREE_SLOTS.lock().pop() {
        return Some(Arc::new(Slot { addr: a }));
    }
    let page = text_patch::alloc_exec_page()?;
    let mut free = FREE_SLOTS.lock();
    for i in (1..4096 / insn::SLOT_SIZE as u64).rev() {
        free.push(page + i * insn::SLOT_SIZE as u64);
    }
    drop(free);
    Some(Arc::new(Slot { addr: page }))
}

/// Register `handler` at `addr`.
pub fn register(at: TextAddr, handler: Arc<dyn KprobeHandler>) -> Result<Arc<Kprobe>, KprobeError> {
    init();
    let addr = at.get();
    let _reg = REGISTRY.lock();
    // A probe inside the range an optimised neighbour's jump replaces:
    // that neighbour goes back to its `int3` first (Linux does the same).
    let covering: Vec<(u64, u8)> = SITES
        .read()
        .iter()
        .filter_map(|s| s.opt.as_ref().map(|o| (s.addr, o.plan.len)))
        .filter(|&(a, len)| addr > a && addr < a + u64::from(len))
        .collect();
    for (a, len) in covering {
        unoptimise(
            a,
            format!("the probe at {addr:#x} is inside the {len} {INSIDE}"),
        );
    }
    let existing = find_site(addr);
    let probe = Arc::new(Kprobe {
        id: next_id(),
        addr: at,
        handler,
        hits: PerCpuCounter::new(),
        missed: AtomicU64::new(0),
        boosted_hits: AtomicU64::new(0),
    });
    let site = match &existing {
        Some(s) => {
            let mut probes = s.probes.clone();
            probes.push(probe.clone());
            let boost = may_boost(&s.insn, &probes);
            Site {
                addr,
                insn: s.insn,
                slot: s.slot.clone(),
                probes,
                boost,
                opt: s.opt.clone(),
                why_not: s.why_not.clone(),
            }
        }
        None => {
            let decoded = check_address(at)?;
            let slot = if decoded.needs_slot() {
                let slot = alloc_slot().ok_or(KprobeError::OutOfMemory)?;
                let code = insn::build_slot(&decoded, slot.addr)?;
                text::write_slot(TextAddr(slot.addr), &code)?;
                Some(slot)
            } else {
                None
            };
            let boost = may_boost(&decoded, core::slice::from_ref(&probe));
            Site {
                addr,
                insn: decoded,
                slot,
                probes: alloc::vec![probe.clone()],
                boost,
                opt: None,
                why_not: Some(String::from("not tried yet")),
            }
        }
    };
    let site = Arc::new(site);
    let site_insn = site.insn;
    let mut table: Vec<Arc<Site>> = SITES.read().clone();
    match table.binary_search_by_key(&addr, |s| s.addr) {
        Ok(i) => table[i] = site,
        Err(i) => table.insert(i, site),
    }
    let old = publish(table);
    drop(old);
    if existing.is_none() {
        // Published first: a CPU hitting the int3 finds its site.
        if let Err(e) = text::arm_breakpoint(&site_insn) {
            let mut table: Vec<Arc<Site>> = SITES.read().clone();
            table.retain(|s| s.addr != addr);
            drop(publish(table));
            return Err(e.into());
        }
    }
    refresh_optimisation(addr);
    Ok(probe)
}

/// Register at `offset` bytes into the function with this demangled path.
pub fn register_symbol(
    name: &str,
    offset: u64,
    handler: Arc<dyn KprobeHandler>,
) -> Result<Arc<Kprobe>, KprobeError> {
    let addr = resolve(name, offset)?;
    register(addr, handler)
}

/// The address of `name + offset`.
pub fn resolve(name: &str, offset: u64) -> Result<TextAddr, KprobeError> {
    let sym =
        crate::ksyms::find(name).ok_or_else(|| KprobeError::UnknownSymbol(String::from(name)))?;
    if offset >= u64::from(sym.size.max(1)) {
        return Err(KprobeError::OffsetOutOfRange {
            name: String::from(name),
            offset,
            size: u64::from(sym.size),
        });
    }
    Ok(TextAddr(sym.addr + offset))
}

/// Unregister a probe by id: restore the byte (if it was the last probe at
/// its address), unpublish, and wait for a grace period, after which no
/// CPU runs its handler or its slot.
pub fn unregister(id: u32) -> Result<(), KprobeError> {
    let _reg = REGISTRY.lock();
    unregister_locked(id)
}

fn unregister_locked(id: u32) -> Result<(), KprobeError> {
    let table: Vec<Arc<Site>> = SITES.read().clone();
    let idx = table
        .iter()
        .position(|s| s.probes.iter().any(|p| p.id == id))
        .ok_or(KprobeError::NotFound(id))?;
    let site = table[idx].clone();
    let mut table = table;
    if site.probes.len() == 1 {
        if site.opt.is_some() {
            // Back to the plain `int3` first; its detour is freed once no
            // CPU can be inside.
            drop(site);
            unoptimise(table[idx].addr, String::from("being removed"));
            return unregister_locked(id);
        }
        // Restore first: from now on no new hit can start.
        text::disarm_breakpoint(TextAddr(site.addr))?;
        table.remove(idx);
    } else {
        let probes: Vec<Arc<Kprobe>> = site.probes.iter().filter(|p| p.id != id).cloned().collect();
        let boost = may_boost(&site.insn, &probes);
        table[idx] = Arc::new(Site {
            addr: site.addr,
            insn: site.insn,
            slot: site.slot.clone(),
            probes,
            boost,
            opt: site.opt.clone(),
            why_not: site.why_not.clone(),
        });
    }
    drop(publish(table));
    super::grace_period();
    drop(site);
    // Neighbours that gave way to a probe inside their range may be
    // optimised again (Linux re-optimises them too).
    let waiting: Vec<u64> = SITES
        .read()
        .iter()
        .filter(|s| {
            s.opt.is_none()
                && s.why_not
                    .as_deref()
                    .is_some_and(|w| w.contains(INSIDE) || w.contains(KPROBE_CLAIM))
        })
        .map(|s| s.addr)
        .collect();
    for a in waiting {
        optimise(a);
    }
    Ok(())
}

/// The end of the reason a site gave way to a probe inside its range.
const INSIDE: &str = "bytes its jump would replace";
/// The end of the reason a site could not claim its range from a probe.
const KPROBE_CLAIM: &str = "which a kprobe already patches";

/// All registered kprobes, by address then registration order.
pub fn probes() -> Vec<Arc<Kprobe>> {
    SITES
        .read()
        .iter()
        .flat_map(|s| s.probes.iter().cloned())
        .collect()
}

/// A probe by id.
pub fn get(id: u32) -> Option<Arc<Kprobe>> {
    SITES
        .read()
        .iter()
        .flat_map(|s| s.probes.iter())
        .find(|p| p.id == id)
        .cloned()
}

/// How the site at `addr` runs, and why it is not jump-optimised.
pub fn site_mode(addr: TextAddr) -> Option<(Mode, Option<String>)> {
    find_site(addr.get()).map(|s| {
        let mode = if s.opt.is_some() {
            Mode::Optimised
        } else if s.boost {
            Mode::Boosted
        } else {
            Mode::Int3
        };
        (mode, s.why_not.clone())
    })
}

/// Replaces the published site at `addr` by `f(site)`; returns the old one.
fn republish(addr: u64, f: impl FnOnce(&Site) -> Site) -> Option<Arc<Site>> {
    let mut table: Vec<Arc<Site>> = SITES.read().clone();
    let i = table.iter().position(|s| s.addr == addr)?;
    let old = table[i].clone();
    table[i] = Arc::new(f(&old));
    drop(publish(table));
    Some(old)
}

fn with_opt(s: &Site, opt: Option<Arc<Optimised>>, why_not: Option<String>) -> Site {
    Site {
        addr: s.addr,
        insn: s.insn,
        slot: s.slot.clone(),
        probes: s.probes.clone(),
        boost: s.boost,
        opt,
        why_not,
    }
}

/// Optimises the site at `addr` if it may be, or un-optimises it if it no
/// longer may (a post handler came). Registry lock held.
fn refresh_optimisation(addr: u64) {
    let Some(site) = find_site(addr) else { return };
    let has_post = site.probes.iter().any(|p| p.handler.has_post());
    match (&site.opt, has_post) {
        (Some(_), true) => {
            drop(site);
            unoptimise(addr, String::from(POST_HANDLER));
        }
        (Some(_), false) => {}
        (None, _) => {
            drop(site);
            optimise(addr);
        }
    }
}

const POST_HANDLER: &str = "a handler has a post handler (it needs the single-step trap)";

/// Why the site may not be optimised, or the plan and the range's bytes.
fn check_optimisable(site: &Site) -> Result<(opt::Plan, [u8; 2 * insn::MAX_INSN_LEN]), String> {
    if !optprobe::enabled() {
        return Err(String::from(
            "optimisation is off (`ktrace probe optimise on` turns it on)",
        ));
    }
    if site.probes.iter().any(|p| p.handler.has_post()) {
        return Err(String::from(POST_HANDLER));
    }
    let addr = site.addr;
    let Some((sym, _)) = crate::ksyms::lookup(addr) else {
        return Err(String::from("no symbol covers the address"));
    };
    let mut code = alloc::vec![0u8; sym.size.min(1 << 20) as usize];
    text::read_original(TextAddr(sym.addr), &mut code)
        .map_err(|_| String::from("the function's text cannot be read"))?;
    let has_fixup = |a: u64| text::has_fixup(TextAddr(a));
    let plan = opt::plan(&code, sym.addr, addr, &has_fixup).map_err(|e| e.to_string())?;
    if let Some(insn) = trap::fixup_landing_in(addr + 1, plan.end()) {
        return Err(format!(
            "the exception fix-up of the instruction at {insn:#x} lands inside the {} bytes",
            plan.len
        ));
    }
    let first = plan.first_len();
    if plan.len > first {
        text::check_free(TextAddr(addr + u64::from(first)), plan.len - first)
            .map_err(|r| r.to_string())?;
    }
    if usize::from(plan.len) > 2 * insn::MAX_INSN_LEN {
        return Err(String::from("the range is too long"));
    }
    let mut original = [0u8; 2 * insn::MAX_INSN_LEN];
    let off = (addr - sym.addr) as usize;
    original[..usize::from(plan.len)].copy_from_slice(&code[off..off + usize::from(plan.len)]);
    Ok((plan, original))
}

/// Tries to replace the site's `int3` by a jump to a detour (the steps and
/// why they are safe: `optprobe`'s module docs). On refusal the site
/// records why. Registry lock held.
fn optimise(addr: u64) {
    let Some(site) = find_site(addr) else { return };
    if site.opt.is_some() {
        return;
    }
    let (plan, original) = match check_optimisable(&site) {
        Ok(p) => p,
        Err(why) => {
            drop(site);
            republish(addr, |s| with_opt(s, None, Some(why)));
            return;
        }
    };
    drop(site);
    let fail = |why: &str| {
        republish(addr, |s| with_opt(s, None, Some(String::from(why))));
    };
    let Some(detour) = optprobe::Detour::new((addr + 1, plan.end())) else {
        return fail("no memory or no table entry for a detour");
    };
    let handler = on_detour as extern "C" fn(&mut PtRegs, u64) as usize as u64;
    let code = match opt::build_detour(&plan, detour.addr(), handler) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    if text::write_slot(TextAddr(detour.addr()), &code).is_err() {
        return fail("the detour could not be written");
    }
    let Some(jmp) = opt::jmp_bytes(addr, detour.addr()) else {
        return fail("the detour is out of rel32 reach");
    };
    let opt = Arc::new(Optimised {
        detour,
        plan,
        original,
    });
    // Step 1: `int3` hits go through the detour's copy from now on.
    republish(addr, |s| with_opt(s, Some(opt.clone()), None));
    // Steps 2-5 (the detour made the range no-preempt).
    let why = if !optprobe::wait_until_outside(&[(addr + 1, plan.end())]) {
        "a task stayed inside the bytes the jump would replace"
    } else {
        match text::install_jump(TextAddr(addr), plan.first_len(), opt.original(), &jmp) {
            Ok(()) => return,
            Err(_) => "the jump could not be written",
        }
    };
    republish(addr, |s| with_opt(s, None, Some(String::from(why))));
    retire(opt);
}

/// Waits until no CPU can be in the detour (unpublished, its jump gone),
/// then lets it go.
fn retire(opt: Arc<Optimised>) {
    if optprobe::wait_until_outside(&[opt.detour.range()]) {
        drop(opt);
    } else {
        // Never reused: a CPU stayed inside (it cannot, but freeing under
        // it would be worse than a leak).
        core::mem::forget(opt);
    }
}

/// Puts the site's `int3` back in place of its jump and records `why`.
/// Registry lock held.
fn unoptimise(addr: u64, why: String) {
    let Some(site) = find_site(addr) else { return };
    let Some(opt) = site.opt.clone() else {
        return;
    };
    drop(site);
    // The site still names the detour: a CPU trapping on the `int3`
    // meanwhile goes through it.
    if text::remove_jump(TextAddr(addr), opt.plan.first_len(), opt.original()).is_err() {
        republish(addr, |s| {
            with_opt(
                s,
                s.opt.clone(),
                Some(String::from("the jump could not be removed")),
            )
        });
        return;
    }
    republish(addr, |s| with_opt(s, None, Some(why)));
    retire(opt);
}

/// Turns jump optimisation on or off kernel-wide, (un)optimising every
/// site now; returns how many sites are optimised afterwards.
pub fn set_optimisation(on: bool) -> usize {
    let _reg = REGISTRY.lock();
    optprobe::set_enabled(on);
    let addrs: Vec<u64> = SITES.read().iter().map(|s| s.addr).collect();
    for a in addrs {
        if on {
            optimise(a);
        } else {
            unoptimise(
                a,
                String::from("optimisation is off (`ktrace probe optimise on` turns it on)"),
            );
            republish(a, |s| {
                with_opt(
                    s,
                    None,
                    Some(String::from(
                        "optimisation is off (`ktrace probe optimise on` turns it on)",
                    )),
                )
            });
        }
    }
    SITES.read().iter().filter(|s| s.opt.is_some()).count()
}

/// Sites jump-optimised now.
pub fn optimised_count() -> usize {
    SITES.read().iter().filter(|s| s.opt.is_some()).count()
}

/// Whether jump optimisation is on.
pub fn optimisation() -> bool {
    optprobe::enabled()
}

/// Called by a detour (`ktrace_kprobe::opt::build_detour`) with the
/// frame it built (interrupts off) and its own address: runs the
/// site's handlers as the `int3` handler does, then says in the frame
/// where the detour continues (see `ktrace_kprobe::opt`).
extern "C" fn on_detour(regs: &mut PtRegs, detour: u64) {
    // This frame is the innermost "trap" of this CPU: a kretprobe entry
    // handler rewrites the return address through it
    // (`trap::write_interrupted_stack`), as on the `int3` path.
    //
    // A plain load and store: interrupts are off, and an NMI in between
    // puts back the value it found before it returns.
    //
    // `gs`-relative: no CPU number and table index on every hit.
    let outer = crate::percpu::trap_frame();
    crate::percpu::set_trap_frame(core::ptr::from_mut(regs) as u64);
    let addr = regs.rip;
    {
        // The handlers run under the table's read lock, with no `Arc`
        // taken (the `int3` path needs one, to keep the site across the
        // single-step): see `SITES`.
        let sites = SITES.read();
        if let Some(site) = site_in(&sites, addr) {
            run_pre(site, regs);
        }
    }
    let interrupts_on = regs.eflags & rflags::IF != 0;
    regs.eflags &= !rflags::IF;
    if regs.rip != addr {
        // A handler moved RIP: the instructions are skipped, as with int3.
        if interrupts_on {
            regs.orig_rax = regs.rip;
            regs.rip = detour + CONT_REDIRECT_STI as u64;
        }
    } else {
        regs.rip = detour
            + if interrupts_on {
                CONT_COPY_STI
            } else {
                CONT_COPY
            } as u64;
    }
    crate::percpu::set_trap_frame(outer);
}

/// The site lookup and recursion guard a detour's hit at `addr` goes
/// through before its handlers (self test `hit_cost` times it); whether a site is
/// there.
#[cfg(feature = "self-tests")]
pub fn lookup_and_guard(addr: u64) -> bool {
    let sites = SITES.read();
    let site = site_in(&sites, addr);
    let guard = DepthGuard::enter();
    core::hint::black_box(&guard);
    site.is_some() && guard.is_some()
}

/// Breakpoints that found no site (raced with an unregister).
#[allow(dead_code)] // diagnostics API
pub fn spurious_hits() -> u64 {
    SPURIOUS.load(Ordering::Relaxed)
}

/// Recursion guard: `Some` when no probe handler runs on this CPU.
pub(crate) struct DepthGuard;

impl DepthGuard {
    /// Callers run with interrupts off, so only this CPU changes its
    /// depth, and a nested context (an NMI) restores what it changed before
    /// the outer one resumes: one unlocked `xadd` is exact
    /// (`arch::cpu::gs_fetch_add_u32`), and cheaper than a locked one;
    /// `gs`-relative (`percpu::probe_depth_add`), so no CPU number is read
    /// and no table indexed on the way in or out.
    #[inline]
    pub(crate) fn enter() -> Option<Self> {
        if crate::percpu::probe_depth_add(1) != 0 {
            crate::percpu::probe_depth_add(u32::MAX);
            return None;
        }
        Some(DepthGuard)
    }

    /// Runs the `missed` callouts for a hit the guard refused, unless such
    /// callouts already run on this CPU: a probe placed on a `missed`
    /// handler would otherwise hit inside its own callout, be refused,
    /// call it again, and recurse until the stack overflows. That inner
    /// hit still counts in its probe's own `missed`.
    ///
    /// Interrupts stay off meanwhile, so the flag is never carried into
    /// another task or an interrupt handler's own misses.
    pub(crate) fn report_miss(callouts: impl FnOnce()) {
        let was = crate::arch::irq_save();
        let running = &this_cpu().miss_callout;
        if !running.swap(true, Ordering::Acquire) {
            callouts();
            running.store(false, Ordering::Release);
        }
        crate::arch::irq_restore(was);
    }
}

impl Drop for DepthGuard {
    #[inline]
    fn drop(&mut self) {
        crate::percpu::probe_depth_add(u32::MAX);
    }
}

fn on_int3(regs: &mut PtRegs, _vector: u8) -> bool {
    // The temporary `int3` of a static-key patch in progress first.
    if text::on_patch_int3(regs) {
        return true;
    }
    let addr = regs.rip.wrapping_sub(1);
    let Some(site) = find_site(addr) else {
        // Not ours, unless our breakpoint was removed between the trap and
        // the lookup: then re-run the restored instruction. A lookup that
        // missed the site saw its unpublish, which was stored after the
        // byte's restore; x86 shows stores in order and keeps loads in
        // order, so this read sees the restored byte: a restore seen late
        // cannot turn our own trap into a foreign (fatal) one. (With the
        // sync between restore and unpublish, a CPU in this handler, which
        // runs with interrupts off, even delays the unpublish until it has
        // left, so today only a trap on a foreign `int3` gets here.)
        if text_patch::read_byte(addr).is_some_and(|b| b != insn::INT3) {
            SPURIOUS.fetch_add(1, Ordering::Relaxed);
            regs.rip = addr;
            return true;
        }
        return false;
    };
    regs.rip = addr;
    // Asked only here: a detour's probes have no post handler (`optimise`
    // refuses them), and the question is a call per probe.
    let run_post = run_pre(&site, regs) && site.probes.iter().any(|p| p.handler.has_post());
    if regs.rip != addr {
        // A pre handler redirected execution: skip the instruction.
        return true;
    }
    execute(site, regs, run_post);
    true
}

/// Runs the site's pre handlers (or counts a miss); whether they ran.
/// Inlined into its two callers, the detour's and the `int3` handler's:
/// a call less, with its saves and restores, on every hit.
#[inline(always)]
fn run_pre(site: &Site, regs: &mut PtRegs) -> bool {
    match DepthGuard::enter() {
        Some(_g) => {
            for p in &site.probes {
                p.hits.add(1);
                p.handler.pre(regs);
            }
            true
        }
        None => {
            for p in &site.probes {
                p.missed.fetch_add(1, Ordering::Relaxed);
            }
            DepthGuard::report_miss(|| {
                for p in &site.probes {
                    p.handler.missed();
                }
            });
            false
        }
    }
}

/// Run the probed instruction after the pre handlers.
fn execute(site: Arc<Site>, regs: &mut PtRegs, run_post: bool) {
    if let Some(opt) = &site.opt {
        // Being optimised or un-optimised: bytes 1.. of the range may be
        // the jump's; the detour's copy runs the whole range (IF clear,
        // `sti` on the way out for a caller that had it set).
        let interrupts_on = regs.eflags & rflags::IF != 0;
        regs.rip = opt.detour.addr()
            + if interrupts_on {
                CONT_COPY_STI
            } else {
                CONT_COPY
            } as u64;
        regs.eflags &= !rflags::IF;
        return;
    }
    if let Some(e) = insn::emulate(&site.insn, regs.eflags, regs.rcx) {
        if let Some(ret) = e.push {
            let sp = regs.rsp.wrapping_sub(8);
            if trap::write_interrupted_stack(regs, sp, ret).is_err() {
                // Cannot happen on a kernel stack; leave the breakpoint
                // trap to the fatal path rather than corrupt anything.
                crate::panic::fatal_exception(regs, 3);
            }
            regs.rsp = sp;
        }
        if let Some(rcx) = e.rcx {
            regs.rcx = rcx;
        }
        regs.rip = e.rip;
        if run_post {
            run_posts(&site, regs);
        }
        return;
    }
    let Some(slot) = site.slot.as_ref().map(|s| s.addr) else {
        return;
    };
    let interrupts_on = regs.eflags & rflags::IF != 0;
    if site.boost && !run_post {
        for p in &site.probes {
            p.boosted_hits.fetch_add(1, Ordering::Relaxed);
        }
        regs.rip = if interrupts_on {
            slot + insn::SLOT_STI_OFFSET as u64
        } else {
            slot
        };
        regs.eflags &= !rflags::IF;
        return;
    }
    let orig_flags = regs.eflags;
    regs.eflags = (regs.eflags | rflags::TF) & !rflags::IF;
    regs.rip = slot;
    // IF stays clear until the debug trap: the grace period covers the step.
    *this_step().lock() = Some(StepState {
        site,
        slot,
        orig_flags,
        run_post,
    });
}

fn run_posts(site: &Site, regs: &mut PtRegs) {
    if let Some(_g) = DepthGuard::enter() {
        for p in &site.probes {
            if p.handler.has_post() {
                p.handler.post(regs);
            }
        }
    }
}

fn on_debug(regs: &mut PtRegs, _vector: u8) -> bool {
    let Some(st) = this_step().lock().take() else {
        return false;
    };
    let Exec::Step(step) = st.site.insn.exec else {
        return false;
    };
    let Some(rip) = step.resume_rip(st.site.addr, st.site.insn.len, st.slot, regs.rip) else {
        // A `rep` iteration ended inside the slot: keep stepping.
        regs.eflags |= rflags::TF;
        *this_step().lock() = Some(st);
        return true;
    };
    regs.rip = rip;
    if step.fixup == StepFixup::IndirectCall {
        let pushed = st.slot + u64::from(st.site.insn.len);
        if text_patch::read_u64(regs.rsp) == Some(pushed) {
            let _ = trap::write_interrupted_stack(regs, regs.rsp, st.site.insn.next());
        }
    }
    let keep = rflags::TF | rflags::IF;
    regs.eflags = (regs.eflags & !keep) | (st.orig_flags & keep);
    if st.run_post {
        run_posts(&st.site, regs);
    }
    true
}

/// An exception raised by an instruction the engine runs out of line.
///
/// While a copy is single-stepped (the step state names its slot), RIP is
/// moved back to the original instruction and the interrupted context's
/// flags restored, as if the fault had happened there without the probe;
/// the step ends (its post handlers are skipped). Returning `false` lets
/// the trap dispatch go on as for any exception: the fix-up table (which
/// knows only original addresses) or the fatal report, which then names
/// the original address. A fault in a boosted copy, which has no step
/// state, is mapped back for the report only: instructions with a fix-up
/// are never boosted ([`may_boost`]).
fn on_slot_fault(regs: &mut PtRegs, _vector: u8) -> bool {
    let stepping = {
        let mut step = this_step().lock();
        match step.as_ref() {
            Some(st) if (st.slot..st.slot + insn::SLOT_SIZE as u64).contains(&regs.rip) => {
                step.take()
            }
            _ => None,
        }
    };
    if let Some(st) = stepping {
        regs.rip = st.site.addr;
        let keep = rflags::TF | rflags::IF;
        regs.eflags = (regs.eflags & !keep) | (st.orig_flags & keep);
        return false;
    }
    let sites = SITES.read();
    let mut i = 0;
    while let Some(site) = sites.get(i) {
        if let Some(slot) = &site.slot {
            if (slot.addr..slot.addr + insn::SLOT_SIZE as u64).contains(&regs.rip) {
                regs.rip = site.addr;
                break;
            }
        }
        i += 1;
    }
    false
}

/// The kprobe blacklist of this kernel.
pub mod blacklist {
    use super::*;
    use ktrace_kprobe::blacklist::{Prefix, Range};

    /// Symbol prefixes that must never trap, with reasons.
    pub const PREFIXES: &[Prefix] = &[
        Prefix {
            prefix: "kernel::trace::kprobe::",
            reason: "the kprobe engine",
        },
        Prefix {
            prefix: "kernel::trace::optprobe::",
            reason: "the kprobe engine (optimised probes; runs on every interrupt)",
        },
        Prefix {
            prefix: "kernel::trace::kretprobe::",
            reason: "the kretprobe engine",
        },
        Prefix {
            prefix: "ktrace_kprobe::",
            reason: "the kprobe engine (instruction analysis)",
        },
        Prefix {
            prefix: "kernel::arch::imp::text_patch::",
            reason: "text patching",
        },
        Prefix {
            prefix: "kernel::trace::perf::",
            reason:
                "perf sampling (runs in an NMI: a trap there would unblock NMIs on the NMI stack)",
        },
        Prefix {
            prefix: "ktrace_sample_ring::",
            reason: "perf sampling (the NMI handler's ring)",
        },
        Prefix {
            prefix: "kernel::arch::imp::apic::",
            reason: "the interrupt controller (the NMI sampler's self-IPI)",
        },
        Prefix {
            prefix: "kernel::arch::imp::smp_sync::",
            reason: "text patching (the sync of every CPU between writes)",
        },
        Prefix {
            prefix: "kernel::arch::imp::smp::",
            reason: "IPIs and TLB shootdown (the sync of every CPU; NMI handlers)",
        },
        Prefix {
            prefix: "kernel::trace::text::",
            reason: "text patching (the owner of kernel text)",
        },
        Prefix {
            prefix: "kernel::arch::imp::trap::",
            reason: "exception dispatch",
        },
        Prefix {
            prefix: "kernel::arch::imp::paging::",
            reason: "text patching (page tables)",
        },
        Prefix {
            prefix: "kernel::arch::imp::cpu::",
            reason: "interrupt flag and CPU primitives used by trap handlers",
        },
        Prefix {
            prefix: "kernel::arch::imp::serial::",
            reason: "the console used by panic",
        },
        Prefix {
            prefix: "kernel::console::",
            reason: "the console used by panic",
        },
        Prefix {
            prefix: "kernel::panic::",
            reason: "the panic path",
        },
        Prefix {
            prefix: "kernel::sync::",
            reason: "locks taken by trap handlers",
        },
        Prefix {
            prefix: "kernel::percpu::",
            reason: "per-CPU data used by the recursion guard",
        },
        Prefix {
            prefix: "spin::",
            reason: "locks taken by trap handlers",
        },
        Prefix {
            prefix: "iced_x86::",
            reason: "the kprobe engine (decoder)",
        },
        Prefix {
            prefix: "rust_begin_unwind",
            reason: "the panic path",
        },
    ];

    /// Address ranges that must never trap: the whole `.text.entry`
    /// section (interrupt and exception entry, context switch, the
    /// kretprobe trampoline), bounded by the linker script's symbols so
    /// that anything placed there is covered whether or not it has a
    /// sized symbol, and every function named in the `.nokprobe` section.
    pub fn ranges() -> Vec<Range> {
        let core::ops::Range { start, end } = crate::arch::sections::entry_text();
        let mut out = alloc::vec![Range {
            start,
            end,
            reason: "interrupt entry, context switch and the kretprobe trampoline (.text.entry)"
        }];
        for addr in nokprobe_addrs() {
            let (s, e) = match crate::ksyms::lookup(addr) {
                Some((sym, _)) => (sym.addr, sym.addr + u64::from(sym.size.max(1))),
                None => (addr, addr + 1),
            };
            out.push(Range {
                start: s,
                end: e,
                reason: "marked NOKPROBE (.nokprobe section)",
            });
        }
        out
    }

    fn nokprobe_addrs() -> Vec<u64> {
        crate::arch::sections::nokprobe_table()
            .step_by(8)
            .filter_map(|a| {
                let mut b = [0u8; 8];
                trap::copy_from_kernel_nofault(&mut b, a).ok()?;
                Some(u64::from_le_bytes(b))
            })
            .collect()
    }

    /// Check one address.
    pub fn check(addr: u64, symbol: Option<&str>) -> Result<(), Refusal> {
        ktrace_kprobe::blacklist::check(addr, symbol, &ranges(), PREFIXES)
    }
}

/// Describe a probe for listings.
pub fn describe(at: TextAddr) -> (String, u64) {
    let addr = at.get();
    match crate::ksyms::lookup(addr) {
        Some((s, off)) => (String::from(s.name), off),
        None => (format!("{addr:#x}"), 0),
    }
}
