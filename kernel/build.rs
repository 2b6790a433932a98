//! Link the kernel as a static, non-PIE ELF laid out by `linker.ld`.
//!
//! The kernel is a `no_std` binary for the host triple (no bare-metal target
//! is installed), so the host linker driver is told not to pull in any C
//! runtime or libc.

/// Vectors for which the CPU pushes an error code.
const ERROR_CODE_VECTORS: [u32; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
/// Vectors whose handler must not trust the interrupted stack (NMI, #DF,
/// #PF, #MC): they stay on their IST stack.
const IST_ONLY_VECTORS: [u32; 4] = [2, 8, 14, 18];

/// Generate the 256 entry stubs and their address table.
fn write_vector_stubs() {
    use std::fmt::Write;
    let mut s = String::from("    .section .text.entry, \"ax\"\n    .code64\n");
    for v in 0..256u32 {
        let common = if IST_ONLY_VECTORS.contains(&v) {
            "trap_common_ist"
        } else {
            "trap_common_copy"
        };
        let _ = write!(s, "    .p2align 4\ntrap_vector_{v}:\n");
        if !ERROR_CODE_VECTORS.contains(&v) {
            s.push_str("    pushq $0\n");
        }
        let _ = write!(s, "    pushq ${v}\n    jmp {common}\n");
    }
    s.push_str("    .section .rodata.trap_vectors, \"a\"\n    .p2align 3\n    .global trap_vector_table\ntrap_vector_table:\n");
    for v in 0..256u32 {
        let _ = writeln!(s, "    .quad trap_vector_{v}");
    }
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{out}/vectors.S"), s).expect("write vectors.S");
}

fn main() {
    write_vector_stubs();
    // The manifest is in kernel/image/; the linker script beside this file.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = format!("{manifest}/..");
    println!("cargo:rerun-if-changed={dir}/linker.ld");
    println!("cargo:rerun-if-changed={dir}/build.rs");
    for arg in [
        &format!("-T{dir}/linker.ld"),
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        // A GNU build id names this build: the host tools key their
        // symbol index cache by it.
        "-Wl,--build-id=sha1",
        "-Wl,-z,max-page-size=4096",
        "-Wl,--no-relax",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
