//! Jump-optimised kprobes end to end, in one boot on the suite's CPUs:
//! an eligible function start is optimised and counts every call; a BPF
//! program sees the same registers through the detour as through `int3`;
//! the kernel-wide switch; a probe inside an optimised probe's range
//! un-optimises it (and its removal optimises it again), both counting
//! exactly; an ineligible site (a branch lands inside its 5 bytes, found
//! by decoding the kernel ELF on the host) falls back and says why;
//! removal while other CPUs call the function.

use std::time::Duration;

use ktrace_abi::bpf::{AttachTarget, LoadOptions};
use ktrace_abi::trace::{ProbeInfo, ProbeKind, ProbeMode, ProbeTarget};
use ktrace_kprobe::opt::{self, NotOptimisable};
use ktrace_tests::{kernel_image, kernel_symbols, TestVm};
use object::{Object, ObjectSection};
use probe_sdk::client::Client;
use probe_sdk::runtime::{prepare, Runtime};
use probe_sdk::trace::TraceClient;

const TARGET: &str = "kernel::bpf::testing::target";

/// Copies every `pt_regs` word and the word at `rsp` (the return address
/// at a function's entry) into an array map.
const REGS_PROG: &str = r#"
#include "ktrace_helpers.h"
__attribute__((section("maps"), used)) struct bpf_map_def seen = { 2, 4, 8, 22, 0 };
#define PUT(i, v) do { unsigned int k = (i); unsigned long long x = (v); bpf_map_update_elem(&seen, &k, &x, 0); } while (0)
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int regs(unsigned long long *ctx) {
    PUT(0, ctx[0]); PUT(1, ctx[1]); PUT(2, ctx[2]); PUT(3, ctx[3]); PUT(4, ctx[4]);
    PUT(5, ctx[5]); PUT(6, ctx[6]); PUT(7, ctx[7]); PUT(8, ctx[8]); PUT(9, ctx[9]);
    PUT(10, ctx[10]); PUT(11, ctx[11]); PUT(12, ctx[12]); PUT(13, ctx[13]); PUT(14, ctx[14]);
    PUT(15, ctx[15]); PUT(16, ctx[16]); PUT(17, ctx[17]); PUT(18, ctx[18]); PUT(19, ctx[19]);
    PUT(20, ctx[20]);
    unsigned long long ret = 0;
    bpf_probe_read_kernel(&ret, 8, (void *) ctx[19]);
    PUT(21, ret);
    return 0;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"#;

/// `pt_regs` word names, in order.
const NAMES: [&str; 22] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "[rsp]",
];

fn probe(client: &mut Client, id: u32) -> ProbeInfo {
    client
        .list_probes()
        .unwrap()
        .into_iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("probe {id} is not listed"))
}

fn add(client: &mut Client, target: ProbeTarget) -> ProbeInfo {
    client.add_probe(target, ProbeKind::Kprobe).unwrap()
}

fn sym(name: &str, offset: u64) -> ProbeTarget {
    ProbeTarget::Symbol {
        name: name.into(),
        offset,
    }
}

/// The registers a program saw on one call of the target with `arg`.
fn regs_seen(rt: &mut Runtime<'_>, map: u32, arg: u64) -> Vec<u64> {
    rt.trigger(1, arg).unwrap();
    (0..22u32)
        .map(|k| {
            let v = rt.map_lookup(map, &k.to_le_bytes()).unwrap().unwrap();
            u64::from_le_bytes(v.try_into().unwrap())
        })
        .collect()
}

/// A kernel function (outside the blacklisted engine) with a probe point
/// whose 5 bytes a branch of the function enters, by the same decoding
/// the kernel does: (function, offset, the reason the kernel must give).
fn branch_into_site() -> (String, u64, String) {
    let data = std::fs::read(&kernel_image().source).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    let text = elf.section_by_name(".text").unwrap();
    let (base, bytes) = (text.address(), text.data().unwrap());
    for f in kernel_symbols().functions() {
        if !f.name.starts_with("kernel::block::") || f.size < 16 || f.addr < base {
            continue;
        }
        let off = (f.addr - base) as usize;
        let Some(code) = bytes.get(off..off + f.size as usize) else {
            continue;
        };
        let mut at = 0usize;
        for len in insn_lens(code, f.addr) {
            if let Err(e @ NotOptimisable::BranchInto { .. }) =
                opt::plan(code, f.addr, f.addr + at as u64, &|_| false)
            {
                // Only sites the kernel accepts as a kprobe (the
                // instruction itself is boostable).
                if ktrace_kprobe::x86_64::analyze(&code[at..], f.addr + at as u64)
                    .is_ok_and(|i| i.boostable())
                {
                    return (f.name.clone(), at as u64, e.to_string());
                }
            }
            at += len;
        }
    }
    panic!("no kernel::block function has a branch into a probe range");
}

/// Instruction lengths of `code`, in order.
fn insn_lens(code: &[u8], ip: u64) -> impl Iterator<Item = usize> {
    let mut lens = Vec::new();
    ktrace_kprobe::x86_64::for_each_insn(code, ip, |_, len| {
        lens.push(len);
        true
    });
    lens.into_iter()
}

#[test]
fn optimised_probes_count_exactly_see_int3_registers_and_fall_back_with_a_reason() {
    let dir = std::env::temp_dir().join(format!("ktrace-optprobe-{}", std::process::id()));
    let obj = ktrace_tests::compile_c(&dir, "regs", REGS_PROG);
    let prepared = prepare(&obj, &kernel_image().source, &mut |_| {}).unwrap();
    let (branch_fn, branch_off, branch_why) = branch_into_site();

    let mut vm = TestVm::boot("optprobe");
    let mut client = vm.client();
    client.set_request_timeout(Duration::from_secs(60));
    assert_eq!(
        client.optimisation(None).unwrap(),
        (true, 0),
        "on by default"
    );

    // An eligible function start: optimised, and every call counted.
    let p1 = add(&mut client, sym(TARGET, 0));
    assert_eq!(p1.mode, ProbeMode::Optimised, "{p1:?}");
    assert_eq!(p1.not_optimised, "");
    let mut rt = Runtime::new(&mut client);
    rt.trigger(1000, 7).unwrap();
    let client = rt.client();
    assert_eq!(probe(client, p1.id).hits, 1000);
    assert_eq!(client.optimisation(None).unwrap(), (true, 1));

    // A probe one byte in, inside the 8 bytes the jump replaced: the first
    // goes back to int3 (boosted) and says why; both count every call.
    let p2 = add(client, sym(TARGET, 1));
    assert_eq!(p2.mode, ProbeMode::Optimised, "{p2:?}");
    let first = probe(client, p1.id);
    assert_eq!(first.mode, ProbeMode::Boosted, "{first:?}");
    assert_eq!(
        first.not_optimised,
        format!(
            "the probe at {:#x} is inside the 8 bytes its jump would replace",
            p1.addr + 1
        )
    );
    let mut rt = Runtime::new(client);
    rt.trigger(500, 0).unwrap();
    let client = rt.client();
    assert_eq!(probe(client, p1.id).hits, 1500);
    assert_eq!(probe(client, p2.id).hits, 500);
    // Its removal lets the first be optimised again.
    client.remove_probe(p2.id).unwrap();
    let first = probe(client, p1.id);
    assert_eq!(first.mode, ProbeMode::Optimised, "{first:?}");
    client.remove_probe(p1.id).unwrap();

    // The registers a program sees: detour vs int3, same call.
    let mut rt = Runtime::new(client);
    let loaded = rt
        .load_object(
            "regs",
            prepared.object.clone().into_load(),
            false,
            LoadOptions::default(),
        )
        .unwrap();
    let map = loaded.maps[0].id;
    let prog = loaded.programs[0].id;
    let target: AttachTarget = prepared.object.programs[0].attach.clone();
    let link = rt.attach(prog, target, false).unwrap();
    let listed = rt.client().list_probes().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].mode, ProbeMode::Optimised, "{listed:?}");
    let via_jump = regs_seen(&mut rt, map, 0x1234_5678);
    assert_eq!(rt.client().optimisation(Some(false)).unwrap(), (false, 0));
    let listed = rt.client().list_probes().unwrap();
    assert_eq!(listed[0].mode, ProbeMode::Boosted, "{listed:?}");
    assert_eq!(
        listed[0].not_optimised,
        "optimisation is off (`ktrace probe optimise on` turns it on)"
    );
    let via_int3 = regs_seen(&mut rt, map, 0x1234_5678);
    assert_eq!(rt.client().optimisation(Some(true)).unwrap(), (true, 1));
    let via_jump_again = regs_seen(&mut rt, map, 0x1234_5678);
    for (i, name) in NAMES.iter().enumerate() {
        eprintln!(
            "  {name:<8} jump {:#018x}  int3 {:#018x}",
            via_jump[i], via_int3[i]
        );
    }
    assert_eq!(via_jump[14], 0x1234_5678, "rdi: the argument");
    assert_eq!(via_jump[16], p1.addr, "rip: the probe address");
    // r9, r10 and r11 carry no argument of the one-argument target, and
    // the trigger path never writes them before the call: they are the
    // leftovers of the request before (the attach, the switch; r9 once held
    // the bytes of "control" from a log line). Every other word is the
    // same.
    let same = |v: &[u64]| {
        let mut v = v.to_vec();
        v[6] = 0;
        v[7] = 0;
        v[8] = 0;
        v
    };
    assert_eq!(
        same(&via_jump),
        same(&via_int3),
        "the detour's pt_regs are the int3 frame's"
    );
    assert_eq!(same(&via_jump), same(&via_jump_again));
    rt.detach(link.id).unwrap();

    // A branch lands inside the 5 bytes: not optimised, and why.
    let client = rt.client();
    let p3 = add(client, sym(&branch_fn, branch_off));
    assert_ne!(p3.mode, ProbeMode::Optimised, "{p3:?}");
    assert_eq!(p3.not_optimised, branch_why, "{branch_fn}+{branch_off:#x}");
    client.remove_probe(p3.id).unwrap();

    // Removal (and insertion) while every CPU calls the function.
    let mut rt = Runtime::new(client);
    let cpus = rt.client().info().unwrap().cpus;
    for _ in 0..cpus {
        rt.trigger_spawn(3_000_000).unwrap();
    }
    let client = rt.client();
    for round in 0..10 {
        let p = add(client, sym(TARGET, 0));
        assert_eq!(p.mode, ProbeMode::Optimised, "round {round}: {p:?}");
        std::thread::sleep(Duration::from_millis(30));
        client.remove_probe(p.id).unwrap();
    }
    assert!(client.list_probes().unwrap().is_empty());
    client.info().expect("alive after removals under load");
    let _ = std::fs::remove_dir_all(&dir);
}
