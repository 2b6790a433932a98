/* context_switch(prev_rsp: *mut u64, next_rsp: u64, prev_switching_out: *mut u32)
 * Saves the callee-saved registers on the current stack, stores rsp in
 * *prev_rsp, moves to next_rsp, clears *prev_switching_out (from then on
 * another CPU may resume the previous task: its registers are saved and
 * this CPU no longer touches its stack; x86 keeps the two stores in
 * order) and restores the next task's registers. Called with interrupts
 * disabled. The FPU/SSE state needs no saving here: in the
 * SysV ABI all xmm registers are caller-saved across this call, and an
 * interrupted task's state was saved by the trap entry (fxsave). */
    .section .text.entry, "ax"
    .global context_switch
context_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    movl $0, (%rdx)
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

/* First code a new task runs: r12 holds its boxed start closure. */
    .global task_entry_trampoline
task_entry_trampoline:
    movq %r12, %rdi
    xorl %ebp, %ebp
    call task_start
    ud2
