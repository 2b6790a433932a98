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

use alloc::vec::Vec;

use ktrace_block::{BlockError, Op};
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::pci::bus::{Command, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;

use super::queue::{Driver, Req};
use crate::drivers::pci::{self as kpci, PortCam};
use crate::drivers::virtio::KernelHal;
use crate::drivers::virtio_blk::{BlkQueue, Finished};

/// What a request on the ring carries besides its buffers: the request,
/// and whether its data went through a bounce buffer (a merged request)
/// rather than its one bio's own buffer.
struct Tag {
    rq: Req,
    bounced: bool,
}

/// A virtio-blk device.
pub struct VirtioBlk {
    queue: BlkQueue<Tag>,
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
        found.push(Found {
            driver: VirtioBlk {
                queue: BlkQueue::new(blk),
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

impl Driver for VirtioBlk {
    fn kind(&self) -> &'static str {
        "virtio-blk"
    }

    fn capacity(&self) -> u64 {
        self.queue.capacity()
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
                rq.status = Some(self.queue.device().flush().map_err(status_of));
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
        // One bio's buffer goes to the device as it is; a merged request's
        // through one bounce buffer (one data segment per request).
        let (data, bounced) = match rq.single_buffer_mut() {
            Some(data) => (core::mem::take(data), false),
            None => (rq.gather(), true),
        };
        let read = rq.op.is_read();
        let sector = rq.sector as usize;
        match self.queue.submit(read, sector, data, Tag { rq, bounced }) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err((tag, data, e)) => {
                let rq = give_back(tag, data);
                if e == virtio_drivers::Error::QueueFull {
                    if self.in_flight > 0 && self.in_flight < self.depth {
                        log::warn!(
                            "virtio-blk: ring full at {} requests; lowering the queue depth",
                            self.in_flight
                        );
                        self.depth = self.in_flight;
                    }
                    return Err(rq);
                }
                let mut rq = rq;
                rq.status = Some(Err(status_of(e)));
                self.done.push(rq);
                Ok(())
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Req>) {
        out.append(&mut self.done);
        while let Some(finished) = self.queue.complete() {
            let Finished { tag, data, status } = match finished {
                Ok(f) => f,
                Err(token) => {
                    log::error!("virtio-blk: used ring returned unknown token {token}");
                    break;
                }
            };
            self.in_flight -= 1;
            let mut rq = give_back(tag, data);
            rq.status = Some(status.map_err(status_of));
            out.push(rq);
        }
    }

    fn ack_interrupt(&mut self) -> bool {
        !self.queue.device().ack_interrupt().is_empty()
    }
}

/// The request of `tag` with its data back in its bio (or, for a merged
/// read, copied from the bounce buffer into its bios).
fn give_back(tag: Tag, data: Vec<u8>) -> Req {
    let Tag { mut rq, bounced } = tag;
    if !bounced {
        if let Some(buf) = rq.single_buffer_mut() {
            *buf = data;
        }
    } else if rq.op.is_read() {
        rq.scatter(&data);
    }
    rq
}
