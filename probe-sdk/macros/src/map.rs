//! `#[map]` and `#[map(name = "NAME")]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{ItemStatic, LitStr, StaticMutability};

/// Put the static in the `maps` section under its own name (or `name`), so
/// the loader and `ktrace map` tools find it by that name.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let item: ItemStatic = syn::parse2(item)
        .map_err(|e| syn::Error::new(e.span(), format!("#[map] applies to a `static`: {e}")))?;
    if let StaticMutability::Mut(m) = &item.mutability {
        return Err(syn::Error::new(
            m.span(),
            "#[map] statics must not be `mut`: maps are used through shared references",
        ));
    }
    let name = parse_name(attr)?.unwrap_or_else(|| item.ident.to_string());
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(syn::Error::new(
            item.ident.span(),
            format!("#[map]: map name `{name}` must be letters, digits and `_`"),
        ));
    }
    Ok(quote! {
        #[unsafe(link_section = "maps")]
        #[unsafe(export_name = #name)]
        #item
    })
}

fn parse_name(attr: TokenStream) -> syn::Result<Option<String>> {
    if attr.is_empty() {
        return Ok(None);
    }
    let mut name = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            name = Some(lit.value());
            Ok(())
        } else {
            Err(meta.error("#[map] accepts only `name = \"...\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::tests::err;

    #[test]
    fn map_section_and_name() {
        let out = expand(
            quote!(),
            quote!(
                static COUNTS: HashMap<u64, u64> = HashMap::with_max_entries(8);
            ),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("link_section = \"maps\""), "{out}");
        assert!(out.contains("export_name = \"COUNTS\""), "{out}");
        let out = expand(
            quote!(name = "calls"),
            quote!(
                static C: Array<u64> = Array::with_max_entries(1);
            ),
        )
        .unwrap()
        .to_string();
        assert!(out.contains("export_name = \"calls\""), "{out}");
    }

    #[test]
    fn bad_maps_are_explained() {
        assert_eq!(
            err(expand(
                quote!(),
                quote!(
                    static mut M: Array<u64> = Array::with_max_entries(1);
                )
            )),
            "#[map] statics must not be `mut`: maps are used through shared references"
        );
        assert_eq!(
            err(expand(
                quote!(size = 3),
                quote!(
                    static M: u32 = 0;
                )
            )),
            "#[map] accepts only `name = \"...\"`"
        );
        assert!(err(expand(
            quote!(),
            quote!(
                fn f() {}
            )
        ))
        .starts_with("#[map] applies to a `static`"));
    }
}
