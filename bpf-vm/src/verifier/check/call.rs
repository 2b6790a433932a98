//! bpf-to-bpf calls and exits: the call depth, no stack pointer of a
//! returning frame left behind, r0 set at every exit, no pointer returned
//! from the program, and every ring buffer reference released.

use super::{Checker, Flow, R};
use crate::verifier::cfg::MAX_CALL_FRAMES;
use crate::verifier::error::Rule;
use crate::verifier::state::{Frame, PtrKind, Reg, State};
use alloc::format;

impl Checker<'_> {
    /// A bpf-to-bpf call to `target`: a new frame whose r1..r5 are the caller's.
    pub(super) fn call_local(&self, st: &mut State, pc: usize, target: usize) -> R<Flow> {
        let t = target;
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

    pub(super) fn exit(&mut self, st: &mut State, pc: usize) -> R<Flow> {
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
}
