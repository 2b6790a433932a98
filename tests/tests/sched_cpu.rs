//! The CPU in the scheduler's tracepoints (issue 17): `sched:sched_switch`
//! carries `cpu` (and `next_last_cpu`), and `sched:sched_migrate_task`
//! (`orig_cpu`, `dest_cpu`) fires once per counted migration.
//!
//! eBPF programs on both tracepoints compare the record's CPU with
//! `bpf_get_smp_processor_id()` in the same program, and count each event
//! twice: in a per-CPU array (by the CPU the program runs on) and in a
//! shared array indexed by the record's CPU (`lock add`). The two must
//! agree on every CPU, and sum to the link's hits. `kperf stat -A` then
//! shows `cpu-migrations` equal to `sched:sched_migrate_task` and
//! `context-switches` equal to `sched:sched_switch` on every CPU (both
//! counted in one group, switched on each CPU by that CPU).
//!
//! On main before this change `sched_switch` had no `cpu` field and there
//! was no `sched_migrate_task`: the programs are refused at load.

use std::collections::BTreeMap;

use ktrace_abi::bpf::{map_type, AttachTarget, LoadOptions, ProgramType};
use ktrace_tests::{asm_program, create_map, prog_info, run_tool_ok, u64s, TestVm};
use probe_sdk::runtime::Runtime;
use probe_sdk::trace::TraceClient;

/// Offset of `field` in the kernel's record of `sched:name`, as the kernel
/// describes it.
fn offset(client: &mut probe_sdk::client::Client, name: &str, field: &str) -> u32 {
    let tps = client.list_tracepoints().unwrap();
    let tp = tps
        .iter()
        .find(|t| t.category == "sched" && t.name == name)
        .unwrap_or_else(|| panic!("no sched:{name}"));
    let f = tp
        .fields
        .iter()
        .find(|f| f.name == field)
        .unwrap_or_else(|| panic!("sched:{name} has no {field}: {:?}", tp.fields));
    assert_eq!(f.size, 4, "{field} is a u32");
    f.offset
}

/// Maps: 0 per-CPU count (by the running CPU), 1 count by the record's CPU
/// (array of 64, `lock add`), 2 wrong records (array of 1). A record is
/// wrong when its CPU (at `cpu_off`) is not the running CPU, or, with
/// `other_off`, when the CPU there equals it (a migration from the CPU it
/// goes to).
fn program(cpu_off: u32, other_off: Option<u32>) -> String {
    let other = match other_off {
        Some(o) => format!("ldxw %r2, [%r6+{o}]\n    jeq %r2, %r7, wrong"),
        None => String::new(),
    };
    format!(
        "
    mov %r6, %r1
    call 8
    mov %r7, %r0
    ldxw %r8, [%r6+{cpu_off}]
    jne %r8, %r7, wrong
    {other}
    stw [%r10-4], 0
    lddw %r1, map_idx(0)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    ldxdw %r1, [%r0]
    add %r1, 1
    stxdw [%r0], %r1
    stxw [%r10-4], %r8
    lddw %r1, map_idx(1)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    mov %r1, 1
    lock add [%r0], %r1
    ja out
wrong:
    stw [%r10-4], 0
    lddw %r1, map_idx(2)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    mov %r1, 1
    lock add [%r0], %r1
out:
    mov %r0, 0
    exit
"
    )
}

struct Counted {
    per_cpu: u32,
    by_record: u32,
    wrong: u32,
    prog: u32,
    link: u32,
}

fn attach(rt: &mut Runtime, tp: &str, asm: &str) -> Counted {
    let per_cpu = create_map(rt, &format!("{tp}_pcpu"), map_type::PERCPU_ARRAY, 4, 8, 1);
    let by_record = create_map(rt, &format!("{tp}_rec"), map_type::ARRAY, 4, 8, 64);
    let wrong = create_map(rt, &format!("{tp}_bad"), map_type::ARRAY, 4, 8, 1);
    let target = AttachTarget::Tracepoint {
        category: "sched".into(),
        name: tp.into(),
    };
    let prog = rt
        .prog_load(
            asm_program(
                tp,
                format!("tracepoint/sched/{tp}"),
                ProgramType::Tracepoint,
                target.clone(),
                asm,
            ),
            vec![per_cpu, by_record, wrong],
            LoadOptions::default(),
        )
        .unwrap()
        .id;
    let link = rt.attach(prog, target, false).unwrap().id;
    Counted {
        per_cpu,
        by_record,
        wrong,
        prog,
        link,
    }
}

/// Detaches; returns the per-CPU counts after checking them against the
/// counts by record CPU, the link's hits and the wrong records (none).
fn check(rt: &mut Runtime, c: Counted, cpus: u32, what: &str) -> Vec<u64> {
    rt.detach(c.link).unwrap();
    let key = 0u32.to_le_bytes();
    let per_cpu = u64s(&rt.map_lookup(c.per_cpu, &key).unwrap().unwrap());
    let by_record: Vec<u64> = (0..cpus)
        .map(|cpu| {
            u64s(
                &rt.map_lookup(c.by_record, &cpu.to_le_bytes())
                    .unwrap()
                    .unwrap(),
            )[0]
        })
        .collect();
    let beyond = u64s(
        &rt.map_lookup(c.by_record, &cpus.to_le_bytes())
            .unwrap()
            .unwrap(),
    )[0];
    let wrong = u64s(&rt.map_lookup(c.wrong, &key).unwrap().unwrap())[0];
    let p = prog_info(rt, c.prog);
    eprintln!(
        "{what}: per CPU {per_cpu:?}, by record CPU {by_record:?}, wrong {wrong}, runs {}",
        p.run_count
    );
    assert_eq!(wrong, 0, "{what}: records naming another CPU");
    assert_eq!(beyond, 0, "{what}: a record CPU beyond the VM's");
    assert_eq!(per_cpu, by_record, "{what}");
    assert_eq!((p.misses, p.faults), (0, 0), "{what}");
    assert_eq!(per_cpu.iter().sum::<u64>(), p.run_count, "{what}");
    per_cpu
}

#[test]
fn sched_records_name_the_cpu_they_fire_on() {
    let mut vm = TestVm::boot("sched-cpu");
    let mut client = vm.client();
    let cpus = client.info().unwrap().cpus;
    let switch_cpu = offset(&mut client, "sched_switch", "cpu");
    let migrate_dest = offset(&mut client, "sched_migrate_task", "dest_cpu");
    let migrate_orig = offset(&mut client, "sched_migrate_task", "orig_cpu");
    let mut rt = Runtime::new(&mut client);
    let switches = attach(&mut rt, "sched_switch", &program(switch_cpu, None));
    let migrations = attach(
        &mut rt,
        "sched_migrate_task",
        &program(migrate_dest, Some(migrate_orig)),
    );
    // Work on every CPU: pinned workers, then unpinned trigger tasks that
    // the idle CPUs steal (migrations).
    let all: Vec<u32> = (0..cpus).collect();
    rt.trigger_bench(&all, 100).unwrap();
    for _ in 0..4 {
        rt.trigger_spawn(30_000).unwrap();
    }
    rt.trigger_bench(&all, 300).unwrap();
    let per_cpu = check(&mut rt, switches, cpus, "sched_switch");
    assert!(
        per_cpu.iter().all(|&n| n > 0),
        "a CPU never switched: {per_cpu:?}"
    );
    let moved = check(&mut rt, migrations, cpus, "sched_migrate_task");
    if cpus == 1 {
        assert_eq!(moved, [0], "one CPU: no migration");
    }
}

#[test]
fn kperf_stat_per_cpu_migrations_equal_sched_migrate_task() {
    let mut vm = TestVm::boot("sched-cpu-kperf");
    let name = vm.name().to_string();
    let cpus = vm.client().info().unwrap().cpus;
    let table = run_tool_ok(
        "kperf",
        &[
            "--vm",
            &name,
            "stat",
            "-A",
            "-e",
            "cpu-migrations,sched:sched_migrate_task,context-switches,sched:sched_switch",
            "--",
            "--dev",
            "ram0",
            "--count",
            "300",
            "--jobs",
            "4",
            "--quiet",
        ],
    );
    eprintln!("{table}");
    let mut lines = BTreeMap::new();
    for line in table.lines() {
        let Some(rest) = line.strip_prefix("CPU") else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        let cpu: u32 = w[0].parse().unwrap();
        let value: u64 = w[1].replace(',', "").parse().unwrap();
        lines.insert((w[2].to_string(), cpu), value);
    }
    assert_eq!(lines.len(), 4 * cpus as usize, "{table}");
    for c in 0..cpus {
        assert_eq!(
            lines[&("cpu-migrations".to_string(), c)],
            lines[&("sched:sched_migrate_task".to_string(), c)],
            "CPU{c}:\n{table}"
        );
        assert_eq!(
            lines[&("context-switches".to_string(), c)],
            lines[&("sched:sched_switch".to_string(), c)],
            "CPU{c}:\n{table}"
        );
    }
}
