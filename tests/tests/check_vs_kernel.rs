//! `ktrace check` gives the kernel's verdict: the same objects are checked
//! on the host and loaded into the kernel through the protocol, program by
//! program, and the whole verdicts are compared — accepted or not, the
//! message word for word, the verifier log (level 1) and every statistic
//! but the time. Valid objects are the examples; invalid ones are the
//! Rust fixtures the verifier refuses and hand-made programs that break
//! each part of the platform description (contexts, allowed helpers, map
//! types, set-up).

use std::path::{Path, PathBuf};

use ktrace_abi::bpf::{
    map_type, AttachTarget, LoadOptions, MapDefinition, ObjectLoad, ProgramLoad, ProgramType,
    VerifierReport,
};
use ktrace_tests::{kernel_symbols, TestVm};
use probe_sdk::build::{build, BuildOptions};
use probe_sdk::check::{check_program, CheckOptions, Outcome, Verdict};
use probe_sdk::object::{parse, Object};
use probe_sdk::runtime::{Runtime, RuntimeError};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds a probe crate (into the directory probe-sdk's tests build the
/// same crates in) and parses its object, kprobe targets resolved.
fn built(dir: &Path) -> Object {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("probe-crates");
    let mut opts = BuildOptions::new(dir);
    opts.target_dir = Some(work.join("target"));
    opts.out_dir = Some(work.join("objects"));
    let out =
        build(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("building {}: {e}", dir.display()));
    let mut obj = parse(&std::fs::read(&out.object).unwrap()).unwrap();
    obj.resolve_targets(kernel_symbols()).unwrap();
    obj
}

/// A one-program object from assembler text.
fn hand_made(
    name: &str,
    prog_type: ProgramType,
    attach: AttachTarget,
    asm: &str,
    maps: Vec<MapDefinition>,
) -> Object {
    let section = match &attach {
        AttachTarget::Kprobe { spec, .. } => format!("kprobe/{spec}"),
        AttachTarget::Tracepoint { category, name } => format!("tracepoint/{category}/{name}"),
        AttachTarget::PerfEvent | AttachTarget::PerfEventHz { .. } => "perf_event".into(),
    };
    Object {
        license: "GPL".into(),
        maps,
        programs: vec![ProgramLoad {
            name: name.into(),
            section,
            prog_type,
            attach,
            insns: bpf_vm::asm::assemble(asm)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .encode(),
            license: "GPL".into(),
            lines: None,
        }],
    }
}

fn tracepoint(category: &str, name: &str) -> AttachTarget {
    AttachTarget::Tracepoint {
        category: category.into(),
        name: name.into(),
    }
}

fn kprobe() -> AttachTarget {
    ktrace_tests::kprobe_at("kernel::bpf::testing::target")
}

fn map(name: &str, map_type: u32, key_size: u32, value_size: u32) -> MapDefinition {
    MapDefinition {
        name: name.into(),
        map_type,
        key_size,
        value_size,
        max_entries: 4,
        flags: 0,
        initial_value: Vec::new(),
        read_only: false,
        types: Default::default(),
    }
}

/// What the kernel said about one program.
#[derive(Debug, PartialEq)]
enum KernelVerdict {
    /// Verified (accepted or rejected): its report, time left out.
    Report(VerifierReport),
    /// Refused before verifying (the program could not be set up).
    Refused(String),
}

/// The host's verdict in the kernel's terms.
fn host_view(v: &Verdict) -> KernelVerdict {
    let report = |accepted, message| {
        KernelVerdict::Report(VerifierReport {
            accepted,
            message,
            log: v.log.clone(),
            insns_processed: v.stats.insns_processed,
            states_stored: v.stats.states_stored,
            peak_states: v.stats.peak_states,
            states_pruned: v.stats.states_pruned,
            stack_depth: v.stats.stack_depth.clone(),
            time_ns: 0,
        })
    };
    match &v.outcome {
        Outcome::Accepted { .. } => report(true, None),
        Outcome::Rejected(r) if r.insn.is_some() => report(false, Some(r.verifier_message.clone())),
        // The kernel names the program in front of a set-up refusal.
        Outcome::Rejected(r) => KernelVerdict::Refused(format!(
            "program `{}` ({}): {}",
            v.program, v.section, r.verifier_message
        )),
    }
}

/// Loads `p` alone (with all the object's maps, not attached) and frees it.
fn kernel_view(rt: &mut Runtime, obj: &Object, p: &ProgramLoad) -> KernelVerdict {
    let load = ObjectLoad {
        maps: obj.maps.clone(),
        programs: vec![p.clone()],
    };
    let options = LoadOptions {
        log_level: 1,
        ..LoadOptions::default()
    };
    match rt.load_object(&p.name, load, false, options) {
        Ok(loaded) => {
            rt.object_unload(&loaded.object.id.to_string()).unwrap();
            let mut report = loaded.programs[0].verifier.clone();
            report.time_ns = 0;
            KernelVerdict::Report(report)
        }
        Err(RuntimeError::Rejected(r)) => {
            assert_eq!(
                (r.program.as_str(), r.section.as_str()),
                (p.name.as_str(), p.section.as_str())
            );
            let mut report = r.report;
            report.time_ns = 0;
            KernelVerdict::Report(report)
        }
        Err(RuntimeError::Client(c)) if c.kernel_reply().is_some_and(|r| r.errno == -22) => {
            KernelVerdict::Refused(c.kernel_reply().unwrap().message.clone())
        }
        Err(e) => panic!("`{}`: {e}", p.name),
    }
}

#[test]
fn check_on_the_host_gives_the_kernels_verdict() {
    let examples = [
        "count-calls",
        "func-latency",
        "biolatency",
        "biosnoop",
        "stack-samples",
        "submit-latency",
    ];
    // A NULL dereference; a helper the program type may not call. (Not
    // `all-features`: its `PerfEventArray::new()` has `max_entries` 0,
    // which the kernel refuses when it creates the map, before verifying;
    // `ktrace check` judges programs, not map definitions.)
    let fixtures = ["unsafe-deref", "wrong-helper"];
    let mut objects: Vec<(String, Object)> = Vec::new();
    for name in examples {
        objects.push((name.into(), built(&root().join("examples").join(name))));
    }
    for name in fixtures {
        objects.push((
            name.into(),
            built(&root().join("probe-sdk/tests/fixtures").join(name)),
        ));
    }
    let hash = || vec![map("h", map_type::HASH, 4, 8)];
    for (name, ty, attach, asm, maps) in [
        // Set-up refusals: no context for the program.
        ("no_such_tracepoint", ProgramType::Tracepoint, tracepoint("block", "block_nothing"), "mov %r0, 0\nexit", vec![]),
        ("tracepoint_on_a_kprobe", ProgramType::Tracepoint, kprobe(), "mov %r0, 0\nexit", vec![]),
        // Contexts: inside and past each layout.
        ("rdi", ProgramType::Kprobe, kprobe(), "ldxdw %r0, [%r1+112]\nexit", vec![]),
        ("past_pt_regs", ProgramType::Kprobe, kprobe(), "ldxdw %r0, [%r1+168]\nexit", vec![]),
        ("kretprobe_ss", ProgramType::Kretprobe, kprobe(), "ldxdw %r0, [%r1+160]\nexit", vec![]),
        ("sample_period", ProgramType::PerfEvent, AttachTarget::PerfEvent, "ldxdw %r0, [%r1+168]\nexit", vec![]),
        ("past_perf_data", ProgramType::PerfEvent, AttachTarget::PerfEvent, "ldxdw %r0, [%r1+184]\nexit", vec![]),
        ("past_the_record", ProgramType::Tracepoint, tracepoint("block", "block_rq_issue"), "ldxdw %r0, [%r1+4096]\nmov %r0, 0\nexit", vec![]),
        ("ctx_store", ProgramType::Kprobe, kprobe(), "stdw [%r1+0], 1\nmov %r0, 0\nexit", vec![]),
        // Helpers: allowed per program type, unknown ids, map types.
        ("func_ip_in_kprobe", ProgramType::Kprobe, kprobe(), "call 173\nexit", vec![]),
        ("func_ip_in_tracepoint", ProgramType::Tracepoint, tracepoint("sched", "sched_switch"), "call 173\nexit", vec![]),
        ("unknown_helper", ProgramType::Kprobe, kprobe(), "call 7\nexit", vec![]),
        ("stackid_on_a_hash", ProgramType::Kprobe, kprobe(), "lddw %r2, map_idx(0)\nmov %r3, 0\ncall 27\nexit", hash()),
        ("unchecked_lookup", ProgramType::Kprobe, kprobe(), "stw [%r10-4], 1\nlddw %r1, map_idx(0)\nmov %r2, %r10\nadd %r2, -4\ncall 1\nldxdw %r0, [%r0]\nexit", hash()),
        ("no_such_map", ProgramType::Kprobe, kprobe(), "lddw %r1, map_idx(3)\nmov %r0, 0\nexit", hash()),
    ] {
        objects.push((name.into(), hand_made(name, ty, attach, asm, maps)));
    }

    let mut vm = TestVm::boot("check-vs-kernel");
    let mut client = vm.client();
    let mut rt = Runtime::new(&mut client);
    let opts = CheckOptions {
        privileged: false,
        log_level: 1,
    };
    let (mut accepted, mut rejected, mut refused) = (0, 0, 0);
    for (name, obj) in &objects {
        for p in &obj.programs {
            let host = host_view(&check_program(p, &obj.maps, opts));
            let kernel = kernel_view(&mut rt, obj, p);
            assert_eq!(host, kernel, "{name}: program `{}`", p.name);
            match kernel {
                KernelVerdict::Report(r) if r.accepted => accepted += 1,
                KernelVerdict::Report(_) => rejected += 1,
                KernelVerdict::Refused(_) => refused += 1,
            }
        }
    }
    // The 12 programs of the examples and the 4 hand-made ones that stay
    // in bounds pass; the rest are refused both ways.
    assert_eq!((accepted, rejected, refused), (16, 11, 2));
}
