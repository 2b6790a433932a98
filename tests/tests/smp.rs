//! Several CPUs end to end: the kernel finds and starts the CPUs QEMU
//! gives it (`ktrace vm start --cpus N`), reports them, runs IPIs and
//! TLB shootdowns across them, spreads tasks over all of them, and hands
//! wake-ups between them without losing one. The in-kernel parts are the
//! `smp_*` self tests (kernel `smp_tests`), each of which also says what it
//! saw; the assertions here check those facts exactly.

use std::time::Duration;

use ktrace_abi::vm::{qemu_exit_status, DebugRequest, EXIT_PANIC};
use ktrace_abi::Request;
use ktrace_tests::{ktrace, unique_name, CliVmGuard, TestVm};
use probe_sdk::client::Client;
use probe_sdk::vm::ExitKind;

fn self_test(client: &mut Client, name: &str) -> Vec<String> {
    client.set_request_timeout(Duration::from_secs(120));
    let r = client
        .self_test(name)
        .unwrap_or_else(|e| panic!("self test {name}: {e}"));
    eprintln!("--- {name}: {}", if r.passed { "passed" } else { "FAILED" });
    for line in &r.output {
        eprintln!("    {line}");
    }
    assert!(r.passed, "self test {name} failed: {:#?}", r.output);
    r.output
}

/// `info` counts the CPUs, each AP has its idle task on its own CPU, and a
/// call on every CPU comes back from each with its own number.
fn cpus_answer(cpus: u32) {
    let mut vm = TestVm::boot_cpus(&format!("smp{cpus}"), cpus);
    let mut client = vm.client();
    let info = client.info().unwrap();
    assert_eq!(info.cpus, cpus);
    for cpu in 1..cpus {
        let name = format!("idle/{cpu}");
        let idle = info
            .tasks
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no task {name} in {:#?}", info.tasks));
        assert_eq!(idle.cpu, cpu, "{idle:?}");
        assert_eq!(idle.migrations, 0, "{idle:?}");
    }
    let out = self_test(&mut client, "smp_call_function");
    let mut expected: Vec<String> = (0..cpus)
        .map(|c| format!("cpu {c}: ran the call, reported cpu {c}"))
        .collect();
    expected.push(format!("sync_all_cpus returned on {cpus} CPUs"));
    assert_eq!(out, expected);
}

#[test]
fn two_cpus_come_up_and_answer_calls() {
    cpus_answer(2);
}

#[test]
fn four_cpus_come_up_and_answer_calls() {
    cpus_answer(4);
}

#[test]
fn unmapping_reaches_every_cpus_tlb() {
    let mut vm = TestVm::boot_cpus("smp-tlb", 2);
    let mut client = vm.client();
    let out = self_test(&mut client, "smp_tlb_shootdown");
    assert_eq!(out[0], "read while mapped: ok");
    assert_eq!(out[1], "read after unmap: faulted");
    let shootdowns: u64 = out[3]
        .strip_prefix("shootdowns: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    // The unmap (mapping the page back needs none: nothing maps it).
    assert!(shootdowns >= 1, "{out:?}");
}

#[test]
fn tasks_spread_over_every_cpu_and_wakeups_cross_cpus() {
    let mut vm = TestVm::boot_cpus("smp-spread", 2);
    let mut client = vm.client();
    let out = self_test(&mut client, "smp_spread");
    assert_eq!(
        out.last().unwrap(),
        "CPUs the tasks ran on: 0b11 of 0b11",
        "{out:?}"
    );
    // The scheduler's own account, as `ktrace info` shows it: tasks sit on
    // both CPUs.
    let cpus: std::collections::BTreeSet<&str> = out
        .iter()
        .filter_map(|l| l.split(": cpu ").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .collect();
    assert_eq!(cpus.len(), 2, "{out:?}");
    let out = self_test(&mut client, "smp_wake_pingpong");
    assert!(
        out[0].starts_with("token at 4000 of 4000 after the exchange"),
        "{out:?}"
    );
    // Both CPUs serve the control session afterwards.
    let info = client.info().unwrap();
    assert_eq!(info.cpus, 2);
}

#[test]
fn cpu_counts_the_kernel_cannot_take_are_refused() {
    for cpus in ["0", "17"] {
        let name = unique_name("smp-bad");
        let _guard = CliVmGuard(name.clone());
        let out = ktrace()
            .args(["vm", "start", "--name", &name, "--cpus", cpus])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "invalid CPU count {cpus}: expected 1 to 16 (the kernel's limit)"
            )),
            "{stderr}"
        );
        assert!(
            probe_sdk::vm::Vm::attach(&name).is_err(),
            "a VM was started"
        );
    }
    let out = ktrace()
        .args(["vm", "start", "--cpus", "two"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'two' for '--cpus <N>'"));
}

/// A panic on one CPU while the others run tasks: the report names the
/// panicking CPU and the task, is whole, and nothing follows it (the other
/// CPUs were stopped).
#[test]
fn a_panic_names_its_cpu_and_stops_the_others() {
    let mut vm = TestVm::boot_cpus("smp-panic", 4);
    let mut client = vm.client();
    let info = client.info().unwrap();
    client
        .send_request(&Request::Debug(DebugRequest::Panic))
        .unwrap();
    let exit = vm
        .vm()
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the VM did not exit after the forced panic"));
    let console = vm.vm().console();
    let ExitKind::Panicked(report) = exit.kind else {
        panic!("exit not classified as a panic ({exit:?}); console:\n{console}");
    };
    assert_eq!(exit.status, Some(qemu_exit_status(EXIT_PANIC)));
    assert!(report.complete, "{report}");
    assert!(report.has_frame("kernel::debug::forced_panic"), "{report}");
    // "  cpu N, task pid P, uptime ..." with the control task's pid.
    let control = info.tasks.iter().find(|t| t.name == "control").unwrap();
    let line = report
        .lines
        .iter()
        .find(|l| l.trim_start().starts_with("cpu "))
        .unwrap_or_else(|| panic!("no cpu line in\n{report}"));
    let cpu: u32 = line.trim_start()["cpu ".len()..]
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(cpu < 4, "{line}");
    assert!(
        line.contains(&format!(", task pid {}, uptime ", control.pid)),
        "{line}"
    );
    assert_eq!(console.matches("KERNEL PANIC").count(), 1, "{console}");
    let after = console.split("---[ end of report ]---").nth(1).unwrap();
    assert!(
        after.trim().is_empty(),
        "printed after the report: {after:?}"
    );
}
