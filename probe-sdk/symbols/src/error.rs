//! The one error type of the crate, with its candidates and suggestions as
//! data so that tools can render them (the CLI prints them, `--json` emits
//! them).

use std::fmt::{self, Write as _};
use std::path::PathBuf;

/// A function offered to the user: in an ambiguity, or as the function
/// that holds a refused address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// Demangled path, hash dropped.
    pub name: String,
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// `file:line` of the first instruction, if line tables say.
    pub location: Option<String>,
    /// A query that selects this candidate alone, if one exists.
    pub select_with: Option<String>,
}

/// Why several points matched one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AmbiguityKind {
    /// Functions of the same name in different modules or types.
    SameName,
    /// Monomorphizations of one generic function.
    Monomorphizations,
    /// One trait method implemented by several types.
    TraitImpls,
    /// Several functions (or inlined copies) hold code for one source line.
    LineInSeveralPlaces,
    /// Closures of one function (legacy names do not number them).
    Closures,
}

/// A place where a function was inlined.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InlineSite {
    /// The function its code was inlined into.
    pub into: String,
    /// First address of the inlined code.
    pub addr: u64,
    /// `file:line` of the call.
    pub call_site: Option<String>,
}

/// Why a function cannot hold a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotProbeable {
    /// The symbol has size 0 (an assembly label without `.size`).
    ZeroSize,
    /// The symbol is smaller than its first instruction.
    SmallerThanInstruction {
        /// Size of the symbol.
        size: u64,
    },
    /// The bytes at its start do not decode as an instruction.
    Undecodable,
    /// The symbol is not in an executable section with contents.
    NoCode,
}

impl fmt::Display for NotProbeable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotProbeable::ZeroSize => f.write_str(
                "its symbol has size 0 (a label without `.size`), so its extent is unknown",
            ),
            NotProbeable::SmallerThanInstruction { size } => {
                write!(f, "it is {size} bytes, less than one instruction")
            }
            NotProbeable::Undecodable => f.write_str("its first bytes are not an instruction"),
            NotProbeable::NoCode => f.write_str("it has no code in an executable section"),
        }
    }
}

/// Everything that can go wrong while indexing or resolving.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The ELF could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF this crate can index.
    #[error("`{what}` is not a usable ELF file: {reason}")]
    Elf {
        /// The file (or `<memory>`).
        what: String,
        /// What the parser said.
        reason: String,
    },
    /// An empty query.
    #[error("empty query: write a path such as `kernel::block::queue::RequestQueue::submit_bio`, a glob, `path+0x10` or `file.rs:120`")]
    EmptyQuery,
    /// A query that does not parse.
    #[error("bad query `{query}`: {reason}")]
    BadQuery {
        /// The query.
        query: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No function matches.
    #[error("{}", not_found(.query, .suggestions))]
    NotFound {
        /// The path asked for.
        query: String,
        /// The closest paths, closest first (at most 5).
        suggestions: Vec<String>,
    },
    /// Several functions match and the query asked for one.
    #[error("{}", ambiguous(.query, *.kind, .candidates, *.all_applies))]
    Ambiguous {
        /// The query.
        query: String,
        /// Why several match.
        kind: AmbiguityKind,
        /// Every match, in address order.
        candidates: Vec<Candidate>,
        /// Whether asking for all matches (`--all`) would resolve the query;
        /// not for an offset, which means different code in each function.
        all_applies: bool,
    },
    /// The name exists only as inlined code.
    #[error("{}", inlined_away(.query, .name, .sites))]
    InlinedAway {
        /// The path asked for.
        query: String,
        /// The function's name as DWARF records it.
        name: String,
        /// Where its code went, one site per caller.
        sites: Vec<InlineSite>,
    },
    /// The function exists but cannot hold a probe.
    #[error("cannot probe `{}` at {:#x}: {reason}", .function.name, .function.addr)]
    NotProbeable {
        /// The function.
        function: Candidate,
        /// Why not.
        reason: NotProbeable,
    },
    /// An offset past the end of its function.
    #[error("offset {offset:#x} is outside `{function}`, which is {size:#x} bytes long")]
    OffsetOutOfRange {
        /// The function's name.
        function: String,
        /// The offset asked for.
        offset: u64,
        /// The function's size.
        size: u64,
    },
    /// An offset in the middle of an instruction.
    #[error("{}", not_on_boundary(.function, *.offset, *.before, *.after))]
    NotOnBoundary {
        /// The function's name.
        function: String,
        /// The offset asked for.
        offset: u64,
        /// Start of the instruction holding the offset.
        before: u64,
        /// Start of the next instruction, if there is one.
        after: Option<u64>,
    },
    /// An offset the decoder could not reach.
    #[error("{}", undecodable(.function, *.offset, *.last))]
    Undecodable {
        /// The function's name.
        function: String,
        /// The offset asked for.
        offset: u64,
        /// The last instruction decoded before it, if any.
        last: Option<u64>,
    },
    /// A raw address given without permission.
    #[error("{}", raw_refused(*.addr, .inside))]
    RawAddressRefused {
        /// The address.
        addr: u64,
        /// `function+0xoff` to write instead, if the address is in one.
        inside: Option<String>,
    },
    /// An address outside every executable section.
    #[error("address {addr:#x} is not in the kernel's executable text")]
    AddressNotInText {
        /// The address.
        addr: u64,
    },
    /// A `file:line` query on an ELF without line tables.
    #[error("`{query}` needs DWARF line tables, and this ELF has none (build with `debug = \"line-tables-only\"` or more)")]
    NoLineTables {
        /// The query.
        query: String,
    },
    /// No source file matches.
    #[error("{}", file_not_found(.file, .suggestions))]
    FileNotFound {
        /// The file asked for.
        file: String,
        /// Files with a similar name.
        suggestions: Vec<String>,
    },
    /// Several source files match.
    #[error("{}", ambiguous_file(.file, .candidates))]
    AmbiguousFile {
        /// The file asked for.
        file: String,
        /// Every file whose path ends with it.
        candidates: Vec<String>,
    },
    /// The line holds no code (comment, blank, or optimised away).
    #[error("{}", no_code(.file, *.line, *.before, *.after))]
    NoCodeAtLine {
        /// The file, as the line tables spell it.
        file: String,
        /// The line asked for.
        line: u32,
        /// The nearest line before it with code.
        before: Option<u32>,
        /// The nearest line after it with code.
        after: Option<u32>,
    },
}

fn not_found(query: &str, suggestions: &[String]) -> String {
    let mut s = format!("no function matches `{query}`");
    if suggestions.is_empty() {
        s.push_str(" (and no name is close to it)");
    } else {
        s.push_str("; did you mean:");
        for sug in suggestions {
            let _ = write!(s, "\n  {sug}");
        }
    }
    s
}

fn ambiguous(
    query: &str,
    kind: AmbiguityKind,
    candidates: &[Candidate],
    all_applies: bool,
) -> String {
    let what = match kind {
        AmbiguityKind::SameName => "functions have this name",
        AmbiguityKind::Monomorphizations => "monomorphizations of one generic function match",
        AmbiguityKind::TraitImpls => "types implement this trait method",
        AmbiguityKind::LineInSeveralPlaces => "functions hold code for this line",
        AmbiguityKind::Closures => "closures match",
    };
    let mut s = format!("`{query}` is ambiguous: {} {what}:", candidates.len());
    let width = candidates.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in candidates {
        let _ = write!(
            s,
            "\n  {:width$}  {:#x}  {} bytes",
            c.name,
            c.addr,
            c.size,
            width = width
        );
        if let Some(loc) = &c.location {
            let _ = write!(s, "  {loc}");
        }
        if let Some(q) = &c.select_with {
            let _ = write!(s, "  (select with `{q}`)");
        }
    }
    let how = match kind {
        AmbiguityKind::SameName => "write a longer path",
        AmbiguityKind::Closures => "add where the closure starts (`path@file.rs:LINE`)",
        // Legacy names spell a generic function without its type
        // arguments (`Vec<T,A>::push`): only the hash tells them apart.
        AmbiguityKind::Monomorphizations
            if candidates.iter().all(|c| {
                c.select_with
                    .as_deref()
                    .and_then(|q| q.rsplit_once("::h"))
                    .is_some_and(|(_, h)| h.len() == 16)
            }) =>
        {
            "write its hash as listed (legacy names carry no type arguments, and the DWARF names none)"
        }
        AmbiguityKind::Monomorphizations => {
            "write the generic arguments as listed (`f::<u32>`; from DWARF for legacy names) or the legacy hash (`f::h0123…`)"
        }
        AmbiguityKind::TraitImpls => "name the type (`<Type as Trait>::method` or `Type::method`)",
        AmbiguityKind::LineInSeveralPlaces => "probe one of the functions by name (`path+0xOFF`)",
    };
    let _ = write!(s, "\nto choose one, {how}");
    if all_applies {
        s.push_str("; to attach to all of them, pass --all");
    }
    s
}

fn inlined_away(query: &str, name: &str, sites: &[InlineSite]) -> String {
    let mut s = format!(
        "`{query}` has no symbol of its own: `{name}` was inlined away (debug info records it only as inlined code)"
    );
    if !sites.is_empty() {
        let _ = write!(s, "; it was inlined into:");
        // Line-tables DWARF names functions without their module, so a
        // common name can have many sites: show the first few.
        const SHOWN: usize = 10;
        for site in sites.iter().take(SHOWN) {
            let _ = write!(s, "\n  {} at {:#x}", site.into, site.addr);
            if let Some(c) = &site.call_site {
                let _ = write!(s, " (call at {c})");
            }
        }
        if sites.len() > SHOWN {
            let _ = write!(s, "\n  … and {} more", sites.len() - SHOWN);
        }
        s.push_str("\nprobe a caller, or mark the function #[inline(never)]");
    }
    s
}

fn not_on_boundary(function: &str, offset: u64, before: u64, after: Option<u64>) -> String {
    let mut s = format!(
        "`{function}+{offset:#x}` is inside an instruction; the nearest instruction boundaries are {function}+{before:#x}"
    );
    if let Some(a) = after {
        let _ = write!(s, " and {function}+{a:#x}");
    }
    s
}

fn undecodable(function: &str, offset: u64, last: Option<u64>) -> String {
    let mut s =
        format!("cannot check `{function}+{offset:#x}`: decoding the function stopped before it");
    if let Some(l) = last {
        let _ = write!(s, " (last instruction decoded at {function}+{l:#x})");
    }
    s
}

fn raw_refused(addr: u64, inside: &Option<String>) -> String {
    let mut s = format!("refusing the raw address {addr:#x}: raw addresses are accepted only with --unsafe-address (allow_raw_address)");
    if let Some(i) = inside {
        let _ = write!(s, "; it is `{i}`, which you can write instead");
    }
    s
}

fn file_not_found(file: &str, suggestions: &[String]) -> String {
    let mut s = format!("no source file in the line tables ends with `{file}`");
    if !suggestions.is_empty() {
        s.push_str("; did you mean:");
        for sug in suggestions {
            let _ = write!(s, "\n  {sug}");
        }
    }
    s
}

fn ambiguous_file(file: &str, candidates: &[String]) -> String {
    let mut s = format!("`{file}` matches {} source files:", candidates.len());
    for c in candidates {
        let _ = write!(s, "\n  {c}");
    }
    s.push_str("\nwrite more of the path");
    s
}

fn no_code(file: &str, line: u32, before: Option<u32>, after: Option<u32>) -> String {
    let mut s = format!("no code starts at {file}:{line}");
    match (before, after) {
        (None, None) => s.push_str(" and the file has no line with code"),
        (b, a) => {
            s.push_str("; the nearest lines with code are");
            let lines: Vec<String> = [b, a].iter().flatten().map(|l| l.to_string()).collect();
            let _ = write!(s, " {}", lines.join(" and "));
        }
    }
    s
}
