//! Conditional jumps: refine scalar bounds on both arms (dropping an arm
//! that cannot happen), turn NULL checks into valid pointers or 0 on each
//! arm, and refuse comparisons that would reveal a pointer's value.

use super::{reg_of, Checker, Flow, R};
use crate::insn::{JmpCond, Operand, Width};
use crate::verifier::error::Rule;
use crate::verifier::scalar::{self, Scalar};
use crate::verifier::state::{PtrKind, Reg, RegType, State};
use alloc::format;

impl Checker<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn jmp(
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
