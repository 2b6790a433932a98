//! Perf events belong to the client that opened them: a `kperf` killed
//! with SIGKILL leaves no counter, no kprobe behind a counter and no busy
//! sampling timer.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ktrace_abi::trace::{PerfEvent, ProbeKind, ProbeTarget};
use ktrace_abi::ErrorCode;
use ktrace_tests::{kernel_image, TestVm};
use probe_sdk::client::Client;
use probe_sdk::trace::TraceClient;

/// A running `kperf`, its stderr kept in a file to explain a failure.
struct Kperf {
    child: std::process::Child,
    stderr: std::path::PathBuf,
}

impl Kperf {
    fn start(args: &[&str]) -> Kperf {
        let stderr = std::env::temp_dir().join(format!(
            "ktrace-perf-lifetimes-{}-{}.err",
            std::process::id(),
            args[0]
        ));
        let child = Command::new(ktrace_tests::tools_dir().join("kperf"))
            .args(args)
            .env("KTRACE_KERNEL", &kernel_image().source)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("spawn kperf");
        Kperf { child, stderr }
    }

    /// Polls `cond` until it holds; fails at once, with kperf's stderr, if
    /// kperf ended first.
    fn wait_until(&mut self, what: &str, cond: impl FnMut() -> bool) {
        if let Err(ended) = self.try_wait_until(what, cond) {
            panic!("{ended}");
        }
    }

    /// [`Kperf::wait_until`], with kperf ending first as an error that
    /// carries its exit status and stderr.
    fn try_wait_until(&mut self, what: &str, cond: impl FnMut() -> bool) -> Result<(), String> {
        let mut cond = cond;
        let mut ended = None;
        wait_for(what, || {
            if let Some(status) = self.child.try_wait().unwrap() {
                ended = Some(format!(
                    "kperf ended ({status}) before {what}; its stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ));
                return true;
            }
            cond()
        });
        ended.map_or(Ok(()), Err)
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Polls `cond` every 50 ms for up to 120 s (a bound on a hang, not a
/// timing: a loaded machine indexes the kernel slowly); returns how long it
/// took.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(120), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

fn perf_kprobes(c: &mut Client) -> usize {
    c.list_probes()
        .unwrap()
        .iter()
        .filter(|p| p.handler == "perf")
        .count()
}

fn sampling_busy(c: &mut Client) -> bool {
    match c.perf_open(PerfEvent::Sampling {
        freq_hz: 99,
        max_stack: 0,
    }) {
        Ok(id) => {
            c.perf_close(id).unwrap();
            false
        }
        Err(e) => {
            let r = e.kernel_reply().expect("an error frame");
            assert_eq!(r.code, ErrorCode::Limit, "{}", r.message);
            true
        }
    }
}

#[test]
fn a_killed_kperf_leaves_no_counter_probe_or_timer_behind() {
    let mut vm = TestVm::boot("perf-owner");
    let name = vm.name().to_string();
    let mut c = vm.client();

    // kperf stat with a kprobe counter, killed while it counts.
    let mut stat = Kperf::start(&[
        "stat",
        "--vm",
        &name,
        "-e",
        "kprobe:kernel::probe_tests::add3,context-switches",
        "--duration",
        "60",
    ]);
    stat.wait_until("kperf stat's kprobe counter", || perf_kprobes(&mut c) == 1);
    stat.kill();
    let gone = wait_for("the counter's kprobe to go", || perf_kprobes(&mut c) == 0);
    eprintln!("kperf stat killed: its kprobe was removed {gone:?} later");

    // kperf record holds the one sampling timer; killed, it frees it.
    // The test sees the timer taken by trying to take it: when its own
    // short-lived event holds the timer the moment kperf asks, kperf is
    // refused as it should be and is started again.
    let mut tries = 0;
    let record = loop {
        let mut record = Kperf::start(&[
            "record",
            "--vm",
            &name,
            "-F",
            "999",
            "--duration",
            "60",
            "-o",
            "/dev/null",
        ]);
        match record.try_wait_until("kperf record's sampling event", || sampling_busy(&mut c)) {
            Ok(()) => break record,
            Err(ended) if tries < 5 && ended.contains("a sampling event is already open") => {
                let _ = std::fs::remove_file(&record.stderr);
                tries += 1
            }
            Err(ended) => panic!("{ended}"),
        }
    };
    record.kill();
    let free = wait_for("the sampling timer to be free", || !sampling_busy(&mut c));
    eprintln!("kperf record killed: the sampling timer was free {free:?} later");

    // The probes a user added by hand are not a client's: they stay.
    let p = c
        .add_probe(
            ProbeTarget::Symbol {
                name: "kernel::probe_tests::add3".into(),
                offset: 0,
            },
            ProbeKind::Kprobe,
        )
        .unwrap();
    drop(c);
    let mut c = vm.client();
    assert_eq!(c.list_probes().unwrap().len(), 1);
    c.remove_probe(p.id).unwrap();
    c.info().expect("alive");
}
