//! Maps, buffers and events when programs run on every CPU at once.
//!
//! One program on `kernel::bpf::testing::target`, fired by several kernel
//! trigger tasks that preempt each other (and, once the kernel boots its
//! other CPUs, run on all of them), counts every hit three ways: a
//! `lock add` into one array slot shared by all CPUs, a plain add into a
//! per-CPU array, and a record into a ring buffer. The counters must equal
//! the runs the kernel counted itself, exactly; every record must be
//! delivered once or counted lost; `ktrace map dump` shows the per-CPU
//! counter per CPU with the exact sum.
//!
//! A perf event array declared with 0 entries (the probe crate's
//! `PerfEventArray::new()`) is sized to the CPU count by the loader, and
//! every record written through it arrives with its CPU or is counted lost
//! on that CPU's buffer.
//!
//! Without the SMP work these fail as follows: the 0-entry perf event array
//! is refused with EINVAL; a program that finds a map locked by another
//! CPU loses its update (a single try_lock), so totals come out short on 2
//! or more CPUs (on 2 vCPUs with the old lock policy, 256 of 20,000 runs
//! found the sequence map locked and wrote no record); and records of a
//! ring buffer locked by another CPU vanished without being counted lost.
//! On one CPU nothing runs concurrently with a program (interrupts are
//! off), so the counting test only bites with `KTRACE_TEST_CPUS` >= 2.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ktrace_abi::bpf::{map_type, EventSource, LoadOptions, ObjectLoad, ProgramLoad, ProgramType};
use ktrace_tests::{asm_program, create_map, ktrace_ok, link_info, prog_info, TestVm};
use probe_sdk::runtime::Runtime;
use serde_json::Value;

use ktrace_tests::map_def as def;

const TARGET: &str = "kernel::bpf::testing::target";

fn kprobe_prog(name: &str, asm: &str) -> ProgramLoad {
    asm_program(
        name,
        format!("kprobe/{name}"),
        ProgramType::Kprobe,
        ktrace_tests::kprobe_at(TARGET),
        asm,
    )
}

fn u64_at(v: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(v[off..off + 8].try_into().unwrap())
}

/// Maps: 0 shared counter (array), 1 per-CPU counter (per-CPU array),
/// 2 record sequence (array), 3 ring buffer. Each hit adds 1 to the
/// shared counter with `lock add`, 1 to this CPU's counter with a plain
/// add (only this CPU touches it, with interrupts off), and writes the
/// record `[cpu, seq]`, `seq` from a `lock fetch add`.
const COUNT_EVERYWHERE: &str = "
    call 8
    mov %r6, %r0
    stw [%r10-4], 0
    lddw %r1, map_idx(0)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, percpu
    mov %r1, 1
    lock add [%r0], %r1
percpu:
    lddw %r1, map_idx(1)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, record
    ldxdw %r1, [%r0]
    add %r1, 1
    stxdw [%r0], %r1
record:
    lddw %r1, map_idx(2)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    mov %r1, 1
    lock fetch add [%r0], %r1
    stxdw [%r10-16], %r1
    stxdw [%r10-24], %r6
    lddw %r1, map_idx(3)
    mov %r2, %r10
    add %r2, -24
    mov %r3, 16
    mov %r4, 0
    call 130
out:
    mov %r0, 0
    exit
";

/// Trigger tasks at once, and calls each makes.
const TASKS: u32 = 4;
const CALLS: u32 = 5_000;

#[test]
fn counters_and_ring_records_from_every_task_are_exact() {
    let mut vm = TestVm::boot("smp-maps");
    let name = vm.name().to_string();
    let mut client = vm.client();
    let cpus = client.info().unwrap().cpus;
    let mut rt = Runtime::new(&mut client);
    let shared = create_map(&mut rt, "shared", map_type::ARRAY, 4, 8, 1);
    let percpu = create_map(&mut rt, "percpu", map_type::PERCPU_ARRAY, 4, 8, 1);
    let seq = create_map(&mut rt, "seq", map_type::ARRAY, 4, 8, 1);
    let ring = create_map(&mut rt, "ring", map_type::RINGBUF, 0, 0, 1 << 20);
    let prog = rt
        .prog_load(
            kprobe_prog("count_everywhere", COUNT_EVERYWHERE),
            vec![shared, percpu, seq, ring],
            LoadOptions::default(),
        )
        .unwrap()
        .id;
    let link = rt
        .attach(
            prog,
            ktrace_tests::kprobe_at("kernel::bpf::testing::target"),
            false,
        )
        .unwrap()
        .id;
    rt.subscribe(vec![ring], false).unwrap();
    for _ in 0..TASKS {
        rt.trigger_spawn(CALLS).unwrap();
    }
    let calls = u64::from(TASKS * CALLS);

    // Drain while the tasks run, until every call is accounted for.
    // Once every call ran, records stop coming: give the stream a few
    // quiet rounds, then let the exact checks below say what is missing.
    let mut seen = HashSet::new();
    let mut lost = 0;
    let mut quiet = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let p = loop {
        let batch = rt.next_events(Duration::from_millis(200)).unwrap();
        quiet = if batch.is_some() { 0 } else { quiet + 1 };
        if let Some(b) = batch {
            for r in b.records {
                assert_eq!(r.source, EventSource::RingBuf { map: ring });
                assert_eq!(r.data.len(), 16);
                let cpu = u64_at(&r.data, 0);
                assert!(cpu < u64::from(cpus), "record from CPU {cpu} of {cpus}");
                let s = u64_at(&r.data, 8);
                assert!(seen.insert(s), "record {s} delivered twice");
            }
            if let Some(l) = b.lost.iter().find(|l| l.map == ring) {
                lost = l.lost;
            }
        }
        let p = prog_info(&mut rt, prog);
        if p.run_count + p.misses == calls
            && (seen.len() as u64 + lost == p.run_count || quiet >= 10)
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "stalled: {p:?}, {} records, {lost} lost",
            seen.len()
        );
    };
    assert_eq!(p.faults, 0, "{:?}", p.last_error);
    assert!(p.run_count > 0);
    let key = 0u32.to_le_bytes();
    let total = |rt: &mut Runtime, map| rt.map_lookup(map, &key).unwrap().unwrap();
    assert_eq!(
        u64_at(&total(&mut rt, shared), 0),
        p.run_count,
        "the shared counter lost updates"
    );
    assert_eq!(u64_at(&total(&mut rt, seq), 0), p.run_count);
    let copies = total(&mut rt, percpu);
    assert_eq!(copies.len(), 8 * cpus as usize, "one value per CPU");
    let per_cpu: Vec<u64> = (0..cpus as usize).map(|c| u64_at(&copies, 8 * c)).collect();
    assert_eq!(per_cpu.iter().sum::<u64>(), p.run_count, "{per_cpu:?}");
    // The kernel's own count of the hits that ran the program.
    let hits = link_info(&mut rt, link).hits;
    assert_eq!(hits, p.run_count);
    // Every record delivered once or counted lost; the sequence numbers
    // are exactly 0..runs minus the lost ones.
    assert_eq!(seen.len() as u64 + lost, p.run_count);
    assert!(seen.iter().all(|&s| s < p.run_count));
    let maps = rt.maps().unwrap();
    let info = maps.iter().find(|m| m.id == ring).unwrap();
    assert_eq!((info.consumed, info.lost), (seen.len() as u64, lost));
    for m in &maps {
        assert_eq!(m.busy, 0, "map {} gave up waiting for its lock", m.name);
    }
    eprintln!(
        "{cpus} CPU(s), {TASKS} tasks x {CALLS} calls: {} runs, {} misses; per CPU {per_cpu:?}; ring {} delivered, {lost} lost",
        p.run_count,
        p.misses,
        seen.len()
    );

    // The CLI shows the per-CPU counter per CPU and summed.
    let run = |args: &[&str]| ktrace_ok(&[&["--vm", name.as_str()][..], args].concat());
    let text = run(&["map", "dump", "percpu"]);
    eprintln!("$ ktrace map dump percpu\n{text}");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let mut want = vec!["KEY".to_string()];
    want.extend((0..cpus).map(|c| format!("CPU{c}")));
    want.push("SUM".into());
    assert_eq!(header, want, "{text}");
    let row: Vec<String> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut want = vec!["0".to_string()];
    want.extend(per_cpu.iter().map(u64::to_string));
    want.push(p.run_count.to_string());
    assert_eq!(row, want, "{text}");
    let plural = if cpus == 1 { "" } else { "s" };
    assert!(
        text.ends_with(&format!("1 entries, {cpus} CPU{plural}\n")),
        "{text}"
    );
    let json_text = run(&["map", "dump", "percpu", "--json"]);
    eprintln!("$ ktrace map dump percpu --json\n{json_text}");
    let json: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(json[0]["sum"], Value::from(p.run_count), "{json}");
    assert_eq!(json[0]["value"], Value::from(per_cpu.clone()), "{json}");
    let one = run(&["map", "lookup", "percpu", "0"]);
    eprintln!("$ ktrace map lookup percpu 0\n{one}");
    let each: Vec<String> = per_cpu.iter().map(u64::to_string).collect();
    assert_eq!(
        one.trim_end(),
        format!("0: [{}] sum {}", each.join(", "), p.run_count)
    );
    rt.subscribe(vec![], false).unwrap();
}

/// `bpf_perf_event_output(ctx, map 0, BPF_F_CURRENT_CPU, &8 bytes, 8)`.
const PERF_OUT: &str = "
    stdw [%r10-8], 0x77
    lddw %r2, map_idx(0)
    lddw %r3, 0xffffffff
    mov %r4, %r10
    add %r4, -8
    mov %r5, 8
    call 25
    mov %r0, 0
    exit
";

#[test]
fn the_loader_sizes_a_zero_entry_perf_event_array_to_the_cpus() {
    let mut vm = TestVm::boot("smp-perf");
    let mut client = vm.client();
    let cpus = client.info().unwrap().cpus;
    let mut rt = Runtime::new(&mut client);
    let loaded = rt
        .load_object(
            "perf",
            ObjectLoad {
                maps: vec![def("events", map_type::PERF_EVENT_ARRAY, 4, 4, 0)],
                programs: vec![kprobe_prog("perf_out", PERF_OUT)],
            },
            true,
            LoadOptions::default(),
        )
        .expect("a 0-entry perf event array is sized by the loader");
    let map = &loaded.maps[0];
    assert_eq!(map.max_entries, cpus, "one buffer per CPU");
    assert_eq!(map.lost_per_cpu, vec![0; cpus as usize]);
    let id = map.id;
    rt.subscribe(vec![id], false).unwrap();
    let n = 2000u64;
    rt.trigger(n as u32, 0).unwrap();
    let mut got = 0u64;
    let mut lost = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got + lost < n {
        assert!(
            Instant::now() < deadline,
            "{got} records, {lost} lost of {n}"
        );
        let Some(b) = rt.next_events(Duration::from_millis(200)).unwrap() else {
            continue;
        };
        for r in b.records {
            let EventSource::Perf { map, cpu } = r.source else {
                panic!("not a perf record: {:?}", r.source);
            };
            assert_eq!(map, id);
            assert!(cpu < cpus, "record from CPU {cpu} of {cpus}");
            assert_eq!(r.data, 0x77u64.to_le_bytes());
            got += 1;
        }
        if let Some(l) = b.lost.iter().find(|l| l.map == id) {
            lost = l.lost;
        }
    }
    assert_eq!(got + lost, n);
    let info = rt.maps().unwrap().into_iter().find(|m| m.id == id).unwrap();
    assert_eq!(info.lost_per_cpu.len(), cpus as usize);
    assert_eq!(info.lost_per_cpu.iter().sum::<u64>(), info.lost);
    assert_eq!((info.consumed, info.lost), (got, lost));
    rt.subscribe(vec![], false).unwrap();
}
