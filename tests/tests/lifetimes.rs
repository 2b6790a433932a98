//! Nothing outlives its owner: a client killed at any point (mid-stream
//! included) leaves its session usable and takes what it loaded with it,
//! pinned objects outlive the command that loaded them until unloaded, and
//! the kernel heap comes back to the byte after many cycles.
//!
//! Killed clients are real processes killed with SIGKILL: `ktrace events`
//! for the streaming case, and this test binary re-run as a helper (see
//! [`killed_client_helper`]) for the connect/load/kill cycles.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ktrace_abi::bpf::{map_type, AttachTarget, LoadOptions, ObjectLoad, ProgramLoad, ProgramType};
use ktrace_abi::vm::SystemInfo;
use ktrace_tests::{
    asm_program, create_map, ktrace, TestVm, COUNT_IN_SLOT_0, RING_RECORD_WITH_SEQ,
};
use probe_sdk::client::{Client, ConnectOptions};
use probe_sdk::runtime::Runtime;
use probe_sdk::vm::{StopHow, Vm};

use ktrace_tests::map_def as def;

fn kprobe_prog(name: &str, asm: &str, attach: AttachTarget) -> ProgramLoad {
    asm_program(
        name,
        "kprobe/kernel::bpf::testing::target".into(),
        ProgramType::Kprobe,
        attach,
        asm,
    )
}

fn target() -> AttachTarget {
    ktrace_tests::kprobe_at("kernel::bpf::testing::target")
}

/// An object with a 4 MiB array map and a program attached to the test
/// target that uses it (15 of these used to exhaust the heap for good).
fn big_object(target: AttachTarget) -> ObjectLoad {
    ObjectLoad {
        maps: vec![def("BIG", map_type::ARRAY, 4, 4096, 1024)],
        programs: vec![kprobe_prog("count_big", COUNT_IN_SLOT_0, target)],
    }
}

fn opts(name: &str, handshake: Duration) -> ConnectOptions {
    ConnectOptions {
        client_name: name.into(),
        handshake_timeout: handshake,
        request_timeout: Duration::from_secs(20),
        ..ConnectOptions::default()
    }
}

fn info(c: &mut Client) -> SystemInfo {
    c.info().expect("Info")
}

/// Batches the kernel holds for clients that read too slowly, over all
/// sessions.
fn held(i: &SystemInfo) -> u64 {
    i.event_sessions.iter().map(|s| s.batches_held).sum()
}

/// Records the event task took out of the streams: pushed, waiting for
/// room, or dropped with a client that left.
fn taken(i: &SystemInfo) -> u64 {
    i.event_sessions
        .iter()
        .map(|s| s.records_pushed + s.records_waiting + s.records_dropped)
        .sum()
}

/// The ring's (submitted, lost, consumed).
fn ring_counts(c: &mut Client, ring: u32) -> (u64, u64, u64) {
    let m = Runtime::new(c)
        .maps()
        .unwrap()
        .into_iter()
        .find(|m| m.id == ring)
        .expect("the ring map");
    (m.submitted, m.lost, m.consumed)
}

/// Receives `stream`'s pushes (the sequence number of each
/// [`RING_RECORD_WITH_SEQ`] record, its second 8 bytes, into `seqs`) until the ring is empty and the client
/// got every record the kernel pushed to `session` since `pushed_before`.
fn drain_ring(
    stream: &mut Client,
    c: &mut Client,
    ring: u32,
    session: usize,
    pushed_before: u64,
    seqs: &mut Vec<u64>,
) {
    // A bound on a hang, not a timing.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(ktrace_abi::Response::Bpf(ktrace_abi::bpf::BpfResponse::Events(b))) =
            stream.next_push(Duration::from_millis(300)).unwrap()
        {
            seqs.extend(
                b.records
                    .iter()
                    .map(|r| u64::from_le_bytes(r.data[8..16].try_into().unwrap())),
            );
            continue;
        }
        let (submitted, _, consumed) = ring_counts(c, ring);
        let now = info(c).event_sessions[session];
        if submitted == consumed && now.records_pushed - pushed_before == seqs.len() as u64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the re-subscribed stream stalled: {} records received, ring submitted {submitted} consumed {consumed}, {now:?}",
            seqs.len()
        );
    }
}

#[test]
fn a_client_killed_mid_stream_leaves_its_session_usable() {
    let mut t = TestVm::boot("lt-kill-stream");
    let name = t.name().to_string();
    // This client (session 0) owns the producer: a program that writes a
    // record per hit into a 4 MiB ring buffer.
    let mut c = t.client();
    let (ring, prog) = {
        let mut rt = Runtime::new(&mut c);
        let seq = create_map(&mut rt, "seq", map_type::ARRAY, 4, 8, 1);
        let ring = create_map(&mut rt, "ring", map_type::RINGBUF, 0, 0, 4 << 20);
        let p = rt
            .prog_load(
                kprobe_prog("rbout", RING_RECORD_WITH_SEQ, target()),
                vec![seq, ring],
                LoadOptions::default(),
            )
            .unwrap();
        rt.attach(p.id, target(), false).unwrap();
        (ring, p.id)
    };
    let before = info(&mut c);
    // The producer: a kernel task making 10M probed calls. A
    // jump-optimised probe runs them within seconds, so another starts
    // whenever the last has finished.
    let keep_producing = |c: &mut Client| {
        if !info(c).tasks.iter().any(|t| t.name == "bpf-trigger") {
            Runtime::new(c).trigger_spawn(10_000_000).unwrap();
        }
    };
    keep_producing(&mut c);

    // More kills than the port has transmit buffers (16): each used to
    // cost the port the buffer QEMU kept, and the first one its session.
    const KILLS: u64 = 17;
    let vm = Vm::attach(&name).unwrap();
    let mut slowest = Duration::ZERO;
    let mut next = None;
    for kill in 0..KILLS {
        // `ktrace events` streams the ring (session 1) into a pipe nobody
        // reads: once the pipe and the socket are full, QEMU throttles the
        // port and holds a buffer half written — the worst moment to die.
        let held_before = held(&info(&mut c));
        let mut events = ktrace()
            .args([
                "--vm",
                &name,
                "events",
                "--map",
                &ring.to_string(),
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ktrace events");
        // A bound on a hang, not a timing: a loaded host runs the guest
        // slowly.
        let deadline = Instant::now() + Duration::from_secs(180);
        // It has fallen behind once the kernel holds a batch for it
        // because the link is full.
        while held(&info(&mut c)) == held_before {
            keep_producing(&mut c);
            if Instant::now() >= deadline {
                // Seen intermittently on a loaded host (kill 10 of 17 once):
                // what the kernel was doing then, for the next look.
                let now = info(&mut c);
                let mut rt = Runtime::new(&mut c);
                panic!(
                    "kill {kill}: the streaming client never fell behind\ntasks: {:?}\nprograms: {:?}\nmaps: {:?}\ncontrol: tx waits {}, rebuilds {}, disconnects {}",
                    now.tasks,
                    rt.progs().unwrap(),
                    rt.maps().unwrap(),
                    now.control_tx_waits,
                    now.control_tx_queue_rebuilds,
                    now.control_disconnects
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        events.kill().expect("kill -9 ktrace events");
        events.wait().unwrap();

        // The next client gets the killed client's session (the first
        // free one). It must be answered, and quickly; the time is
        // reported, not asserted (shared machines).
        drop(next.take());
        let killed_at = Instant::now();
        next = Some(loop {
            match vm.connect(&opts("after-kill", Duration::from_secs(2))) {
                Ok(n) => break n,
                Err(e) => assert!(
                    killed_at.elapsed() < Duration::from_secs(30),
                    "kill {kill}: the killed client's session never answered again: {e}\nconsole:\n{}",
                    vm.console()
                ),
            }
        });
        slowest = slowest.max(killed_at.elapsed());
        if kill + 1 < KILLS {
            // Free the session for the next streaming client.
            drop(next.take());
        }
    }
    let mut next = next.expect("a client after the last kill");
    let session = next.hello_reply().unwrap().session as usize;
    // Nobody subscribes now: the event task must leave the ring alone
    // (it used to drain it as fast as it could into the killed client's
    // closed port). The ring fills and its producer counts the losses.
    // Two rounds: a batch the task was collecting when the last client
    // left may still be counted during the first.
    let mut quiet = Vec::new();
    for _ in 0..2 {
        let (_, lost, _) = ring_counts(&mut c, ring);
        let deadline = Instant::now() + Duration::from_secs(120);
        while ring_counts(&mut c, ring).1 == lost {
            assert!(
                Instant::now() < deadline,
                "the producer never filled the unread ring"
            );
            keep_producing(&mut c);
            std::thread::sleep(Duration::from_millis(50));
        }
        quiet.push((ring_counts(&mut c, ring).2, taken(&info(&mut c))));
    }
    assert_eq!(
        quiet[1], quiet[0],
        "with no client subscribed, nothing is taken out of the ring (consumed, taken) while its losses grow"
    );
    let after = info(&mut next);
    eprintln!(
        "{KILLS} clients killed mid-stream: their session answered again at most {slowest:?} after the kill; {} transmit queues rebuilt",
        after.control_tx_queue_rebuilds - before.control_tx_queue_rebuilds
    );
    assert_eq!(
        after.control_disconnects - before.control_disconnects,
        2 * KILLS - 1,
        "every killed client and every client after one went away"
    );
    assert!(
        after.control_abandoned_tx_bytes > before.control_abandoned_tx_bytes,
        "the bytes the killed clients never read are counted: {after:?}"
    );
    assert_eq!(
        after.control_tx_queue_rebuilds - before.control_tx_queue_rebuilds,
        KILLS,
        "each kill left QEMU holding one buffer, got back by a queue rebuild"
    );
    assert_eq!(after.control_tx_slots_lost, 0, "no transmit buffer is lost");
    let stats = after.event_sessions[session];
    assert!(
        stats.batches_held - before.event_sessions[session].batches_held >= KILLS,
        "every killed client fell behind on session {session}: {stats:?}"
    );
    assert_eq!(
        stats.records_waiting, 0,
        "nothing waits for a client that left: {stats:?}"
    );
    // Its subscription went with it: the producer still writes, but the
    // session's new client is sent nothing it did not ask for.
    Runtime::new(&mut c).trigger(100, 0).unwrap();
    assert_eq!(
        next.next_push(Duration::from_secs(1)).unwrap(),
        None,
        "the killed client's subscription must not reach the next client"
    );
    // The stream still works for whoever asks next, on that session, and
    // delivers exactly what the kernel says it pushed. Let the producer
    // task finish first, so the ring can run dry.
    let deadline = Instant::now() + Duration::from_secs(300);
    while info(&mut c).tasks.iter().any(|t| t.name == "bpf-trigger") {
        assert!(Instant::now() < deadline, "the producer task never ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pushed_before = info(&mut next).event_sessions[session].records_pushed;
    Runtime::new(&mut next)
        .subscribe(vec![ring], false)
        .unwrap();
    // What waited in the ring comes first; then 100 records written while
    // nothing else writes (the ring has room again by then).
    let mut seqs = Vec::new();
    drain_ring(&mut next, &mut c, ring, session, pushed_before, &mut seqs);
    let waited = seqs.len();
    Runtime::new(&mut c).trigger(100, 0).unwrap();
    drain_ring(&mut next, &mut c, ring, session, pushed_before, &mut seqs);
    assert_eq!(seqs.len() - waited, 100, "the 100 new records came");
    assert!(
        seqs[waited..].windows(2).all(|w| w[1] == w[0] + 1),
        "the new records come whole and in order: {:?}",
        &seqs[waited..]
    );
    // Every record taken out of the ring was pushed, or dropped with a
    // client that left: the kernel's two counts agree exactly.
    let end = info(&mut c);
    let (submitted, lost, consumed) = ring_counts(&mut c, ring);
    eprintln!(
        "ring: {submitted} submitted, {lost} lost, {consumed} consumed; {waited} waited for the new subscriber; session {session}: {:?}",
        end.event_sessions[session]
    );
    assert_eq!(consumed, taken(&end), "{:?}", end.event_sessions);
    drop(next);
    Runtime::new(&mut c).prog_unload(prog).unwrap();
    drop(c);

    // And the VM still shuts down on request.
    let report = Vm::attach(&name).unwrap().stop(Duration::from_secs(20));
    assert_eq!(report.how, StopHow::Shutdown, "{report:?}");
}

/// Not a test on its own: the child that [`killed_clients_give_back_what_they_loaded`]
/// starts and kills. Connects to `KTRACE_LT_VM`, loads [`big_object`]
/// (not pinned) attached at `KTRACE_LT_TARGET`, says `ready` and waits to
/// be killed.
#[test]
#[ignore = "helper process of killed_clients_give_back_what_they_loaded"]
fn killed_client_helper() {
    let (Ok(name), Ok(target)) = (
        std::env::var("KTRACE_LT_VM"),
        std::env::var("KTRACE_LT_TARGET"),
    ) else {
        return;
    };
    let target: AttachTarget = serde_json::from_str(&target).unwrap();
    let vm = Vm::attach(&name).unwrap();
    let mut c = vm
        .connect(&opts("lt-helper", Duration::from_secs(20)))
        .unwrap();
    Runtime::new(&mut c)
        .load_object("big", big_object(target), true, LoadOptions::default())
        .unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(600));
}

/// Starts [`killed_client_helper`] and waits until it loaded its object.
fn spawn_helper(vm: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_client_helper",
            "--ignored",
            "--nocapture",
        ])
        .env("KTRACE_LT_VM", vm)
        .env(
            "KTRACE_LT_TARGET",
            serde_json::to_string(&target()).unwrap(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the helper");
    let out = child.stdout.take().unwrap();
    let ready = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "ready");
    assert!(ready, "the helper did not load its object");
    child
}

/// Runs `f` on a fresh connection, closed afterwards. Every reading of
/// the heap is made the same way (the same requests, ids and answer
/// sizes), so transient buffers weigh the same each time.
fn with_client<T>(vm: &str, f: impl FnOnce(&mut Client) -> T) -> T {
    let v = Vm::attach(vm).unwrap();
    let mut c = v
        .connect(&opts("lt-test", Duration::from_secs(20)))
        .unwrap();
    f(&mut c)
}

/// The heap figure once two readings 200 ms apart agree (the control
/// task frees a killed client's objects when it sees the port close).
fn heap_stable(vm: &str) -> u64 {
    let mut last = with_client(vm, |c| info(c).heap_used_bytes);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = with_client(vm, |c| info(c).heap_used_bytes);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the kernel heap never settled (last {last} bytes)");
}

/// Loads [`big_object`] pinned as `big`, fires it, unloads it by name.
fn load_unload(vm: &str) {
    with_client(vm, |c| {
        let mut rt = Runtime::new(c);
        let loaded = rt
            .load_object_pinned(
                "big",
                big_object(target()),
                true,
                LoadOptions::default(),
                Some("big".into()),
            )
            .unwrap();
        assert_eq!(loaded.object.pin.as_deref(), Some("big"));
        rt.trigger(3, 0).unwrap();
        let freed = rt.object_unload("big").unwrap();
        assert_eq!(
            (freed.maps.len(), freed.programs.len(), freed.links.len()),
            (1, 1, 1)
        );
    });
}

#[test]
fn killed_clients_give_back_what_they_loaded() {
    let t = TestVm::boot("lt-heap");
    let name = t.name().to_string();
    // One round of each cycle first: the first load sizes tables that
    // stay (the kprobe table, the interpreter's scratch, a session's
    // receive buffer), which is not a leak.
    // Three rounds: with several CPUs, each CPU's share is sized the
    // first time work lands on it.
    for _ in 0..3 {
        let mut helper = spawn_helper(&name);
        helper.kill().unwrap();
        helper.wait().unwrap();
        load_unload(&name);
    }
    const CYCLES: usize = 100;
    // A window of cycles that leaves the heap where it found it, to the
    // byte. A table sized for the first time inside a window (seen once
    // in CI on a loaded host: 375 bytes after a window) grows once and
    // never again, while a leak grows in every window: so a window that
    // grew is followed by another, at most twice, and the last must be
    // exact.
    let mut windows = Vec::new();
    for _ in 0..3 {
        let start = heap_stable(&name);
        for _ in 0..CYCLES {
            // A client that loads 4 MiB and is killed (SIGKILL)...
            let mut helper = spawn_helper(&name);
            helper.kill().unwrap();
            helper.wait().unwrap();
            // ...and a load and an unload by name.
            load_unload(&name);
        }
        let end = heap_stable(&name);
        eprintln!(
            "kernel heap before {CYCLES} connect/load/kill and {CYCLES} load/unload cycles: {start} bytes, after: {end} bytes"
        );
        windows.push((start, end));
        if end == start {
            break;
        }
    }
    with_client(&name, |c| {
        let mut rt = Runtime::new(c);
        assert_eq!(rt.objects().unwrap(), vec![], "nothing is left loaded");
        assert_eq!(rt.maps().unwrap().len(), 0);
    });
    let (start, end) = *windows.last().unwrap();
    assert_eq!(
        end, start,
        "the kernel heap comes back to the byte (windows of {CYCLES} cycles: {windows:?})"
    );
}

/// A client killed while the kernel runs its workload: the workload stops
/// and the session answers its next client, instead of running I/O for
/// nobody until the workload's time limit.
#[test]
fn a_client_killed_during_its_workload_frees_its_session() {
    let mut t = TestVm::boot("lt-kill-workload");
    let name = t.name().to_string();
    let mut c = t.client();
    let mut workload = ktrace()
        .args([
            "--vm",
            &name,
            "workload",
            "--dev",
            "ram0",
            "--count",
            "100000000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ktrace workload");
    let running = |c: &mut Client| info(c).tasks.iter().any(|t| t.name == "fio-ram0-0");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running(&mut c) {
        assert!(Instant::now() < deadline, "the workload never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    workload.kill().expect("kill -9 ktrace workload");
    workload.wait().unwrap();
    let killed_at = Instant::now();
    let vm = Vm::attach(&name).unwrap();
    let mut next = loop {
        match vm.connect(&opts("after-kill", Duration::from_secs(2))) {
            Ok(n) => break n,
            Err(e) => assert!(
                killed_at.elapsed() < Duration::from_secs(30),
                "the session of a client killed during its workload never answered again: {e}"
            ),
        }
    };
    let answered = killed_at.elapsed();
    assert!(
        !running(&mut next),
        "the workload of the killed client stopped"
    );
    eprintln!("a session killed during its workload answered again {answered:?} after the kill");
}
