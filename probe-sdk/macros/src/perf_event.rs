//! `#[perf_event]`.

use proc_macro2::TokenStream;
use syn::spanned::Spanned;

use crate::program::{Program, ProgramKind};

/// Section `perf_event`; the event itself is chosen when attaching.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new(
            attr.span(),
            "#[perf_event] takes no arguments; the event and period are chosen when attaching",
        ));
    }
    let program = Program::parse(ProgramKind::PerfEvent, "perf_event".into(), item)?;
    Ok(program.expand(TokenStream::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::tests::err;
    use quote::quote;

    #[test]
    fn perf_event_section() {
        let out = expand(
            quote!(),
            quote!(
                fn sample(ctx: PerfEventContext) -> u32 {
                    0
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("link_section = \"perf_event\""), "{out}");
        assert_eq!(
            err(expand(
                quote!("cycles"),
                quote!(
                    fn p() -> u32 {
                        0
                    }
                )
            )),
            "#[perf_event] takes no arguments; the event and period are chosen when attaching"
        );
    }
}
