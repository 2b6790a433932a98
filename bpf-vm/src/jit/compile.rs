//! Lowering of the interpreter's pre-decoded operations to x86-64.
//!
//! Register assignment (as Linux's x86-64 JIT, so that `r1`-`r5` already sit
//! in the System V argument registers at a helper call and `r0` in `rax`
//! where the result comes back):
//!
//! ```text
//! r0 rax   r1 rdi   r2 rsi   r3 rdx   r4 r9    r5 r8
//! r6 rbx   r7 r13   r8 r14   r9 r15   r10 rbp
//! r12: instructions left in the budget (callee-saved, so helper calls
//!      need not save it)
//! rcx, r10, r11: scratch
//! ```
//!
//! `r4` lives in `r9` rather than `rcx` (as in rbpf) so that a shift by a
//! register is `mov ecx, src; shl dst, cl`; a helper call moves it to `rcx`
//! and puts the run in `r9`, the sixth argument.
//!
//! Frames: each BPF frame is `FRAME` bytes of native stack below `rbp`: the
//! 512-byte BPF stack, then the address of the [`JitRun`] at
//! `rbp - RUN_SLOT` (so any code can reach it through the frame pointer),
//! then padding that keeps `rsp` 16-byte aligned inside every program
//! function, as helper calls need.
//!
//! Layout: the prologue saves the callee-saved registers the code writes
//! and reserves frame 0. A program without bpf-to-bpf calls falls into its
//! first slot and each `exit` jumps to the epilogue (placed before the
//! entry point), so a run is one call and one return; with local calls the
//! prologue `call`s the first slot, so `exit` is always `ret` (from a
//! bpf-to-bpf callee or from the program). A bpf-to-bpf call pushes
//! `r6`-`r10`, reserves the callee's frame and `call`s it; the call depth
//! is checked against `rsp`, since every frame takes the same room. Faults
//! jump to out-of-line stubs that record the fault in the [`JitRun`] and
//! unwind to the saved stack pointer.
//!
//! Loop heads (targets of backward jumps) start on a 64-byte boundary,
//! padded with multi-byte `nop`s: a short loop that straddles a 64-byte
//! line ran up to 25% slower on AMD Zen 4 (a hand-written helper-call loop
//! at each offset), and the padding runs at most once per entry into the
//! loop.
//!
//! Budget: the code is emitted twice (see [`super::budget`]). The fast
//! copy, entered first, checks the budget once per region (at loop heads,
//! function entries and after calls) against what the whole region can
//! need, and otherwise only subtracts; a region that may run out continues
//! in the precise copy, where every block start (slot 0, a jump or call
//! target, the slot after a control transfer) checks that the run the
//! interpreter would enter there fits, with one fused `sub`/`cmp` and `jl`.
//! Both copies keep the same count, so moving from one to the other at a
//! checkpoint needs nothing but the jump, except inside loops whose fast
//! copy keeps the register biased (`BudgetPlan::bias`: one fused check per
//! iteration), where the move, faults, `exit` and edges between biases add
//! the difference. Jumps carry no charge of their own.

use alloc::vec;
use alloc::vec::Vec;

use super::x86::{cc, ext, rm_op, shift, Asm, Label, R10, R11, R12, R13, R14, R15, R8, R9, W};

/// Native bytes of a BPF frame below `rbp` (BPF stack, run pointer, padding).
const FRAME: i32 = STACK_SIZE as i32 + 16;
/// `rbp - RUN_SLOT` holds the address of the JitRun.
const RUN_SLOT: i32 = STACK_SIZE as i32 + 8;
/// Loop heads start at a multiple of this many bytes.
const LOOP_ALIGN: usize = 64;
/// The same slot from `rsp`, which every function body runs with at
/// `rbp - FRAME - 8` (a shorter encoding than from `rbp`).
const RUN_SLOT_FROM_RSP: i32 = FRAME + 8 - RUN_SLOT;
/// The budget register.
const BUDGET: u8 = R12;
/// Native stack a bpf-to-bpf call takes: 5 saved registers, the frame and
/// the return address.
const CALL_ROOM: i32 = 5 * 8 + FRAME + 8;
use super::budget::{self, Block, BudgetPlan};
use super::calls::{self, CallPlan};
use super::slots::{self, Slot};
use super::x86::{RAX, RBP, RBX, RCX, RDI, RDX, RSI, RSP};
use super::{fault, off, InlineLookup, JitError, JitHelperFn, JitImage, JitOptions, JitRun};
use crate::insn::{AtomicOp, JmpCond, Size, STACK_SIZE};
use crate::interp::exe::Op;
use crate::interp::{Executable, MAX_CALL_FRAMES};

/// BPF register to x86 register (entries past r10 are never used: decode
/// guarantees registers <= 10).
const REG: [u8; 16] = [
    RAX, RDI, RSI, RDX, R9, R8, RBX, R13, R14, R15, RBP, R10, R10, R10, R10, R10,
];

fn x(r: u8) -> u8 {
    REG[(r & 15) as usize]
}

/// Second operand of an ALU or compare: a register or a 32-bit immediate
/// (sign-extended by 64-bit operations).
#[derive(Clone, Copy)]
enum Src {
    Reg(u8),
    Imm(i32),
}

enum Stub {
    /// The run entered at `pc` does not fit: `fix` brings the budget
    /// register back to the interpreter's count.
    Budget {
        pc: usize,
        fix: i32,
    },
    /// A fault inside a block: `fix` is its [`Block::fault_fix`].
    Fault {
        pc: usize,
        kind: u32,
        fix: i32,
    },
    /// A fault of the helper call with this id (known when compiling).
    HelperFault {
        pc: usize,
        kind: u32,
        id: u32,
        fix: i32,
    },
    Misaligned {
        pc: usize,
        len: i32,
        fix: i32,
    },
    /// A checkpoint of the fast copy whose region may exhaust the budget:
    /// undo the charge (and the bias) and continue in the precise copy.
    ToPrecise {
        fix: i32,
        to: Label,
    },
    /// A jump between blocks of different bias (see
    /// [`BudgetPlan::bias`](super::budget::BudgetPlan)): adjust, then go on.
    Rebias {
        fix: i32,
        to: Label,
    },
}

struct Compiler<'e> {
    a: Asm,
    exe: &'e Executable,
    helpers: &'e [Option<JitHelperFn>],
    /// The inline lookups replacing helper calls, by slot (sorted; one
    /// entry per call rather than a table per slot, to keep the memory the
    /// compiler takes proportional to what is inlined).
    inline: Vec<InlineLookup>,
    /// The helper table appended to the code, for `callx`.
    table: Label,
    /// Each slot's code in the fast copy (see [`super::budget`]).
    slots: Vec<Label>,
    /// Each slot's code in the precise copy (the same labels as `slots`
    /// when there is only one copy).
    precise: Vec<Label>,
    /// Compiling the fast copy.
    fast: bool,
    /// Where each block charges the budget.
    budget: BudgetPlan,
    /// The current block's [`Block::fault_fix`].
    fix: i32,
    stubs: Vec<(Label, Stub)>,
    fault_exit: Label,
    key: Option<u64>,
    calls: CallPlan,
    /// Slots some jump or call lands on: flags on entry are unknown there.
    targets: Vec<bool>,
    /// The register whose value the flags' ZF describes when the current
    /// slot starts (the previous slot's ALU result), and that result's width.
    zf: Option<(u8, W)>,
    /// No bpf-to-bpf calls: `exit` jumps to the epilogue (see
    /// [`Compiler::prologue`]).
    direct_exit: bool,
    /// Stack slots kept in registers (see [`super::slots`]).
    in_regs: Vec<Slot>,
    /// The current block's bias: the budget register is this much below
    /// the count the plan describes (fast copy only).
    bias: i32,
    /// A slot whose operation the one before it compiled together with
    /// its own (see [`Compiler::mov_add`]).
    folded: Option<usize>,
    /// A callee-saved register that holds the run's address for the whole
    /// run, so a helper call copies it instead of loading it: the native
    /// home of an `r6`-`r9` the program never writes, not holding a stack
    /// slot, in a program with helper calls and no bpf-to-bpf calls (whose
    /// callees would need it saved too).
    run_reg: Option<u8>,
}

/// Compiles `exe` (see the [module documentation](super)) for `helpers`,
/// indexed by helper id: their addresses are built into the code.
pub fn compile(
    exe: &Executable,
    options: &JitOptions,
    helpers: &[Option<JitHelperFn>],
) -> Result<JitImage, JitError> {
    compile_inlined(exe, options, helpers, &[])
}

/// [`compile`], replacing the helper calls `inline` describes with inline
/// array lookups (see [`InlineLookup`] for what the caller guarantees).
/// Entries whose slot is not a `call` of a helper id, or whose stride is
/// 2^31 or more, are ignored (the call stays a helper call).
pub fn compile_inlined(
    exe: &Executable,
    options: &JitOptions,
    helpers: &[Option<JitHelperFn>],
    inline: &[InlineLookup],
) -> Result<JitImage, JitError> {
    let n = exe.ops.len();
    if n >= (i32::MAX as usize) / 128 || helpers.len() >= 1 << 24 {
        return Err(JitError::TooLarge(n - 1));
    }
    let mut a = Asm::new();
    let slots: Vec<Label> = (0..n).map(|_| a.label()).collect();
    let budget = budget::plan(&exe.ops, &exe.run_len);
    // Two copies when the regions were analysed: the fast one checks the
    // budget once per region, the precise one at every run.
    let two = budget.region_need.iter().any(Option::is_some);
    let precise = match two {
        true => (0..n).map(|_| a.label()).collect(),
        false => slots.clone(),
    };
    let fault_exit = a.label();
    let table = a.label();
    let mut inline_at: Vec<InlineLookup> = inline
        .iter()
        .filter(|l| matches!(exe.ops.get(l.pc), Some(Op::Call(_))) && l.stride <= i32::MAX as u32)
        .copied()
        .collect();
    inline_at.sort_by_key(|l| l.pc);
    // The native homes of the r6-r9 the program never writes (nor reads:
    // the verifier refuses a read before a write) hold stack slots.
    let written = exe.ops.iter().fold(0u16, |m, op| m | calls::written(op));
    let free: Vec<u8> = (6..10usize)
        .filter(|r| written & (1 << r) == 0)
        .map(|r| REG[r])
        .collect();
    let in_regs = slots::plan(&exe.ops, &free);
    let direct_exit = !exe.ops.iter().any(|op| matches!(op, Op::CallLocal(_)));
    let helper_calls = exe.ops.iter().enumerate().any(|(pc, op)| match op {
        Op::Call(_) => !inline_at.iter().any(|l| l.pc == pc),
        Op::CallX(_) => true,
        _ => false,
    });
    let run_reg = match direct_exit && helper_calls {
        true => free
            .iter()
            .copied()
            .find(|&r| !in_regs.iter().any(|s| s.reg == r)),
        false => None,
    };
    let mut c = Compiler {
        a,
        exe,
        helpers,
        inline: inline_at,
        table,
        slots,
        budget,
        fix: 0,
        precise,
        fast: two,
        stubs: Vec::new(),
        fault_exit,
        key: options.blinding,
        calls: calls::analyse(&exe.ops),
        targets: jump_targets(&exe.ops),
        zf: None,
        direct_exit,
        in_regs,
        bias: 0,
        folded: None,
        run_reg,
    };
    let entry = c.prologue();
    let mut slot_offsets = Vec::with_capacity(n);
    for copy in 0..if two { 2 } else { 1 } {
        c.fast = two && copy == 0;
        c.bias = 0;
        c.folded = None;
        for pc in 0..n {
            let block = c.budget.blocks[pc];
            if block.is_some() {
                // Falling into a block of another bias.
                let bias = c.bias_at(pc);
                let falls = pc > 0 && !matches!(c.exe.ops[pc - 1], Op::Ja(_) | Op::Exit);
                if falls {
                    fix_budget(&mut c.a, c.bias - bias);
                }
                c.bias = bias;
            }
            if copy == 0 && block.is_some() && c.budget.loop_heads[pc] {
                c.a.align_nop(LOOP_ALIGN);
            }
            let l = c.slot(pc);
            c.a.bind(l);
            if copy == 0 {
                slot_offsets.push(c.a.pos() as u32);
            }
            if let Some(block) = block {
                c.enter_block(pc, block);
            }
            if c.folded == Some(pc) {
                continue;
            }
            let after_folded = pc > 1 && c.folded == Some(pc - 1);
            c.zf = match pc > 0 && !c.targets[pc] && block.is_none() && !after_folded {
                true => sets_zf(&c.exe.ops[pc - 1]),
                false => None,
            };
            c.op(pc);
        }
    }
    c.emit_stubs();
    if exe.ops.iter().any(|op| matches!(op, Op::CallX(_))) {
        c.a.align(8);
        c.a.bind(table);
        for f in helpers {
            c.a.data64(f.map_or(0, |f| f as usize as u64));
        }
    }
    let code = c.a.finish().map_err(|_| JitError::Internal)?;
    slot_offsets.truncate(n - 1);
    Ok(JitImage {
        code,
        entry,
        slot_offsets,
    })
}

/// Slots a jump or local call lands on.
fn jump_targets(ops: &[Op]) -> Vec<bool> {
    let mut targets = vec![false; ops.len()];
    for op in ops {
        let target = match *op {
            Op::CallLocal(t) => Some(t as usize),
            _ => op.jump_target(),
        };
        let Some(t) = target else {
            continue;
        };
        if let Some(slot) = targets.get_mut(t) {
            *slot = true;
        }
    }
    targets
}

/// For an operation compiled to a single x86 `add`/`sub`/`and`/`or`/`xor`
/// into its destination as the last instruction: that register and the
/// width, since ZF then says whether the result is zero (a 32-bit result is
/// the whole zero-extended register, a 64-bit one only for 64-bit tests).
fn sets_zf(op: &Op) -> Option<(u8, W)> {
    use Op::*;
    match *op {
        Add64I(d, _)
        | Sub64I(d, _)
        | Or64I(d, _)
        | And64I(d, _)
        | Xor64I(d, _)
        | Add64R(d, _)
        | Sub64R(d, _)
        | Or64R(d, _)
        | And64R(d, _)
        | Xor64R(d, _) => Some((d, W::Q)),
        Add32I(d, _)
        | Sub32I(d, _)
        | Or32I(d, _)
        | And32I(d, _)
        | Xor32I(d, _)
        | Add32R(d, _)
        | Sub32R(d, _)
        | Or32R(d, _)
        | And32R(d, _)
        | Xor32R(d, _) => Some((d, W::D)),
        _ => None,
    }
}

impl Compiler<'_> {
    /// The way in and out of the program. Without bpf-to-bpf calls every
    /// `exit` is the program's own, so it jumps to the epilogue and the
    /// prologue falls into slot 0: one call into the code (the embedder's)
    /// and one `ret` out of it. With local calls an `exit` may end a
    /// callee, so every `exit` is a `ret` and the prologue `call`s slot 0.
    /// Returns the entry point's offset.
    fn prologue(&mut self) -> usize {
        let direct = self.direct_exit;
        // The native callee-saved registers the code writes: rbp (r10, set
        // below), r12 (the budget) and those of r6-r9 that some operation
        // writes (`calls::written`; a local call saves what its callee
        // writes itself). Pushed and popped in one order, so a fault's
        // unwind through `SAVED_RSP` pops what was pushed.
        let saved = self.saved_regs();
        if direct {
            self.epilogue(&saved);
        }
        let entry = self.a.pos();
        let a = &mut self.a;
        for &r in &saved {
            a.push(r);
        }
        a.store(8, RDX, off::SAVED_RSP, RSP);
        // Inside a function at depth d, rsp = saved - FRAME - 8 - d * CALL_ROOM;
        // a call from depth MAX_CALL_FRAMES - 1 or deeper is refused.
        let limit = FRAME + 8 + CALL_ROOM * (MAX_CALL_FRAMES as i32 - 1);
        a.lea(R11, RSP, -limit);
        a.store(8, RDX, off::STACK_LIMIT, R11);
        a.load(8, BUDGET, RDX, off::LEFT);
        a.mov_rr(W::Q, RBP, RSP);
        // The body runs 8 bytes further down, where a `call` of slot 0
        // leaves it (its return address), in both forms.
        match direct {
            true => a.alu_ri(W::Q, ext::SUB, RSP, FRAME + 8),
            false => a.alu_ri(W::Q, ext::SUB, RSP, FRAME),
        }
        a.store(8, RBP, -RUN_SLOT, RDX);
        if let Some(r) = self.run_reg {
            a.mov_rr(W::Q, r, RDX);
        }
        // The other registers are not zeroed: the verifier refuses a read
        // of a register before it is written on any path ("R3 !read_ok"),
        // helper arguments included, so no program sees what they held.
        if !direct {
            let first = self.slots[0];
            self.a.call(first);
            self.epilogue(&saved);
        }
        // Direct: falls through into slot 0, emitted next.
        entry
    }

    /// The native callee-saved registers [`Compiler::prologue`] saves, in
    /// push order: an even number of them, so that `rsp` stays 16-byte
    /// aligned in the body as helper calls need (the embedder's call left
    /// it 8 off; each frame and a body's return address are multiples of
    /// 16 together).
    fn saved_regs(&self) -> Vec<u8> {
        let written = self
            .exe
            .ops
            .iter()
            .fold(0u16, |m, op| m | calls::written(op));
        let writes = |r: u8| match REG[6..10].iter().position(|&x| x == r) {
            Some(i) => {
                written & (1 << (6 + i)) != 0
                    || self.in_regs.iter().any(|s| s.reg == r)
                    || self.run_reg == Some(r)
            }
            None => true,
        };
        let mut keep = [RBX, RBP, R12, R13, R14, R15].map(writes);
        if keep.iter().filter(|&&k| k).count() % 2 == 1 {
            // One more (an unwritten one: never all six are kept here).
            if let Some(k) = keep.iter_mut().find(|k| !**k) {
                *k = true;
            }
        }
        [RBX, RBP, R12, R13, R14, R15]
            .into_iter()
            .zip(keep)
            .filter_map(|(r, k)| k.then_some(r))
            .collect()
    }

    /// Normal exit and faults: rbp is frame 0's or the faulting frame's,
    /// either way below it is the run pointer.
    fn epilogue(&mut self, saved: &[u8]) {
        let fe = self.fault_exit;
        let a = &mut self.a;
        a.bind(fe);
        a.load(8, R11, RBP, -RUN_SLOT);
        a.store(8, R11, off::LEFT, BUDGET);
        a.load(8, RSP, R11, off::SAVED_RSP);
        for &r in saved.iter().rev() {
            a.pop(r);
        }
        a.ret();
    }

    /// The start of a block: checks that the run the interpreter would
    /// enter here fits and subtracts the block's charge (see
    /// [`super::budget`]).
    fn enter_block(&mut self, pc: usize, block: Block) {
        self.fix = block.fault_fix() + self.bias;
        if self.fast {
            self.enter_fast_block(pc, block);
            return;
        }
        let threshold = block.threshold();
        let stub = self.a.label();
        if block.charge == threshold && block.charge != 0 {
            self.a.alu_ri(W::Q, ext::SUB, BUDGET, block.charge);
            self.a.jcc(cc::L, stub);
            let fix = block.pend + block.charge;
            self.stubs.push((stub, Stub::Budget { pc, fix }));
            return;
        }
        self.a.alu_ri(W::Q, ext::CMP, BUDGET, threshold);
        self.a.jcc(cc::L, stub);
        let fix = block.pend;
        self.stubs.push((stub, Stub::Budget { pc, fix }));
        if block.charge != 0 {
            self.a.alu_ri(W::Q, ext::SUB, BUDGET, block.charge);
        }
    }

    /// A block start in the fast copy: a checkpoint checks what its whole
    /// region needs and goes on in the precise copy if the budget may run
    /// out before the next checkpoint; other blocks only subtract.
    fn enter_fast_block(&mut self, pc: usize, block: Block) {
        if !self.budget.checkpoints[pc] {
            if block.charge != 0 {
                self.a.alu_ri(W::Q, ext::SUB, BUDGET, block.charge);
            }
            return;
        }
        let precise = self.precise[pc];
        let bias = self.bias;
        match self.budget.region_need[pc] {
            // With the bias, what the region needs is the charge itself:
            // one `sub` and a `jl` that fuses with it.
            Some(need) if need - bias == block.charge && need != 0 => {
                let stub = self.a.label();
                self.a.alu_ri(W::Q, ext::SUB, BUDGET, block.charge);
                self.a.jcc(cc::L, stub);
                let fix = block.charge + bias;
                let to = precise;
                self.stubs.push((stub, Stub::ToPrecise { fix, to }));
            }
            Some(need) => {
                self.a.alu_ri(W::Q, ext::CMP, BUDGET, need - bias);
                if bias == 0 {
                    self.a.jcc(cc::L, precise);
                } else {
                    let stub = self.a.label();
                    self.a.jcc(cc::L, stub);
                    let (fix, to) = (bias, precise);
                    self.stubs.push((stub, Stub::ToPrecise { fix, to }));
                }
                if block.charge != 0 {
                    self.a.alu_ri(W::Q, ext::SUB, BUDGET, block.charge);
                }
            }
            None => {
                fix_budget(&mut self.a, bias);
                self.a.jmp(precise)
            }
        }
    }

    /// The bias of the block starting at `pc` in the copy being compiled.
    fn bias_at(&self, pc: usize) -> i32 {
        match self.fast {
            true => self.budget.bias[pc],
            false => 0,
        }
    }

    /// The label a jump from the current block to the block at `t` takes:
    /// the block's own, or a stub that first moves the budget register to
    /// the target's bias.
    fn jump_label(&mut self, t: usize) -> Label {
        let to = self.slot(t);
        let fix = self.bias - self.bias_at(t);
        if fix == 0 {
            return to;
        }
        let stub = self.a.label();
        self.stubs.push((stub, Stub::Rebias { fix, to }));
        stub
    }

    /// The label of slot `pc` in the copy being compiled.
    fn slot(&self, pc: usize) -> Label {
        match self.fast {
            true => self.slots[pc],
            false => self.precise[pc],
        }
    }

    fn fault_stub(&mut self, pc: usize, kind: u32) -> Label {
        let l = self.a.label();
        let fix = self.fix;
        self.stubs.push((l, Stub::Fault { pc, kind, fix }));
        l
    }

    fn emit_stubs(&mut self) {
        let stubs = core::mem::take(&mut self.stubs);
        for (l, stub) in stubs {
            let a = &mut self.a;
            a.bind(l);
            let (pc, kind) = match stub {
                Stub::ToPrecise { fix, to } | Stub::Rebias { fix, to } => {
                    fix_budget(a, fix);
                    a.jmp(to);
                    continue;
                }
                Stub::Budget { pc, fix } => {
                    // The interpreter does not subtract a run it cannot
                    // afford.
                    fix_budget(a, fix);
                    a.load(8, R11, RBP, -RUN_SLOT);
                    (pc, fault::BUDGET)
                }
                Stub::Fault { pc, kind, fix } => {
                    fix_budget(a, fix);
                    a.load(8, R11, RBP, -RUN_SLOT);
                    (pc, kind)
                }
                Stub::HelperFault { pc, kind, id, fix } => {
                    fix_budget(a, fix);
                    a.load(8, R11, RBP, -RUN_SLOT);
                    a.store32_imm(R11, off::HELPER_ID, id);
                    (pc, kind)
                }
                Stub::Misaligned { pc, len, fix } => {
                    fix_budget(a, fix);
                    a.load(8, R11, RBP, -RUN_SLOT);
                    a.store(8, R11, off::FAULT_ADDR, R10);
                    a.store_imm(8, R11, off::FAULT_LEN, len);
                    (pc, fault::MISALIGNED)
                }
            };
            a.store32_imm(R11, off::FAULT_KIND, kind);
            a.store_imm(8, R11, off::FAULT_PC, pc as i32);
            let fe = self.fault_exit;
            a.jmp(fe);
        }
    }

    /// Next blinding key, if blinding.
    fn next_key(&mut self) -> Option<u64> {
        let k = self.key.as_mut()?;
        // splitmix64
        *k = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *k;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Some(z ^ (z >> 31))
    }

    /// An immediate operand: as is, or blinded into r11.
    fn imm(&mut self, v: i32) -> Src {
        match self.next_key() {
            None => Src::Imm(v),
            Some(k) => {
                let k = k as i32;
                self.a.mov_r64_si(R11, v ^ k);
                self.a.alu_ri(W::Q, ext::XOR, R11, k);
                Src::Reg(R11)
            }
        }
    }

    /// `dst = v` for a 64-bit constant (blinded if enabled).
    fn load_const(&mut self, dst: u8, v: u64) {
        match self.next_key() {
            None => self.a.mov_ri(dst, v),
            Some(k) => {
                self.a.movabs(dst, v ^ k);
                self.a.movabs(R11, k);
                self.a.alu_rr(W::Q, rm_op::XOR, dst, R11);
            }
        }
    }

    fn alu(&mut self, w: W, opc: u8, e: u8, dst: u8, src: Src) {
        match src {
            Src::Reg(s) => self.a.alu_rr(w, opc, dst, s),
            Src::Imm(i) => self.a.alu_ri(w, e, dst, i),
        }
    }

    /// A load or store of a stack slot kept in a register (see
    /// [`super::slots`]): the register holds the slot's bytes
    /// zero-extended. Returns whether `op` was one.
    fn slot_in_reg(&mut self, op: Op) -> bool {
        let (off, size) = match op {
            Op::LdxB(_, 10, o) | Op::StxB(10, _, o) | Op::StB(10, o, _) => (o, 1),
            Op::LdxH(_, 10, o) | Op::StxH(10, _, o) | Op::StH(10, o, _) => (o, 2),
            Op::LdxW(_, 10, o) | Op::StxW(10, _, o) | Op::StW(10, o, _) => (o, 4),
            Op::LdxDW(_, 10, o) | Op::StxDW(10, _, o) | Op::StDW(10, o, _) => (o, 8),
            _ => return false,
        };
        let Some(slot) = self.in_regs.iter().find(|s| s.off == off && s.size == size) else {
            self.covered_slots(op);
            return false;
        };
        let reg = slot.reg;
        match op {
            Op::LdxB(d, ..) | Op::LdxH(d, ..) | Op::LdxW(d, ..) | Op::LdxDW(d, ..) => {
                self.a.mov_rr(W::Q, x(d), reg)
            }
            Op::StxB(_, s, _) | Op::StxH(_, s, _) | Op::StxW(_, s, _) | Op::StxDW(_, s, _) => {
                self.truncate(size, reg, x(s))
            }
            Op::StB(_, _, v) | Op::StH(_, _, v) | Op::StW(_, _, v) | Op::StDW(_, _, v) => {
                // The stored bytes: the immediate sign-extended, cut to the size.
                match self.imm(v as i64 as i32) {
                    Src::Reg(r) => self.truncate(size, reg, r),
                    Src::Imm(i) => {
                        let bits = u32::from(size) * 8;
                        let v = (i as i64 as u64) & (u64::MAX >> (64 - bits));
                        self.a.mov_ri(reg, v)
                    }
                }
            }
            _ => unreachable!("matched above"),
        }
        true
    }

    /// A store to the stack that is no slot of its own but covers slots kept
    /// in registers ([`slots::plan`] allows only whole covers): it is
    /// emitted to memory as usual, and this writes the covered slots'
    /// registers with their part of the stored bytes first.
    fn covered_slots(&mut self, op: Op) {
        let Some((off, size, slots::Kind::Store)) = slots::stack_access(&op) else {
            return;
        };
        let stored = slots::bytes(off, size);
        let covered: Vec<Slot> = self
            .in_regs
            .iter()
            .filter(|s| {
                stored.start <= i32::from(s.off) && slots::bytes(s.off, s.size).end <= stored.end
            })
            .copied()
            .collect();
        for slot in covered {
            let shift = ((i32::from(slot.off) - stored.start) * 8) as u8;
            let src = match op {
                Op::StxB(_, s, _) | Op::StxH(_, s, _) | Op::StxW(_, s, _) | Op::StxDW(_, s, _) => {
                    x(s)
                }
                Op::StB(_, _, v) | Op::StH(_, _, v) | Op::StW(_, _, v) | Op::StDW(_, _, v) => {
                    match self.imm(v as i64 as i32) {
                        Src::Reg(r) => r,
                        Src::Imm(i) => {
                            let bits = u32::from(slot.size) * 8;
                            let v = ((i as i64 as u64) >> shift) & (u64::MAX >> (64 - bits));
                            self.a.mov_ri(slot.reg, v);
                            continue;
                        }
                    }
                }
                _ => unreachable!("a store"),
            };
            if shift == 0 {
                self.truncate(slot.size, slot.reg, src);
            } else {
                self.a.mov_rr(W::Q, slot.reg, src);
                self.a.shift_ri(W::Q, shift::SHR, slot.reg, shift);
                self.truncate(slot.size, slot.reg, slot.reg);
            }
        }
    }

    /// `dst` = the low `size` bytes of `src`, zero-extended.
    fn truncate(&mut self, size: u8, dst: u8, src: u8) {
        match size {
            1 => self.a.movzx8(dst, src),
            2 => self.a.movzx16(dst, src),
            4 => self.a.mov_rr(W::D, dst, src),
            _ => self.a.mov_rr(W::Q, dst, src),
        }
    }

    fn op(&mut self, pc: usize) {
        let op = self.exe.ops[pc];
        if self.slot_in_reg(op) {
            return;
        }
        use W::{D, Q};
        // 64-bit immediates are sign-extended i32s; 32-bit ones are u32s.
        let i64_ = |v: u64| v as i64 as i32;
        match op {
            Op::Add64I(d, i) => self.alu_imm(Q, rm_op::ADD, ext::ADD, d, i64_(i)),
            Op::Sub64I(d, i) => self.alu_imm(Q, rm_op::SUB, ext::SUB, d, i64_(i)),
            Op::Or64I(d, i) => self.alu_imm(Q, rm_op::OR, ext::OR, d, i64_(i)),
            Op::And64I(d, i) => self.alu_imm(Q, rm_op::AND, ext::AND, d, i64_(i)),
            Op::Xor64I(d, i) => self.alu_imm(Q, rm_op::XOR, ext::XOR, d, i64_(i)),
            Op::Mul64I(d, i) => self.mul_imm(Q, d, i64_(i)),
            Op::Mov64I(d, i) => self.mov_imm(Q, d, i64_(i)),
            Op::Div64I(d, i) => self.divmod(Q, false, false, d, Src::Imm(i64_(i))),
            Op::SDiv64I(d, i) => self.divmod(Q, true, false, d, Src::Imm(i64_(i))),
            Op::Mod64I(d, i) => self.divmod(Q, false, true, d, Src::Imm(i64_(i))),
            Op::SMod64I(d, i) => self.divmod(Q, true, true, d, Src::Imm(i64_(i))),
            Op::Lsh64I(d, i) => self.shift_imm(Q, shift::SHL, d, i as u32),
            Op::Rsh64I(d, i) => self.shift_imm(Q, shift::SHR, d, i as u32),
            Op::Arsh64I(d, i) => self.shift_imm(Q, shift::SAR, d, i as u32),
            Op::Add64R(d, s) => self.a.alu_rr(Q, rm_op::ADD, x(d), x(s)),
            Op::Sub64R(d, s) => self.a.alu_rr(Q, rm_op::SUB, x(d), x(s)),
            Op::Or64R(d, s) => self.a.alu_rr(Q, rm_op::OR, x(d), x(s)),
            Op::And64R(d, s) => self.a.alu_rr(Q, rm_op::AND, x(d), x(s)),
            Op::Xor64R(d, s) => self.a.alu_rr(Q, rm_op::XOR, x(d), x(s)),
            Op::Mov64R(d, s) => self.mov_add(pc, d, s),
            Op::Mul64R(d, s) => self.a.imul_rr(Q, x(d), x(s)),
            Op::Div64R(d, s) => self.divmod(Q, false, false, d, Src::Reg(x(s))),
            Op::SDiv64R(d, s) => self.divmod(Q, true, false, d, Src::Reg(x(s))),
            Op::Mod64R(d, s) => self.divmod(Q, false, true, d, Src::Reg(x(s))),
            Op::SMod64R(d, s) => self.divmod(Q, true, true, d, Src::Reg(x(s))),
            Op::Lsh64R(d, s) => self.shift_reg(Q, shift::SHL, d, s),
            Op::Rsh64R(d, s) => self.shift_reg(Q, shift::SHR, d, s),
            Op::Arsh64R(d, s) => self.shift_reg(Q, shift::SAR, d, s),
            Op::Add32I(d, i) => self.alu_imm(D, rm_op::ADD, ext::ADD, d, i as i32),
            Op::Sub32I(d, i) => self.alu_imm(D, rm_op::SUB, ext::SUB, d, i as i32),
            Op::Or32I(d, i) => self.alu_imm(D, rm_op::OR, ext::OR, d, i as i32),
            Op::And32I(d, i) => self.alu_imm(D, rm_op::AND, ext::AND, d, i as i32),
            Op::Xor32I(d, i) => self.alu_imm(D, rm_op::XOR, ext::XOR, d, i as i32),
            Op::Mul32I(d, i) => self.mul_imm(D, d, i as i32),
            Op::Mov32I(d, i) => self.mov_imm(D, d, i as i32),
            Op::Div32I(d, i) => self.divmod(D, false, false, d, Src::Imm(i as i32)),
            Op::SDiv32I(d, i) => self.divmod(D, true, false, d, Src::Imm(i as i32)),
            Op::Mod32I(d, i) => self.divmod(D, false, true, d, Src::Imm(i as i32)),
            Op::SMod32I(d, i) => self.divmod(D, true, true, d, Src::Imm(i as i32)),
            Op::Lsh32I(d, i) => self.shift_imm(D, shift::SHL, d, i),
            Op::Rsh32I(d, i) => self.shift_imm(D, shift::SHR, d, i),
            Op::Arsh32I(d, i) => self.shift_imm(D, shift::SAR, d, i),
            Op::Add32R(d, s) => self.a.alu_rr(D, rm_op::ADD, x(d), x(s)),
            Op::Sub32R(d, s) => self.a.alu_rr(D, rm_op::SUB, x(d), x(s)),
            Op::Or32R(d, s) => self.a.alu_rr(D, rm_op::OR, x(d), x(s)),
            Op::And32R(d, s) => self.a.alu_rr(D, rm_op::AND, x(d), x(s)),
            Op::Xor32R(d, s) => self.a.alu_rr(D, rm_op::XOR, x(d), x(s)),
            Op::Mov32R(d, s) => self.a.mov_rr(D, x(d), x(s)),
            Op::Mul32R(d, s) => self.a.imul_rr(D, x(d), x(s)),
            Op::Div32R(d, s) => self.divmod(D, false, false, d, Src::Reg(x(s))),
            Op::SDiv32R(d, s) => self.divmod(D, true, false, d, Src::Reg(x(s))),
            Op::Mod32R(d, s) => self.divmod(D, false, true, d, Src::Reg(x(s))),
            Op::SMod32R(d, s) => self.divmod(D, true, true, d, Src::Reg(x(s))),
            Op::Lsh32R(d, s) => self.shift_reg(D, shift::SHL, d, s),
            Op::Rsh32R(d, s) => self.shift_reg(D, shift::SHR, d, s),
            Op::Arsh32R(d, s) => self.shift_reg(D, shift::SAR, d, s),
            Op::Neg64(d) => self.a.unary(Q, 3, x(d)),
            Op::Neg32(d) => self.a.unary(D, 3, x(d)),
            Op::MovSx(d, s, k) => {
                let (w, bits) = match k {
                    0 => (D, 8),
                    1 => (D, 16),
                    2 => (Q, 8),
                    3 => (Q, 16),
                    _ => (Q, 32),
                };
                self.a.movsx_rr(w, bits, x(d), x(s));
            }
            Op::Le16(d) => self.a.movzx16(x(d), x(d)),
            Op::Le32(d) => self.a.mov_rr(D, x(d), x(d)),
            Op::Swap16(d) => {
                self.a.ror16_8(x(d));
                self.a.movzx16(x(d), x(d));
            }
            Op::Swap32(d) => self.a.bswap(D, x(d)),
            Op::Swap64(d) => self.a.bswap(Q, x(d)),
            Op::Nop | Op::Tail => {}
            Op::LdImm64(d, v) => self.load_const(x(d), v),
            Op::Ja(t) => self.goto(t as usize),
            Op::JEq64I(d, t, i) => self.branch(Q, JmpCond::Eq, d, None, i64_(i), t),
            Op::JNe64I(d, t, i) => self.branch(Q, JmpCond::Ne, d, None, i64_(i), t),
            Op::JGt64I(d, t, i) => self.branch(Q, JmpCond::Gt, d, None, i64_(i), t),
            Op::JLt64I(d, t, i) => self.branch(Q, JmpCond::Lt, d, None, i64_(i), t),
            Op::JEq64R(d, s, t) => self.branch(Q, JmpCond::Eq, d, Some(s), 0, t),
            Op::JNe64R(d, s, t) => self.branch(Q, JmpCond::Ne, d, Some(s), 0, t),
            Op::JGt64R(d, s, t) => self.branch(Q, JmpCond::Gt, d, Some(s), 0, t),
            Op::JLt64R(d, s, t) => self.branch(Q, JmpCond::Lt, d, Some(s), 0, t),
            Op::Jmp64I(c, d, t, i) => self.branch(Q, c, d, None, i64_(i), t),
            Op::Jmp64R(c, d, s, t) => self.branch(Q, c, d, Some(s), 0, t),
            Op::Jmp32I(c, d, t, i) => self.branch(D, c, d, None, i as i32, t),
            Op::Jmp32R(c, d, s, t) => self.branch(D, c, d, Some(s), 0, t),
            Op::Call(id) => match self.inline.binary_search_by_key(&pc, |l| l.pc) {
                Ok(i) => self.inline_lookup(self.inline[i]),
                Err(_) => self.helper_call(pc, Some(id)),
            },
            Op::CallX(s) => {
                self.a.mov_rr(Q, R11, x(s));
                self.helper_call(pc, None);
            }
            Op::CallLocal(t) => self.local_call(pc, t as usize),
            Op::Exit => match self.direct_exit {
                // The program's own exit (no local calls): rbp is frame
                // 0's, as the epilogue expects.
                true => {
                    fix_budget(&mut self.a, self.bias);
                    let fe = self.fault_exit;
                    self.a.jmp(fe);
                }
                false => self.a.ret(),
            },
            Op::LdxB(d, s, o) => self.a.load(1, x(d), x(s), o as i32),
            Op::LdxH(d, s, o) => self.a.load(2, x(d), x(s), o as i32),
            Op::LdxW(d, s, o) => self.a.load(4, x(d), x(s), o as i32),
            Op::LdxDW(d, s, o) => self.a.load(8, x(d), x(s), o as i32),
            Op::LdxSx(size, d, s, o) => self.a.load_sx(size.bytes() as u8, x(d), x(s), o as i32),
            Op::StxB(d, s, o) => self.a.store(1, x(d), o as i32, x(s)),
            Op::StxH(d, s, o) => self.a.store(2, x(d), o as i32, x(s)),
            Op::StxW(d, s, o) => self.a.store(4, x(d), o as i32, x(s)),
            Op::StxDW(d, s, o) => self.a.store(8, x(d), o as i32, x(s)),
            Op::StB(d, o, v) => self.store_imm(1, d, o, v),
            Op::StH(d, o, v) => self.store_imm(2, d, o, v),
            Op::StW(d, o, v) => self.store_imm(4, d, o, v),
            Op::StDW(d, o, v) => self.store_imm(8, d, o, v),
            Op::Atomic(aop, fetch, size, d, s, o) => self.atomic(pc, aop, fetch, size, d, s, o),
            Op::FellOff => {
                let l = self.fault_stub(pc, fault::FELL_OFF);
                self.a.jmp(l);
            }
        }
    }

    /// `rD = rS` and, when the next operation is `rD += imm` that nothing
    /// jumps to (and the immediate need not be blinded), both as one `lea`:
    /// the way programs point a helper at the stack (`r2 = r10; r2 += -8`).
    /// `lea` leaves the flags alone, so the slot after may not reuse them.
    fn mov_add(&mut self, pc: usize, d: u8, s: u8) {
        let next = pc + 1;
        if let Some(&Op::Add64I(d2, imm)) = self.exe.ops.get(next) {
            let free = !self.targets[next] && self.budget.blocks[next].is_none();
            if d2 == d && free && self.key.is_none() {
                self.a.lea(x(d), x(s), imm as i64 as i32);
                self.folded = Some(next);
                return;
            }
        }
        self.a.mov_rr(W::Q, x(d), x(s));
    }

    fn alu_imm(&mut self, w: W, opc: u8, e: u8, d: u8, i: i32) {
        let src = self.imm(i);
        self.alu(w, opc, e, x(d), src);
    }

    fn mul_imm(&mut self, w: W, d: u8, i: i32) {
        match self.imm(i) {
            Src::Reg(s) => self.a.imul_rr(w, x(d), s),
            Src::Imm(i) => self.a.imul_rri(w, x(d), x(d), i),
        }
    }

    fn mov_imm(&mut self, w: W, d: u8, i: i32) {
        let d = x(d);
        match self.next_key() {
            None if w == W::D => self.a.mov_ri(d, u64::from(i as u32)),
            None => self.a.mov_ri(d, i as i64 as u64),
            Some(k) => {
                let k = k as i32;
                if w == W::D {
                    self.a.mov_r32_i(d, (i ^ k) as u32);
                } else {
                    self.a.mov_r64_si(d, i ^ k);
                }
                self.a.alu_ri(w, ext::XOR, d, k);
            }
        }
    }

    fn store_imm(&mut self, size: u8, d: u8, o: i16, v: u64) {
        let v = v as i64 as i32;
        match self.imm(v) {
            Src::Reg(s) => self.a.store(size, x(d), o as i32, s),
            Src::Imm(i) => self.a.store_imm(size, x(d), o as i32, i),
        }
    }

    fn shift_imm(&mut self, w: W, e: u8, d: u8, n: u32) {
        let n = (n & if w == W::Q { 63 } else { 31 }) as u8;
        if n == 0 {
            // Still zero-extends a 32-bit operand, as the interpreter does.
            if w == W::D {
                self.a.mov_rr(W::D, x(d), x(d));
            }
            return;
        }
        self.a.shift_ri(w, e, x(d), n);
    }

    /// Shift by a register: the count goes to `cl` (`rcx` is scratch; the
    /// shift masks the count to the width as the interpreter does).
    fn shift_reg(&mut self, w: W, e: u8, d: u8, s: u8) {
        let (d, s) = (x(d), x(s));
        let a = &mut self.a;
        a.mov_rr(W::D, RCX, s);
        a.shift_cl(w, e, d);
        if w == W::D {
            // A 32-bit shift by 0 is architecturally allowed to leave the
            // upper half alone; the interpreter zero-extends.
            a.mov_rr(W::D, d, d);
        }
    }

    /// Division and modulo with the interpreter's rules for 0 and -1.
    fn divmod(&mut self, w: W, signed: bool, modulo: bool, d: u8, src: Src) {
        let dst = x(d);
        let minus_one = |v: i32| match w {
            W::Q => v == -1,
            W::D => v as u32 == u32::MAX,
        };
        match src {
            Src::Imm(0) => {
                self.div_by_zero(w, modulo, dst);
                return;
            }
            Src::Imm(v) if signed && minus_one(v) => {
                self.div_by_minus_one(w, modulo, dst);
                return;
            }
            Src::Imm(v) => {
                match self.imm(v) {
                    Src::Reg(_) => {}
                    Src::Imm(v) => self.a.mov_r64_si(R11, v),
                }
                self.div_core(w, signed, modulo, dst);
                return;
            }
            Src::Reg(s) => self.a.mov_rr(w, R11, s),
        }
        let zero = self.a.label();
        let minus1 = self.a.label();
        let done = self.a.label();
        self.a.alu_rr(w, rm_op::TEST, R11, R11);
        self.a.jcc(cc::E, zero);
        if signed {
            self.a.alu_ri(w, ext::CMP, R11, -1);
            self.a.jcc(cc::E, minus1);
        }
        self.div_core(w, signed, modulo, dst);
        self.a.jmp(done);
        self.a.bind(zero);
        self.div_by_zero(w, modulo, dst);
        if signed {
            self.a.jmp(done);
            self.a.bind(minus1);
            self.div_by_minus_one(w, modulo, dst);
        }
        self.a.bind(done);
    }

    /// `dst = dst / r11` or `dst % r11`, with r11 neither 0 nor (signed) -1.
    fn div_core(&mut self, w: W, signed: bool, modulo: bool, dst: u8) {
        let a = &mut self.a;
        a.push(RAX);
        a.push(RDX);
        a.mov_rr(w, RAX, dst);
        if signed {
            a.sign_extend_rax(w);
            a.unary(w, 7, R11);
        } else {
            a.alu_rr(W::D, rm_op::XOR, RDX, RDX);
            a.unary(w, 6, R11);
        }
        a.mov_rr(w, R10, if modulo { RDX } else { RAX });
        a.pop(RDX);
        a.pop(RAX);
        a.mov_rr(W::Q, dst, R10);
    }

    fn div_by_zero(&mut self, w: W, modulo: bool, dst: u8) {
        if !modulo {
            self.a.alu_rr(W::D, rm_op::XOR, dst, dst);
        } else if w == W::D {
            self.a.mov_rr(W::D, dst, dst);
        }
    }

    fn div_by_minus_one(&mut self, w: W, modulo: bool, dst: u8) {
        if modulo {
            self.a.alu_rr(W::D, rm_op::XOR, dst, dst);
        } else {
            self.a.unary(w, 3, dst);
        }
    }

    fn goto(&mut self, t: usize) {
        let l = self.jump_label(t);
        self.a.jmp(l);
    }

    #[allow(clippy::too_many_arguments)]
    fn branch(&mut self, w: W, c: JmpCond, d: u8, s: Option<u8>, i: i32, t: u32) {
        let src = match s {
            Some(s) => Src::Reg(x(s)),
            None => self.imm(i),
        };
        let dst = x(d);
        let code = match c {
            JmpCond::Eq => cc::E,
            JmpCond::Ne | JmpCond::Set => cc::NE,
            JmpCond::Gt => cc::A,
            JmpCond::Ge => cc::AE,
            JmpCond::Lt => cc::B,
            JmpCond::Le => cc::BE,
            JmpCond::Sgt => cc::G,
            JmpCond::Sge => cc::GE,
            JmpCond::Slt => cc::L,
            JmpCond::Sle => cc::LE,
        };
        match (c, src) {
            (JmpCond::Set, Src::Reg(s)) => self.a.alu_rr(w, rm_op::TEST, dst, s),
            (JmpCond::Set, Src::Imm(i)) => self.a.test_ri(w, dst, i),
            // Equality with 0 right after an ALU result in `d` of a width
            // that covers the compare: ZF is already the answer.
            (JmpCond::Eq | JmpCond::Ne, Src::Imm(0))
                if self
                    .zf
                    .is_some_and(|(r, rw)| r == d && (rw == W::D || w == W::Q)) => {}
            // Same flags as `cmp dst, 0` (CF and OF clear), two bytes shorter.
            (_, Src::Imm(0)) => self.a.alu_rr(w, rm_op::TEST, dst, dst),
            (_, src) => self.alu(w, rm_op::CMP, ext::CMP, dst, src),
        }
        // The target's block and the next one charge themselves.
        let l = self.jump_label(t as usize);
        self.a.jcc(code, l);
    }

    /// A helper call: `Some(id)` for `call id`, `None` for `callx` (id in r11).
    fn helper_call(&mut self, pc: usize, id: Option<u32>) {
        let (unknown, failed) = match id {
            // The stubs record the id.
            Some(id) => {
                let unknown = self.a.label();
                let failed = self.a.label();
                let fix = self.fix;
                let kind = fault::UNKNOWN_HELPER;
                self.stubs
                    .push((unknown, Stub::HelperFault { pc, kind, id, fix }));
                let kind = fault::HELPER_FAILED;
                self.stubs
                    .push((failed, Stub::HelperFault { pc, kind, id, fix }));
                (unknown, failed)
            }
            // The id is stored in the run before the call.
            None => (
                self.fault_stub(pc, fault::UNKNOWN_HELPER),
                self.fault_stub(pc, fault::HELPER_FAILED),
            ),
        };
        let a = &mut self.a;
        // r4 is the fourth argument (rcx); the run is the sixth (r9, where
        // r4 lives: the helper clobbers r1-r5 anyway).
        // Left out when the platform's prototype has fewer arguments.
        let r4_used = id.is_none_or(|id| {
            ktrace_bpf_platform::helper::find(id as i32).is_none_or(|h| h.args.len() >= 4)
        });
        if r4_used {
            a.mov_rr(W::Q, RCX, R9);
        }
        match self.run_reg {
            Some(r) => a.mov_rr(W::Q, R9, r),
            None => a.load(8, R9, RSP, RUN_SLOT_FROM_RSP),
        }
        match id {
            Some(id) => {
                match self.helpers.get(id as usize).copied().flatten() {
                    Some(f) => a.movabs(R11, f as usize as u64),
                    None => {
                        // Unknown when compiled: the interpreter's fault, when reached.
                        a.jmp(unknown);
                        return;
                    }
                }
            }
            None => {
                // An id beyond u32 names no helper: clamp it to u32::MAX.
                let small = a.label();
                a.mov_rr(W::Q, R10, R11);
                a.shift_ri(W::Q, shift::SHR, R10, 32);
                a.jcc(cc::E, small);
                a.mov_r32_i(R11, u32::MAX);
                a.bind(small);
                a.store(4, R9, off::HELPER_ID, R11);
                // Look the id up in the image's own copy of the table.
                let n = self.helpers.len() as u32;
                a.alu_ri(W::Q, ext::CMP, R11, n as i32);
                a.jcc(cc::AE, unknown);
                let table = self.table;
                a.lea_rip(R10, table);
                a.load_r11_table_r10();
                a.alu_rr(W::Q, rm_op::TEST, R11, R11);
                a.jcc(cc::E, unknown);
            }
        }
        a.call_r(R11);
        // A helper the platform declares never aborts a verified program's
        // run returns no error to test (`Helper::aborts`); `callx` may name any.
        if id.is_none_or(|id| ktrace_bpf_platform::helper::aborts(id as i32)) {
            a.alu_rr(W::Q, rm_op::TEST, RDX, RDX);
            a.jcc(cc::NE, failed);
        }
    }

    /// An array lookup in place of the helper call (see [`InlineLookup`]):
    /// `r0 = key < max_entries ? base + key * stride : NULL`, with the key
    /// clamped to 0 by a `cmov` before use, so that a mispredicted bounds
    /// check cannot form an address past the end (Spectre v1). Writes only
    /// `r0` and scratch registers (the helper may clobber `r1`-`r5`).
    fn inline_lookup(&mut self, l: InlineLookup) {
        let null = self.a.label();
        let done = self.a.label();
        self.a.alu_rr(W::D, rm_op::XOR, R10, R10);
        // r2 (rsi) points at the 4 key bytes (verified).
        self.a.load(4, RAX, RSI, 0);
        let max = self.imm(l.max_entries as i32);
        self.alu(W::D, rm_op::CMP, ext::CMP, RAX, max);
        self.a.cmov(W::D, cc::AE, RAX, R10);
        self.a.jcc(cc::AE, null);
        match self.imm(l.stride as i32) {
            Src::Imm(i) => self.a.imul_rri(W::Q, RAX, RAX, i),
            Src::Reg(r) => self.a.imul_rr(W::Q, RAX, r),
        }
        self.load_const(R10, l.base);
        self.a.alu_rr(W::Q, rm_op::ADD, RAX, R10);
        self.a.jmp(done);
        self.a.bind(null);
        self.a.alu_rr(W::D, rm_op::XOR, RAX, RAX);
        self.a.bind(done);
    }

    fn local_call(&mut self, pc: usize, t: usize) {
        if self.calls.bounded {
            self.local_call_bounded(t);
            return;
        }
        let too_deep = self.fault_stub(pc, fault::CALL_DEPTH);
        let a = &mut self.a;
        a.load(8, R11, RBP, -RUN_SLOT);
        a.alu_r_mem(W::Q, 0x3b, RSP, R11, off::STACK_LIMIT);
        a.jcc(cc::BE, too_deep);
        for r in [RBX, R13, R14, R15, RBP] {
            a.push(r);
        }
        a.mov_rr(W::Q, RBP, RSP);
        a.alu_ri(W::Q, ext::SUB, RSP, FRAME);
        a.store(8, RBP, -RUN_SLOT, R11);
        a.call(self.slots[t]);
        a.mov_rr(W::Q, RSP, RBP);
        for r in [RBP, R15, R14, R13, RBX] {
            a.pop(r);
        }
    }

    /// A local call in a program whose calls cannot nest too deeply (see
    /// [`CallPlan::bounded`]): no depth check, and only the registers among
    /// `r6`-`r9` the callee writes are saved. The callee's frame pointer is
    /// recomputed after the return rather than saved, since every function
    /// body runs with `rsp = rbp - FRAME - 8`.
    fn local_call_bounded(&mut self, t: usize) {
        let writes = self.calls.writes[t];
        let saved: Vec<u8> = (6..10u8)
            .filter(|r| writes & (1 << r) != 0)
            .map(x)
            .collect();
        // Keeps the callee's rsp 16-byte aligned: saves plus padding plus
        // the return address are a multiple of 16 (FRAME is).
        let pad = if saved.len().is_multiple_of(2) { 8 } else { 0 };
        let a = &mut self.a;
        a.load(8, R11, RBP, -RUN_SLOT);
        for &r in &saved {
            a.push(r);
        }
        a.lea(RBP, RSP, -pad);
        a.lea(RSP, RBP, -FRAME);
        a.store(8, RBP, -RUN_SLOT, R11);
        a.call(self.slots[t]);
        a.lea(RSP, RBP, pad);
        for &r in saved.iter().rev() {
            a.pop(r);
        }
        a.lea(RBP, RSP, FRAME + 8);
    }

    #[allow(clippy::too_many_arguments)]
    fn atomic(&mut self, pc: usize, aop: AtomicOp, fetch: bool, size: Size, d: u8, s: u8, o: i16) {
        let w = if size == Size::W { W::D } else { W::Q };
        let n = size.bytes() as i32;
        let src = x(s);
        let misaligned = self.a.label();
        let fix = self.fix;
        self.stubs
            .push((misaligned, Stub::Misaligned { pc, len: n, fix }));
        let a = &mut self.a;
        a.lea(R10, x(d), o as i32);
        a.test_r8_i(R10, (n - 1) as u8);
        a.jcc(cc::NE, misaligned);
        match (aop, fetch) {
            (AtomicOp::Add, false) => a.lock_rm(w, rm_op::ADD, R10, 0, src),
            (AtomicOp::Or, false) => a.lock_rm(w, rm_op::OR, R10, 0, src),
            (AtomicOp::And, false) => a.lock_rm(w, rm_op::AND, R10, 0, src),
            (AtomicOp::Xor, false) => a.lock_rm(w, rm_op::XOR, R10, 0, src),
            (AtomicOp::Add, true) => a.lock_xadd(w, R10, 0, src),
            (AtomicOp::Xchg, _) => a.xchg_mem(w, R10, 0, src),
            (AtomicOp::CmpXchg, _) => {
                a.lock_cmpxchg(w, R10, 0, src);
                if w == W::D {
                    a.mov_rr(W::D, RAX, RAX);
                }
            }
            (op, true) => {
                // Fetching or/and/xor: a compare-exchange loop in rax.
                let opc = match op {
                    AtomicOp::Or => rm_op::OR,
                    AtomicOp::And => rm_op::AND,
                    _ => rm_op::XOR,
                };
                a.mov_rr(W::Q, RCX, src);
                a.push(RAX);
                a.load(n as u8, RAX, R10, 0);
                let retry = a.label();
                a.bind(retry);
                a.mov_rr(W::Q, R11, RAX);
                a.alu_rr(w, opc, R11, RCX);
                a.lock_cmpxchg(w, R10, 0, R11);
                a.jcc(cc::NE, retry);
                a.mov_rr(W::Q, R11, RAX);
                a.pop(RAX);
                a.mov_rr(W::Q, src, R11);
            }
        }
    }
}

/// Adds `fix` to the budget register (see [`Block::fault_fix`]).
fn fix_budget(a: &mut Asm, fix: i32) {
    if fix != 0 {
        a.alu_ri(W::Q, ext::ADD, BUDGET, fix);
    }
}

// The layout above assumes JitRun's fields fit 8-bit or 32-bit displacements.
const _: () = assert!(core::mem::size_of::<JitRun<'static>>() < 1024);
