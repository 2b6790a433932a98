//! Attribute macros for ktrace probes, re-exported by `ktrace-probe`.
//!
//! - `#[kprobe("target")]`, `#[kretprobe("target")]`: the target is a
//!   demangled Rust path (`kernel::block::queue::RequestQueue::submit_bio`),
//!   a path suffix, a glob, a `file:line` or a `path+0x10` offset. It is
//!   stored verbatim in the section name (`kprobe/<target>`) and resolved
//!   when the object is loaded.
//! - `#[tracepoint("block:block_rq_issue")]`: section
//!   `tracepoint/block/block_rq_issue`; with a `TracepointContext<E>`
//!   argument, a compile-time check that `E` is that event's record.
//! - `#[perf_event]`: section `perf_event`.
//! - `#[map]` / `#[map(name = "COUNTS")]`: a static in the `maps` section.
//!
//! Each macro is a `parse` step (attribute + item → a model, or a spanned
//! error) and an `expand` step (model → tokens), so both are unit-tested on
//! token streams. Errors become `compile_error!` at the user's span.

use proc_macro::TokenStream;

mod kprobe;
mod map;
mod perf_event;
mod program;
mod tracepoint;

use program::ProgramKind;

/// Attach a function to a kernel instruction (usually a function's entry).
/// The function takes a `KprobeContext` and returns `u32`.
#[proc_macro_attribute]
pub fn kprobe(attr: TokenStream, item: TokenStream) -> TokenStream {
    finish(kprobe::expand(
        ProgramKind::Kprobe,
        attr.into(),
        item.into(),
    ))
}

/// Run a function when a kernel function returns. The function takes a
/// `KretprobeContext` and returns `u32`.
#[proc_macro_attribute]
pub fn kretprobe(attr: TokenStream, item: TokenStream) -> TokenStream {
    finish(kprobe::expand(
        ProgramKind::Kretprobe,
        attr.into(),
        item.into(),
    ))
}

/// Run a function on a static tracepoint (`"category:name"`). The function
/// takes a `TracepointContext<Event>` and returns `u32`.
#[proc_macro_attribute]
pub fn tracepoint(attr: TokenStream, item: TokenStream) -> TokenStream {
    finish(tracepoint::expand(attr.into(), item.into()))
}

/// Run a function on each sample of a perf event. The function takes a
/// `PerfEventContext` and returns `u32`.
#[proc_macro_attribute]
pub fn perf_event(attr: TokenStream, item: TokenStream) -> TokenStream {
    finish(perf_event::expand(attr.into(), item.into()))
}

/// Place a map static in the `maps` section under a stable symbol name.
#[proc_macro_attribute]
pub fn map(attr: TokenStream, item: TokenStream) -> TokenStream {
    finish(map::expand(attr.into(), item.into()))
}

fn finish(result: syn::Result<proc_macro2::TokenStream>) -> TokenStream {
    result.unwrap_or_else(syn::Error::into_compile_error).into()
}
