//! Builds the Rust probes the tools embed (`examples/biolatency`,
//! `examples/biosnoop`) with the probe build pipeline, so `biolatency` and
//! `biosnoop` need no compiler at run time.
//!
//! When a probe cannot be built (no `llc-NN` matching rustc's LLVM, say),
//! the tools still build: an empty object is embedded with the reason, and
//! the tool prints it with the way out when it runs.

use std::path::{Path, PathBuf};

const PROBES: &[&str] = &["biolatency", "biosnoop"];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let root = manifest
        .parent()
        .expect("userland-tools lives in the workspace");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PATH");
    for dir in ["probe-sdk/ebpf", "probe-sdk/macros", "kernel/tracepoints"] {
        rerun_tree(&root.join(dir).join("src"));
    }
    for name in PROBES {
        let crate_dir = root.join("examples").join(name);
        rerun_tree(&crate_dir.join("src"));
        println!(
            "cargo:rerun-if-changed={}",
            crate_dir.join("Cargo.toml").display()
        );
        let mut opts = probe_sdk::build::BuildOptions::new(&crate_dir);
        opts.out_dir = Some(out.clone());
        // One target dir for both probes: they share ktrace-probe.
        opts.target_dir = Some(out.join("probe-target"));
        opts.quiet = true;
        let object = out.join(format!("{name}.bpf.o"));
        let reason = out.join(format!("{name}.error"));
        match probe_sdk::build::build(&opts, &mut |_| {}) {
            Ok(built) => {
                if built.object != object {
                    std::fs::copy(&built.object, &object).expect("copy the probe object");
                }
                std::fs::write(&reason, "").expect("write OUT_DIR");
            }
            Err(e) => {
                println!("cargo:warning=probe `{name}` not built: {e}");
                std::fs::write(&object, b"").expect("write OUT_DIR");
                std::fs::write(&reason, e.to_string()).expect("write OUT_DIR");
            }
        }
    }
}

/// Asks cargo to rerun when any file under `dir` changes.
fn rerun_tree(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rerun_tree(&p);
            } else {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
