/* The application processors' way into long mode. `smp::boot_aps`
 * copies the bytes between ap_trampoline_start and ap_trampoline_end to
 * physical AP_TRAMPOLINE (a STARTUP IPI starts an AP there in real mode,
 * CS = AP_TRAMPOLINE >> 4, IP = 0) and fills the parameter page at
 * AP_PARAMS for each AP in turn:
 *   +0 CR3 (the kernel's page tables, below 4 GiB)  +8 stack top
 *   +16 Rust entry (ap_entry)  +24 CPU number  +32 GS base (its PerCpu)
 * The code is position-dependent on AP_TRAMPOLINE: the two far jumps and
 * the GDT pointer hold absolute addresses. It sets the same CR0/CR4/EFER
 * bits as boot.S (CR4, EFER and the 64-bit segments through the macros of
 * long_mode.S, which both expand), loads the kernel's CR3 directly (so it must run from a
 * page the kernel's tables map executable: boot_aps maps it so while APs
 * start) and jumps to Rust on its stack with GS base set. */

    .set AP_TRAMPOLINE, 0x8000
    .set AP_PARAMS, 0x9000

    .section .rodata.ap_trampoline, "a"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl AP_TRAMPOLINE + (ap_gdt_ptr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(AP_TRAMPOLINE + (ap_protected - ap_trampoline_start))

    .code32
ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    LONG_MODE_CR4
    movl AP_PARAMS, %eax
    movl %eax, %cr3
    LONG_MODE_EFER
    /* CR0: PG | WP | MP | PE, EM clear */
    movl %cr0, %eax
    andl $~(1 << 2), %eax
    orl $((1 << 31) | (1 << 16) | (1 << 1) | 1), %eax
    movl %eax, %cr0
    ljmp $0x18, $(AP_TRAMPOLINE + (ap_long - ap_trampoline_start))

    .code64
ap_long:
    LONG_MODE_SEGMENTS
    LONG_MODE_GS_BASE AP_PARAMS+32
    movq AP_PARAMS + 8, %rsp
    movq AP_PARAMS + 24, %rdi
    movq AP_PARAMS + 16, %rax
    xorl %ebp, %ebp
    /* As if called: the ABI wants rsp + 8 aligned to 16 at entry. */
    pushq $0
    jmpq *%rax

    .p2align 3
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
    .quad 0x00AF9A000000FFFF    /* 0x18: 64-bit code */
ap_gdt_end:
ap_gdt_ptr:
    .word ap_gdt_end - ap_gdt - 1
    .long AP_TRAMPOLINE + (ap_gdt - ap_trampoline_start)
ap_trampoline_end:
    .code64
