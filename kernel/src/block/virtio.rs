//! virtio-blk over PCI, through the `virtio-drivers` crate.
//!
//! - **Discovery**: bus 0 is scanned through [`PortCam`]; every virtio
//!   block function becomes `vda`, `vdb`, ... in slot order (QEMU's
//!   `-device` order).
//! - **DMA**: the kernel identity-maps the low 4 GiB, so a heap buffer's
//!   address is its physical address: data buffers are shared in place,
//!   no copy ([`KernelHal::share`]). Ring memory comes from contiguous
//!   frames.
//! - **Several requests in flight**: requests go in with the non-blocking
//!   `read_blocks_nb`/`write_blocks_nb`; each occupies a slot indexed by
//!   its descriptor token until the used ring returns it. With indirect
//!   descriptors (which QEMU offers) every request takes one descriptor,
//!   so the hardware queue holds 16 (the crate's ring size).
//! - A **merged** request made of several bios is sent through one bounce
//!   buffer: the crate's block API takes one data segment per request.
//! - **Completion by interrupt**: legacy INTx, level-triggered and
//!   active-low, through the IOAPIC. On q35 (ICH9), INTx pin P of slot S
//!   reaches PIRQ E–H, i.e. GSI `20 + (S + P - 1) % 4`. The handler reads
//!   the ISR register (which lowers the line), reaps the used ring and
//!   dispatches more from the scheduler in the same pass.
//! - **Flush**: the crate has only a blocking flush; it is sent when the
//!   hardware queue is empty (the request waits in the scheduler until
//!   then) and polled to completion.

use alloc::boxed::Box;
use alloc::vec::Vec;

use ktrace_block::{BlockError, Op};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::pci::bus::{Command, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;

use super::queue::{Driver, Req};
use crate::drivers::pci::{self as kpci, PortCam};
use crate::drivers::virtio::KernelHal;

/// One request on the hardware queue.
struct Slot {
    rq: Req,
    req: Box<BlkReq>,
    resp: Box<BlkResp>,
    /// The bounce buffer of a merged request.
    bounce: Option<Vec<u8>>,
    /// The data segment the device reads or writes.
    buf: (*mut u8, usize),
}

// SAFETY: `buf` points into `bounce` or into the single bio's buffer, both
// owned by this slot; the slot moves between contexts only under the
// device lock.
unsafe impl Send for Slot {}

/// A virtio-blk device.
pub struct VirtioBlk {
    blk: VirtIOBlk<KernelHal, PciTransport>,
    slots: Vec<Option<Slot>>,
    in_flight: usize,
    /// Requests the ring holds: the ring size, lowered to what actually
    /// fitted if the ring ever reports full (without indirect descriptors
    /// a request takes three descriptors).
    depth: usize,
    done: Vec<Req>,
    readonly: bool,
}

/// A virtio block function found on the bus.
pub struct Found {
    pub driver: VirtioBlk,
    pub slot: u8,
    /// The GSI its INTx pin reaches.
    pub gsi: u8,
}

fn status_of(e: virtio_drivers::Error) -> BlockError {
    match e {
        virtio_drivers::Error::Unsupported => BlockError::Device { status: 2 },
        _ => BlockError::Device { status: 1 },
    }
}

/// Find and initialise every virtio block device on bus 0.
pub fn probe() -> Vec<Found> {
    let mut root = PciRoot::new(PortCam);
    let mut found = Vec::new();
    let functions: Vec<_> = root.enumerate_bus(0).collect();
    for (df, info) in functions {
        if virtio_device_type(&info) != Some(DeviceType::Block) {
            continue;
        }
        let (_, cmd) = root.get_status_command(df);
        root.set_command(df, cmd | Command::MEMORY_SPACE | Command::BUS_MASTER);
        let transport = match PciTransport::new::<KernelHal, _>(&mut root, df) {
            Ok(t) => t,
            Err(e) => {
                log::error!("virtio-blk at {df}: transport: {e}");
                continue;
            }
        };
        let mut blk = match VirtIOBlk::<KernelHal, _>::new(transport) {
            Ok(b) => b,
            Err(e) => {
                log::error!("virtio-blk at {df}: init: {e}");
                continue;
            }
        };
        blk.enable_interrupts();
        let gsi = kpci::intx_gsi(df);
        let readonly = blk.readonly();
        let depth = usize::from(blk.virt_queue_size());
        let mut slots = Vec::with_capacity(depth);
        slots.resize_with(depth, || None);
        found.push(Found {
            driver: VirtioBlk {
                blk,
                slots,
                in_flight: 0,
                depth,
                done: Vec::new(),
                readonly,
            },
            slot: df.device,
            gsi,
        });
    }
    found
}

impl VirtioBlk {
    // The slot comes back by value when the ring refuses it (see
    // `Driver::issue`).
    #[allow(clippy::result_large_err)]
    fn submit_slot(&mut self, mut slot: Slot) -> Result<u16, (Slot, virtio_drivers::Error)> {
        let (ptr, len) = slot.buf;
        // SAFETY: `ptr..ptr+len` is the slot's data segment (see `Slot`),
        // valid and not otherwise accessed until the request is reaped.
        let buf = unsafe { core::slice::from_raw_parts_mut(ptr, len) };
        let sector = slot.rq.sector as usize;
        // SAFETY: `req`, `buf` and `resp` are heap allocations owned by the
        // slot, which stays in `self.slots` untouched until `reap` passes
        // the very same buffers to `complete_*_blocks`.
        let r = unsafe {
            if slot.rq.op.is_read() {
                self.blk
                    .read_blocks_nb(sector, &mut slot.req, buf, &mut slot.resp)
            } else {
                self.blk
                    .write_blocks_nb(sector, &mut slot.req, buf, &mut slot.resp)
            }
        };
        match r {
            Ok(token) => {
                let idx = usize::from(token);
                if idx >= self.slots.len() {
                    self.slots.resize_with(idx + 1, || None);
                }
                self.slots[idx] = Some(slot);
                Ok(token)
            }
            Err(e) => Err((slot, e)),
        }
    }
}

impl Driver for VirtioBlk {
    fn kind(&self) -> &'static str {
        "virtio-blk"
    }

    fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn issue(&mut self, mut rq: Req) -> Result<(), Req> {
        match rq.op {
            Op::Flush => {
                if self.in_flight > 0 {
                    // The blocking flush must not pop others' completions.
                    return Err(rq);
                }
                rq.status = Some(self.blk.flush().map_err(status_of));
                self.done.push(rq);
                return Ok(());
            }
            Op::Write if self.readonly => {
                rq.status = Some(Err(BlockError::ReadOnly));
                self.done.push(rq);
                return Ok(());
            }
            _ => {}
        }
        let (bounce, buf) = match rq.single_buffer_mut() {
            Some(data) => (None, (data.as_mut_ptr(), data.len())),
            None => {
                let mut b = rq.gather();
                let buf = (b.as_mut_ptr(), b.len());
                (Some(b), buf)
            }
        };
        let slot = Slot {
            rq,
            req: Box::default(),
            resp: Box::default(),
            bounce,
            buf,
        };
        match self.submit_slot(slot) {
            Ok(_) => {
                self.in_flight += 1;
                Ok(())
            }
            Err((slot, virtio_drivers::Error::QueueFull)) => {
                if self.in_flight > 0 && self.in_flight < self.depth {
                    log::warn!(
                        "virtio-blk: ring full at {} requests; lowering the queue depth",
                        self.in_flight
                    );
                    self.depth = self.in_flight;
                }
                Err(slot.rq)
            }
            Err((mut slot, e)) => {
                slot.rq.status = Some(Err(status_of(e)));
                self.done.push(slot.rq);
                Ok(())
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Req>) {
        out.append(&mut self.done);
        while let Some(token) = self.blk.peek_used() {
            let Some(mut slot) = self
                .slots
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                log::error!("virtio-blk: used ring returned unknown token {token}");
                break;
            };
            let (ptr, len) = slot.buf;
            // SAFETY: the slot's data segment, as in `submit_slot`; the
            // device is done with it.
            let buf = unsafe { core::slice::from_raw_parts_mut(ptr, len) };
            // SAFETY: the same buffers that were passed when `token` was
            // returned.
            let r = unsafe {
                if slot.rq.op.is_read() {
                    self.blk
                        .complete_read_blocks(token, &slot.req, buf, &mut slot.resp)
                } else {
                    self.blk
                        .complete_write_blocks(token, &slot.req, buf, &mut slot.resp)
                }
            };
            self.in_flight -= 1;
            let status = r.map_err(status_of);
            if let (Some(b), true) = (&slot.bounce, slot.rq.op.is_read()) {
                slot.rq.scatter(b);
            }
            slot.rq.status = Some(status);
            out.push(slot.rq);
        }
    }

    fn ack_interrupt(&mut self) -> bool {
        !self.blk.ack_interrupt().is_empty()
    }
}
