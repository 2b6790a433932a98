//! Demangling and the normalised form of Rust paths used for matching.
//!
//! Demangled names come in several shapes, and the legacy and v0 mangling
//! schemes spell the same function differently:
//!
//! ```text
//! legacy: kernel::block::queue::RequestQueue::submit_bio
//! v0:     <kernel::block::queue::RequestQueue>::submit_bio
//! both:   <kernel::Nvme as kernel::Device>::submit
//! v0:     kernel::checksum::<u8>         legacy: kernel::checksum (hash differs)
//! v0:     kernel::main::{closure#0}      legacy: kernel::main::{{closure}}
//! ```
//!
//! [`ParsedPath`] turns any of them into segments, and [`ParsedPath::keys`]
//! gives the segment lists a query may match: an inherent method is one key
//! (`kernel::…::RequestQueue::submit_bio`, whatever the scheme), a trait
//! method two (by type `kernel::Nvme::submit`, by trait
//! `kernel::Device::submit`).

use std::fmt;

/// The mangling scheme of a symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mangling {
    /// `_ZN…17h<hash>E`, rustc's default on stable.
    Legacy,
    /// `_R…`, `-C symbol-mangling-version=v0`.
    V0,
    /// Not a Rust symbol (assembly, C, `#[no_mangle]`).
    None,
}

/// A symbol name demangled three ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demangled {
    /// Demangled with the hash dropped (`{:#}`): the name users type.
    pub name: String,
    /// Demangled in full (`{}`): legacy hash or v0 crate disambiguators kept.
    pub full: String,
    /// The 16 hex digits of a legacy hash, which tell monomorphizations apart.
    pub hash: Option<String>,
    /// Which scheme the symbol used.
    pub scheme: Mangling,
}

/// Demangle a symbol of either Rust scheme; other names pass through.
pub fn demangle(mangled: &str) -> Demangled {
    match rustc_demangle::try_demangle(mangled) {
        Ok(d) => {
            let name = format!("{d:#}");
            let full = format!("{d}");
            let scheme = if mangled.starts_with("_R") {
                Mangling::V0
            } else {
                Mangling::Legacy
            };
            let hash = if scheme == Mangling::Legacy {
                full.rsplit_once("::")
                    .map(|(_, h)| h)
                    .filter(|h| is_legacy_hash(h))
                    .map(|h| h[1..].to_string())
            } else {
                None
            };
            Demangled {
                name,
                full,
                hash,
                scheme,
            }
        }
        Err(_) => Demangled {
            name: mangled.to_string(),
            full: mangled.to_string(),
            hash: None,
            scheme: Mangling::None,
        },
    }
}

/// A probe target as a section name carries it: `#[kprobe]` writes each
/// space as `%20` (`kprobe/<Deadline<P>%20as%20Scheduler<P>>::dispatch`),
/// so that the name is one word for every tool that reads sections (Rust
/// paths have no `%`). This turns it back into the path.
pub fn decode_section_target(target: &str) -> String {
    target.replace("%20", " ")
}

/// The section-name form of `target` ([`decode_section_target`] undoes it):
/// runs of whitespace become one `%20`.
pub fn encode_section_target(target: &str) -> String {
    target.split_whitespace().collect::<Vec<_>>().join("%20")
}

/// True for `h` followed by 16 hex digits, the shape of a legacy hash.
pub fn is_legacy_hash(s: &str) -> bool {
    s.len() == 17 && s.starts_with('h') && s[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// One path segment: a name and, if written, its generic arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    /// The name (`submit_bio`, `RequestQueue`, `{closure#0}`, or a whole
    /// non-path type such as `[u8]` or `&str`).
    pub name: String,
    /// Generic arguments without the angle brackets, whitespace removed.
    pub generics: Option<String>,
    /// Written as `name::<..>` (function) rather than `name<..>` (type).
    pub turbofish: bool,
}

impl Segment {
    fn plain(name: &str) -> Self {
        Segment {
            name: normalise_name(name),
            generics: None,
            turbofish: false,
        }
    }

    /// Does this (query) segment select `other` (a symbol's segment)?
    ///
    /// Names must be equal, except that closures match across schemes:
    /// legacy names carry no closure index, so `{closure}` matches every
    /// closure and `{closure#N}` matches legacy `{closure}` too. Generic
    /// arguments are compared only when the query writes them.
    pub fn selects(&self, other: &Segment) -> bool {
        let names = self.name == other.name
            || (is_closure(&self.name)
                && is_closure(&other.name)
                && (self.name == "{closure}" || other.name == "{closure}"));
        names
            && match &self.generics {
                None => true,
                Some(g) => other.generics.as_deref() == Some(g.as_str()),
            }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.generics, self.turbofish) {
            (None, _) => write!(f, "{}", self.name),
            (Some(g), true) => write!(f, "{}::<{}>", self.name, g),
            (Some(g), false) => write!(f, "{}<{}>", self.name, g),
        }
    }
}

fn is_closure(name: &str) -> bool {
    name == "{closure}" || name.starts_with("{closure#")
}

/// `{{closure}}` (legacy) becomes `{closure}`; whitespace goes.
fn normalise_name(name: &str) -> String {
    match name {
        "{{closure}}" => "{closure}".to_string(),
        "{{constant}}" => "{constant}".to_string(),
        // Most names have no whitespace: copy them as they are.
        _ if !name.contains(char::is_whitespace) => name.to_string(),
        _ => name.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// A parsed path: an optional qualified self (`<T>` or `<T as Trait>`) and
/// the segments after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPath {
    /// The self type of `<T>::…` / `<T as Trait>::…`.
    pub self_ty: Option<Vec<Segment>>,
    /// The trait of `<T as Trait>::…`.
    pub trait_: Option<Vec<Segment>>,
    /// Segments after the qualified self (all of them if there is none).
    pub rest: Vec<Segment>,
    /// [`ParsedPath::keys`], computed once: matching runs on every query.
    keys: Vec<Vec<Segment>>,
}

impl ParsedPath {
    /// Parse a demangled (hash-less) path or a query written like one.
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        if s.starts_with('<') {
            if let Some(close) = matching_close(s, 0) {
                let inner = &s[1..close];
                let after = s[close + 1..].strip_prefix("::").unwrap_or(&s[close + 1..]);
                let rest = if after.is_empty() {
                    Vec::new()
                } else {
                    parse_segments(after)
                };
                let (ty, tr) = match split_top_level(inner, " as ") {
                    Some((ty, tr)) => (ty, Some(tr)),
                    None => (inner, None),
                };
                return ParsedPath::new(Some(parse_type(ty)), tr.map(parse_type), rest);
            }
        }
        ParsedPath::new(None, None, parse_segments(s))
    }

    fn new(
        self_ty: Option<Vec<Segment>>,
        trait_: Option<Vec<Segment>>,
        rest: Vec<Segment>,
    ) -> Self {
        let mut p = ParsedPath {
            self_ty,
            trait_,
            rest,
            keys: Vec::new(),
        };
        if p.self_ty.is_some() {
            p.keys = p.compute_keys();
        }
        p
    }

    /// Drop the last segment (a legacy hash written in a query).
    pub(crate) fn pop(&mut self) -> Option<Segment> {
        let last = self.rest.pop();
        if self.self_ty.is_some() {
            self.keys = self.compute_keys();
        }
        last
    }

    /// The segment lists this path can be found by: by type (or the plain
    /// path), then by trait for a trait method.
    pub fn keys(&self) -> &[Vec<Segment>] {
        // A plain path is its own only key: no copy is stored.
        if self.self_ty.is_none() {
            std::slice::from_ref(&self.rest)
        } else {
            &self.keys
        }
    }

    fn compute_keys(&self) -> Vec<Vec<Segment>> {
        let mut keys = Vec::with_capacity(2);
        match &self.self_ty {
            None => keys.push(self.rest.clone()),
            Some(ty) => {
                keys.push(ty.iter().chain(&self.rest).cloned().collect());
                if let Some(tr) = &self.trait_ {
                    keys.push(tr.iter().chain(&self.rest).cloned().collect());
                }
            }
        }
        keys
    }

    /// Does this query path select the symbol path `sym`?
    ///
    /// Returns `Some(exact)` on a match: `exact` when every segment of the
    /// symbol was written (no suffix shortening).
    pub fn selects(&self, sym: &ParsedPath) -> Option<bool> {
        match (&self.self_ty, &self.trait_) {
            // `<Type>::method` says no more than `Type::method`, which legacy
            // names spell without brackets.
            (None, _) | (Some(_), None) => {
                let query = &self.keys()[0];
                let mut best = None;
                for key in sym.keys() {
                    if let Some(exact) = suffix_match(query, key) {
                        if exact {
                            return Some(true);
                        }
                        best = Some(false);
                    }
                }
                best
            }
            (Some(qty), Some(qtr)) => {
                let sty = sym.self_ty.as_ref()?;
                let ty_exact = suffix_match(qty, sty)?;
                let tr_exact = suffix_match(qtr, sym.trait_.as_ref()?)?;
                if self.rest.len() != sym.rest.len()
                    || !self.rest.iter().zip(&sym.rest).all(|(q, s)| q.selects(s))
                {
                    return None;
                }
                Some(ty_exact && tr_exact)
            }
        }
    }
}

/// `query` is a suffix of `key`, segment by segment. `Some(true)` if whole.
fn suffix_match(query: &[Segment], key: &[Segment]) -> Option<bool> {
    if query.is_empty() || query.len() > key.len() {
        return None;
    }
    let tail = &key[key.len() - query.len()..];
    query
        .iter()
        .zip(tail)
        .all(|(q, k)| q.selects(k))
        .then_some(query.len() == key.len())
}

/// Render segments as `a::b::<T>::c`.
pub fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        out.push_str(&s.to_string());
    }
    out
}

/// A type: a path (`kernel::Foo<u32>`) or anything else kept whole.
fn parse_type(s: &str) -> Vec<Segment> {
    let s = s.trim();
    let first = s.chars().next().unwrap_or(' ');
    if first.is_alphabetic() || first == '_' {
        let segs = parse_segments(s);
        if !segs.is_empty() && !s.starts_with("dyn ") && !s.starts_with("impl ") {
            return segs;
        }
    }
    vec![Segment {
        name: s.split_whitespace().collect::<Vec<_>>().join(" "),
        generics: None,
        turbofish: false,
    }]
}

/// Split `a::b<T>::c::<U>` into segments; `::<U>` attaches to the segment
/// before it.
fn parse_segments(s: &str) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for part in split_path(s) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        if part.starts_with('<') && part.ends_with('>') {
            if let Some(last) = out.last_mut() {
                if last.generics.is_none() {
                    last.generics = Some(strip_ws(&part[1..part.len() - 1]));
                    last.turbofish = true;
                    continue;
                }
            }
        }
        match part.find('<') {
            Some(open) if open > 0 && part.ends_with('>') && !part.starts_with('{') => {
                out.push(Segment {
                    name: normalise_name(&part[..open]),
                    generics: Some(strip_ws(&part[open + 1..part.len() - 1])),
                    turbofish: false,
                });
            }
            _ => out.push(Segment::plain(part)),
        }
    }
    out
}

fn strip_ws(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Split on `::` outside any brackets. `->` is not a closing bracket.
fn split_path(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' | b'(' | b'[' | b'{' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' | b')' | b']' | b'}' => depth -= 1,
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                parts.push(&s[start..i]);
                i += 2;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// Index of the `>` closing the `<` at `open`.
fn matching_close(s: &str, open: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0i32;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'<' | b'(' | b'[' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' | b')' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Split at the first `sep` outside brackets.
fn split_top_level<'a>(s: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    let bytes = s.as_bytes();
    let mut depth = 0i32;
    for i in 0..bytes.len() {
        match bytes[i] {
            b'<' | b'(' | b'[' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' | b')' | b']' => depth -= 1,
            // Compare bytes: `i` may sit inside a multi-byte character.
            _ if depth == 0 && bytes[i..].starts_with(sep.as_bytes()) => {
                return Some((&s[..i], &s[i + sep.len()..]));
            }
            _ => {}
        }
    }
    None
}

/// Match `text` against a glob where `*` is any run of characters
/// (`::` included) and `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // On bytes, without allocating: globs run against every function.
    // UTF-8 keeps this exact: a literal's first byte never equals a
    // continuation byte, and `?` takes a whole character.
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let char_len = |b: u8| match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    let is_continuation = |b: u8| b & 0xc0 == 0x80;
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'?' && !is_continuation(t[ti]) {
            pi += 1;
            ti += char_len(t[ti]);
        } else if pi < p.len() && p[pi] != b'?' && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_strings(s: &str) -> Vec<String> {
        ParsedPath::parse(s)
            .keys()
            .iter()
            .map(|k| render(k))
            .collect()
    }

    #[test]
    fn inherent_methods_match_across_schemes() {
        let v0 = ParsedPath::parse("<kernel::block::queue::RequestQueue>::submit_bio");
        let legacy = ParsedPath::parse("kernel::block::queue::RequestQueue::submit_bio");
        assert_eq!(v0.keys(), legacy.keys());
        let q = ParsedPath::parse("RequestQueue::submit_bio");
        assert_eq!(q.selects(&v0), Some(false));
        assert_eq!(q.selects(&legacy), Some(false));
        let q = ParsedPath::parse("<RequestQueue>::submit_bio");
        assert_eq!(q.selects(&v0), Some(false));
        let q = ParsedPath::parse("kernel::block::queue::RequestQueue::submit_bio");
        assert_eq!(q.selects(&v0), Some(true));
    }

    #[test]
    fn trait_methods_have_type_and_trait_keys() {
        assert_eq!(
            key_strings("<kernel::Nvme as kernel::Device>::submit"),
            ["kernel::Nvme::submit", "kernel::Device::submit"]
        );
        let sym = ParsedPath::parse("<kernel::Nvme as kernel::Device>::submit");
        assert_eq!(
            ParsedPath::parse("<Nvme as Device>::submit").selects(&sym),
            Some(false)
        );
        assert_eq!(
            ParsedPath::parse("<Virtio as Device>::submit").selects(&sym),
            None
        );
        assert_eq!(
            ParsedPath::parse("Device::submit").selects(&sym),
            Some(false)
        );
        assert_eq!(
            key_strings("<[u8] as core::fmt::Debug>::fmt"),
            ["[u8]::fmt", "core::fmt::Debug::fmt"]
        );
    }

    #[test]
    fn generics_closures_and_arrows() {
        let sym = ParsedPath::parse("kernel::checksum::<u8>");
        assert_eq!(render(&sym.rest), "kernel::checksum::<u8>");
        assert_eq!(ParsedPath::parse("checksum").selects(&sym), Some(false));
        assert_eq!(
            ParsedPath::parse("checksum::<u8>").selects(&sym),
            Some(false)
        );
        assert_eq!(ParsedPath::parse("checksum::<u32>").selects(&sym), None);
        let f = ParsedPath::parse("a::apply::<fn(u64) -> u64>::{closure#1}");
        assert_eq!(f.rest.len(), 3);
        assert_eq!(f.rest[1].generics.as_deref(), Some("fn(u64)->u64"));
        let legacy = ParsedPath::parse("a::main::{{closure}}");
        assert_eq!(render(&legacy.rest), "a::main::{closure}");
        assert_eq!(
            ParsedPath::parse("main::{closure#0}").selects(&legacy),
            Some(false)
        );
        let ty = ParsedPath::parse("<kernel::Foo<u32>>::bar");
        assert_eq!(
            key_strings("<kernel::Foo<u32>>::bar"),
            ["kernel::Foo<u32>::bar"]
        );
        assert_eq!(ParsedPath::parse("Foo::bar").selects(&ty), Some(false));
    }

    #[test]
    fn section_targets_carry_spaces_as_percent_20() {
        let path = "<Deadline<P> as  Scheduler<P>>::dispatch";
        let encoded = encode_section_target(path);
        assert_eq!(encoded, "<Deadline<P>%20as%20Scheduler<P>>::dispatch");
        assert_eq!(
            decode_section_target(&encoded),
            "<Deadline<P> as Scheduler<P>>::dispatch"
        );
        assert_eq!(decode_section_target("queue.rs:42"), "queue.rs:42");
    }

    #[test]
    fn demangles_both_schemes() {
        let l = demangle("_ZN7fixture3net4send17h1334d7bfae6b15dcE");
        assert_eq!(l.name, "fixture::net::send");
        assert_eq!(l.hash.as_deref(), Some("1334d7bfae6b15dc"));
        assert_eq!(l.scheme, Mangling::Legacy);
        let v =
            demangle("_RNvMNtNtCsai4GBYXPky7_7fixture5block5queueNtB2_12RequestQueue10submit_bio");
        assert_eq!(v.name, "<fixture::block::queue::RequestQueue>::submit_bio");
        assert_eq!(v.scheme, Mangling::V0);
        assert_eq!(demangle("memcpy").scheme, Mangling::None);
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "kernel::block::*",
            "kernel::block::queue::RequestQueue::submit_bio"
        ));
        assert!(glob_match(
            "*::submit_*",
            "kernel::RequestQueue::submit_bio"
        ));
        assert!(!glob_match("*::submit_*", "kernel::submit"));
        assert!(glob_match("s?nd", "send"));
        assert!(glob_match("a::?::b", "a::é::b"));
        assert!(!glob_match("a::??::b", "a::é::b"));
        assert!(glob_match("*é*", "xéy"));
    }
}
