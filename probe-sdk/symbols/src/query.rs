//! Queries: what a user writes to name a probe point, and how each form
//! resolves against a [`SymbolIndex`].
//!
//! | form | example |
//! |------|---------|
//! | exact path | `kernel::block::queue::RequestQueue::submit_bio` |
//! | unique suffix of segments | `RequestQueue::submit_bio` |
//! | glob (`*`, `?`) | `kernel::block::*`, `*::submit_*` |
//! | offset | `RequestQueue::submit_bio+0x1a` |
//! | source line (path suffix) | `kernel/src/block/queue.rs:120` (every copy the compiler made of it) |
//! | path at a place | `handle_inner::{closure}@bpf/mod.rs:697` (where the function starts: closures) |
//! | raw address (opt-in) | `0xffffffff80012345` |

use std::collections::BTreeMap;

use crate::decode::{self, Boundary};
use crate::error::{AmbiguityKind, Candidate, InlineSite, NotProbeable, SymbolError};
use crate::index::{last_key, Function, SourceLocation, SymbolIndex};
use crate::path::{glob_match, is_legacy_hash, render, ParsedPath};
use crate::suggest::suggest;

/// Choices that widen what a query may resolve to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Resolve an ambiguous name (or a line held by several functions) to
    /// every match instead of refusing.
    pub all: bool,
    /// Accept a raw address (`0x…`); the user vouches for it.
    pub allow_raw_address: bool,
}

/// The form a query took.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Query {
    /// A path, exact or a suffix of segments.
    Path {
        /// The path as written.
        path: String,
    },
    /// A glob over paths.
    Glob {
        /// The pattern as written.
        pattern: String,
    },
    /// A path plus a byte offset.
    Offset {
        /// The function's path.
        path: String,
        /// Bytes from its start.
        offset: u64,
    },
    /// A source line.
    Line {
        /// Matches as a suffix of whole path components.
        file: String,
        /// 1-based line.
        line: u32,
    },
    /// A raw address.
    Address {
        /// The address.
        addr: u64,
    },
}

impl Query {
    /// Classify a query string.
    pub fn parse(text: &str) -> Result<Query, SymbolError> {
        let q = text.trim();
        if q.is_empty() {
            return Err(SymbolError::EmptyQuery);
        }
        let bad = |reason: &str| SymbolError::BadQuery {
            query: q.to_string(),
            reason: reason.to_string(),
        };
        if let Some(hex) = q.strip_prefix("0x").or_else(|| q.strip_prefix("0X")) {
            return u64::from_str_radix(&hex.replace('_', ""), 16)
                .map(|addr| Query::Address { addr })
                .map_err(|_| bad("an address must be hexadecimal after `0x`"));
        }
        // `path@file.rs:LINE` is a path narrowed by where the function
        // starts (perf probe's `FUNC@SRC`), not a line.
        let narrowed = q.contains('@');
        if let Some((file, line)) = q.rsplit_once(':').filter(|_| !narrowed) {
            let looks_like_file =
                !file.ends_with(':') && (file.contains('.') || file.contains('/'));
            if looks_like_file && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) {
                let line: u32 = line.parse().map_err(|_| bad("line number too large"))?;
                if line == 0 {
                    return Err(bad("lines are numbered from 1"));
                }
                return Ok(Query::Line {
                    file: file.trim_start_matches("./").to_string(),
                    line,
                });
            }
        }
        if let Some((path, off)) = q.rsplit_once('+') {
            let off = off.trim();
            let parsed = match off.strip_prefix("0x").or_else(|| off.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => off.parse::<u64>(),
            };
            let offset = parsed
                .map_err(|_| bad("the part after `+` must be an offset such as `0x1a` or `26`"))?;
            if path.trim().is_empty() {
                return Err(bad("an offset needs a function path before `+`"));
            }
            return Ok(Query::Offset {
                path: path.trim().to_string(),
                offset,
            });
        }
        if q.contains('*') || q.contains('?') {
            return Ok(Query::Glob {
                pattern: q.to_string(),
            });
        }
        Ok(Query::Path {
            path: q.to_string(),
        })
    }
}

/// One place to put a probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbePoint {
    /// Address of the probed instruction.
    pub addr: u64,
    /// The function holding it (`None` for a raw address outside symbols).
    pub function: Option<String>,
    /// Start address of that function.
    pub function_addr: Option<u64>,
    /// Offset of `addr` in the function.
    pub offset: u64,
    /// Size of the function.
    pub function_size: Option<u64>,
    /// Source line of the instruction.
    pub location: Option<SourceLocation>,
    /// For a line in inlined code: the function whose code it is.
    pub inlined_from: Option<String>,
}

/// The answer to a query.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolution {
    /// The query as parsed.
    pub query: Query,
    /// Where to probe: one point, or several for a glob or `all`.
    pub points: Vec<ProbePoint>,
    /// Functions a glob (or `all`) matched that cannot hold a probe.
    pub skipped: Vec<(Candidate, NotProbeable)>,
    /// Other places holding code for a source line, not picked.
    pub others: Vec<ProbePoint>,
    /// How the point was picked, when there was a choice.
    pub note: Option<String>,
}

impl SymbolIndex {
    /// Resolve a query to probe points, or say clearly why not.
    pub fn resolve(&self, query: &str, opts: ResolveOptions) -> Result<Resolution, SymbolError> {
        let parsed = Query::parse(query)?;
        let mut res = Resolution {
            query: parsed.clone(),
            points: Vec::new(),
            skipped: Vec::new(),
            others: Vec::new(),
            note: None,
        };
        match &parsed {
            Query::Path { path } => {
                let ids = self.match_path(path);
                if ids.is_empty() {
                    return Err(self.not_found(path));
                }
                let copies = self.copies_of_one(&ids);
                if ids.len() > 1 && !opts.all && !copies {
                    return Err(self.ambiguous(path, &ids));
                }
                self.collect_points(&ids, &mut res, ids.len() == 1 || copies)?;
                if copies {
                    res.note = Some(self.copies_note(&ids));
                }
            }
            Query::Glob { pattern } => {
                let ids = self.match_glob(pattern);
                if ids.is_empty() {
                    return Err(SymbolError::NotFound {
                        query: pattern.clone(),
                        suggestions: Vec::new(),
                    });
                }
                self.collect_points(&ids, &mut res, false)?;
                if res.points.is_empty() {
                    let (function, reason) = res.skipped.swap_remove(0);
                    return Err(SymbolError::NotProbeable { function, reason });
                }
            }
            Query::Offset { path, offset } => {
                let ids = self.match_path(path);
                match ids.len() {
                    0 => return Err(self.not_found(path)),
                    // Copies of one function hold the same code: the
                    // offset means the same in each.
                    _ if self.copies_of_one(&ids) => {
                        for &id in &ids {
                            let f = &self.functions[id as usize];
                            self.check_point(f, *offset)?;
                            res.points.push(self.point(f, *offset, None));
                        }
                        res.note = Some(self.copies_note(&ids));
                        return Ok(res);
                    }
                    1 => {}
                    // One offset rarely means the same thing in two
                    // functions, so `all` does not apply here.
                    _ => {
                        let mut e = self.ambiguous(path, &ids);
                        if let SymbolError::Ambiguous {
                            query, all_applies, ..
                        } = &mut e
                        {
                            *query = format!("{path}+{offset:#x}");
                            *all_applies = false;
                        }
                        return Err(e);
                    }
                }
                let f = &self.functions[ids[0] as usize];
                self.check_point(f, *offset)?;
                res.points.push(self.point(f, *offset, None));
            }
            Query::Line { file, line } => self.resolve_line(file, *line, opts, &mut res)?,
            Query::Address { addr } => {
                let inside = self.lookup_addr(*addr);
                if !opts.allow_raw_address {
                    return Err(SymbolError::RawAddressRefused {
                        addr: *addr,
                        inside: inside.map(|(f, off)| format!("{}+{off:#x}", f.name)),
                    });
                }
                match inside {
                    Some((f, off)) => {
                        self.check_point(f, off)?;
                        res.points.push(self.point(f, off, None));
                    }
                    None if self.in_text(*addr) => res.points.push(ProbePoint {
                        addr: *addr,
                        function: None,
                        function_addr: None,
                        offset: 0,
                        function_size: None,
                        location: self.addr_to_line(*addr),
                        inlined_from: None,
                    }),
                    None => return Err(SymbolError::AddressNotInText { addr: *addr }),
                }
            }
        }
        Ok(res)
    }

    /// Every function a path names (name → addresses), without checking
    /// whether each can hold a probe. Exact matches win over suffix matches.
    pub fn find(&self, path: &str) -> Vec<&Function> {
        self.match_path(path)
            .into_iter()
            .map(|i| &self.functions[i as usize])
            .collect()
    }

    /// True when no other function (at another address) has the demangled
    /// name `name`: the kernel finds a function by name, so a point in a
    /// function whose name is shared (copies of one function, legacy
    /// closures) must be sent by address.
    pub fn name_is_unique(&self, name: &str) -> bool {
        let parsed = ParsedPath::parse(name);
        let Some(last) = parsed.rest.last() else {
            return false;
        };
        let Some(ids) = self.by_last.get(last_key(&last.name)) else {
            return false;
        };
        let mut addrs = ids
            .iter()
            .map(|&i| &self.functions[i as usize])
            .filter(|f| f.name == name)
            .map(|f| f.addr);
        match addrs.next() {
            Some(first) => addrs.all(|a| a == first),
            None => false,
        }
    }

    /// True when `ids` are several copies of one function: the same
    /// demangled name with the same legacy hash (or the same v0 name), at
    /// different addresses. The compiler leaves such copies when a generic
    /// or inline function is instantiated in several codegen units
    /// (`.llvm.<n>` local symbols): they are one function in the source,
    /// and each copy may be the one that runs.
    pub(crate) fn copies_of_one(&self, ids: &[u32]) -> bool {
        let Some((&first, rest)) = ids.split_first() else {
            return false;
        };
        let f0 = &self.functions[first as usize];
        let identified = f0.hash.is_some() || f0.scheme == crate::path::Mangling::V0;
        identified
            && !rest.is_empty()
            && rest
                .iter()
                .all(|&i| self.functions[i as usize].demangled == f0.demangled)
    }

    fn copies_note(&self, ids: &[u32]) -> String {
        let f = &self.functions[ids[0] as usize];
        format!(
            "`{}` has {} copies (one instantiation, copied into several codegen units); probing every one: {}",
            f.name,
            ids.len(),
            ids.iter()
                .map(|&i| format!("{:#x}", self.functions[i as usize].addr))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Indices of the functions `path` selects. `path@file.rs[:LINE]`
    /// keeps those whose body starts in that file (a suffix of whole path
    /// components) and on that line: what tells closures, and functions of
    /// one name in different files, apart.
    pub(crate) fn match_path(&self, path: &str) -> Vec<u32> {
        if let Some((path, at)) = path.rsplit_once('@') {
            let (file, line) = match at.rsplit_once(':') {
                Some((f, l)) if l.bytes().all(|b| b.is_ascii_digit()) && !l.is_empty() => {
                    (f, l.parse::<u32>().ok())
                }
                _ => (at, None),
            };
            let mut ids = self.match_path(path);
            ids.retain(|&i| {
                let f = &self.functions[i as usize];
                self.function_location(f).is_some_and(|loc| {
                    path_ends_with(&loc.file, file.trim_start_matches("./"))
                        && line.is_none_or(|l| l == loc.line)
                })
            });
            return ids;
        }
        // `f::<A, B>` of a legacy name: the symbol spells no arguments, so
        // the name selects by itself and DWARF's arguments must match.
        if let Some((bare, args)) = split_turbofish(path) {
            let want = split_args(&args);
            let mut ids = self.match_path(bare);
            ids.retain(|&i| {
                let f = &self.functions[i as usize];
                f.type_args
                    .as_deref()
                    .is_some_and(|have| args_select(&want, &split_args(have)))
            });
            if !ids.is_empty() {
                return ids;
            }
        }
        let mut parsed = ParsedPath::parse(path);
        // A trailing legacy hash (`f::h0123456789abcdef`) picks one
        // monomorphization.
        let mut hash = None;
        if parsed.rest.len() > 1 && parsed.rest.last().is_some_and(|s| is_legacy_hash(&s.name)) {
            hash = parsed.pop().map(|s| s.name[1..].to_string());
        }
        let Some(last) = parsed.rest.last() else {
            return Vec::new();
        };
        let Some(ids) = self.by_last.get(last_key(&last.name)) else {
            return Vec::new();
        };
        let mut exact = Vec::new();
        let mut suffix = Vec::new();
        for &id in ids {
            let f = &self.functions[id as usize];
            if hash.is_some() && f.hash != hash {
                continue;
            }
            match parsed.selects(f.parsed()) {
                Some(true) => exact.push(id),
                Some(false) => suffix.push(id),
                None => {}
            }
        }
        let mut ids = if exact.is_empty() { suffix } else { exact };
        // Aliases (two names for one address) are one point.
        ids.sort_by_key(|&i| self.functions[i as usize].addr);
        ids.dedup_by_key(|i| self.functions[*i as usize].addr);
        ids
    }

    fn match_glob(&self, pattern: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut last_addr = None;
        for (i, f) in self.functions.iter().enumerate() {
            let hit = glob_match(pattern, &f.name)
                || f.search_paths()
                    .iter()
                    .any(|p| glob_at_segments(pattern, p));
            if hit && last_addr != Some(f.addr) {
                ids.push(i as u32);
                last_addr = Some(f.addr);
            }
        }
        ids
    }

    /// Probe points for `ids`; unprobeable ones go to `skipped`, or fail
    /// the query when `strict` (a single named function).
    fn collect_points(
        &self,
        ids: &[u32],
        res: &mut Resolution,
        strict: bool,
    ) -> Result<(), SymbolError> {
        for &id in ids {
            let f = &self.functions[id as usize];
            match self.check_point(f, 0) {
                Ok(()) => res.points.push(self.point(f, 0, None)),
                Err(SymbolError::NotProbeable { function, reason }) if !strict => {
                    res.skipped.push((function, reason));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn point(&self, f: &Function, offset: u64, inlined_from: Option<String>) -> ProbePoint {
        ProbePoint {
            addr: f.addr.wrapping_add(offset),
            function: Some(f.name.clone()),
            function_addr: Some(f.addr),
            offset,
            function_size: Some(f.size),
            location: if offset == 0 {
                self.function_location(f)
            } else {
                self.addr_to_line(f.addr.wrapping_add(offset))
            },
            inlined_from,
        }
    }

    /// Check that `f + offset` can hold a probe: inside the function and
    /// at the start of an instruction.
    pub fn check_point(&self, f: &Function, offset: u64) -> Result<(), SymbolError> {
        let refuse = |reason| SymbolError::NotProbeable {
            function: self.candidate(f, None),
            reason,
        };
        if offset == 0 {
            // The common case (a probe on a function's entry), checked once.
            return match f.entry_refusal.get_or_init(|| self.entry_refusal(f)) {
                None => Ok(()),
                Some(reason) => Err(refuse(*reason)),
            };
        }
        if f.size == 0 {
            return Err(refuse(NotProbeable::ZeroSize));
        }
        if offset >= f.size {
            return Err(SymbolError::OffsetOutOfRange {
                function: f.name.clone(),
                offset,
                size: f.size,
            });
        }
        let code = self
            .code(f.addr, f.size)
            .ok_or_else(|| refuse(NotProbeable::NoCode))?;
        let bounds = decode::boundaries(code, f.addr);
        if bounds.starts.is_empty() {
            // Decode once more past the symbol's end to tell "too small"
            // from "not code".
            let wider = self.code(f.addr, 15).unwrap_or(code);
            let first = decode::boundaries(wider, f.addr);
            return Err(refuse(if first.starts.is_empty() {
                NotProbeable::Undecodable
            } else {
                NotProbeable::SmallerThanInstruction { size: f.size }
            }));
        }
        match decode::classify(&bounds, offset) {
            Boundary::Start => Ok(()),
            Boundary::Inside { before, after } => Err(SymbolError::NotOnBoundary {
                function: f.name.clone(),
                offset,
                before,
                after,
            }),
            Boundary::Undecodable { last } => Err(SymbolError::Undecodable {
                function: f.name.clone(),
                offset,
                last,
            }),
        }
    }

    /// Why no probe fits at `f`'s entry, or `None` when one does (at
    /// offset 0 decoding starts at an instruction, so only these reasons
    /// apply).
    pub(crate) fn entry_refusal(&self, f: &Function) -> Option<NotProbeable> {
        if f.size == 0 {
            return Some(NotProbeable::ZeroSize);
        }
        let Some(code) = self.code(f.addr, f.size) else {
            return Some(NotProbeable::NoCode);
        };
        if !decode::boundaries(code, f.addr).starts.is_empty() {
            return None;
        }
        // Decode once more past the symbol's end to tell "too small" from
        // "not code".
        let wider = self.code(f.addr, 15).unwrap_or(code);
        Some(if decode::boundaries(wider, f.addr).starts.is_empty() {
            NotProbeable::Undecodable
        } else {
            NotProbeable::SmallerThanInstruction { size: f.size }
        })
    }

    fn not_found(&self, path: &str) -> SymbolError {
        let parsed = ParsedPath::parse(path);
        if let Some(e) = self.inlined_away(path, &parsed) {
            return e;
        }
        SymbolError::NotFound {
            query: path.to_string(),
            suggestions: suggest(self, &parsed, 5),
        }
    }

    /// A name with no symbol but with inlined copies in DWARF.
    fn inlined_away(&self, query: &str, parsed: &ParsedPath) -> Option<SymbolError> {
        let lines = self.lines.get().as_ref()?;
        let last = parsed.rest.last()?;
        // A symbol with this last segment exists: more likely a wrong
        // module than an inlined function, so suggestions serve better.
        if self.by_last.contains_key(last_key(&last.name)) {
            return None;
        }
        let name_ids = lines.names_by_base.get(&last.name)?;
        let mut sites: Vec<InlineSite> = Vec::new();
        for inl in lines.inlines.iter().filter(|r| name_ids.contains(&r.name)) {
            let Some((f, _)) = self.lookup_addr(inl.start) else {
                continue;
            };
            if sites.iter().any(|s| s.into == f.name) {
                continue;
            }
            sites.push(InlineSite {
                into: f.name.clone(),
                addr: inl.start,
                call_site: inl
                    .call_file
                    .map(|file| self.location_of(file, inl.call_line).to_string()),
            });
        }
        if sites.is_empty() {
            return None;
        }
        sites.sort_by_key(|s| s.addr);
        Some(SymbolError::InlinedAway {
            query: query.to_string(),
            name: last.name.clone(),
            sites,
        })
    }

    fn ambiguous(&self, path: &str, ids: &[u32]) -> SymbolError {
        let fs: Vec<&Function> = ids.iter().map(|&i| &self.functions[i as usize]).collect();
        let plain = |f: &Function| -> Vec<String> {
            f.parsed().keys()[0]
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        let closure = |f: &Function| {
            f.parsed()
                .rest
                .last()
                .is_some_and(|s| s.name.starts_with("{closure"))
        };
        let kind = if fs.iter().all(|f| closure(f)) {
            AmbiguityKind::Closures
        } else if fs.iter().all(|f| f.parsed().trait_.is_some())
            && fs
                .iter()
                .all(|f| f.parsed().keys().get(1) == fs[0].parsed().keys().get(1))
        {
            AmbiguityKind::TraitImpls
        } else if fs.iter().all(|f| plain(f) == plain(fs[0])) {
            AmbiguityKind::Monomorphizations
        } else {
            AmbiguityKind::SameName
        };
        let candidates = ids
            .iter()
            .map(|&i| {
                let f = &self.functions[i as usize];
                self.candidate(f, self.unique_query(i))
            })
            .collect();
        SymbolError::Ambiguous {
            query: path.to_string(),
            kind,
            candidates,
            all_applies: true,
        }
    }

    /// The shortest query that selects function `id` alone.
    pub(crate) fn unique_query(&self, id: u32) -> Option<String> {
        let f = &self.functions[id as usize];
        // Copies of one function are selected together.
        let only = |q: &str| {
            let m = self.match_path(q);
            m == [id]
                || (m.contains(&id)
                    && self.copies_of_one(&m)
                    && m.iter()
                        .all(|&i| self.functions[i as usize].demangled == f.demangled))
        };
        if let (Some(ty), Some(tr)) = (&f.parsed().self_ty, &f.parsed().trait_) {
            if let (Some(t), Some(r)) = (ty.last(), tr.last()) {
                let q = format!("<{} as {}>::{}", t, r, render(&f.parsed().rest));
                if only(&q) {
                    return Some(q);
                }
            }
        }
        let key = &f.parsed().keys()[0];
        for k in 1..=key.len() {
            let q = render(&key[key.len() - k..]);
            if only(&q) {
                return Some(q);
            }
        }
        // Closures, and functions of one name in several files: where the
        // body starts (`handle_inner::{closure}@bpf/mod.rs:689`).
        if let Some(loc) = self.function_location(f) {
            let comps: Vec<&str> = loc.file.split('/').collect();
            let short = comps[comps.len().saturating_sub(2)..].join("/");
            // A closure is named with the function it is in.
            let from = if key.last().is_some_and(|s| s.name.starts_with("{closure")) {
                2.min(key.len())
            } else {
                1
            };
            for k in from..=key.len() {
                let q = format!("{}@{}:{}", render(&key[key.len() - k..]), short, loc.line);
                if only(&q) {
                    return Some(q);
                }
            }
        }
        // A legacy monomorphization by its type arguments (from DWARF):
        // each argument by its last path segment, else in full.
        if let Some(args) = &f.type_args {
            let full = split_args(args);
            let short: Vec<&str> = full.iter().map(|a| last_segment(a)).collect();
            for args in [short.join(", "), full.join(", ")] {
                let q = format!("{}::<{}>", render(key), args);
                if only(&q) {
                    return Some(q);
                }
            }
        }
        if let Some(h) = &f.hash {
            let q = format!("{}::h{}", render(key), h);
            if only(&q) {
                return Some(q);
            }
        }
        None
    }

    fn resolve_line(
        &self,
        file: &str,
        line: u32,
        opts: ResolveOptions,
        res: &mut Resolution,
    ) -> Result<(), SymbolError> {
        let lines = match self.lines.get().as_ref() {
            Some(l) if !l.rows.is_empty() => l,
            _ => {
                return Err(SymbolError::NoLineTables {
                    query: format!("{file}:{line}"),
                })
            }
        };
        let file_id = self.find_file(file)?;
        let Some(addrs) = lines.stmts.get(&(file_id, line)) else {
            let mut before = None;
            let mut after = None;
            for &(f, l) in lines.stmts.keys() {
                if f != file_id {
                    continue;
                }
                if l < line && before.is_none_or(|b| l > b) {
                    before = Some(l);
                }
                if l > line && after.is_none_or(|a| l < a) {
                    after = Some(l);
                }
            }
            return Err(SymbolError::NoCodeAtLine {
                file: lines.files[file_id as usize].clone(),
                line,
                before,
                after,
            });
        };
        // One site per (function, inlined callee); in each, the lowest
        // `is_stmt` address of every copy the compiler made of the line (a
        // copy is a run of rows of the line, see `LineData::run_start`).
        let mut sites: BTreeMap<(u64, Option<u32>), (usize, Copies)> = BTreeMap::new();
        for &addr in addrs {
            let Some(fi) = self.lookup_index(addr) else {
                continue;
            };
            let f = &self.functions[fi];
            let inlined = lines.inlines_at(addr, f.addr).last().map(|r| r.name);
            let run = lines.run_start(addr, file_id, line, f.addr);
            let copies = &mut sites
                .entry((f.addr, inlined))
                .or_insert((fi, BTreeMap::new()))
                .1;
            let lowest = copies.entry(run).or_insert(addr);
            *lowest = (*lowest).min(addr);
        }
        if sites.is_empty() {
            return Err(SymbolError::NoCodeAtLine {
                file: lines.files[file_id as usize].clone(),
                line,
                before: None,
                after: None,
            });
        }
        // Per site: whether the function owns the line (not inlined code),
        // and its copies' points in address order.
        let mut found: Vec<(bool, Vec<ProbePoint>)> = Vec::new();
        for (&(_, inlined), (fi, copies)) in &sites {
            let f = &self.functions[*fi];
            let from = inlined.map(|n| lines.names[n as usize].clone());
            let mut addrs: Vec<u64> = copies.values().copied().collect();
            addrs.sort_unstable();
            let mut points = Vec::new();
            for addr in addrs {
                self.check_point(f, addr - f.addr)?;
                points.push(self.point(f, addr - f.addr, from.clone()));
            }
            found.push((inlined.is_none(), points));
        }
        let describe = |p: &ProbePoint| match &p.inlined_from {
            Some(from) => format!(
                "{} (inlined `{}`)",
                p.function.as_deref().unwrap_or("?"),
                from
            ),
            None => p.function.clone().unwrap_or_default(),
        };
        let offsets = |ps: &[ProbePoint]| {
            ps.iter()
                .map(|p| format!("+{:#x}", p.offset))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Copies made by the compiler are one place in the source: all of
        // them are probed, and the note says so.
        let copies_note = |sites: &[&(bool, Vec<ProbePoint>)]| -> Option<String> {
            let dup: Vec<String> = sites
                .iter()
                .filter(|(_, ps)| ps.len() > 1)
                .map(|(_, ps)| {
                    format!(
                        "{} copies in {} at {}",
                        ps.len(),
                        describe(&ps[0]),
                        offsets(ps)
                    )
                })
                .collect();
            (!dup.is_empty()).then(|| {
                format!(
                    "{file}:{line} has several copies (the compiler duplicated its code); probing every one: {}",
                    dup.join("; ")
                )
            })
        };
        let owners = found.iter().filter(|(own, _)| *own).count();
        if opts.all || found.len() == 1 {
            res.note = copies_note(&found.iter().collect::<Vec<_>>());
            res.points = found.into_iter().flat_map(|(_, ps)| ps).collect();
            return Ok(());
        }
        if owners == 1 {
            let i = found.iter().position(|(own, _)| *own).unwrap_or(0);
            let primary = found.remove(i);
            let mut note = format!(
                "picked {}{}, {} of the function that owns the line; \
                 {} inlined cop{} elsewhere (pass --all to probe them too): {}",
                describe(&primary.1[0]),
                offsets(&primary.1),
                if primary.1.len() == 1 {
                    "the lowest address"
                } else {
                    "every copy"
                },
                found.len(),
                if found.len() == 1 { "y" } else { "ies" },
                found
                    .iter()
                    .map(|(_, ps)| describe(&ps[0]))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(copies) = copies_note(&[&primary]) {
                note = format!("{copies}\nnote: {note}");
            }
            res.note = Some(note);
            res.points = primary.1;
            res.others = found.into_iter().flat_map(|(_, ps)| ps).collect();
            return Ok(());
        }
        let candidates = found
            .iter()
            .flat_map(|(_, ps)| ps)
            .map(|p| Candidate {
                name: describe(p),
                addr: p.addr,
                size: p.function_size.unwrap_or(0),
                location: p.location.as_ref().map(|l| l.to_string()),
                select_with: p
                    .function
                    .as_ref()
                    .map(|f| format!("{}+{:#x}", f, p.offset)),
            })
            .collect();
        Err(SymbolError::Ambiguous {
            query: format!("{file}:{line}"),
            kind: AmbiguityKind::LineInSeveralPlaces,
            candidates,
            all_applies: true,
        })
    }

    /// The one source file whose path ends with `file` (whole components).
    fn find_file(&self, file: &str) -> Result<u32, SymbolError> {
        let lines = self
            .lines
            .get()
            .as_ref()
            .ok_or_else(|| SymbolError::NoLineTables {
                query: file.to_string(),
            })?;
        let matches: Vec<u32> = lines
            .files
            .iter()
            .enumerate()
            .filter(|(_, p)| path_ends_with(p, file))
            .map(|(i, _)| i as u32)
            .collect();
        match matches.len() {
            1 => Ok(matches[0]),
            0 => {
                let base = file.rsplit('/').next().unwrap_or(file);
                let mut close: Vec<(usize, &String)> = lines
                    .files
                    .iter()
                    .filter_map(|p| {
                        let pb = p.rsplit('/').next().unwrap_or(p);
                        let d = crate::suggest::levenshtein(base, pb);
                        (d <= 2).then_some((d, p))
                    })
                    .collect();
                close.sort();
                close.dedup();
                Err(SymbolError::FileNotFound {
                    file: file.to_string(),
                    suggestions: close.into_iter().take(5).map(|(_, p)| p.clone()).collect(),
                })
            }
            _ => {
                // A path written out in full beats longer ones it suffixes.
                if let Some(&exact) = matches.iter().find(|&&i| lines.files[i as usize] == file) {
                    return Ok(exact);
                }
                Err(SymbolError::AmbiguousFile {
                    file: file.to_string(),
                    candidates: matches
                        .iter()
                        .map(|&i| lines.files[i as usize].clone())
                        .collect(),
                })
            }
        }
    }

    /// Every source location that holds code for `file:line` is resolved by
    /// [`SymbolIndex::resolve`]; this is the raw list: the lowest `is_stmt`
    /// address of each function holding code for the line.
    pub fn line_to_addrs(&self, file: &str, line: u32) -> Result<Vec<u64>, SymbolError> {
        let res = self.resolve(
            &format!("{file}:{line}"),
            ResolveOptions {
                all: true,
                allow_raw_address: false,
            },
        )?;
        Ok(res.points.iter().map(|p| p.addr).collect())
    }
}

/// The copies of a line in one function: run start → lowest `is_stmt`
/// address of the run.
type Copies = BTreeMap<u64, u64>;

/// `path` ends with `suffix` at a component boundary.
fn path_ends_with(path: &str, suffix: &str) -> bool {
    path == suffix || (path.ends_with(suffix) && path[..path.len() - suffix.len()].ends_with('/'))
}

/// A glob matched against `path` starting at any segment boundary, so that
/// `RequestQueue::submit_*` works like a suffix query.
fn glob_at_segments(pattern: &str, path: &str) -> bool {
    if glob_match(pattern, path) {
        return true;
    }
    let mut rest = path;
    let mut depth = 0i32;
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' | b'(' | b'[' => depth += 1,
            b'>' | b')' | b']' => depth -= 1,
            b':' if depth == 0 && i + 2 <= bytes.len() && bytes.get(i + 1) == Some(&b':') => {
                rest = &path[i + 2..];
                if glob_match(pattern, rest) {
                    return true;
                }
            }
            _ => {}
        }
    }
    let _ = rest;
    false
}

/// `path::<args>` split into the path and the arguments, when the last
/// segment is written with a turbofish.
fn split_turbofish(path: &str) -> Option<(&str, String)> {
    let body = path.strip_suffix('>')?;
    let mut depth = 0i32;
    for (i, c) in body.char_indices().rev() {
        match c {
            '>' => depth += 1,
            '<' if depth > 0 => depth -= 1,
            '<' => {
                let bare = body[..i].strip_suffix("::")?;
                return (!bare.is_empty()).then(|| (bare, body[i + 1..].to_string()));
            }
            _ => {}
        }
    }
    None
}

/// Generic arguments split at their top-level commas, whitespace removed.
fn split_args(args: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0i32;
    for c in args.chars().filter(|c| !c.is_whitespace()) {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        out.last_mut().expect("never empty").push(c);
    }
    out
}

/// Does each written argument name the instance's argument: equal, or a
/// suffix of whole path segments (`BlockRqIssue` for
/// `ktrace_tracepoints::block::BlockRqIssue`)?
fn args_select(want: &[String], have: &[String]) -> bool {
    want.len() == have.len()
        && want
            .iter()
            .zip(have)
            .all(|(w, h)| w == h || h.ends_with(&format!("::{w}")))
}

/// The last path segment of a type (`a::b::C<d::E>` → `C<d::E>`).
fn last_segment(ty: &str) -> &str {
    let head = ty.find(['<', '(', '[']).unwrap_or(ty.len());
    match ty[..head].rfind("::") {
        Some(i) => &ty[i + 2..],
        None => ty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_forms() {
        assert_eq!(
            Query::parse("kernel::a::b").unwrap(),
            Query::Path {
                path: "kernel::a::b".into()
            }
        );
        assert_eq!(
            Query::parse("a::b+0x1a").unwrap(),
            Query::Offset {
                path: "a::b".into(),
                offset: 0x1a
            }
        );
        assert_eq!(
            Query::parse("a::b+26").unwrap(),
            Query::Offset {
                path: "a::b".into(),
                offset: 26
            }
        );
        assert_eq!(
            Query::parse("kernel/src/block/queue.rs:120").unwrap(),
            Query::Line {
                file: "kernel/src/block/queue.rs".into(),
                line: 120
            }
        );
        assert_eq!(
            Query::parse("0xffff_8000").unwrap(),
            Query::Address { addr: 0xffff_8000 }
        );
        assert_eq!(
            Query::parse("*::submit_*").unwrap(),
            Query::Glob {
                pattern: "*::submit_*".into()
            }
        );
        assert_eq!(
            Query::parse("a::b+x").unwrap_err().to_string(),
            "bad query `a::b+x`: the part after `+` must be an offset such as `0x1a` or `26`"
        );
        assert!(matches!(Query::parse("  "), Err(SymbolError::EmptyQuery)));
        assert_eq!(
            Query::parse("queue.rs:0").unwrap_err().to_string(),
            "bad query `queue.rs:0`: lines are numbered from 1"
        );
    }

    #[test]
    fn globs_start_at_segments() {
        assert!(glob_at_segments(
            "RequestQueue::submit_*",
            "kernel::block::RequestQueue::submit_bio"
        ));
        assert!(!glob_at_segments(
            "Queue::submit_*",
            "kernel::block::RequestQueue::submit_bio"
        ));
        assert!(path_ends_with(
            "/a/kernel/src/block/queue.rs",
            "block/queue.rs"
        ));
        assert!(!path_ends_with(
            "/a/kernel/src/block/myqueue.rs",
            "queue.rs"
        ));
    }

    #[test]
    fn monomorphizations_are_selected_by_their_type_arguments() {
        assert_eq!(
            split_turbofish("tracepoint::emit::<BlockRqIssue>"),
            Some(("tracepoint::emit", "BlockRqIssue".to_string()))
        );
        assert_eq!(
            split_turbofish("f::<Vec<u8>, (u8, u16)>"),
            Some(("f", "Vec<u8>, (u8, u16)".to_string()))
        );
        // A type's own arguments are not a turbofish.
        assert_eq!(split_turbofish("Noop<P>"), None);
        assert_eq!(split_turbofish("::<u8>"), None);
        assert_eq!(
            split_args("a::B<c::D, u8>, (u8, u16)"),
            vec!["a::B<c::D,u8>", "(u8,u16)"]
        );
        let have = split_args("ktrace_tracepoints::block::BlockRqIssue,u8");
        assert!(args_select(&split_args("BlockRqIssue, u8"), &have));
        assert!(args_select(&split_args("block::BlockRqIssue,u8"), &have));
        assert!(!args_select(&split_args("RqIssue,u8"), &have));
        assert!(!args_select(&split_args("BlockRqIssue"), &have));
        assert_eq!(last_segment("a::b::C<d::E>"), "C<d::E>");
        assert_eq!(last_segment("u8"), "u8");
    }
}
