extern crate std;
use std::format;

use super::*;

const A: u64 = 0x20_0000;

fn step(bytes: &[u8]) -> Step {
    match analyze(bytes, A).unwrap().exec {
        Exec::Step(s) => s,
        other => panic!("expected a step, got {other:?}"),
    }
}

#[test]
fn plain_instructions_are_boostable_steps() {
    // push rbp; mov rbp, rsp; add rax, rbx; lea rax,[rdi+rsi*2+8]
    for bytes in [
        &[0x55][..],
        &[0x48, 0x89, 0xe5],
        &[0x48, 0x01, 0xd8],
        &[0x48, 0x8d, 0x44, 0x77, 0x08],
    ] {
        let s = step(bytes);
        assert_eq!(
            s,
            Step {
                rip_disp_offset: None,
                boostable: true,
                fixup: StepFixup::Relocate,
                repeats: false
            }
        );
        assert_eq!(analyze(bytes, A).unwrap().len as usize, bytes.len());
    }
}

#[test]
fn rip_relative_load_is_relocated() {
    // mov rax, [rip + 0x1000]  (48 8b 05 00 10 00 00), 7 bytes
    let bytes = [0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00];
    let insn = analyze(&bytes, A).unwrap();
    assert_eq!(
        insn.exec,
        Exec::Step(Step {
            rip_disp_offset: Some(3),
            boostable: true,
            fixup: StepFixup::Relocate,
            repeats: false
        })
    );
    let slot = 0x80_0000;
    let s = build_slot(&insn, slot).unwrap();
    // Target is A + 7 + 0x1000; from the slot copy, next = slot + 7.
    let want = (A + 7 + 0x1000).wrapping_sub(slot + 7) as i64 as i32;
    assert_eq!(&s[..3], &bytes[..3]);
    assert_eq!(i32::from_le_bytes(s[3..7].try_into().unwrap()), want);
    // jmp back to A + 7.
    assert_eq!(s[7], 0xe9);
    let rel = i32::from_le_bytes(s[8..12].try_into().unwrap());
    assert_eq!((slot + 12).wrapping_add(rel as i64 as u64), A + 7);
    // Second copy: relocated for its own address, then sti, then jmp.
    let b = SLOT_STI_OFFSET as u64;
    let want_b = (A + 7 + 0x1000).wrapping_sub(slot + b + 7) as i64 as i32;
    assert_eq!(
        i32::from_le_bytes(s[32 + 3..32 + 7].try_into().unwrap()),
        want_b
    );
    assert_eq!(s[32 + 7], 0xfb);
    assert_eq!(s[32 + 8], 0xe9);
    let rel = i32::from_le_bytes(s[32 + 9..32 + 13].try_into().unwrap());
    assert_eq!((slot + b + 13).wrapping_add(rel as i64 as u64), A + 7);
    assert!(s[13..32].iter().all(|&b| b == INT3));
    // Out of reach: a slot 4 GiB away.
    assert_eq!(
        build_slot(&insn, A + (5 << 30)),
        Err(Refusal::OutOfReach {
            addr: A,
            slot: A + (5 << 30)
        })
    );
}

#[test]
fn relative_branches_are_emulated() {
    // call rel32 +0x100
    let call = analyze(&[0xe8, 0x00, 0x01, 0x00, 0x00], A).unwrap();
    assert_eq!(
        call.exec,
        Exec::Call {
            target: A + 5 + 0x100
        }
    );
    assert_eq!(
        emulate(&call, 0, 0),
        Some(Emulated {
            rip: A + 0x105,
            push: Some(A + 5),
            rcx: None
        })
    );
    // jmp rel8 -2 (to itself)
    let jmp = analyze(&[0xeb, 0xfe], A).unwrap();
    assert_eq!(emulate(&jmp, 0, 0).unwrap().rip, A);
    // je rel8 +0x10
    let je = analyze(&[0x74, 0x10], A).unwrap();
    assert_eq!(
        je.exec,
        Exec::Jcc {
            cond: Cond::E,
            target: A + 0x12
        }
    );
    assert_eq!(emulate(&je, rflags::ZF, 0).unwrap().rip, A + 0x12, "taken");
    assert_eq!(emulate(&je, 0, 0).unwrap().rip, A + 2, "not taken");
    // jl rel32 (0f 8c): SF != OF
    let jl = analyze(&[0x0f, 0x8c, 0x00, 0x02, 0x00, 0x00], A).unwrap();
    assert_eq!(emulate(&jl, rflags::SF, 0).unwrap().rip, A + 6 + 0x200);
    assert_eq!(emulate(&jl, rflags::SF | rflags::OF, 0).unwrap().rip, A + 6);
    // loop rel8 -2: decrements rcx
    let lp = analyze(&[0xe2, 0xfe], A).unwrap();
    assert_eq!(
        emulate(&lp, 0, 2),
        Some(Emulated {
            rip: A,
            push: None,
            rcx: Some(1)
        })
    );
    assert_eq!(
        emulate(&lp, 0, 1),
        Some(Emulated {
            rip: A + 2,
            push: None,
            rcx: Some(0)
        })
    );
    // jrcxz
    let jr = analyze(&[0xe3, 0x05], A).unwrap();
    assert_eq!(emulate(&jr, 0, 0).unwrap().rip, A + 7);
    assert_eq!(emulate(&jr, 0, 1).unwrap().rip, A + 2);
}

#[test]
fn all_conditions() {
    use rflags::*;
    let cases: &[(Cond, u64, bool)] = &[
        (Cond::O, OF, true),
        (Cond::No, OF, false),
        (Cond::B, CF, true),
        (Cond::Ae, CF, false),
        (Cond::Be, ZF, true),
        (Cond::A, 0, true),
        (Cond::A, CF, false),
        (Cond::S, SF, true),
        (Cond::Ns, SF, false),
        (Cond::P, PF, true),
        (Cond::Np, PF, false),
        (Cond::Ge, SF | OF, true),
        (Cond::Le, ZF, true),
        (Cond::G, 0, true),
        (Cond::G, ZF, false),
        (Cond::L, OF, true),
    ];
    for &(c, f, want) in cases {
        assert_eq!(c.holds(f), want, "{c:?} with flags {f:#x}");
    }
}

#[test]
fn indirect_branches_step_without_boost() {
    // call rax; jmp rax; call [rip+0x10]
    assert_eq!(step(&[0xff, 0xd0]).fixup, StepFixup::IndirectCall);
    assert!(!step(&[0xff, 0xd0]).boostable);
    assert_eq!(step(&[0xff, 0xe0]).fixup, StepFixup::IndirectJump);
    let s = step(&[0xff, 0x15, 0x10, 0, 0, 0]);
    assert_eq!(
        (s.fixup, s.rip_disp_offset),
        (StepFixup::IndirectCall, Some(2))
    );
    assert_eq!(s.resume_rip(A, 6, 0x9000, 0x4242), Some(0x4242));
}

#[test]
fn rep_string_repeats_and_resumes() {
    let s = step(&[0xf3, 0xa4]); // rep movsb
    assert!(s.repeats);
    assert_eq!(s.resume_rip(A, 2, 0x9000, 0x9000), None, "still iterating");
    assert_eq!(s.resume_rip(A, 2, 0x9000, 0x9002), Some(A + 2));
}

#[test]
fn refusals_name_the_instruction_and_reason() {
    let cases: &[(&[u8], &str)] = &[
        (&[0xc3], "ret"),
        (&[0xc2, 0x08, 0x00], "ret"),
        (&[0x48, 0xcf], "iretq"),
        (&[0x9c], "pushfq"),
        (&[0x9d], "popfq"),
        (&[0xfa], "cli"),
        (&[0xfb], "sti"),
        (&[0xcc], "int3"),
        (&[0xcd, 0x80], "int"),
        (&[0xf4], "hlt"),
        (&[0x0f, 0x05], "syscall"),
        (&[0x0f, 0x0b], "ud2"),
        (&[0x8e, 0xd0], "mov ss"),
        (&[0xff, 0x1c, 0x24], "call far"),
    ];
    for (bytes, name) in cases {
        match analyze(bytes, A) {
            Err(Refusal::Instruction { mnemonic, why, .. }) => {
                assert_eq!(mnemonic, *name, "{bytes:02x?}");
                assert!(!why.is_empty());
            }
            other => panic!("{bytes:02x?}: expected a refusal, got {other:?}"),
        }
    }
    let msg = format!("{}", analyze(&[0x9d], A).unwrap_err());
    assert_eq!(msg, "the instruction at 0x200000 (popfq) cannot be probed: it reads or writes RFLAGS.TF/IF, which the engine owns while stepping");
    assert_eq!(analyze(&[0x0f], A), Err(Refusal::Undecodable { addr: A }));
    assert_eq!(analyze(&[], A), Err(Refusal::Undecodable { addr: A }));
}

#[test]
fn boundaries_by_decoding_from_the_start() {
    // push rbp (1); mov rbp,rsp (3); mov eax,[rip+0] (6); pop rbp (1); ret (1)
    let code = [0x55, 0x48, 0x89, 0xe5, 0x8b, 0x05, 0, 0, 0, 0, 0x5d, 0xc3];
    for ok in [A, A + 1, A + 4, A + 10, A + 11] {
        assert_eq!(check_boundary(&code, A, ok), Ok(()), "{ok:#x}");
    }
    assert_eq!(
        check_boundary(&code, A, A + 2),
        Err(Refusal::MidInstruction {
            addr: A + 2,
            insn_start: A + 1,
            insn_len: 3
        })
    );
    assert_eq!(
        check_boundary(&code, A, A + 7),
        Err(Refusal::MidInstruction {
            addr: A + 7,
            insn_start: A + 4,
            insn_len: 6
        })
    );
    assert_eq!(
        check_boundary(&code, A, A + 12),
        Err(Refusal::PastFunctionEnd {
            addr: A + 12,
            func_end: A + 12
        })
    );
    let msg = format!("{}", check_boundary(&code, A, A + 2).unwrap_err());
    assert_eq!(msg, "0x200002 is not on an instruction boundary: it is inside the 3-byte instruction at 0x200001");
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: every 3-byte prefix of a pseudo-random
    // stream, analysed and slotted.
    let mut x: u64 = 0x1234_5678_9abc_def0;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&bytes);
        buf[8..].copy_from_slice(&bytes);
        if let Ok(insn) = analyze(&buf, A) {
            assert!(insn.len as usize <= MAX_INSN_LEN);
            if insn.needs_slot() {
                let _ = build_slot(&insn, 0x80_0000);
            } else {
                assert!(emulate(&insn, 0, 0).is_some());
            }
        }
        let _ = check_boundary(&buf, A, A + (x % 16));
    }
}
