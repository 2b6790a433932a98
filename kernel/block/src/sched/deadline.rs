//! `deadline`: a merging scheduler after Linux's mq-deadline.
//!
//! - **Merging**: a bio that starts where a queued request of the same
//!   operation and flags ends joins its back; one that ends where such a
//!   request starts joins its front; a merge never grows a request past
//!   [`SchedConfig::max_sectors`]. Lookups go through two ordered indexes
//!   (by start and by end sector), so a merge check costs O(log n) however
//!   deep the queue.
//! - **Dispatch**: reads and writes wait in separate sector-sorted sets and
//!   arrival FIFOs. Requests go out in batches of up to
//!   [`SchedConfig::fifo_batch`] in ascending sector order (an elevator
//!   sweep), reads preferred; waiting writes get a batch after
//!   [`SchedConfig::writes_starved`] read batches. A batch starts at the
//!   FIFO head instead when that request has waited past its expiry, which
//!   bounds latency.
//! - Flushes bypass all this and go out first, in order.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use super::{AddOutcome, SchedConfig, Scheduler};
use crate::bio::{Bio, Op};
use crate::request::Request;

const READ: usize = 0;
const WRITE: usize = 1;

fn dir(op: Op) -> usize {
    if op.is_read() {
        READ
    } else {
        WRITE
    }
}

/// The merging deadline scheduler.
#[derive(Debug)]
pub struct Deadline<P> {
    cfg: SchedConfig,
    /// Queued requests by id.
    rqs: BTreeMap<u64, Request<P>>,
    /// `(start sector, id)` per direction: sort order and front merges.
    by_start: [BTreeSet<(u64, u64)>; 2],
    /// `(end sector, id)` per direction: back merges.
    by_end: [BTreeSet<(u64, u64)>; 2],
    /// `(deadline, id)` per direction in arrival order; entries of
    /// requests already dispatched are skipped lazily.
    fifo: [VecDeque<(u64, u64)>; 2],
    /// Flush requests, dispatched first.
    flushes: VecDeque<Request<P>>,
    /// Where the last dispatch in each direction ended.
    next_pos: [u64; 2],
    batch_dir: usize,
    batching: u32,
    starved: u32,
}

impl<P> Deadline<P> {
    /// An empty scheduler.
    pub fn new(cfg: SchedConfig) -> Self {
        Self {
            cfg,
            rqs: BTreeMap::new(),
            by_start: [BTreeSet::new(), BTreeSet::new()],
            by_end: [BTreeSet::new(), BTreeSet::new()],
            fifo: [VecDeque::new(), VecDeque::new()],
            flushes: VecDeque::new(),
            next_pos: [0; 2],
            batch_dir: READ,
            // No batch in progress: the first dispatch picks a direction.
            batching: cfg.fifo_batch,
            starved: 0,
        }
    }

    fn try_back_merge(&mut self, bio: Bio<P>) -> Result<u64, Bio<P>> {
        let d = dir(bio.op);
        let candidates = self.by_end[d].range((bio.sector, 0)..=(bio.sector, u64::MAX));
        let found = candidates
            .map(|&(_, id)| id)
            .find(|id| self.fits(*id, &bio));
        let Some(id) = found else { return Err(bio) };
        let Some(rq) = self.rqs.get_mut(&id) else {
            return Err(bio);
        };
        self.by_end[d].remove(&(rq.end_sector(), id));
        rq.back_merge(bio);
        self.by_end[d].insert((rq.end_sector(), id));
        Ok(id)
    }

    fn try_front_merge(&mut self, bio: Bio<P>) -> Result<u64, Bio<P>> {
        let d = dir(bio.op);
        let end = bio.end_sector();
        let candidates = self.by_start[d].range((end, 0)..=(end, u64::MAX));
        let found = candidates
            .map(|&(_, id)| id)
            .find(|id| self.fits(*id, &bio));
        let Some(id) = found else { return Err(bio) };
        let Some(rq) = self.rqs.get_mut(&id) else {
            return Err(bio);
        };
        self.by_start[d].remove(&(rq.sector, id));
        rq.front_merge(bio);
        self.by_start[d].insert((rq.sector, id));
        Ok(id)
    }

    fn fits(&self, id: u64, bio: &Bio<P>) -> bool {
        self.rqs.get(&id).is_some_and(|rq| {
            rq.compatible(bio) && rq.nr_sectors + bio.nr_sectors() <= self.cfg.max_sectors
        })
    }

    fn insert(&mut self, rq: Request<P>, front: bool) {
        let d = dir(rq.op);
        let expire = if d == READ {
            self.cfg.read_expire_ns
        } else {
            self.cfg.write_expire_ns
        };
        let deadline = rq.times.inserted.saturating_add(expire);
        self.by_start[d].insert((rq.sector, rq.id));
        self.by_end[d].insert((rq.end_sector(), rq.id));
        if front {
            self.fifo[d].push_front((deadline, rq.id));
        } else {
            self.fifo[d].push_back((deadline, rq.id));
        }
        self.rqs.insert(rq.id, rq);
    }

    fn remove(&mut self, id: u64) -> Option<Request<P>> {
        let rq = self.rqs.remove(&id)?;
        let d = dir(rq.op);
        self.by_start[d].remove(&(rq.sector, id));
        self.by_end[d].remove(&(rq.end_sector(), id));
        Some(rq)
    }

    /// The oldest still-queued request of a direction and its deadline.
    fn fifo_head(&mut self, d: usize) -> Option<(u64, u64)> {
        while let Some(&(deadline, id)) = self.fifo[d].front() {
            if self.rqs.contains_key(&id) {
                return Some((deadline, id));
            }
            self.fifo[d].pop_front();
        }
        None
    }

    /// The next request of a direction in ascending sector order from
    /// where the last dispatch ended.
    fn next_in_order(&self, d: usize) -> Option<u64> {
        self.by_start[d]
            .range((self.next_pos[d], 0)..)
            .next()
            .map(|&(_, id)| id)
    }

    fn has(&self, d: usize) -> bool {
        !self.by_start[d].is_empty()
    }
}

impl<P: Send> Scheduler<P> for Deadline<P> {
    fn name(&self) -> &'static str {
        "deadline"
    }

    fn add_bio(&mut self, bio: Bio<P>, new_id: u64, now_ns: u64) -> AddOutcome {
        if bio.op == Op::Flush {
            self.flushes
                .push_back(Request::from_bio(new_id, bio, now_ns));
            return AddOutcome::Inserted { rq_id: new_id };
        }
        let bio = match self.try_back_merge(bio) {
            Ok(rq_id) => return AddOutcome::BackMerge { rq_id },
            Err(bio) => bio,
        };
        let bio = match self.try_front_merge(bio) {
            Ok(rq_id) => return AddOutcome::FrontMerge { rq_id },
            Err(bio) => bio,
        };
        self.insert(Request::from_bio(new_id, bio, now_ns), false);
        AddOutcome::Inserted { rq_id: new_id }
    }

    fn dispatch(&mut self, now_ns: u64) -> Option<Request<P>> {
        if let Some(rq) = self.flushes.pop_front() {
            return Some(rq);
        }
        // Continue the current batch in sector order.
        if self.batching < self.cfg.fifo_batch {
            if let Some(id) = self.next_in_order(self.batch_dir) {
                return self.take(id);
            }
        }
        // Start a new batch: pick a direction.
        let (reads, writes) = (self.has(READ), self.has(WRITE));
        let d = if reads && (!writes || self.starved < self.cfg.writes_starved) {
            if writes {
                self.starved += 1;
            }
            READ
        } else if writes {
            self.starved = 0;
            WRITE
        } else {
            return None;
        };
        self.batch_dir = d;
        self.batching = 0;
        let id = match self.fifo_head(d) {
            Some((deadline, id)) if deadline <= now_ns => id,
            head => match self.next_in_order(d) {
                Some(id) => id,
                // End of the sweep: start over from the oldest request.
                None => head?.1,
            },
        };
        self.take(id)
    }

    fn queued(&self) -> usize {
        self.rqs.len() + self.flushes.len()
    }

    fn drain(&mut self) -> Vec<Request<P>> {
        let mut out: Vec<Request<P>> = self.flushes.drain(..).collect();
        let ids: Vec<u64> = self.rqs.keys().copied().collect();
        out.extend(ids.into_iter().filter_map(|id| self.remove(id)));
        self.fifo = [VecDeque::new(), VecDeque::new()];
        out.sort_by_key(|r| r.id);
        out
    }

    fn requeue(&mut self, rq: Request<P>) {
        if rq.op == Op::Flush {
            self.flushes.push_front(rq);
        } else {
            self.insert(rq, true);
        }
    }
}

impl<P> Deadline<P> {
    fn take(&mut self, id: u64) -> Option<Request<P>> {
        let rq = self.remove(id)?;
        let d = dir(rq.op);
        self.next_pos[d] = rq.end_sector();
        self.batching += 1;
        Some(rq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::{BioFlags, SECTOR_SIZE};
    use alloc::vec;

    fn bio(op: Op, sector: u64, sectors: usize) -> Bio<u32> {
        Bio::new(
            op,
            BioFlags::NONE,
            sector,
            vec![0; sectors * SECTOR_SIZE],
            1,
            sector as u32,
        )
    }

    fn sched() -> Deadline<u32> {
        Deadline::new(SchedConfig::default())
    }

    fn drain_order(s: &mut Deadline<u32>, now: u64) -> Vec<(Op, u64, u32)> {
        core::iter::from_fn(|| s.dispatch(now))
            .map(|r| (r.op, r.sector, r.nr_sectors))
            .collect()
    }

    #[test]
    fn sequential_bios_back_merge_up_to_the_size_limit() {
        let mut s = sched();
        let mut outcomes = Vec::new();
        // 40 sequential 4 KiB writes: 320 sectors; the limit is 256.
        for i in 0..40u64 {
            outcomes.push(s.add_bio(bio(Op::Write, i * 8, 8), 100 + i, 0));
        }
        assert_eq!(outcomes[0], AddOutcome::Inserted { rq_id: 100 });
        assert_eq!(outcomes[1], AddOutcome::BackMerge { rq_id: 100 });
        assert_eq!(outcomes[31], AddOutcome::BackMerge { rq_id: 100 });
        assert_eq!(outcomes[32], AddOutcome::Inserted { rq_id: 132 });
        assert_eq!(outcomes[39], AddOutcome::BackMerge { rq_id: 132 });
        assert_eq!(s.queued(), 2);
        assert_eq!(
            drain_order(&mut s, 0),
            vec![(Op::Write, 0, 256), (Op::Write, 256, 64)]
        );
    }

    #[test]
    fn descending_bios_front_merge_and_keep_bio_order() {
        let mut s = sched();
        assert_eq!(
            s.add_bio(bio(Op::Read, 16, 8), 1, 0),
            AddOutcome::Inserted { rq_id: 1 }
        );
        assert_eq!(
            s.add_bio(bio(Op::Read, 8, 8), 2, 0),
            AddOutcome::FrontMerge { rq_id: 1 }
        );
        assert_eq!(
            s.add_bio(bio(Op::Read, 0, 8), 3, 0),
            AddOutcome::FrontMerge { rq_id: 1 }
        );
        // A bio filling a hole between two requests joins the first's back.
        assert_eq!(
            s.add_bio(bio(Op::Read, 40, 8), 4, 0),
            AddOutcome::Inserted { rq_id: 4 }
        );
        assert_eq!(
            s.add_bio(bio(Op::Read, 24, 16), 5, 0),
            AddOutcome::BackMerge { rq_id: 1 }
        );
        let rq = s.dispatch(0).unwrap();
        assert_eq!((rq.id, rq.sector, rq.nr_sectors), (1, 0, 40));
        let tokens: Vec<u32> = rq.bios.iter().map(|b| b.private).collect();
        assert_eq!(tokens, vec![0, 8, 16, 24]);
    }

    #[test]
    fn no_merge_across_operations_flags_or_gaps() {
        let mut s = sched();
        s.add_bio(bio(Op::Write, 0, 8), 1, 0);
        assert_eq!(
            s.add_bio(bio(Op::Read, 8, 8), 2, 0),
            AddOutcome::Inserted { rq_id: 2 }
        );
        let mut sync = bio(Op::Write, 8, 8);
        sync.flags = BioFlags::SYNC;
        assert_eq!(s.add_bio(sync, 3, 0), AddOutcome::Inserted { rq_id: 3 });
        assert_eq!(
            s.add_bio(bio(Op::Write, 24, 8), 4, 0),
            AddOutcome::Inserted { rq_id: 4 }
        );
        assert_eq!(
            s.add_bio(Bio::new(Op::Flush, BioFlags::NONE, 0, vec![], 1, 0), 5, 0),
            AddOutcome::Inserted { rq_id: 5 }
        );
        assert_eq!(s.queued(), 5);
        // The flush goes first, then reads, then writes in sector order.
        let order = drain_order(&mut s, 0);
        assert_eq!(order[0], (Op::Flush, 0, 0));
        assert_eq!(order[1], (Op::Read, 8, 8));
        assert_eq!(
            &order[2..],
            &[(Op::Write, 0, 8), (Op::Write, 8, 8), (Op::Write, 24, 8)]
        );
    }

    #[test]
    fn random_bios_do_not_merge() {
        let mut s = sched();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut merges = 0;
        for i in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 4 KiB aligned blocks of a 1 GiB device.
            let sector = (x % (1 << 18)) * 8;
            if !matches!(
                s.add_bio(bio(Op::Read, sector, 8), i, 0),
                AddOutcome::Inserted { .. }
            ) {
                merges += 1;
            }
        }
        assert!(merges <= 2, "{merges} merges among 200 random bios");
    }

    #[test]
    fn batches_sweep_in_sector_order() {
        let mut s = sched();
        for (i, sector) in [800u64, 16, 400, 8000, 96].into_iter().enumerate() {
            s.add_bio(bio(Op::Read, sector, 8), i as u64, 0);
        }
        let sectors: Vec<u64> = drain_order(&mut s, 0)
            .into_iter()
            .map(|(_, s, _)| s)
            .collect();
        assert_eq!(sectors, vec![16, 96, 400, 800, 8000]);
    }

    #[test]
    fn expired_request_starts_the_next_batch() {
        let cfg = SchedConfig {
            fifo_batch: 1,
            ..SchedConfig::default()
        };
        let mut s: Deadline<u32> = Deadline::new(cfg);
        s.add_bio(bio(Op::Read, 5000, 8), 1, 0);
        s.add_bio(bio(Op::Read, 8, 8), 2, 10);
        s.add_bio(bio(Op::Read, 16 * 8, 8), 3, 10);
        // Not expired: the sweep takes the lowest sector first.
        assert_eq!(s.dispatch(1).unwrap().sector, 8);
        // Past the read expiry of request 1, it jumps the sweep.
        let late = SchedConfig::default().read_expire_ns + 1;
        assert_eq!(s.dispatch(late).unwrap().sector, 5000);
        assert_eq!(s.dispatch(late).unwrap().sector, 128);
        assert!(s.dispatch(late).is_none());
    }

    #[test]
    fn writes_are_not_starved_by_reads() {
        let cfg = SchedConfig {
            fifo_batch: 1,
            writes_starved: 2,
            ..SchedConfig::default()
        };
        let mut s: Deadline<u32> = Deadline::new(cfg);
        s.add_bio(bio(Op::Write, 0, 8), 1, 0);
        for i in 0..6u64 {
            s.add_bio(bio(Op::Read, 1000 + i * 100, 8), 10 + i, 0);
        }
        let ops: Vec<Op> = drain_order(&mut s, 0)
            .into_iter()
            .map(|(op, _, _)| op)
            .collect();
        assert_eq!(ops[..3], [Op::Read, Op::Read, Op::Write]);
        assert_eq!(ops.len(), 7);
    }

    #[test]
    fn drain_and_requeue_keep_everything() {
        let mut s = sched();
        for i in 0..5u64 {
            s.add_bio(bio(Op::Write, i * 100, 8), i, 0);
        }
        let all = s.drain();
        assert_eq!(
            all.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(s.queued(), 0);
        assert!(s.dispatch(0).is_none());
        for rq in all.into_iter().rev() {
            s.requeue(rq);
        }
        assert_eq!(s.queued(), 5);
        // A requeued request can still take merges.
        assert_eq!(
            s.add_bio(bio(Op::Write, 8, 8), 9, 0),
            AddOutcome::BackMerge { rq_id: 0 }
        );
        assert_eq!(drain_order(&mut s, 0).len(), 5);
    }
}
