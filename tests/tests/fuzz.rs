//! The coverage build and the coverage-guided fuzzer, end to end.
//!
//! - `coverage_is_recorded_per_session_and_reset`: the kernel's edge
//!   coverage request on the coverage build (and its refusal on the normal
//!   one).
//! - `bounded_fuzz_run_from_the_kept_corpus_finds_no_failure`: the CI run
//!   of `ktrace-fuzz`: the kept corpus (`tests/fuzz-corpus`), then mutation
//!   for `KTRACE_FUZZ_SECS` (default 60) seconds; any panic or hang fails
//!   the test with its minimised reproducer.
//! - `saved_reproducers_replay_alive`: the minimised reproducers of the
//!   failures the fuzzer found (`tests/fuzz-corpus/regressions`) leave
//!   the kernel alive.

use std::collections::HashSet;
use std::time::Duration;

use ktrace_abi::bpf::{BpfRequest, BpfResponse, MapDefinition};
use ktrace_abi::vm::CoverageOp;
use ktrace_abi::{ErrorCode, Request, Response};
use ktrace_tests::fuzz::{self, EdgeMap, Mode, Options, Program};
use ktrace_tests::TestVm;

fn map_create(client: &mut probe_sdk::client::Client) -> u32 {
    let def = MapDefinition {
        name: "cov".into(),
        map_type: 1,
        key_size: 4,
        value_size: 8,
        max_entries: 16,
        flags: 0,
        initial_value: Vec::new(),
        read_only: false,
        types: Default::default(),
    };
    match client.request(&Request::Bpf(BpfRequest::MapCreate(Box::new(def)))) {
        Ok(Response::Bpf(BpfResponse::Map(m))) => m.id,
        other => panic!("MapCreate: {other:?}"),
    }
}

#[test]
fn coverage_is_recorded_per_session_and_reset() {
    let image = ktrace_tests::coverage_kernel_image();
    let map = EdgeMap::from_elf(&image.source).unwrap();
    let mut cfg = ktrace_tests::test_config("coverage");
    cfg.kernel = Some(image.source.clone());
    let mut vm = TestVm::boot_with(cfg);
    let mut a = vm.client();
    let mut b = vm.client();

    // Off until enabled: nothing recorded, but the size is known.
    let off = a.coverage(CoverageOp::Collect { reset: false }).unwrap();
    assert!(!off.enabled);
    assert!(
        off.edges.is_empty(),
        "{} edges before Enable",
        off.edges.len()
    );
    assert_eq!(off.edges_total as usize, map.guard_function.len());

    let on = a.coverage(CoverageOp::Enable).unwrap();
    assert!(on.enabled && on.edges.is_empty());
    map_create(&mut a);
    let got = a.coverage(CoverageOp::Collect { reset: false }).unwrap();
    let fns: HashSet<&str> = got
        .edges
        .iter()
        .filter_map(|e| map.guard_function[e.guard as usize])
        .map(|f| map.functions[f as usize].name.as_str())
        .collect();
    assert!(
        fns.iter().any(|f| f.starts_with("kernel::bpf::")),
        "MapCreate reached no kernel::bpf function: {fns:?}"
    );
    assert!(
        fns.iter().any(|f| f.starts_with("kernel::control::")),
        "{fns:?}"
    );
    // Each edge's call site is one the ELF has for its guard (an edge of
    // an inlined function has several).
    for e in &got.edges {
        let sites = &map.guard_sites[e.guard as usize];
        assert!(
            sites.is_empty() || sites.contains(&e.pc),
            "edge {} returned to {:#x}, not one of its call sites {sites:x?}",
            e.guard,
            e.pc
        );
    }
    // Another session's work is not recorded in a's set; b records
    // nothing, as it never enabled coverage.
    map_create(&mut b);
    let b_cov = b.coverage(CoverageOp::Collect { reset: true }).unwrap();
    assert!(!b_cov.enabled && b_cov.edges.is_empty());
    let again = a.coverage(CoverageOp::Collect { reset: true }).unwrap();
    let first: HashSet<u32> = got.edges.iter().map(|e| e.guard).collect();
    let second: HashSet<u32> = again.edges.iter().map(|e| e.guard).collect();
    assert!(first.is_subset(&second));
    // After a reset only what ran since is there: Collect's own edges,
    // none of MapCreate's in the BPF runtime.
    let after = a.coverage(CoverageOp::Collect { reset: false }).unwrap();
    let in_bpf = |edges: &[ktrace_abi::vm::CoveredEdge]| {
        edges
            .iter()
            .filter_map(|e| map.guard_function[e.guard as usize])
            .filter(|&f| map.functions[f as usize].name.starts_with("kernel::bpf::"))
            .count()
    };
    assert!(in_bpf(&got.edges) > 0);
    assert_eq!(in_bpf(&after.edges), 0, "BPF edges survived a reset");
    let off = a.coverage(CoverageOp::Disable).unwrap();
    assert!(!off.enabled && off.edges.is_empty());
    println!(
        "{} instrumented edges; one MapCreate and its Collect: {} edges in {} functions",
        on.edges_total,
        first.len(),
        fns.len()
    );

    // The normal kernel carries no coverage and says so.
    let mut plain = TestVm::boot("coverage-plain");
    let mut c = plain.client();
    match c.coverage(CoverageOp::Enable) {
        Err(e) => {
            let reply = e.kernel_reply().expect("a refusal");
            assert_eq!(reply.code, ErrorCode::NotSupported);
            assert!(reply.message.contains("--coverage"), "{}", reply.message);
        }
        Ok(r) => panic!("the normal kernel answered Coverage: {r:?}"),
    }
}

#[test]
fn bounded_fuzz_run_from_the_kept_corpus_finds_no_failure() {
    let image = ktrace_tests::coverage_kernel_image();
    let root = probe_sdk::kernel_image::workspace_root();
    let secs = std::env::var("KTRACE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let crashes = std::env::temp_dir().join(ktrace_tests::unique_name("fuzz-crashes"));
    let opts = Options {
        mode: Mode::Guided,
        seed: 0x6b74_7261_6365_2121,
        budget: Duration::from_secs(secs),
        corpus: Some(root.join("tests/fuzz-corpus")),
        save_corpus: false,
        crashes: crashes.clone(),
        minimise: true,
        minimise_budget: Duration::from_secs(600),
        request_timeout: Duration::from_secs(30),
        vm_name: ktrace_tests::unique_name("fuzz"),
    };
    let report = fuzz::fuzz(&image.source, &opts, &mut |line| eprintln!("{line}"));
    let map = EdgeMap::from_elf(&image.source).unwrap();
    println!("{}", map.summary(&report.edges));
    let failures: Vec<String> = report
        .crashes
        .iter()
        .map(|c| {
            format!(
                "{}: reproducer {} ({} steps)",
                c.signature,
                c.reproducer.as_ref().unwrap().display(),
                c.reproducer_steps
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "the fuzzer found:\n{}",
        failures.join("\n")
    );
    // The kept corpus alone reaches what it reached when it was kept.
    assert!(
        report.programs > 0 && report.edges.len() > 1000,
        "{} edges",
        report.edges.len()
    );
    let _ = std::fs::remove_dir_all(crashes);
}

/// The coverage kernel, or the ELF `KTRACE_FUZZ_KERNEL` names (to check
/// that a reproducer fails on a kernel with the defect it found).
fn fuzz_kernel() -> std::path::PathBuf {
    match std::env::var_os("KTRACE_FUZZ_KERNEL") {
        Some(k) if !k.is_empty() => k.into(),
        _ => ktrace_tests::coverage_kernel_image().source.clone(),
    }
}

/// Every reproducer the fuzzer saved for a failure since fixed
/// (`tests/fuzz-corpus/regressions`, each with its `.txt` report) runs on
/// a fresh VM and leaves the kernel alive.
#[test]
fn saved_reproducers_replay_alive() {
    let elf = fuzz_kernel();
    let dir = probe_sdk::kernel_image::workspace_root().join("tests/fuzz-corpus/regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut ex = fuzz::Executor::new(
        &elf,
        &ktrace_tests::unique_name("fuzz-replay"),
        Duration::from_secs(20),
    );
    let mut failed = Vec::new();
    for f in &files {
        let prog = Program::load(f).unwrap();
        assert!(!prog.steps.is_empty());
        let (verdict, run) = ex.replay(&prog).unwrap();
        // The replay ran every step (a failure stops it early).
        println!(
            "{}: {} steps, {}",
            f.file_name().unwrap().to_string_lossy(),
            run.steps.len(),
            verdict.signature().as_deref().unwrap_or("alive")
        );
        match verdict.signature() {
            None => assert_eq!(run.steps.len(), prog.steps.len()),
            Some(sig) => failed.push(format!("{}: {sig}", f.display())),
        }
    }
    assert!(
        failed.is_empty(),
        "reproducers failed again:\n{}",
        failed.join("\n")
    );
}

#[test]
fn ktrace_vm_start_coverage_boots_the_fuzzing_build() {
    let image = ktrace_tests::coverage_kernel_image();
    let edges = EdgeMap::from_elf(&image.source)
        .unwrap()
        .guard_function
        .len();
    let name = ktrace_tests::unique_name("cli-coverage");
    let _guard = ktrace_tests::CliVmGuard(name.clone());
    // KTRACE_KERNEL (the normal kernel, set by `ktrace()`) does not
    // override --coverage.
    let out = ktrace_tests::ktrace_ok(&["vm", "start", "--coverage", "--name", &name]);
    assert!(out.contains(&format!("VM {name} ready")), "{out}");
    let vm = probe_sdk::vm::Vm::attach(&name).unwrap();
    let mut c = vm
        .connect(&probe_sdk::client::ConnectOptions::default())
        .unwrap();
    let r = c.coverage(CoverageOp::Enable).unwrap();
    assert_eq!(r.edges_total as usize, edges);
    assert!(r.enabled);
}

/// The argument pass of minimisation: a step made simpler keeps its
/// client and ids, waits for its answer, and has smaller amounts, shorter
/// strings and lists; byte lists (instructions, data) stay whole.
#[test]
fn minimisation_simplifies_arguments() {
    use ktrace_abi::block::{BlockRequest, RwMode, WorkloadLimit, WorkloadSpec};
    use ktrace_tests::fuzz::{simplify, Res, Step};
    let mut spec = WorkloadSpec::new("ram0", RwMode::RandRw);
    spec.limit = WorkloadLimit::Count(64);
    spec.jobs = 2;
    spec.devices = vec!["ram0".into(), "a-long-device-name".into()];
    let step = Step::Call {
        client: 2,
        req: Request::Block(BlockRequest::Workload(spec)),
        wait: false,
        created: vec![(Res::Map, 7)],
    };
    let out = simplify(&step);
    let specs: Vec<(bool, WorkloadSpec)> = out
        .iter()
        .map(|s| match s {
            Step::Call {
                client: 2,
                req: Request::Block(BlockRequest::Workload(w)),
                wait,
                created,
            } if created == &vec![(Res::Map, 7)] => (*wait, w.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    // Waiting first, then amounts, strings, lists.
    assert_eq!(specs.len(), 4, "{specs:?}");
    assert!(specs[0].0 && specs[0].1.limit == WorkloadLimit::Count(64));
    assert_eq!(specs[1].1.limit, WorkloadLimit::Count(16));
    assert_eq!(specs[1].1.jobs, 0);
    assert_eq!(specs[2].1.devices, vec!["ram0", "a-long-de"]);
    assert_eq!(specs[3].1.devices, vec!["ram0"]);
    // Instruction bytes are not cut.
    let load = Step::Call {
        client: 0,
        req: Request::Bpf(BpfRequest::ProgTestRun {
            prog: 3,
            ctx: vec![1; 64],
            repeat: 100,
        }),
        wait: true,
        created: Vec::new(),
    };
    for s in simplify(&load) {
        if let Step::Call {
            req: Request::Bpf(BpfRequest::ProgTestRun { ctx, repeat, .. }),
            ..
        } = s
        {
            assert_eq!(ctx.len(), 64);
            assert_eq!(repeat, 25);
        }
    }
    assert!(simplify(&Step::Pause { ms: 2000 })
        .iter()
        .any(|s| matches!(s, Step::Pause { ms: 500 })));
}

/// Probe addresses in a saved reproducer become function and offset; an
/// address outside every function, or in a function whose name is
/// shared, stays an address.
#[test]
fn reproducers_name_probes_by_function_and_offset() {
    use ktrace_abi::trace::{ProbeKind, ProbeTarget, TraceRequest};
    use ktrace_tests::fuzz::{with_symbols, Step};
    let functions = vec![
        ("a::f".to_string(), 0x1000, 0x40),
        ("a::g".to_string(), 0x1040, 0x20),
        ("a::g".to_string(), 0x2000, 0x20),
    ];
    let add = |addr: u64| Step::Call {
        client: 0,
        req: Request::Trace(TraceRequest::AddProbe {
            target: ProbeTarget::Address(addr),
            kind: ProbeKind::Kprobe,
        }),
        wait: true,
        created: Vec::new(),
    };
    let prog = Program {
        steps: vec![add(0x1007), add(0x1041), add(0x5000)],
    };
    let named = with_symbols(&prog, &functions).unwrap();
    let targets: Vec<ProbeTarget> = named
        .steps
        .iter()
        .map(|s| match s {
            Step::Call {
                req: Request::Trace(TraceRequest::AddProbe { target, .. }),
                ..
            } => target.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        targets,
        vec![
            ProbeTarget::Symbol {
                name: "a::f".into(),
                offset: 7
            },
            ProbeTarget::Address(0x1041),
            ProbeTarget::Address(0x5000),
        ]
    );
    assert!(with_symbols(
        &Program {
            steps: vec![add(0x5000)]
        },
        &functions
    )
    .is_none());
}
