//! The verifier's memory stays within what it promises: states within
//! `Config::max_state_bytes`, everything else within `fixed_memory_bytes`.
//! A kernel relies on these two numbers to verify without ever failing an
//! allocation, so they are measured here with a counting allocator.

use bpf_vm::asm::assemble;
use bpf_vm::verifier::linux::{self, map_type};
use bpf_vm::verifier::{fixed_memory_bytes, verify, Config, Env, MapDef, Rejection, Report, Rule};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts this thread's live heap bytes and their peak (tests run on
/// several threads; each measures only itself).
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the
// counters are thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The old and the new block both exist for a moment.
        grow(new_size);
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            shrink(new_size);
        } else {
            shrink(layout.size());
        }
        p
    }
}

fn grow(n: usize) {
    let _ = LIVE.try_with(|l| {
        l.set(l.get() + n);
        let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
    });
}

fn shrink(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Verifies `src` and returns the result with the heap bytes the call
/// took at its peak, above what was live before it.
fn measure(src: &str, config: &Config) -> (Result<Report, Box<Rejection>>, usize, usize) {
    let prog = assemble(src).unwrap_or_else(|e| panic!("assembly failed: {e}"));
    let helpers = linux::helpers();
    let kprobe = linux::kprobe();
    let maps = [MapDef {
        fd: 0,
        map_type: map_type::HASH,
        key_size: 4,
        value_size: 8,
        max_entries: 64,
    }];
    let env = Env {
        prog_type: &kprobe,
        helpers: &helpers,
        maps: &maps,
    };
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let result = verify(prog.insns(), &env, config);
    let peak = PEAK.with(Cell::get) - before;
    (result, peak, prog.insns().len())
}

/// 9000 independent branches whose targets all lie at the end: every fork
/// waits until the fall-through path finishes.
fn many_pending_branches() -> String {
    let mut src = String::new();
    for _ in 0..9000 {
        src.push_str("call 5\njgt %r0, 100, end\n");
    }
    src.push_str("end:\nexit\n");
    src
}

#[test]
fn pending_branches_stop_at_the_state_memory_budget() {
    let config = Config {
        max_state_bytes: 256 << 10,
        ..Config::default()
    };
    let (result, peak, n) = measure(&many_pending_branches(), &config);
    let e = result.unwrap_err();
    assert_eq!(e.error.rule, Rule::Complexity);
    assert!(
        e.error.message.starts_with(
            "program too complex: its stored states and pending branches need more than the verifier's 256 KiB of state memory"
        ),
        "{}",
        e.error
    );
    assert!(e.stats.peak_state_bytes <= 256 << 10);
    assert!(e.stats.peak_state_bytes > 200 << 10, "{:?}", e.stats);
    let bound = fixed_memory_bytes(n, &config) + config.max_state_bytes;
    assert!(peak <= bound, "peak {peak} bytes, bound {bound}");
}

#[test]
fn the_default_budget_lets_the_pending_limit_speak_first() {
    let config = Config::default();
    let (result, peak, n) = measure(&many_pending_branches(), &config);
    let e = result.unwrap_err();
    assert_eq!(
        e.error.message,
        "program too complex: the sequence of 8193 jumps is too complex"
    );
    let bound = fixed_memory_bytes(n, &config) + e.stats.peak_state_bytes as usize;
    assert!(peak <= bound, "peak {peak} bytes, bound {bound}");
}

#[test]
fn fixed_memory_bounds_large_programs() {
    // Straight-line code at the kernel's default size limit.
    let mut straight = String::new();
    for i in 0..65_534 {
        straight.push_str(&format!("mov %r0, {i}\n"));
    }
    straight.push_str("exit\n");
    // Forward branches, each arm a prune point with stored states.
    let mut branchy = String::from("ldxdw %r2, [%r1+112]\nmov %r0, 0\n");
    for i in 0..20_000 {
        branchy.push_str(&format!("jgt %r2, {i}, l{i}\nadd %r0, 1\nl{i}:\n"));
    }
    branchy.push_str("exit\n");
    // Many subprograms, each called once: the call graph tables.
    let mut calls = String::new();
    for i in 0..4_000 {
        calls.push_str(&format!("call local f{i}\n"));
    }
    calls.push_str("mov %r0, 0\nexit\n");
    for i in 0..4_000 {
        calls.push_str(&format!("f{i}:\nmov %r0, {i}\nexit\n"));
    }
    for (name, src) in [
        ("straight", &straight),
        ("branchy", &branchy),
        ("calls", &calls),
    ] {
        for log_level in [0, 2] {
            let config = Config {
                log_level,
                log_limit: 256 << 10,
                ..Config::default()
            };
            let (result, peak, n) = measure(src, &config);
            // `branchy` stores states until the state-count limit stops it:
            // a refusal must stay inside the bound as well.
            let stats = match &result {
                Ok(r) => r.stats.clone(),
                Err(e) if name == "branchy" && e.error.rule == Rule::Complexity => e.stats.clone(),
                Err(e) => panic!("{name}: {}", e.error),
            };
            eprintln!(
                "{name} (log level {log_level}, {n} insns): peak {peak} bytes, states {} bytes, fixed bound {}",
                stats.peak_state_bytes,
                fixed_memory_bytes(n, &config)
            );
            let bound = fixed_memory_bytes(n, &config) + stats.peak_state_bytes as usize;
            assert!(
                peak <= bound,
                "{name} (log level {log_level}, {n} insns): peak {peak} bytes, bound {bound}"
            );
        }
    }
}
