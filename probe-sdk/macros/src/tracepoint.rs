//! `#[tracepoint("category:name")]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{GenericArgument, PathArguments, Type};

use crate::program::{spanned_const, string_arg, Program, ProgramKind};

/// Build the `tracepoint/<category>/<name>` section and, when the context is
/// `TracepointContext<E>`, a compile-time check that `E` is the record of
/// that tracepoint (so a probe cannot read `block_rq_issue` fields from a
/// `block_rq_complete` record).
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let kind = ProgramKind::Tracepoint;
    let lit = string_arg(kind, attr, "the tracepoint as \"category:name\"")?;
    let full = lit.value();
    let (category, name) = split_name(&full).map_err(|m| syn::Error::new(lit.span(), m))?;
    let program = Program::parse(kind, format!("tracepoint/{category}/{name}"), item)?;
    let check = match program.ctx_type.as_ref().and_then(event_type) {
        Some(event) => spanned_const(
            event.span(),
            quote!(::ktrace_probe::__private::check_tracepoint::<#event>(#category, #name)),
        ),
        None => TokenStream::new(),
    };
    Ok(program.expand(check))
}

fn split_name(full: &str) -> Result<(&str, &str), String> {
    let (category, name) = full.split_once(':').ok_or_else(|| {
        format!("#[tracepoint]: `{full}` is not \"category:name\" (e.g. \"block:block_rq_issue\")")
    })?;
    for part in [category, name] {
        if part.is_empty() || !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "#[tracepoint]: `{full}`: category and name are identifiers (letters, digits, `_`)"
            ));
        }
    }
    Ok((category, name))
}

/// `E` from a `TracepointContext<E>` argument type, if written that way.
fn event_type(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "TracepointContext" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::tests::err;

    #[test]
    fn section_and_event_check() {
        let out = expand(
            quote!("block:block_rq_issue"),
            quote!(
                fn issue(ctx: TracepointContext<BlockRqIssue>) -> u32 {
                    0
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("\"tracepoint/block/block_rq_issue\""), "{out}");
        assert!(
            out.contains("check_tracepoint :: < BlockRqIssue > (\"block\" , \"block_rq_issue\")"),
            "{out}"
        );
    }

    #[test]
    fn bad_names_are_explained() {
        assert_eq!(
            err(expand(quote!("block_rq_issue"), quote!(fn p() -> u32 { 0 }))),
            "#[tracepoint]: `block_rq_issue` is not \"category:name\" (e.g. \"block:block_rq_issue\")"
        );
        assert_eq!(
            err(expand(quote!("block:rq issue"), quote!(fn p() -> u32 { 0 }))),
            "#[tracepoint]: `block:rq issue`: category and name are identifiers (letters, digits, `_`)"
        );
        assert_eq!(
            err(expand(quote!("block:block_rq_issue"), quote!(fn p(ctx: C) {}))),
            "#[tracepoint] functions must return `u32` (the program's result, usually 0): add `-> u32`"
        );
    }
}
