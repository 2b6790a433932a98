//! GDT and TSS, one pair per CPU. Each IST stack serves one class of
//! vectors (see trap.S); every CPU has its own four, since two CPUs may
//! take the same vector at once.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

use crate::percpu::MAX_CPUS;

/// IST index (1-based in the IDT, 0-based in the TSS) of the entry stack
/// used by every vector that moves its frame to the interrupted stack.
pub const IST_ENTRY: u16 = 1;
/// IST for the double fault.
pub const IST_DOUBLE_FAULT: u16 = 2;
/// IST for page faults (which must work on a broken stack).
pub const IST_PAGE_FAULT: u16 = 3;
/// IST for NMI and machine check.
pub const IST_NMI: u16 = 4;

/// Bytes of each IST stack; `trap.S` (`IST_STACK_SIZE`) tells a nested
/// entry on an IST stack by it, so the two must agree.
const IST_SIZE: usize = 16 * 1024;
const IST_COUNT: usize = 4;

#[repr(C, align(16))]
struct Stack([u8; IST_SIZE]);

/// The boot CPU's IST stacks (it sets up before the heap exists).
static mut BSP_IST_STACKS: [Stack; IST_COUNT] = [const { Stack([0; IST_SIZE]) }; IST_COUNT];
static mut BSP_TSS: TaskStateSegment = TaskStateSegment::new();
static mut BSP_GDT: GlobalDescriptorTable = GlobalDescriptorTable::new();

/// Base of each CPU's block of IST stacks (IST `i` at `base + (i-1) *
/// IST_SIZE`), for [`ist_range`].
static IST_BASE: [AtomicU64; MAX_CPUS as usize] = [const { AtomicU64::new(0) }; MAX_CPUS as usize];

/// This CPU's IST stack `ist`, for the kprobe engine's "am I on an entry
/// stack" checks and for diagnostics.
#[allow(dead_code)] // diagnostics
pub fn ist_range(ist: u16) -> (u64, u64) {
    let cpu = crate::percpu::cpu_id() as usize;
    let base = IST_BASE[cpu].load(Ordering::Relaxed) + (ist as u64 - 1) * IST_SIZE as u64;
    (base, base + IST_SIZE as u64)
}

/// Fill `tss` with the stacks at `ist_base` and load `gdt` + `tss`.
///
/// # Safety
/// Both must live forever at their address and belong to this CPU alone;
/// `ist_base` must be `IST_COUNT` stacks of memory of this CPU alone.
unsafe fn load(
    gdt: &'static mut GlobalDescriptorTable,
    tss: &'static mut TaskStateSegment,
    ist_base: u64,
) {
    for i in 0..IST_COUNT {
        let top = ist_base + ((i + 1) * IST_SIZE) as u64;
        tss.interrupt_stack_table[i] = VirtAddr::new(top);
    }
    let tss: &'static TaskStateSegment = tss;
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    let gdt: &'static GlobalDescriptorTable = gdt;
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded: a 64-bit code
    // segment, a data segment and an available TSS.
    unsafe {
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_sel);
    }
}

/// Load the boot CPU's GDT and TSS.
pub fn init() {
    // SAFETY: runs once on the boot CPU, before interrupts are enabled and
    // before any other code touches its TSS/GDT; the statics are never
    // moved or touched again.
    unsafe {
        let base = core::ptr::addr_of!(BSP_IST_STACKS) as u64;
        IST_BASE[0].store(base, Ordering::Relaxed);
        load(
            &mut *core::ptr::addr_of_mut!(BSP_GDT),
            &mut *core::ptr::addr_of_mut!(BSP_TSS),
            base,
        );
    }
}

/// Load a GDT and TSS of its own on application processor `cpu`, with
/// IST stacks from the heap (never freed: CPUs do not go offline).
pub fn init_ap(cpu: u32) {
    let stacks: &'static mut [Stack] = Box::leak(
        (0..IST_COUNT)
            .map(|_| Stack([0; IST_SIZE]))
            .collect::<alloc::vec::Vec<_>>()
            .into_boxed_slice(),
    );
    let base = stacks.as_ptr() as u64;
    IST_BASE[cpu as usize].store(base, Ordering::Relaxed);
    let gdt = Box::leak(Box::new(GlobalDescriptorTable::new()));
    let tss = Box::leak(Box::new(TaskStateSegment::new()));
    // SAFETY: all three were leaked just now for this CPU alone.
    unsafe { load(gdt, tss, base) };
}
