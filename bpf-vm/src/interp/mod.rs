//! The interpreter: runs an [`Executable`] (a pre-decoded [`Program`]) in
//! one of two modes.
//!
//! - **Checked** ([`run_checked`], [`Vm::run_checked`]): every load, store and
//!   atomic is checked against the legal regions (the live stack frames, the
//!   context, the embedder's [`MemRegion`]s, regions helpers [`HelperMem::allow`]),
//!   reads of stack bytes not written in the current frame are reported, and
//!   the first fault is returned as a [`RunError`] naming the instruction.
//!   Safe for any program; the verifier's soundness oracle.
//! - **Fast** ([`Vm::run_fast`]): no per-access checks. Only for programs the
//!   verifier accepted; see its `# Safety` section for the contract.
//!
//! Both modes count executed instructions against a budget, charged one
//! straight-line run (up to the next jump, local call or exit) at a time:
//! a run is only started when the budget covers all of it, so exhaustion is
//! reported at the first instruction of the run that would exceed it, and
//! no instruction ever executes beyond the budget. Both modes also give every
//! bpf-to-bpf call frame its own 512-byte stack (up to [`MAX_CALL_FRAMES`])
//! and restore `r6`-`r9` and `r10` on return. Division by zero yields 0 and
//! modulo by zero leaves the dividend, as RFC 9669 says.
//!
//! At entry `r1` holds the context address, `r2` its length, `r10` the top
//! of the first frame's stack; the result is `r0` at the final `exit`.
//!
//! [`Program`]: crate::insn::Program

pub(crate) mod exe;
mod mem;

use alloc::vec::Vec;
use core::fmt;

pub use exe::{Executable, PrepareError};
pub use mem::{HelperMem, MemRegion, MAX_CALL_FRAMES};

use crate::insn::{AtomicOp, JmpCond, Size, STACK_SIZE};
use exe::Op;
use mem::{Memory, Region};

/// Why a helper call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelperError {
    /// No helper has this id.
    Unknown(u32),
    /// A pointer argument does not point at `len` accessible bytes.
    BadPointer {
        /// Address passed.
        addr: u64,
        /// Bytes the helper needed.
        len: usize,
    },
    /// The helper failed for its own reason.
    Failed(&'static str),
}

impl fmt::Display for HelperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HelperError::Unknown(id) => write!(f, "unknown helper {id}"),
            HelperError::BadPointer { addr, len } => {
                write!(f, "bad pointer argument {addr:#x} ({len} bytes)")
            }
            HelperError::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// The helper functions a program may call, by Linux helper id.
pub trait Helpers {
    /// Calls helper `id` with `r1..r5`; the result goes to `r0`.
    ///
    /// For the ids the platform table declares never abort a run
    /// (`ktrace_bpf_platform::helper::Helper::aborts` false, e.g.
    /// `bpf_map_lookup_elem`) and a verified program, the result is always
    /// `Ok`: the JIT does not test for an error after those calls.
    fn call(
        &mut self,
        id: u32,
        args: [u64; 5],
        mem: &mut HelperMem<'_>,
    ) -> Result<u64, HelperError>;
}

/// A helper implementation: the embedder's state, guest memory access, `r1..r5`.
pub type HelperFn<C> = fn(&mut C, &mut HelperMem<'_>, [u64; 5]) -> Result<u64, HelperError>;

/// Helpers as a table indexed by id, over an embedder state `C` (maps, the
/// current task, an event buffer...).
pub struct HelperTable<C> {
    /// The state every helper receives.
    pub env: C,
    fns: Vec<Option<HelperFn<C>>>,
}

impl<C> HelperTable<C> {
    /// An empty table over `env`.
    pub fn new(env: C) -> HelperTable<C> {
        HelperTable {
            env,
            fns: Vec::new(),
        }
    }

    /// Registers (or replaces) helper `id`.
    pub fn register(&mut self, id: u32, f: HelperFn<C>) -> &mut Self {
        let i = id as usize;
        if self.fns.len() <= i {
            self.fns.resize(i + 1, None);
        }
        self.fns[i] = Some(f);
        self
    }

    /// Whether helper `id` is registered.
    pub fn contains(&self, id: u32) -> bool {
        matches!(self.fns.get(id as usize), Some(Some(_)))
    }
}

impl<C> Helpers for HelperTable<C> {
    #[inline(always)]
    fn call(
        &mut self,
        id: u32,
        args: [u64; 5],
        mem: &mut HelperMem<'_>,
    ) -> Result<u64, HelperError> {
        match self.fns.get(id as usize) {
            Some(Some(f)) => f(&mut self.env, mem, args),
            _ => Err(HelperError::Unknown(id)),
        }
    }
}

/// No helpers at all: every call fails with [`HelperError::Unknown`].
pub struct NoHelpers;

impl Helpers for NoHelpers {
    fn call(&mut self, id: u32, _: [u64; 5], _: &mut HelperMem<'_>) -> Result<u64, HelperError> {
        Err(HelperError::Unknown(id))
    }
}

/// What went wrong during a run (see [`RunError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunErrorKind {
    /// An access outside every legal region.
    OutOfBounds {
        /// First byte accessed.
        addr: u64,
        /// Access size.
        len: u64,
        /// Whether it was a write.
        write: bool,
    },
    /// A write to a read-only region.
    ReadOnly {
        /// First byte written.
        addr: u64,
        /// Access size.
        len: u64,
    },
    /// A read of a stack byte not written since its frame was entered.
    UninitStackRead {
        /// The first such byte.
        addr: u64,
    },
    /// More instructions would run than the budget allows.
    BudgetExhausted {
        /// The budget.
        budget: u64,
    },
    /// A helper call failed.
    Helper {
        /// Helper id.
        id: u32,
        /// Why.
        err: HelperError,
    },
    /// An atomic operation on an address not aligned to its size.
    MisalignedAtomic {
        /// Address accessed.
        addr: u64,
        /// Access size.
        len: u64,
    },
    /// A bpf-to-bpf call would exceed [`MAX_CALL_FRAMES`].
    CallDepth,
    /// Execution ran past the last instruction.
    FellOffEnd,
}

/// A run-time fault at instruction `pc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunError {
    /// Slot index of the faulting instruction.
    pub pc: usize,
    /// What went wrong.
    pub kind: RunErrorKind,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instruction {}: ", self.pc)?;
        match self.kind {
            RunErrorKind::OutOfBounds { addr, len, write } => write!(
                f,
                "out-of-bounds {} of {len} bytes at {addr:#x}",
                if write { "write" } else { "read" }
            ),
            RunErrorKind::ReadOnly { addr, len } => {
                write!(f, "write of {len} bytes to read-only memory at {addr:#x}")
            }
            RunErrorKind::UninitStackRead { addr } => {
                write!(f, "read of uninitialised stack byte at {addr:#x}")
            }
            RunErrorKind::BudgetExhausted { budget } => {
                write!(f, "instruction budget of {budget} exhausted")
            }
            RunErrorKind::Helper { id, err } => write!(f, "helper {id}: {err}"),
            RunErrorKind::MisalignedAtomic { addr, len } => {
                write!(f, "misaligned atomic access of {len} bytes at {addr:#x}")
            }
            RunErrorKind::CallDepth => {
                write!(f, "call depth exceeds {MAX_CALL_FRAMES} frames")
            }
            RunErrorKind::FellOffEnd => write!(f, "execution fell off the end of the program"),
        }
    }
}

impl core::error::Error for RunError {}

/// A reusable interpreter: owns the stack so repeated runs do not allocate.
pub struct Vm {
    mem: Memory,
    frames: Vec<Frame>,
    executed: u64,
}

#[derive(Clone, Copy)]
struct Frame {
    ret: usize,
    saved: [u64; 4],
}

impl Default for Vm {
    fn default() -> Self {
        Vm::new()
    }
}

impl Vm {
    /// A VM with stacks for [`MAX_CALL_FRAMES`] frames.
    pub fn new() -> Vm {
        Vm {
            mem: Memory::new(),
            frames: Vec::with_capacity(MAX_CALL_FRAMES),
            executed: 0,
        }
    }

    /// Number of instructions the last run was charged: exact for a run that
    /// reached `exit`; after a fault, the charge includes the rest of the
    /// straight-line run the fault interrupted.
    pub fn executed(&self) -> u64 {
        self.executed
    }

    /// Runs `exe` in checked mode: any program, any input, never undefined
    /// behaviour; faults come back as [`RunError`]. `ctx` is readable and
    /// writable; `regions` are the other memory the program may touch.
    pub fn run_checked<H: Helpers>(
        &mut self,
        exe: &Executable,
        ctx: &mut [u8],
        helpers: &mut H,
        regions: &[MemRegion<'_>],
        budget: u64,
    ) -> Result<u64, RunError> {
        self.mem.checked = true;
        self.mem.regions.clear();
        let ctx_addr = ctx.as_mut_ptr() as u64;
        self.mem.regions.push(Region {
            start: ctx_addr,
            len: ctx.len() as u64,
            writable: true,
        });
        for r in regions {
            self.mem.regions.push(Region {
                start: r.addr(),
                len: r.len_bytes(),
                writable: r.is_writable(),
            });
        }
        // SAFETY: checked mode validates every access against the regions
        // registered above (borrowed for the whole call) and the live stack.
        let res = unsafe { self.run::<true, H>(exe, ctx_addr, ctx.len() as u64, helpers, budget) };
        self.mem.regions.clear();
        res
    }

    /// Runs `exe` with no memory checks: the fast path for verified programs.
    ///
    /// # Safety
    /// The program must have been accepted by the verifier for a context of
    /// `ctx_len` bytes at `ctx` and the helpers in `helpers`, which means:
    /// 1. every load, store and atomic it can execute stays within the live
    ///    stack frames, the context, or memory a helper returned and keeps valid;
    /// 2. pointer arguments it passes to helpers point at the bytes the helper reads
    ///    or writes;
    /// 3. `ctx..ctx+ctx_len` is valid, writable memory for the whole run.
    ///
    /// Budget exhaustion, unknown helpers, helper failures and call depth are
    /// still reported as errors; out-of-bounds accesses are undefined behaviour.
    pub unsafe fn run_fast<H: Helpers>(
        &mut self,
        exe: &Executable,
        ctx: *mut u8,
        ctx_len: usize,
        helpers: &mut H,
        budget: u64,
    ) -> Result<u64, RunError> {
        self.mem.checked = false;
        self.mem.regions.clear();
        // SAFETY: the caller upholds the verifier contract above.
        unsafe { self.run::<false, H>(exe, ctx as u64, ctx_len as u64, helpers, budget) }
    }

    /// The run loop.
    ///
    /// Never inlined: `bpf_vm::interp::Vm::run` is where a kernel probe
    /// sees every program run (ktrace's tests of nested hits and of source
    /// paths use it), and with one caller per mode LLVM would otherwise
    /// fold it into `run_fast` or `run_checked` as the build changes
    /// around it. One call per program run costs nothing measurable.
    ///
    /// # Safety
    /// With `CHECKED = false` the caller must uphold [`Vm::run_fast`]'s contract.
    #[allow(clippy::too_many_lines)]
    #[inline(never)]
    unsafe fn run<const CHECKED: bool, H: Helpers>(
        &mut self,
        exe: &Executable,
        r1: u64,
        r2: u64,
        helpers: &mut H,
        budget: u64,
    ) -> Result<u64, RunError> {
        let ops = &exe.ops[..];
        let executed = &mut self.executed;
        let mem = &mut self.mem;
        let frames = &mut self.frames;
        frames.clear();
        mem.reset();
        mem.enter_frame(0);
        // 16 entries so `reg[x & 15]` needs no bounds check; decode
        // guarantees register numbers <= 10.
        let mut reg = [0u64; 16];
        reg[1] = r1;
        reg[2] = r2;
        reg[10] = mem.frame_pointer(0);
        let mut pc: usize = 0;
        let mut left = budget;

        macro_rules! r {
            ($x:expr) => {
                reg[($x & 15) as usize]
            };
        }
        macro_rules! fault {
            ($kind:expr) => {{
                *executed = budget - left;
                return Err(RunError { pc, kind: $kind });
            }};
        }
        macro_rules! access {
            ($addr:expr, $len:expr, $write:expr) => {
                if CHECKED {
                    if let Err(kind) = mem.check($addr, $len, $write) {
                        fault!(kind);
                    }
                }
            };
        }
        macro_rules! ldx {
            ($d:expr, $s:expr, $off:expr, $size:expr) => {{
                let a = r!($s).wrapping_add($off as i64 as u64);
                access!(a, $size.bytes() as u64, false);
                // SAFETY: checked above in checked mode; the verifier
                // contract of `run_fast` otherwise.
                r!($d) = unsafe { load($size, a) };
            }};
        }
        macro_rules! st {
            ($d:expr, $off:expr, $size:expr, $v:expr) => {{
                let a = r!($d).wrapping_add($off as i64 as u64);
                access!(a, $size.bytes() as u64, true);
                // SAFETY: as for `ldx`, for a write.
                unsafe { store($size, a, $v) };
            }};
        }
        // Entering a straight-line run at `pc`: charge all of it up front,
        // so the per-instruction path has no budget check.
        macro_rules! enter {
            () => {{
                // SAFETY: `pc` is a valid index (see the dispatch below) and
                // `run_len` has one entry per op.
                let n = unsafe { *exe.run_len.get_unchecked(pc) } as u64;
                if n > left {
                    fault!(RunErrorKind::BudgetExhausted { budget });
                }
                left -= n;
            }};
        }
        // Helper arguments, read one register at a time: a wider load merged
        // by the compiler across registers the program just wrote separately
        // would defeat store forwarding and stall every helper call.
        macro_rules! args {
            () => {{
                let r = &reg;
                // SAFETY: in-bounds reads of a live local array.
                unsafe {
                    [
                        core::ptr::read_volatile(&r[1]),
                        core::ptr::read_volatile(&r[2]),
                        core::ptr::read_volatile(&r[3]),
                        core::ptr::read_volatile(&r[4]),
                        core::ptr::read_volatile(&r[5]),
                    ]
                }
            }};
        }
        macro_rules! jump {
            ($cond:expr, $t:expr) => {{
                pc = if $cond { $t as usize } else { pc + 1 };
                enter!();
                continue;
            }};
        }

        enter!();
        loop {
            // SAFETY: `pc` is always a valid index: it starts at 0 (the
            // program is not empty), jump and call targets were checked to
            // lie inside the program when the Executable was prepared,
            // return addresses are `call pc + 1 <= len`, and sequential
            // execution past the last slot lands on the `FellOff` sentinel
            // at index `len`, which stops the loop.
            let op = unsafe { ops.get_unchecked(pc) };
            match *op {
                Op::Add64I(d, i) => r!(d) = r!(d).wrapping_add(i),
                Op::Sub64I(d, i) => r!(d) = r!(d).wrapping_sub(i),
                Op::Mul64I(d, i) => r!(d) = r!(d).wrapping_mul(i),
                Op::Div64I(d, i) => r!(d) = div64(r!(d), i),
                Op::SDiv64I(d, i) => r!(d) = sdiv64(r!(d), i),
                Op::Or64I(d, i) => r!(d) |= i,
                Op::And64I(d, i) => r!(d) &= i,
                Op::Lsh64I(d, i) => r!(d) = r!(d).wrapping_shl(i as u32),
                Op::Rsh64I(d, i) => r!(d) = r!(d).wrapping_shr(i as u32),
                Op::Mod64I(d, i) => r!(d) = mod64(r!(d), i),
                Op::SMod64I(d, i) => r!(d) = smod64(r!(d), i),
                Op::Xor64I(d, i) => r!(d) ^= i,
                Op::Mov64I(d, i) => r!(d) = i,
                Op::Arsh64I(d, i) => r!(d) = (r!(d) as i64).wrapping_shr(i as u32) as u64,
                Op::Add64R(d, s) => r!(d) = r!(d).wrapping_add(r!(s)),
                Op::Sub64R(d, s) => r!(d) = r!(d).wrapping_sub(r!(s)),
                Op::Mul64R(d, s) => r!(d) = r!(d).wrapping_mul(r!(s)),
                Op::Div64R(d, s) => r!(d) = div64(r!(d), r!(s)),
                Op::SDiv64R(d, s) => r!(d) = sdiv64(r!(d), r!(s)),
                Op::Or64R(d, s) => r!(d) |= r!(s),
                Op::And64R(d, s) => r!(d) &= r!(s),
                Op::Lsh64R(d, s) => r!(d) = r!(d).wrapping_shl(r!(s) as u32),
                Op::Rsh64R(d, s) => r!(d) = r!(d).wrapping_shr(r!(s) as u32),
                Op::Mod64R(d, s) => r!(d) = mod64(r!(d), r!(s)),
                Op::SMod64R(d, s) => r!(d) = smod64(r!(d), r!(s)),
                Op::Xor64R(d, s) => r!(d) ^= r!(s),
                Op::Mov64R(d, s) => r!(d) = r!(s),
                Op::Arsh64R(d, s) => r!(d) = (r!(d) as i64).wrapping_shr(r!(s) as u32) as u64,
                Op::Add32I(d, i) => r!(d) = (r!(d) as u32).wrapping_add(i) as u64,
                Op::Sub32I(d, i) => r!(d) = (r!(d) as u32).wrapping_sub(i) as u64,
                Op::Mul32I(d, i) => r!(d) = (r!(d) as u32).wrapping_mul(i) as u64,
                Op::Div32I(d, i) => r!(d) = div32(r!(d) as u32, i),
                Op::SDiv32I(d, i) => r!(d) = sdiv32(r!(d) as u32, i),
                Op::Or32I(d, i) => r!(d) = (r!(d) as u32 | i) as u64,
                Op::And32I(d, i) => r!(d) = (r!(d) as u32 & i) as u64,
                Op::Lsh32I(d, i) => r!(d) = (r!(d) as u32).wrapping_shl(i) as u64,
                Op::Rsh32I(d, i) => r!(d) = (r!(d) as u32).wrapping_shr(i) as u64,
                Op::Mod32I(d, i) => r!(d) = mod32(r!(d) as u32, i),
                Op::SMod32I(d, i) => r!(d) = smod32(r!(d) as u32, i),
                Op::Xor32I(d, i) => r!(d) = (r!(d) as u32 ^ i) as u64,
                Op::Mov32I(d, i) => r!(d) = i as u64,
                Op::Arsh32I(d, i) => r!(d) = (r!(d) as i32).wrapping_shr(i) as u32 as u64,
                Op::Add32R(d, s) => r!(d) = (r!(d) as u32).wrapping_add(r!(s) as u32) as u64,
                Op::Sub32R(d, s) => r!(d) = (r!(d) as u32).wrapping_sub(r!(s) as u32) as u64,
                Op::Mul32R(d, s) => r!(d) = (r!(d) as u32).wrapping_mul(r!(s) as u32) as u64,
                Op::Div32R(d, s) => r!(d) = div32(r!(d) as u32, r!(s) as u32),
                Op::SDiv32R(d, s) => r!(d) = sdiv32(r!(d) as u32, r!(s) as u32),
                Op::Or32R(d, s) => r!(d) = (r!(d) as u32 | r!(s) as u32) as u64,
                Op::And32R(d, s) => r!(d) = (r!(d) as u32 & r!(s) as u32) as u64,
                Op::Lsh32R(d, s) => r!(d) = (r!(d) as u32).wrapping_shl(r!(s) as u32) as u64,
                Op::Rsh32R(d, s) => r!(d) = (r!(d) as u32).wrapping_shr(r!(s) as u32) as u64,
                Op::Mod32R(d, s) => r!(d) = mod32(r!(d) as u32, r!(s) as u32),
                Op::SMod32R(d, s) => r!(d) = smod32(r!(d) as u32, r!(s) as u32),
                Op::Xor32R(d, s) => r!(d) = (r!(d) as u32 ^ r!(s) as u32) as u64,
                Op::Mov32R(d, s) => r!(d) = r!(s) as u32 as u64,
                Op::Arsh32R(d, s) => {
                    r!(d) = (r!(d) as i32).wrapping_shr(r!(s) as u32) as u32 as u64
                }
                Op::Neg64(d) => r!(d) = r!(d).wrapping_neg(),
                Op::Neg32(d) => r!(d) = (r!(d) as u32).wrapping_neg() as u64,
                Op::MovSx(d, s, k) => {
                    let v = r!(s);
                    r!(d) = match k {
                        0 => v as i8 as i32 as u32 as u64,
                        1 => v as i16 as i32 as u32 as u64,
                        2 => v as i8 as i64 as u64,
                        3 => v as i16 as i64 as u64,
                        _ => v as i32 as i64 as u64,
                    }
                }
                Op::Le16(d) => r!(d) = r!(d) as u16 as u64,
                Op::Le32(d) => r!(d) = r!(d) as u32 as u64,
                Op::Swap16(d) => r!(d) = (r!(d) as u16).swap_bytes() as u64,
                Op::Swap32(d) => r!(d) = (r!(d) as u32).swap_bytes() as u64,
                Op::Swap64(d) => r!(d) = r!(d).swap_bytes(),
                Op::Nop => {}
                Op::LdImm64(d, v) => {
                    r!(d) = v;
                    pc += 2;
                    continue;
                }
                Op::Ja(t) => {
                    pc = t as usize;
                    enter!();
                    continue;
                }
                Op::JEq64I(d, t, i) => jump!(r!(d) == i, t),
                Op::JNe64I(d, t, i) => jump!(r!(d) != i, t),
                Op::JGt64I(d, t, i) => jump!(r!(d) > i, t),
                Op::JLt64I(d, t, i) => jump!(r!(d) < i, t),
                Op::JEq64R(d, s, t) => jump!(r!(d) == r!(s), t),
                Op::JNe64R(d, s, t) => jump!(r!(d) != r!(s), t),
                Op::JGt64R(d, s, t) => jump!(r!(d) > r!(s), t),
                Op::JLt64R(d, s, t) => jump!(r!(d) < r!(s), t),
                Op::Jmp64I(c, d, t, i) => jump!(cond64(c, r!(d), i), t),
                Op::Jmp64R(c, d, s, t) => jump!(cond64(c, r!(d), r!(s)), t),
                Op::Jmp32I(c, d, t, i) => jump!(cond32(c, r!(d) as u32, i), t),
                Op::Jmp32R(c, d, s, t) => jump!(cond32(c, r!(d) as u32, r!(s) as u32), t),
                Op::Call(id) => {
                    let args = args!();
                    match helpers.call(id, args, &mut HelperMem::of(mem)) {
                        Ok(v) => reg[0] = v,
                        Err(err) => fault!(RunErrorKind::Helper { id, err }),
                    }
                }
                Op::CallX(s) => {
                    // An id beyond u32 names no helper (rather than wrapping onto one).
                    let id = u32::try_from(r!(s)).unwrap_or(u32::MAX);
                    let args = args!();
                    match helpers.call(id, args, &mut HelperMem::of(mem)) {
                        Ok(v) => reg[0] = v,
                        Err(err) => fault!(RunErrorKind::Helper { id, err }),
                    }
                }
                Op::CallLocal(t) => {
                    if frames.len() + 1 >= MAX_CALL_FRAMES {
                        fault!(RunErrorKind::CallDepth);
                    }
                    frames.push(Frame {
                        ret: pc + 1,
                        saved: [reg[6], reg[7], reg[8], reg[9]],
                    });
                    let depth = frames.len();
                    mem.enter_frame(depth);
                    reg[10] = mem.frame_pointer(depth);
                    pc = t as usize;
                    enter!();
                    continue;
                }
                Op::Exit => match frames.pop() {
                    None => {
                        *executed = budget - left;
                        return Ok(reg[0]);
                    }
                    Some(f) => {
                        [reg[6], reg[7], reg[8], reg[9]] = f.saved;
                        let depth = frames.len();
                        mem.depth = depth + 1;
                        reg[10] = mem.frame_pointer(depth);
                        pc = f.ret;
                        enter!();
                        continue;
                    }
                },
                Op::LdxB(d, s, off) => ldx!(d, s, off, Size::B),
                Op::LdxH(d, s, off) => ldx!(d, s, off, Size::H),
                Op::LdxW(d, s, off) => ldx!(d, s, off, Size::W),
                Op::LdxDW(d, s, off) => ldx!(d, s, off, Size::DW),
                Op::LdxSx(size, d, s, off) => {
                    let a = r!(s).wrapping_add(off as i64 as u64);
                    access!(a, size.bytes() as u64, false);
                    // SAFETY: as for `ldx`.
                    let v = unsafe { load(size, a) };
                    r!(d) = match size {
                        Size::B => v as i8 as i64 as u64,
                        Size::H => v as i16 as i64 as u64,
                        _ => v as i32 as i64 as u64,
                    };
                }
                Op::StxB(d, s, off) => st!(d, off, Size::B, r!(s)),
                Op::StxH(d, s, off) => st!(d, off, Size::H, r!(s)),
                Op::StxW(d, s, off) => st!(d, off, Size::W, r!(s)),
                Op::StxDW(d, s, off) => st!(d, off, Size::DW, r!(s)),
                Op::StB(d, off, v) => st!(d, off, Size::B, v),
                Op::StH(d, off, v) => st!(d, off, Size::H, v),
                Op::StW(d, off, v) => st!(d, off, Size::W, v),
                Op::StDW(d, off, v) => st!(d, off, Size::DW, v),
                Op::Atomic(aop, fetch, size, d, s, off) => {
                    let a = r!(d).wrapping_add(off as i64 as u64);
                    let n = size.bytes() as u64;
                    // Read-modify-write: must be both readable (initialised) and writable.
                    access!(a, n, false);
                    access!(a, n, true);
                    // Checked in both modes (atomics are rare): the host
                    // atomic instructions below need natural alignment.
                    if a % n != 0 {
                        fault!(RunErrorKind::MisalignedAtomic { addr: a, len: n });
                    }
                    let src = r!(s);
                    // SAFETY: `a..a+n` is valid and writable (checked above in
                    // checked mode, the verifier contract otherwise) and
                    // aligned to `n`; other CPUs touching the same map value
                    // do so through atomics as well, or race benignly on
                    // plain BPF stores exactly as under Linux.
                    let old = unsafe { atomic_rmw(size, a, aop, src, reg[0]) };
                    if aop == AtomicOp::CmpXchg {
                        reg[0] = old;
                    } else if fetch {
                        r!(s) = old;
                    }
                }
                // Targets are validated at preparation, so the tail slot is
                // reachable only by the (impossible) fallthrough of LdImm64.
                Op::Tail | Op::FellOff => fault!(RunErrorKind::FellOffEnd),
            }
            pc += 1;
        }
    }
}

/// Performs an atomic read-modify-write of the `size`-byte word at `a` and
/// returns its old value (zero-extended). `expected` is `r0`, compared by
/// `CmpXchg` (its low half for 32-bit words).
///
/// # Safety
/// `a..a+size` must be valid for reads and writes for the duration of the
/// call and aligned to `size`; `size` is W or DW.
#[inline(never)]
unsafe fn atomic_rmw(size: Size, a: u64, op: AtomicOp, src: u64, expected: u64) -> u64 {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
    if size == Size::W {
        // SAFETY: forwarded from the caller (valid, 4-byte aligned).
        let w = unsafe { AtomicU32::from_ptr(a as *mut u32) };
        let v = src as u32;
        (match op {
            AtomicOp::Add => w.fetch_add(v, SeqCst),
            AtomicOp::Or => w.fetch_or(v, SeqCst),
            AtomicOp::And => w.fetch_and(v, SeqCst),
            AtomicOp::Xor => w.fetch_xor(v, SeqCst),
            AtomicOp::Xchg => w.swap(v, SeqCst),
            AtomicOp::CmpXchg => match w.compare_exchange(expected as u32, v, SeqCst, SeqCst) {
                Ok(old) | Err(old) => old,
            },
        }) as u64
    } else {
        // SAFETY: forwarded from the caller (valid, 8-byte aligned).
        let w = unsafe { AtomicU64::from_ptr(a as *mut u64) };
        match op {
            AtomicOp::Add => w.fetch_add(src, SeqCst),
            AtomicOp::Or => w.fetch_or(src, SeqCst),
            AtomicOp::And => w.fetch_and(src, SeqCst),
            AtomicOp::Xor => w.fetch_xor(src, SeqCst),
            AtomicOp::Xchg => w.swap(src, SeqCst),
            AtomicOp::CmpXchg => match w.compare_exchange(expected, src, SeqCst, SeqCst) {
                Ok(old) | Err(old) => old,
            },
        }
    }
}

/// Loads `size` bytes at `a`, zero-extended.
///
/// # Safety
/// `a..a+size` must be readable.
#[inline(always)]
unsafe fn load(size: Size, a: u64) -> u64 {
    // SAFETY: forwarded from the caller.
    unsafe {
        match size {
            Size::B => u8::from_le_bytes(Memory::read::<1>(a)) as u64,
            Size::H => u16::from_le_bytes(Memory::read::<2>(a)) as u64,
            Size::W => u32::from_le_bytes(Memory::read::<4>(a)) as u64,
            Size::DW => u64::from_le_bytes(Memory::read::<8>(a)),
        }
    }
}

/// Stores the low `size` bytes of `v` at `a`.
///
/// # Safety
/// `a..a+size` must be writable.
#[inline(always)]
unsafe fn store(size: Size, a: u64, v: u64) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match size {
            Size::B => Memory::write(a, (v as u8).to_le_bytes()),
            Size::H => Memory::write(a, (v as u16).to_le_bytes()),
            Size::W => Memory::write(a, (v as u32).to_le_bytes()),
            Size::DW => Memory::write(a, v.to_le_bytes()),
        }
    }
}

/// Runs `exe` in checked mode on a fresh [`Vm`]: `r1` = `ctx`, `r2` = its
/// length. See [`Vm::run_checked`].
pub fn run_checked<H: Helpers>(
    exe: &Executable,
    ctx: &mut [u8],
    helpers: &mut H,
    regions: &[MemRegion<'_>],
    budget: u64,
) -> Result<u64, RunError> {
    Vm::new().run_checked(exe, ctx, helpers, regions, budget)
}

#[inline(always)]
fn div64(a: u64, b: u64) -> u64 {
    a.checked_div(b).unwrap_or(0)
}
#[inline(always)]
fn mod64(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        a % b
    }
}
#[inline(always)]
fn sdiv64(a: u64, b: u64) -> u64 {
    if b == 0 {
        0
    } else {
        // i64::MIN / -1 wraps to i64::MIN.
        (a as i64).wrapping_div(b as i64) as u64
    }
}
#[inline(always)]
fn smod64(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        (a as i64).wrapping_rem(b as i64) as u64
    }
}
#[inline(always)]
fn div32(a: u32, b: u32) -> u64 {
    a.checked_div(b).unwrap_or(0) as u64
}
#[inline(always)]
fn mod32(a: u32, b: u32) -> u64 {
    // Modulo by zero keeps the (32-bit, zero-extended) dividend.
    if b == 0 {
        a as u64
    } else {
        (a % b) as u64
    }
}
#[inline(always)]
fn sdiv32(a: u32, b: u32) -> u64 {
    if b == 0 {
        0
    } else {
        (a as i32).wrapping_div(b as i32) as u32 as u64
    }
}
#[inline(always)]
fn smod32(a: u32, b: u32) -> u64 {
    if b == 0 {
        a as u64
    } else {
        (a as i32).wrapping_rem(b as i32) as u32 as u64
    }
}

#[inline(always)]
fn cond64(c: JmpCond, a: u64, b: u64) -> bool {
    match c {
        JmpCond::Eq => a == b,
        JmpCond::Gt => a > b,
        JmpCond::Ge => a >= b,
        JmpCond::Set => a & b != 0,
        JmpCond::Ne => a != b,
        JmpCond::Sgt => (a as i64) > (b as i64),
        JmpCond::Sge => (a as i64) >= (b as i64),
        JmpCond::Lt => a < b,
        JmpCond::Le => a <= b,
        JmpCond::Slt => (a as i64) < (b as i64),
        JmpCond::Sle => (a as i64) <= (b as i64),
    }
}

#[inline(always)]
fn cond32(c: JmpCond, a: u32, b: u32) -> bool {
    match c {
        JmpCond::Eq => a == b,
        JmpCond::Gt => a > b,
        JmpCond::Ge => a >= b,
        JmpCond::Set => a & b != 0,
        JmpCond::Ne => a != b,
        JmpCond::Sgt => (a as i32) > (b as i32),
        JmpCond::Sge => (a as i32) >= (b as i32),
        JmpCond::Lt => a < b,
        JmpCond::Le => a <= b,
        JmpCond::Slt => (a as i32) < (b as i32),
        JmpCond::Sle => (a as i32) <= (b as i32),
    }
}

// Keep STACK_SIZE referenced for readers of this module: frames are STACK_SIZE bytes.
const _: () = assert!(STACK_SIZE == 512);
