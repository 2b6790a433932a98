//! Runs every vector of the BPF conformance suite in checked mode, and
//! again JIT-compiled (with and without constant blinding), where the
//! result and the instruction count must also equal the interpreter's.
//!
//! The vectors live outside the repository; the folder defaults to
//! `../shared/bpf-conformance` next to the workspace and can be overridden
//! with the `BPF_CONFORMANCE_DIR` environment variable. When it is absent the
//! test says so and passes (nothing to check).
//!
//! Each vector: `-- asm` (or `-- raw` words, which take precedence), optional
//! `-- mem` hex bytes (r1 points at a copy, r2 holds its length) and `-- result`
//! (the expected r0). Helper 5 returns its first argument.

mod support;

use std::path::PathBuf;

use bpf_vm::asm::assemble;
use bpf_vm::insn::{decode_raw, RawInsn};
use bpf_vm::interp::{Executable, HelperMem, HelperTable, Vm};
use bpf_vm::jit::{compile, JitOptions};

struct Vector {
    asm: String,
    raw: Vec<u64>,
    mem: Vec<u8>,
    result: Option<u64>,
}

fn parse_vector(text: &str) -> Result<Vector, String> {
    let mut v = Vector {
        asm: String::new(),
        raw: Vec::new(),
        mem: Vec::new(),
        result: None,
    };
    let mut section = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("-- ") {
            section = match name.trim() {
                "asm" => "asm",
                "raw" => "raw",
                "mem" => "mem",
                "result" => "result",
                _ => "ignored",
            };
            continue;
        }
        match section {
            "asm" => {
                v.asm.push_str(line);
                v.asm.push('\n');
            }
            "raw" | "mem" | "result" => {
                let content = line.split('#').next().unwrap_or("").trim();
                if content.is_empty() {
                    continue;
                }
                match section {
                    "raw" => v.raw.push(parse_u64(content)?),
                    "mem" => {
                        for b in content.split_whitespace() {
                            v.mem.push(
                                u8::from_str_radix(b, 16)
                                    .map_err(|_| format!("bad mem byte `{b}`"))?,
                            );
                        }
                    }
                    _ => v.result = Some(parse_u64(content)?),
                }
            }
            _ => {}
        }
    }
    Ok(v)
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    };
    r.map_err(|_| format!("bad number `{s}`"))
}

fn helper5(
    _: &mut (),
    _: &mut HelperMem<'_>,
    args: [u64; 5],
) -> Result<u64, bpf_vm::interp::HelperError> {
    Ok(args[0])
}

/// How a vector is run.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Checked,
    Jit(JitOptions),
}

fn run_vector(text: &str, mode: Mode) -> Result<(), String> {
    let v = parse_vector(text)?;
    let program = if v.raw.is_empty() {
        assemble(&v.asm).map_err(|e| format!("assemble: {e}"))?
    } else {
        let raws: Vec<RawInsn> = v.raw.iter().map(|&w| RawInsn::from_u64(w)).collect();
        decode_raw(&raws).map_err(|e| format!("decode raw: {e}"))?
    };
    // The assembled bytes must decode back to the same program.
    let bytes = program.encode();
    let again = bpf_vm::decode(&bytes).map_err(|e| format!("decode: {e}"))?;
    if again != program {
        return Err("encode/decode round trip changed the program".into());
    }
    let exe = Executable::new(&program).map_err(|e| format!("prepare: {e}"))?;
    let mut helpers = HelperTable::new(());
    helpers.register(5, helper5);
    let mut mem = v.mem.clone();
    let mut vm = Vm::new();
    let r0 = vm
        .run_checked(&exe, &mut mem, &mut helpers, &[], 1_000_000)
        .map_err(|e| format!("run: {e}"))?;
    let r0 =
        match mode {
            Mode::Checked => r0,
            Mode::Jit(options) => {
                let image = compile(&exe, &options, &support::jit::table::<HelperTable<()>>())
                    .map_err(|e| format!("jit: {e}"))?;
                let code = support::jit::ExecCode::new(&image);
                let mut jit_mem = v.mem.clone();
                // SAFETY: the vector just ran in checked mode without a fault,
                // touching only its stack and `mem`; the compiled code computes
                // the same accesses on an identical copy.
                let (res, executed) =
                    unsafe { support::jit::run_jit(&code, &mut jit_mem, &mut helpers, 1_000_000) };
                let jit_r0 = res.map_err(|e| format!("jit run: {e}"))?;
                if jit_r0 != r0 || executed != vm.executed() || jit_mem != mem {
                    return Err(format!(
                    "jit: r0 {jit_r0:#x}, {executed} insns; interpreter: r0 {r0:#x}, {} insns{}",
                    vm.executed(),
                    if jit_mem != mem { ", memory differs" } else { "" }
                ));
                }
                jit_r0
            }
        };
    let want = v.result.ok_or("no `-- result` section")?;
    if r0 != want {
        return Err(format!("r0 = {r0:#x}, expected {want:#x}"));
    }
    Ok(())
}

#[test]
fn conformance_suite() {
    run_suite(Mode::Checked, "conformance");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn conformance_suite_jit() {
    run_suite(Mode::Jit(JitOptions::default()), "conformance (jit)");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn conformance_suite_jit_blinded() {
    run_suite(
        Mode::Jit(JitOptions {
            blinding: Some(0x5eed_1234_abcd_0042),
        }),
        "conformance (jit, blinded)",
    );
}

fn run_suite(mode: Mode, name: &str) {
    let dir = std::env::var_os("BPF_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/bpf-conformance"
            ))
        });
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!(
            "conformance vectors not found at {}, skipping",
            dir.display()
        );
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read vector");
        if let Err(e) = run_vector(&text, mode) {
            failures.push(format!("{}: {e}", f.file_name().unwrap().to_string_lossy()));
        }
    }
    let passed = files.len() - failures.len();
    println!("{name}: {passed}/{} passed", files.len());
    for f in &failures {
        println!("  FAIL {f}");
    }
    assert!(failures.is_empty(), "{} vectors failed", failures.len());
    assert!(!files.is_empty(), "no .data vectors in {}", dir.display());
}
