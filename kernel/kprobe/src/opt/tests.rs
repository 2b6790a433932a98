extern crate std;
use std::vec::Vec;

use super::*;
use iced_x86::{Code, Mnemonic};

const F: u64 = 0x20_0000;
const DETOUR: u64 = 0x30_0000;
const HANDLER: u64 = 0x21_0000;

/// `kernel::bpf::testing::target` as compiled: push rbp; mov rbp, rsp;
/// mov [rbp-8], rdi; lea rax, [rbp-8]; mov rax, [rbp-8]; lea rax,
/// [rax+rax*2]; inc rax; pop rbp; ret.
const TARGET: &[u8] = &[
    0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0x7d, 0xf8, 0x48, 0x8d, 0x45, 0xf8, 0x48, 0x8b, 0x45, 0xf8,
    0x48, 0x8d, 0x04, 0x40, 0x48, 0xff, 0xc0, 0x5d, 0xc3,
];

fn no_fixup(_: u64) -> bool {
    false
}

fn decode_all(code: &[u8], ip: u64) -> Vec<iced_x86::Instruction> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

#[test]
fn a_function_start_covers_whole_instructions_up_to_five_bytes() {
    let p = plan(TARGET, F, F, &no_fixup).unwrap();
    // push rbp (1) + mov rbp, rsp (3) + mov [rbp-8], rdi (4) = 8 bytes.
    assert_eq!((p.len, p.count, p.first_len()), (8, 3, 1));
    assert_eq!(p.end(), F + 8);
    // At offset 4: mov (4) + lea (4) = 8 bytes too.
    let p = plan(TARGET, F, F + 4, &no_fixup).unwrap();
    assert_eq!((p.len, p.count), (8, 2));
}

#[test]
fn a_branch_into_the_range_refuses() {
    // push rbp; mov rbp, rsp; nop; jmp short F+1 (into the mov); ret
    let code = [0x55, 0x48, 0x89, 0xe5, 0x90, 0xeb, 0xfa, 0xc3];
    assert_eq!(
        plan(&code, F, F, &no_fixup),
        Err(NotOptimisable::BranchInto {
            from: F + 5,
            target: F + 1
        })
    );
    // A branch to the probe address itself is fine (it meets the jmp).
    let code = [0x55, 0x48, 0x89, 0xe5, 0x90, 0xeb, 0xf9, 0xc3];
    assert!(plan(&code, F, F, &no_fixup).is_ok());
    // A conditional branch behind the range, into its last byte.
    let code = [0x55, 0x48, 0x89, 0xe5, 0x90, 0x90, 0x74, 0xfc, 0xc3];
    assert_eq!(
        plan(&code, F, F, &no_fixup),
        Err(NotOptimisable::BranchInto {
            from: F + 6,
            target: F + 4
        })
    );
}

#[test]
fn an_indirect_jump_anywhere_in_the_function_refuses() {
    // push rbp; mov rbp, rsp; nop; nop; jmp rax
    let code = [0x55, 0x48, 0x89, 0xe5, 0x90, 0x90, 0xff, 0xe0];
    assert_eq!(
        plan(&code, F, F, &no_fixup),
        Err(NotOptimisable::IndirectJump { at: F + 6 })
    );
}

#[test]
fn control_flow_inside_the_range_refuses() {
    // push rbp; call rel32; ...: a return address would point into the range.
    let code = [0x55, 0xe8, 0, 0, 0, 0, 0x90, 0x90, 0xc3];
    assert_eq!(
        plan(&code, F, F, &no_fixup),
        Err(NotOptimisable::Branch { addr: F + 1 })
    );
    // push rbp; ret: the function ends inside the 5 bytes.
    let code = [0x55, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc];
    assert!(matches!(
        plan(&code, F, F, &no_fixup),
        Err(NotOptimisable::Instruction { addr, .. }) if addr == F + 1
    ));
    // Too short a function.
    let code = [0x55, 0x90, 0x90];
    assert_eq!(
        plan(&code, F, F, &no_fixup),
        Err(NotOptimisable::PastFunctionEnd { func_end: F + 3 })
    );
}

#[test]
fn an_instruction_with_a_fix_up_refuses() {
    let fixup_at_4 = |a: u64| a == F + 4;
    assert_eq!(
        plan(TARGET, F, F, &fixup_at_4),
        Err(NotOptimisable::FixUp { addr: F + 4 })
    );
}

#[test]
fn the_detour_saves_calls_restores_and_runs_the_copies() {
    let p = plan(TARGET, F, F, &no_fixup).unwrap();
    let d = build_detour(&p, DETOUR, HANDLER).unwrap();
    let save = decode_all(&d[..CONT_REDIRECT_STI], DETOUR);
    let mnemonics: Vec<Mnemonic> = save.iter().map(|i| i.mnemonic()).collect();
    // Nothing is written before rsp is below the red zone.
    assert_eq!(save[0].code(), Code::Lea_r64_m);
    assert_eq!(save[0].memory_displacement64() as i64, -128);
    // IF is cleared within the prologue bytes.
    let cli = save
        .iter()
        .position(|i| i.mnemonic() == Mnemonic::Cli)
        .unwrap();
    assert_eq!(save[cli].next_ip() - DETOUR, PROLOGUE_IF_BYTES as u64);
    // 21 words pushed: the pt_regs frame.
    assert_eq!(
        mnemonics
            .iter()
            .filter(|m| matches!(m, Mnemonic::Push | Mnemonic::Pushfq))
            .count(),
        21
    );
    for m in [Mnemonic::Call, Mnemonic::Popfq] {
        assert!(mnemonics.contains(&m), "{m:?} missing");
    }
    // xmm0-15 saved before the call and restored after it, in place.
    let call_at = save
        .iter()
        .position(|i| i.mnemonic() == Mnemonic::Call)
        .unwrap();
    let stores: Vec<_> = save[..call_at]
        .iter()
        .filter(|i| i.code() == Code::Movaps_xmmm128_xmm)
        .map(|i| (i.op1_register(), i.memory_displacement64()))
        .collect();
    let loads: Vec<_> = save[call_at..]
        .iter()
        .filter(|i| i.code() == Code::Movaps_xmm_xmmm128)
        .map(|i| (i.op0_register(), i.memory_displacement64()))
        .collect();
    assert_eq!(stores.len(), 16);
    assert_eq!(stores, loads);
    for (n, (reg, disp)) in stores.iter().enumerate() {
        assert_eq!(reg.number(), n);
        assert_eq!(*disp, 16 * n as u64);
    }
    let call = save
        .iter()
        .position(|i| i.mnemonic() == Mnemonic::Call)
        .unwrap();
    assert_eq!(save[call - 1].immediate64(), HANDLER);
    assert_eq!(save[call - 2].immediate64(), DETOUR);
    // The last instruction before the continuations: jmp [rsp-168].
    let last = save
        .iter()
        .rev()
        .find(|i| i.mnemonic() != Mnemonic::Int3)
        .unwrap();
    assert_eq!(last.mnemonic(), Mnemonic::Jmp);
    assert_eq!(last.memory_displacement64() as i64, -168);
    // Every pop matches a push (15 registers).
    assert_eq!(
        mnemonics.iter().filter(|m| **m == Mnemonic::Pop).count(),
        15
    );
    // The copies: the three instructions, (sti,) jmp back to F+8.
    for (at, sti) in [(CONT_COPY, false), (CONT_COPY_STI, true)] {
        let c = decode_all(&d[at..at + 24], DETOUR + at as u64);
        assert_eq!(
            &c[0..3].iter().map(|i| i.len()).collect::<Vec<_>>(),
            &[1, 3, 4]
        );
        let mut i = 3;
        if sti {
            assert_eq!(c[i].mnemonic(), Mnemonic::Sti);
            i += 1;
        }
        assert_eq!(c[i].mnemonic(), Mnemonic::Jmp);
        assert_eq!(c[i].near_branch_target(), F + 8);
    }
    let r = decode_all(&d[CONT_REDIRECT_STI..CONT_REDIRECT_STI + 8], 0);
    assert_eq!(r[0].mnemonic(), Mnemonic::Sti);
    assert_eq!(r[1].memory_displacement64() as i64, -176);
}

#[test]
fn rip_relative_operands_address_the_same_byte_from_the_detour() {
    // mov rax, [rip+0x100]; nop: reads F+7+0x100.
    let code = [0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00, 0x90, 0xc3];
    let p = plan(&code, F, F, &no_fixup).unwrap();
    assert_eq!(p.len, 7);
    let d = build_detour(&p, DETOUR, HANDLER).unwrap();
    let c = decode_all(&d[CONT_COPY..CONT_COPY + 7], DETOUR + CONT_COPY as u64);
    assert!(c[0].is_ip_rel_memory_operand());
    assert_eq!(c[0].ip_rel_memory_address(), F + 7 + 0x100);
    // Out of rel32 reach from a far detour.
    assert_eq!(
        build_detour(&p, 0x7000_0000_0000, HANDLER),
        Err(NotOptimisable::OutOfReach)
    );
}

#[test]
fn jmp_bytes_encode_rel32() {
    assert_eq!(jmp_bytes(F, F + 0x105), Some([0xe9, 0x00, 0x01, 0, 0]));
    assert_eq!(jmp_bytes(F, F), Some([0xe9, 0xfb, 0xff, 0xff, 0xff]));
    assert_eq!(jmp_bytes(0, 1 << 40), None);
}
