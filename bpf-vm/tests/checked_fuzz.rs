//! Checked mode on arbitrary programs: random instruction sequences (jumps
//! anywhere, loops, local calls, helper calls, loads and stores through any
//! register) never panic and always stop within the budget; and whenever
//! checked mode finishes cleanly, fast mode on the same VM and the same
//! input (hence the same addresses, hence the same accesses) gives the same
//! result and leaves the same memory. That is what makes checked mode the
//! oracle for the verifier's soundness tests.

use bpf_vm::insn::{decode_raw, Program, RawInsn};
use bpf_vm::interp::{Executable, HelperError, HelperMem, HelperTable, RunErrorKind, Vm};
use proptest::prelude::*;

/// Every single-slot opcode the decoder accepts, plus ld_imm64 (0x18).
fn opcodes() -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8)
        .filter(|&code| {
            // An opcode is valid if some field combination decodes.
            [(0i16, 0i32), (1, 0), (8, 0), (0, 16), (0, 1), (0, 0xe1)]
                .iter()
                .any(|&(off, imm)| {
                    let r = RawInsn {
                        code,
                        dst: 1,
                        src: 2,
                        off,
                        imm,
                    };
                    let r0 = RawInsn { src: 0, ..r };
                    let rd = RawInsn { dst: 0, ..r };
                    [r, r0, rd].iter().any(|x| decode_raw(&[*x]).is_ok())
                })
        })
        .collect();
    v.push(0x18);
    v
}

fn raw_insn(codes: &'static [u8]) -> impl Strategy<Value = RawInsn> {
    (
        prop::sample::select(codes),
        0u8..11,
        prop_oneof![0u8..11, Just(1u8)],
        prop_oneof![-6i16..6, -520i16..80, Just(1), Just(8), Just(16), Just(32)],
        prop_oneof![
            -3i32..80,
            Just(16),
            Just(32),
            Just(64),
            Just(0xe1),
            Just(0xf1),
            Just(0x41),
            Just(1),
            Just(2),
            any::<i32>()
        ],
    )
        .prop_map(|(code, dst, src, off, imm)| RawInsn {
            code,
            dst,
            src,
            off,
            imm,
        })
}

/// Keeps the instructions that decode on their own (adding the second slot
/// of ld_imm64), ending with `exit`.
fn program(raws: Vec<RawInsn>) -> Option<Program> {
    let mut slots = Vec::new();
    for r in raws {
        let mut cand = vec![r];
        if r.code == 0x18 {
            cand.push(RawInsn {
                imm: 0x10,
                ..RawInsn::default()
            });
        }
        if decode_raw(&cand).is_ok() {
            slots.extend(cand);
        }
    }
    slots.push(RawInsn {
        code: 0x95,
        ..RawInsn::default()
    });
    decode_raw(&slots).ok()
}

/// Helper 1: r1 + r2. Helper 2: reads 8 bytes at r1.
fn add(_: &mut (), _: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
    Ok(a[0].wrapping_add(a[1]))
}

fn read8(_: &mut (), m: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
    let b = m.read(a[0], 8)?;
    Ok(u64::from_le_bytes(b.try_into().unwrap()))
}

static CODES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

fn codes() -> &'static [u8] {
    CODES.get_or_init(opcodes)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn checked_mode_is_total_and_agrees_with_fast_mode(
        raws in prop::collection::vec(raw_insn(codes()), 1..30),
        ctx in any::<[u8; 32]>(),
    ) {
        let Some(p) = program(raws) else { return Ok(()) };
        let Ok(exe) = Executable::new(&p) else { return Ok(()) };
        let mut helpers = HelperTable::new(());
        helpers.register(1, add).register(2, read8);
        let mut vm = Vm::new();
        let mut mem = ctx;
        let budget = 500;
        let checked = vm.run_checked(&exe, &mut mem, &mut helpers, &[], budget);
        prop_assert!(vm.executed() <= budget);
        if let Err(e) = checked {
            // Errors name a real instruction (or the end sentinel).
            prop_assert!(e.pc <= p.len(), "{e}");
            if let RunErrorKind::BudgetExhausted { budget: b } = e.kind {
                prop_assert_eq!(b, budget);
            }
            return Ok(());
        }
        let after_checked = mem;
        mem = ctx;
        // SAFETY: the same program on the same VM (same stack address) and
        // the same context buffer with the same contents executes exactly
        // the accesses checked mode just validated.
        let fast = unsafe {
            vm.run_fast(&exe, mem.as_mut_ptr(), mem.len(), &mut helpers, budget)
        };
        prop_assert_eq!(fast, checked);
        prop_assert_eq!(mem, after_checked);
    }
}
