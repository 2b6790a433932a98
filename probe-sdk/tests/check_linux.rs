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
