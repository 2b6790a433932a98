//! An on-disk copy of a [`SymbolIndex`], one per kernel build.
//!
//! Indexing reads all of the ELF's DWARF (inline records above all) and
//! takes about 0.1 s for the kernel, every time a command starts. The
//! cache keeps what the index holds (functions, executable bytes, line
//! tables, inline ranges) in one file per build, so a one-shot lookup reads
//! that file instead.
//!
//! - **Key**: the ELF's GNU build id (`.note.gnu.build-id`, which the
//!   kernel's link writes), read from the notes the program headers point
//!   at: a few hundred bytes, not the ELF. An ELF without a build id is
//!   keyed by its path, size and modification time instead.
//! - **File**: `<dir>/<key>.idx`: a magic, the format version and three
//!   sections, each with its offset, length and xxh64: the functions (with
//!   the `file:line` of each one's body, computed when the file is written),
//!   the executable bytes, and the line tables and inline records
//!   (postcard). A lookup by name reads the first two; the third, most of
//!   the file, is read and decoded only when a query needs lines
//!   (`file:line`, an address, inlined frames). A file that is missing, of
//!   another format, truncated or damaged is a miss: the index is built
//!   from the ELF and the file written again (line data that turns out
//!   damaged later is read from the ELF). The cache can only cost time,
//!   never an answer.
//! - **Concurrency**: a writer writes `<key>.idx.<pid>.tmp` and renames it
//!   over `<key>.idx`, so a reader sees the old file or the new one, never
//!   half of one; two processes indexing the same build at once write the
//!   same bytes, and the last rename wins.
//! - **Size**: after a write, only the [`KEEP`] most recent files stay.

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dwarf::LineData;
use crate::error::NotProbeable;
use crate::error::SymbolError;
use crate::index::{Function, Lazy, Lines, SourceLocation, SymbolIndex, TextSection};
use crate::path::Mangling;

/// First bytes of a cache file.
const MAGIC: &[u8; 8] = b"KTSYMIDX";
/// Bumped whenever what the index keeps changes shape.
const FORMAT: u32 = 6;
/// The sections of a cache file, in this order.
const META: usize = 0;
const TEXT: usize = 1;
const LINES: usize = 2;
const SECTIONS: usize = 3;
/// Magic, format, and offset, length and xxh64 of each section.
const HEADER_LEN: usize = 8 + 4 + SECTIONS * 24;
/// Cache files kept in a directory (the most recent builds).
pub const KEEP: usize = 8;
/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;

/// How [`SymbolIndex::from_path_cached`] got its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Read from the cache file.
    Hit,
    /// Built from the ELF; the cache file was written, or not (and why).
    Built {
        /// Why the cache could not be written, if it could not.
        not_saved: Option<String>,
    },
}

/// [`CachedFunction`] borrowed, to write a cache without copying the index
/// (the same fields in the same order: postcard writes a borrowed value as
/// it writes an owned one).
#[derive(Serialize)]
struct CachedFunctionRef<'a> {
    name: &'a str,
    demangled: &'a str,
    mangled: &'a str,
    addr: u64,
    size: u64,
    hash: &'a Option<String>,
    scheme: Mangling,
    global: bool,
    type_args: &'a Option<String>,
    entry: Option<SourceLocation>,
    entry_refusal: Option<NotProbeable>,
}

#[derive(Deserialize)]
struct CachedFunction {
    name: String,
    demangled: String,
    mangled: String,
    addr: u64,
    size: u64,
    hash: Option<String>,
    scheme: Mangling,
    global: bool,
    type_args: Option<String>,
    entry: Option<SourceLocation>,
    entry_refusal: Option<NotProbeable>,
}

#[derive(Serialize)]
struct MetaRef<'a> {
    key: &'a str,
    functions: Vec<CachedFunctionRef<'a>>,
    /// Address and length of each executable section, whose bytes follow
    /// one another in the text section of the file.
    text: Vec<(u64, u64)>,
    dwarf_error: &'a Option<String>,
    /// The index's name table, so that loading parses no name.
    by_last: &'a HashMap<String, Vec<u32>>,
}

#[derive(Deserialize)]
struct Meta {
    key: String,
    functions: Vec<CachedFunction>,
    text: Vec<(u64, u64)>,
    dwarf_error: Option<String>,
    by_last: HashMap<String, Vec<u32>>,
}

/// Where an index read from the cache finds its code and line data when a
/// query first needs them.
#[derive(Debug)]
pub(crate) struct Pending {
    file: PathBuf,
    text: Range,
    lines: Range,
    /// Address and length of each executable section.
    text_sections: Vec<(u64, u64)>,
    key: String,
    /// The indexed ELF, to read from if the cache file fails by then.
    elf: PathBuf,
}

impl Pending {
    fn section(&self, r: Range) -> Option<Vec<u8>> {
        fs::File::open(&self.file)
            .ok()
            .and_then(|f| read_section(&f, r))
    }

    /// The ELF indexed again, if it is still the same build.
    fn reindex_elf(&self) -> Option<SymbolIndex> {
        if cache_key(&self.elf).ok()? != self.key {
            return None;
        }
        SymbolIndex::from_path(&self.elf).ok()
    }

    /// The line data from the cache file, or else from the ELF.
    pub(crate) fn lines(&self) -> Option<LineData> {
        match self
            .section(self.lines)
            .and_then(|bytes| postcard::from_bytes::<Option<LineData>>(&bytes).ok())
        {
            Some(lines) => lines,
            None => self.reindex_elf()?.lines.into_inner(),
        }
    }

    /// The executable sections from the cache file, or else from the ELF.
    pub(crate) fn text(&self) -> Vec<TextSection> {
        self.section(self.text)
            .and_then(|bytes| split_text(bytes, &self.text_sections))
            .or_else(|| Some(self.reindex_elf()?.text.into_inner()))
            .unwrap_or_default()
    }
}

/// Cuts the executable bytes into their sections, without copying the
/// last (usually only) one.
fn split_text(mut rest: Vec<u8>, sections: &[(u64, u64)]) -> Option<Vec<TextSection>> {
    let mut out = Vec::with_capacity(sections.len());
    for &(addr, len) in sections {
        let len = usize::try_from(len).ok()?;
        if len > rest.len() {
            return None;
        }
        let tail = rest.split_off(len);
        out.push(TextSection { addr, data: rest });
        rest = tail;
    }
    Some(out)
}

/// A section's place in a cache file.
#[derive(Debug, Clone, Copy)]
struct Range {
    offset: u64,
    len: u64,
    sum: u64,
}

/// Reads a section and checks its sum.
fn read_section(file: &fs::File, r: Range) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0; usize::try_from(r.len).ok()?];
    file.read_exact_at(&mut buf, r.offset).ok()?;
    (twox_hash::XxHash64::oneshot(0, &buf) == r.sum).then_some(buf)
}

/// The section ranges of a cache file's header, if it is one of this
/// format and its sections lie inside `file_len` bytes.
fn parse_header(header: &[u8], file_len: u64) -> Option<[Range; SECTIONS]> {
    let rest = header.strip_prefix(MAGIC)?;
    let (format, mut rest) = rest.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*format) != FORMAT {
        return None;
    }
    let mut ranges = [Range {
        offset: 0,
        len: 0,
        sum: 0,
    }; SECTIONS];
    for r in &mut ranges {
        let (fields, tail) = rest.split_first_chunk::<24>()?;
        let word =
            |i: usize| u64::from_le_bytes(fields[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        *r = Range {
            offset: word(0),
            len: word(1),
            sum: word(2),
        };
        if r.offset.checked_add(r.len)? > file_len {
            return None;
        }
        rest = tail;
    }
    Some(ranges)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SymbolError + '_ {
    move |source| SymbolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The GNU build id of the ELF at `path`, read from its program headers'
/// notes without reading the rest of the file; `None` if it has none (or
/// is no 64-bit little-endian ELF, which the index itself will refuse).
pub fn build_id(path: &Path) -> Result<Option<Vec<u8>>, SymbolError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut read_at = |offset: u64, len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0; len];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut buf).ok()?;
        Some(buf)
    };
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let Some(header) = read_at(0, 64) else {
        return Ok(None);
    };
    // ELF magic, 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(None);
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        usize::from(u16_at(&header, 54)),
        usize::from(u16_at(&header, 56)),
    );
    if phentsize < 56 || phnum > 256 {
        return Ok(None);
    }
    let Some(phdrs) = read_at(phoff, phentsize * phnum) else {
        return Ok(None);
    };
    for ph in phdrs.chunks_exact(phentsize) {
        // PT_NOTE; its offset and size in the file.
        if u32_at(ph, 0) != 4 {
            continue;
        }
        let (offset, size) = (u64_at(ph, 8), u64_at(ph, 32));
        if size > 1 << 16 {
            continue;
        }
        let Some(notes) = read_at(offset, size as usize) else {
            continue;
        };
        let mut at = 0;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) = (
                u32_at(&notes, at) as usize,
                u32_at(&notes, at + 4) as usize,
                u32_at(&notes, at + 8),
            );
            let name_at = at + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let end = desc_at + descsz.next_multiple_of(4);
            if end > notes.len() {
                break;
            }
            if kind == NT_GNU_BUILD_ID && notes[name_at..name_at + namesz] == *b"GNU\0" {
                return Ok(Some(notes[desc_at..desc_at + descsz].to_vec()));
            }
            at = end;
        }
    }
    Ok(None)
}

/// The cache key of the ELF at `path`: `b-<build id>`, or for an ELF
/// without one `s-<hash of path, size and modification time>`.
pub fn cache_key(path: &Path) -> Result<String, SymbolError> {
    if let Some(id) = build_id(path)? {
        return Ok(format!("b-{}", hex(&id)));
    }
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let stamp = format!("{}\0{}\0{mtime}", canonical.display(), meta.len());
    Ok(format!(
        "s-{:016x}",
        twox_hash::XxHash64::oneshot(0, stamp.as_bytes())
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Environment variable naming the cache directory (empty: no cache).
pub const CACHE_DIR_ENV: &str = "KTRACE_CACHE_DIR";

/// The cache directory: `$KTRACE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/ktrace/symbols`, else `$HOME/.cache/ktrace/symbols`;
/// `None` (nothing cached) when `KTRACE_CACHE_DIR` is set empty or no
/// directory is known.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name);
    if let Some(dir) = var(CACHE_DIR_ENV) {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = match var("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(var("HOME").filter(|d| !d.is_empty())?).join(".cache"),
    };
    Some(base.join("ktrace").join("symbols"))
}

/// The cache file of `key` in `dir`.
pub fn cache_file(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.idx"))
}

impl SymbolIndex {
    /// The index as the bytes of a cache file for `key`. Computes the
    /// `file:line` of every function (kept in the file, so lookups by name
    /// need no line tables).
    pub fn to_cache_bytes(&self, key: &str) -> Vec<u8> {
        let meta = MetaRef {
            key,
            functions: self
                .functions
                .iter()
                .map(|f| CachedFunctionRef {
                    name: &f.name,
                    demangled: &f.demangled,
                    mangled: &f.mangled,
                    addr: f.addr,
                    size: f.size,
                    hash: &f.hash,
                    scheme: f.scheme,
                    global: f.global,
                    type_args: &f.type_args,
                    entry: self.function_location(f),
                    entry_refusal: *f.entry_refusal.get_or_init(|| self.entry_refusal(f)),
                })
                .collect(),
            text: self
                .text
                .get()
                .iter()
                .map(|t| (t.addr, t.data.len() as u64))
                .collect(),
            dwarf_error: &self.dwarf_error,
            by_last: &self.by_last,
        };
        // Serialising plain data into a Vec cannot fail.
        let sections = [
            postcard::to_allocvec(&meta).unwrap_or_default(),
            self.text
                .get()
                .iter()
                .flat_map(|t| t.data.iter().copied())
                .collect(),
            postcard::to_allocvec(&self.lines.get()).unwrap_or_default(),
        ];
        let mut out = Vec::with_capacity(HEADER_LEN + sections.iter().map(Vec::len).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        let mut offset = HEADER_LEN as u64;
        for section in &sections {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(&twox_hash::XxHash64::oneshot(0, section).to_le_bytes());
            offset += section.len() as u64;
        }
        for section in &sections {
            out.extend_from_slice(section);
        }
        out
    }

    /// The index in a cache file's `bytes`, if they are one, intact, of
    /// this format and for `key` (all of it decoded).
    pub fn from_cache_bytes(bytes: &[u8], key: &str) -> Option<SymbolIndex> {
        let ranges = parse_header(bytes.get(..HEADER_LEN)?, bytes.len() as u64)?;
        let section = |r: Range| -> Option<&[u8]> {
            let s = bytes
                .get(usize::try_from(r.offset).ok()?..usize::try_from(r.offset + r.len).ok()?)?;
            (twox_hash::XxHash64::oneshot(0, s) == r.sum).then_some(s)
        };
        let lines: Option<LineData> = postcard::from_bytes(section(ranges[LINES])?).ok()?;
        let meta: Meta = postcard::from_bytes(section(ranges[META])?).ok()?;
        let text = split_text(section(ranges[TEXT])?.to_vec(), &meta.text)?;
        assemble_cached(meta, key, Lazy::ready(text), Lazy::ready(lines))
    }

    /// The index in the cache file `file` for `key` (of the ELF `elf`):
    /// its functions and code now, its line data on first use.
    fn from_cache_file(file: &Path, key: &str, elf: &Path) -> Option<SymbolIndex> {
        let f = fs::File::open(file).ok()?;
        let len = f.metadata().ok()?.len();
        let mut header = [0u8; HEADER_LEN];
        {
            use std::os::unix::fs::FileExt as _;
            f.read_exact_at(&mut header, 0).ok()?;
        }
        let ranges = parse_header(&header, len)?;
        let meta: Meta = postcard::from_bytes(&read_section(&f, ranges[META])?).ok()?;
        let pending = std::sync::Arc::new(Pending {
            file: file.to_path_buf(),
            text: ranges[TEXT],
            lines: ranges[LINES],
            text_sections: meta.text.clone(),
            key: key.to_string(),
            elf: elf.to_path_buf(),
        });
        assemble_cached(
            meta,
            key,
            Lazy::pending(pending.clone(), Pending::text),
            Lazy::pending(pending, Pending::lines),
        )
    }

    /// Index the ELF at `elf` through the cache in [`default_dir`] (or
    /// without a cache when there is none).
    pub fn open(elf: &Path) -> Result<SymbolIndex, SymbolError> {
        match default_dir() {
            Some(dir) => SymbolIndex::from_path_cached(elf, &dir).map(|(index, _)| index),
            None => SymbolIndex::from_path(elf),
        }
    }

    /// Index the ELF at `elf` through the cache in `dir`: read the cache
    /// file of its build if there is a good one, else index the ELF and
    /// write the file (a cache that cannot be written is reported in the
    /// outcome, not as an error).
    pub fn from_path_cached(elf: &Path, dir: &Path) -> Result<(SymbolIndex, Outcome), SymbolError> {
        let key = cache_key(elf)?;
        let file = cache_file(dir, &key);
        if let Some(index) = SymbolIndex::from_cache_file(&file, &key, elf) {
            return Ok((index, Outcome::Hit));
        }
        let index = SymbolIndex::from_path(elf)?;
        let not_saved = save(dir, &file, &index.to_cache_bytes(&key))
            .err()
            .map(|e| format!("{}: {e}", file.display()));
        if not_saved.is_none() {
            prune(dir, KEEP);
        }
        Ok((index, Outcome::Built { not_saved }))
    }
}

/// An index from a cache file's functions, and its code and lines.
fn assemble_cached(
    meta: Meta,
    key: &str,
    text: Lazy<Vec<TextSection>>,
    lines: Lines,
) -> Option<SymbolIndex> {
    if meta.key != key {
        return None;
    }
    let functions: Vec<Function> = meta
        .functions
        .into_iter()
        .map(|c| {
            let mut f = Function::new(
                c.name,
                c.demangled,
                c.mangled,
                c.addr,
                c.size,
                c.hash,
                c.scheme,
                c.global,
            );
            f.type_args = c.type_args;
            let _ = f.entry.set(c.entry);
            let _ = f.entry_refusal.set(c.entry_refusal);
            f
        })
        .collect();
    if meta
        .by_last
        .values()
        .flatten()
        .any(|&i| i as usize >= functions.len())
    {
        return None;
    }
    Some(SymbolIndex::assemble(
        functions,
        text,
        lines,
        meta.dwarf_error,
        Some(meta.by_last),
    ))
}

/// Writes `bytes` to `file` through a temporary file and a rename.
fn save(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, file).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Removes all but the `keep` most recently written cache files of `dir`.
pub fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "idx"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(keep) {
        let _ = fs::remove_file(path);
    }
}
