//! The BPF runtime: maps, verified programs, links to attach points, event
//! streams, resource limits, and the host requests that drive them.
//!
//! - [`kmap`]: maps from `ktrace-bpf-maps`, preallocated, under locks that
//!   program context only try.
//! - [`prog`]: verification with bpf-vm's verifier (Linux-compatible
//!   context descriptors and helper prototypes) and the run path.
//! - [`helpers`]: the helpers by Linux id.
//! - [`events`], [`printk`]: ring buffer, perf output and `trace_printk`
//!   streams to the host.
//! - [`attach`]: links to kprobes, kretprobes, tracepoints, perf events.
//! - [`testing`]: a kernel function tests and benchmarks probe.
//! - [`owners`]: who keeps what alive (sessions, pins); what nothing keeps
//!   is freed.
//!
//! The registry below is only touched from task context (the control and
//! event tasks); probe context reaches programs and maps only through the
//! `Arc`s a link holds, so unloading never frees anything a running
//! program uses.

// `unsafe` lives in the hardware corner (arch, mm, drivers, task, sync,
// ksyms: see main.rs) behind safe interfaces; this subsystem uses those.
#![deny(unsafe_code)]
// Errors here are the response frames sent back once per request; their
// size does not matter.
#![allow(clippy::result_large_err)]

mod attach;
pub mod events;
mod helpers;
#[cfg(feature = "self-tests")]
pub mod hit_cost;
mod kmap;
mod owners;
mod printk;
mod prog;
pub mod testing;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use ktrace_abi::bpf::{
    BpfRequest, BpfResponse, Limits, LinkInfo, LoadOptions, MapDefinition, MapEntry, ObjectInfo,
    ObjectLoad, ObjectLoaded, ProgDump, ProgramLoad, Rejected, TestRunResult, Usage,
};
use ktrace_abi::Response;
use ktrace_bpf_maps::{Epochs, MapError};

use crate::error::{Answer, Error, Kind};
use crate::session::Session;
use kmap::KMap;
use owners::{Objects, Parts};
use prog::{Choice, HitInfo, LoadError, Program};

/// The runtime's tables.
struct Runtime {
    next_id: u32,
    maps: BTreeMap<u32, Arc<KMap>>,
    progs: BTreeMap<u32, Arc<Program>>,
    links: BTreeMap<u32, attach::Link>,
    objects: Objects,
    limits: Limits,
    /// How loads that do not say run: JIT-compiled unless the host changed it.
    default_engine: ktrace_abi::bpf::Engine,
}

static RT: spin::Mutex<Runtime> = spin::Mutex::new(Runtime {
    next_id: 1,
    maps: BTreeMap::new(),
    progs: BTreeMap::new(),
    links: BTreeMap::new(),
    objects: Objects::new(),
    limits: DEFAULT_LIMITS,
    default_engine: ktrace_abi::bpf::Engine::Jit,
});

/// The clients of `now`'s session before `now` went away: free what they
/// held that no pin keeps, stop their event streams (control task, once it
/// saw the port close).
pub fn release_session(now: &Session) {
    events::unsubscribe_gone(now);
    let mut rt = RT.lock();
    let session = now.id;
    let orphans = rt.objects.release(now);
    let n = orphans.len();
    for id in orphans {
        rt.free_object(id);
    }
    if n > 0 {
        log::info!("bpf: session {session} ended: freed {n} objects it held");
    }
}

/// Largest `insns_per_program` a host may set (Linux's limit as well).
const MAX_INSNS_PER_PROGRAM: u32 = 1_000_000;

/// Largest `map_memory_bytes` a host may set: the heap less its reserve.
/// (Maps are also refused when the heap itself runs short.)
fn max_map_memory() -> u64 {
    crate::mm::heap::total_bytes().saturating_sub(crate::mm::heap::RESERVE_BYTES as u64)
}

/// Limits at boot.
const DEFAULT_LIMITS: Limits = Limits {
    map_memory_bytes: 64 << 20,
    programs: 64,
    insns_per_program: 65_536,
    maps: 256,
};

static EPOCHS: spin::Once<Arc<Epochs>> = spin::Once::new();

/// Program activity per CPU, for deferred reuse of deleted map slots. One
/// slot per possible CPU (`ktrace_abi::vm::MAX_CPUS`): two CPUs sharing a
/// slot would let one's exit clear the other's protection.
pub fn epochs() -> &'static Arc<Epochs> {
    EPOCHS.call_once(|| Arc::new(Epochs::new(ktrace_abi::vm::MAX_CPUS as usize)))
}

/// Preallocates the interpreter and the printk queue, starts the event task.
pub fn init() {
    // A small VM's heap may hold less than the default map memory.
    {
        let mut rt = RT.lock();
        rt.limits.map_memory_bytes = rt.limits.map_memory_bytes.min(max_map_memory());
    }
    epochs();
    prog::init();
    printk::init();
}

fn map_error(e: MapError, what: &str) -> Error {
    Error::new(Kind::Map(e), format!("{what}: {e}"))
}

fn ok(r: BpfResponse) -> Response {
    Response::Bpf(r)
}

impl Runtime {
    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn usage(&self) -> Usage {
        Usage {
            map_memory_bytes: self.maps.values().map(|m| m.memory_bytes).sum(),
            programs: self.progs.len() as u32,
            maps: self.maps.len() as u32,
            links: self.links.len() as u32,
        }
    }

    fn map(&self, id: u32) -> Result<Arc<KMap>, Error> {
        self.maps.get(&id).cloned().ok_or_else(|| {
            let known: Vec<String> = self
                .maps
                .values()
                .map(|m| format!("{} ({})", m.id, m.name))
                .collect();
            Error::new(
                Kind::NoEntry,
                format!("no map with id {id}; maps: {}", list_or_none(&known)),
            )
        })
    }

    fn prog(&self, id: u32) -> Result<Arc<Program>, Error> {
        self.progs.get(&id).cloned().ok_or_else(|| {
            let known: Vec<String> = self
                .progs
                .values()
                .map(|p| format!("{} ({})", p.id, p.name))
                .collect();
            Error::new(
                Kind::NoEntry,
                format!(
                    "no program with id {id}; programs: {}",
                    list_or_none(&known)
                ),
            )
        })
    }

    fn map_users(&self, id: u32) -> Vec<u32> {
        self.progs
            .values()
            .filter(|p| p.maps.iter().any(|m| m.id == id))
            .map(|p| p.id)
            .collect()
    }

    fn prog_links(&self, id: u32) -> Vec<u32> {
        self.links
            .values()
            .filter(|l| l.prog.id == id)
            .map(|l| l.id)
            .collect()
    }

    /// Creates maps, checking the count and memory limits over the batch.
    fn create_maps(&mut self, defs: &[MapDefinition]) -> Result<Vec<Arc<KMap>>, Error> {
        let usage = self.usage();
        if usage.maps as usize + defs.len() > self.limits.maps as usize {
            return Err(Error::new(
                Kind::TooBig,
                format!(
                    "{} more maps would exceed the limit of {} maps ({} exist)",
                    defs.len(),
                    self.limits.maps,
                    usage.maps
                ),
            ));
        }
        let mut memory = usage.map_memory_bytes;
        let mut out = Vec::new();
        for d in defs {
            // Types first: a wrong description must not cost a map id.
            let record_map = matches!(
                d.map_type,
                ktrace_abi::bpf::map_type::RINGBUF | ktrace_abi::bpf::map_type::PERF_EVENT_ARRAY
            );
            ktrace_abi::types::check_map_types(
                &d.types,
                &format!("map `{}`", d.name),
                d.key_size,
                d.value_size,
                record_map,
            )
            .map_err(|e| {
                if e.limit {
                    Error::new(Kind::TooBig, e.message)
                } else {
                    Error::new(Kind::Invalid, e.message)
                }
            })?;
            let id = self.id();
            // Preallocation is fallible and guarded: a map the heap cannot
            // spare is refused before it eats into the kernel's reserve.
            let m = KMap::create(id, d, epochs().clone()).map_err(|e| {
                let no_memory = e == MapError::NoMemory;
                let mut refusal = map_error(
                    e,
                    &format!(
                        "map `{}` (type {} {}, key {} B, value {} B, {} entries)",
                        d.name,
                        d.map_type,
                        ktrace_bpf_maps::map_type::name(d.map_type),
                        d.key_size,
                        d.value_size,
                        d.max_entries
                    ),
                );
                if no_memory {
                    refusal.message.push_str("; ");
                    refusal.message.push_str(&crate::mm::heap::describe());
                }
                refusal
            })?;
            memory += m.memory_bytes;
            if memory > self.limits.map_memory_bytes {
                return Err(Error::new(Kind::NoMemory,
                    format!(
                        "map `{}` needs {} bytes: map memory would reach {} bytes, over the limit of {} bytes",
                        d.name, m.memory_bytes, memory, self.limits.map_memory_bytes
                    ),
                ));
            }
            out.push(Arc::new(m));
        }
        Ok(out)
    }

    fn load_prog(
        &mut self,
        p: &ProgramLoad,
        maps: Vec<Arc<KMap>>,
        o: &LoadOptions,
        extra: u32,
    ) -> Result<Arc<Program>, Error> {
        if self.progs.len() as u32 + extra >= self.limits.programs {
            return Err(Error::new(
                Kind::TooBig,
                format!(
                    "program `{}`: the limit of {} loaded programs is reached",
                    p.name, self.limits.programs
                ),
            ));
        }
        let n = p.insns.len() / 8;
        if n > self.limits.insns_per_program as usize {
            return Err(Error::new(
                Kind::TooBig,
                format!(
                    "program `{}` has {n} instructions, over the limit of {} per program",
                    p.name, self.limits.insns_per_program
                ),
            ));
        }
        let id = self.id();
        let engine = match o.engine {
            Some(e) => Choice::Asked(e),
            None => Choice::Default(self.default_engine),
        };
        match prog::load(id, p, maps, o.log_level, o.insn_budget, engine) {
            Ok(prog) => Ok(Arc::new(prog)),
            Err(LoadError::Invalid(m)) => Err(Error::new(
                Kind::Invalid,
                format!("program `{}` ({}): {m}", p.name, p.section),
            )),
            Err(LoadError::NoMemory(m)) => Err(Error::new(
                Kind::NoMemory,
                format!("program `{}` ({}): {m}", p.name, p.section),
            )),
            Err(LoadError::Rejected(report)) => Err(Error::new(
                Kind::Rejected(Box::new(Rejected {
                    program: p.name.clone(),
                    section: p.section.clone(),
                    report: *report,
                })),
                format!("program `{}` ({}) was rejected", p.name, p.section),
            )),
        }
    }

    /// Detaches a link and forgets it.
    fn detach_link(&mut self, id: u32) {
        if let Some(l) = self.links.remove(&id) {
            attach::detach(l);
        }
        self.objects.forget(&[], &[], &[id]);
    }

    /// Detaches a program's links and unloads it.
    fn unload_prog(&mut self, prog: u32) {
        for l in self.prog_links(prog) {
            self.detach_link(l);
        }
        self.progs.remove(&prog);
        self.objects.forget(&[], &[prog], &[]);
    }

    /// Drops a map from the table (programs using it keep it alive).
    fn free_map(&mut self, map: u32) {
        self.maps.remove(&map);
        events::unsubscribe_map(map);
        self.objects.forget(&[map], &[], &[]);
    }

    /// Frees a whole object: links, then programs, then maps. Returns it as
    /// it was.
    fn free_object(&mut self, id: u32) -> Option<ObjectInfo> {
        let o = self.objects.by_id.get(&id)?;
        let info = o.info();
        for &l in &info.links {
            self.detach_link(l);
        }
        for &p in &info.programs {
            self.unload_prog(p);
        }
        for &m in &info.maps {
            self.free_map(m);
        }
        // Forgetting the last part removed it; an empty one goes too.
        self.objects.by_id.remove(&id);
        Some(info)
    }

    fn load_object(
        &mut self,
        name: &str,
        obj: &ObjectLoad,
        attach_all: bool,
        o: &LoadOptions,
        pin: Option<String>,
        session: &Session,
    ) -> Result<ObjectLoaded, Error> {
        self.objects.check_pin(pin.as_deref())?;
        let maps = self.create_maps(&obj.maps)?;
        let mut progs = Vec::new();
        for (i, p) in obj.programs.iter().enumerate() {
            progs.push(self.load_prog(p, maps.clone(), o, i as u32)?);
        }
        let mut links = Vec::new();
        if attach_all {
            for prog in &progs {
                match attach::attach_section(self, prog) {
                    Ok(mut l) => links.append(&mut l),
                    Err(e) => {
                        for l in links {
                            attach::detach(l);
                        }
                        return Err(e);
                    }
                }
            }
        }
        for m in &maps {
            self.maps.insert(m.id, m.clone());
        }
        for p in &progs {
            self.progs.insert(p.id, p.clone());
        }
        let link_infos: Vec<LinkInfo> = links.iter().map(attach::Link::info).collect();
        for l in links {
            self.links.insert(l.id, l);
        }
        let parts = Parts {
            maps: maps.iter().map(|m| m.id).collect(),
            progs: progs.iter().map(|p| p.id).collect(),
            links: link_infos.iter().map(|l| l.id).collect(),
        };
        let object = self.objects.adopt(name, pin, parts, session).info();
        log::info!(
            "bpf: loaded `{name}`: {} maps, {} programs, {} links",
            maps.len(),
            progs.len(),
            link_infos.len()
        );
        Ok(ObjectLoaded {
            object,
            maps: maps.iter().map(|m| m.info(self.map_users(m.id))).collect(),
            programs: progs
                .iter()
                .map(|p| p.info(self.prog_links(p.id)))
                .collect(),
            links: link_infos,
        })
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        String::from("none")
    } else {
        v.join(", ")
    }
}

/// Most calls a request may run synchronously in the control task
/// (`Trigger`, `Bench`, `ProgTestRun` repeats); `TriggerSpawn` has no bound.
pub const MAX_SYNC_CALLS: u32 = 1_000_000;

/// Wall time after which a test run stops repeating (runs done are reported).
const TEST_RUN_MAX_NS: u64 = 5_000_000_000;

fn check_sync_count(what: &str, count: u32) -> Result<(), Error> {
    if count > MAX_SYNC_CALLS {
        return Err(Error::new(
            Kind::TooBig,
            format!("{what} count {count} exceeds the limit of {MAX_SYNC_CALLS} calls per request"),
        ));
    }
    Ok(())
}

/// Heap a map-dump batch may always take, even with no heap to spare.
const DUMP_FLOOR_BYTES: usize = 256 << 10;

/// Most `TriggerSpawn` tasks alive at once: each takes a stack, and a
/// host repeating the request must not be able to fill the heap with them.
const MAX_TRIGGER_TASKS: u32 = 8;
/// Most calls one `TriggerSpawn` task makes.
const MAX_SPAWNED_CALLS: u32 = 10 * MAX_SYNC_CALLS;
static TRIGGER_TASKS: AtomicU32 = AtomicU32::new(0);

/// Starts a task that makes `count` traced calls, yielding every 1000.
fn spawn_trigger(count: u32) -> Result<(), Error> {
    if count > MAX_SPAWNED_CALLS {
        return Err(Error::new(Kind::TooBig,
            format!("TriggerSpawn count {count} exceeds the limit of {MAX_SPAWNED_CALLS} calls per task"),
        ));
    }
    let running = TRIGGER_TASKS.fetch_add(1, Ordering::AcqRel);
    let refuse = |kind, message: String| {
        TRIGGER_TASKS.fetch_sub(1, Ordering::AcqRel);
        Err(Error::new(kind, message))
    };
    if running >= MAX_TRIGGER_TASKS {
        return refuse(
            Kind::Again,
            format!(
                "{running} trigger tasks are still running, the most there may be at once (EAGAIN)"
            ),
        );
    }
    if let Err(full) = crate::mm::heap::check_room(crate::task::STACK_BYTES) {
        return refuse(Kind::NoMemory, format!("a trigger task {full}"));
    }
    let spawned = crate::task::spawn("bpf-trigger", move || {
        // Yield now and then so the control task keeps answering.
        for chunk in 0..count.div_ceil(1000) {
            let n = (count - chunk * 1000).min(1000);
            testing::trigger(n, u64::from(chunk) * 1000);
            crate::task::yield_now();
        }
        TRIGGER_TASKS.fetch_sub(1, Ordering::AcqRel);
    });
    match spawned {
        Some(_) => Ok(()),
        None => refuse(
            Kind::NoMemory,
            String::from("cannot spawn the trigger task: no memory for its stack"),
        ),
    }
}

/// Context for a test run: the bytes the host sent, and hit information
/// taken from them where the context is `pt_regs`.
fn test_run(p: &Program, ctx: &[u8], repeat: u32) -> Result<TestRunResult, Error> {
    if ctx.len() != p.ctx_size {
        return Err(Error::new(
            Kind::Invalid,
            format!(
                "context is {} bytes; program `{}` ({:?}) takes {} bytes",
                ctx.len(),
                p.name,
                p.prog_type,
                p.ctx_size
            ),
        ));
    }
    let word = |off: usize| {
        ctx.get(off..off + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let hit = HitInfo {
        func_ip: word(128),
        rip: word(128),
        rbp: word(32),
    };
    let mut buf = ctx.to_vec();
    check_sync_count("ProgTestRun repeat", repeat)?;
    let repeat = repeat.max(1);
    let started_ns = crate::time::now_ns();
    let mut retval = 0;
    let mut runs = 0;
    let mut err = None;
    let faults_before = p.stats.faults.load(core::sync::atomic::Ordering::Relaxed)
        + p.stats
            .budget_exhausted
            .load(core::sync::atomic::Ordering::Relaxed);
    let t0 = crate::arch::rdtsc();
    for _ in 0..repeat {
        buf.copy_from_slice(ctx);
        // Programs run with interrupts off, as on every attach point
        // (`Program::run` relies on it).
        let was = crate::arch::irq_save();
        let ran = p.run(&buf, &hit);
        crate::arch::irq_restore(was);
        match ran {
            Some(v) => {
                retval = v;
                runs += 1;
            }
            None => {
                let faults = p.stats.faults.load(core::sync::atomic::Ordering::Relaxed)
                    + p.stats
                        .budget_exhausted
                        .load(core::sync::atomic::Ordering::Relaxed);
                err = Some(if faults > faults_before {
                    p.last_error
                        .lock()
                        .map(|e| alloc::string::ToString::to_string(&e))
                        .unwrap_or_default()
                } else {
                    String::from("the program did not run (interpreter busy)")
                });
                break;
            }
        }
        // Each run is bounded by the instruction budget, but many long
        // runs would still hold the control task: stop on wall time.
        if crate::time::now_ns().saturating_sub(started_ns) > TEST_RUN_MAX_NS {
            break;
        }
    }
    let cycles = crate::arch::rdtsc().wrapping_sub(t0) / u64::from(runs.max(1));
    Ok(TestRunResult {
        retval,
        runs,
        duration_ns: crate::time::tsc_to_ns(cycles),
        cycles,
        error: err,
    })
}

/// Answers one BPF request of `session`'s client (control task): what it
/// creates is that client's.
pub fn handle(req: BpfRequest, session: &Session) -> Answer {
    let mut rt = RT.lock();
    Ok(match req {
        BpfRequest::LoadObject {
            name,
            object,
            attach,
            options,
            pin,
        } => ok(BpfResponse::Object(Box::new(
            rt.load_object(&name, &object, attach, &options, pin, session)?,
        ))),
        BpfRequest::ObjectList => ok(BpfResponse::Objects(
            rt.objects
                .by_id
                .values()
                .map(owners::Object::info)
                .collect(),
        )),
        BpfRequest::ObjectUnload { object } => {
            let id = rt.objects.resolve(&object)?;
            let freed = rt.free_object(id);
            ok(BpfResponse::Objects(freed.into_iter().collect()))
        }
        BpfRequest::Unpin { name } => {
            let Some(o) = rt
                .objects
                .by_id
                .values_mut()
                .find(|o| o.pin.as_deref() == Some(name.as_str()))
            else {
                let pins: Vec<String> = rt
                    .objects
                    .by_id
                    .values()
                    .filter_map(|o| o.pin.clone())
                    .collect();
                return Err(Error::new(
                    Kind::NoEntry,
                    format!("no pin `{name}`; pins: {}", list_or_none(&pins)),
                ));
            };
            o.pin = None;
            let (id, orphaned, info) = (o.id, o.orphaned(), o.info());
            if orphaned {
                rt.free_object(id);
            }
            ok(BpfResponse::Objects(alloc::vec![info]))
        }
        BpfRequest::MapCreate(def) => {
            let m = rt.create_maps(core::slice::from_ref(&*def))?.remove(0);
            rt.maps.insert(m.id, m.clone());
            let parts = Parts {
                maps: alloc::vec![m.id],
                ..Parts::default()
            };
            rt.objects.adopt(&m.name, None, parts, session);
            ok(BpfResponse::Map(Box::new(m.info(Vec::new()))))
        }
        BpfRequest::MapLookup { map, key } => {
            let m = rt.map(map)?;
            let v = m
                .lock()
                .lookup(&key)
                .map_err(|e| map_error(e, &format!("lookup in map {map}")))?;
            ok(BpfResponse::Value(v))
        }
        BpfRequest::MapUpdate {
            map,
            key,
            value,
            flags,
        } => {
            let m = rt.map(map)?;
            m.lock()
                .update(&key, &value, flags)
                .map_err(|e| map_error(e, &format!("update of map {map}")))?;
            Response::Ok
        }
        BpfRequest::MapDelete { map, key } => {
            let m = rt.map(map)?;
            m.lock()
                .delete(&key)
                .map_err(|e| map_error(e, &format!("delete in map {map}")))?;
            Response::Ok
        }
        BpfRequest::MapNextKey { map, key } => {
            let m = rt.map(map)?;
            let k = m
                .lock()
                .next_key(key.as_deref())
                .map_err(|e| map_error(e, &format!("next key of map {map}")))?;
            ok(BpfResponse::Key(k))
        }
        BpfRequest::MapDump { map, after, max } => {
            let m = rt.map(map)?;
            // Bound the batch so one answer stays a reasonable frame: by
            // count, and by the heap it takes (a 64 KiB value times 65 536
            // entries would not fit the heap, let alone a frame). An entry
            // costs its key and value twice (the entry, then the encoded
            // reply) plus two allocations and the entry itself. The reply is
            // built inside the heap's reserve, so on a full heap batches get
            // small (the client pages on) instead of exhausting it.
            let entry_bytes = 2 * (m.spec.key_size as usize + m.host_value_size as usize) + 96;
            let budget = (ktrace_abi::frame::MAX_PAYLOAD / 2)
                .min((crate::mm::heap::spare_bytes() / 2).max(DUMP_FLOOR_BYTES));
            let by_bytes = (budget / entry_bytes).max(1);
            let max = (max as usize).clamp(1, 65_536).min(by_bytes);
            let (entries, more) = m
                .lock()
                .dump(after.as_deref(), max)
                .map_err(|e| map_error(e, &format!("dump of map {map}")))?;
            ok(BpfResponse::Entries {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| MapEntry { key, value })
                    .collect(),
                more,
            })
        }
        BpfRequest::MapUpdateBatch {
            map,
            entries,
            flags,
        } => {
            let m = rt.map(map)?;
            let mut inner = m.lock();
            let mut done = 0;
            let mut err = None;
            for e in &entries {
                if let Err(x) = inner.update(&e.key, &e.value, flags) {
                    err = Some(
                        map_error(x, &format!("update of map {map}, entry {done}")).into_reply(),
                    );
                    break;
                }
                done += 1;
            }
            ok(BpfResponse::Batch { done, error: err })
        }
        BpfRequest::MapDeleteBatch { map, keys } => {
            let m = rt.map(map)?;
            let mut inner = m.lock();
            let mut done = 0;
            let mut err = None;
            for k in &keys {
                if let Err(x) = inner.delete(k) {
                    err = Some(
                        map_error(x, &format!("delete in map {map}, key {done}")).into_reply(),
                    );
                    break;
                }
                done += 1;
            }
            ok(BpfResponse::Batch { done, error: err })
        }
        BpfRequest::MapList => ok(BpfResponse::Maps(
            rt.maps
                .values()
                .map(|m| m.info(rt.map_users(m.id)))
                .collect(),
        )),
        BpfRequest::MapFree { map } => {
            rt.map(map)?;
            rt.free_map(map);
            Response::Ok
        }
        BpfRequest::ProgLoad {
            prog,
            maps,
            options,
        } => {
            let ms = maps
                .iter()
                .map(|&id| rt.map(id))
                .collect::<Result<Vec<_>, _>>()?;
            let p = rt.load_prog(&prog, ms, &options, 0)?;
            rt.progs.insert(p.id, p.clone());
            let parts = Parts {
                progs: alloc::vec![p.id],
                ..Parts::default()
            };
            rt.objects.adopt(&p.name, None, parts, session);
            ok(BpfResponse::Program(Box::new(p.info(Vec::new()))))
        }
        BpfRequest::ProgList => ok(BpfResponse::Programs(
            rt.progs
                .values()
                .map(|p| p.info(rt.prog_links(p.id)))
                .collect(),
        )),
        BpfRequest::ProgDump { prog } => {
            let p = rt.prog(prog)?;
            ok(BpfResponse::ProgramDump(Box::new(ProgDump {
                info: p.info(rt.prog_links(prog)),
                insns: p.insns.clone(),
                lines: p.lines.clone(),
            })))
        }
        BpfRequest::ProgUnload { prog } => {
            rt.prog(prog)?;
            rt.unload_prog(prog);
            Response::Ok
        }
        BpfRequest::ProgTestRun { prog, ctx, repeat } => {
            let p = rt.prog(prog)?;
            // Runs may take a while: do not hold the registry.
            drop(rt);
            ok(BpfResponse::TestRun(Box::new(test_run(&p, &ctx, repeat)?)))
        }
        BpfRequest::Attach {
            prog,
            target,
            kretprobe,
        } => {
            let p = rt.prog(prog)?;
            let l = attach::attach(&mut rt, &p, &target, kretprobe)?;
            let info = l.info();
            rt.links.insert(l.id, l);
            // The link is the attaching client's, like a Linux link fd.
            let parts = Parts {
                links: alloc::vec![info.id],
                ..Parts::default()
            };
            rt.objects.adopt(&p.name, None, parts, session);
            ok(BpfResponse::Link(Box::new(info)))
        }
        BpfRequest::Detach { link } => {
            if !rt.links.contains_key(&link) {
                return Err(Error::new(Kind::NoEntry, format!("no link with id {link}")));
            }
            rt.detach_link(link);
            Response::Ok
        }
        BpfRequest::LinkList => ok(BpfResponse::Links(
            rt.links.values().map(attach::Link::info).collect(),
        )),
        BpfRequest::EventsSubscribe { maps, printk } => {
            let ms = stream_maps(&rt, &maps)?;
            // `subscribe` waits for the event task's next round.
            drop(rt);
            events::subscribe(session, ms, printk);
            Response::Ok
        }
        BpfRequest::EventsPoll { maps, printk, max } => {
            let ms = stream_maps(&rt, &maps)?;
            drop(rt);
            ok(BpfResponse::Events(events::collect(
                session,
                &ms,
                printk,
                (max as usize).max(1),
                ktrace_abi::frame::MAX_FRAME,
            )))
        }
        BpfRequest::DefaultEngine { set } => {
            if let Some(engine) = set {
                rt.default_engine = engine;
                log::info!("bpf: programs loaded from now on run as {engine:?} by default");
            }
            ok(BpfResponse::DefaultEngine(rt.default_engine))
        }
        BpfRequest::RunTimeStats { set } => {
            if let Some(on) = set {
                prog::set_run_time_stats(on);
                log::info!(
                    "bpf: program runs are {} from now on",
                    if on { "timed" } else { "not timed" }
                );
            }
            ok(BpfResponse::RunTimeStats(prog::run_time_stats()))
        }
        BpfRequest::GetLimits => ok(BpfResponse::Limits {
            limits: Box::new(rt.limits.clone()),
            usage: Box::new(rt.usage()),
        }),
        BpfRequest::SetLimits(l) => {
            // A limit the heap cannot honour would only move the refusal
            // to an allocation deep inside a request.
            let heap_cap = max_map_memory();
            if l.map_memory_bytes > heap_cap || l.insns_per_program > MAX_INSNS_PER_PROGRAM {
                return Err(Error::new(Kind::Invalid,
                    format!(
                        "limits of {} map bytes and {} instructions per program are more than this kernel can hold: at most {heap_cap} map bytes (its heap is {} bytes) and {MAX_INSNS_PER_PROGRAM} instructions",
                        l.map_memory_bytes,
                        l.insns_per_program,
                        crate::mm::heap::total_bytes()
                    ),
                ));
            }
            let u = rt.usage();
            if u.map_memory_bytes > l.map_memory_bytes || u.programs > l.programs || u.maps > l.maps
            {
                return Err(Error::new(Kind::Busy,
                    format!(
                        "current use ({} map bytes, {} programs, {} maps) exceeds the requested limits",
                        u.map_memory_bytes, u.programs, u.maps
                    ),
                ));
            }
            rt.limits = *l;
            Response::Ok
        }
        BpfRequest::Trigger { count, arg } => {
            drop(rt);
            // The calls run in the control task: an unbounded count would
            // stall the channel for minutes under TCG.
            check_sync_count("Trigger", count)?;
            ok(BpfResponse::Triggered {
                count,
                result: testing::trigger(count, arg),
            })
        }
        BpfRequest::TriggerSpawn { count } => {
            drop(rt);
            spawn_trigger(count)?;
            Response::Ok
        }
        BpfRequest::Bench { count } => {
            drop(rt);
            // Bench runs with interrupts off: bound it like Trigger.
            check_sync_count("Bench", count)?;
            ok(BpfResponse::Bench(Box::new(testing::bench(count))))
        }
        BpfRequest::TriggerBench { cpus, ms } => {
            drop(rt);
            ok(BpfResponse::TriggerBench(Box::new(testing::trigger_bench(
                &cpus, ms,
            )?)))
        }
    })
}

fn stream_maps(rt: &Runtime, ids: &[u32]) -> Result<Vec<Arc<KMap>>, Error> {
    ids.iter()
        .map(|&id| {
            let m = rt.map(id)?;
            match m.spec.map_type {
                ktrace_bpf_maps::map_type::RINGBUF
                | ktrace_bpf_maps::map_type::PERF_EVENT_ARRAY => Ok(m),
                t => Err(Error::new(
                    Kind::Invalid,
                    format!(
                        "map {id} ({}) is a {} map, not a ring buffer or perf event array",
                        m.name,
                        ktrace_bpf_maps::map_type::name(t)
                    ),
                )),
            }
        })
        .collect()
}
