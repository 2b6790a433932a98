//! Kernel tasks: a preemptive round-robin scheduler with a run queue per
//! CPU, sleeping, wait queues.
//!
//! Every task has its own kernel stack with an unmapped guard page below it.
//! The timer interrupt wakes sleepers and, when the running task's slice is
//! used up, asks for a reschedule that happens on the way out of the
//! interrupt (the entry code runs handlers on the task's own stack, so a
//! switch there is an ordinary call to [`context_switch`]).

mod sched;
mod waitqueue;

#[allow(unused_imports)] // the attach-point and block work use the rest
pub use sched::{
    context_switches, current_pid, exit_current, idle_loop, init, init_ap, new_cpu_stack,
    preempt_point_from_irq, reap_zombies, sleep_ms, sleep_ns, snapshot, spawn, spawn_on,
    start_all_cpus, timer_tick, wake, yield_now, Pid, STACK_BYTES,
};
pub use waitqueue::WaitQueue;

core::arch::global_asm!(include_str!("switch.S"), options(att_syntax));
