//! Debug requests: a deliberate panic and in-kernel self tests that the host
//! harness runs over the control channel.
//!
//! The self tests (these and `probe_tests`) are only in a kernel built
//! with the `self-tests` feature, which the end-to-end tests boot; others
//! list none and refuse to run one.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use ktrace_abi::vm::SelfTestResult;

/// Panic on purpose; the harness checks that the report names this function.
#[inline(never)]
pub fn forced_panic() -> ! {
    panic!("forced panic requested by the host (DebugRequest::Panic)")
}

type SelfTest = fn(&mut Vec<String>) -> bool;

/// Self tests by name.
#[cfg(feature = "self-tests")]
const SELF_TESTS: &[(&str, SelfTest)] = &[
    ("sleep_order", task_tests::sleep_order),
    ("waitqueue", task_tests::waitqueue),
    ("exec_mem_wx", exec_mem_tests::write_xor_execute),
    ("mem_copy", mem_copy_tests::every_length_and_alignment),
    ("tsc_to_ns", tsc_to_ns_matches_division),
];

/// Every self test of this kernel, by name.
#[cfg(feature = "self-tests")]
fn all_self_tests() -> impl Iterator<Item = &'static (&'static str, SelfTest)> {
    SELF_TESTS
        .iter()
        .chain(crate::probe_tests::SELF_TESTS)
        .chain(crate::smp_tests::SELF_TESTS)
}

/// A kernel built without the `self-tests` feature has none.
#[cfg(not(feature = "self-tests"))]
fn all_self_tests() -> impl Iterator<Item = &'static (&'static str, SelfTest)> {
    core::iter::empty()
}

#[cfg(feature = "self-tests")]
fn run_with_arg(test: &str, arg: &str, out: &mut Vec<String>) -> Option<bool> {
    crate::probe_tests::run_with_arg(test, arg, out)
}

#[cfg(not(feature = "self-tests"))]
fn run_with_arg(_test: &str, _arg: &str, _out: &mut Vec<String>) -> Option<bool> {
    None
}

/// Whether this kernel has the self tests (the `self-tests` feature).
pub const HAS_SELF_TESTS: bool = cfg!(feature = "self-tests");

/// Names of the self tests.
pub fn self_test_names() -> Vec<String> {
    all_self_tests().map(|(n, _)| n.to_string()).collect()
}

/// Run a self test by name.
///
/// `name:arg` runs a test that takes an argument (`smp_text:30`: seconds).
pub fn run_self_test(name: &str) -> Option<SelfTestResult> {
    let mut output = Vec::new();
    let passed = match name.split_once(':') {
        Some((test, arg)) => run_with_arg(test, arg, &mut output)?,
        None => {
            let (_, test) = all_self_tests().find(|(n, _)| *n == name)?;
            test(&mut output)
        }
    };
    Some(SelfTestResult {
        name: name.to_string(),
        passed,
        output,
    })
}

/// Self tests of tasks and wait queues.
#[cfg(feature = "self-tests")]
mod task_tests {
    use alloc::format;
    use alloc::string::String;
    use alloc::sync::Arc;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use crate::sync::SpinLock;
    use crate::task::{self, WaitQueue};

    /// Tasks sleeping 30, 10 and 20 ms wake in the order 10, 20, 30, each
    /// after at least its duration. The durations count from one instant
    /// taken before the tasks are spawned: with several CPUs they start
    /// at different times, and the order of deadlines is what is tested.
    pub fn sleep_order(out: &mut Vec<String>) -> bool {
        let order = Arc::new(SpinLock::new(Vec::new()));
        let done = Arc::new(AtomicU32::new(0));
        let wq = Arc::new(WaitQueue::new());
        let durations = [30u64, 10, 20];
        let mut ok = true;
        let t0 = crate::time::now_ns();
        for &ms in &durations {
            let (order, done, wq) = (order.clone(), done.clone(), wq.clone());
            let spawned = task::spawn(&format!("sleep{ms}"), move || {
                let deadline = t0 + ms * 1_000_000;
                task::sleep_ns(deadline.saturating_sub(crate::time::now_ns()));
                let slept = crate::time::now_ns() - t0;
                order.lock().push((ms, slept));
                done.fetch_add(1, Ordering::SeqCst);
                wq.wake_all();
            });
            if spawned.is_none() {
                out.push(format!("cannot spawn the task sleep{ms}"));
            }
        }
        let finished = wq.wait_until_timeout(|| done.load(Ordering::SeqCst) == 3, 5_000_000_000);
        if !finished {
            out.push(String::from("timed out waiting for the sleepers"));
            return false;
        }
        let got = order.lock().clone();
        for (ms, slept) in &got {
            out.push(format!("slept {ms} ms: woke after {} us", slept / 1000));
            if *slept < ms * 1_000_000 {
                out.push(format!("woke early: {slept} ns < {ms} ms"));
                ok = false;
            }
        }
        let woke: Vec<u64> = got.iter().map(|(ms, _)| *ms).collect();
        out.push(format!("wake order: {woke:?}"));
        ok && woke == vec![10, 20, 30]
    }

    /// Two tasks block on one wait queue; one `wake_all` releases both.
    pub fn waitqueue(out: &mut Vec<String>) -> bool {
        let wq = Arc::new(WaitQueue::new());
        let flag = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(AtomicU32::new(0));
        let done = Arc::new(WaitQueue::new());
        for i in 0..2 {
            let (wq, flag, woken, done) = (wq.clone(), flag.clone(), woken.clone(), done.clone());
            let spawned = task::spawn(&format!("waiter{i}"), move || {
                wq.wait_until(|| flag.load(Ordering::SeqCst));
                woken.fetch_add(1, Ordering::SeqCst);
                done.wake_all();
            });
            if spawned.is_none() {
                out.push(format!("cannot spawn the task waiter{i}"));
            }
        }
        // Let both block.
        let start = crate::time::now_ns();
        while wq.len() < 2 && crate::time::now_ns() - start < 2_000_000_000 {
            task::sleep_ms(1);
        }
        let blocked = wq.len();
        out.push(format!("blocked on the queue before wake: {blocked}"));
        let early = woken.load(Ordering::SeqCst);
        flag.store(true, Ordering::SeqCst);
        wq.wake_all();
        let all = done.wait_until_timeout(|| woken.load(Ordering::SeqCst) == 2, 2_000_000_000);
        out.push(format!(
            "woken before the flag: {early}; after wake_all: {}",
            woken.load(Ordering::SeqCst)
        ));
        blocked == 2 && early == 0 && all
    }
}

/// `time::tsc_to_ns` (a multiplication) against the division it replaces,
/// with this boot's calibration: the same nanoseconds or 1 ns less, for
/// deltas from 0 to centuries of TSC ticks.
#[cfg(feature = "self-tests")]
fn tsc_to_ns_matches_division(out: &mut Vec<String>) -> bool {
    let khz = crate::time::tsc_khz().max(1);
    let mut wrong = 0;
    let mut checked = 0;
    let mut d: u64 = 0;
    while d < khz.saturating_mul(3_600_000 * 24 * 365 * 100) {
        for delta in [d, d + 1, d.wrapping_mul(3) / 2 + 7] {
            let exact = (u128::from(delta) * 1_000_000 / u128::from(khz)) as u64;
            let got = crate::time::tsc_to_ns(delta);
            checked += 1;
            if got != exact && got + 1 != exact {
                wrong += 1;
                if wrong <= 5 {
                    out.push(alloc::format!(
                        "{delta} ticks: {got} ns, exactly {exact} ns"
                    ));
                }
            }
        }
        d = d * 2 + 1;
    }
    out.push(alloc::format!(
        "{checked} deltas at {khz} kHz, {wrong} wrong"
    ));
    wrong == 0
}

/// Self test of the kernel's `memcpy` and `memmove`.
#[cfg(feature = "self-tests")]
mod mem_copy_tests {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// The pattern byte at `i`: no two neighbours alike, period 251.
    fn pattern(i: usize) -> u8 {
        (i % 251) as u8 ^ 0x5a
    }

    /// `memcpy` (whole words and a byte tail, see `arch::rt`) and both
    /// directions of `memmove`, for every length 0..=200 at every source
    /// and destination alignment 0..8: the bytes copied are the source's,
    /// and the bytes around them are untouched.
    pub fn every_length_and_alignment(out: &mut Vec<String>) -> bool {
        let mut failures = 0;
        let mut src = [0u8; 256];
        for (i, b) in src.iter_mut().enumerate() {
            *b = pattern(i);
        }
        for len in 0..=200usize {
            for s in 0..8 {
                for d in 0..8 {
                    // Through `memcpy`: a copy between two arrays.
                    let mut dst = [0xeeu8; 256];
                    let n = core::hint::black_box(len);
                    dst[d..d + n].copy_from_slice(&src[s..s + n]);
                    let copied = (0..256).all(|j| {
                        let want = if j >= d && j < d + len {
                            pattern(s + j - d)
                        } else {
                            0xee
                        };
                        dst[j] == want
                    });
                    // Through `memmove`, forwards (`d < s`, on `memcpy`)
                    // and backwards (`d > s`), within one buffer.
                    let mut buf = src;
                    buf.copy_within(s..s + n, d);
                    let moved = (0..256).all(|j| {
                        let want = if j >= d && j < d + len {
                            pattern(s + j - d)
                        } else {
                            pattern(j)
                        };
                        buf[j] == want
                    });
                    if !(copied && moved) {
                        failures += 1;
                        if failures <= 5 {
                            out.push(format!(
                                "length {len}, source offset {s}, destination offset {d}: memcpy {}, memmove {}",
                                if copied { "right" } else { "WRONG" },
                                if moved { "right" } else { "WRONG" }
                            ));
                        }
                    }
                }
            }
        }
        out.push(format!(
            "{} copies of each kind, {failures} wrong",
            201 * 64
        ));
        failures == 0
    }
}

/// Self test of the JIT's executable memory.
#[cfg(feature = "self-tests")]
mod exec_mem_tests {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    use crate::arch::exec_mem::ExecMem;
    use crate::arch::paging::{self, flags};
    use crate::arch::trap::copy_from_kernel_nofault;

    /// Rights of the page at `addr`: (writable, executable).
    fn rights(addr: u64) -> Option<(bool, bool)> {
        let (_, f) = paging::translate(addr)?;
        Some((f & flags::WRITABLE != 0, f & flags::NO_EXECUTE == 0))
    }

    /// Code of two pages and a bit is mapped executable and not writable,
    /// page by page, holds the bytes given and `int3` after them; once
    /// freed, the pages are writable data again, never executable.
    pub fn write_xor_execute(out: &mut Vec<String>) -> bool {
        let code: Vec<u8> = (0..2 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        let mem = match ExecMem::new(&code, 7) {
            Ok(m) => m,
            Err(e) => {
                out.push(format!("ExecMem::new: {e}"));
                return false;
            }
        };
        let base = mem.addr();
        let mut ok = base % 4096 == 0 && mem.code_len() == code.len();
        for page in 0..3u64 {
            let r = rights(base + page * 4096);
            out.push(format!("page {page}: (writable, executable) = {r:?}"));
            ok &= r == Some((false, true));
        }
        let mut back = vec![0u8; code.len() + 1];
        ok &= copy_from_kernel_nofault(&mut back, base).is_ok();
        ok &= back[..code.len()] == code[..] && back[code.len()] == 0xcc;
        out.push(format!(
            "bytes read back equal: {}",
            back[..code.len()] == code[..]
        ));
        // Entering without the right bytes is unsafe; getting the pointer is not.
        ok &= mem.entry() as usize as u64 == base + 7;
        drop(mem);
        for page in 0..3u64 {
            let r = rights(base + page * 4096);
            out.push(format!("freed page {page}: (writable, executable) = {r:?}"));
            ok &= r == Some((true, false));
        }
        ok &= ExecMem::new(&[], 0).is_err() && ExecMem::new(&[0xc3], 1).is_err();
        ok
    }
}
