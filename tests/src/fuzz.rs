//! The coverage-guided fuzzer of everything a host can send.
//!
//! A *program* is a sequence of steps: typed requests (from [`crate::gen`])
//! on one of [`CLIENTS`] clients, some sent without waiting for the answer
//! (the next steps run meanwhile), and clients that vanish at a byte of a
//! frame or mid-stream. Requests that use an object carry the id an earlier
//! step created; replaying a program maps those ids to the ones the new run
//! creates, so a saved program reproduces on a fresh VM.
//!
//! The kernel is the coverage build ([`probe_sdk::kernel_image::Build`]):
//! each client's session records the edges its control task runs. A program
//! that reaches an edge no earlier program reached joins the corpus; new
//! programs are corpus entries mutated (steps appended, inserted, replaced,
//! deleted, two programs spliced) or generated afresh, with BPF programs
//! from the verifier soundness fuzzer's generator.
//!
//! After every program the VM is classified as the boot classifier does:
//! **panicked** (a panic or fatal-exception report on the console),
//! **hung** (a request or a new client went unanswered), or alive. A
//! failure is deduplicated by the symbolized top frames of its report (or
//! what hung), then minimised on fresh VMs to a short program that still
//! fails the same way, saved as a file `ktrace-fuzz --replay` runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ktrace_abi::block::BlockRequest;
use ktrace_abi::bpf::{
    AttachTarget, BpfRequest, BpfResponse, Limits, LoadOptions, MapDefinition, ProgramLoad,
    ProgramType,
};
use ktrace_abi::trace::{TraceRequest, TraceResponse};
use ktrace_abi::vm::CoverageOp;
use ktrace_abi::{Request, Response};
use probe_sdk::client::{Client, ConnectOptions};
use probe_sdk::kernel_image;
use probe_sdk::vm::{PanicReport, Vm, VmConfig};
use serde::{Deserialize, Serialize};

use crate::gen::{gen_request, record, Rng, World, KINDS};

#[path = "../../bpf-vm/tests/support/gen.rs"]
#[allow(dead_code)]
mod verifier_gen;

/// Clients a program drives at once (the kernel serves four sessions; one
/// stays free for the recovery check after a client vanishes).
pub const CLIENTS: usize = 3;

/// Kinds of objects requests create and use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Res {
    Map,
    Prog,
    Link,
    Probe,
    Tracepoint,
    Perf,
}

/// One step of a program.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Step {
    /// `req` on client `client`. Without `wait`, its answer is collected
    /// before that client's next step, and the steps between run
    /// meanwhile. `created` are the ids the request created when this
    /// program was recorded.
    Call {
        client: u8,
        req: Request,
        wait: bool,
        created: Vec<(Res, u32)>,
    },
    /// Client `client` sends the first `cut` bytes of a frame and goes
    /// away (whatever it subscribed to still streaming); a new client must
    /// then be answered.
    Vanish { client: u8, cut: u16 },
    /// What happens between two programs: every answer collected, what
    /// was created freed, coverage collected (reproducers made from a
    /// run's history keep these).
    Checkpoint,
    /// Nothing for `ms` milliseconds: what was sent without waiting runs,
    /// streams fill what the clients do not read.
    Pause { ms: u16 },
}

/// A sequence of steps: a corpus entry or a reproducer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Program {
    pub steps: Vec<Step>,
}

impl Program {
    pub fn load(path: &Path) -> Result<Program, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a fuzzer program: {e}", path.display()))
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            serde_json::to_string(self).expect("programs serialize"),
        )
    }

    /// One line per step, for reports.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.steps.iter().enumerate() {
            let line = match s {
                Step::Call {
                    client, req, wait, ..
                } => {
                    let mut r = format!("{req:?}");
                    if r.len() > 160 {
                        let cut = (0..=160)
                            .rev()
                            .find(|&i| r.is_char_boundary(i))
                            .unwrap_or(0);
                        r.truncate(cut);
                        r.push_str("...");
                    }
                    format!(
                        "client {client}{}: {r}",
                        if *wait { "" } else { " (no wait)" }
                    )
                }
                Step::Vanish { client, cut } => {
                    format!("client {client} vanishes after {cut} bytes of a frame")
                }
                Step::Checkpoint => {
                    "checkpoint: answers in, objects freed, coverage collected".into()
                }
                Step::Pause { ms } => format!("pause {ms} ms"),
            };
            let _ = writeln!(out, "{i:3}  {line}");
        }
        out
    }
}

/// What a run of a program left the VM as.
#[derive(Debug, Clone)]
pub enum Verdict {
    Alive,
    /// A panic or fatal-exception report on the console.
    Panicked(PanicReport),
    /// Something went unanswered (what, and the console tail).
    Hung {
        what: String,
        console_tail: String,
    },
}

impl Verdict {
    /// What identifies the failure across runs: the report's first
    /// symbolized frames outside the panic machinery, or what hung.
    pub fn signature(&self) -> Option<String> {
        match self {
            Verdict::Alive => None,
            Verdict::Panicked(r) => {
                let frames: Vec<&str> = r
                    .frames
                    .iter()
                    .filter_map(|f| f.symbol.as_deref())
                    .filter(|s| {
                        ![
                            "kernel::panic::",
                            "core::panicking::",
                            "core::result::unwrap_failed",
                            "core::option::",
                            "rust_begin_unwind",
                            "kernel::debug::backtrace",
                            "kernel::arch::x86_64::trap::",
                        ]
                        .iter()
                        .any(|p| s.starts_with(p))
                    })
                    .take(3)
                    .collect();
                let kind = match r.kind {
                    probe_sdk::vm::ReportKind::Panic => "panic",
                    probe_sdk::vm::ReportKind::Exception => "fatal exception",
                };
                Some(format!("{kind} in {}", frames.join(" < ")))
            }
            // What went unanswered differs from run to run (ids, the
            // request that happened to come next): the kind of hang is
            // the signature.
            Verdict::Hung { what, .. } => Some(
                if what.contains("no new client was answered")
                    || what.contains("a new client was not answered")
                {
                    "hung: a session no longer answers new clients"
                } else if what.contains("the VM exited") {
                    "hung: the VM exited without a report"
                } else if what.contains("another session was answered") {
                    "hung: a session stopped answering; the others answer"
                } else {
                    "hung: the kernel answers no session"
                }
                .to_string(),
            ),
        }
    }
}

/// A resource created by a step: which kind, which id.
fn created_ids(resp: &Response) -> Vec<(Res, u32)> {
    match resp {
        Response::Trace(TraceResponse::ProbeAdded(p)) => vec![(Res::Probe, p.id)],
        Response::Trace(TraceResponse::Attached { id }) => vec![(Res::Tracepoint, *id)],
        Response::Trace(TraceResponse::PerfOpened { id }) => vec![(Res::Perf, *id)],
        Response::Bpf(BpfResponse::Map(m)) => vec![(Res::Map, m.id)],
        Response::Bpf(BpfResponse::Program(p)) => vec![(Res::Prog, p.id)],
        Response::Bpf(BpfResponse::Link(l)) => vec![(Res::Link, l.id)],
        Response::Bpf(BpfResponse::Object(o)) => o
            .maps
            .iter()
            .map(|m| (Res::Map, m.id))
            .chain(o.programs.iter().map(|p| (Res::Prog, p.id)))
            .chain(o.links.iter().map(|l| (Res::Link, l.id)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Every object id a request names, with its kind.
pub fn for_each_id(req: &mut Request, mut f: impl FnMut(Res, &mut u32)) {
    use BpfRequest as B;
    use TraceRequest as T;
    match req {
        Request::Trace(t) => match t {
            T::RemoveProbe { id } => f(Res::Probe, id),
            T::DetachTracepoint { id } => f(Res::Tracepoint, id),
            T::PerfEnable { id }
            | T::PerfDisable { id }
            | T::PerfRead { id }
            | T::PerfDrain { id, .. }
            | T::PerfClose { id } => f(Res::Perf, id),
            T::PerfEnableGroup { ids } | T::PerfDisableGroup { ids } => {
                ids.iter_mut().for_each(|id| f(Res::Perf, id))
            }
            _ => {}
        },
        Request::Bpf(b) => match b {
            B::MapLookup { map, .. }
            | B::MapUpdate { map, .. }
            | B::MapDelete { map, .. }
            | B::MapNextKey { map, .. }
            | B::MapDump { map, .. }
            | B::MapUpdateBatch { map, .. }
            | B::MapDeleteBatch { map, .. }
            | B::MapFree { map } => f(Res::Map, map),
            B::ProgLoad { maps, .. }
            | B::EventsSubscribe { maps, .. }
            | B::EventsPoll { maps, .. } => maps.iter_mut().for_each(|m| f(Res::Map, m)),
            B::ProgDump { prog }
            | B::ProgUnload { prog }
            | B::ProgTestRun { prog, .. }
            | B::Attach { prog, .. } => f(Res::Prog, prog),
            B::Detach { link } => f(Res::Link, link),
            _ => {}
        },
        _ => {}
    }
}

/// Subsystems the coverage summary reports, by function path prefix.
pub const SUBSYSTEMS: [(&str, &[&str]); 6] = [
    (
        "control",
        &[
            "kernel::control::",
            "kernel::drivers::",
            "ktrace_abi::",
            "postcard::",
        ],
    ),
    ("verifier", &["bpf_vm::verifier"]),
    ("bpf", &["kernel::bpf::", "bpf_vm::", "ktrace_bpf_maps::"]),
    (
        "trace",
        &[
            "kernel::trace::",
            "ktrace_kprobe::",
            "ktrace_tracepoints::",
            "ktrace_sample_ring::",
            "kernel::arch::x86_64::text_patch",
        ],
    ),
    (
        "block",
        &[
            "kernel::block::",
            "ktrace_block::",
            "virtio_drivers::device::blk",
        ],
    ),
    ("other", &[""]),
];

fn subsystem_of(name: &str) -> usize {
    let name = name.trim_start_matches('<');
    SUBSYSTEMS
        .iter()
        .position(|(_, prefixes)| prefixes.iter().any(|p| name.starts_with(p)))
        .unwrap_or(SUBSYSTEMS.len() - 1)
}

/// Which function each edge guard belongs to, read from the coverage
/// build's text: every instrumented edge is `lea rdi, [rip + guard]`
/// followed by `call __sanitizer_cov_trace_pc_guard`.
pub struct EdgeMap {
    pub functions: Vec<kernel_image::Function>,
    /// Function index (into `functions`) of each guard, when found. An
    /// edge of a function inlined into others has a call site in each
    /// (the pass runs before inlining): the first one found is used.
    pub guard_function: Vec<Option<u32>>,
    /// Every call site of each guard: the address its call returns to.
    pub guard_sites: Vec<Vec<u64>>,
}

impl EdgeMap {
    pub fn from_elf(path: &Path) -> Result<EdgeMap, String> {
        use object::{Object, ObjectSection, ObjectSymbol};
        let elf = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut functions = kernel_image::functions(path, &elf).map_err(|e| e.to_string())?;
        functions.sort_by_key(|f| f.addr);
        let file = object::File::parse(&*elf).map_err(|e| e.to_string())?;
        let sym = |name: &str| {
            file.symbols()
                .find(|s| s.name() == Ok(name))
                .map(|s| s.address())
        };
        let (Some(callback), Some(start), Some(stop)) = (
            sym("__sanitizer_cov_trace_pc_guard"),
            sym("__start___sancov_guards"),
            sym("__stop___sancov_guards"),
        ) else {
            return Err(format!(
                "{}: not a coverage build (no __sanitizer_cov_trace_pc_guard or guard section)",
                path.display()
            ));
        };
        let mut guard_function = vec![None; ((stop - start) / 4) as usize];
        let mut guard_sites = vec![Vec::new(); guard_function.len()];
        let text = file.section_by_name(".text").ok_or("no .text section")?;
        let base = text.address();
        let bytes = text.data().map_err(|e| e.to_string())?;
        let rel = |at: usize| i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as i64;
        let mut f = 0usize;
        for i in 0..bytes.len().saturating_sub(12) {
            if bytes[i..i + 3] != [0x48, 0x8d, 0x3d] || bytes[i + 7] != 0xe8 {
                continue;
            }
            let at = base + i as u64;
            let guard = (at as i64 + 7 + rel(i + 3)) as u64;
            let target = (at as i64 + 12 + rel(i + 8)) as u64;
            if target != callback
                || guard < start
                || guard >= stop
                || !(guard - start).is_multiple_of(4)
            {
                continue;
            }
            while f + 1 < functions.len() && functions[f + 1].addr <= at {
                f += 1;
            }
            let g = ((guard - start) / 4) as usize;
            guard_sites[g].push(at + 12);
            let func = &functions[f];
            if func.addr <= at && at < func.addr + u64::from(func.size) {
                guard_function[g].get_or_insert(f as u32);
            }
        }
        Ok(EdgeMap {
            functions,
            guard_function,
            guard_sites,
        })
    }

    /// Edges and functions reached per subsystem, as a table.
    pub fn summary(&self, reached: &HashSet<u32>) -> String {
        let n = SUBSYSTEMS.len();
        let (mut edges, mut edges_hit) = (vec![0u64; n], vec![0u64; n]);
        let mut fns: Vec<HashSet<u32>> = vec![HashSet::new(); n];
        let mut fns_hit: Vec<HashSet<u32>> = vec![HashSet::new(); n];
        let mut unmapped = (0u64, 0u64);
        for (g, f) in self.guard_function.iter().enumerate() {
            let hit = reached.contains(&(g as u32));
            match f {
                Some(f) => {
                    let s = subsystem_of(&self.functions[*f as usize].name);
                    edges[s] += 1;
                    fns[s].insert(*f);
                    if hit {
                        edges_hit[s] += 1;
                        fns_hit[s].insert(*f);
                    }
                }
                None => {
                    unmapped.0 += 1;
                    unmapped.1 += u64::from(hit);
                }
            }
        }
        let mut out = format!(
            "{:<10} {:>16} {:>7} {:>16} {:>7}\n",
            "subsystem", "edges reached", "", "functions", ""
        );
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        for s in 0..n {
            let (fh, ft) = (fns_hit[s].len() as u64, fns[s].len() as u64);
            let _ = writeln!(
                out,
                "{:<10} {:>7} / {:<6} {:>6.1}% {:>7} / {:<6} {:>6.1}%",
                SUBSYSTEMS[s].0,
                edges_hit[s],
                edges[s],
                pct(edges_hit[s], edges[s]),
                fh,
                ft,
                pct(fh, ft)
            );
        }
        let (th, tt) = (
            edges_hit.iter().sum::<u64>() + unmapped.1,
            edges.iter().sum::<u64>() + unmapped.0,
        );
        let _ = writeln!(
            out,
            "{:<10} {:>7} / {:<6} {:>6.1}%   ({} edges not attributed to a function)",
            "all",
            th,
            tt,
            pct(th, tt),
            unmapped.0
        );
        out
    }
}

/// How programs are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Corpus, mutation, coverage feedback, several clients.
    Guided,
    /// The request fuzzer's way, for comparison: fresh random requests on
    /// one client, now and then a side client that vanishes; no feedback.
    Random,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub seed: u64,
    pub budget: Duration,
    /// Corpus directory: read at the start; new entries written to it
    /// when `save_corpus`.
    pub corpus: Option<PathBuf>,
    pub save_corpus: bool,
    /// Where crash reproducers and reports go.
    pub crashes: PathBuf,
    /// Minimise each new failure (fresh VMs; takes minutes).
    pub minimise: bool,
    /// Time allowed to minimise one failure (not counted in `budget`).
    pub minimise_budget: Duration,
    /// Time allowed per request before the kernel counts as hung.
    pub request_timeout: Duration,
    /// Name prefix of the VMs.
    pub vm_name: String,
}

/// One distinct failure found.
#[derive(Debug, Clone)]
pub struct Crash {
    pub signature: String,
    pub verdict: String,
    pub found_after: Duration,
    pub programs_before: u64,
    pub requests_before: u64,
    pub reproducer: Option<PathBuf>,
    pub reproducer_steps: usize,
    pub reproduced: bool,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunReport {
    pub programs: u64,
    pub requests: u64,
    pub corpus_size: usize,
    pub edges: HashSet<u32>,
    pub edges_total: u32,
    pub crashes: Vec<Crash>,
    /// (seconds, edges) after each program.
    pub progress: Vec<(f64, usize)>,
}

/// Live state of one VM under test.
struct Target {
    vm: Vm,
    clients: Vec<Option<Client>>,
    /// The id of a request sent without waiting, per client.
    pending: Vec<Option<u32>>,
    /// Steps run since boot (what a failure is reproduced from).
    history: Vec<Step>,
    limits: Limits,
    edges_total: u32,
}

/// Executes programs against VMs, collecting coverage.
pub struct Executor {
    elf: PathBuf,
    base: World,
    request_timeout: Duration,
    vm_name: String,
    boots: u32,
    /// Addresses probes were armed at, kept across programs (as the
    /// request fuzzer keeps them): a later program's probe lands near them.
    armed: std::cell::RefCell<Vec<u64>>,
    /// Armed addresses that were hit, kept across programs.
    hit: std::cell::RefCell<Vec<u64>>,
    /// Print each answer (`--replay`).
    pub verbose: bool,
}

fn connect_opts(timeout: Duration) -> ConnectOptions {
    ConnectOptions {
        client_name: "ktrace-fuzz".into(),
        handshake_timeout: Duration::from_secs(10),
        request_timeout: timeout,
        ..ConnectOptions::default()
    }
}

/// A fuzzing failure while running a program.
struct Failed(String);

impl Executor {
    /// Boots a first VM on `elf` to learn about the kernel.
    pub fn new(elf: &Path, vm_name: &str, request_timeout: Duration) -> Executor {
        let mut ex = Executor {
            elf: elf.to_path_buf(),
            base: World {
                functions: Vec::new(),
                hot: Vec::new(),
                entry_ranges: Vec::new(),
                armed: Vec::new(),
                hit: Vec::new(),
                static_key_sites: Vec::new(),
                fixup_sites: Vec::new(),
                insns: Default::default(),
                entry_insns: Default::default(),
                maps: Vec::new(),
                progs: Vec::new(),
                kprobe_progs: Vec::new(),
                links: Vec::new(),
                probes: Vec::new(),
                tracepoint_attachments: Vec::new(),
                perf: Vec::new(),
                tracepoints: Vec::new(),
                dead: Vec::new(),
            },
            request_timeout,
            vm_name: vm_name.to_string(),
            boots: 0,
            armed: Default::default(),
            hit: Default::default(),
            verbose: false,
        };
        let mut t = ex.boot().unwrap_or_else(|e| panic!("the first VM: {e}"));
        let client = t.clients[0].as_mut().unwrap();
        ex.base = World::explore(client, elf);
        t.vm.kill();
        let _ = std::fs::remove_dir_all(&t.vm.paths().dir);
        ex
    }

    fn boot(&mut self) -> Result<Target, String> {
        self.boots += 1;
        let mut name = format!("{}-{}-{}", self.vm_name, std::process::id(), self.boots);
        name.truncate(64);
        let mut cfg = VmConfig::new(name);
        cfg.kernel = Some(self.elf.clone());
        cfg.boot_timeout = Duration::from_secs(90);
        cfg.quiet_build = true;
        let vm = Vm::start(&cfg).map_err(|e| format!("boot: {e}"))?;
        let mut t = Target {
            vm,
            clients: (0..CLIENTS).map(|_| None).collect(),
            pending: vec![None; CLIENTS],
            history: Vec::new(),
            limits: Limits {
                map_memory_bytes: 0,
                programs: 0,
                insns_per_program: 0,
                maps: 0,
            },
            edges_total: 0,
        };
        let c = self.client(&mut t, 0).map_err(|f| f.0)?;
        t.limits = match c.request(&Request::Bpf(BpfRequest::GetLimits)) {
            Ok(Response::Bpf(BpfResponse::Limits { limits, .. })) => *limits,
            other => return Err(format!("GetLimits: {other:?}")),
        };
        Ok(t)
    }

    /// Client `k`, connected (and recording coverage) if it was not.
    fn client<'t>(&self, t: &'t mut Target, k: usize) -> Result<&'t mut Client, Failed> {
        if t.clients[k].is_none() {
            let mut c =
                t.vm.connect(&connect_opts(self.request_timeout))
                    .map_err(|e| Failed(format!("a new client was not answered: {e}")))?;
            match c.coverage(CoverageOp::Enable) {
                Ok(r) => t.edges_total = r.edges_total,
                Err(e) if e.kernel_reply().is_some() => {} // not a coverage build
                Err(e) => return Err(Failed(format!("Debug(Coverage) went unanswered: {e}"))),
            }
            t.clients[k] = Some(c);
            t.pending[k] = None;
        }
        Ok(t.clients[k].as_mut().unwrap())
    }

    /// Wait for the answer to client `k`'s pending request, if any.
    fn settle(&self, t: &mut Target, k: usize) -> Result<Option<Response>, Failed> {
        let Some(id) = t.pending[k].take() else {
            return Ok(None);
        };
        let c = t.clients[k].as_mut().unwrap();
        let deadline = Instant::now() + self.request_timeout;
        while Instant::now() < deadline {
            match c.recv_any(Duration::from_millis(200)) {
                Ok(Some(env)) if env.id == id => return Ok(Some(env.body)),
                Ok(_) => {}
                Err(e) => return Err(Failed(format!("request #{id} sent without waiting: {e}"))),
            }
        }
        Err(Failed(format!(
            "no answer within {:?} to a request sent without waiting",
            self.request_timeout
        )))
    }

    /// Run one step; records ids in `world`, remaps with `ids`, returns
    /// the step as run.
    fn step(
        &self,
        t: &mut Target,
        step: &Step,
        world: &mut World,
        ids: &mut HashMap<(Res, u32), u32>,
        requests: &mut u64,
    ) -> Result<Step, Failed> {
        match step {
            Step::Call {
                client,
                req,
                wait,
                created,
            } => {
                let k = usize::from(*client) % CLIENTS;
                let mut req = req.clone();
                for_each_id(&mut req, |res, id| {
                    if let Some(n) = ids.get(&(res, *id)) {
                        *id = *n;
                    }
                });
                self.client(t, k)?;
                self.settle(t, k)?;
                let c = t.clients[k].as_mut().unwrap();
                *requests += 1;
                let what = || {
                    let mut s = format!("{req:?}");
                    s.truncate(s.char_indices().nth(200).map_or(s.len(), |(i, _)| i));
                    s
                };
                let mut run = Step::Call {
                    client: k as u8,
                    req: req.clone(),
                    wait: *wait,
                    created: Vec::new(),
                };
                if !*wait {
                    let id = c
                        .send_request(&req)
                        .map_err(|e| Failed(format!("sending {}: {e}", what())))?;
                    t.pending[k] = Some(id);
                    return Ok(run);
                }
                let resp = c
                    .request_raw(&req, self.request_timeout)
                    .map_err(|e| Failed(format!("no answer to {}: {e}", what())))?;
                c.take_pushes();
                if self.verbose {
                    let mut r = format!("{resp:?}");
                    r.truncate(r.char_indices().nth(300).map_or(r.len(), |(i, _)| i));
                    println!("     client {k}: {r}");
                }
                let now = created_ids(&resp);
                for ((res, old), (res2, new)) in created.iter().zip(&now) {
                    if res == res2 {
                        ids.insert((*res, *old), *new);
                    }
                }
                record(world, &req, &resp);
                if let Step::Call { created, .. } = &mut run {
                    *created = now;
                }
                Ok(run)
            }
            Step::Vanish { client, cut } => {
                let k = usize::from(*client) % CLIENTS;
                if let Some(mut c) = t.clients[k].take() {
                    t.pending[k] = None;
                    let frame = ktrace_abi::encode(9, &Request::Bpf(BpfRequest::MapList)).unwrap();
                    let cut = usize::from(*cut) % frame.len();
                    let _ = c.send_bytes(&frame[..cut]);
                    drop(c);
                    // The session answers a new client again.
                    let start = Instant::now();
                    loop {
                        match self.client(t, k) {
                            Ok(_) => break,
                            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                                std::thread::sleep(Duration::from_millis(100))
                            }
                            Err(Failed(e)) => {
                                return Err(Failed(format!(
                                    "after a client vanished, no new client was answered: {e}"
                                )))
                            }
                        }
                    }
                }
                Ok(Step::Vanish {
                    client: k as u8,
                    cut: *cut,
                })
            }
            Step::Checkpoint => Ok(Step::Checkpoint),
            Step::Pause { ms } => {
                std::thread::sleep(Duration::from_millis(u64::from(*ms).min(5_000)));
                Ok(Step::Pause { ms: *ms })
            }
        }
    }

    /// Classify the VM after `why` (empty: nothing failed yet).
    fn classify(&self, t: &mut Target, why: Option<String>) -> Verdict {
        // A report may take a moment to reach the console.
        for _ in 0..10 {
            if let Some(r) = PanicReport::find(&t.vm.console()) {
                return Verdict::Panicked(r);
            }
            if why.is_none() && t.vm.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let console = t.vm.console();
        let tail: String = console
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        if !t.vm.is_running() {
            return Verdict::Hung {
                what: "the VM exited without a report".into(),
                console_tail: tail,
            };
        }
        match why {
            // Whether the rest of the kernel still answers tells a session
            // stuck apart from a kernel stuck: a new client on a session
            // nobody holds.
            Some(what) => {
                let opts = ConnectOptions {
                    handshake_timeout: Duration::from_secs(5),
                    ..connect_opts(Duration::from_secs(5))
                };
                let others = t.vm.connect(&opts).is_ok_and(|mut c| c.info().is_ok());
                Verdict::Hung {
                    what: format!(
                        "{what} ({})",
                        if others {
                            "a new client on another session was answered"
                        } else {
                            "no session answers"
                        }
                    ),
                    console_tail: tail,
                }
            }
            None => Verdict::Alive,
        }
    }

    /// Run `prog` on `t`, steps marked `None` generated afresh in place.
    /// Returns the program as run, the edges it reached and the verdict.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        t: &mut Target,
        plan: &[Option<Step>],
        rng: &mut Rng,
        mode: Mode,
        requests: &mut u64,
    ) -> (Program, HashSet<u32>, Verdict) {
        let mut world = self.base.clone();
        world.forget_objects();
        world.armed.clone_from(&self.armed.borrow());
        world.hit.clone_from(&self.hit.borrow());
        let mut ids = HashMap::new();
        let mut done = Vec::new();
        let mut failure = None;
        for planned in plan {
            let steps = match planned {
                Some(s) => vec![s.clone()],
                None => fresh_steps(&mut world, rng, mode),
            };
            let fresh = planned.is_none();
            let mut group_maps = Vec::new();
            for mut s in steps {
                // Generated steps take live ids from `world` directly; a
                // generated verifier program gets the maps its group made.
                if let Step::Call {
                    req: Request::Bpf(BpfRequest::ProgLoad { prog, maps, .. }),
                    ..
                } = &mut s
                {
                    if fresh && prog.name == "gen" && maps.is_empty() {
                        maps.clone_from(&group_maps);
                    }
                }
                let result = if matches!(s, Step::Checkpoint) {
                    let mut ignored = HashSet::new();
                    self.checkpoint(t, &mut world, &mut ignored)
                        .map(|_| Step::Checkpoint)
                } else {
                    self.step(t, &s, &mut world, &mut ids, requests)
                };
                match result {
                    Ok(run) => {
                        if let Step::Call { created, .. } = &run {
                            group_maps.extend(
                                created
                                    .iter()
                                    .filter(|(r, _)| *r == Res::Map)
                                    .map(|(_, id)| *id),
                            );
                        }
                        t.history.push(run.clone());
                        done.push(run);
                    }
                    Err(Failed(why)) => {
                        t.history.push(s.clone());
                        done.push(s);
                        failure = Some(why);
                        break;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        let mut edges = HashSet::new();
        if failure.is_none() {
            if let Err(Failed(why)) = self.checkpoint(t, &mut world, &mut edges) {
                failure = Some(why);
            }
        }
        // Between programs, as in the run: a replay of the history does
        // the same work at the same places.
        t.history.push(Step::Checkpoint);
        self.armed.borrow_mut().clone_from(&world.armed);
        self.hit.borrow_mut().clone_from(&world.hit);
        let verdict = self.classify(t, failure);
        (Program { steps: done }, edges, verdict)
    }

    /// The end of a program: every answer in, what it created freed,
    /// each client's coverage collected into `edges` and reset.
    fn checkpoint(
        &self,
        t: &mut Target,
        world: &mut World,
        edges: &mut HashSet<u32>,
    ) -> Result<(), Failed> {
        for k in 0..CLIENTS {
            if t.clients[k].is_some() {
                self.settle(t, k)?;
            }
        }
        // Which armed probes were hit: code that runs (the last 64).
        if !world.probes.is_empty() {
            let c = self.client(t, 0)?;
            if let Ok(Response::Trace(TraceResponse::Probes(probes))) = c.request_raw(
                &Request::Trace(TraceRequest::ListProbes),
                self.request_timeout,
            ) {
                for p in probes.iter().filter(|p| p.hits > 0) {
                    if !world.hit.contains(&p.addr) {
                        if world.hit.len() >= 64 {
                            world.hit.remove(0);
                        }
                        world.hit.push(p.addr);
                    }
                }
            }
        }
        self.clean_up(t, world)?;
        world.forget_objects();
        for k in 0..CLIENTS {
            if let Some(c) = t.clients[k].as_mut() {
                match c.coverage(CoverageOp::Collect { reset: true }) {
                    Ok(r) => edges.extend(r.edges.iter().map(|e| e.guard)),
                    Err(e) if e.kernel_reply().is_some() => {}
                    Err(e) => return Err(Failed(format!("Debug(Coverage) went unanswered: {e}"))),
                }
            }
        }
        Ok(())
    }

    /// Free what the program created, restore limits, clear injected
    /// errors: the next program starts from the same kernel state.
    fn clean_up(&self, t: &mut Target, world: &World) -> Result<(), Failed> {
        let limits = t.limits.clone();
        let c = self.client(t, 0)?;
        let mut reqs: Vec<Request> = Vec::new();
        reqs.extend(
            world
                .links
                .iter()
                .map(|&link| Request::Bpf(BpfRequest::Detach { link })),
        );
        reqs.extend(
            world
                .progs
                .iter()
                .map(|&prog| Request::Bpf(BpfRequest::ProgUnload { prog })),
        );
        reqs.extend(
            world
                .maps
                .iter()
                .map(|&map| Request::Bpf(BpfRequest::MapFree { map })),
        );
        reqs.extend(
            world
                .probes
                .iter()
                .map(|&id| Request::Trace(TraceRequest::RemoveProbe { id })),
        );
        reqs.extend(
            world
                .tracepoint_attachments
                .iter()
                .map(|&id| Request::Trace(TraceRequest::DetachTracepoint { id })),
        );
        reqs.extend(
            world
                .perf
                .iter()
                .map(|&id| Request::Trace(TraceRequest::PerfClose { id })),
        );
        reqs.push(Request::Bpf(BpfRequest::SetLimits(Box::new(limits))));
        reqs.push(Request::Block(BlockRequest::InjectErrors {
            dev: "ram0".into(),
            sectors: None,
        }));
        for r in &reqs {
            c.request_raw(r, self.request_timeout)
                .map_err(|e| Failed(format!("cleaning up ({r:?}): {e}")))?;
        }
        // Pinned objects outlive their session: unload them all.
        if let Ok(Response::Bpf(BpfResponse::Objects(objects))) =
            c.request_raw(&Request::Bpf(BpfRequest::ObjectList), self.request_timeout)
        {
            for o in objects.iter().filter(|o| o.pin.is_some()) {
                let r = Request::Bpf(BpfRequest::ObjectUnload {
                    object: o.id.to_string(),
                });
                c.request_raw(&r, self.request_timeout)
                    .map_err(|e| Failed(format!("cleaning up ({r:?}): {e}")))?;
            }
        }
        c.take_pushes();
        Ok(())
    }

    /// Run `prog` on a fresh VM; the verdict.
    pub fn replay(&mut self, prog: &Program) -> Result<(Verdict, Program), String> {
        let mut t = self.boot()?;
        let mut rng = Rng(1);
        let plan: Vec<Option<Step>> = prog.steps.iter().cloned().map(Some).collect();
        let mut n = 0;
        let (run, _, verdict) = self.run(&mut t, &plan, &mut rng, Mode::Guided, &mut n);
        t.vm.kill();
        let _ = std::fs::remove_dir_all(&t.vm.paths().dir);
        Ok((verdict, run))
    }

    /// Whether `prog` fails with `signature` on a fresh VM, in one of
    /// `tries` runs (a failure that depends on timing may need several).
    fn reproduces(&mut self, prog: &Program, signature: &str, tries: u32) -> bool {
        self.tries_to_reproduce(prog, signature, tries).is_some()
    }

    /// The try (1, 2, ...) in which `prog` failed with `signature`.
    fn tries_to_reproduce(&mut self, prog: &Program, signature: &str, tries: u32) -> Option<u32> {
        (1..=tries).find(|_| {
            matches!(self.replay(prog), Ok((v, _)) if v.signature().as_deref() == Some(signature))
        })
    }

    /// [`Executor::minimise`] of a saved program: the signature is what a
    /// replay of it fails with (`None`: it did not fail in three tries).
    pub fn minimise_program(
        &mut self,
        prog: &Program,
        budget: Duration,
    ) -> Option<(String, Program)> {
        let sig = (0..3).find_map(|_| self.replay(prog).ok()?.0.signature())?;
        let min = self.minimise(&prog.steps, prog.steps.len(), &sig, budget)?;
        let min = match with_symbols(&min, &self.base.functions) {
            Some(named) if self.reproduces(&named, &sig, 2) => named,
            _ => min,
        };
        Some((sig, min))
    }

    /// A shorter program that still fails with `signature`, from the
    /// steps since boot; `None` if even those do not reproduce it.
    fn minimise(
        &mut self,
        history: &[Step],
        last: usize,
        signature: &str,
        budget: Duration,
    ) -> Option<Program> {
        let start = Instant::now();
        // A hang is waited for, on every candidate that still hangs: not
        // as long as while fuzzing (the steps are few and known).
        let fuzzing_timeout = self.request_timeout;
        self.request_timeout = fuzzing_timeout.min(Duration::from_secs(10));
        let min = self.minimise_steps(history, last, signature, budget, start);
        self.request_timeout = fuzzing_timeout;
        min
    }

    fn minimise_steps(
        &mut self,
        history: &[Step],
        last: usize,
        signature: &str,
        budget: Duration,
        start: Instant,
    ) -> Option<Program> {
        // The last program alone, then ever longer tails of the history.
        let mut tail = last.max(1).min(history.len());
        // Candidates get a second try unless the failure came back at the
        // first (a race may need several; a missed one only keeps steps).
        let mut tries = 2;
        let mut prog = loop {
            let p = Program {
                steps: history[history.len() - tail..].to_vec(),
            };
            if let Some(n) = self.tries_to_reproduce(&p, signature, 3) {
                if n == 1 {
                    tries = 1;
                }
                break p;
            }
            if tail == history.len() || start.elapsed() > budget {
                return None;
            }
            tail = (tail * 4).min(history.len());
        };
        // Remove chunks, halving their size, while it still fails.
        let mut chunk = prog.steps.len().div_ceil(2);
        while chunk >= 1 && start.elapsed() < budget {
            let mut i = 0;
            while i < prog.steps.len() && start.elapsed() < budget {
                let mut shorter = prog.clone();
                let end = (i + chunk).min(shorter.steps.len());
                shorter.steps.drain(i..end);
                if !shorter.steps.is_empty() && self.reproduces(&shorter, signature, tries) {
                    prog = shorter;
                } else {
                    i += chunk;
                }
            }
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        // Then the arguments: each step made simpler while it still fails.
        if prog.steps.len() <= 24 {
            let mut i = 0;
            while i < prog.steps.len() && start.elapsed() < budget {
                let mut simpler = false;
                for candidate in simplify(&prog.steps[i]) {
                    if start.elapsed() > budget {
                        break;
                    }
                    let mut p = prog.clone();
                    p.steps[i] = candidate;
                    if self.reproduces(&p, signature, tries) {
                        prog = p;
                        simpler = true;
                        break;
                    }
                }
                // A simpler step may be simpler still.
                if !simpler {
                    i += 1;
                }
            }
        }
        Some(prog)
    }
}

/// Fields whose numbers are amounts (not ids, addresses or sizes a
/// request checks): the argument pass makes them smaller.
const AMOUNTS: [&str; 7] = [
    "count", "repeat", "jobs", "iodepth", "max", "Count", "TimeMs",
];

/// Simpler versions of `step`, the simplest first: waiting for its
/// answer, amounts made smaller, long strings and lists cut in half
/// (every one at once, then none of those).
pub fn simplify(step: &Step) -> Vec<Step> {
    let mut out = Vec::new();
    match step {
        Step::Pause { ms } if *ms > 10 => out.push(Step::Pause { ms: ms / 4 }),
        Step::Vanish { client, cut } if *cut > 0 => out.push(Step::Vanish {
            client: *client,
            cut: 0,
        }),
        Step::Call {
            client,
            req,
            wait,
            created,
        } => {
            let with = |req: Request, wait: bool| Step::Call {
                client: *client,
                req,
                wait,
                created: created.clone(),
            };
            if !wait {
                out.push(with(req.clone(), true));
            }
            let Ok(json) = serde_json::to_value(req) else {
                return out;
            };
            for pass in [Shrink::Amounts, Shrink::Strings, Shrink::Lists] {
                let mut v = json.clone();
                if shrink(&mut v, pass, None) {
                    if let Ok(r) = serde_json::from_value::<Request>(v) {
                        out.push(with(r, *wait));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Shrink {
    Amounts,
    Strings,
    Lists,
}

/// Shrinks every value of kind `pass` in `v` (`key`: the field it is in);
/// whether anything changed.
fn shrink(v: &mut serde_json::Value, pass: Shrink, key: Option<&str>) -> bool {
    use serde_json::Value;
    match v {
        Value::Number(n)
            if pass == Shrink::Amounts && key.is_some_and(|k| AMOUNTS.contains(&k)) =>
        {
            match n.as_u64() {
                Some(x) if x > 1 => {
                    *v = Value::from(x / 4);
                    true
                }
                _ => false,
            }
        }
        Value::String(s) if pass == Shrink::Strings && s.chars().count() > 8 => {
            *s = s.chars().take(s.chars().count() / 2).collect();
            true
        }
        Value::Array(items) => {
            let mut changed = false;
            // Byte lists (instructions, keys, data) are not cut: they are
            // values whose length a request checks.
            let bytes = items.iter().all(|x| x.as_u64().is_some_and(|b| b < 256));
            if pass == Shrink::Lists && items.len() > 1 && !bytes {
                items.truncate(items.len() / 2);
                changed = true;
            }
            for x in items.iter_mut() {
                changed |= shrink(x, pass, key);
            }
            changed
        }
        Value::Object(fields) => {
            let mut changed = false;
            for (k, x) in fields.iter_mut() {
                changed |= shrink(x, pass, Some(k));
            }
            changed
        }
        _ => false,
    }
}

/// Maps the soundness generator's programs use, in its order (`map_idx`).
fn verifier_gen_maps() -> Vec<MapDefinition> {
    verifier_gen::maps()
        .iter()
        .map(|m| MapDefinition {
            name: format!("gen{}", m.fd),
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
            flags: 0,
            initial_value: Vec::new(),
            read_only: false,
            types: Default::default(),
        })
        .collect()
}

/// A program from the verifier soundness fuzzer's generator, seeded.
fn verifier_program(seed: u64) -> Vec<u8> {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let insns = verifier_gen::program()
        .new_tree(&mut runner)
        .expect("the generator makes programs")
        .current();
    bpf_vm::insn::encode(&insns)
}

/// Steps generated now, with live ids from `world`.
fn fresh_steps(world: &mut World, rng: &mut Rng, mode: Mode) -> Vec<Step> {
    let call = |client: u8, req: Request, wait: bool| Step::Call {
        client,
        req,
        wait,
        created: Vec::new(),
    };
    if mode == Mode::Random {
        // The request fuzzer: one client, and a side client that vanishes
        // now and then.
        if rng.chance(2) {
            return vec![Step::Vanish {
                client: 1,
                cut: rng.below(64) as u16,
            }];
        }
        let kind = rng.below(KINDS.len() as u64) as usize;
        return vec![call(0, gen_request(kind, world, rng), true)];
    }
    let client = rng.below(CLIENTS as u64) as u8;
    match rng.below(100) {
        95..=98 => probe_next_to_probe(world, rng, client),
        99 => stream_and_vanish(world, rng, client),
        0..=3 => vec![Step::Vanish {
            client,
            cut: rng.below(64) as u16,
        }],
        4..=7 => {
            // A program the verifier's grammar makes, on the maps it
            // expects; often run and attached next.
            let mut steps: Vec<Step> = verifier_gen_maps()
                .into_iter()
                .map(|m| {
                    call(
                        client,
                        Request::Bpf(BpfRequest::MapCreate(Box::new(m))),
                        true,
                    )
                })
                .collect();
            // Placeholder ids: the map steps' own creations, remapped when
            // run (see `Executor::step`): use the ids they record.
            steps.push(Step::Call {
                client,
                req: Request::Bpf(BpfRequest::ProgLoad {
                    prog: Box::new(ProgramLoad {
                        name: "gen".into(),
                        section: "kprobe/gen".into(),
                        prog_type: ProgramType::Kprobe,
                        attach: AttachTarget::PerfEvent,
                        insns: verifier_program(rng.next()),
                        license: "GPL".into(),
                        lines: None,
                    }),
                    maps: Vec::new(),
                    options: LoadOptions::default(),
                }),
                wait: true,
                created: Vec::new(),
            });
            steps
        }
        8..=10 => {
            // A workload or spawn storm while the next steps run.
            let kind = if rng.chance(50) { 24 } else { 20 };
            vec![call(client, gen_request(kind, world, rng), false)]
        }
        _ => {
            let kind = rng.below(KINDS.len() as u64) as usize;
            vec![call(client, gen_request(kind, world, rng), rng.chance(92))]
        }
    }
}

/// Ids a group of fresh steps uses for what its own steps create: each
/// creating step records the placeholder as its `created` id, so the run
/// maps it to the real one (as a replay maps recorded ids).
const PLACEHOLDER: u32 = 0xfff0_0000;

fn call_creating(client: u8, req: Request, wait: bool, created: Vec<(Res, u32)>) -> Step {
    Step::Call {
        client,
        req,
        wait,
        created,
    }
}

/// A probe on a multi-byte instruction of code that runs, a second probe
/// next to it (inside it, on the next instruction or the one before),
/// often the first removed, then work that runs the code: where a
/// boundary check or slot copy that reads live text goes wrong.
fn probe_next_to_probe(world: &mut World, rng: &mut Rng, client: u8) -> Vec<Step> {
    use ktrace_abi::trace::{ProbeKind, ProbeTarget};
    if world.entry_insns.is_empty() {
        return Vec::new();
    }
    // Code known to run (a probe there was hit) half the time.
    let first = if !world.hit.is_empty() && rng.chance(50) {
        rng.pick(&world.hit)
    } else if !world.armed.is_empty() && rng.chance(25) {
        rng.pick(&world.armed)
    } else {
        world.hot_insn(rng)
    };
    let second = world.next_to(first, rng);
    let kind = |rng: &mut Rng| {
        if rng.chance(85) {
            ProbeKind::Kprobe
        } else {
            ProbeKind::Kretprobe { maxactive: 16 }
        }
    };
    let other = (client + 1 + rng.below(CLIENTS as u64 - 1) as u8) % CLIENTS as u8;
    let add = |addr: u64, rng: &mut Rng| {
        Request::Trace(TraceRequest::AddProbe {
            target: ProbeTarget::Address(addr),
            kind: kind(rng),
        })
    };
    let mut steps = vec![
        call_creating(
            client,
            add(first, rng),
            true,
            vec![(Res::Probe, PLACEHOLDER)],
        ),
        call_creating(
            if rng.chance(50) { client } else { other },
            add(second, rng),
            true,
            vec![(Res::Probe, PLACEHOLDER + 1)],
        ),
    ];
    if rng.chance(80) {
        steps.push(call_creating(
            client,
            Request::Trace(TraceRequest::RemoveProbe { id: PLACEHOLDER }),
            true,
            Vec::new(),
        ));
    }
    let work = match rng.below(4) {
        0 => Request::Bpf(BpfRequest::Trigger {
            count: 100,
            arg: rng.next(),
        }),
        1 => Request::Bpf(BpfRequest::TriggerSpawn { count: 100 }),
        _ => {
            let mut spec =
                ktrace_abi::block::WorkloadSpec::new("ram0", ktrace_abi::block::RwMode::RandRw);
            spec.limit = ktrace_abi::block::WorkloadLimit::Count(64);
            spec.seed = rng.next();
            Request::Block(BlockRequest::Workload(spec))
        }
    };
    steps.push(call_creating(other, work, true, Vec::new()));
    steps
}

/// A program that writes a record to a ring buffer each time the test
/// target runs, a subscription to the ring that the client does not read,
/// the target run from a task of its own, a pause while the stream backs
/// up, and the client gone (at a byte of a frame): its session must answer
/// a new client again.
fn stream_and_vanish(world: &mut World, rng: &mut Rng, client: u8) -> Vec<Step> {
    use ktrace_abi::bpf::KprobePoint;
    let Some((name, addr, _)) = world
        .functions
        .iter()
        .find(|(n, _, _)| n == "kernel::bpf::testing::target")
        .cloned()
    else {
        return Vec::new();
    };
    let ring = MapDefinition {
        name: "stream".into(),
        map_type: 27,
        key_size: 0,
        value_size: 0,
        max_entries: 1 << rng.pick(&[12u32, 16, 22]),
        flags: 0,
        initial_value: Vec::new(),
        read_only: false,
        types: Default::default(),
    };
    let target = AttachTarget::Kprobe {
        spec: name.clone(),
        points: vec![KprobePoint {
            address: addr,
            function: name,
            offset: 0,
        }],
    };
    let asm = "stdw [%r10-16], 7\nstdw [%r10-8], 9\nlddw %r1, map_idx(0)\nmov %r2, %r10\nadd %r2, -16\nmov %r3, 16\nmov %r4, 0\ncall 130\nmov %r0, 0\nexit";
    let other = (client + 1 + rng.below(CLIENTS as u64 - 1) as u8) % CLIENTS as u8;
    let (map, prog, link) = (PLACEHOLDER + 2, PLACEHOLDER + 3, PLACEHOLDER + 4);
    let mut steps = vec![
        call_creating(
            client,
            Request::Bpf(BpfRequest::MapCreate(Box::new(ring))),
            true,
            vec![(Res::Map, map)],
        ),
        call_creating(
            client,
            Request::Bpf(BpfRequest::ProgLoad {
                prog: Box::new(ProgramLoad {
                    name: "stream".into(),
                    section: "kprobe/kernel::bpf::testing::target".into(),
                    prog_type: ProgramType::Kprobe,
                    attach: target.clone(),
                    insns: bpf_vm::asm::assemble(asm).unwrap().encode(),
                    license: "GPL".into(),
                    lines: None,
                }),
                maps: vec![map],
                options: LoadOptions::default(),
            }),
            true,
            vec![(Res::Prog, prog)],
        ),
        call_creating(
            client,
            Request::Bpf(BpfRequest::Attach {
                prog,
                target: Box::new(target),
                kretprobe: false,
            }),
            true,
            vec![(Res::Link, link)],
        ),
        call_creating(
            client,
            Request::Bpf(BpfRequest::EventsSubscribe {
                maps: vec![map],
                printk: rng.chance(30),
            }),
            rng.chance(50),
            Vec::new(),
        ),
        call_creating(
            other,
            Request::Bpf(BpfRequest::TriggerSpawn {
                count: rng.pick(&[20_000, 100_000, 400_000]),
            }),
            true,
            Vec::new(),
        ),
        Step::Pause {
            ms: rng.pick(&[100, 400, 1000, 2000]),
        },
    ];
    steps.push(Step::Vanish {
        client,
        cut: rng.below(64) as u16,
    });
    steps
}

/// The coverage-guided (or random) fuzzing loop.
pub fn fuzz(elf: &Path, opts: &Options, log: &mut dyn FnMut(&str)) -> RunReport {
    let mut ex = Executor::new(elf, &opts.vm_name, opts.request_timeout);
    let mut rng = Rng(opts.seed);
    let mut report = RunReport::default();
    let mut corpus: Vec<Program> = Vec::new();
    if let Some(dir) = &opts.corpus {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.sort();
        for p in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
        {
            match Program::load(p) {
                Ok(prog) => corpus.push(prog),
                Err(e) => log(&format!("skipping corpus entry {e}")),
            }
        }
        log(&format!(
            "corpus: {} programs from {}",
            corpus.len(),
            dir.display()
        ));
    }
    // Fuzzing time: triage (minimisation on fresh VMs) is not counted.
    let mut start = Instant::now();
    let mut seen_signatures: BTreeMap<String, usize> = BTreeMap::new();
    let mut target = ex.boot().unwrap_or_else(|e| panic!("{e}"));
    // The kept corpus runs first (in guided mode), then the loop.
    let mut queue: Vec<Vec<Option<Step>>> = if opts.mode == Mode::Guided {
        corpus
            .iter()
            .map(|p| p.steps.iter().cloned().map(Some).collect())
            .collect()
    } else {
        Vec::new()
    };
    let initial_corpus = corpus.len();
    let mut new_entries = 0usize;
    while start.elapsed() < opts.budget {
        let (plan, kept) = match queue.pop() {
            Some(p) => (p, true),
            None => (make_plan(&corpus, &mut rng, opts.mode), false),
        };
        let last_len_before = target.history.len();
        let (prog, edges, verdict) = ex.run(
            &mut target,
            &plan,
            &mut rng,
            opts.mode,
            &mut report.requests,
        );
        report.programs += 1;
        report.edges_total = report.edges_total.max(target.edges_total);
        let new = edges.difference(&report.edges).count();
        report.edges.extend(&edges);
        report
            .progress
            .push((start.elapsed().as_secs_f64(), report.edges.len()));
        if new > 0 && !kept && opts.mode == Mode::Guided && !prog.steps.is_empty() {
            if let (Some(dir), true) = (&opts.corpus, opts.save_corpus) {
                let size = serde_json::to_string(&prog).map_or(usize::MAX, |s| s.len());
                if size <= 256 << 10 {
                    let path = dir.join(format!("{:016x}.json", rng.next()));
                    let _ = std::fs::create_dir_all(dir);
                    let _ = prog.save(&path);
                }
            }
            corpus.push(prog.clone());
            new_entries += 1;
        }
        if let Some(sig) = verdict.signature() {
            let found_after = start.elapsed();
            let history = std::mem::take(&mut target.history);
            target.vm.kill();
            let first = !seen_signatures.contains_key(&sig);
            *seen_signatures.entry(sig.clone()).or_default() += 1;
            if first {
                // The console holds the report: kept next to the reproducer.
                let _ = std::fs::create_dir_all(&opts.crashes);
                let _ = std::fs::copy(
                    &target.vm.paths().console,
                    opts.crashes.join(format!("{:016x}.console", fnv(&sig))),
                );
            }
            let _ = std::fs::remove_dir_all(&target.vm.paths().dir);
            log(&format!(
                "[{:.0} s] {} after {} programs: {sig}",
                found_after.as_secs_f64(),
                if first { "NEW FAILURE" } else { "again" },
                report.programs
            ));
            if first {
                let triage_start = Instant::now();
                let crash = triage(
                    &mut ex,
                    opts,
                    &verdict,
                    &sig,
                    &history,
                    history.len() - last_len_before,
                    found_after,
                    (report.programs, report.requests),
                    log,
                );
                report.crashes.push(crash);
                start += triage_start.elapsed();
            }
            target = ex.boot().unwrap_or_else(|e| panic!("{e}"));
        }
        if report.programs.is_multiple_of(50) {
            log(&format!(
                "[{:.0} s] {} programs, {} requests, {} edges, corpus {}",
                start.elapsed().as_secs_f64(),
                report.programs,
                report.requests,
                report.edges.len(),
                corpus.len()
            ));
        }
    }
    target.vm.kill();
    let _ = std::fs::remove_dir_all(&target.vm.paths().dir);
    report.corpus_size = corpus.len();
    log(&format!(
        "done: {} programs, {} requests in {:.0} s; {} edges of {}; corpus {} ({} kept, {} new); {} distinct failures",
        report.programs,
        report.requests,
        start.elapsed().as_secs_f64(),
        report.edges.len(),
        report.edges_total,
        corpus.len(),
        initial_corpus,
        new_entries,
        report.crashes.len()
    ));
    report
}

/// The next program: fresh, or a corpus entry mutated.
fn make_plan(corpus: &[Program], rng: &mut Rng, mode: Mode) -> Vec<Option<Step>> {
    let fresh = |rng: &mut Rng, n: u64| -> Vec<Option<Step>> {
        (0..1 + rng.below(n)).map(|_| None).collect()
    };
    if mode == Mode::Random {
        return fresh(rng, 8);
    }
    if corpus.is_empty() || rng.chance(25) {
        return fresh(rng, 12);
    }
    // Recent entries (the frontier) half the time.
    let pick = |rng: &mut Rng| {
        let n = corpus.len() as u64;
        if rng.chance(50) {
            (n - 1 - rng.below(n.min(16))) as usize
        } else {
            rng.below(n) as usize
        }
    };
    let parent: Vec<Option<Step>> = corpus[pick(rng)].steps.iter().cloned().map(Some).collect();
    let mut plan = parent;
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let at = rng.below(plan.len() as u64 + 1) as usize;
        match rng.below(7) {
            6 => {
                // A copy of a step with its numbers nudged, right after it
                // (the original still runs: a probe next to a probe).
                let nudgeable: Vec<usize> = (0..plan.len())
                    .filter(|&i| match &plan[i] {
                        Some(Step::Call { req, .. }) => nudge(req, &mut Rng(0)).is_some(),
                        _ => false,
                    })
                    .collect();
                if !nudgeable.is_empty() {
                    let i = nudgeable[rng.below(nudgeable.len() as u64) as usize];
                    if let Some(Step::Call {
                        client, req, wait, ..
                    }) = &plan[i]
                    {
                        if let Some(req) = nudge(req, rng) {
                            let copy = Step::Call {
                                client: *client,
                                req,
                                wait: *wait,
                                created: Vec::new(),
                            };
                            plan.insert(i + 1, Some(copy));
                        }
                    }
                }
            }
            0 | 1 => plan.extend(fresh(rng, 4)),
            2 => {
                for s in fresh(rng, 3) {
                    plan.insert(at, s);
                }
            }
            3 if at < plan.len() => plan[at] = None,
            4 if at < plan.len() && plan.len() > 1 => {
                plan.remove(at);
            }
            _ => {
                let other = &corpus[rng.below(corpus.len() as u64) as usize].steps;
                let from = rng.below(other.len() as u64 + 1) as usize;
                plan.truncate(at);
                plan.extend(other[from..].iter().cloned().map(Some));
            }
        }
    }
    plan.truncate(32);
    plan
}

/// `req` with an address, offset or size moved a little (within an
/// instruction or two), or `None` if it has no such number.
fn nudge(req: &Request, rng: &mut Rng) -> Option<Request> {
    use ktrace_abi::trace::{PerfEvent, ProbeTarget};
    let step = |v: u64, rng: &mut Rng| {
        let span = if rng.chance(70) { 8 } else { 64 };
        let d = 1 + rng.below(span);
        if rng.chance(80) {
            v.wrapping_add(d)
        } else {
            v.wrapping_sub(d)
        }
    };
    let target = |t: &mut ProbeTarget, rng: &mut Rng| match t {
        ProbeTarget::Address(a) => *a = step(*a, rng),
        ProbeTarget::Symbol { offset, .. } => *offset = step(*offset, rng),
    };
    let mut req = req.clone();
    match &mut req {
        Request::Trace(TraceRequest::AddProbe { target: t, .. }) => target(t, rng),
        Request::Trace(TraceRequest::PerfOpen {
            event: PerfEvent::Kprobe { target: t },
        }) => target(t, rng),
        Request::Bpf(BpfRequest::Attach { target, .. }) => match &mut **target {
            AttachTarget::Kprobe { points, .. } if !points.is_empty() => {
                let k = rng.below(points.len() as u64) as usize;
                points[k].address = step(points[k].address, rng);
                points[k].offset = step(points[k].offset, rng);
            }
            _ => return None,
        },
        Request::Bpf(BpfRequest::MapCreate(def)) => match rng.below(3) {
            0 => def.key_size = step(u64::from(def.key_size), rng) as u32,
            1 => def.value_size = step(u64::from(def.value_size), rng) as u32,
            _ => def.max_entries = step(u64::from(def.max_entries), rng) as u32,
        },
        _ => return None,
    }
    Some(req)
}

/// Edges reached over several runs on one kernel build, kept in a file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Accumulated {
    /// What identifies the kernel build (its ELF's size and edge count):
    /// guard numbers mean nothing on another build.
    pub kernel: String,
    pub runs: u32,
    pub seconds: f64,
    pub edges: Vec<u32>,
}

impl Accumulated {
    /// The file's edges if it was made on the build `elf` (`edges_total`
    /// guards), else an empty record for that build.
    pub fn load(path: &Path, elf: &Path, edges_total: usize) -> Accumulated {
        let kernel = format!(
            "{} bytes, {edges_total} edges",
            std::fs::metadata(elf).map_or(0, |m| m.len())
        );
        match std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<Accumulated>(&t).ok())
        {
            Some(a) if a.kernel == kernel => a,
            _ => Accumulated {
                kernel,
                ..Accumulated::default()
            },
        }
    }

    /// Adds a run's edges and writes the file.
    pub fn add(&mut self, path: &Path, edges: &HashSet<u32>, seconds: f64) -> std::io::Result<()> {
        let mut all: HashSet<u32> = self.edges.iter().copied().collect();
        all.extend(edges);
        self.edges = all.into_iter().collect();
        self.edges.sort_unstable();
        self.runs += 1;
        self.seconds += seconds;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string(self).expect("serializes"))
    }
}

/// What corpus minimisation kept.
#[derive(Debug)]
pub struct CorpusCut {
    pub before: usize,
    pub kept: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub edges: usize,
}

/// Runs every program of the corpus in `dir` on one VM, then keeps the
/// smallest set (greedily: most edges not yet covered first, fewer steps
/// on a tie) that reaches every edge the whole corpus reached; the other
/// files are deleted unless `dry_run`. A program that fails is kept and
/// reported (it is a reproducer, not a seed).
pub fn minimize_corpus(
    elf: &Path,
    dir: &Path,
    vm_name: &str,
    request_timeout: Duration,
    dry_run: bool,
    log: &mut dyn FnMut(&str),
) -> Result<CorpusCut, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut ex = Executor::new(elf, vm_name, request_timeout);
    let mut t = ex.boot()?;
    let mut rng = Rng(1);
    let mut reached: Vec<(PathBuf, usize, HashSet<u32>)> = Vec::new();
    let mut failing = Vec::new();
    for p in &paths {
        let prog = Program::load(p)?;
        let plan: Vec<Option<Step>> = prog.steps.iter().cloned().map(Some).collect();
        let mut n = 0;
        let (_, edges, verdict) = ex.run(&mut t, &plan, &mut rng, Mode::Guided, &mut n);
        if let Some(sig) = verdict.signature() {
            log(&format!("{}: {sig} (kept)", p.display()));
            failing.push(p.clone());
            t.vm.kill();
            let _ = std::fs::remove_dir_all(&t.vm.paths().dir);
            t = ex.boot()?;
            continue;
        }
        reached.push((p.clone(), prog.steps.len(), edges));
    }
    t.vm.kill();
    let _ = std::fs::remove_dir_all(&t.vm.paths().dir);
    let all: HashSet<u32> = reached
        .iter()
        .flat_map(|(_, _, e)| e.iter().copied())
        .collect();
    let mut covered: HashSet<u32> = HashSet::new();
    let mut kept = failing;
    let mut left: Vec<usize> = (0..reached.len()).collect();
    while covered.len() < all.len() {
        let gain = |i: usize| reached[i].2.difference(&covered).count();
        let best = *left
            .iter()
            .max_by_key(|&&i| (gain(i), std::cmp::Reverse(reached[i].1)))
            .expect("uncovered edges come from some program");
        covered.extend(&reached[best].2);
        kept.push(reached[best].0.clone());
        left.retain(|&i| i != best);
    }
    let removed: Vec<PathBuf> = left.iter().map(|&i| reached[i].0.clone()).collect();
    if !dry_run {
        for p in &removed {
            std::fs::remove_file(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    kept.sort();
    Ok(CorpusCut {
        before: paths.len(),
        kept,
        removed,
        edges: all.len(),
    })
}

/// Minimise a new failure and write its reproducer and report.
#[allow(clippy::too_many_arguments)]
fn triage(
    ex: &mut Executor,
    opts: &Options,
    verdict: &Verdict,
    sig: &str,
    history: &[Step],
    last: usize,
    found_after: Duration,
    (programs_before, requests_before): (u64, u64),
    log: &mut dyn FnMut(&str),
) -> Crash {
    let name = format!("{:016x}", fnv(sig));
    let _ = std::fs::create_dir_all(&opts.crashes);
    let repro_path = opts.crashes.join(format!("{name}.json"));
    let t = Instant::now();
    let minimal = if opts.minimise {
        ex.minimise(history, last, sig, opts.minimise_budget)
    } else {
        None
    };
    let reproduced = minimal.is_some();
    // Probes named by function and offset rather than by address, when
    // that still fails the same way: the reproducer then means the same
    // instruction on a later build of the kernel, as long as that
    // function's code stays the same.
    let minimal = match minimal
        .as_ref()
        .and_then(|p| with_symbols(p, &ex.base.functions))
    {
        Some(named) if ex.reproduces(&named, sig, 2) => Some(named),
        _ => minimal,
    };
    let prog = minimal.unwrap_or_else(|| Program {
        steps: history.to_vec(),
    });
    let _ = prog.save(&repro_path);
    let detail = match verdict {
        Verdict::Panicked(r) => r
            .lines
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        Verdict::Hung { what, console_tail } => format!("{what}\nconsole tail:\n{console_tail}"),
        Verdict::Alive => String::new(),
    };
    let text = format!(
        "{sig}\nfound after {:.0} s ({programs_before} programs, {requests_before} requests); {}\nreproducer: {} ({} steps; `ktrace-fuzz --replay {}`)\n\n{}\nsteps:\n{}",
        found_after.as_secs_f64(),
        if !opts.minimise {
            "not minimised".to_string()
        } else if reproduced {
            format!("minimised in {:.0} s", t.elapsed().as_secs_f64())
        } else {
            "did not reproduce on a fresh VM: the reproducer is every step since boot".to_string()
        },
        repro_path.display(),
        prog.steps.len(),
        repro_path.display(),
        detail,
        prog.describe()
    );
    let _ = std::fs::write(opts.crashes.join(format!("{name}.txt")), &text);
    log(&text);
    Crash {
        signature: sig.to_string(),
        verdict: detail,
        found_after,
        programs_before,
        requests_before,
        reproducer: Some(repro_path),
        reproducer_steps: prog.steps.len(),
        reproduced,
    }
}

/// `prog` with every probe address inside a known function given as
/// that function's name and an offset (`None`: no address to rename).
pub fn with_symbols(prog: &Program, functions: &[(String, u64, u32)]) -> Option<Program> {
    use ktrace_abi::trace::{PerfEvent, ProbeTarget};
    let mut sorted: Vec<&(String, u64, u32)> = functions.iter().collect();
    sorted.sort_by_key(|f| f.1);
    let name = |t: &mut ProbeTarget| -> bool {
        let ProbeTarget::Address(a) = *t else {
            return false;
        };
        let i = sorted.partition_point(|f| f.1 <= a);
        let Some((name, start, size)) = i.checked_sub(1).map(|i| sorted[i]) else {
            return false;
        };
        // A name several functions share resolves to one of them only.
        if a >= start + u64::from(*size) || sorted.iter().filter(|f| &f.0 == name).count() > 1 {
            return false;
        }
        *t = ProbeTarget::Symbol {
            name: name.clone(),
            offset: a - start,
        };
        true
    };
    let mut out = prog.clone();
    let mut changed = false;
    for step in &mut out.steps {
        if let Step::Call {
            req:
                Request::Trace(TraceRequest::AddProbe { target, .. })
                | Request::Trace(TraceRequest::PerfOpen {
                    event: PerfEvent::Kprobe { target },
                }),
            ..
        } = step
        {
            changed |= name(target);
        }
    }
    changed.then_some(out)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
