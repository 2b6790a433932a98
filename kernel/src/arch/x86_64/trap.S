/* Interrupt and exception entry.
 *
 * Every vector enters on an IST stack (the CPU never pushes onto the
 * interrupted stack, whose 128-byte red zone may hold a leaf function's
 * data). The common code then moves the hardware frame to
 * `interrupted_rsp - 128 - 64`, aligned, so the handler runs on the
 * interrupted task's stack below its red zone and may switch tasks. Vectors
 * that must not trust the interrupted stack (NMI, #DF, #PF, #MC) build the
 * same frame lower on their own IST stack instead and never switch tasks.
 *
 * An IST entry always starts at the top of its stack, also when the code it
 * interrupts runs on that same stack: an NMI that arrives before the NMI
 * handler it interrupts has returned (NMIs are unblocked by any `iretq`, and
 * the NMI handler of a loaded TCG guest has been seen to be re-entered)
 * would build its frame over the outer handler's saved registers and return
 * address. The outer handler then returns through the inner frame, which
 * points back into this exit path on the IST stack: the CPU `iretq`s to
 * itself for ever, with interrupts off (it still answers NMIs, so TLB
 * shootdowns succeed, but never another interrupt, so a cross-CPU call to it
 * waits for ever). So when the interrupted stack pointer lies on the IST
 * stack we entered on, below this entry's frame, the frame goes below it
 * (and its red zone), as for a nested entry on any other stack. The first
 * instructions of an entry, before it leaves the top of its stack, stay
 * exposed: nothing there can fault, so only an NMI that the CPU should
 * have held could land in them.
 *
 * The saved registers form a Linux `struct pt_regs` (r15 first, then
 * orig_rax = error code, rip, cs, eflags, rsp, ss); the vector number sits
 * just above it. The FPU/SSE state is saved below it with fxsave. */

    .section .text.entry, "ax"
    .code64

/* Size of each IST stack (`gdt::IST_SIZE`). */
    .set IST_STACK_SIZE, 16 * 1024

    .global trap_common_copy
trap_common_copy:
    pushq %rax
    pushq %rcx
    /* 0 rcx | 8 rax | 16 vector | 24 error | 32 rip | 40 cs | 48 rflags | 56 rsp | 64 ss */
    movq 56(%rsp), %rax
    jmp trap_move_frame

    .global trap_common_ist
trap_common_ist:
    pushq %rax
    pushq %rcx
    movq %rsp, %rax
    /* Nested on this IST stack (the interrupted rsp is below us, less than
     * one IST stack away, see above): build the frame below it instead. */
    movq 56(%rsp), %rcx
    cmpq %rax, %rcx
    jae trap_move_frame
    subq %rcx, %rax
    cmpq $IST_STACK_SIZE, %rax
    movq %rsp, %rax
    jae trap_move_frame
    movq %rcx, %rax

trap_move_frame:
    subq $(128 + 64), %rax
    andq $-16, %rax
    movq 24(%rsp), %rcx
    movq %rcx, 0(%rax)
    movq 32(%rsp), %rcx
    movq %rcx, 8(%rax)
    movq 40(%rsp), %rcx
    movq %rcx, 16(%rax)
    movq 48(%rsp), %rcx
    movq %rcx, 24(%rax)
    movq 56(%rsp), %rcx
    movq %rcx, 32(%rax)
    movq 64(%rsp), %rcx
    movq %rcx, 40(%rax)
    movq 16(%rsp), %rcx
    movq %rcx, 48(%rax)
    movq 8(%rsp), %rcx
    movq %rcx, -8(%rax)
    movq 0(%rsp), %rcx
    movq %rax, %rsp
    movq -8(%rsp), %rax

    PUSH_PT_REGS_GPRS
    movq %rsp, %rdi
    movq 168(%rsp), %rsi
    /* Frame-pointer chain through the interrupted code, for backtraces. */
    movq 128(%rsp), %rax
    pushq %rax
    pushq %rbp
    movq %rsp, %rbp
    subq $520, %rsp
    fxsave64 (%rsp)
    cld
    call trap_dispatch
    fxrstor64 (%rsp)
    addq $536, %rsp
    POP_PT_REGS_GPRS
    addq $8, %rsp
    iretq
    .global trap_entry_end
trap_entry_end:
