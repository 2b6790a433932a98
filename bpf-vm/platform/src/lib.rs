//! ktrace's BPF platform, described once: everything a BPF program may
//! assume about the kernel it runs in, as `no_std` constants and tables
//! with no allocation, so that every party reads the same description.
//!
//! | module | what | read by |
//! |---|---|---|
//! | [`program`] | program types, their Linux numbers, the context each receives, the helpers each may call, what they return | the verifier's program types (kernel load and `ktrace check`), the protocol |
//! | [`c_header`] | the helpers and map types as a C header (`ktrace helpers --c-header`) | C probes, the end-to-end tests' C programs |
//! | [`helper`] | helper ids and prototypes (argument and return kinds, accepted map types) | the verifier, the kernel's helper dispatch, the probe crate's `call`s |
//! | [`map_type`] | Linux map type numbers and names | the kernel's maps, the verifier, the object loader, the probe crate's map definitions |
//! | [`regs`] | x86-64 `struct pt_regs` and `struct bpf_perf_event_data` | the kernel's contexts, the probe crate's accessors, `ktrace trace`'s code generator |
//!
//! The numbers are Linux's (`enum bpf_prog_type`, `enum bpf_func_id`,
//! `enum bpf_map_type`, x86-64 `struct pt_regs`), so objects built for
//! Linux load here and ktrace's objects make sense to Linux tools.
//!
//! The verifier core (`bpf_vm::verifier`) knows none of this; its
//! `linux` module turns these tables into the verifier's `Env` pieces.
//! A program the kernel accepts is therefore accepted by `ktrace check` on
//! the host and the other way round: both build the program type with
//! `bpf_vm::verifier::linux::program_type` from this crate.
#![cfg_attr(not(test), no_std)]

pub mod c_header;
pub mod helper;
pub mod map_type;
pub mod program;
pub mod regs;

pub use c_header::{CHeader, C_HEADER_NAME};
pub use helper::{ArgKind, Helper, RetKind};
pub use program::{Attach, Context, ContextError, ProgramType};
pub use regs::{PerfEventData, PtRegs};
