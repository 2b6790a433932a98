//! Host client of the block layer: device statistics, single I/Os,
//! schedulers, fault injection and the in-kernel workload generator, as
//! methods on [`Client`].

use std::time::{Duration, Instant};

use ktrace_abi::block::{
    BlockRequest, BlockResponse, DeviceStats, IoOp, IoReply, IoRequest, WorkloadLimit,
    WorkloadProgress, WorkloadReport, WorkloadSpec,
};
use ktrace_abi::{Request, Response};

use crate::client::{Client, ClientError, Result};

fn unexpected(what: &'static str, got: Response) -> ClientError {
    ClientError::Unexpected {
        what,
        got: format!("{got:?}"),
    }
}

/// Time a workload may take beyond its own limit before the client gives
/// up (the kernel abandons a stalled workload after 60 s).
const WORKLOAD_SLACK: Duration = Duration::from_secs(90);

impl Client {
    /// Every block device with its statistics.
    pub fn disk_stats(&mut self) -> Result<Vec<DeviceStats>> {
        match self.request(&Request::Block(BlockRequest::Stats))? {
            Response::Block(BlockResponse::Stats(s)) => Ok(s),
            other => Err(unexpected("Block(Stats)", other)),
        }
    }

    /// One device's statistics.
    pub fn disk_stats_of(&mut self, dev: &str) -> Result<Option<DeviceStats>> {
        Ok(self.disk_stats()?.into_iter().find(|d| d.name == dev))
    }

    /// Select a device's I/O scheduler (`deadline` or `none`).
    pub fn set_scheduler(&mut self, dev: &str, scheduler: &str) -> Result<()> {
        let req = Request::Block(BlockRequest::SetScheduler {
            dev: dev.into(),
            scheduler: scheduler.into(),
        });
        match self.request(&req)? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Block(SetScheduler)", other)),
        }
    }

    fn io(&mut self, io: IoRequest) -> Result<IoReply> {
        match self.request(&Request::Block(BlockRequest::Io(io)))? {
            Response::Block(BlockResponse::Io(r)) => Ok(r),
            other => Err(unexpected("Block(Io)", other)),
        }
    }

    /// Read `len` bytes at `sector` through the block layer.
    pub fn read_sectors(&mut self, dev: &str, sector: u64, len: u32) -> Result<Vec<u8>> {
        self.io(IoRequest {
            dev: dev.into(),
            op: IoOp::Read,
            sector,
            len,
            data: Vec::new(),
        })
        .map(|r| r.data)
    }

    /// Write `data` at `sector` through the block layer.
    pub fn write_sectors(&mut self, dev: &str, sector: u64, data: &[u8]) -> Result<()> {
        self.io(IoRequest {
            dev: dev.into(),
            op: IoOp::Write,
            sector,
            len: 0,
            data: data.to_vec(),
        })
        .map(|_| ())
    }

    /// Flush a device's write cache.
    pub fn flush_disk(&mut self, dev: &str) -> Result<()> {
        self.io(IoRequest {
            dev: dev.into(),
            op: IoOp::Flush,
            sector: 0,
            len: 0,
            data: Vec::new(),
        })
        .map(|_| ())
    }

    /// Make a RAM disk fail I/O on `start .. start + count` (or stop, with
    /// `None`).
    pub fn inject_disk_errors(&mut self, dev: &str, sectors: Option<(u64, u64)>) -> Result<()> {
        let req = Request::Block(BlockRequest::InjectErrors {
            dev: dev.into(),
            sectors,
        });
        match self.request(&req)? {
            Response::Ok => Ok(()),
            other => Err(unexpected("Block(InjectErrors)", other)),
        }
    }

    /// Run a workload, calling `on_progress` for every progress frame, and
    /// return its report.
    pub fn run_workload(
        &mut self,
        spec: &WorkloadSpec,
        mut on_progress: impl FnMut(&WorkloadProgress),
    ) -> Result<WorkloadReport> {
        let budget = match spec.limit {
            WorkloadLimit::TimeMs(ms) => Duration::from_millis(ms) + WORKLOAD_SLACK,
            // A count has no time bound of its own; allow a generous one
            // and rely on the kernel's stall detection.
            WorkloadLimit::Count(_) => Duration::from_secs(3600),
        };
        let req = Request::Block(BlockRequest::Workload(spec.clone()));
        let id = self.send_request(&req)?;
        let deadline = Instant::now() + budget;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout {
                    id,
                    what: "Block(Workload)",
                    timeout: budget,
                });
            }
            let Some(env) = self.recv_any(left.min(Duration::from_secs(5)))? else {
                continue;
            };
            match (env.id == id, env.body) {
                (_, Response::Block(BlockResponse::Progress(p))) => on_progress(&p),
                (true, Response::Block(BlockResponse::Workload(r))) => return Ok(r),
                (true, Response::Error(reply)) => {
                    return Err(ClientError::Kernel {
                        what: "Block(Workload)",
                        reply,
                    })
                }
                (true, other) => return Err(unexpected("Block(Workload)", other)),
                // Other pushes and stale answers are not ours.
                (false, _) => {}
            }
        }
    }
}
