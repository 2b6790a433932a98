//! Queries against two builds of `tests/fixtures/sample.rs`: one with v0
//! mangling, one with legacy (stable rustc's default). Addresses differ
//! between builds, so expectations are computed from the index where they
//! must be, and names, counts, lines and messages are asserted exactly.

mod common;

use common::{fixture_line, legacy, v0};
use ktrace_symbols::{
    AmbiguityKind, Mangling, NotProbeable, ResolveOptions, SymbolError, SymbolIndex,
};

const FILE: &str = "tests/fixtures/sample.rs";

fn one(index: &SymbolIndex, query: &str) -> u64 {
    let res = index
        .resolve(query, ResolveOptions::default())
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    assert_eq!(res.points.len(), 1, "{query}");
    res.points[0].addr
}

fn err(index: &SymbolIndex, query: &str) -> SymbolError {
    index
        .resolve(query, ResolveOptions::default())
        .expect_err(query)
}

fn addr_of(index: &SymbolIndex, name: &str) -> u64 {
    let f: Vec<_> = index
        .functions()
        .iter()
        .filter(|f| f.name == name)
        .collect();
    assert_eq!(f.len(), 1, "{name}");
    f[0].addr
}

fn both() -> [(&'static str, &'static SymbolIndex); 2] {
    [("v0", v0()), ("legacy", legacy())]
}

/// The name of the request queue's method in each scheme.
fn submit_bio_name(label: &str) -> &'static str {
    if label == "v0" {
        "<fixture::block::queue::RequestQueue>::submit_bio"
    } else {
        "fixture::block::queue::RequestQueue::submit_bio"
    }
}

#[test]
fn both_schemes_are_read_and_legacy_builds_mix_them() {
    let count = |index: &SymbolIndex, scheme| {
        index
            .functions()
            .iter()
            .filter(|f| f.scheme == scheme && f.name.contains("fixture::"))
            .count()
    };
    assert!(count(v0(), Mangling::V0) >= 8);
    assert_eq!(count(v0(), Mangling::Legacy), 0);
    assert_eq!(count(legacy(), Mangling::V0), 0);
    assert!(count(legacy(), Mangling::Legacy) >= 8);
    // Our crate follows the flag; this toolchain's prebuilt std is v0, so a
    // default (legacy) build holds both schemes.
    assert!(legacy()
        .functions()
        .iter()
        .any(|f| f.scheme == Mangling::V0 && f.name.starts_with("std::")));
    let f = &legacy().find("net::send")[0];
    assert_eq!(
        f.mangled,
        format!("_ZN7fixture3net4send17h{}E", f.hash.as_deref().unwrap())
    );
    assert_eq!(
        f.demangled,
        format!("fixture::net::send::h{}", f.hash.as_deref().unwrap())
    );
}

#[test]
fn exact_suffix_and_qualified_paths_find_one_function() {
    for (label, index) in both() {
        let addr = addr_of(index, submit_bio_name(label));
        for q in [
            "fixture::block::queue::RequestQueue::submit_bio",
            "<fixture::block::queue::RequestQueue>::submit_bio",
            "RequestQueue::submit_bio",
            "queue::RequestQueue::submit_bio",
            "submit_bio",
        ] {
            assert_eq!(one(index, q), addr, "{label}: {q}");
        }
        let nvme = addr_of(index, "<fixture::Nvme as fixture::Device>::submit");
        for q in [
            "Nvme::submit",
            "<Nvme as Device>::submit",
            "fixture::Nvme::submit",
        ] {
            assert_eq!(one(index, q), nvme, "{label}: {q}");
        }
        assert_eq!(
            one(index, "net::send"),
            addr_of(index, "fixture::net::send")
        );
        let res = index
            .resolve("fixture::net::send", ResolveOptions::default())
            .unwrap();
        let p = &res.points[0];
        assert_eq!(p.function.as_deref(), Some("fixture::net::send"));
        assert_eq!(p.offset, 0);
        assert_eq!(
            p.location.as_ref().map(|l| l.to_string()),
            Some(format!(
                "{FILE}:{}",
                fixture_line("pub fn send(x: u64) -> u64 {")
            ))
        );
    }
}

#[test]
fn globs_match_many() {
    for (label, index) in both() {
        let names = |q: &str| -> Vec<String> {
            let res = index.resolve(q, ResolveOptions::default()).unwrap();
            res.points
                .iter()
                .map(|p| p.function.clone().unwrap())
                .collect()
        };
        let bio = submit_bio_name(label);
        let flush = bio.replace("submit_bio", "submit_flush");
        assert_eq!(names("fixture::block::*"), [bio, flush.as_str()], "{label}");
        assert_eq!(names("*::submit_*"), [bio, flush.as_str()], "{label}");
        assert_eq!(
            names("RequestQueue::submit_f*"),
            [flush.as_str()],
            "{label}"
        );
        let mut sends = names("fixture::*::send");
        sends.sort();
        assert_eq!(sends, ["fixture::disk::send", "fixture::net::send"]);
    }
}

#[test]
fn same_name_in_two_modules_is_ambiguous() {
    let index = v0();
    let net = index.find("fixture::net::send")[0];
    let disk = index.find("fixture::disk::send")[0];
    let SymbolError::Ambiguous {
        query,
        kind,
        candidates,
        all_applies,
    } = err(index, "send")
    else {
        panic!("expected an ambiguity")
    };
    assert_eq!(query, "send");
    assert_eq!(kind, AmbiguityKind::SameName);
    assert!(all_applies);
    let got: Vec<_> = candidates
        .iter()
        .map(|c| (c.name.as_str(), c.addr, c.size, c.select_with.as_deref()))
        .collect();
    let mut want = vec![
        ("fixture::net::send", net.addr, net.size, Some("net::send")),
        (
            "fixture::disk::send",
            disk.addr,
            disk.size,
            Some("disk::send"),
        ),
    ];
    want.sort_by_key(|w| w.1);
    assert_eq!(got, want);
    let line = fixture_line("pub fn send(x: u64) -> u64 {");
    let disk_line = line + 7;
    // The whole message, as a user reads it.
    let rows: Vec<String> = want
        .iter()
        .map(|(name, addr, size, sel)| {
            let l = if name.contains("net") {
                line
            } else {
                disk_line
            };
            format!(
                "  {name:19}  {addr:#x}  {size} bytes  {FILE}:{l}  (select with `{}`)",
                sel.unwrap()
            )
        })
        .collect();
    assert_eq!(
        err(index, "send").to_string(),
        format!(
            "`send` is ambiguous: 2 functions have this name:\n{}\n\
             to choose one, write a longer path; to attach to all of them, pass --all",
            rows.join("\n")
        )
    );
    // --all takes both.
    let res = index
        .resolve(
            "send",
            ResolveOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(res.points.len(), 2);
}

#[test]
fn monomorphizations_are_ambiguous_and_chosen_by_generics_or_hash() {
    let SymbolError::Ambiguous {
        kind, candidates, ..
    } = err(v0(), "checksum")
    else {
        panic!("expected an ambiguity")
    };
    assert_eq!(kind, AmbiguityKind::Monomorphizations);
    let mut names: Vec<_> = candidates
        .iter()
        .map(|c| (c.name.clone(), c.select_with.clone().unwrap()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (
                "fixture::checksum::<u32>".to_string(),
                "checksum::<u32>".to_string()
            ),
            (
                "fixture::checksum::<u8>".to_string(),
                "checksum::<u8>".to_string()
            ),
        ]
    );
    assert_eq!(
        one(v0(), "checksum::<u8>"),
        addr_of(v0(), "fixture::checksum::<u8>")
    );
    // Legacy names carry no generic arguments; DWARF names each instance
    // (`checksum<u8>`), so the ambiguity offers `checksum::<u8>`, and the
    // hash still selects one too.
    assert!(err(legacy(), "checksum").to_string().ends_with(
        "to choose one, write the generic arguments as listed (`f::<u32>`; from DWARF for legacy \
         names) or the legacy hash (`f::h0123…`); to attach to all of them, pass --all"
    ));
    let SymbolError::Ambiguous {
        kind, candidates, ..
    } = err(legacy(), "checksum")
    else {
        panic!("expected an ambiguity")
    };
    assert_eq!(kind, AmbiguityKind::Monomorphizations);
    assert_eq!(candidates.len(), 2);
    let mut selectors = Vec::new();
    for c in &candidates {
        assert_eq!(c.name, "fixture::checksum");
        let f = legacy()
            .functions()
            .iter()
            .find(|f| f.addr == c.addr)
            .unwrap();
        let sel = c.select_with.clone().unwrap();
        assert_eq!(one(legacy(), &sel), c.addr);
        assert_eq!(
            sel,
            format!("fixture::checksum::<{}>", f.type_args.as_deref().unwrap())
        );
        selectors.push(sel);
        let hash = format!("fixture::checksum::h{}", f.hash.as_deref().unwrap());
        assert_eq!(one(legacy(), &hash), c.addr);
        // The candidate's line is in the function's own body, not in the
        // `core` code inlined at its entry.
        let loc = c.location.as_deref().unwrap();
        let line: u32 = loc
            .strip_prefix(&format!("{FILE}:"))
            .unwrap()
            .parse()
            .unwrap();
        let first = fixture_line("pub fn checksum");
        assert!((first..=first + 6).contains(&line), "{loc}");
    }
    selectors.sort();
    assert_eq!(
        selectors,
        ["fixture::checksum::<u32>", "fixture::checksum::<u8>"]
    );
    // A suffix of the argument's path is enough; a wrong one selects none.
    assert_eq!(
        one(legacy(), "checksum::<u8>"),
        one(legacy(), "fixture::checksum::<u8>")
    );
    assert!(matches!(
        err(legacy(), "checksum::<u16>"),
        SymbolError::NotFound { .. }
    ));
}

#[test]
fn trait_method_of_two_types_is_ambiguous() {
    for (label, index) in both() {
        for q in ["submit", "Device::submit", "fixture::Device::submit"] {
            let SymbolError::Ambiguous {
                kind, candidates, ..
            } = err(index, q)
            else {
                panic!("{label}: {q}: expected an ambiguity")
            };
            assert_eq!(kind, AmbiguityKind::TraitImpls, "{label}: {q}");
            let mut got: Vec<_> = candidates
                .iter()
                .map(|c| (c.name.as_str(), c.select_with.as_deref().unwrap()))
                .collect();
            got.sort();
            assert_eq!(
                got,
                [
                    (
                        "<fixture::Nvme as fixture::Device>::submit",
                        "<Nvme as Device>::submit"
                    ),
                    (
                        "<fixture::Virtio as fixture::Device>::submit",
                        "<Virtio as Device>::submit"
                    ),
                ],
                "{label}: {q}"
            );
        }
    }
}

#[test]
fn closures_are_named_closure_n() {
    let f = v0().find("main::{closure#0}");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].name, "fixture::main::{closure#0}");
    // Legacy names have no index: `{closure#0}` and `{closure}` both find it.
    for q in ["fixture::main::{closure#0}", "main::{closure}"] {
        let f = legacy().find(q);
        assert_eq!(f.len(), 1, "{q}");
        assert_eq!(f[0].name, "fixture::main::{{closure}}");
        assert_eq!(f[0].search_paths(), ["fixture::main::{closure}"]);
    }
    assert_eq!(v0().find("main::{closure#1}").len(), 0);
}

#[test]
fn lines_round_trip() {
    for (label, index) in both() {
        for name in [
            "fixture::net::send",
            "fixture::disk::send",
            submit_bio_name(label),
            "<fixture::Nvme as fixture::Device>::submit",
            "fixture::apply",
        ] {
            let f = index.find(name)[0];
            let loc = index.function_location(f).unwrap();
            assert_eq!(loc.file, FILE);
            let q = format!("sample.rs:{}", loc.line);
            let addr = one(index, &q);
            assert!(f.contains(addr), "{label}: {q} -> {addr:#x} outside {name}");
            assert_eq!(index.addr_to_line(addr), Some(loc), "{label}: {q}");
        }
        // A line in the middle of a function: the lowest statement address.
        let line = fixture_line("let slot = sector % self.depth.max(1);");
        let res = index
            .resolve(
                &format!("fixtures/sample.rs:{line}"),
                ResolveOptions::default(),
            )
            .unwrap();
        let p = &res.points[0];
        assert_eq!(p.function.as_deref(), Some(submit_bio_name(label)));
        assert!(p.offset > 0);
        assert_eq!(p.location.as_ref().unwrap().line, line);
        assert_eq!(index.lookup_addr(p.addr).unwrap().1, p.offset);
    }
}

#[test]
fn a_line_in_inlined_copies_lists_every_copy() {
    let index = v0();
    let line = fixture_line("x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7");
    let q = format!("sample.rs:{line}");
    let SymbolError::Ambiguous {
        kind, candidates, ..
    } = err(index, &q)
    else {
        panic!("expected an ambiguity")
    };
    assert_eq!(kind, AmbiguityKind::LineInSeveralPlaces);
    let names: Vec<_> = candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "<fixture::block::queue::RequestQueue>::submit_bio (inlined `tiny_helper`)",
            "<fixture::block::queue::RequestQueue>::submit_flush (inlined `tiny_helper`)",
        ]
    );
    let all = index
        .resolve(
            &q,
            ResolveOptions {
                all: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(all.points.len(), 2);
    for p in &all.points {
        assert_eq!(p.inlined_from.as_deref(), Some("tiny_helper"));
        assert_eq!(p.location.as_ref().unwrap().line, line);
    }
    // The symbolized frames of that address: the helper, inlined at its
    // call in submit_bio.
    let frames = index.symbolize(all.points[0].addr).unwrap().frames;
    let got: Vec<_> = frames
        .iter()
        .map(|f| {
            (
                f.function.as_str(),
                f.location.as_ref().unwrap().line,
                f.inlined,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("tiny_helper", line, true),
            (
                "<fixture::block::queue::RequestQueue>::submit_bio",
                fixture_line("super::super::tiny_helper(slot) + self.submitted"),
                false
            ),
        ]
    );
}

#[test]
fn generic_line_is_owned_by_each_monomorphization() {
    let line = fixture_line("acc = acc.rotate_left(5) ^ (*x).into();");
    let q = format!("sample.rs:{line}");
    let SymbolError::Ambiguous {
        kind, candidates, ..
    } = err(v0(), &q)
    else {
        panic!("expected an ambiguity")
    };
    assert_eq!(kind, AmbiguityKind::LineInSeveralPlaces);
    let mut names: Vec<_> = candidates.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["fixture::checksum::<u32>", "fixture::checksum::<u8>"]
    );
    for c in &candidates {
        let sel = c.select_with.as_deref().unwrap();
        assert!(sel.starts_with(&format!("{}+0x", c.name)), "{sel}");
        assert_eq!(one(v0(), sel), c.addr);
    }
}

#[test]
fn offsets_are_checked_against_instruction_boundaries() {
    for (label, index) in both() {
        let name = submit_bio_name(label);
        let f = index.find(name)[0];
        // Frame pointers: `push rbp` (1 byte), `mov rbp, rsp` (3 bytes).
        assert_eq!(one(index, "RequestQueue::submit_bio+0x1"), f.addr + 1);
        assert_eq!(one(index, "RequestQueue::submit_bio+4"), f.addr + 4);
        assert_eq!(
            err(index, "RequestQueue::submit_bio+0x2").to_string(),
            format!(
                "`{name}+0x2` is inside an instruction; the nearest instruction boundaries are {name}+0x1 and {name}+0x4"
            )
        );
        let SymbolError::NotOnBoundary { before, after, .. } =
            err(index, "RequestQueue::submit_bio+3")
        else {
            panic!("expected a boundary refusal")
        };
        assert_eq!((before, after), (1, Some(4)));
        assert_eq!(
            err(index, "RequestQueue::submit_bio+0x1000").to_string(),
            format!(
                "offset 0x1000 is outside `{name}`, which is {:#x} bytes long",
                f.size
            )
        );
        // Offsets need one function, and `--all` does not help.
        let e = err(index, "send+0x1");
        assert!(matches!(
            &e,
            SymbolError::Ambiguous {
                all_applies: false,
                ..
            }
        ));
        assert!(e.to_string().starts_with("`send+0x1` is ambiguous"));
        assert!(e
            .to_string()
            .ends_with("to choose one, write a longer path"));
    }
}

#[test]
fn unknown_names_get_suggestions() {
    for (label, index) in both() {
        let SymbolError::NotFound { suggestions, .. } = err(index, "sumbit_bio") else {
            panic!("expected not found")
        };
        assert_eq!(
            suggestions,
            ["fixture::block::queue::RequestQueue::submit_bio"],
            "{label}"
        );
        let SymbolError::NotFound { suggestions, .. } = err(index, "fixture::nett::send") else {
            panic!("expected not found")
        };
        assert_eq!(suggestions[0], "fixture::net::send", "{label}");
        assert_eq!(
            err(index, "fixture::nett::send").to_string().lines().next(),
            Some("no function matches `fixture::nett::send`; did you mean:")
        );
        assert_eq!(
            err(index, "zzzzqqqq_unrelated").to_string(),
            "no function matches `zzzzqqqq_unrelated` (and no name is close to it)"
        );
    }
}

#[test]
fn inlined_away_functions_say_where_they_went() {
    for (label, index) in both() {
        let SymbolError::InlinedAway { name, sites, .. } = err(index, "fixture::tiny_helper")
        else {
            panic!("{label}: expected inlined away")
        };
        assert_eq!(name, "tiny_helper");
        let bio = submit_bio_name(label);
        let flush = bio.replace("submit_bio", "submit_flush");
        let got: Vec<_> = sites
            .iter()
            .map(|s| (s.into.as_str(), s.call_site.clone().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    bio,
                    format!(
                        "{FILE}:{}",
                        fixture_line("super::super::tiny_helper(slot) + self.submitted")
                    )
                ),
                (
                    flush.as_str(),
                    format!(
                        "{FILE}:{}",
                        fixture_line("super::super::tiny_helper(self.submitted)")
                    )
                ),
            ]
        );
        assert!(err(index, "tiny_helper")
            .to_string()
            .starts_with("`tiny_helper` has no symbol of its own: `tiny_helper` was inlined away"));
    }
}

#[test]
fn zero_sized_symbols_cannot_be_probed() {
    let index = v0();
    let e = err(index, "fixture_zero_sized");
    let SymbolError::NotProbeable { function, reason } = &e else {
        panic!("expected not probeable")
    };
    assert_eq!(*reason, NotProbeable::ZeroSize);
    assert_eq!(
        e.to_string(),
        format!(
            "cannot probe `fixture_zero_sized` at {:#x}: its symbol has size 0 (a label without `.size`), so its extent is unknown",
            function.addr
        )
    );
    // A glob that only finds it fails the same way.
    assert!(matches!(
        err(index, "fixture_zero_*"),
        SymbolError::NotProbeable { .. }
    ));
}

#[test]
fn raw_addresses_need_permission() {
    let index = v0();
    let f = index.find("fixture::net::send")[0];
    let q = format!("{:#x}", f.addr + 4);
    assert_eq!(
        err(index, &q).to_string(),
        format!(
            "refusing the raw address {q}: raw addresses are accepted only with --unsafe-address (allow_raw_address); it is `fixture::net::send+0x4`, which you can write instead"
        )
    );
    let allow = ResolveOptions {
        allow_raw_address: true,
        ..Default::default()
    };
    let res = index.resolve(&format!("{:#x}", f.addr), allow).unwrap();
    assert_eq!(
        res.points[0].function.as_deref(),
        Some("fixture::net::send")
    );
    assert!(matches!(
        index.resolve("0x10", allow),
        Err(SymbolError::AddressNotInText { addr: 0x10 })
    ));
}

#[test]
fn addresses_map_back_to_functions() {
    for (_, index) in both() {
        for f in index.functions().iter().filter(|f| f.size > 0).take(200) {
            let (g, off) = index.lookup_addr(f.addr + f.size - 1).unwrap();
            assert_eq!((g.addr, off), (f.addr, f.size - 1), "{}", f.name);
        }
        let f = index.find("fixture::net::send")[0];
        let s = index.symbolize(f.addr + 2).unwrap();
        assert_eq!(
            (s.function.name.as_str(), s.offset),
            ("fixture::net::send", 2)
        );
    }
}

#[test]
fn source_file_errors() {
    let index = legacy();
    assert_eq!(
        err(index, "nosuch.rs:3").to_string(),
        "no source file in the line tables ends with `nosuch.rs`"
    );
    let SymbolError::FileNotFound { suggestions, .. } = err(index, "sampel.rs:3") else {
        panic!("expected file not found")
    };
    assert_eq!(suggestions, [FILE]);
    // `fixtures/sample.rs` must match whole components.
    assert!(matches!(
        err(index, "ample.rs:3"),
        SymbolError::FileNotFound { .. }
    ));
    let line = fixture_line("/// A generic function with two instantiations.");
    let SymbolError::NoCodeAtLine { before, after, .. } = err(index, &format!("sample.rs:{line}"))
    else {
        panic!("expected no code")
    };
    assert!(before.unwrap() < line && after.unwrap() > line);
}

#[test]
fn a_line_owned_by_one_function_and_inlined_elsewhere_picks_the_owner() {
    for (label, index) in both() {
        let line = fixture_line("let y = x ^ (x >> 29);");
        let q = format!("sample.rs:{line}");
        let res = index.resolve(&q, ResolveOptions::default()).unwrap();
        assert_eq!(res.points.len(), 1, "{label}");
        let p = &res.points[0];
        assert_eq!(p.function.as_deref(), Some("fixture::mixed_helper"));
        assert_eq!(p.inlined_from, None);
        assert_eq!(res.others.len(), 1, "{label}");
        let other = &res.others[0];
        assert_eq!(other.function.as_deref(), Some("fixture::apply"));
        assert_eq!(other.inlined_from.as_deref(), Some("mixed_helper"));
        assert_eq!(
            res.note.as_deref(),
            Some(
                format!(
                    "picked fixture::mixed_helper+{:#x}, the lowest address of the function that owns the line; \
                     1 inlined copy elsewhere (pass --all to probe them too): fixture::apply (inlined `mixed_helper`)",
                    p.offset
                )
                .as_str()
            )
        );
        let all = index
            .resolve(
                &q,
                ResolveOptions {
                    all: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let got: Vec<_> = all
            .points
            .iter()
            .map(|p| (p.function.as_deref().unwrap(), p.inlined_from.is_some()))
            .collect();
        assert_eq!(
            got,
            [("fixture::mixed_helper", false), ("fixture::apply", true)]
        );
        // The name finds the out-of-line copy: it is not "inlined away".
        assert_eq!(
            one(index, "mixed_helper"),
            addr_of(index, "fixture::mixed_helper")
        );
    }
}

/// Odd input gets an answer or an error, never a panic.
#[test]
fn odd_queries_never_panic() {
    let index = v0();
    let fixed = [
        "",
        "::",
        ":::",
        "<",
        ">",
        "<>",
        "<<>>::f",
        "<a as>::",
        "< as b>::c",
        "+",
        "+0x1",
        "f+",
        "f+0x",
        "a::b+0xffffffffffffffff",
        "0x",
        "0xzz",
        "0xffffffffffffffff",
        ".rs:1",
        "/:1",
        "x.rs:0",
        "x.rs:4294967296",
        "**",
        "*",
        "?",
        "{closure#}",
        "{{closure}}",
        "é::ü",
        "<é as ü>::ß",
        "a::<>",
        "a<::b",
        "fn() -> u8::x",
        "sample.rs:1:2",
        "RequestQueue::submit_bio+0x4b",
        "RequestQueue::submit_bio+0x4a",
    ];
    let opts = [
        ResolveOptions::default(),
        ResolveOptions {
            all: true,
            allow_raw_address: true,
        },
    ];
    for q in fixed {
        for o in opts {
            let _ = index.resolve(q, o);
        }
    }
    // Pseudo-random strings over the characters paths are made of.
    let alphabet: Vec<char> = "ab:<>()[]{}#+*?0x1 ,&-é.rs/".chars().collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..400 {
        let mut q = String::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for k in 0..(state % 24) {
            q.push(alphabet[((state >> (k * 2)) as usize + k as usize) % alphabet.len()]);
        }
        for o in opts {
            let _ = index.resolve(&q, o);
        }
    }
}

#[test]
fn a_path_at_a_place_selects_by_where_the_function_starts() {
    let line = fixture_line("let scale = |v: u64|");
    for (label, index) in both() {
        let q = format!("main::{{closure}}@fixtures/sample.rs:{line}");
        let res = index
            .resolve(&q, ResolveOptions::default())
            .unwrap_or_else(|e| panic!("{label} {q}: {e}"));
        assert_eq!(res.points.len(), 1, "{label}");
        assert!(
            res.points[0]
                .function
                .as_deref()
                .unwrap()
                .contains("main::{"),
            "{label}: {:?}",
            res.points[0]
        );
        // Another line, or another file, selects nothing.
        let q = format!("main::{{closure}}@fixtures/sample.rs:{}", line + 1);
        assert!(
            matches!(err(index, &q), SymbolError::NotFound { .. }),
            "{label}"
        );
        assert!(matches!(
            err(index, "main::{closure}@other.rs"),
            SymbolError::NotFound { .. }
        ));
        // Functions of one name: the file and line of each pick it.
        let net = fixture_line("pub fn send(x: u64) -> u64 {");
        let send = index.find("net::send")[0];
        let at = index.function_location(send).unwrap();
        assert!(at.line >= net, "{label}: {at}");
        let q = format!("send@sample.rs:{}", at.line);
        assert_eq!(one(index, &q), send.addr, "{label}");
    }
}
