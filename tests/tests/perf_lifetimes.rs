//! Perf events belong to the client that opened them: a `kperf` killed
//! with SIGKILL leaves no counter, no kprobe behind a counter and no busy
//! sampling timer. The test watches through the kernel's read-only listing
//! of open events (`ktrace perf list`), so it never competes with kperf
//! for the one sampling timer.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ktrace_abi::trace::{
    PerfEvent, PerfEventInfo, PerfHolder, ProbeKind, ProbeTarget, SoftwareEvent,
};
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
    fn wait_until(&mut self, what: &str, mut cond: impl FnMut() -> bool) {
        let mut ended = None;
        wait_for(what, || {
            if let Some(status) = self.child.try_wait().unwrap() {
                ended = Some(status);
                return true;
            }
            cond()
        });
        if let Some(status) = ended {
            panic!(
                "kperf ended ({status}) before {what}; its stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
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

/// The open perf events as (event, enabled), when every one is held by
/// the same host client other than `me`; `None` while there are none.
fn held_by_another(c: &mut Client, me: PerfHolder) -> Option<Vec<(PerfEvent, bool)>> {
    let events = c.list_perf().unwrap();
    let holder = events.first()?.holder;
    assert!(
        matches!(holder, PerfHolder::Client { .. }) && holder != me,
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.holder == holder), "{events:?}");
    Some(events.into_iter().map(|e| (e.event, e.enabled)).collect())
}

/// `ktrace perf list` on VM `vm`.
fn perf_list_cli(vm: &str) -> String {
    ktrace_tests::ktrace_ok(&["--vm", vm, "perf", "list"])
}

/// The listing through the protocol and `ktrace perf list` (VM `name`):
/// empty, then `c`'s own events with their fields, enabled and disabled.
fn the_listing_shows_own_events(c: &mut Client, name: &str) {
    let hello = c.hello_reply().expect("handshake").clone();
    let me = PerfHolder::Client {
        session: hello.session,
        client_generation: hello.client_generation,
    };
    assert_eq!(c.list_perf().unwrap(), vec![]);
    assert_eq!(
        perf_list_cli(name),
        "no perf events open\nsampling timer: free\n"
    );

    let cs = PerfEvent::Software(SoftwareEvent::ContextSwitches);
    let id = c.perf_open(cs.clone()).unwrap();
    let listed = |enabled| PerfEventInfo {
        id,
        event: cs.clone(),
        enabled,
        holder: me,
    };
    assert_eq!(c.list_perf().unwrap(), vec![listed(false)]);
    c.perf_enable(id).unwrap();
    assert_eq!(c.list_perf().unwrap(), vec![listed(true)]);
    let (session, generation) = (hello.session, hello.client_generation);
    assert_eq!(
        perf_list_cli(name),
        format!(
            "ID  HOLDER              STATE    EVENT\n\
             {id:<3} session {session} client {generation}  enabled  context-switches\n\
             sampling timer: free\n"
        )
    );
    c.perf_disable(id).unwrap();
    assert_eq!(c.list_perf().unwrap(), vec![listed(false)]);

    // A sampling event: its frequency, its call-chain depth as the kernel
    // records it (capped at 32), and the timer shown taken.
    let sampling = c
        .perf_open(PerfEvent::Sampling {
            freq_hz: 99,
            max_stack: 64,
        })
        .unwrap();
    assert_eq!(
        c.list_perf().unwrap(),
        vec![
            listed(false),
            PerfEventInfo {
                id: sampling,
                event: PerfEvent::Sampling {
                    freq_hz: 99,
                    max_stack: 32,
                },
                enabled: false,
                holder: me,
            }
        ]
    );
    let json: serde_json::Value = serde_json::from_str(&ktrace_tests::ktrace_ok(&[
        "--vm", name, "perf", "list", "--json",
    ]))
    .unwrap();
    assert_eq!(json[1]["id"], sampling);
    assert_eq!(json[1]["event"]["Sampling"]["max_stack"], 32);
    assert!(
        perf_list_cli(name).ends_with(&format!(
            "sampling timer: in use by event {sampling} (session {session} client {generation})\n"
        )),
        "{}",
        perf_list_cli(name)
    );
    // Into a pipe whose reader has gone, it ends as `cat` does.
    ktrace_tests::assert_ends_by_sigpipe("ktrace", &["--vm", name, "perf", "list"]);
    c.perf_close(sampling).unwrap();
    c.perf_close(id).unwrap();
    assert_eq!(c.list_perf().unwrap(), vec![]);
}

#[test]
fn perf_events_are_listed_and_a_killed_kperf_leaves_none_behind() {
    let mut vm = TestVm::boot("perf-owner");
    let name = vm.name().to_string();
    let mut c = vm.client();
    the_listing_shows_own_events(&mut c, &name);
    let hello = c.hello_reply().expect("handshake").clone();
    let me = PerfHolder::Client {
        session: hello.session,
        client_generation: hello.client_generation,
    };

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
    let counting = vec![
        (
            PerfEvent::Kprobe {
                target: ProbeTarget::Symbol {
                    name: "kernel::probe_tests::add3".into(),
                    offset: 0,
                },
            },
            true,
        ),
        (PerfEvent::Software(SoftwareEvent::ContextSwitches), true),
    ];
    stat.wait_until("kperf stat's counters, enabled", || {
        held_by_another(&mut c, me).as_ref() == Some(&counting)
    });
    assert_eq!(perf_kprobes(&mut c), 1);
    stat.kill();
    let gone = wait_for("kperf stat's counters to go", || {
        held_by_another(&mut c, me).is_none()
    });
    // An event leaves the listing only once what it held is given back.
    assert_eq!(perf_kprobes(&mut c), 0);
    eprintln!("kperf stat killed: its counters were closed {gone:?} later");

    // kperf record holds the one sampling timer; killed, it frees it.
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
    let sampling = vec![(
        PerfEvent::Sampling {
            freq_hz: 999,
            max_stack: 0,
        },
        true,
    )];
    record.wait_until("kperf record's sampling event, enabled", || {
        held_by_another(&mut c, me).as_ref() == Some(&sampling)
    });
    record.kill();
    let free = wait_for("kperf record's sampling event to go", || {
        held_by_another(&mut c, me).is_none()
    });
    eprintln!("kperf record killed: its sampling event was closed {free:?} later");
    // Listed empty, so the timer is free: taking it now must succeed.
    let mine = c
        .perf_open(PerfEvent::Sampling {
            freq_hz: 99,
            max_stack: 0,
        })
        .expect("the sampling timer, free once the listing is empty");
    c.perf_close(mine).unwrap();
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
