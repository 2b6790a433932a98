//! `sched:*` tracepoints.

tracepoints! {
    /// The scheduler switched from `prev` to `next`. `prev_state` is 0 when
    /// `prev` is still runnable (preempted), 1 when it sleeps or blocks, 2
    /// when it exited.
    "sched": "sched_switch" => struct SchedSwitch {
        prev_state: i64, prev_pid: u32, next_pid: u32, prev_comm: [u8; 16], next_comm: [u8; 16],
    }
    /// A task was made runnable.
    "sched": "sched_wakeup" => struct SchedWakeup {
        pid: u32, target_cpu: u32, comm: [u8; 16],
    }
}
