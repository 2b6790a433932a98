//! Host client of the kernel's BPF runtime: maps, programs, links, event
//! streams and limits, over a [`Client`] connection.
//!
//! [`Runtime`] borrows a connected [`Client`] and turns each
//! [`BpfRequest`] into a typed call. A verifier rejection comes back as
//! [`RuntimeError::Rejected`] carrying the kernel verifier's message
//! (formatted exactly as `ktrace check` prints it) and its log.
//! [`load_path`] goes from a probe crate or an object file to a loaded,
//! attached object in one step.

use std::path::Path;
use std::time::Duration;

use ktrace_abi::bpf::{
    AttachTarget, BenchResult, BpfRequest, BpfResponse, Engine, EventBatch, Limits, LinkInfo,
    LoadOptions, MapDefinition, MapEntry, MapInfo, ObjectInfo, ObjectLoad, ObjectLoaded, ProgDump,
    ProgInfo, ProgramLoad, Rejected, TestRunResult, TriggerBenchResult, Usage,
};
use ktrace_abi::{ErrorCode, Request, Response};

use crate::client::{Client, ClientError};

/// Errors of runtime requests.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The channel failed or the kernel refused the request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The kernel's verifier rejected a program; nothing was loaded.
    #[error("the kernel verifier rejected program `{}` (section `{}`):\n{}", .0.program, .0.section, .0.report.message.as_deref().unwrap_or("(no message)"))]
    Rejected(Box<Rejected>),
    /// The kernel answered with something else than the request calls for.
    #[error("unexpected answer to {what}: {got}")]
    Unexpected { what: &'static str, got: String },
    /// Building or parsing the probe failed.
    #[error("{0}")]
    Prepare(String),
}

impl RuntimeError {
    /// The errno of a kernel refusal (negative), if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RuntimeError::Client(c) => c.kernel_reply().map(|r| r.errno),
            _ => None,
        }
    }

    /// The error code of a kernel refusal, if this is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RuntimeError::Client(c) => c.kernel_reply().map(|r| r.code),
            _ => None,
        }
    }
}

/// Result of runtime calls.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Typed BPF requests over a borrowed connection.
pub struct Runtime<'c> {
    client: &'c mut Client,
}

macro_rules! expect {
    ($resp:expr, $what:expr, $pat:pat => $out:expr) => {
        match $resp {
            Response::Bpf($pat) => Ok($out),
            Response::Bpf(BpfResponse::Rejected(r)) => Err(RuntimeError::Rejected(r)),
            other => Err(RuntimeError::Unexpected {
                what: $what,
                got: format!("{other:?}"),
            }),
        }
    };
}

/// The one object an answer names.
fn one_object(r: Response, what: &'static str) -> Result<ObjectInfo> {
    match r {
        Response::Bpf(BpfResponse::Objects(mut o)) if o.len() == 1 => Ok(o.remove(0)),
        other => Err(RuntimeError::Unexpected {
            what,
            got: format!("{other:?}"),
        }),
    }
}

impl<'c> Runtime<'c> {
    /// Wraps a connected client.
    pub fn new(client: &'c mut Client) -> Self {
        Runtime { client }
    }

    /// The underlying client.
    pub fn client(&mut self) -> &mut Client {
        self.client
    }

    fn call(&mut self, req: BpfRequest) -> Result<Response> {
        Ok(self.client.request(&Request::Bpf(req))?)
    }

    fn call_timeout(&mut self, req: BpfRequest, t: Duration) -> Result<Response> {
        Ok(self.client.request_timeout(&Request::Bpf(req), t)?)
    }

    fn ok(&mut self, req: BpfRequest, what: &'static str) -> Result<()> {
        match self.call(req)? {
            Response::Ok => Ok(()),
            other => Err(RuntimeError::Unexpected {
                what,
                got: format!("{other:?}"),
            }),
        }
    }

    /// Creates maps, verifies and loads programs, and (with `attach`)
    /// attaches each by its section. All or nothing. The object belongs to
    /// this connection: the kernel frees it when the client goes, however
    /// it goes (see [`Runtime::load_object_pinned`] to keep it).
    pub fn load_object(
        &mut self,
        name: &str,
        object: ObjectLoad,
        attach: bool,
        options: LoadOptions,
    ) -> Result<ObjectLoaded> {
        self.load_object_pinned(name, object, attach, options, None)
    }

    /// [`Runtime::load_object`], also pinning the object as `pin`: it then
    /// stays loaded after this client goes, until unpinned or unloaded.
    ///
    /// Perf event arrays declared with 0 entries (the probe crate's
    /// `PerfEventArray::new()`: "the loader sizes it") get one entry per
    /// CPU of the kernel, as libbpf sizes them to the possible CPUs.
    pub fn load_object_pinned(
        &mut self,
        name: &str,
        mut object: ObjectLoad,
        attach: bool,
        options: LoadOptions,
        pin: Option<String>,
    ) -> Result<ObjectLoaded> {
        self.size_per_cpu_maps(&mut object)?;
        let r = self.call_timeout(
            BpfRequest::LoadObject {
                name: name.into(),
                object: Box::new(object),
                attach,
                options,
                pin,
            },
            Duration::from_secs(60),
        )?;
        expect!(r, "LoadObject", BpfResponse::Object(o) => *o)
    }

    /// Gives every perf event array of `object` declared with 0 entries
    /// one entry per CPU of the kernel (asked only when there is one).
    pub fn size_per_cpu_maps(&mut self, object: &mut ObjectLoad) -> Result<()> {
        let unsized_perf = |m: &MapDefinition| {
            m.map_type == ktrace_abi::bpf::map_type::PERF_EVENT_ARRAY && m.max_entries == 0
        };
        if !object.maps.iter().any(unsized_perf) {
            return Ok(());
        }
        let cpus = self.client.info()?.cpus.max(1);
        for m in object.maps.iter_mut().filter(|m| unsized_perf(m)) {
            m.max_entries = cpus;
        }
        Ok(())
    }

    /// Every object with its owner (session, pin).
    pub fn objects(&mut self) -> Result<Vec<ObjectInfo>> {
        let r = self.call(BpfRequest::ObjectList)?;
        expect!(r, "ObjectList", BpfResponse::Objects(o) => o)
    }

    /// Detaches, unloads and frees a whole object, named by pin, id or
    /// name. Returns it as it was.
    pub fn object_unload(&mut self, object: &str) -> Result<ObjectInfo> {
        let r = self.call(BpfRequest::ObjectUnload {
            object: object.into(),
        })?;
        one_object(r, "ObjectUnload")
    }

    /// Removes a pin; the object is freed unless a live session holds it.
    /// Returns the object as it is now (`session: None`: freed).
    pub fn unpin(&mut self, name: &str) -> Result<ObjectInfo> {
        let r = self.call(BpfRequest::Unpin { name: name.into() })?;
        one_object(r, "Unpin")
    }

    /// Creates one map.
    pub fn map_create(&mut self, def: MapDefinition) -> Result<MapInfo> {
        let r = self.call(BpfRequest::MapCreate(Box::new(def)))?;
        expect!(r, "MapCreate", BpfResponse::Map(m) => *m)
    }

    /// The value of `key`, or `None` if absent (`-ENOENT`).
    pub fn map_lookup(&mut self, map: u32, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.call(BpfRequest::MapLookup {
            map,
            key: key.to_vec(),
        }) {
            Ok(r) => expect!(r, "MapLookup", BpfResponse::Value(v) => Some(v)),
            Err(e)
                if e.errno() == Some(-2)
                    && e.code() == Some(ErrorCode::NotFound)
                    && !is_no_map(&e) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Update with `BPF_ANY` (0), `BPF_NOEXIST` (1) or `BPF_EXIST` (2).
    pub fn map_update(&mut self, map: u32, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
        self.ok(
            BpfRequest::MapUpdate {
                map,
                key: key.to_vec(),
                value: value.to_vec(),
                flags,
            },
            "MapUpdate",
        )
    }

    /// Deletes `key`.
    pub fn map_delete(&mut self, map: u32, key: &[u8]) -> Result<()> {
        self.ok(
            BpfRequest::MapDelete {
                map,
                key: key.to_vec(),
            },
            "MapDelete",
        )
    }

    /// The key after `key`, `None` at the end.
    pub fn map_next_key(&mut self, map: u32, key: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        match self.call(BpfRequest::MapNextKey {
            map,
            key: key.map(<[u8]>::to_vec),
        }) {
            Ok(r) => expect!(r, "MapNextKey", BpfResponse::Key(k) => Some(k)),
            Err(e) if e.errno() == Some(-2) && !is_no_map(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every entry, `batch` per round trip.
    pub fn map_dump(&mut self, map: u32, batch: u32) -> Result<Vec<MapEntry>> {
        let mut out: Vec<MapEntry> = Vec::new();
        loop {
            let after = out.last().map(|e| e.key.clone());
            let r = self.call_timeout(
                BpfRequest::MapDump {
                    map,
                    after,
                    max: batch.max(1),
                },
                Duration::from_secs(60),
            )?;
            let (entries, more) =
                expect!(r, "MapDump", BpfResponse::Entries { entries, more } => (entries, more))?;
            out.extend(entries);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Updates many entries in one round trip: how many succeeded, and the
    /// error that stopped the batch.
    pub fn map_update_batch(
        &mut self,
        map: u32,
        entries: Vec<MapEntry>,
        flags: u64,
    ) -> Result<(u32, Option<ktrace_abi::ErrorReply>)> {
        let r = self.call_timeout(
            BpfRequest::MapUpdateBatch {
                map,
                entries,
                flags,
            },
            Duration::from_secs(60),
        )?;
        expect!(r, "MapUpdateBatch", BpfResponse::Batch { done, error } => (done, error))
    }

    /// Deletes many keys in one round trip.
    pub fn map_delete_batch(
        &mut self,
        map: u32,
        keys: Vec<Vec<u8>>,
    ) -> Result<(u32, Option<ktrace_abi::ErrorReply>)> {
        let r = self.call_timeout(
            BpfRequest::MapDeleteBatch { map, keys },
            Duration::from_secs(60),
        )?;
        expect!(r, "MapDeleteBatch", BpfResponse::Batch { done, error } => (done, error))
    }

    /// All maps.
    pub fn maps(&mut self) -> Result<Vec<MapInfo>> {
        let r = self.call(BpfRequest::MapList)?;
        expect!(r, "MapList", BpfResponse::Maps(m) => m)
    }

    /// Frees a map (programs using it keep it).
    pub fn map_free(&mut self, map: u32) -> Result<()> {
        self.ok(BpfRequest::MapFree { map }, "MapFree")
    }

    /// Loads one program over existing maps (`maps[i]` for map index `i`).
    pub fn prog_load(
        &mut self,
        prog: ProgramLoad,
        maps: Vec<u32>,
        options: LoadOptions,
    ) -> Result<ProgInfo> {
        let r = self.call_timeout(
            BpfRequest::ProgLoad {
                prog: Box::new(prog),
                maps,
                options,
            },
            Duration::from_secs(60),
        )?;
        expect!(r, "ProgLoad", BpfResponse::Program(p) => *p)
    }

    /// All programs with their run statistics.
    pub fn progs(&mut self) -> Result<Vec<ProgInfo>> {
        let r = self.call(BpfRequest::ProgList)?;
        expect!(r, "ProgList", BpfResponse::Programs(p) => p)
    }

    /// A program's instructions and source lines.
    pub fn prog_dump(&mut self, prog: u32) -> Result<ProgDump> {
        let r = self.call(BpfRequest::ProgDump { prog })?;
        expect!(r, "ProgDump", BpfResponse::ProgramDump(d) => *d)
    }

    /// Detaches and unloads a program.
    pub fn prog_unload(&mut self, prog: u32) -> Result<()> {
        self.ok(BpfRequest::ProgUnload { prog }, "ProgUnload")
    }

    /// Runs a program `repeat` times on `ctx`.
    pub fn test_run(&mut self, prog: u32, ctx: Vec<u8>, repeat: u32) -> Result<TestRunResult> {
        let r = self.call_timeout(
            BpfRequest::ProgTestRun { prog, ctx, repeat },
            Duration::from_secs(120),
        )?;
        expect!(r, "ProgTestRun", BpfResponse::TestRun(t) => *t)
    }

    /// Attaches a loaded program.
    pub fn attach(&mut self, prog: u32, target: AttachTarget, kretprobe: bool) -> Result<LinkInfo> {
        let r = self.call(BpfRequest::Attach {
            prog,
            target: Box::new(target),
            kretprobe,
        })?;
        expect!(r, "Attach", BpfResponse::Link(l) => *l)
    }

    /// Detaches a link.
    pub fn detach(&mut self, link: u32) -> Result<()> {
        self.ok(BpfRequest::Detach { link }, "Detach")
    }

    /// All links.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        let r = self.call(BpfRequest::LinkList)?;
        expect!(r, "LinkList", BpfResponse::Links(l) => l)
    }

    /// Starts pushing these streams (an empty list and `printk = false` stops).
    pub fn subscribe(&mut self, maps: Vec<u32>, printk: bool) -> Result<()> {
        self.ok(
            BpfRequest::EventsSubscribe { maps, printk },
            "EventsSubscribe",
        )
    }

    /// Takes up to `max` pending records now.
    pub fn poll(&mut self, maps: Vec<u32>, printk: bool, max: u32) -> Result<EventBatch> {
        let r = self.call(BpfRequest::EventsPoll { maps, printk, max })?;
        expect!(r, "EventsPoll", BpfResponse::Events(b) => b)
    }

    /// The next pushed event batch, waiting at most `timeout`; other
    /// pushed frames are skipped.
    pub fn next_events(&mut self, timeout: Duration) -> Result<Option<EventBatch>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.client.next_push(left)? {
                None => return Ok(None),
                Some(Response::Bpf(BpfResponse::Events(b))) => return Ok(Some(b)),
                Some(_) => {}
            }
        }
    }

    /// How programs loaded without an engine run: changes it to `set`
    /// (`Some`) and returns the setting now.
    pub fn default_engine(&mut self, set: Option<Engine>) -> Result<Engine> {
        let r = self.call(BpfRequest::DefaultEngine { set })?;
        expect!(r, "DefaultEngine", BpfResponse::DefaultEngine(e) => e)
    }

    /// Whether program runs are timed (`run_time_ns`): changes it to `set`
    /// (`Some`) and returns the setting now.
    pub fn run_time_stats(&mut self, set: Option<bool>) -> Result<bool> {
        let r = self.call(BpfRequest::RunTimeStats { set })?;
        expect!(r, "RunTimeStats", BpfResponse::RunTimeStats(on) => on)
    }

    /// Limits and current use.
    pub fn limits(&mut self) -> Result<(Limits, Usage)> {
        let r = self.call(BpfRequest::GetLimits)?;
        expect!(r, "GetLimits", BpfResponse::Limits { limits, usage } => (*limits, *usage))
    }

    /// Changes the limits.
    pub fn set_limits(&mut self, limits: Limits) -> Result<()> {
        self.ok(BpfRequest::SetLimits(Box::new(limits)), "SetLimits")
    }

    /// Calls `kernel::bpf::testing::target` `count` times in the kernel.
    pub fn trigger(&mut self, count: u32, arg: u64) -> Result<u64> {
        let r = self.call_timeout(BpfRequest::Trigger { count, arg }, Duration::from_secs(300))?;
        expect!(r, "Trigger", BpfResponse::Triggered { result, .. } => result)
    }

    /// Calls the probe target `count` times from a new kernel task; returns at once.
    pub fn trigger_spawn(&mut self, count: u32) -> Result<()> {
        self.ok(BpfRequest::TriggerSpawn { count }, "TriggerSpawn")
    }

    /// Per-call cycles of the probe target with what is attached now.
    pub fn bench(&mut self, count: u32) -> Result<BenchResult> {
        let r = self.call_timeout(BpfRequest::Bench { count }, Duration::from_secs(300))?;
        expect!(r, "Bench", BpfResponse::Bench(b) => *b)
    }

    /// The trigger benchmark: trigger calls from one kernel task pinned to
    /// each of `cpus`, all at once, for `ms` milliseconds.
    pub fn trigger_bench(&mut self, cpus: &[u32], ms: u32) -> Result<TriggerBenchResult> {
        let r = self.call_timeout(
            BpfRequest::TriggerBench {
                cpus: cpus.to_vec(),
                ms,
            },
            Duration::from_secs(120),
        )?;
        expect!(r, "TriggerBench", BpfResponse::TriggerBench(b) => *b)
    }
}

/// Whether a NotFound refusal is about the map id itself (not the key).
fn is_no_map(e: &RuntimeError) -> bool {
    match e {
        RuntimeError::Client(c) => c
            .kernel_reply()
            .is_some_and(|r| r.message.starts_with("no map with id")),
        _ => false,
    }
}

/// An object ready to load: parsed, kprobe targets resolved.
pub struct Prepared {
    /// Name shown in listings (crate or file stem).
    pub name: String,
    pub object: crate::object::Object,
}

/// How [`prepare_with`] treats attach targets.
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Leave kprobe targets unresolved (nothing is attached, so a target
    /// this kernel does not have, such as a Linux function in a foreign
    /// object, does not stop the load).
    pub no_resolve: bool,
    /// A target several functions share attaches to each of them.
    pub all: bool,
    /// `(program, target)`: attach the kprobe or kretprobe program named
    /// `program` (its function or its section name) to `target` instead of
    /// what its section says.
    pub retarget: Vec<(String, String)>,
}

/// Turns a probe crate directory (built with `ktrace build`'s pipeline) or
/// an eBPF object file into a parsed object whose kprobe targets are
/// resolved against the kernel ELF at `kernel_elf`.
pub fn prepare(path: &Path, kernel_elf: &Path, progress: &mut dyn FnMut(&str)) -> Result<Prepared> {
    prepare_with(path, kernel_elf, &PrepareOptions::default(), progress)
}

/// [`prepare`], with targets retargeted, resolved to every match, or left
/// unresolved as `opts` says.
pub fn prepare_with(
    path: &Path,
    kernel_elf: &Path,
    opts: &PrepareOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Prepared> {
    let (name, object_path) = if path.is_dir() {
        let out = crate::build::build(&crate::build::BuildOptions::new(path), progress)
            .map_err(|e| RuntimeError::Prepare(format!("building {}: {e}", path.display())))?;
        (out.package, out.object)
    } else {
        let stem = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("object");
        let stem = stem.strip_suffix(".o").unwrap_or(stem);
        let stem = stem.strip_suffix(".bpf").unwrap_or(stem);
        (stem.to_string(), path.to_path_buf())
    };
    let bytes = std::fs::read(&object_path).map_err(|e| {
        RuntimeError::Prepare(format!("cannot read {}: {e}", object_path.display()))
    })?;
    let mut object = crate::object::parse(&bytes)
        .map_err(|e| RuntimeError::Prepare(format!("{}: {e}", object_path.display())))?;
    for (program, target) in &opts.retarget {
        retarget(&mut object, program, target)?;
    }
    let needs_symbols = object
        .programs
        .iter()
        .any(|p| matches!(p.attach, AttachTarget::Kprobe { .. }));
    if needs_symbols && !opts.no_resolve {
        let index = ktrace_symbols::SymbolIndex::open(kernel_elf).map_err(|e| {
            RuntimeError::Prepare(format!("kernel symbols from {}: {e}", kernel_elf.display()))
        })?;
        let resolve = ktrace_symbols::ResolveOptions {
            all: opts.all,
            allow_raw_address: false,
        };
        object
            .resolve_targets_with(&index, resolve)
            .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
    }
    Ok(Prepared { name, object })
}

/// Points kprobe program `program` (function or section name) at `target`.
fn retarget(object: &mut crate::object::Object, program: &str, target: &str) -> Result<()> {
    let names = || {
        object
            .programs
            .iter()
            .map(|p| format!("{} ({})", p.name, p.section))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(i) = object
        .programs
        .iter()
        .position(|p| p.name == program || p.section == program)
    else {
        return Err(RuntimeError::Prepare(format!(
            "--attach {program}={target}: the object has no program `{program}`; its programs: {}",
            names()
        )));
    };
    let p = &mut object.programs[i];
    match &mut p.attach {
        AttachTarget::Kprobe { spec, points } => {
            if target.trim().is_empty() {
                return Err(RuntimeError::Prepare(format!(
                    "--attach {program}=: give a kernel function, e.g. {program}=RequestQueue::submit_bio"
                )));
            }
            *spec = target.trim().to_string();
            points.clear();
            Ok(())
        }
        _ => Err(RuntimeError::Prepare(format!(
            "--attach {program}={target}: program `{}` (section `{}`) is not a kprobe or kretprobe; only those take another target",
            p.name, p.section
        ))),
    }
}
