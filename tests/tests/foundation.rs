//! The foundation, end to end: boot the real kernel in QEMU, handshake,
//! ask for system information, feed the control channel bad input, panic
//! the kernel on purpose, run the in-kernel self tests, and drive the
//! `ktrace` CLI. No mocks: every test boots its own VM.

use std::collections::HashSet;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ktrace_abi::frame::{self, MAGIC};
use ktrace_abi::ksyms;
use ktrace_abi::vm::{qemu_exit_status, DebugRequest, Hello, SystemInfo, TaskState, EXIT_PANIC};
use ktrace_abi::{Envelope, ErrorCode, Request, Response, PROTOCOL_VERSION};
use ktrace_tests::{ktrace, ktrace_bin, ktrace_ok, test_config, unique_name, CliVmGuard, TestVm};
use probe_sdk::client::{Client, ClientError, ConnectOptions};
use probe_sdk::kernel_image;
use probe_sdk::vm::{self, ExitKind, ReportKind, Vm, VmError, VmState};

const MIB: u64 = 1 << 20;

fn check_info(info: &SystemInfo, kernel_version: &str) {
    assert_eq!(info.kernel_version, kernel_version);
    // The tests' VMs get KTRACE_TEST_CPUS CPUs (1 unless set).
    assert_eq!(
        info.cpus,
        ktrace_tests::test_cpus(),
        "QEMU runs with -smp N"
    );
    assert!(info.uptime_ns > 0);
    assert!(info.tsc_khz > 0, "TSC not calibrated: {info:?}");
    // -m 256M: the kernel sees at most that, minus firmware holes.
    assert!(
        info.memory_total_bytes > 200 * MIB && info.memory_total_bytes <= 256 * MIB,
        "memory_total_bytes = {}",
        info.memory_total_bytes
    );
    assert!(info.memory_used_bytes > 0 && info.memory_used_bytes <= info.memory_total_bytes);
    assert!(info.heap_total_bytes > 0 && info.heap_used_bytes <= info.heap_total_bytes);
    assert!(info.timer_hz > 0);
    assert!(!info.tasks.is_empty());
    let pids: HashSet<u32> = info.tasks.iter().map(|t| t.pid).collect();
    assert_eq!(
        pids.len(),
        info.tasks.len(),
        "duplicate pids: {:?}",
        info.tasks
    );
    // The task answering this request is running, and at most one task
    // per CPU is.
    let running: Vec<&str> = info
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .map(|t| t.name.as_str())
        .collect();
    assert!(
        (1..=info.cpus as usize).contains(&running.len()),
        "tasks: {:?}",
        info.tasks
    );
    assert!(
        running.iter().any(|n| n.starts_with("control")),
        "tasks: {:?}",
        info.tasks
    );
}

/// The post-link step on the real kernel: the copy carries a table of the
/// ELF's functions, the cargo output keeps its empty reservation, and
/// nothing but the reserved bytes changed (no address moved).
#[test]
fn symbol_table_is_embedded_in_a_copy_of_the_kernel() {
    let image = ktrace_tests::kernel_image();
    let source = std::fs::read(&image.source).unwrap();
    let copy = std::fs::read(&image.image).unwrap();
    assert_eq!(source.len(), copy.len());

    let reserved = kernel_image::table_bytes(&image.source, &source).unwrap();
    assert_eq!(reserved[..4], ksyms::EMPTY_MAGIC);
    assert_eq!(reserved.len(), ksyms::RESERVED_BYTES);
    let table = kernel_image::table_bytes(&image.image, &copy).unwrap();
    let parsed = ksyms::KsymTable::parse(table).expect("the copy holds a valid table");

    // Same bytes outside the table.
    let start = table.as_ptr() as usize - copy.as_ptr() as usize;
    let end = start + table.len();
    assert_eq!(source[..start], copy[..start]);
    assert_eq!(source[end..], copy[end..]);

    // Exactly the ELF's functions, demangled without hashes, sorted.
    let funcs = kernel_image::functions(&image.source, &source).unwrap();
    assert_eq!(parsed.len(), funcs.len());
    assert_eq!(parsed.len(), image.symbols);
    let forced = funcs
        .iter()
        .find(|f| f.name == "kernel::debug::forced_panic")
        .expect("kernel::debug::forced_panic in the ELF");
    let (sym, off) = parsed.lookup(forced.addr + 1).unwrap();
    assert_eq!(
        (sym.name, sym.addr, off),
        (forced.name.as_str(), forced.addr, 1)
    );
    let addrs: Vec<u64> = parsed.iter().map(|s| s.addr).collect();
    assert!(addrs.windows(2).all(|w| w[0] <= w[1]));
    // Demangled with `{:#}`: no legacy `::h<16 hex>` hash suffix.
    let hashed = |name: &str| {
        name.rsplit_once("::h")
            .is_some_and(|(_, h)| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
    };
    assert!(parsed.iter().all(|s| !s.name.is_empty() && !hashed(s.name)));

    // A second run finds the copy current and leaves it alone.
    let again = kernel_image::embed_if_changed(&image.source).unwrap();
    assert!(!again.rewritten);
    assert_eq!(again.symbols, image.symbols);
}

#[test]
fn boots_handshakes_and_reports_plausible_info() {
    let mut vm = TestVm::boot("info");
    let boot = vm.vm().boot_info().expect("boot info").clone();
    assert_eq!(boot.hello.protocol_version, PROTOCOL_VERSION);
    assert!(
        boot.image.symbols > 100,
        "only {} symbols",
        boot.image.symbols
    );
    let mut client = vm.client();
    let hello = client.hello_reply().expect("handshake").clone();
    let first = client.info().expect("Info");
    check_info(&first, &hello.kernel_version);
    assert!(first.uptime_ns >= hello.uptime_ns);
    thread::sleep(Duration::from_millis(300));
    let second = client.info().expect("second Info");
    check_info(&second, &hello.kernel_version);
    assert!(second.uptime_ns > first.uptime_ns);
    assert!(
        second.timer_ticks > first.timer_ticks,
        "the timer did not tick in 300 ms: {} then {}",
        first.timer_ticks,
        second.timer_ticks
    );
    // On virtio-serial QEMU holds the host's bytes until the kernel opens
    // the port, so not even the first Hello is damaged.
    assert_eq!(first.control_link, "virtio-serial");
    assert_eq!(first.bad_frames, 0, "no bad input was sent");
    assert_eq!(second.bad_frames, 0, "no bad input was sent");
    assert!(
        second.control_rx_bytes > first.control_rx_bytes
            && second.control_tx_bytes > first.control_tx_bytes,
        "the link counts bytes: {first:?} then {second:?}"
    );
}

/// Four clients work at once, each on its own virtio-serial session; a
/// fifth is told that every session is taken, and gets one as soon as a
/// client leaves.
#[test]
fn four_clients_work_at_once_and_a_fifth_is_told_to_wait() {
    let mut vm = TestVm::boot("sessions");
    let mut clients: Vec<Client> = (0..4).map(|_| vm.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let info = c.info().unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(info.control_link, "virtio-serial");
        let names: Vec<&str> = info.tasks.iter().map(|t| t.name.as_str()).collect();
        for task in ["control", "control-1", "control-2", "control-3"] {
            assert!(names.contains(&task), "{names:?}");
        }
    }
    // Requests interleave across sessions and each answer comes home.
    for round in 0..3 {
        for c in clients.iter_mut() {
            c.send_request(&Request::Info).unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let env = c
                .recv_any(Duration::from_secs(10))
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: client {i} got no answer"));
            assert!(matches!(env.body, Response::Info(_)), "{:?}", env.body);
        }
    }
    let opts = ConnectOptions {
        client_name: "fifth".into(),
        handshake_timeout: Duration::from_secs(2),
        ..ConnectOptions::default()
    };
    let e = vm.vm().connect(&opts).err().expect("a fifth client");
    assert_eq!(
        e.to_string(),
        "all 4 control sessions of the VM are in use by other clients (ktrace commands, tools or tests); wait for one to finish"
    );
    clients.remove(1);
    let mut fifth = vm.vm().connect(&opts).expect("a freed session");
    assert!(fifth.info().is_ok());
}

/// Without a virtio-serial device the kernel runs the same protocol on the
/// COM2 UART.
#[test]
fn control_channel_falls_back_to_com2() {
    let mut cfg = test_config("com2");
    cfg.control_link = probe_sdk::vm::ControlLink::Com2;
    let mut vm = TestVm::boot_with(cfg);
    let mut client = vm.client();
    let hello = client.hello_reply().expect("handshake").clone();
    let info = client.info().expect("Info");
    check_info(&info, &hello.kernel_version);
    assert_eq!(info.control_link, "COM2");
    // A large answer crosses the slow link intact.
    let tests = client.list_self_tests().expect("self tests");
    assert!(tests.iter().any(|t| t == "sleep_order"), "{tests:?}");
    let console = vm.vm().console();
    assert!(
        console.contains("control channel ready on COM2"),
        "console:\n{console}"
    );
}

/// Frames that arrive within `wait`; each must be an error frame.
fn errors_within(client: &mut Client, wait: Duration) -> Vec<Envelope<Response>> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match client.recv_any(left) {
            Ok(Some(env)) => {
                assert!(
                    matches!(env.body, Response::Error(_)),
                    "bad input got a non-error answer: {env:?}"
                );
                out.push(env);
            }
            Ok(None) => break,
            Err(e) => panic!("channel broke after bad input: {e}"),
        }
    }
    out
}

fn codes(frames: &[Envelope<Response>]) -> Vec<ErrorCode> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Response::Error(e) => Some(e.code),
            _ => None,
        })
        .collect()
}

/// `Info`, retried: after a truncated frame the kernel may first need the
/// next bytes (or its idle timeout) to drop the stale partial frame.
fn info_eventually(client: &mut Client, what: &str) -> (SystemInfo, u32) {
    for attempt in 1..=5 {
        match client.request_timeout(&Request::Info, Duration::from_secs(3)) {
            Ok(Response::Info(info)) => return (info, attempt),
            Ok(other) => panic!("after {what}: Info answered with {other:?}"),
            Err(ClientError::Timeout { .. }) => continue,
            Err(e) => panic!("after {what}: Info failed: {e}"),
        }
    }
    panic!("after {what}: Info was never answered (5 attempts)");
}

/// Deterministic bytes that never contain the frame magic's first byte.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            match (x >> 24) as u8 {
                b'K' => b'k',
                b => b,
            }
        })
        .collect()
}

#[test]
fn bad_input_is_refused_and_the_channel_recovers() {
    let mut vm = TestVm::boot("badinput");
    let mut client = vm.client();
    let wait = Duration::from_millis(800);
    let before = client.info().expect("Info").bad_frames;

    // 1. Random bytes: skipped (at most reported as a bad frame).
    client.take_pushes();
    client.send_bytes(&garbage(512)).unwrap();
    let got = errors_within(&mut client, wait);
    assert!(
        codes(&got).iter().all(|c| *c == ErrorCode::BadFrame),
        "{got:?}"
    );
    info_eventually(&mut client, "random bytes");

    // 2. An absurd length: refused without waiting for 4 GiB.
    let mut huge = MAGIC.to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&0u32.to_le_bytes());
    client.take_pushes();
    client.send_bytes(&huge).unwrap();
    let got = errors_within(&mut client, wait);
    assert!(
        codes(&got).iter().all(|c| *c == ErrorCode::BadFrame),
        "{got:?}"
    );
    info_eventually(&mut client, "an absurd length");

    // 3. An unknown request variant: a good frame whose payload is id 7
    //    and variant 200, which no Request has.
    client.take_pushes();
    client.send_bytes(&frame::wrap(&[7, 0xc8, 0x01])).unwrap();
    let got = errors_within(&mut client, wait);
    assert_eq!(codes(&got), vec![ErrorCode::Decode], "{got:?}");
    info_eventually(&mut client, "an unknown variant");

    // 4. A request that decodes but names no self test.
    let bad_fields = Request::Debug(DebugRequest::SelfTest {
        name: "no such test".into(),
    });
    let err = client.request(&bad_fields).unwrap_err();
    let reply = err.kernel_reply().unwrap_or_else(|| panic!("{err}"));
    assert!(
        matches!(reply.code, ErrorCode::NotFound | ErrorCode::InvalidArgument),
        "{reply:?}"
    );
    assert!(!reply.message.is_empty());

    // 5. A Hello with another protocol version.
    let wrong = Request::Hello(Hello {
        protocol_version: PROTOCOL_VERSION + 100,
        client: "from the future".into(),
    });
    let err = client.request(&wrong).unwrap_err();
    assert_eq!(
        err.kernel_reply().map(|r| r.code),
        Some(ErrorCode::Version),
        "{err}"
    );

    // 6. A truncated frame: the header promises 20 bytes, 10 arrive.
    let mut cut = frame::wrap(&[0u8; 20]);
    cut.truncate(frame::HEADER_LEN + 10);
    client.take_pushes();
    client.send_bytes(&cut).unwrap();
    let (info, _attempts) = info_eventually(&mut client, "a truncated frame");
    // Random bytes, an absurd length, an unknown variant, a truncated
    // frame: each counted at least once.
    assert!(
        info.bad_frames >= before + 4,
        "the kernel counted {} bad frames, {before} before the bad input",
        info.bad_frames
    );
}

/// A header that announces a large payload and then stops must not stall
/// the channel until that many bytes arrive: the kernel drops a partial
/// frame once the line has been idle for a while.
#[test]
fn truncated_frame_with_a_large_length_does_not_stall_the_channel() {
    let mut vm = TestVm::boot("bigcut");
    let mut client = vm.client();
    let mut cut = MAGIC.to_vec();
    cut.extend_from_slice(&(1u32 << 20).to_le_bytes());
    cut.extend_from_slice(&0u32.to_le_bytes());
    cut.extend_from_slice(&[0u8; 100]);
    client.send_bytes(&cut).unwrap();
    // Let the line go idle, then ask.
    thread::sleep(Duration::from_millis(500));
    let (info, _) = info_eventually(&mut client, "a truncated 1 MiB frame");
    assert!(info.bad_frames >= 1);
}

#[test]
fn requests_before_hello_are_refused() {
    let mut cfg = test_config("nohello");
    cfg.handshake = false;
    let mut vm = TestVm::boot_with(cfg);
    let mut client = vm.raw_client();
    // The kernel may still be booting: send Info until something answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (id, env) = 'wait: loop {
        assert!(Instant::now() < deadline, "no answer to Info before Hello");
        let id = client.send_request(&Request::Info).unwrap();
        // Bytes sent while the kernel sets up COM2 may be lost; it reports
        // the remains as a bad frame (a push, id 0). Wait for an answer.
        while let Some(env) = client.recv_any(Duration::from_millis(500)).unwrap() {
            if env.id != 0 {
                break 'wait (id, env);
            }
        }
    };
    match &env.body {
        Response::Error(e) => assert_eq!(e.code, ErrorCode::Version, "{e:?}"),
        other => panic!("Info before Hello was answered: {other:?}"),
    }
    assert!(
        env.id <= id && env.id > 0,
        "answer id {} for requests up to {id}",
        env.id
    );
    let hello = client
        .handshake(
            "ktrace-tests",
            Duration::from_secs(20),
            Duration::from_millis(500),
        )
        .expect("handshake after the refused request");
    let (info, _) = info_eventually(&mut client, "the handshake");
    assert_eq!(info.kernel_version, hello.kernel_version);
}

#[test]
fn forced_panic_is_classified_with_a_symbolized_backtrace() {
    let mut vm = TestVm::boot("panic");
    let mut client = vm.client();
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
    assert_eq!(report.kind, ReportKind::Panic);
    assert!(report.complete, "{report}");
    assert!(
        report.has_frame("kernel::debug::forced_panic"),
        "backtrace does not name kernel::debug::forced_panic:\n{report}"
    );
    // Every frame was symbolized from the embedded table... at least the
    // first ones, which are kernel code.
    assert!(report.frames[0].symbol.is_some(), "{report}");
    // `vm status` says why the VM stopped.
    let name = vm.name().to_string();
    let status = ktrace_ok(&["--vm", &name, "vm", "status"]);
    assert!(
        status.starts_with(&format!("VM {name}: stopped; the kernel had panicked:\n")),
        "{status}"
    );
    assert!(
        status.contains(" kernel::debug::forced_panic+0x"),
        "{status}"
    );
}

#[test]
fn in_kernel_self_tests_pass() {
    let mut vm = TestVm::boot("selftest");
    let mut client = vm.client();
    let names = client.list_self_tests().expect("ListSelfTests");
    for name in ["sleep_order", "waitqueue"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
        let result = client.self_test(name).expect("SelfTest");
        assert_eq!(result.name, name);
        assert!(
            result.passed,
            "self test {name} failed:\n{}",
            result.output.join("\n")
        );
        assert!(!result.output.is_empty(), "{name} reported nothing");
    }
}

/// The kernel users boot (`ktrace vm start`: the release flavor) carries
/// no self tests and none of the functions they probe; the tests' kernel
/// (the self-test flavor every other test boots) has both.
#[test]
fn release_kernel_ships_no_self_tests() {
    if std::env::var_os(kernel_image::KERNEL_ENV).is_some() {
        // One prebuilt ELF stands for both flavors: nothing to compare.
        eprintln!("skipped: {} names the kernel", kernel_image::KERNEL_ENV);
        return;
    }
    let probe_tests = |index: &ktrace_symbols::SymbolIndex| {
        index
            .functions()
            .iter()
            .filter(|f| f.name.starts_with("kernel::probe_tests::"))
            .count()
    };
    assert!(probe_tests(ktrace_tests::kernel_symbols()) > 10);
    let release = kernel_image::prepare(true).expect("the release kernel");
    assert_ne!(release.source, ktrace_tests::kernel_image().source);
    let index = ktrace_symbols::SymbolIndex::from_path(&release.source).unwrap();
    assert_eq!(probe_tests(&index), 0);
    assert!(index
        .functions()
        .iter()
        .any(|f| f.name == "kernel::debug::forced_panic"));

    let mut cfg = test_config("release");
    cfg.kernel = Some(release.source.clone());
    let mut vm = TestVm::boot_with(cfg);
    let mut client = vm.client();
    assert_eq!(
        client.list_self_tests().expect("ListSelfTests"),
        Vec::<String>::new()
    );
    let err = client.self_test("kprobe_args").unwrap_err();
    let reply = err.kernel_reply().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(reply.code, ErrorCode::NotFound);
    assert_eq!(
        reply.message,
        "no self test named \"kprobe_args\": this kernel was built without them (the `self-tests` feature)"
    );
    // Everything else answers as in the tests' kernel.
    let info = client.info().expect("Info");
    assert!(!info.tasks.is_empty());
}

#[test]
fn boot_timeout_is_reported_as_hung_and_qemu_is_stopped() {
    let mut cfg = test_config("hung");
    // Far too short for any boot: the harness must classify, report the
    // console tail and stop QEMU.
    cfg.boot_timeout = Duration::from_millis(1);
    let name = cfg.name.clone();
    let err = match Vm::start(&cfg) {
        Err(e) => e,
        Ok(mut vm) => {
            vm.kill();
            panic!("booted within 1 ms?");
        }
    };
    assert!(matches!(err, VmError::Hung { .. }), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "VM {name} hung: no handshake answer within 0.0 s; QEMU was stopped."
        )),
        "{err}"
    );
    let entry = vm::status(&name).unwrap();
    assert_eq!(entry.state, VmState::Stopped);
    ktrace_tests::remove_vm_dir(&entry.paths.dir);
}

#[test]
fn missing_qemu_is_a_one_line_error() {
    let name = unique_name("noqemu");
    let out = Command::new(ktrace_bin())
        .env("PATH", "")
        .args(["--vm", &name, "vm", "start"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ktrace: qemu-system-x86_64 not found in PATH: install the Debian package \
         qemu-system-x86 (apt-get install qemu-system-x86)\n"
    );
}

#[test]
fn cli_starts_inspects_and_stops_a_vm_with_a_disk() {
    let name = unique_name("cli");
    let _guard = CliVmGuard(name.clone());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    let disk_arg = disk.to_str().unwrap();

    let out = ktrace_ok(&[
        "vm",
        "start",
        "--name",
        &name,
        "--disk",
        disk_arg,
        "--disk-size",
        "8M",
    ]);
    assert!(
        out.contains(&format!("created disk {disk_arg} (8388608 bytes, sparse)")),
        "{out}"
    );
    assert!(out.contains(&format!("VM {name} ready in ")), "{out}");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 8 << 20);

    let status = ktrace_ok(&["--vm", &name, "vm", "status"]);
    assert!(
        status.starts_with(&format!("VM {name}: running (pid ")),
        "{status}"
    );
    assert!(status.contains("  kernel  "), "{status}");

    let list = ktrace_ok(&["vm", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&name) && l.contains("running")),
        "{list}"
    );

    let table = ktrace_ok(&["--vm", &name, "info"]);
    // `vm start` without --cpus boots the default number of CPUs.
    let cpus = probe_sdk::vm::DEFAULT_CPUS;
    assert!(
        table.contains(&format!("cpus              {cpus} ")),
        "{table}"
    );
    assert!(table.contains("  PID  NAME"), "{table}");
    assert!(
        table.contains("\nevent streams     none since boot\n"),
        "{table}"
    );

    let json = ktrace_ok(&["--vm", &name, "info", "--json"]);
    let info: SystemInfo = serde_json::from_str(&json).expect("info --json parses");
    assert_eq!(info.cpus, cpus);

    // The disk is on the QEMU command line as a virtio-blk device.
    let cmdline = std::fs::read_to_string(vm::status(&name).unwrap().paths.cmdline).unwrap();
    assert!(cmdline.contains(&format!("file={disk_arg},if=none,id=vda,format=raw")));

    let console = ktrace_ok(&["--vm", &name, "vm", "console"]);
    assert!(!console.is_empty());

    // `console --follow` keeps printing until the VM stops.
    let follow = ktrace()
        .args(["--vm", &name, "vm", "console", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stop = ktrace_ok(&["--vm", &name, "vm", "stop"]);
    assert!(stop.contains("shut down cleanly"), "{stop}");
    let followed = follow.wait_with_output().unwrap();
    assert!(followed.status.success());
    let followed = String::from_utf8_lossy(&followed.stdout);
    assert!(
        followed.contains("shutdown requested by the host (exit code 0x10)"),
        "{followed}"
    );
    let status = ktrace_ok(&["--vm", &name, "vm", "status"]);
    assert_eq!(status, format!("VM {name}: stopped\n"));

    let out = ktrace().args(["--vm", &name, "info"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "ktrace: VM {name} is not running (start it with `ktrace vm start --name {name}`)\n"
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills the QEMU of a VM started through the CLI in runtime root `root`
/// (by the pid in its state directory) when dropped.
struct RuntimeRootVmGuard {
    root: std::path::PathBuf,
    name: String,
}

impl Drop for RuntimeRootVmGuard {
    fn drop(&mut self) {
        let pid_file = self.root.join("ktrace").join(&self.name).join("qemu.pid");
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[test]
fn vm_commands_take_name_and_old_stopped_vms_are_forgotten() {
    // A runtime root of its own: `vm list` sees only this test's VMs.
    let root = std::env::temp_dir().join(format!("kt-rt-{}", std::process::id()));
    let vms = root.join("ktrace");
    let name = unique_name("vmname");
    let _guard = RuntimeRootVmGuard {
        root: root.clone(),
        name: name.clone(),
    };
    let in_root = |args: &[&str]| {
        ktrace()
            .env("XDG_RUNTIME_DIR", &root)
            .args(args)
            .output()
            .unwrap()
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    // Two VMs that stopped without `vm stop`: one two days ago, one just now.
    for (vm, age_s) in [("old-vm", 2 * 86_400), ("recent-vm", 0)] {
        let dir = vms.join(vm);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("console.log"), "ktrace: booted\n").unwrap();
        let then = std::time::SystemTime::now() - Duration::from_secs(age_s);
        for p in [dir.join("console.log"), dir.clone()] {
            std::fs::File::open(&p).unwrap().set_modified(then).unwrap();
        }
    }

    let out = in_root(&["vm", "start", "--name", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = in_root(&["vm", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "removed the state of 1 VM stopped more than a day ago: old-vm\n"
    );
    let list = text(&out.stdout);
    assert!(!vms.join("old-vm").exists());
    assert!(!list.contains("old-vm"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("recent-vm") && l.contains("stopped")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with(&name) && l.contains("running")),
        "{list}"
    );

    // `--name` as `vm start` takes it.
    let out = in_root(&["vm", "status", "--name", &name]);
    assert!(
        text(&out.stdout).starts_with(&format!("VM {name}: running")),
        "{}",
        text(&out.stdout)
    );
    let out = in_root(&["vm", "console", "--name", &name]);
    assert!(!out.stdout.is_empty());
    let out = in_root(&["vm", "stop", "--name", &name]);
    assert!(
        text(&out.stdout).contains("shut down cleanly"),
        "{}",
        text(&out.stdout)
    );
    // A clean stop leaves nothing to list.
    assert!(!vms.join(&name).exists());
    let out = in_root(&["vm", "list"]);
    assert_eq!(text(&out.stderr), "");
    assert!(!text(&out.stdout).contains(&name), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("recent-vm"));
}

#[test]
fn the_kernel_elf_is_found_in_cargo_target_dir() {
    let target = std::env::temp_dir().join(format!("kt-target-{}", std::process::id()));
    let elf = target.join("kernel/kernel/kernel");
    std::fs::create_dir_all(elf.parent().unwrap()).unwrap();
    let symbols = || {
        ktrace()
            .env_remove(kernel_image::KERNEL_ENV)
            .env("CARGO_TARGET_DIR", &target)
            .args(["symbols", "RequestQueue::submit_bio"])
            .output()
            .unwrap()
    };
    // `ktrace vm start` builds there when CARGO_TARGET_DIR is set, so that
    // is where the tools look first: a file there that is no ELF is read
    // and refused by name.
    std::fs::write(&elf, b"not an ELF").unwrap();
    let out = symbols();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(elf.to_str().unwrap()), "{stderr}");
    std::fs::copy(&ktrace_tests::kernel_image().source, &elf).unwrap();
    let out = symbols();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("kernel::block::queue::RequestQueue::submit_bio"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_dir_all(&target).unwrap();
}
