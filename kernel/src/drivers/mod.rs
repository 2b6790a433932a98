//! Device drivers shared by several subsystems: PCI configuration access,
//! shared INTx lines, the virtio HAL and the virtio-serial port the
//! control channel uses.

pub mod intx;
pub mod pci;
pub mod virtio;
pub mod virtio_serial;
