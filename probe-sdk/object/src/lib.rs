//! From eBPF ELF bytes to what the kernel loads, and the kernel's verdict
//! on it, computed on the host. Pure: bytes and values in, values out; no
//! files, processes, sockets or VMs (the SDK's `probe-sdk` crate does those).
//!
//! - [`object`]: the object loader. [`object::parse`] reads a standard eBPF
//!   ELF object (from `ktrace build` or `clang -target bpf`) into an
//!   [`object::Object`]: programs with their subprograms placed and
//!   relocated, maps (legacy `maps` section and global data), the license,
//!   a line table per program from DWARF and the maps' key/value types.
//!   [`object::Object::resolve_targets`] resolves kprobe targets through a
//!   kernel symbol index; [`object::Object::into_load`] gives the request.
//! - [`check`]: `ktrace check`. The kernel's verifier (`bpf_vm::verifier`)
//!   with the kernel's own program set-up (the platform description in
//!   `ktrace-bpf-platform`), so its verdict and message are the kernel's,
//!   with the source line of a refused instruction.
//!
//! Bad input is an error that names what is wrong and where, never a
//! panic: `tests/object_fuzz.rs` in `probe-sdk` mutates real probe objects
//! and checks exactly that.

pub mod check;
pub mod object;
mod object_lines;
mod object_types;
