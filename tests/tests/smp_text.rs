//! Kernel text patched while it runs, and probes removed while their
//! handlers may run (issue 17): the in-kernel `smp_text` self test has
//! every CPU (before SMP: several preempting tasks) call the functions
//! carrying a kprobe (single-stepped), a kretprobe, a jump-optimised kprobe
//! (its jump put in and taken out under the callers) and a tracepoint site in
//! a loop while another task attaches and detaches each of them, then
//! checks that the per-CPU hit counts sum exactly to the calls the kernel
//! counted itself while each was armed (see `kernel::probe_tests::smp_text`
//! for why that comparison is exact).
//!
//! Each run lasts `KTRACE_SMP_TEXT_SECS` seconds (default 15): one on the
//! suite's CPUs (`KTRACE_TEST_CPUS`), one on 2 and one on 4 vCPUs. The VM has as
//! many CPUs as the test harness gives it; the figures in `docs/ktrace.md`
//! are from 2 and 4 vCPUs.

use std::time::Duration;

use ktrace_tests::TestVm;
use probe_sdk::trace::TraceClient;

fn secs() -> u64 {
    std::env::var("KTRACE_SMP_TEXT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

/// `(hits, counted, missed)` from the line of `kind` ("kprobe: per-CPU
/// hits [..] sum to H == C calls ... (missed M)").
fn sums(output: &[String], kind: &str) -> (u64, u64, u64) {
    let line = output
        .iter()
        .find(|l| l.contains(&format!("{kind}: per-CPU hits")))
        .unwrap_or_else(|| panic!("no per-CPU line for {kind} in {output:#?}"));
    let after = line.split("sum to ").nth(1).expect("sum to");
    let mut words = after.split_whitespace();
    let hits = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("=="));
    let counted = words.next().unwrap().parse().unwrap();
    let missed = line
        .rsplit("(missed ")
        .next()
        .and_then(|m| m.trim_end_matches(')').parse().ok())
        .expect("(missed M)");
    (hits, counted, missed)
}

/// One run of the self test on a VM of `cpus` CPUs (`None`: the suite's).
fn run(cpus: Option<u32>) {
    let secs = secs();
    let mut vm = match cpus {
        Some(n) => TestVm::boot_cpus("smp-text", n),
        None => TestVm::boot("smp-text"),
    };
    let mut client = vm.client();
    client.set_request_timeout(Duration::from_secs(secs + 120));

    let bad = client.self_test("smp_text:0").unwrap();
    assert!(!bad.passed);
    assert_eq!(
        bad.output,
        ["smp_text:0: the argument is the duration in seconds, 1 to 600"]
    );

    let r = client.self_test(&format!("smp_text:{secs}")).unwrap();
    eprintln!("{} CPUs:", client.info().unwrap().cpus);
    for line in &r.output {
        eprintln!("    {line}");
    }
    assert!(r.passed, "smp_text failed: {:#?}", r.output);
    for kind in ["kprobe", "kretprobe", "tracepoint", "optimised kprobe"] {
        let (hits, counted, missed) = sums(&r.output, kind);
        assert_eq!((hits, missed), (counted, 0), "{kind}");
        assert!(counted > 0, "{kind}: no call ran while armed");
    }
    assert!(client.list_probes().unwrap().is_empty());
    client.info().expect("alive after the run");
}

#[test]
fn attach_and_detach_under_running_callers_count_every_hit_exactly() {
    run(None);
}

#[test]
fn the_same_on_2_vcpus() {
    run(Some(2));
}

#[test]
fn the_same_on_4_vcpus() {
    run(Some(4));
}
