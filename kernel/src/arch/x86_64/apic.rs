//! Local APIC (timer, EOI), IOAPIC (routing device interrupts), and the
//! legacy 8259 PIC (remapped and masked).

use super::cpu::outb;
use core::ptr::{read_volatile, write_volatile};

const LAPIC_BASE: u64 = 0xFEE0_0000;
const IOAPIC_BASE: u64 = 0xFEC0_0000;

const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xB0;
const REG_SPURIOUS: u64 = 0xF0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INIT: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3E0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: the local APIC page is identity-mapped (boot and kernel page
    // tables map all of the low 4 GiB) and `reg` is a valid register offset.
    unsafe { read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: as for `lapic_read`.
    unsafe { write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

/// Remap the 8259 PICs away from the exception vectors and mask them all;
/// the IOAPIC delivers device interrupts instead.
pub fn disable_pic() {
    for (cmd, data, base, cascade) in [(0x20u16, 0x21u16, 0x50u8, 4u8), (0xA0, 0xA1, 0x58, 2)] {
        outb(cmd, 0x11);
        outb(data, base);
        outb(data, cascade);
        outb(data, 0x01);
        outb(data, 0xFF);
    }
}

/// Enable the local APIC with the spurious vector.
pub fn init_lapic() {
    lapic_write(
        REG_SPURIOUS,
        0x100 | u32::from(super::trap::SPURIOUS_VECTOR),
    );
}

/// This CPU's APIC id.
pub fn lapic_id() -> u32 {
    lapic_read(REG_ID) >> 24
}

/// Signal end of interrupt.
pub fn eoi() {
    lapic_write(REG_EOI, 0);
}

/// Count the APIC timer (divide by 16) down from its maximum for the TSC
/// interval `wait_tsc`, returning how many timer ticks elapsed.
pub fn measure_timer_ticks(wait_tsc: u64) -> u32 {
    lapic_write(REG_TIMER_DIVIDE, 0x3);
    lapic_write(REG_LVT_TIMER, 1 << 16); // masked, one-shot
    lapic_write(REG_TIMER_INIT, u32::MAX);
    let start = super::rdtsc();
    while super::rdtsc() - start < wait_tsc {
        core::hint::spin_loop();
    }
    let left = lapic_read(REG_TIMER_CURRENT);
    lapic_write(REG_TIMER_INIT, 0);
    u32::MAX - left
}

/// Start the periodic timer on `vector`, firing every `ticks` timer ticks
/// (divide by 16).
pub fn start_periodic_timer(vector: u8, ticks: u32) {
    lapic_write(REG_TIMER_DIVIDE, 0x3);
    lapic_write(REG_LVT_TIMER, u32::from(vector) | (1 << 17));
    lapic_write(REG_TIMER_INIT, ticks.max(1));
}

fn ioapic_write(reg: u32, value: u32) {
    // SAFETY: the IOAPIC's two registers are identity-mapped MMIO; index
    // then data is the documented access sequence, and callers hold
    // interrupts off (routing happens during init or under a lock).
    unsafe {
        write_volatile(IOAPIC_BASE as *mut u32, reg);
        write_volatile((IOAPIC_BASE + 0x10) as *mut u32, value);
    }
}

/// How a device signals on its IOAPIC pin.
#[derive(Clone, Copy, Debug)]
pub struct IrqTrigger {
    pub level: bool,
    pub active_low: bool,
}

impl IrqTrigger {
    /// ISA devices: edge-triggered, active high.
    pub const ISA: Self = Self {
        level: false,
        active_low: false,
    };
    /// PCI INTx: level-triggered, active low.
    pub const PCI: Self = Self {
        level: true,
        active_low: true,
    };
}

/// Route global system interrupt `gsi` to `vector` on the boot CPU.
pub fn route_irq(gsi: u8, vector: u8, trigger: IrqTrigger) {
    route(gsi, u32::from(vector), trigger);
}

/// Route global system interrupt `gsi` to the boot CPU as a non-maskable
/// interrupt (IOAPIC delivery mode NMI: the CPU takes vector 2 even with
/// interrupts disabled). Edge-triggered sources only.
pub fn route_nmi(gsi: u8, trigger: IrqTrigger) {
    route(gsi, 0b100 << 8, trigger);
}

/// Send this CPU a fixed interrupt on `vector` (ICR shorthand "self").
/// Safe from NMI context: one register write, no lock. It is taken as
/// soon as the CPU runs with interrupts enabled. It leaves the
/// destination register alone (a shorthand ignores it), so an NMI that
/// sends one between the two writes of [`send_ipi`] changes nothing.
pub fn self_ipi(vector: u8) {
    lapic_write(REG_ICR_LOW, (0b01 << 18) | u32::from(vector));
}

const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_FIXED: u32 = 0b000 << 8;
const ICR_NMI: u32 = 0b100 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_ALL_BUT_SELF: u32 = 0b11 << 18;

fn wait_icr_idle() {
    let mut spins = 0u32;
    while lapic_read(REG_ICR_LOW) & ICR_DELIVERY_PENDING != 0 && spins < 1_000_000 {
        core::hint::spin_loop();
        spins += 1;
    }
}

/// Write the ICR: destination first, then the command, which sends.
/// Interrupts are off in between so no handler on this CPU sends an IPI
/// to another destination between the two writes (an NMI may only send a
/// self IPI, which leaves the destination alone).
fn send(apic_id: u32, command: u32) {
    let was = super::irq_save();
    wait_icr_idle();
    lapic_write(REG_ICR_HIGH, apic_id << 24);
    lapic_write(REG_ICR_LOW, command);
    wait_icr_idle();
    super::irq_restore(was);
}

/// Send CPU `apic_id` a fixed interrupt on `vector`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send(apic_id, ICR_FIXED | ICR_LEVEL_ASSERT | u32::from(vector));
}

/// Send CPU `apic_id` a non-maskable interrupt.
pub fn send_nmi(apic_id: u32) {
    send(apic_id, ICR_NMI | ICR_LEVEL_ASSERT);
}

/// Send every other CPU a non-maskable interrupt (shorthand, so it also
/// reaches CPUs not yet counted online; used to stop them on a panic).
pub fn send_nmi_all_but_self() {
    lapic_write(REG_ICR_LOW, ICR_NMI | ICR_LEVEL_ASSERT | ICR_ALL_BUT_SELF);
}

/// INIT (assert) to CPU `apic_id`: it resets and waits for a STARTUP.
pub fn send_init(apic_id: u32) {
    send(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
}

/// STARTUP to CPU `apic_id`: it starts in real mode at `page * 4096`.
pub fn send_startup(apic_id: u32, page: u8) {
    send(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(page));
}

/// The APIC timer count of one scheduler period, measured on the boot CPU
/// and reused by the others (all local APIC timers run off one clock).
static TIMER_PERIOD: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Remember the calibrated period for [`start_timer_like_boot_cpu`].
pub fn set_timer_period(ticks: u32) {
    TIMER_PERIOD.store(ticks, core::sync::atomic::Ordering::Relaxed);
}

/// Start this CPU's periodic timer with the boot CPU's calibration.
pub fn start_timer_like_boot_cpu(vector: u8) {
    start_periodic_timer(
        vector,
        TIMER_PERIOD.load(core::sync::atomic::Ordering::Relaxed),
    );
}

fn route(gsi: u8, redirection_low: u32, trigger: IrqTrigger) {
    let mut low = redirection_low;
    if trigger.level {
        low |= 1 << 15;
    }
    if trigger.active_low {
        low |= 1 << 13;
    }
    let was = super::irq_save();
    ioapic_write(0x10 + 2 * u32::from(gsi) + 1, lapic_id() << 24);
    ioapic_write(0x10 + 2 * u32::from(gsi), low);
    super::irq_restore(was);
}
