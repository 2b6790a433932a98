//! `ktrace check`: the examples pass the kernel's verifier on the host; the
//! deliberately unsafe probe is rejected at the right Rust line, with the
//! instruction and register state.

mod build_support;

use build_support::*;
use ktrace_abi::bpf::{AttachTarget, ProgramLoad, ProgramType};
use probe_sdk::check::{check_object, check_program, CheckOptions, Outcome};

#[test]
fn examples_are_accepted() {
    for name in ["count-calls", "func-latency", "biolatency", "stack-samples"] {
        let (_, obj) = built_object(&example(name));
        let verdicts = check_object(&obj, CheckOptions::default());
        assert_eq!(verdicts.len(), obj.programs.len());
        for v in verdicts {
            eprintln!("{v}");
            assert!(v.accepted(), "{name}: {v}");
        }
    }
}

#[test]
fn unchecked_map_value_is_rejected_at_its_source_line() {
    let dir = fixture("unsafe-deref");
    let (_, obj) = built_object(&dir);
    let verdicts = check_object(&obj, CheckOptions::default());
    assert_eq!(verdicts.len(), 1);
    let v = &verdicts[0];
    eprintln!("{v}");
    let Outcome::Rejected(r) = &v.outcome else {
        panic!("accepted: {v}")
    };
    let line = line_of(&dir.join("src/lib.rs"), "UNSAFE-LINE");
    assert_eq!(
        r.location.as_deref(),
        Some(format!("src/lib.rs:{line}").as_str())
    );
    assert_eq!(r.rule, "NullCheck");
    // The load through r0 right after `call 1` (bpf_map_lookup_elem).
    assert_eq!(r.insn, Some(7));
    assert_eq!(r.insn_text, "r1 = *(u64 *)(r0 + 0)");
    assert!(
        r.message
            .starts_with("R0 invalid mem access 'map_value_or_null'"),
        "{}",
        r.message
    );
    assert!(r.state.contains("R0=map_value_or_null"), "{}", r.state);
    // The verifier's own text, which the kernel returns on a refused load.
    assert!(
        r.verifier_message.starts_with(&format!(
            "insn 7 (src/lib.rs:{line}): r1 = *(u64 *)(r0 + 0): R0 invalid mem access 'map_value_or_null'"
        )),
        "{}",
        r.verifier_message
    );
    // The rendering a user sees.
    let text = v.to_string();
    assert!(
        text.starts_with(&format!(
            "count (kprobe/kernel::block::queue::RequestQueue::submit_bio): REJECTED\n  at src/lib.rs:{line}\n  insn 7: r1 = *(u64 *)(r0 + 0)\n  R0 invalid mem access"
        )),
        "{text}"
    );
}

#[test]
fn privileged_policy_does_not_excuse_a_null_dereference() {
    let (_, obj) = built_object(&fixture("unsafe-deref"));
    let opts = CheckOptions {
        privileged: true,
        log_level: 1,
    };
    let v = &check_object(&obj, opts)[0];
    assert!(!v.accepted());
    assert!(!v.log.is_empty(), "log level 1 gives a log");
}

#[test]
fn an_unknown_tracepoint_is_refused_before_verifying() {
    let p = ProgramLoad {
        name: "p".into(),
        section: "tracepoint/block/block_nothing".into(),
        prog_type: ProgramType::Tracepoint,
        attach: AttachTarget::Tracepoint {
            category: "block".into(),
            name: "block_nothing".into(),
        },
        // r0 = 0; exit
        insns: vec![0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0],
        license: "GPL".into(),
        lines: None,
    };
    let v = check_program(&p, &[], CheckOptions::default());
    let Outcome::Rejected(r) = &v.outcome else {
        panic!("accepted")
    };
    assert!(
        r.message.starts_with(
            "unknown tracepoint `block:block_nothing` (the kernel has: block:block_bio_queue, "
        ),
        "{}",
        r.message
    );
    assert_eq!(r.insn, None);
}

#[test]
fn a_tracepoint_reading_past_its_record_is_rejected() {
    // r2 = *(u64 *)(r1 + 4096); r0 = 0; exit — far beyond block_rq_issue's record.
    let p = ProgramLoad {
        name: "p".into(),
        section: "tracepoint/block/block_rq_issue".into(),
        prog_type: ProgramType::Tracepoint,
        attach: AttachTarget::Tracepoint {
            category: "block".into(),
            name: "block_rq_issue".into(),
        },
        insns: [
            [0x79, 0x12, 0x00, 0x10, 0, 0, 0, 0],
            [0xb7, 0, 0, 0, 0, 0, 0, 0],
            [0x95, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat(),
        license: "GPL".into(),
        lines: None,
    };
    let v = check_program(&p, &[], CheckOptions::default());
    let Outcome::Rejected(r) = &v.outcome else {
        panic!("accepted")
    };
    assert_eq!(r.insn, Some(0));
    assert_eq!(r.rule, "Context");
}

#[test]
fn every_map_type_context_and_helper_wrapper_verifies() {
    let (_, obj) = built_object(&fixture("all-features"));
    let mut maps: Vec<(&str, u32, u32, u32, u32)> = obj
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
    maps.sort();
    assert_eq!(
        maps,
        [
            // The trace_printk format string (merged string constants).
            (".rodata.str1.1", 2, 4, 20, 1),
            ("EVENTS", 27, 0, 0, 16384),
            ("PER_CPU", 6, 4, 8, 1),
            ("RECENT", 9, 8, 8, 64),
            ("RET_BY_TASK", 1, 16, 8, 256),
            ("SIZES", 2, 4, 8, 10),
            ("STACKS", 7, 4, 1016, 128),
            ("STACK_IDS", 2, 4, 4, 1),
            ("perf_events", 4, 4, 4, 0),
        ]
    );
    let rodata = obj
        .maps
        .iter()
        .find(|m| m.name == ".rodata.str1.1")
        .unwrap();
    assert_eq!(rodata.initial_value, b"ret %llu on cpu %u\n\0");
    let mut programs: Vec<(&str, ProgramType)> = obj
        .programs
        .iter()
        .map(|p| (p.name.as_str(), p.prog_type))
        .collect();
    programs.sort_by_key(|p| p.0);
    assert_eq!(
        programs,
        [
            ("entry", ProgramType::Kprobe),
            ("entry_ip", ProgramType::Kprobe),
            ("exit", ProgramType::Kretprobe),
            ("sample", ProgramType::PerfEvent),
            ("switch", ProgramType::Tracepoint),
        ]
    );
    for v in check_object(&obj, CheckOptions::default()) {
        eprintln!("{v}");
        assert!(v.accepted(), "{v}");
    }
}

#[test]
fn a_rejection_inside_inlined_sdk_code_names_the_probe_line() {
    let dir = fixture("wrong-helper");
    let (_, obj) = built_object(&dir);
    let v = &check_object(&obj, CheckOptions::default())[0];
    eprintln!("{v}");
    let Outcome::Rejected(r) = &v.outcome else {
        panic!("accepted: {v}")
    };
    assert_eq!(r.insn_text, "call 173");
    assert_eq!(
        r.message,
        "program of this type (tracepoint) cannot use helper bpf_get_func_ip#173"
    );
    let line = line_of(&dir.join("src/lib.rs"), "WRONG-HELPER");
    let helper_line = line_of(
        &repo().join("probe-sdk/ebpf/src/helpers.rs"),
        "unsafe { f($($arg),*) }",
    );
    assert_eq!(
        r.location.as_deref(),
        Some(format!("src/lib.rs:{line} (inlined ebpf/src/helpers.rs:{helper_line})").as_str())
    );
}
