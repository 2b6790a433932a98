//! Typed maps end to end: the Rust biosnoop probe is built with its DWARF,
//! loaded through `ktrace load`, and after real I/O on a virtio disk
//! `ktrace events` and `ktrace map dump|lookup|update` print its records and
//! values by field, in text and JSON, with the values the workload
//! produced; the kernel refuses type descriptions that do not fit the map.

use std::path::PathBuf;

use ktrace_abi::bpf::{map_type, MapDefinition};
use ktrace_abi::types::{Field, MapTypes, TypeDesc, TypeKind, TypeNode};
use ktrace_abi::ErrorCode;
use ktrace_tests::{json, ktrace, ktrace_ok, TestVm};
use probe_sdk::build::{build, BuildOptions};
use probe_sdk::client::ClientError;
use probe_sdk::runtime::{Runtime, RuntimeError};
use serde_json::Value;

/// The task name of the first workload job on `vda`.
const WORKLOAD_TASK: &str = "fio-vda-0";

fn boot(test: &str) -> (TestVm, PathBuf) {
    TestVm::boot_with_disks(test, 1)
}

/// `examples/biosnoop` built with `ktrace build`'s pipeline.
fn biosnoop_object() -> PathBuf {
    let root = probe_sdk::kernel_image::workspace_root();
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("typed-probes");
    let mut opts = BuildOptions::new(root.join("examples/biosnoop"));
    opts.target_dir = Some(work.join("target"));
    opts.out_dir = Some(work.join("objects"));
    opts.quiet = true;
    build(&opts, &mut |l| eprintln!("{l}"))
        .unwrap_or_else(|e| panic!("building biosnoop: {e}"))
        .object
}

#[test]
fn biosnoop_records_and_values_print_by_field() {
    let obj = biosnoop_object();
    let (vm, _dir) = boot("typed-biosnoop");
    let name = vm.name().to_string();
    let run = |args: &[&str]| ktrace_ok(&[&["--vm", name.as_str()][..], args].concat());

    let out = run(&["load", obj.to_str().unwrap()]);
    assert!(out.contains("START            hash"), "{out}");

    // The kernel kept the types: a new process lists them.
    let list = run(&["map", "list", "-v"]);
    assert!(
        list.contains("EVENTS record: Event { ts_ns: u64 @0, sector: u64 @8, queue_ns: u64 @16, service_ns: u64 @24, dev: u32 @32, bytes: u32 @36, pid: u32 @40, error: i32 @44, rwbs: [u8; 8] @48, comm: [u8; 16] @56, cpu: u32 @72, issue_cpu: u32 @76 }"),
        "{list}"
    );
    assert!(list.contains("START key: u64\n"), "{list}");
    assert!(
        list.contains("START value: Start { insert_ns: u64 @0, issue_ns: u64 @8, pid: u32 @16, _pad: u32 @20, comm: [u8; 16] @24 }"),
        "{list}"
    );

    // 8 reads of 4 KiB: the ring buffer holds 8 typed records.
    run(&[
        "workload", "--dev", "vda", "--rw", "randread", "--bs", "4k", "--count", "8", "-q",
    ]);
    let ev = run(&[
        "events",
        "--map",
        "EVENTS",
        "--count",
        "8",
        "--duration",
        "30",
        "--json",
    ]);
    let records: Vec<Value> = ev.lines().map(json).collect();
    assert_eq!(records.len(), 8, "{ev}");
    let pid = records[0]["record"]["pid"].as_u64().unwrap();
    assert!(pid > 0, "{ev}");
    let mut last_ts = 0;
    for r in &records {
        let rec = &r["record"];
        assert_eq!(rec["bytes"], 4096, "{r}");
        assert_eq!(rec["comm"], WORKLOAD_TASK, "{r}");
        assert_eq!(rec["rwbs"], "RS", "{r}");
        assert_eq!(rec["error"], 0, "{r}");
        assert_eq!(rec["pid"], pid, "{r}");
        // 32 MiB disk: 65536 sectors, and 4 KiB reads start on 8-sector
        // boundaries.
        let sector = rec["sector"].as_u64().unwrap();
        assert!(sector < 65536 && sector % 8 == 0, "{r}");
        // Records arrive in completion order.
        let ts = rec["ts_ns"].as_u64().unwrap();
        assert!(ts > last_ts, "{r}");
        last_ts = ts;
        assert!(rec["service_ns"].as_u64().unwrap() > 0, "{r}");
        // The raw bytes stay for scripts that decode them themselves.
        assert_eq!(r["data"].as_array().unwrap().len(), 80, "{r}");
    }

    // Without the completion program, requests stay in START: 5 writes.
    let links = json(&run(&["link", "list", "--json"]));
    let complete = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["target"]["Tracepoint"]["name"] == "block_rq_complete")
        .unwrap_or_else(|| panic!("no block_rq_complete link: {links}"));
    let link_id = complete["id"].to_string();
    run(&["link", "detach", &link_id]);
    run(&[
        "workload",
        "--dev",
        "vda",
        "--rw",
        "randwrite",
        "--bs",
        "4k",
        "--count",
        "5",
        "-q",
    ]);
    let dump = json(&run(&["map", "dump", "START", "--json"]));
    let entries = dump.as_array().unwrap();
    assert_eq!(entries.len(), 5, "{dump}");
    let writer = entries[0]["value"]["pid"].as_u64().unwrap();
    for e in entries {
        let v = &e["value"];
        assert!(e["key"].is_u64(), "{e}");
        assert_eq!(v["comm"], WORKLOAD_TASK, "{e}");
        assert_eq!(v["pid"], writer, "{e}");
        assert_eq!(v["_pad"], 0, "{e}");
        let (insert, issue) = (
            v["insert_ns"].as_u64().unwrap(),
            v["issue_ns"].as_u64().unwrap(),
        );
        assert!(insert > 0 && issue >= insert, "{e}");
    }
    let text = run(&["map", "dump", "START"]);
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(text.ends_with("5 entries\n"), "{text}");
    let first_key = entries[0]["key"].as_u64().unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "{first_key}: {{ insert_ns: {}, issue_ns: {}, pid: {writer}, _pad: 0, comm: \"{WORKLOAD_TASK}\" }}",
            entries[0]["value"]["insert_ns"], entries[0]["value"]["issue_ns"]
        )
    );

    // Typed input: an integer key, a JSON value with fields left out.
    run(&[
        "map",
        "update",
        "START",
        "7",
        r#"{"pid": 42, "comm": "typed"}"#,
    ]);
    let v = json(&run(&["map", "lookup", "START", "7", "--json"]));
    assert_eq!(
        v,
        serde_json::json!({"key": 7, "value": {"insert_ns": 0, "issue_ns": 0, "pid": 42, "_pad": 0, "comm": "typed"}})
    );
    assert_eq!(
        run(&["map", "lookup", "START", "7"]),
        "7: { insert_ns: 0, issue_ns: 0, pid: 42, _pad: 0, comm: \"typed\" }\n"
    );
    // A value that does not fit the type: refused, with the reason.
    let refused_update = |value: &str| {
        let out = ktrace()
            .args(["--vm", &name, "map", "update", "START", "7", value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "update with {value} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert_eq!(
        refused_update(r#"{"pdi": 1}"#),
        "ktrace: value: struct `Start` has no field `pdi` (fields: insert_ns, issue_ns, pid, _pad, comm)\n"
    );
    assert_eq!(
        refused_update(r#"{"comm": "a-task-name-too-long"}"#),
        "ktrace: value.comm: \"a-task-name-too-long\" is 20 bytes; `[u8; 16]` holds 16\n"
    );
    run(&["map", "delete", "START", "7"]);
    assert_eq!(
        json(&run(&["map", "dump", "START", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

fn u64_desc() -> TypeDesc {
    TypeDesc {
        nodes: vec![TypeNode {
            name: "u64".into(),
            size: 8,
            kind: TypeKind::Int { signed: false },
        }],
    }
}

fn hash(name: &str, types: MapTypes) -> MapDefinition {
    MapDefinition {
        name: name.into(),
        map_type: map_type::HASH,
        key_size: 8,
        value_size: 16,
        max_entries: 4,
        flags: 0,
        initial_value: Vec::new(),
        read_only: false,
        types,
    }
}

fn refusal(e: RuntimeError) -> (ErrorCode, String) {
    match e {
        RuntimeError::Client(ClientError::Kernel { reply, .. }) => (reply.code, reply.message),
        other => panic!("not a kernel refusal: {other}"),
    }
}

#[test]
fn the_kernel_refuses_types_that_do_not_fit_the_map() {
    let mut vm = TestVm::boot("typed-refusals");
    let mut client = vm.client();
    let mut rt = Runtime::new(&mut client);

    // A u64 value type on a map of 16-byte values.
    let e = rt
        .map_create(hash(
            "BAD",
            MapTypes {
                key: Some(u64_desc()),
                value: Some(u64_desc()),
                record: None,
            },
        ))
        .unwrap_err();
    assert_eq!(
        refusal(e),
        (
            ErrorCode::InvalidArgument,
            "map `BAD`: value type `u64` is 8 bytes but the map's value size is 16 bytes".into()
        )
    );

    // A field past the end of its struct, named with the node.
    let mut st = u64_desc();
    st.nodes.push(TypeNode {
        name: "Pair".into(),
        size: 16,
        kind: TypeKind::Struct {
            fields: vec![
                Field {
                    name: "a".into(),
                    offset: 0,
                    ty: 0,
                },
                Field {
                    name: "b".into(),
                    offset: 8,
                    ty: 0,
                },
            ],
        },
    });
    let mut past_end = st.clone();
    if let TypeKind::Struct { fields } = &mut past_end.nodes[1].kind {
        fields[1].offset = 12;
    }
    let e = rt
        .map_create(hash(
            "PAIRS",
            MapTypes {
                value: Some(past_end),
                ..MapTypes::default()
            },
        ))
        .unwrap_err();
    assert_eq!(
        refusal(e),
        (
            ErrorCode::InvalidArgument,
            "map `PAIRS`: value type: type node 1: field `b` at offset 12 of 8 bytes ends past the 16 bytes of struct `Pair`".into()
        )
    );

    // More than the encoded-size bound: a limit error.
    let mut wide = st.clone();
    if let TypeKind::Struct { fields } = &mut wide.nodes[1].kind {
        fields.clear();
        for i in 0..64 {
            fields.push(Field {
                name: format!("field_with_a_long_name_{i:02}_{}", "x".repeat(30)),
                offset: 0,
                ty: 0,
            });
        }
    }
    let e = rt
        .map_create(hash(
            "WIDE",
            MapTypes {
                value: Some(wide.clone()),
                key: Some(wide),
                record: None,
            },
        ))
        .unwrap_err();
    // Two descriptions of 2 nodes and 64 fields with 56-byte names.
    assert_eq!(
        refusal(e),
        (
            ErrorCode::Limit,
            "map `WIDE`: type descriptions take 7587 bytes, over the limit of 4096".into()
        )
    );

    // Nothing was created; a fitting description is kept and listed.
    assert!(rt.maps().unwrap().is_empty());
    let good = MapTypes {
        key: Some(u64_desc()),
        value: Some(st),
        record: None,
    };
    let m = rt.map_create(hash("GOOD", good.clone())).unwrap();
    assert_eq!(m.types, good);
    assert_eq!(rt.maps().unwrap()[0].types, good);
}
