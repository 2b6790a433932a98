//! Several CPUs: starting the application processors (APs), and the
//! inter-processor interrupts the kernel sends them.
//!
//! * **Start-up.** The boot CPU finds the other CPUs in the ACPI MADT
//!   ([`super::acpi`]), copies the real-mode trampoline (`ap_boot.S`) to a
//!   free page below 1 MiB, and starts each AP with INIT, STARTUP,
//!   STARTUP, one at a time: the AP enters long mode on the kernel's page
//!   tables and its own stack, with its GS base on its `PerCpu`, and runs
//!   `crate::ap_main`, which counts it online. Without usable tables the
//!   kernel says why and runs on the boot CPU alone.
//! * **Reschedule** ([`RESCHEDULE_VECTOR`]): the scheduler put work on a
//!   CPU; its handler only asks for a switch on the way out of the
//!   interrupt.
//! * **Call function** ([`call_on_others`], [`call_on`]): run a function on
//!   other CPUs and wait until each has run it.
//! * **TLB shootdown** ([`flush_tlb_others`]): after a page-table change
//!   that removes or narrows a mapping, every other CPU drops the stale
//!   entry before the change counts as done. It is delivered as an NMI, so
//!   it reaches CPUs that spin with interrupts disabled (page tables are
//!   edited under interrupt-disabling locks).
//! * **Panic stop**: a panicking CPU stops the others with an NMI, so its
//!   report is the only thing on the console.

use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::{apic, cpu, paging};
use crate::percpu::{self, MAX_CPUS};

/// Vector of the reschedule IPI.
pub const RESCHEDULE_VECTOR: u8 = 0xf0;
/// Vector of the call-function IPI.
pub const CALL_FUNCTION_VECTOR: u8 = 0xf1;

/// Physical page the trampoline runs from, and its parameter page (both
/// fixed in `ap_boot.S`).
const TRAMPOLINE: u64 = 0x8000;
const PARAMS: u64 = 0x9000;

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The trampoline's code bytes (copied below 1 MiB).
fn trampoline_code() -> &'static [u8] {
    // SAFETY: the two symbols bracket the trampoline in read-only data
    // (ap_boot.S); the bytes live as long as the kernel.
    unsafe {
        let start = core::ptr::addr_of!(ap_trampoline_start);
        let end = core::ptr::addr_of!(ap_trampoline_end);
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// Writes `value` at physical `addr` of the parameter page.
fn write_param(offset: u64, value: u64) {
    // SAFETY: PARAMS is a RAM page below 1 MiB that `boot_aps` checked is
    // free, identity-mapped read+write; only the boot CPU writes it, while
    // no AP is reading (each AP reads it before counting itself online).
    unsafe { core::ptr::write_volatile((PARAMS + offset) as *mut u64, value) }
}

/// Busy-wait `us` microseconds of TSC time.
fn delay_us(us: u64) {
    let start = super::rdtsc();
    let ticks = crate::time::tsc_khz().max(1) * us / 1000;
    while super::rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// Start the application processors listed in the MADT. `stack_top`
/// gives a fresh stack for each (the AP's idle task runs on it);
/// `ap_entry` is where each AP enters Rust with its CPU number.
/// Returns the number of CPUs online.
pub fn boot_aps(stack_top: fn() -> Option<u64>, ap_entry: extern "C" fn(u64) -> !) -> u32 {
    let ids = match super::acpi::cpu_apic_ids(crate::mm::rsdp_paddr()) {
        Ok(ids) => ids,
        Err(why) => {
            log::warn!("smp: running on the boot CPU only: {why}");
            return 1;
        }
    };
    let bsp = apic::lapic_id();
    percpu::this_cpu().apic_id.store(bsp, Ordering::Relaxed);
    let aps: alloc::vec::Vec<u32> = ids.iter().copied().filter(|&id| id != bsp).collect();
    if aps.is_empty() {
        log::info!("smp: 1 CPU (APIC id {bsp})");
        return 1;
    }
    if !crate::mm::low_page_is_free(TRAMPOLINE) || !crate::mm::low_page_is_free(PARAMS) {
        log::warn!(
            "smp: running on the boot CPU only: pages {TRAMPOLINE:#x} and {PARAMS:#x} for the AP trampoline are not free RAM"
        );
        return 1;
    }
    let code = trampoline_code();
    // SAFETY: the page is free RAM below 1 MiB (checked above),
    // identity-mapped read+write; the trampoline fits in it.
    unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), TRAMPOLINE as *mut u8, code.len()) };
    // The AP runs the trampoline with the kernel's page tables on, so its
    // page is mapped read+execute (never writable and executable) while
    // APs start, and back to data after.
    if paging::map_page(
        TRAMPOLINE,
        TRAMPOLINE,
        paging::flags::TEXT,
        crate::mm::frame::alloc_zeroed,
    )
    .is_err()
    {
        log::warn!("smp: running on the boot CPU only: cannot map the trampoline");
        return 1;
    }
    write_param(0, cpu::cr3());
    write_param(16, ap_entry as usize as u64);
    let mut next = 1u32;
    for &apic_id in &aps {
        if next >= MAX_CPUS {
            log::warn!("smp: CPU with APIC id {apic_id} left out: the kernel handles at most {MAX_CPUS} CPUs");
            continue;
        }
        if apic_id > 0xff {
            log::warn!("smp: CPU with x2APIC id {apic_id} left out: the kernel drives the APIC in xAPIC mode");
            continue;
        }
        let Some(stack) = stack_top() else {
            log::warn!("smp: no memory for the stack of CPU {next}");
            break;
        };
        let Some(slot) = percpu::cpu(next) else { break };
        slot.apic_id.store(apic_id, Ordering::Relaxed);
        write_param(8, stack);
        write_param(24, u64::from(next));
        write_param(32, core::ptr::from_ref(slot) as u64);
        fence(Ordering::SeqCst);
        // INIT, then STARTUP twice (the second only if the first was
        // missed), as the MP start-up algorithm asks.
        apic::send_init(apic_id);
        delay_us(10_000);
        let page = (TRAMPOLINE >> 12) as u8;
        apic::send_startup(apic_id, page);
        if !wait_online(next, 1_000) {
            apic::send_startup(apic_id, page);
        }
        if !wait_online(next, 500_000) {
            log::warn!("smp: CPU {next} (APIC id {apic_id}) did not come up; going on without it");
            // It may still be running the trampoline: leave the pages be.
            return percpu::cpu_count();
        }
        next += 1;
    }
    if paging::map_page(
        TRAMPOLINE,
        TRAMPOLINE,
        paging::flags::DATA,
        crate::mm::frame::alloc_zeroed,
    )
    .is_err()
    {
        log::warn!("smp: cannot map the trampoline page back to data");
    }
    let n = percpu::cpu_count();
    log::info!("smp: {n} CPUs online (APIC ids {ids:?}, boot CPU {bsp})");
    n
}

fn wait_online(cpu: u32, us: u64) -> bool {
    let start = super::rdtsc();
    let ticks = crate::time::tsc_khz().max(1) * us / 1000;
    while percpu::cpu_count() <= cpu {
        if super::rdtsc().wrapping_sub(start) >= ticks {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// An AP's own CPU setup, run first thing on it: descriptor tables, the
/// shared IDT, its local APIC.
pub fn init_ap_cpu(cpu: u32) {
    super::gdt::init_ap(cpu);
    super::idt::load();
    apic::init_lapic();
}

/// Install the IPI handlers (boot CPU, before the APs start).
pub fn init() {
    super::trap::set_handler(RESCHEDULE_VECTOR, on_reschedule);
    super::trap::set_handler(CALL_FUNCTION_VECTOR, on_call_function);
}

fn on_reschedule(_regs: &mut super::PtRegs, _vector: u8) -> bool {
    percpu::this_cpu()
        .need_resched
        .store(true, Ordering::Relaxed);
    true
}

/// Ask CPU `cpu` to reschedule (no-op for this CPU: the caller is in the
/// scheduler already and sets its own flag).
pub fn send_reschedule(cpu: u32) {
    if cpu == percpu::cpu_id() {
        percpu::this_cpu()
            .need_resched
            .store(true, Ordering::Relaxed);
        return;
    }
    if let Some(c) = percpu::cpu(cpu).filter(|_| cpu < percpu::cpu_count()) {
        apic::send_ipi(c.apic_id.load(Ordering::Relaxed), RESCHEDULE_VECTOR);
    }
}

// ---- call function ------------------------------------------------------
//
// One request at a time: an initiator owns CALL_BUSY, stores the function
// and argument, then the set of target CPUs (Release), then sends the
// IPIs. A target's handler loads the set (Acquire), and if its bit is set
// runs the function and clears its bit (Release). The initiator waits
// for the set to be empty (Acquire) before it lets go of CALL_BUSY, so
// the function and argument never change while a target may still read
// them, and when it returns every target has finished the call. IPIs to
// one CPU may merge (the APIC keeps one pending bit per vector): the
// handler works from the set, not from the count of interrupts, so a
// merged IPI loses nothing, and a late one finds its bit clear.
//
// Deadlock freedom: a CPU waiting for the lock or for acks also serves
// its own bit of a pending request (by polling), so two initiators never
// wait for each other. Targets take the IPI when they run with interrupts
// enabled, so an initiator must not hold a lock (or keep interrupts off
// in a section) that a target may be waiting for with interrupts off.

static CALL_BUSY: AtomicBool = AtomicBool::new(false);
static CALL_FUNC: AtomicUsize = AtomicUsize::new(0);
static CALL_ARG: AtomicUsize = AtomicUsize::new(0);
static CALL_PENDING: AtomicU32 = AtomicU32::new(0);

/// Runs this CPU's part of the pending call, if it has one.
fn serve_call() -> bool {
    let me = 1u32 << percpu::cpu_id();
    if CALL_PENDING.load(Ordering::Acquire) & me == 0 {
        return false;
    }
    let raw = CALL_FUNC.load(Ordering::Relaxed);
    let arg = CALL_ARG.load(Ordering::Relaxed);
    // SAFETY: CALL_FUNC only ever holds an `fn(usize)` (stored by
    // `call_on`), and it is not changed while our bit is set.
    let f = unsafe { core::mem::transmute::<usize, fn(usize)>(raw) };
    let was = super::irq_save();
    f(arg);
    super::irq_restore(was);
    CALL_PENDING.fetch_and(!me, Ordering::Release);
    true
}

fn on_call_function(_regs: &mut super::PtRegs, _vector: u8) -> bool {
    serve_call();
    true
}

/// Bit mask of the online CPUs.
fn online_mask() -> u32 {
    let n = percpu::cpu_count();
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// Run `f(arg)` on every CPU in `mask` (bit `i` = CPU `i`; offline CPUs
/// are left out), this CPU included if its bit is set, and return once
/// each has. On the other CPUs `f` runs in interrupt context with
/// interrupts disabled: it must be short and take no lock. Call with
/// interrupts enabled and holding no lock (see the protocol above).
pub fn call_on(mask: u32, f: fn(usize), arg: usize) {
    let me = 1u32 << percpu::cpu_id();
    let others = mask & online_mask() & !me;
    if others != 0 {
        while CALL_BUSY
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            serve_call();
            core::hint::spin_loop();
        }
        CALL_FUNC.store(f as usize, Ordering::Relaxed);
        CALL_ARG.store(arg, Ordering::Relaxed);
        CALL_PENDING.store(others, Ordering::Release);
        fence(Ordering::SeqCst);
        for cpu in 0..MAX_CPUS {
            if others & (1 << cpu) != 0 {
                if let Some(c) = percpu::cpu(cpu) {
                    apic::send_ipi(c.apic_id.load(Ordering::Relaxed), CALL_FUNCTION_VECTOR);
                }
            }
        }
        while CALL_PENDING.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
        CALL_BUSY.store(false, Ordering::Release);
    }
    if mask & me != 0 {
        let was = super::irq_save();
        f(arg);
        super::irq_restore(was);
    }
}

/// Run `f(data)` on every online CPU, this one included, each with
/// interrupts disabled, and return once all have: a change made this way
/// happens on each CPU at an instant when that CPU runs nothing else
/// (Linux's `on_each_cpu`). The rules of [`call_on`] hold for `f`.
pub fn on_each_cpu<T: Sync>(data: &T, f: fn(&T)) {
    let call: (fn(&T), &T) = (f, data);
    call_on(online_mask(), run_borrowed::<T>, &raw const call as usize);
}

/// `call_on`'s side of [`on_each_cpu`]: the argument is the address of the
/// `(f, data)` pair on the caller's stack.
fn run_borrowed<T: Sync>(arg: usize) {
    // SAFETY: `arg` is the address of the pair `on_each_cpu` keeps alive
    // on its stack until `call_on` returns, which it does only after every
    // CPU has run this function; `T: Sync` makes sharing `data` across
    // CPUs sound.
    let (f, data) = unsafe { *(arg as *const (fn(&T), &T)) };
    f(data);
}

/// Run `f(arg)` on every other online CPU and wait for all of them.
pub fn call_on_others(f: fn(usize), arg: usize) {
    call_on(online_mask() & !(1 << percpu::cpu_id()), f, arg);
}

/// Every other online CPU takes an interrupt and runs a serialising
/// instruction (CPUID) in its handler; returns when all have.
///
/// Why this is what text patching and probe removal need:
/// * *Serialising.* Once it returns, no other CPU can execute instruction
///   bytes it fetched before the call: each ran CPUID (and `iretq`, also
///   serialising) after the call began. Bytes written before the call are
///   what every CPU fetches afterwards (Linux's `text_poke_bp` relies on
///   the same `sync_core` on every CPU between its steps).
/// * *Grace period.* A CPU takes the IPI only while interrupts are
///   enabled, and probe handlers and BPF programs run with interrupts
///   disabled from their trap to their end. So when a CPU has acknowledged,
///   it was outside every handler at some instant after the call began: a
///   handler that was running on it when the call began has finished, and
///   one it starts later sees every change made before the call. (The
///   one exception: a CPU that is itself waiting in `sync_all_cpus` or
///   `call_on` serves the request by polling; such a CPU is not inside a
///   probe handler, which never waits for other CPUs.)
///
/// Call with interrupts enabled, holding no spinlock (see [`call_on`]);
/// with one CPU online it returns at once.
pub fn sync_all_cpus() {
    call_on_others(|_| cpu::serialize(), 0);
}

// ---- TLB shootdown and panic stop (NMI) ---------------------------------
//
// A shootdown is one request at a time as well: the initiator owns
// SHOOT_BUSY, stores the address (or FLUSH_ALL), then the target set
// (Release), and sends each target an NMI. The NMI handler flushes and
// clears its bit; the initiator waits for the set to be empty. NMIs get
// through when the target runs with interrupts disabled, so this never
// waits for a lock holder: a target spinning on a lock, or itself waiting
// for SHOOT_BUSY, still answers. An NMI that arrives while the target is
// in another NMI is held by the CPU until that one returns (or, should the
// CPU let it in early, runs nested: the entry code in trap.S survives
// that); the NMI handlers never wait for anything, so it is answered.

const FLUSH_ALL: u64 = u64::MAX;
static SHOOT_BUSY: AtomicBool = AtomicBool::new(false);
static SHOOT_ADDR: AtomicU64 = AtomicU64::new(0);
static SHOOT_PENDING: AtomicU32 = AtomicU32::new(0);
static PANIC_STOP: AtomicBool = AtomicBool::new(false);
static SHOOTDOWNS: AtomicU64 = AtomicU64::new(0);

/// After this CPU changed the mapping of `virt` (and flushed it locally),
/// make every other online CPU drop its TLB entry for it; `None` flushes
/// everything but global entries. Returns when all have. Safe with
/// interrupts disabled and under locks (the targets answer an NMI).
pub fn flush_tlb_others(virt: Option<u64>) {
    let others = online_mask() & !(1 << percpu::cpu_id());
    if others == 0 {
        return;
    }
    while SHOOT_BUSY
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    SHOOT_ADDR.store(virt.unwrap_or(FLUSH_ALL), Ordering::Relaxed);
    SHOOT_PENDING.store(others, Ordering::Release);
    fence(Ordering::SeqCst);
    for cpu in 0..MAX_CPUS {
        if others & (1 << cpu) != 0 {
            if let Some(c) = percpu::cpu(cpu) {
                apic::send_nmi(c.apic_id.load(Ordering::Relaxed));
            }
        }
    }
    while SHOOT_PENDING.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    SHOOTDOWNS.fetch_add(1, Ordering::Relaxed);
    SHOOT_BUSY.store(false, Ordering::Release);
}

/// TLB shootdowns done since boot.
#[allow(dead_code)] // diagnostics and the self tests
pub fn shootdowns() -> u64 {
    SHOOTDOWNS.load(Ordering::Relaxed)
}

/// Per CPU: the NMI it handles now included a TLB shootdown (written by
/// [`on_nmi`] at the start of each NMI, read by the perf sampler).
static NMI_HAD_SHOOTDOWN: [AtomicBool; MAX_CPUS as usize] =
    [const { AtomicBool::new(false) }; MAX_CPUS as usize];

/// This CPU's part of the NMI protocols; returns whether the NMI was a TLB
/// shootdown. An NMI carries no source, and one raised while another is
/// pending merges into it: the caller still lets the perf sampler check
/// its own pending state ([`nmi_had_shootdown`] tells it this NMI was a
/// shootdown too).
pub fn on_nmi() -> bool {
    if PANIC_STOP.load(Ordering::Acquire) {
        stop_this_cpu();
    }
    let cpu = percpu::cpu_id();
    let me = 1u32 << cpu;
    let had = SHOOT_PENDING.load(Ordering::Acquire) & me != 0;
    NMI_HAD_SHOOTDOWN[cpu as usize % MAX_CPUS as usize].store(had, Ordering::Relaxed);
    if !had {
        return false;
    }
    match SHOOT_ADDR.load(Ordering::Relaxed) {
        FLUSH_ALL => paging::flush_local_all(),
        addr => paging::flush_local(addr),
    }
    SHOOT_PENDING.fetch_and(!me, Ordering::Release);
    true
}

/// Whether the NMI this CPU is handling included a TLB shootdown (valid
/// inside the NMI handler, after [`on_nmi`]).
pub fn nmi_had_shootdown() -> bool {
    NMI_HAD_SHOOTDOWN[percpu::cpu_id() as usize % MAX_CPUS as usize].load(Ordering::Relaxed)
}

/// Put back this CPU's [`nmi_had_shootdown`] flag: the trap dispatcher
/// restores the interrupted NMI's value when a nested NMI returns.
pub fn set_nmi_had_shootdown(had: bool) {
    NMI_HAD_SHOOTDOWN[percpu::cpu_id() as usize % MAX_CPUS as usize].store(had, Ordering::Relaxed);
}

/// Stop every other CPU for good (a panic report is being written).
pub fn stop_other_cpus() {
    PANIC_STOP.store(true, Ordering::Release);
    if percpu::cpu_count() > 1 {
        apic::send_nmi_all_but_self();
        // Give them a moment to stop printing (they halt at once).
        delay_us(1_000);
    }
}

fn stop_this_cpu() -> ! {
    loop {
        super::irq_disable();
        super::halt();
    }
}
