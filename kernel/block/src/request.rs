//! Requests: what a driver executes, one or more bios over contiguous
//! sectors.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::bio::{rwbs, Bio, BioFlags, BlockError, Op, SECTOR_SIZE};

/// When a request passed each stage (ns since boot; 0 = not yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timestamps {
    /// Its first bio entered the queue.
    pub queued: u64,
    /// It was inserted into the scheduler.
    pub inserted: u64,
    /// It was issued to the driver.
    pub issued: u64,
    /// The driver completed it.
    pub completed: u64,
}

/// Merged bios covering `sector .. sector + nr_sectors`, in sector order.
#[derive(Debug)]
pub struct Request<P> {
    /// Unique id (`rq_id` in trace records).
    pub id: u64,
    /// Operation shared by all its bios.
    pub op: Op,
    /// Flags shared by all its bios.
    pub flags: BioFlags,
    /// First sector.
    pub sector: u64,
    /// Size in sectors.
    pub nr_sectors: u32,
    /// The bios, in sector order.
    pub bios: VecDeque<Bio<P>>,
    /// Stage timestamps.
    pub times: Timestamps,
    /// Outcome, set by the driver.
    pub status: Option<Result<(), BlockError>>,
    /// Pid of the task whose bio created it.
    pub submitter: u32,
    /// CPU that issued it to the driver (set at issue; completion may
    /// run on another).
    pub issue_cpu: u32,
}

impl<P> Request<P> {
    /// A request made of one bio.
    pub fn from_bio(id: u64, bio: Bio<P>, now_ns: u64) -> Self {
        let mut bios = VecDeque::with_capacity(1);
        let (op, flags, sector, nr_sectors, submitter) = (
            bio.op,
            bio.flags,
            bio.sector,
            bio.nr_sectors(),
            bio.submitter,
        );
        let queued = bio.queued_ns;
        bios.push_back(bio);
        Self {
            id,
            op,
            flags,
            sector,
            nr_sectors,
            bios,
            times: Timestamps {
                queued,
                inserted: now_ns,
                issued: 0,
                completed: 0,
            },
            status: None,
            submitter,
            issue_cpu: 0,
        }
    }

    /// The sector just past the request.
    pub fn end_sector(&self) -> u64 {
        self.sector + u64::from(self.nr_sectors)
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u32 {
        self.nr_sectors * SECTOR_SIZE as u32
    }

    /// Linux's `rwbs` string.
    pub fn rwbs(&self) -> [u8; 8] {
        rwbs(self.op, self.flags)
    }

    /// Whether `bio` may join this request at all (same operation and
    /// flags, not a flush), ignoring position and size.
    pub fn compatible(&self, bio: &Bio<P>) -> bool {
        self.op == bio.op && self.flags == bio.flags && self.op != Op::Flush
    }

    /// Append `bio`, which starts where the request ends.
    pub fn back_merge(&mut self, bio: Bio<P>) {
        debug_assert_eq!(bio.sector, self.end_sector());
        self.nr_sectors += bio.nr_sectors();
        self.times.queued = self.times.queued.min(bio.queued_ns);
        self.bios.push_back(bio);
    }

    /// Prepend `bio`, which ends where the request starts.
    pub fn front_merge(&mut self, bio: Bio<P>) {
        debug_assert_eq!(bio.end_sector(), self.sector);
        self.sector = bio.sector;
        self.nr_sectors += bio.nr_sectors();
        self.times.queued = self.times.queued.min(bio.queued_ns);
        self.bios.push_front(bio);
    }

    /// The request's data as one buffer, when it is made of a single bio
    /// (no copy needed).
    pub fn single_buffer_mut(&mut self) -> Option<&mut Vec<u8>> {
        if self.bios.len() == 1 {
            self.bios.front_mut().map(|b| &mut b.data)
        } else {
            None
        }
    }

    /// Concatenate the bios' data into one buffer (the bounce buffer of a
    /// merged write; zeroed for a read).
    pub fn gather(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes() as usize);
        if self.op.is_read() {
            out.resize(self.bytes() as usize, 0);
        } else {
            for b in &self.bios {
                out.extend_from_slice(&b.data);
            }
        }
        out
    }

    /// Copy a merged read's data from one buffer back into the bios.
    pub fn scatter(&mut self, buf: &[u8]) {
        let mut off = 0;
        for b in self.bios.iter_mut() {
            let n = b.data.len();
            if let Some(src) = buf.get(off..off + n) {
                b.data.copy_from_slice(src);
            }
            off += n;
        }
    }

    /// Record the outcome on every bio and hand them back.
    pub fn finish(mut self, status: Result<(), BlockError>) -> VecDeque<Bio<P>> {
        for b in self.bios.iter_mut() {
            b.status = status;
        }
        self.status = Some(status);
        core::mem::take(&mut self.bios)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn bio(sector: u64, sectors: usize, fill: u8) -> Bio<()> {
        let mut b = Bio::new(
            Op::Write,
            BioFlags::NONE,
            sector,
            vec![fill; sectors * SECTOR_SIZE],
            1,
            (),
        );
        b.queued_ns = sector;
        b
    }

    #[test]
    fn merges_keep_sector_order_and_data() {
        let mut rq = Request::from_bio(7, bio(8, 8, 2), 100);
        rq.back_merge(bio(16, 8, 3));
        rq.front_merge(bio(0, 8, 1));
        assert_eq!((rq.sector, rq.nr_sectors, rq.bytes()), (0, 24, 24 * 512));
        assert_eq!(rq.times.queued, 0);
        let data = rq.gather();
        assert_eq!(data.len(), 24 * 512);
        assert_eq!((data[0], data[8 * 512], data[16 * 512]), (1, 2, 3));
        assert!(rq.single_buffer_mut().is_none());
    }

    #[test]
    fn scatter_splits_a_read() {
        let mut a = bio(0, 1, 0);
        a.op = Op::Read;
        let mut b = bio(1, 2, 0);
        b.op = Op::Read;
        let mut rq = Request::from_bio(1, a, 0);
        rq.back_merge(b);
        let mut buf = vec![0u8; 3 * 512];
        buf[..512].fill(9);
        buf[512..].fill(5);
        rq.scatter(&buf);
        let bios = rq.finish(Err(BlockError::Device { status: 1 }));
        assert_eq!(bios[0].data, vec![9; 512]);
        assert_eq!(bios[1].data, vec![5; 1024]);
        assert_eq!(bios[1].status, Err(BlockError::Device { status: 1 }));
    }
}
