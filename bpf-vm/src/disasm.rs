//! Disassembler, in two syntaxes:
//!
//! - [`Syntax::Conformance`]: the assembler's own syntax (`ldxw %r0, [%r1+4]`),
//!   so `assemble(disassemble(p)) == p` for every program.
//! - [`Syntax::Llvm`]: the syntax of `llvm-objdump` and the Linux verifier
//!   log (`r0 = *(u32 *)(r1 + 4)`, `if w1 > 5 goto +2`), which users of
//!   bpftool and clang already read.
//!
//! Jumps print as signed slot offsets; [`program`] adds the target index.
//! Numbered listings also name known helpers ([`helper_name`]) in a comment.

use alloc::format;
use alloc::string::String;
use core::fmt::Write;

use crate::insn::{
    AluOp, AtomicOp, ByteOrder, Insn, JmpCond, LdImm64Src, Operand, Program, Size, Width,
};

/// Which text syntax to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// The conformance-suite / ubpf syntax the [`crate::asm`] module reads.
    Conformance,
    /// LLVM / Linux verifier syntax.
    Llvm,
}

/// Prints one instruction (the `LdImm64Tail` slot prints as an empty string).
pub fn insn(i: &Insn, syntax: Syntax) -> String {
    match syntax {
        Syntax::Conformance => conformance(i),
        Syntax::Llvm => llvm(i),
    }
}

/// Prints a whole program, one instruction a line. With `numbered`, each
/// line starts with its slot index and jumps show their absolute target
/// in a trailing comment (the output is then no longer assembler input).
pub fn program(p: &Program, syntax: Syntax, numbered: bool) -> String {
    let mut out = String::new();
    for (pc, i) in p.iter().enumerate() {
        if *i == Insn::LdImm64Tail {
            continue;
        }
        let text = insn(i, syntax);
        if numbered {
            let _ = write!(out, "{pc:4}: {text}");
            if let Some(t) = i.jump_target(pc) {
                let _ = write!(out, "  # -> {t}");
            }
            if let Some(name) = match *i {
                Insn::Call { id } => helper_name(id),
                _ => None,
            } {
                let _ = write!(out, "  # {name}");
            }
        } else {
            out.push_str(&text);
        }
        out.push('\n');
    }
    out
}

/// The Linux name of helper `id` (`bpf_` + the `BPF_FUNC_` name), for the
/// helpers tracing programs commonly call (from the platform description,
/// [`ktrace_bpf_platform::helper::linux_name`]).
pub fn helper_name(id: i32) -> Option<&'static str> {
    ktrace_bpf_platform::helper::linux_name(id)
}

fn alu_name(op: AluOp) -> &'static str {
    match op {
        AluOp::Add => "add",
        AluOp::Sub => "sub",
        AluOp::Mul => "mul",
        AluOp::Div => "div",
        AluOp::SDiv => "sdiv",
        AluOp::Or => "or",
        AluOp::And => "and",
        AluOp::Lsh => "lsh",
        AluOp::Rsh => "rsh",
        AluOp::Mod => "mod",
        AluOp::SMod => "smod",
        AluOp::Xor => "xor",
        AluOp::Mov => "mov",
        AluOp::Arsh => "arsh",
    }
}

fn cond_name(c: JmpCond) -> &'static str {
    match c {
        JmpCond::Eq => "jeq",
        JmpCond::Gt => "jgt",
        JmpCond::Ge => "jge",
        JmpCond::Set => "jset",
        JmpCond::Ne => "jne",
        JmpCond::Sgt => "jsgt",
        JmpCond::Sge => "jsge",
        JmpCond::Lt => "jlt",
        JmpCond::Le => "jle",
        JmpCond::Slt => "jslt",
        JmpCond::Sle => "jsle",
    }
}

fn size_name(s: Size) -> &'static str {
    match s {
        Size::B => "b",
        Size::H => "h",
        Size::W => "w",
        Size::DW => "dw",
    }
}

fn w32(w: Width) -> &'static str {
    match w {
        Width::W32 => "32",
        Width::W64 => "",
    }
}

fn mem(r: u8, off: i16) -> String {
    if off < 0 {
        format!("[%r{r}-{}]", -(off as i32))
    } else {
        format!("[%r{r}+{off}]")
    }
}

fn operand(o: Operand) -> String {
    match o {
        Operand::Reg(r) => format!("%r{r}"),
        Operand::Imm(i) => format!("{i}"),
    }
}

fn rel(off: i32) -> String {
    if off < 0 {
        format!("{off}")
    } else {
        format!("+{off}")
    }
}

fn ld_src(s: LdImm64Src) -> String {
    match s {
        LdImm64Src::Imm(v) => format!("{v:#x}"),
        LdImm64Src::MapFd(fd) => format!("map_fd({fd})"),
        LdImm64Src::MapValueFd { fd, off } => format!("map_value({fd}, {off})"),
        LdImm64Src::MapIdx(i) => format!("map_idx({i})"),
        LdImm64Src::MapValueIdx { idx, off } => format!("map_idx_value({idx}, {off})"),
    }
}

fn atomic_name(op: AtomicOp) -> &'static str {
    match op {
        AtomicOp::Add => "add",
        AtomicOp::Or => "or",
        AtomicOp::And => "and",
        AtomicOp::Xor => "xor",
        AtomicOp::Xchg => "xchg",
        AtomicOp::CmpXchg => "cmpxchg",
    }
}

fn conformance(i: &Insn) -> String {
    match *i {
        Insn::Alu {
            width,
            op,
            dst,
            src,
        } => format!("{}{} %r{dst}, {}", alu_name(op), w32(width), operand(src)),
        Insn::Neg { width, dst } => format!("neg{} %r{dst}", w32(width)),
        Insn::MovSx {
            width,
            bits,
            dst,
            src,
        } => {
            let to = if width == Width::W32 { 32 } else { 64 };
            format!("movsx{bits}{to} %r{dst}, %r{src}")
        }
        Insn::Endian { order, bits, dst } => {
            let n = match order {
                ByteOrder::Le => "le",
                ByteOrder::Be => "be",
                ByteOrder::Swap => "bswap",
            };
            format!("{n}{bits} %r{dst}")
        }
        Insn::Ja { off, long } => format!("{} {}", if long { "ja32" } else { "ja" }, rel(off)),
        Insn::Jmp {
            width,
            cond,
            dst,
            src,
            off,
        } => format!(
            "{}{} %r{dst}, {}, {}",
            cond_name(cond),
            w32(width),
            operand(src),
            rel(off as i32)
        ),
        Insn::Call { id } => format!("call {id}"),
        Insn::CallLocal { off } => format!("call local {}", rel(off)),
        Insn::CallX { reg } => format!("callx %r{reg}"),
        Insn::Exit => "exit".into(),
        Insn::Load {
            size,
            dst,
            src,
            off,
        } => format!("ldx{} %r{dst}, {}", size_name(size), mem(src, off)),
        Insn::LoadSx {
            size,
            dst,
            src,
            off,
        } => format!("ldxs{} %r{dst}, {}", size_name(size), mem(src, off)),
        Insn::Store {
            size,
            dst,
            off,
            src,
        } => format!("stx{} {}, %r{src}", size_name(size), mem(dst, off)),
        Insn::StoreImm {
            size,
            dst,
            off,
            imm,
        } => format!("st{} {}, {imm}", size_name(size), mem(dst, off)),
        Insn::Atomic {
            size,
            op,
            fetch,
            dst,
            off,
            src,
        } => {
            let f = if fetch && !matches!(op, AtomicOp::Xchg | AtomicOp::CmpXchg) {
                "fetch "
            } else {
                ""
            };
            let w = if size == Size::W { "32" } else { "" };
            format!("lock {f}{}{w} {}, %r{src}", atomic_name(op), mem(dst, off))
        }
        Insn::LdImm64 { dst, src } => format!("lddw %r{dst}, {}", ld_src(src)),
        Insn::LdImm64Tail => String::new(),
    }
}

fn ty(size: Size, signed: bool) -> &'static str {
    match (size, signed) {
        (Size::B, false) => "u8",
        (Size::H, false) => "u16",
        (Size::W, false) => "u32",
        (Size::DW, false) => "u64",
        (Size::B, true) => "s8",
        (Size::H, true) => "s16",
        (Size::W, true) => "s32",
        (Size::DW, true) => "s64",
    }
}

fn addr(r: u8, off: i16) -> String {
    if off < 0 {
        format!("r{r} - {}", -(off as i32))
    } else {
        format!("r{r} + {off}")
    }
}

/// The LLVM-syntax operator of an ALU operation (`+=`, `s>>=`, ...), also
/// used by the verifier's log.
pub(crate) fn alu_llvm_op(op: AluOp) -> &'static str {
    match op {
        AluOp::Add => "+=",
        AluOp::Sub => "-=",
        AluOp::Mul => "*=",
        AluOp::Div => "/=",
        AluOp::SDiv => "s/=",
        AluOp::Or => "|=",
        AluOp::And => "&=",
        AluOp::Lsh => "<<=",
        AluOp::Rsh => ">>=",
        AluOp::Mod => "%=",
        AluOp::SMod => "s%=",
        AluOp::Xor => "^=",
        AluOp::Mov => "=",
        AluOp::Arsh => "s>>=",
    }
}

fn llvm(i: &Insn) -> String {
    let rn = |w: Width, r: u8| match w {
        Width::W32 => format!("w{r}"),
        Width::W64 => format!("r{r}"),
    };
    let opnd = |w: Width, o: Operand| match o {
        Operand::Reg(r) => rn(w, r),
        Operand::Imm(v) => format!("{v}"),
    };
    match *i {
        Insn::Alu {
            width,
            op,
            dst,
            src,
        } => {
            let sym = alu_llvm_op(op);
            format!("{} {sym} {}", rn(width, dst), opnd(width, src))
        }
        Insn::Neg { width, dst } => format!("{0} = -{0}", rn(width, dst)),
        Insn::MovSx {
            width,
            bits,
            dst,
            src,
        } => format!("{} = (s{bits}){}", rn(width, dst), rn(width, src)),
        Insn::Endian { order, bits, dst } => {
            let n = match order {
                ByteOrder::Le => "le",
                ByteOrder::Be => "be",
                ByteOrder::Swap => "bswap",
            };
            format!("r{dst} = {n}{bits} r{dst}")
        }
        Insn::Ja { off, long } => format!("{} {}", if long { "gotol" } else { "goto" }, rel(off)),
        Insn::Jmp {
            width,
            cond,
            dst,
            src,
            off,
        } => {
            let sym = match cond {
                JmpCond::Eq => "==",
                JmpCond::Gt => ">",
                JmpCond::Ge => ">=",
                JmpCond::Set => "&",
                JmpCond::Ne => "!=",
                JmpCond::Sgt => "s>",
                JmpCond::Sge => "s>=",
                JmpCond::Lt => "<",
                JmpCond::Le => "<=",
                JmpCond::Slt => "s<",
                JmpCond::Sle => "s<=",
            };
            format!(
                "if {} {sym} {} goto {}",
                rn(width, dst),
                opnd(width, src),
                rel(off as i32)
            )
        }
        Insn::Call { id } => format!("call {id}"),
        Insn::CallLocal { off } => format!("call pc{}", rel(off)),
        Insn::CallX { reg } => format!("callx r{reg}"),
        Insn::Exit => "exit".into(),
        Insn::Load {
            size,
            dst,
            src,
            off,
        } => format!("r{dst} = *({} *)({})", ty(size, false), addr(src, off)),
        Insn::LoadSx {
            size,
            dst,
            src,
            off,
        } => format!("r{dst} = *({} *)({})", ty(size, true), addr(src, off)),
        Insn::Store {
            size,
            dst,
            off,
            src,
        } => format!("*({} *)({}) = r{src}", ty(size, false), addr(dst, off)),
        Insn::StoreImm {
            size,
            dst,
            off,
            imm,
        } => format!("*({} *)({}) = {imm}", ty(size, false), addr(dst, off)),
        Insn::Atomic {
            size,
            op,
            fetch,
            dst,
            off,
            src,
        } => {
            let w = if size == Size::W {
                Width::W32
            } else {
                Width::W64
            };
            let bits = if size == Size::W { 32 } else { 64 };
            let t = ty(size, false);
            let a = addr(dst, off);
            let s = rn(w, src);
            match (op, fetch) {
                (AtomicOp::Xchg, _) => format!("{s} = xchg_{bits}({a}, {s})"),
                (AtomicOp::CmpXchg, _) => {
                    format!("{} = cmpxchg_{bits}({a}, {}, {s})", rn(w, 0), rn(w, 0))
                }
                (_, false) => {
                    let sym = match op {
                        AtomicOp::Add => "+=",
                        AtomicOp::Or => "|=",
                        AtomicOp::And => "&=",
                        _ => "^=",
                    };
                    format!("lock *({t} *)({a}) {sym} {s}")
                }
                (_, true) => format!("{s} = atomic_fetch_{}(({t} *)({a}), {s})", atomic_name(op)),
            }
        }
        Insn::LdImm64 { dst, src } => match src {
            LdImm64Src::Imm(v) => format!("r{dst} = {v:#x} ll"),
            LdImm64Src::MapFd(fd) => format!("r{dst} = map[fd:{fd}] ll"),
            LdImm64Src::MapValueFd { fd, off } => format!("r{dst} = map_value[fd:{fd}] + {off} ll"),
            LdImm64Src::MapIdx(i) => format!("r{dst} = map[idx:{i}] ll"),
            LdImm64Src::MapValueIdx { idx, off } => {
                format!("r{dst} = map_value[idx:{idx}] + {off} ll")
            }
        },
        Insn::LdImm64Tail => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::assemble;

    #[test]
    fn llvm_syntax() {
        let p = assemble(
            "ldxw %r0, [%r1+4]\njgt32 %r1, 5, +1\nstxdw [%r10-8], %r1\nlock fetch add [%r10-8], %r1\n\
             movsx1632 %r2, %r3\nlddw %r1, map_fd(3)\ncall 1\ncall 999\nexit",
        )
        .unwrap();
        let text = program(&p, Syntax::Llvm, false);
        assert_eq!(
            text,
            "r0 = *(u32 *)(r1 + 4)\nif w1 > 5 goto +1\n*(u64 *)(r10 - 8) = r1\n\
             r1 = atomic_fetch_add((u64 *)(r10 - 8), r1)\nw2 = (s16)w3\nr1 = map[fd:3] ll\n\
             call 1\ncall 999\nexit\n"
        );
    }

    #[test]
    fn numbered_listing_shows_targets() {
        let p = assemble("lddw %r0, 1\nja +0\ncall 5\ncall local +0\nexit").unwrap();
        assert_eq!(
            program(&p, Syntax::Conformance, true),
            "   0: lddw %r0, 0x1\n   2: ja +0  # -> 3\n   3: call 5  # bpf_ktime_get_ns\n\
             \x20  4: call local +0  # -> 5\n   5: exit\n"
        );
    }
}
