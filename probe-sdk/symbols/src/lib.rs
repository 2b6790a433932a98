//! Symbol index of a kernel ELF: from the Rust paths people write to the
//! addresses a probe goes to, and back.
//!
//! [`SymbolIndex`] reads an ELF's symbol table (demangling both the legacy
//! and the v0 Rust schemes, which one binary may mix: the kernel's own code
//! and the prebuilt `core`/`alloc` need not agree), its DWARF line tables and
//! inline records, and its executable bytes. It answers:
//!
//! - **name → addresses**: [`SymbolIndex::resolve`] takes a [`Query`]
//!   (exact path, unique suffix, glob, `path+offset`, `file:line`, raw
//!   address) and returns probe points or a [`SymbolError`] that lists the
//!   candidates of an ambiguity, suggests close names, explains that a
//!   function was inlined away or is too small, or names the nearest
//!   instruction boundaries of a misplaced offset;
//! - **address → symbol**: [`SymbolIndex::lookup_addr`] (function + offset)
//!   and [`SymbolIndex::symbolize`] (plus inlined source frames), for
//!   backtraces and stack samples;
//! - **lines**: [`SymbolIndex::addr_to_line`] and `file:line` queries.
//!
//! Indexing reads all of the DWARF and takes about 0.1 s for the kernel;
//! [`cache`] keeps an index on disk per kernel build (keyed by the ELF's GNU
//! build id), so a command-line lookup reads one file instead.
//!
//! Names are matched in a normalised form ([`path`]): `<Type>::method` and
//! `Type::method` are the same function, `<T as Trait>::method` is found by
//! the type and by the trait, closures are `{closure#N}`.
//!
//! ```no_run
//! use ktrace_symbols::{ResolveOptions, SymbolIndex};
//! let index = SymbolIndex::from_path("target/kernel/kernel/kernel")?;
//! let res = index.resolve("RequestQueue::submit_bio", ResolveOptions::default())?;
//! println!("{:#x}", res.points[0].addr);
//! # Ok::<(), ktrace_symbols::SymbolError>(())
//! ```

#![warn(missing_docs)]

pub mod cache;
pub mod decode;
mod dwarf;
mod error;
mod index;
pub mod params;
pub mod path;
mod query;
mod suggest;

pub use error::{AmbiguityKind, Candidate, InlineSite, NotProbeable, SymbolError};
pub use index::{Frame, Function, SourceLocation, SymbolIndex, Symbolized};
pub use path::Mangling;
pub use query::{ProbePoint, Query, Resolution, ResolveOptions};
pub use suggest::levenshtein;
