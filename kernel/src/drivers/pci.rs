//! PCI configuration space through the legacy `0xCF8`/`0xCFC` ports, as a
//! `virtio-drivers` [`ConfigurationAccess`].
//!
//! Port I/O works on every PC chipset QEMU emulates, needs no mapping and
//! no ACPI table (the ECAM base of q35 would have to be read from MCFG);
//! bus 0 is all the kernel scans.

use core::arch::asm;

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

fn outl(port: u16, value: u32) {
    // SAFETY: writes to the PCI configuration address port, which only
    // selects the register the next data access reaches.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: reads the PCI configuration data port: no memory effects.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

fn address(df: DeviceFunction, offset: u8) -> u32 {
    0x8000_0000
        | (u32::from(df.bus) << 16)
        | (u32::from(df.device) << 11)
        | (u32::from(df.function) << 8)
        | u32::from(offset & 0xfc)
}

/// Configuration access through I/O ports. The address/data pair is a
/// two-step protocol, so each access runs with interrupts off.
#[derive(Debug)]
pub struct PortCam;

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let was = crate::arch::irq_save();
        outl(CONFIG_ADDRESS, address(df, offset));
        let v = inl(CONFIG_DATA);
        crate::arch::irq_restore(was);
        v
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        let was = crate::arch::irq_save();
        outl(CONFIG_ADDRESS, address(df, offset));
        outl(CONFIG_DATA, data);
        crate::arch::irq_restore(was);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// The GSI a function's INTx pin reaches on q35 (ICH9): pin P of slot S is
/// routed to PIRQ E–H, i.e. GSI `20 + (S + P - 1) % 4`.
pub fn intx_gsi(df: DeviceFunction) -> u8 {
    let pin = (PortCam.read_word(df, 0x3c) >> 8) as u8;
    20 + ((df.device + pin.max(1) - 1) % 4)
}
