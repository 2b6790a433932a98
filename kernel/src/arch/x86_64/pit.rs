//! The 8254 PIT, used once to calibrate the TSC.

use super::cpu::{inb, outb};

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Measure TSC ticks over `ms` milliseconds of PIT channel 2 (gate-driven,
/// no interrupt needed). Returns the TSC frequency in kHz.
pub fn calibrate_tsc_khz(ms: u64) -> u64 {
    let count = (PIT_HZ * ms / 1000) as u16;
    // Gate on, speaker off.
    let port61 = inb(0x61);
    outb(0x61, (port61 & !0x02) | 0x01);
    // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count).
    outb(0x43, 0xB0);
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    // Restart the count by toggling the gate.
    let g = inb(0x61) & !0x01;
    outb(0x61, g);
    outb(0x61, g | 0x01);
    let start = super::rdtsc();
    let mut spins = 0u64;
    while inb(0x61) & 0x20 == 0 {
        spins += 1;
        if spins > 100_000_000 {
            break;
        }
    }
    let elapsed = super::rdtsc() - start;
    outb(0x61, port61);
    (elapsed / ms).max(1)
}
