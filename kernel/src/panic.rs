//! Panic and fatal-exception reports: message, registers and a symbolized
//! frame-pointer backtrace on the console, then exit QEMU with a distinct
//! status so the host can classify the outcome.

use crate::arch::{self, PtRegs};
use crate::kprintln;
use core::sync::atomic::{AtomicU32, Ordering};
use ktrace_abi::vm::{EXIT_EXCEPTION, EXIT_PANIC};

const MAX_FRAMES: usize = 32;

/// CPU writing the panic report (`u32::MAX`: none).
static PANIC_CPU: AtomicU32 = AtomicU32::new(u32::MAX);

/// Who reports: the first CPU to panic stops the others (NMI) and writes
/// the report; `false` means this CPU panicked again while reporting.
/// Another CPU that panics meanwhile stops here for good, so the console
/// carries one whole report.
fn claim_report() -> bool {
    let me = crate::percpu::cpu_id();
    match PANIC_CPU.compare_exchange(u32::MAX, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            arch::smp::stop_other_cpus();
            crate::console::enter_panic_mode();
            true
        }
        Err(cpu) if cpu == me => false,
        Err(_) => loop {
            arch::irq_disable();
            arch::halt();
        },
    }
}

/// Whether `rbp` can be a frame of ours: aligned and inside mapped RAM.
fn plausible_frame(rbp: u64) -> bool {
    rbp.is_multiple_of(8)
        && (0x1000..(4 << 30)).contains(&rbp)
        && arch::paging::translate(rbp).is_some()
        && arch::paging::translate(rbp + 8).is_some()
}

fn print_frame(i: usize, addr: u64) {
    match crate::ksyms::lookup(addr) {
        Some((sym, off)) => kprintln!("  #{i:<2} {addr:#018x} {}+{off:#x}", sym.name),
        None => kprintln!("  #{i:<2} {addr:#018x} ?"),
    }
}

/// Print a backtrace starting at `rip` with frame pointer `rbp`.
pub fn backtrace(rip: Option<u64>, mut rbp: u64) {
    kprintln!("backtrace:");
    let mut i = 0;
    if let Some(rip) = rip {
        print_frame(i, rip);
        i += 1;
    }
    while i < MAX_FRAMES && plausible_frame(rbp) {
        let read = crate::arch::text_patch::read_u64_if_mapped;
        let (Some(next), Some(ret)) = (read(rbp), read(rbp + 8)) else {
            break;
        };
        if ret == 0 {
            break;
        }
        // Return addresses point after the call; show the call itself.
        print_frame(i, ret.wrapping_sub(1));
        i += 1;
        if next <= rbp {
            break;
        }
        rbp = next;
    }
}

fn dump_registers(r: &PtRegs) {
    kprintln!("registers:");
    kprintln!(
        "  rip {:#018x} rsp {:#018x} rflags {:#010x}",
        r.rip,
        r.rsp,
        r.eflags
    );
    kprintln!(
        "  rax {:#018x} rbx {:#018x} rcx {:#018x}",
        r.rax,
        r.rbx,
        r.rcx
    );
    kprintln!(
        "  rdx {:#018x} rsi {:#018x} rdi {:#018x}",
        r.rdx,
        r.rsi,
        r.rdi
    );
    kprintln!(
        "  rbp {:#018x} r8  {:#018x} r9  {:#018x}",
        r.rbp,
        r.r8,
        r.r9
    );
    kprintln!(
        "  r10 {:#018x} r11 {:#018x} r12 {:#018x}",
        r.r10,
        r.r11,
        r.r12
    );
    kprintln!(
        "  r13 {:#018x} r14 {:#018x} r15 {:#018x}",
        r.r13,
        r.r14,
        r.r15
    );
    kprintln!(
        "  cs {:#x} ss {:#x} cr2 {:#018x} cr3 {:#018x}",
        r.cs,
        r.ss,
        arch::cpu::cr2(),
        arch::cpu::cr3()
    );
}

fn exception_name(v: u8) -> &'static str {
    match v {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "non-maskable interrupt",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating point (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating point (#XM)",
        _ => "unknown exception",
    }
}

/// Report an unhandled CPU exception and stop the machine.
pub fn fatal_exception(regs: &PtRegs, vector: u8) -> ! {
    if !claim_report() {
        arch::qemu_exit(EXIT_EXCEPTION);
    }
    kprintln!();
    kprintln!(
        "FATAL EXCEPTION: {} (vector {}), error code {:#x}, cpu {}, task {} (pid {})",
        exception_name(vector),
        vector,
        regs.orig_rax,
        crate::percpu::cpu_id(),
        core::str::from_utf8(&crate::percpu::this_cpu().current_comm())
            .unwrap_or("?")
            .trim_end_matches('\0'),
        crate::task::current_pid()
    );
    if vector == 14 {
        let access = if regs.orig_rax & 2 != 0 {
            "write"
        } else {
            "read"
        };
        let fetch = if regs.orig_rax & 16 != 0 {
            " (instruction fetch)"
        } else {
            ""
        };
        let why = if regs.orig_rax & 1 != 0 {
            "protection violation"
        } else {
            "page not present"
        };
        kprintln!("  {access}{fetch} at {:#018x}: {why}", arch::cpu::cr2());
    }
    dump_registers(regs);
    backtrace(Some(regs.rip), regs.rbp);
    kprintln!("---[ end of report ]---");
    arch::qemu_exit(EXIT_EXCEPTION)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    arch::irq_disable();
    if !claim_report() {
        // A panic while reporting a panic: stop at once.
        arch::qemu_exit(EXIT_PANIC);
    }
    kprintln!();
    kprintln!("KERNEL PANIC: {}", info.message());
    if let Some(loc) = info.location() {
        kprintln!("  at {}:{}:{}", loc.file(), loc.line(), loc.column());
    }
    kprintln!(
        "  cpu {}, task pid {}, uptime {} ns",
        crate::percpu::cpu_id(),
        crate::task::current_pid(),
        crate::time::now_ns()
    );
    backtrace(None, arch::cpu::frame_pointer());
    kprintln!("---[ end of report ]---");
    arch::qemu_exit(EXIT_PANIC)
}
