//! In-kernel self tests of several CPUs: IPIs, TLB shootdown, where tasks
//! run, and wake-ups between CPUs. Each also passes on one CPU (there is
//! nothing to spread or shoot down then), and says what it saw.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::{paging, smp};
use crate::percpu::{self, MAX_CPUS};
use crate::task::{self, WaitQueue};

type SelfTest = fn(&mut Vec<String>) -> bool;

/// The SMP self tests.
pub const SELF_TESTS: &[(&str, SelfTest)] = &[
    ("smp_call_function", call_function),
    ("smp_tlb_shootdown", tlb_shootdown),
    ("smp_spread", spread),
    ("smp_wake_pingpong", wake_pingpong),
];

/// Which CPU ran the call, by the CPU's own account (`u32::MAX`: none).
static RAN_ON: [AtomicU32; MAX_CPUS as usize] =
    [const { AtomicU32::new(u32::MAX) }; MAX_CPUS as usize];

fn record_cpu(tag: usize) {
    let me = percpu::cpu_id();
    RAN_ON[me as usize].store(me ^ tag as u32, Ordering::Relaxed);
}

/// A call on every online CPU runs once on each, and each reports its
/// own CPU number; `sync_all_cpus` returns.
fn call_function(out: &mut Vec<String>) -> bool {
    let n = percpu::cpu_count();
    for slot in &RAN_ON {
        slot.store(u32::MAX, Ordering::Relaxed);
    }
    // The tag tells this run's answers from stale ones.
    let tag = 0x5a00;
    smp::call_on(u32::MAX, record_cpu, tag);
    let mut ok = true;
    for cpu in 0..MAX_CPUS {
        let got = RAN_ON[cpu as usize].load(Ordering::Relaxed);
        if cpu < n {
            let id = got ^ tag as u32;
            out.push(format!("cpu {cpu}: ran the call, reported cpu {id}"));
            ok &= id == cpu;
        } else if got != u32::MAX {
            out.push(format!("cpu {cpu} is offline but ran the call"));
            ok = false;
        }
    }
    smp::sync_all_cpus();
    out.push(format!("sync_all_cpus returned on {n} CPUs"));
    ok
}

/// A task on another CPU reads a heap page (its TLB now caches the
/// mapping), this CPU unmaps the page while that task spins, and then the
/// task's second read faults: the unmap reached its TLB. Under QEMU a
/// CPU's TLB keeps a mapping until it is told to drop it, so without the
/// shootdown the second read works (checked by taking it out).
fn tlb_shootdown(out: &mut Vec<String>) -> bool {
    let n = percpu::cpu_count();
    if n == 1 {
        out.push(String::from("one CPU: nothing to shoot down"));
        return true;
    }
    let page = alloc::vec![0x77u8; 3 * 4096];
    let addr = (page.as_ptr() as u64 + 4095) & !4095;
    // 0: start, 1: first read done, 2: unmapped, 3: second read done.
    let step = Arc::new(AtomicU32::new(0));
    let reads = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let reader_cpus = Arc::new([AtomicU32::new(u32::MAX), AtomicU32::new(u32::MAX)]);
    let before = smp::shootdowns();
    let spawned = {
        let (step, reads, reader_cpus) = (step.clone(), reads.clone(), reader_cpus.clone());
        task::spawn("tlb-reader", move || {
            for round in 0..2 {
                let mut b = [0u8; 8];
                let r = crate::arch::trap::copy_from_kernel_nofault(&mut b, addr);
                reads[round].store(if r.is_ok() { 1 } else { 2 }, Ordering::SeqCst);
                reader_cpus[round].store(percpu::cpu_id(), Ordering::SeqCst);
                step.store(2 * round as u32 + 1, Ordering::SeqCst);
                let end = crate::time::now_ns() + 5_000_000_000;
                while round == 0 && step.load(Ordering::SeqCst) != 2 && crate::time::now_ns() < end
                {
                    core::hint::spin_loop();
                }
            }
        })
    };
    if spawned.is_none() {
        out.push(String::from("cannot spawn the reader"));
        return false;
    }
    let wait_for = |want: u32| {
        let end = crate::time::now_ns() + 5_000_000_000;
        while step.load(Ordering::SeqCst) < want && crate::time::now_ns() < end {
            core::hint::spin_loop();
        }
        step.load(Ordering::SeqCst) >= want
    };
    let mut ok = wait_for(1);
    let unmapper = percpu::cpu_id();
    let alloc = crate::mm::frame::alloc_zeroed;
    ok &= paging::unmap_page(addr, alloc).is_ok();
    step.store(2, Ordering::SeqCst);
    ok &= wait_for(3);
    let map_back = paging::map_page(addr, addr, paging::flags::DATA, alloc);
    ok &= map_back.is_ok();
    let (r0, r1) = (
        reads[0].load(Ordering::SeqCst),
        reads[1].load(Ordering::SeqCst),
    );
    let (c0, c1) = (
        reader_cpus[0].load(Ordering::SeqCst),
        reader_cpus[1].load(Ordering::SeqCst),
    );
    out.push(format!("read while mapped: {}", outcome(r0)));
    out.push(format!("read after unmap: {}", outcome(r1)));
    out.push(format!(
        "reader on cpu {c0} then {c1}, unmapped on cpu {unmapper}"
    ));
    let shot = smp::shootdowns() - before;
    out.push(format!("shootdowns: {shot}"));
    drop(page);
    ok && r0 == 1 && r1 == 2 && c0 == c1 && c0 != unmapper && shot >= 1
}

fn outcome(code: u32) -> &'static str {
    match code {
        1 => "ok",
        2 => "faulted",
        _ => "did not run",
    }
}

/// 2 busy tasks per CPU for 300 ms each: every CPU runs some of them. The
/// tasks record the CPUs they saw themselves on; the scheduler's own
/// account (the CPU and migrations of each task) is printed too.
fn spread(out: &mut Vec<String>) -> bool {
    let n = percpu::cpu_count();
    let tasks = 2 * n;
    let seen = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let wq = Arc::new(WaitQueue::new());
    let mut pids = Vec::new();
    for i in 0..tasks {
        let (seen, done, wq) = (seen.clone(), done.clone(), wq.clone());
        let pid = task::spawn(&format!("spread{i}"), move || {
            let end = crate::time::now_ns() + 300_000_000;
            let mut mine = 0u32;
            while crate::time::now_ns() < end {
                mine |= 1 << percpu::cpu_id();
                core::hint::spin_loop();
            }
            seen.fetch_or(mine, Ordering::SeqCst);
            done.fetch_add(1, Ordering::SeqCst);
            wq.wake_all();
        });
        match pid {
            Some(p) => pids.push(p),
            None => out.push(format!("cannot spawn spread{i}")),
        }
    }
    // Snapshot the tasks while they still run.
    task::sleep_ms(200);
    for t in task::snapshot().iter().filter(|t| pids.contains(&t.pid)) {
        out.push(format!(
            "{} (pid {}): cpu {}, {} switches, {} migrations",
            t.name, t.pid, t.cpu, t.switches, t.migrations
        ));
    }
    let finished = wq.wait_until_timeout(|| done.load(Ordering::SeqCst) == tasks, 20_000_000_000);
    let seen = seen.load(Ordering::SeqCst);
    let all = if n >= 32 { u32::MAX } else { (1 << n) - 1 };
    out.push(format!("CPUs the tasks ran on: {seen:#b} of {all:#b}"));
    finished && seen == all
}

/// Two tasks on (likely) different CPUs hand a token back and forth
/// through two wait queues 2000 times: a lost wake-up hangs them, which
/// the time limit catches.
fn wake_pingpong(out: &mut Vec<String>) -> bool {
    const ROUNDS: u32 = 2000;
    let token = Arc::new(AtomicU32::new(0));
    let queues = Arc::new([WaitQueue::new(), WaitQueue::new()]);
    let done = Arc::new(WaitQueue::new());
    let finished = Arc::new(AtomicU32::new(0));
    let cpus = Arc::new(AtomicU32::new(0));
    for side in 0..2u32 {
        let (token, queues, done, finished, cpus) = (
            token.clone(),
            queues.clone(),
            done.clone(),
            finished.clone(),
            cpus.clone(),
        );
        let spawned = task::spawn(&format!("pingpong{side}"), move || {
            for round in 0..ROUNDS {
                let mine = 2 * round + side;
                queues[side as usize].wait_until(|| token.load(Ordering::SeqCst) == mine);
                cpus.fetch_or(1 << percpu::cpu_id(), Ordering::SeqCst);
                token.store(mine + 1, Ordering::SeqCst);
                queues[1 - side as usize].wake_all();
            }
            finished.fetch_add(1, Ordering::SeqCst);
            done.wake_all();
        });
        if spawned.is_none() {
            out.push(format!("cannot spawn pingpong{side}"));
            return false;
        }
    }
    let ok = done.wait_until_timeout(|| finished.load(Ordering::SeqCst) == 2, 60_000_000_000);
    out.push(format!(
        "token at {} of {} after the exchange; CPUs used {:#b}",
        token.load(Ordering::SeqCst),
        2 * ROUNDS,
        cpus.load(Ordering::SeqCst)
    ));
    ok && token.load(Ordering::SeqCst) == 2 * ROUNDS
}
