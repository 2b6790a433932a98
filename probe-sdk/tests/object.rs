//! The object loader on real objects (a Rust probe from `ktrace build`, a C
//! probe from clang) and on hand-made ELF files for every refusal.

mod build_support;

use build_support::*;
use ktrace_abi::bpf::{
    AttachTarget, ProgramType, PSEUDO_CALL, PSEUDO_MAP_IDX, PSEUDO_MAP_IDX_VALUE,
};
use object::write::{Object as ElfWriter, Relocation, StandardSegment, Symbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolKind,
    SymbolScope,
};
use probe_sdk::object::{describe_location, parse, short_path, source_line, ObjectError};

const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;

#[test]
fn rust_probe_maps_relocations_and_lines() {
    let (_, obj) = built_object(&example("count-calls"));
    // Maps in `maps` section order, with their struct bpf_map_def fields.
    let defs: Vec<(&str, u32, u32, u32, u32, u32)> = obj
        .maps
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.map_type,
                m.key_size,
                m.value_size,
                m.max_entries,
                m.flags,
            )
        })
        .collect();
    assert_eq!(
        defs,
        [("CALLS", 1, 4, 8, 1024, 0), ("TOTAL", 2, 4, 8, 1, 0)]
    );

    let p = obj.program("submit_bio").unwrap();
    let insns = decode(&p.insns);
    // Every ld_imm64 became a map-index reference: three to CALLS (lookup,
    // insert, lookup after a racing insert), one to TOTAL.
    let map_refs: Vec<(u8, i32)> = insns
        .iter()
        .filter(|i| i.0 == LD_IMM64)
        .map(|i| (i.2, i.4))
        .collect();
    assert_eq!(
        map_refs,
        [
            (PSEUDO_MAP_IDX, 0),
            (PSEUDO_MAP_IDX, 0),
            (PSEUDO_MAP_IDX, 0),
            (PSEUDO_MAP_IDX, 1)
        ]
    );
    // Helper calls keep their Linux ids.
    let helpers: Vec<i32> = insns.iter().filter(|i| i.0 == CALL).map(|i| i.4).collect();
    assert_eq!(helpers, [14, 1, 2, 1, 1]);
    assert_eq!(insns.last().unwrap().0, 0x95, "ends with exit");

    // The line table names the probe's own lines, and the lines of the
    // ktrace-probe code inlined into it (DWARF rows give the innermost).
    let lines = p.lines.as_ref().expect("line table");
    let src = example("count-calls").join("src/lib.rs");
    let (file, line, _) = source_line(lines, 1).unwrap();
    assert_eq!(
        (file.as_str(), line),
        ("src/lib.rs", line_of(&src, "current_pid_tgid() as u32"))
    );
    assert!(
        lines
            .files
            .iter()
            .any(|f| f.ends_with("src/maps/hash_map.rs")),
        "{:?}",
        lines.files
    );
    // The first lookup (instruction 8, `call 1`) is HashMap::get_ptr_mut's.
    let (file, _, _) = source_line(lines, 8).unwrap();
    assert!(
        file.ends_with("src/maps/hash_map.rs") || file.ends_with("src/helpers.rs"),
        "{file}"
    );
    assert!(
        lines.rows.windows(2).all(|w| w[0].insn < w[1].insn),
        "rows sorted by instruction"
    );
    // Inlined code keeps its call sites, so the lookup is also traced back
    // to the probe's own `CALLS.increment(&tid)`.
    let helper_line = line_of(
        &repo().join("probe-sdk/ebpf/src/helpers.rs"),
        "unsafe { f($($arg),*) }",
    );
    assert_eq!(
        describe_location(lines, 8).unwrap(),
        format!(
            "src/lib.rs:{} (inlined ebpf/src/helpers.rs:{helper_line})",
            line_of(&src, "CALLS.increment")
        )
    );
    assert_eq!(
        short_path("/x/y/library/core/src/sync/atomic.rs"),
        "core/src/sync/atomic.rs"
    );
}

const C_PROBE: &str = r#"
typedef unsigned int __u32;
typedef unsigned long long __u64;
struct bpf_map_def { __u32 type, key_size, value_size, max_entries, map_flags; };
#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static long (*bpf_trace_printk)(const char *fmt, __u32 fmt_size, ...) = (void *)6;

struct bpf_map_def SEC("maps") counts = { .type = 1, .key_size = 4, .value_size = 8, .max_entries = 256 };
struct bpf_map_def SEC("maps") last_seen = { .type = 2, .key_size = 4, .value_size = 8, .max_entries = 1 };

static __attribute__((noinline)) __u32 bucket(__u64 arg)
{
    return (__u32)(arg & 0xff); /* BUCKET-LINE */
}

SEC("kprobe/kernel::block::queue::RequestQueue::submit_bio")
int count_submits(void *ctx)
{
    __u32 key = bucket(((__u64 *)ctx)[14]); /* CALL-LINE */
    __u64 one = 1, *v = bpf_map_lookup_elem(&counts, &key);
    if (v)
        __sync_fetch_and_add(v, 1);
    else
        bpf_map_update_elem(&counts, &key, &one, 0);
    __u32 zero = 0;
    __u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&last_seen, &zero, &now, 0);
    static const char fmt[] = "submit %u\n";
    bpf_trace_printk(fmt, sizeof(fmt), key);
    return 0;
}

SEC("tracepoint/block/block_rq_issue")
int on_issue(void *ctx)
{
    return bucket(1) - 1;
}

char _license[] SEC("license") = "Dual MIT/GPL";
"#;

/// Compile C with clang-22 for BPF; `None` (and a message) without clang.
fn clang(name: &str, source: &str) -> Option<Vec<u8>> {
    let dir = work_dir().join("c");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(format!("{name}.o"));
    std::fs::write(&src, source).unwrap();
    let status = std::process::Command::new("clang-22")
        .args(["-target", "bpf", "-O2", "-g", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .current_dir(&dir)
        .status();
    match status {
        Err(e) => {
            eprintln!("SKIPPED: clang-22 is not installed ({e}); install the Debian package clang-22 to run this test");
            None
        }
        Ok(s) => {
            assert!(s.success(), "clang-22 failed on {name}.c");
            Some(std::fs::read(out).unwrap())
        }
    }
}

#[test]
fn c_probe_from_clang_loads() {
    let Some(bytes) = clang("probe", C_PROBE) else {
        return;
    };
    let obj = parse(&bytes).unwrap();
    assert_eq!(obj.license, "Dual MIT/GPL");
    let defs: Vec<(&str, u32, u32, u32, u32)> = obj
        .maps
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.map_type,
                m.key_size,
                m.value_size,
                m.max_entries,
            )
        })
        .collect();
    assert_eq!(
        defs,
        [
            ("counts", 1, 4, 8, 256),
            ("last_seen", 2, 4, 8, 1),
            (".rodata", 2, 4, 11, 1)
        ]
    );
    // clang's DWARF (with -g) has no template parameters: no types, and
    // everything works untyped.
    assert!(obj.maps.iter().all(|m| m.types.is_empty()));
    let rodata = &obj.maps[2];
    assert!(rodata.read_only);
    assert_eq!(rodata.initial_value, b"submit %u\n\0");

    let p = obj.program("count_submits").unwrap();
    assert_eq!(p.prog_type, ProgramType::Kprobe);
    let insns = decode(&p.insns);
    // `bucket` (3 instructions in .text) is appended after the 40 of the
    // program, and the call points at it.
    assert_eq!(insns.len(), 43);
    let calls: Vec<(usize, i32)> = insns
        .iter()
        .enumerate()
        .filter(|(_, i)| i.0 == CALL && i.2 == PSEUDO_CALL)
        .map(|(pc, i)| (pc, i.4))
        .collect();
    assert_eq!(calls, [(1, 38)], "call at 1 jumps to 1 + 1 + 38 = 40");
    assert_eq!(insns[42].0, 0x95);
    // Map references: counts twice, last_seen once, then the format string
    // as a value reference into .rodata at offset 0.
    let refs: Vec<(u8, i32, i32)> = insns
        .windows(2)
        .filter(|w| w[0].0 == LD_IMM64)
        .map(|w| (w[0].2, w[0].4, w[1].4))
        .collect();
    assert_eq!(
        refs,
        [
            (PSEUDO_MAP_IDX, 0, 0),
            (PSEUDO_MAP_IDX, 0, 0),
            (PSEUDO_MAP_IDX, 1, 0),
            (PSEUDO_MAP_IDX_VALUE, 2, 0)
        ]
    );

    // Lines of the program and of the appended subprogram.
    let src = work_dir().join("c/probe.c");
    let lines = p.lines.as_ref().expect("line table");
    let (file, line, _) = source_line(lines, 1).unwrap();
    assert!(file.ends_with("probe.c"), "{file}");
    assert_eq!(line, line_of(&src, "CALL-LINE"));
    let (_, line, _) = source_line(lines, 41).unwrap();
    assert_eq!(line, line_of(&src, "BUCKET-LINE"));

    // The second program gets its own copy of `bucket`.
    let tp = obj.program("on_issue").unwrap();
    assert_eq!(
        tp.attach,
        AttachTarget::Tracepoint {
            category: "block".into(),
            name: "block_rq_issue".into()
        }
    );
    let tp_insns = decode(&tp.insns);
    let call = tp_insns.iter().position(|i| i.0 == CALL).unwrap();
    let target = call as i64 + 1 + i64::from(tp_insns[call].4);
    assert_eq!(
        tp_insns[target as usize..].len(),
        3,
        "bucket appended at the end"
    );

    // And the kernel's verifier accepts both programs as loaded.
    for v in probe_sdk::check::check_object(&obj, Default::default()) {
        assert!(v.accepted(), "{v}");
    }
}

#[test]
fn co_re_relocations_from_clang_are_refused() {
    let source = r#"
struct task { int pid; int tgid; } __attribute__((preserve_access_index));
__attribute__((section("kprobe/schedule"), used))
int probe(struct task *t) { return t->tgid; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"#;
    let Some(bytes) = clang("core", source) else {
        return;
    };
    assert_eq!(
        parse(&bytes).unwrap_err().to_string(),
        "section `.BTF.ext`: CO-RE relocations (BPF_CORE_READ / preserve_access_index) are not supported"
    );
}

#[test]
fn btf_maps_from_clang_are_refused() {
    let source = r#"
#define __uint(name, val) int (*name)[val]
struct { __uint(type, 2); __uint(max_entries, 1); } counts __attribute__((section(".maps"), used));
__attribute__((section("kprobe/schedule"), used)) int probe(void *ctx) { return 0; }
"#;
    let Some(bytes) = clang("btfmaps", source) else {
        return;
    };
    assert_eq!(
        parse(&bytes).unwrap_err().to_string(),
        "section `.maps`: BTF-defined maps (use the legacy `maps` section, struct bpf_map_def) are not supported"
    );
}

// --- Hand-made objects -----------------------------------------------------

fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> Vec<u8> {
    let mut v = vec![op, (src << 4) | dst];
    v.extend_from_slice(&off.to_le_bytes());
    v.extend_from_slice(&imm.to_le_bytes());
    v
}

/// `r0 = 0; exit`
fn ret0() -> Vec<u8> {
    [insn(0xb7, 0, 0, 0, 0), insn(0x95, 0, 0, 0, 0)].concat()
}

struct Elf(ElfWriter<'static>);

impl Elf {
    fn new() -> Self {
        Elf(ElfWriter::new(
            BinaryFormat::Elf,
            Architecture::Bpf,
            Endianness::Little,
        ))
    }

    fn section(&mut self, name: &str, kind: SectionKind, data: &[u8]) -> object::write::SectionId {
        let segment = self.0.segment_name(StandardSegment::Text).to_vec();
        let id = self.0.add_section(segment, name.as_bytes().to_vec(), kind);
        self.0.append_section_data(id, data, 8);
        id
    }

    fn function(&mut self, section: &str, name: &str, code: &[u8]) -> object::write::SectionId {
        let id = self.section(section, SectionKind::Text, code);
        self.symbol(name, id, 0, code.len() as u64, SymbolKind::Text);
        id
    }

    fn symbol(
        &mut self,
        name: &str,
        section: object::write::SectionId,
        value: u64,
        size: u64,
        kind: SymbolKind,
    ) -> object::write::SymbolId {
        self.0.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value,
            size,
            kind,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(section),
            flags: SymbolFlags::None,
        })
    }

    fn reloc(
        &mut self,
        section: object::write::SectionId,
        offset: u64,
        symbol: object::write::SymbolId,
        r_type: u32,
    ) {
        self.0
            .add_relocation(
                section,
                Relocation {
                    offset,
                    symbol,
                    addend: 0,
                    flags: RelocationFlags::Elf { r_type },
                },
            )
            .unwrap();
    }

    fn bytes(self) -> Vec<u8> {
        self.0.write().unwrap()
    }
}

fn map_def(fields: [u32; 5]) -> Vec<u8> {
    fields.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn err_of(elf: Elf) -> String {
    parse(&elf.bytes()).unwrap_err().to_string()
}

#[test]
fn unknown_code_sections_are_refused() {
    let mut e = Elf::new();
    e.function("kprobe/f", "ok", &ret0());
    e.function("mystery", "what", &ret0());
    assert_eq!(
        err_of(e),
        "section `mystery` holds code but is not a program section (expected kprobe/<target>, kretprobe/<target>, tracepoint/<category>/<name> or perf_event)"
    );
    let mut e = Elf::new();
    e.function("xdp", "pass", &ret0());
    assert_eq!(
        err_of(e),
        "section `xdp`: programs of this type (supported: kprobe, kretprobe, tracepoint, perf_event) are not supported"
    );
    let mut e = Elf::new();
    e.function("tracepoint/block", "p", &ret0());
    assert_eq!(
        err_of(e),
        "section `tracepoint/block`: expected tracepoint/<category>/<name>"
    );
    let mut e = Elf::new();
    e.function("kprobe/", "p", &ret0());
    assert_eq!(
        err_of(e),
        "section `kprobe/`: no target after the prefix (write kprobe/<function>)"
    );
}

#[test]
fn btf_ext_with_core_relocations_is_refused() {
    let mut e = Elf::new();
    e.function("kprobe/f", "p", &ret0());
    // struct btf_ext_header { magic 0xeb9f, version 1, flags 0, hdr_len 32,
    // func_info_off/len, line_info_off/len, core_relo_off/len }
    let mut hdr = vec![0x9f, 0xeb, 1, 0];
    for v in [32u32, 0, 0, 0, 0, 0, 16] {
        hdr.extend_from_slice(&v.to_le_bytes());
    }
    hdr.extend_from_slice(&[0; 16]);
    e.section(".BTF.ext", SectionKind::Other, &hdr);
    assert_eq!(
        err_of(e),
        "section `.BTF.ext`: CO-RE relocations (BPF_CORE_READ / preserve_access_index) are not supported"
    );
}

#[test]
fn map_relocations_and_bad_map_definitions() {
    // r1 = map ll; call 1; r0 = 0; exit
    let code = [
        insn(LD_IMM64, 1, 0, 0, 0),
        insn(0, 0, 0, 0, 0),
        insn(CALL, 0, 0, 0, 1),
        ret0(),
    ]
    .concat();
    let mut e = Elf::new();
    let text = e.function("perf_event", "sample", &code);
    let maps = e.section(
        "maps",
        SectionKind::Data,
        &[map_def([2, 4, 8, 16, 0]), map_def([1, 8, 16, 32, 1])].concat(),
    );
    e.symbol("first", maps, 0, 20, SymbolKind::Data);
    let second = e.symbol("second", maps, 20, 20, SymbolKind::Data);
    e.reloc(text, 0, second, object::elf::R_BPF_64_64);
    let obj = parse(&e.bytes()).unwrap();
    assert_eq!(
        obj.maps.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["first", "second"]
    );
    assert_eq!(
        (
            obj.maps[1].map_type,
            obj.maps[1].flags,
            obj.maps[1].max_entries
        ),
        (1, 1, 32)
    );
    let p = &obj.programs[0];
    assert_eq!(
        (p.prog_type, p.attach.clone()),
        (ProgramType::PerfEvent, AttachTarget::PerfEvent)
    );
    assert_eq!(decode(&p.insns)[0], (LD_IMM64, 1, PSEUDO_MAP_IDX, 0, 1));
    assert_eq!(obj.license, "");

    // A definition too short for struct bpf_map_def.
    let mut e = Elf::new();
    e.function("kprobe/f", "p", &ret0());
    let maps = e.section("maps", SectionKind::Data, &[0u8; 12]);
    e.symbol("tiny", maps, 0, 12, SymbolKind::Data);
    assert_eq!(
        err_of(e),
        "map `tiny` in section `maps`: definition is 12 bytes; struct bpf_map_def needs 20"
    );

    // iproute2-style extensions (pinning) are not ignored silently.
    let mut e = Elf::new();
    e.function("kprobe/f", "p", &ret0());
    let mut def = map_def([1, 4, 4, 1, 0]);
    def.extend_from_slice(&[0, 0, 0, 0, 2, 0, 0, 0]);
    let maps = e.section("maps", SectionKind::Data, &def);
    e.symbol("pinned", maps, 0, 28, SymbolKind::Data);
    assert_eq!(
        err_of(e),
        "map `pinned` in section `maps`: definition is 28 bytes with non-zero fields after struct bpf_map_def's 20 (map extensions such as pinning are not supported)"
    );
}

#[test]
fn relocations_that_cannot_be_honoured() {
    // ld_imm64 of an undefined (extern) symbol.
    let code = [insn(LD_IMM64, 1, 0, 0, 0), insn(0, 0, 0, 0, 0), ret0()].concat();
    let mut e = Elf::new();
    let text = e.function("kprobe/f", "p", &code);
    let ext = e.0.add_symbol(Symbol {
        name: b"CONFIG_HZ".to_vec(),
        value: 0,
        size: 0,
        kind: SymbolKind::Data,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Undefined,
        flags: SymbolFlags::None,
    });
    e.reloc(text, 0, ext, object::elf::R_BPF_64_64);
    assert_eq!(
        err_of(e),
        "section `kprobe/f`, instruction 0: ld_imm64 refers to `CONFIG_HZ`, which is not defined in this object (extern variables are not supported)"
    );

    // A call whose relocation points at a function in .text that exists,
    // and one that calls outside any function.
    let code = [insn(CALL, 0, PSEUDO_CALL, 0, 5), ret0()].concat();
    let mut e = Elf::new();
    e.function("kprobe/f", "p", &code);
    assert_eq!(
        err_of(e),
        "section `kprobe/f`, instruction 0: call target 6 is outside every function"
    );
}

#[test]
fn not_an_ebpf_object() {
    assert_eq!(
        parse(b"hello").unwrap_err(),
        ObjectError::Elf("no ELF header".into())
    );
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(parse(&me).unwrap_err(), ObjectError::NotBpf { machine: 62 });
    let mut e = Elf::new();
    let maps = e.section("maps", SectionKind::Data, &map_def([1, 4, 4, 1, 0]));
    e.symbol("m", maps, 0, 20, SymbolKind::Data);
    assert_eq!(
        err_of(e),
        "the object has no program sections (kprobe/, kretprobe/, tracepoint/, perf_event)"
    );
}

#[test]
fn kprobe_targets_resolve_against_a_kernel_elf() {
    // The test binary stands in for the kernel: an x86_64 ELF with Rust
    // symbols, including the loader's own `parse` (in `ktrace-object`).
    let index = ktrace_symbols::SymbolIndex::from_path(std::env::current_exe().unwrap()).unwrap();
    let expected = index.find("ktrace_object::object::parse");
    assert_eq!(expected.len(), 1);
    let addr = expected[0].addr;

    let mut e = Elf::new();
    e.function("kprobe/ktrace_object::object::parse", "entry", &ret0());
    e.function("kretprobe/ktrace_object::object::parse", "exit", &ret0());
    let mut obj = parse(&e.bytes()).unwrap();
    obj.resolve_targets(&index).unwrap();
    for p in &obj.programs {
        let AttachTarget::Kprobe { spec, points } = &p.attach else {
            panic!()
        };
        assert_eq!(spec, "ktrace_object::object::parse");
        assert_eq!(points.len(), 1);
        assert_eq!((points[0].address, points[0].offset), (addr, 0));
        assert_eq!(points[0].function, "ktrace_object::object::parse");
    }

    // A return probe cannot sit inside a function: find the first
    // instruction boundary after the entry and ask for a kretprobe there.
    let opts = ktrace_symbols::ResolveOptions::default();
    let off = (1..16)
        .find(|o| {
            index
                .resolve(&format!("ktrace_object::object::parse+{o:#x}"), opts)
                .is_ok()
        })
        .expect("an instruction boundary in the first 16 bytes");
    let mut e = Elf::new();
    e.function(
        &format!("kretprobe/ktrace_object::object::parse+{off:#x}"),
        "inside",
        &ret0(),
    );
    let mut obj = parse(&e.bytes()).unwrap();
    assert_eq!(
        obj.resolve_targets(&index).unwrap_err().to_string(),
        format!(
            "program `inside`: cannot attach to `ktrace_object::object::parse+{off:#x}`: a kretprobe attaches to a function entry, but this target is {off:#x} bytes into `ktrace_object::object::parse`"
        )
    );

    let mut e = Elf::new();
    e.function("kprobe/no::such::function_anywhere", "p", &ret0());
    let mut obj = parse(&e.bytes()).unwrap();
    let err = obj.resolve_targets(&index).unwrap_err().to_string();
    assert!(
        err.starts_with("program `p`: cannot attach to `no::such::function_anywhere`: "),
        "{err}"
    );
}

#[test]
fn damaged_objects_give_errors_not_panics() {
    let (out, _) = built_object(&example("func-latency"));
    let good = std::fs::read(&out.object).unwrap();
    let mut errors = 0;
    let mut parsed = 0;
    let mut check = |bytes: &[u8], what: &str| match std::panic::catch_unwind(|| {
        parse(bytes).map(|o| o.programs.len())
    }) {
        Ok(Ok(_)) => parsed += 1,
        Ok(Err(_)) => errors += 1,
        Err(_) => panic!("parse panicked on the object with {what}"),
    };
    // Truncations, and bytes overwritten with 0xff (every other byte) or
    // 0x00 (every sixth): a deterministic sweep over headers, section
    // table, symbols, relocations, code and DWARF.
    for len in (0..good.len()).step_by(7) {
        check(&good[..len], &format!("length {len}"));
    }
    for (first, step, v) in [(0usize, 2usize, 0xffu8), (1, 6, 0x00)] {
        for i in (first..good.len()).step_by(step) {
            let mut bad = good.clone();
            bad[i] = v;
            check(&bad, &format!("byte {i} = {v:#x}"));
        }
    }
    eprintln!("damaged objects: {parsed} still parse, {errors} refused");
    assert!(errors > 0 && parsed > 0);
}
