//! The scheduler.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::arch;
use crate::percpu::this_cpu;
use crate::sync::SpinLock;
use ktrace_abi::vm::{TaskInfo, TaskState};

/// Task id.
pub type Pid = u32;

/// Kernel stack size per task.
const STACK_SIZE: usize = 64 * 1024;
const GUARD: usize = 4096;
/// Heap a task's stack takes, guard page included.
pub const STACK_BYTES: usize = STACK_SIZE + GUARD;
/// Time slice before a runnable task is preempted.
const SLICE_NS: u64 = 10_000_000;

unsafe extern "C" {
    fn context_switch(prev_rsp: *mut u64, next_rsp: u64);
    fn task_entry_trampoline();
}

/// A kernel stack with an unmapped guard page at its bottom.
struct KernelStack {
    base: *mut u8,
}

impl KernelStack {
    fn layout() -> core::alloc::Layout {
        core::alloc::Layout::from_size_align(STACK_SIZE + GUARD, 4096).expect("valid stack layout")
    }

    fn new() -> Option<Self> {
        // SAFETY: the layout has non-zero size.
        let base = unsafe { alloc::alloc::alloc(Self::layout()) };
        if base.is_null() {
            return None;
        }
        // A stack overflow now faults on the guard page instead of silently
        // corrupting the heap.
        let _ = arch::paging::unmap_page(base as u64, crate::mm::frame::alloc_zeroed);
        Some(Self { base })
    }

    fn top(&self) -> u64 {
        self.base as u64 + (STACK_SIZE + GUARD) as u64
    }
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        // Return-probe instances are keyed by their return slot's address:
        // those of a task that exited inside a probed function must go
        // before this memory can become another task's stack, or that task
        // would find them first and return to the dead task's caller.
        crate::trace::kretprobe::release_stack(self.base as u64..self.top());
        let _ = arch::paging::map_page(
            self.base as u64,
            self.base as u64,
            arch::paging::flags::DATA,
            crate::mm::frame::alloc_zeroed,
        );
        // SAFETY: allocated in `new` with the same layout; the guard page is
        // mapped again so the allocator may touch it.
        unsafe { alloc::alloc::dealloc(self.base, Self::layout()) };
    }
}

// SAFETY: a stack is plain memory owned by one task.
unsafe impl Send for KernelStack {}

struct Task {
    pid: Pid,
    name: String,
    state: TaskState,
    /// Saved stack pointer while not running.
    rsp: u64,
    /// Owned for its lifetime: dropped (unmapped guard restored, memory
    /// freed) when the task is reaped.
    _stack: Option<KernelStack>,
    runtime_tsc: u64,
    switches: u64,
    slice_start_tsc: u64,
    /// Incremented at each sleep, so a stale timer entry from an earlier
    /// sleep that was ended early by `wake` cannot end a later one.
    sleep_seq: u64,
}

struct Scheduler {
    tasks: BTreeMap<Pid, Box<Task>>,
    run_queue: VecDeque<Pid>,
    /// (wake time, pid, sleep sequence number of that task).
    sleepers: BinaryHeap<Reverse<(u64, Pid, u64)>>,
    current: Pid,
    next_pid: Pid,
    /// Tasks that exited; their stacks are freed once we are off them. Boxed
    /// because the switch away from an exiting task stores its stack pointer
    /// through a pointer into the zombie.
    #[allow(clippy::vec_box)]
    zombies: Vec<Box<Task>>,
}

static SCHED: SpinLock<Option<Scheduler>> = SpinLock::new(None);
static NEED_RESCHED: AtomicBool = AtomicBool::new(false);
static CONTEXT_SWITCHES: AtomicU64 = AtomicU64::new(0);

/// Turn the boot context into task 0 (`idle`).
pub fn init() {
    let idle = Box::new(Task {
        pid: 0,
        name: String::from("idle"),
        state: TaskState::Running,
        rsp: 0,
        _stack: None,
        runtime_tsc: 0,
        switches: 1,
        slice_start_tsc: arch::rdtsc(),
        sleep_seq: 0,
    });
    let mut tasks = BTreeMap::new();
    tasks.insert(0, idle);
    *SCHED.lock() = Some(Scheduler {
        tasks,
        run_queue: VecDeque::new(),
        sleepers: BinaryHeap::new(),
        current: 0,
        next_pid: 1,
        zombies: Vec::new(),
    });
    this_cpu().set_current(0, "idle");
}

/// Start a kernel task running `f`. Returns its pid, or `None` when out of
/// memory.
#[must_use = "a task that could not be spawned never runs"]
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<Pid> {
    let stack = KernelStack::new()?;
    let start: Box<Box<dyn FnOnce() + Send>> = Box::new(Box::new(f));
    let arg = Box::into_raw(start) as u64;
    // Initial frame popped by context_switch: r15 r14 r13 r12 rbx rbp, ret.
    let top = stack.top() & !0xf;
    let frame = [
        0u64,
        0,
        0,
        arg,
        0,
        0,
        task_entry_trampoline as *const () as usize as u64,
    ];
    let rsp = top - 8 * frame.len() as u64;
    // SAFETY: the frame lies inside the freshly allocated stack, below its
    // top and far above the guard page.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), rsp as *mut u64, frame.len()) };
    let mut guard = SCHED.lock();
    let s = guard.as_mut()?;
    let pid = s.next_pid;
    s.next_pid += 1;
    s.tasks.insert(
        pid,
        Box::new(Task {
            pid,
            name: String::from(name),
            state: TaskState::Ready,
            rsp,
            _stack: Some(stack),
            runtime_tsc: 0,
            switches: 0,
            slice_start_tsc: 0,
            sleep_seq: 0,
        }),
    );
    s.run_queue.push_back(pid);
    Some(pid)
}

#[unsafe(no_mangle)]
extern "C" fn task_start(arg: u64) -> ! {
    // SAFETY: `arg` is the pointer `spawn` leaked from this very box type,
    // and each task starts exactly once.
    let f = unsafe { Box::from_raw(arg as *mut Box<dyn FnOnce() + Send>) };
    reap_zombies();
    arch::irq_enable();
    f();
    exit_current()
}

/// Free the stacks of tasks that exited. Safe from any task: a zombie
/// switched away for good (with interrupts off, so the switch completed
/// before any other task ran), and the running task is never a zombie.
/// Never inlined: a place to probe task teardown.
#[inline(never)]
pub fn reap_zombies() {
    let zombies = {
        let mut g = SCHED.lock();
        match g.as_mut() {
            Some(s) => core::mem::take(&mut s.zombies),
            None => Vec::new(),
        }
    };
    drop(zombies);
}

/// End the current task.
pub fn exit_current() -> ! {
    arch::irq_disable();
    schedule_with(TaskState::Exited);
    unreachable!("an exited task was scheduled again");
}

/// Pid of the running task.
pub fn current_pid() -> Pid {
    this_cpu().current_pid.load(Ordering::Relaxed)
}

/// Context switches since boot.
pub fn context_switches() -> u64 {
    CONTEXT_SWITCHES.load(Ordering::Relaxed)
}

/// Give the CPU to the next runnable task.
pub fn yield_now() {
    let was = arch::irq_save();
    schedule_with(TaskState::Ready);
    arch::irq_restore(was);
}

/// Sleep for at least `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    let wake = crate::time::now_ns().saturating_add(ns);
    let was = arch::irq_save();
    {
        let mut g = SCHED.lock();
        if let Some(s) = g.as_mut() {
            let me = s.current;
            if let Some(t) = s.tasks.get_mut(&me) {
                t.sleep_seq += 1;
                let seq = t.sleep_seq;
                s.sleepers.push(Reverse((wake, me, seq)));
            }
        }
    }
    schedule_with(TaskState::Sleeping);
    arch::irq_restore(was);
}

/// Sleep for at least `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    sleep_ns(ms.saturating_mul(1_000_000));
}

/// Block the current task until [`wake`] (interrupts must be disabled by
/// the caller, which registered itself somewhere a waker will find it).
pub(super) fn block_current() {
    schedule_with(TaskState::Blocked);
}

/// Emit `sched:sched_wakeup`.
fn trace_wakeup(pid: Pid, name: &str) {
    crate::trace_event!(crate::trace::points::SCHED_WAKEUP, {
        let mut comm = [0u8; 16];
        let n = name.len().min(15);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        ktrace_tracepoints::sched::SchedWakeup {
            pid,
            target_cpu: 0,
            comm,
        }
    });
}

/// Make a blocked or sleeping task runnable.
///
/// Never inlined: like Linux's `try_to_wake_up`, it is the place to probe
/// wakeups (`ktrace probe add kernel::task::sched::wake`), and with few
/// callers the optimiser would otherwise fold it away.
#[inline(never)]
pub fn wake(pid: Pid) {
    let mut g = SCHED.lock();
    if let Some(s) = g.as_mut() {
        if let Some(t) = s.tasks.get_mut(&pid) {
            if matches!(t.state, TaskState::Blocked | TaskState::Sleeping) {
                t.state = TaskState::Ready;
                s.run_queue.push_back(pid);
                trace_wakeup(pid, &t.name);
            }
        }
    }
}

/// Timer interrupt: wake due sleepers, account the running slice.
pub fn timer_tick() {
    let now = crate::time::now_ns();
    let mut g = SCHED.lock();
    let Some(s) = g.as_mut() else { return };
    while let Some(Reverse((when, pid, seq))) = s.sleepers.peek().copied() {
        if when > now {
            break;
        }
        s.sleepers.pop();
        if let Some(t) = s.tasks.get_mut(&pid) {
            if t.state == TaskState::Sleeping && t.sleep_seq == seq {
                t.state = TaskState::Ready;
                s.run_queue.push_back(pid);
                trace_wakeup(pid, &t.name);
            }
        }
    }
    let cur = s.current;
    let slice_start = s.tasks.get(&cur).map(|t| t.slice_start_tsc).unwrap_or(0);
    let used = crate::time::tsc_to_ns(arch::rdtsc().wrapping_sub(slice_start));
    if !s.run_queue.is_empty() && (cur == 0 || used >= SLICE_NS) {
        NEED_RESCHED.store(true, Ordering::Relaxed);
    }
}

/// Called on the way out of every interrupt: switch if a reschedule is due.
pub fn preempt_point_from_irq() {
    if NEED_RESCHED.swap(false, Ordering::Relaxed) {
        schedule_with(TaskState::Ready);
    }
}

/// Switch away from the current task, leaving it in `state`. Interrupts
/// must be disabled.
fn schedule_with(state: TaskState) {
    debug_assert!(!arch::irq_enabled());
    let prev_comm;
    let (prev_rsp_ptr, next_rsp, prev, next) = {
        let mut g = SCHED.lock();
        let Some(s) = g.as_mut() else { return };
        let cur = s.current;
        let next = loop {
            match s.run_queue.pop_front() {
                Some(p) if s.tasks.get(&p).is_some_and(|t| t.state == TaskState::Ready) => {
                    break Some(p)
                }
                Some(_) => continue,
                None => break None,
            }
        };
        let next = match next {
            Some(p) => p,
            None if state == TaskState::Ready || state == TaskState::Running => return,
            None => 0, // nothing runnable: idle
        };
        if next == cur {
            if let Some(t) = s.tasks.get_mut(&cur) {
                t.state = TaskState::Running;
            }
            return;
        }
        let now = arch::rdtsc();
        {
            let Some(t) = s.tasks.get_mut(&cur) else {
                return;
            };
            t.runtime_tsc += now.wrapping_sub(t.slice_start_tsc);
            t.state = if cur == 0 && state == TaskState::Blocked {
                TaskState::Ready
            } else {
                state
            };
            if t.state == TaskState::Ready && cur != 0 {
                s.run_queue.push_back(cur);
            }
        }
        let prev_rsp_ptr: *mut u64 = if state == TaskState::Exited {
            let t = s.tasks.remove(&cur).expect("current task exists");
            s.zombies.push(t);
            let z = s.zombies.last_mut().expect("just pushed");
            &mut z.rsp
        } else {
            &mut s.tasks.get_mut(&cur).expect("current task exists").rsp
        };
        let n = s.tasks.get_mut(&next).expect("next task exists");
        n.state = TaskState::Running;
        n.switches += 1;
        n.slice_start_tsc = now;
        prev_comm = this_cpu().current_comm();
        this_cpu().set_current(next, &n.name);
        s.current = next;
        (prev_rsp_ptr, n.rsp, cur, next)
    };
    CONTEXT_SWITCHES.fetch_add(1, Ordering::Relaxed);
    crate::trace_event!(
        crate::trace::points::SCHED_SWITCH,
        ktrace_tracepoints::sched::SchedSwitch {
            prev_state: match state {
                TaskState::Ready | TaskState::Running => 0,
                TaskState::Exited => 2,
                _ => 1,
            },
            prev_pid: prev,
            next_pid: next,
            prev_comm,
            next_comm: this_cpu().current_comm(),
        }
    );
    // SAFETY: interrupts are off; `prev_rsp_ptr` points into a boxed task
    // (or zombie) that stays alive until after the switch; `next_rsp` was
    // saved by context_switch or built by `spawn`.
    unsafe { context_switch(prev_rsp_ptr, next_rsp) };
}

/// Snapshot of all tasks for `Info`.
pub fn snapshot() -> Vec<TaskInfo> {
    let g = SCHED.lock();
    let Some(s) = g.as_ref() else {
        return Vec::new();
    };
    let now = arch::rdtsc();
    s.tasks
        .values()
        .map(|t| {
            let mut rt = t.runtime_tsc;
            if t.pid == s.current {
                rt += now.wrapping_sub(t.slice_start_tsc);
            }
            TaskInfo {
                pid: t.pid,
                name: t.name.clone(),
                state: t.state,
                runtime_ns: crate::time::tsc_to_ns(rt),
                switches: t.switches,
                cpu: 0,
                migrations: 0,
            }
        })
        .collect()
}

/// Body of the idle task: halt until an interrupt, then let others run.
pub fn idle_loop() -> ! {
    loop {
        arch::irq_disable();
        let runnable = SCHED
            .lock()
            .as_ref()
            .is_some_and(|s| !s.run_queue.is_empty());
        if runnable {
            schedule_with(TaskState::Ready);
            arch::irq_enable();
        } else {
            arch::cpu::enable_and_halt();
        }
    }
}
