//! The scheduler: one run queue per CPU, each CPU with its own idle task.
//!
//! All queues sit under one lock (the kernel runs a handful of tasks; the
//! per-CPU split is about placement, not lock contention). Per-queue locks
//! would not be enough on their own: the same lock guards the task table
//! that [`wake`] reads for any task, the states [`Scheduler::steal`] checks
//! on other CPUs' queues, and the decision that sets a task's
//! `switching_out` before another CPU can pick it; those need per-task
//! state (and a lock order for stealing) before the queues can split. A task that
//! becomes runnable goes to the CPU it last ran on if that CPU idles,
//! else to the least loaded CPU; a CPU with nothing to run steals from
//! the busiest queue (on its way to idle, and at each timer tick while
//! idle), and at each tick a CPU with two tasks fewer than the busiest
//! takes one of its queued tasks. A task started with [`spawn_on`] is
//! pinned: it always goes to its CPU's queue and is never stolen or
//! balanced away. Each switch onto another CPU than the task's last
//! counts as a migration.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::arch::{self, smp};
use crate::percpu::{cpu_count, this_cpu, MAX_CPUS};
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
    fn context_switch(prev_rsp: *mut u64, next_rsp: u64, prev_switching_out: *mut u32);
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

/// What a CPU switching away from a task still owns of it: the saved
/// stack pointer, and whether it is saved yet. A separate allocation from
/// [`Task`] so other CPUs can read it without the scheduler lock.
struct SwitchSlot {
    /// Saved stack pointer while not running (written by `context_switch`).
    rsp: AtomicU64,
    /// 1 from the moment a CPU decides to switch away from the task (under
    /// the lock) until `context_switch` has saved its registers and left
    /// its stack; cleared by `context_switch` itself.
    switching_out: AtomicU32,
}

struct Task {
    pid: Pid,
    name: String,
    state: TaskState,
    slot: Box<SwitchSlot>,
    /// Owned for its lifetime: dropped (unmapped guard restored, memory
    /// freed) when the task is reaped.
    _stack: Option<KernelStack>,
    runtime_tsc: u64,
    switches: u64,
    slice_start_tsc: u64,
    /// Incremented at each sleep, so a stale timer entry from an earlier
    /// sleep that was ended early by `wake` cannot end a later one.
    sleep_seq: u64,
    /// CPU the task runs on or last ran on.
    cpu: u32,
    /// Times it was switched in on another CPU than the time before.
    migrations: u64,
    /// A CPU's idle task: never queued, runs only on its CPU.
    idle: bool,
    /// Runs only on this CPU ([`spawn_on`]): placed there, never stolen
    /// or balanced away.
    pinned: Option<u32>,
    /// A `wake` came while the task was still running (between putting
    /// itself on a wait queue and blocking): its next block returns at once.
    wake_pending: bool,
}

/// Why the running task leaves the CPU.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Still runnable (preempted or yielding).
    Ready,
    /// Waits for [`wake`]; a wake that came since it prepared ends it at once.
    Blocked,
    /// Sleeps until the time (ns); `wakeable`: [`wake`] ends it early.
    Sleep {
        until: u64,
        wakeable: bool,
    },
    Exited,
}

impl Leave {
    fn state(self) -> TaskState {
        match self {
            Leave::Ready => TaskState::Ready,
            Leave::Blocked => TaskState::Blocked,
            Leave::Sleep { .. } => TaskState::Sleeping,
            Leave::Exited => TaskState::Exited,
        }
    }
}

struct Scheduler {
    tasks: BTreeMap<Pid, Box<Task>>,
    /// One run queue per CPU (all under the one scheduler lock).
    run_queues: Vec<VecDeque<Pid>>,
    /// (wake time, pid, sleep sequence number of that task).
    sleepers: BinaryHeap<Reverse<(u64, Pid, u64)>>,
    /// Task running on each CPU.
    current: [Pid; MAX_CPUS as usize],
    /// Each CPU's idle task.
    idle: [Pid; MAX_CPUS as usize],
    next_pid: Pid,
    /// Tasks that exited; their stacks are freed once no CPU is on them
    /// (a task's switch slot is its own allocation, so moving the task
    /// here leaves the slot where `context_switch` writes it).
    zombies: Vec<Task>,
}

impl Scheduler {
    fn is_idle(&self, cpu: u32) -> bool {
        self.current[cpu as usize] == self.idle[cpu as usize]
    }

    /// Tasks on `cpu`: queued, plus the running one unless it is idle.
    fn load(&self, cpu: u32) -> usize {
        self.run_queues[cpu as usize].len() + usize::from(!self.is_idle(cpu))
    }

    /// Where a task that becomes runnable goes: the CPU it last ran on if
    /// that CPU is idle (its caches are warm), else the least loaded CPU
    /// (the last one among equals).
    fn place(&self, last: u32) -> u32 {
        let online = cpu_count();
        let last = if last < online { last } else { 0 };
        if self.is_idle(last) && self.run_queues[last as usize].is_empty() {
            return last;
        }
        let mut best = last;
        for cpu in 0..online {
            if self.load(cpu) < self.load(best) {
                best = cpu;
            }
        }
        best
    }

    /// Queue `pid` (Ready) on its pinned CPU, else on a CPU chosen by
    /// [`place`](Self::place), and make that CPU look at its queue if it
    /// idles.
    fn enqueue(&mut self, pid: Pid, last: u32) -> u32 {
        let pinned = self.tasks.get(&pid).and_then(|t| t.pinned);
        let cpu = pinned.unwrap_or_else(|| self.place(last));
        self.run_queues[cpu as usize].push_back(pid);
        if self.is_idle(cpu) {
            smp::send_reschedule(cpu);
        }
        cpu
    }

    /// Whether `pid` may be moved to another CPU's queue: Ready and not
    /// pinned.
    fn movable(&self, pid: Pid) -> bool {
        self.tasks
            .get(&pid)
            .is_some_and(|t| t.state == TaskState::Ready && t.pinned.is_none())
    }

    /// Queued tasks on `cpu` that another CPU may take.
    fn movable_count(&self, cpu: u32) -> usize {
        self.run_queues[cpu as usize]
            .iter()
            .filter(|&&p| self.movable(p))
            .count()
    }

    /// A task for idle `cpu` from the other queue with the most movable
    /// tasks (load balancing by stealing: only a CPU with nothing to run
    /// takes work; pinned tasks stay).
    fn steal(&mut self, cpu: u32) -> Option<Pid> {
        let victim = (0..cpu_count())
            .filter(|&c| c != cpu)
            .max_by_key(|&c| self.movable_count(c))?;
        let pos = self.run_queues[victim as usize]
            .iter()
            .rposition(|&p| self.movable(p))?;
        self.run_queues[victim as usize].remove(pos)
    }

    /// Periodic balance (timer tick on `cpu`): when another CPU has at
    /// least two tasks more than this one, move one of its queued tasks
    /// here. Returns whether one moved.
    fn balance(&mut self, cpu: u32) -> bool {
        let mine = self.load(cpu);
        let Some(victim) = (0..cpu_count())
            .filter(|&c| c != cpu && !self.run_queues[c as usize].is_empty())
            .max_by_key(|&c| self.load(c))
        else {
            return false;
        };
        if self.load(victim) < mine + 2 {
            return false;
        }
        let Some(pos) = self.run_queues[victim as usize]
            .iter()
            .rposition(|&p| self.movable(p))
        else {
            return false;
        };
        match self.run_queues[victim as usize].remove(pos) {
            Some(pid) => {
                self.run_queues[cpu as usize].push_back(pid);
                true
            }
            None => false,
        }
    }

    /// Whether idle `cpu` has work: its own queue, or a task it may steal
    /// from another (queues hold only Ready tasks).
    fn has_work_for(&self, cpu: u32) -> bool {
        !self.run_queues[cpu as usize].is_empty()
            || (0..cpu_count()).any(|c| c != cpu && self.movable_count(c) > 0)
    }
}

static SCHED: SpinLock<Option<Scheduler>> = SpinLock::new(None);
/// The boot CPU finished booting: the other CPUs may run tasks (until
/// then they idle, so no task runs before the kernel is set up, as with
/// one CPU).
static ALL_CPUS_STARTED: AtomicBool = AtomicBool::new(false);

/// Let every CPU run tasks (end of boot).
pub fn start_all_cpus() {
    ALL_CPUS_STARTED.store(true, Ordering::Release);
    for cpu in 1..cpu_count() {
        smp::send_reschedule(cpu);
    }
}
static CONTEXT_SWITCHES: AtomicU64 = AtomicU64::new(0);

fn new_task(pid: Pid, name: &str, state: TaskState, cpu: u32, idle: bool) -> Box<Task> {
    Box::new(Task {
        pid,
        name: String::from(name),
        state,
        slot: Box::new(SwitchSlot {
            rsp: AtomicU64::new(0),
            switching_out: AtomicU32::new(0),
        }),
        _stack: None,
        runtime_tsc: 0,
        switches: u64::from(state == TaskState::Running),
        slice_start_tsc: arch::rdtsc(),
        sleep_seq: 0,
        cpu,
        migrations: 0,
        idle,
        pinned: None,
        wake_pending: false,
    })
}

/// Tasks each run queue, and the sleepers' heap, hold before growing.
const QUEUE_CAPACITY: usize = 32;

/// Turn the boot context into task 0 (`idle`, CPU 0's idle task).
pub fn init() {
    let mut tasks = BTreeMap::new();
    tasks.insert(0, new_task(0, "idle", TaskState::Running, 0, true));
    *SCHED.lock() = Some(Scheduler {
        tasks,
        // Sized at boot for more tasks than the kernel runs, so that
        // queueing and sleeping do not allocate, and the heap does not grow
        // with how many tasks happened to wait at once on which CPU.
        run_queues: (0..MAX_CPUS)
            .map(|_| VecDeque::with_capacity(QUEUE_CAPACITY))
            .collect(),
        sleepers: BinaryHeap::with_capacity(QUEUE_CAPACITY),
        current: [0; MAX_CPUS as usize],
        idle: [0; MAX_CPUS as usize],
        next_pid: 1,
        zombies: Vec::new(),
    });
    this_cpu().set_current(0, "idle");
}

/// Turn an application processor's boot context into its idle task
/// (`idle/N`). Called on that CPU before it counts as online.
pub fn init_ap(cpu: u32) {
    let mut g = SCHED.lock();
    let Some(s) = g.as_mut() else { return };
    let pid = s.next_pid;
    s.next_pid += 1;
    let name = alloc::format!("idle/{cpu}");
    s.tasks
        .insert(pid, new_task(pid, &name, TaskState::Running, cpu, true));
    s.current[cpu as usize] = pid;
    s.idle[cpu as usize] = pid;
    this_cpu().set_current(pid, &name);
}

/// The top of a fresh kernel stack (guard page below it) for an
/// application processor's boot and idle task; never freed.
pub fn new_cpu_stack() -> Option<u64> {
    let stack = KernelStack::new()?;
    let top = stack.top() & !0xf;
    core::mem::forget(stack);
    Some(top)
}

/// Start a kernel task running `f`. Returns its pid, or `None` when out of
/// memory.
#[must_use = "a task that could not be spawned never runs"]
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<Pid> {
    spawn_pinned(name, None, f)
}

/// Start a kernel task running `f` that runs only on `cpu` (an online
/// CPU): it is queued there, and neither stealing nor balancing moves it.
/// Returns its pid, or `None` when out of memory or `cpu` is not online.
#[must_use = "a task that could not be spawned never runs"]
pub fn spawn_on(name: &str, cpu: u32, f: impl FnOnce() + Send + 'static) -> Option<Pid> {
    if cpu >= cpu_count() {
        return None;
    }
    spawn_pinned(name, Some(cpu), f)
}

fn spawn_pinned(name: &str, pinned: Option<u32>, f: impl FnOnce() + Send + 'static) -> Option<Pid> {
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
    let here = this_cpu().id;
    let mut guard = SCHED.lock();
    let s = guard.as_mut()?;
    let pid = s.next_pid;
    s.next_pid += 1;
    let mut task = new_task(pid, name, TaskState::Ready, here, false);
    task.slot.rsp.store(rsp, Ordering::Relaxed);
    task._stack = Some(stack);
    task.slice_start_tsc = 0;
    task.pinned = pinned;
    s.tasks.insert(pid, task);
    s.enqueue(pid, here);
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

/// Free the stacks of tasks that exited and that no CPU is still
/// switching away from (a zombie's stack is in use until `context_switch`
/// has left it, which it signals in the zombie's slot).
/// Never inlined: a place to probe task teardown.
#[inline(never)]
pub fn reap_zombies() {
    let zombies = {
        let mut g = SCHED.lock();
        match g.as_mut() {
            Some(s) => {
                let (gone, busy): (Vec<_>, Vec<_>) = core::mem::take(&mut s.zombies)
                    .into_iter()
                    .partition(|z| z.slot.switching_out.load(Ordering::Acquire) == 0);
                s.zombies = busy;
                gone
            }
            None => Vec::new(),
        }
    };
    drop(zombies);
}

/// End the current task.
pub fn exit_current() -> ! {
    arch::irq_disable();
    schedule_with(Leave::Exited);
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
    schedule_with(Leave::Ready);
    arch::irq_restore(was);
}

/// Sleep for at least `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    let until = crate::time::now_ns().saturating_add(ns);
    let was = arch::irq_save();
    schedule_with(Leave::Sleep {
        until,
        wakeable: false,
    });
    arch::irq_restore(was);
}

/// Sleep until [`wake`] or for `ns` nanoseconds, whichever comes first
/// (a wait queue's timed wait). Interrupts must be disabled.
pub(super) fn sleep_ns_wakeable(ns: u64) {
    let until = crate::time::now_ns().saturating_add(ns);
    schedule_with(Leave::Sleep {
        until,
        wakeable: true,
    });
}

/// Sleep for at least `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    sleep_ns(ms.saturating_mul(1_000_000));
}

/// Forget wake-ups that came before now: the caller is about to put itself
/// on a wait queue, and only wake-ups from then on may end its block.
pub(super) fn prepare_to_block() {
    let mut g = SCHED.lock();
    if let Some(s) = g.as_mut() {
        let me = s.current[this_cpu().id as usize];
        if let Some(t) = s.tasks.get_mut(&me) {
            t.wake_pending = false;
        }
    }
}

/// Block the current task until [`wake`] (interrupts must be disabled by
/// the caller, which called [`prepare_to_block`] and then registered
/// itself where a waker will find it). Returns at once if a wake came in
/// between.
pub(super) fn block_current() {
    schedule_with(Leave::Blocked);
}

/// Emit `sched:sched_wakeup`.
fn trace_wakeup(pid: Pid, name: &str, target_cpu: u32) {
    crate::trace_event!(crate::trace::points::SCHED_WAKEUP, {
        let mut comm = [0u8; 16];
        let n = name.len().min(15);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        ktrace_tracepoints::sched::SchedWakeup {
            pid,
            target_cpu,
            comm,
        }
    });
}

/// Make a blocked or sleeping task runnable, on the CPU
/// [`Scheduler::place`] picks. A task that is still running (it queued
/// itself somewhere and has not blocked yet) keeps the wake-up for its
/// next block.
///
/// Never inlined: like Linux's `try_to_wake_up`, it is the place to probe
/// wakeups (`ktrace probe add kernel::task::sched::wake`), and with few
/// callers the optimiser would otherwise fold it away.
#[inline(never)]
pub fn wake(pid: Pid) {
    let mut g = SCHED.lock();
    if let Some(s) = g.as_mut() {
        let Some(t) = s.tasks.get_mut(&pid) else {
            return;
        };
        match t.state {
            TaskState::Blocked | TaskState::Sleeping => {
                t.state = TaskState::Ready;
                let last = t.cpu;
                let cpu = s.enqueue(pid, last);
                if let Some(t) = s.tasks.get(&pid) {
                    trace_wakeup(pid, &t.name, cpu);
                }
            }
            TaskState::Running | TaskState::Ready if !t.idle => t.wake_pending = true,
            _ => {}
        }
    }
}

/// Timer interrupt (on every CPU): wake due sleepers, account the running
/// slice, and let an idle CPU look for work to steal.
pub fn timer_tick() {
    let now = crate::time::now_ns();
    let cpu = this_cpu().id;
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
                let last = t.cpu;
                let target = s.enqueue(pid, last);
                if let Some(t) = s.tasks.get(&pid) {
                    trace_wakeup(pid, &t.name, target);
                }
            }
        }
    }
    s.balance(cpu);
    let cur = s.current[cpu as usize];
    let slice_start = s.tasks.get(&cur).map(|t| t.slice_start_tsc).unwrap_or(0);
    let used = crate::time::tsc_to_ns(arch::rdtsc().wrapping_sub(slice_start));
    let idle = s.is_idle(cpu);
    let queued = !s.run_queues[cpu as usize].is_empty();
    if (queued && (idle || used >= SLICE_NS)) || (idle && s.has_work_for(cpu)) {
        this_cpu().need_resched.store(true, Ordering::Relaxed);
    }
}

/// Called on the way out of every interrupt: switch if a reschedule is due.
pub fn preempt_point_from_irq() {
    if this_cpu().need_resched.swap(false, Ordering::Relaxed) {
        schedule_with(Leave::Ready);
    }
}

/// Switch away from the current task, which leaves as `leave` says.
/// Interrupts must be disabled.
///
/// SMP: the decision is made under the scheduler lock, the switch after
/// it. The task switched to may still be leaving another CPU (it was
/// preempted there and queued, and that CPU has not saved its registers
/// yet): its slot's `switching_out` is 1 until that CPU's
/// `context_switch` has saved them and left its stack, so this CPU waits
/// for 0 before loading its stack pointer. The waiting cannot deadlock:
/// the other CPU is between its unlock and the end of `context_switch`,
/// which takes no lock and runs with interrupts off.
fn schedule_with(leave: Leave) {
    debug_assert!(!arch::irq_enabled());
    let cpu = this_cpu().id;
    if cpu != 0 && !ALL_CPUS_STARTED.load(Ordering::Acquire) {
        return;
    }
    let prev_comm;
    let next_last_cpu;
    let migrated;
    let (prev_slot, next_slot, prev, next) = {
        let mut g = SCHED.lock();
        let Some(s) = g.as_mut() else { return };
        let cur = s.current[cpu as usize];
        // A wake-up that came while the task was getting ready to wait.
        if matches!(leave, Leave::Blocked | Leave::Sleep { wakeable: true, .. }) {
            if let Some(t) = s.tasks.get_mut(&cur) {
                if t.wake_pending {
                    t.wake_pending = false;
                    return;
                }
            }
        }
        if let Leave::Sleep { until, .. } = leave {
            if let Some(t) = s.tasks.get_mut(&cur) {
                t.sleep_seq += 1;
                let seq = t.sleep_seq;
                s.sleepers.push(Reverse((until, cur, seq)));
            }
        }
        let own = loop {
            match s.run_queues[cpu as usize].pop_front() {
                Some(p) if s.tasks.get(&p).is_some_and(|t| t.state == TaskState::Ready) => {
                    break Some(p)
                }
                Some(_) => continue,
                None => break None,
            }
        };
        let cur_idle = s.idle[cpu as usize] == cur;
        let next = match own {
            Some(p) => Some(p),
            // Going idle (or idling): take work from a busier CPU.
            None if cur_idle || leave != Leave::Ready => s.steal(cpu),
            None => None,
        };
        let next = match next {
            Some(p) => p,
            None if leave == Leave::Ready => return,
            None => s.idle[cpu as usize],
        };
        if next == cur {
            if let Some(t) = s.tasks.get_mut(&cur) {
                t.state = TaskState::Running;
            }
            return;
        }
        let now = arch::rdtsc();
        let prev_slot: *const SwitchSlot = {
            let Some(t) = s.tasks.get_mut(&cur) else {
                return;
            };
            t.runtime_tsc += now.wrapping_sub(t.slice_start_tsc);
            t.state = if t.idle {
                TaskState::Ready
            } else {
                leave.state()
            };
            t.slot.switching_out.store(1, Ordering::Relaxed);
            &*t.slot
        };
        if leave == Leave::Ready && !cur_idle {
            s.run_queues[cpu as usize].push_back(cur);
        }
        if leave == Leave::Exited {
            let t = s.tasks.remove(&cur).expect("current task exists");
            s.zombies.push(*t);
        }
        let n = s.tasks.get_mut(&next).expect("next task exists");
        n.state = TaskState::Running;
        n.switches += 1;
        n.slice_start_tsc = now;
        next_last_cpu = n.cpu;
        migrated = n.cpu != cpu && !n.idle && n.switches > 1;
        if migrated {
            n.migrations += 1;
            crate::cpustat::add(crate::cpustat::Stat::Migrations);
        }
        n.cpu = cpu;
        let next_slot: *const SwitchSlot = &*n.slot;
        prev_comm = this_cpu().current_comm();
        this_cpu().set_current(next, &n.name);
        s.current[cpu as usize] = next;
        (prev_slot, next_slot, cur, next)
    };
    CONTEXT_SWITCHES.fetch_add(1, Ordering::Relaxed);
    crate::cpustat::add(crate::cpustat::Stat::ContextSwitches);
    // Both events after the unlock: a program on them may take any lock.
    if migrated {
        crate::trace_event!(
            crate::trace::points::SCHED_MIGRATE_TASK,
            ktrace_tracepoints::sched::SchedMigrateTask {
                pid: next,
                orig_cpu: next_last_cpu,
                dest_cpu: cpu,
                comm: this_cpu().current_comm(),
            }
        );
    }
    crate::trace_event!(
        crate::trace::points::SCHED_SWITCH,
        ktrace_tracepoints::sched::SchedSwitch {
            prev_state: match leave {
                Leave::Ready => 0,
                Leave::Exited => 2,
                _ => 1,
            },
            prev_pid: prev,
            next_pid: next,
            prev_comm,
            next_comm: this_cpu().current_comm(),
            cpu,
            next_last_cpu,
        }
    );
    // SAFETY: (both slots) a slot lives as long as its task's box. `next`
    // runs on this CPU now, so nobody else frees it; `prev` is freed only
    // by its own exit (as a zombie, reaped once `switching_out` is 0),
    // and `switching_out` is 1 until `context_switch` is done with it.
    let (prev_slot, next_slot) = unsafe { (&*prev_slot, &*next_slot) };
    while next_slot.switching_out.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    let next_rsp = next_slot.rsp.load(Ordering::Relaxed);
    // SAFETY: interrupts are off; `prev_slot` stays alive until
    // context_switch clears its flag (above); `next_rsp` was saved by
    // context_switch (completed: its flag is 0) or built by `spawn`.
    unsafe {
        context_switch(
            prev_slot.rsp.as_ptr(),
            next_rsp,
            prev_slot.switching_out.as_ptr(),
        )
    };
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
            if t.state == TaskState::Running {
                rt += now.wrapping_sub(t.slice_start_tsc);
            }
            TaskInfo {
                pid: t.pid,
                name: t.name.clone(),
                state: t.state,
                runtime_ns: crate::time::tsc_to_ns(rt),
                switches: t.switches,
                cpu: t.cpu,
                migrations: t.migrations,
            }
        })
        .collect()
}

/// Body of every CPU's idle task: halt until an interrupt, then run what
/// is queued here or can be stolen from a busier CPU.
pub fn idle_loop() -> ! {
    loop {
        arch::irq_disable();
        let cpu = this_cpu().id;
        let runnable = (cpu == 0 || ALL_CPUS_STARTED.load(Ordering::Acquire))
            && SCHED.lock().as_ref().is_some_and(|s| s.has_work_for(cpu));
        if runnable {
            schedule_with(Leave::Ready);
            arch::irq_enable();
        } else {
            // `sti; hlt` is atomic: a reschedule IPI sent after the check
            // above wakes the halt instead of being taken before it.
            arch::cpu::enable_and_halt();
        }
    }
}
