//! The object loader and `ktrace check` on damaged input: real probe
//! objects (examples and a fixture, built by `ktrace build`) with bytes
//! flipped, overwritten, inserted or cut off must give a value or an error
//! that says what is wrong — never a panic. (The loader is the pure
//! `ktrace-object` crate; `probe-sdk` only builds the seeds.)

mod build_support;

use std::sync::OnceLock;

use build_support::*;
use object::{Object as _, ObjectSection as _};
use probe_sdk::check::{check_program, CheckOptions};
use probe_sdk::object::parse;
use proptest::prelude::*;

/// A seed object and the file ranges of its sections (code, relocations,
/// maps, strings, DWARF), where most mutations land.
struct Seed {
    bytes: Vec<u8>,
    sections: Vec<std::ops::Range<usize>>,
}

/// The seeds: objects as `ktrace build` makes them (maps and a kprobe, a
/// histogram over two tracepoints, a helper the kernel refuses).
fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [
            example("count-calls"),
            example("biolatency"),
            fixture("wrong-helper"),
        ]
        .iter()
        .map(|dir| {
            let bytes = std::fs::read(build_crate(dir).object).unwrap();
            let file = object::File::parse(&*bytes).unwrap();
            let sections = file
                .sections()
                .filter_map(|s| s.file_range())
                .filter(|&(_, len)| len >= 4)
                .map(|(at, len)| at as usize..(at + len) as usize)
                .collect();
            Seed { bytes, sections }
        })
        .collect()
    })
}

/// Where a mutation lands: anywhere in the file, in the ELF header, or in
/// one section (picked and offset modulo what the seed has).
#[derive(Debug, Clone, Copy)]
enum At {
    File(u16),
    Header(u8),
    Section { pick: u8, offset: u16 },
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit.
    Flip { at: At, bit: u8 },
    /// Overwrite a little-endian u32 (offsets, sizes, counts, indices,
    /// instruction immediates).
    Word { at: At, value: u32 },
    /// Insert bytes (everything after moves).
    Insert { at: At, bytes: Vec<u8> },
    /// Cut the file short.
    Truncate { len: u16 },
}

fn at() -> impl Strategy<Value = At> {
    prop_oneof![
        1 => any::<u16>().prop_map(At::File),
        1 => (0u8..64).prop_map(At::Header),
        4 => (any::<u8>(), any::<u16>()).prop_map(|(pick, offset)| At::Section { pick, offset }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(0x8000_0000),
        any::<u32>(),
        0u32..256
    ];
    prop_oneof![
        4 => (at(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        4 => (at(), word).prop_map(|(at, value)| Mutation::Word { at, value }),
        1 => (at(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => any::<u16>().prop_map(|len| Mutation::Truncate { len }),
    ]
}

/// The byte a position names in `seed` (always inside `bytes`).
fn offset(seed: &Seed, bytes: &[u8], at: At) -> usize {
    let n = bytes.len();
    let o = match at {
        At::File(o) => o as usize,
        At::Header(o) => o as usize,
        At::Section { pick, offset } => {
            let r = &seed.sections[pick as usize % seed.sections.len()];
            r.start + offset as usize % r.len()
        }
    };
    o % n
}

fn apply(seed: &Seed, bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip { at, bit } => {
            let o = offset(seed, bytes, *at);
            bytes[o] ^= 1 << bit;
        }
        Mutation::Word { at, value } => {
            let o = offset(seed, bytes, *at).min(bytes.len() - 4);
            bytes[o..o + 4].copy_from_slice(&value.to_le_bytes());
        }
        Mutation::Insert { at, bytes: b } => {
            let o = offset(seed, bytes, *at);
            bytes.splice(o..o, b.iter().copied());
        }
        Mutation::Truncate { len } => {
            let n = bytes.len();
            bytes.truncate(*len as usize % n)
        }
    }
}

/// Every refusal of the loader starts by naming what it is about.
const ERROR_STARTS: &[&str] = &[
    "not a valid ELF object: ",
    "not an eBPF object: ",
    "section `",
    "map `",
    "the object has no program sections",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn damaged_objects_are_refused_or_loaded_never_a_panic(
        seed in 0usize..3,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let seed = &seeds()[seed];
        let mut bytes = seed.bytes.clone();
        for m in &mutations {
            if bytes.len() < 8 {
                break;
            }
            apply(seed, &mut bytes, m);
        }
        match parse(&bytes) {
            Err(e) => {
                let text = e.to_string();
                prop_assert!(
                    ERROR_STARTS.iter().any(|s| text.starts_with(s)),
                    "unclear error: {text}"
                );
            }
            Ok(obj) => {
                // What parsed is checked the way `ktrace check` does: a
                // verdict for every program, whatever the damage did to
                // its instructions.
                for p in &obj.programs {
                    let v = check_program(p, &obj.maps, CheckOptions::default());
                    prop_assert_eq!(&v.program, &p.name);
                    prop_assert!(!v.to_string().is_empty());
                }
            }
        }
    }
}

#[test]
fn the_seeds_load_and_pass() {
    for (i, seed) in seeds().iter().enumerate() {
        let obj = parse(&seed.bytes).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(seed.sections.len() > 10, "seed {i}");
        assert!(!obj.programs.is_empty(), "seed {i}");
    }
}
