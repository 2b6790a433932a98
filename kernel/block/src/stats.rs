//! Per-device statistics, the counters of Linux's `/proc/diskstats`.
//!
//! They are the ground truth tests and tools compare against: `ios`,
//! `sectors` and `ticks` count completed requests, `merges` counts bios
//! merged into queued requests, `in_flight` counts requests from insertion
//! to completion, `io_ticks` is the time at least one request was in
//! flight and `time_in_queue` the in-flight count integrated over time
//! (Linux's "weighted" field). Times are kept in nanoseconds; tools show
//! milliseconds like Linux.

use crate::bio::Op;

/// Counters of one operation type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Requests completed.
    pub ios: u64,
    /// Bios merged into a queued request.
    pub merges: u64,
    /// Sectors transferred by completed requests.
    pub sectors: u64,
    /// Sum over completed requests of the time from their first bio's
    /// queueing to completion (ns).
    pub ticks_ns: u64,
}

/// The statistics of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Reads.
    pub read: OpStats,
    /// Writes.
    pub write: OpStats,
    /// Flushes.
    pub flush: OpStats,
    /// Requests inserted and not yet completed.
    pub in_flight: u64,
    /// Requests issued to the driver and not yet completed.
    pub hw_in_flight: u64,
    /// Time with at least one request in flight (ns).
    pub io_ticks_ns: u64,
    /// In-flight requests integrated over time (ns).
    pub time_in_queue_ns: u64,
    /// Bios accepted into the queue.
    pub bios: u64,
    /// Bios refused before queueing (bad size, out of range).
    pub rejected: u64,
    /// Requests made (inserted into the scheduler).
    pub inserted: u64,
    /// Requests issued to the driver.
    pub issued: u64,
    /// Requests completed with an error.
    pub errors: u64,
    /// Issued requests the driver gave back (hardware queue full).
    pub requeues: u64,
    last_update_ns: u64,
}

impl DiskStats {
    /// Counters of one operation.
    pub fn op(&self, op: Op) -> &OpStats {
        match op {
            Op::Read => &self.read,
            Op::Write => &self.write,
            Op::Flush => &self.flush,
        }
    }

    fn op_mut(&mut self, op: Op) -> &mut OpStats {
        match op {
            Op::Read => &mut self.read,
            Op::Write => &mut self.write,
            Op::Flush => &mut self.flush,
        }
    }

    /// Bring the time-weighted counters up to `now_ns`.
    fn tick(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_update_ns);
        if self.in_flight > 0 {
            self.io_ticks_ns += dt;
            self.time_in_queue_ns += dt * self.in_flight;
        }
        self.last_update_ns = self.last_update_ns.max(now_ns);
    }

    /// A bio entered the queue.
    pub fn bio_queued(&mut self) {
        self.bios += 1;
    }

    /// A bio was refused before queueing.
    pub fn bio_rejected(&mut self) {
        self.rejected += 1;
    }

    /// A bio merged into a queued request.
    pub fn merged(&mut self, op: Op) {
        self.op_mut(op).merges += 1;
    }

    /// A new request entered the scheduler.
    pub fn inserted(&mut self, now_ns: u64) {
        self.tick(now_ns);
        self.inserted += 1;
        self.in_flight += 1;
    }

    /// A request went to the driver.
    pub fn issued(&mut self) {
        self.issued += 1;
        self.hw_in_flight += 1;
    }

    /// An issued request went back from the driver to the scheduler
    /// unexecuted (it stays counted as issued; it will be issued again).
    pub fn requeued(&mut self) {
        self.requeues += 1;
        self.hw_in_flight = self.hw_in_flight.saturating_sub(1);
    }

    /// An issued request completed.
    pub fn completed(&mut self, op: Op, sectors: u32, queued_ns: u64, now_ns: u64, ok: bool) {
        self.tick(now_ns);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.hw_in_flight = self.hw_in_flight.saturating_sub(1);
        if !ok {
            self.errors += 1;
        }
        let s = self.op_mut(op);
        s.ios += 1;
        s.sectors += u64::from(sectors);
        s.ticks_ns += now_ns.saturating_sub(queued_ns);
    }

    /// The counters as of `now_ns` (time-weighted fields brought up to date).
    pub fn snapshot(&self, now_ns: u64) -> Self {
        let mut s = *self;
        s.tick(now_ns);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_time_weighting() {
        let mut s = DiskStats::default();
        s.bio_queued();
        s.inserted(100);
        s.bio_queued();
        s.merged(Op::Write);
        s.bio_queued();
        s.inserted(200);
        s.issued();
        s.issued();
        // 100..200: one in flight; 200..300: two.
        s.completed(Op::Write, 16, 100, 300, true);
        s.completed(Op::Read, 8, 150, 400, false);
        assert_eq!(
            s.write,
            OpStats {
                ios: 1,
                merges: 1,
                sectors: 16,
                ticks_ns: 200
            }
        );
        assert_eq!(
            s.read,
            OpStats {
                ios: 1,
                merges: 0,
                sectors: 8,
                ticks_ns: 250
            }
        );
        assert_eq!((s.bios, s.inserted, s.issued, s.errors), (3, 2, 2, 1));
        assert_eq!((s.in_flight, s.hw_in_flight), (0, 0));
        assert_eq!(s.io_ticks_ns, 300);
        assert_eq!(s.time_in_queue_ns, 100 + 2 * 100 + 100);
        // Idle time does not count.
        assert_eq!(s.snapshot(1000).io_ticks_ns, 300);
    }
}
