//! The path-sensitive abstract interpreter: walks every path of the program
//! from the entry, applying each instruction to the abstract [`State`] and
//! checking its safety conditions, with state pruning at prune points.
//!
//! [`Checker`] holds the walk's state; this module reads registers and
//! dispatches each instruction ([`Checker::step`]) to the module of its
//! concern:
//!
//! | module | checks |
//! |---|---|
//! | `walk` | the worklist of paths, pruning, infinite loops, the complexity and memory budgets |
//! | `alu` | ALU operations, moves, byte swaps, pointer arithmetic, `ld_imm64` map references |
//! | `mem` | loads and stores: the region's bounds, NULL checks, pointers stored only on the stack |
//! | `stack` | the stack's bytes: initialised reads, spilled registers, no partial pointer spills |
//! | `atomic` | atomic read-modify-writes: alignment, no context, no leaks |
//! | `jump` | conditional jumps: scalar refinement on both arms, NULL checks, pointer comparisons |
//! | `call` | bpf-to-bpf calls and exit: call depth, dangling stack pointers, r0, unreleased references |
//! | `helper` | helper calls: allowed helpers, argument kinds from the prototype, references, r0's type |

mod alu;
mod atomic;
mod call;
mod helper;
mod jump;
mod mem;
mod stack;
mod walk;

use super::cfg::Cfg;
use super::error::{Config, Log, Rule, Stats, VerifyError};
use super::platform::Env;
use super::scalar::Scalar;
use super::state::{Reg, State};
use crate::disasm::{self, Syntax};
use crate::insn::{Insn, Operand};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Largest offset (either sign) a pointer may carry, as in Linux.
const MAX_VAR_OFF: i64 = 1 << 29;

type R<T> = Result<T, VerifyError>;

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
    nodes: Vec<walk::Node>,
    at: Vec<Vec<u32>>,
    pending: Vec<walk::Pending>,
    pub stats: Stats,
    pub log: Log,
    noted_div: Vec<bool>,
    /// Heap bytes held by `nodes` and `pending` (see [`Config::max_state_bytes`]).
    state_bytes: usize,
    /// Set by a step whose safety depended on a scalar's value.
    need_precise: bool,
    /// Per slot: the map a helper call's map argument was on every path
    /// that reached it ([`CALL_MAP_NONE`] if none, [`CALL_MAP_MANY`] if
    /// paths disagreed). See [`crate::verifier::Report::call_maps`].
    pub call_map: Vec<u32>,
}

/// No helper call with a map argument was checked at this slot.
pub(crate) const CALL_MAP_NONE: u32 = u32::MAX;
/// Paths reached this call with different maps.
pub(crate) const CALL_MAP_MANY: u32 = u32::MAX - 1;

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
            call_map: vec![CALL_MAP_NONE; n],
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
                self.neg(st, pc, width, dst)?;
                Ok(Flow::Next(next))
            }
            Insn::MovSx {
                width,
                bits,
                dst,
                src,
            } => {
                self.mov_sx(st, pc, width, bits, dst, src)?;
                Ok(Flow::Next(next))
            }
            Insn::Endian { order, bits, dst } => {
                self.endian(st, pc, order, bits, dst)?;
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
                self.call_local(st, pc, t)
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
}

fn reg_of(o: Operand) -> u8 {
    match o {
        Operand::Reg(r) => r,
        Operand::Imm(_) => 0,
    }
}
