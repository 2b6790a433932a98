//! Map key, value and record types read from the DWARF of real probe
//! objects built by `ktrace build` (full debug information).

mod build_support;

use build_support::*;
use ktrace_abi::types::{MapTypes, TypeKind};
use probe_sdk::object::Object;
use probe_sdk::typed::describe;

fn types<'a>(obj: &'a Object, map: &str) -> &'a MapTypes {
    &obj.maps.iter().find(|m| m.name == map).unwrap().types
}

/// (key, value, record) spelled out, `-` where absent.
fn spelled(t: &MapTypes) -> (String, String, String) {
    let s = |d: &Option<ktrace_abi::types::TypeDesc>| d.as_ref().map_or("-".into(), describe);
    (s(&t.key), s(&t.value), s(&t.record))
}

#[test]
fn biosnoop_hash_map_value_and_ring_buffer_record_are_structs() {
    let (_, obj) = built_object(&example("biosnoop"));
    assert_eq!(
        spelled(types(&obj, "START")),
        (
            "u64".into(),
            "Start { insert_ns: u64 @0, issue_ns: u64 @8, pid: u32 @16, _pad: u32 @20, comm: [u8; 16] @24 }".into(),
            "-".into()
        )
    );
    assert_eq!(
        spelled(types(&obj, "EVENTS")),
        (
            "-".into(),
            "-".into(),
            "Event { ts_ns: u64 @0, sector: u64 @8, queue_ns: u64 @16, service_ns: u64 @24, dev: u32 @32, bytes: u32 @36, pid: u32 @40, error: i32 @44, rwbs: [u8; 8] @48, comm: [u8; 16] @56, cpu: u32 @72, issue_cpu: u32 @76 }".into()
        )
    );
    let event = types(&obj, "EVENTS").record.as_ref().unwrap();
    assert_eq!(event.size(), 80);
    // `error` is the one signed field; `u64` is one node shared by four fields.
    let signed: Vec<&str> = event
        .nodes
        .iter()
        .filter(|n| n.kind == TypeKind::Int { signed: true })
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(signed, ["i32"]);
    assert_eq!(event.nodes.iter().filter(|n| n.name == "u64").count(), 1);
    for m in &obj.maps {
        let t = &m.types;
        for d in [&t.key, &t.value, &t.record].into_iter().flatten() {
            assert_eq!(d.validate(), Ok(()), "{}", m.name);
        }
    }
}

#[test]
fn biolatency_histograms_are_typed_through_their_wrappers() {
    let (_, obj) = built_object(&example("biolatency"));
    let got: Vec<(String, (String, String, String))> = obj
        .maps
        .iter()
        .map(|m| (m.name.clone(), spelled(&m.types)))
        .collect();
    let t = |k: &str, v: &str| (k.to_string(), v.to_string(), "-".to_string());
    assert_eq!(
        got,
        [
            ("CONFIG".to_string(), t("u32", "u64")),
            // biolatency -e: total latency and count.
            ("EXTENSION".to_string(), t("u32", "u64")),
            ("ISSUED".to_string(), t("u64", "u64")),
            // Log2Histogram wraps Array<u64>.
            ("LATENCY_US".to_string(), t("u32", "u64")),
            // KeyedLog2Histogram<u32> wraps HashMap<HistKey<u32>, u64>.
            (
                "LATENCY_US_BY_DISK".to_string(),
                t("HistKey<u32> { key: u32 @0, slot: u32 @4 }", "u64")
            ),
            (
                "LATENCY_US_BY_FLAGS".to_string(),
                t("HistKey<u32> { key: u32 @0, slot: u32 @4 }", "u64")
            ),
        ]
    );
}

#[test]
fn count_calls_maps_are_typed_and_global_data_is_not() {
    let (_, obj) = built_object(&example("count-calls"));
    assert_eq!(
        spelled(types(&obj, "CALLS")),
        ("u32".into(), "u64".into(), "-".into())
    );
    for m in obj.maps.iter().filter(|m| m.name.starts_with('.')) {
        assert!(m.types.is_empty(), "{}", m.name);
    }
}

const KINDS: &str = r#"#![no_std]
use ktrace_probe::maps::{Array, HashMap, PerfEventArray, RingBuf};
use ktrace_probe::{kprobe, map, KprobeContext};

#[repr(u8)]
#[derive(Clone, Copy)]
pub enum Op { Read = 1, Write = 2, Flush = 7 }

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pair { pub a: i16, pub b: u16 }

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Rec {
    pub op: Op,
    pub ok: bool,
    pub pairs: [Pair; 2],
    pub c: char,
    pub ratio: f64,
    pub grid: [[u8; 3]; 2],
    pub maybe: Option<u32>,
}

#[map]
static PERF: PerfEventArray<Rec> = PerfEventArray::new();
#[map]
static RAW: RingBuf = RingBuf::with_byte_size(4096);
#[map]
static BY_OP: HashMap<Op, Pair> = HashMap::with_max_entries(8);
#[map]
static FLAGS: Array<bool> = Array::with_max_entries(4);

#[kprobe("submit_bio")]
fn p(_ctx: KprobeContext) -> u32 { 0 }

ktrace_probe::license!("GPL");
"#;

#[test]
fn enums_bools_chars_floats_nested_arrays_and_perf_records() {
    let (_, obj) = built_object(&scratch_crate("typed-kinds", KINDS));
    let got: Vec<(String, (String, String, String))> = obj
        .maps
        .iter()
        .map(|m| (m.name.clone(), spelled(&m.types)))
        .collect();
    let s = |x: &str| x.to_string();
    assert_eq!(
        got,
        [
            (s("BY_OP"), (s("Op = Read | Write | Flush"), s("Pair { a: i16 @0, b: u16 @2 }"), s("-"))),
            (s("FLAGS"), (s("u32"), s("bool"), s("-"))),
            (
                s("PERF"),
                (
                    s("-"),
                    s("-"),
                    s("Rec { op: Op = Read | Write | Flush @0, ok: bool @1, pairs: [Pair { a: i16 @0, b: u16 @2 }; 2] @2, c: char @12, ratio: f64 @16, grid: [[u8; 3]; 2] @24, maybe: Option<u32> (8 bytes) @32 }")
                )
            ),
            // `RingBuf` is `RingBuf<()>`: no record type.
            (s("RAW"), (s("-"), s("-"), s("-"))),
        ]
    );
    let by_op = types(&obj, "BY_OP").key.as_ref().unwrap();
    match &by_op.root().unwrap().kind {
        TypeKind::Enum { variants, .. } => {
            let v: Vec<(&str, i64)> = variants
                .iter()
                .map(|v| (v.name.as_str(), v.value))
                .collect();
            assert_eq!(v, [("Read", 1), ("Write", 2), ("Flush", 7)]);
        }
        k => panic!("{k:?}"),
    }
}
