//! Rust side of interrupt and exception handling: the register frame,
//! dispatch to registered handlers, the exception fix-up table, and fatal
//! exception reports.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Saved registers in Linux `struct pt_regs` order (x86_64): the entry
/// code pushes this frame, and BPF kprobe programs read the same layout as
/// their context, so it is the platform description's struct (its layout
/// is asserted there, field by field).
pub use ktrace_bpf_platform::PtRegs;

/// The frame's bytes as a kprobe program reads them (what
/// `PtRegs::to_bytes` builds, without the copy: the probe path hands a
/// program the frame itself).
pub fn regs_bytes(regs: &PtRegs) -> &[u8] {
    // SAFETY: `PtRegs` is `#[repr(C)]` with 21 `u64` fields and no padding
    // (the platform crate asserts its size and every offset), so all its
    // bytes are initialised; the slice borrows `regs` for as long as it
    // lives. x86-64 is little-endian, so the bytes are the fields'
    // little-endian encodings, in order, as `to_bytes` writes them.
    #[allow(unsafe_code)]
    unsafe {
        core::slice::from_raw_parts(
            core::ptr::from_ref(regs).cast::<u8>(),
            core::mem::size_of::<PtRegs>(),
        )
    }
}

/// First vector of external interrupts.
pub const IRQ_BASE: u8 = 32;
/// The local APIC timer.
pub const TIMER_VECTOR: u8 = 32;
/// Spurious interrupts from the local APIC.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// A handler for a vector. Returns `true` if it handled the event. Handlers
/// run with interrupts disabled, on the interrupted task's stack.
pub type TrapHandler = fn(&mut PtRegs, u8) -> bool;

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static COUNTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// Install the handler for `vector` (replacing any earlier one).
pub fn set_handler(vector: u8, handler: TrapHandler) {
    HANDLERS[vector as usize].store(handler as usize, Ordering::Release);
}

/// Installs `handler` for `vector` (`None`: none) and returns the one it
/// replaces, for a self test that puts it back.
#[cfg(feature = "self-tests")]
pub fn replace_handler(vector: u8, handler: Option<TrapHandler>) -> Option<TrapHandler> {
    let raw = HANDLERS[vector as usize].swap(handler.map_or(0, |h| h as usize), Ordering::AcqRel);
    // SAFETY: only `set_handler` and this function store into HANDLERS,
    // always a `TrapHandler` function pointer or 0.
    (raw != 0).then(|| unsafe { core::mem::transmute::<usize, TrapHandler>(raw) })
}

// Its unmangled name escapes the module prefix of the blacklist; a
// breakpoint in it would trap from the trap handler until the CPU resets.
crate::nokprobe!(trap_dispatch);

/// Called by `trap.S` for every vector.
#[unsafe(no_mangle)]
extern "C" fn trap_dispatch(regs: &mut PtRegs, vector: u64) {
    // The innermost trap's frame, for `write_interrupted_stack`. A nested
    // trap (an NMI in a handler) saves and puts back the outer one. A task
    // switch at the end of an interrupt may leave another task's value
    // behind, but every trap sets its own before any handler runs.
    let outer = crate::percpu::this_cpu()
        .trap_frame
        .swap(core::ptr::from_mut(regs) as u64, Ordering::AcqRel);
    dispatch(regs, vector);
    // This CPU's, looked up again: an interrupt that switched tasks
    // returns here when its task runs again, maybe on another CPU. Putting
    // the value back through the CPU of the entry clobbered that CPU's
    // innermost frame while it handled a trap of its own, and its kprobe
    // handlers were then refused their return-address writes (kretprobes
    // missed a few hits in a million on 4 vCPUs).
    crate::percpu::this_cpu()
        .trap_frame
        .store(outer, Ordering::Release);
}

// Part of `trap_dispatch` (inlined into it, so under its NOKPROBE mark).
#[inline(always)]
fn dispatch(regs: &mut PtRegs, vector: u64) {
    let vector = vector as u8;
    COUNTS[vector as usize].fetch_add(1, Ordering::Relaxed);
    crate::cpustat::trap_taken(vector);
    let is_irq = vector >= IRQ_BASE && vector != SPURIOUS_VECTOR;
    if is_irq {
        crate::trace_event!(
            crate::trace::points::IRQ_HANDLER_ENTRY,
            ktrace_tracepoints::irq::IrqHandlerEntry {
                irq: i32::from(vector) - 32,
                vector: u32::from(vector),
                name: irq_name(vector)
            }
        );
    }
    // A TLB shootdown or a panic stop from another CPU (`smp`). One NMI
    // may stand for a shootdown and a sampling tick at once (NMIs carry no
    // source and merge while one is pending), so the sampler's handler
    // below runs as well and checks its own pending state.
    // An NMI nested in this CPU's NMI handler (see trap.S) puts back the
    // flag the outer one's handler may still read.
    let outer_had_shootdown = vector == 2 && super::smp::nmi_had_shootdown();
    let shootdown = vector == 2 && super::smp::on_nmi();
    let raw = HANDLERS[vector as usize].load(Ordering::Acquire);
    let handled = if raw != 0 {
        // SAFETY: only `set_handler` stores into HANDLERS, always a
        // `TrapHandler` function pointer.
        let handler: TrapHandler = unsafe { core::mem::transmute::<usize, TrapHandler>(raw) };
        handler(regs, vector)
    } else {
        false
    } || shootdown;
    if vector == 2 {
        super::smp::set_nmi_had_shootdown(outer_had_shootdown);
    }
    if is_irq {
        crate::trace_event!(
            crate::trace::points::IRQ_HANDLER_EXIT,
            ktrace_tracepoints::irq::IrqHandlerExit {
                irq: i32::from(vector) - 32,
                ret: i32::from(handled)
            }
        );
    }
    if vector >= IRQ_BASE {
        if vector != SPURIOUS_VECTOR {
            super::apic::eoi();
        }
        if !handled && vector != SPURIOUS_VECTOR {
            log::warn!("unhandled interrupt vector {vector}");
        }
        // The frame is not written past this point; the task switch may
        // take a while to come back.
        crate::percpu::this_cpu()
            .trap_frame
            .store(0, Ordering::Release);
        // Jump-optimised kprobes must know of every task switched out in
        // the middle of straight-line code, and keep some ranges free of
        // them (`trace::optprobe`, "Why no CPU and no task is inside").
        let rip = regs.rip;
        if !crate::trace::optprobe::no_preempt_at(rip) {
            let token = crate::trace::optprobe::preempt_enter(rip);
            crate::task::preempt_point_from_irq();
            crate::trace::optprobe::preempt_exit(token);
        }
        return;
    }
    if handled {
        return;
    }
    if (vector == 14 || vector == 13) && fixup_exception(regs) {
        return;
    }
    crate::panic::fatal_exception(regs, vector);
}

/// Name of an interrupt vector for `irq:irq_handler_entry`.
fn irq_name(vector: u8) -> [u8; 16] {
    let mut n = [0u8; 16];
    let s: &[u8] = match vector {
        TIMER_VECTOR => b"apic-timer",
        0x23 => b"com2",
        super::smp::RESCHEDULE_VECTOR => b"reschedule",
        super::smp::CALL_FUNCTION_VECTOR => b"call-function",
        super::perf_timer::SAMPLING_VECTOR => b"perf-sampling",
        _ => b"irq",
    };
    n[..s.len()].copy_from_slice(s);
    n
}

/// An exception fix-up entry: a fault at `insn` resumes at `fixup` with
/// rax = -EFAULT. Entries live in the `.ex_table` section.
#[repr(C)]
struct ExTableEntry {
    insn: u64,
    fixup: u64,
}

unsafe extern "C" {
    static __ex_table_start: ExTableEntry;
    static __ex_table_end: ExTableEntry;
}

fn ex_table() -> &'static [ExTableEntry] {
    // SAFETY: the linker script brackets `.ex_table` with these symbols;
    // the section holds only `ExTableEntry` records emitted below, and it
    // is read-only data that lives as long as the kernel.
    unsafe {
        let start = core::ptr::addr_of!(__ex_table_start);
        let end = core::ptr::addr_of!(__ex_table_end);
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// Whether a fault at `insn` has a fix-up (it resumes at a handler with
/// rax = -EFAULT instead of stopping the kernel). Such an instruction
/// must only fault at its own address: the kprobe engine never boosts it,
/// and maps a fault in its single-step copy back here.
pub fn has_fixup(insn: u64) -> bool {
    ex_table().iter().any(|e| e.insn == insn)
}

/// Fix-up addresses, for the self tests.
#[allow(dead_code)]
pub fn fixup_sites() -> impl Iterator<Item = u64> {
    ex_table().iter().map(|e| e.insn)
}

/// A fix-up entry whose landing pad lies in `lo..hi`: its faulting
/// instruction (code arrives there without a branch the decoder sees).
pub fn fixup_landing_in(lo: u64, hi: u64) -> Option<u64> {
    ex_table()
        .iter()
        .find(|e| e.fixup >= lo && e.fixup < hi)
        .map(|e| e.insn)
}

fn fixup_exception(regs: &mut PtRegs) -> bool {
    for e in ex_table() {
        if e.insn == regs.rip {
            regs.rip = e.fixup;
            regs.rax = (-14i64) as u64; // -EFAULT
            return true;
        }
    }
    false
}

/// Copy `len` bytes from `src` to `dst`, surviving a fault on the source:
/// returns `Err(())` (the BPF helpers turn it into -EFAULT) instead of
/// crashing. Used by `probe_read_kernel`.
///
/// `dst` must be valid for `len` bytes of writes; `src` may be anything.
pub fn copy_from_kernel_nofault(dst: &mut [u8], src: u64) -> Result<(), ()> {
    if dst.is_empty() {
        return Ok(());
    }
    // Refuse the null page and non-canonical addresses up front; everything
    // else is tried and any fault is caught by the fix-up table.
    let end = src.checked_add(dst.len() as u64).ok_or(())?;
    if src < 0x1000 || end > 0x0000_8000_0000_0000 {
        return Err(());
    }
    let status: u64;
    // SAFETY: `dst` is a valid writable buffer of `dst.len()` bytes (it is a
    // Rust slice). A fault while reading `src` jumps to label 3 through the
    // `.ex_table` entry, which sets rax to -EFAULT; rep movsb touches only
    // rdi/rsi/rcx.
    unsafe {
        core::arch::asm!(
            "xor eax, eax",
            "2: rep movsb",
            "3:",
            ".pushsection .ex_table, \"a\"",
            ".balign 8",
            ".quad 2b, 3b",
            ".popsection",
            inout("rdi") dst.as_mut_ptr() => _,
            inout("rsi") src => _,
            inout("rcx") dst.len() => _,
            out("rax") status,
            options(nostack),
        );
    }
    if status == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// Why a word of an interrupted stack was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotInterruptedStack(pub u64);

/// Writes `value` at `addr` on the stack the trap being handled
/// interrupted: the emulated `call` of a kprobe pushes its return address
/// (`addr` = `regs.rsp - 8`), a return probe swaps the return address a
/// function was entered with (`addr` = `regs.rsp`).
///
/// Sound because everything that could make it otherwise is checked:
/// `regs` is the frame of the innermost trap this CPU handles (the frame
/// `trap.S` built on the interrupted stack, below its red zone), and
/// `addr` is one of those two words, aligned, mapped writable, and lies in
/// the gap (under 208 bytes, see `trap.S`) between the frame and the
/// interrupted stack pointer, which no Rust reference points into.
pub fn write_interrupted_stack(
    regs: &PtRegs,
    addr: u64,
    value: u64,
) -> Result<(), NotInterruptedStack> {
    let frame = core::ptr::from_ref(regs) as u64;
    let frame_end = frame + core::mem::size_of::<PtRegs>() as u64;
    let innermost = crate::percpu::this_cpu().trap_frame.load(Ordering::Acquire);
    let is_slot = addr == regs.rsp || addr == regs.rsp.wrapping_sub(8);
    let in_gap = addr >= frame_end && addr + 8 <= frame_end + 128 + 64 + 16;
    let writable = super::paging::translate(addr)
        .is_some_and(|(_, f)| f & super::paging::flags::WRITABLE != 0);
    if frame != innermost || !is_slot || !in_gap || !addr.is_multiple_of(8) || !writable {
        return Err(NotInterruptedStack(addr));
    }
    // SAFETY: `addr` is an aligned, writable word of the interrupted
    // stack just above the current trap's frame (all checked above); only
    // the interrupted code, which is not running, uses it.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) };
    Ok(())
}
