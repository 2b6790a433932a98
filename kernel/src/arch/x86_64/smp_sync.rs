//! Synchronising every CPU with the one that changed code or unpublished
//! data: the primitive under cross-CPU text patching (`trace::text`) and
//! the grace period of probe removal (`trace::grace_period`).
//!
//! [`sync_all_cpus`] returns once every online CPU has executed a
//! serialising instruction after the call began. On SMP this is an IPI to
//! every other online CPU whose handler serialises and acknowledges
//! (`arch::smp::sync_all_cpus`, which this name forwards to); with one CPU
//! online it serialises this CPU only.
//!
//! What callers rely on (and the SMP version must keep):
//! 1. **Serialised**: no CPU runs code it fetched or decoded before the
//!    call (cross-modifying code, Intel SDM vol. 3 §8.1.3).
//! 2. **Interrupt-off regions ended**: the IPI is a maskable interrupt, so
//!    a CPU takes it only with IF set. Every region a CPU was in with IF
//!    clear when the call began (a trap handler, a probe handler, a
//!    kprobe's single-step or boost slot) has ended before that CPU
//!    acknowledges. This is what makes a completed call a grace period.
//! 3. **Stores seen**: every store the caller made before the call is
//!    visible to each CPU before it acknowledges (the sender's stores
//!    precede the IPI; the handler reads the request the sender wrote
//!    after them).
//!
//! Call it with interrupts enabled and no [`SpinLock`](crate::sync::SpinLock)
//! held: a CPU spinning with interrupts off on a lock the caller holds, or
//! a second CPU syncing with interrupts off, would never acknowledge.

/// Returns once every online CPU has executed a serialising instruction
/// since the call (see the module docs for what that guarantees).
pub fn sync_all_cpus() {
    super::cpu::serialize();
    super::smp::sync_all_cpus();
}
