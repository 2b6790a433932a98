//! Robustness, end to end: attack the control channel the way a buggy or
//! hostile host would and check the kernel answers everything, never panics,
//! never hangs and gives back the memory it took.
//!
//! - `request_fuzzer_never_panics_or_hangs_the_kernel`: a seeded stream of
//!   structurally valid requests of every variant with hostile field values.
//! - Frame-level abuse: interleaved partial frames, a byte-by-byte frame, a
//!   payload of another variant, 1 MiB of garbage, a disconnect mid-frame.
//! - `resource_exhaustion_is_refused_cleanly_and_nothing_leaks`: create
//!   maps, programs, probes and perf events until refused, free them all,
//!   compare the heap.
//!
//! The fuzzer's seed is fixed (override with `KTRACE_FUZZ_SEED`) so a
//! failure reproduces; `KTRACE_FUZZ_SECS` changes its time budget.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use ktrace_abi::block::{BlockRequest, RwMode, WorkloadLimit, WorkloadSpec};
use ktrace_abi::bpf::{
    AttachTarget, BpfRequest, BpfResponse, LoadOptions, MapDefinition, ProgramLoad, ProgramType,
};
use ktrace_abi::frame::{self, MAGIC};
use ktrace_abi::trace::{
    PerfEvent, ProbeKind, ProbeTarget, SoftwareEvent, TraceRequest, TraceResponse,
};
use ktrace_abi::vm::Hello;
use ktrace_abi::{ErrorCode, Request, Response, PROTOCOL_VERSION};
use ktrace_tests::gen::{gen_request, record, Rng, World, KINDS};
use ktrace_tests::TestVm;
use probe_sdk::client::{Client, ClientError, ConnectOptions};
use probe_sdk::kernel_image;
use probe_sdk::trace::TraceClient;
use probe_sdk::vm::PanicReport;

/// Per-request time limit: the slowest legitimate request the fuzzer sends
/// (a small workload, a verifier run on a large program) takes a few seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// A second client that creates a ring buffer and a program that feeds
/// it on every context switch, often subscribes to the stream, and then
/// vanishes: at a random byte of a request, or mid-stream. Its session
/// must answer a new client again, and what it created must be gone
/// (nothing of it was pinned). Returns how long the session took to
/// answer again.
fn vanishing_client(vm: &mut TestVm, main: &mut Client, rng: &mut Rng) -> Duration {
    let mut side = vm.client();
    // The fuzzer may have set tight limits or filled the heap: a refused
    // creation is fine, the client then vanishes with less.
    let created = |r: Result<Response, ClientError>| match r {
        Ok(Response::Bpf(BpfResponse::Map(m))) => Some(m.id),
        Ok(Response::Bpf(BpfResponse::Program(p))) => Some(p.id),
        Ok(Response::Bpf(BpfResponse::Link(l))) => Some(l.id),
        Err(e) if e.kernel_reply().is_some() => None,
        other => panic!("side client: {other:?}"),
    };
    let rb = created(side.request(&Request::Bpf(BpfRequest::MapCreate(Box::new(
        MapDefinition {
            name: "vanish_rb".into(),
            map_type: 27,
            key_size: 0,
            value_size: 0,
            max_entries: 1 << 16,
            flags: 0,
            initial_value: Vec::new(),
            read_only: false,
            types: Default::default(),
        },
    )))));
    let asm = "stdw [%r10-8], 7\nlddw %r1, map_idx(0)\nmov %r2, %r10\nadd %r2, -8\nmov %r3, 8\nmov %r4, 0\ncall 130\nmov %r0, 0\nexit";
    let prog = rb.and_then(|rb| {
        created(side.request(&Request::Bpf(BpfRequest::ProgLoad {
            prog: Box::new(ProgramLoad {
                name: "vanish_feed".into(),
                section: "tracepoint/sched/sched_switch".into(),
                prog_type: ProgramType::Tracepoint,
                attach: AttachTarget::Tracepoint {
                    category: "sched".into(),
                    name: "sched_switch".into(),
                },
                insns: bpf_vm::asm::assemble(asm).unwrap().encode(),
                license: "GPL".into(),
                lines: None,
            }),
            maps: vec![rb],
            options: LoadOptions::default(),
        })))
    });
    let linked = prog.and_then(|prog| {
        created(side.request(&Request::Bpf(BpfRequest::Attach {
            prog,
            target: Box::new(AttachTarget::Tracepoint {
                category: "sched".into(),
                name: "sched_switch".into(),
            }),
            kretprobe: false,
        })))
    });
    let mid_stream = linked.is_some() && rng.chance(50);
    if let (true, Some(rb)) = (mid_stream, rb) {
        side.send_request(&Request::Bpf(BpfRequest::EventsSubscribe {
            maps: vec![rb],
            printk: false,
        }))
        .unwrap();
        // Let records flow, read some, leave the rest unread.
        let _ = side.next_push(Duration::from_millis(20 + rng.below(200)));
    }
    // Vanish at a random byte of a frame (0: between frames).
    let frame = ktrace_abi::encode(9, &Request::Bpf(BpfRequest::MapList)).unwrap();
    let cut = rng.below(frame.len() as u64) as usize;
    side.send_bytes(&frame[..cut]).unwrap();
    let t = Instant::now();
    drop(side);
    // The session answers a new client again (the main client holds
    // another session, so this takes the one just left).
    let recovered = loop {
        let opts = ConnectOptions {
            client_name: "fuzzer-after-vanish".into(),
            handshake_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            ..ConnectOptions::default()
        };
        match vm.vm().connect(&opts) {
            Ok(mut c) => {
                let _ = info(&mut c, "a vanished client");
                break t.elapsed();
            }
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(10),
                "a client vanished (cut at byte {cut}, mid-stream {mid_stream}) and no new client was answered: {e}\nconsole:\n{}",
                vm.vm().console()
            ),
        }
    };
    // What it created is freed once its session saw it go.
    let t = Instant::now();
    while let Some(rb) = rb {
        let maps = match main.request(&Request::Bpf(BpfRequest::MapList)) {
            Ok(Response::Bpf(BpfResponse::Maps(m))) => m,
            other => panic!("MapList: {other:?}"),
        };
        if maps.iter().all(|m| m.id != rb) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a vanished client's ring buffer {rb} outlived it"
        );
        thread::sleep(Duration::from_millis(50));
    }
    main.take_pushes();
    recovered
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The console must hold no panic or fatal-exception report.
fn assert_no_report(vm: &mut TestVm, after: &str) {
    let console = vm.vm().console();
    if let Some(report) = PanicReport::find(&console) {
        panic!("{after}: the kernel reported\n{}", report.lines.join("\n"));
    }
    assert!(vm.vm().is_running(), "{after}: the VM exited\n{console}");
}

fn info(client: &mut Client, after: &str) -> ktrace_abi::vm::SystemInfo {
    match client.request_timeout(&Request::Info, REQUEST_TIMEOUT) {
        Ok(Response::Info(i)) => i,
        other => panic!("after {after}: Info answered {other:?}"),
    }
}

#[test]
fn request_fuzzer_never_panics_or_hangs_the_kernel() {
    let seed = env_u64("KTRACE_FUZZ_SEED", 0x6b74_7261_6365_2121);
    let budget = Duration::from_secs(env_u64("KTRACE_FUZZ_SECS", 60));
    let image = ktrace_tests::kernel_image();
    let mut vm = TestVm::boot("fuzz");
    let mut client = vm.client();
    let mut world = World::explore(&mut client, &image.source);
    let limits = match client.request(&Request::Bpf(BpfRequest::GetLimits)) {
        Ok(Response::Bpf(BpfResponse::Limits { limits, .. })) => limits,
        other => panic!("GetLimits: {other:?}"),
    };
    let mut rng = Rng(seed);
    let mut sent = [0u64; KINDS.len()];
    let mut refused = [0u64; KINDS.len()];
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut sample: Vec<Option<String>> = vec![None; KINDS.len()];
    let start = Instant::now();
    let mut n = 0u64;
    let (mut vanished, mut slowest_recovery) = (0u64, Duration::ZERO);
    while start.elapsed() < budget {
        let kind = rng.below(KINDS.len() as u64) as usize;
        let req = gen_request(kind, &mut world, &mut rng);
        n += 1;
        sent[kind] += 1;
        let t = Instant::now();
        let resp = match client.request_raw(&req, REQUEST_TIMEOUT) {
            Ok(r) => r,
            Err(e) => {
                let shown: String = format!("{req:?}").chars().take(2000).collect();
                panic!(
                    "request #{n} (seed {seed:#x}) got no answer: {e}\nrequest: {shown}\nconsole:\n{}",
                    vm.vm().console()
                )
            }
        };
        if t.elapsed() > Duration::from_secs(10) {
            eprintln!("slow: request #{n} {} took {:?}", KINDS[kind], t.elapsed());
        }
        if let Response::Error(e) = &resp {
            refused[kind] += 1;
            if sample[kind].is_none() || rng.chance(2) {
                sample[kind] = Some(e.message.chars().take(150).collect());
            }
            *codes.entry(format!("{:?}", e.code)).or_default() += 1;
            assert!(!e.message.is_empty(), "empty error message for {req:?}");
        }
        record(&mut world, &req, &resp);
        // Event subscriptions push records; keep the client's queue short.
        client.take_pushes();
        if rng.chance(2) {
            vanished += 1;
            slowest_recovery =
                slowest_recovery.max(vanishing_client(&mut vm, &mut client, &mut rng));
        }
        if n.is_multiple_of(25) {
            info(&mut client, &format!("request #{n}"));
            assert_no_report(&mut vm, &format!("request #{n}"));
        }
    }

    // Clean up what is left, restore the limits, clear injected errors.
    for link in world.links.clone() {
        let _ = client.request(&Request::Bpf(BpfRequest::Detach { link }));
    }
    for prog in world.progs.clone() {
        let _ = client.request(&Request::Bpf(BpfRequest::ProgUnload { prog }));
    }
    for map in world.maps.clone() {
        let _ = client.request(&Request::Bpf(BpfRequest::MapFree { map }));
    }
    for id in world.probes.clone() {
        let _ = client.request(&Request::Trace(TraceRequest::RemoveProbe { id }));
    }
    for id in world.tracepoint_attachments.clone() {
        let _ = client.request(&Request::Trace(TraceRequest::DetachTracepoint { id }));
    }
    for id in world.perf.clone() {
        let _ = client.request(&Request::Trace(TraceRequest::PerfClose { id }));
    }
    client
        .request(&Request::Bpf(BpfRequest::SetLimits(limits)))
        .expect("restoring the limits");
    let _ = client.request(&Request::Block(BlockRequest::InjectErrors {
        dev: "ram0".into(),
        sectors: None,
    }));
    // The return-probe pool is whole again: a new return probe sees every
    // call of a workload, and gives every instance back.
    let bio = client
        .add_probe(
            ProbeTarget::Symbol {
                name: "kernel::block::queue::RequestQueue::submit_bio".into(),
                offset: 0,
            },
            ProbeKind::Kretprobe { maxactive: 0 },
        )
        .expect("a kretprobe after the fuzz run");
    let mut spec = WorkloadSpec::new("ram0", RwMode::RandRead);
    spec.limit = WorkloadLimit::Count(100);
    let report = client
        .run_workload(&spec, |_| {})
        .expect("a workload after the fuzz run");
    assert_eq!(report.errors, 0);
    let listed = client.list_probes().unwrap();
    let listed = listed.iter().find(|p| p.id == bio.id).unwrap();
    assert_eq!((listed.hits, listed.missed), (100, 0), "{listed:?}");
    client.remove_probe(bio.id).unwrap();
    let pool = client.retprobe_pool().unwrap();
    assert_eq!(pool.free + pool.held_by_removed, pool.size, "{pool:?}");
    // Everything freed: the runtime counts nothing in use.
    match client.request(&Request::Bpf(BpfRequest::GetLimits)) {
        Ok(Response::Bpf(BpfResponse::Limits { usage, .. })) => {
            assert_eq!(
                (usage.maps, usage.programs, usage.links),
                (0, 0, 0),
                "{usage:?}"
            )
        }
        other => panic!("GetLimits: {other:?}"),
    }
    let info = info(&mut client, "the fuzz run");
    assert_no_report(&mut vm, "the fuzz run");

    println!(
        "fuzzer: seed {seed:#x}, {n} requests in {:.1} s, {} refused; heap used {} bytes",
        start.elapsed().as_secs_f64(),
        refused.iter().sum::<u64>(),
        info.heap_used_bytes
    );
    println!(
        "{vanished} side clients vanished (at a random byte or mid-stream): their session answered again at most {slowest_recovery:?} later"
    );
    println!("{:<52} {:>7} {:>8}", "kind", "sent", "refused");
    for (i, k) in KINDS.iter().enumerate() {
        println!("{k:<52} {:>7} {:>8}", sent[i], refused[i]);
        if let Some(m) = &sample[i] {
            println!("    e.g. {m}");
        }
    }
    println!("refusals by code: {codes:?}");
    assert!(n >= 100, "only {n} requests in {budget:?}");
}

// ---------------------------------------------------------------------------
// Frame-level abuse.
// ---------------------------------------------------------------------------

fn info_frame(id: u32) -> Vec<u8> {
    ktrace_abi::encode(id, &Request::Info).unwrap()
}

/// Read frames until the answer with `id` arrives; returns it.
fn answer(client: &mut Client, id: u32, timeout: Duration) -> Response {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(env) = client.recv_any(Duration::from_millis(200)).unwrap() {
            if env.id == id {
                return env.body;
            }
        }
    }
    panic!("no answer to #{id} within {timeout:?}");
}

#[test]
fn frames_split_interleaved_mismatched_and_garbage_are_survived() {
    let mut vm = TestVm::boot("frames");
    let mut client = vm.client();

    // A frame byte by byte, with pauses shorter than the idle limit.
    let f = info_frame(9001);
    for b in &f {
        client.send_bytes(std::slice::from_ref(b)).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(
        answer(&mut client, 9001, Duration::from_secs(20)),
        Response::Info(_)
    ));

    // Two frames interleaved: the first's header, the second whole, the
    // first's rest. The second lands inside the first's payload, so the
    // first fails its CRC; the reader must resynchronise on the second.
    let a = info_frame(9002);
    let b = info_frame(9003);
    client.send_bytes(&a[..frame::HEADER_LEN + 2]).unwrap();
    client.send_bytes(&b).unwrap();
    client.send_bytes(&a[frame::HEADER_LEN + 2..]).unwrap();
    client.send_bytes(&info_frame(9004)).unwrap();
    assert!(matches!(
        answer(&mut client, 9004, Duration::from_secs(20)),
        Response::Info(_)
    ));

    // A valid header and CRC around a payload that is a Response, not a
    // Request: it must be refused as undecodable (or as a different
    // request) with an error frame, never acted on blindly.
    client
        .send_bytes(&ktrace_abi::encode(9005, &Response::Ok).unwrap())
        .unwrap();
    client.send_bytes(&info_frame(9006)).unwrap();
    match answer(&mut client, 9006, Duration::from_secs(20)) {
        Response::Info(_) => {}
        other => panic!("Info after a Response payload: {other:?}"),
    }
    // Every variant index past the last, with junk after it.
    for variant in [7u8, 8, 100, 127] {
        // `Info` encodes as the id then its variant index (one byte).
        let info = info_frame(9007);
        let mut p = info[frame::HEADER_LEN..info.len() - 1].to_vec();
        p.push(variant);
        p.extend_from_slice(&[0xff; 16]);
        client.send_bytes(&frame::wrap(&p)).unwrap();
        match answer(&mut client, 9007, Duration::from_secs(20)) {
            Response::Error(e) => assert_eq!(e.code, ErrorCode::Decode, "{e:?}"),
            other => panic!("variant {variant}: {other:?}"),
        }
    }

    // 1 MiB of garbage, with magic fragments sprinkled in, then a request.
    let mut rng = Rng(7);
    let mut garbage = rng.bytes(1 << 20);
    for i in (0..garbage.len() - 12).step_by(4099) {
        garbage[i..i + 4].copy_from_slice(&MAGIC);
        garbage[i + 4..i + 8].copy_from_slice(&(rng.next() as u32 % 64).to_le_bytes());
    }
    let before = info(&mut client, "nothing").bad_frames;
    let t = Instant::now();
    client.send_bytes(&garbage).unwrap();
    client.send_bytes(&info_frame(9008)).unwrap();
    let after = match answer(&mut client, 9008, Duration::from_secs(120)) {
        Response::Info(i) => i,
        other => panic!("Info after 1 MiB of garbage: {other:?}"),
    };
    assert!(
        after.bad_frames > before,
        "{} -> {}",
        before,
        after.bad_frames
    );
    println!(
        "1 MiB of garbage: answered after {:.1} s, {} bad frames counted",
        t.elapsed().as_secs_f64(),
        after.bad_frames - before
    );
    assert_no_report(&mut vm, "frame abuse");
}

#[test]
fn disconnect_mid_frame_then_reconnect_and_handshake() {
    let mut vm = TestVm::boot("disconnect");
    let mut client = vm.client();
    let f = ktrace_abi::encode(
        77,
        &Request::Bpf(BpfRequest::MapCreate(Box::new(MapDefinition {
            name: "half".into(),
            map_type: 1,
            key_size: 4,
            value_size: 8,
            max_entries: 16,
            flags: 0,
            initial_value: Vec::new(),
            read_only: false,
            types: Default::default(),
        }))),
    )
    .unwrap();
    client.send_bytes(&f[..f.len() / 2]).unwrap();
    drop(client);
    // A raw writer that also leaves mid-header.
    let path = vm.vm().paths().socket.clone();
    let mut raw = UnixStream::connect(&path).unwrap();
    raw.write_all(&MAGIC).unwrap();
    raw.write_all(&[0x40, 0]).unwrap();
    drop(raw);

    thread::sleep(Duration::from_millis(800));
    let mut client = vm.client();
    let i = info(&mut client, "a reconnect");
    assert!(i.bad_frames >= 1, "the half frames were not counted");
    // The half MapCreate did nothing.
    match client.request(&Request::Bpf(BpfRequest::MapList)) {
        Ok(Response::Bpf(BpfResponse::Maps(m))) => {
            assert!(m.iter().all(|m| m.name != "half"), "{m:?}")
        }
        other => panic!("MapList: {other:?}"),
    }
    assert_no_report(&mut vm, "disconnects");
}

/// A client that leaves in the middle of a frame, at once followed by the
/// next client of its session, 30 times: each next client's handshake is
/// answered (its `Hello` is never read as the rest of the frame the last
/// client left), and every byte the kernel received is either part of a
/// whole frame or counted as left behind by a client that went. The
/// leaver writes a frame header announcing up to 256 KiB and part of the
/// payload, and closes without waiting: QEMU then returns the bytes and
/// the close together, and a kernel that handled the close first gave the
/// bytes to the next client. (QEMU drops what it had not read when the
/// socket closed, so the kernel's own receive count is the reference.)
#[test]
fn a_client_leaving_mid_frame_never_reaches_the_next_one() {
    let mut vm = TestVm::boot("leave-mid-frame");
    let mut rng = Rng(0x6c65_6176_6572);
    let hello = ktrace_abi::encode(
        1,
        &Request::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: "leave-mid-frame".into(),
        }),
    )
    .unwrap();
    // A raw client of the first free session (the one the last left),
    // greeted with `hello`.
    let greeted = |vm: &mut TestVm, round: u64, who: &str| -> Client {
        let mut c = vm.vm().connect_raw().unwrap();
        c.send_bytes(&hello).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match c.recv_any(Duration::from_millis(200)).unwrap() {
                Some(env) if env.id == 1 => match env.body {
                    Response::Hello(_) => return c,
                    other => panic!("round {round}: the {who}'s Hello was answered {other:?}"),
                },
                Some(env) => eprintln!("round {round}: the {who} got {:?}", env.body),
                None => {}
            }
        }
        panic!(
            "round {round}: the {who}'s Hello was not answered\nconsole:\n{}",
            vm.vm().console()
        );
    };
    let before = info(&mut vm.client(), "boot");
    const ROUNDS: u64 = 30;
    for round in 0..ROUNDS {
        let mut leaver = greeted(&mut vm, round, "leaver");
        let announced = 8192 + rng.below(256 << 10) as usize;
        let sent = rng.below(32 << 10) as usize;
        let mut bytes = Vec::with_capacity(frame::HEADER_LEN + sent);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&(announced as u32).to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend((0..sent).map(|i| i as u8));
        leaver.send_bytes(&bytes).unwrap();
        drop(leaver);
        drop(greeted(&mut vm, round, "next client"));
    }
    let mut last = vm.vm().connect_raw().unwrap();
    last.send_bytes(&hello).unwrap();
    let info_request = info_frame(2);
    last.send_bytes(&info_request).unwrap();
    let after = match answer(&mut last, 2, REQUEST_TIMEOUT) {
        Response::Info(i) => i,
        other => panic!("Info answered {other:?}"),
    };
    let received = after.control_rx_bytes - before.control_rx_bytes;
    let left_behind = after.control_abandoned_rx_bytes - before.control_abandoned_rx_bytes;
    let dropped = after.control_dropped_rx_bytes - before.control_dropped_rx_bytes;
    let reopened = after.control_closes_after_reopen - before.control_closes_after_reopen;
    let whole_frames = (2 * ROUNDS + 1) * hello.len() as u64 + info_request.len() as u64;
    assert_eq!(
        received - left_behind - dropped,
        whole_frames,
        "of {received} bytes received, {left_behind} are counted as left behind by the leavers and {dropped} as dropped; the rest must be exactly the whole frames sent"
    );
    // Bytes are dropped only when a close was read after the next client
    // had connected: then the leaver's bytes came to the next client.
    if reopened == 0 {
        assert_eq!(
            dropped, 0,
            "no byte is dropped when every close was read in time"
        );
    }
    println!(
        "{ROUNDS} clients left mid-frame: {left_behind} of their bytes counted as left behind, {dropped} dropped as bad frames before the next client's Hello ({reopened} closes read after the next client connected)"
    );
    assert_no_report(&mut vm, "clients leaving mid-frame");
}

// ---------------------------------------------------------------------------
// Resource exhaustion.
// ---------------------------------------------------------------------------

fn expect_refusal(e: &ClientError, what: &str) {
    match e.kernel_reply() {
        Some(r) if matches!(r.code, ErrorCode::Limit | ErrorCode::InvalidArgument) => {
            assert!(!r.message.is_empty())
        }
        _ => panic!("{what}: expected a Limit/InvalidArgument refusal, got {e}"),
    }
}

#[test]
fn resource_exhaustion_is_refused_cleanly_and_nothing_leaks() {
    let image = ktrace_tests::kernel_image();
    let elf = std::fs::read(&image.source).unwrap();
    let functions = kernel_image::functions(&image.source, &elf).unwrap();
    let mut vm = TestVm::boot("exhaust");
    let mut client = vm.client();
    // Warm up what allocates once (interpreter, event task, perf tables),
    // so the baseline includes it.
    for round in 0..2 {
        let heap_before = info(&mut client, "boot").heap_used_bytes;

        // Maps until refused.
        let mut maps = Vec::new();
        let refusal = loop {
            let def = MapDefinition {
                name: format!("m{}", maps.len()),
                map_type: 1,
                key_size: 8,
                value_size: 64,
                max_entries: 4096,
                flags: 0,
                initial_value: Vec::new(),
                read_only: false,
                types: Default::default(),
            };
            match client.request(&Request::Bpf(BpfRequest::MapCreate(Box::new(def)))) {
                Ok(Response::Bpf(BpfResponse::Map(m))) => maps.push(m.id),
                Ok(other) => panic!("MapCreate: {other:?}"),
                Err(e) => break e,
            }
            assert!(maps.len() <= 10_000, "no map limit");
        };
        expect_refusal(&refusal, "map #N");

        // Programs until refused.
        let mut progs = Vec::new();
        let refusal = loop {
            let load = ProgramLoad {
                name: format!("p{}", progs.len()),
                section: "kprobe/x".into(),
                prog_type: ProgramType::Kprobe,
                attach: AttachTarget::PerfEvent,
                insns: [[0xb7u8, 0, 0, 0, 0, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]].concat(),
                license: "GPL".into(),
                lines: None,
            };
            let req = Request::Bpf(BpfRequest::ProgLoad {
                prog: Box::new(load),
                maps: Vec::new(),
                options: LoadOptions::default(),
            });
            match client.request(&req) {
                Ok(Response::Bpf(BpfResponse::Program(p))) => progs.push(p.id),
                Ok(other) => panic!("ProgLoad: {other:?}"),
                Err(e) => break e,
            }
            assert!(progs.len() <= 10_000, "no program limit");
        };
        expect_refusal(&refusal, "program #N");

        // Probes on the kernel's own cold functions (self tests, debug):
        // all accepted, or refused cleanly.
        let mut probes = Vec::new();
        for f in functions
            .iter()
            .filter(|f| f.name.starts_with("kernel::debug::") && f.size >= 8)
            .take(64)
        {
            let req = Request::Trace(TraceRequest::AddProbe {
                target: ProbeTarget::Address(f.addr),
                kind: ProbeKind::Kprobe,
            });
            match client.request(&req) {
                Ok(Response::Trace(TraceResponse::ProbeAdded(p))) => probes.push(p.id),
                Ok(other) => panic!("AddProbe: {other:?}"),
                Err(e) => {
                    assert!(e.kernel_reply().is_some(), "AddProbe {}: {e}", f.name);
                }
            }
        }
        // Perf counters until refused or 2000.
        let mut perf = Vec::new();
        for _ in 0..2000 {
            let req = Request::Trace(TraceRequest::PerfOpen {
                event: PerfEvent::Software(SoftwareEvent::ContextSwitches),
            });
            match client.request(&req) {
                Ok(Response::Trace(TraceResponse::PerfOpened { id })) => perf.push(id),
                Ok(other) => panic!("PerfOpen: {other:?}"),
                Err(e) => {
                    expect_refusal(&e, "perf event #N");
                    break;
                }
            }
        }
        let peak = info(&mut client, "exhaustion").heap_used_bytes;

        for id in perf.iter().copied() {
            client
                .request(&Request::Trace(TraceRequest::PerfClose { id }))
                .unwrap();
        }
        for id in probes.iter().copied() {
            client
                .request(&Request::Trace(TraceRequest::RemoveProbe { id }))
                .unwrap();
        }
        for prog in progs.iter().copied() {
            client
                .request(&Request::Bpf(BpfRequest::ProgUnload { prog }))
                .unwrap();
        }
        for map in maps.iter().copied() {
            client
                .request(&Request::Bpf(BpfRequest::MapFree { map }))
                .unwrap();
        }
        // Freed map memory may wait for an epoch to pass.
        thread::sleep(Duration::from_millis(500));
        let after = info(&mut client, "freeing everything").heap_used_bytes;
        println!(
            "round {round}: {} maps, {} programs, {} probes, {} perf events; heap {} -> peak {} -> {} bytes",
            maps.len(),
            progs.len(),
            probes.len(),
            perf.len(),
            heap_before,
            peak,
            after
        );
        if round == 1 {
            // The second round starts warm: what it took must come back.
            assert!(
                after <= heap_before + 64 * 1024,
                "leak: heap {heap_before} before, {after} after freeing everything (peak {peak})"
            );
        }
    }
    assert_no_report(&mut vm, "exhaustion");
}

/// A client that writes faster than the kernel reads is held back, not
/// dropped: 11.8 MiB of requests (more than a session's 8 MiB queue) sent
/// without waiting all get their answers, and no frame is damaged.
#[test]
fn a_flood_of_requests_is_held_back_not_dropped() {
    use std::io::Read;
    const N: u32 = 3000;
    let mut vm = TestVm::boot("flood");
    drop(vm.client());
    // The kernel hears of that client leaving a moment later; starting
    // before that would see this session reset mid-stream.
    thread::sleep(Duration::from_millis(500));
    let path = vm.vm().paths().socket.clone();
    let stream = UnixStream::connect(&path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let hello = Request::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: "flood".into(),
        });
        let mut sent = 0;
        for id in 1..=N + 1 {
            let req = if id == 1 {
                hello.clone()
            } else {
                Request::Bpf(BpfRequest::MapLookup {
                    map: 999_999,
                    key: vec![id as u8; 4096],
                })
            };
            let f = ktrace_abi::encode(id, &req).unwrap();
            writer.write_all(&f).unwrap();
            sent += f.len();
        }
        sent
    });
    let mut reader = frame::FrameReader::new();
    let mut answered = vec![false; N as usize + 2];
    let mut count = 0;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(180);
    while count < N + 1 {
        assert!(Instant::now() < deadline, "{count} of {} answers", N + 1);
        let n = (&stream).read(&mut buf).expect("answers keep coming");
        assert!(n > 0, "the kernel closed the channel");
        reader.push(&buf[..n]);
        while let Some(event) = reader.next_event() {
            let frame::FrameEvent::Frame(payload) = event else {
                panic!("a damaged frame from the kernel: {event:?}");
            };
            let env = ktrace_abi::decode::<Response>(&payload).unwrap();
            let Some(slot) = answered.get_mut(env.id as usize) else {
                continue; // a push
            };
            assert!(!*slot, "#{} answered twice", env.id);
            *slot = true;
            count += 1;
            if env.id > 1 {
                match env.body {
                    Response::Error(e) => assert!(
                        e.message.contains("no map with id 999999"),
                        "#{}: {}",
                        env.id,
                        e.message
                    ),
                    other => panic!("#{}: {other:?}", env.id),
                }
            }
        }
    }
    let sent = sender.join().unwrap();
    assert!(sent > 10 << 20, "only {sent} bytes sent");
    drop(stream);
    thread::sleep(Duration::from_millis(300));
    let mut client = vm.client();
    let i = info(&mut client, "the flood");
    assert_eq!(
        i.bad_frames,
        0,
        "frames were damaged:\n{}",
        vm.vm().console()
    );
    eprintln!(
        "flood: {} requests, {} bytes, all answered; kernel received {} bytes",
        N, sent, i.control_rx_bytes
    );
    assert_no_report(&mut vm, "the flood");
}
