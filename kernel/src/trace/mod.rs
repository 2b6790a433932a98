//! Attach points: kprobes, kretprobes, static tracepoints and perf events.
//!
//! This is what BPF programs (and native Rust handlers) attach to. Every
//! handler runs in trap or interrupt context with interrupts disabled, on
//! the interrupted task's stack, under a per-CPU recursion guard
//! (`percpu::this_cpu().probe_depth`): a probe hit while a handler of this
//! CPU runs is not handled, it increments the probe's `missed` count. No
//! global lock is held while a handler runs. Handlers must not sleep and
//! should not allocate.
//!
//! # Kprobes ([`kprobe`])
//! ```ignore
//! struct MyProbe;
//! impl kprobe::KprobeHandler for MyProbe {
//!     fn pre(&self, regs: &mut PtRegs) { /* regs.rdi = 1st argument */ }
//!     // Optional; a post handler disables boosting (the step traps).
//!     fn post(&self, regs: &mut PtRegs) {}
//!     fn has_post(&self) -> bool { false }
//! }
//! let probe = kprobe::register(addr, Arc::new(MyProbe))?;           // by address
//! let probe = kprobe::register_symbol("kernel::x::f", 0, handler)?; // by path + offset
//! probe.hits(); probe.missed(); probe.boosted();
//! kprobe::unregister(probe.id())?; // restores the byte, waits for handlers
//! ```
//! `pre` sees the registers before the probed instruction: at a function's
//! first instruction these are its arguments (Linux semantics). If `pre`
//! changes `regs.rip`, execution resumes there and the instruction is
//! skipped. Errors are [`kprobe::KprobeError`]; their `Display` names the
//! reason (blacklisted, not text, mid-instruction, refused instruction).
//!
//! # Kretprobes ([`kretprobe`])
//! ```ignore
//! impl kretprobe::KretprobeHandler for MyRet {
//!     // At entry; stash up to 4 words; return false to skip this call.
//!     fn entry(&self, regs: &PtRegs, data: &mut [u64; 4]) -> bool { true }
//!     // At return: regs.rax is the return value, regs.rip the caller.
//!     fn ret(&self, regs: &mut PtRegs, inst: &kretprobe::RetInstance) {}
//! }
//! let rp = kretprobe::register(func_addr, maxactive, Arc::new(MyRet))?;
//! kretprobe::unregister(rp.id())?;
//! ```
//! `RetInstance` carries the entry timestamp (`entry_ns`, `entry_tsc`),
//! the function address, the pid and the stashed words.
//!
//! # Tracepoints ([`tracepoint`])
//! Each record type of `ktrace-tracepoints` has a static
//! [`tracepoint::Tracepoint`] in [`points`] (`points::SCHED_SWITCH`,
//! `points::BLOCK_RQ_ISSUE`, ...). Emit at a call site with
//! ```ignore
//! crate::trace_event!(crate::trace::points::BLOCK_RQ_ISSUE, BlockRqIssue { sector, .. });
//! ```
//! The record expression is only evaluated when the tracepoint is enabled:
//! a disabled site is a 5-byte `nop` patched into a `jmp` when the first
//! handler attaches (a static key built with `asm goto`). Handlers:
//! ```ignore
//! impl tracepoint::TracepointHandler for H {
//!     fn event(&self, record: &[u8], regs: &PtRegs) {} // record = #[repr(C)] bytes
//! }
//! let id = tracepoint::attach("sched:sched_switch", Arc::new(H))?;
//! tracepoint::detach(id)?;
//! ```
//! `regs` holds the emitting function's rip/rsp/rbp (for stack walks).
//!
//! # Perf events ([`perf`])
//! `perf::open(&PerfEvent) -> Result<id>`, `enable`, `disable`, `read`,
//! `drain`, `close`. Sampling events also take handlers run on every
//! sample: `perf::attach(id, Arc<dyn perf::PerfHandler>)`, whose
//! `sample(&self, sample: &perf::Sample, regs: &PtRegs)` sees the
//! interrupted registers.

//! # Known limits
//! - One CPU today. Text patching writes through an alias with interrupts
//!   off, which is atomic for a 1-byte `int3` on any number of CPUs, but
//!   the 5-byte static-key rewrite is only safe while no other CPU can run
//!   the site (SMP needs Linux's `int3`-first three-step patch with a sync
//!   between steps). The single-step state and the sample ring are one
//!   static each; SMP makes them per-CPU.
//! - A task that exits inside a function carrying a return probe never
//!   returns through the trampoline: its instance stays claimed (one of
//!   `maxactive`).
//! - Kprobes are not jump-optimised: every hit is a trap (boosted hits
//!   skip the second one).

// `unsafe` lives in the hardware corner (arch, mm, drivers, task, sync,
// ksyms: see main.rs) behind safe interfaces; this subsystem uses those.
#![deny(unsafe_code)]

pub mod control;
pub mod kprobe;
pub mod kretprobe;
pub mod perf;
pub mod points;
pub mod text;
pub mod tracepoint;

/// Set up the trap handlers and tracepoint sites.
pub fn init() {
    kprobe::init();
    tracepoint::init();
}
