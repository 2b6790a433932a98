//! The path-sensitive abstract interpreter: walks every path of the program
//! from the entry, applying each instruction to the abstract [`State`] and
//! checking its safety conditions, with state pruning at prune points.

use super::cfg::{Cfg, MAX_CALL_FRAMES};
use super::error::{Config, Log, Rule, Stats, VerifyError};
use super::linux::map_type;
use super::platform::{ArgKind, Env, RetKind};
use super::scalar::{self, Scalar};
use super::state::{
    state_includes, ByteState, Frame, PtrKind, RefState, Reg, RegType, Slot, State,
};
use super::tnum::Tnum;
use crate::disasm::{self, Syntax};
use crate::insn::{
    AluOp, AtomicOp, ByteOrder, Insn, JmpCond, LdImm64Src, Operand, Size, Width, STACK_SIZE,
};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Largest offset (either sign) a pointer may carry, as in Linux.
const MAX_VAR_OFF: i64 = 1 << 29;
/// Largest size a helper memory argument may have.
const MAX_MEM_SIZE: u64 = 1 << 29;
const STACK: i64 = STACK_SIZE as i64;
/// Most branches waiting to be explored at once (Linux's limit), which
/// bounds the memory of pending states.
const MAX_PENDING: usize = 8192;
/// Minimum instructions on a path between two stored states.
const STORE_EVERY: u32 = 8;

type R<T> = Result<T, VerifyError>;

/// A state stored at a prune point.
struct Node {
    state: State,
    /// Paths still being explored below this node (0: fully explored).
    branches: u32,
    parent: Option<u32>,
    /// Some path below this node depended on a scalar's value (a bounds
    /// check, a decided branch, a size argument): then scalars must be
    /// compared by value when pruning against it; otherwise by type only.
    precise: bool,
}

/// A path waiting to be explored.
struct Pending {
    state: State,
    pc: usize,
    parent: Option<u32>,
    from: usize,
    /// Instructions processed on this path since it last stored a state.
    since: u32,
}

/// What an instruction does to the flow.
enum Flow {
    Next(usize),
    /// Continue at `.2`; also explore `.0` at `.1`.
    Fork(State, usize, usize),
    /// The path ended (program exit).
    Done,
}

/// Reading or writing memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

pub(crate) struct Checker<'a> {
    prog: &'a [Insn],
    env: Env<'a>,
    cfg: &'a Config<'a>,
    graph: Cfg,
    nodes: Vec<Node>,
    at: Vec<Vec<u32>>,
    pending: Vec<Pending>,
    pub stats: Stats,
    pub log: Log,
    noted_div: Vec<bool>,
    /// Heap bytes held by `nodes` and `pending` (see [`Config::max_state_bytes`]).
    state_bytes: usize,
    /// Set by a step whose safety depended on a scalar's value.
    need_precise: bool,
}

impl<'a> Checker<'a> {
    pub fn new(prog: &'a [Insn], env: Env<'a>, cfg: &'a Config<'a>, graph: Cfg) -> Checker<'a> {
        let n = prog.len();
        let stats = Stats {
            stack_depth: vec![0; graph.subprogs.len()],
            ..Stats::default()
        };
        Checker {
            prog,
            env,
            cfg,
            graph,
            nodes: Vec::new(),
            at: vec![Vec::new(); n],
            pending: Vec::new(),
            stats,
            log: Log::new(cfg.log_level, cfg.log_limit),
            noted_div: vec![false; n],
            state_bytes: 0,
            need_precise: false,
        }
    }

    /// Builds a rejection at `pc` with the state of `st`.
    pub fn err_at(
        &self,
        pc: usize,
        st: Option<&State>,
        rule: Rule,
        message: String,
    ) -> VerifyError {
        let insn_text = self
            .prog
            .get(pc)
            .map(|i| disasm::insn(i, Syntax::Llvm))
            .unwrap_or_default();
        let mut regs = String::new();
        if let Some(st) = st {
            st.dump(&mut regs);
        }
        VerifyError {
            insn_index: pc,
            insn_text,
            message,
            location: self.cfg.location(pc).map(String::from),
            regs,
            rule,
        }
    }

    fn text(&self, pc: usize) -> String {
        disasm::insn(&self.prog[pc], Syntax::Llvm)
    }

    /// Explores every path; `Ok` when all of them are safe.
    pub fn run(&mut self) -> R<()> {
        let mut init = State {
            frames: vec![Frame::new(0, 0, 0)],
            refs: Vec::new(),
            next_id: 0,
        };
        init.frames[0].regs[1] = Reg::ptr(PtrKind::Ctx);
        self.push_pending(
            0,
            Pending {
                state: init,
                pc: 0,
                parent: None,
                from: 0,
                since: 0,
            },
        )?;
        while let Some(p) = self.pending.pop() {
            self.state_bytes -= p.state.heap_bytes();
            let Pending {
                state: mut st,
                mut pc,
                mut parent,
                from,
                mut since,
            } = p;
            if self.log.on(1) && pc != 0 {
                let mut s = String::new();
                st.dump(&mut s);
                self.log.line(1, format_args!("from {from} to {pc}: {s}"));
            }
            loop {
                if pc >= self.prog.len() {
                    // The control-flow pass rules this out; never index past the end.
                    return Err(self.err_at(
                        pc.min(self.prog.len().saturating_sub(1)),
                        Some(&st),
                        Rule::Internal,
                        format!("execution reached slot {pc}, past the end of the program"),
                    ));
                }
                self.stats.insns_processed += 1;
                if self.stats.insns_processed > self.cfg.max_insns {
                    return Err(self.err_at(
                        pc,
                        Some(&st),
                        Rule::Complexity,
                        format!(
                            "program too complex: processed {} instructions (limit {}); make every loop's bound visible to the verifier (compare the counter with a constant)",
                            self.stats.insns_processed, self.cfg.max_insns
                        ),
                    ));
                }
                since = since.saturating_add(1);
                if self.graph.prune_point[pc] {
                    // Like Linux, store a checkpoint only every few
                    // instructions: comparisons still happen at every prune
                    // point, but memory stays proportional to the work done.
                    let store = since >= STORE_EVERY;
                    match self.prune(&st, pc, parent, store)? {
                        None => {
                            self.log.line(1, format_args!("{pc}: safe"));
                            self.finish(parent);
                            break;
                        }
                        Some(p) => {
                            if p != parent {
                                since = 0;
                            }
                            parent = p;
                        }
                    }
                }
                if self.log.on(1) {
                    let t = self.text(pc);
                    self.log.line(1, format_args!("{pc}: {t}"));
                }
                let flow = self.step(&mut st, pc)?;
                if self.need_precise {
                    self.need_precise = false;
                    self.mark_precise(parent);
                }
                if self.log.on(2) {
                    let mut s = String::new();
                    st.dump(&mut s);
                    self.log.line(2, format_args!("{pc}: {s}"));
                }
                match flow {
                    Flow::Next(n) => pc = n,
                    Flow::Fork(other, other_pc, n) => {
                        if self.pending.len() >= MAX_PENDING {
                            return Err(self.err_at(
                                pc,
                                Some(&st),
                                Rule::Complexity,
                                format!(
                                    "program too complex: the sequence of {} jumps is too complex",
                                    MAX_PENDING + 1
                                ),
                            ));
                        }
                        self.push_pending(
                            pc,
                            Pending {
                                state: other,
                                pc: other_pc,
                                parent,
                                from: pc,
                                since,
                            },
                        )?;
                        if let Some(p) = parent {
                            self.nodes[p as usize].branches += 1;
                        }
                        self.peak();
                        pc = n;
                    }
                    Flow::Done => {
                        self.finish(parent);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues a branch to explore, charging its state's memory, and the
    /// queue's own storage when it grows (it never shrinks, so that part
    /// stays charged after branches are taken off).
    fn push_pending(&mut self, pc: usize, p: Pending) -> R<()> {
        self.charge(pc, &p.state, p.state.heap_bytes())?;
        if self.pending.len() == self.pending.capacity() {
            let slot = core::mem::size_of::<Pending>();
            let old = self.pending.capacity() * slot;
            let new_cap = (2 * self.pending.capacity()).max(16);
            // While it grows, the old block and the new one both exist.
            self.charge(pc, &p.state, new_cap * slot)?;
            if self
                .pending
                .try_reserve_exact(new_cap - self.pending.len())
                .is_err()
            {
                return Err(self.out_of_memory(pc));
            }
            self.state_bytes -= old;
        }
        self.pending.push(p);
        Ok(())
    }

    /// Counts `bytes` more of state memory, refusing the program when that
    /// goes past [`Config::max_state_bytes`].
    fn charge(&mut self, pc: usize, st: &State, bytes: usize) -> R<()> {
        let total = self.state_bytes.saturating_add(bytes);
        if total > self.cfg.max_state_bytes {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Complexity,
                format!(
                    "program too complex: its stored states and pending branches need more than the verifier's {} KiB of state memory (processed {} instructions, stored {} states, {} branches pending)",
                    self.cfg.max_state_bytes >> 10,
                    self.stats.insns_processed,
                    self.stats.states_stored,
                    self.pending.len()
                ),
            ));
        }
        self.state_bytes = total;
        self.stats.peak_state_bytes = self.stats.peak_state_bytes.max(total as u64);
        Ok(())
    }

    /// The allocator refused memory for a state: a refusal, not a panic.
    /// (No register dump: that would allocate again.)
    fn out_of_memory(&self, pc: usize) -> VerifyError {
        self.err_at(
            pc,
            None,
            Rule::Complexity,
            format!(
                "out of memory: no room for another verifier state after storing {} ({} KiB)",
                self.stats.states_stored,
                self.state_bytes >> 10
            ),
        )
    }

    fn peak(&mut self) {
        let now = (self.nodes.len() + self.pending.len()) as u64;
        if now > self.stats.peak_states {
            self.stats.peak_states = now;
        }
    }

    /// Marks `parent` and its ancestors as depending on scalar values.
    fn mark_precise(&mut self, mut parent: Option<u32>) {
        while let Some(p) = parent {
            let n = &mut self.nodes[p as usize];
            if n.precise {
                // Ancestors of a marked node were marked with it.
                break;
            }
            n.precise = true;
            parent = n.parent;
        }
    }

    /// A path below `parent` ended: propagate completion upwards.
    fn finish(&mut self, mut parent: Option<u32>) {
        while let Some(p) = parent {
            let n = &mut self.nodes[p as usize];
            n.branches = n.branches.saturating_sub(1);
            if n.branches > 0 {
                break;
            }
            parent = n.parent;
        }
    }

    /// Live registers for each frame of `st` at `pc`.
    fn live_masks(&self, st: &State, pc: usize) -> Vec<u16> {
        let n = st.frames.len();
        let mut out = vec![0u16; n];
        for (k, m) in out.iter_mut().enumerate() {
            if k + 1 == n {
                *m = self.graph.live_in[pc];
            } else {
                let ret = st.frames[k + 1].callsite + 1;
                // After the return r0..r5 are overwritten: only r6..r10 matter.
                *m = self.graph.live_in.get(ret).copied().unwrap_or(u16::MAX) & 0b111_1100_0000;
            }
        }
        out
    }

    /// Compares with stored states at `pc`. `None`: prune this path.
    fn prune(
        &mut self,
        st: &State,
        pc: usize,
        parent: Option<u32>,
        store: bool,
    ) -> R<Option<Option<u32>>> {
        let live = self.live_masks(st, pc);
        for &id in &self.at[pc] {
            let node = &self.nodes[id as usize];
            if node.branches == 0 {
                if state_includes(&node.state, st, &live, node.precise) {
                    self.stats.states_pruned += 1;
                    if node.precise {
                        // The rest of this path is the old one's: so are its dependencies.
                        self.mark_precise(parent);
                    }
                    return Ok(None);
                }
            } else if state_includes(&node.state, st, &live, true)
                && state_includes(st, &node.state, &live, true)
            {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::Complexity,
                    format!(
                        "infinite loop detected at insn {pc}: the state repeats without progress"
                    ),
                ));
            }
        }
        if !store || self.at[pc].len() >= self.cfg.max_states_per_insn {
            return Ok(Some(parent));
        }
        if self.nodes.len() as u64 >= self.cfg.max_states {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Complexity,
                format!(
                    "program too complex: more than {} states stored (processed {} instructions)",
                    self.cfg.max_states, self.stats.insns_processed
                ),
            ));
        }
        // As for pending branches: three slots per element in `nodes` and
        // in the instruction's list.
        let slots = 3 * (core::mem::size_of::<Node>() + core::mem::size_of::<u32>());
        self.charge(pc, st, st.heap_bytes() + slots)?;
        if self.nodes.try_reserve(1).is_err() || self.at[pc].try_reserve(1).is_err() {
            return Err(self.out_of_memory(pc));
        }
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            state: st.clone(),
            branches: 1,
            parent,
            precise: false,
        });
        self.at[pc].push(id);
        self.stats.states_stored += 1;
        self.peak();
        Ok(Some(Some(id)))
    }

    // ----- registers -------------------------------------------------------

    fn read(&self, st: &State, pc: usize, r: u8) -> R<Reg> {
        let reg = st.cur().regs[r as usize];
        if !reg.is_init() {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::UninitRegister,
                format!("R{r} !read_ok: R{r} is read before it is written on this path"),
            ));
        }
        Ok(reg)
    }

    fn read_scalar(&self, st: &State, pc: usize, r: u8, what: &str) -> R<Scalar> {
        let reg = self.read(st, pc, r)?;
        if !reg.is_scalar() {
            if self.cfg.allow_ptr_leaks {
                return Ok(Scalar::unknown());
            }
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::PointerArithmetic,
                format!("R{r} {what} on pointer ({}) prohibited", reg.type_name()),
            ));
        }
        Ok(reg.val)
    }

    fn set(st: &mut State, r: u8, reg: Reg) {
        st.cur_mut().regs[r as usize] = reg;
    }

    fn operand(&self, st: &State, pc: usize, src: Operand) -> R<Reg> {
        match src {
            Operand::Imm(i) => Ok(Reg::scalar(Scalar::constant(i as i64 as u64))),
            Operand::Reg(r) => self.read(st, pc, r),
        }
    }

    // ----- the step function -----------------------------------------------

    fn step(&mut self, st: &mut State, pc: usize) -> R<Flow> {
        let insn = self.prog[pc];
        let next = pc + 1;
        match insn {
            Insn::Alu {
                width,
                op,
                dst,
                src,
            } => {
                self.alu(st, pc, width, op, dst, src)?;
                Ok(Flow::Next(next))
            }
            Insn::Neg { width, dst } => {
                let v = self.read_scalar(st, pc, dst, "neg")?;
                Self::set(st, dst, Reg::scalar(scalar::neg(width, &v)));
                Ok(Flow::Next(next))
            }
            Insn::MovSx {
                width,
                bits,
                dst,
                src,
            } => {
                let v = self.read_scalar(st, pc, src, "sign-extending move")?;
                let mut r = v.sext_bits(bits as u32);
                if width == Width::W32 {
                    r = r.zext32();
                }
                Self::set(st, dst, Reg::scalar(r));
                Ok(Flow::Next(next))
            }
            Insn::Endian { order, bits, dst } => {
                let v = self.read_scalar(st, pc, dst, "byte swap")?;
                let bytes = bits as u32 / 8;
                let r = match (order, v.as_const()) {
                    (ByteOrder::Le, _) => v.truncate(bytes),
                    (_, Some(c)) => Scalar::constant(match bits {
                        16 => (c as u16).swap_bytes() as u64,
                        32 => (c as u32).swap_bytes() as u64,
                        _ => c.swap_bytes(),
                    }),
                    _ => Scalar::from_tnum(Tnum::UNKNOWN.cast(bytes)),
                };
                Self::set(st, dst, Reg::scalar(r));
                Ok(Flow::Next(next))
            }
            Insn::LdImm64 { dst, src } => {
                let reg = self.ld_imm64(st, pc, src)?;
                Self::set(st, dst, reg);
                Ok(Flow::Next(pc + 2))
            }
            Insn::LdImm64Tail => Err(self.err_at(
                pc,
                Some(st),
                Rule::Internal,
                "reached the second slot of ld_imm64".into(),
            )),
            Insn::Load {
                size,
                dst,
                src,
                off,
            } => {
                let v = self.load(st, pc, src, off, size.bytes() as u64)?;
                Self::set(st, dst, v);
                Ok(Flow::Next(next))
            }
            Insn::LoadSx {
                size,
                dst,
                src,
                off,
            } => {
                let v = self.load(st, pc, src, off, size.bytes() as u64)?;
                let bits = size.bytes() as u32 * 8;
                Self::set(st, dst, Reg::scalar(v.val.sext_bits(bits)));
                Ok(Flow::Next(next))
            }
            Insn::Store {
                size,
                dst,
                off,
                src,
            } => {
                let v = self.read(st, pc, src)?;
                self.store(st, pc, dst, off, size, v, Some(src))?;
                Ok(Flow::Next(next))
            }
            Insn::StoreImm {
                size,
                dst,
                off,
                imm,
            } => {
                let v =
                    Reg::scalar(Scalar::constant(imm as i64 as u64).truncate(size.bytes() as u32));
                self.store(st, pc, dst, off, size, v, None)?;
                Ok(Flow::Next(next))
            }
            Insn::Atomic {
                size,
                op,
                fetch,
                dst,
                off,
                src,
            } => {
                self.atomic(st, pc, size, op, fetch, dst, off, src)?;
                Ok(Flow::Next(next))
            }
            Insn::Ja { .. } => {
                let t = insn.jump_target(pc).unwrap_or(0) as usize;
                Ok(Flow::Next(t))
            }
            Insn::Jmp {
                width,
                cond,
                dst,
                src,
                ..
            } => {
                let t = insn.jump_target(pc).unwrap_or(0) as usize;
                self.jmp(st, pc, width, cond, dst, src, t)
            }
            Insn::Call { id } => {
                self.call_helper(st, pc, id)?;
                Ok(Flow::Next(next))
            }
            Insn::CallLocal { .. } => {
                let t = insn.jump_target(pc).unwrap_or(0) as usize;
                if st.frames.len() >= MAX_CALL_FRAMES {
                    return Err(self.err_at(
                        pc,
                        Some(st),
                        Rule::CallDepth,
                        format!(
                            "the call stack of {} frames is too deep (max {MAX_CALL_FRAMES})",
                            st.frames.len() + 1
                        ),
                    ));
                }
                let sp = self.graph.subprog_of.get(t).copied().unwrap_or(0) as usize;
                let mut f = Frame::new(st.frames.len() as u8, pc, sp);
                let caller = st.cur();
                f.regs[1..6].copy_from_slice(&caller.regs[1..6]);
                st.frames.push(f);
                Ok(Flow::Next(t))
            }
            Insn::CallX { .. } => Err(self.err_at(
                pc,
                Some(st),
                Rule::ControlFlow,
                "indirect call (callx) is not supported".into(),
            )),
            Insn::Exit => self.exit(st, pc),
        }
    }

    fn ld_imm64(&self, st: &State, pc: usize, src: LdImm64Src) -> R<Reg> {
        let (found, what, n, off) = match src {
            LdImm64Src::Imm(v) => return Ok(Reg::scalar(Scalar::constant(v))),
            LdImm64Src::MapFd(fd) => (self.env.map_by_fd(fd), "fd", fd, None),
            LdImm64Src::MapIdx(i) => (self.env.map_by_idx(i), "index", i, None),
            LdImm64Src::MapValueFd { fd, off } => (self.env.map_by_fd(fd), "fd", fd, Some(off)),
            LdImm64Src::MapValueIdx { idx, off } => {
                (self.env.map_by_idx(idx), "index", idx, Some(off))
            }
        };
        let Some(map) = found else {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::BadInput,
                format!("map {what} {n} does not refer to a map of this program"),
            ));
        };
        let def = self.env.maps[map];
        match off {
            None => Ok(Reg::ptr(PtrKind::MapPtr { map: map as u32 })),
            Some(off) => {
                if !map_type::is_array(def.map_type) {
                    return Err(self.err_at(
                        pc,
                        Some(st),
                        Rule::BadInput,
                        format!(
                            "direct value access on map type {} not supported (only array maps)",
                            def.map_type
                        ),
                    ));
                }
                if off >= def.value_size {
                    return Err(self.err_at(
                        pc,
                        Some(st),
                        Rule::MemoryAccess,
                        format!(
                            "invalid access to map value pointer, value_size={} off={off}",
                            def.value_size
                        ),
                    ));
                }
                let mut r = Reg::ptr(PtrKind::MapValue { map: map as u32 });
                r.off = off as i32;
                Ok(r)
            }
        }
    }

    // ----- ALU ---------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn alu(
        &mut self,
        st: &mut State,
        pc: usize,
        width: Width,
        op: AluOp,
        dst: u8,
        src: Operand,
    ) -> R<()> {
        let s = self.operand(st, pc, src)?;
        if op == AluOp::Mov {
            let r = if width == Width::W64 {
                if s.is_scalar() && s.id == 0 {
                    if let Operand::Reg(sr) = src {
                        // Link the copies so a later bounds check on one refines both.
                        if s.val.as_const().is_none() {
                            let id = st.new_id();
                            st.cur_mut().regs[sr as usize].id = id;
                            let mut c = s;
                            c.id = id;
                            c
                        } else {
                            s
                        }
                    } else {
                        s
                    }
                } else {
                    s
                }
            } else if s.is_ptr() {
                if !self.cfg.allow_ptr_leaks {
                    return Err(self.err_at(
                        pc,
                        Some(st),
                        Rule::PointerLeak,
                        format!("R{} partial copy of pointer", reg_of(src)),
                    ));
                }
                Reg::scalar(Scalar::urange(0, u32::MAX as u64))
            } else {
                Reg::scalar(s.val.zext32())
            };
            Self::set(st, dst, r);
            return Ok(());
        }
        let d = self.read(st, pc, dst)?;
        let dp = d.is_ptr();
        let sp = s.is_ptr();
        if !dp && !sp {
            if matches!(op, AluOp::Div | AluOp::Mod | AluOp::SDiv | AluOp::SMod) {
                if let Operand::Reg(r) = src {
                    let zero = match width {
                        Width::W64 => s.val.may_be(0),
                        Width::W32 => s.val.u32_min == 0 && s.val.var_off.subreg().contains(0),
                    };
                    if zero && !self.noted_div[pc] {
                        self.noted_div[pc] = true;
                        self.stats.possibly_zero_divisions += 1;
                        self.log.line(
                            1,
                            format_args!("{pc}: note: R{r} may be zero; division then yields 0 and modulo leaves the dividend"),
                        );
                    }
                }
            }
            let v = scalar::alu(op, width, &d.val, &s.val);
            Self::set(st, dst, Reg::scalar(v));
            return Ok(());
        }
        // Pointer arithmetic.
        let reject = |this: &Self, st: &State, msg: String| -> R<()> {
            Err(this.err_at(pc, Some(st), Rule::PointerArithmetic, msg))
        };
        let opname = disasm::alu_llvm_op(op);
        if width == Width::W32 {
            if self.cfg.allow_ptr_leaks {
                Self::set(st, dst, Reg::scalar(Scalar::urange(0, u32::MAX as u64)));
                return Ok(());
            }
            return reject(
                self,
                st,
                format!("R{dst} 32-bit pointer arithmetic prohibited"),
            );
        }
        let (ptr, off_val, ptr_reg) = match (op, dp, sp) {
            (AluOp::Add, true, false) => (d, s.val, dst),
            (AluOp::Sub, true, false) => (d, s.val, dst),
            (AluOp::Add, false, true) => (s, d.val, reg_of(src)),
            (AluOp::Sub, true, true) | (AluOp::Add, true, true) | (AluOp::Sub, false, true) => {
                if self.cfg.allow_ptr_leaks {
                    Self::set(st, dst, Reg::unknown());
                    return Ok(());
                }
                let msg = match (op, dp) {
                    (AluOp::Sub, false) => format!("R{dst} tried to subtract pointer from scalar"),
                    (AluOp::Sub, _) => format!("R{dst} pointer -= pointer prohibited"),
                    _ => format!("R{dst} pointer += pointer prohibited"),
                };
                return reject(self, st, msg);
            }
            _ => {
                if self.cfg.allow_ptr_leaks {
                    Self::set(st, dst, Reg::unknown());
                    return Ok(());
                }
                let which = if dp { dst } else { reg_of(src) };
                let msg = if matches!(op, AluOp::And | AluOp::Or | AluOp::Xor) {
                    format!("R{which} bitwise operator {opname} on pointer prohibited")
                } else {
                    format!("R{which} pointer arithmetic with {opname} operator prohibited")
                };
                return reject(self, st, msg);
            }
        };
        let (kind, nullable) = ptr.ptr_kind().unwrap_or((PtrKind::Ctx, false));
        if nullable {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::NullCheck,
                format!(
                    "R{ptr_reg} pointer arithmetic on {} prohibited, null-check it first",
                    ptr.type_name()
                ),
            ));
        }
        if let PtrKind::MapPtr { .. } = kind {
            return reject(
                self,
                st,
                format!("R{ptr_reg} pointer arithmetic on map_ptr prohibited"),
            );
        }
        let mut r = ptr;
        r.id = 0;
        self.need_precise = true;
        if let Some(c) = off_val.as_const() {
            let c = c as i64;
            let new = if op == AluOp::Sub {
                (r.off as i64).checked_sub(c)
            } else {
                (r.off as i64).checked_add(c)
            };
            match new {
                Some(v) if (-MAX_VAR_OFF..=MAX_VAR_OFF).contains(&v) => r.off = v as i32,
                _ => {
                    return reject(
                        self,
                        st,
                        format!("R{dst} pointer offset {c} is out of range for pointer arithmetic"),
                    )
                }
            }
        } else {
            if off_val.smin < -MAX_VAR_OFF || off_val.smax > MAX_VAR_OFF {
                let bound = if off_val.smin < -MAX_VAR_OFF {
                    "min"
                } else {
                    "max"
                };
                return reject(
                    self,
                    st,
                    format!(
                        "math between {} pointer and register with unbounded {bound} value is not allowed; bounds-check the offset first",
                        ptr.type_name()
                    ),
                );
            }
            let sop = if op == AluOp::Sub {
                AluOp::Sub
            } else {
                AluOp::Add
            };
            let v = scalar::alu(sop, Width::W64, &r.val, &off_val);
            if v.smin < -MAX_VAR_OFF || v.smax > MAX_VAR_OFF {
                return reject(
                    self,
                    st,
                    format!(
                        "R{dst} variable offset of {} pointer is out of range",
                        ptr.type_name()
                    ),
                );
            }
            r.val = v;
        }
        Self::set(st, dst, r);
        Ok(())
    }

    // ----- memory ------------------------------------------------------------

    /// Checks that `size` bytes at `ptr + off` may be accessed. Returns the
    /// region and the range `[lo, hi]` of the access's first byte.
    #[allow(clippy::too_many_arguments)]
    fn check_access(
        &mut self,
        st: &State,
        pc: usize,
        regno: u8,
        ptr: &Reg,
        off: i64,
        size: u64,
        dir: Dir,
    ) -> R<(PtrKind, i64, i64)> {
        let e = |this: &Self, rule: Rule, msg: String| this.err_at(pc, Some(st), rule, msg);
        let (kind, nullable) = match ptr.ty {
            RegType::NotInit => {
                return Err(e(
                    self,
                    Rule::UninitRegister,
                    format!(
                        "R{regno} !read_ok: R{regno} is read before it is written on this path"
                    ),
                ))
            }
            RegType::Scalar => {
                return Err(e(
                    self,
                    Rule::MemoryAccess,
                    format!(
                    "R{regno} invalid mem access 'scalar': R{regno} holds a number, not a pointer"
                ),
                ))
            }
            RegType::Ptr { kind, nullable } => (kind, nullable),
        };
        if nullable {
            let helper = match kind {
                PtrKind::Mem { .. } => "bpf_ringbuf_reserve",
                _ => "bpf_map_lookup_elem",
            };
            return Err(e(
                self,
                Rule::NullCheck,
                format!(
                    "R{regno} invalid mem access '{}': check the value returned by {helper} against NULL before dereferencing it",
                    ptr.type_name()
                ),
            ));
        }
        let size_i = size as i64;
        let fixed = ptr.off as i64 + off;
        let v = ptr.val;
        let var_const = v.as_const().map(|c| c as i64);
        // Pointer offsets are kept within +-2^29 by the arithmetic checks.
        let lo = fixed + v.smin.clamp(-MAX_VAR_OFF, MAX_VAR_OFF);
        let hi = fixed + v.smax.clamp(-MAX_VAR_OFF, MAX_VAR_OFF);
        let rw = if dir == Dir::Read {
            "read from"
        } else {
            "write to"
        };
        match kind {
            PtrKind::MapPtr { .. } => Err(e(
                self,
                Rule::MemoryAccess,
                format!("R{regno} invalid mem access 'map_ptr': a map is not memory; use bpf_map_lookup_elem to get a value"),
            )),
            PtrKind::Ctx => {
                let ctx = &self.env.prog_type.ctx;
                let Some(vc) = var_const else {
                    return Err(e(
                        self,
                        Rule::Context,
                        format!("variable ctx access var_off={} disallowed", v),
                    ));
                };
                let o = fixed + vc;
                if dir == Dir::Write && !ctx.writable {
                    return Err(e(
                        self,
                        Rule::Context,
                        format!("invalid bpf_context access off={o} size={size}: {} is read-only", ctx.name),
                    ));
                }
                if o < 0 || o + size_i > ctx.size as i64 {
                    return Err(e(
                        self,
                        Rule::Context,
                        format!(
                            "invalid bpf_context access off={o} size={size}: {} is {} bytes",
                            ctx.name, ctx.size
                        ),
                    ));
                }
                if o % size_i != 0 {
                    return Err(e(
                        self,
                        Rule::Context,
                        format!("invalid bpf_context access off={o} size={size}: misaligned access"),
                    ));
                }
                if ctx.field_for(o as u32, size as u32).is_none() {
                    return Err(e(
                        self,
                        Rule::Context,
                        format!(
                            "invalid bpf_context access off={o} size={size}: not within one field of {}",
                            ctx.name
                        ),
                    ));
                }
                Ok((kind, o, o))
            }
            PtrKind::Stack { frame } => {
                if frame as usize >= st.frames.len() {
                    return Err(e(self, Rule::Internal, format!("R{regno} points to a dead stack frame")));
                }
                if lo < -STACK || hi + size_i > 0 {
                    let msg = if var_const.is_some() {
                        format!(
                            "invalid {rw} stack R{regno} off={lo} size={size}: the stack is fp-{STACK}..fp-1"
                        )
                    } else {
                        format!(
                            "invalid variable-offset {rw} stack R{regno} var_off={v} off={fixed} size={size}: the access may leave fp-{STACK}..fp-1"
                        )
                    };
                    return Err(e(self, Rule::MemoryAccess, msg));
                }
                let total = Tnum::constant(fixed as u64).add(v.var_off);
                if !total.is_aligned(size) {
                    return Err(e(
                        self,
                        Rule::MemoryAccess,
                        format!("misaligned stack access off {fixed}+{v} size {size}"),
                    ));
                }
                let sp = st.frames[frame as usize].subprog;
                if let Some(d) = self.stats.stack_depth.get_mut(sp) {
                    *d = (*d).max((-lo) as u32);
                }
                Ok((kind, lo, hi))
            }
            PtrKind::MapValue { map } => {
                let vs = self.env.maps.get(map as usize).map_or(0, |m| m.value_size) as i64;
                self.region_bounds(st, pc, regno, ptr, fixed, lo, hi, size_i, vs, "map value", "value_size")?;
                Ok((kind, lo, hi))
            }
            PtrKind::Mem { size: ms, .. } => {
                self.region_bounds(st, pc, regno, ptr, fixed, lo, hi, size_i, ms as i64, "memory", "mem_size")?;
                Ok((kind, lo, hi))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn region_bounds(
        &self,
        st: &State,
        pc: usize,
        regno: u8,
        ptr: &Reg,
        fixed: i64,
        lo: i64,
        hi: i64,
        size: i64,
        region: i64,
        what: &str,
        sz_name: &str,
    ) -> R<()> {
        let e = |msg: String| Err(self.err_at(pc, Some(st), Rule::MemoryAccess, msg));
        let v = ptr.val;
        if v.as_const().is_some() {
            if lo < 0 || lo + size > region {
                return e(format!(
                    "invalid access to {what}, {sz_name}={region} off={lo} size={size}"
                ));
            }
            return Ok(());
        }
        if lo < 0 {
            if v.smin <= -MAX_VAR_OFF {
                return e(format!(
                    "R{regno} unbounded memory access, make sure to bounds check any such access"
                ));
            }
            return e(format!(
                "R{regno} min value is negative, either use unsigned index or do a if (index >= 0) check (off={fixed}, var_off={v})"
            ));
        }
        if hi + size > region {
            if v.smax >= MAX_VAR_OFF {
                return e(format!(
                    "R{regno} unbounded memory access, make sure to bounds check any such access"
                ));
            }
            return e(format!(
                "R{regno} max value is outside of the allowed memory range: invalid access to {what}, {sz_name}={region} off={hi} size={size}; check the index against the size before using it"
            ));
        }
        Ok(())
    }

    fn load(&mut self, st: &mut State, pc: usize, src: u8, off: i16, size: u64) -> R<Reg> {
        let ptr = st.cur().regs[src as usize];
        let (kind, lo, hi) = self.check_access(st, pc, src, &ptr, off as i64, size, Dir::Read)?;
        let unknown = Reg::scalar(Scalar::unknown().truncate(size as u32));
        match kind {
            PtrKind::Stack { frame } => self.stack_read(st, pc, src, frame as usize, lo, hi, size),
            _ => Ok(unknown),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stack_read(
        &self,
        st: &State,
        pc: usize,
        regno: u8,
        frame: usize,
        lo: i64,
        hi: i64,
        size: u64,
    ) -> R<Reg> {
        let fr = &st.frames[frame];
        let unknown = Reg::scalar(Scalar::unknown().truncate(size as u32));
        if lo == hi {
            let (slot, b) = fr.byte(lo);
            if size == 8 && slot.is_spill() {
                return Ok(slot.spill);
            }
            if slot.is_spill() {
                if slot.spill.is_ptr() {
                    if self.cfg.allow_ptr_leaks {
                        return Ok(unknown);
                    }
                    return Err(self.err_at(
                        pc,
                        Some(st),
                        Rule::PointerLeak,
                        format!("invalid size of register fill: reading {size} bytes of a spilled pointer at fp{lo}"),
                    ));
                }
                if b == 0 {
                    return Ok(Reg::scalar(slot.spill.val.truncate(size as u32)));
                }
                return Ok(unknown);
            }
            let mut all_zero = true;
            for i in 0..size as i64 {
                let (s, b) = fr.byte(lo + i);
                match s.bytes[b] {
                    ByteState::Invalid => {
                        if !self.cfg.allow_uninit_stack {
                            return Err(self.err_at(
                                pc,
                                Some(st),
                                Rule::UninitStack,
                                format!(
                                    "invalid read from stack R{regno} off {lo}+{i} size {size}: fp{} is read before it is written",
                                    lo + i
                                ),
                            ));
                        }
                        all_zero = false;
                    }
                    ByteState::Zero => {}
                    _ => all_zero = false,
                }
            }
            return Ok(if all_zero {
                Reg::scalar(Scalar::constant(0))
            } else {
                unknown
            });
        }
        // Variable offset: every byte it may touch must be readable.
        for o in lo..hi + size as i64 {
            let (s, b) = fr.byte(o);
            if s.is_ptr_spill() && !self.cfg.allow_ptr_leaks {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::PointerLeak,
                    format!("invalid variable-offset read from stack R{regno}: it may read bytes of the pointer spilled at fp{}", o - b as i64),
                ));
            }
            if s.bytes[b] == ByteState::Invalid && !self.cfg.allow_uninit_stack {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::UninitStack,
                    format!(
                        "invalid variable-offset read from stack R{regno} off {lo}..{} size {size}: fp{o} may be read before it is written",
                        hi
                    ),
                ));
            }
        }
        Ok(unknown)
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        st: &mut State,
        pc: usize,
        dst: u8,
        off: i16,
        size: Size,
        val: Reg,
        src: Option<u8>,
    ) -> R<()> {
        let ptr = st.cur().regs[dst as usize];
        let n = size.bytes() as u64;
        let (kind, lo, hi) = self.check_access(st, pc, dst, &ptr, off as i64, n, Dir::Write)?;
        let srcno = src.unwrap_or(0);
        if val.is_ptr() && !self.cfg.allow_ptr_leaks {
            let into = match kind {
                PtrKind::MapValue { .. } => Some("map"),
                PtrKind::Mem { .. } => Some("mem"),
                PtrKind::Ctx => Some("ctx"),
                _ => None,
            };
            if let Some(into) = into {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::PointerLeak,
                    format!("R{srcno} leaks addr into {into}: pointers must not be stored outside the stack"),
                ));
            }
        }
        if let PtrKind::Stack { frame } = kind {
            self.stack_write(st, pc, frame as usize, lo, hi, n, val, srcno)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn stack_write(
        &self,
        st: &mut State,
        pc: usize,
        frame: usize,
        lo: i64,
        hi: i64,
        size: u64,
        val: Reg,
        srcno: u8,
    ) -> R<()> {
        let leaks = self.cfg.allow_ptr_leaks;
        if lo == hi {
            if size == 8 {
                let (slot, _) = st.frames[frame].byte_mut(lo);
                *slot = Slot {
                    bytes: [ByteState::Spill; 8],
                    spill: val,
                    narrow_const: None,
                };
                return Ok(());
            }
            if val.is_ptr() && !leaks {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::PointerLeak,
                    format!(
                        "invalid size of register spill: storing {size} bytes of pointer R{srcno}"
                    ),
                ));
            }
            let (slot, _) = st.frames[frame].byte(lo);
            if slot.is_ptr_spill() && !leaks {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::PointerLeak,
                    format!(
                        "attempt to corrupt spilled pointer on stack at fp{}",
                        lo - slot_byte(lo)
                    ),
                ));
            }
            let known = val
                .val
                .truncate(size as u32)
                .as_const()
                .filter(|_| val.is_scalar());
            let zero = known == Some(0);
            let (slot, b) = st.frames[frame].byte_mut(lo);
            if slot.is_spill() {
                *slot = Slot {
                    bytes: [ByteState::Misc; 8],
                    spill: Reg::NOT_INIT,
                    narrow_const: None,
                };
            }
            for i in 0..size as usize {
                slot.bytes[b + i] = if zero {
                    ByteState::Zero
                } else {
                    ByteState::Misc
                };
            }
            // Like Linux, a narrow constant is kept only at a slot's start.
            if b == 0 {
                slot.narrow_const = known.map(|c| (size as u8, c));
            }
            return Ok(());
        }
        if val.is_ptr() && !leaks {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::PointerLeak,
                format!("spilling pointer R{srcno} to a variable stack offset is not allowed"),
            ));
        }
        let zero = val.is_scalar() && val.val.truncate(size as u32).as_const() == Some(0);
        for o in lo..hi + size as i64 {
            let (slot, b) = st.frames[frame].byte(o);
            if slot.is_ptr_spill() && !leaks {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::PointerLeak,
                    format!(
                        "variable-offset stack write may corrupt the pointer spilled at fp{}",
                        o - b as i64
                    ),
                ));
            }
            let (slot, b) = st.frames[frame].byte_mut(o);
            if slot.is_spill() {
                *slot = Slot {
                    bytes: [ByteState::Misc; 8],
                    spill: Reg::NOT_INIT,
                    narrow_const: None,
                };
            }
            // The byte may or may not be written: keep what holds either way.
            if slot.bytes[b] == ByteState::Zero && !zero {
                slot.bytes[b] = ByteState::Misc;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn atomic(
        &mut self,
        st: &mut State,
        pc: usize,
        size: Size,
        op: AtomicOp,
        fetch: bool,
        dst: u8,
        off: i16,
        src: u8,
    ) -> R<()> {
        let v = self.read(st, pc, src)?;
        if v.is_ptr() && !self.cfg.allow_ptr_leaks {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::PointerLeak,
                format!("R{src} leaks addr into mem"),
            ));
        }
        if op == AtomicOp::CmpXchg {
            let r0 = self.read(st, pc, 0)?;
            if r0.is_ptr() && !self.cfg.allow_ptr_leaks {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::PointerLeak,
                    "R0 leaks addr into mem".into(),
                ));
            }
        }
        let ptr = st.cur().regs[dst as usize];
        if let Some((PtrKind::Ctx, _)) = ptr.ptr_kind() {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Context,
                format!("BPF_ATOMIC stores into R{dst} ctx is not allowed"),
            ));
        }
        let n = size.bytes() as u64;
        let (kind, lo, hi) = self.check_access(st, pc, dst, &ptr, off as i64, n, Dir::Read)?;
        // Atomics must be naturally aligned (regions start 8-byte aligned).
        let total = Tnum::constant((ptr.off as i64 + off as i64) as u64).add(ptr.val.var_off);
        if !total.is_aligned(n) {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::MemoryAccess,
                format!(
                    "misaligned atomic access off {}+{} size {n}",
                    ptr.off as i64 + off as i64,
                    ptr.val
                ),
            ));
        }
        if let PtrKind::Stack { frame } = kind {
            let old = self.stack_read(st, pc, dst, frame as usize, lo, hi, n)?;
            if old.is_ptr() && !self.cfg.allow_ptr_leaks {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::PointerLeak,
                    format!("BPF_ATOMIC on the pointer spilled at fp{lo} is not allowed"),
                ));
            }
            self.stack_write(st, pc, frame as usize, lo, hi, n, Reg::unknown(), src)?;
        }
        if fetch {
            let r = Reg::scalar(Scalar::unknown().truncate(n as u32));
            let target = if op == AtomicOp::CmpXchg { 0 } else { src };
            Self::set(st, target, r);
        }
        Ok(())
    }

    // ----- jumps -------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn jmp(
        &mut self,
        st: &mut State,
        pc: usize,
        width: Width,
        cond: JmpCond,
        dst: u8,
        src: Operand,
        target: usize,
    ) -> R<Flow> {
        let a = self.read(st, pc, dst)?;
        let b = self.operand(st, pc, src)?;
        let next = pc + 1;
        if a.is_scalar() && b.is_scalar() {
            let t = scalar::refine(cond, width, &a.val, &b.val, true);
            let f = scalar::refine(cond, width, &a.val, &b.val, false);
            let apply = |st: &mut State, (x, y): (Scalar, Scalar)| {
                set_scalar(st, dst, &a, x);
                if let Operand::Reg(sr) = src {
                    if sr != dst {
                        set_scalar(st, sr, &b, y);
                    }
                }
            };
            return Ok(match (t, f) {
                (Some(t), Some(f)) => {
                    let mut other = st.clone();
                    apply(&mut other, t);
                    apply(st, f);
                    Flow::Fork(other, target, next)
                }
                (Some(t), None) => {
                    self.need_precise = true;
                    apply(st, t);
                    Flow::Next(target)
                }
                (None, Some(f)) => {
                    self.need_precise = true;
                    apply(st, f);
                    Flow::Next(next)
                }
                // Both impossible: this path itself cannot happen.
                (None, None) => {
                    self.need_precise = true;
                    Flow::Done
                }
            });
        }
        // Null checks: a pointer against the constant 0.
        let (preg, pregno, other) = if a.is_ptr() {
            (a, dst, b)
        } else {
            (b, reg_of(src), a)
        };
        let is_zero = other.is_scalar() && other.val.as_const() == Some(0);
        if width == Width::W64 && is_zero && matches!(cond, JmpCond::Eq | JmpCond::Ne) {
            let (_, nullable) = preg.ptr_kind().unwrap_or((PtrKind::Ctx, false));
            let null_on_taken = cond == JmpCond::Eq;
            if !nullable {
                // A valid pointer is never NULL.
                return Ok(Flow::Next(if null_on_taken { next } else { target }));
            }
            let mut other_st = st.clone();
            let (null_st, nonnull_st) = if null_on_taken {
                (&mut other_st, &mut *st)
            } else {
                (&mut *st, &mut other_st)
            };
            mark_ptr_or_null(null_st, preg.id, true);
            mark_ptr_or_null(nonnull_st, preg.id, false);
            let _ = pregno;
            return Ok(Flow::Fork(other_st, target, next));
        }
        if self.cfg.allow_ptr_leaks {
            let other_st = st.clone();
            return Ok(Flow::Fork(other_st, target, next));
        }
        if a.is_ptr() && b.is_ptr() && width == Width::W64 && a.ptr_kind() == b.ptr_kind() {
            // Same region: the comparison reveals nothing an offset would not.
            let other_st = st.clone();
            return Ok(Flow::Fork(other_st, target, next));
        }
        let msg = if a.is_ptr() && b.is_ptr() {
            format!(
                "R{dst} pointer comparison prohibited: comparing {} with {}",
                a.type_name(),
                b.type_name()
            )
        } else {
            format!(
                "R{pregno} pointer comparison prohibited: {} compared with a scalar (only == 0 / != 0 null checks are allowed)",
                preg.type_name()
            )
        };
        Err(self.err_at(pc, Some(st), Rule::PointerArithmetic, msg))
    }

    // ----- calls and exit ----------------------------------------------------

    fn exit(&mut self, st: &mut State, pc: usize) -> R<Flow> {
        let r0 = st.cur().regs[0];
        let depth = st.frames.len();
        if !r0.is_init() {
            let what = if depth > 1 {
                "the function's return value"
            } else {
                "the program's return value"
            };
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::UninitRegister,
                format!("R0 !read_ok: set R0 ({what}) before exit"),
            ));
        }
        if depth > 1 {
            let dying = (depth - 1) as u8;
            if let Some((PtrKind::Stack { frame }, _)) = r0.ptr_kind() {
                if frame == dying {
                    return Err(self.err_at(
                        pc,
                        Some(st),
                        Rule::MemoryAccess,
                        "cannot return stack pointer to the caller frame".into(),
                    ));
                }
            }
            for f in &st.frames[..depth - 1] {
                for (i, s) in f.stack.iter().enumerate() {
                    if let Some((PtrKind::Stack { frame }, _)) =
                        s.spill.ptr_kind().filter(|_| s.is_spill())
                    {
                        if frame == dying {
                            return Err(self.err_at(
                                pc,
                                Some(st),
                                Rule::MemoryAccess,
                                format!("dangling pointer: the caller's fp-{} holds a pointer into the returning function's stack", 8 * (i + 1)),
                            ));
                        }
                    }
                }
            }
            let callsite = st.cur().callsite;
            st.frames.pop();
            let caller = st.cur_mut();
            caller.regs[0] = r0;
            for r in &mut caller.regs[1..6] {
                *r = Reg::NOT_INIT;
            }
            return Ok(Flow::Next(callsite + 1));
        }
        if r0.is_ptr() && !self.cfg.allow_ptr_leaks {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::PointerLeak,
                format!(
                    "R0 leaks addr as return value: the program returns a {} pointer",
                    r0.type_name()
                ),
            ));
        }
        if let Some(r) = st.refs.first() {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Reference,
                format!(
                    "Unreleased reference id={} alloc_insn={}: pass the record from bpf_ringbuf_reserve to bpf_ringbuf_submit or bpf_ringbuf_discard on every path",
                    r.id, r.insn
                ),
            ));
        }
        Ok(Flow::Done)
    }

    fn call_helper(&mut self, st: &mut State, pc: usize, id: i32) -> R<()> {
        let Some(proto) = self.env.helpers.get(id) else {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::HelperNotAllowed,
                format!("invalid func unknown#{id}"),
            ));
        };
        let name = proto.name.as_str();
        if !self.env.prog_type.allowed_helpers.contains(&id) {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::HelperNotAllowed,
                format!(
                    "program of this type ({}) cannot use helper {name}#{id}",
                    self.env.prog_type.name
                ),
            ));
        }
        let leaks = self.cfg.allow_ptr_leaks;
        let mut map: Option<u32> = None;
        let mut mem: Option<(u8, Reg, Dir)> = None;
        let mut alloc_size: u32 = 0;
        let mut release: Option<u32> = None;
        let mut key: Option<Reg> = None;
        for (i, &kind) in proto.args.iter().enumerate().take(5) {
            let regno = (i + 1) as u8;
            let reg = st.cur().regs[regno as usize];
            let e = |this: &Self, st: &State, rule: Rule, msg: String| {
                Err(this.err_at(pc, Some(st), rule, msg))
            };
            if kind == ArgKind::ScalarOrUninit {
                if reg.is_ptr() && !leaks {
                    return e(
                        self,
                        st,
                        Rule::PointerLeak,
                        format!("R{regno} leaks addr into helper function {name}"),
                    );
                }
                continue;
            }
            if !reg.is_init() {
                return e(
                    self,
                    st,
                    Rule::UninitRegister,
                    format!("R{regno} !read_ok: argument {} of {name} is not set", i + 1),
                );
            }
            let expect = |this: &Self, st: &State, want: &str| {
                e(
                    this,
                    st,
                    Rule::HelperArgument,
                    format!(
                        "R{regno} type={} expected={want} (argument {} of {name})",
                        reg.type_name(),
                        i + 1
                    ),
                )
            };
            match kind {
                ArgKind::ScalarOrUninit | ArgKind::UnsafePtr => {}
                ArgKind::Anything => {
                    if reg.is_ptr() && !leaks {
                        return e(
                            self,
                            st,
                            Rule::PointerLeak,
                            format!("R{regno} leaks addr into helper function {name}"),
                        );
                    }
                }
                ArgKind::ConstMapPtr => {
                    let Some((PtrKind::MapPtr { map: m }, _)) = reg.ptr_kind() else {
                        return expect(self, st, "map_ptr");
                    };
                    let mt = self.env.maps.get(m as usize).map_or(0, |d| d.map_type);
                    if !proto.map_types.is_empty() && !proto.map_types.contains(&mt) {
                        return e(
                            self,
                            st,
                            Rule::HelperArgument,
                            format!("cannot pass map_type {mt} into func {name}#{id}"),
                        );
                    }
                    map = Some(m);
                }
                ArgKind::PtrToMapKey | ArgKind::PtrToMapValue => {
                    let Some(m) = map.and_then(|m| self.env.maps.get(m as usize)) else {
                        return e(self, st, Rule::Internal, format!("helper prototype of {name}: map key/value argument without a map argument before it"));
                    };
                    let n = if kind == ArgKind::PtrToMapKey {
                        key = Some(reg);
                        m.key_size
                    } else {
                        m.value_size
                    } as u64;
                    self.helper_mem(st, pc, regno, &reg, n, n, Dir::Read, name)?;
                }
                ArgKind::PtrToMem => mem = Some((regno, reg, Dir::Read)),
                ArgKind::PtrToUninitMem => mem = Some((regno, reg, Dir::Write)),
                ArgKind::ConstSize | ArgKind::ConstSizeOrZero => {
                    let Some((mregno, mreg, dir)) = mem.take() else {
                        return e(self, st, Rule::Internal, format!("helper prototype of {name}: size argument without a memory argument before it"));
                    };
                    if !reg.is_scalar() {
                        return expect(self, st, "scalar");
                    }
                    let s = reg.val;
                    self.need_precise = true;
                    if s.smin < 0 {
                        return e(self, st, Rule::HelperArgument, format!("R{regno} min value is negative, either use unsigned or 'var &= const'"));
                    }
                    if s.umax > MAX_MEM_SIZE {
                        return e(self, st, Rule::HelperArgument, format!("R{regno} unbounded memory access, use 'var &= const' or 'if (var < const)'"));
                    }
                    if s.umin == 0 && kind == ArgKind::ConstSize {
                        return e(self, st, Rule::HelperArgument, format!("R{regno} invalid zero-sized read: the size passed to {name} may be 0"));
                    }
                    if s.umax > 0 {
                        self.helper_mem(st, pc, mregno, &mreg, s.umax, s.umin, dir, name)?;
                    }
                }
                ArgKind::PtrToCtx => {
                    let Some((PtrKind::Ctx, _)) = reg.ptr_kind() else {
                        return expect(self, st, "ctx");
                    };
                    if reg.off != 0 || reg.val.as_const() != Some(0) {
                        return e(self, st, Rule::HelperArgument, format!("dereference of modified ctx ptr R{regno} off={} disallowed: pass the context unchanged", reg.off));
                    }
                }
                ArgKind::ConstAllocSize => {
                    self.need_precise = true;
                    let c = reg.val.as_const().filter(|_| reg.is_scalar());
                    match c {
                        Some(c) if c > 0 && c <= MAX_MEM_SIZE => alloc_size = c as u32,
                        Some(c) => return e(self, st, Rule::HelperArgument, format!("R{regno} size {c} for {name} must be between 1 and {MAX_MEM_SIZE}")),
                        None => return e(self, st, Rule::HelperArgument, format!("R{regno} is not a known constant: the size passed to {name} must be a constant")),
                    }
                }
                ArgKind::PtrToAllocMem => {
                    let (PtrKind::Mem { ref_id, .. }, false) =
                        reg.ptr_kind().unwrap_or((PtrKind::Ctx, true))
                    else {
                        let want = if reg.ptr_kind().is_some_and(|(_, n)| n) {
                            "non-NULL ringbuf record (check the result of bpf_ringbuf_reserve against NULL first)"
                        } else {
                            "ringbuf record from bpf_ringbuf_reserve"
                        };
                        return expect(self, st, want);
                    };
                    if ref_id == 0 {
                        return expect(self, st, "ringbuf record from bpf_ringbuf_reserve");
                    }
                    if reg.off != 0 || reg.val.as_const() != Some(0) {
                        return e(
                            self,
                            st,
                            Rule::Reference,
                            format!(
                                "R{regno} must have zero offset when passed to release func {name}"
                            ),
                        );
                    }
                    release = Some(ref_id);
                }
            }
        }
        if let Some((mregno, ..)) = mem {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Internal,
                format!(
                    "helper prototype of {name}: memory argument R{mregno} has no size argument"
                ),
            ));
        }
        if let Some(rid) = release {
            let Some(pos) = st.refs.iter().position(|r| r.id == rid) else {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::Reference,
                    format!("release of unacquired reference id={rid}"),
                ));
            };
            st.refs.remove(pos);
            st.for_each_reg(|r| {
                if let Some((PtrKind::Mem { ref_id, .. }, _)) = r.ptr_kind() {
                    if ref_id == rid {
                        *r = Reg::NOT_INIT;
                    }
                }
            });
            // Spilled copies of the record become unreadable.
            for f in &mut st.frames {
                for s in &mut f.stack {
                    if s.is_spill() && !s.spill.is_init() {
                        *s = Slot::INVALID;
                    }
                }
            }
        }
        let cur = st.cur_mut();
        for r in &mut cur.regs[1..6] {
            *r = Reg::NOT_INIT;
        }
        let r0 = match proto.ret {
            RetKind::Integer | RetKind::Void => Reg::unknown(),
            RetKind::MapValueOrNull => {
                let Some(m) = map else {
                    return Err(self.err_at(pc, Some(st), Rule::Internal, format!("helper prototype of {name}: returns a map value but has no map argument")));
                };
                // Like Linux (6.13+), a lookup in an array with a constant
                // key in range cannot fail: its value pointer is not NULL.
                let def = self.env.maps.get(m as usize).copied();
                let in_range = match (def, key) {
                    (Some(d), Some(k))
                        if matches!(d.map_type, map_type::ARRAY | map_type::PERCPU_ARRAY) =>
                    {
                        let c = constant_key(st, &k, d.key_size);
                        if c.is_some() {
                            // The verdict now depends on the key's value.
                            self.need_precise = true;
                        }
                        c.is_some_and(|c| c < u64::from(d.max_entries))
                    }
                    _ => false,
                };
                let id = st.new_id();
                Reg {
                    ty: RegType::Ptr {
                        kind: PtrKind::MapValue { map: m },
                        nullable: !in_range,
                    },
                    off: 0,
                    id,
                    val: Scalar::constant(0),
                }
            }
            RetKind::AllocMemOrNull => {
                let id = st.new_id();
                st.refs.push(RefState { id, insn: pc });
                Reg {
                    ty: RegType::Ptr {
                        kind: PtrKind::Mem {
                            size: alloc_size,
                            ref_id: id,
                        },
                        nullable: true,
                    },
                    off: 0,
                    id,
                    val: Scalar::constant(0),
                }
            }
        };
        Self::set(st, 0, r0);
        Ok(())
    }

    /// Checks a helper's memory argument of up to `size` bytes; for writes
    /// into the stack, marks the first `min_size` bytes (those the helper
    /// surely writes) initialised.
    #[allow(clippy::too_many_arguments)]
    fn helper_mem(
        &mut self,
        st: &mut State,
        pc: usize,
        regno: u8,
        reg: &Reg,
        size: u64,
        min_size: u64,
        dir: Dir,
        name: &str,
    ) -> R<()> {
        match reg.ptr_kind() {
            Some((PtrKind::Stack { .. } | PtrKind::MapValue { .. } | PtrKind::Mem { .. }, _)) => {}
            _ => {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::HelperArgument,
                    format!(
                    "R{regno} type={} expected=fp, map_value, mem (a pointer to memory for {name})",
                    reg.type_name()
                ),
                ))
            }
        }
        let (kind, lo, hi) = self.check_access_bytes(st, pc, regno, reg, size, dir)?;
        let PtrKind::Stack { frame } = kind else {
            return Ok(());
        };
        let frame = frame as usize;
        let leaks = self.cfg.allow_ptr_leaks;
        let end = hi + size as i64;
        let sure = lo + min_size.min(size) as i64;
        match dir {
            Dir::Read => {
                for o in lo..end {
                    let (s, b) = st.frames[frame].byte(o);
                    if s.is_ptr_spill() && !leaks {
                        return Err(self.err_at(
                            pc,
                            Some(st),
                            Rule::PointerLeak,
                            format!("invalid indirect read from stack R{regno} off {lo}+{} size {size}: the pointer spilled at fp{} would leak through {name}", o - lo, o - b as i64),
                        ));
                    }
                    if s.bytes[b] == ByteState::Invalid && !self.cfg.allow_uninit_stack {
                        return Err(self.err_at(
                            pc,
                            Some(st),
                            Rule::UninitStack,
                            format!("invalid indirect read from stack R{regno} off {lo}+{} size {size}: fp{o} is not initialised before the call to {name}", o - lo),
                        ));
                    }
                }
            }
            Dir::Write => {
                if lo != hi {
                    // Which bytes get written is unknown: nothing becomes
                    // initialised, but spilled pointers could be corrupted.
                    for o in lo..end {
                        let (s, b) = st.frames[frame].byte(o);
                        if s.is_ptr_spill() && !leaks {
                            return Err(self.err_at(pc, Some(st), Rule::PointerLeak, format!("variable-offset stack write may corrupt the pointer spilled at fp{}", o - b as i64)));
                        }
                    }
                    return Ok(());
                }
                for o in lo..end {
                    let (s, b) = st.frames[frame].byte(o);
                    // A size known only as a range writes a prefix of
                    // unknown length: only [lo, sure) is surely written.
                    let slot_start = o - b as i64;
                    let partial = slot_start < lo || slot_start + 8 > sure;
                    if s.is_ptr_spill() && !leaks && partial {
                        return Err(self.err_at(
                            pc,
                            Some(st),
                            Rule::PointerLeak,
                            format!(
                                "attempt to corrupt spilled pointer on stack at fp{}",
                                o - b as i64
                            ),
                        ));
                    }
                }
                for o in lo..end {
                    let (slot, b) = st.frames[frame].byte_mut(o);
                    if slot.is_spill() {
                        *slot = Slot {
                            bytes: [ByteState::Misc; 8],
                            spill: Reg::NOT_INIT,
                            narrow_const: None,
                        };
                    }
                    if o < sure || slot.bytes[b] == ByteState::Zero {
                        slot.bytes[b] = ByteState::Misc;
                    }
                }
            }
        }
        Ok(())
    }

    /// Like [`Checker::check_access`] for a byte buffer of `size` bytes (no
    /// alignment requirement).
    fn check_access_bytes(
        &mut self,
        st: &State,
        pc: usize,
        regno: u8,
        reg: &Reg,
        size: u64,
        dir: Dir,
    ) -> R<(PtrKind, i64, i64)> {
        if let Some((PtrKind::Stack { .. }, _)) = reg.ptr_kind() {
            // Check bounds with byte granularity: pretend a 1-byte access at
            // the first and the last byte.
            let (k, lo, hi) = self.check_access(st, pc, regno, reg, 0, 1, dir)?;
            let last = size.saturating_sub(1) as i64;
            if hi + last >= 0 {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::MemoryAccess,
                    format!("invalid indirect access to stack R{regno} off={lo} size={size}: the buffer runs past fp-1"),
                ));
            }
            return Ok((k, lo, hi));
        }
        self.check_access(st, pc, regno, reg, 0, size, dir)
    }
}

/// Byte index of frame offset `off` inside its slot.
fn slot_byte(off: i64) -> i64 {
    super::state::slot_of(off).1 as i64
}

fn reg_of(o: Operand) -> u8 {
    match o {
        Operand::Reg(r) => r,
        Operand::Imm(_) => 0,
    }
}

/// Writes a refined scalar back to `r`, and to every copy linked with it.
fn set_scalar(st: &mut State, r: u8, before: &Reg, v: Scalar) {
    let id = before.id;
    let mut reg = *before;
    reg.val = v;
    st.cur_mut().regs[r as usize] = reg;
    if id != 0 {
        st.for_each_reg(|x| {
            if x.is_scalar() && x.id == id {
                x.val = v;
            }
        });
    }
}

/// After a NULL check on pointer `id`: on the NULL arm every copy becomes the
/// scalar 0 (and a reference it held is dropped); on the other arm every copy
/// is a valid pointer.
fn mark_ptr_or_null(st: &mut State, id: u32, is_null: bool) {
    if id == 0 {
        return;
    }
    let mut dropped_ref = None;
    st.for_each_reg(|r| {
        if let RegType::Ptr {
            kind,
            nullable: true,
        } = r.ty
        {
            if r.id == id {
                if is_null {
                    if let PtrKind::Mem { ref_id, .. } = kind {
                        dropped_ref = Some(ref_id);
                    }
                    *r = Reg::scalar(Scalar::constant(0));
                } else {
                    r.ty = RegType::Ptr {
                        kind,
                        nullable: false,
                    };
                    r.id = 0;
                }
            }
        }
    });
    if let Some(rid) = dropped_ref {
        st.refs.retain(|x| x.id != rid);
    }
}

/// The value of the map key `key` points to, when the stack holds a known
/// constant there: bytes all known zero, or a narrow store of a constant
/// of exactly the key's size at a slot's start (what Linux's
/// `get_constant_map_key` accepts). `None` otherwise.
fn constant_key(st: &State, key: &Reg, key_size: u32) -> Option<u64> {
    let Some((PtrKind::Stack { frame }, false)) = key.ptr_kind() else {
        return None;
    };
    let off = (key.off as i64).checked_add(key.val.as_const()? as i64)?;
    let (slot, b) = st.frames.get(frame as usize)?.byte(off);
    let n = key_size as usize;
    if n == 0 || b + n > 8 {
        return None;
    }
    if slot.bytes[b..b + n].iter().all(|&x| x == ByteState::Zero) {
        return Some(0);
    }
    match slot.narrow_const {
        Some((size, c)) if b == 0 && size as usize == n => Some(c),
        _ => None,
    }
}
