//! `irq:*` tracepoints.

tracepoints! {
    /// An interrupt handler is about to run.
    "irq": "irq_handler_entry" => struct IrqHandlerEntry {
        irq: i32, vector: u32, name: [u8; 16],
    }
    /// An interrupt handler returned (`ret` 1 = handled).
    "irq": "irq_handler_exit" => struct IrqHandlerExit {
        irq: i32, ret: i32,
    }
}
