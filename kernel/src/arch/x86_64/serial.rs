//! 16550 UARTs: COM1 is the console, COM2 the host control channel.

use super::cpu::{inb, outb};

/// A 16550 UART at an I/O port base.
#[derive(Clone, Copy)]
pub struct Uart {
    base: u16,
}

/// The console port.
pub const COM1: Uart = Uart { base: 0x3F8 };
/// The control-channel port.
pub const COM2: Uart = Uart { base: 0x2F8 };
/// ISA IRQ of COM2.
pub const COM2_IRQ: u8 = 3;

impl Uart {
    /// 115200 8N1, FIFOs on (14-byte receive trigger), interrupts off.
    /// The FIFOs are not cleared: the host may already have sent its first
    /// request before the kernel got here.
    pub fn init(self) {
        outb(self.base + 1, 0x00);
        outb(self.base + 3, 0x80);
        outb(self.base, 0x01);
        outb(self.base + 1, 0x00);
        outb(self.base + 3, 0x03);
        outb(self.base + 2, 0xC1);
        // DTR | RTS | OUT2 (OUT2 gates the IRQ line).
        outb(self.base + 4, 0x0B);
    }

    /// Interrupt when received data is available.
    pub fn enable_rx_interrupt(self) {
        outb(self.base + 1, 0x01);
    }

    /// Write one byte, waiting for room in the transmitter.
    pub fn write_byte(self, b: u8) {
        let mut spins = 0u32;
        while inb(self.base + 5) & 0x20 == 0 && spins < 1_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        outb(self.base, b);
    }

    /// Write bytes.
    pub fn write(self, bytes: &[u8]) {
        for &b in bytes {
            self.write_byte(b);
        }
    }

    /// A received byte, if any.
    pub fn try_read(self) -> Option<u8> {
        if inb(self.base + 5) & 0x01 != 0 {
            Some(inb(self.base))
        } else {
            None
        }
    }
}
