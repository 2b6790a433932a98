//! Hand-made ELFs (written with `object::write`) for cases a compiler does
//! not produce on demand: symbols smaller than their first instruction,
//! bytes that are not code, aliases, bad files.

use ktrace_symbols::{NotProbeable, ResolveOptions, SymbolError, SymbolIndex};
use object::write::{Object, StandardSection, Symbol, SymbolSection};
use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolKind, SymbolScope};

/// An object whose text is `code`, with `(name, offset, size)` symbols.
fn elf(code: &[u8], symbols: &[(&str, u64, u64)]) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.section_id(StandardSection::Text);
    obj.append_section_data(text, code, 16);
    for &(name, value, size) in symbols {
        obj.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value,
            size,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
    }
    obj.write().expect("write ELF")
}

fn not_probeable(index: &SymbolIndex, q: &str) -> NotProbeable {
    match index.resolve(q, ResolveOptions::default()) {
        Err(SymbolError::NotProbeable { reason, .. }) => reason,
        other => panic!("{q}: expected not probeable, got {other:?}"),
    }
}

#[test]
fn too_small_and_undecodable_symbols_are_refused() {
    let code = [
        // tiny: `mov rbp, rsp` (3 bytes) under a 2-byte symbol.
        0x48, 0x89, 0xe5, 0x90, //
        // junk: 0x06 is not an instruction in 64-bit mode.
        0x06, 0x06, 0x06, 0x06, //
        // fine: push rbp; mov rbp, rsp; pop rbp; ret
        0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3, 0x90, 0x90,
    ];
    let bytes = elf(
        &code,
        &[
            ("tiny", 0, 2),
            ("junk", 4, 4),
            ("fine", 8, 8),
            ("fine_alias", 8, 8),
        ],
    );
    let index = SymbolIndex::from_bytes(&bytes).unwrap();
    assert_eq!(
        not_probeable(&index, "tiny"),
        NotProbeable::SmallerThanInstruction { size: 2 }
    );
    assert_eq!(
        index
            .resolve("tiny", ResolveOptions::default())
            .unwrap_err()
            .to_string(),
        "cannot probe `tiny` at 0x0: it is 2 bytes, less than one instruction"
    );
    assert_eq!(not_probeable(&index, "junk"), NotProbeable::Undecodable);
    // A glob skips what it cannot probe and says so.
    let res = index.resolve("*", ResolveOptions::default()).unwrap();
    let points: Vec<_> = res
        .points
        .iter()
        .map(|p| p.function.clone().unwrap())
        .collect();
    // Two names for one address are one point.
    assert_eq!(points, ["fine"]);
    let skipped: Vec<_> = res
        .skipped
        .iter()
        .map(|(c, why)| (c.name.as_str(), *why))
        .collect();
    assert_eq!(
        skipped,
        [
            ("tiny", NotProbeable::SmallerThanInstruction { size: 2 }),
            ("junk", NotProbeable::Undecodable),
        ]
    );
    // Offsets into the good one: instructions start at 0, 1, 4, 5, 6, 7
    // (the padding nops decode too).
    for (off, ok) in [
        (1, true),
        (2, false),
        (3, false),
        (4, true),
        (5, true),
        (6, true),
    ] {
        let r = index.resolve(&format!("fine+{off}"), ResolveOptions::default());
        assert_eq!(r.is_ok(), ok, "fine+{off}: {r:?}");
    }
    assert!(matches!(
        index.resolve("fine+8", ResolveOptions::default()),
        Err(SymbolError::OffsetOutOfRange { size: 8, .. })
    ));
    assert!(!index.has_line_tables());
    assert!(matches!(
        index.resolve("x.rs:3", ResolveOptions::default()),
        Err(SymbolError::NoLineTables { .. })
    ));
}

#[test]
fn bad_files_are_errors() {
    assert_eq!(
        SymbolIndex::from_bytes(
            b"this text is long enough to hold a file header, but it is no ELF"
        )
        .unwrap_err()
        .to_string(),
        "`<memory>` is not a usable ELF file: Unknown file magic"
    );
    let e = SymbolIndex::from_path("/nonexistent/kernel").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read `/nonexistent/kernel`: "),
        "{e}"
    );
}
