//! virtio-blk requests in flight, each owning the buffers the device reads
//! and writes until the device gives them back: the DMA half of the block
//! layer's virtio driver (`block::virtio`), and its only `unsafe`.
//!
//! `virtio-drivers`' non-blocking calls are `unsafe` because the device
//! keeps using the request header, the data segment and the status byte
//! after the call returns. Here each request's three buffers are heap
//! allocations moved into its [`InFlight`] entry, which nobody else can
//! reach, and stay there, untouched, until the used ring returns its token
//! and the very same buffers complete it.

use alloc::boxed::Box;
use alloc::vec::Vec;

use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::Error;

use super::virtio::KernelHal;

/// A virtio-blk device over PCI.
pub type Device = VirtIOBlk<KernelHal, PciTransport>;

/// One request on the ring, with whatever its submitter tagged it with.
struct InFlight<T> {
    tag: T,
    read: bool,
    req: Box<BlkReq>,
    resp: Box<BlkResp>,
    data: Vec<u8>,
}

/// A finished request: its tag, its data (filled by a read) and the
/// device's verdict.
pub struct Finished<T> {
    pub tag: T,
    pub data: Vec<u8>,
    pub status: Result<(), Error>,
}

/// A device and the requests it holds, by descriptor token.
pub struct BlkQueue<T> {
    blk: Device,
    slots: Vec<Option<InFlight<T>>>,
}

impl<T> BlkQueue<T> {
    pub fn new(blk: Device) -> Self {
        let depth = usize::from(blk.virt_queue_size());
        let mut slots = Vec::with_capacity(depth);
        slots.resize_with(depth, || None);
        Self { blk, slots }
    }

    /// Sectors on the device.
    pub fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    /// The device, for what involves no buffer in flight (blocking flush,
    /// interrupts).
    pub fn device(&mut self) -> &mut Device {
        &mut self.blk
    }

    /// Starts reading into (`read`) or writing from `data` at `sector`.
    /// When the ring refuses, the tag and the data come back.
    // The tag comes back by value on refusal, like the data.
    #[allow(clippy::result_large_err)]
    pub fn submit(
        &mut self,
        read: bool,
        sector: usize,
        data: Vec<u8>,
        tag: T,
    ) -> Result<(), (T, Vec<u8>, Error)> {
        let mut f = InFlight {
            tag,
            read,
            req: Box::default(),
            resp: Box::default(),
            data,
        };
        // SAFETY: `req`, `data` and `resp` are heap buffers owned by `f`,
        // which goes into `self.slots` right below and is neither touched
        // nor dropped until `complete` passes the very same buffers back
        // to the device with the token it returned (moving `f` moves
        // no heap data).
        let r = unsafe {
            if read {
                self.blk
                    .read_blocks_nb(sector, &mut f.req, &mut f.data, &mut f.resp)
            } else {
                self.blk
                    .write_blocks_nb(sector, &mut f.req, &f.data, &mut f.resp)
            }
        };
        match r {
            Ok(token) => {
                let idx = usize::from(token);
                if idx >= self.slots.len() {
                    self.slots.resize_with(idx + 1, || None);
                }
                self.slots[idx] = Some(f);
                Ok(())
            }
            Err(e) => Err((f.tag, f.data, e)),
        }
    }

    /// The next request the device finished, if any; `Err(token)` for a
    /// token the device returned that names no request.
    pub fn complete(&mut self) -> Option<Result<Finished<T>, u16>> {
        let token = self.blk.peek_used()?;
        let Some(mut f) = self
            .slots
            .get_mut(usize::from(token))
            .and_then(Option::take)
        else {
            return Some(Err(token));
        };
        // SAFETY: the buffers `submit` passed when the device returned
        // `token`, untouched since; the device is done with them.
        let status = unsafe {
            if f.read {
                self.blk
                    .complete_read_blocks(token, &f.req, &mut f.data, &mut f.resp)
            } else {
                self.blk
                    .complete_write_blocks(token, &f.req, &f.data, &mut f.resp)
            }
        };
        Some(Ok(Finished {
            tag: f.tag,
            data: f.data,
            status,
        }))
    }
}
