//! The verifier on real compiler output: a kprobe written in C, compiled
//! by `clang-22 -target bpf -mcpu=v3 -O2 -c`, its `kprobe/submit_bio`
//! section extracted with `llvm-objcopy-22 -O binary` and its four map
//! relocations resolved by hand (`ld_imm64` pseudo map fd: counts = 0,
//! hist = 1, events = 2). The C source:
//!
//! ```c
//! typedef unsigned long long u64;
//! typedef unsigned int u32;
//! struct pt_regs { u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss; };
//! struct bpf_map_def { u32 type, key_size, value_size, max_entries, map_flags; };
//! __attribute__((section("maps"), used)) struct bpf_map_def counts = { 1, 4, 8, 1024, 0 };
//! __attribute__((section("maps"), used)) struct bpf_map_def hist = { 2, 4, 8 * 64, 1, 0 };
//! __attribute__((section("maps"), used)) struct bpf_map_def events = { 27, 0, 0, 4096, 0 };
//! static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
//! static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, u64 flags) = (void *)2;
//! static u64 (*bpf_ktime_get_ns)(void) = (void *)5;
//! static u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
//! static void *(*bpf_ringbuf_reserve)(void *rb, u64 size, u64 flags) = (void *)131;
//! static void (*bpf_ringbuf_submit)(void *data, u64 flags) = (void *)132;
//!
//! struct event { u64 ts; u32 pid; u32 slot; u64 arg; };
//!
//! __attribute__((section("kprobe/submit_bio"), used))
//! int probe(struct pt_regs *ctx)
//! {
//!     u32 pid = bpf_get_current_pid_tgid() >> 32;
//!     u64 *c = bpf_map_lookup_elem(&counts, &pid);
//!     if (c) {
//!         __sync_fetch_and_add(c, 1);
//!     } else {
//!         u64 one = 1;
//!         bpf_map_update_elem(&counts, &pid, &one, 0);
//!     }
//!     u64 v = ctx->di;
//!     u32 slot = 0;
//!     /* log2, as a bounded loop */
//!     for (int i = 0; i < 64; i++) {
//!         if (v > 1) { v >>= 1; slot++; }
//!     }
//!     u32 zero = 0;
//!     u64 *h = bpf_map_lookup_elem(&hist, &zero);
//!     if (h && slot < 64)
//!         __sync_fetch_and_add(&h[slot], 1);
//!     struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
//!     if (!e)
//!         return 0;
//!     e->ts = bpf_ktime_get_ns();
//!     e->pid = pid;
//!     e->slot = slot;
//!     e->arg = ctx->si;
//!     bpf_ringbuf_submit(e, 0);
//!     return 0;
//! }
//! ```
//!
//! Its shape is typical LLVM output: a loop the compiler kept (64
//! iterations with a data-dependent body), 32-bit bounds checks guarding
//! 64-bit pointer arithmetic, atomics on map values, and a ring buffer
//! record.

use bpf_vm::decode;
mod support;

use bpf_vm::verifier::linux::map_type;
use bpf_vm::verifier::{verify, Config, MapDef, Rule};
use support::gen::VerifyEnv;

const PROBE: &[&str] = &[
    "bf16000000000000850000000e0000007700000020000000630afcff00000000",
    "bfa200000000000007020000fcffffff18110000000000000000000000000000",
    "85000000010000001500030000000000b701000001000000db10000001000000",
    "05000a0000000000b7010000010000007b1af0ff00000000bfa2000000000000",
    "07020000fcffffffbfa300000000000007030000f0ffffff1811000000000000",
    "0000000000000000b7040000000000008500000002000000b408000000000000",
    "b401000040000000796270000000000005000400000000000c38000000000000",
    "7f3200000000000004010000ffffffff1601040000000000b403000001000000",
    "2502faff01000000b4030000000000000500f8ff00000000b401000000000000",
    "631af0ff00000000bfa200000000000007020000f0ffffff1811000001000000",
    "000000000000000085000000010000001500070000000000a608010040000000",
    "0500050000000000bf8100000000000067010000030000000f10000000000000",
    "b701000001000000db1000000100000018110000020000000000000000000000",
    "b702000018000000b7030000000000008500000083000000bf07000000000000",
    "15070a000000000085000000050000007b0700000000000061a1fcff00000000",
    "631708000000000063870c000000000079616800000000007b17100000000000",
    "bf71000000000000b7020000000000008500000084000000b400000000000000",
    "9500000000000000",
];

fn bytes() -> Vec<u8> {
    let hex: String = PROBE.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn maps() -> Vec<MapDef> {
    vec![
        MapDef {
            fd: 0,
            map_type: map_type::HASH,
            key_size: 4,
            value_size: 8,
            max_entries: 1024,
        },
        MapDef {
            fd: 1,
            map_type: map_type::ARRAY,
            key_size: 4,
            value_size: 512,
            max_entries: 1,
        },
        MapDef {
            fd: 2,
            map_type: map_type::RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: 4096,
        },
    ]
}

fn check(code: &[u8]) -> Result<bpf_vm::verifier::Report, Box<bpf_vm::verifier::Rejection>> {
    let prog = decode(code).unwrap();
    verify(
        prog.insns(),
        &VerifyEnv::kprobe_with(maps()).env(),
        &Config::default(),
    )
}

/// Replaces the 8-byte instruction at `slot`.
fn patch(code: &mut [u8], slot: usize, insn: [u8; 8]) {
    code[slot * 8..slot * 8 + 8].copy_from_slice(&insn);
}

#[test]
fn clang_kprobe_is_accepted() {
    let code = bytes();
    assert_eq!(code.len(), 69 * 8);
    let r = check(&code).unwrap_or_else(|e| panic!("{}", e.error));
    println!("clang kprobe: {:?}", r.stats);
    assert!(
        r.stats.insns_processed > 64 * 7,
        "the loop runs 64 times: {:?}",
        r.stats
    );
}

#[test]
fn missing_null_check_is_rejected() {
    // 42: `if r0 == 0x0 goto +0x7` -> `goto +0` (the lookup result is used
    // unchecked), and 35: the key `zero` -> 1, past the end of the
    // one-entry array, so the lookup may fail.
    let mut code = bytes();
    patch(&mut code, 42, [0x05, 0, 0, 0, 0, 0, 0, 0]);
    patch(&mut code, 35, [0xb4, 0x01, 0, 0, 1, 0, 0, 0]);
    let e = check(&code).unwrap_err();
    assert_eq!(e.error.insn_index, 47);
    assert_eq!(e.error.rule, Rule::NullCheck);
    assert_eq!(
        e.error.message,
        "R0 pointer arithmetic on map_value_or_null prohibited, null-check it first"
    );
}

#[test]
fn no_null_check_needed_for_a_constant_key_in_range() {
    // Like Linux 6.13+: `hist` is an array and the key is the constant 0
    // (in range), so the lookup cannot return NULL and the check at 42 may
    // go.
    let mut code = bytes();
    patch(&mut code, 42, [0x05, 0, 0, 0, 0, 0, 0, 0]);
    check(&code).unwrap_or_else(|e| panic!("{}", e.error));
}

#[test]
fn slot_bound_is_proved_precisely() {
    // 43: `if w8 < 0x40` -> `if w8 < 0x41`: still safe, because the verifier
    // tracks the shifted value through the loop and knows slot <= 63.
    let mut code = bytes();
    patch(&mut code, 43, [0xa6, 0x08, 0x01, 0x00, 0x41, 0, 0, 0]);
    check(&code).unwrap_or_else(|e| panic!("{}", e.error));
}

#[test]
fn wrong_element_size_is_rejected() {
    // 46: `r1 <<= 0x3` -> `r1 <<= 0x4`: 16-byte strides overrun the 512-byte value.
    let mut code = bytes();
    patch(&mut code, 46, [0x67, 0x01, 0, 0, 4, 0, 0, 0]);
    let e = check(&code).unwrap_err();
    assert_eq!(e.error.insn_index, 49);
    assert_eq!(e.error.rule, Rule::MemoryAccess);
    assert_eq!(
        e.error.message,
        // The first failing path is the one where slot is exactly 32.
        "invalid access to map value, value_size=512 off=512 size=8"
    );
}

#[test]
fn missing_ringbuf_submit_is_rejected() {
    // 66: `call 0x84` (ringbuf_submit) -> `call 0x5` (ktime_get_ns).
    let mut code = bytes();
    patch(&mut code, 66, [0x85, 0, 0, 0, 5, 0, 0, 0]);
    let e = check(&code).unwrap_err();
    assert_eq!(e.error.insn_index, 68);
    assert_eq!(e.error.rule, Rule::Reference);
}
