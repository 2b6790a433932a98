//! Interpreter and JIT throughput: our fast mode and our JIT against rbpf
//! 0.4.1's interpreter and its x86-64 JIT, on six programs shaped like real
//! probe code:
//!
//! - `alu`: a multiply/xor/shift hashing loop;
//! - `stack`: loads and stores of 1, 4 and 8 bytes on the stack in a loop;
//! - `helper`: a helper call per iteration;
//! - `hashmap`: a helper looking a stack-held key up in a host hashbrown map,
//!   then a read-modify-write of the returned value (the `map_lookup_elem`
//!   pattern);
//! - `log2hist`: a biolatency-style log2 histogram: a pseudo-random delta,
//!   log2 by LLVM's branchy compare-and-shift sequence, a bounds check and an
//!   increment of the bucket;
//! - `calls`: a bpf-to-bpf call per iteration (stack spill and reload in
//!   the callee).
//!
//! Throughput is reported in instructions per second (criterion "elements");
//! each program's executed-instruction count comes from our VM. A `SUMMARY`
//! line per program gives the figures measured in thread CPU time, which
//! stay meaningful when other jobs load the machine, and the ratios of our
//! JIT to rbpf's JIT and to our interpreter.
//!
//! The same map work on both JITs: `helper` and `hashmap` call the very
//! same helper functions from both (as their own helper table: rbpf's by
//! `register_helper`, ours by the `compile` table), so the ratio is the
//! compiled code's. For those two the line also gives the share of rbpf's
//! run time the helper calls alone take (the same calls made from a Rust
//! loop through a function pointer): where it is most of the time, the
//! programs measure the helper, not the JIT. Our interpreter calls its
//! `HelperTable` helpers on its own copy of the map (the same hashbrown
//! lookup, plus the table's dispatch, as the kernel's helpers are called).
//! Run with `cargo bench -p bpf-vm --bench interp`; about a minute.

use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::{Duration, Instant};

use bpf_vm::asm::assemble;
use bpf_vm::interp::{Executable, HelperError, HelperMem, HelperTable, Vm};
use bpf_vm::jit::{compile, HelperRet, JitHelperFn, JitOptions, JitRun};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hashbrown::HashMap;

#[path = "support/programs.rs"]
mod programs;
use programs::*;

/// The host map: keys to indices into one contiguous value arena, so rbpf
/// can be told about the values with a single allowed-memory range.
struct Map {
    index: HashMap<u64, usize>,
    values: Vec<u64>,
}

impl Map {
    fn new() -> Map {
        // Half of the program's 1024 keys are present.
        let index = (0..512u64).map(|k| (k * 2, k as usize)).collect();
        Map {
            index,
            values: vec![0; 512],
        }
    }

    fn lookup(&mut self, key: u64) -> u64 {
        match self.index.get(&key) {
            Some(&i) => &mut self.values[i] as *mut u64 as u64,
            None => 0,
        }
    }
}

fn add_helper(_: &mut Map, _: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
    Ok(a[0].wrapping_add(a[1]))
}

fn lookup_helper(map: &mut Map, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
    let key = mem.read(a[1], 8)?;
    let key = u64::from_le_bytes(key.try_into().expect("8 bytes"));
    let v = map.lookup(key);
    if v != 0 {
        // SAFETY: the value arena lives in the helper table for the whole
        // run and is not resized or borrowed while the program runs.
        unsafe {
            mem.allow(
                map.values.as_mut_ptr() as u64,
                (map.values.len() * 8) as u64,
                true,
            )
        };
    }
    Ok(v)
}

/// CPU time this thread has run, in seconds: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`,
/// as a raw system call since the project does not depend on libc.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn thread_cpu_secs() -> Option<f64> {
    const SYS_CLOCK_GETTIME: i64 = 228;
    const CLOCK_THREAD_CPUTIME_ID: i64 = 3;
    let mut ts = [0i64; 2];
    let ret: i64;
    // SAFETY: the system call writes one `struct timespec` (two i64) to
    // `ts`, which is live and large enough; `syscall` clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_CLOCK_GETTIME => ret,
            in("rdi") CLOCK_THREAD_CPUTIME_ID,
            in("rsi") ts.as_mut_ptr(),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (ret == 0).then(|| ts[0] as f64 + ts[1] as f64 * 1e-9)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn thread_cpu_secs() -> Option<f64> {
    None
}

/// Seconds per call of `f`, over a batch of `n` calls: thread CPU time when
/// the kernel reports it, wall time otherwise.
fn per_run(n: u32, mut f: impl FnMut()) -> f64 {
    let (cpu, wall) = (thread_cpu_secs(), Instant::now());
    for _ in 0..n {
        f();
    }
    let elapsed = match (cpu, thread_cpu_secs()) {
        (Some(a), Some(b)) => b - a,
        _ => wall.elapsed().as_secs_f64(),
    };
    elapsed / n as f64
}

/// The map of the helpers both JITs call (rbpf's helpers take no context
/// argument): one per process, reached through a plain pointer, as a
/// kernel helper reaches a map through its handle. (It was a thread-local
/// `RefCell`, whose lazy-initialisation check and borrow flag cost the
/// JITs' helper calls more than the interpreter's, which gets its map from
/// its `HelperTable`.)
static HOST_MAP: AtomicPtr<Map> = AtomicPtr::new(std::ptr::null_mut());

#[inline(always)]
fn with_host_map<R>(f: impl FnOnce(&mut Map) -> R) -> R {
    let mut map = HOST_MAP.load(Ordering::Relaxed);
    if map.is_null() {
        map = Box::into_raw(Box::new(Map::new()));
        HOST_MAP.store(map, Ordering::Relaxed);
    }
    // SAFETY: the map is leaked, so it lives for the process; the benchmark
    // runs on one thread and no helper calls another, so this is the only
    // reference to it while `f` runs.
    f(unsafe { &mut *map })
}

// Inlined into the JIT's helpers below, so that each JIT makes one call per
// helper (rbpf calls these directly).
#[inline(always)]
fn rbpf_add(a: u64, b: u64, _: u64, _: u64, _: u64) -> u64 {
    a.wrapping_add(b)
}

#[inline(always)]
fn rbpf_lookup(_: u64, key: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: the program passes r10-8 after storing 8 bytes there.
    let key = unsafe { (key as *const u64).read_unaligned() };
    with_host_map(|m| m.lookup(key))
}

#[allow(dead_code)]
#[path = "../tests/support/jit.rs"]
mod jit_support;

// The JIT's helpers, called directly by id as a kernel would register
// them (and as rbpf calls its helpers), on the same map (`HOST_MAP`).
extern "sysv64" fn jit_add(
    a: u64,
    b: u64,
    _: u64,
    _: u64,
    _: u64,
    _: *mut JitRun<'_>,
) -> HelperRet {
    HelperRet::ok(a.wrapping_add(b))
}

extern "sysv64" fn jit_lookup(
    _: u64,
    key: u64,
    _: u64,
    _: u64,
    _: u64,
    _: *mut JitRun<'_>,
) -> HelperRet {
    HelperRet::ok(rbpf_lookup(0, key, 0, 0, 0))
}

/// The helper calls of `helper` and `hashmap` without the program: the
/// same functions with the same arguments, called through a pointer the
/// compiler cannot see through (as compiled code calls them).
fn helpers_alone(name: &str) -> Option<fn()> {
    type Helper = fn(u64, u64, u64, u64, u64) -> u64;
    fn add_loop() {
        let add = black_box(rbpf_add as Helper);
        let mut r7 = 0;
        for r6 in (1..=10_000u64).rev() {
            r7 = add(r7, r6, 0, 0, 0);
        }
        black_box(r7);
    }
    fn lookup_loop() {
        let lookup = black_box(rbpf_lookup as Helper);
        for r6 in (1..=10_000u64).rev() {
            let key = r6 & 1023;
            let value = lookup(0, &key as *const u64 as u64, 0, 0, 0);
            if value != 0 {
                // SAFETY: a non-zero lookup result points into the
                // map's value arena, which lives for the process.
                unsafe { *(value as *mut u64) += 1 };
            }
        }
    }
    match name {
        "helper" => Some(add_loop),
        "hashmap" => Some(lookup_loop),
        _ => None,
    }
}

fn bench(c: &mut Criterion) {
    // The lookup is Linux's `bpf_map_lookup_elem` (1), which the platform
    // table declares never aborts a run (no error test after the call, as
    // in the kernel); the add helper sits on 2, a helper that may.
    let jit_helpers: [Option<JitHelperFn>; 3] = [None, Some(jit_lookup), Some(jit_add)];
    // `INTERP_BENCH_PROGRAMS=stack,log2hist` runs only those programs.
    let only = std::env::var("INTERP_BENCH_PROGRAMS").ok();
    for (name, src) in ALL {
        if only
            .as_deref()
            .is_some_and(|list| !list.split(',').any(|n| n == name))
        {
            continue;
        }
        let program = assemble(src).expect("benchmark program assembles");
        let bytes = program.encode();
        let exe = Executable::new(&program).expect("prepares");
        let mut helpers = HelperTable::new(Map::new());
        helpers.register(1, lookup_helper).register(2, add_helper);
        let mut vm = Vm::new();
        let mut mem = vec![0u8; 64 * 8];

        // Count instructions once, and check both VMs agree on the result.
        let ours = vm
            .run_checked(&exe, &mut mem, &mut helpers, &[], u64::MAX)
            .expect("runs in checked mode");
        let insns = vm.executed();
        let mut rbpf_vm = rbpf::EbpfVmRaw::new(Some(&bytes)).expect("rbpf loads");
        rbpf_vm.register_helper(1, rbpf_lookup).unwrap();
        rbpf_vm.register_helper(2, rbpf_add).unwrap();
        let arena = with_host_map(|m| {
            let start = m.values.as_ptr() as u64;
            start..start + (m.values.len() * 8) as u64
        });
        rbpf_vm.register_allowed_memory(arena);
        let mut rmem = vec![0u8; 64 * 8];
        let theirs = rbpf_vm.execute_program(&mut rmem).expect("rbpf runs");
        assert_eq!(ours, theirs, "{name}: results differ");
        rbpf_vm.jit_compile().expect("rbpf jit compiles");
        let image = compile(&exe, &JitOptions::default(), &jit_helpers).expect("our jit compiles");
        let code = jit_support::ExecCode::new(&image);
        let distance = code.addr().abs_diff(jit_add as *const () as usize);
        if distance >= 1 << 31 {
            println!(
                "warning: our JIT's code is {distance:#x} bytes from its helpers (not where it was asked for); helper calls may be slower for it"
            );
        }
        let mut jmem = vec![0u8; 64 * 8];
        let mut run = JitRun::new(std::ptr::null_mut(), u64::MAX);
        let mut run_jit = |jmem: &mut [u8]| {
            run.reset(u64::MAX);
            // SAFETY: the program was checked to run cleanly above and only
            // touches its stack, the 512 bytes of `jmem` and the values of
            // the map its lookup helper returns.
            unsafe { code.call(jmem, &mut run) }
        };
        assert_eq!(
            run_jit(&mut jmem).expect("our jit runs"),
            ours,
            "{name}: jit result differs"
        );

        // A load-robust summary first. Each VM runs in batches timed by this
        // thread's CPU time, which does not grow while
        // other jobs hold the cores; the VMs alternate batch by batch, and
        // each keeps its fastest batch. Wall time is the fallback.
        const BATCH: u32 = 10;
        let (mut best_ours, mut best_interp, mut best_jit) = (f64::MAX, f64::MAX, f64::MAX);
        let mut best_our_jit = f64::MAX;
        for _ in 0..25 {
            best_ours = best_ours.min(per_run(BATCH, || {
                // SAFETY: as in the "bpf-vm fast" benchmark below.
                black_box(unsafe {
                    vm.run_fast(&exe, mem.as_mut_ptr(), mem.len(), &mut helpers, u64::MAX)
                })
                .unwrap();
            }));
            best_interp = best_interp.min(per_run(BATCH, || {
                black_box(rbpf_vm.execute_program(&mut rmem)).unwrap();
            }));
            best_jit = best_jit.min(per_run(BATCH, || {
                // SAFETY: as in the "rbpf jit" benchmark below.
                black_box(unsafe { rbpf_vm.execute_program_jit(&mut rmem) }).unwrap();
            }));
            best_our_jit = best_our_jit.min(per_run(BATCH, || {
                black_box(run_jit(&mut jmem)).unwrap();
            }));
        }
        let helpers_alone = match helpers_alone(name) {
            Some(f) => {
                let t = (0..25).map(|_| per_run(BATCH, f)).fold(f64::MAX, f64::min);
                format!(
                    " | helper calls alone {:.0}% of rbpf jit",
                    t / best_jit * 100.0
                )
            }
            None => String::new(),
        };
        let mips = |t: f64| insns as f64 / t / 1e6;
        println!(
            "SUMMARY {name:9} {insns:7} insns | bpf-vm fast {:7.1} M insn/s | rbpf interp {:7.1} M insn/s | rbpf jit {:7.1} M insn/s | bpf-vm jit {:7.1} M insn/s | fast / rbpf interp {:.2}x | jit / rbpf jit {:.2}x | jit / fast {:.2}x{helpers_alone}",
            mips(best_ours),
            mips(best_interp),
            mips(best_jit),
            mips(best_our_jit),
            best_interp / best_ours,
            best_jit / best_our_jit,
            best_ours / best_our_jit,
        );

        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(insns));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_millis(1500));
        g.bench_function("bpf-vm fast", |b| {
            b.iter(|| {
                // SAFETY: the program's accesses are to its own stack, the
                // 512-byte histogram in `mem` and map values the helper
                // returns; it just ran cleanly in checked mode.
                unsafe {
                    vm.run_fast(
                        &exe,
                        mem.as_mut_ptr(),
                        mem.len(),
                        &mut helpers,
                        black_box(u64::MAX),
                    )
                }
                .unwrap()
            })
        });
        g.bench_function("bpf-vm checked", |b| {
            b.iter(|| {
                vm.run_checked(&exe, &mut mem, &mut helpers, &[], black_box(u64::MAX))
                    .unwrap()
            })
        });
        g.bench_function("rbpf interp", |b| {
            b.iter(|| rbpf_vm.execute_program(black_box(&mut rmem)).unwrap())
        });
        g.bench_function("rbpf jit", |b| {
            // SAFETY: the program was checked to run cleanly above and only
            // touches its stack, `rmem` and the registered map arena.
            b.iter(|| unsafe { rbpf_vm.execute_program_jit(black_box(&mut rmem)) }.unwrap())
        });
        g.bench_function("bpf-vm jit", |b| {
            b.iter(|| run_jit(black_box(&mut jmem)).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
