//! The host side of ktrace: everything a tool needs to run the kernel,
//! talk to it and turn probe crates into loaded programs.
//!
//! | module | what | does I/O |
//! |---|---|---|
//! | [`vm`] | start, stop, list and reach kernels running in QEMU | processes, files |
//! | [`kernel_image`] | build the kernel and embed its symbol table (post-link step) | cargo, files |
//! | [`client`] | the control channel: connect, handshake, requests and pushed frames | socket |
//! | [`runtime`], [`trace`], [`block`] | typed calls to the kernel's BPF runtime, attach points and block layer over a [`client::Client`]; [`runtime::load_path`] goes from a probe crate or object file to an attached object | through the client |
//! | [`build`] | compile a Rust probe crate to an eBPF object (`rustc` bitcode + `llc`) | cargo, llc, files |
//! | [`linux_bpf`] | ask the host's own Linux for its verdict (`ktrace check --linux`) | `bpf(2)` |
//! | [`typed`] | print and parse map keys, values and records by their DWARF types | none |
//! | [`object`], [`check`] | re-exported from [`ktrace_object`]: ELF bytes → load requests, and the kernel's verifier on the host | none |
//!
//! The protocol itself is `ktrace-abi`; the symbol index of a kernel ELF is
//! `ktrace-symbols`.

pub mod block;
pub mod build;
pub mod client;
pub mod kernel_image;
pub mod linux_bpf;
pub mod runtime;
pub mod trace;
pub mod typed;
pub mod vm;

/// `ktrace check`: the kernel's verifier on the host (pure: `ktrace-object`).
pub use ktrace_object::check;
/// The object loader (pure: `ktrace-object`).
pub use ktrace_object::object;
