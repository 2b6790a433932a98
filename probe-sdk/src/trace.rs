//! Host API of the kernel's attach points: kprobes, kretprobes,
//! tracepoints and perf events, as methods on [`Client`] through the
//! [`TraceClient`] extension trait.
//!
//! ```no_run
//! # use probe_sdk::client::Client;
//! # fn f(client: &mut Client) -> probe_sdk::client::Result<()> {
//! use probe_sdk::trace::TraceClient;
//! use ktrace_abi::trace::{ProbeKind, ProbeTarget};
//! let probe = client.add_probe(
//!     ProbeTarget::Symbol { name: "kernel::task::sched::wake".into(), offset: 0 },
//!     ProbeKind::Kprobe,
//! )?;
//! for p in client.list_probes()? {
//!     println!("{} {}+{:#x} hits {}", p.id, p.symbol, p.offset, p.hits);
//! }
//! client.remove_probe(probe.id)?;
//! # Ok(()) }
//! ```
//!
//! Refusals come back as [`ClientError::Kernel`] whose message names the
//! reason ("... is blacklisted: text patching").

use ktrace_abi::trace::{
    BlacklistEntry, PerfEvent, PerfEventInfo, PerfSample, PerfValue, ProbeInfo, ProbeKind,
    ProbeTarget, RetprobePool, TraceRequest, TraceResponse, TracepointInfo,
};
use ktrace_abi::{Request, Response};

use crate::client::{Client, ClientError, Result};

/// Attach-point requests.
pub trait TraceClient {
    /// Send a trace request and return the answer (error frames become
    /// [`ClientError::Kernel`]).
    fn trace(&mut self, what: &'static str, req: TraceRequest) -> Result<Option<TraceResponse>>;

    /// Registered kprobes and kretprobes.
    fn list_probes(&mut self) -> Result<Vec<ProbeInfo>> {
        match self.trace("ListProbes", TraceRequest::ListProbes)? {
            Some(TraceResponse::Probes(p)) => Ok(p),
            other => Err(unexpected("ListProbes", other)),
        }
    }

    /// Register a probe with the built-in counting handler.
    fn add_probe(&mut self, target: ProbeTarget, kind: ProbeKind) -> Result<ProbeInfo> {
        match self.trace("AddProbe", TraceRequest::AddProbe { target, kind })? {
            Some(TraceResponse::ProbeAdded(p)) => Ok(p),
            other => Err(unexpected("AddProbe", other)),
        }
    }

    /// Unregister a probe.
    fn remove_probe(&mut self, id: u32) -> Result<()> {
        self.trace("RemoveProbe", TraceRequest::RemoveProbe { id })
            .map(|_| ())
    }

    /// The instance pool shared by all return probes.
    fn retprobe_pool(&mut self) -> Result<RetprobePool> {
        match self.trace("RetprobePool", TraceRequest::RetprobePool)? {
            Some(TraceResponse::RetprobePool(p)) => Ok(p),
            other => Err(unexpected("RetprobePool", other)),
        }
    }

    /// Jump optimisation of kprobes: `Some` switches it kernel-wide,
    /// `None` asks. Returns (on, probes optimised now).
    fn optimisation(&mut self, on: Option<bool>) -> Result<(bool, u32)> {
        match self.trace("Optimisation", TraceRequest::Optimisation { on })? {
            Some(TraceResponse::Optimisation { on, optimised }) => Ok((on, optimised)),
            other => Err(unexpected("Optimisation", other)),
        }
    }

    /// The kprobe blacklist.
    fn blacklist(&mut self) -> Result<Vec<BlacklistEntry>> {
        match self.trace("ListBlacklist", TraceRequest::ListBlacklist)? {
            Some(TraceResponse::Blacklist(b)) => Ok(b),
            other => Err(unexpected("ListBlacklist", other)),
        }
    }

    /// Every tracepoint with its format and state.
    fn list_tracepoints(&mut self) -> Result<Vec<TracepointInfo>> {
        match self.trace("ListTracepoints", TraceRequest::ListTracepoints)? {
            Some(TraceResponse::Tracepoints(t)) => Ok(t),
            other => Err(unexpected("ListTracepoints", other)),
        }
    }

    /// Attach the counting handler to `category:name`; returns the
    /// attachment id.
    fn attach_tracepoint(&mut self, name: &str) -> Result<u32> {
        match self.trace(
            "AttachTracepoint",
            TraceRequest::AttachTracepoint { name: name.into() },
        )? {
            Some(TraceResponse::Attached { id }) => Ok(id),
            other => Err(unexpected("AttachTracepoint", other)),
        }
    }

    /// Detach a tracepoint attachment.
    fn detach_tracepoint(&mut self, id: u32) -> Result<()> {
        self.trace("DetachTracepoint", TraceRequest::DetachTracepoint { id })
            .map(|_| ())
    }

    /// The perf events open now and who holds them (opens nothing).
    fn list_perf(&mut self) -> Result<Vec<PerfEventInfo>> {
        match self.trace("ListPerf", TraceRequest::ListPerf)? {
            Some(TraceResponse::PerfEvents(e)) => Ok(e),
            other => Err(unexpected("ListPerf", other)),
        }
    }

    /// Open a perf event (disabled).
    fn perf_open(&mut self, event: PerfEvent) -> Result<u32> {
        match self.trace("PerfOpen", TraceRequest::PerfOpen { event })? {
            Some(TraceResponse::PerfOpened { id }) => Ok(id),
            other => Err(unexpected("PerfOpen", other)),
        }
    }

    /// Enable a perf event.
    fn perf_enable(&mut self, id: u32) -> Result<()> {
        self.trace("PerfEnable", TraceRequest::PerfEnable { id })
            .map(|_| ())
    }

    /// Disable a perf event.
    fn perf_disable(&mut self, id: u32) -> Result<()> {
        self.trace("PerfDisable", TraceRequest::PerfDisable { id })
            .map(|_| ())
    }

    /// Enable several perf events at one instant.
    fn perf_enable_group(&mut self, ids: &[u32]) -> Result<()> {
        self.trace(
            "PerfEnableGroup",
            TraceRequest::PerfEnableGroup { ids: ids.to_vec() },
        )
        .map(|_| ())
    }

    /// Disable several perf events at one instant.
    fn perf_disable_group(&mut self, ids: &[u32]) -> Result<()> {
        self.trace(
            "PerfDisableGroup",
            TraceRequest::PerfDisableGroup { ids: ids.to_vec() },
        )
        .map(|_| ())
    }

    /// Read a perf event.
    fn perf_read(&mut self, id: u32) -> Result<PerfValue> {
        match self.trace("PerfRead", TraceRequest::PerfRead { id })? {
            Some(TraceResponse::PerfValue(v)) => Ok(v),
            other => Err(unexpected("PerfRead", other)),
        }
    }

    /// Drain up to `max` samples; also returns the lost count.
    fn perf_drain(&mut self, id: u32, max: u32) -> Result<(Vec<PerfSample>, u64)> {
        match self.trace("PerfDrain", TraceRequest::PerfDrain { id, max })? {
            Some(TraceResponse::PerfSamples { samples, lost }) => Ok((samples, lost)),
            other => Err(unexpected("PerfDrain", other)),
        }
    }

    /// Close a perf event.
    fn perf_close(&mut self, id: u32) -> Result<()> {
        self.trace("PerfClose", TraceRequest::PerfClose { id })
            .map(|_| ())
    }
}

fn unexpected(what: &'static str, got: Option<TraceResponse>) -> ClientError {
    ClientError::Unexpected {
        what,
        got: format!("{got:?}"),
    }
}

impl TraceClient for Client {
    fn trace(&mut self, what: &'static str, req: TraceRequest) -> Result<Option<TraceResponse>> {
        match self.request(&Request::Trace(req))? {
            Response::Trace(t) => Ok(Some(t)),
            Response::Ok => Ok(None),
            Response::Error(reply) => Err(ClientError::Kernel { what, reply }),
            other => Err(ClientError::Unexpected {
                what,
                got: format!("{other:?}"),
            }),
        }
    }
}
