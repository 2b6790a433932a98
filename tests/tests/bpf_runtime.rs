//! The in-kernel BPF runtime, end to end: maps of every type and their
//! Linux error codes, programs verified in the kernel (rejections identical
//! to the host verifier's), helpers (fault-safe probe reads), event streams
//! with loss accounting, and resource limits. Every test boots its own VM.

use std::time::{Duration, Instant};

use bpf_vm::verifier::{self, linux, Config, Env, MapDef};
use ktrace_abi::bpf::{
    map_type, AttachTarget, EventSource, Limits, LoadOptions, MapEntry, ObjectLoad, ProgramLoad,
    ProgramType,
};
use ktrace_abi::ErrorCode;
use ktrace_tests::{
    asm_program, create_map, prog_info, TestVm, COUNT_IN_SLOT_0, RING_RECORD_WITH_SEQ,
};
use probe_sdk::runtime::{Runtime, RuntimeError};

use ktrace_tests::map_def as def;

fn kprobe_prog(name: &str, asm: &str) -> ProgramLoad {
    asm_program(
        name,
        format!("kprobe/{name}"),
        ProgramType::Kprobe,
        AttachTarget::Kprobe {
            spec: "kernel::bpf::testing::target".into(),
            points: Vec::new(),
        },
        asm,
    )
}

fn u64s(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

fn errno(r: Result<(), RuntimeError>) -> i32 {
    r.expect_err("expected a refusal")
        .errno()
        .expect("a kernel errno")
}

/// A `pt_regs` context for test runs.
fn regs() -> Vec<u8> {
    vec![0u8; 168]
}

#[test]
fn map_semantics_flags_limits_lru_percpu_batches() {
    let mut vm = TestVm::boot("bpf-maps");
    let mut client = vm.client();
    let mut rt = Runtime::new(&mut client);
    let k = |i: u32| i.to_le_bytes().to_vec();
    let v = |i: u64| i.to_le_bytes().to_vec();

    // Hash: flags and errnos, max_entries.
    let h = create_map(&mut rt, "h", map_type::HASH, 4, 8, 3);
    assert_eq!(
        errno(rt.map_update(h, &k(1), &v(1), 2)),
        -2,
        "BPF_EXIST on a missing key"
    );
    rt.map_update(h, &k(1), &v(10), 1).unwrap();
    assert_eq!(
        errno(rt.map_update(h, &k(1), &v(11), 1)),
        -17,
        "BPF_NOEXIST on an existing key"
    );
    rt.map_update(h, &k(1), &v(12), 2).unwrap();
    rt.map_update(h, &k(2), &v(20), 0).unwrap();
    rt.map_update(h, &k(3), &v(30), 0).unwrap();
    assert_eq!(
        errno(rt.map_update(h, &k(4), &v(40), 0)),
        -7,
        "full hash map"
    );
    assert_eq!(errno(rt.map_update(h, &k(3), &v(1), 7)), -22, "bad flags");
    assert_eq!(errno(rt.map_update(h, &[1, 2], &v(1), 0)), -22, "short key");
    assert_eq!(rt.map_lookup(h, &k(1)).unwrap(), Some(v(12)));
    assert_eq!(rt.map_lookup(h, &k(9)).unwrap(), None);
    assert_eq!(errno(rt.map_delete(h, &k(9))), -2);
    rt.map_delete(h, &k(2)).unwrap();
    rt.map_update(h, &k(4), &v(40), 0).unwrap();
    let mut keys: Vec<u32> = rt
        .map_dump(h, 2)
        .unwrap()
        .iter()
        .map(|e| u32::from_le_bytes(e.key[..].try_into().unwrap()))
        .collect();
    keys.sort();
    assert_eq!(keys, [1, 3, 4]);

    // Array: every element exists, delete is EINVAL, out of range is E2BIG.
    let a = create_map(&mut rt, "a", map_type::ARRAY, 4, 8, 4);
    assert_eq!(rt.map_lookup(a, &k(3)).unwrap(), Some(v(0)));
    assert_eq!(errno(rt.map_update(a, &k(3), &v(1), 1)), -17);
    assert_eq!(errno(rt.map_update(a, &k(4), &v(1), 0)), -7);
    assert_eq!(errno(rt.map_delete(a, &k(0))), -22);
    assert_eq!(rt.map_lookup(a, &k(4)).unwrap(), None);

    // LRU: the least recently used entry goes.
    let l = create_map(&mut rt, "l", map_type::LRU_HASH, 4, 8, 2);
    rt.map_update(l, &k(1), &v(1), 0).unwrap();
    rt.map_update(l, &k(2), &v(2), 0).unwrap();
    rt.map_update(l, &k(1), &v(11), 0).unwrap(); // 1 is now the most recent
    rt.map_update(l, &k(3), &v(3), 0).unwrap();
    assert_eq!(rt.map_lookup(l, &k(2)).unwrap(), None, "2 was evicted");
    assert_eq!(rt.map_lookup(l, &k(1)).unwrap(), Some(v(11)));
    assert_eq!(rt.map_lookup(l, &k(3)).unwrap(), Some(v(3)));

    // Per-CPU: one 8-byte-padded value per CPU.
    let cpus = ktrace_tests::test_cpus() as usize;
    let pa = rt
        .map_create(def("pa", map_type::PERCPU_ARRAY, 4, 4, 2))
        .unwrap();
    assert_eq!(pa.host_value_size, 8 * cpus as u32);
    let per_cpu: Vec<u8> = (0..cpus)
        .flat_map(|c| [7 + c as u8, 0, 0, 0, 0, 0, 0, 0])
        .collect();
    rt.map_update(pa.id, &k(1), &per_cpu, 0).unwrap();
    assert_eq!(rt.map_lookup(pa.id, &k(1)).unwrap(), Some(per_cpu));
    assert_eq!(
        errno(rt.map_update(pa.id, &k(1), &[7, 0, 0, 0], 0)),
        -22,
        "per-CPU values are padded"
    );
    let ph = create_map(&mut rt, "ph", map_type::PERCPU_HASH, 4, 8, 2);
    let per_cpu: Vec<u8> = (0..cpus).flat_map(|c| v(55 + c as u64)).collect();
    rt.map_update(ph, &k(5), &per_cpu, 0).unwrap();
    assert_eq!(rt.map_lookup(ph, &k(5)).unwrap(), Some(per_cpu));

    // Bad definitions are refused with the reason.
    let e = rt
        .map_create(def("bad", map_type::ARRAY, 8, 8, 4))
        .unwrap_err();
    assert_eq!(e.errno(), Some(-22));
    assert!(
        e.to_string().contains("map `bad` (type 2 array, key 8 B"),
        "{e}"
    );
    let e = rt
        .map_create(def("rb", map_type::RINGBUF, 0, 0, 5000))
        .unwrap_err();
    assert_eq!(e.errno(), Some(-22), "ring size must be a power of two");

    // 10k entries in few round trips.
    let big = create_map(&mut rt, "big", map_type::HASH, 4, 8, 10_000);
    let entries: Vec<MapEntry> = (0..10_000u32)
        .map(|i| MapEntry {
            key: k(i),
            value: v(u64::from(i) * 3),
        })
        .collect();
    assert_eq!(
        rt.map_update_batch(big, entries, 0).unwrap(),
        (10_000, None)
    );
    let t = Instant::now();
    let all = rt.map_dump(big, 4096).unwrap();
    let dump_time = t.elapsed();
    assert_eq!(all.len(), 10_000);
    for e in &all {
        assert_eq!(
            u64s(&e.value),
            u64::from(u32::from_le_bytes(e.key[..].try_into().unwrap())) * 3
        );
    }
    eprintln!("dump of 10000 entries in batches of 4096 (3 round trips): {dump_time:?}");
    let (done, err) = rt
        .map_update_batch(
            big,
            vec![MapEntry {
                key: k(20_000),
                value: v(1),
            }],
            0,
        )
        .unwrap();
    assert_eq!(done, 0);
    assert_eq!(err.unwrap().errno, -7);

    // Limits: memory, map count; clean refusals.
    let (limits, usage) = rt.limits().unwrap();
    assert_eq!(usage.maps, 6);
    rt.set_limits(Limits {
        map_memory_bytes: usage.map_memory_bytes + 4096,
        ..limits.clone()
    })
    .unwrap();
    let e = rt
        .map_create(def("huge", map_type::ARRAY, 4, 1024, 64))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Limit));
    assert!(e.to_string().contains("over the limit of"), "{e}");
    let e = rt
        .set_limits(Limits {
            maps: 1,
            ..limits.clone()
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Limit));
    rt.set_limits(limits).unwrap();
    assert_eq!(rt.maps().unwrap().len(), 6);
    rt.map_free(big).unwrap();
    assert_eq!(
        rt.map_lookup(big, &k(1)).unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn programs_verify_run_and_fault_safely() {
    let mut vm = TestVm::boot("bpf-progs");
    let mut client = vm.client();
    let mut rt = Runtime::new(&mut client);
    let counts = create_map(&mut rt, "counts", map_type::ARRAY, 4, 8, 1);
    let p = rt
        .prog_load(
            kprobe_prog("count", COUNT_IN_SLOT_0),
            vec![counts],
            LoadOptions::default(),
        )
        .unwrap();
    assert!(p.verifier.accepted);
    assert!(p.verifier.insns_processed > 0);
    let r = rt.test_run(p.id, regs(), 1000).unwrap();
    assert_eq!((r.runs, r.retval, r.error.clone()), (1000, 0, None));
    assert_eq!(
        rt.map_lookup(counts, &0u32.to_le_bytes())
            .unwrap()
            .map(|v| u64s(&v)),
        Some(1000)
    );
    let info = prog_info(&mut rt, p.id);
    assert_eq!(info.run_count, 1000);
    assert_eq!(info.insns_executed, 1000 * 10);
    // Runs are counted, but timed only while asked (`RunTimeStats`).
    assert_eq!(info.run_time_ns, 0);
    assert!(!rt.run_time_stats(None).unwrap());
    assert!(rt.run_time_stats(Some(true)).unwrap());
    rt.test_run(p.id, regs(), 1000).unwrap();
    assert!(!rt.run_time_stats(Some(false)).unwrap());
    let info = rt
        .progs()
        .unwrap()
        .into_iter()
        .find(|i| i.id == p.id)
        .unwrap();
    assert_eq!(info.run_count, 2000);
    assert!(info.run_time_ns > 0);
    eprintln!("count program: {} cycles per test run", r.cycles);

    // probe_read_kernel of bad addresses: -EFAULT (-14), destination zeroed, kernel up.
    for addr in ["0x10", "0x7fff00000000", "0xdead000000000000"] {
        let asm = format!(
            "stdw [%r10-8], 0x55\nmov %r1, %r10\nadd %r1, -8\nmov %r2, 8\nlddw %r3, {addr}\ncall 113\nmov32 %r0, %r0\nldxdw %r1, [%r10-8]\nlsh %r1, 32\nor %r0, %r1\nexit"
        );
        let p = rt
            .prog_load(kprobe_prog("badread", &asm), vec![], LoadOptions::default())
            .unwrap();
        let r = rt.test_run(p.id, regs(), 1).unwrap();
        assert_eq!(r.error, None);
        assert_eq!(r.retval as u32 as i32, -14, "probe_read_kernel({addr})");
        assert_eq!(r.retval >> 32, 0, "destination zeroed after the fault");
        rt.prog_unload(p.id).unwrap();
    }
    // ... and a good one reads the kernel's memory.
    let good = format!(
        "mov %r1, %r10\nadd %r1, -8\nmov %r2, 8\nlddw %r3, {}\ncall 113\nexit",
        0x100000 // the kernel image start (identity mapped)
    );
    let p = rt
        .prog_load(
            kprobe_prog("goodread", &good),
            vec![],
            LoadOptions::default(),
        )
        .unwrap();
    assert_eq!(rt.test_run(p.id, regs(), 1).unwrap().retval, 0);
    rt.client().info().expect("the kernel is still up");

    // A rejected program: the kernel's message is the host verifier's.
    // (Key 1 is past the one-entry array, so the lookup may fail; with key
    // 0 it could not, and Linux and ktrace accept the unchecked read.)
    let bad = "stw [%r10-4], 1\nlddw %r1, map_idx(0)\nmov %r2, %r10\nadd %r2, -4\ncall 1\nldxdw %r0, [%r0]\nexit";
    let e = rt
        .prog_load(
            kprobe_prog("nullderef", bad),
            vec![counts],
            LoadOptions {
                log_level: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
    let RuntimeError::Rejected(rej) = e else {
        panic!("expected a rejection, got {e}")
    };
    let kernel_msg = rej.report.message.clone().unwrap();
    let prog = bpf_vm::asm::assemble(bad).unwrap();
    let pt = linux::kprobe();
    let helpers = linux::helpers();
    let maps = [MapDef {
        fd: 0,
        map_type: map_type::ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
    }];
    let host = verifier::verify(
        prog.insns(),
        &Env {
            prog_type: &pt,
            helpers: &helpers,
            maps: &maps,
        },
        &Config::default(),
    )
    .unwrap_err();
    assert_eq!(kernel_msg, host.to_string());
    assert!(
        kernel_msg.starts_with(
            "insn 6: r0 = *(u64 *)(r0 + 0): R0 invalid mem access 'map_value_or_null'"
        ),
        "{kernel_msg}"
    );
    assert!(!rej.report.log.is_empty(), "log level 1 returns the log");

    // A stack pointer passed as a map value leaks a kernel address: rejected.
    let leak = "stw [%r10-4], 0\nstxdw [%r10-16], %r10\nlddw %r1, map_idx(0)\nmov %r2, %r10\nadd %r2, -4\nmov %r3, %r10\nadd %r3, -16\nmov %r4, 0\ncall 2\nexit";
    let e = rt
        .prog_load(
            kprobe_prog("leak", leak),
            vec![counts],
            LoadOptions::default(),
        )
        .unwrap_err();
    let RuntimeError::Rejected(rej) = e else {
        panic!("expected a rejection, got {e}")
    };
    let msg = rej.report.message.unwrap();
    assert!(
        msg.starts_with("insn 9: call"),
        "the leak is at the call: {msg}"
    );
    assert!(
        msg.to_lowercase().contains("pointer") || msg.contains("leak"),
        "{msg}"
    );

    // Instruction budget: an (unverifiable) endless loop cannot load, and a
    // long bounded loop stops at the budget, counted, kernel up.
    let long = "mov %r1, 0\nloop:\nadd %r1, 1\njlt %r1, 100000, loop\nmov %r0, 0\nexit";
    let p = rt
        .prog_load(
            kprobe_prog("long", long),
            vec![],
            LoadOptions {
                insn_budget: 1000,
                ..Default::default()
            },
        )
        .unwrap();
    let r = rt.test_run(p.id, regs(), 1).unwrap();
    assert_eq!(r.runs, 0);
    assert!(r
        .error
        .unwrap()
        .contains("instruction budget of 1000 exhausted"));
    let info = prog_info(&mut rt, p.id);
    assert_eq!(info.budget_exhausted, 1);

    // Wrong context size for a test run.
    let e = rt.test_run(p.id, vec![0; 8], 1).unwrap_err();
    assert!(e.to_string().contains("context is 8 bytes"), "{e}");

    // Program limits.
    let (limits, usage) = rt.limits().unwrap();
    rt.set_limits(Limits {
        programs: usage.programs,
        ..limits.clone()
    })
    .unwrap();
    let e = rt
        .prog_load(
            kprobe_prog("count2", COUNT_IN_SLOT_0),
            vec![counts],
            LoadOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Limit), "{e}");
    rt.set_limits(Limits {
        programs: 64,
        insns_per_program: 4,
        ..limits
    })
    .unwrap();
    let e = rt
        .prog_load(
            kprobe_prog("count3", COUNT_IN_SLOT_0),
            vec![counts],
            LoadOptions::default(),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("instructions, over the limit of 4"),
        "{e}"
    );
}

/// The sequence counter and ring buffer [`RING_RECORD_WITH_SEQ`] writes to.
fn seq_and_ring(rt: &mut Runtime, ring_bytes: u32) -> (u32, u32) {
    let seq = create_map(rt, "seq", map_type::ARRAY, 4, 8, 1);
    let rb = create_map(rt, "rb", map_type::RINGBUF, 0, 0, ring_bytes);
    (seq, rb)
}

fn drain(rt: &mut Runtime, map: u32, want: u64, timeout: Duration) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    let mut lost = 0;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let Some(b) = rt.next_events(Duration::from_millis(500)).unwrap() else {
            continue;
        };
        for r in b.records {
            assert_eq!(r.source, EventSource::RingBuf { map });
            assert_eq!(r.data.len(), 16);
            assert_eq!(u64s(&r.data), 0x55);
            seqs.push(u64s(&r.data[8..]));
        }
        if let Some(l) = b.lost.iter().find(|l| l.map == map) {
            lost = l.lost;
        }
        if seqs.len() as u64 + lost >= want {
            break;
        }
    }
    (seqs, lost)
}

#[test]
fn event_stream_order_loss_and_throughput() {
    let mut vm = TestVm::boot("bpf-events");
    let mut client = vm.client();
    let mut rt = Runtime::new(&mut client);

    // Small ring, burst: order kept, every missing record counted.
    let seq = create_map(&mut rt, "seq", map_type::ARRAY, 4, 8, 1);
    let rb = create_map(&mut rt, "rb", map_type::RINGBUF, 0, 0, 4096);
    let p = rt
        .prog_load(
            kprobe_prog("rbout", RING_RECORD_WITH_SEQ),
            vec![seq, rb],
            LoadOptions::default(),
        )
        .unwrap();
    rt.subscribe(vec![rb], false).unwrap();
    let n = 5000;
    rt.test_run(p.id, regs(), n).unwrap();
    let (seqs, lost) = drain(&mut rt, rb, u64::from(n), Duration::from_secs(30));
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "records arrive in order"
    );
    assert_eq!(
        seqs.len() as u64 + lost,
        u64::from(n),
        "every record delivered or counted lost"
    );
    assert!(lost > 0, "a 4 KiB ring cannot hold a burst of {n} records");
    let gaps: u64 = seqs.windows(2).map(|w| w[1] - w[0] - 1).sum::<u64>()
        + seqs.first().copied().unwrap_or(0)
        + (u64::from(n) - 1 - seqs.last().copied().unwrap_or(0));
    assert_eq!(
        gaps, lost,
        "the gaps in the sequence are exactly the lost records"
    );
    eprintln!(
        "burst of {n} into a 4 KiB ring: {} delivered, {lost} lost (counted)",
        seqs.len()
    );

    // Sustained throughput: a 4 MiB ring, 250k records produced in five
    // runs while the host drains. Every record arrives or is counted lost.
    rt.map_free(rb).unwrap();
    rt.prog_unload(p.id).unwrap();
    rt.map_update(seq, &0u32.to_le_bytes(), &0u64.to_le_bytes(), 0)
        .unwrap();
    let big = create_map(&mut rt, "rb2", map_type::RINGBUF, 0, 0, 4 << 20);
    let p = rt
        .prog_load(
            kprobe_prog("rbout2", RING_RECORD_WITH_SEQ),
            vec![seq, big],
            LoadOptions::default(),
        )
        .unwrap();
    rt.subscribe(vec![big], false).unwrap();
    let (rounds, per) = (5u32, 50_000u32);
    let n = u64::from(rounds * per);
    let t = Instant::now();
    for _ in 0..rounds {
        let r = rt.test_run(p.id, regs(), per).unwrap();
        assert_eq!(r.runs, per);
    }
    let (seqs, lost) = drain(&mut rt, big, n, Duration::from_secs(120));
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        seqs.len() as u64 + lost,
        n,
        "every record delivered or counted lost"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let link = rt.client().info().unwrap().control_link;
    eprintln!(
        "events to host over {link}: {} records of 16 B in {secs:.2} s = {:.0} events/s, {lost} lost (counted)",
        seqs.len(),
        seqs.len() as f64 / secs
    );
    rt.subscribe(vec![], false).unwrap();
}

/// A client that leaves takes its subscriptions along: records produced
/// after it left are not pushed to whoever connects next (nor into the
/// closed socket), they wait in the ring buffer until a client subscribes,
/// which then receives every one of them or sees it counted lost.
#[test]
fn a_disconnect_ends_the_clients_subscriptions() {
    let mut vm = TestVm::boot("bpf-reconnect");
    let n = 3000u32;
    let (rb, prog) = {
        let mut client = vm.client();
        let mut rt = Runtime::new(&mut client);
        // Room for 2,730 records of 24 bytes: the rest is counted lost.
        // Pinned: the maps and the program outlive this client (what a
        // client loads unpinned goes with it); its subscription does not.
        let mut program = kprobe_prog("rbout", RING_RECORD_WITH_SEQ);
        program.attach = ktrace_tests::kprobe_at("kernel::bpf::testing::target");
        let object = ObjectLoad {
            maps: vec![
                def("seq", map_type::ARRAY, 4, 8, 1),
                def("rb", map_type::RINGBUF, 0, 0, 1 << 16),
            ],
            programs: vec![program],
        };
        let loaded = rt
            .load_object_pinned(
                "reconnect",
                object,
                true,
                LoadOptions::default(),
                Some("reconnect".into()),
            )
            .unwrap();
        let rb = loaded.maps[1].id;
        rt.subscribe(vec![rb], false).unwrap();
        (rb, loaded.programs[0].id)
    };
    // The first client has gone; the next one fires the probe without
    // subscribing.
    let mut client = vm.client();
    let mut rt = Runtime::new(&mut client);
    rt.trigger_spawn(n).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = prog_info(&mut rt, prog);
        if p.run_count == u64::from(n) {
            break;
        }
        assert!(Instant::now() < deadline, "the trigger task stalled: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stray = rt.next_events(Duration::from_millis(300)).unwrap();
    assert!(
        stray.is_none(),
        "the old client's subscription must not push to this one: {stray:?}"
    );
    rt.subscribe(vec![rb], false).unwrap();
    let (seqs, lost) = drain(&mut rt, rb, u64::from(n), Duration::from_secs(30));
    assert_eq!(
        seqs.len() as u64 + lost,
        u64::from(n),
        "every record delivered or counted lost"
    );
    assert!(
        !seqs.is_empty() && lost > 0,
        "{} delivered, {lost} lost",
        seqs.len()
    );
    assert_eq!(seqs[0], 0, "the oldest records were kept");
    eprintln!(
        "after a disconnect: {} records kept and delivered, {lost} counted lost",
        seqs.len()
    );
}

/// Event streams go to the session that subscribed: one client streams a
/// ring buffer while another, connected at the same time, makes the
/// records; every record reaches the first, and none the second.
#[test]
fn events_reach_the_subscribing_session_while_another_works() {
    let mut vm = TestVm::boot("bpf-sessions");
    let mut listener = vm.client();
    let mut worker = vm.client();
    let mut lrt = Runtime::new(&mut listener);
    let (seq, rb) = seq_and_ring(&mut lrt, 1 << 20);
    lrt.subscribe(vec![rb], false).unwrap();
    let mut wrt = Runtime::new(&mut worker);
    let p = wrt
        .prog_load(
            kprobe_prog("rbout", RING_RECORD_WITH_SEQ),
            vec![seq, rb],
            LoadOptions::default(),
        )
        .unwrap();
    let n = 20_000u32;
    for _ in 0..4 {
        assert_eq!(wrt.test_run(p.id, regs(), n / 4).unwrap().runs, n / 4);
    }
    let stray = wrt.next_events(Duration::from_millis(300)).unwrap();
    assert!(stray.is_none(), "the worker did not subscribe: {stray:?}");
    let (seqs, lost) = drain(&mut lrt, rb, u64::from(n), Duration::from_secs(60));
    assert_eq!((seqs.len() as u64, lost), (u64::from(n), 0));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

/// The answer to an unsubscribe comes after every batch the kernel
/// collected for the session: with a producer still firing, once the
/// client has its answer no record of the stream arrives, and the client
/// has received exactly the records the kernel counts as pushed to it.
/// (The kernel used to answer at once while its event task still pushed
/// batches collected under the old subscription.)
#[test]
fn no_record_follows_the_answer_to_an_unsubscribe() {
    let mut vm = TestVm::boot("bpf-unsub-order");
    let mut client = vm.client();
    let session = client.hello_reply().unwrap().session as usize;
    let mut rt = Runtime::new(&mut client);
    let (seq, rb) = seq_and_ring(&mut rt, 4 << 20);
    let p = rt
        .prog_load(
            kprobe_prog("rbout", RING_RECORD_WITH_SEQ),
            vec![seq, rb],
            LoadOptions::default(),
        )
        .unwrap();
    let target = ktrace_tests::kprobe_at("kernel::bpf::testing::target");
    rt.attach(p.id, target, false).unwrap();
    let pushed_at_start = rt.client().info().unwrap().event_sessions[session].records_pushed;
    let mut received = 0u64;
    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        // The producer: a kernel task making probed calls, restarted
        // whenever the last one has finished.
        if !rt
            .client()
            .info()
            .unwrap()
            .tasks
            .iter()
            .any(|t| t.name == "bpf-trigger")
        {
            rt.trigger_spawn(10_000_000).unwrap();
        }
        rt.subscribe(vec![rb], false).unwrap();
        // The stream flows (a bound on a hang, not a timing).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut flowing = 0;
        while flowing == 0 {
            assert!(Instant::now() < deadline, "round {round}: no batch came");
            if let Some(b) = rt.next_events(Duration::from_millis(500)).unwrap() {
                flowing += b.records.len();
                received += b.records.len() as u64;
            }
        }
        rt.subscribe(Vec::new(), false).unwrap();
        // Batches that came before the answer were queued by the client.
        let before_answer: usize = rt
            .client()
            .take_pushes()
            .iter()
            .map(|r| match r {
                ktrace_abi::Response::Bpf(ktrace_abi::bpf::BpfResponse::Events(b)) => {
                    b.records.len()
                }
                _ => 0,
            })
            .sum();
        received += before_answer as u64;
        let late = rt.next_events(Duration::from_millis(500)).unwrap();
        assert!(
            late.is_none(),
            "round {round}: a batch of {} records came after the answer to the unsubscribe",
            late.map_or(0, |b| b.records.len())
        );
        let pushed = rt.client().info().unwrap().event_sessions[session].records_pushed;
        assert_eq!(
            pushed - pushed_at_start,
            received,
            "round {round}: the client got every record pushed to it, and no more"
        );
        eprintln!(
            "round {round}: {flowing} records in the first batch, {before_answer} more before the answer, none after"
        );
    }
}

/// A refusal for want of memory (`Limit`, `ENOMEM`) whose text has `what`.
fn assert_enomem(e: &RuntimeError, what: &str) {
    eprintln!("refused: {e}");
    assert_eq!(
        (e.code(), e.errno()),
        (Some(ErrorCode::Limit), Some(-12)),
        "{e}"
    );
    assert!(e.to_string().contains(what), "{e}");
}

/// `ProgLoad` of `insns` instructions of straight-line code.
fn straight_line(name: &str, insns: usize) -> ProgramLoad {
    let mut src = String::new();
    for i in 0..insns - 1 {
        src.push_str(&format!("mov %r0, {}\n", i % 1000));
    }
    src.push_str("exit\n");
    kprobe_prog(name, &src)
}

/// Forward branches on an unknown value, each fall-through changing r0:
/// every path differs, so the verifier stores a state at each branch.
fn state_hungry(branches: usize) -> ProgramLoad {
    let mut src = String::from("ldxdw %r2, [%r1+112]\nmov %r0, 0\n");
    for i in 0..branches {
        src.push_str(&format!("jgt %r2, {i}, l{i}\nadd %r0, 1\nl{i}:\n"));
    }
    src.push_str("exit\n");
    kprobe_prog("hungry", &src)
}

#[test]
fn a_full_kernel_heap_is_a_clean_refusal() {
    let mut vm = TestVm::boot("bpf-heap");
    let mut client = vm.client();
    let heap = client.info().unwrap().heap_total_bytes;
    let mut rt = Runtime::new(&mut client);
    let (limits, _) = rt.limits().unwrap();

    // Limits the heap cannot honour are refused.
    for (bytes, insns) in [(u64::MAX, 4096), (heap, 4096), (1 << 20, 1_000_001)] {
        let e = rt
            .set_limits(Limits {
                map_memory_bytes: bytes,
                insns_per_program: insns,
                ..limits.clone()
            })
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
        assert!(
            e.to_string().contains("more than this kernel can hold"),
            "{e}"
        );
    }
    // The most the kernel allows: map memory up to the heap less its
    // reserve, which the kernel's own use already eats into.
    rt.set_limits(Limits {
        map_memory_bytes: heap - (12 << 20),
        maps: 1000,
        ..limits.clone()
    })
    .unwrap();

    // Fill the heap with 4 MiB maps, then with 128 KiB ones: both end in
    // the heap's refusal, never in the map-memory limit.
    let mut maps = Vec::new();
    for value_size in [4096, 128] {
        let e = loop {
            let name = format!("fill{}", maps.len());
            match rt.map_create(def(&name, map_type::ARRAY, 4, value_size, 1024)) {
                Ok(m) => maps.push(m.id),
                Err(e) => break e,
            }
            assert!(maps.len() < 1000, "the heap never filled");
        };
        assert_enomem(&e, ": no free slot or memory (ENOMEM); ");
        assert!(
            e.to_string().contains("are kept for the kernel itself"),
            "{e}"
        );
    }
    eprintln!("{} maps filled the heap", maps.len());

    // Nothing large fits now: a program to verify, a 1 MiB request.
    let e = rt
        .prog_load(
            kprobe_prog("count", COUNT_IN_SLOT_0),
            vec![maps[0]],
            LoadOptions::default(),
        )
        .unwrap_err();
    assert_enomem(
        &e,
        "program `count` (kprobe/count): verifying 11 instructions needs",
    );
    let e = rt
        .prog_load(
            straight_line("big", 131_072),
            vec![],
            LoadOptions::default(),
        )
        .unwrap_err();
    // Refused while it arrives: past 64 KiB a frame is buffered only while
    // the heap can spare it, and the refusal answers the frame's request id.
    assert_enomem(&e, "dropped an unfinished frame of");
    // A dump of a filled 4 MiB map still works: its batches shrink to what
    // the heap can spare instead of eating the reserve.
    let t = Instant::now();
    let dumped = rt.map_dump(maps[0], 65_536).unwrap();
    assert_eq!(dumped.len(), 1024);
    assert!(dumped.iter().all(|e| e.value.len() == 4096));
    eprintln!("dump of a 4 MiB map on a full heap: {:?}", t.elapsed());
    // Small requests still work, and freeing the maps gives the heap back.
    assert!(rt.maps().unwrap().len() == maps.len());
    for m in maps {
        rt.map_free(m).unwrap();
    }
    rt.set_limits(limits).unwrap();
    let p = rt
        .prog_load(straight_line("big", 60_000), vec![], LoadOptions::default())
        .unwrap();
    assert!(p.verifier.accepted);
    rt.prog_unload(p.id).unwrap();

    // A program whose states outgrow the verifier's memory is refused as
    // too complex, with the budget the kernel gave it.
    let e = rt
        .prog_load(state_hungry(20_000), vec![], LoadOptions::default())
        .unwrap_err();
    let RuntimeError::Rejected(r) = &e else {
        panic!("{e}")
    };
    let message = r.report.message.clone().unwrap_or_default();
    eprintln!(
        "state-hungry program: refused after {} states, {} insns processed, {} ms",
        r.report.states_stored,
        r.report.insns_processed,
        r.report.time_ns / 1_000_000
    );
    assert!(
        message.contains(
            "program too complex: its stored states and pending branches need more than the verifier's 49152 KiB of state memory"
        ),
        "{message}"
    );

    // Trigger tasks: at most 8 at once.
    for _ in 0..8 {
        rt.trigger_spawn(10_000_000).unwrap();
    }
    let e = rt.trigger_spawn(1).unwrap_err();
    assert_eq!(
        (e.code(), e.errno()),
        (Some(ErrorCode::Limit), Some(-11)),
        "{e}"
    );
    assert!(
        e.to_string().contains("8 trigger tasks are still running"),
        "{e}"
    );
    let e = rt.trigger_spawn(u32::MAX).unwrap_err();
    assert!(
        e.to_string()
            .contains("exceeds the limit of 10000000 calls"),
        "{e}"
    );
    let (_, usage) = rt.limits().unwrap();
    assert_eq!(
        (usage.maps, usage.programs, usage.map_memory_bytes),
        (0, 0, 0)
    );
}

/// A ring record longer than the event link can queue at once (the
/// virtio port's 16 buffers of 64 KiB) is not streamed: the event task
/// passes it over, counts it lost, and keeps streaming the records after
/// it, without waiting for the client to read part of a frame. A poll,
/// whose answer may be a whole 4 MiB frame, still takes such a record.
#[test]
fn ring_records_too_large_to_stream_are_counted_lost_and_the_stream_goes_on() {
    let mut vm = TestVm::boot("bpf-events-big");
    let mut client = vm.client();
    let mut rt = Runtime::new(&mut client);
    const BIG: u32 = 2 << 20;
    let (seq, rb) = seq_and_ring(&mut rt, 8 << 20);
    let small = rt
        .prog_load(
            kprobe_prog("small", RING_RECORD_WITH_SEQ),
            vec![seq, rb],
            LoadOptions::default(),
        )
        .unwrap();
    // Reserve BIG bytes, mark the first word, submit.
    let big_asm = format!(
        "lddw %r1, map_idx(0)\nmov %r2, {BIG}\nmov %r3, 0\ncall 131\njeq %r0, 0, out\nstdw [%r0], 0x77\nmov %r1, %r0\nmov %r2, 0\ncall 132\nout:\nmov %r0, 0\nexit"
    );
    let big = rt
        .prog_load(
            kprobe_prog("big", &big_asm),
            vec![rb],
            LoadOptions::default(),
        )
        .unwrap();
    rt.subscribe(vec![rb], false).unwrap();
    // 3 small, 2 big, 3 small, in that order in the ring.
    rt.test_run(small.id, regs(), 3).unwrap();
    rt.test_run(big.id, regs(), 2).unwrap();
    rt.test_run(small.id, regs(), 3).unwrap();
    let (seqs, lost) = drain(&mut rt, rb, 8, Duration::from_secs(60));
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5], "the small records, in order");
    assert_eq!(
        lost, 2,
        "the two records too large to stream are counted lost"
    );
    let m = rt.maps().unwrap().into_iter().find(|m| m.id == rb).unwrap();
    assert_eq!(
        (m.submitted, m.consumed, m.lost),
        (8, 6, 2),
        "the ring's own counts: the big records were taken out as lost, not consumed"
    );

    // A poll answers in one frame of up to 4 MiB: the 2 MiB record fits.
    rt.subscribe(Vec::new(), false).unwrap();
    rt.test_run(big.id, regs(), 1).unwrap();
    let batch = rt.poll(vec![rb], false, 16).unwrap();
    assert_eq!(
        batch.records.len(),
        1,
        "the polled batch holds the big record"
    );
    let data = &batch.records[0].data;
    assert_eq!(data.len(), BIG as usize);
    assert_eq!(u64s(data), 0x77);
    assert_eq!(
        batch.lost.iter().find(|l| l.map == rb).map(|l| l.lost),
        Some(2),
        "nothing more was lost"
    );
}
