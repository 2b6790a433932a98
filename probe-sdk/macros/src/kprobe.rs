//! `#[kprobe("target")]` and `#[kretprobe("target")]`.

use proc_macro2::TokenStream;

use crate::program::{string_arg, Program, ProgramKind};

/// Check the target's syntax (it is resolved only at load time) and build the
/// `kprobe/<target>` or `kretprobe/<target>` section.
pub(crate) fn expand(
    kind: ProgramKind,
    attr: TokenStream,
    item: TokenStream,
) -> syn::Result<TokenStream> {
    let lit = string_arg(
        kind,
        attr,
        "a target (a Rust path, suffix, glob, `file:line` or `path+0xOFF`)",
    )?;
    let target = lit.value();
    check_target(&target)
        .map_err(|m| syn::Error::new(lit.span(), format!("{}: {m}", kind.attr())))?;
    let prefix = if kind == ProgramKind::Kprobe {
        "kprobe"
    } else {
        "kretprobe"
    };
    // Spaces (`<Deadline<P> as Scheduler<P>>::dispatch`) travel as `%20`,
    // which the loader decodes (`ktrace_symbols::path::decode_section_target`).
    let target = target.split_whitespace().collect::<Vec<_>>().join("%20");
    let program = Program::parse(kind, format!("{prefix}/{target}"), item)?;
    Ok(program.expand(TokenStream::new()))
}

/// What can be said about a target without the kernel's symbols.
fn check_target(target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("the target is empty".into());
    }
    if let Some(c) = target.chars().find(|c| c.is_control() || *c == '%') {
        return Err(format!(
            "the target `{}` contains {c:?}, which no Rust path or source file holds",
            target.escape_debug()
        ));
    }
    if let Some((base, off)) = target.rsplit_once('+') {
        let hex = off.strip_prefix("0x").or_else(|| off.strip_prefix("0X"));
        let ok = match hex {
            Some(h) => !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()),
            None => !off.is_empty() && off.chars().all(|c| c.is_ascii_digit()),
        };
        if base.is_empty() || !ok {
            return Err(format!(
                "`{target}`: an offset target is `path+0x<hex>` or `path+<decimal>`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::tests::err;
    use quote::quote;

    #[test]
    fn section_holds_the_target_verbatim() {
        let out = expand(
            ProgramKind::Kprobe,
            quote!("kernel::block::queue::RequestQueue::submit_bio"),
            quote!(
                fn p(ctx: KprobeContext) -> u32 {
                    0
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(
            out.contains("\"kprobe/kernel::block::queue::RequestQueue::submit_bio\""),
            "{out}"
        );
        let out = expand(
            ProgramKind::Kretprobe,
            quote!("src/block/queue.rs:42"),
            quote!(
                fn p(ctx: KretprobeContext) -> u32 {
                    0
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("\"kretprobe/src/block/queue.rs:42\""), "{out}");
        let out = expand(
            ProgramKind::Kprobe,
            quote!("submit_bio+0x1c"),
            quote!(
                fn p() -> u32 {
                    0
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("\"kprobe/submit_bio+0x1c\""), "{out}");
        // A qualified path, as the ambiguity message suggests it: its
        // spaces travel as `%20` in the section name.
        let out = expand(
            ProgramKind::Kprobe,
            quote!("<Deadline<P> as  Scheduler<P>>::dispatch"),
            quote!(
                fn p() -> u32 {
                    0
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(
            out.contains("\"kprobe/<Deadline<P>%20as%20Scheduler<P>>::dispatch\""),
            "{out}"
        );
    }

    #[test]
    fn bad_targets_are_explained() {
        assert_eq!(
            err(expand(ProgramKind::Kprobe, quote!(), quote!(fn p() -> u32 { 0 }))),
            "#[kprobe] needs a target (a Rust path, suffix, glob, `file:line` or `path+0xOFF`), e.g. #[kprobe(\"kernel::block::queue::RequestQueue::submit_bio\")]"
        );
        assert_eq!(
            err(expand(
                ProgramKind::Kprobe,
                quote!(""),
                quote!(
                    fn p() -> u32 {
                        0
                    }
                )
            )),
            "#[kprobe]: the target is empty"
        );
        assert_eq!(
            err(expand(
                ProgramKind::Kretprobe,
                quote!("f+0xzz"),
                quote!(
                    fn p() -> u32 {
                        0
                    }
                )
            )),
            "#[kretprobe]: `f+0xzz`: an offset target is `path+0x<hex>` or `path+<decimal>`"
        );
        assert_eq!(
            err(expand(
                ProgramKind::Kprobe,
                quote!("a\tb\n"),
                quote!(
                    fn p() -> u32 {
                        0
                    }
                )
            )),
            "#[kprobe]: the target `a\\tb\\n` contains '\\t', which no Rust path or source file holds"
        );
        assert!(err(expand(
            ProgramKind::Kprobe,
            quote!(submit_bio),
            quote!(
                fn p() -> u32 {
                    0
                }
            )
        ))
        .starts_with("#[kprobe] takes one string literal"));
    }
}
