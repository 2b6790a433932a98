//! GDT and TSS. Each IST stack serves one class of vectors (see trap.S).

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST index (1-based in the IDT, 0-based in the TSS) of the entry stack
/// used by every vector that moves its frame to the interrupted stack.
pub const IST_ENTRY: u16 = 1;
/// IST for the double fault.
pub const IST_DOUBLE_FAULT: u16 = 2;
/// IST for page faults (which must work on a broken stack).
pub const IST_PAGE_FAULT: u16 = 3;
/// IST for NMI and machine check.
pub const IST_NMI: u16 = 4;

const IST_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_SIZE]);

static mut IST_STACKS: [Stack; 4] = [const { Stack([0; IST_SIZE]) }; 4];
static mut TSS: TaskStateSegment = TaskStateSegment::new();
static mut GDT: GlobalDescriptorTable = GlobalDescriptorTable::new();

/// Top of an IST stack, for the kprobe engine's "am I on an entry stack"
/// checks and for diagnostics.
pub fn ist_range(ist: u16) -> (u64, u64) {
    // SAFETY: only the address is taken.
    let base = unsafe { core::ptr::addr_of!(IST_STACKS[(ist - 1) as usize]) } as u64;
    (base, base + IST_SIZE as u64)
}

/// Load the GDT and TSS. Called once on the boot CPU.
pub fn init() {
    // SAFETY: runs once, before interrupts are enabled and before any
    // other code touches TSS/GDT; the statics are never moved afterwards.
    unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        for i in 0..4u16 {
            let (_, top) = ist_range(i + 1);
            tss.interrupt_stack_table[i as usize] = VirtAddr::new(top);
        }
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(&*core::ptr::addr_of!(TSS)));
        gdt.load();
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_sel);
        let _: SegmentSelector = tss_sel;
    }
}
