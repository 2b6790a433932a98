//! Instruction boundaries, found by decoding a function from its start.
//!
//! A probe replaces the first byte of an instruction with `int3`; placed
//! anywhere else it corrupts the instruction it lands in. x86 instructions
//! have variable length, so the only way to know the boundaries is to decode
//! from a known one: the function's first byte.

use iced_x86::{Decoder, DecoderOptions};

/// The instructions of one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundaries {
    /// Offset (from the function start) of each instruction, ascending.
    pub starts: Vec<u64>,
    /// Offset just past the last instruction decoded.
    pub end: u64,
}

/// Decode `code` as 64-bit code at `ip`. Decoding stops at the first byte
/// that is not a valid instruction (data or padding after the last `ret`),
/// so `end` may fall short of `code.len()`.
pub fn boundaries(code: &[u8], ip: u64) -> Boundaries {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut starts = Vec::new();
    let mut end = 0;
    while decoder.can_decode() {
        let pos = decoder.position() as u64;
        let insn = decoder.decode();
        if insn.is_invalid() {
            break;
        }
        starts.push(pos);
        end = decoder.position() as u64;
    }
    Boundaries { starts, end }
}

/// Where an offset falls relative to the instruction boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// The offset starts an instruction.
    Start,
    /// The offset is inside an instruction.
    Inside {
        /// Start of the instruction holding the offset.
        before: u64,
        /// Start of the next one, if any.
        after: Option<u64>,
    },
    /// Decoding stopped before the offset (invalid bytes on the way).
    Undecodable {
        /// The last instruction decoded, if any.
        last: Option<u64>,
    },
}

/// Classify `offset` against the decoded instructions of a function.
pub fn classify(bounds: &Boundaries, offset: u64) -> Boundary {
    if offset >= bounds.end {
        return Boundary::Undecodable {
            last: bounds.starts.last().copied(),
        };
    }
    match bounds.starts.binary_search(&offset) {
        Ok(_) => Boundary::Start,
        Err(0) => Boundary::Undecodable { last: None },
        Err(i) => Boundary::Inside {
            before: bounds.starts[i - 1],
            after: bounds.starts.get(i).copied(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_prologue() {
        // push rbp; mov rbp, rsp; mov eax, 1; pop rbp; ret
        let code = [0x55, 0x48, 0x89, 0xe5, 0xb8, 1, 0, 0, 0, 0x5d, 0xc3];
        let b = boundaries(&code, 0x1000);
        assert_eq!(b.starts, [0, 1, 4, 9, 10]);
        assert_eq!(b.end, 11);
        assert_eq!(classify(&b, 4), Boundary::Start);
        assert_eq!(
            classify(&b, 2),
            Boundary::Inside {
                before: 1,
                after: Some(4)
            }
        );
    }
}
