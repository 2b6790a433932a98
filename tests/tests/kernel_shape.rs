//! The kernel's shape, checked on its sources (no VM): data flows one way
//! (no subsystem calls into `control`), `unsafe` stays in the hardware
//! corner, and every `unsafe` block says why it is sound.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    out.sort();
    out
}

fn kernel_src() -> PathBuf {
    probe_sdk::kernel_image::workspace_root().join("kernel/src")
}

/// The top-level kernel module a file belongs to (`bpf` for
/// `kernel/src/bpf/events.rs`, `rt` for `kernel/src/rt.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Code of a line, without its `//` comment.
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

#[test]
fn no_subsystem_calls_into_control() {
    let src = kernel_src();
    let mut offenders = Vec::new();
    for (file, text) in sources(&src) {
        if module_of(&src, &file) == "control" {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            if code(line).contains("crate::control") {
                offenders.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "control owns the sessions and calls the subsystems, never the other way:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn unsafe_stays_in_the_hardware_corner() {
    let src = kernel_src();
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
    assert!(main.contains("#![deny(unsafe_code)]"));
    // The modules main.rs lets hold unsafe code.
    let corner: Vec<String> = main
        .lines()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].trim() == "#[allow(unsafe_code)]")
        .filter_map(|w| w[1].trim().strip_prefix("mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    assert_eq!(corner, ["arch", "drivers", "ksyms", "mm", "sync", "task"]);
    for subsystem in ["bpf", "block", "trace", "control"] {
        let root = std::fs::read_to_string(src.join(subsystem).join("mod.rs")).unwrap();
        assert!(
            root.contains("#![deny(unsafe_code)]"),
            "{subsystem} must deny unsafe code"
        );
    }
    // Outside the corner: exactly the two audited exceptions.
    let mut outside = Vec::new();
    for (file, text) in sources(&src) {
        let module = module_of(&src, &file);
        if corner.contains(&module) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            if code(line).contains("unsafe {") {
                outside.push(format!(
                    "{}:{}",
                    file.strip_prefix(&src).unwrap().display(),
                    i + 1
                ));
            }
        }
    }
    let files: Vec<&str> = outside
        .iter()
        .map(|s| s.split(':').next().unwrap())
        .collect();
    assert_eq!(
        files,
        ["bpf/prog.rs", "trace/tracepoint.rs"],
        "unsafe blocks outside the corner: {outside:?}"
    );
}

#[test]
fn every_unsafe_block_says_why_it_is_sound() {
    let src = kernel_src();
    let mut missing = Vec::new();
    let mut blocks = 0;
    for (file, text) in sources(&src) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let c = code(line);
            if c.contains("unsafe {") || c.contains("unsafe impl") {
                blocks += 1;
                let from = i.saturating_sub(12);
                if !lines[from..=i].iter().any(|l| l.contains("SAFETY:")) {
                    missing.push(format!("{}:{}", file.display(), i + 1));
                }
            }
        }
    }
    assert!(blocks > 50, "found only {blocks} unsafe blocks");
    assert!(
        missing.is_empty(),
        "unsafe without a `// SAFETY:` comment above it:\n{}",
        missing.join("\n")
    );
}
