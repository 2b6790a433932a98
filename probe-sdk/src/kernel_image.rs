//! The kernel image QEMU boots: build it, then embed its symbol table.
//!
//! The kernel symbolizes its own backtraces and samples from a table of its
//! functions. That table can only be computed after linking, so the kernel
//! reserves a fixed-size static, `KTRACE_KSYMS` ([`ksyms::RESERVED_BYTES`]
//! bytes in section `.ksyms`, starting with [`ksyms::EMPTY_MAGIC`]), and this
//! module fills it in a copy of the linked ELF (`<elf>.ktrace`). Because the
//! reserved size is fixed, filling it moves no address: the table describes
//! the very image it lives in, with no second link.
//!
//! [`prepare`] is what `ktrace vm start` calls, and [`prepare_flavor`]
//! with [`Flavor::SelfTests`] what the tests call: use `KTRACE_KERNEL=<elf>`
//! if set, else build the workspace's kernel with cargo, then embed the
//! table if the ELF changed since the last time.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use ktrace_abi::ksyms::{self, KsymEntry};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

/// Environment variable naming a prebuilt kernel ELF (skips the build).
pub const KERNEL_ENV: &str = "KTRACE_KERNEL";
/// Environment variable that asks [`prepare`] for the fuzzing build of the
/// kernel (`1`): [`Flavor::Coverage`].
pub const COVERAGE_ENV: &str = "KTRACE_COVERAGE";
/// The target the coverage build names explicitly, so its rustflags reach
/// the kernel's crates but not the build scripts and proc macros (host
/// programs that have no coverage callbacks to link against).
const COVERAGE_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The sancov pass in trace-pc-guard mode, edge level: every edge calls
/// `__sanitizer_cov_trace_pc_guard` (the prebuilt `core` and `alloc` stay
/// uninstrumented).
const COVERAGE_RUSTFLAGS: &str = "build.rustflags=['-Cpasses=sancov-module', '-Cllvm-args=-sanitizer-coverage-level=3', '-Cllvm-args=-sanitizer-coverage-trace-pc-guard']";

/// Cargo profile the kernel is built with.
pub const KERNEL_PROFILE: &str = "kernel";
/// Cargo profile of the kernel with its self tests (its own directory).
pub const SELF_TESTS_PROFILE: &str = "kernel-self-tests";

/// Which kernel to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// The kernel users boot.
    Release,
    /// The kernel the end-to-end tests boot: the same, plus the in-kernel
    /// self tests and the functions the tests probe (the kernel's
    /// `self-tests` feature), built in its own profile directory so it never
    /// overwrites the release one.
    SelfTests,
    /// The fuzzing build: the release kernel instrumented with edge
    /// coverage per control session (the `coverage` feature and LLVM's
    /// sancov pass), built in a target directory of its own
    /// (`kernel-cov`) so it never replaces the others, which carry no
    /// instrumentation.
    Coverage,
}

impl Flavor {
    /// The cargo profile the flavor is built with.
    pub fn profile(self) -> &'static str {
        match self {
            Flavor::Release | Flavor::Coverage => KERNEL_PROFILE,
            Flavor::SelfTests => SELF_TESTS_PROFILE,
        }
    }

    /// The kernel's cargo features for the flavor.
    fn features(self) -> &'static [&'static str] {
        match self {
            Flavor::Release => &[],
            Flavor::SelfTests => &["--features", "self-tests"],
            Flavor::Coverage => &["--features", "coverage"],
        }
    }
}
/// Cargo package of the kernel.
pub const KERNEL_PACKAGE: &str = "ktrace-kernel";
/// The kernel's manifest, relative to the repository root. The kernel is a
/// workspace of its own so host crates' `std` features never reach it.
pub const KERNEL_MANIFEST: &str = "kernel/image/Cargo.toml";
/// The directory of [`KERNEL_MANIFEST`]: the kernel crate's compilation
/// directory.
const KERNEL_DIR: &str = "kernel/image";
/// Suffix of the copy that carries the symbol table.
pub const IMAGE_SUFFIX: &str = "ktrace";

/// Errors while building or post-processing the kernel image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot run cargo to build the kernel: {0}")]
    CargoSpawn(#[source] io::Error),
    #[error("building the kernel failed (cargo build --profile {profile} -p {KERNEL_PACKAGE} exited with {status}); see the compiler output above")]
    BuildFailed {
        profile: &'static str,
        status: std::process::ExitStatus,
    },
    #[error("cargo built {KERNEL_PACKAGE} but reported no executable")]
    NoExecutable,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not an ELF file the symbol table can be embedded in: {reason}", path.display())]
    BadElf { path: PathBuf, reason: String },
    #[error("{}: no symbol {} (the kernel must reserve the symbol table: a static of {} bytes in section .ksyms)", path.display(), ksyms::SYMBOL_NAME, ksyms::RESERVED_BYTES)]
    NoTableSymbol { path: PathBuf },
    #[error("{}: symbol {} is {what}", path.display(), ksyms::SYMBOL_NAME)]
    BadTableSymbol { path: PathBuf, what: String },
    #[error("{}: the symbol table of {count} functions needs {needed} bytes, more than the {reserved} reserved", path.display())]
    TableTooBig {
        path: PathBuf,
        count: usize,
        needed: usize,
        reserved: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A kernel image ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// The ELF cargo produced (or `KTRACE_KERNEL` named), left untouched.
    pub source: PathBuf,
    /// The copy with the symbol table filled in: boot this one.
    pub image: PathBuf,
    /// Functions in the embedded table.
    pub symbols: usize,
    /// False if the copy was already up to date.
    pub rewritten: bool,
}

/// The workspace root, found from this crate's location at compile time.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A `--config` value that adds `--remap-path-prefix` flags to the
/// rustflags of `.cargo/config.toml` (cargo joins the arrays).
///
/// The kernel's path dependencies (`bpf-vm`, `kernel/block`, ...) are not
/// members of its workspace, so cargo compiles them from their own
/// directory: their compilation directory is absolute and their files are
/// `src/...` under it. Remapping `<root>/` to nothing makes that directory
/// `bpf-vm`, and the kernel's own (`<root>/kernel/image`, whose files
/// `.cargo/config.toml` already maps to `kernel/src/...`) empty. Registry
/// crates become `index.crates.io-<hash>/<crate>-<version>/src/...`.
/// Backtraces, `ktrace symbols` and `file:line` queries then read
/// repository-relative paths (`bpf-vm/src/interp/mod.rs`) and never the
/// build machine's. `scripts/test.sh` passes the same value, so both builds
/// share one fingerprint.
pub fn remap_root_flag(root: &Path) -> String {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let root = canonical(root);
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| canonical(&p));
    // TOML literal strings: no escapes are processed inside. rustc applies
    // the last matching prefix.
    let mut flags = format!(
        "'--remap-path-prefix={r}/=', '--remap-path-prefix={r}/{KERNEL_DIR}='",
        r = root.display()
    );
    if let Some(home) = cargo_home {
        flags.push_str(&format!(
            ", '--remap-path-prefix={}/registry/src/='",
            home.display()
        ));
    }
    format!("build.rustflags=[{flags}]")
}

/// Where the kernel build's target directory lives: `kernel` in cargo's
/// target directory, `$CARGO_TARGET_DIR` when set (relative to the
/// current directory, as cargo takes it), else `<root>/target`.
pub fn kernel_target_dir(root: &Path) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            match std::env::current_dir() {
                Ok(cwd) if dir.is_relative() => cwd.join(dir),
                _ => dir,
            }
        }
        _ => root.join("target"),
    };
    target.join("kernel")
}

/// The kernel ELF that [`build_kernel`] leaves in `root`'s build:
/// `<kernel target dir>/kernel/kernel` (the `kernel` profile's directory).
pub fn kernel_elf_path(root: &Path) -> PathBuf {
    kernel_target_dir(root).join(KERNEL_PROFILE).join("kernel")
}

/// Find or build the release kernel (the coverage build when
/// `KTRACE_COVERAGE=1`), then embed its symbol table.
///
/// `quiet` hides cargo's progress lines (compiler errors are always shown).
pub fn prepare(quiet: bool) -> Result<KernelImage, ImageError> {
    let coverage = std::env::var_os(COVERAGE_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    prepare_flavor(
        if coverage {
            Flavor::Coverage
        } else {
            Flavor::Release
        },
        quiet,
    )
}

/// Find (`KTRACE_KERNEL`, which names a prebuilt kernel and so does not
/// apply to the coverage build) or build the kernel of `flavor`, then
/// embed its symbol table.
pub fn prepare_flavor(flavor: Flavor, quiet: bool) -> Result<KernelImage, ImageError> {
    let source = match std::env::var_os(KERNEL_ENV) {
        Some(path) if !path.is_empty() && flavor != Flavor::Coverage => PathBuf::from(path),
        _ => build_flavor(&workspace_root(), flavor, quiet)?,
    };
    embed_if_changed(&source)
}

/// `cargo build --manifest-path kernel/image/Cargo.toml --profile kernel`
/// in `root` (the kernel is a workspace of its own); returns the ELF path.
pub fn build_kernel(root: &Path, quiet: bool) -> Result<PathBuf, ImageError> {
    build_flavor(root, Flavor::Release, quiet)
}

/// [`build_kernel`] for any flavor.
pub fn build_flavor(root: &Path, flavor: Flavor, quiet: bool) -> Result<PathBuf, ImageError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    let mut target_dir = kernel_target_dir(root);
    cmd.current_dir(root)
        .args([
            "build",
            "--manifest-path",
            KERNEL_MANIFEST,
            "--profile",
            flavor.profile(),
        ])
        .args(flavor.features());
    if flavor == Flavor::Coverage {
        target_dir.set_file_name("kernel-cov");
        cmd.args(["--target", COVERAGE_TARGET])
            .arg("--config")
            .arg(COVERAGE_RUSTFLAGS);
    }
    cmd.arg("--target-dir")
        .arg(target_dir)
        .arg("--config")
        .arg(remap_root_flag(root))
        .stdout(Stdio::piped());
    if quiet {
        // Cargo replays the kernel's warnings on every build; in quiet
        // mode only errors are shown (rendered from the JSON below).
        cmd.args(["--quiet", "--message-format=json"]);
    } else {
        cmd.arg("--message-format=json-render-diagnostics");
    }
    // A cargo that runs us (tests, `cargo run`) exports variables meant for
    // its own build; the kernel build must not inherit them.
    for var in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().map_err(ImageError::CargoSpawn)?;
    let mut executable = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(ImageError::CargoSpawn)?;
            if let Some(path) = executable_of(&line) {
                executable = Some(path);
            } else if let Some(rendered) = rendered_error(&line) {
                eprint!("{rendered}");
            }
        }
    }
    let status = child.wait().map_err(ImageError::CargoSpawn)?;
    if !status.success() {
        return Err(ImageError::BuildFailed {
            profile: flavor.profile(),
            status,
        });
    }
    executable.ok_or(ImageError::NoExecutable)
}

/// The `executable` of a cargo `compiler-artifact` message for the kernel.
fn executable_of(line: &str) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Target {
        kind: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        reason: String,
        package_id: Option<String>,
        target: Option<Target>,
        executable: Option<PathBuf>,
    }
    // Lines are small JSON objects; parse only the ones that can matter.
    if !line.contains("\"compiler-artifact\"") || !line.contains("\"executable\":\"") {
        return None;
    }
    let msg: Message = serde_json::from_str(line).ok()?;
    let is_kernel = msg
        .package_id
        .as_deref()
        .is_some_and(|id| id.contains(KERNEL_PACKAGE));
    let is_bin = msg
        .target
        .is_some_and(|t| t.kind.iter().any(|k| k == "bin"));
    (msg.reason == "compiler-artifact" && is_kernel && is_bin)
        .then_some(msg.executable)
        .flatten()
}

/// The rendered text of a cargo `compiler-message` of level error.
fn rendered_error(line: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Diagnostic {
        level: String,
        rendered: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        reason: String,
        message: Option<Diagnostic>,
    }
    if !line.contains("\"compiler-message\"") {
        return None;
    }
    let msg: Message = serde_json::from_str(line).ok()?;
    let diag = msg.message?;
    (msg.reason == "compiler-message" && diag.level.starts_with("error"))
        .then_some(diag.rendered)
        .flatten()
}

/// Embed the symbol table into `<source>.ktrace` unless that copy is
/// already current (a stamp records the size and mtime of the source).
pub fn embed_if_changed(source: &Path) -> Result<KernelImage, ImageError> {
    let meta = fs::metadata(source).map_err(io_err(source))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stamp_text = format!("{} {}\n", meta.len(), mtime);
    let image = image_path(source);
    let stamp = image.with_extension(format!("{IMAGE_SUFFIX}.stamp"));
    if image.exists() {
        if let Ok(old) = fs::read_to_string(&stamp) {
            if let Some(count) = old.strip_prefix(stamp_text.as_str()) {
                if let Ok(symbols) = count.trim().parse() {
                    return Ok(KernelImage {
                        source: source.to_path_buf(),
                        image,
                        symbols,
                        rewritten: false,
                    });
                }
            }
        }
    }
    let mut bytes = fs::read(source).map_err(io_err(source))?;
    let symbols = embed_symbols(source, &mut bytes)?;
    // Write a temporary file and rename it, so a concurrent boot never sees
    // a half-written image.
    let tmp = image.with_extension(format!("{IMAGE_SUFFIX}.tmp{}", std::process::id()));
    fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &image).map_err(io_err(&image))?;
    let stamp_tmp = stamp.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&stamp_tmp, format!("{stamp_text}{symbols}\n")).map_err(io_err(&stamp_tmp))?;
    fs::rename(&stamp_tmp, &stamp).map_err(io_err(&stamp))?;
    Ok(KernelImage {
        source: source.to_path_buf(),
        image,
        symbols,
        rewritten: true,
    })
}

/// `<source>.ktrace`.
pub fn image_path(source: &Path) -> PathBuf {
    let mut name = source.as_os_str().to_os_string();
    name.push(".");
    name.push(IMAGE_SUFFIX);
    PathBuf::from(name)
}

/// One function of the kernel, demangled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub addr: u64,
    pub size: u32,
    /// Demangled path without the hash, e.g. `kernel::debug::forced_panic`.
    pub name: String,
}

/// Every sized function symbol in an executable section, demangled.
pub fn functions(path: &Path, elf: &[u8]) -> Result<Vec<Function>, ImageError> {
    let file = object::File::parse(elf).map_err(|e| ImageError::BadElf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let in_text = file
            .section_by_index(index)
            .is_ok_and(|s| s.kind() == SectionKind::Text);
        let Ok(raw) = sym.name() else { continue };
        if !in_text || raw.is_empty() {
            continue;
        }
        let Ok(size) = u32::try_from(sym.size()) else {
            continue;
        };
        out.push(Function {
            addr: sym.address(),
            size,
            name: format!("{:#}", rustc_demangle::demangle(raw)),
        });
    }
    Ok(out)
}

/// Fill the reserved table of the ELF held in `elf`; returns the number of
/// functions. `path` only names the file in errors.
pub fn embed_symbols(path: &Path, elf: &mut [u8]) -> Result<usize, ImageError> {
    let funcs = functions(path, elf)?;
    let (offset, size) = table_location(path, elf)?;
    let mut entries: Vec<KsymEntry<'_>> = funcs
        .iter()
        .map(|f| KsymEntry {
            addr: f.addr,
            size: f.size,
            name: &f.name,
        })
        .collect();
    let needed = 16 + funcs.len() * 16 + funcs.iter().map(|f| f.name.len()).sum::<usize>();
    let table = ksyms::encode(&mut entries)
        .filter(|t| t.len() <= size)
        .ok_or_else(|| ImageError::TableTooBig {
            path: path.to_path_buf(),
            count: funcs.len(),
            needed,
            reserved: size,
        })?;
    let slot = &mut elf[offset..offset + size];
    slot.fill(0);
    slot[..table.len()].copy_from_slice(&table);
    Ok(funcs.len())
}

/// The bytes of the `KTRACE_KSYMS` static in an ELF image: the filled
/// table (parse it with `ksyms::KsymTable::parse`) or the empty reservation.
pub fn table_bytes<'a>(path: &Path, elf: &'a [u8]) -> Result<&'a [u8], ImageError> {
    let (offset, size) = table_location(path, elf)?;
    Ok(&elf[offset..offset + size])
}

/// File offset and size of the `KTRACE_KSYMS` static.
fn table_location(path: &Path, elf: &[u8]) -> Result<(usize, usize), ImageError> {
    let file = object::File::parse(elf).map_err(|e| ImageError::BadElf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bad = |what: String| ImageError::BadTableSymbol {
        path: path.to_path_buf(),
        what,
    };
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(ksyms::SYMBOL_NAME))
        .ok_or_else(|| ImageError::NoTableSymbol {
            path: path.to_path_buf(),
        })?;
    let size = usize::try_from(sym.size()).map_err(|_| bad("too large".into()))?;
    if size < ksyms::RESERVED_BYTES {
        return Err(bad(format!(
            "{size} bytes, smaller than the {} the format reserves",
            ksyms::RESERVED_BYTES
        )));
    }
    let index = sym
        .section_index()
        .ok_or_else(|| bad("not defined in a section".into()))?;
    let section = file
        .section_by_index(index)
        .map_err(|e| bad(format!("in an unreadable section: {e}")))?;
    let (file_off, file_size) = section.file_range().ok_or_else(|| {
        bad("in a section with no file contents (.bss?); give it non-zero initial bytes".into())
    })?;
    let rel = sym
        .address()
        .checked_sub(section.address())
        .filter(|&r| r + sym.size() <= file_size)
        .ok_or_else(|| bad("outside its section".into()))?;
    let offset =
        usize::try_from(file_off + rel).map_err(|_| bad("at an impossible offset".into()))?;
    let magic = elf
        .get(offset..offset + 4)
        .ok_or_else(|| bad("past the end of the file".into()))?;
    if magic != ksyms::EMPTY_MAGIC && magic != ksyms::MAGIC {
        return Err(bad(format!(
            "not a reserved table (starts with {magic:02x?}, expected {:?})",
            std::str::from_utf8(&ksyms::EMPTY_MAGIC).unwrap_or("KSY0")
        )));
    }
    Ok((offset, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_artifact_lines_name_the_kernel_executable() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/kernel#ktrace-kernel@0.1.0","manifest_path":"/w/kernel/Cargo.toml","target":{"kind":["bin"],"crate_types":["bin"],"name":"kernel","src_path":"/w/kernel/src/main.rs","edition":"2021","doc":true,"doctest":false,"test":false},"profile":{},"features":[],"filenames":["/w/target/kernel/kernel/kernel"],"executable":"/w/target/kernel/kernel/kernel","fresh":true}"#;
        assert_eq!(
            executable_of(line),
            Some(PathBuf::from("/w/target/kernel/kernel/kernel"))
        );
        let lib = line.replace(r#""kind":["bin"]"#, r#""kind":["lib"]"#);
        assert_eq!(executable_of(&lib), None);
        assert_eq!(
            executable_of(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }

    #[test]
    fn only_errors_are_rendered_in_quiet_mode() {
        let err = r#"{"reason":"compiler-message","package_id":"x","message":{"level":"error","rendered":"error[E0425]: boom\n"}}"#;
        let warn = err.replace(r#""level":"error""#, r#""level":"warning""#);
        assert_eq!(rendered_error(err).as_deref(), Some("error[E0425]: boom\n"));
        assert_eq!(rendered_error(&warn), None);
    }

    #[test]
    fn image_path_appends_the_suffix() {
        assert_eq!(
            image_path(Path::new("/a/b/kernel")),
            PathBuf::from("/a/b/kernel.ktrace")
        );
    }

    #[test]
    fn non_elf_input_is_refused_with_the_file_name() {
        let mut junk = b"not an elf at all".to_vec();
        let err = embed_symbols(Path::new("junk.bin"), &mut junk).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("junk.bin: not an ELF file the symbol table can be embedded in: "),
            "{err}"
        );
    }

    /// The post-link step on a real host executable: this test binary has
    /// function symbols but no reserved table.
    #[test]
    fn host_binary_has_functions_but_no_table() {
        let exe = std::env::current_exe().unwrap();
        let bytes = fs::read(&exe).unwrap();
        let funcs = functions(&exe, &bytes).unwrap();
        assert!(funcs.iter().any(|f| f
            .name
            .ends_with("kernel_image::tests::host_binary_has_functions_but_no_table")));
        // Demangled without the hash.
        assert!(funcs
            .iter()
            .all(|f| !f.name.contains("::h") || !f.name.ends_with('E')));
        let mut copy = bytes.clone();
        let err = embed_symbols(&exe, &mut copy).unwrap_err();
        assert!(matches!(err, ImageError::NoTableSymbol { .. }), "{err}");
    }
}
