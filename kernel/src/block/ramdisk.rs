//! `ram0`: a RAM disk, the second device type.
//!
//! Its storage is a block of physically contiguous frames. It executes a
//! request at issue time (a copy, like Linux's `brd`) and hands it back on
//! the next reap, so it goes through the same queue, scheduler, statistics
//! and tracepoints as virtio-blk; it has no interrupt. It can fail a
//! sector range on purpose ([`Driver::inject_errors`]) so tests reach the
//! device-error path.

use alloc::vec::Vec;

use ktrace_block::{BlockError, Op, SECTOR_SIZE};

use super::queue::{Driver, Req};

/// Default size: 32 MiB.
pub const DEFAULT_BYTES: usize = 32 << 20;
/// Requests "in flight" at once; the copy is synchronous, this only bounds
/// how much one dispatch round takes from the scheduler.
const DEPTH: usize = 32;

/// The RAM disk driver.
pub struct RamDisk {
    storage: &'static mut [u8],
    done: Vec<Req>,
    fail: Option<(u64, u64)>,
}

impl RamDisk {
    /// A zeroed RAM disk of `bytes` (rounded down to whole pages), or
    /// `None` when memory is short.
    pub fn new(bytes: usize) -> Option<Self> {
        let storage = crate::mm::frame::alloc_forever((bytes / 4096) as u64)?;
        Some(Self {
            storage,
            done: Vec::new(),
            fail: None,
        })
    }

    fn execute(&mut self, rq: &mut Req) -> Result<(), BlockError> {
        if let Some((start, count)) = self.fail {
            if rq.sector < start.saturating_add(count) && start < rq.end_sector() {
                return Err(BlockError::Device { status: 1 });
            }
        }
        match rq.op {
            Op::Flush => Ok(()),
            Op::Read => {
                for bio in rq.bios.iter_mut() {
                    let start = bio.sector as usize * SECTOR_SIZE;
                    let src = self
                        .storage
                        .get(start..start + bio.data.len())
                        .ok_or(BlockError::Device { status: 1 })?;
                    bio.data.copy_from_slice(src);
                }
                Ok(())
            }
            Op::Write => {
                for bio in rq.bios.iter() {
                    let start = bio.sector as usize * SECTOR_SIZE;
                    let dst = self
                        .storage
                        .get_mut(start..start + bio.data.len())
                        .ok_or(BlockError::Device { status: 1 })?;
                    dst.copy_from_slice(&bio.data);
                }
                Ok(())
            }
        }
    }
}

impl Driver for RamDisk {
    fn kind(&self) -> &'static str {
        "ramdisk"
    }

    fn capacity(&self) -> u64 {
        (self.storage.len() / SECTOR_SIZE) as u64
    }

    fn depth(&self) -> usize {
        DEPTH
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn issue(&mut self, mut rq: Req) -> Result<(), Req> {
        // The bios of a merged request are copied one by one: no bounce
        // buffer is needed when the "device" can address each of them.
        let status = self.execute(&mut rq);
        rq.status = Some(status);
        self.done.push(rq);
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Req>) {
        out.append(&mut self.done);
    }

    fn inject_errors(&mut self, range: Option<(u64, u64)>) -> Result<(), &'static str> {
        self.fail = range;
        Ok(())
    }
}
