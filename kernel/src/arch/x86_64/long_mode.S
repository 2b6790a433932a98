/* The way into long mode that the boot CPU (boot.S) and the application
 * processors (ap_boot.S) share: macros only, no code of its own. The two
 * entries cannot share one routine: the APs' copy runs from a trampoline
 * page at a fixed low address, the boot CPU's in place; so each expands
 * these where it needs them. Included before both (see arch/x86_64/mod.rs). */

/* 32-bit code: CR4.PAE | OSFXSR | OSXMMEXCPT (paging with PAE, SSE). */
.macro LONG_MODE_CR4
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4
.endm

/* 32-bit code: EFER.LME | EFER.NXE (long mode once paging is on, NX pages). */
.macro LONG_MODE_EFER
    movl $0xC0000080, %ecx
    rdmsr
    orl $((1 << 8) | (1 << 11)), %eax
    wrmsr
.endm

/* The first instructions in 64-bit mode: the data segment (GDT selector
 * 0x10) in ds, es and ss, null fs and gs. */
.macro LONG_MODE_SEGMENTS
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
.endm

/* GS base = the 64-bit value at address `percpu` (below 4 GiB): this CPU's
 * PerCpu, which this_cpu() reads through gs. Write the address without
 * spaces (`AP_PARAMS+32`): a space would split the macro argument. */
.macro LONG_MODE_GS_BASE percpu
    movl $0xC0000101, %ecx
    movl \percpu, %eax
    movl \percpu + 4, %edx
    wrmsr
.endm
