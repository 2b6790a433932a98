//! Static tracepoints with static keys.
//!
//! A tracepoint is a static [`Tracepoint`] (one per record type of
//! `ktrace-tracepoints`, see [`super::points`]). Code emits it with
//! [`trace_event!`](crate::trace_event):
//!
//! ```ignore
//! crate::trace_event!(crate::trace::points::SCHED_WAKEUP, SchedWakeup { pid, target_cpu: 0, comm });
//! ```
//!
//! Each call site is an `asm goto` block holding a 5-byte `nop`
//! (`0f 1f 44 00 00`) and an entry `(site, target, tracepoint)` in the
//! `.static_keys` section. While nobody is attached, the site falls
//! through the `nop`: the record is not even built. [`attach`] of the first
//! handler patches every site of that tracepoint into `jmp target`
//! (through the text-patching alias); [`detach`] of the last one patches
//! the `nop` back. Attachments are reference counted.
//!
//! Handlers get the record bytes (`#[repr(C)]`, no padding, layout from
//! `TracepointEvent::FIELDS`) and a [`PtRegs`] holding the emitting
//! function's return address, stack and frame pointer.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ktrace_kprobe::TextAddr;
use ktrace_tracepoints::{TracepointDesc, TracepointEvent};

use super::kprobe::DepthGuard;
use super::text;
use crate::arch::{text_patch, PtRegs};

/// A 5-byte `nop` (`nopl 0(%rax,%rax,1)`).
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// A tracepoint handler; runs in the emitting context with the recursion
/// guard held. It must not sleep.
pub trait TracepointHandler: Send + Sync {
    /// One event.
    fn event(&self, record: &[u8], regs: &PtRegs);
    /// A hit this handler did not see: it came while another probe's
    /// handler ran on this CPU (the recursion guard). Lets a handler count its own misses.
    fn missed(&self) {}
    /// A short name for listings.
    #[allow(dead_code)] // for the BPF runtime's listings
    fn kind(&self) -> &'static str {
        "native"
    }
}

/// One tracepoint.
pub struct Tracepoint {
    /// Its format.
    pub desc: TracepointDesc,
    refcount: AtomicU32,
    hits: AtomicU64,
    missed: AtomicU64,
    handlers: spin::RwLock<Vec<(u32, Arc<dyn TracepointHandler>)>>,
}

#[allow(dead_code)] // accessors for the BPF runtime and tools
impl Tracepoint {
    /// A disabled tracepoint for record type `E`.
    pub const fn new<E: TracepointEvent>() -> Self {
        Self {
            desc: ktrace_tracepoints::desc::<E>(),
            refcount: AtomicU32::new(0),
            hits: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            handlers: spin::RwLock::new(Vec::new()),
        }
    }
    /// Attachments holding it enabled.
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Ordering::Relaxed)
    }
    /// Events delivered while enabled.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    /// Events not delivered because of recursion.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
    /// `category:name`.
    pub fn full_name(&self) -> String {
        alloc::format!("{}:{}", self.desc.category, self.desc.name)
    }
}

/// Emit a tracepoint: `trace_event!(points::X, Record { .. })`. The record
/// is built only when the tracepoint is enabled.
#[macro_export]
macro_rules! trace_event {
    ($tp:path, $record:expr) => {{
        if $crate::static_branch!($tp) {
            $crate::trace::tracepoint::emit(&$tp, &$record);
        }
    }};
}

/// Deliver one event to the handlers (the slow path of an enabled site).
#[inline(never)]
pub fn emit<E: TracepointEvent>(tp: &Tracepoint, record: &E) {
    // SAFETY: `E` is a `#[repr(C)]` record of integers and byte arrays
    // declared by `ktrace_tracepoints::tracepoints!`, whose tests check it
    // has no padding, so all `size_of::<E>()` bytes are initialised.
    #[allow(unsafe_code)]
    let bytes = unsafe {
        core::slice::from_raw_parts(record as *const E as *const u8, core::mem::size_of::<E>())
    };
    emit_bytes(tp, bytes, crate::arch::cpu::frame_record());
}

/// `frame`: `emit`'s frame pointer, saved frame pointer and return address.
#[inline(never)]
fn emit_bytes(tp: &Tracepoint, bytes: &[u8], frame: (u64, u64, u64)) {
    let was = crate::arch::irq_save();
    let Some(_g) = DepthGuard::enter() else {
        tp.missed.fetch_add(1, Ordering::Relaxed);
        // `try_read`: a writer waiting on this CPU's interrupted reader
        // would never get in; then the handlers do not hear of the miss.
        if let Some(handlers) = tp.handlers.try_read() {
            DepthGuard::report_miss(|| {
                for (_, h) in handlers.iter() {
                    h.missed();
                }
            });
        }
        crate::arch::irq_restore(was);
        return;
    };
    // The emitting function's return address and frame, from `emit`'s
    // frame record [saved rbp, return address].
    let (caller_fp, saved_fp, ret) = frame;
    let regs = PtRegs {
        rbp: saved_fp,
        rip: ret,
        rsp: caller_fp + 16,
        cs: 0x08,
        ss: 0x10,
        eflags: if was { 0x202 } else { 0x2 },
        ..PtRegs::default()
    };
    // The per-tracepoint read lock is held while handlers run (no copy,
    // no allocation); writers only swap the vector under it.
    let handlers = tp.handlers.read();
    tp.hits.fetch_add(1, Ordering::Relaxed);
    for (_, h) in handlers.iter() {
        h.event(bytes, &regs);
    }
    drop(handlers);
    drop(_g);
    crate::arch::irq_restore(was);
}

/// One `.static_keys` entry.
#[repr(C)]
#[derive(Clone, Copy)]
struct KeyEntry {
    site: u64,
    target: u64,
    key: u64,
}

fn entries() -> Vec<KeyEntry> {
    let core::ops::Range { start, end } = crate::arch::sections::static_keys_table();
    let n = (end - start) / core::mem::size_of::<KeyEntry>() as u64;
    (0..n)
        .filter_map(|i| {
            let a = start + i * 24;
            Some(KeyEntry {
                site: text_patch::read_u64(a)?,
                target: text_patch::read_u64(a + 8)?,
                key: text_patch::read_u64(a + 16)?,
            })
        })
        .collect()
}

/// Call sites of `tp`: (site address, jump target).
pub fn sites(tp: &'static Tracepoint) -> Vec<(u64, u64)> {
    let key = tp as *const Tracepoint as u64;
    entries()
        .into_iter()
        .filter(|e| e.key == key)
        .map(|e| (e.site, e.target))
        .collect()
}

/// Current bytes at a call site (the self tests check the patching).
#[cfg(feature = "self-tests")]
pub fn site_bytes(site: u64) -> [u8; 5] {
    let mut b = [0u8; 5];
    let _ = crate::arch::trap::copy_from_kernel_nofault(&mut b, site);
    b
}

/// Switches every call site of `tp` through the owner of kernel text
/// (which claimed them all at boot, see [`init`]). Returns how many
/// changed.
fn patch_sites(tp: &'static Tracepoint, enable: bool) -> usize {
    sites(tp)
        .into_iter()
        .filter(|&(site, target)| {
            text::set_static_key(TextAddr(site), enable.then_some(TextAddr(target))).is_ok()
        })
        .count()
}

static NEXT_ATTACH: AtomicU32 = AtomicU32::new(1);
static ATTACH_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Why an attach failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TracepointError {
    /// No tracepoint with this name.
    Unknown(String),
    /// No attachment with this id.
    NotAttached(u32),
}

impl core::fmt::Display for TracepointError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TracepointError::Unknown(n) => write!(
                f,
                "no tracepoint named {n:?} (expected category:name, e.g. sched:sched_switch)"
            ),
            TracepointError::NotAttached(id) => write!(f, "no tracepoint attachment with id {id}"),
        }
    }
}

/// The tracepoint named `category:name` (or `category/name`).
pub fn find(name: &str) -> Option<&'static Tracepoint> {
    let (cat, n) = name.split_once(':').or_else(|| name.split_once('/'))?;
    super::points::ALL
        .iter()
        .copied()
        .find(|t| t.desc.category == cat && t.desc.name == n)
}

/// Attach a handler; enables the tracepoint on the first attachment.
/// Returns the attachment id.
pub fn attach(name: &str, handler: Arc<dyn TracepointHandler>) -> Result<u32, TracepointError> {
    let tp = find(name).ok_or_else(|| TracepointError::Unknown(String::from(name)))?;
    Ok(attach_to(tp, handler))
}

/// Attach a handler to a tracepoint.
#[must_use = "without its id the attachment can never be detached"]
pub fn attach_to(tp: &'static Tracepoint, handler: Arc<dyn TracepointHandler>) -> u32 {
    let _l = ATTACH_LOCK.lock();
    let id = NEXT_ATTACH.fetch_add(1, Ordering::Relaxed);
    let mut next = tp.handlers.read().clone();
    next.push((id, handler));
    swap_handlers(tp, next);
    if tp.refcount.fetch_add(1, Ordering::AcqRel) == 0 {
        patch_sites(tp, true);
    }
    id
}

fn swap_handlers(tp: &Tracepoint, next: Vec<(u32, Arc<dyn TracepointHandler>)>) {
    let was = crate::arch::irq_save();
    let old = core::mem::replace(&mut *tp.handlers.write(), next);
    crate::arch::irq_restore(was);
    drop(old);
}

/// Detach by attachment id; disables the tracepoint with the last one.
pub fn detach(id: u32) -> Result<(), TracepointError> {
    let _l = ATTACH_LOCK.lock();
    for tp in super::points::ALL.iter().copied() {
        let cur = tp.handlers.read().clone();
        if cur.iter().any(|(i, _)| *i == id) {
            if tp.refcount.fetch_sub(1, Ordering::AcqRel) == 1 {
                patch_sites(tp, false);
            }
            swap_handlers(tp, cur.into_iter().filter(|(i, _)| *i != id).collect());
            // Handlers run under the read lock the swap waited for; the
            // grace period also covers whatever they started (a BPF run).
            super::grace_period();
            return Ok(());
        }
    }
    Err(TracepointError::NotAttached(id))
}

/// Attachments of a tracepoint: (id, handler).
#[allow(dead_code)] // for the BPF runtime's link listings
pub fn attachments(tp: &Tracepoint) -> Vec<(u32, Arc<dyn TracepointHandler>)> {
    tp.handlers.read().clone()
}

/// Claims every call site from the owner of kernel text, so no kprobe can
/// plant an `int3` in a site that attaching rewrites (and no detach can
/// put a `nop` over a probe). A site whose bytes are not the expected
/// `nop` is left unclaimed and never patched.
pub fn init() {
    let mut bad = 0;
    for e in entries() {
        let Some(tp) = super::points::ALL
            .iter()
            .copied()
            .find(|t| core::ptr::eq(*t, e.key as *const Tracepoint))
        else {
            bad += 1;
            continue;
        };
        if text::claim_static_key(TextAddr(e.site), &NOP5, tp.desc.category, tp.desc.name).is_err()
        {
            bad += 1;
        }
    }
    if bad > 0 {
        log::warn!("{bad} tracepoint sites are not a 5-byte nop of a known tracepoint");
    }
    log::info!(
        "tracepoints: {} defined, {} call sites",
        super::points::ALL.len(),
        entries().len()
    );
}
