//! Register values: ALU operations on scalars and the pointer arithmetic
//! allowed on pointers (add/sub of a bounded scalar, offsets within
//! +-2^29, no arithmetic on maybe-NULL or map pointers, no partial copies),
//! and 64-bit immediates naming maps and map values.

use super::{reg_of, Checker, MAX_VAR_OFF, R};
use crate::disasm;
use crate::insn::{AluOp, ByteOrder, LdImm64Src, Operand, Width};
use crate::verifier::error::Rule;
use crate::verifier::linux::map_type;
use crate::verifier::scalar::{self, Scalar};
use crate::verifier::state::{PtrKind, Reg, State};
use crate::verifier::tnum::Tnum;
use alloc::format;
use alloc::string::String;

impl Checker<'_> {
    pub(super) fn neg(&self, st: &mut State, pc: usize, width: Width, dst: u8) -> R<()> {
        let v = self.read_scalar(st, pc, dst, "neg")?;
        Self::set(st, dst, Reg::scalar(scalar::neg(width, &v)));
        Ok(())
    }

    pub(super) fn mov_sx(
        &self,
        st: &mut State,
        pc: usize,
        width: Width,
        bits: u8,
        dst: u8,
        src: u8,
    ) -> R<()> {
        let v = self.read_scalar(st, pc, src, "sign-extending move")?;
        let mut r = v.sext_bits(bits as u32);
        if width == Width::W32 {
            r = r.zext32();
        }
        Self::set(st, dst, Reg::scalar(r));
        Ok(())
    }

    pub(super) fn endian(
        &self,
        st: &mut State,
        pc: usize,
        order: ByteOrder,
        bits: u8,
        dst: u8,
    ) -> R<()> {
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
        Ok(())
    }

    pub(super) fn ld_imm64(&self, st: &State, pc: usize, src: LdImm64Src) -> R<Reg> {
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn alu(
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
}
