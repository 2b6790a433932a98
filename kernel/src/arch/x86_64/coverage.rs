//! Edge coverage for the fuzzing build (cargo feature `coverage`, compiled
//! with LLVM's `sancov-module` pass in trace-pc-guard mode; see
//! `probe_sdk::kernel_image`). Every instrumented edge calls
//! [`__sanitizer_cov_trace_pc_guard`] with the address of its own `u32`
//! guard in section `__sancov_guards`; the guard's index in that section
//! names the edge.
//!
//! Coverage is recorded per control session, as Linux's kcov records it per
//! task: a session that enabled it gets the edges its control task runs
//! (interrupts taken while that task is current included, as nothing tells
//! them apart), nothing another task runs. The callback is assembly, so the
//! sancov pass never sees it (a Rust callback would be instrumented and call
//! itself), and it lives in `.text.entry`, which the kprobe blacklist
//! covers. It takes no lock and touches only static memory with single
//! instructions, so it is safe in any context: early boot (no session is
//! enabled before the control tasks exist, so nothing is recorded), NMIs,
//! the text patcher and probe handlers.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Edges the bitmaps can name; guards past it are not recorded.
pub const MAX_EDGES: usize = 1 << 18;
/// Sessions that can record at once (the control channel's sessions).
pub const SESSIONS: usize = 4;
const WORDS: usize = MAX_EDGES / 64;
/// Pid no task has: a session slot that records nothing.
const NOBODY: u32 = u32::MAX;

/// Pid of the control task recording into each session's bitmap, or
/// [`NOBODY`].
static COV_PIDS: [AtomicU32; SESSIONS] = [const { AtomicU32::new(NOBODY) }; SESSIONS];
/// One bit per edge, per session.
static COV_BITMAPS: [[AtomicU64; WORDS]; SESSIONS] =
    [const { [const { AtomicU64::new(0) }; WORDS] }; SESSIONS];
/// The return address of the last call from each edge (the kernel is
/// identity mapped below 4 GiB, so 32 bits hold it).
static COV_PCS: [AtomicU32; MAX_EDGES] = [const { AtomicU32::new(0) }; MAX_EDGES];

// The callback: find the session whose task is running (four compares),
// then set the edge's bit and remember its call site. Caller-saved
// registers only (rax, rcx, rdx, rdi), as the C ABI allows a callee.
core::arch::global_asm!(
    ".pushsection .text.entry, \"ax\"",
    ".global __sanitizer_cov_trace_pc_guard",
    "__sanitizer_cov_trace_pc_guard:",
    "    mov eax, dword ptr gs:[{pid_offset}]",
    "    lea rdx, [rip + {pids}]",
    "    xor ecx, ecx",
    "2:  cmp eax, dword ptr [rdx + rcx * 4]",
    "    je 3f",
    "    inc ecx",
    "    cmp ecx, {sessions}",
    "    jb 2b",
    "    ret",
    "3:  lea rax, [rip + __start___sancov_guards]",
    "    sub rdi, rax",
    "    shr rdi, 2",
    "    cmp rdi, {max_edges}",
    "    jae 4f",
    "    mov rax, qword ptr [rsp]",
    "    lea rdx, [rip + {pcs}]",
    "    mov dword ptr [rdx + rdi * 4], eax",
    "    imul rcx, rcx, {bitmap_bytes}",
    "    lea rdx, [rip + {bitmaps}]",
    "    lock bts qword ptr [rdx + rcx], rdi",
    "4:  ret",
    // Called by the module constructors the pass adds; nothing runs those,
    // and the guard's index needs no initialisation.
    ".global __sanitizer_cov_trace_pc_guard_init",
    "__sanitizer_cov_trace_pc_guard_init:",
    "    ret",
    ".popsection",
    pid_offset = const core::mem::offset_of!(crate::percpu::PerCpu, current_pid),
    pids = sym COV_PIDS,
    sessions = const SESSIONS,
    max_edges = const MAX_EDGES,
    pcs = sym COV_PCS,
    bitmap_bytes = const WORDS * 8,
    bitmaps = sym COV_BITMAPS,
);

unsafe extern "C" {
    static __start___sancov_guards: u32;
    static __stop___sancov_guards: u32;
}

/// Instrumented edges in this kernel.
pub fn edges_total() -> u32 {
    // Only the addresses of the linker-defined section bounds are taken,
    // never their contents.
    let (start, stop) = (
        core::ptr::addr_of!(__start___sancov_guards) as usize,
        core::ptr::addr_of!(__stop___sancov_guards) as usize,
    );
    ((stop - start) / 4) as u32
}

fn clear(session: usize) {
    for w in &COV_BITMAPS[session] {
        w.store(0, Ordering::Relaxed);
    }
}

/// Record what the task `pid` runs into `session`'s set, emptied first.
pub fn enable(session: usize, pid: u32) {
    if session < SESSIONS {
        COV_PIDS[session].store(NOBODY, Ordering::Relaxed);
        clear(session);
        COV_PIDS[session].store(pid, Ordering::Release);
    }
}

/// Stop recording for `session` and empty its set.
pub fn disable(session: usize) {
    if session < SESSIONS {
        COV_PIDS[session].store(NOBODY, Ordering::Release);
        clear(session);
    }
}

/// Whether `session` records now.
pub fn enabled(session: usize) -> bool {
    session < SESSIONS && COV_PIDS[session].load(Ordering::Acquire) != NOBODY
}

/// The edges `session` reached, as (guard index, call site) pairs, and
/// the set emptied if `reset`. Edges reached while this runs may or may not
/// be in the answer (and stay in the set unless `reset`).
pub fn collect(session: usize, reset: bool, mut out: impl FnMut(u32, u64)) {
    let Some(words) = COV_BITMAPS.get(session) else {
        return;
    };
    for (i, w) in words.iter().enumerate() {
        let mut bits = if reset {
            w.swap(0, Ordering::AcqRel)
        } else {
            w.load(Ordering::Acquire)
        };
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let guard = i * 64 + b;
            out(
                guard as u32,
                u64::from(COV_PCS[guard].load(Ordering::Relaxed)),
            );
        }
    }
}
