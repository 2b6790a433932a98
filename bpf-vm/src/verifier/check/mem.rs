//! Memory access: loads and stores through a pointer stay inside its
//! region (context fields, the 512-byte stack frame, a map value, helper
//! memory) for every value a variable offset may take, maybe-NULL pointers
//! are never dereferenced, and pointers are stored only on the stack.

use super::{Checker, Dir, MAX_VAR_OFF, R};
use crate::insn::{Size, STACK_SIZE};
use crate::verifier::error::Rule;
use crate::verifier::scalar::Scalar;
use crate::verifier::state::{PtrKind, Reg, RegType, State};
use crate::verifier::tnum::Tnum;
use alloc::format;
use alloc::string::String;

const STACK: i64 = STACK_SIZE as i64;

impl Checker<'_> {
    /// Checks that `size` bytes at `ptr + off` may be accessed. Returns the
    /// region and the range `[lo, hi]` of the access's first byte.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check_access(
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

    pub(super) fn load(
        &mut self,
        st: &mut State,
        pc: usize,
        src: u8,
        off: i16,
        size: u64,
    ) -> R<Reg> {
        let ptr = st.cur().regs[src as usize];
        let (kind, lo, hi) = self.check_access(st, pc, src, &ptr, off as i64, size, Dir::Read)?;
        let unknown = Reg::scalar(Scalar::unknown().truncate(size as u32));
        match kind {
            PtrKind::Stack { frame } => self.stack_read(st, pc, src, frame as usize, lo, hi, size),
            _ => Ok(unknown),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn store(
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

    /// Like [`Checker::check_access`] for a byte buffer of `size` bytes (no
    /// alignment requirement).
    pub(super) fn check_access_bytes(
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
