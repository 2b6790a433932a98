//! Hardware used by perf events: the 8254 PIT channel 0 as the sampling
//! timer (independent of the APIC timer that drives the scheduler, so the
//! sampling frequency is free and sampling does not disturb scheduling),
//! delivered as an NMI so that code running with interrupts disabled is
//! sampled too (Linux samples from NMIs for the same reason), and CPUID's
//! description of the architectural PMU.

use super::apic::{self, IrqTrigger};
use super::cpu::outb;
use super::pit::PIT_HZ;

/// Vector of the sampling timer when delivered as a maskable interrupt
/// (named in `irq:irq_handler_entry`); the sampler routes it as an NMI.
pub const SAMPLING_VECTOR: u8 = 0x48;
/// Vector on which the NMI sampler asks this CPU to run the handlers of
/// a sample (a self-IPI), once interrupts are enabled again.
pub const SAMPLE_HANDLERS_VECTOR: u8 = 0x49;
/// The non-maskable interrupt's vector.
pub const NMI_VECTOR: u8 = 2;
/// The PIT's IOAPIC input (ISA IRQ 0 is overridden to GSI 2 on PC
/// chipsets, QEMU's q35 included).
const PIT_GSI: u8 = 2;

/// Frequencies the PIT can produce with a 16-bit divisor (the range is
/// in the ABI so hosts can check it before asking).
pub const MIN_HZ: u32 = ktrace_abi::trace::SAMPLE_MIN_HZ;
/// Highest accepted sampling frequency.
pub const MAX_HZ: u32 = ktrace_abi::trace::SAMPLE_MAX_HZ;

/// Start PIT channel 0 as a rate generator at about `hz` interrupts a
/// second, delivered as NMIs. Returns the exact frequency programmed.
pub fn start(hz: u32) -> f64 {
    let divisor = divisor(hz);
    let was = super::irq_save();
    // Channel 0, lobyte/hibyte, mode 2 (rate generator), binary.
    outb(0x43, 0x34);
    outb(0x40, divisor as u8);
    outb(0x40, (divisor >> 8) as u8);
    apic::route_nmi(PIT_GSI, IrqTrigger::ISA);
    super::irq_restore(was);
    PIT_HZ as f64 / f64::from(divisor)
}

fn divisor(hz: u32) -> u16 {
    let hz = hz.clamp(MIN_HZ, MAX_HZ);
    (PIT_HZ / u64::from(hz)).clamp(1, 65535) as u16
}

/// The frequency [`start`] programs for `hz` (the PIT divides its clock
/// by an integer).
pub fn exact_hz(hz: u32) -> f64 {
    PIT_HZ as f64 / f64::from(divisor(hz))
}

/// Stop the periodic interrupt: mode 0 (one shot) with the longest count;
/// the single late interrupt it produces is ignored by the handler.
pub fn stop() {
    let was = super::irq_save();
    outb(0x43, 0x30);
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    super::irq_restore(was);
}

/// `cpuid(leaf, subleaf)` → (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: cpuid is available on every x86_64 CPU and only writes the
    // four output registers; rbx is saved by hand (LLVM reserves it).
    unsafe {
        core::arch::asm!(
            "mov {b:r}, rbx", "cpuid", "xchg {b:r}, rbx",
            b = out(reg) b,
            inout("eax") leaf => a, inout("ecx") subleaf => c, out("edx") d,
            options(nostack, preserves_flags)
        );
    }
    (a, b, c, d)
}

/// Version of the architectural PMU (CPUID leaf 0AH, EAX[7:0]); 0 when
/// the CPU (or QEMU TCG's emulated CPU) exposes none.
pub fn pmu_version() -> u8 {
    let (max_leaf, _, _, _) = cpuid(0, 0);
    if max_leaf < 0xa {
        return 0;
    }
    cpuid(0xa, 0).0 as u8
}
