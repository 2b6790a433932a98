//! `ktrace build`: compile a Rust probe crate into an eBPF ELF object.
//!
//! The pipeline needs only stable Rust and LLVM's `llc`:
//!
//! 1. **Toolchain.** `rustc -vV` names the LLVM that produces the bitcode;
//!    `llc-<major>` must be the same major version (bitcode is not
//!    compatible across majors). A missing or mismatched `llc` is reported
//!    before anything is compiled.
//! 2. **Bitcode.** `cargo rustc --release --crate-type cdylib` with the probe
//!    profile forced through `--config` (`panic = "abort"`, fat LTO, one
//!    codegen unit, no overflow checks, line tables for source lines) and
//!    `--emit=llvm-bc`: one module holding the probe and everything it uses.
//!    `--cfg ktrace_bpf` switches on `ktrace-probe`'s panic handler. Cargo's
//!    and rustc's messages go straight to the user's terminal.
//! 3. **Object.** `llc-<major> -march=bpfel -mcpu=v3 -filetype=obj`. Skipped
//!    when the bitcode, `llc` and its flags are unchanged since the last
//!    build and the object is still there, so a rebuild of an unchanged probe
//!    costs one cargo freshness check.
//!
//! [`build`] runs the steps and reports each on the `progress` callback.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Flags for `llc`: little-endian BPF, ISA v3 (32-bit jumps, atomics).
pub const LLC_FLAGS: &[&str] = &["-march=bpfel", "-mcpu=v3", "-filetype=obj"];

/// The profile a probe is compiled with, passed as `cargo --config` so a
/// probe crate's own manifest cannot get it wrong.
const PROFILE: &[&str] = &[
    "profile.release.panic=\"abort\"",
    "profile.release.lto=\"fat\"",
    "profile.release.codegen-units=1",
    "profile.release.overflow-checks=false",
    // Full debug information: line tables for verifier messages, and the
    // types of map keys, values and records for typed printing. It does not
    // change the generated code.
    "profile.release.debug=\"full\"",
    "profile.release.opt-level=3",
    "profile.release.incremental=false",
];

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The probe crate (the directory holding its `Cargo.toml`).
    pub crate_dir: PathBuf,
    /// Where `<name>.bpf.o` goes. Default: the current directory.
    pub out_dir: Option<PathBuf>,
    /// Cargo's target directory. Default: `<crate_dir>/target`.
    pub target_dir: Option<PathBuf>,
    /// Directories searched for `llc-NN`. Default: `PATH`.
    pub search_path: Option<OsString>,
    /// `cargo` to run. Default: `$CARGO`, else `cargo`.
    pub cargo: Option<PathBuf>,
    /// `rustc` whose LLVM version counts. Default: `$RUSTC`, else `rustc`.
    pub rustc: Option<PathBuf>,
    /// Pass `--quiet` to cargo (its errors and rustc's still show).
    pub quiet: bool,
}

impl BuildOptions {
    /// Defaults for a crate directory.
    pub fn new(crate_dir: impl Into<PathBuf>) -> Self {
        Self {
            crate_dir: crate_dir.into(),
            out_dir: None,
            target_dir: None,
            search_path: None,
            cargo: None,
            rustc: None,
            quiet: false,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    /// The package name.
    pub package: String,
    /// The eBPF object.
    pub object: PathBuf,
    /// The bitcode it was made from.
    pub bitcode: PathBuf,
    /// `true` when `llc` was skipped because nothing changed.
    pub llc_skipped: bool,
    /// The `llc` that was (or would have been) run.
    pub llc: PathBuf,
    /// rustc's LLVM version (`22.1.2`).
    pub llvm_version: String,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The crate directory has no `Cargo.toml`.
    #[error("{dir}: not a probe crate (no Cargo.toml)")]
    NotACrate { dir: PathBuf },
    /// `cargo metadata` failed or said something unexpected.
    #[error("reading the manifest of {dir}: {message}")]
    Manifest { dir: PathBuf, message: String },
    /// The package has no library target.
    #[error(
        "package `{package}` has no library target; a probe crate is a library (src/lib.rs) compiled as a cdylib"
    )]
    NoLibrary { package: String },
    /// A tool could not be run at all.
    #[error("could not run `{tool}`: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// `rustc -vV` did not name an LLVM version.
    #[error("`{rustc} -vV` did not report an LLVM version (output: {output:?})")]
    RustcVersion { rustc: String, output: String },
    /// No `llc-NN` on the search path.
    #[error(
        "`{llc}` was not found on PATH: rustc {rustc_version} emits LLVM {llvm_major} bitcode, which needs llc from LLVM {llvm_major}; on Debian it is in the package `llvm-{llvm_major}` (apt-get install llvm-{llvm_major})"
    )]
    LlcMissing {
        llc: String,
        llvm_major: u32,
        rustc_version: String,
    },
    /// `llc-NN` exists but belongs to another LLVM.
    #[error(
        "{llc} is LLVM {llc_version}, but rustc {rustc_version} uses LLVM {rustc_llvm}; their majors must match (bitcode does not cross LLVM majors). Install the Debian package `llvm-{rustc_major}` or put the right llc-{rustc_major} first on PATH"
    )]
    LlcMismatch {
        llc: String,
        llc_version: String,
        rustc_version: String,
        rustc_llvm: String,
        rustc_major: u32,
    },
    /// Compilation failed; rustc's messages were already printed.
    #[error("compiling {package} failed ({status}); the compiler's messages are above")]
    Compile { package: String, status: String },
    /// rustc succeeded but left no bitcode.
    #[error("rustc left no bitcode at {path}")]
    NoBitcode { path: PathBuf },
    /// `llc` failed.
    #[error("{llc} failed ({status}) on {bitcode}:\n{stderr}")]
    Llc {
        llc: String,
        status: String,
        bitcode: PathBuf,
        stderr: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The LLVM `rustc` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// `1.95.0`
    pub rustc_version: String,
    /// `22.1.2`
    pub llvm_version: String,
    /// `22`
    pub llvm_major: u32,
}

/// Ask `rustc -vV` for its version and LLVM version.
pub fn rustc_toolchain(rustc: &Path) -> Result<Toolchain, BuildError> {
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: rustc.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let bad = || BuildError::RustcVersion {
        rustc: rustc.display().to_string(),
        output: text.clone(),
    };
    let llvm_version = field("LLVM version:").ok_or_else(bad)?;
    let llvm_major = major(&llvm_version).ok_or_else(bad)?;
    let rustc_version = field("release:").unwrap_or_else(|| "(unknown)".into());
    Ok(Toolchain {
        rustc_version,
        llvm_version,
        llvm_major,
    })
}

fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.trim().parse().ok()
}

/// The LLVM version an `llc --version` prints (`LLVM version 22.1.8`, with
/// or without a vendor prefix).
pub fn parse_llc_version(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (_, rest) = l.split_once("LLVM version")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// Find `name` as an executable file in the directories of `path`.
fn find_in_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Find `llc-<major>` on `search_path` and check it is that LLVM.
pub fn find_llc(toolchain: &Toolchain, search_path: &OsStr) -> Result<PathBuf, BuildError> {
    let name = format!("llc-{}", toolchain.llvm_major);
    let llc = find_in_path(&name, search_path).ok_or_else(|| BuildError::LlcMissing {
        llc: name.clone(),
        llvm_major: toolchain.llvm_major,
        rustc_version: toolchain.rustc_version.clone(),
    })?;
    let out = Command::new(&llc)
        .arg("--version")
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: llc.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_llc_version(&text).unwrap_or_else(|| "(no version printed)".into());
    if major(&version) != Some(toolchain.llvm_major) {
        return Err(BuildError::LlcMismatch {
            llc: llc.display().to_string(),
            llc_version: version,
            rustc_version: toolchain.rustc_version.clone(),
            rustc_llvm: toolchain.llvm_version.clone(),
            rustc_major: toolchain.llvm_major,
        });
    }
    Ok(llc)
}

/// Package name and library crate name of the crate in `dir`.
fn read_manifest(cargo: &Path, dir: &Path) -> Result<(String, String), BuildError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate {
            dir: dir.to_path_buf(),
        });
    }
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: cargo.display().to_string(),
            source,
        })?;
    let fail = |message: String| BuildError::Manifest {
        dir: dir.to_path_buf(),
        message,
    };
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("cargo metadata output: {e}")))?;
    let canonical = manifest.canonicalize().unwrap_or(manifest.clone());
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let pkg = packages
        .iter()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .map(|m| Path::new(m) == canonical)
                .unwrap_or(false)
        })
        .or(packages.first())
        .ok_or_else(|| fail("no package in the manifest (a virtual workspace?)".into()))?;
    let package = pkg["name"].as_str().unwrap_or_default().to_string();
    let lib = pkg["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["kind"]
                .as_array()
                .map(|k| k.iter().any(|k| k == "lib" || k == "cdylib" || k == "rlib"))
                .unwrap_or(false)
        })
        .ok_or_else(|| BuildError::NoLibrary {
            package: package.clone(),
        })?;
    let crate_name = lib["name"].as_str().unwrap_or(&package).replace('-', "_");
    Ok((package, crate_name))
}

/// A 64-bit FNV-1a digest; enough to notice changed bitcode.
fn digest(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Build the probe crate and report each step on `progress`.
pub fn build(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildOutput, BuildError> {
    let cargo = opts
        .cargo
        .clone()
        .or_else(|| std::env::var_os("CARGO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let rustc = opts
        .rustc
        .clone()
        .or_else(|| std::env::var_os("RUSTC").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("rustc"));
    let search_path = opts
        .search_path
        .clone()
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();

    // 1. Toolchain, before compiling anything.
    let toolchain = rustc_toolchain(&rustc)?;
    let llc = find_llc(&toolchain, &search_path)?;
    progress(&format!(
        "[1/3] toolchain: rustc {} (LLVM {}), {}",
        toolchain.rustc_version,
        toolchain.llvm_version,
        llc.display()
    ));

    // 2. Bitcode.
    let (package, crate_name) = read_manifest(&cargo, &opts.crate_dir)?;
    let target_dir = opts
        .target_dir
        .clone()
        .unwrap_or_else(|| opts.crate_dir.join("target"));
    let work = target_dir.join("ktrace-bpf");
    std::fs::create_dir_all(&work).map_err(|source| BuildError::Io {
        what: "creating",
        path: work.clone(),
        source,
    })?;
    let work = work.canonicalize().unwrap_or(work);
    let bitcode = work.join(format!("{crate_name}.bc"));
    progress(&format!(
        "[2/3] compiling {package} to LLVM bitcode (cargo rustc --release, fat LTO)"
    ));
    run_cargo(&cargo, opts, &target_dir, &bitcode, &package)?;
    if !bitcode.is_file() {
        // Cargo thinks the crate is fresh but the bitcode was removed: force
        // the last step to run again.
        let status = Command::new(&cargo)
            .args([
                "clean",
                "--release",
                "-q",
                "-p",
                &package,
                "--manifest-path",
            ])
            .arg(opts.crate_dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .map_err(|source| BuildError::Spawn {
                tool: cargo.display().to_string(),
                source,
            })?;
        if status.success() {
            run_cargo(&cargo, opts, &target_dir, &bitcode, &package)?;
        }
    }
    let bc = std::fs::read(&bitcode).map_err(|_| BuildError::NoBitcode {
        path: bitcode.clone(),
    })?;

    // 3. Object, unless nothing changed.
    let out_dir = opts.out_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir).map_err(|source| BuildError::Io {
        what: "creating",
        path: out_dir.clone(),
        source,
    })?;
    let object = out_dir.join(format!("{package}.bpf.o"));
    let stamp_path = work.join(format!("{crate_name}.stamp"));
    let llc_id = llc.as_os_str().as_encoded_bytes();
    let stamp = format!(
        "{:016x}",
        digest(&[
            &bc,
            llc_id,
            LLC_FLAGS.join(" ").as_bytes(),
            object.as_os_str().as_encoded_bytes()
        ])
    );
    let fresh = object.is_file()
        && std::fs::read_to_string(&stamp_path)
            .map(|s| s.trim() == stamp)
            .unwrap_or(false);
    if fresh {
        progress(&format!(
            "[3/3] bitcode unchanged, {} is up to date",
            object.display()
        ));
    } else {
        progress(&format!(
            "[3/3] {} {} -> {}",
            llc.display(),
            LLC_FLAGS.join(" "),
            object.display()
        ));
        let out = Command::new(&llc)
            .args(LLC_FLAGS)
            .arg(&bitcode)
            .arg("-o")
            .arg(&object)
            .output()
            .map_err(|source| BuildError::Spawn {
                tool: llc.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&stamp_path);
            return Err(BuildError::Llc {
                llc: llc.display().to_string(),
                status: out.status.to_string(),
                bitcode,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        // llc's warnings are worth seeing, but are not fatal.
        if !out.stderr.is_empty() {
            let _ = std::io::stderr().write_all(&out.stderr);
        }
        std::fs::write(&stamp_path, &stamp).map_err(|source| BuildError::Io {
            what: "writing",
            path: stamp_path.clone(),
            source,
        })?;
    }
    Ok(BuildOutput {
        package,
        object,
        bitcode,
        llc_skipped: fresh,
        llc,
        llvm_version: toolchain.llvm_version,
    })
}

/// Run `cargo rustc` for the bitcode (cargo's freshness check may skip
/// rustc, leaving the previous bitcode in place).
fn run_cargo(
    cargo: &Path,
    opts: &BuildOptions,
    target_dir: &Path,
    bitcode: &Path,
    package: &str,
) -> Result<(), BuildError> {
    let mut cmd = Command::new(cargo);
    cmd.arg("rustc")
        .arg("--manifest-path")
        .arg(opts.crate_dir.join("Cargo.toml"))
        .args(["--release", "--lib", "--crate-type", "cdylib"])
        .args(opts.quiet.then_some("--quiet"))
        .arg("--target-dir")
        .arg(target_dir);
    for setting in PROFILE {
        cmd.args(["--config", setting]);
    }
    cmd.arg("--")
        .arg(format!("--emit=llvm-bc={}", bitcode.display()))
        // The encoded form replaces RUSTFLAGS and any `build.rustflags` of
        // an enclosing `.cargo/config.toml` (frame-pointer or target-cpu
        // flags meant for the kernel would leak into BPF code otherwise).
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg\x1fktrace_bpf")
        .env_remove("RUSTFLAGS");
    let status = cmd.status().map_err(|source| BuildError::Spawn {
        tool: cargo.display().to_string(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Compile {
            package: package.to_string(),
            status: status.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llc_versions_parse_with_and_without_vendor() {
        let debian = "Debian LLVM version 22.1.8\n  Optimized build.\n";
        assert_eq!(parse_llc_version(debian).as_deref(), Some("22.1.8"));
        let plain = "LLVM (http://llvm.org/):\n  LLVM version 21.1.0\n";
        assert_eq!(parse_llc_version(plain).as_deref(), Some("21.1.0"));
        assert_eq!(parse_llc_version("nothing here"), None);
    }

    #[test]
    fn digest_notices_any_change() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
        assert_eq!(digest(&[b"x"]), digest(&[b"x"]));
    }
}
