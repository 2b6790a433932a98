/* The general registers of a `struct pt_regs`, saved and restored the same
 * way by the trap entry (trap.S) and the kretprobe trampoline
 * (probe_entry.S): macros only, included before both (see
 * arch/x86_64/mod.rs). PUSH_PT_REGS_GPRS pushes rdi first and r15 last, so
 * with orig_rax, rip, cs, rflags, rsp and ss already pushed above them,
 * rsp points at a `struct pt_regs` (r15 at offset 0). */

.macro PUSH_PT_REGS_GPRS
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rax
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
.endm

/* The reverse: leaves rsp at orig_rax. */
.macro POP_PT_REGS_GPRS
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rax
    popq %rcx
    popq %rdx
    popq %rsi
    popq %rdi
.endm
