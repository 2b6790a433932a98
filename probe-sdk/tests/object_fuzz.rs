//! The object loader and `ktrace check` on damaged input: real probe
//! objects (examples and a fixture, built by `ktrace build`) with bytes
//! flipped, overwritten, inserted or cut off must give a value or an error
//! that says what is wrong — never a panic. (The loader is the pure
//! `ktrace-object` crate; `probe-sdk` only builds the seeds.)

mod build_support;

use std::sync::OnceLock;

use build_support::*;
use probe_sdk::check::{check_program, CheckOptions};
use probe_sdk::object::parse;
use proptest::prelude::*;

/// The seeds: objects as `ktrace build` makes them (one C-free Rust probe
/// of each shape: maps and a kprobe, a histogram over two tracepoints, a
/// helper the kernel refuses).
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [
            example("count-calls"),
            example("biolatency"),
            fixture("wrong-helper"),
        ]
        .iter()
        .map(|dir| std::fs::read(build_crate(dir).object).unwrap())
        .collect()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit.
    Flip { at: usize, bit: u8 },
    /// Overwrite a little-endian u32 (offsets, sizes, counts, indices).
    Word { at: usize, value: u32 },
    /// Insert bytes.
    Insert { at: usize, bytes: Vec<u8> },
    /// Cut the file short.
    Truncate { len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Positions are fractions of the file, so every seed is covered; the
    // ELF header and the first sections (where the headers point) get half
    // the mutations.
    let word = prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(0x8000_0000),
        any::<u32>(),
        0u32..256
    ];
    prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip {
            at: at as usize,
            bit: bit % 8
        }),
        (0usize..64, any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit: bit % 8 }),
        (any::<u16>(), word.clone()).prop_map(|(at, value)| Mutation::Word {
            at: at as usize,
            value
        }),
        (0usize..64, word).prop_map(|(at, value)| Mutation::Word { at, value }),
        (any::<u16>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| {
            Mutation::Insert {
                at: at as usize,
                bytes,
            }
        }),
        any::<u16>().prop_map(|len| Mutation::Truncate { len: len as usize }),
    ]
}

/// Positions are taken modulo the file's length (u16 positions reach into
/// every section of the seeds, which are 7–54 KiB).
fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Flip { at, bit } => bytes[at % n] ^= 1 << bit,
        Mutation::Word { at, value } => {
            let at = at % (n - 4);
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        Mutation::Insert { at, bytes: b } => {
            let at = at % n;
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Truncate { len } => bytes.truncate(len % n),
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
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn damaged_objects_are_refused_or_loaded_never_a_panic(
        seed in 0usize..3,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = seeds()[seed].clone();
        for m in &mutations {
            apply(&mut bytes, m);
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
    for (i, bytes) in seeds().iter().enumerate() {
        let obj = parse(bytes).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(!obj.programs.is_empty(), "seed {i}");
    }
}
