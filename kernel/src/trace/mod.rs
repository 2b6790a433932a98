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

//! # On several CPUs
//! - Kernel text changes while other CPUs run it: every write goes through
//!   [`text`], in the order of Linux's `text_poke_bp` (`int3` first, the
//!   tail, the first byte, every CPU synced after each write), and a CPU
//!   that traps on the temporary `int3` is emulated (see [`text`]).
//! - Removing a probe or detaching a handler waits for a [`grace_period`]
//!   before anything is freed: handlers and slots run with interrupts
//!   off, so once every CPU has taken an interrupt, none is still inside.
//! - Per CPU: the kprobe single-step state, the recursion guard
//!   (`percpu::PerCpu::probe_depth`), and the kretprobe pool's claims start
//!   in the CPU's own part of the pool.
//!
//! # Known limits
//! - A task that exits inside a function carrying a return probe never
//!   returns through the trampoline: its instance stays claimed (one of
//!   `maxactive`) until its stack is freed.
//! - A kprobe is jump-optimised only where `ktrace_kprobe::opt::plan`
//!   allows (no branch into its 5 bytes, no indirect `jmp` in its
//!   function, ...); elsewhere every hit is a trap (boosted hits skip the
//!   second one).
//! - The perf sampler keeps one sample ring for all CPUs.

// `unsafe` lives in the hardware corner (arch, mm, drivers, task, sync,
// ksyms: see main.rs) behind safe interfaces; this subsystem uses those.
#![deny(unsafe_code)]

pub mod control;
pub mod kprobe;
pub mod kretprobe;
pub mod optprobe;
pub mod perf;
pub mod points;
pub mod text;
pub mod tracepoint;

/// Waits until no CPU can still be in a probe or tracepoint handler, or
/// in a kprobe's single-step or boost slot, that it entered before the
/// call: call it after unpublishing a handler and before freeing what the
/// handler uses. All of those run with interrupts off (trap handlers
/// behind interrupt gates, tracepoint handlers under `irq_save`, slots
/// entered with IF clear), and a completed `sync_all_cpus` means every
/// other CPU took an interrupt since the call (the `synchronize_rcu` of
/// IRQ-off regions). Task context, interrupts on, no spinlock held.
pub fn grace_period() {
    crate::arch::smp_sync::sync_all_cpus();
}

/// Set up the trap handlers and tracepoint sites.
pub fn init() {
    kprobe::init();
    tracepoint::init();
}
