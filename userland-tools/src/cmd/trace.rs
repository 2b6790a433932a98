//! `ktrace trace`: bpftrace-style one-liners over Rust paths, compiled on
//! the host by `ktrace-trace-lang` (no clang, llc or rustc at run time).
//!
//! ```text
//! ktrace trace 'kprobe:RequestQueue::submit_bio { @[comm] = count(); }'
//! ktrace trace -e 'tracepoint:block:block_rq_complete { @ = count(); }' -- --dev vda --count 200
//! ktrace trace -l 'kprobe:*::submit_*'
//! ```
//!
//! The life of a run: compile (errors point at the script's column),
//! resolve kprobe paths and globs through the kernel's symbol index, load
//! every map and program in one request (the kernel's verifier checks each;
//! a rejection is mapped back to the span that produced the instruction),
//! attach, run `BEGIN`, then stream `printf` records from the ring buffer
//! while running `interval` programs on time, until Ctrl-C, `exit()`, the
//! workload's end or a closed pipe. Then `END` runs, the maps are printed
//! and everything loaded is removed — on every one of those exits.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ktrace_abi::bpf::{
    AttachTarget, KprobePoint, LineInfo, LineTable, LoadOptions, ObjectLoad, ProgramType,
};
use ktrace_abi::trace::TracepointInfo;
use ktrace_symbols::params::{ParamAccess, ParamError, ParamReader};
use ktrace_symbols::{ResolveOptions, SymbolIndex};
use ktrace_trace_lang::check::{MapKind, Ty};
use ktrace_trace_lang::codegen::{Compiled, Trigger, EVENT_CLEAR, EVENT_EXIT, EVENT_PRINT};
use ktrace_trace_lang::output::{self, Aggregate, Entry, Value};
use ktrace_trace_lang::{Diagnostic, ParamSource, World};
use probe_sdk::client::Client;
use probe_sdk::runtime::{Runtime, RuntimeError};
use probe_sdk::trace::TraceClient;

use crate::kernel::connect;
use crate::kernel::LoadedProbe;
use crate::stop::{catch_signals, stop_requested};

/// Arguments of `ktrace trace`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The program, or a file holding it.
    #[arg(value_name = "PROGRAM|FILE")]
    pub program: Option<String>,
    /// The program (instead of PROGRAM|FILE).
    #[arg(short = 'e', value_name = "PROGRAM", conflicts_with = "program")]
    pub expr: Option<String>,
    /// List probes matching a pattern (`kprobe:*::submit_*`, `tracepoint:block:*`).
    #[arg(short = 'l', value_name = "PATTERN", num_args = 0..=1, default_missing_value = "*")]
    pub list: Option<String>,
    /// Trace while this in-kernel workload runs (`ktrace workload` arguments, quoted).
    #[arg(short = 'c', value_name = "WORKLOAD ARGS", allow_hyphen_values = true)]
    pub workload: Option<String>,
    /// Output format: text or json (one JSON object a line).
    #[arg(short = 'f', value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// The kernel ELF to resolve Rust paths against (default: as `ktrace symbols`).
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Print how long each step took (compile, symbols, load and verify, attach) to stderr; with -l, each kprobe target's parameters and their types.
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Workload arguments after `--` (as `-c`).
    #[arg(last = true, value_name = "WORKLOAD ARGS")]
    pub trailing: Vec<String>,
}

/// Run `ktrace trace`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    if let Some(pattern) = &args.list {
        return list(&args, pattern, vm_name);
    }
    let (name, source) = match (&args.expr, &args.program) {
        (Some(e), _) => ("<script>".to_string(), e.clone()),
        (None, Some(p)) if std::path::Path::new(p).is_file() => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {p}"))?;
            (p.clone(), text)
        }
        (None, Some(p)) if !p.contains('{') => bail!(
            "`{p}` is neither a file nor a program (a program has a block, as in `BEGIN {{ ... }}`)"
        ),
        (None, Some(p)) => ("<script>".to_string(), p.clone()),
        (None, None) => bail!("no program: give one as an argument, with -e PROGRAM, or as a file"),
    };
    let workload = match (&args.workload, args.trailing.is_empty()) {
        (Some(_), false) => bail!("give the workload either with -c or after `--`, not both"),
        (Some(w), true) => Some(w.split_whitespace().map(String::from).collect::<Vec<_>>()),
        (None, false) => Some(args.trailing.clone()),
        (None, true) => None,
    };
    let workload = workload
        .map(|w| crate::workload::workload_spec(&w))
        .transpose()?;
    let json = args.format == "json";
    let started = Instant::now();
    let mut step = started;
    let mut timing = |what: &str| {
        if args.verbose {
            let now = Instant::now();
            errln!("{what}: {:.1} ms", (now - step).as_secs_f64() * 1e3);
            step = now;
        }
    };

    // From here on Ctrl-C (and SIGTERM, SIGHUP) only sets a flag: a trace interrupted while it
    // loads still gets everything removed (the loop sees the flag at once).
    catch_signals();
    let mut client = connect(vm_name, "ktrace trace")?;
    let kernel = Arc::new(KernelParams::new(
        super::symbols::kernel_elf(args.kernel.as_deref()).map_err(|e| format!("{e:#}")),
    ));
    let world = World {
        tracepoints: client.list_tracepoints()?,
        params: Some(kernel.clone()),
    };
    let fail = |d: Diagnostic| anyhow::anyhow!("{}", d.render(&name, &source).trim_end());
    timing("connected, tracepoint formats read");
    let compiled = ktrace_trace_lang::compile_script(&source, &world).map_err(fail)?;
    timing(&format!(
        "compiled {} program(s), {} instructions{}",
        compiled.programs.len(),
        compiled
            .programs
            .iter()
            .map(|p| p.load.insns.len() / 8)
            .sum::<usize>(),
        if kernel.reader.get().is_some() {
            " (kernel symbols indexed, parameters read from DWARF)"
        } else {
            ""
        }
    ));
    let index = if compiled.programs.iter().any(needs_symbols) || uses_symbols(&compiled) {
        Some(kernel.index().map_err(|e| anyhow::anyhow!("{e}"))?)
    } else {
        None
    };
    let object = prepare(&compiled, index, &name, &source).map_err(fail)?;
    timing("kernel symbols indexed, probes resolved");
    let targets: Vec<AttachTarget> = object.programs.iter().map(|p| p.attach.clone()).collect();

    let mut rt = Runtime::new(&mut client);
    let loaded = match rt.load_object("trace", object, false, LoadOptions::default()) {
        Ok(l) => l,
        Err(RuntimeError::Rejected(r)) => {
            let prog = compiled.programs.iter().find(|p| p.load.name == r.program);
            let message = r.report.message.clone().unwrap_or_default();
            let insn = message
                .strip_prefix("insn ")
                .and_then(|m| m.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok());
            let span = prog.zip(insn).and_then(|(p, i)| p.span_of(i));
            let first = message.lines().next().unwrap_or("");
            let what = first.split_once(": ").map_or(first, |(_, rest)| rest);
            let what = what.split_once(": ").map_or(what, |(_, rest)| rest);
            return Err(match span {
                Some(span) => fail(Diagnostic::new(
                    span,
                    format!("the kernel's verifier rejected the code made from this: {what}"),
                )),
                None => anyhow::anyhow!(
                    "the kernel's verifier rejected program `{}`:\n{message}",
                    r.program
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    timing("maps created, programs verified and loaded");
    let mut probe = LoadedProbe {
        maps: loaded.maps,
        programs: loaded.programs,
        links: Vec::new(),
    };
    let mut session = Session {
        compiled: &compiled,
        probe: probe.clone(),
        targets,
        index,
        json,
        out: std::io::stdout(),
        lost: 0,
        started: args.verbose.then_some(started),
        exited: false,
    };
    let result = session.run(&mut rt, &mut probe.links, workload, vm_name);
    // Whatever happened, remove what was loaded.
    let removed = probe.remove(&mut rt);
    match result {
        Ok(()) => removed,
        // The reader left (`| head`): once removed, end as every tool does
        // on a closed pipe, by SIGPIPE (see `stop::exit`).
        Err(Stop::Pipe) => removed.and(Err(
            std::io::Error::from(std::io::ErrorKind::BrokenPipe).into()
        )),
        Err(Stop::Error(e)) => Err(e),
    }
}

/// The kernel as the compiler sees it: kprobe targets through the symbol
/// index, `args.PATH` through the ELF's DWARF ([`ParamReader`]). Both are
/// opened on first use (a script without kprobes needs neither) and each
/// answer is kept: the checker and codegen ask again for every use.
#[derive(Debug)]
struct KernelParams {
    elf: Result<PathBuf, String>,
    index: OnceLock<Result<SymbolIndex, String>>,
    reader: OnceLock<Result<ParamReader, String>>,
    answers: Mutex<HashMap<ParamKey, Result<ParamAccess, ParamError>>>,
}

/// A kprobe's spec and an `args` path in it.
type ParamKey = (String, Vec<String>);

impl KernelParams {
    fn new(elf: Result<PathBuf, String>) -> Self {
        KernelParams {
            elf,
            index: OnceLock::new(),
            reader: OnceLock::new(),
            answers: Mutex::new(HashMap::new()),
        }
    }

    fn index(&self) -> Result<&SymbolIndex, String> {
        self.index
            .get_or_init(|| {
                let elf = self.elf.clone()?;
                SymbolIndex::open(&elf)
                    .map_err(|e| format!("kernel symbols from {}: {e}", elf.display()))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn reader(&self) -> Result<&ParamReader, String> {
        self.reader
            .get_or_init(|| {
                let elf = self.elf.clone()?;
                ParamReader::from_path(&elf).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn resolve(&self, spec: &str, path: &[&str]) -> Result<ParamAccess, ParamError> {
        let fail = |message: String| ParamError { at: 0, message };
        let index = self.index().map_err(fail)?;
        let reader = self.reader().map_err(fail)?;
        let res = index
            .resolve(
                spec,
                ResolveOptions {
                    all: true,
                    allow_raw_address: false,
                },
            )
            .map_err(|e| fail(e.to_string()))?;
        // A glob reads the path in every function it matches: one program
        // serves them all, so the access must be the same in each.
        let mut first: Option<(String, ParamAccess)> = None;
        for pt in &res.points {
            let function = pt
                .function
                .clone()
                .unwrap_or_else(|| format!("{:#x}", pt.addr));
            let access =
                reader
                    .access(pt.addr - pt.offset, pt.addr, path)
                    .map_err(|e| match res.points.len() {
                        1 => e,
                        _ => ParamError {
                            at: e.at,
                            message: format!("in `{function}`: {}", e.message),
                        },
                    })?;
            match &first {
                None => first = Some((function, access)),
                Some((f, a)) if *a != access => {
                    return Err(fail(format!(
                        "`args.{}` is not in the same place in `{f}` and `{function}`: one program serves every function `{spec}` matches, so name one",
                        path.join(".")
                    )))
                }
                Some(_) => {}
            }
        }
        first
            .map(|(_, a)| a)
            .ok_or_else(|| fail(format!("`{spec}` matches no probeable function")))
    }
}

impl ParamSource for KernelParams {
    fn access(&self, spec: &str, path: &[&str]) -> Result<ParamAccess, ParamError> {
        let key = (
            spec.to_string(),
            path.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        );
        if let Some(a) = self.answers.lock().expect("not poisoned").get(&key) {
            return a.clone();
        }
        let answer = self.resolve(spec, path);
        self.answers
            .lock()
            .expect("not poisoned")
            .insert(key, answer.clone());
        answer
    }
}

fn needs_symbols(p: &ktrace_trace_lang::codegen::CompiledProbe) -> bool {
    p.trigger == Trigger::Attach && matches!(p.load.attach, AttachTarget::Kprobe { .. })
}

fn uses_symbols(c: &Compiled) -> bool {
    let typed = |t: &Ty| matches!(t, Ty::Func | Ty::Stack);
    c.stack_map.is_some()
        || c.sigs
            .iter()
            .any(|s| s.keys.iter().any(typed) || matches!(&s.kind, MapKind::Value(t) if typed(t)))
        || c.printfs.iter().any(|p| p.args.iter().any(typed))
}

/// Resolves kprobe targets and adds line tables pointing into the script.
fn prepare(
    c: &Compiled,
    index: Option<&SymbolIndex>,
    name: &str,
    source: &str,
) -> Result<ObjectLoad, Diagnostic> {
    let mut programs = Vec::new();
    for p in &c.programs {
        let mut load = p.load.clone();
        if let (Trigger::Attach, AttachTarget::Kprobe { spec, points }) =
            (&p.trigger, &mut load.attach)
        {
            let index = index.expect("symbols loaded for kprobes");
            let res = index
                .resolve(
                    spec,
                    ResolveOptions {
                        all: true,
                        allow_raw_address: false,
                    },
                )
                .map_err(|e| Diagnostic::new(p.probe.span, e.to_string()))?;
            for pt in res.points {
                if load.prog_type == ProgramType::Kretprobe && pt.offset != 0 {
                    return Err(Diagnostic::new(
                        p.probe.span,
                        format!(
                            "a kretprobe attaches to a function entry, but `{spec}` is {:#x} bytes into `{}`",
                            pt.offset,
                            pt.function.as_deref().unwrap_or("?")
                        ),
                    ));
                }
                points.push(KprobePoint {
                    address: pt.addr,
                    function: pt.function.unwrap_or_default(),
                    offset: pt.offset,
                });
            }
            if points.is_empty() {
                return Err(Diagnostic::new(
                    p.probe.span,
                    format!("`{spec}` matches no probeable function"),
                ));
            }
        }
        let rows = p
            .spans
            .iter()
            .map(|(insn, span)| {
                let (line, column) = span.line_col(source);
                LineInfo {
                    insn: *insn as u32,
                    file: 0,
                    line: line as u32,
                    column: column as u32,
                    call_sites: Vec::new(),
                }
            })
            .collect();
        load.lines = Some(LineTable {
            files: vec![name.to_string()],
            rows,
        });
        programs.push(load);
    }
    Ok(ObjectLoad {
        maps: c.maps.clone(),
        programs,
    })
}

/// Why the event loop stopped early.
enum Stop {
    /// Standard output was closed (`| head`): stop quietly.
    Pipe,
    Error(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Stop {
    fn from(e: E) -> Self {
        let e: anyhow::Error = e.into();
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            Stop::Pipe
        } else {
            Stop::Error(e)
        }
    }
}

struct Session<'a> {
    compiled: &'a Compiled,
    /// The maps and programs loaded (links are kept by the caller).
    probe: LoadedProbe,
    /// Each program's attach target, kprobes resolved.
    targets: Vec<AttachTarget>,
    index: Option<&'a SymbolIndex>,
    json: bool,
    out: std::io::Stdout,
    /// Records the kernel could not put in the ring buffer (cumulative).
    lost: u64,
    /// With `-v`: when the command started, to report the first event.
    started: Option<Instant>,
    /// `exit()` ran: later records are not printed.
    exited: bool,
}

/// A `pt_regs` of zeros: the context of programs the tool runs itself.
const HOST_CTX: usize = bpf_vm::verifier::linux::PT_REGS_SIZE as usize;

impl Session<'_> {
    fn prog_id(&self, i: usize) -> u32 {
        let name = &self.compiled.programs[i].load.name;
        self.probe
            .programs
            .iter()
            .find(|p| &p.name == name)
            .map_or(0, |p| p.id)
    }

    fn map_id(&self, name: &str) -> Option<u32> {
        self.probe
            .maps
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.id)
    }

    fn line(&mut self, text: &str) -> Result<(), Stop> {
        let mut o = self.out.lock();
        o.write_all(text.as_bytes())?;
        o.flush()?;
        Ok(())
    }

    fn run(
        &mut self,
        rt: &mut Runtime,
        links: &mut Vec<ktrace_abi::bpf::LinkInfo>,
        workload: Option<ktrace_abi::block::WorkloadSpec>,
        vm_name: &str,
    ) -> Result<(), Stop> {
        let events = self
            .map_id(ktrace_trace_lang::codegen::EVENTS_MAP)
            .context("no events map")?;
        rt.subscribe(vec![events], false)?;
        let mut attached = 0;
        for (i, p) in self.compiled.programs.iter().enumerate() {
            if p.trigger != Trigger::Attach {
                continue;
            }
            let id = self.prog_id(i);
            let kret = p.load.prog_type == ProgramType::Kretprobe;
            let targets: Vec<AttachTarget> = match &self.targets[i] {
                AttachTarget::Kprobe { spec, points } => points
                    .iter()
                    .map(|pt| AttachTarget::Kprobe {
                        spec: spec.clone(),
                        points: vec![pt.clone()],
                    })
                    .collect(),
                other => vec![other.clone()],
            };
            for t in targets {
                let link = rt.attach(id, t, kret).map_err(|e| {
                    anyhow::Error::new(e).context(format!("attaching `{}`", p.probe.text))
                })?;
                links.push(link);
                attached += 1;
            }
        }
        let host = self
            .compiled
            .programs
            .iter()
            .filter(|p| p.trigger != Trigger::Attach)
            .count();
        let n = attached + host;
        let hello = if self.json {
            format!("{{\"type\": \"attached_probes\", \"data\": {{\"probes\": {n}}}}}\n")
        } else {
            format!("Attaching {n} probe{}...\n", if n == 1 { "" } else { "s" })
        };
        self.line(&hello)?;
        if let Some(t) = self.started {
            errln!(
                "attached: {:.1} ms after start",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        for i in self.host_programs(|t| *t == Trigger::Begin) {
            rt.test_run(self.prog_id(i), vec![0; HOST_CTX], 1)?;
        }
        let mut exit = self.pushed(rt)?;

        // The workload runs on its own connection, so this one keeps
        // reading events, printing maps and running intervals meanwhile.
        let done = Arc::new(AtomicBool::new(false));
        let worker = workload.map(|spec| {
            let done = done.clone();
            let vm = vm_name.to_string();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let r = (|| {
                    let mut c: Client = connect(&vm, "ktrace trace workload")?;
                    crate::workload::run_workload_with_events(&mut c, &spec, |_| {}, |_| {})?;
                    Ok(())
                })();
                done.store(true, Ordering::SeqCst);
                r
            })
        });
        let mut intervals: Vec<(usize, Duration, Instant)> = self
            .compiled
            .programs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p.trigger {
                Trigger::Interval { ms } => Some((
                    i,
                    Duration::from_millis(ms),
                    Instant::now() + Duration::from_millis(ms),
                )),
                _ => None,
            })
            .collect();
        let workload_done = || worker.is_some() && done.load(Ordering::SeqCst);
        while !(exit || stop_requested() || workload_done()) {
            let next = intervals.iter().map(|(_, _, at)| *at).min();
            let wait = next
                .map_or(Duration::from_millis(200), |at| {
                    at.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(200));
            if let Some(batch) = rt.next_events(wait)? {
                exit |= self.records(rt, batch)?;
            }
            for (i, every, at) in &mut intervals {
                if Instant::now() >= *at {
                    *at += *every;
                    rt.test_run(self.prog_id(*i), vec![0; HOST_CTX], 1)?;
                }
            }
            exit |= self.pushed(rt)?;
        }
        if let Some(w) = worker {
            if done.load(Ordering::SeqCst) {
                match w.join() {
                    Ok(r) => r.map_err(Stop::Error)?,
                    Err(_) => {
                        return Err(Stop::Error(anyhow::anyhow!("the workload thread panicked")))
                    }
                }
            }
            // Otherwise the workload keeps running in the kernel; its
            // connection closes when this process ends.
        }
        // Detach first, so what is printed from here on is final: every
        // record of every hit that counted is in the ring buffer.
        for l in links.drain(..) {
            rt.detach(l.id)?;
        }
        // Unsubscribing first: the kernel answers only after every batch it
        // collected for this session was pushed (see `EventsSubscribe`), so
        // those are queued here and none comes later; a poll then takes
        // what is left, until the ring is empty. The probes' records come
        // out before END's, and only END's are in the ring after this.
        rt.subscribe(Vec::new(), false)?;
        self.drain(rt, events)?;
        self.exited = false;
        for i in self.host_programs(|t| *t == Trigger::End) {
            rt.test_run(self.prog_id(i), vec![0; HOST_CTX], 1)?;
        }
        self.drain(rt, events)?;
        if !self.json {
            self.line("\n")?;
        }
        for idx in 0..self.compiled.sigs.len() {
            self.print_map(rt, idx)?;
        }
        if self.lost > 0 {
            // As bpftrace says it: the kernel dropped records (the ring
            // buffer was full or busy); maps are complete, printf is not.
            errln!("Lost {} events", self.lost);
        }
        Ok(())
    }

    fn host_programs(&self, which: impl Fn(&Trigger) -> bool) -> Vec<usize> {
        (0..self.compiled.programs.len())
            .filter(|&i| which(&self.compiled.programs[i].trigger))
            .collect()
    }

    /// Handles the batches the kernel pushed so far, in the order they came.
    /// Returns whether `exit()` ran.
    fn pushed(&mut self, rt: &mut Runtime) -> Result<bool, Stop> {
        let mut exit = false;
        for p in rt.client().take_pushes() {
            if let ktrace_abi::Response::Bpf(ktrace_abi::bpf::BpfResponse::Events(b)) = p {
                exit |= self.records(rt, b)?;
            }
        }
        Ok(exit)
    }

    /// After detaching and unsubscribing: the pushed batches, then what is
    /// still in the ring buffer (nothing is pushed any more, so the order
    /// holds), until a poll comes back empty. A batch is capped in bytes as
    /// well as records, so a short batch does not mean the ring is empty:
    /// stopping at one left records of the probes behind, which the drain
    /// after END then printed past an `exit()`. Bounded all the same: no
    /// link feeds the ring any more, so it empties within its size, and
    /// the bound only keeps a misbehaving kernel from holding the tool.
    fn drain(&mut self, rt: &mut Runtime, events: u32) -> Result<bool, Stop> {
        const MAX: u32 = 4096;
        const MAX_POLLS: usize = 4096;
        let mut exit = self.pushed(rt)?;
        for _ in 0..MAX_POLLS {
            let batch = rt.poll(vec![events], false, MAX)?;
            let empty = batch.records.is_empty();
            exit |= self.records(rt, batch)?;
            if empty {
                break;
            }
        }
        Ok(exit)
    }

    fn records(
        &mut self,
        rt: &mut Runtime,
        batch: ktrace_abi::bpf::EventBatch,
    ) -> Result<bool, Stop> {
        for l in &batch.lost {
            self.lost = self.lost.max(l.lost);
        }
        if let Some(t) = self.started.filter(|_| !batch.records.is_empty()) {
            errln!(
                "first event: {:.1} ms after start",
                t.elapsed().as_secs_f64() * 1e3
            );
            self.started = None;
        }
        for r in batch.records {
            let Some(id) = r
                .data
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            else {
                continue;
            };
            if self.exited {
                // As bpftrace: after exit(), nothing more is printed.
                break;
            }
            match id {
                EVENT_EXIT => self.exited = true,
                _ if id & !0xffff_ffff == EVENT_PRINT => {
                    self.print_map(rt, (id & 0xffff_ffff) as usize)?
                }
                _ if id & !0xffff_ffff == EVENT_CLEAR => {
                    self.clear_map(rt, (id & 0xffff_ffff) as usize)?
                }
                _ => {
                    let Some(fmt) = self.compiled.printfs.get(id as usize) else {
                        continue;
                    };
                    let mut at = 8;
                    let mut args = Vec::new();
                    for ty in &fmt.args {
                        args.push(self.decode(rt, ty, r.data.get(at..).unwrap_or(&[])));
                        at += ty.size() as usize;
                    }
                    let text = output::printf(&fmt.format, &args);
                    let line = if self.json {
                        output::printf_json(&text) + "\n"
                    } else {
                        text
                    };
                    self.line(&line)?;
                }
            }
        }
        Ok(self.exited)
    }

    fn decode(&self, rt: &mut Runtime, ty: &Ty, b: &[u8]) -> Value {
        let word = || {
            b.get(..8)
                .map_or(0, |w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        };
        match ty {
            Ty::Int { signed: true } => Value::Int(word() as i64),
            Ty::Int { signed: false } => Value::Uint(word()),
            Ty::Str(n) => Value::Str(crate::kernel::c_str(b.get(..*n as usize).unwrap_or(b))),
            Ty::Literal(s) => Value::Str(s.clone()),
            Ty::Enum { variants, .. } => {
                let v = word() as i64;
                match variants.iter().find(|(value, _)| *value == v) {
                    Some((_, name)) => Value::Str(name.clone()),
                    None => Value::Int(v),
                }
            }
            Ty::Probe => Value::Str(
                self.compiled
                    .probe_names
                    .get(word() as usize)
                    .cloned()
                    .unwrap_or_default(),
            ),
            Ty::Func => Value::Str(self.symbol(word(), false)),
            Ty::Stack => {
                let id = word() as i64;
                let frames = match (
                    self.compiled
                        .stack_map
                        .and_then(|i| self.map_id(&self.compiled.maps[i].name)),
                    u32::try_from(id),
                ) {
                    (Some(m), Ok(id)) => match rt.map_lookup(m, &id.to_le_bytes()) {
                        Ok(Some(v)) => v
                            .chunks_exact(8)
                            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                            .take_while(|&ip| ip != 0)
                            .map(|ip| self.symbol(ip, true))
                            .collect(),
                        _ => vec![format!("[stack {id} not found]")],
                    },
                    _ => vec![format!("[no stack: error {id}]")],
                };
                Value::Stack(frames)
            }
        }
    }

    /// A kernel address as its demangled Rust path (`+0x..` in stacks).
    fn symbol(&self, addr: u64, offset: bool) -> String {
        match self.index.and_then(|i| i.lookup_addr(addr)) {
            Some((f, off)) if offset => format!("{}+{off}", f.name),
            Some((f, _)) => f.name.clone(),
            None => format!("{addr:#x}"),
        }
    }

    fn entries(&self, rt: &mut Runtime, idx: usize) -> Result<Option<(u32, Vec<Entry>)>, Stop> {
        let sig = &self.compiled.sigs[idx];
        let Some(id) = self.map_id(&sig.name) else {
            return Ok(None);
        };
        let raw = rt.map_dump(id, 256)?;
        let keys_of = |s: &Self, rt: &mut Runtime, key: &[u8]| -> Vec<Value> {
            let mut at = 0;
            sig.keys
                .iter()
                .map(|t| {
                    let v = s.decode(rt, t, key.get(at..).unwrap_or(&[]));
                    at += t.size() as usize;
                    v
                })
                .collect()
        };
        let u64_at = |b: &[u8], at: usize| {
            b.get(at..at + 8)
                .map_or(0, |w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        };
        let entries = if sig.kind.bucketed() {
            let slot_at = sig.key_size() as usize - 8;
            let raw = raw
                .iter()
                .map(|e| {
                    (
                        keys_of(self, rt, &e.key),
                        u64_at(&e.key, slot_at),
                        u64_at(&e.value, 0),
                    )
                })
                .collect();
            output::group_buckets(raw)
        } else {
            raw.iter()
                .map(|e| {
                    let value = match &sig.kind {
                        MapKind::Value(t) => Aggregate::Scalar(self.decode(rt, t, &e.value)),
                        MapKind::Count => Aggregate::Scalar(Value::Uint(u64_at(&e.value, 0))),
                        MapKind::Avg | MapKind::Stats => Aggregate::Total {
                            sum: u64_at(&e.value, 0) as i64,
                            count: u64_at(&e.value, 8),
                        },
                        _ => Aggregate::Scalar(Value::Int(u64_at(&e.value, 0) as i64)),
                    };
                    Entry {
                        keys: keys_of(self, rt, &e.key),
                        value,
                    }
                })
                .collect()
        };
        Ok(Some((id, entries)))
    }

    fn print_map(&mut self, rt: &mut Runtime, idx: usize) -> Result<(), Stop> {
        let Some((_, entries)) = self.entries(rt, idx)? else {
            return Ok(());
        };
        if entries.is_empty() {
            return Ok(());
        }
        let sig = &self.compiled.sigs[idx];
        let text = if self.json {
            output::map_json(&sig.name, &sig.kind, entries) + "\n"
        } else {
            output::render_map(&sig.name, &sig.kind, entries)
        };
        self.line(&text)
    }

    fn clear_map(&mut self, rt: &mut Runtime, idx: usize) -> Result<(), Stop> {
        let sig = &self.compiled.sigs[idx];
        let Some(id) = self.map_id(&sig.name) else {
            return Ok(());
        };
        let keys: Vec<Vec<u8>> = rt.map_dump(id, 256)?.into_iter().map(|e| e.key).collect();
        if !keys.is_empty() {
            rt.map_delete_batch(id, keys)?;
        }
        Ok(())
    }
}

/// `ktrace trace -l PATTERN`: kprobe targets from the symbol index,
/// tracepoints from the kernel.
fn list(args: &Args, pattern: &str, vm_name: &str) -> anyhow::Result<()> {
    let (kind, rest) = pattern.split_once(':').unwrap_or(("*", pattern));
    let mut out = Vec::new();
    if matches!(kind, "tracepoint" | "t" | "*") {
        let mut client = connect(vm_name, "ktrace trace -l")?;
        let tps: Vec<TracepointInfo> = client.list_tracepoints()?;
        let want = if kind == "*" { "*" } else { rest };
        for t in tps {
            let full = format!("{}:{}", t.category, t.name);
            if ktrace_symbols::path::glob_match(want, &full) {
                out.push(format!("tracepoint:{full}"));
            }
        }
    }
    if matches!(kind, "kprobe" | "k" | "kretprobe" | "kr") {
        let elf = super::symbols::kernel_elf(args.kernel.as_deref())?;
        let index = SymbolIndex::open(&elf)
            .with_context(|| format!("kernel symbols from {}", elf.display()))?;
        let res = index
            .resolve(
                rest,
                ResolveOptions {
                    all: true,
                    allow_raw_address: false,
                },
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let prefix = if kind.starts_with("kr") {
            "kretprobe"
        } else {
            "kprobe"
        };
        // With -v, as `bpftrace -lv`: each function's parameters and
        // their types, from the kernel's DWARF.
        let reader = if args.verbose && prefix == "kprobe" {
            Some(ParamReader::from_path(&elf).map_err(|e| anyhow::anyhow!("{e}"))?)
        } else {
            None
        };
        let mut seen = std::collections::BTreeMap::new();
        for p in res.points {
            if let Some(f) = p.function {
                let mut line = format!("{prefix}:{f}");
                if let Some(r) = &reader {
                    match r.parameters(p.addr - p.offset) {
                        Ok(params) => {
                            for param in params {
                                line.push_str(&format!(
                                    "\n    {}: {}",
                                    param.name, param.type_name
                                ));
                            }
                        }
                        Err(e) => line.push_str(&format!("\n    ({e})")),
                    }
                }
                seen.insert(f, line);
            }
        }
        out.extend(seen.into_values());
    }
    if kind == "*" {
        out.extend(["BEGIN", "END", "profile:hz:N", "interval:s:N"].map(String::from));
    }
    let mut o = std::io::stdout().lock();
    for l in out {
        if writeln!(o, "{l}").is_err() {
            break;
        }
    }
    Ok(())
}
