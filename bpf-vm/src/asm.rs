//! Assembler for the text syntax of the BPF conformance suite (the ubpf
//! dialect): one instruction a line, `%rN` registers, `#` comments, labels.
//!
//! ```text
//! mov32 %r0, 1            add %r1, %r2         neg32 %r3
//! sdiv %r1, -3            movsx1632 %r0, %r1   be16 %r0     bswap64 %r0
//! ldxb %r0, [%r1+2]       ldxsh %r0, [%r10-8]  stxdw [%r10-8], %r1   stw [%r1], 5
//! lddw %r0, 0x1122334455667788                 lddw %r1, map_fd(3)
//! lock fetch add [%r10-8], %r1                 lock cmpxchg32 [%r1+4], %r2
//! jeq %r1, 42, done       jne32 %r1, %r2, +3   ja -2       ja32 far
//! call 5                  call local func      callx %r2   exit
//! done:
//! ```
//!
//! Jump targets are labels or signed slot offsets (`+3`, `-2`). A jump to the
//! undefined label `exit` goes to the next `exit` instruction, as in the
//! suite. Immediates are decimal or `0x` hex, 32-bit fields accept
//! `-2^31..2^32` (so `0xffffffff` means -1). `lddw` also takes the map
//! pseudo forms `map_fd(N)`, `map_value(FD, OFF)`, `map_idx(N)` and
//! `map_idx_value(IDX, OFF)`.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::insn::{
    AluOp, AtomicOp, ByteOrder, Insn, JmpCond, LdImm64Src, Operand, Program, Size, Width,
};

/// An assembly error: the 1-based source line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsmError {
    /// 1-based line number.
    pub line: usize,
    /// Description of the problem.
    pub msg: String,
}

impl fmt::Display for AsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

impl core::error::Error for AsmError {}

/// One source line after pass 1.
struct Line<'a> {
    no: usize,
    mnemonic: &'a str,
    operands: Vec<&'a str>,
    slot: usize,
}

/// Assembles `src` into a program. Never panics; errors name the line.
pub fn assemble(src: &str) -> Result<Program, AsmError> {
    let mut lines = Vec::new();
    let mut labels: BTreeMap<&str, usize> = BTreeMap::new();
    let mut slot = 0usize;
    for (i, raw) in src.lines().enumerate() {
        let no = i + 1;
        let mut text = strip_comment(raw).trim();
        // Leading labels (`name:`), possibly followed by an instruction.
        while let Some(colon) = text.find(':') {
            let name = text[..colon].trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                break;
            }
            if labels.insert(name, slot).is_some() {
                return Err(err(no, format!("label `{name}` defined twice")));
            }
            text = text[colon + 1..].trim();
        }
        if text.is_empty() {
            continue;
        }
        let (mnemonic, rest) = match text.find(char::is_whitespace) {
            Some(p) => (&text[..p], text[p..].trim()),
            None => (text, ""),
        };
        let operands: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            split_operands(rest)
        };
        let width = if mnemonic == "lddw" { 2 } else { 1 };
        lines.push(Line {
            no,
            mnemonic,
            operands,
            slot,
        });
        slot += width;
    }
    // Slots holding `exit`, for jumps to the implicit `exit` label.
    let exits: Vec<usize> = lines
        .iter()
        .filter(|l| l.mnemonic == "exit")
        .map(|l| l.slot)
        .collect();
    let ctx = Ctx {
        labels: &labels,
        exits: &exits,
    };
    let mut insns = Vec::with_capacity(slot);
    // Source line of each slot, to place errors found on the whole program.
    let mut line_of = Vec::with_capacity(slot);
    for l in &lines {
        let insn = ctx.line(l).map_err(|m| err(l.no, m))?;
        insns.push(insn);
        line_of.push(l.no);
        if let Insn::LdImm64 { .. } = insn {
            insns.push(Insn::LdImm64Tail);
            line_of.push(l.no);
        }
    }
    Program::from_insns(insns).map_err(|e| {
        let line = line_of.get(e.index).copied().unwrap_or(0);
        err(line, e.kind.to_string())
    })
}

/// Splits operands at commas outside parentheses (`map_value(3, 8)` is one operand).
fn split_operands(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out
}

fn err(line: usize, msg: String) -> AsmError {
    AsmError { line, msg }
}

fn strip_comment(s: &str) -> &str {
    let mut end = s.len();
    if let Some(p) = s.find('#') {
        end = end.min(p);
    }
    if let Some(p) = s.find("//") {
        end = end.min(p);
    }
    &s[..end]
}

struct Ctx<'a> {
    labels: &'a BTreeMap<&'a str, usize>,
    exits: &'a [usize],
}

type R<T> = Result<T, String>;

fn alu_op(name: &str) -> Option<AluOp> {
    Some(match name {
        "add" => AluOp::Add,
        "sub" => AluOp::Sub,
        "mul" => AluOp::Mul,
        "div" => AluOp::Div,
        "sdiv" => AluOp::SDiv,
        "or" => AluOp::Or,
        "and" => AluOp::And,
        "lsh" => AluOp::Lsh,
        "rsh" => AluOp::Rsh,
        "mod" => AluOp::Mod,
        "smod" => AluOp::SMod,
        "xor" => AluOp::Xor,
        "mov" => AluOp::Mov,
        "arsh" => AluOp::Arsh,
        _ => return None,
    })
}

fn jmp_cond(name: &str) -> Option<JmpCond> {
    Some(match name {
        "jeq" => JmpCond::Eq,
        "jgt" => JmpCond::Gt,
        "jge" => JmpCond::Ge,
        "jset" => JmpCond::Set,
        "jne" => JmpCond::Ne,
        "jsgt" => JmpCond::Sgt,
        "jsge" => JmpCond::Sge,
        "jlt" => JmpCond::Lt,
        "jle" => JmpCond::Le,
        "jslt" => JmpCond::Slt,
        "jsle" => JmpCond::Sle,
        _ => return None,
    })
}

fn size_suffix(s: &str) -> Option<Size> {
    Some(match s {
        "b" => Size::B,
        "h" => Size::H,
        "w" => Size::W,
        "dw" => Size::DW,
        _ => return None,
    })
}

/// Splits a trailing `32`/`64` width suffix off a mnemonic.
fn split_width(m: &str) -> (&str, Width) {
    if let Some(b) = m.strip_suffix("32") {
        (b, Width::W32)
    } else if let Some(b) = m.strip_suffix("64") {
        (b, Width::W64)
    } else {
        (m, Width::W64)
    }
}

impl Ctx<'_> {
    fn line(&self, l: &Line<'_>) -> R<Insn> {
        let m = l.mnemonic;
        let ops = &l.operands[..];
        let nargs = |n: usize| -> R<()> {
            if ops.len() != n {
                Err(format!("`{m}` takes {n} operand(s), found {}", ops.len()))
            } else {
                Ok(())
            }
        };
        // Fixed mnemonics first.
        match m {
            "exit" => {
                nargs(0)?;
                return Ok(Insn::Exit);
            }
            "lddw" => {
                nargs(2)?;
                return Ok(Insn::LdImm64 {
                    dst: wreg(ops[0])?,
                    src: ld_imm64_src(ops[1])?,
                });
            }
            "ja" | "ja32" | "gotol" => {
                nargs(1)?;
                let off = self.target(ops[0], l.slot)?;
                if m == "ja" {
                    let off = i16::try_from(off)
                        .map_err(|_| format!("jump offset {off} does not fit 16 bits; use ja32"))?;
                    return Ok(Insn::Ja {
                        off: off as i32,
                        long: false,
                    });
                }
                return Ok(Insn::Ja { off, long: true });
            }
            "call" => {
                return match ops {
                    [one] if one.starts_with("local ") => {
                        let off = self.target(one["local ".len()..].trim(), l.slot)?;
                        Ok(Insn::CallLocal { off })
                    }
                    [one] if one.starts_with('%') || one.starts_with('r') => {
                        Ok(Insn::CallX { reg: reg(one)? })
                    }
                    [one] => Ok(Insn::Call { id: imm32(one)? }),
                    _ => Err(format!("`call` takes 1 operand, found {}", ops.len())),
                };
            }
            "callx" => {
                nargs(1)?;
                return Ok(Insn::CallX { reg: reg(ops[0])? });
            }
            "lock" => return self.atomic(ops),
            _ => {}
        }
        // movsx<from><to>: movsx832, movsx1632, movsx864, movsx1664, movsx3264.
        if let Some(spec) = m.strip_prefix("movsx") {
            let (bits, width) = match spec {
                "832" => (8, Width::W32),
                "1632" => (16, Width::W32),
                "864" => (8, Width::W64),
                "1664" => (16, Width::W64),
                "3264" => (32, Width::W64),
                _ => return Err(format!("unknown sign-extending move `{m}`")),
            };
            nargs(2)?;
            return Ok(Insn::MovSx {
                width,
                bits,
                dst: wreg(ops[0])?,
                src: reg(ops[1])?,
            });
        }
        // Byte order: le16, be32, bswap64, swap16.
        for (prefix, order) in [
            ("le", ByteOrder::Le),
            ("be", ByteOrder::Be),
            ("bswap", ByteOrder::Swap),
            ("swap", ByteOrder::Swap),
        ] {
            if let Some(bits) = m.strip_prefix(prefix) {
                let bits = match bits {
                    "16" => 16,
                    "32" => 32,
                    "64" => 64,
                    _ => continue,
                };
                nargs(1)?;
                return Ok(Insn::Endian {
                    order,
                    bits,
                    dst: wreg(ops[0])?,
                });
            }
        }
        // Loads and stores.
        if let Some(sz) = m.strip_prefix("ldxs").and_then(size_suffix) {
            if sz == Size::DW {
                return Err("there is no sign-extending 8-byte load".to_string());
            }
            nargs(2)?;
            let (src, off) = mem_operand(ops[1])?;
            return Ok(Insn::LoadSx {
                size: sz,
                dst: wreg(ops[0])?,
                src,
                off,
            });
        }
        if let Some(sz) = m.strip_prefix("ldx").and_then(size_suffix) {
            nargs(2)?;
            let (src, off) = mem_operand(ops[1])?;
            return Ok(Insn::Load {
                size: sz,
                dst: wreg(ops[0])?,
                src,
                off,
            });
        }
        if let Some(sz) = m.strip_prefix("stx").and_then(size_suffix) {
            nargs(2)?;
            let (dst, off) = mem_operand(ops[0])?;
            return Ok(Insn::Store {
                size: sz,
                dst,
                off,
                src: reg(ops[1])?,
            });
        }
        if let Some(sz) = m.strip_prefix("st").and_then(size_suffix) {
            nargs(2)?;
            let (dst, off) = mem_operand(ops[0])?;
            return Ok(Insn::StoreImm {
                size: sz,
                dst,
                off,
                imm: imm32(ops[1])?,
            });
        }
        let (base, width) = split_width(m);
        if base == "neg" {
            nargs(1)?;
            return Ok(Insn::Neg {
                width,
                dst: wreg(ops[0])?,
            });
        }
        if let Some(op) = alu_op(base) {
            nargs(2)?;
            return Ok(Insn::Alu {
                width,
                op,
                dst: wreg(ops[0])?,
                src: operand(ops[1])?,
            });
        }
        if let Some(cond) = jmp_cond(base) {
            nargs(3)?;
            let off = self.target(ops[2], l.slot)?;
            let off = i16::try_from(off)
                .map_err(|_| format!("jump offset {off} does not fit 16 bits"))?;
            return Ok(Insn::Jmp {
                width,
                cond,
                dst: reg(ops[0])?,
                src: operand(ops[1])?,
                off,
            });
        }
        Err(format!("unknown mnemonic `{m}`"))
    }

    /// `lock [fetch] op[32] [dst+off], src` (the mnemonic is `lock`; the
    /// operation words come first in the first operand).
    fn atomic(&self, ops: &[&str]) -> R<Insn> {
        if ops.len() != 2 {
            return Err(format!("`lock` takes 2 operands, found {}", ops.len()));
        }
        let first = ops[0];
        let bracket = first
            .find('[')
            .ok_or_else(|| format!("expected a memory operand `[reg+off]` in `{first}`"))?;
        let words: Vec<&str> = first[..bracket].split_whitespace().collect();
        let (fetch, name) = match words[..] {
            ["fetch", name] => (true, name),
            [name] => (false, name),
            _ => {
                return Err(format!(
                    "bad atomic operation `{}`",
                    first[..bracket].trim()
                ))
            }
        };
        let (base, width) = split_width(name);
        let size = if width == Width::W32 {
            Size::W
        } else {
            Size::DW
        };
        let op = match base {
            "add" => AtomicOp::Add,
            "or" => AtomicOp::Or,
            "and" => AtomicOp::And,
            "xor" => AtomicOp::Xor,
            "xchg" => AtomicOp::Xchg,
            "cmpxchg" => AtomicOp::CmpXchg,
            _ => return Err(format!("unknown atomic operation `{name}`")),
        };
        let fetch = fetch || matches!(op, AtomicOp::Xchg | AtomicOp::CmpXchg);
        let (dst, off) = mem_operand(&first[bracket..])?;
        let src = reg(ops[1])?;
        if fetch && op != AtomicOp::CmpXchg && src == crate::insn::R10 {
            return Err("fetching atomic would write the read-only frame pointer r10".to_string());
        }
        Ok(Insn::Atomic {
            size,
            op,
            fetch,
            dst,
            off,
            src,
        })
    }

    /// Resolves a jump target to a relative slot offset from `slot`.
    fn target(&self, t: &str, slot: usize) -> R<i32> {
        let t = t.trim();
        if t.starts_with(['+', '-']) || t.starts_with(|c: char| c.is_ascii_digit()) {
            let v = int(t)?;
            return i32::try_from(v).map_err(|_| format!("jump offset `{t}` out of range"));
        }
        let dest = match self.labels.get(t) {
            Some(&d) => d,
            None if t == "exit" => *self
                .exits
                .iter()
                .find(|&&e| e >= slot)
                .ok_or_else(|| "jump to `exit` with no exit instruction after it".to_string())?,
            None => return Err(format!("undefined label `{t}`")),
        };
        Ok(dest as i32 - slot as i32 - 1)
    }
}

/// Parses a register `%rN` or `rN`.
fn reg(s: &str) -> R<u8> {
    let t = s.trim();
    let n = t
        .strip_prefix("%r")
        .or_else(|| t.strip_prefix('r'))
        .ok_or_else(|| format!("expected a register, found `{t}`"))?;
    match n.parse::<u8>() {
        Ok(r) if r <= 10 && !n.starts_with('+') => Ok(r),
        _ => Err(format!("invalid register `{t}`")),
    }
}

/// A register the instruction writes.
fn wreg(s: &str) -> R<u8> {
    let r = reg(s)?;
    if r == crate::insn::R10 {
        return Err("r10 is the read-only frame pointer".to_string());
    }
    Ok(r)
}

fn operand(s: &str) -> R<Operand> {
    let t = s.trim();
    if t.starts_with('%') || t.starts_with('r') {
        Ok(Operand::Reg(reg(t)?))
    } else {
        Ok(Operand::Imm(imm32(t)?))
    }
}

/// Parses a signed integer: decimal or `0x` hex, with optional sign.
fn int(s: &str) -> R<i128> {
    let t = s.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        body.parse::<u64>()
    }
    .map_err(|_| format!("invalid number `{t}`"))? as i128;
    Ok(if neg { -v } else { v })
}

/// A 32-bit immediate: accepts `-2^31..2^32` (high values wrap to negative).
fn imm32(s: &str) -> R<i32> {
    let v = int(s)?;
    if v < i32::MIN as i128 || v > u32::MAX as i128 {
        return Err(format!("immediate `{}` does not fit 32 bits", s.trim()));
    }
    Ok(v as u32 as i32)
}

fn ld_imm64_src(s: &str) -> R<LdImm64Src> {
    let t = s.trim();
    if let Some(open) = t.find('(') {
        let name = t[..open].trim();
        let inner = t[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("missing `)` in `{t}`"))?;
        let args: Vec<&str> = inner.split(',').map(str::trim).collect();
        let off = |a: &str| -> R<u32> {
            let v = int(a)?;
            u32::try_from(v).map_err(|_| format!("offset `{a}` out of range"))
        };
        return match (name, &args[..]) {
            ("map_fd", [fd]) => Ok(LdImm64Src::MapFd(imm32(fd)?)),
            ("map_idx", [i]) => Ok(LdImm64Src::MapIdx(imm32(i)?)),
            ("map_value", [fd, o]) => Ok(LdImm64Src::MapValueFd {
                fd: imm32(fd)?,
                off: off(o)?,
            }),
            ("map_idx_value", [i, o]) => Ok(LdImm64Src::MapValueIdx {
                idx: imm32(i)?,
                off: off(o)?,
            }),
            _ => Err(format!("unknown lddw source `{t}`")),
        };
    }
    let v = int(t)?;
    if v < i64::MIN as i128 || v > u64::MAX as i128 {
        return Err(format!("immediate `{t}` does not fit 64 bits"));
    }
    Ok(LdImm64Src::Imm(v as u64))
}

/// Parses `[reg]`, `[reg+off]` or `[reg-off]`.
fn mem_operand(s: &str) -> R<(u8, i16)> {
    let t = s.trim();
    let inner = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .ok_or_else(|| format!("expected a memory operand `[reg+off]`, found `{t}`"))?;
    let inner = inner.trim();
    let split = inner.find(['+', '-']);
    let (r, off) = match split {
        Some(p) => (&inner[..p], int(&inner[p..])?),
        None => (inner, 0),
    };
    let off = i16::try_from(off).map_err(|_| format!("offset {off} does not fit 16 bits"))?;
    Ok((reg(r)?, off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn assembles_conformance_forms() {
        let p = assemble(
            "mov32 %r0, 1\nldxb %r0, [%r1+2]\nlddw %r0, 0x1122334455667788\n\
             lock fetch add [%r10-8], %r1\njeq %r1, 0xffffffff, done\ncall local done\n\
             callx %r2\ncall 5\ndone:\nexit\n",
        )
        .unwrap();
        assert_eq!(p.len(), 10);
        assert_eq!(
            p[4],
            Insn::Atomic {
                size: Size::DW,
                op: AtomicOp::Add,
                fetch: true,
                dst: 10,
                off: -8,
                src: 1
            }
        );
        assert_eq!(
            p[5],
            Insn::Jmp {
                width: Width::W64,
                cond: JmpCond::Eq,
                dst: 1,
                src: Operand::Imm(-1),
                off: 3
            }
        );
        assert_eq!(p[6], Insn::CallLocal { off: 2 });
        assert_eq!(p[7], Insn::CallX { reg: 2 });
    }

    #[test]
    fn exit_label_goes_to_next_exit() {
        let p = assemble("jne %r0, 0, exit\nmov %r0, 1\nexit\n").unwrap();
        assert_eq!(p.insns()[0].jump_target(0), Some(2));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = vec![
            ("mov %r0, 1\nfoo %r1\n", "line 2: unknown mnemonic `foo`"),
            ("mov %r11, 1", "line 1: invalid register `%r11`"),
            ("ja nowhere", "line 1: undefined label `nowhere`"),
            ("mov %r1", "line 1: `mov` takes 2 operand(s), found 1"),
            (
                "add32 %r1, 0x100000000",
                "line 1: immediate `0x100000000` does not fit 32 bits",
            ),
            (
                "ldxw %r1, %r2",
                "line 1: expected a memory operand `[reg+off]`, found `%r2`",
            ),
            ("mov %r10, 1", "line 1: r10 is the read-only frame pointer"),
            ("x:\nx:\nexit", "line 2: label `x` defined twice"),
            (
                "ldxw %r1, [%r2+40000]",
                "line 1: offset 40000 does not fit 16 bits",
            ),
        ];
        for (src, msg) in cases {
            assert_eq!(assemble(src).unwrap_err().to_string(), msg, "{src}");
        }
    }
}
