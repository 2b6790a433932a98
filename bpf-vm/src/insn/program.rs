//! [`Program`]: decoded instructions indexed by slot.

use alloc::vec::Vec;

use super::decode::decode_one;
use super::*;

/// A decoded program, indexed by slot: `program[pc]` is the instruction at
/// byte offset `8 * pc`, and the second slot of every `ld_imm64` holds
/// [`Insn::LdImm64Tail`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Program {
    pub(super) insns: Vec<Insn>,
}

impl Program {
    /// Builds a program from slots, checking that every instruction is one
    /// [`decode`] could have produced (registers in range, `r10` never
    /// written, valid widths and sizes, fields that fit their encoding),
    /// that every `LdImm64` is followed by exactly one `LdImm64Tail` and
    /// that tails appear nowhere else.
    pub fn from_insns(insns: Vec<Insn>) -> Result<Program, DecodeError> {
        let mut i = 0;
        while i < insns.len() {
            let insn = insns[i];
            if insn != Insn::LdImm64Tail {
                // Encoding then decoding must give the instruction back.
                let (raw, n) = insn.to_raw();
                let back = decode_one(raw[0], (n == 2).then_some(raw[1]))
                    .map_err(|kind| DecodeError { index: i, kind })?;
                if back != insn {
                    return Err(DecodeError {
                        index: i,
                        kind: DecodeErrorKind::Unencodable,
                    });
                }
            }
            match insn {
                Insn::LdImm64 { .. } => {
                    if insns.get(i + 1) != Some(&Insn::LdImm64Tail) {
                        return Err(DecodeError {
                            index: i,
                            kind: DecodeErrorKind::TruncatedLdImm64,
                        });
                    }
                    i += 2;
                }
                Insn::LdImm64Tail => {
                    return Err(DecodeError {
                        index: i,
                        kind: DecodeErrorKind::BadLdImm64Tail,
                    })
                }
                _ => i += 1,
            }
        }
        Ok(Program { insns })
    }

    /// The slots.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The instruction at slot `pc`.
    pub fn get(&self, pc: usize) -> Option<&Insn> {
        self.insns.get(pc)
    }

    /// Encodes back to bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.insns)
    }
}

impl core::ops::Deref for Program {
    type Target = [Insn];
    fn deref(&self) -> &[Insn] {
        &self.insns
    }
}
