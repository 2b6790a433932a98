//! What all program attributes share: checking the probe function's
//! signature and wrapping it in an exported `extern "C"` entry point placed
//! in the program's section.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

/// The kinds of program, for messages and section prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgramKind {
    Kprobe,
    Kretprobe,
    Tracepoint,
    PerfEvent,
}

impl ProgramKind {
    /// The attribute's name, as the user wrote it.
    pub(crate) fn attr(self) -> &'static str {
        match self {
            ProgramKind::Kprobe => "#[kprobe]",
            ProgramKind::Kretprobe => "#[kretprobe]",
            ProgramKind::Tracepoint => "#[tracepoint]",
            ProgramKind::PerfEvent => "#[perf_event]",
        }
    }

    /// The context type the user is expected to take.
    fn context(self) -> &'static str {
        match self {
            ProgramKind::Kprobe => "KprobeContext",
            ProgramKind::Kretprobe => "KretprobeContext",
            ProgramKind::Tracepoint => "TracepointContext<Event>",
            ProgramKind::PerfEvent => "PerfEventContext",
        }
    }
}

/// A checked probe function.
pub(crate) struct Program {
    pub(crate) section: String,
    pub(crate) func: ItemFn,
    /// The type of the context argument, if the function takes one.
    pub(crate) ctx_type: Option<Type>,
}

impl Program {
    /// Check the function's shape: one context argument (or none), a `u32`
    /// return, no generics, not async.
    pub(crate) fn parse(
        kind: ProgramKind,
        section: String,
        item: TokenStream,
    ) -> syn::Result<Self> {
        let func: ItemFn = syn::parse2(item).map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("{} applies to a function: {e}", kind.attr()),
            )
        })?;
        let sig = &func.sig;
        if let Some(a) = &sig.asyncness {
            return Err(syn::Error::new(
                a.span(),
                format!("{} functions cannot be async", kind.attr()),
            ));
        }
        if !sig.generics.params.is_empty() {
            return Err(syn::Error::new(
                sig.generics.span(),
                format!("{} functions cannot be generic", kind.attr()),
            ));
        }
        check_return(kind, &func)?;
        let mut ctx_type = None;
        for (i, arg) in sig.inputs.iter().enumerate() {
            match arg {
                FnArg::Receiver(r) => {
                    return Err(syn::Error::new(
                        r.span(),
                        format!("{} functions are free functions, not methods", kind.attr()),
                    ))
                }
                FnArg::Typed(t) if i == 0 => ctx_type = Some((*t.ty).clone()),
                FnArg::Typed(t) => {
                    return Err(syn::Error::new(
                        t.span(),
                        format!(
                            "{} functions take one argument, the context (`{}`)",
                            kind.attr(),
                            kind.context()
                        ),
                    ))
                }
            }
        }
        Ok(Self {
            section,
            func,
            ctx_type,
        })
    }

    /// The exported entry point: `extern "C" fn name(ctx: *mut c_void) ->
    /// u32` in the program's section, calling the user's body.
    pub(crate) fn expand(&self, extra: TokenStream) -> TokenStream {
        let ItemFn {
            attrs, sig, block, ..
        } = &self.func;
        let name = &sig.ident;
        let section = &self.section;
        let inputs = &sig.inputs;
        let call = if self.ctx_type.is_some() {
            quote!(__ktrace_body(::ktrace_probe::FromContext::from_context(
                ctx
            )))
        } else {
            quote!(__ktrace_body())
        };
        quote! {
            #(#attrs)*
            #[unsafe(no_mangle)]
            #[unsafe(link_section = #section)]
            pub extern "C" fn #name(ctx: *mut ::core::ffi::c_void) -> u32 {
                #[inline(always)]
                fn __ktrace_body(#inputs) -> u32 #block
                let _ = ctx;
                #call
            }
            #extra
        }
    }
}

/// The return type must be spelled `u32`: the kernel reads a 32-bit result
/// from `r0`, and anything else (a missing type, `()`, `i64`) is a mistake
/// worth stopping at compile time with a message that names it.
fn check_return(kind: ProgramKind, func: &ItemFn) -> syn::Result<()> {
    match &func.sig.output {
        ReturnType::Default => {
            let span = func.sig.paren_token.span.close();
            Err(syn::Error::new(
                span,
                format!(
                    "{} functions must return `u32` (the program's result, usually 0): add `-> u32`",
                    kind.attr()
                ),
            ))
        }
        ReturnType::Type(_, ty) => {
            if is_u32(ty) {
                Ok(())
            } else {
                let found = quote!(#ty).to_string().replace(' ', "");
                Err(syn::Error::new(
                    ty.span(),
                    format!("{} functions must return `u32`, not `{found}`", kind.attr()),
                ))
            }
        }
    }
}

fn is_u32(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => {
            p.qself.is_none() && {
                let segs: Vec<String> = p
                    .path
                    .segments
                    .iter()
                    .map(|s| s.ident.to_string())
                    .collect();
                segs == ["u32"]
                    || segs == ["core", "primitive", "u32"]
                    || segs == ["std", "primitive", "u32"]
            }
        }
        Type::Paren(p) => is_u32(&p.elem),
        _ => false,
    }
}

/// A literal string argument, or an error saying which attribute wanted one.
pub(crate) fn string_arg(
    kind: ProgramKind,
    attr: TokenStream,
    what: &str,
) -> syn::Result<syn::LitStr> {
    if attr.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            format!("{} needs {what}, e.g. {}", kind.attr(), example(kind)),
        ));
    }
    syn::parse2::<syn::LitStr>(attr.clone()).map_err(|_| {
        syn::Error::new(
            attr.span(),
            format!(
                "{} takes one string literal: {what}, e.g. {}",
                kind.attr(),
                example(kind)
            ),
        )
    })
}

fn example(kind: ProgramKind) -> &'static str {
    match kind {
        ProgramKind::Kprobe => "#[kprobe(\"kernel::block::queue::RequestQueue::submit_bio\")]",
        ProgramKind::Kretprobe => {
            "#[kretprobe(\"kernel::block::queue::RequestQueue::submit_bio\")]"
        }
        ProgramKind::Tracepoint => "#[tracepoint(\"block:block_rq_issue\")]",
        ProgramKind::PerfEvent => "#[perf_event]",
    }
}

/// Spanned compile-time assertion helper for generated checks.
pub(crate) fn spanned_const(span: Span, body: TokenStream) -> TokenStream {
    quote_spanned!(span=> const _: () = #body;)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn err(r: syn::Result<TokenStream>) -> String {
        match r {
            Ok(t) => panic!("expected an error, got {t}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn missing_return_type_is_named() {
        let e = Program::parse(
            ProgramKind::Kprobe,
            "kprobe/x".into(),
            quote!(
                fn p(ctx: KprobeContext) {}
            ),
        );
        assert_eq!(
            e.err().unwrap().to_string(),
            "#[kprobe] functions must return `u32` (the program's result, usually 0): add `-> u32`"
        );
    }

    #[test]
    fn wrong_return_type_is_named() {
        let e = Program::parse(
            ProgramKind::Tracepoint,
            "t".into(),
            quote!(
                fn p(ctx: C) -> i64 {
                    0
                }
            ),
        );
        assert_eq!(
            e.err().unwrap().to_string(),
            "#[tracepoint] functions must return `u32`, not `i64`"
        );
        let e = Program::parse(
            ProgramKind::Kprobe,
            "t".into(),
            quote!(
                fn p(ctx: C) -> Option<u32> {
                    None
                }
            ),
        );
        assert_eq!(
            e.err().unwrap().to_string(),
            "#[kprobe] functions must return `u32`, not `Option<u32>`"
        );
    }

    #[test]
    fn extra_arguments_and_generics_are_refused() {
        let e = Program::parse(
            ProgramKind::Kprobe,
            "t".into(),
            quote!(
                fn p(a: A, b: B) -> u32 {
                    0
                }
            ),
        );
        assert_eq!(
            e.err().unwrap().to_string(),
            "#[kprobe] functions take one argument, the context (`KprobeContext`)"
        );
        let e = Program::parse(
            ProgramKind::PerfEvent,
            "t".into(),
            quote!(
                fn p<T>(a: T) -> u32 {
                    0
                }
            ),
        );
        assert_eq!(
            e.err().unwrap().to_string(),
            "#[perf_event] functions cannot be generic"
        );
        let e = Program::parse(
            ProgramKind::Kprobe,
            "t".into(),
            quote!(
                static X: u32 = 0;
            ),
        );
        assert!(e
            .err()
            .unwrap()
            .to_string()
            .starts_with("#[kprobe] applies to a function"));
    }

    #[test]
    fn entry_point_wraps_the_body() {
        let p = Program::parse(
            ProgramKind::Kprobe,
            "kprobe/f".into(),
            quote!(
                fn hit(ctx: KprobeContext) -> u32 {
                    0
                }
            ),
        )
        .unwrap();
        let out = p.expand(TokenStream::new()).to_string();
        assert!(
            out.contains("# [unsafe (link_section = \"kprobe/f\")]"),
            "{out}"
        );
        assert!(
            out.contains("pub extern \"C\" fn hit (ctx : * mut :: core :: ffi :: c_void) -> u32"),
            "{out}"
        );
        assert!(
            out.contains("fn __ktrace_body (ctx : KprobeContext) -> u32 { 0 }"),
            "{out}"
        );
        assert!(
            out.contains(":: ktrace_probe :: FromContext :: from_context (ctx)"),
            "{out}"
        );
    }

    #[test]
    fn a_context_free_probe_is_allowed() {
        let p = Program::parse(
            ProgramKind::Kprobe,
            "kprobe/f".into(),
            quote!(
                fn hit() -> u32 {
                    0
                }
            ),
        )
        .unwrap();
        assert!(p
            .expand(TokenStream::new())
            .to_string()
            .contains("__ktrace_body ()"));
    }
}
