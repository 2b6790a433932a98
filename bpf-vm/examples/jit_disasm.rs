//! Prints the x86-64 code the JIT generates for the benchmark programs
//! (`benches/interp.rs`), one program slot at a time: each BPF instruction
//! followed by the native instructions compiled for it, then the
//! out-of-line stubs. For looking at what the JIT emits where it is slow.
//!
//! `cargo run -p bpf-vm --example jit_disasm [PROGRAM] [--blind]`; without a
//! name, every program.

use std::io::Write;

use bpf_vm::asm::assemble;
use bpf_vm::disasm;
use bpf_vm::insn::Insn;
use bpf_vm::interp::Executable;
use bpf_vm::jit::{compile, HelperRet, JitHelperFn, JitOptions, JitRun};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

#[path = "../benches/support/programs.rs"]
mod programs;

extern "sysv64" fn helper(_: u64, _: u64, _: u64, _: u64, _: u64, _: *mut JitRun<'_>) -> HelperRet {
    HelperRet::ok(0)
}

fn main() {
    // A closed pipe (`| head`) ends the listing quietly.
    if let Err(e) = list() {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing the listing: {e}");
            std::process::exit(1);
        }
    }
}

fn list() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let blind = args.iter().any(|a| a == "--blind");
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if let Some(bad) = only
        .iter()
        .find(|n| !programs::ALL.iter().any(|(p, _)| *p == n.as_str()))
    {
        let names: Vec<&str> = programs::ALL.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "error: no benchmark program `{bad}`; there are {}",
            names.join(", ")
        );
        std::process::exit(2);
    }
    let helpers: [Option<JitHelperFn>; 3] = [None, Some(helper), Some(helper)];
    for (name, src) in programs::ALL {
        if !only.is_empty() && !only.iter().any(|n| *n == name) {
            continue;
        }
        let program = assemble(src).expect("benchmark program assembles");
        let exe = Executable::new(&program).expect("prepares");
        let options = JitOptions {
            blinding: blind.then_some(0x5eed),
        };
        let image = compile(&exe, &options, &helpers).expect("compiles");
        let insns = program.insns();
        writeln!(out, "== {name}: {} bytes of native code", image.len())?;
        // Slot starts in code order, with the BPF text of each.
        let starts = image.slot_offsets();
        let mut decoder = Decoder::with_ip(64, image.code(), 0, DecoderOptions::NONE);
        let mut formatter = IntelFormatter::new();
        let mut text = String::new();
        let mut next_slot = 0;
        for insn in &mut decoder {
            let ip = insn.ip() as u32;
            while next_slot < starts.len() && starts[next_slot] <= ip {
                // The second half of an ld_imm64 compiles to nothing.
                if let Some(i) = insns.get(next_slot).filter(|i| **i != Insn::LdImm64Tail) {
                    let bpf = disasm::insn(i, disasm::Syntax::Llvm);
                    writeln!(out, "   ; {next_slot:3}: {bpf}")?;
                }
                next_slot += 1;
            }
            text.clear();
            formatter.format(&insn, &mut text);
            writeln!(out, "{ip:6x}  {text}")?;
        }
    }
    Ok(())
}
