//! Shared by the build, object, check and types tests: build probe crates (the
//! examples and fixtures) once into the test target directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use probe_sdk::build::{build, BuildOptions, BuildOutput};
use probe_sdk::object::{parse, Object};

/// Builds in one test binary share a target and output directory; one at a
/// time keeps them from racing on the same object file.
static LOCK: Mutex<()> = Mutex::new(());

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where probe crates are built.
pub fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("probe-crates")
}

/// An example crate's directory.
pub fn example(name: &str) -> PathBuf {
    repo().join("examples").join(name)
}

/// A fixture crate's directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Build options for a crate, with outputs under the test target dir.
pub fn options(dir: &Path) -> BuildOptions {
    let mut opts = BuildOptions::new(dir);
    opts.target_dir = Some(work_dir().join("target"));
    opts.out_dir = Some(work_dir().join("objects"));
    opts
}

/// Build a crate, printing progress, and return the output.
pub fn build_crate(dir: &Path) -> BuildOutput {
    build_with(&options(dir))
}

/// Build with explicit options.
pub fn build_with(opts: &BuildOptions) -> BuildOutput {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    build(opts, &mut |l| eprintln!("{l}"))
        .unwrap_or_else(|e| panic!("building {}: {e}", opts.crate_dir.display()))
}

/// Build a crate and parse its object.
pub fn built_object(dir: &Path) -> (BuildOutput, Object) {
    let out = build_crate(dir);
    let bytes = std::fs::read(&out.object).unwrap();
    let obj = parse(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", out.object.display()));
    (out, obj)
}

/// The instructions of a program as (opcode, dst, src, off, imm) tuples.
pub fn decode(insns: &[u8]) -> Vec<(u8, u8, u8, i16, i32)> {
    insns
        .chunks_exact(8)
        .map(|c| {
            (
                c[0],
                c[1] & 0x0f,
                c[1] >> 4,
                i16::from_le_bytes([c[2], c[3]]),
                i32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect()
}

/// Line number of the first line of `file` containing `marker`.
pub fn line_of(file: &Path, marker: &str) -> u32 {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker} not in {}", file.display())) as u32
        + 1
}

/// Writes a throwaway probe crate whose `src/lib.rs` is `body`.
pub fn scratch_crate(name: &str, body: &str) -> PathBuf {
    let dir = work_dir().join("scratch").join(name);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let probe = repo().join("probe-sdk/ebpf");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\npath = \"src/lib.rs\"\n\n[dependencies]\nktrace-probe = {{ path = {:?} }}\n\n[workspace]\n",
            probe.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), body).unwrap();
    dir
}
