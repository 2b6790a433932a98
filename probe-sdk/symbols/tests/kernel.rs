//! Tests on the real kernel ELF, when it has been built
//! (`cargo build --manifest-path kernel/image/Cargo.toml --profile kernel --target-dir target/kernel`,
//! or any `ktrace vm start`, which also embeds the symbol table). Each test
//! prints a skip message and passes when the kernel is not there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ktrace_abi::ksyms::{self, KsymTable};
use ktrace_symbols::{decode, ResolveOptions, SymbolError, SymbolIndex};
use object::{Object, ObjectSection, ObjectSymbol};

/// The kernel ELF: `$KTRACE_KERNEL`, else the workspace's build output.
fn kernel_elf() -> PathBuf {
    match std::env::var_os("KTRACE_KERNEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/kernel/kernel/kernel"),
    }
}

/// The kernel's bytes and index, read once for all tests of this file (so
/// that a rebuild during the run cannot make them disagree).
fn load_with_bytes(path: &Path) -> Option<&'static (Vec<u8>, SymbolIndex)> {
    static INDEX: OnceLock<Option<(Vec<u8>, SymbolIndex)>> = OnceLock::new();
    let loaded = INDEX.get_or_init(|| {
        let bytes = std::fs::read(path).ok()?;
        let index = SymbolIndex::from_bytes(&bytes).expect("index the kernel");
        Some((bytes, index))
    });
    if loaded.is_none() {
        println!(
            "skipping: no kernel ELF at {} (build it with `cargo build --manifest-path kernel/image/Cargo.toml --profile kernel --target-dir target/kernel`)",
            path.display()
        );
    }
    loaded.as_ref()
}

fn load(path: &Path) -> Option<&'static SymbolIndex> {
    load_with_bytes(path).map(|(_, index)| index)
}

/// The bytes of the `KTRACE_KSYMS` static in an ELF.
fn table_bytes(elf: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(elf).ok()?;
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(ksyms::SYMBOL_NAME))?;
    let section = file.section_by_index(sym.section_index()?).ok()?;
    let (file_off, _) = section.file_range()?;
    let start = (file_off + sym.address() - section.address()) as usize;
    Some(elf.get(start..start + sym.size() as usize)?.to_vec())
}

#[test]
fn embedded_table_matches_the_index() {
    let elf = kernel_elf();
    // The table is filled in a copy, `<elf>.ktrace`, unless the ELF itself
    // already carries a filled one.
    let mut image = elf.as_os_str().to_os_string();
    image.push(".ktrace");
    let candidates = [elf.clone(), PathBuf::from(image)];
    let found = candidates.iter().find_map(|p| {
        let bytes = std::fs::read(p).ok()?;
        let table = table_bytes(&bytes)?;
        KsymTable::parse(&table)?;
        Some((p.clone(), table))
    });
    let Some((path, table)) = found else {
        println!(
            "skipping: no kernel image with a filled {} table at {} or its .ktrace copy (run `ktrace vm start` or the kernel image step first)",
            ksyms::SYMBOL_NAME,
            elf.display()
        );
        return;
    };
    let table = KsymTable::parse(&table).expect("parsed above");
    let index = SymbolIndex::from_path(&path).expect("index the kernel image");
    let from_table: BTreeSet<(u64, u64, String)> = table
        .iter()
        .map(|k| (k.addr, u64::from(k.size), k.name.to_string()))
        .collect();
    let from_index: BTreeSet<(u64, u64, String)> = index
        .functions()
        .iter()
        .filter(|f| f.size > 0)
        .map(|f| (f.addr, f.size, f.name.clone()))
        .collect();
    let missing: Vec<_> = from_table.difference(&from_index).take(10).collect();
    let extra: Vec<_> = from_index.difference(&from_table).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "table and index differ\n  in the table only: {missing:x?}\n  in the index only: {extra:x?}"
    );
    assert!(from_table.len() > 10, "only {} functions", from_table.len());
    println!(
        "{}: {} functions agree (address, size, demangled name)",
        path.display(),
        from_table.len()
    );
}

/// Every kernel function is found by its own demangled path.
#[test]
fn every_kernel_function_is_found_by_its_path() {
    let Some(index) = load(&kernel_elf()) else {
        return;
    };
    let mut checked = 0;
    for f in index
        .functions()
        .iter()
        .filter(|f| f.name.contains("kernel::"))
    {
        let found = index.find(&f.name);
        assert!(
            found.iter().any(|g| g.addr == f.addr),
            "{} not found by its own path",
            f.name
        );
        checked += 1;
    }
    assert!(checked > 10, "only {checked} kernel functions");
}

#[test]
fn kernel_suffix_glob_and_ambiguity() {
    let Some(index) = load(&kernel_elf()) else {
        return;
    };
    let kernel_fns: Vec<_> = index
        .functions()
        .iter()
        .filter(|f| f.name.starts_with("kernel::") && f.size > 0)
        .collect();
    // Functions whose last segment is unique resolve by it alone.
    let mut suffix_hits = 0;
    // A sample bounds the time as the kernel grows (debug-build tests).
    let step = (kernel_fns.len() / 300).max(1);
    for f in kernel_fns.iter().step_by(step) {
        let last = f.search_paths()[0].rsplit("::").next().unwrap().to_string();
        let same_last = index.find(&last);
        if same_last.len() == 1 {
            let res = index.resolve(&last, ResolveOptions::default()).unwrap();
            assert_eq!(res.points[0].addr, f.addr, "{last}");
            suffix_hits += 1;
        } else if same_last.len() > 1 {
            match index.resolve(&last, ResolveOptions::default()) {
                Err(SymbolError::Ambiguous { candidates, .. }) => {
                    assert_eq!(candidates.len(), same_last.len(), "{last}");
                    assert!(candidates.iter().any(|c| c.addr == f.addr));
                }
                other => panic!("{last}: expected an ambiguity, got {other:?}"),
            }
        }
    }
    assert!(suffix_hits > 5, "only {suffix_hits} unique suffixes");
    // The glob over the crate finds every kernel function (aliases once).
    let res = index
        .resolve("kernel::*", ResolveOptions::default())
        .unwrap();
    let addrs: BTreeSet<u64> = kernel_fns.iter().map(|f| f.addr).collect();
    let got: BTreeSet<u64> = res
        .points
        .iter()
        .map(|p| p.addr)
        .filter(|a| addrs.contains(a))
        .collect();
    assert_eq!(got, addrs);
    println!(
        "{} kernel functions, {suffix_hits} by unique last segment",
        kernel_fns.len()
    );
}

#[test]
fn kernel_lines_round_trip() {
    let Some(index) = load(&kernel_elf()) else {
        return;
    };
    assert!(
        index.has_line_tables(),
        "the kernel profile keeps line tables"
    );
    let (mut ok, mut total) = (0, 0);
    for f in index
        .functions()
        .iter()
        .filter(|f| f.name.starts_with("kernel::") && f.size > 0)
        .take(300)
    {
        let Some(loc) = index.function_location(f) else {
            continue;
        };
        if !loc.file.starts_with("kernel/src/") {
            continue;
        }
        total += 1;
        let q = loc.to_string();
        let all = ResolveOptions {
            all: true,
            ..Default::default()
        };
        match index.resolve(&q, all) {
            Ok(res) => {
                for p in &res.points {
                    // Every point found for a line maps back to that line.
                    assert_eq!(index.addr_to_line(p.addr).as_ref(), Some(&loc), "{q}");
                }
                if res.points.iter().any(|p| f.contains(p.addr)) {
                    ok += 1;
                }
            }
            // The function's first own row may not be a statement start.
            Err(SymbolError::NoCodeAtLine { .. }) => {}
            Err(e) => panic!("{q}: {e}"),
        }
    }
    println!("{ok}/{total} kernel functions round-trip through their first line");
    assert!(total > 10 && ok * 10 >= total * 9, "{ok}/{total}");
}

#[test]
fn kernel_offsets_follow_instruction_boundaries() {
    let Some((code, index)) = load_with_bytes(&kernel_elf()) else {
        return;
    };
    let file = object::File::parse(&**code).unwrap();
    let mut checked = 0;
    for f in index
        .functions()
        .iter()
        .filter(|f| f.name.starts_with("kernel::") && f.size > 16)
        .take(100)
    {
        let Some(unique) = index.find(&f.name).len().eq(&1).then_some(&f.name) else {
            continue;
        };
        let section = file
            .sections()
            .find(|s| s.address() <= f.addr && f.addr < s.address() + s.size())
            .unwrap();
        let data = section.data().unwrap();
        let start = (f.addr - section.address()) as usize;
        let bounds = decode::boundaries(&data[start..start + f.size as usize], f.addr);
        let second = bounds.starts[1];
        let res = index
            .resolve(&format!("{unique}+{second:#x}"), ResolveOptions::default())
            .unwrap();
        assert_eq!(res.points[0].addr, f.addr + second);
        if second > 1 {
            match index.resolve(&format!("{unique}+0x1"), ResolveOptions::default()) {
                Err(SymbolError::NotOnBoundary { before, after, .. }) => {
                    assert_eq!((before, after), (0, Some(second)));
                }
                other => panic!("{unique}+0x1: expected a refusal, got {other:?}"),
            }
        }
        checked += 1;
        if checked == 20 {
            break;
        }
    }
    assert!(checked > 0);
}

/// Source paths are repository-relative, dependencies included: the
/// kernel's path dependencies compile from their own directory, and their
/// `src/...` names are joined to the (remapped) compilation directory;
/// registry crates read `index.crates.io-<hash>/<crate>-<version>/...`. No
/// path of the build machine appears; only the toolchain's `/rustc/<hash>`.
#[test]
fn source_paths_are_repository_relative() {
    let Some(index) = load(&kernel_elf()) else {
        return;
    };
    let mut seen = std::collections::BTreeMap::<&str, String>::new();
    for f in index.functions() {
        let Some(loc) = index.function_location(f) else {
            continue;
        };
        assert!(
            !loc.file.starts_with('/') || loc.file.starts_with("/rustc/"),
            "{} is at {}: build the kernel through `ktrace vm start` or scripts/test.sh, which remap the repository root",
            f.name,
            loc.file
        );
        for (prefix, dir) in [
            ("bpf_vm::", "bpf-vm/src/"),
            ("ktrace_block::", "kernel/block/src/"),
            ("kernel::", "kernel/src/"),
        ] {
            if f.name.starts_with(prefix) && loc.file.starts_with(dir) {
                seen.entry(prefix).or_insert_with(|| loc.to_string());
            }
        }
    }
    assert_eq!(seen.len(), 3, "crates found in their directories: {seen:?}");
    let run = index
        .functions()
        .iter()
        .find(|f| f.name == "bpf_vm::interp::Vm::run")
        .expect("the interpreter");
    let loc = index.function_location(run).expect("its location");
    assert_eq!(loc.file, "bpf-vm/src/interp/mod.rs");
}

/// Parameters from the kernel's full DWARF: names and types as declared,
/// where each one is at the entry, fields through references.
#[test]
fn kernel_parameters_at_function_entry() {
    use ktrace_symbols::params::{AccessStep, LeafKind, ParamReader, Place};
    let elf = kernel_elf();
    let Some((bytes, index)) = load_with_bytes(&elf) else {
        return;
    };
    let reader = ParamReader::from_bytes(bytes.clone());
    let entry = |path: &str| {
        let p = &index
            .resolve(path, ResolveOptions::default())
            .unwrap()
            .points[0];
        assert_eq!(p.offset, 0);
        p.addr
    };
    let target = entry("kernel::bpf::testing::target");
    let names = |addr| -> Vec<(String, String)> {
        reader
            .parameters(addr)
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.type_name))
            .collect()
    };
    assert_eq!(names(target), [("x".to_string(), "u64".to_string())]);
    // The first integer argument: rdi (DWARF register 5), as the DWARF
    // location at the entry says.
    let x = reader.access(target, target, &["x"]).unwrap();
    assert_eq!(x.steps, [AccessStep::Register(5)]);
    assert_eq!(x.place, Place::Register { shift: 0 });
    assert_eq!((x.size, &x.kind), (8, &LeafKind::Int { signed: false }));

    let submit = entry("RequestQueue::submit_bio");
    assert_eq!(
        names(submit),
        [
            ("self", "&kernel::block::queue::RequestQueue"),
            ("inner", "&mut kernel::block::queue::Inner"),
            ("bio", "Bio<kernel::block::queue::Token>"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // `bio` is passed by reference: its field is read from memory.
    let op = reader.access(submit, submit, &["bio", "op"]).unwrap();
    assert_eq!(op.place, Place::Memory);
    assert_eq!(op.size, 1);
    let LeafKind::Enum { variants, .. } = &op.kind else {
        panic!("{op:?}");
    };
    let names: Vec<&str> = variants.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["Read", "Write", "Flush"]);
    let err = reader.access(submit, submit, &["bio", "nope"]).unwrap_err();
    assert_eq!(err.at, 1);
    assert_eq!(
        err.message,
        "`Bio<kernel::block::queue::Token>` has no field `nope`: expected one of id, op, flags, sector, data, submitter, queued_ns, status, private"
    );
    let err = reader.access(submit, submit, &["bi"]).unwrap_err();
    assert_eq!(
        (err.at, err.message.as_str()),
        (
            0,
            "`submit_bio` has no parameter `bi`: expected one of self, inner, bio"
        )
    );
}

/// With full debug info an inlined method's DIE names it only through its
/// declaration in the type, often in another unit: every inlined frame of
/// the block layer's functions still has its name. The function with the
/// most inlined frames is taken from the index, whichever the compiler
/// made it (what it inlines where depends on the build), so the test
/// relies on no one function staying out of line; that one must have many,
/// or the test would check next to nothing.
#[test]
fn inlined_methods_keep_their_names() {
    let Some(index) = load(&kernel_elf()) else {
        return;
    };
    let mut most: Option<(&str, usize)> = None;
    for f in index
        .functions()
        .iter()
        .filter(|f| f.name.starts_with("kernel::block::"))
    {
        let mut inlined = 0;
        for addr in f.addr..f.addr + f.size {
            let s = index.symbolize(addr).unwrap();
            for frame in s.frames.iter().filter(|fr| fr.inlined) {
                inlined += 1;
                assert_ne!(frame.function, "<unknown>", "at {addr:#x}: {:?}", s.frames);
            }
        }
        if most.is_none_or(|(_, n)| inlined > n) {
            most = Some((&f.name, inlined));
        }
    }
    let (name, inlined) = most.expect("the kernel has block layer functions");
    assert!(
        inlined > 1000,
        "{name}, the block function with the most inlined frames, has only {inlined}"
    );
    println!("{name}: {inlined} inlined frames, each named");
}

/// Legacy names spell a generic function without its type arguments; the
/// kernel's DWARF names each instance (`emit<…::BlockRqIssue>`), so a
/// monomorphization is selected as `emit::<BlockRqIssue>`, and the
/// ambiguity offers that form for each.
#[test]
fn monomorphizations_are_selected_by_type() {
    let Some(index) = load(&kernel_elf()) else {
        return;
    };
    let query = "kernel::trace::tracepoint::emit";
    let candidates = match index.resolve(query, ResolveOptions::default()) {
        Err(SymbolError::Ambiguous { candidates, .. }) => candidates,
        other => panic!("{query}: expected an ambiguity, got {other:?}"),
    };
    assert!(candidates.len() >= 2, "{candidates:?}");
    let mut addrs = BTreeSet::new();
    for c in &candidates {
        let q = c.select_with.as_deref().expect("a selector for each");
        assert!(
            q.starts_with("kernel::trace::tracepoint::emit::<") && q.ends_with('>'),
            "{q}"
        );
        let res = index.resolve(q, ResolveOptions::default()).unwrap();
        assert_eq!(res.points.len(), 1, "{q}");
        assert_eq!(res.points[0].addr, c.addr, "{q}");
        addrs.insert(c.addr);
    }
    assert_eq!(addrs.len(), candidates.len());
    // The short form, the full path of the argument, and a wrong one. Which
    // instances exist depends on the compiler's inlining (and that on the
    // build's paths), so the instance is taken from the candidates.
    let (f, _) = index.lookup_addr(candidates[0].addr).unwrap();
    let type_arg = f.type_args.clone().expect("an instance names its type");
    let short_arg = type_arg.rsplit("::").next().unwrap();
    assert!(type_arg.contains("::"), "{type_arg}");
    let short = index
        .resolve(
            &format!("tracepoint::emit::<{short_arg}>"),
            ResolveOptions::default(),
        )
        .unwrap();
    let full = index
        .resolve(&format!("emit::<{type_arg}>"), ResolveOptions::default())
        .unwrap();
    assert_eq!(short.points.len(), 1);
    assert_eq!(short.points[0].addr, candidates[0].addr);
    assert_eq!(full.points[0].addr, candidates[0].addr);
    assert!(index
        .resolve("tracepoint::emit::<NoSuchEvent>", ResolveOptions::default())
        .is_err());
}

/// The type arguments survive the index cache: a cached index selects a
/// monomorphization by type as the fresh one does.
#[test]
fn type_arguments_survive_the_cache() {
    let elf = kernel_elf();
    if load(&elf).is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ktrace-symbols-types-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Any instance will do: which ones exist depends on inlining.
    let query = match load(&elf)
        .unwrap()
        .resolve("kernel::trace::tracepoint::emit", ResolveOptions::default())
    {
        Err(SymbolError::Ambiguous { candidates, .. }) => {
            candidates[0].select_with.clone().expect("a selector")
        }
        other => panic!("expected an ambiguity, got {other:?}"),
    };
    let query = query.as_str();
    let mut found = Vec::new();
    for _ in 0..2 {
        let (index, _) = SymbolIndex::from_path_cached(&elf, &dir).unwrap();
        let res = index.resolve(query, ResolveOptions::default()).unwrap();
        found.push(res.points[0].addr);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found[0], found[1]);
}
