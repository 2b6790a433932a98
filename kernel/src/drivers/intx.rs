//! Shared PCI INTx lines.
//!
//! On q35 every PCI INTx pin reaches one of four GSIs (PIRQ E–H, GSI
//! 20–23), so devices of different drivers can share a line. Each GSI gets
//! its own vector; every handler registered on a line runs on each
//! interrupt and must check its own device's status (reading a virtio ISR
//! register both tells and lowers the device's part of the level).

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch::apic::{self, IrqTrigger};
use crate::arch::{self, trap};

/// First GSI of the PCI INTx lines (PIRQ E).
const FIRST_GSI: u8 = 20;
const LINES: usize = 4;
/// Handlers per line.
const PER_LINE: usize = 4;
/// Vector of GSI 20; GSI 20 + n uses `BASE_VECTOR + n`.
const BASE_VECTOR: u8 = 0x50;

static HANDLERS: [[AtomicUsize; PER_LINE]; LINES] =
    [const { [const { AtomicUsize::new(0) }; PER_LINE] }; LINES];

/// Why a handler could not be registered.
#[derive(Debug)]
pub enum IntxError {
    /// The GSI is not one of the four PCI INTx lines.
    NotPci(u8),
    /// The line already has [`PER_LINE`] handlers.
    Full(u8),
}

impl core::fmt::Display for IntxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotPci(gsi) => write!(f, "GSI {gsi} is not a PCI INTx line (20-23)"),
            Self::Full(gsi) => write!(f, "GSI {gsi} already has {PER_LINE} handlers"),
        }
    }
}

/// Run `handler` on every interrupt of PCI line `gsi` (20–23), routing the
/// line (level-triggered, active low) the first time.
pub fn register(gsi: u8, handler: fn()) -> Result<(), IntxError> {
    let line = gsi
        .checked_sub(FIRST_GSI)
        .filter(|&l| usize::from(l) < LINES)
        .ok_or(IntxError::NotPci(gsi))?;
    let slots = &HANDLERS[usize::from(line)];
    let first = slots[0].load(Ordering::Acquire) == 0;
    let free = slots
        .iter()
        .find(|s| {
            s.compare_exchange(0, handler as usize, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .ok_or(IntxError::Full(gsi))?;
    let _ = free;
    if first {
        let vector = BASE_VECTOR + line;
        trap::set_handler(vector, on_intx);
        apic::route_irq(gsi, vector, IrqTrigger::PCI);
    }
    Ok(())
}

fn on_intx(_regs: &mut arch::PtRegs, vector: u8) -> bool {
    let line = usize::from(vector.wrapping_sub(BASE_VECTOR));
    if let Some(slots) = HANDLERS.get(line) {
        for slot in slots {
            let h = slot.load(Ordering::Acquire);
            if h == 0 {
                break;
            }
            // SAFETY: only `register` stores into the table, and it stores
            // `fn()` pointers.
            let handler: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
            handler();
        }
    }
    true
}
