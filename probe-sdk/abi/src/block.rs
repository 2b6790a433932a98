//! Block devices, statistics, single I/Os, the workload generator and the
//! block tracepoints' counters.
//!
//! - [`BlockRequest::Stats`] → [`BlockResponse::Stats`]: every device with
//!   its `/proc/diskstats`-like counters.
//! - [`BlockRequest::SetScheduler`] → `Response::Ok`.
//! - [`BlockRequest::Io`] → [`BlockResponse::Io`]: one read, write or flush
//!   through the whole block layer (the control task is the submitter).
//! - [`BlockRequest::Workload`] → pushes of [`BlockResponse::Progress`]
//!   (id 0) while it runs, then [`BlockResponse::Workload`].
//!
//! The block tracepoints (`block:block_bio_queue`, ...) are attached
//! through the trace requests, like every other tracepoint.
//! - [`BlockRequest::InjectErrors`] → `Response::Ok` (RAM disks only).

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Largest I/O a single [`BlockRequest::Io`] may move (it travels in one
/// frame).
pub const MAX_IO_BYTES: u32 = 1 << 20;

/// Requests to the block layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlockRequest {
    /// Devices and their statistics.
    Stats,
    /// Select the I/O scheduler of a device (`deadline` or `none`).
    SetScheduler { dev: String, scheduler: String },
    /// One I/O, waited for.
    Io(IoRequest),
    /// Run the in-kernel workload generator.
    Workload(WorkloadSpec),
    /// Make a RAM disk fail every I/O that touches sectors
    /// `start .. start + count` with a device error (`None` clears).
    InjectErrors {
        dev: String,
        sectors: Option<(u64, u64)>,
    },
}

/// Answers from the block layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlockResponse {
    /// Answer to [`BlockRequest::Stats`].
    Stats(Vec<DeviceStats>),
    /// Answer to [`BlockRequest::Io`].
    Io(IoReply),
    /// Pushed about once a second while a workload runs.
    Progress(WorkloadProgress),
    /// Answer to [`BlockRequest::Workload`].
    Workload(WorkloadReport),
}

/// An I/O operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoOp {
    Read,
    Write,
    Flush,
}

/// One I/O.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoRequest {
    /// Device name (`vda`, `ram0`, ...).
    pub dev: String,
    pub op: IoOp,
    /// First sector (512 bytes each).
    pub sector: u64,
    /// Bytes to read (reads only).
    pub len: u32,
    /// Bytes to write (writes only).
    pub data: Vec<u8>,
}

/// Result of a successful [`IoRequest`]. Failures come back as an error
/// frame: `InvalidArgument` for a bad size or range, `Io` for a device
/// error, with the message and errno of the block layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoReply {
    /// The data read (empty for writes and flushes).
    pub data: Vec<u8>,
    /// Time from submission to completion (ns).
    pub latency_ns: u64,
}

/// Counters of one operation type, as in `/proc/diskstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    /// Requests completed.
    pub ios: u64,
    /// Bios merged into queued requests.
    pub merges: u64,
    /// Sectors transferred.
    pub sectors: u64,
    /// Time requests spent from queueing to completion, summed (ns).
    pub ticks_ns: u64,
}

/// One block device and its statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStats {
    /// `vda`, `vdb`, ... for virtio-blk; `ram0` for the RAM disk.
    pub name: String,
    /// `virtio-blk` or `ramdisk`.
    pub kind: String,
    pub major: u32,
    pub minor: u32,
    /// Size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// The I/O scheduler in use.
    pub scheduler: String,
    /// Requests the hardware queue holds at once.
    pub hw_queue_depth: u32,
    pub read: OpStats,
    pub write: OpStats,
    pub flush: OpStats,
    /// Requests inserted and not completed.
    pub in_flight: u64,
    /// Requests issued to the driver and not completed.
    pub hw_in_flight: u64,
    /// Time with at least one request in flight (ns).
    pub io_ticks_ns: u64,
    /// In-flight requests integrated over time (ns).
    pub time_in_queue_ns: u64,
    /// Bios accepted (= `block_bio_queue` events).
    pub bios: u64,
    /// Bios refused before queueing (bad size, out of range).
    pub rejected: u64,
    /// Requests made (= `block_rq_insert` events).
    pub inserted: u64,
    /// Requests issued (= `block_rq_issue` events).
    pub issued: u64,
    /// Requests completed with an error.
    pub errors: u64,
    /// Device interrupts handled (0 for the RAM disk).
    pub interrupts: u64,
}

impl DeviceStats {
    /// Completed requests of every type (= `block_rq_complete` events).
    pub fn completed(&self) -> u64 {
        self.read.ios + self.write.ios + self.flush.ios
    }

    /// Merges of every type (= back + front merge events).
    pub fn merges(&self) -> u64 {
        self.read.merges + self.write.merges + self.flush.merges
    }

    /// The line Linux prints in `/proc/diskstats` for this device (times
    /// in ms, discard fields 0).
    pub fn diskstats_line(&self) -> String {
        let ms = |ns: u64| ns / 1_000_000;
        alloc::format!(
            "{:4} {:7} {} {} {} {} {} {} {} {} {} {} {} {} 0 0 0 0 {} {}",
            self.major,
            self.minor,
            self.name,
            self.read.ios,
            self.read.merges,
            self.read.sectors,
            ms(self.read.ticks_ns),
            self.write.ios,
            self.write.merges,
            self.write.sectors,
            ms(self.write.ticks_ns),
            self.in_flight,
            ms(self.io_ticks_ns),
            ms(self.time_in_queue_ns),
            self.flush.ios,
            ms(self.flush.ticks_ns),
        )
    }
}

/// The access pattern of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RwMode {
    Read,
    Write,
    RandRead,
    RandWrite,
    /// Random reads and writes mixed by [`WorkloadSpec::read_percent`].
    RandRw,
}

impl RwMode {
    /// The fio name (`randread`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
            RwMode::RandRead => "randread",
            RwMode::RandWrite => "randwrite",
            RwMode::RandRw => "randrw",
        }
    }

    /// Parse a fio name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => RwMode::Read,
            "write" => RwMode::Write,
            "randread" => RwMode::RandRead,
            "randwrite" => RwMode::RandWrite,
            "randrw" => RwMode::RandRw,
            _ => return None,
        })
    }

    /// Whether the workload writes.
    pub fn writes(self) -> bool {
        matches!(self, RwMode::Write | RwMode::RandWrite | RwMode::RandRw)
    }
}

/// When a workload stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadLimit {
    /// After this many I/Os per job.
    Count(u64),
    /// After this many milliseconds.
    TimeMs(u64),
}

/// Parameters of the workload generator (fio-like).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Devices to drive; each gets `jobs` jobs.
    pub devices: Vec<String>,
    pub rw: RwMode,
    /// Bytes per I/O (a multiple of 512).
    pub block_size: u32,
    /// I/Os each job keeps in flight.
    pub iodepth: u32,
    /// Jobs (kernel tasks) per device.
    pub jobs: u32,
    pub limit: WorkloadLimit,
    /// Write recognisable patterns and read every written block back.
    pub verify: bool,
    /// Share of reads in `randrw` (0..=100).
    pub read_percent: u8,
    /// Region of each device to use: first byte (a multiple of the block
    /// size) and size in bytes (0 = to the end of the device). Jobs split
    /// the region evenly.
    pub offset: u64,
    pub size: u64,
    /// Seed of the offsets and patterns.
    pub seed: u64,
    /// Submit each batch of `iodepth` I/Os under one plug (they reach the
    /// scheduler together and can merge before dispatch).
    pub plug: bool,
}

impl WorkloadSpec {
    /// A spec with fio-like defaults: 4 KiB, depth 1, one job, 1000 I/Os.
    pub fn new(device: &str, rw: RwMode) -> Self {
        Self {
            devices: alloc::vec![String::from(device)],
            rw,
            block_size: 4096,
            iodepth: 1,
            jobs: 1,
            limit: WorkloadLimit::Count(1000),
            verify: false,
            read_percent: 50,
            offset: 0,
            size: 0,
            seed: 0x6b74_7261_6365,
            plug: true,
        }
    }
}

/// Limits the kernel enforces on a [`WorkloadSpec`].
pub mod limits {
    /// Largest block size.
    pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
    /// Deepest queue per job.
    pub const MAX_IODEPTH: u32 = 256;
    /// Most jobs per device.
    pub const MAX_JOBS: u32 = 16;
    /// Most memory a workload may hold in buffers (`jobs × iodepth × bs` over
    /// all devices).
    pub const MAX_BUFFER_BYTES: u64 = 32 << 20;
    /// Longest run.
    pub const MAX_TIME_MS: u64 = 600_000;
}

/// Pushed while a workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadProgress {
    pub elapsed_ns: u64,
    /// I/Os completed so far (all jobs).
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// Latency percentiles (ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub min: u64,
    pub mean: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Per-device outcome of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceResult {
    pub dev: String,
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// The result of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    /// Wall time of the main phase (ns), guest clock.
    pub elapsed_ns: u64,
    /// I/Os completed in the main phase (successful or not).
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    /// Bytes moved by successful I/Os of the main phase.
    pub bytes: u64,
    /// I/Os that completed with an error.
    pub errors: u64,
    /// The first error, readable.
    pub first_error: Option<String>,
    /// Latency from submission to completion of the main phase's I/Os.
    pub latency: LatencySummary,
    /// Blocks read back and checked by `verify`.
    pub verified_blocks: u64,
    /// Blocks whose read-back differed.
    pub verify_failures: u64,
    /// The first verify mismatch, readable.
    pub first_mismatch: Option<String>,
    pub per_device: Vec<DeviceResult>,
}

impl WorkloadReport {
    /// I/Os per second of the main phase.
    pub fn iops(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.ios as f64 * 1e9 / self.elapsed_ns as f64
        }
    }

    /// MB/s (10^6 bytes) of the main phase.
    pub fn mb_per_s(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.bytes as f64 * 1e3 / self.elapsed_ns as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskstats_line_has_linux_field_order() {
        let d = DeviceStats {
            name: "vda".into(),
            kind: "virtio-blk".into(),
            major: 253,
            minor: 0,
            capacity_sectors: 131072,
            scheduler: "deadline".into(),
            hw_queue_depth: 16,
            read: OpStats {
                ios: 10,
                merges: 2,
                sectors: 96,
                ticks_ns: 5_000_000,
            },
            write: OpStats {
                ios: 4,
                merges: 28,
                sectors: 256,
                ticks_ns: 7_900_000,
            },
            flush: OpStats {
                ios: 1,
                merges: 0,
                sectors: 0,
                ticks_ns: 1_000_000,
            },
            in_flight: 3,
            hw_in_flight: 2,
            io_ticks_ns: 9_000_000,
            time_in_queue_ns: 13_000_000,
            bios: 45,
            rejected: 0,
            inserted: 18,
            issued: 17,
            errors: 0,
            interrupts: 9,
        };
        assert_eq!(
            d.diskstats_line(),
            " 253       0 vda 10 2 96 5 4 28 256 7 3 9 13 0 0 0 0 1 1"
        );
        assert_eq!((d.completed(), d.merges()), (15, 30));
    }

    #[test]
    fn rw_modes_round_trip() {
        for m in [
            RwMode::Read,
            RwMode::Write,
            RwMode::RandRead,
            RwMode::RandWrite,
            RwMode::RandRw,
        ] {
            assert_eq!(RwMode::parse(m.name()), Some(m));
        }
        assert_eq!(RwMode::parse("rw"), None);
        assert!(RwMode::RandRw.writes() && !RwMode::RandRead.writes());
    }

    #[test]
    fn report_rates() {
        let mut spec = WorkloadSpec::new("ram0", RwMode::Read);
        spec.limit = WorkloadLimit::TimeMs(1);
        let bytes = postcard::to_allocvec(&spec).unwrap();
        assert_eq!(postcard::from_bytes::<WorkloadSpec>(&bytes).unwrap(), spec);
        let r = WorkloadReport {
            elapsed_ns: 2_000_000_000,
            ios: 5000,
            reads: 5000,
            writes: 0,
            bytes: 5000 * 4096,
            errors: 0,
            first_error: None,
            latency: LatencySummary::default(),
            verified_blocks: 0,
            verify_failures: 0,
            first_mismatch: None,
            per_device: Vec::new(),
        };
        assert_eq!(r.iops(), 2500.0);
        assert_eq!(r.mb_per_s(), 10.24);
    }
}
