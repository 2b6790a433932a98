//! Verifier throughput on a large program: ~100k instructions made of
//! blocks of straight-line arithmetic and an if/else diamond over a context
//! field, with a bounds-checked access to a map value every 50 blocks (the
//! shape of long, unrolled probe code). About 6,000 diamonds: below the
//! 8,192 pending branches a depth-first verifier (Linux's too) allows.
//!
//! `cargo bench -p bpf-vm --bench verifier`

use bpf_vm::insn::{AluOp, Insn, JmpCond, LdImm64Src, Operand, Size, Width};
use bpf_vm::verifier::linux::{self, map_type};
use bpf_vm::verifier::{verify, Config, Env, MapDef};
use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Instant;

fn alu(op: AluOp, dst: u8, src: Operand) -> Insn {
    Insn::Alu {
        width: Width::W64,
        op,
        dst,
        src,
    }
}

/// Builds a program of about `target` slots.
pub fn big_program(target: usize) -> Vec<Insn> {
    let mut p = vec![
        alu(AluOp::Mov, 6, Operand::Reg(1)),
        Insn::StoreImm {
            size: Size::W,
            dst: 10,
            off: -4,
            imm: 0,
        },
        Insn::LdImm64 {
            dst: 1,
            src: LdImm64Src::MapFd(0),
        },
        Insn::LdImm64Tail,
        alu(AluOp::Mov, 2, Operand::Reg(10)),
        alu(AluOp::Add, 2, Operand::Imm(-4)),
        Insn::Call { id: 1 },
        Insn::Jmp {
            width: Width::W64,
            cond: JmpCond::Ne,
            dst: 0,
            src: Operand::Imm(0),
            off: 2,
        },
        alu(AluOp::Mov, 0, Operand::Imm(0)),
        Insn::Exit,
        alu(AluOp::Mov, 7, Operand::Reg(0)),
        alu(AluOp::Mov, 0, Operand::Imm(0)),
        alu(AluOp::Mov, 5, Operand::Imm(0)),
    ];
    let mut block = 0usize;
    while p.len() + 16 < target {
        let field = ((block * 8) % 168) as i16;
        // r2 = ctx field; if r2 > 100 { r0 += 1 } else { r0 += r2 }
        p.push(Insn::Load {
            size: Size::DW,
            dst: 2,
            src: 6,
            off: field,
        });
        p.push(Insn::Jmp {
            width: Width::W64,
            cond: JmpCond::Gt,
            dst: 2,
            src: Operand::Imm(100),
            off: 2,
        });
        p.push(alu(AluOp::Add, 0, Operand::Reg(2)));
        p.push(Insn::Ja {
            off: 1,
            long: false,
        });
        p.push(alu(AluOp::Add, 0, Operand::Imm(1)));
        // Straight-line work on scratch registers.
        p.push(alu(AluOp::Mov, 3, Operand::Reg(2)));
        p.push(alu(AluOp::Mul, 3, Operand::Imm(3)));
        p.push(alu(AluOp::Xor, 3, Operand::Reg(0)));
        p.push(alu(AluOp::Mov, 4, Operand::Reg(3)));
        p.push(alu(AluOp::Rsh, 4, Operand::Imm(2)));
        p.push(alu(AluOp::And, 4, Operand::Imm(0xff)));
        p.push(alu(AluOp::Add, 5, Operand::Reg(4)));
        p.push(alu(AluOp::Or, 5, Operand::Imm(1)));
        p.push(alu(AluOp::Sub, 3, Operand::Reg(5)));
        p.push(alu(AluOp::Mov, 5, Operand::Imm(0)));
        if block % 50 == 49 {
            // if r2 < 60 { *(u8 *)(r7 + r2) += 1 }
            p.push(Insn::Jmp {
                width: Width::W64,
                cond: JmpCond::Ge,
                dst: 2,
                src: Operand::Imm(60),
                off: 5,
            });
            p.push(alu(AluOp::Mov, 3, Operand::Reg(7)));
            p.push(alu(AluOp::Add, 3, Operand::Reg(2)));
            p.push(Insn::Load {
                size: Size::B,
                dst: 4,
                src: 3,
                off: 0,
            });
            p.push(alu(AluOp::Add, 4, Operand::Imm(1)));
            p.push(Insn::Store {
                size: Size::B,
                dst: 3,
                off: 0,
                src: 4,
            });
        }
        block += 1;
    }
    p.push(alu(AluOp::Mov, 0, Operand::Imm(0)));
    p.push(Insn::Exit);
    p
}

fn bench(c: &mut Criterion) {
    let prog = big_program(100_000);
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = [MapDef {
        fd: 0,
        map_type: map_type::ARRAY,
        key_size: 4,
        value_size: 64,
        max_entries: 1,
    }];
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
    let config = Config::default();
    let t = Instant::now();
    let report = verify(&prog, &env, &config).expect("the benchmark program verifies");
    println!(
        "verifier: {} slots verified in {:?}: {} insns processed, {} states stored, peak {}, {} pruned",
        prog.len(),
        t.elapsed(),
        report.stats.insns_processed,
        report.stats.states_stored,
        report.stats.peak_states,
        report.stats.states_pruned
    );
    let mut g = c.benchmark_group("verifier");
    g.sample_size(10);
    g.bench_function("verify_100k_insns_with_branches", |b| {
        b.iter(|| verify(std::hint::black_box(&prog), &env, &config).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
