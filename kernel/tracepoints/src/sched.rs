//! `sched:*` tracepoints.

tracepoints! {
    /// The scheduler switched CPU `cpu` from `prev` to `next`. `prev_state`
    /// is 0 when `prev` is still runnable (preempted), 1 when it sleeps or
    /// blocks, 2 when it exited. `next_last_cpu` is the CPU `next` ran on
    /// before (for a task's first run, the CPU that started it): when it
    /// differs from `cpu` on a task's later run, this switch migrated it
    /// and `sched:sched_migrate_task` fired just before. (Linux keeps the
    /// CPU in every event's common header; these records have none.)
    "sched": "sched_switch" => struct SchedSwitch {
        prev_state: i64, prev_pid: u32, next_pid: u32, prev_comm: [u8; 16], next_comm: [u8; 16],
        cpu: u32, next_last_cpu: u32,
    }
    /// A task was made runnable.
    "sched": "sched_wakeup" => struct SchedWakeup {
        pid: u32, target_cpu: u32, comm: [u8; 16],
    }
    /// A task that ran on `orig_cpu` is switched in on `dest_cpu`: one
    /// event per `cpu-migrations` count, on `dest_cpu`, just before that
    /// switch's `sched:sched_switch` (Linux emits it when the task is
    /// moved; here tasks move between run queues and count where they
    /// next run).
    "sched": "sched_migrate_task" => struct SchedMigrateTask {
        pid: u32, orig_cpu: u32, dest_cpu: u32, comm: [u8; 16],
    }
}
