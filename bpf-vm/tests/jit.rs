//! The JIT against the interpreter.
//!
//! - Differential fuzzing: programs from the verifier soundness fuzzer's
//!   generator (`support/gen.rs`) that the verifier accepts run in the
//!   checked interpreter and JIT-compiled (every other one with constant
//!   blinding), on the same contexts (the last run with a budget cut
//!   short); r0 or the fault, the instruction
//!   count, the context, the map array, the ring buffer records and every
//!   helper call (id and arguments, pointers expressed relative to their
//!   region) must be equal. `JIT_FUZZ_CASES` sets the number of generated
//!   programs (default 2000, of which the verifier accepts about 7%, so
//!   some 150 are compared; the documented long run in `docs/jit.md` sets
//!   1,000,000).
//! - Faults and limits hand-written: budget, call depth, unknown helper,
//!   helper failure, misaligned atomic, as the interpreter reports them.
//! - Blinding keeps chosen constants out of the code.
#![cfg(target_arch = "x86_64")]

#[path = "../benches/support/programs.rs"]
#[allow(dead_code)]
mod programs;
mod support;

use std::cell::Cell;

use bpf_vm::asm::assemble;
use bpf_vm::insn::{Insn, Program};
use bpf_vm::interp::{HelperError, HelperMem, HelperTable, Helpers, RunError, RunErrorKind, Vm};
use bpf_vm::jit::{compile, compile_inlined, InlineLookup, JitImage, JitOptions};
use bpf_vm::verifier::linux;
use bpf_vm::verifier::{verify, MapDef};
use bpf_vm::Executable;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use support::gen::*;
use support::jit::{run_jit, table, ExecCode};

/// A helper argument or result with addresses made comparable across runs
/// whose buffers live at different addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    Num(u64),
    Ctx(u64),
    Stack(i64),
    Array(u64),
    Record(usize, u64),
    Copy(usize, u64),
}

/// The oracle's helpers, logging every call.
struct Logged<'t> {
    inner: Oracle<'t>,
    ctx: u64,
    log: Vec<(u32, [Val; 5], Result<Val, String>)>,
}

impl<'t> Logged<'t> {
    fn new(
        table: &'t bpf_vm::verifier::HelperTable,
        maps: &'t [MapDef],
        ctx: &[u8],
        array: &mut [u8],
        seed: u64,
    ) -> Logged<'t> {
        Logged {
            inner: Oracle::new(table, maps, ctx, array.as_mut_ptr(), seed),
            ctx: ctx.as_ptr() as u64,
            log: Vec::new(),
        }
    }

    fn norm(&self, v: u64) -> Val {
        let array = self.inner.array as u64;
        let fp = self.inner.fp.get();
        if (self.ctx..self.ctx + CTX_LEN as u64).contains(&v) {
            return Val::Ctx(v - self.ctx);
        }
        if (array..array + (ARRAY_ENTRIES * VALUE_SIZE) as u64).contains(&v) {
            return Val::Array(v - array);
        }
        for (i, (b, _)) in self.inner.records.iter().enumerate() {
            let a = b.as_ptr() as u64;
            if (a..a + b.len() as u64).contains(&v) {
                return Val::Record(i, v - a);
            }
        }
        for (i, b) in self.inner.copies.iter().enumerate() {
            let a = b.as_ptr() as u64;
            if (a..a + b.len() as u64).contains(&v) {
                return Val::Copy(i, v - a);
            }
        }
        // The interpreter's frames lie above frame 0, the JIT's below it.
        if fp != 0 && v.wrapping_sub(fp).wrapping_add(8 * 1024) < 16 * 1024 {
            return Val::Stack(v.wrapping_sub(fp) as i64);
        }
        Val::Num(v)
    }
}

impl Helpers for Logged<'_> {
    fn call(
        &mut self,
        id: u32,
        args: [u64; 5],
        mem: &mut HelperMem<'_>,
    ) -> Result<u64, HelperError> {
        let res = self.inner.call(id, args, mem);
        // Only the arguments the helper takes: the others are whatever the
        // registers held, and compiled code (like Linux's) does not keep
        // r1-r5 across helper calls while the interpreter does; the
        // verifier forbids reading them there.
        let used = i32::try_from(id)
            .ok()
            .and_then(|id| self.inner.table.get(id))
            .map_or(5, |p| p.args.len());
        let mut nargs = [Val::Num(0); 5];
        for (i, a) in args.iter().take(used).enumerate() {
            nargs[i] = self.norm(*a);
        }
        let nres = match res {
            Ok(v) => Ok(self.norm(v)),
            Err(e) => Err(format!("{e:?}")),
        };
        self.log.push((id, nargs, nres));
        res
    }
}

/// Everything one run produced, comparable between interpreter and JIT.
#[derive(Debug, PartialEq)]
struct Outcome {
    result: Result<u64, (usize, String)>,
    executed: u64,
    ctx: Vec<u8>,
    records: Vec<(Vec<u8>, bool)>,
    copies: Vec<Vec<u8>>,
    scalars: Vec<(u32, usize, Val)>,
    log: Vec<(u32, [Val; 5], Result<Val, String>)>,
}

fn scalars(h: &Logged<'_>) -> Vec<(u32, usize, Val)> {
    h.inner
        .scalars
        .iter()
        .map(|&(id, i, v)| (id, i, h.norm(v)))
        .collect()
}

fn error_key(e: &RunError) -> (usize, String) {
    // Bad-pointer errors carry addresses; the kind and instruction suffice.
    let kind = match e.kind {
        RunErrorKind::Helper {
            id,
            err: HelperError::BadPointer { len, .. },
        } => format!("helper {id} bad pointer of {len}"),
        k => format!("{k:?}"),
    };
    (e.pc, kind)
}

/// Runs an accepted program in both engines on two contexts, then on the
/// first with a budget that runs out (see below), and describes the first
/// difference.
///
/// `call_maps` (the verifier's [`bpf_vm::verifier::Report::call_maps`]),
/// when given, has the JIT inline the array lookups it names; those make
/// no helper call, so lookups of the array map are left out of both
/// engines' helper logs (their results still show in r0, the context, the
/// array and every later helper argument).
fn differential(
    insns: &[Insn],
    seed: u64,
    options: &JitOptions,
    call_maps: Option<&[(usize, usize)]>,
) -> Result<(), String> {
    let prog = Program::from_insns(insns.to_vec()).map_err(|e| format!("bad layout: {e}"))?;
    let exe = executable(&prog).map_err(|e| format!("prepare: {e}"))?;
    let verify_env = VerifyEnv::kprobe();
    let (table, maps) = (&verify_env.helpers, &verify_env.maps[..]);
    let mut interp_array = vec![0u8; ARRAY_ENTRIES * VALUE_SIZE];
    let mut jit_array = vec![0u8; ARRAY_ENTRIES * VALUE_SIZE];
    let inline = array_lookups(
        insns,
        call_maps.unwrap_or(&[]),
        maps,
        jit_array.as_ptr() as u64,
    );
    let image = compile_inlined(&exe, options, &support::jit::table::<Logged>(), &inline)
        .map_err(|e| format!("jit: {e}"))?;
    let code = ExecCode::new(&image);
    let mut vm = Vm::new();
    let array_handle = Val::Num(HANDLE_BASE + 1);
    let keep = |log: &mut Vec<(u32, [Val; 5], Result<Val, String>)>| {
        if call_maps.is_some() {
            log.retain(|(id, args, _)| {
                !(*id == linux::helper::MAP_LOOKUP_ELEM as u32 && args[0] == array_handle)
            });
        }
    };
    // Two contexts with a budget that is never reached, then the first
    // context again with a budget cut somewhere inside its run (drawn from
    // the seed), so that the budget runs out at every kind of place.
    let mut budgets = [10_000_000u64; 3];
    for (run, ctx_run) in [0u64, 1, 0].into_iter().enumerate() {
        let budget = budgets[run];
        let (ctx0, s) = context(seed, ctx_run);
        let helpers = |array: &mut Vec<u8>, ctx: &[u8]| Logged::new(table, maps, ctx, array, s);
        let mut ctx = ctx0;
        let mut h = helpers(&mut interp_array, &ctx);
        let res = vm.run_checked(&exe, &mut ctx, &mut h, &[], budget);
        if run == 0 {
            budgets[2] = (seed >> 8) % (vm.executed() + 1);
        }
        if let Err(e) = &res {
            if !matches!(
                e.kind,
                RunErrorKind::Helper { .. } | RunErrorKind::BudgetExhausted { .. }
            ) {
                return Err(format!(
                    "run {run}: interpreter fault (a verifier bug): {e}"
                ));
            }
        }
        let mut interp = Outcome {
            result: res.map_err(|e| error_key(&e)),
            executed: vm.executed(),
            ctx: ctx.to_vec(),
            records: h.inner.records.clone(),
            copies: h.inner.copies.clone(),
            scalars: scalars(&h),
            log: std::mem::take(&mut h.log),
        };
        let mut ctx = ctx0;
        let mut h = helpers(&mut jit_array, &ctx);
        // SAFETY: the verifier accepted the program for this context and
        // these helpers, and it just ran without a memory fault in the
        // checked interpreter.
        let (res, executed) = unsafe { run_jit(&code, &mut ctx, &mut h, budget) };
        let mut jit = Outcome {
            result: res.map_err(|e| error_key(&e)),
            executed,
            ctx: ctx.to_vec(),
            records: h.inner.records.clone(),
            copies: h.inner.copies.clone(),
            scalars: scalars(&h),
            log: std::mem::take(&mut h.log),
        };
        keep(&mut interp.log);
        keep(&mut jit.log);
        if interp != jit {
            return Err(format!(
                "run {run}: results differ\ninterpreter: {interp:?}\njit:         {jit:?}"
            ));
        }
        if interp_array != jit_array {
            return Err(format!("run {run}: map array contents differ"));
        }
    }
    Ok(())
}

#[test]
fn jit_matches_interpreter_on_generated_programs() {
    let cases: u32 = std::env::var("JIT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let generated = Cell::new(0u64);
    let compared = Cell::new(0u64);
    let with_calls = Cell::new(0u64);
    let verify_env = VerifyEnv::kprobe();
    let (env, maps) = (verify_env.env(), &verify_env.maps);
    let inlined = Cell::new(0u64);
    let config = fuzz_config();
    let result = runner.run(&(program(), any::<u64>()), |(insns, seed)| {
        generated.set(generated.get() + 1);
        let Ok(report) = verify(&insns, &env, &config) else {
            return Ok(());
        };
        compared.set(compared.get() + 1);
        // Every other program (crossed with blinding) inlines its array lookups.
        let call_maps = (seed & 2 == 0).then_some(&report.call_maps[..]);
        if !array_lookups(&insns, call_maps.unwrap_or(&[]), maps, 0).is_empty() {
            inlined.set(inlined.get() + 1);
        }
        if insns.iter().any(|i| matches!(i, Insn::CallLocal { .. })) {
            with_calls.set(with_calls.get() + 1);
        }
        let options = JitOptions {
            blinding: (seed & 1 == 1).then_some(seed.rotate_left(17)),
        };
        differential(&insns, seed, &options, call_maps).map_err(|e| {
            let text = bpf_vm::disasm::program(
                &Program::from_insns(insns.clone()).unwrap(),
                bpf_vm::disasm::Syntax::Llvm,
                true,
            );
            TestCaseError::fail(format!("JIT and interpreter disagree: {e}\n{text}"))
        })?;
        Ok(())
    });
    println!(
        "jit differential fuzz: {} programs generated, {} accepted and compared on 3 runs each ({} with bpf-to-bpf calls, {} with inlined array lookups), 0 mismatches",
        generated.get(),
        compared.get(),
        with_calls.get(),
        inlined.get()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        compared.get() * 20 >= generated.get(),
        "too few accepted programs"
    );
    assert!(
        inlined.get() * 10 >= compared.get(),
        "too few programs with inlined lookups"
    );
}

/// The inline lookups for the array map's lookup calls among `call_maps`,
/// its values at `base`.
fn array_lookups(
    insns: &[Insn],
    call_maps: &[(usize, usize)],
    maps: &[MapDef],
    base: u64,
) -> Vec<InlineLookup> {
    call_maps
        .iter()
        .filter(|&&(pc, m)| {
            insns[pc]
                == Insn::Call {
                    id: linux::helper::MAP_LOOKUP_ELEM,
                }
                && maps[m].map_type == linux::map_type::ARRAY
        })
        .map(|&(pc, m)| InlineLookup {
            pc,
            base,
            stride: maps[m].value_size,
            max_entries: maps[m].max_entries,
        })
        .collect()
}

fn helper_ok(_: &mut (), _: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
    Ok(a[0].wrapping_add(a[1]))
}

fn helper_fails(_: &mut (), _: &mut HelperMem<'_>, _: [u64; 5]) -> Result<u64, HelperError> {
    Err(HelperError::Failed("no"))
}

/// Runs `src` in the checked interpreter and JIT-compiled; both outcomes
/// and instruction counts must be equal; returns the JIT's.
fn both(src: &str, ctx: &[u8], budget: u64) -> (Result<u64, RunError>, u64) {
    both_with(src, ctx, budget, &JitOptions::default())
}

/// [`both`] with the JIT's `options`.
fn both_with(
    src: &str,
    ctx: &[u8],
    budget: u64,
    options: &JitOptions,
) -> (Result<u64, RunError>, u64) {
    let prog = assemble(src).unwrap();
    let exe = Executable::new(&prog).unwrap();
    let mut helpers = HelperTable::new(());
    helpers.register(1, helper_ok).register(2, helper_fails);
    let mut vm = Vm::new();
    let mut c1 = ctx.to_vec();
    let interp = vm.run_checked(&exe, &mut c1, &mut helpers, &[], budget);
    let code = ExecCode::new(&compile(&exe, options, &table::<HelperTable<()>>()).unwrap());
    let mut c2 = ctx.to_vec();
    // SAFETY: the test programs touch only their stack and the context,
    // which the checked run above confirms (or faults before any access).
    let (jit, executed) = unsafe { run_jit(&code, &mut c2, &mut helpers, budget) };
    // Fault addresses relative to each run's own context copy.
    let rel = |r: &Result<u64, RunError>, base: u64| match r {
        Err(RunError {
            pc,
            kind: RunErrorKind::MisalignedAtomic { addr, len },
        }) => Err((*pc, addr.wrapping_sub(base), *len)),
        Err(e) => Err((e.pc, 0, 0)),
        Ok(v) => Ok(*v),
    };
    assert_eq!(
        rel(&jit, c2.as_ptr() as u64),
        rel(&interp, c1.as_ptr() as u64),
        "{src}"
    );
    if !matches!(
        jit,
        Err(RunError {
            kind: RunErrorKind::MisalignedAtomic { .. },
            ..
        })
    ) {
        assert_eq!(jit, interp, "{src}");
    }
    assert_eq!(executed, vm.executed(), "{src}");
    assert_eq!(c1, c2);
    (jit, executed)
}

/// Branches that skip blocks, a loop, a bpf-to-bpf call and a helper that
/// fails after the loop: the JIT charges the budget per region with a
/// precise copy for the end of the budget (`jit::budget`), so every
/// budget from 0 to enough must stop at the interpreter's instruction
/// with its count.
#[test]
fn budget_runs_out_at_every_instruction_as_in_the_interpreter() {
    let src = "
        mov %r6, 0
        mov %r7, 7
    loop:
        mov %r2, 1
        jgt %r7, 3, +1
        mov %r2, 0
        add %r6, %r2
        jeq %r7, 2, +2
        mov %r1, %r7
        call local f
        sub %r7, 1
        jne %r7, 0, loop
        mov %r0, %r6
        jgt %r6, 100, +1
        mov %r1, 1
        call 2
        exit
    f:
        mov %r0, %r1
        jlt %r1, 5, +1
        add %r0, 10
        exit
    ";
    // Without bpf-to-bpf calls, loop heads keep the budget register
    // biased (`BudgetPlan::bias`): nested loops, a jump out of the inner
    // loop's region into the outer one, an `exit` and a failing helper
    // inside a biased region.
    let nested = "
        mov %r6, 0
        mov %r7, 7
    outer:
        mov %r8, 3
    inner:
        mov %r2, 1
        jgt %r7, 3, +1
        mov %r2, 0
        add %r6, %r2
        sub %r8, 1
        jne %r8, 0, inner
        jeq %r7, 2, skip
        add %r6, 5
    skip:
        jeq %r6, 1000, done
        jgt %r6, 30, outer_end
        sub %r7, 1
        jne %r7, 0, outer
    outer_end:
        mov %r0, %r6
        jgt %r6, 100, +1
        mov %r1, 1
        call 2
        exit
    done:
        mov %r0, 99
        exit
    ";
    for src in [src, nested] {
        let (full, executed) = both(src, &[], 1_000);
        assert_eq!(
            full.unwrap_err().kind,
            RunErrorKind::Helper {
                id: 2,
                err: HelperError::Failed("no")
            }
        );
        let mut budget_faults = 0;
        for budget in 0..=executed {
            let (res, _) = both(src, &[], budget);
            if matches!(
                res,
                Err(RunError {
                    kind: RunErrorKind::BudgetExhausted { .. },
                    ..
                })
            ) {
                budget_faults += 1;
            }
        }
        // Every budget short of the whole run stops on the budget, at a run
        // start (`both` compares the instruction and count with the
        // interpreter's).
        assert_eq!(budget_faults, executed, "{src}");
    }
}

#[test]
fn faults_and_limits_match_the_interpreter() {
    // A loop of 3 + 1000 * 3 instructions: enough budget, and one short.
    let looped = "mov %r0, 0\nmov %r2, 1000\nl:\nadd %r0, 2\nsub %r2, 1\njne %r2, 0, l\nexit";
    assert_eq!(both(looped, &[], 10_000), (Ok(2000), 3003));
    let (res, executed) = both(looped, &[], 3002);
    assert_eq!(
        res.unwrap_err(),
        RunError {
            pc: 5,
            kind: RunErrorKind::BudgetExhausted { budget: 3002 }
        }
    );
    assert_eq!(executed, 3002);
    // Helpers: a result, an unknown id, a failure, callx beyond u32.
    assert_eq!(
        both("mov %r1, 40\nmov %r2, 2\ncall 1\nexit", &[], 100).0,
        Ok(42)
    );
    assert_eq!(
        both("call 7\nexit", &[], 100).0.unwrap_err().kind,
        RunErrorKind::Helper {
            id: 7,
            err: HelperError::Unknown(7)
        }
    );
    // Ids outside the helper table given to the compiler (134 entries).
    for src in ["call 300\nexit", "mov %r3, 300\ncallx %r3\nexit"] {
        assert_eq!(
            both(src, &[], 100).0.unwrap_err().kind,
            RunErrorKind::Helper {
                id: 300,
                err: HelperError::Unknown(300)
            }
        );
    }
    assert_eq!(
        both("mov %r0, 1\ncall 2\nexit", &[], 100).0.unwrap_err(),
        RunError {
            pc: 1,
            kind: RunErrorKind::Helper {
                id: 2,
                err: HelperError::Failed("no")
            }
        }
    );
    assert_eq!(
        both("lddw %r3, 0x100000001\ncallx %r3\nexit", &[], 100)
            .0
            .unwrap_err()
            .kind,
        RunErrorKind::Helper {
            id: u32::MAX,
            err: HelperError::Unknown(u32::MAX)
        }
    );
    // A compare with 0 right after an ALU result may reuse its flags, but a
    // 64-bit result does not answer a 32-bit test, and a jump target does
    // not know which result came before.
    let wide = "lddw %r1, 0x100000000\nmov %r0, 1\nadd %r1, 0\njeq32 %r1, 0, +1\nmov %r0, 2\nexit";
    assert_eq!(both(wide, &[], 100).0, Ok(1));
    let narrow =
        "lddw %r1, 0x100000000\nmov %r0, 1\nadd32 %r1, 0\njeq %r1, 0, +1\nmov %r0, 2\nexit";
    assert_eq!(both(narrow, &[], 100).0, Ok(1));
    let joined = "mov %r0, 0\nmov %r1, 1\nmov %r2, 0\njeq %r2, 0, t\nadd %r1, 0\nt:\njeq %r1, 0, +1\nmov %r0, 7\nexit";
    assert_eq!(both(joined, &[], 100).0, Ok(7));
    // `r2 = r1; r2 += imm` compiles to one `lea`, which sets no flags: a
    // compare of r2 with 0 right after must not reuse stale ones; and a
    // jump onto the `+=` keeps the two apart.
    for (add, want) in [(-5, 1), (-4, 7)] {
        let folded =
            format!("mov %r0, 1\nmov %r1, 5\nmov %r2, %r1\nadd %r2, {add}\njeq %r2, 0, +1\nmov %r0, 7\nexit");
        assert_eq!(both(&folded, &[], 100).0, Ok(want), "{folded}");
    }
    for (cmp, want) in [(6, 8), (5, 103)] {
        let onto = format!(
            "mov %r2, 100\nmov %r1, 5\njeq %r1, {cmp}, l\nmov %r2, %r1\nl:\nadd %r2, 3\nmov %r0, %r2\nexit"
        );
        assert_eq!(both(&onto, &[], 100).0, Ok(want), "{onto}");
    }
    // With a budget that the charge on the way to `t` brings to exactly 0,
    // ZF is set on arrival there: reusing it would take the jump.
    assert_eq!(both(joined, &[], 5).0.unwrap_err().pc, 6);
    // Unbounded recursion hits the call depth limit.
    let (res, _) = both("call local f\nexit\nf:\ncall local f\nexit", &[], 100);
    assert_eq!(
        res.unwrap_err(),
        RunError {
            pc: 2,
            kind: RunErrorKind::CallDepth
        }
    );
    // A misaligned atomic on the context.
    let (res, _) = both("mov %r2, 1\nlock add [%r1+1], %r2\nexit", &[0; 16], 100);
    let err = res.unwrap_err();
    assert_eq!(err.pc, 1);
    assert!(matches!(
        err.kind,
        RunErrorKind::MisalignedAtomic { len: 8, .. }
    ));
    // Falling off the end.
    assert_eq!(
        both("mov %r0, 1", &[], 100).0.unwrap_err().kind,
        RunErrorKind::FellOffEnd
    );
}

/// A chain of `frames` frames (the program and `frames - 1` functions, no
/// recursion): each function writes some of r6-r9 and its stack, calls the
/// next and then reads both back, so a caller's registers or stack that a
/// callee clobbered change r0.
fn call_chain(frames: usize) -> String {
    let mut src = String::from(
        "mov %r6, 1\nmov %r7, 2\nmov %r8, 3\nmov %r9, 4\nstdw [%r10-8], 100\ncall local f1\n\
         ldxdw %r1, [%r10-8]\nadd %r0, %r1\nadd %r0, %r6\nadd %r0, %r7\nadd %r0, %r8\nadd %r0, %r9\nexit\n",
    );
    for k in 1..frames {
        src += &format!("f{k}:\n");
        if k == frames - 1 {
            src += "mov %r0, 7\nexit\n";
            continue;
        }
        // Function k writes r6..r6+(k % 5)-1: none, one, ..., all four.
        let written: Vec<usize> = (6..6 + k % 5).collect();
        for r in &written {
            src += &format!("mov %r{r}, {}\n", k * 10 + r);
        }
        src += &format!(
            "stdw [%r10-8], {}\ncall local f{}\nldxdw %r1, [%r10-8]\nmul %r0, 3\nadd %r0, %r1\n",
            k * 1000,
            k + 1
        );
        for r in &written {
            src += &format!("add %r0, %r{r}\n");
        }
        src += "exit\n";
    }
    src
}

#[test]
fn call_chains_keep_registers_and_frames_and_stop_at_the_depth_limit() {
    // Up to MAX_CALL_FRAMES (8) frames the JIT knows no call can fail and
    // saves only what each callee writes; one more and the last call faults.
    for frames in 2..=8 {
        let (res, _) = both(&call_chain(frames), &[], 1000);
        assert!(res.is_ok(), "{frames} frames: {res:?}");
    }
    let src = call_chain(9);
    let (res, _) = both(&src, &[], 1000);
    let fault_pc = assemble(&src)
        .unwrap()
        .insns()
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i, Insn::CallLocal { .. }))
        .map(|(pc, _)| pc)
        .nth(7)
        .unwrap();
    assert_eq!(
        res.unwrap_err(),
        RunError {
            pc: fault_pc,
            kind: RunErrorKind::CallDepth
        }
    );
}

fn contains(code: &[u8], pat: &[u8]) -> bool {
    code.windows(pat.len()).any(|w| w == pat)
}

#[test]
fn blinding_hides_immediates() {
    let prog = assemble(
        "mov %r0, 0x5bd1e995\nadd %r0, 0x1234567\nlddw %r1, 0x1122334455667788\nstdw [%r10-8], 0x7654321\njne %r0, 0x2468ace, x\nx:\nexit",
    )
    .unwrap();
    let exe = Executable::new(&prog).unwrap();
    let plain = compile(&exe, &JitOptions::default(), &table::<HelperTable<()>>()).unwrap();
    let blinded = compile(
        &exe,
        &JitOptions { blinding: Some(99) },
        &table::<HelperTable<()>>(),
    )
    .unwrap();
    let pats: [&[u8]; 5] = [
        &0x5bd1e995u32.to_le_bytes(),
        &0x1234567u32.to_le_bytes(),
        &0x1122334455667788u64.to_le_bytes(),
        &0x7654321u32.to_le_bytes(),
        &0x2468aceu32.to_le_bytes(),
    ];
    let code = |i: &JitImage| i.code().to_vec();
    for p in pats {
        assert!(contains(&code(&plain), p), "{p:x?} in plain code");
        assert!(!contains(&code(&blinded), p), "{p:x?} in blinded code");
    }
    // Two seeds give different code, the same result.
    let other = compile(
        &exe,
        &JitOptions {
            blinding: Some(100),
        },
        &table::<HelperTable<()>>(),
    )
    .unwrap();
    assert_ne!(other.code(), blinded.code());
    for image in [&plain, &blinded, &other] {
        let code = ExecCode::new(image);
        let mut helpers = HelperTable::new(());
        // SAFETY: the program only touches its own stack.
        let (res, _) = unsafe { run_jit(&code, &mut [], &mut helpers, 100) };
        assert_eq!(res, Ok(0x5bd1e995 + 0x1234567));
    }
}

/// The registers x86 instructions use implicitly (rax and rdx for
/// division, rcx for shift counts, rax for cmpxchg) as every operand of the
/// instructions that need them, with 0, -1 and INT_MIN operands.
#[test]
fn implicit_register_corner_cases_match_the_interpreter() {
    // r0 = rax, r3 = rdx, r4 = rcx, r2 = rsi.
    let regs = [0u8, 2, 3, 4];
    let values: [[i64; 4]; 4] = [
        [i64::MIN, -1, 7, 0],
        [0x8000_0000, 0xffff_ffff, 0, 13],
        [12_345_678_901, 3, -5, 64],
        [-1, i64::MIN, 0x8000_0000, -0x8000_0000],
    ];
    let checksum = "mov %r7, %r0\nrsh %r7, 1\nxor %r7, %r2\nlsh %r7, 3\nxor %r7, %r3\nrsh %r7, 2\nxor %r7, %r4\nmov %r0, %r7\nexit";
    let mut programs = 0;
    for vals in values {
        for rot in 0..4 {
            let init: String = regs
                .iter()
                .enumerate()
                .map(|(i, r)| format!("lddw %r{r}, {}\n", vals[(i + rot) % 4]))
                .collect();
            for op in ["div", "mod", "sdiv", "smod", "lsh", "rsh", "arsh", "mul"] {
                for w in ["", "32"] {
                    for d in regs {
                        for s in regs {
                            let src = format!("{init}{op}{w} %r{d}, %r{s}\n{checksum}");
                            let r = both(&src, &[], 100).0;
                            assert!(r.is_ok(), "{src}: {r:?}");
                            programs += 1;
                        }
                    }
                }
            }
        }
    }
    for op in ["add", "or", "and", "xor", "xchg", "cmpxchg"] {
        for fetch in [false, true] {
            if !fetch && matches!(op, "xchg" | "cmpxchg") {
                continue;
            }
            for w in ["", "32"] {
                for b in regs {
                    for s in regs {
                        if s == b {
                            continue;
                        }
                        let init: String = regs
                            .iter()
                            .filter(|&&r| r != b)
                            .map(|r| {
                                format!(
                                    "lddw %r{r}, {}\n",
                                    0x1111_2222_3333_4444u64 * (*r as u64 + 1)
                                )
                            })
                            .collect();
                        let f = if fetch && !matches!(op, "xchg" | "cmpxchg") {
                            "fetch "
                        } else {
                            ""
                        };
                        let src = format!(
                            "stdw [%r10-16], 0x1234567\nstw [%r10-12], 0x0f0f0f0f\n{init}mov %r{b}, %r10\nadd %r{b}, -16\n\
                             lock {f}{op}{w} [%r{b}+0], %r{s}\nmov %r{b}, 0\nldxdw %r6, [%r10-16]\nxor %r0, %r6\n{checksum}"
                        );
                        let r = both(&src, &[], 100).0;
                        assert!(r.is_ok(), "{src}: {r:?}");
                        programs += 1;
                    }
                }
            }
        }
    }
    assert_eq!(programs, 4 * 4 * 8 * 2 * 16 + (4 * 2 + 2) * 2 * 12);
}

/// An inlined array lookup gives the helper's result at and around the
/// bounds (the key's upper context bytes are ignored: keys are `u32`),
/// blinded or not, and makes no helper call.
#[test]
fn inlined_array_lookups_match_the_helper_at_the_bounds() {
    let src = "
        ldxw %r2, [%r1+0]
        stxw [%r10-4], %r2
        mov %r2, %r10
        add %r2, -4
        lddw %r1, map_fd(1)
        call 1
        jeq %r0, 0, null
        ldxdw %r0, [%r0+8]
        exit
        null:
        mov %r0, 1000
        exit";
    let prog = assemble(src).unwrap();
    let verify_env = VerifyEnv::kprobe();
    let maps = &verify_env.maps;
    let report = verify(prog.insns(), &verify_env.env(), &fuzz_config()).unwrap();
    assert_eq!(
        report.call_maps,
        vec![(6, 1)],
        "the call at slot 6 is on map 1"
    );
    let exe = executable(&prog).unwrap();
    let filled = |v: &mut Vec<u8>| {
        for (i, b) in v.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
    };
    let mut interp_array = vec![0u8; ARRAY_ENTRIES * VALUE_SIZE];
    let mut jit_array = vec![0u8; ARRAY_ENTRIES * VALUE_SIZE];
    filled(&mut interp_array);
    filled(&mut jit_array);
    let inline = array_lookups(
        prog.insns(),
        &report.call_maps,
        maps,
        jit_array.as_ptr() as u64,
    );
    assert_eq!(inline.len(), 1);
    let last = ARRAY_ENTRIES as u64 - 1;
    let keys = [
        0,
        1,
        last,
        last + 1,
        last + 2,
        0xffff_ffff,
        1 << 32,
        (1 << 32) + 3,
    ];
    for blinding in [None, Some(0x1234_5678_9abc_def0)] {
        let options = JitOptions { blinding };
        let image = compile_inlined(&exe, &options, &table::<Logged>(), &inline).unwrap();
        let code = ExecCode::new(&image);
        for key in keys {
            let mut ctx = [0u8; CTX_LEN];
            ctx[..8].copy_from_slice(&u64::to_le_bytes(key));
            let idx = key as u32 as usize;
            let want = match idx < ARRAY_ENTRIES {
                true => u64::from_le_bytes(
                    jit_array[idx * VALUE_SIZE + 8..idx * VALUE_SIZE + 16]
                        .try_into()
                        .unwrap(),
                ),
                false => 1000,
            };
            let logged = |array: &mut Vec<u8>, ctx: &[u8]| {
                Logged::new(&verify_env.helpers, &verify_env.maps, ctx, array, 0)
            };
            let mut c1 = ctx;
            let mut h = logged(&mut interp_array, &c1);
            let interp = Vm::new().run_checked(&exe, &mut c1, &mut h, &[], 1000);
            assert_eq!(interp, Ok(want), "interpreter, key {key:#x}");
            assert_eq!(h.log.len(), 1, "the interpreter calls the helper");
            let mut c2 = ctx;
            let mut h = logged(&mut jit_array, &c2);
            // SAFETY: verified program; the array buffer outlives the code's
            // runs and holds ARRAY_ENTRIES values of VALUE_SIZE bytes.
            let (jit, executed) = unsafe { run_jit(&code, &mut c2, &mut h, 1000) };
            assert_eq!(jit, Ok(want), "JIT, key {key:#x}, blinding {blinding:?}");
            assert_eq!(executed, 9, "the call is charged as one instruction");
            assert!(h.log.is_empty(), "an inlined lookup calls no helper");
        }
        if blinding.is_some() {
            let base = (jit_array.as_ptr() as u64).to_le_bytes();
            assert!(!contains(image.code(), &base), "the map address is blinded");
        }
    }
}

#[repr(align(16))]
struct Aligned16(#[allow(dead_code)] u128);

/// Helper 3: the native stack's alignment at the call, as the System V ABI
/// requires it (a 16-aligned local lands on an 8-aligned address when the
/// caller left `rsp` 8 off), then 16-aligned or not (1 or 0).
fn helper_aligned(_: &mut (), _: &mut HelperMem<'_>, _: [u64; 5]) -> Result<u64, HelperError> {
    let local = std::hint::black_box(Aligned16(0));
    Ok(u64::from(
        (&local as *const Aligned16 as usize).is_multiple_of(16),
    ))
}

/// The prologue saves only the callee-saved registers a program writes
/// (padded to an even count for the stack's alignment) and, without local
/// calls, `exit` leaves through the epilogue: for every subset of r6-r9
/// written, with and without a bpf-to-bpf call, a helper sees an aligned
/// stack, the registers keep their values across it, and the run returns
/// (the caller's callee-saved registers are restored, or the test process
/// would not survive).
#[test]
fn entry_saves_what_the_program_writes_and_keeps_the_stack_aligned() {
    for local_call in [false, true] {
        for set in 0u32..16 {
            let mut src = String::from("mov %r0, 0\n");
            for r in 0..4 {
                if set & (1 << r) != 0 {
                    src += &format!("mov %r{}, {}\n", 6 + r, 10 << r);
                }
            }
            src += "call 3\njne %r0, 1, misaligned\n";
            if local_call {
                src += "call local f\n";
            }
            for r in 0..4 {
                if set & (1 << r) != 0 {
                    src += &format!("add %r0, %r{}\n", 6 + r);
                }
            }
            src += "exit\nmisaligned:\nmov %r0, 999\nexit\n";
            if local_call {
                src += "f:\ncall 3\nexit\n";
            }
            let prog = assemble(&src).unwrap();
            let exe = Executable::new(&prog).unwrap();
            let mut helpers = HelperTable::new(());
            helpers.register(3, helper_aligned);
            let code = ExecCode::new(
                &compile(&exe, &JitOptions::default(), &table::<HelperTable<()>>()).unwrap(),
            );
            // SAFETY: the program touches only registers and calls helper 3.
            let (res, _) = unsafe { run_jit(&code, &mut [], &mut helpers, 1_000) };
            let want = 1
                + (0..4)
                    .filter(|r| set & (1 << r) != 0)
                    .map(|r| 10u64 << r)
                    .sum::<u64>();
            assert_eq!(res, Ok(want), "{src}");
        }
    }
}

/// The displacements of the stack accesses (`rbp`-relative, inside the
/// 512-byte BPF stack) in `src`'s compiled code.
fn stack_accesses(src: &str) -> Vec<i64> {
    use iced_x86::{Decoder, DecoderOptions, OpKind, Register};
    let exe = Executable::new(&assemble(src).unwrap()).unwrap();
    let image = compile(&exe, &JitOptions::default(), &table::<HelperTable<()>>()).unwrap();
    Decoder::with_ip(64, image.code(), 0, DecoderOptions::NONE)
        .into_iter()
        .filter(|i| (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory))
        .filter(|i| i.memory_base() == Register::RBP)
        .map(|i| i.memory_displacement64() as i64)
        .filter(|d| (-512..0).contains(d))
        .collect()
}

/// Stack slots kept in registers (`jit::slots`): where `r10` is only ever
/// the base of loads and stores, slots always accessed whole live in the
/// registers of the unused r6-r9, holding the bytes a load would return:
/// stored immediates cut to size, registers' low bytes, parts of a wider
/// store that covers them; more slots than free registers, a helper call
/// in between, every budget, blinding. Programs that take the stack's
/// address, or touch a slot's bytes another way, keep it in memory.
#[test]
fn stack_slots_in_registers_match_the_interpreter() {
    // Four slots for the four free registers, stored as immediates
    // (sign-extended, then cut to size), then from a register.
    let imms = "
        stb [%r10-1], -1
        sth [%r10-4], -2
        stw [%r10-8], -3
        stdw [%r10-16], -4
        ldxb %r0, [%r10-1]
        ldxh %r2, [%r10-4]
        lsh %r0, 16
        or %r0, %r2
        ldxw %r2, [%r10-8]
        xor %r0, %r2
        ldxdw %r2, [%r10-16]
        mul %r0, %r2
        exit";
    let imms_want = (((0xffu64 << 16) | 0xfffe) ^ 0xffff_fffd).wrapping_mul(-4i64 as u64);
    let regs = "
        lddw %r1, 0x1122334455667788
        stxb [%r10-17], %r1
        stxh [%r10-20], %r1
        stxw [%r10-24], %r1
        stxdw [%r10-32], %r1
        ldxb %r0, [%r10-17]
        ldxh %r2, [%r10-20]
        lsh %r2, 8
        add %r0, %r2
        ldxw %r2, [%r10-24]
        lsh %r2, 24
        xor %r0, %r2
        ldxdw %r2, [%r10-32]
        sub %r0, %r2
        exit";
    let regs_want =
        ((0x88u64 + (0x7788 << 8)) ^ (0x5566_7788 << 24)).wrapping_sub(0x1122_3344_5566_7788);
    // A wider store covering slots, then the slots alone; a helper call
    // between a store and its load.
    let covered = "
        lddw %r1, 0x0102030405060708
        stxdw [%r10-16], %r1
        stdw [%r10-32], -2
        ldxh %r0, [%r10-12]
        ldxb %r2, [%r10-9]
        add %r0, %r2
        ldxh %r2, [%r10-30]
        add %r0, %r2
        stxb [%r10-9], %r0
        mov %r1, 5
        mov %r2, 6
        call 1
        ldxb %r2, [%r10-9]
        add %r0, %r2
        ldxh %r2, [%r10-12]
        add %r0, %r2
        exit";
    // Bytes 4-5 and 7 of the first store, bytes 2-3 of the second; byte 7
    // then rewritten with the low byte of their sum.
    let covered_want = 11 + ((0x0304u64 + 0x01 + 0xffff) & 0xff) + 0x0304;
    // Five slots and only r7-r9 free: two stay in memory.
    let crowded = "
        mov %r6, 1
        stdw [%r10-8], 10
        stdw [%r10-16], 20
        stdw [%r10-24], 30
        stdw [%r10-32], 40
        stdw [%r10-40], 50
        ldxdw %r0, [%r10-8]
        ldxdw %r1, [%r10-16]
        add %r0, %r1
        ldxdw %r1, [%r10-24]
        add %r0, %r1
        ldxdw %r1, [%r10-32]
        add %r0, %r1
        ldxdw %r1, [%r10-40]
        add %r0, %r1
        add %r0, %r6
        exit";
    // The benchmark's `stack` program, 100 turns instead of 10,000.
    let looped = &programs::STACK.replace("mov %r2, 10000", "mov %r2, 100");
    assert_ne!(looped, programs::STACK);
    let (r, executed) = both(looped, &[], 10_000);
    let mut budget_faults = 0;
    for budget in 0..=executed {
        if both(looped, &[], budget).0.is_err() {
            budget_faults += 1;
        }
    }
    assert_eq!((r.is_ok(), budget_faults), (true, executed));
    for blinding in [None, Some(0x1234)] {
        let options = JitOptions { blinding };
        assert_eq!(both_with(imms, &[], 100, &options).0, Ok(imms_want));
        assert_eq!(both_with(regs, &[], 100, &options).0, Ok(regs_want));
        assert_eq!(both_with(covered, &[], 100, &options).0, Ok(covered_want));
        assert_eq!(both_with(crowded, &[], 100, &options).0, Ok(151));
        assert!(both_with(looped, &[], 10_000, &options).0.is_ok());
    }
    // In registers: every slot of `imms`, `regs`, `covered` and the loop
    // (wider stores that cover slots still write memory for their other
    // bytes); two of `crowded`'s five stay in memory. Each in both copies
    // of the code.
    assert_eq!(stack_accesses(imms), Vec::<i64>::new());
    assert_eq!(stack_accesses(regs), Vec::<i64>::new());
    assert_eq!(stack_accesses(covered), vec![-16, -32, -16, -32]);
    assert_eq!(stack_accesses(looped), vec![-16, -16]);
    assert_eq!(stack_accesses(crowded).len(), 2 * 4);
    // The stack's address taken, a slot read in part, an atomic on it:
    // memory as before.
    for src in [
        "stdw [%r10-8], 1\nmov %r1, %r10\nldxdw %r0, [%r10-8]\nexit",
        "stdw [%r10-8], 1\nldxw %r0, [%r10-8]\nexit",
        "stdw [%r10-8], 1\nmov %r1, 2\nlock add [%r10-8], %r1\nldxdw %r0, [%r10-8]\nexit",
    ] {
        assert!(both(src, &[], 100).0.is_ok(), "{src}");
        assert!(stack_accesses(src).len() >= 2, "{src}");
    }
}

/// One step of a stack-only program (see
/// [`stack_only_programs_match_the_interpreter`]).
#[derive(Clone, Debug)]
enum StackStep {
    Store(u8, i16, u8),
    StoreImm(u8, i16, i32),
    Load(u8, u8, i16),
    Alu(&'static str, u8, u8),
    /// A forward jump over the next steps when a register is odd.
    SkipIfOdd(u8, usize),
    /// A helper call, then r1-r5 written again (compiled code, like
    /// Linux's, does not keep them across calls).
    Call,
    /// Writes r6: one register fewer for slots.
    UseR6,
}

fn stack_step() -> impl Strategy<Value = StackStep> {
    let size = prop_oneof![Just(1u8), Just(2), Just(4), Just(8)];
    // Offsets of 8 slots' worth of stack, aligned to the access size.
    let at = (size.clone(), 1i16..=8).prop_map(|(s, k)| (s, -(k * s as i16)));
    let reg = 0u8..=5;
    prop_oneof![
        4 => (at.clone(), reg.clone()).prop_map(|((s, o), r)| StackStep::Store(s, o, r)),
        2 => (at.clone(), any::<i32>()).prop_map(|((s, o), v)| StackStep::StoreImm(s, o, v)),
        5 => (at, reg.clone()).prop_map(|((s, o), r)| StackStep::Load(s, r, o)),
        3 => (prop_oneof![Just("add"), Just("xor"), Just("mul"), Just("lsh"), Just("rsh")], reg.clone(), reg.clone())
            .prop_map(|(op, d, s)| StackStep::Alu(op, d, s)),
        1 => (reg, 1usize..4).prop_map(|(r, n)| StackStep::SkipIfOdd(r, n)),
        1 => Just(StackStep::Call),
        1 => Just(StackStep::UseR6),
    ]
}

/// Assembles a stack-only program: the 64 bytes below r10 first written
/// by 8-byte stores (so no byte is read before it is written, as the
/// verifier would insist), then the steps, then r1-r5 folded into r0.
fn stack_program(init: &[i32], steps: &[StackStep]) -> String {
    let mut src = String::new();
    for (k, v) in init.iter().enumerate() {
        src += &format!("stdw [%r10-{}], {v}\n", 8 * (k + 1));
    }
    for r in 0..=5 {
        src += &format!("mov %r{r}, {}\n", r * 3 + 1);
    }
    let mut labels = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        while labels.last() == Some(&i) {
            labels.pop();
            src += &format!("l{i}:\n");
        }
        src += &match *step {
            StackStep::Store(s, o, r) => format!("stx{} [%r10{o}], %r{r}\n", size_suffix(s)),
            StackStep::StoreImm(s, o, v) => format!("st{} [%r10{o}], {v}\n", size_suffix(s)),
            StackStep::Load(s, r, o) => format!("ldx{} %r{r}, [%r10{o}]\n", size_suffix(s)),
            StackStep::Alu(op, d, s) => format!("{op} %r{d}, %r{s}\n"),
            StackStep::SkipIfOdd(r, n) => {
                let to = (i + 1 + n).min(steps.len());
                if !labels.contains(&to) {
                    labels.push(to);
                    labels.sort_unstable_by(|a, b| b.cmp(a));
                }
                format!("jset %r{r}, 1, l{to}\n")
            }
            StackStep::Call => {
                "call 1\nmov %r1, 7\nmov %r2, 9\nmov %r3, 11\nmov %r4, 13\nmov %r5, 15\n".into()
            }
            StackStep::UseR6 => "mov %r6, %r0\nadd %r0, %r6\n".into(),
        };
    }
    let end = steps.len();
    while labels.last().is_some_and(|&l| l <= end) {
        let l = labels.pop().unwrap();
        src += &format!("l{l}:\n");
    }
    for r in 1..=5 {
        src += &format!("xor %r0, %r{r}\n");
    }
    src + "exit\n"
}

fn size_suffix(size: u8) -> &'static str {
    match size {
        1 => "b",
        2 => "h",
        4 => "w",
        _ => "dw",
    }
}

/// Random stack-only programs (`r10` only a load/store base, so the JIT
/// keeps the slots it can in registers: `jit::slots`) give the
/// interpreter's results and counts, with and without blinding and with a
/// budget that runs out inside the run. The generated programs of the
/// differential fuzzer above all pass stack pointers to helpers, which
/// keeps their stack in memory.
#[test]
fn stack_only_programs_match_the_interpreter() {
    let mut runner = TestRunner::new(PtConfig {
        cases: 400,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let strategy = (
        proptest::collection::vec(any::<i32>(), 8),
        proptest::collection::vec(stack_step(), 1..40),
        any::<u64>(),
    );
    let with_slots_in_regs = Cell::new(0u32);
    runner
        .run(&strategy, |(init, steps, seed)| {
            let src = stack_program(&init, &steps);
            let in_memory = 8 + steps
                .iter()
                .filter(|s| {
                    matches!(
                        s,
                        StackStep::Store(..) | StackStep::StoreImm(..) | StackStep::Load(..)
                    )
                })
                .count();
            // Both copies of the code (see `jit::budget`).
            if stack_accesses(&src).len() < 2 * in_memory {
                with_slots_in_regs.set(with_slots_in_regs.get() + 1);
            }
            let (res, executed) = both(&src, &[], 1_000);
            prop_assert!(res.is_ok(), "{src}: {res:?}");
            let options = JitOptions {
                blinding: Some(seed),
            };
            prop_assert_eq!(both_with(&src, &[], 1_000, &options).0, res);
            let cut = both(&src, &[], seed % executed).0;
            prop_assert!(cut.is_err(), "{src}: {cut:?}");
            Ok(())
        })
        .unwrap();
    println!(
        "stack-only programs: {} of 400 kept a slot in a register",
        with_slots_in_regs.get()
    );
    assert!(
        with_slots_in_regs.get() >= 100,
        "only {} of 400 programs kept a slot in a register",
        with_slots_in_regs.get()
    );
}

/// A call of a helper the platform declares never aborts a run
/// (`Helper::aborts`: 1 is `bpf_map_lookup_elem`) is not followed by the
/// error test (`test rdx, rdx`); one that may (2) is, and its failure is
/// the interpreter's fault. A program that leaves one of r6-r9 unwritten
/// keeps the run's address in that register's native home (`r13` for r7)
/// and copies it for each call (`mov r9, r13`) instead of loading it.
/// Every budget stops where the interpreter does.
#[test]
fn helpers_that_never_abort_skip_the_error_test_and_the_run_stays_in_a_register() {
    assert!(!linux::helper::find(1).unwrap().aborts);
    assert!(linux::helper::find(2).unwrap().aborts);
    const TEST_RDX: &[u8] = &[0x48, 0x85, 0xd2];
    const MOV_R9_R13: &[u8] = &[0x4d, 0x89, 0xe9];
    let looped = |last: &str| {
        format!(
            "mov %r6, 4\nmov %r0, 0\nl:\nmov %r1, %r0\nmov %r2, %r6\ncall 1\nsub %r6, 1\njne %r6, 0, l\n{last}exit"
        )
    };
    let never = looped("");
    let may = looped("jne %r0, 10, out\ncall 2\nout:\n");
    let code = |src: &str| {
        let exe = Executable::new(&assemble(src).unwrap()).unwrap();
        compile(&exe, &JitOptions::default(), &table::<HelperTable<()>>())
            .unwrap()
            .code()
            .to_vec()
    };
    assert!(!contains(&code(&never), TEST_RDX), "{never}");
    assert!(contains(&code(&may), TEST_RDX), "{may}");
    assert!(contains(&code(&never), MOV_R9_R13), "{never}");
    // With r6-r9 all written there is no register to spare.
    let full = format!("mov %r7, 0\nmov %r8, 0\nmov %r9, 0\n{never}");
    assert!(!contains(&code(&full), MOV_R9_R13), "{full}");
    assert_eq!(both(&never, &[], 1_000), (Ok(10), 23));
    let (res, executed) = both(&may, &[], 1_000);
    assert_eq!(
        res.unwrap_err(),
        RunError {
            pc: 8,
            kind: RunErrorKind::Helper {
                id: 2,
                err: HelperError::Failed("no")
            }
        }
    );
    assert_eq!(executed, 25);
    // `both` asserts the JIT's outcome and count equal the interpreter's.
    for budget in 0..30 {
        for src in [&never, &may, &full] {
            let _ = both(src, &[], budget);
        }
    }
}
