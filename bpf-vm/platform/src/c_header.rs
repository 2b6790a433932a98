//! The platform as a C header, for probes written in C: what Linux's
//! `bpf_helper_defs.h`, `bpf_helpers.h` and `bpf_tracing.h` give a libbpf
//! program (helpers, `SEC()`, `struct pt_regs` and `PT_REGS_PARM1()`),
//! limited to what ktrace's kernel implements, so a program that compiles against
//! it calls no helper the verifier would refuse as unknown.
//!
//! `ktrace helpers --c-header > ktrace_helpers.h` writes it; the
//! end-to-end tests compile their C programs against it.

use core::fmt;

use crate::helper::HELPERS;
use crate::map_type;
use crate::regs::pt_regs;

/// The header's file name, as programs `#include` it.
pub const C_HEADER_NAME: &str = "ktrace_helpers.h";

/// Displays the C header: the `SEC()` macro, the legacy `maps` section's
/// `struct bpf_map_def`, the map type numbers, `struct pt_regs` with the
/// `PT_REGS_PARM1(ctx)`.. accessors, and one declaration per
/// helper (`static void *(*bpf_map_lookup_elem)(void *map, const void
/// *key) = (void *) 1;`, the form clang turns into `call 1`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CHeader;

impl fmt::Display for CHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "/* {C_HEADER_NAME}: the BPF helpers and map types ktrace's kernel implements."
        )?;
        writeln!(
            f,
            " * Written by `ktrace helpers --c-header`. The numbers are Linux's"
        )?;
        writeln!(f, " * (enum bpf_func_id, enum bpf_map_type). */")?;
        writeln!(f, "#ifndef KTRACE_HELPERS_H")?;
        writeln!(f, "#define KTRACE_HELPERS_H")?;
        writeln!(f)?;
        writeln!(
            f,
            "/* SEC(\"kprobe/kernel::block::queue::RequestQueue::submit_bio\"),"
        )?;
        writeln!(
            f,
            " * SEC(\"tracepoint/block/block_rq_issue\"), SEC(\"maps\"), SEC(\"license\"). */"
        )?;
        writeln!(f, "#define SEC(name) __attribute__((section(name), used))")?;
        writeln!(f)?;
        writeln!(f, "/* A map in the `maps` section. */")?;
        writeln!(f, "struct bpf_map_def {{")?;
        writeln!(
            f,
            "\tunsigned int type, key_size, value_size, max_entries, map_flags;"
        )?;
        writeln!(f, "}};")?;
        writeln!(f)?;
        for &t in map_type::ALL {
            writeln!(
                f,
                "#define BPF_MAP_TYPE_{} {t}",
                Uppercase(map_type::name(t))
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "/* The context of kprobe and kretprobe programs (x86-64, Linux's layout). */"
        )?;
        writeln!(f, "struct pt_regs {{")?;
        for (name, _) in pt_regs::NAMES {
            writeln!(f, "\tunsigned long {name};")?;
        }
        writeln!(f, "}};")?;
        for (i, &arg) in pt_regs::ARGS.iter().enumerate() {
            let name = pt_regs::name_at(arg).expect("an argument register is a field");
            writeln!(f, "#define PT_REGS_PARM{}(x) ((x)->{name})", i + 1)?;
        }
        for (what, offset) in [
            ("RC", pt_regs::RAX),
            ("IP", pt_regs::RIP),
            ("SP", pt_regs::RSP),
            ("FP", pt_regs::RBP),
        ] {
            let name = pt_regs::name_at(offset).expect("a field");
            writeln!(f, "#define PT_REGS_{what}(x) ((x)->{name})")?;
        }
        writeln!(f)?;
        for helper in HELPERS {
            let (ret, params) = split_prototype(helper.c_prototype, helper.name);
            writeln!(
                f,
                "static {ret}(*{})({params}) = (void *) {};",
                helper.name, helper.id
            )?;
        }
        writeln!(f)?;
        writeln!(f, "#endif")
    }
}

/// `(return type with its trailing space or star, parameters)` of a
/// prototype `RET NAME(PARAMS)`.
fn split_prototype(prototype: &'static str, name: &str) -> (&'static str, &'static str) {
    let at = prototype.find(name).expect("a helper's prototype names it");
    let ret = &prototype[..at];
    let params = &prototype[at + name.len()..];
    let params = params
        .strip_prefix('(')
        .and_then(|p| p.strip_suffix(')'))
        .expect("a prototype ends in its parameter list");
    (ret, params)
}

/// Displays ASCII text uppercased (the crate allocates nothing).
struct Uppercase<'a>(&'a str);

impl fmt::Display for Uppercase<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            fmt::Write::write_char(f, c.to_ascii_uppercase())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper::{ArgKind, RetKind};

    /// Every prototype agrees with the kinds the verifier checks: as many
    /// parameters as argument kinds (a variadic tail stands for the
    /// optional scalars), pointers where the kind is a pointer, and a
    /// pointer return exactly where the helper returns memory.
    #[test]
    fn prototypes_agree_with_the_verifiers_kinds() {
        for h in HELPERS {
            let (ret, params) = split_prototype(h.c_prototype, h.name);
            let params: Vec<&str> = if params == "void" {
                Vec::new()
            } else {
                params.split(", ").collect()
            };
            let fixed: Vec<&ArgKind> = h
                .args
                .iter()
                .filter(|k| **k != ArgKind::ScalarOrUninit)
                .collect();
            let variadic = params.last() == Some(&"...");
            assert_eq!(
                params.len() - usize::from(variadic),
                fixed.len(),
                "{}: {params:?} against {:?}",
                h.name,
                h.args
            );
            assert_eq!(variadic, fixed.len() < h.args.len(), "{}", h.name);
            for (param, kind) in params.iter().zip(fixed) {
                let pointer_kind = !matches!(
                    kind,
                    ArgKind::Anything
                        | ArgKind::ScalarOrUninit
                        | ArgKind::ConstSize
                        | ArgKind::ConstSizeOrZero
                        | ArgKind::ConstAllocSize
                );
                assert_eq!(
                    param.contains('*'),
                    pointer_kind,
                    "{}: `{param}` is {kind:?}",
                    h.name
                );
            }
            let pointer_ret = matches!(h.ret, RetKind::MapValueOrNull | RetKind::AllocMemOrNull);
            assert_eq!(
                ret.contains('*'),
                pointer_ret,
                "{}: returns `{ret}`",
                h.name
            );
            assert_eq!(ret == "void ", h.ret == RetKind::Void, "{}", h.name);
        }
    }

    #[test]
    fn the_header_declares_every_helper_with_its_id() {
        let header = CHeader.to_string();
        assert!(header.contains(
            "static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *) 1;\n"
        ));
        assert!(header.contains(
            "static long (*bpf_trace_printk)(const char *fmt, unsigned int fmt_size, ...) = (void *) 6;\n"
        ));
        assert!(header.contains("#define BPF_MAP_TYPE_PERCPU_ARRAY 6\n"));
        assert!(header.contains("#define PT_REGS_PARM1(x) ((x)->rdi)\n"));
        assert!(header.contains("#define PT_REGS_PARM6(x) ((x)->r9)\n"));
        assert!(header.contains("#define PT_REGS_RC(x) ((x)->rax)\n"));
        assert_eq!(
            header.matches(" = (void *) ").count(),
            HELPERS.len(),
            "{header}"
        );
    }
}
