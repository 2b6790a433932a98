//! The stack's bytes: reads see only written bytes (unless
//! [`Config::allow_uninit_stack`](crate::verifier::Config::allow_uninit_stack)), spilled registers keep their type and
//! bounds, and a spilled pointer is never partially read or overwritten.

use super::{Checker, R};
use crate::verifier::error::Rule;
use crate::verifier::scalar::Scalar;
use crate::verifier::state::{ByteState, Reg, Slot, State};
use alloc::format;

impl Checker<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stack_read(
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
    pub(super) fn stack_write(
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
}

/// Byte index of frame offset `off` inside its slot.
fn slot_byte(off: i64) -> i64 {
    crate::verifier::state::slot_of(off).1 as i64
}
