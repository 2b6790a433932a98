//! The on-disk index cache: an index read back answers every kind of query
//! as the index built from the ELF does, a damaged file costs time and not
//! an answer, and the key is the ELF's GNU build id.

mod common;

use std::path::{Path, PathBuf};

use ktrace_symbols::cache::{self, Outcome};
use ktrace_symbols::{ResolveOptions, SymbolIndex};
use object::Object;

/// The legacy fixture, built once for the tests of this file (they run in
/// parallel, and two rustc writing one output would clobber it).
fn fixture() -> &'static Path {
    static ELF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ELF.get_or_init(|| common::build_fixture(false))
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cache-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every answer of `index` a user can ask for, as text: each function by
/// name (with `--all`) and at a few offsets, a glob, every line of the
/// fixture, a few raw addresses, and the symbolized frames, line and entry
/// location of each function.
fn answers(index: &SymbolIndex) -> Vec<String> {
    let all = ResolveOptions {
        all: true,
        allow_raw_address: true,
    };
    let show = |r: Result<ktrace_symbols::Resolution, ktrace_symbols::SymbolError>| match r {
        Ok(res) => serde_json::to_string(&res).unwrap(),
        Err(e) => format!("error: {e}"),
    };
    let mut out = vec![show(index.resolve("*", all))];
    for f in index.functions() {
        out.push(show(index.resolve(&f.name, all)));
        for off in [1, 4, 8] {
            out.push(show(index.resolve(&format!("{}+{off}", f.name), all)));
        }
        out.push(show(index.resolve(&format!("{:#x}", f.addr + 2), all)));
        out.push(format!(
            "{:?}",
            index.symbolize(f.addr + 1).map(|s| s.frames)
        ));
        out.push(format!("{:?}", index.addr_to_line(f.addr + 3)));
        out.push(format!("{:?}", index.function_location(f)));
    }
    let lines = std::fs::read_to_string(common::fixture_source())
        .unwrap()
        .lines()
        .count();
    for line in 1..=lines {
        out.push(show(index.resolve(&format!("sample.rs:{line}"), all)));
    }
    out.push(show(index.resolve("no_such_function", all)));
    out
}

#[test]
fn a_cached_index_answers_as_the_elf_does() {
    let elf = fixture();
    let fresh = answers(&SymbolIndex::from_path(elf).unwrap());
    let dir = scratch("round-trip");
    let (built, outcome) = SymbolIndex::from_path_cached(elf, &dir).unwrap();
    assert_eq!(outcome, Outcome::Built { not_saved: None });
    assert_eq!(answers(&built), fresh);
    let (cached, outcome) = SymbolIndex::from_path_cached(elf, &dir).unwrap();
    assert_eq!(outcome, Outcome::Hit);
    assert_eq!(answers(&cached), fresh);
    // The bytes form decodes all of it at once, to the same answers.
    let key = cache::cache_key(elf).unwrap();
    let bytes = std::fs::read(cache::cache_file(&dir, &key)).unwrap();
    let from_bytes = SymbolIndex::from_cache_bytes(&bytes, &key).unwrap();
    assert_eq!(answers(&from_bytes), fresh);
    // Another key (another build) does not read this file.
    assert!(SymbolIndex::from_cache_bytes(&bytes, "b-00").is_none());
}

#[test]
fn a_damaged_cache_file_costs_time_not_an_answer() {
    let elf = fixture();
    let fresh = answers(&SymbolIndex::from_path(elf).unwrap());
    let dir = scratch("damaged");
    SymbolIndex::from_path_cached(elf, &dir).unwrap();
    let key = cache::cache_key(elf).unwrap();
    let file = cache::cache_file(&dir, &key);
    let good = std::fs::read(&file).unwrap();
    // The header's section table: offset, length and sum of each section.
    let word = |at: usize| u64::from_le_bytes(good[at..at + 8].try_into().unwrap()) as usize;
    let sections: Vec<(usize, usize)> = (0..3)
        .map(|i| (word(12 + 24 * i), word(20 + 24 * i)))
        .collect();
    let mut damages: Vec<(String, Vec<u8>)> = vec![
        ("truncated".into(), good[..good.len() / 2].to_vec()),
        ("empty".into(), Vec::new()),
        ("another format".into(), {
            let mut b = good.clone();
            b[8] ^= 0xff;
            b
        }),
    ];
    for (i, (offset, len)) in sections.iter().enumerate() {
        let mut b = good.clone();
        b[offset + len / 2] ^= 0x5a;
        damages.push((format!("section {i} flipped"), b));
    }
    for (what, bytes) in damages {
        std::fs::write(&file, &bytes).unwrap();
        let (index, outcome) = SymbolIndex::from_path_cached(elf, &dir).unwrap();
        assert_eq!(answers(&index), fresh, "{what}: {outcome:?}");
    }
}

#[test]
fn the_key_is_the_gnu_build_id() {
    let elf = fixture();
    let bytes = std::fs::read(elf).unwrap();
    let file = object::File::parse(&bytes[..]).unwrap();
    let expected = file.build_id().unwrap();
    assert_eq!(cache::build_id(elf).unwrap().as_deref(), expected);
    let key = cache::cache_key(elf).unwrap();
    match expected {
        Some(id) => {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(key, format!("b-{hex}"));
        }
        None => assert!(key.starts_with("s-"), "{key}"),
    }
    // An ELF without a build id is keyed by path, size and time: a new
    // file there is a new key.
    let dir = scratch("no-build-id");
    let plain = dir.join("plain.o");
    let mut obj = object::write::Object::new(
        object::BinaryFormat::Elf,
        object::Architecture::X86_64,
        object::Endianness::Little,
    );
    let text = obj.section_id(object::write::StandardSection::Text);
    obj.append_section_data(text, &[0x55, 0xc3], 16);
    std::fs::write(&plain, obj.write().unwrap()).unwrap();
    assert_eq!(cache::build_id(&plain).unwrap(), None);
    let first = cache::cache_key(&plain).unwrap();
    assert!(first.starts_with("s-"), "{first}");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&plain)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_ne!(cache::cache_key(&plain).unwrap(), first);
    // Not an ELF at all: no build id, and the index says why.
    std::fs::write(dir.join("text"), b"hello").unwrap();
    assert_eq!(cache::build_id(&dir.join("text")).unwrap(), None);
}

#[test]
fn only_the_most_recent_cache_files_stay() {
    let dir = scratch("prune");
    for i in 0..(cache::KEEP + 3) {
        let f = dir.join(format!("b-{i:02}.idx"));
        std::fs::write(&f, b"x").unwrap();
        let t =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    std::fs::write(dir.join("notes.txt"), b"not a cache file").unwrap();
    cache::prune(&dir, cache::KEEP);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut expected: Vec<String> = (3..cache::KEEP + 3)
        .map(|i| format!("b-{i:02}.idx"))
        .collect();
    expected.push("notes.txt".into());
    assert_eq!(left, expected);
}
