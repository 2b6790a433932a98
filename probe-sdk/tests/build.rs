//! `ktrace build`: the examples compile to eBPF objects, a rebuild of an
//! unchanged crate skips llc, toolchain problems are reported before any
//! compiling, and compiler errors (including the probe macros' own) stop
//! the build.

mod build_support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use build_support::*;
use ktrace_abi::bpf::{AttachTarget, ProgramType};
use probe_sdk::build::{build, rustc_toolchain, BuildError};

fn names<T>(items: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|i| f(i).to_string()).collect();
    v.sort();
    v
}

#[test]
fn count_calls_builds_to_one_kprobe_and_two_maps() {
    let (out, obj) = built_object(&example("count-calls"));
    assert_eq!(out.package, "count-calls");
    assert_eq!(out.object.file_name().unwrap(), "count-calls.bpf.o");
    assert_eq!(obj.license, "GPL");
    assert_eq!(obj.programs.len(), 1);
    let p = &obj.programs[0];
    assert_eq!(p.name, "submit_bio");
    assert_eq!(
        p.section,
        "kprobe/kernel::block::queue::RequestQueue::submit_bio"
    );
    assert_eq!(p.prog_type, ProgramType::Kprobe);
    assert_eq!(
        p.attach,
        AttachTarget::Kprobe {
            spec: "kernel::block::queue::RequestQueue::submit_bio".into(),
            points: vec![]
        }
    );
    assert_eq!(names(&obj.maps, |m| &m.name), ["CALLS", "TOTAL"]);
}

#[test]
fn func_latency_builds_an_entry_and_a_return_probe() {
    let (_, obj) = built_object(&example("func-latency"));
    let mut progs: Vec<(String, ProgramType)> = obj
        .programs
        .iter()
        .map(|p| (p.name.clone(), p.prog_type))
        .collect();
    progs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        progs,
        [
            ("submit_bio_entry".to_string(), ProgramType::Kprobe),
            ("submit_bio_return".to_string(), ProgramType::Kretprobe)
        ]
    );
    let hist = obj.maps.iter().find(|m| m.name == "LATENCY_NS").unwrap();
    assert_eq!(
        (
            hist.map_type,
            hist.key_size,
            hist.value_size,
            hist.max_entries
        ),
        (2, 4, 8, 65)
    );
}

#[test]
fn biolatency_builds_three_tracepoints() {
    let (_, obj) = built_object(&example("biolatency"));
    let mut attach: Vec<AttachTarget> = obj.programs.iter().map(|p| p.attach.clone()).collect();
    attach.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(
        attach,
        [
            AttachTarget::Tracepoint {
                category: "block".into(),
                name: "block_rq_complete".into()
            },
            AttachTarget::Tracepoint {
                category: "block".into(),
                name: "block_rq_insert".into()
            },
            AttachTarget::Tracepoint {
                category: "block".into(),
                name: "block_rq_issue".into()
            },
        ]
    );
    // No global data: every map is one the probe declared.
    assert_eq!(
        names(&obj.maps, |m| &m.name),
        [
            "CONFIG",
            "EXTENSION",
            "ISSUED",
            "LATENCY_US",
            "LATENCY_US_BY_DISK",
            "LATENCY_US_BY_FLAGS"
        ]
    );
}

#[test]
fn stack_samples_builds_a_perf_event_program() {
    let (_, obj) = built_object(&example("stack-samples"));
    assert_eq!(obj.programs.len(), 1);
    assert_eq!(obj.programs[0].section, "perf_event");
    assert_eq!(obj.programs[0].attach, AttachTarget::PerfEvent);
    let stacks = obj.maps.iter().find(|m| m.name == "STACKS").unwrap();
    assert_eq!(
        (
            stacks.map_type,
            stacks.key_size,
            stacks.value_size,
            stacks.max_entries
        ),
        (7, 4, 127 * 8, 1024)
    );
    assert_eq!(names(&obj.maps, |m| &m.name), ["COUNTS", "LOST", "STACKS"]);
}

#[test]
fn a_deleted_bitcode_file_is_regenerated() {
    let dir = example("func-latency");
    let first = build_crate(&dir);
    std::fs::remove_file(&first.bitcode).unwrap();
    // Cargo considers the crate fresh; the build must notice the missing
    // bitcode and compile again rather than fail or reuse a stale object.
    let second = build_crate(&dir);
    assert!(second.bitcode.is_file());
    assert!(second.object.is_file());
}

#[test]
fn an_unchanged_probe_rebuilds_without_llc() {
    let dir = example("count-calls");
    let first = build_crate(&dir);
    let before = std::fs::metadata(&first.object)
        .unwrap()
        .modified()
        .unwrap();
    let t = Instant::now();
    let second = build_crate(&dir);
    let took = t.elapsed();
    assert!(second.llc_skipped, "the second build ran llc again");
    assert_eq!(
        std::fs::metadata(&second.object)
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    eprintln!("incremental rebuild of count-calls: {took:?}");
    assert!(took.as_secs_f64() < 5.0, "rebuild took {took:?}");
}

fn llvm_major() -> u32 {
    rustc_toolchain(Path::new("rustc")).unwrap().llvm_major
}

#[test]
fn a_missing_llc_names_the_debian_package() {
    let empty = work_dir().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut opts = options(&example("count-calls"));
    // Only llc is looked up on this path; rustc and cargo come from the
    // process's PATH.
    opts.search_path = Some(empty.into_os_string());
    let err = build(&opts, &mut |_| {}).unwrap_err();
    let major = llvm_major();
    let tc = rustc_toolchain(Path::new("rustc")).unwrap();
    assert!(matches!(err, BuildError::LlcMissing { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "`llc-{major}` was not found on PATH: rustc {} emits LLVM {major} bitcode, which needs llc from LLVM {major}; on Debian it is in the package `llvm-{major}` (apt-get install llvm-{major})",
            tc.rustc_version
        )
    );
}

#[test]
fn a_mismatched_llc_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let major = llvm_major();
    let fake = work_dir().join("fake-llc");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake.join(format!("llc-{major}"));
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'Debian LLVM version 19.1.7'\necho '  Optimized build.'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut opts = options(&example("count-calls"));
    opts.search_path = Some(fake.clone().into_os_string());
    let err = build(&opts, &mut |_| {}).unwrap_err();
    let tc = rustc_toolchain(Path::new("rustc")).unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is LLVM 19.1.7, but rustc {} uses LLVM {}; their majors must match (bitcode does not cross LLVM majors). Install the Debian package `llvm-{major}` or put the right llc-{major} first on PATH",
            script.display(),
            tc.rustc_version,
            tc.llvm_version
        )
    );
}

#[test]
fn a_compile_error_stops_the_build() {
    let dir = scratch_crate(
        "broken-probe",
        "#![no_std]\npub fn f() -> u32 { \"not a number\" }\n",
    );
    let err = build(&options(&dir), &mut |_| {}).unwrap_err();
    assert!(matches!(err, BuildError::Compile { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("compiling broken-probe failed (exit status: 101)"),
        "{err}"
    );
}

#[test]
fn a_probe_without_return_type_gets_a_spanned_error() {
    let dir = scratch_crate(
        "no-return-type",
        "#![no_std]\nuse ktrace_probe::{kprobe, KprobeContext};\n\n#[kprobe(\"submit_bio\")]\nfn p(_ctx: KprobeContext) {}\n",
    );
    let stderr = compiler_messages(&dir);
    assert!(
        stderr.contains("src/lib.rs:5:25: error: #[kprobe] functions must return `u32` (the program's result, usually 0): add `-> u32`"),
        "{stderr}"
    );
}

#[test]
fn a_tracepoint_with_the_wrong_record_type_does_not_compile() {
    let dir = scratch_crate(
        "wrong-record",
        "#![no_std]\nuse ktrace_probe::{tracepoint, TracepointContext};\nuse ktrace_probe::tracepoints::block::BlockRqComplete;\n\n#[tracepoint(\"block:block_rq_issue\")]\nfn p(_ctx: TracepointContext<BlockRqComplete>) -> u32 { 0 }\n",
    );
    let err = build(&options(&dir), &mut |_| {}).unwrap_err();
    assert!(matches!(err, BuildError::Compile { .. }), "{err:?}");
    let stderr = compiler_messages(&dir);
    assert!(
        stderr.contains("src/lib.rs:5:1: error[E0080]: evaluation panicked: the TracepointContext<E> event type does not match the tracepoint named in #[tracepoint(..)]"),
        "{stderr}"
    );
}

/// The compiler's messages for a crate that must fail, in short form (the
/// same cargo invocation as `ktrace build`, which shows them unchanged).
fn compiler_messages(dir: &Path) -> String {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
        .args([
            "build",
            "--release",
            "--message-format=short",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(work_dir().join("target"))
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg\x1fktrace_bpf")
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_directory_without_manifest_is_not_a_crate() {
    let dir = work_dir().join("not-a-crate");
    std::fs::create_dir_all(&dir).unwrap();
    let err = build(&options(&dir), &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: not a probe crate (no Cargo.toml)", dir.display())
    );
}
