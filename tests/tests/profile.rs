//! The profiler sees code that runs with interrupts disabled: sampling is
//! driven by NMIs, so `kperf record` through the real binaries finds a
//! function that only ever runs with interrupts off, with the share of
//! samples its known cost predicts.

use std::process::Command;

use ktrace_tests::{kernel_image, TestVm};
use serde_json::Value;

fn kperf() -> Command {
    let bin = ktrace_tests::tools_dir().join("kperf");
    let mut c = Command::new(bin);
    c.env("KTRACE_KERNEL", &kernel_image().source);
    c
}

#[test]
fn a_function_that_runs_with_interrupts_off_is_sampled_by_its_cost() {
    let mut vm = TestVm::boot("profile-nmi");
    let name = vm.name().to_string();
    let mut client = vm.client();
    // A task alternating 2 ms with interrupts off and 2 ms on, for longer
    // than kperf needs to start (the VM goes with the test).
    let r = client.self_test("irqs_off_load").unwrap();
    assert!(r.passed, "{:?}", r.output);
    drop(client);
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("kperf.data");
    let out = kperf()
        .args([
            "record",
            "--vm",
            &name,
            "-F",
            "999",
            "--duration",
            "2",
            "-o",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kperf()
        .args(["report", "--json", "--limit", "1000", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let self_samples = |sym: &str| {
        report["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["symbol"] == sym)
            .map(|s| s["self_samples"].as_u64().unwrap())
            .unwrap_or(0)
    };
    let total = report["samples"].as_u64().unwrap();
    let off = self_samples("kernel::probe_tests::irqs_off_spin");
    let on = self_samples("kernel::probe_tests::irqs_on_spin");
    eprintln!(
        "{total} samples: irqs_off_spin {off} ({:.1}%), irqs_on_spin {on} ({:.1}%)",
        100.0 * off as f64 / total.max(1) as f64,
        100.0 * on as f64 / total.max(1) as f64
    );
    assert!(total >= 200, "{total} samples in 2 s at 999 Hz");
    // Both halves cost the same: the samples split about evenly. Without
    // NMIs the interrupts-off half gets none.
    let top: Vec<String> = report["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .take(8)
        .map(|s| format!("{} {}", s["self_samples"], s["symbol"]))
        .collect();
    eprintln!("top: {top:#?}");
    assert!(off > 0, "the interrupts-off function was never sampled");
    let ratio = off as f64 / on.max(1) as f64;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "irqs_off_spin {off} vs irqs_on_spin {on} samples: want about 1:1"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// NMIs at the highest rate kperf asks for (10 kHz) land everywhere while kprobes, a kretprobe and
/// tracepoints fire on the timer and scheduler paths (the `stress` self
/// test, which checks its own exact counts): in int3 handlers, in
/// single-step slots, in the trampoline, in spinlocks held with interrupts
/// off. Nothing may break, and the profile still records.
#[test]
fn nmi_sampling_at_full_rate_during_probe_stress() {
    let mut vm = TestVm::boot("profile-stress");
    let name = vm.name().to_string();
    let mut client = vm.client();
    client.set_request_timeout(std::time::Duration::from_secs(120));
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("kperf.data");
    let record = kperf()
        .args([
            "record",
            "--vm",
            &name,
            "-F",
            "10000",
            "-g",
            "--duration",
            "8",
            "-o",
        ])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let r = client.self_test("stress").unwrap();
    assert!(r.passed, "stress under NMI sampling: {:#?}", r.output);
    let out = record.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!("{}", stderr.trim());
    let samples = std::fs::read_to_string(&data).unwrap().lines().count() - 1;
    // More than the kernel's ring holds (8192): kperf drains while it
    // records.
    assert!(
        samples > 8192,
        "{samples} samples at 10 kHz for 8 s: no more than one ring's worth"
    );
    client.info().expect("alive");
    let _ = std::fs::remove_dir_all(&dir);
}
