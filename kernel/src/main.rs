//! The ktrace kernel.
//!
//! A `no_std` x86_64 kernel that QEMU boots through PVH. It brings up long
//! mode, interrupts (red-zone safe entry, Linux `pt_regs` frames), W^X page
//! tables, a heap, a TSC clock and an APIC timer, preemptive kernel tasks,
//! and a control channel to the host on COM2.
#![no_std]
#![no_main]
// `unsafe` lives in the corner below that talks to the hardware and the
// allocator, behind safe interfaces; every other module is denied it (and
// `bpf`, `block`, `trace`, `control` say so themselves as well).
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code)]
mod arch;
mod block;
mod bpf;
mod console;
mod control;
mod cpustat;
mod debug;
#[allow(unsafe_code)]
mod drivers;
mod error;
#[allow(unsafe_code)]
mod ksyms;
#[allow(unsafe_code)]
mod mm;
mod panic;
mod percpu;
// Holds no unsafe block: `nokprobe!`'s table entry (`global_asm!`) counts.
#[allow(unsafe_code)]
#[cfg(feature = "self-tests")]
mod probe_tests;
mod session;
#[cfg(feature = "self-tests")]
mod smp_tests;
#[allow(unsafe_code)]
mod sync;
#[allow(unsafe_code)]
mod task;
mod time;
mod trace;

/// Kernel version reported in the handshake.
pub const KERNEL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Rust entry point, called from `boot.S` in long mode with the physical
/// address of the PVH start info.
#[allow(unsafe_code)] // its unmangled name is the one boot.S calls
#[unsafe(no_mangle)]
pub extern "C" fn kernel_main(start_info_paddr: u32) -> ! {
    time::mark_boot();
    console::init();
    log::info!("ktrace kernel {KERNEL_VERSION} booting");
    arch::init_early();
    mm::init(u64::from(start_info_paddr));
    time::init();
    task::init();
    // The other CPUs come up now (they idle until `task::start_all_cpus`),
    // so everything sized per CPU from here on sees them all.
    arch::smp::boot_aps(task::new_cpu_stack, ap_main);
    trace::init();
    bpf::init();
    control::start();
    block::init();
    match ksyms::table() {
        Some(t) => log::info!("symbol table: {} functions", t.len()),
        None => log::warn!("no embedded symbol table: backtraces will show raw addresses"),
    }
    task::start_all_cpus();
    arch::irq_enable();
    log::info!("boot complete");
    task::idle_loop()
}

/// Rust entry point of an application processor, from the trampoline
/// (`ap_boot.S`) with its CPU number; its GS base points at its `PerCpu`.
extern "C" fn ap_main(cpu: u64) -> ! {
    let cpu = cpu as u32;
    arch::smp::init_ap_cpu(cpu);
    time::init_ap();
    task::init_ap(cpu);
    percpu::mark_online(cpu);
    arch::irq_enable();
    task::idle_loop()
}
