//! [`SymbolIndex`]: the functions of an ELF, their names and their code.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use gimli::{EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

use crate::dwarf::LineData;
use crate::error::{Candidate, SymbolError};
use crate::path::{demangle, render, Mangling, ParsedPath};

/// One function symbol.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Function {
    /// Demangled path without the hash: what users type and what the
    /// kernel's embedded table stores.
    pub name: String,
    /// Demangled in full (legacy hash or v0 crate disambiguator kept).
    pub demangled: String,
    /// The symbol as the linker saw it.
    pub mangled: String,
    /// Start address.
    pub addr: u64,
    /// Size in bytes (0 for labels without `.size`).
    pub size: u64,
    /// Legacy hash (16 hex digits), which tells legacy monomorphizations
    /// apart.
    pub hash: Option<String>,
    /// Mangling scheme.
    pub scheme: Mangling,
    /// Globally visible (`STB_GLOBAL`/`STB_WEAK`).
    pub global: bool,
    /// A legacy-named monomorphization's generic arguments, from DWARF
    /// (`ktrace_tracepoints::block::BlockRqIssue` for
    /// `emit::<BlockRqIssue>`): what selects it by type.
    pub type_args: Option<String>,
    /// The name parsed, when first matched against (an index read from the
    /// cache parses only the functions a query looks at).
    #[serde(skip)]
    parsed: OnceLock<ParsedPath>,
    /// The parsed name's keys rendered, for globs.
    #[serde(skip)]
    paths: OnceLock<Vec<String>>,
    /// [`SymbolIndex::function_location`], computed once (or read from the
    /// cache, so that a lookup need not decode the line tables).
    #[serde(skip)]
    pub(crate) entry: OnceLock<Option<SourceLocation>>,
    /// Whether a probe fits at the entry (`None`) or why not, checked once
    /// (or read from the cache, so that a lookup need not read the code).
    #[serde(skip)]
    pub(crate) entry_refusal: OnceLock<Option<crate::error::NotProbeable>>,
}

impl Function {
    /// A function named `name` (demangled, no hash).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        demangled: String,
        mangled: String,
        addr: u64,
        size: u64,
        hash: Option<String>,
        scheme: Mangling,
        global: bool,
    ) -> Self {
        Function {
            paths: OnceLock::new(),
            entry: OnceLock::new(),
            entry_refusal: OnceLock::new(),
            parsed: OnceLock::new(),
            name,
            demangled,
            mangled,
            addr,
            size,
            hash,
            scheme,
            global,
            type_args: None,
        }
    }

    /// The paths this function can be found by, as text: by type (or the
    /// plain path), and by trait for a trait method.
    pub fn search_paths(&self) -> &[String] {
        self.paths
            .get_or_init(|| self.parsed().keys().iter().map(|k| render(k)).collect())
    }

    /// The name parsed ([`ParsedPath`]), parsed on first use.
    pub(crate) fn parsed(&self) -> &ParsedPath {
        self.parsed.get_or_init(|| ParsedPath::parse(&self.name))
    }

    /// True if `addr` is inside the function (a size-0 symbol holds only
    /// its own address).
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.addr && addr - self.addr < self.size.max(1)
    }
}

/// A source position.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceLocation {
    /// Path as the line tables spell it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One frame of a symbolized address, innermost first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    /// The function: a symbol's demangled name, or for inlined code the
    /// bare name DWARF records.
    pub function: String,
    /// Where in that function.
    pub location: Option<SourceLocation>,
    /// The frame is code inlined into the frame after it.
    pub inlined: bool,
}

/// What an address is: the function, offset and (inlined) source frames.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Symbolized<'a> {
    /// The function symbol holding the address.
    pub function: &'a Function,
    /// Offset of the address in it.
    pub offset: u64,
    /// Source frames, innermost first; empty without line tables.
    pub frames: Vec<Frame>,
}

#[derive(Debug)]
pub(crate) struct TextSection {
    pub addr: u64,
    pub data: Vec<u8>,
}

/// The index of one ELF: functions by address and by name, line tables,
/// inline records and the executable bytes (to decode instructions).
#[derive(Debug)]
pub struct SymbolIndex {
    /// Sorted by address, then larger first.
    pub(crate) functions: Vec<Function>,
    /// Last path segment → functions. Closures are filed under `{closure}`
    /// so that both schemes' spellings meet.
    pub(crate) by_last: HashMap<String, Vec<u32>>,
    pub(crate) text: Lazy<Vec<TextSection>>,
    pub(crate) lines: Lines,
    pub(crate) dwarf_error: Option<String>,
}

/// A part of an index that is made when first needed: an index built from
/// an ELF has every part at once; one read from the cache reads its line
/// tables and code from the cache file on first use (a lookup by name
/// needs neither: see [`crate::cache`]).
pub(crate) struct Lazy<T> {
    cell: OnceLock<T>,
    load: Option<Loader<T>>,
}

/// What a [`Lazy`] part is made from, and how.
type Loader<T> = (
    std::sync::Arc<crate::cache::Pending>,
    fn(&crate::cache::Pending) -> T,
);

impl<T> Lazy<T> {
    /// A part that is there.
    pub(crate) fn ready(value: T) -> Self {
        Lazy {
            cell: OnceLock::from(value),
            load: None,
        }
    }

    /// A part that `load` makes from `pending` on first use.
    pub(crate) fn pending(
        pending: std::sync::Arc<crate::cache::Pending>,
        load: fn(&crate::cache::Pending) -> T,
    ) -> Self {
        Lazy {
            cell: OnceLock::new(),
            load: Some((pending, load)),
        }
    }

    /// The part, made now if it was not yet.
    pub(crate) fn get(&self) -> &T {
        // A lazy part always has its loader; `ready` ones are set.
        self.cell.get_or_init(|| match &self.load {
            Some((pending, load)) => load(pending),
            None => unreachable!("a Lazy without a loader is made ready"),
        })
    }

    /// The part, taken out.
    pub(crate) fn into_inner(self) -> T {
        let _ = self.get();
        match self.cell.into_inner() {
            Some(v) => v,
            None => unreachable!("get() just set it"),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cell.get() {
            Some(v) => v.fmt(f),
            None => f.write_str("<not read yet>"),
        }
    }
}

/// Line tables and inline records, if the ELF has them.
pub(crate) type Lines = Lazy<Option<LineData>>;

/// The key of `by_last` for a segment name.
pub(crate) fn last_key(name: &str) -> &str {
    if name.starts_with("{closure") {
        "{closure}"
    } else {
        name
    }
}

impl SymbolIndex {
    /// Index the ELF file at `path`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, SymbolError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| SymbolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&data, &path.display().to_string())
    }

    /// Index an ELF image in memory.
    pub fn from_bytes(data: &[u8]) -> Result<Self, SymbolError> {
        Self::parse(data, "<memory>")
    }

    fn parse(data: &[u8], what: &str) -> Result<Self, SymbolError> {
        let elf_err = |reason: String| SymbolError::Elf {
            what: what.to_string(),
            reason,
        };
        let file = object::File::parse(data).map_err(|e| elf_err(e.to_string()))?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(elf_err(format!("it is {:?}, not ELF", file.format())));
        }
        let mut text = Vec::new();
        for section in file.sections() {
            if section.kind() == SectionKind::Text {
                let bytes = section.data().map_err(|e| elf_err(e.to_string()))?;
                if !bytes.is_empty() {
                    text.push(TextSection {
                        addr: section.address(),
                        data: bytes.to_vec(),
                    });
                }
            }
        }
        text.sort_by_key(|s| s.addr);

        let mut functions = Vec::new();
        let mut symbols: Vec<_> = file.symbols().collect();
        if symbols.is_empty() {
            symbols = file.dynamic_symbols().collect();
        }
        for sym in symbols {
            let Ok(name) = sym.name() else { continue };
            let is_code_kind = matches!(sym.kind(), SymbolKind::Text | SymbolKind::Unknown);
            if !is_code_kind || !sym.is_definition() || name.is_empty() || name.starts_with(".L") {
                continue;
            }
            // Untyped symbols count only inside executable sections.
            let in_exec = match sym.section_index() {
                Some(i) => file
                    .section_by_index(i)
                    .is_ok_and(|s| s.kind() == SectionKind::Text),
                None => false,
            };
            if !in_exec || name.starts_with('$') {
                continue;
            }
            let d = demangle(name);
            functions.push(Function::new(
                d.name,
                d.full,
                name.to_string(),
                sym.address(),
                sym.size(),
                d.hash,
                d.scheme,
                sym.is_global(),
            ));
        }
        functions.sort_by(|a, b| {
            (a.addr, std::cmp::Reverse(a.size), &a.mangled).cmp(&(
                b.addr,
                std::cmp::Reverse(b.size),
                &b.mangled,
            ))
        });
        // A symbol listed twice (local and global copies) counts once.
        functions.dedup_by(|a, b| a.addr == b.addr && a.mangled == b.mangled);

        let (lines, dwarf_error) = match load_dwarf(&file, &text) {
            Ok(l) => (l, None),
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(lines) = &lines {
            for f in functions.iter_mut().filter(|f| f.hash.is_some()) {
                f.type_args = lines.generics.get(&f.addr).cloned();
            }
        }
        Ok(SymbolIndex::assemble(
            functions,
            Lazy::ready(text),
            Lines::ready(lines),
            dwarf_error,
            None,
        ))
    }

    /// The index of `functions` (sorted by address), with its name table.
    pub(crate) fn assemble(
        functions: Vec<Function>,
        text: Lazy<Vec<TextSection>>,
        lines: Lines,
        dwarf_error: Option<String>,
        by_last: Option<HashMap<String, Vec<u32>>>,
    ) -> Self {
        let by_last = by_last.unwrap_or_else(|| {
            let mut by_last: HashMap<String, Vec<u32>> = HashMap::new();
            for (i, f) in functions.iter().enumerate() {
                if let Some(last) = f.parsed().rest.last() {
                    by_last
                        .entry(last_key(&last.name).to_string())
                        .or_default()
                        .push(i as u32);
                }
            }
            by_last
        });
        SymbolIndex {
            functions,
            by_last,
            text,
            lines,
            dwarf_error,
        }
    }

    /// All functions, in address order.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// True if the ELF had DWARF line tables.
    pub fn has_line_tables(&self) -> bool {
        self.lines
            .get()
            .as_ref()
            .is_some_and(|l| !l.rows.is_empty())
    }

    /// Why DWARF could not be read, if it could not (the index then works
    /// without lines).
    pub fn dwarf_error(&self) -> Option<&str> {
        self.dwarf_error.as_deref()
    }

    /// The function containing `addr` and the offset into it.
    pub fn lookup_addr(&self, addr: u64) -> Option<(&Function, u64)> {
        let i = self.lookup_index(addr)?;
        let f = &self.functions[i];
        Some((f, addr - f.addr))
    }

    /// Index in [`SymbolIndex::functions`] of the function containing `addr`.
    pub(crate) fn lookup_index(&self, addr: u64) -> Option<usize> {
        let end = self.functions.partition_point(|f| f.addr <= addr);
        // Walk back over symbols starting at or before `addr`: the nearest
        // one may be a zero-size label inside a larger function.
        (end.saturating_sub(16)..end)
            .rev()
            .find(|&i| self.functions[i].contains(addr))
    }

    /// Address → function + offset + source frames (inlined ones included).
    pub fn symbolize(&self, addr: u64) -> Option<Symbolized<'_>> {
        let (function, offset) = self.lookup_addr(addr)?;
        let mut frames = Vec::new();
        if let Some(lines) = self.lines.get().as_ref() {
            let row = lines.row_at(addr);
            let inlines = lines.inlines_at(addr, function.addr);
            let mut location = row
                .filter(|r| r.line != 0)
                .map(|r| self.location_of(r.file, r.line));
            // Innermost first: each inlined call's call site is the
            // location in the frame that contains it.
            for inl in inlines.iter().rev() {
                frames.push(Frame {
                    function: lines.names[inl.name as usize].clone(),
                    location: location.take(),
                    inlined: true,
                });
                location = inl.call_file.map(|f| self.location_of(f, inl.call_line));
            }
            frames.push(Frame {
                function: function.name.clone(),
                location,
                inlined: false,
            });
        }
        Some(Symbolized {
            function,
            offset,
            frames,
        })
    }

    /// `file:line` of a function's own first line: where its body starts,
    /// not the code the compiler inlined at its entry.
    pub fn function_location(&self, f: &Function) -> Option<SourceLocation> {
        f.entry
            .get_or_init(|| self.compute_function_location(f))
            .clone()
    }

    fn compute_function_location(&self, f: &Function) -> Option<SourceLocation> {
        let lines = self.lines.get().as_ref()?;
        // The first row of the function's own code (outside every inlined
        // call); the prologue is often attributed to inlined `core` code.
        let i = lines.sequences.partition_point(|s| s.start <= f.addr);
        if let Some(seq) = i.checked_sub(1).map(|i| &lines.sequences[i]) {
            let rows = &lines.rows[seq.rows.0..seq.rows.1];
            let first = rows.partition_point(|r| r.addr < f.addr);
            let end = f.addr + f.size.max(1);
            // Inlined ranges of the function, merged: rows and ranges are
            // both in address order, so one walk finds the first row
            // outside them.
            let lo = lines.inlines.partition_point(|r| r.start < f.addr);
            let hi = lines.inlines.partition_point(|r| r.start < end);
            let mut covered: Vec<(u64, u64)> = Vec::new();
            for r in &lines.inlines[lo..hi] {
                match covered.last_mut() {
                    Some(last) if r.start <= last.1 => last.1 = last.1.max(r.end),
                    _ => covered.push((r.start, r.end)),
                }
            }
            let mut c = 0;
            let own = rows[first..].iter().take_while(|r| r.addr < end).find(|r| {
                while c < covered.len() && covered[c].1 <= r.addr {
                    c += 1;
                }
                let inside = c < covered.len() && covered[c].0 <= r.addr;
                r.line != 0 && !inside
            });
            if let Some(r) = own {
                return Some(self.location_of(r.file, r.line));
            }
        }
        // Else the call site of the outermost inlined call at the entry.
        self.symbolize(f.addr)?.frames.pop()?.location
    }

    /// `file:line` of the code at `addr` (innermost, as the line table says).
    pub fn addr_to_line(&self, addr: u64) -> Option<SourceLocation> {
        let row = self.lines.get().as_ref()?.row_at(addr)?;
        (row.line != 0).then(|| self.location_of(row.file, row.line))
    }

    pub(crate) fn location_of(&self, file: u32, line: u32) -> SourceLocation {
        let files = self
            .lines
            .get()
            .as_ref()
            .map(|l| &l.files[..])
            .unwrap_or(&[]);
        SourceLocation {
            file: files
                .get(file as usize)
                .cloned()
                .unwrap_or_else(|| "<unknown>".into()),
            line,
        }
    }

    /// The executable bytes `[addr, addr + len)`, clamped to the section.
    pub(crate) fn code(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let text = self.text.get();
        let i = text.partition_point(|s| s.addr <= addr);
        let s = text.get(i.checked_sub(1)?)?;
        let start = usize::try_from(addr - s.addr).ok()?;
        if start >= s.data.len() {
            return None;
        }
        let end = start
            .saturating_add(usize::try_from(len).ok()?)
            .min(s.data.len());
        Some(&s.data[start..end])
    }

    /// True if `addr` is in an executable section with contents.
    pub fn in_text(&self, addr: u64) -> bool {
        self.code(addr, 1).is_some()
    }

    /// Describe `f` for an error or a listing.
    pub(crate) fn candidate(&self, f: &Function, select_with: Option<String>) -> Candidate {
        Candidate {
            name: f.name.clone(),
            addr: f.addr,
            size: f.size,
            location: self.function_location(f).map(|l| l.to_string()),
            select_with,
        }
    }
}

/// Read line tables and inline records, if the ELF has them.
fn load_dwarf(
    file: &object::File<'_>,
    text: &[TextSection],
) -> Result<Option<LineData>, gimli::Error> {
    if file.section_by_name(".debug_line").is_none() {
        return Ok(None);
    }
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(match file.section_by_name(id.name()) {
            Some(s) => s.uncompressed_data().unwrap_or(Cow::Borrowed(&[])),
            None => Cow::Borrowed(&[]),
        })
    })?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    let in_text = |addr: u64| {
        let i = text.partition_point(|s| s.addr <= addr);
        i > 0 && addr - text[i - 1].addr < text[i - 1].data.len() as u64
    };
    LineData::load(&dwarf, in_text).map(Some)
}
