/* The kretprobe return trampoline.
 *
 * A return probe replaces the return address of a probed call with this
 * address, so the probed function's `ret` lands here with rsp = the slot
 * that held the return address + 8, and rax/rdx/xmm0 holding its result.
 * We build a `struct pt_regs` (like trap.S) with interrupts off, save the
 * SSE state, and call `kretprobe_trampoline_handler(regs)`, which runs the
 * return handler and stores the original return address in regs->rip.
 * Then everything is restored (including RFLAGS.IF) and we `ret` to the
 * original address, with rsp back at the value the caller expects.
 *
 * Layout pushed (high to low): ss slot (reused for the final ret target),
 * rsp (= the return-address slot), rflags, cs, rip, orig_rax, then the
 * general registers. It lives in .text.entry, so it can never be probed. */

    .section .text.entry, "ax"
    .code64
    .global kretprobe_trampoline
kretprobe_trampoline:
    pushq $0x10             /* ss slot */
    pushq %rsp              /* = return-address slot (value before the push) */
    pushfq
    cli
    pushq $0x08             /* cs */
    pushq $0                /* rip: filled by the handler */
    pushq $-1               /* orig_rax */
    PUSH_PT_REGS_GPRS
    movq %rsp, %rdi
    /* 21 words pushed onto a 16-aligned rsp: 520 more realigns for fxsave. */
    subq $520, %rsp
    fxsave64 (%rsp)
    cld
    call kretprobe_trampoline_handler
    fxrstor64 (%rsp)
    addq $520, %rsp
    /* Final target: regs->rip into the ss slot. */
    movq 128(%rsp), %rax
    movq %rax, 160(%rsp)
    POP_PT_REGS_GPRS
    leaq 24(%rsp), %rsp     /* orig_rax, rip, cs */
    popfq                   /* restores IF */
    leaq 8(%rsp), %rsp      /* rsp slot */
    ret                     /* to the ss slot = original return address */
