//! The language of `ktrace trace`: one-line questions in the syntax
//! bpftrace users know, compiled on the host straight to BPF instructions.
//!
//! The pipeline is pure (no I/O) so each step is tested on the host:
//!
//! 1. [`parser::parse`] turns the script into an [`ast::Script`], every node
//!    carrying its [`Span`];
//! 2. [`check::check`] gives every expression a type, every map one kind of
//!    value and one key signature, every scratch variable one type;
//! 3. [`codegen::compile`] emits one BPF program per probe block with the
//!    project's own instruction encoder ([`bpf_vm::Insn`]), the maps they
//!    share, the `printf` formats and, per instruction, the script span it
//!    came from (so a verifier rejection points back at the script);
//! 4. [`output`] formats what the programs produced the way bpftrace prints
//!    it: `printf` records, maps, log2 and linear histograms.
//!
//! Errors are [`Diagnostic`]s: a span and a message saying what was expected,
//! rendered with the line and a caret under the column.
//!
//! ```
//! use ktrace_trace_lang::{compile_script, World};
//! let err = compile_script("kprobe:f { @x = count() ", &World::default()).unwrap_err();
//! assert_eq!(
//!     err.render("<script>", "kprobe:f { @x = count() "),
//!     "<script>:1:25: error: expected `}` to close the block, found the end of the script\n\
//!      kprobe:f { @x = count() \n                        ^\n"
//! );
//! ```

pub mod ast;
pub mod check;
pub mod codegen;
mod diag;
pub mod lexer;
pub mod output;
pub mod parser;

pub use diag::{Diagnostic, Span};

/// What the compiler needs to know about the kernel: the tracepoints and
/// their record layouts (as the kernel reports them), and where a kprobed
/// function's parameters are (from the kernel's DWARF).
#[derive(Debug, Clone, Default)]
pub struct World {
    pub tracepoints: Vec<ktrace_abi::trace::TracepointInfo>,
    /// `args.PATH` in kprobes; `None`: no kernel DWARF at hand.
    pub params: Option<std::sync::Arc<dyn ParamSource>>,
}

/// Where `args.PATH` is in a kprobe: the tool answers from the kernel's
/// DWARF ([`ktrace_symbols::params::ParamReader`]), host tests with fixed
/// answers.
pub trait ParamSource: std::fmt::Debug + Send + Sync {
    /// How to read `path` (`["bio", "op"]`) in a kprobe on `spec` (the
    /// probe as written after `kprobe:`).
    fn access(
        &self,
        spec: &str,
        path: &[&str],
    ) -> Result<ktrace_symbols::params::ParamAccess, ktrace_symbols::params::ParamError>;
}

impl World {
    /// The tracepoint `category:name`.
    pub fn tracepoint(
        &self,
        category: &str,
        name: &str,
    ) -> Option<&ktrace_abi::trace::TracepointInfo> {
        self.tracepoints
            .iter()
            .find(|t| t.category == category && t.name == name)
    }
}

/// Parses, checks and compiles `source`.
pub fn compile_script(source: &str, world: &World) -> Result<codegen::Compiled, Diagnostic> {
    let script = parser::parse(source)?;
    let checked = check::check(&script, world)?;
    codegen::compile(&script, &checked, world)
}

#[cfg(test)]
mod tests;
