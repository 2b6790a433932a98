//! `none`: first in, first out, never merges.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::{AddOutcome, Scheduler};
use crate::bio::Bio;
use crate::request::Request;

/// The FIFO scheduler: every bio becomes its own request, dispatched in
/// arrival order. The baseline against which merging is measured.
#[derive(Debug)]
pub struct Noop<P> {
    fifo: VecDeque<Request<P>>,
}

impl<P> Noop<P> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            fifo: VecDeque::new(),
        }
    }
}

impl<P> Default for Noop<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Send> Scheduler<P> for Noop<P> {
    fn name(&self) -> &'static str {
        "none"
    }

    fn add_bio(&mut self, bio: Bio<P>, new_id: u64, now_ns: u64) -> AddOutcome {
        self.fifo.push_back(Request::from_bio(new_id, bio, now_ns));
        AddOutcome::Inserted { rq_id: new_id }
    }

    fn dispatch(&mut self, _now_ns: u64) -> Option<Request<P>> {
        self.fifo.pop_front()
    }

    fn queued(&self) -> usize {
        self.fifo.len()
    }

    fn drain(&mut self) -> Vec<Request<P>> {
        self.fifo.drain(..).collect()
    }

    fn requeue(&mut self, rq: Request<P>) {
        self.fifo.push_front(rq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bio::{BioFlags, Op};
    use alloc::vec;

    #[test]
    fn never_merges_and_keeps_order() {
        let mut s = Noop::new();
        for (i, sector) in [0u64, 8, 16].into_iter().enumerate() {
            let bio = Bio::new(Op::Write, BioFlags::NONE, sector, vec![0; 4096], 1, ());
            assert_eq!(
                s.add_bio(bio, i as u64 + 1, 0),
                AddOutcome::Inserted {
                    rq_id: i as u64 + 1
                }
            );
        }
        assert_eq!(s.queued(), 3);
        let order: Vec<u64> = core::iter::from_fn(|| s.dispatch(0))
            .map(|r| r.sector)
            .collect();
        assert_eq!(order, vec![0, 8, 16]);
    }
}
