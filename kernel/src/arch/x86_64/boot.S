/* PVH entry: QEMU jumps here in 32-bit protected mode, paging off, with
 * %ebx = physical address of the hvm_start_info structure. We enable SSE
 * (the prebuilt core uses xmm registers), identity-map the first 4 GiB with
 * 2 MiB pages, enter long mode and call kernel_main(start_info). The Rust
 * side replaces these tables with W^X ones early in boot. */

    .section .note.pvh, "a"
    .p2align 2
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_entry

    .section .boot.text, "ax"
    .code32
    .global pvh_entry
pvh_entry:
    cli
    cld
    movl %ebx, pvh_start_info_paddr
    movl $boot_stack_top, %esp

    /* SSE: clear CR0.EM, set CR0.MP; CR4.PAE | OSFXSR | OSXMMEXCPT. */
    movl %cr0, %eax
    andl $~(1 << 2), %eax
    orl $(1 << 1), %eax
    movl %eax, %cr0
    LONG_MODE_CR4

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories. */
    movl $boot_pdpt, %eax
    orl $3, %eax
    movl %eax, boot_pml4
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jne 1b
    /* 2048 x 2 MiB pages: present | writable | huge. */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 2b
    movl $boot_pml4, %eax
    movl %eax, %cr3

    LONG_MODE_EFER

    /* CR0.PG | CR0.WP | CR0.PE */
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16) | 1), %eax
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $boot_long_mode

    .code64
boot_long_mode:
    LONG_MODE_SEGMENTS
    movabsq $boot_stack_top, %rsp
    /* GS base -> CPU 0's PerCpu (this_cpu() reads through it). */
    LONG_MODE_GS_BASE percpu_cpu0_addr
    xorl %ebp, %ebp
    movl pvh_start_info_paddr, %edi
    call kernel_main
3:  hlt
    jmp 3b

    .section .boot.data, "aw"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .global pvh_start_info_paddr
pvh_start_info_paddr:
    .long 0

    .section .bss.boot, "aw", @nobits
    .p2align 12
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 65536
    .global boot_stack_top
boot_stack_top:
