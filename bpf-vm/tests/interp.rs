//! Interpreter semantics (RFC 9669 corner cases rbpf gets wrong), checked
//! mode faults, call frames, budget, helpers, and fast mode agreement.

use bpf_vm::asm::assemble;
use bpf_vm::interp::{
    run_checked, Executable, HelperError, HelperMem, HelperTable, MemRegion, NoHelpers, RunError,
    RunErrorKind, Vm, MAX_CALL_FRAMES,
};

fn exe(src: &str) -> Executable {
    Executable::new(&assemble(src).unwrap()).unwrap()
}

/// Runs in checked mode with an empty context.
fn run(src: &str) -> Result<u64, RunError> {
    run_checked(&exe(src), &mut [], &mut NoHelpers, &[], 10_000)
}

/// Runs in checked mode, and in fast mode too when checked succeeds; both must agree.
fn run_both(src: &str, mem: &[u8]) -> u64 {
    let e = exe(src);
    let mut m1 = mem.to_vec();
    let checked = run_checked(&e, &mut m1, &mut NoHelpers, &[], 10_000).unwrap();
    let mut m2 = mem.to_vec();
    // SAFETY: the program just ran to completion in checked mode on the same
    // input without faulting, so its accesses stay in the stack and `m2`.
    let fast = unsafe { Vm::new().run_fast(&e, m2.as_mut_ptr(), m2.len(), &mut NoHelpers, 10_000) }
        .unwrap();
    assert_eq!(checked, fast, "checked and fast disagree on {src}");
    assert_eq!(m1, m2);
    checked
}

#[test]
fn division_and_modulo_by_zero_follow_the_rfc() {
    assert_eq!(
        run_both("mov %r0, 7\nmov %r1, 0\ndiv %r0, %r1\nexit", &[]),
        0
    );
    assert_eq!(
        run_both("mov %r0, 7\nmov %r1, 0\nmod %r0, %r1\nexit", &[]),
        7
    );
    assert_eq!(
        run_both("mov %r0, -1\nmov %r1, 0\nsdiv %r0, %r1\nexit", &[]),
        0
    );
    assert_eq!(
        run_both("mov %r0, -7\nmov %r1, 0\nsmod %r0, %r1\nexit", &[]),
        -7i64 as u64
    );
    // 32-bit forms zero-extend the kept dividend.
    assert_eq!(
        run_both(
            "lddw %r0, 0xffffffff00000007\nmov %r1, 0\nmod32 %r0, %r1\nexit",
            &[]
        ),
        7
    );
    assert_eq!(
        run_both(
            "lddw %r0, 0xfffffffffffffff9\nmov32 %r1, 0\nsmod32 %r0, %r1\nexit",
            &[]
        ),
        0xfffffff9
    );
    assert_eq!(run_both("mov %r0, 7\ndiv32 %r0, 0\nexit", &[]), 0);
}

#[test]
fn signed_division_and_overflow() {
    assert_eq!(
        run_both("mov %r0, -7\nsdiv %r0, 2\nexit", &[]),
        -3i64 as u64
    );
    assert_eq!(
        run_both("mov %r0, -7\nsmod %r0, 2\nexit", &[]),
        -1i64 as u64
    );
    assert_eq!(run_both("mov %r0, 7\nsmod %r0, -2\nexit", &[]), 1);
    assert_eq!(
        run_both("lddw %r0, 0x8000000000000000\nsdiv %r0, -1\nexit", &[]),
        0x8000000000000000
    );
    assert_eq!(
        run_both("lddw %r0, 0x8000000000000000\nsmod %r0, -1\nexit", &[]),
        0
    );
    assert_eq!(
        run_both("mov32 %r0, 0x80000000\nsdiv32 %r0, -1\nexit", &[]),
        0x80000000
    );
    assert_eq!(
        run_both("mov32 %r0, -7\nsdiv32 %r0, 2\nexit", &[]),
        0xfffffffd
    );
}

#[test]
fn sign_extension() {
    assert_eq!(
        run_both("mov %r1, 0x80\nmovsx864 %r0, %r1\nexit", &[]),
        0xffffffffffffff80
    );
    assert_eq!(
        run_both("mov %r1, 0x80\nmovsx832 %r0, %r1\nexit", &[]),
        0xffffff80
    );
    assert_eq!(
        run_both("mov %r1, 0x8000\nmovsx1664 %r0, %r1\nexit", &[]),
        0xffffffffffff8000
    );
    assert_eq!(
        run_both("mov32 %r1, 0x80000000\nmovsx3264 %r0, %r1\nexit", &[]),
        0xffffffff80000000
    );
    let mem = [0x80, 0x00, 0x00, 0x80];
    assert_eq!(run_both("ldxsb %r0, [%r1]\nexit", &mem), 0xffffffffffffff80);
    assert_eq!(
        run_both("ldxsh %r0, [%r1+2]\nexit", &mem),
        0xffffffffffff8000
    );
    assert_eq!(run_both("ldxsw %r0, [%r1]\nexit", &mem), 0xffffffff80000080);
    // Immediates of 64-bit ops sign-extend, of 32-bit ops do not reach the upper half.
    assert_eq!(run_both("mov %r0, -1\nexit", &[]), u64::MAX);
    assert_eq!(run_both("mov32 %r0, -1\nexit", &[]), 0xffffffff);
}

#[test]
fn far_jumps() {
    // gotol over more slots than a 16-bit offset reaches, forwards then back.
    let mut src = String::from("mov %r0, 0\nja32 fwd\nback:\nadd %r0, 5\nexit\n");
    for _ in 0..40_000 {
        src.push_str("mov %r0, 1\n");
    }
    src.push_str("fwd:\nmov %r0, 2\nja32 back\n");
    assert_eq!(run_both(&src, &[]), 7);
    // The 16-bit form refuses such a distance at assembly time.
    let err = assemble(&src.replace("ja32 back", "ja back")).unwrap_err();
    assert_eq!(err.line, 40_008);
    assert_eq!(err.msg, "jump offset -40004 does not fit 16 bits; use ja32");
}

#[test]
fn shifts_mask_the_amount() {
    assert_eq!(
        run_both("mov %r0, 1\nmov %r1, 65\nlsh %r0, %r1\nexit", &[]),
        2
    );
    assert_eq!(
        run_both("mov32 %r0, 1\nmov %r1, 33\nlsh32 %r0, %r1\nexit", &[]),
        2
    );
    assert_eq!(
        run_both("mov32 %r0, 0x80000000\narsh32 %r0, 4\nexit", &[]),
        0xf8000000
    );
}

#[test]
fn local_calls_get_fresh_frames_and_restore_callee_saved() {
    let src = "
        mov %r6, 6
        stdw [%r10-8], 42
        mov %r1, %r10
        call local f
        ldxdw %r1, [%r10-8]
        add %r0, %r1
        add %r0, %r6
        exit
    f:
        mov %r6, 100
        ldxdw %r0, [%r1-8]      # the caller's stack, through a pointer
        stdw [%r10-8], 1        # our own frame, not the caller's
        exit
    ";
    assert_eq!(run_both(src, &[]), 42 + 42 + 6);
}

#[test]
fn call_depth_is_bounded() {
    let err = run("call local f\nexit\nf:\ncall local f\nexit").unwrap_err();
    assert_eq!(err.pc, 2);
    assert_eq!(err.kind, RunErrorKind::CallDepth);
    assert_eq!(
        err.to_string(),
        format!("instruction 2: call depth exceeds {MAX_CALL_FRAMES} frames")
    );
}

#[test]
fn budget_bounds_run_time() {
    let err = run("mov %r0, 0\nloop:\nadd %r0, 1\nja loop").unwrap_err();
    assert_eq!(err.kind, RunErrorKind::BudgetExhausted { budget: 10_000 });
    // Exactly enough budget: 3 instructions.
    let e = exe("mov %r0, 1\nadd %r0, 1\nexit");
    let mut vm = Vm::new();
    assert_eq!(vm.run_checked(&e, &mut [], &mut NoHelpers, &[], 3), Ok(2));
    assert_eq!(vm.executed(), 3);
    // One short: the straight-line run is not started at all.
    let err = vm
        .run_checked(&e, &mut [], &mut NoHelpers, &[], 2)
        .unwrap_err();
    assert_eq!(
        (err.pc, err.kind),
        (0, RunErrorKind::BudgetExhausted { budget: 2 })
    );
    // Runs are charged at each jump: 2 + 3 * (2 per iteration) + exit.
    let e = exe("mov %r0, 0\nmov %r1, 3\nl:\nadd %r0, 1\njsgt %r1, %r0, l\nexit");
    assert_eq!(vm.run_checked(&e, &mut [], &mut NoHelpers, &[], 100), Ok(3));
    assert_eq!(vm.executed(), 2 + 3 * 2 + 1);
    let err = vm
        .run_checked(&e, &mut [], &mut NoHelpers, &[], 8)
        .unwrap_err();
    assert_eq!(
        (err.pc, err.kind),
        (4, RunErrorKind::BudgetExhausted { budget: 8 })
    );
}

#[test]
fn checked_mode_reports_out_of_bounds() {
    let mut mem = [1u8, 2, 3, 4];
    let e = exe("ldxw %r0, [%r1+1]\nexit");
    let err = run_checked(&e, &mut mem, &mut NoHelpers, &[], 100).unwrap_err();
    let addr = mem.as_ptr() as u64 + 1;
    assert_eq!(
        err,
        RunError {
            pc: 0,
            kind: RunErrorKind::OutOfBounds {
                addr,
                len: 4,
                write: false
            }
        }
    );
    assert_eq!(
        err.to_string(),
        format!("instruction 0: out-of-bounds read of 4 bytes at {addr:#x}")
    );
    // Below the stack.
    let err = run("stb [%r10-513], 1\nexit").unwrap_err();
    assert!(matches!(
        err.kind,
        RunErrorKind::OutOfBounds {
            len: 1,
            write: true,
            ..
        }
    ));
    // At and above r10 (the stack grows down; r10 itself is past the frame).
    let err = run("stdw [%r10], 1\nexit").unwrap_err();
    assert!(matches!(
        err.kind,
        RunErrorKind::OutOfBounds { write: true, .. }
    ));
    // A null pointer.
    let err = run("mov %r1, 0\nldxb %r0, [%r1]\nexit").unwrap_err();
    assert_eq!(err.pc, 1);
    // Address arithmetic that wraps.
    let err = run("mov %r1, -1\nldxdw %r0, [%r1]\nexit").unwrap_err();
    assert!(matches!(err.kind, RunErrorKind::OutOfBounds { .. }));
}

#[test]
fn checked_mode_reports_uninitialised_stack_reads() {
    let err = run("stw [%r10-8], 1\nldxdw %r0, [%r10-8]\nexit").unwrap_err();
    assert_eq!(err.pc, 1);
    assert!(matches!(err.kind, RunErrorKind::UninitStackRead { .. }));
    assert_eq!(run("stdw [%r10-8], 1\nldxdw %r0, [%r10-8]\nexit"), Ok(1));
    // A callee's frame starts uninitialised even if an earlier call wrote it.
    let src = "call local w\ncall local r\nexit\nw:\nstdw [%r10-8], 5\nexit\nr:\nldxdw %r0, [%r10-8]\nexit";
    let err = run(src).unwrap_err();
    assert_eq!(err.pc, 5);
    // A dead callee frame is out of bounds for the caller.
    let src = "call local f\nldxdw %r0, [%r0-8]\nexit\nf:\nstdw [%r10-8], 5\nmov %r0, %r10\nexit";
    let err = run(src).unwrap_err();
    assert!(
        matches!(err.kind, RunErrorKind::OutOfBounds { .. }),
        "{err}"
    );
}

#[test]
fn regions_can_be_read_only() {
    let data = [7u8; 8];
    let addr = data.as_ptr() as u64;
    let src = format!("lddw %r1, {addr:#x}\nldxdw %r0, [%r1]\nstb [%r1], 1\nexit");
    let e = exe(&src);
    let regions = [MemRegion::readonly(&data)];
    let err = run_checked(&e, &mut [], &mut NoHelpers, &regions, 100).unwrap_err();
    assert_eq!(
        (err.pc, err.kind),
        (3, RunErrorKind::ReadOnly { addr, len: 1 })
    );
}

struct Maps {
    value: Box<u64>,
    lookups: u32,
}

fn lookup(env: &mut Maps, mem: &mut HelperMem<'_>, args: [u64; 5]) -> Result<u64, HelperError> {
    let key = mem.read(args[1], 4)?;
    env.lookups += 1;
    if key != [1, 0, 0, 0] {
        return Ok(0);
    }
    let p = &mut *env.value as *mut u64 as u64;
    // SAFETY: the value is boxed in the helper table's state, which outlives
    // the run and is not otherwise touched while the program runs.
    unsafe { mem.allow(p, 8, true) };
    Ok(p)
}

#[test]
fn helpers_reach_memory_and_return_regions() {
    let src = "
        stw [%r10-4], 1
        mov %r2, %r10
        add %r2, -4
        mov %r1, 0
        call 1
        jeq %r0, 0, out
        lock add [%r0], %r6     # r6 = 0: a no-op through the returned pointer
        stdw [%r0], 9
        ldxdw %r0, [%r0]
    out:
        exit
    ";
    let mut helpers = HelperTable::new(Maps {
        value: Box::new(0),
        lookups: 0,
    });
    helpers.register(1, lookup);
    let e = exe(src);
    assert_eq!(run_checked(&e, &mut [], &mut helpers, &[], 100), Ok(9));
    assert_eq!(helpers.env.lookups, 1);
    assert_eq!(*helpers.env.value, 9);
    // A key pointer into uninitialised stack is refused.
    let e = exe("mov %r2, %r10\nadd %r2, -4\ncall 1\nexit");
    let err = run_checked(&e, &mut [], &mut helpers, &[], 100).unwrap_err();
    assert_eq!(err.pc, 2);
    assert!(matches!(
        err.kind,
        RunErrorKind::Helper {
            id: 1,
            err: HelperError::BadPointer { len: 4, .. }
        }
    ));
    // callx takes the id from a register; ids beyond 32 bits name no helper.
    let e = exe("mov %r6, 1\nlsh %r6, 32\nadd %r6, 1\ncallx %r6\nexit");
    let err = run_checked(&e, &mut [], &mut helpers, &[], 100).unwrap_err();
    assert_eq!(
        err.kind,
        RunErrorKind::Helper {
            id: u32::MAX,
            err: HelperError::Unknown(u32::MAX)
        }
    );
    // Unknown helpers fail with the id.
    let err = run("call 77\nexit").unwrap_err();
    assert_eq!(
        err.to_string(),
        "instruction 0: helper 77: unknown helper 77"
    );
}

#[test]
fn atomics_on_the_stack() {
    let src = "
        stdw [%r10-8], 10
        mov %r1, 5
        lock fetch add [%r10-8], %r1   # r1 = 10, mem = 15
        mov %r0, 15
        mov %r2, 99
        lock cmpxchg [%r10-8], %r2     # equal: mem = 99, r0 = 15
        ldxdw %r3, [%r10-8]
        add %r0, %r1
        add %r0, %r3
        exit
    ";
    assert_eq!(run_both(src, &[]), 15 + 10 + 99);
}

#[test]
fn atomics_must_be_aligned() {
    let src = "stdw [%r10-16], 0\nstdw [%r10-8], 0\nlock add [%r10-12], %r1\nexit";
    let err = run(src).unwrap_err();
    assert_eq!(err.pc, 2);
    assert!(
        matches!(err.kind, RunErrorKind::MisalignedAtomic { len: 8, .. }),
        "{err}"
    );
    // 4-byte atomics need 4-byte alignment only.
    let src = "stdw [%r10-16], 0\nstdw [%r10-8], 0\nmov %r1, 3\nlock add32 [%r10-12], %r1\nldxw %r0, [%r10-12]\nexit";
    assert_eq!(run_both(src, &[]), 3);
}

#[test]
fn falling_off_the_end_is_an_error() {
    let err = run("mov %r0, 1").unwrap_err();
    assert_eq!((err.pc, err.kind), (1, RunErrorKind::FellOffEnd));
}

#[test]
fn preparation_rejects_bad_targets() {
    let p = assemble("ja +5\nexit").unwrap();
    assert_eq!(
        Executable::new(&p).unwrap_err().to_string(),
        "instruction 0: jump target 6 is outside the program"
    );
    let p = assemble("ja +1\nlddw %r0, 1\nexit").unwrap();
    assert_eq!(
        Executable::new(&p).unwrap_err().to_string(),
        "instruction 0: jump target 2 is the second slot of ld_imm64"
    );
    let p = assemble("lddw %r1, map_fd(3)\nexit").unwrap();
    assert_eq!(
        Executable::new(&p).unwrap_err().to_string(),
        "instruction 0: map reference was not resolved"
    );
    let e = Executable::with_resolver(&p, |_| Some(0x1234)).unwrap();
    assert_eq!(e.len(), 3);
}

#[test]
fn vm_is_reusable() {
    let mut vm = Vm::new();
    let e = exe("stdw [%r10-8], 3\nldxdw %r0, [%r10-8]\nexit");
    for _ in 0..3 {
        assert_eq!(vm.run_checked(&e, &mut [], &mut NoHelpers, &[], 100), Ok(3));
    }
    let e2 = exe("ldxdw %r0, [%r10-8]\nexit");
    assert!(vm
        .run_checked(&e2, &mut [], &mut NoHelpers, &[], 100)
        .is_err());
}
