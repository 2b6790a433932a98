//! The kernel's tracepoints: one static per record type of
//! `ktrace-tracepoints`, and the registry [`ALL`]. Emit one with
//! `crate::trace_event!(crate::trace::points::NAME, Record { .. })`.

use super::tracepoint::Tracepoint;
use ktrace_tracepoints::{block, irq, sched};

/// `block:block_bio_queue`.
pub static BLOCK_BIO_QUEUE: Tracepoint = Tracepoint::new::<block::BlockBioQueue>();
/// `block:block_bio_backmerge`.
pub static BLOCK_BIO_BACKMERGE: Tracepoint = Tracepoint::new::<block::BlockBioBackmerge>();
/// `block:block_bio_frontmerge`.
pub static BLOCK_BIO_FRONTMERGE: Tracepoint = Tracepoint::new::<block::BlockBioFrontmerge>();
/// `block:block_rq_insert`.
pub static BLOCK_RQ_INSERT: Tracepoint = Tracepoint::new::<block::BlockRqInsert>();
/// `block:block_rq_issue`.
pub static BLOCK_RQ_ISSUE: Tracepoint = Tracepoint::new::<block::BlockRqIssue>();
/// `block:block_rq_complete`.
pub static BLOCK_RQ_COMPLETE: Tracepoint = Tracepoint::new::<block::BlockRqComplete>();
/// `sched:sched_switch`.
pub static SCHED_SWITCH: Tracepoint = Tracepoint::new::<sched::SchedSwitch>();
/// `sched:sched_wakeup`.
pub static SCHED_WAKEUP: Tracepoint = Tracepoint::new::<sched::SchedWakeup>();
/// `sched:sched_migrate_task`.
pub static SCHED_MIGRATE_TASK: Tracepoint = Tracepoint::new::<sched::SchedMigrateTask>();
/// `irq:irq_handler_entry`.
pub static IRQ_HANDLER_ENTRY: Tracepoint = Tracepoint::new::<irq::IrqHandlerEntry>();
/// `irq:irq_handler_exit`.
pub static IRQ_HANDLER_EXIT: Tracepoint = Tracepoint::new::<irq::IrqHandlerExit>();
/// `ktrace:bench`: emitted only by the benchmark and tests (a tracepoint
/// nobody else enables, so its measurements are not disturbed).
pub static KTRACE_BENCH: Tracepoint = Tracepoint::new::<BenchEvent>();

/// Every tracepoint, in listing order.
pub static ALL: [&Tracepoint; 12] = [
    &BLOCK_BIO_QUEUE,
    &BLOCK_BIO_BACKMERGE,
    &BLOCK_BIO_FRONTMERGE,
    &BLOCK_RQ_INSERT,
    &BLOCK_RQ_ISSUE,
    &BLOCK_RQ_COMPLETE,
    &SCHED_SWITCH,
    &SCHED_WAKEUP,
    &SCHED_MIGRATE_TASK,
    &IRQ_HANDLER_ENTRY,
    &IRQ_HANDLER_EXIT,
    &KTRACE_BENCH,
];

/// Record of `ktrace:bench`.
pub type BenchEvent = ktrace_tracepoints::ktrace::Bench;
