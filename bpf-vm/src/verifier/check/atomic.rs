//! Atomic read-modify-write instructions: naturally aligned, never on the
//! context, never leaking a pointer, and never on a spilled pointer.

use super::{Checker, Dir, R};
use crate::insn::{AtomicOp, Size};
use crate::verifier::error::Rule;
use crate::verifier::scalar::Scalar;
use crate::verifier::state::{PtrKind, Reg, State};
use crate::verifier::tnum::Tnum;
use alloc::format;

impl Checker<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn atomic(
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
}
