//! Control-channel requests of the trace subsystem, and the built-in
//! counting handler the host attaches to kprobes, kretprobes and
//! tracepoints (before BPF exists, and for tests).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use ktrace_abi::trace::{
    BlacklistEntry, ProbeInfo, ProbeKind, ProbeMode, ProbeTarget, RetprobePool, TraceRequest,
    TraceResponse, TracepointField, TracepointInfo,
};
use ktrace_abi::{ErrorCode, Response};

use super::kprobe::{self, KprobeError, KprobeHandler};
use super::kretprobe::{self, KretprobeHandler, RetInstance};
use super::perf::{self, PerfError};
use super::tracepoint::{self, TracepointHandler};
use crate::arch::PtRegs;
use crate::error::{Answer, Error};
use crate::session::Session;
use ktrace_kprobe::TextAddr;

/// Counts hits and keeps the last value seen: the first argument (kprobe),
/// the return value and summed latency (kretprobe), the first record word
/// (tracepoint).
#[derive(Default)]
pub struct CountHandler {
    /// Hits.
    pub count: AtomicU64,
    /// Last value.
    pub last: AtomicU64,
    /// Kretprobes: nanoseconds from entry to return, summed.
    pub total_ns: AtomicU64,
}

impl KprobeHandler for CountHandler {
    fn pre(&self, regs: &mut PtRegs) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last.store(regs.rdi, Ordering::Relaxed);
    }
    fn kind(&self) -> &'static str {
        "count"
    }
}

impl KretprobeHandler for CountHandler {
    fn ret(&self, regs: &mut PtRegs, inst: &RetInstance) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last.store(regs.rax, Ordering::Relaxed);
        self.total_ns.fetch_add(
            crate::time::now_ns().saturating_sub(inst.entry_ns),
            Ordering::Relaxed,
        );
    }
    fn kind(&self) -> &'static str {
        "count"
    }
}

impl TracepointHandler for CountHandler {
    fn event(&self, record: &[u8], _regs: &PtRegs) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut w = [0u8; 8];
        let n = record.len().min(8);
        w[..n].copy_from_slice(&record[..n]);
        self.last.store(u64::from_le_bytes(w), Ordering::Relaxed);
    }
    fn kind(&self) -> &'static str {
        "count"
    }
}

/// Counting handlers attached over the control channel, by probe id.
static COUNTERS: spin::Mutex<BTreeMap<u32, Arc<CountHandler>>> = spin::Mutex::new(BTreeMap::new());

fn err(code: ErrorCode, message: String) -> Error {
    Error::plain(code, message)
}

fn kprobe_err(e: KprobeError) -> Error {
    let code = match &e {
        KprobeError::UnknownSymbol(_) | KprobeError::NotFound(_) => ErrorCode::NotFound,
        KprobeError::OutOfMemory => ErrorCode::Limit,
        KprobeError::Patch(_) => ErrorCode::Other,
        _ => ErrorCode::InvalidArgument,
    };
    err(code, e.to_string())
}

fn perf_err(e: PerfError) -> Error {
    let code = match &e {
        PerfError::NotFound(_) => ErrorCode::NotFound,
        PerfError::NotSupported(_) => ErrorCode::NotSupported,
        PerfError::Busy => ErrorCode::Limit,
        _ => ErrorCode::InvalidArgument,
    };
    err(code, e.to_string())
}

fn probe_info(id: u32) -> Option<ProbeInfo> {
    let counter = COUNTERS.lock().get(&id).cloned();
    let (last_value, total_ns) = counter
        .as_ref()
        .map(|c| {
            (
                c.last.load(Ordering::Relaxed),
                c.total_ns.load(Ordering::Relaxed),
            )
        })
        .unwrap_or((0, 0));
    if let Some(rp) = kretprobe::get(id) {
        let (symbol, offset) = kprobe::describe(rp.func());
        let (mode, not_optimised) = mode(rp.func());
        return Some(ProbeInfo {
            id,
            kind: ProbeKind::Kretprobe {
                maxactive: rp.maxactive(),
            },
            addr: rp.func().get(),
            symbol,
            offset,
            hits: rp.hits(),
            missed: rp.missed(),
            mode,
            not_optimised,
            boosted_hits: 0,
            handler: rp.handler().kind().to_string(),
            last_value,
            total_ns,
            in_flight: rp.active(),
        });
    }
    let k = kprobe::get(id)?;
    let (symbol, offset) = kprobe::describe(k.addr());
    let (mode, not_optimised) = mode(k.addr());
    Some(ProbeInfo {
        id,
        kind: ProbeKind::Kprobe,
        addr: k.addr().get(),
        symbol,
        offset,
        hits: k.hits(),
        missed: k.missed(),
        mode,
        not_optimised,
        boosted_hits: k.boosted_hits(),
        handler: k.handler().kind().to_string(),
        last_value,
        total_ns,
        in_flight: 0,
    })
}

/// How the site at `addr` runs, and why it is not optimised.
fn mode(addr: TextAddr) -> (ProbeMode, String) {
    match kprobe::site_mode(addr) {
        Some((m, why)) => (
            match m {
                kprobe::Mode::Int3 => ProbeMode::Int3,
                kprobe::Mode::Boosted => ProbeMode::Boosted,
                kprobe::Mode::Optimised => ProbeMode::Optimised,
            },
            why.unwrap_or_default(),
        ),
        None => (ProbeMode::Int3, String::from("not registered")),
    }
}

/// All probes for listings (kretprobe entry kprobes are shown as their
/// return probe).
pub fn list_probes() -> Vec<ProbeInfo> {
    let mut out: Vec<ProbeInfo> = kprobe::probes()
        .iter()
        .filter(|k| !kretprobe::is_entry_probe(k))
        .filter_map(|k| probe_info(k.id()))
        .collect();
    out.extend(
        kretprobe::probes()
            .iter()
            .filter_map(|r| probe_info(r.id())),
    );
    out.sort_by_key(|p| p.id);
    out
}

fn resolve(target: &ProbeTarget) -> Result<TextAddr, KprobeError> {
    match target {
        // A claim to be text, which registration checks.
        ProbeTarget::Address(a) => Ok(TextAddr(*a)),
        ProbeTarget::Symbol { name, offset } => kprobe::resolve(name, *offset),
    }
}

/// Tracepoints with formats and state.
pub fn list_tracepoints() -> Vec<TracepointInfo> {
    super::points::ALL
        .iter()
        .map(|tp| TracepointInfo {
            category: tp.desc.category.to_string(),
            name: tp.desc.name.to_string(),
            size: tp.desc.size,
            fields: tp
                .desc
                .fields
                .iter()
                .map(|f| TracepointField {
                    name: f.name.to_string(),
                    type_name: f.type_name.to_string(),
                    offset: f.offset,
                    size: f.size,
                    signed: f.signed,
                })
                .collect(),
            refcount: tp.refcount(),
            sites: tracepoint::sites(tp).len() as u32,
            hits: tp.hits(),
        })
        .collect()
}

fn blacklist() -> Vec<BlacklistEntry> {
    let mut out: Vec<BlacklistEntry> = kprobe::blacklist::ranges()
        .iter()
        .map(|r| BlacklistEntry {
            start: r.start,
            end: r.end,
            symbol: crate::ksyms::lookup(r.start)
                .map(|(s, _)| s.name.to_string())
                .unwrap_or_default(),
            reason: r.reason.to_string(),
        })
        .collect();
    out.extend(kprobe::blacklist::PREFIXES.iter().map(|p| BlacklistEntry {
        start: 0,
        end: 0,
        symbol: format!("{}*", p.prefix),
        reason: p.reason.to_string(),
    }));
    out
}

/// Answer one trace request of `session`'s client: the perf events it
/// opens are that client's.
pub fn handle(req: TraceRequest, session: &Session) -> Answer {
    let ok = |r: TraceResponse| Ok(Response::Trace(r));
    match req {
        TraceRequest::ListProbes => ok(TraceResponse::Probes(list_probes())),
        TraceRequest::AddProbe { target, kind } => {
            let addr = match resolve(&target) {
                Ok(a) => a,
                Err(e) => return Err(kprobe_err(e)),
            };
            let counter = Arc::new(CountHandler::default());
            let id = match kind {
                ProbeKind::Kprobe => kprobe::register(addr, counter.clone()).map(|k| k.id()),
                ProbeKind::Kretprobe { maxactive } => {
                    kretprobe::register(addr, maxactive, counter.clone()).map(|r| r.id())
                }
            };
            match id {
                Ok(id) => {
                    COUNTERS.lock().insert(id, counter);
                    match probe_info(id) {
                        Some(info) => ok(TraceResponse::ProbeAdded(info)),
                        None => Err(err(
                            ErrorCode::Other,
                            format!("probe {id} vanished after registration"),
                        )),
                    }
                }
                Err(e) => Err(kprobe_err(e)),
            }
        }
        TraceRequest::RemoveProbe { id } => {
            let r = if kretprobe::get(id).is_some() {
                kretprobe::unregister(id)
            } else if kprobe::get(id).is_some_and(|k| !kretprobe::is_entry_probe(&k)) {
                kprobe::unregister(id)
            } else {
                Err(KprobeError::NotFound(id))
            };
            match r {
                Ok(()) => {
                    COUNTERS.lock().remove(&id);
                    Ok(Response::Ok)
                }
                Err(e) => Err(kprobe_err(e)),
            }
        }
        TraceRequest::ListBlacklist => ok(TraceResponse::Blacklist(blacklist())),
        TraceRequest::RetprobePool => {
            let (size, free, held_by_removed) = kretprobe::pool_stats();
            ok(TraceResponse::RetprobePool(RetprobePool {
                size,
                free,
                held_by_removed,
            }))
        }
        TraceRequest::Optimisation { on } => {
            let optimised = match on {
                Some(on) => kprobe::set_optimisation(on),
                None => kprobe::optimised_count(),
            };
            ok(TraceResponse::Optimisation {
                on: kprobe::optimisation(),
                optimised: optimised as u32,
            })
        }
        TraceRequest::ListTracepoints => ok(TraceResponse::Tracepoints(list_tracepoints())),
        TraceRequest::AttachTracepoint { name } => {
            let counter = Arc::new(CountHandler::default());
            match tracepoint::attach(&name, counter.clone()) {
                Ok(id) => {
                    TP_COUNTERS.lock().insert(id, counter);
                    ok(TraceResponse::Attached { id })
                }
                Err(e) => Err(err(ErrorCode::NotFound, e.to_string())),
            }
        }
        TraceRequest::DetachTracepoint { id } => match tracepoint::detach(id) {
            Ok(()) => {
                TP_COUNTERS.lock().remove(&id);
                Ok(Response::Ok)
            }
            Err(e) => Err(err(ErrorCode::NotFound, e.to_string())),
        },
        TraceRequest::PerfOpen { event } => match perf::open_for_client(&event, *session) {
            Ok(id) => ok(TraceResponse::PerfOpened { id }),
            Err(e) => Err(perf_err(e)),
        },
        TraceRequest::ListPerf => ok(TraceResponse::PerfEvents(perf::list())),
        TraceRequest::PerfEnable { id } => perf::enable(id).map(|_| Response::Ok).map_err(perf_err),
        TraceRequest::PerfDisable { id } => {
            perf::disable(id).map(|_| Response::Ok).map_err(perf_err)
        }
        TraceRequest::PerfEnableGroup { ids } => perf::enable_group(&ids)
            .map(|_| Response::Ok)
            .map_err(perf_err),
        TraceRequest::PerfDisableGroup { ids } => perf::disable_group(&ids)
            .map(|_| Response::Ok)
            .map_err(perf_err),
        TraceRequest::PerfRead { id } => match perf::read(id) {
            Ok(v) => ok(TraceResponse::PerfValue(v)),
            Err(e) => Err(perf_err(e)),
        },
        TraceRequest::PerfDrain { id, max } => match perf::drain(id, max as usize) {
            Ok((samples, lost)) => ok(TraceResponse::PerfSamples { samples, lost }),
            Err(e) => Err(perf_err(e)),
        },
        TraceRequest::PerfClose { id } => perf::close(id).map(|_| Response::Ok).map_err(perf_err),
    }
}

/// Perf events belong to the client that opened them, as in Linux, where
/// they are file descriptors: `kperf`'s counters (and the kprobes and
/// tracepoint attachments behind them) and its sampling timer. When that
/// client goes, however it goes (`kill -9` included), they are closed, so
/// the next `kperf record` does not find the one timer busy. This closes
/// those of the clients of `now`'s session before `now` (control task, once
/// it saw the port close).
pub fn release_session(now: &Session) {
    let session = now.id;
    let closed =
        perf::close_held_by(|held| held.id == session && held.generation != now.generation);
    if closed > 0 {
        log::info!("trace: session {session} ended: closed {closed} perf events it held");
    }
}

/// Counting handlers on tracepoints, by attachment id.
static TP_COUNTERS: spin::Mutex<BTreeMap<u32, Arc<CountHandler>>> =
    spin::Mutex::new(BTreeMap::new());
