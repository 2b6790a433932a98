//! Kernel text has one owner, end to end: probes next to probes, probes on
//! a tracepoint's static-key site, probes on an instruction with an
//! exception fix-up, and entry text, each driven through the protocol a
//! user's tools speak. Addresses come from the kernel ELF the VM runs
//! (symbols, `.static_keys`, `.ex_table`), as a user would find them.
//!
//! Every sequence here stopped the kernel before text had one owner.

use ktrace_abi::bpf::{AttachTarget, LoadOptions, ProgramLoad, ProgramType};
use ktrace_abi::trace::{ProbeKind, ProbeTarget};
use ktrace_abi::ErrorCode;
use ktrace_tests::{kernel_image, kernel_symbols, TestVm};
use object::{Object, ObjectSection, ObjectSymbol};
use probe_sdk::client::Client;
use probe_sdk::runtime::Runtime;
use probe_sdk::trace::TraceClient;

/// The kernel ELF the tests boot.
struct Elf {
    data: Vec<u8>,
}

impl Elf {
    fn load() -> Self {
        let data = std::fs::read(&kernel_image().source).expect("read the kernel ELF");
        Self { data }
    }

    fn file(&self) -> object::File<'_> {
        object::File::parse(&*self.data).expect("parse the kernel ELF")
    }

    /// The section's contents as little-endian words.
    fn words(&self, section: &str) -> Vec<u64> {
        let f = self.file();
        let s = f
            .section_by_name(section)
            .unwrap_or_else(|| panic!("no {section} section"));
        s.data()
            .unwrap()
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect()
    }

    /// The address of a raw (unmangled or linker) symbol.
    fn symbol(&self, name: &str) -> u64 {
        self.file()
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol {name}"))
            .address()
    }

    /// `len` bytes of text at `addr`.
    fn code(&self, addr: u64, len: u64) -> Vec<u8> {
        let f = self.file();
        let text = f.section_by_name(".text").unwrap();
        let off = (addr - text.address()) as usize;
        text.data().unwrap()[off..off + len as usize].to_vec()
    }
}

fn function(name: &str) -> &'static ktrace_symbols::Function {
    kernel_symbols()
        .functions()
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} is not a kernel function"))
}

fn add(client: &mut Client, addr: u64) -> Result<u32, (ErrorCode, String)> {
    client
        .add_probe(ProbeTarget::Address(addr), ProbeKind::Kprobe)
        .map(|p| p.id)
        .map_err(|e| {
            let r = e.kernel_reply().expect("an error frame");
            (r.code, r.message.clone())
        })
}

fn hits(client: &mut Client, id: u32) -> u64 {
    let p = client.list_probes().unwrap();
    p.iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("probe {id} not listed: {p:?}"))
        .hits
}

fn run_self_test(client: &mut Client, name: &str) {
    let r = client.self_test(name).unwrap();
    assert!(r.passed, "self test {name}: {:?}", r.output);
}

#[test]
fn a_probe_next_to_a_probe_sees_text_as_compiled() {
    let elf = Elf::load();
    let f = function("kernel::probe_tests::add3");
    let code = elf.code(f.addr, f.size);
    let starts = ktrace_symbols::decode::boundaries(&code, f.addr).starts;
    // The first multi-byte instruction X and the one after it, Y.
    let i = starts
        .windows(2)
        .position(|w| w[1] - w[0] >= 2)
        .expect("add3 has a multi-byte instruction");
    let x = f.addr + starts[i];
    let len = starts[i + 1] - starts[i];
    let y = f.addr + starts[i + 1];

    let mut vm = TestVm::boot("text-adjacent");
    let mut client = vm.client();
    let px = add(&mut client, x).expect("probe on X");
    // X+1 is inside X: the int3 at X must not make it look like a start.
    assert_eq!(
        add(&mut client, x + 1),
        Err((
            ErrorCode::InvalidArgument,
            format!(
                "{:#x} is not on an instruction boundary: it is inside the {len}-byte instruction at {x:#x}",
                x + 1
            )
        ))
    );
    // Y is a boundary: the int3 at X must not hide it.
    let py = add(&mut client, y).expect("probe on the instruction after a probed one");
    // kprobe_args calls add3 twice.
    run_self_test(&mut client, "kprobe_args");
    assert_eq!((hits(&mut client, px), hits(&mut client, py)), (2, 2));
    client.remove_probe(px).unwrap();
    run_self_test(&mut client, "kprobe_args");
    assert_eq!(hits(&mut client, py), 4);
    client.remove_probe(py).unwrap();
    run_self_test(&mut client, "kprobe_args");
    assert!(client.list_probes().unwrap().is_empty());
    client.info().expect("alive");
}

#[test]
fn a_probe_on_a_tracepoint_site_is_refused_in_either_order() {
    let elf = Elf::load();
    let f = function("kernel::probe_tests::tp_site");
    // `.static_keys`: (site, jump target, tracepoint) triples.
    let keys = elf.words(".static_keys");
    let (site, target) = keys
        .chunks_exact(3)
        .map(|e| (e[0], e[1]))
        .find(|(s, _)| f.contains(*s))
        .expect("tp_site has a static-key site");
    let refusal = |a: u64| {
        Err((
            ErrorCode::InvalidArgument,
            format!(
                "{a:#x} is inside the static-key site of tracepoint ktrace:bench (5 bytes at {site:#x}), which attaching a program rewrites: attach to the tracepoint instead"
            ),
        ))
    };

    let mut vm = TestVm::boot("text-static-key");
    let mut client = vm.client();
    // Disabled site (a nop): the probe is refused, on every byte that
    // decodes as an instruction start or not.
    assert_eq!(add(&mut client, site), refusal(site));
    // Enabled site (a jmp): still refused.
    let att = client.attach_tracepoint("ktrace:bench").unwrap();
    assert_eq!(add(&mut client, site), refusal(site));
    // The enabled path the jmp leads to is ordinary code.
    let on_target = add(&mut client, target).expect("probe on the jump target");
    client.remove_probe(on_target).unwrap();
    client.detach_tracepoint(att).unwrap();
    assert_eq!(add(&mut client, site), refusal(site));
    // The sites still switch between nop and jmp exactly.
    run_self_test(&mut client, "tracepoint_counts");
    assert!(client.list_probes().unwrap().is_empty());
}

#[test]
fn a_fault_in_a_probed_fixup_instruction_is_still_fixed_up() {
    let elf = Elf::load();
    // `copy_from_kernel_nofault`'s `rep movsb` is inlined into the BPF
    // helper code `bpf_probe_read_kernel` runs: whichever function of
    // `kernel::bpf::helpers` holds it in this build (`RunEnv::probe_read`
    // today; the helper dispatch, before it was inlined into each
    // trampoline), found by its fix-up site rather than by one name.
    // Every fix-up site of that function gets a probe: which copy an
    // 8-byte read runs (a loop's peeled first turn or the loop) is the
    // compiler's choice, and each call runs exactly one.
    let fixups = elf.words(".ex_table");
    let sites: Vec<u64> = kernel_symbols()
        .functions()
        .iter()
        .filter(|f| {
            f.name.starts_with("kernel::bpf::helpers::")
                || f.name.starts_with("<kernel::bpf::helpers::")
        })
        .filter(|f| f.name.contains("probe_read") && !f.name.contains("probe_read_str"))
        .map(|f| {
            fixups
                .chunks_exact(2)
                .map(|e| e[0])
                .filter(|a| f.contains(*a))
                .collect::<Vec<u64>>()
        })
        .find(|sites| !sites.is_empty())
        .expect("a helper function bpf_probe_read_kernel runs has an exception fix-up site");

    let mut vm = TestVm::boot("text-fixup");
    let mut client = vm.client();
    let mut ids = Vec::new();
    for &site in &sites {
        let id = add(&mut client, site).expect("probe on the fix-up site");
        let listed = client.list_probes().unwrap();
        let probe = listed.iter().find(|p| p.id == id).unwrap();
        assert!(
            probe.mode == ktrace_abi::trace::ProbeMode::Int3,
            "a fix-up instruction is never boosted: {listed:?}"
        );
        assert!(
            probe.not_optimised.contains(&format!(
                "the instruction at {site:#x} in the 5 bytes has an exception fix-up"
            )),
            "a fix-up instruction is never jump-optimised either, and the list says why: {listed:?}"
        );
        ids.push(id);
    }

    let mut rt = Runtime::new(&mut client);
    let read = |addr: u64| {
        let asm = format!(
            "stdw [%r10-8], 0x55\nmov %r1, %r10\nadd %r1, -8\nmov %r2, 8\nlddw %r3, {addr:#x}\ncall 113\nexit"
        );
        let prog = bpf_vm::asm::assemble(&asm).unwrap();
        ProgramLoad {
            name: "read".into(),
            section: "kprobe/read".into(),
            prog_type: ProgramType::Kprobe,
            attach: AttachTarget::Kprobe {
                spec: "kernel::bpf::testing::target".into(),
                points: Vec::new(),
            },
            insns: prog.encode(),
            license: "GPL".into(),
            lines: None,
        }
    };
    // An unmapped address: the copy faults in the probe's slot, the fault
    // is mapped back to the original instruction and fixed up.
    let bad = rt
        .prog_load(read(0x7fff_0000_0000), vec![], LoadOptions::default())
        .unwrap();
    let r = rt.test_run(bad.id, vec![0u8; 168], 3).unwrap();
    assert_eq!((r.error, r.retval as i32), (None, -14));
    // The kernel image start: the copy succeeds.
    let good = rt
        .prog_load(read(0x10_0000), vec![], LoadOptions::default())
        .unwrap();
    let r = rt.test_run(good.id, vec![0u8; 168], 2).unwrap();
    assert_eq!((r.error, r.retval), (None, 0));
    let all: u64 = ids.iter().map(|&id| hits(&mut client, id)).sum();
    assert_eq!(all, 5, "one hit per helper call, on one of {sites:x?}");
    for id in ids {
        client.remove_probe(id).unwrap();
    }
    client.info().expect("alive");
}

#[test]
fn entry_text_is_blacklisted_by_its_section() {
    let elf = Elf::load();
    let (start, end) = (
        elf.symbol("__entry_text_start"),
        elf.symbol("__entry_text_end"),
    );
    let mut vm = TestVm::boot("text-entry");
    let mut client = vm.client();
    let reason = "interrupt entry, context switch and the kretprobe trampoline (.text.entry)";
    let listed = client.blacklist().unwrap();
    assert!(
        listed
            .iter()
            .any(|b| (b.start, b.end) == (start, end) && b.reason == reason),
        "{listed:?}"
    );
    for name in [
        "context_switch",
        "task_entry_trampoline",
        "trap_common_copy",
        "trap_common_ist",
        "kretprobe_trampoline",
    ] {
        let a = elf.symbol(name);
        assert!((start..end).contains(&a), "{name} at {a:#x}");
        for addr in [a, a + 1] {
            assert_eq!(
                add(&mut client, addr),
                Err((
                    ErrorCode::InvalidArgument,
                    format!("{addr:#x} is blacklisted: {reason}")
                )),
                "{name}"
            );
        }
    }
    assert_eq!(
        add(&mut client, end - 1),
        Err((
            ErrorCode::InvalidArgument,
            format!("{:#x} is blacklisted: {reason}", end - 1)
        ))
    );
}
