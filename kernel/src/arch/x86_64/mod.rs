//! x86_64: boot, descriptor tables, interrupt entry, local APIC and IOAPIC,
//! PIT, serial ports, paging. This module and `mm` hold nearly all of the
//! kernel's `unsafe`.

mod acpi;
pub mod apic;
#[cfg(feature = "coverage")]
pub mod coverage;
pub mod cpu;
pub mod exec_mem;
pub mod gdt;
pub mod idt;
pub mod paging;
pub mod perf_timer;
pub mod pit;
mod rt;
pub mod sections;
pub mod serial;
pub mod smp;
pub mod smp_sync;
pub mod text_patch;
pub mod trap;

// Each block's files share the macros of the first one; a block is one
// piece of module asm, so the macros are defined wherever they are used.
core::arch::global_asm!(
    include_str!("long_mode.S"),
    include_str!("boot.S"),
    include_str!("ap_boot.S"),
    options(att_syntax)
);
core::arch::global_asm!(
    include_str!("pt_regs.S"),
    include_str!("trap.S"),
    include_str!("probe_entry.S"),
    options(att_syntax)
);
// The address boot.S loads into the boot CPU's GS base: CPU 0's `PerCpu`.
core::arch::global_asm!(
    ".pushsection .boot.data, \"aw\"",
    ".p2align 3",
    ".global percpu_cpu0_addr",
    "percpu_cpu0_addr:",
    ".quad {cpus}",
    ".popsection",
    cpus = sym crate::percpu::CPUS,
);
core::arch::global_asm!(
    include_str!(concat!(env!("OUT_DIR"), "/vectors.S")),
    options(att_syntax)
);

pub use cpu::{
    cpu_local_add, halt, irq_disable, irq_enable, irq_enabled, irq_restore, irq_save, rdtsc,
};
pub use trap::{regs_bytes, PtRegs};

/// Early CPU setup: segments, TSS with IST stacks, IDT.
pub fn init_early() {
    gdt::init();
    idt::init();
    smp::init();
}

/// Exit QEMU through the isa-debug-exit device (status = `code << 1 | 1`).
pub fn qemu_exit(code: u8) -> ! {
    cpu::outb(0xf4, code);
    // If the device is absent, stop here.
    loop {
        irq_disable();
        halt();
    }
}
