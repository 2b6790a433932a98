//! Differential check: the host's Linux verifier and ktrace's agree on the
//! examples and fixtures (accept or reject), and give the same reason for
//! the unsafe probe. Linux as root is the privileged verifier, so ktrace's
//! privileged policy is the one compared. Skipped, with a message, where
//! `bpf(2)` is refused.

mod build_support;

use build_support::*;
use probe_sdk::check::{check_program, CheckOptions, Outcome};
use probe_sdk::linux_bpf::{verify_on_linux, LinuxError, LinuxVerdict};

#[test]
fn linux_and_ktrace_agree() {
    let crates = [
        example("count-calls"),
        example("func-latency"),
        example("biolatency"),
        example("stack-samples"),
        fixture("all-features"),
        fixture("unsafe-deref"),
        fixture("wrong-helper"),
    ];
    let opts = CheckOptions {
        privileged: true,
        log_level: 0,
    };
    let mut compared = 0;
    for dir in crates {
        let (_, obj) = built_object(&dir);
        for p in &obj.programs {
            let linux = match verify_on_linux(&obj, p) {
                Ok(v) => v,
                Err(e @ LinuxError::Unavailable { .. }) => {
                    eprintln!("SKIPPED: {e}");
                    return;
                }
                Err(e) => panic!("{}: {e}", dir.display()),
            };
            let ours = check_program(p, &obj.maps, opts);
            eprintln!(
                "{} {}: linux {:?} / ktrace {}",
                dir.display(),
                p.name,
                short(&linux),
                ours.accepted()
            );
            assert_eq!(
                matches!(linux, LinuxVerdict::Accepted),
                ours.accepted(),
                "{} program {}: Linux says {linux:?}, ktrace says {ours}",
                dir.display(),
                p.name
            );
            compared += 1;
        }
    }
    // 14 programs: biolatency has three (block_rq_insert for -Q).
    assert_eq!(compared, 14);
}

fn short(v: &LinuxVerdict) -> String {
    match v {
        LinuxVerdict::Accepted => "accepted".into(),
        LinuxVerdict::Rejected { errno, reason, .. } => format!("rejected ({errno}): {reason}"),
    }
}

#[test]
fn the_unsafe_probe_gets_the_same_reason_from_both() {
    let (_, obj) = built_object(&fixture("unsafe-deref"));
    let p = &obj.programs[0];
    let linux = match verify_on_linux(&obj, p) {
        Ok(v) => v,
        Err(e @ LinuxError::Unavailable { .. }) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let LinuxVerdict::Rejected { errno, reason, .. } = &linux else {
        panic!("Linux accepted the unsafe probe")
    };
    assert_eq!(*errno, -13, "EACCES: a verifier rejection");
    assert_eq!(reason, "R0 invalid mem access 'map_value_or_null'");
    let Outcome::Rejected(r) = check_program(p, &obj.maps, CheckOptions::default()).outcome else {
        panic!("ktrace accepted the unsafe probe")
    };
    assert!(r.message.starts_with(reason.as_str()), "{}", r.message);
}

/// Linux 6.13+ knows a lookup in an array map with a constant key in range
/// cannot fail, and accepts a program that skips the NULL check; any other
/// key still needs it. ktrace gives the same verdict on each case (skipped
/// on an older host kernel, or where `bpf(2)` is refused).
#[test]
fn constant_key_array_lookups_agree_with_linux() {
    use ktrace_abi::bpf::{map_type, AttachTarget, MapDefinition, ProgramLoad, ProgramType};
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    if (major, minor) < (6, 13) {
        eprintln!(
            "SKIPPED: host Linux {} predates constant map keys (6.13)",
            release.trim()
        );
        return;
    }
    let map = |name: &str, t, max| MapDefinition {
        name: name.into(),
        map_type: t,
        key_size: 4,
        value_size: 64,
        max_entries: max,
        flags: 0,
        initial_value: Vec::new(),
        read_only: false,
        types: Default::default(),
    };
    // (key set-up, key offset, map index, Linux 6.13+ verdict)
    let cases = [
        ("stw [%r10-8], 0", -8, 0, true),
        ("stw [%r10-4], 0", -4, 0, true),
        ("stw [%r10-8], 15", -8, 0, true),
        ("mov %r1, 15\nstxw [%r10-8], %r1", -8, 0, true),
        ("stw [%r10-8], 16", -8, 0, false),
        ("stw [%r10-4], 3", -4, 0, false),
        ("stdw [%r10-8], 0", -8, 0, false),
        ("mov %r1, 1\nstxdw [%r10-8], %r1", -8, 0, false),
        (
            "mov %r1, 3\nstxw [%r10-8], %r1\nstw [%r10-4], 7",
            -8,
            0,
            false,
        ),
        ("ldxw %r6, [%r1+112]\nstxw [%r10-8], %r6", -8, 0, false),
        ("stw [%r10-8], 0", -8, 1, false),
    ];
    let mut compared = 0;
    for (store, key, m, linux_accepts) in cases {
        let src = format!(
            "{store}\nlddw %r1, map_idx({m})\nmov %r2, %r10\nadd %r2, {key}\ncall 1\nstdw [%r0+8], 1\nmov %r0, 0\nexit"
        );
        let prog = bpf_vm::asm::assemble(&src).unwrap();
        let program = ProgramLoad {
            name: "constkey".into(),
            section: "kprobe/f".into(),
            prog_type: ProgramType::Kprobe,
            attach: AttachTarget::Kprobe {
                spec: "f".into(),
                points: Vec::new(),
            },
            insns: bpf_vm::encode(prog.insns()),
            license: "GPL".into(),
            lines: None,
        };
        let obj = probe_sdk::object::Object {
            license: "GPL".into(),
            maps: vec![
                map("arr", map_type::ARRAY, 16),
                map("h", map_type::HASH, 16),
            ],
            programs: vec![program.clone()],
        };
        let linux = match verify_on_linux(&obj, &program) {
            Ok(v) => v,
            Err(e @ LinuxError::Unavailable { .. }) => {
                eprintln!("SKIPPED: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let opts = CheckOptions {
            privileged: true,
            log_level: 0,
        };
        let ours = check_program(&program, &obj.maps, opts);
        eprintln!(
            "{store:?} map {m}: linux {} / ktrace {}",
            short(&linux),
            ours.accepted()
        );
        assert_eq!(
            matches!(linux, LinuxVerdict::Accepted),
            linux_accepts,
            "{store}: {}",
            short(&linux)
        );
        assert_eq!(
            ours.accepted(),
            linux_accepts,
            "{store} map {m}: ktrace says {ours}"
        );
        compared += 1;
    }
    assert_eq!(compared, cases.len());
}
