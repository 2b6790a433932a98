//! Device drivers, and the hardware half of the subsystems' ones: PCI
//! configuration access, shared INTx lines, the virtio HAL, the
//! virtio-serial port the control channel uses and the DMA side of
//! virtio-blk (its policy half is `block::virtio`). With `arch` and `mm`,
//! this is where the kernel's `unsafe` lives.

pub mod intx;
pub mod pci;
pub mod virtio;
pub mod virtio_blk;
pub mod virtio_serial;
