//! Programs: verification at load, JIT compilation (or preparation for the
//! interpreter), and the run path every attach point calls.
//!
//! Nothing runs unless the bpf-vm verifier accepted it for the program's
//! context descriptor, ktrace's helper prototypes and the program's maps.
//! That proof is what makes the interpreter's unchecked fast mode and the
//! JIT's code sound, and the one `unsafe` block here says so.
//!
//! # JIT
//! Programs are JIT-compiled at load unless the load asks for the
//! interpreter ([`Engine::Interpreter`]); a program the JIT refuses runs
//! interpreted, and `ProgInfo::exec` says which and why. Compiled code
//! calls the helpers through `bpf_vm::jit::helper_table`, i.e. the same
//! [`RunEnv`] methods the interpreter calls, and charges the same budget,
//! so results, map contents, faults and instruction counts are the same
//! under both engines. The code lives in an [`ExecMem`] owned by the
//! [`Program`].
//!
//! Why freeing it with the program is safe: attach points hold the
//! program through an `Arc<Program>` inside their handler (`attach.rs`), so
//! the code is freed only once every link was detached and the last
//! handler dropped. Detaching unregisters the handler and then waits for
//! a grace period (`trace::grace_period`): handlers run with interrupts
//! off on their CPU, and the grace period returns once every CPU has taken
//! an interrupt since the handler was unpublished, so no run that started
//! before can still be in progress, and none can start, once the `Arc`
//! goes and the memory is unmapped.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bpf_vm::insn::LdImm64Src;
use bpf_vm::interp::RunErrorKind;
use bpf_vm::jit::{self, JitOptions};
use bpf_vm::verifier::{self, linux, Config, Env, LineInfo, MapDef};
use bpf_vm::{Executable, RunError, Vm};
use ktrace_abi::bpf::{
    self as abi, AttachTarget, Engine, ExecInfo, LineTable, ProgInfo, ProgramLoad, ProgramType,
    VerifierReport,
};
use ktrace_bpf_maps::Map;

use super::helpers::RunEnv;
use super::kmap::KMap;
use crate::arch::exec_mem::ExecMem;
use crate::percpu::PerCpuCounter;
use crate::sync::SpinLock;

/// `ld_imm64` value standing for map `i` of a program: `MAP_HANDLE | i`.
/// Not an address: helpers decode it, and the verifier forbids
/// dereferencing a map pointer, so programs cannot use it as one.
pub const MAP_HANDLE: u64 = 0xffff_a000_0000_0000;

/// Default instructions per run.
pub const DEFAULT_BUDGET: u64 = 1_000_000;

/// What an attach point knows about a hit, for helpers that need more than
/// the context bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct HitInfo {
    /// `bpf_get_func_ip`: the probed function's address.
    pub func_ip: u64,
    /// Where the stack walk starts.
    pub rip: u64,
    pub rbp: u64,
}

/// Counters of one program (updated from probe context). Those every run
/// adds to are per CPU: runs on every CPU at once share no cache line and
/// take no locked instruction.
#[derive(Default)]
pub struct ProgStats {
    pub run_count: PerCpuCounter,
    /// Only while runs are timed ([`run_time_stats`]).
    pub run_cycles: PerCpuCounter,
    pub insns: PerCpuCounter,
    pub misses: AtomicU64,
    pub budget_exhausted: AtomicU64,
    pub faults: AtomicU64,
}

/// A verified, loaded program.
pub struct Program {
    pub id: u32,
    pub name: String,
    pub section: String,
    pub prog_type: ProgramType,
    pub attach: AttachTarget,
    pub exe: Executable,
    /// The compiled code, when the program runs JIT-compiled.
    pub native: Option<ExecMem>,
    /// JIT-compiled or interpreted, for the listing.
    pub exec: ExecInfo,
    pub maps: Vec<Arc<KMap>>,
    /// Bytes of context the verifier proved accesses against.
    pub ctx_size: usize,
    pub insns: Vec<u8>,
    pub lines: Option<LineTable>,
    pub verifier: VerifierReport,
    pub budget: u64,
    /// Whether a run enters the epoch ([`super::epochs`]): only when the
    /// program refers to a hash map (see [`refers_to_hash_map`]).
    pub needs_epoch: bool,
    pub stats: ProgStats,
    pub last_error: SpinLock<Option<RunError>>,
    pub loaded_at_ns: u64,
}

/// Why a load failed.
pub enum LoadError {
    /// The request is malformed (bad map index, unknown tracepoint...).
    Invalid(String),
    /// The verifier rejected the program.
    Rejected(Box<VerifierReport>),
    /// The kernel heap cannot spare what verifying the program needs.
    NoMemory(String),
}

/// Least state memory worth starting a verification with.
const MIN_STATE_BYTES: usize = 1 << 20;
/// Heap per instruction outside the verifier: the decoded program, the
/// interpreter's copy, the kept bytes, and the JIT's code, labels and slot
/// offsets while compiling (native code averages well under 64 bytes per
/// instruction; an `ld_imm64` or a call takes two slots).
const LOADED_BYTES_PER_INSN: usize = 64 + 160;

/// One CPU's run state, on a cache line of its own (only its CPU touches
/// it).
#[repr(align(64))]
struct CpuRun {
    /// A program runs on this CPU. Every caller of [`Program::run`] has
    /// interrupts off (attach points' handlers run so, and test runs hold
    /// the runtime's lock, which masks them), so on one CPU a run can only
    /// be entered again from inside another: a probe or tracepoint hit in
    /// a helper or in code a helper calls, or an NMI (perf sampling). Such
    /// a nested run finds the flag set and is a miss, under both engines
    /// alike (Linux's per-CPU `bpf_prog_active`). Only this CPU sets and
    /// clears it, and a nested context clears what it set before the outer
    /// one resumes, so a plain load and store suffice (no locked
    /// instruction): a context that finds it clear and sets it cannot be
    /// interrupted by one that then still finds it clear while it runs, and
    /// a nested hit is counted as a miss exactly.
    running: AtomicBool,
    /// This CPU's interpreter (registers, stack, call frames), for
    /// interpreted runs. Taken only by the holder of `running`, so its
    /// `try_lock` never fails and never waits: CPUs run programs side by
    /// side. JIT-compiled runs keep their frames on the native stack and do
    /// not take it.
    vm: SpinLock<Vm>,
}

/// Clears [`CpuRun::running`] when a run ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl CpuRun {
    /// Marks this CPU as running a program; `None` when one already runs.
    fn enter(&self) -> Option<Running<'_>> {
        if self.running.load(Ordering::Relaxed) {
            return None;
        }
        self.running.store(true, Ordering::Relaxed);
        // Nothing of the run may move above the store (for this CPU's own
        // nested contexts, a compiler barrier is all it takes).
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        Some(Running(&self.running))
    }
}

/// Per-CPU run state, indexed by `percpu::this_cpu().id`.
static RUNS: spin::Once<Vec<CpuRun>> = spin::Once::new();

/// Whether runs are timed into `run_time_ns` (Linux's
/// `kernel.bpf_stats_enabled`, off by default there too): two `rdtsc` and
/// an add per run, a large part of what an empty program costs under
/// emulation. `run_count` and the instruction count are always kept.
static RUN_TIME_STATS: AtomicBool = AtomicBool::new(false);

/// Turns the timing of runs on or off (`ktrace prog stats on|off`).
pub fn set_run_time_stats(on: bool) {
    RUN_TIME_STATS.store(on, Ordering::Relaxed);
}

/// Whether runs are timed.
pub fn run_time_stats() -> bool {
    RUN_TIME_STATS.load(Ordering::Relaxed)
}

/// Allocates the run state of every possible CPU
/// (`ktrace_abi::vm::MAX_CPUS`, the most the kernel brings up), at boot so
/// runs never allocate; CPUs may come online after this runs. About
/// 5 KiB each.
pub fn init() {
    RUNS.call_once(|| {
        (0..ktrace_abi::vm::MAX_CPUS as usize)
            .map(|_| CpuRun {
                running: AtomicBool::new(false),
                vm: SpinLock::new(Vm::new()),
            })
            .collect()
    });
}

/// Longest source file name a line table may carry (Linux's `PATH_MAX`).
const MAX_LINE_FILE: usize = 4096;

/// Checks a line table's shape and returns an upper bound of the heap its
/// locations take as text: at most one row per instruction, file names no
/// longer than a path, each row at most two names and two numbers.
fn line_table_bytes(lines: &LineTable, insns: usize) -> Result<usize, String> {
    if lines.rows.len() > insns {
        return Err(alloc::format!(
            "the line table has {} rows for {insns} instructions (at most one per instruction)",
            lines.rows.len()
        ));
    }
    let longest = lines.files.iter().map(String::len).max().unwrap_or(0);
    if longest > MAX_LINE_FILE {
        return Err(alloc::format!(
            "a file name of the line table is {longest} bytes, longer than the {MAX_LINE_FILE} a path may have"
        ));
    }
    let per_row = core::mem::size_of::<LineInfo>() + 2 * longest + 48;
    Ok(lines.rows.len() * per_row)
}

/// Verifies and prepares `p` over `maps` (index `i` = the program's map `i`).
pub fn load(
    id: u32,
    p: &ProgramLoad,
    maps: Vec<Arc<KMap>>,
    log_level: u8,
    budget: u64,
    engine: Choice,
) -> Result<Program, LoadError> {
    // The one set-up `ktrace check` uses too: same context, same helpers,
    // same refusal text.
    let ptype = linux::program_type(p.prog_type, p.attach.platform())
        .map_err(|e| LoadError::Invalid(e.to_string()))?;
    if ptype.ctx.writable {
        // `Program::run` hands attach points' bytes over without a copy,
        // which is only sound for a context programs cannot store into.
        return Err(LoadError::Invalid(alloc::format!(
            "the context of {} programs is writable, which this kernel does not support",
            ptype.name
        )));
    }
    let helpers = linux::helpers();
    let defs: Vec<MapDef> = maps
        .iter()
        .enumerate()
        .map(|(i, m)| MapDef {
            fd: i as i32,
            map_type: m.spec.map_type,
            key_size: m.spec.key_size,
            value_size: m.spec.value_size,
            max_entries: m.spec.max_entries,
        })
        .collect();
    let env = Env {
        prog_type: &ptype,
        helpers: &helpers,
        maps: &defs,
    };
    let n = p.insns.len() / 8;
    let line_bytes = match &p.lines {
        Some(l) => line_table_bytes(l, n).map_err(LoadError::Invalid)?,
        None => 0,
    };
    // Check the heap first: the verifier's tables, the source locations
    // and the loaded program must fit, and the verifier's states get what
    // is left, so none of its allocations can fail.
    let probe = Config {
        log_level,
        ..Config::default()
    };
    let fixed = verifier::fixed_memory_bytes(n, &probe)
        + line_bytes
        + n * (core::mem::size_of::<bpf_vm::insn::Insn>() + LOADED_BYTES_PER_INSN);
    // The spare heap is read once (interrupts and other tasks allocate too):
    // the states get what this reading left.
    let spare = crate::mm::heap::check_room(fixed + MIN_STATE_BYTES)
        .map_err(|full| LoadError::NoMemory(alloc::format!("verifying {n} instructions {full}")))?;
    let line_info: Vec<LineInfo> = p
        .lines
        .as_ref()
        .map(|l| {
            abi::line_locations(l)
                .into_iter()
                .map(|(insn, location)| LineInfo { insn, location })
                .collect()
        })
        .unwrap_or_default();
    let config = Config {
        log_level,
        line_info: &line_info,
        clock: Some(crate::time::now_ns),
        max_state_bytes: (spare - fixed).min(abi::MAX_VERIFIER_STATE_BYTES),
        ..Config::default()
    };
    let program = match bpf_vm::decode(&p.insns) {
        Ok(prog) => prog,
        Err(e) => {
            // Let the verifier produce the standard message for undecodable input.
            let rej = verifier::verify_bytes(&p.insns, &env, &config).err();
            let message = rej
                .map(|r| r.to_string())
                .unwrap_or_else(|| alloc::format!("{e:?}"));
            return Err(LoadError::Rejected(Box::new(VerifierReport {
                accepted: false,
                message: Some(message),
                ..empty_report()
            })));
        }
    };
    let call_maps;
    let report = match verifier::verify(program.insns(), &env, &config) {
        Ok(r) => {
            call_maps = r.call_maps;
            VerifierReport {
                accepted: true,
                message: None,
                log: r.log,
                insns_processed: r.stats.insns_processed,
                states_stored: r.stats.states_stored,
                peak_states: r.stats.peak_states,
                states_pruned: r.stats.states_pruned,
                stack_depth: r.stats.stack_depth,
                time_ns: r.stats.time_ns.unwrap_or(0),
            }
        }
        Err(rej) => {
            return Err(LoadError::Rejected(Box::new(VerifierReport {
                accepted: false,
                message: Some(rej.to_string()),
                log: rej.log,
                insns_processed: rej.stats.insns_processed,
                states_stored: rej.stats.states_stored,
                peak_states: rej.stats.peak_states,
                states_pruned: rej.stats.states_pruned,
                stack_depth: rej.stats.stack_depth,
                time_ns: rej.stats.time_ns.unwrap_or(0),
            })))
        }
    };
    let mut referred = alloc::vec![false; maps.len()];
    let exe = Executable::with_resolver(&program, |src| match src {
        LdImm64Src::MapIdx(i) => usize::try_from(i)
            .ok()
            .filter(|&i| i < maps.len())
            .map(|i| {
                referred[i] = true;
                MAP_HANDLE | i as u64
            }),
        LdImm64Src::MapValueIdx { idx, off } => {
            let m = maps.get(usize::try_from(idx).ok()?)?;
            let inner = m.lock();
            match &*inner {
                Map::Array(a) if u64::from(off) < u64::from(m.spec.value_size) => {
                    a.value_addr(0, 0).map(|a| a + u64::from(off))
                }
                _ => None,
            }
        }
        _ => None,
    })
    .map_err(|e| LoadError::Invalid(e.to_string()))?;
    let needs_epoch = refers_to_hash_map(&referred, &maps);
    let inline = array_lookups(&program, &call_maps, &maps);
    let (native, exec) = compile(&exe, engine, id, &inline);
    Ok(Program {
        id,
        name: p.name.clone(),
        section: p.section.clone(),
        prog_type: p.prog_type,
        attach: p.attach.clone(),
        exe,
        native,
        exec,
        maps,
        ctx_size: ptype.ctx.size as usize,
        insns: p.insns.clone(),
        lines: p.lines.clone(),
        verifier: report,
        budget: if budget == 0 { DEFAULT_BUDGET } else { budget },
        needs_epoch,
        stats: ProgStats::default(),
        last_error: SpinLock::new(None),
        loaded_at_ns: crate::time::now_ns(),
    })
}

/// Whether a program whose `ld_imm64` map references name the maps
/// `referred` marks (by index into `maps`) can reach a hash map.
///
/// The epoch a run enters (`Epochs::enter`) keeps deleted hash map slots
/// from reuse while a program may still hold a pointer into one (a value a
/// lookup returned, or a slot an update or lookup walks to without a
/// lock); hash maps are its only users (`ktrace_bpf_maps::HashMap`'s
/// `retire`/`reusable`). A program reaches a map only through a map
/// pointer, and the only source of one is an `ld_imm64` map reference
/// (the verifier tracks map pointers from there into helper arguments;
/// direct value references are arrays only), so a program none of whose
/// references names a hash map can never hold such a pointer, and its runs
/// skip the epoch: a load, a test and the locked exchange of its entry, and
/// the store of its exit.
fn refers_to_hash_map(referred: &[bool], maps: &[Arc<KMap>]) -> bool {
    referred
        .iter()
        .zip(maps)
        .any(|(&r, m)| r && m.hash().is_some())
}

/// The `map_lookup_elem` calls the verifier saw on one array map on every
/// path, described for the JIT to compute inline (see
/// [`jit::InlineLookup`]). An array's values never move and the program
/// holds its maps (`Program::maps`) for as long as its code may run, so
/// the address stays valid; per-CPU arrays on more than one CPU stay
/// helper calls (see [`ktrace_bpf_maps::ArrayLayout::shared_values`]).
fn array_lookups(
    program: &bpf_vm::insn::Program,
    call_maps: &[(usize, usize)],
    maps: &[Arc<KMap>],
) -> Vec<jit::InlineLookup> {
    let lookup = bpf_vm::insn::Insn::Call {
        id: linux::helper::MAP_LOOKUP_ELEM,
    };
    call_maps
        .iter()
        .filter(|&&(pc, _)| program.insns().get(pc) == Some(&lookup))
        .filter_map(|&(pc, m)| {
            let (base, stride, max_entries) = maps.get(m)?.array()?.shared_values()?;
            Some(jit::InlineLookup {
                pc,
                base,
                stride,
                max_entries,
            })
        })
        .collect()
}

/// A blinding seed: `rdrand` where the CPU has it (QEMU's `-cpu max` does,
/// under TCG too), else the TSC, mixed with the program id (splitmix64) so
/// every program gets different keys. The TSC fallback is not secret
/// against someone who can read the TSC at load time; it still keeps chosen
/// constants out of the code.
fn blinding_seed(id: u32) -> u64 {
    // `RdRand::new` checks CPUID; `get_u64` gives up after the CPU's
    // retries report no entropy.
    let random = x86_64::instructions::random::RdRand::new()
        .and_then(|r| r.get_u64())
        .unwrap_or_else(crate::arch::rdtsc);
    let mut z = random ^ (u64::from(id) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How a load chose its engine.
#[derive(Clone, Copy, Debug)]
pub enum Choice {
    /// The load said (`LoadOptions::engine`).
    Asked(Engine),
    /// The kernel's default (`BpfRequest::DefaultEngine`).
    Default(Engine),
}

/// JIT-compiles `exe` unless `engine` asks for the interpreter; a program
/// the JIT or the executable memory refuses runs interpreted, and the
/// listing says why.
fn compile(
    exe: &Executable,
    engine: Choice,
    id: u32,
    inline: &[jit::InlineLookup],
) -> (Option<ExecMem>, ExecInfo) {
    let interpreted = |why: &str| {
        (
            None,
            ExecInfo::Interpreter {
                why: why.to_string(),
            },
        )
    };
    let blinded = match engine {
        Choice::Asked(Engine::Interpreter) => {
            return interpreted("the load asked for the interpreter")
        }
        Choice::Default(Engine::Interpreter) => {
            return interpreted("the default, set by `ktrace prog jit off`")
        }
        Choice::Asked(Engine::Jit) | Choice::Default(Engine::Jit) => false,
        Choice::Asked(Engine::JitHardened) | Choice::Default(Engine::JitHardened) => true,
    };
    let options = JitOptions {
        blinding: blinded.then(|| blinding_seed(id)),
    };
    // Helpers see the run's env as a `RunEnv`; the lifetime is the run's
    // (see the run path).
    let helpers = jit::helper_table::<RunEnv<'static>>();
    // A hardened load the JIT cannot serve runs interpreted (no native code
    // to spray, as Linux without `CONFIG_BPF_JIT_ALWAYS_ON`) and says that
    // it asked for blinding.
    let harden_source = match engine {
        Choice::Asked(_) => "`--jit-harden`",
        Choice::Default(_) => "the default, set by `ktrace prog jit harden`",
    };
    let refused = |why: String| {
        let why = match blinded {
            true => alloc::format!("constant blinding was asked for ({harden_source}), but {why}"),
            false => why,
        };
        log::warn!("bpf: program {id} runs interpreted: {why}");
        (None, ExecInfo::Interpreter { why })
    };
    let image = match jit::compile_inlined(exe, &options, &helpers, inline) {
        Ok(image) => image,
        Err(e) => return refused(alloc::format!("the JIT refused it: {e}")),
    };
    match ExecMem::new(image.code(), image.entry()) {
        Ok(code) => {
            let native_bytes = code.code_len() as u32;
            (
                Some(code),
                ExecInfo::Jit {
                    native_bytes,
                    blinded,
                    inlined_lookups: inline.len() as u32,
                },
            )
        }
        Err(e) => refused(alloc::format!("no executable memory: {e}")),
    }
}

fn empty_report() -> VerifierReport {
    VerifierReport {
        accepted: false,
        message: None,
        log: String::new(),
        insns_processed: 0,
        states_stored: 0,
        peak_states: 0,
        states_pruned: 0,
        stack_depth: Vec::new(),
        time_ns: 0,
    }
}

impl Program {
    /// Counts a hit the program did not run on: nested in another run or
    /// probe handler, no free return instance, or a context of the wrong
    /// size.
    pub fn count_miss(&self) {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs the program on `ctx` (which must be `ctx_size` bytes). Returns
    /// r0, or `None` if it did not run (nested hit: a miss) or faulted
    /// (counted, last error kept). Never allocates. Called with
    /// interrupts off (see [`CpuRun::running`]), from any context.
    ///
    /// `ctx` is only read: every context is read-only to programs (`load`
    /// refuses a writable one), so attach points hand over their record
    /// or register bytes without copying them first.
    pub fn run(&self, ctx: &[u8], hit: &HitInfo) -> Option<u64> {
        if ctx.len() != self.ctx_size {
            self.count_miss();
            return None;
        }
        // Read once: the run's counters and slots are all this CPU's.
        let cpu = crate::percpu::cpu_id() as usize;
        let Some(slot) = RUNS.get().and_then(|v| v.get(cpu)) else {
            self.count_miss();
            return None;
        };
        let Some(_running) = slot.enter() else {
            self.count_miss();
            return None;
        };
        // Interpreted runs take this CPU's interpreter (free: we hold
        // `running`); compiled ones need none.
        let mut vm = None;
        if self.native.is_none() {
            let Some(guard) = slot.vm.try_lock() else {
                self.count_miss();
                return None;
            };
            vm = Some(guard);
        }
        // Only programs that can reach a hash map (`refers_to_hash_map`).
        let _epoch = self.needs_epoch.then(|| super::epochs().enter(cpu));
        let mut env = RunEnv {
            prog: self,
            cpu,
            hit: *hit,
        };
        let timed = run_time_stats();
        let t0 = if timed { crate::arch::rdtsc() } else { 0 };
        // Compiled code: built with `helper_table::<RunEnv<'static>>()`, its
        // trampolines see this run's `env`, which differs only in a lifetime
        // that covers the run, and keep nothing after returning. It runs on
        // the native stack: at most `MAX_CALL_FRAMES` frames of 576 bytes
        // plus helpers, inside every stack handlers run on (16 KiB interrupt
        // stacks, 64 KiB task stacks). The one unsafe block of the BPF
        // runtime: its argument is the verifier's proof, which no arch
        // interface could state.
        //
        // SAFETY: `self.exe` and `self.native` (alive with `self`) come from
        // a program the verifier accepted (see `load`) for a read-only
        // context of `self.ctx_size` bytes, checked equal to `ctx.len()`
        // above; `ctx` lives for the whole run and no store into it passed
        // the verifier, so the mutable pointer is never written through.
        // Helpers follow ktrace's prototypes (`RunEnv`): each pointer they
        // return is map or ring memory kept by `self.maps`, and the epoch
        // guard keeps deleted hash map slots from reuse (a program that
        // reaches no hash map holds none: `refers_to_hash_map`).
        #[allow(unsafe_code)]
        let (r, executed) = unsafe {
            match (&self.native, vm.as_deref_mut()) {
                (Some(code), _) => jit::run(
                    code.entry(),
                    ctx.as_ptr().cast_mut(),
                    ctx.len(),
                    &mut env,
                    self.budget,
                ),
                (None, Some(vm)) => {
                    let r = vm.run_fast(
                        &self.exe,
                        ctx.as_ptr().cast_mut(),
                        ctx.len(),
                        &mut env,
                        self.budget,
                    );
                    (r, vm.executed())
                }
                // `vm` was taken above for every program without code.
                (None, None) => return None,
            }
        };
        if timed {
            let dt = crate::arch::rdtsc().wrapping_sub(t0);
            self.stats.run_cycles.add_on(cpu, dt);
        }
        self.stats.run_count.add_on(cpu, 1);
        self.stats.insns.add_on(cpu, executed);
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                if matches!(e.kind, RunErrorKind::BudgetExhausted { .. }) {
                    self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.faults.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(mut last) = self.last_error.try_lock() {
                    *last = Some(e);
                }
                None
            }
        }
    }

    /// The listing the host shows.
    pub fn info(&self, links: Vec<u32>) -> ProgInfo {
        let s = &self.stats;
        ProgInfo {
            id: self.id,
            name: self.name.clone(),
            section: self.section.clone(),
            prog_type: self.prog_type,
            insns: (self.insns.len() / 8) as u32,
            maps: self.maps.iter().map(|m| m.id).collect(),
            run_count: s.run_count.sum(),
            run_time_ns: crate::time::tsc_to_ns(s.run_cycles.sum()),
            insns_executed: s.insns.sum(),
            misses: s.misses.load(Ordering::Relaxed),
            budget_exhausted: s.budget_exhausted.load(Ordering::Relaxed),
            faults: s.faults.load(Ordering::Relaxed),
            last_error: self.last_error.lock().map(|e| e.to_string()),
            insn_budget: self.budget,
            exec: self.exec.clone(),
            verifier: self.verifier.clone(),
            links,
            loaded_at_ns: self.loaded_at_ns,
        }
    }
}
