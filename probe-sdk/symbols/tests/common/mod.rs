//! Builds the fixture binaries the tests index.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ktrace_symbols::SymbolIndex;

/// The fixture source.
pub fn fixture_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sample.rs")
}

/// Compile `tests/fixtures/sample.rs` with `rustc` under the test's temp
/// dir, once per scheme. `v0` selects `-C symbol-mangling-version=v0`;
/// otherwise stable rustc's default, legacy.
pub fn build_fixture(v0: bool) -> PathBuf {
    let name = if v0 { "sample-v0" } else { "sample-legacy" };
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--edition",
        "2021",
        "--crate-name",
        "fixture",
        "-C",
        "opt-level=2",
    ])
    .args([
        "-C",
        "debuginfo=line-tables-only",
        "-C",
        "force-frame-pointers=yes",
    ])
    // As the project's own builds do: names relative to the crate, and
    // no path of the build machine in the DWARF (the compilation
    // directory becomes empty, the files `tests/fixtures/...`).
    .arg(format!(
        "--remap-path-prefix={}=",
        env!("CARGO_MANIFEST_DIR")
    ))
    .arg(format!(
        "--remap-path-prefix={}/=",
        env!("CARGO_MANIFEST_DIR")
    ))
    .arg("-o")
    .arg(&out)
    .arg(fixture_source());
    if v0 {
        cmd.args(["-C", "symbol-mangling-version=v0"]);
    }
    let status = cmd.status().expect("run rustc");
    assert!(status.success(), "rustc failed to build the {name} fixture");
    out
}

/// The v0 fixture, indexed once.
pub fn v0() -> &'static SymbolIndex {
    static INDEX: OnceLock<SymbolIndex> = OnceLock::new();
    INDEX.get_or_init(|| SymbolIndex::from_path(build_fixture(true)).expect("index v0 fixture"))
}

/// The legacy fixture, indexed once.
pub fn legacy() -> &'static SymbolIndex {
    static INDEX: OnceLock<SymbolIndex> = OnceLock::new();
    INDEX
        .get_or_init(|| SymbolIndex::from_path(build_fixture(false)).expect("index legacy fixture"))
}

/// Line number (1-based) of the first line of the fixture containing `needle`.
pub fn fixture_line(needle: &str) -> u32 {
    let src = std::fs::read_to_string(fixture_source()).expect("read fixture");
    src.lines()
        .position(|l| l.contains(needle))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("fixture has no line containing {needle:?}"))
}
