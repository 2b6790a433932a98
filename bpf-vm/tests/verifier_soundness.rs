//! Soundness fuzzing of the verifier against the checked interpreter.
//!
//! A structure-aware generator builds programs shaped like probe code (a
//! map lookup prologue, pointer arithmetic on the context, the stack and a
//! map value, bounds checks, loops with constant bounds, helper calls,
//! atomics). Whenever the verifier accepts one, it runs in the
//! interpreter's checked mode on several random contexts: an out-of-bounds
//! access, an uninitialised stack read, a helper fed a bad pointer, a
//! budget overrun, or a pointer value escaping through r0 or into a map is a
//! verifier bug and fails the test.
//!
//! Also: random bytes and mutated generated programs must never make the
//! verifier panic (and mutated programs it accepts go through the same oracle).
//!
//! The oracle's helpers are derived from the platform's helper table, so
//! any helper the verifier accepts runs, checked against its prototype.
//! `VERIFIER_FUZZ_CASES=100000` sets the cases of the generated and the
//! mutated runs (in release mode: `cargo test --release -p bpf-vm --test
//! verifier_soundness`).
//!
//! The generator lives in `support/gen.rs` (the JIT's differential fuzzer
//! uses it too).

mod support;

use bpf_vm::insn::{AluOp, Insn, JmpCond, LdImm64Src, Operand, Program, Size, Width};
use bpf_vm::interp::Vm;
use bpf_vm::verifier::linux::{self, helper};
use bpf_vm::verifier::{verify, verify_bytes, ArgKind, Config, MapDef};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use std::cell::Cell;
use support::gen::*;

/// Runs an accepted program several times; returns a description of the
/// first soundness violation.
fn oracle(insns: &[Insn], seed: u64) -> Result<(), String> {
    let prog = Program::from_insns(insns.to_vec()).map_err(|e| format!("bad layout: {e}"))?;
    let exe = executable(&prog).map_err(|e| format!("prepare: {e}"))?;
    let mut vm = Vm::new();
    let mut array = vec![0u8; ARRAY_ENTRIES * VALUE_SIZE];
    let verify_env = VerifyEnv::kprobe();
    let (table, maps) = (&verify_env.helpers, &verify_env.maps);
    let handles = HANDLE_BASE..HANDLE_BASE + maps.len() as u64;
    for run in 0..3u64 {
        // Small numbers (typical indices) in the first run, arbitrary bytes after.
        let (mut ctx, s) = context(seed, run);
        let ctx_addr = ctx.as_ptr() as u64;
        let mut h = Oracle::new(table, maps, &ctx, array.as_mut_ptr(), s);
        let res = vm.run_checked(&exe, &mut ctx, &mut h, &[], 10_000_000);
        let r0 = match res {
            Ok(r0) => r0,
            Err(e) => return Err(format!("run {run}: {e}")),
        };
        let fp = h.fp.get();
        let array_addr = array.as_ptr() as u64;
        let is_ptr = |v: u64| {
            (ctx_addr..ctx_addr + CTX_LEN as u64).contains(&v)
                || (fp != 0 && (fp - 512..fp + 7 * 512).contains(&v))
                || (array_addr..array_addr + array.len() as u64).contains(&v)
                || handles.contains(&v)
        };
        let records: Vec<u64> = h.records.iter().map(|(b, _)| b.as_ptr() as u64).collect();
        let is_ptr = |v: u64| {
            is_ptr(v)
                || h.records.iter().any(|(b, _)| {
                    let a = b.as_ptr() as u64;
                    (a..a + b.len() as u64).contains(&v)
                })
                || h.copies.iter().any(|b| {
                    let a = b.as_ptr() as u64;
                    (a..a + b.len() as u64).contains(&v)
                })
        };
        if is_ptr(r0) {
            return Err(format!("run {run}: r0 = {r0:#x} is a pointer"));
        }
        if h.records.iter().any(|(_, live)| *live) {
            return Err(format!(
                "run {run}: a ring buffer record was never submitted ({records:x?})"
            ));
        }
        for (b, _) in &h.records {
            for w in b.chunks_exact(8) {
                let v = u64::from_le_bytes(w.try_into().unwrap());
                if is_ptr(v) {
                    return Err(format!(
                        "run {run}: ring buffer record holds pointer {v:#x}"
                    ));
                }
            }
        }
        for b in &h.copies {
            for w in b.chunks_exact(8) {
                let v = u64::from_le_bytes(w.try_into().unwrap());
                if is_ptr(v) {
                    return Err(format!(
                        "run {run}: bytes a helper took out of the program hold pointer {v:#x}"
                    ));
                }
            }
        }
        for &(id, arg, v) in &h.scalars {
            if is_ptr(v) {
                return Err(format!(
                    "run {run}: helper {id} got pointer {v:#x} in r{arg}, a scalar argument"
                ));
            }
        }
        for (i, w) in array.chunks(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().unwrap());
            if is_ptr(v) {
                return Err(format!(
                    "run {run}: map value byte {} holds pointer {v:#x}",
                    i * 8
                ));
            }
            // 4-byte halves of a pointer are leaks too, but too likely to be
            // coincidences to test for.
        }
    }
    Ok(())
}

#[test]
fn accepted_programs_run_safely() {
    let cases = fuzz_cases(2000);
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let generated = Cell::new(0u32);
    let accepted = Cell::new(0u32);
    let with_calls = Cell::new(0u32);
    let with_ringbuf = Cell::new(0u32);
    let verify_env = VerifyEnv::kprobe();
    let env = verify_env.env();
    let config = fuzz_config();
    // VERIFIER_FUZZ_VERBOSE=1 prints why generated programs were rejected.
    let verbose = std::env::var_os("VERIFIER_FUZZ_VERBOSE").is_some();
    let reasons = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let result = runner.run(&(program(), any::<u64>()), |(insns, seed)| {
        generated.set(generated.get() + 1);
        let verdict = verify(&insns, &env, &config);
        if let (Err(e), true) = (&verdict, verbose) {
            let m: String = e.error.message.chars().take(50).collect();
            *reasons.borrow_mut().entry(m).or_insert(0u32) += 1;
        }
        if verdict.is_ok() {
            accepted.set(accepted.get() + 1);
            if insns.iter().any(|i| matches!(i, Insn::CallLocal { .. })) {
                with_calls.set(with_calls.get() + 1);
            }
            if insns.iter().any(|i| matches!(i, Insn::Call { id: 131 })) {
                with_ringbuf.set(with_ringbuf.get() + 1);
            }
            oracle(&insns, seed).map_err(|e| {
                let text = bpf_vm::disasm::program(
                    &Program::from_insns(insns.clone()).unwrap(),
                    bpf_vm::disasm::Syntax::Llvm,
                    true,
                );
                TestCaseError::fail(format!("verifier accepted an unsafe program: {e}\n{text}"))
            })?;
        }
        Ok(())
    });
    println!(
        "verifier soundness fuzz: {} programs generated, {} accepted ({} with bpf-to-bpf calls, {} with ring buffer records), {} ran in the checked interpreter (3 contexts each) without a fault",
        generated.get(),
        accepted.get(),
        with_calls.get(),
        with_ringbuf.get(),
        accepted.get()
    );
    let mut top: Vec<_> = reasons.into_inner().into_iter().collect();
    top.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (m, n) in top.iter().take(25) {
        println!("{n:6}  {m}");
    }
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        accepted.get() * 20 >= generated.get(),
        "too few accepted programs to mean anything: {} of {}",
        accepted.get(),
        generated.get()
    );
}

#[test]
fn random_bytes_never_panic() {
    let verify_env = VerifyEnv::kprobe();
    let env = verify_env.env();
    let config = fuzz_config();
    let mut runner = TestRunner::new(PtConfig {
        cases: 2000,
        failure_persistence: None,
        ..PtConfig::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            let _ = verify_bytes(&bytes, &env, &config);
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_programs_never_panic_and_stay_sound() {
    let verify_env = VerifyEnv::kprobe();
    let env = verify_env.env();
    let config = fuzz_config();
    let cases = fuzz_cases(1000);
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let accepted = Cell::new(0u32);
    runner
        .run(
            &(
                program(),
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                any::<u64>(),
            ),
            |(insns, muts, seed)| {
                let mut bytes = bpf_vm::encode(&insns);
                for (i, b) in muts {
                    let n = bytes.len();
                    bytes[i.index(n)] = b;
                }
                if verify_bytes(&bytes, &env, &config).is_ok() {
                    accepted.set(accepted.get() + 1);
                    let p = bpf_vm::decode(&bytes).unwrap();
                    oracle(p.insns(), seed).map_err(|e| {
                        TestCaseError::fail(format!("unsafe mutated program accepted: {e}"))
                    })?;
                }
                Ok(())
            },
        )
        .unwrap();
    println!(
        "mutated programs: {cases} generated, {} accepted and ran safely",
        accepted.get()
    );
}

/// The oracle itself must catch what the verifier should have rejected.
#[test]
fn oracle_catches_unsafe_programs() {
    let mov = |dst: u8, src: Operand| Insn::Alu {
        width: Width::W64,
        op: AluOp::Mov,
        dst,
        src,
    };
    // Reads one byte past the map value.
    let oob = build(
        &[Some(0); 8],
        false,
        &[Gen::Plain(vec![Insn::Load {
            size: Size::B,
            dst: 0,
            src: 8,
            off: 64,
        }])],
        Some(0),
        None,
    );
    assert!(oracle(&oob, 1).unwrap_err().contains("out-of-bounds read"));
    // Returns the stack pointer.
    let leak = build(
        &[Some(0); 8],
        false,
        &[Gen::Plain(vec![mov(0, Operand::Reg(10))])],
        None,
        None,
    );
    assert!(oracle(&leak, 1).unwrap_err().contains("is a pointer"));
    // Stores the context pointer into the map value.
    let store = build(
        &[Some(0); 8],
        false,
        &[Gen::Plain(vec![Insn::Store {
            size: Size::DW,
            dst: 8,
            off: 0,
            src: 9,
        }])],
        Some(0),
        None,
    );
    assert!(oracle(&store, 1).unwrap_err().contains("holds pointer"));
    // Hands the context pointer to a helper that copies it out of the
    // program: as a hash map value, and as a scalar argument.
    let table = linux::helpers();
    let update = table.get(helper::MAP_UPDATE_ELEM).unwrap();
    let mut through_helper = call_from_prototype(&table, update, Some(&maps()[0]));
    through_helper.insert(
        20,
        Insn::Store {
            size: Size::DW,
            dst: 10,
            off: -136,
            src: 9,
        },
    );
    let through_helper = build(&[], true, &[Gen::Plain(through_helper)], Some(0), None);
    assert!(oracle(&through_helper, 1)
        .unwrap_err()
        .contains("a helper took out of the program hold pointer"));
    let mut as_scalar = call_from_prototype(&table, update, Some(&maps()[0]));
    let flags = as_scalar.len() - 2;
    assert_eq!(as_scalar[flags], mov(4, Operand::Imm(0)));
    as_scalar[flags] = mov(4, Operand::Reg(9));
    let as_scalar = build(&[], true, &[Gen::Plain(as_scalar)], Some(0), None);
    assert!(oracle(&as_scalar, 1).unwrap_err().contains("got pointer"));
    // And the verifier rejects all three.
    let verify_env = VerifyEnv::kprobe();
    let env = verify_env.env();
    for p in [&oob, &leak, &store, &through_helper, &as_scalar] {
        assert!(verify(p, &env, &Config::default()).is_err());
    }
}

/// Hand-built instruction slices (not from the decoder) may be malformed in
/// ways bytes cannot express: stray `ld_imm64` halves, registers above r10,
/// writes to r10. The verifier must still answer without panicking.
#[test]
fn arbitrary_insn_slices_never_panic() {
    let verify_env = VerifyEnv::kprobe();
    let env = verify_env.env();
    let config = fuzz_config();
    let wild = prop_oneof![
        4 => program().prop_map(|p| p.into_iter().map(Some).collect::<Vec<_>>()),
        1 => Just(vec![None]),
    ];
    let mut runner = TestRunner::new(PtConfig {
        cases: 500,
        failure_persistence: None,
        ..PtConfig::default()
    });
    runner
        .run(
            &(
                wild,
                prop::collection::vec((any::<prop::sample::Index>(), 0u8..6, 0u8..16), 1..4),
            ),
            |(insns, edits)| {
                let mut insns: Vec<Insn> = insns.into_iter().flatten().collect();
                if insns.is_empty() {
                    insns.push(Insn::Exit);
                }
                for (i, kind, r) in edits {
                    let n = insns.len();
                    let at = i.index(n);
                    insns[at] = match kind {
                        0 => Insn::LdImm64Tail,
                        1 => Insn::LdImm64 {
                            dst: r.min(9),
                            src: LdImm64Src::Imm(1),
                        },
                        2 => Insn::Alu {
                            width: Width::W64,
                            op: AluOp::Mov,
                            dst: r,
                            src: Operand::Imm(1),
                        },
                        3 => Insn::Load {
                            size: Size::DW,
                            dst: r,
                            src: r,
                            off: 0,
                        },
                        4 => Insn::Exit,
                        _ => Insn::Jmp {
                            width: Width::W64,
                            cond: JmpCond::Eq,
                            dst: r,
                            src: Operand::Reg(r),
                            off: -(r as i16),
                        },
                    };
                }
                let _ = verify(&insns, &env, &config);
                Ok(())
            },
        )
        .unwrap();
}

/// Every helper the verifier lets a kprobe program call runs in the
/// oracle, checked against its prototype (the stand-in once knew only a
/// hand-picked few, and 100k-case runs failed on `bpf_map_delete_elem`
/// and `bpf_get_current_comm` with "unknown helper").
#[test]
fn oracle_models_every_helper_the_verifier_accepts() {
    let verify_env = VerifyEnv::kprobe();
    let env = verify_env.env();
    let (table, maps, pt) = (&verify_env.helpers, &verify_env.maps, &verify_env.prog_type);
    let mut ran = Vec::new();
    for &id in &pt.allowed_helpers {
        let proto = table
            .get(id)
            .unwrap_or_else(|| panic!("helper {id} is allowed but not in the table"));
        let takes_map = proto.args.contains(&ArgKind::ConstMapPtr);
        let fitting: Vec<Option<&MapDef>> = if takes_map {
            maps.iter()
                .filter(|m| proto.map_types.is_empty() || proto.map_types.contains(&m.map_type))
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        assert!(!fitting.is_empty(), "{}: no map of its types", proto.name);
        for map in fitting {
            let call = call_from_prototype(table, proto, map);
            let insns = build(&[], true, &[Gen::Plain(call)], Some(0), None);
            let what = format!("{} with map {:?}", proto.name, map.map(|m| m.map_type));
            if let Err(e) = verify(&insns, &env, &Config::default()) {
                panic!("{what}: rejected: {}", e.error.message);
            }
            for seed in 0..8 {
                oracle(&insns, seed).unwrap_or_else(|e| panic!("{what}, seed {seed}: {e}"));
            }
            ran.push(what);
        }
    }
    println!("{} helper calls ran in the oracle: {ran:?}", ran.len());
    assert_eq!(ran.len(), pt.allowed_helpers.len() + 3, "{ran:?}");
}
