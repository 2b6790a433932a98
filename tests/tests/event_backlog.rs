//! A streaming client that fell behind gets what waited for it once it
//! reads again, with nothing more written: the kernel keeps the batch the
//! link could not take, and after it went out it must look at the
//! session's streams again, `trace_printk` included (whose lines no ring
//! counter shows).

use std::time::{Duration, Instant};

use ktrace_abi::bpf::{BpfResponse, EventSource, LoadOptions, ProgramType};
use ktrace_abi::Response;
use ktrace_tests::{asm_program, kprobe_at, prog_info, TestVm};
use probe_sdk::client::Client;
use probe_sdk::runtime::Runtime;

/// `trace_printk` of a 61-byte line (60 `a`s and a newline) from a 64-byte
/// format on the stack: one line per run, or one lost line. Long lines put
/// more bytes on the link per line the kernel also logs on its console.
fn printk_line_program() -> String {
    let mut asm = String::new();
    for off in (8..=64).rev().step_by(4) {
        asm += &format!("    stw [%r10-{off}], 0x61616161\n");
    }
    asm += "    stw [%r10-4], 0x0a
    mov %r1, %r10
    add %r1, -64
    mov %r2, 64
    call 6
    mov %r0, 0
    exit
";
    asm
}

/// The `trace_printk` stream's id in a batch's lost counts.
const PRINTK_STREAM: u32 = u32::MAX;

fn held(c: &mut Client, session: usize) -> u64 {
    c.info().unwrap().event_sessions[session].batches_held
}

#[test]
fn a_printk_stream_that_fell_behind_is_delivered_whole_once_read() {
    let mut t = TestVm::boot("evb-printk");
    // Session 0 loads the producer and watches; the subscriber gets a
    // session of its own and reads nothing until it has fallen behind.
    let mut c = t.client();
    let mut sub = t.client();
    let session = sub.hello_reply().unwrap().session as usize;
    assert_ne!(session, 0);
    Runtime::new(&mut sub).subscribe(Vec::new(), true).unwrap();
    let target = kprobe_at("kernel::bpf::testing::target");
    let (prog, link) = {
        let mut rt = Runtime::new(&mut c);
        let p = rt
            .prog_load(
                asm_program(
                    "aline",
                    "kprobe/kernel::bpf::testing::target".into(),
                    ProgramType::Kprobe,
                    target.clone(),
                    &printk_line_program(),
                ),
                Vec::new(),
                LoadOptions::default(),
            )
            .unwrap();
        let l = rt.attach(p.id, target, false).unwrap();
        (p.id, l.id)
    };

    // Lines until the link is full and the kernel holds a batch.
    let held_before = held(&mut c, session);
    // A bound on a hang, not a timing: a loaded host runs the guest slowly.
    let deadline = Instant::now() + Duration::from_secs(180);
    while held(&mut c, session) == held_before {
        assert!(
            Instant::now() < deadline,
            "the subscriber never fell behind"
        );
        if !c
            .info()
            .unwrap()
            .tasks
            .iter()
            .any(|t| t.name == "bpf-trigger")
        {
            Runtime::new(&mut c).trigger_spawn(200_000).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A few more lines while it is behind (they wait in the queue), then
    // no more: nothing kicks the event task after this.
    Runtime::new(&mut c).trigger(100, 0).unwrap();
    Runtime::new(&mut c).detach(link).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while c
        .info()
        .unwrap()
        .tasks
        .iter()
        .any(|t| t.name == "bpf-trigger")
    {
        assert!(Instant::now() < deadline, "the producer task never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = prog_info(&mut Runtime::new(&mut c), prog).run_count;

    // Every run wrote its line or counted it lost: the subscriber gets
    // every line written, although nothing kicks the kernel any more.
    let mut lines = 0u64;
    let mut lost = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines + lost < runs {
        match sub.next_push(Duration::from_millis(300)).unwrap() {
            Some(Response::Bpf(BpfResponse::Events(b))) => {
                lines += b
                    .records
                    .iter()
                    .filter(|r| matches!(r.source, EventSource::Printk { prog: p } if p == prog))
                    .count() as u64;
                if let Some(l) = b.lost.iter().find(|l| l.map == PRINTK_STREAM) {
                    lost = l.lost;
                }
            }
            Some(_) => {}
            None => {
                if Instant::now() >= deadline {
                    let stats = c.info().unwrap().event_sessions[session];
                    let left = Runtime::new(&mut c)
                        .poll(Vec::new(), true, u32::MAX)
                        .unwrap()
                        .records
                        .len();
                    panic!(
                        "{runs} runs, {lines} lines pushed, {lost} lost: {left} lines never \
                         pushed were still queued; session {session}: {stats:?}"
                    );
                }
            }
        }
    }
    assert_eq!(lines + lost, runs, "no line comes twice");
    let stats = c.info().unwrap().event_sessions[session];
    eprintln!("{runs} runs: {lines} lines pushed, {lost} lost; session {session}: {stats:?}");
    assert_eq!(
        stats.records_pushed, lines,
        "the kernel counts what it pushed"
    );
    assert_eq!(stats.records_waiting, 0);
}
