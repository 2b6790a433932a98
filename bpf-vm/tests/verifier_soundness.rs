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

use bpf_vm::insn::{
    AluOp, AtomicOp, ByteOrder, Insn, JmpCond, LdImm64Src, Operand, Program, Size, Width,
};
use bpf_vm::interp::{HelperError, HelperMem, Helpers, Vm};
use bpf_vm::verifier::linux::{self, helper, map_type};
use bpf_vm::verifier::{
    verify, verify_bytes, ArgKind, Config, Env, HelperProto, HelperTable, MapDef, RetKind,
};
use bpf_vm::Executable;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use std::cell::Cell;

const CTX_LEN: usize = 168;
const ARRAY_ENTRIES: usize = 16;
const VALUE_SIZE: usize = 64;
const HANDLE_BASE: u64 = 0xdead_0000;

fn maps() -> Vec<MapDef> {
    vec![
        MapDef {
            fd: 0,
            map_type: map_type::HASH,
            key_size: 4,
            value_size: 8,
            max_entries: 64,
        },
        MapDef {
            fd: 1,
            map_type: map_type::ARRAY,
            key_size: 4,
            value_size: VALUE_SIZE as u32,
            max_entries: ARRAY_ENTRIES as u32,
        },
        MapDef {
            fd: 2,
            map_type: map_type::RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: 4096,
        },
        // For the helpers that want these types (perf output, stack ids).
        MapDef {
            fd: 3,
            map_type: map_type::PERF_EVENT_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
        },
        MapDef {
            fd: 4,
            map_type: map_type::STACK_TRACE,
            key_size: 4,
            value_size: 8 * 16,
            max_entries: 64,
        },
    ]
}

/// Cases of a fuzz run: `VERIFIER_FUZZ_CASES` or `default`.
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("VERIFIER_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One generated item; jumps are resolved to item boundaries later.
#[derive(Clone, Debug)]
enum Gen {
    Plain(Vec<Insn>),
    /// Forward conditional jump over up to `.4` items.
    Jmp(Width, JmpCond, u8, Operand, u8),
    /// `r7 = 0; body; r7 += 1; if r7 < bound goto body`.
    Loop(Vec<Insn>, i32, bool),
    /// Argument setup, a bpf-to-bpf call of the generated function, then
    /// re-initialisation of r1..r5.
    CallF(Vec<Insn>, Vec<Insn>),
}

fn alu_op() -> impl Strategy<Value = AluOp> {
    prop::sample::select(vec![
        AluOp::Add,
        AluOp::Sub,
        AluOp::Mul,
        AluOp::Div,
        AluOp::SDiv,
        AluOp::Or,
        AluOp::And,
        AluOp::Lsh,
        AluOp::Rsh,
        AluOp::Mod,
        AluOp::SMod,
        AluOp::Xor,
        AluOp::Mov,
        AluOp::Arsh,
    ])
}

fn cond() -> impl Strategy<Value = JmpCond> {
    prop::sample::select(vec![
        JmpCond::Eq,
        JmpCond::Gt,
        JmpCond::Ge,
        JmpCond::Set,
        JmpCond::Ne,
        JmpCond::Sgt,
        JmpCond::Sge,
        JmpCond::Lt,
        JmpCond::Le,
        JmpCond::Slt,
        JmpCond::Sle,
    ])
}

fn width() -> impl Strategy<Value = Width> {
    prop_oneof![3 => Just(Width::W64), 1 => Just(Width::W32)]
}

fn size() -> impl Strategy<Value = Size> {
    prop::sample::select(vec![Size::B, Size::H, Size::W, Size::DW])
}

fn imm() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => -2i32..80,
        1 => Just(63),
        1 => Just(64),
        1 => Just(-1),
        1 => any::<i32>(),
        1 => Just(i32::MIN),
    ]
}

/// Scratch registers r0..r7.
fn scratch() -> impl Strategy<Value = u8> {
    0u8..8
}

/// Any register, biased towards scratch ones.
fn any_reg() -> impl Strategy<Value = u8> {
    prop_oneof![6 => 0u8..8, 1 => Just(8u8), 1 => Just(9u8), 1 => Just(10u8)]
}

fn operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        any_reg().prop_map(Operand::Reg),
        imm().prop_map(Operand::Imm)
    ]
}

/// A base register and an offset that is usually near a valid one for it.
fn base_off() -> impl Strategy<Value = (u8, i16)> {
    prop_oneof![
        3 => (-72i16..=8).prop_map(|o| (10u8, o)),
        3 => (-8i16..=72).prop_map(|o| (8u8, o)),
        2 => (-8i16..=176).prop_map(|o| (9u8, o)),
        1 => (scratch(), -16i16..=72),
    ]
}

fn alu_insn() -> impl Strategy<Value = Insn> {
    prop_oneof![
        8 => (width(), alu_op(), prop_oneof![9 => scratch(), 1 => Just(8u8)], operand())
            .prop_map(|(width, op, dst, src)| Insn::Alu { width, op, dst, src }),
        1 => (width(), scratch()).prop_map(|(width, dst)| Insn::Neg { width, dst }),
        1 => (prop::sample::select(vec![8u8, 16, 32]), scratch(), scratch()).prop_map(|(bits, dst, src)| {
            Insn::MovSx { width: Width::W64, bits, dst, src }
        }),
        1 => (prop::sample::select(vec![ByteOrder::Le, ByteOrder::Be, ByteOrder::Swap]),
              prop::sample::select(vec![16u8, 32, 64]), scratch())
            .prop_map(|(order, bits, dst)| Insn::Endian { order, bits, dst }),
        // Copy a pointer into a scratch register.
        3 => (scratch(), prop::sample::select(vec![8u8, 9, 10])).prop_map(|(dst, base)| {
            Insn::Alu { width: Width::W64, op: AluOp::Mov, dst, src: Operand::Reg(base) }
        }),
    ]
}

fn mem_insn() -> impl Strategy<Value = Vec<Insn>> {
    prop_oneof![
        4 => (size(), scratch(), base_off()).prop_map(|(size, dst, (src, off))| vec![Insn::Load { size, dst, src, off }]),
        1 => (prop::sample::select(vec![Size::B, Size::H, Size::W]), scratch(), base_off())
            .prop_map(|(size, dst, (src, off))| vec![Insn::LoadSx { size, dst, src, off }]),
        3 => (size(), base_off(), any_reg()).prop_map(|(size, (dst, off), src)| vec![Insn::Store { size, dst, off, src }]),
        2 => (size(), base_off(), imm()).prop_map(|(size, (dst, off), imm)| vec![Insn::StoreImm { size, dst, off, imm }]),
        1 => (prop::sample::select(vec![Size::W, Size::DW]), base_off(), scratch(), any::<bool>())
            .prop_map(|(size, (dst, off), src, fetch)| vec![Insn::Atomic { size, op: AtomicOp::Add, fetch, dst, off, src }]),
        // A derived pointer and a bounds-checked variable offset are built
        // from separate items (mov/add/jmp), see `item`.
    ]
}

/// A well-formed call of every helper a kprobe program may use (with every
/// map of a type it takes), built from the helper table.
fn calls_from_the_table() -> Vec<Vec<Insn>> {
    let table = linux::helpers();
    let maps = maps();
    let mut calls = Vec::new();
    for &id in &linux::kprobe().allowed_helpers {
        let proto = table.get(id).expect("allowed helpers are in the table");
        if proto.args.contains(&ArgKind::ConstMapPtr) {
            for m in maps
                .iter()
                .filter(|m| proto.map_types.is_empty() || proto.map_types.contains(&m.map_type))
            {
                calls.push(call_from_prototype(&table, proto, Some(m)));
            }
        } else {
            calls.push(call_from_prototype(&table, proto, None));
        }
    }
    calls
}

fn helper_call() -> impl Strategy<Value = Vec<Insn>> {
    prop_oneof![
        1 => helper_call_raw(),
        2 => prop::sample::select(vec![5i32, 8, 14]).prop_map(|id| vec![Insn::Call { id }]),
        1 => prop::sample::select(calls_from_the_table()),
    ]
    .prop_flat_map(|call| {
        // Usually re-initialise the clobbered argument registers, as
        // compiled code does before using them again.
        (
            Just(call),
            prop::collection::vec(imm(), 5),
            prop::bool::weighted(0.8),
        )
    })
    .prop_map(|(mut call, vals, reinit)| {
        if reinit {
            for (r, v) in vals.into_iter().enumerate() {
                call.push(Insn::Alu {
                    width: Width::W64,
                    op: AluOp::Mov,
                    dst: r as u8 + 1,
                    src: Operand::Imm(v),
                });
            }
        }
        call
    })
}

fn helper_call_raw() -> impl Strategy<Value = Vec<Insn>> {
    let mov = |dst: u8, src: Operand| Insn::Alu {
        width: Width::W64,
        op: AluOp::Mov,
        dst,
        src,
    };
    let add = |dst: u8, imm: i32| Insn::Alu {
        width: Width::W64,
        op: AluOp::Add,
        dst,
        src: Operand::Imm(imm),
    };
    prop_oneof![
        // Array lookup with the key at fp-4 (or a random key slot).
        2 => prop_oneof![3 => Just(-4i32), 1 => -24i32..0].prop_map(move |k| vec![
            Insn::LdImm64 { dst: 1, src: LdImm64Src::MapFd(1) },
            Insn::LdImm64Tail,
            mov(2, Operand::Reg(10)),
            add(2, k),
        ].into_iter().chain([Insn::Call { id: 1 }]).collect()),
        // A ring buffer record: reserve, NULL check, store, submit/discard
        // (sometimes without the check or the release).
        2 => (1u64..5, -4i16..40, prop::sample::select(vec![Size::B, Size::W, Size::DW]), 0u8..8,
              prop::bool::weighted(0.9), prop::bool::weighted(0.9), prop::sample::select(vec![132i32, 133]))
            .prop_map(move |(size8, off, sz, src, check, release, rel)| {
                let mut v = vec![
                    Insn::LdImm64 { dst: 1, src: LdImm64Src::MapFd(2) },
                    Insn::LdImm64Tail,
                    mov(2, Operand::Imm(8 * size8 as i32)),
                    mov(3, Operand::Imm(0)),
                    Insn::Call { id: 131 },
                ];
                let tail = vec![
                    Insn::Store { size: sz, dst: 0, off, src },
                    mov(1, Operand::Reg(0)),
                    mov(2, Operand::Imm(0)),
                    Insn::Call { id: rel },
                ];
                let tail: Vec<Insn> = if release { tail } else { tail[..1].to_vec() };
                if check {
                    v.push(Insn::Jmp { width: Width::W64, cond: JmpCond::Eq, dst: 0, src: Operand::Imm(0), off: tail.len() as i16 });
                }
                v.extend(tail);
                v
            }),
        // probe_read_kernel(fp + off, size, ctx)
        2 => (-72i32..0, prop_oneof![Just(Operand::Imm(8)), (0i32..80).prop_map(Operand::Imm), scratch().prop_map(Operand::Reg)])
            .prop_map(move |(off, size)| vec![
                mov(1, Operand::Reg(10)),
                add(1, off),
                mov(2, size),
                mov(3, Operand::Reg(9)),
                Insn::Call { id: 113 },
            ]),
    ]
}

/// `if idx > bound goto skip; p = base + idx; access [p + off]`: the
/// bounds check the verifier must track, with bounds and offsets that are
/// sometimes too large.
fn guarded_access() -> impl Strategy<Value = Vec<Insn>> {
    (
        scratch(),
        scratch(),
        prop::sample::select(vec![JmpCond::Gt, JmpCond::Ge, JmpCond::Sgt]),
        width(),
        0i32..72,
        prop_oneof![Just(8u8), Just(10u8)],
        size(),
        -8i16..16,
        any::<bool>(),
    )
        .prop_map(|(idx, p, cond, w, bound, base, size, off, store)| {
            let p = if p == idx { (p + 1) % 8 } else { p };
            let base_off = if base == 10 { -72 } else { 0 };
            let access = if store {
                Insn::StoreImm {
                    size,
                    dst: p,
                    off,
                    imm: 7,
                }
            } else {
                Insn::Load {
                    size,
                    dst: idx,
                    src: p,
                    off,
                }
            };
            vec![
                Insn::Jmp {
                    width: w,
                    cond,
                    dst: idx,
                    src: Operand::Imm(bound),
                    off: 4,
                },
                Insn::Alu {
                    width: Width::W64,
                    op: AluOp::Mov,
                    dst: p,
                    src: Operand::Reg(base),
                },
                Insn::Alu {
                    width: Width::W64,
                    op: AluOp::Add,
                    dst: p,
                    src: Operand::Imm(base_off),
                },
                Insn::Alu {
                    width: Width::W64,
                    op: AluOp::Add,
                    dst: p,
                    src: Operand::Reg(idx),
                },
                access,
            ]
        })
}

fn item() -> impl Strategy<Value = Gen> {
    prop_oneof![
        8 => alu_insn().prop_map(|i| Gen::Plain(vec![i])),
        3 => (scratch(), prop::sample::select(vec![8u8, 9, 10]), scratch()).prop_map(|(dst, base, idx)| {
            Gen::Plain(vec![
                Insn::Alu { width: Width::W64, op: AluOp::Mov, dst, src: Operand::Reg(base) },
                Insn::Alu { width: Width::W64, op: AluOp::Add, dst, src: Operand::Reg(idx) },
            ])
        }),
        6 => mem_insn().prop_map(Gen::Plain),
        5 => (width(), cond(), prop_oneof![12 => scratch(), 1 => any_reg()], prop_oneof![
            3 => scratch().prop_map(Operand::Reg),
            3 => imm().prop_map(Operand::Imm),
            1 => any_reg().prop_map(Operand::Reg),
        ], 0u8..6).prop_map(|(w, c, d, s, k)| Gen::Jmp(w, c, d, s, k)),
        4 => guarded_access().prop_map(Gen::Plain),
        2 => helper_call().prop_map(Gen::Plain),
        1 => (prop::collection::vec(alu_insn(), 1..4), prop_oneof![1..70i32, Just(1000)], any::<bool>())
            .prop_map(|(body, bound, w32)| Gen::Loop(body, bound, w32)),
    ]
}

/// Lays out prologue, items and epilogue.
fn build(
    inits: &[Option<i32>],
    zero_stack: bool,
    items: &[Gen],
    ret: Option<i32>,
    callee: Option<&(Vec<Gen>, Option<i32>)>,
) -> Vec<Insn> {
    let mov = |dst: u8, src: Operand| Insn::Alu {
        width: Width::W64,
        op: AluOp::Mov,
        dst,
        src,
    };
    let add = |dst: u8, imm: i32| Insn::Alu {
        width: Width::W64,
        op: AluOp::Add,
        dst,
        src: Operand::Imm(imm),
    };
    let mut out = vec![
        mov(9, Operand::Reg(1)),
        // probe_read_kernel(fp-16, 8, ctx): tells the oracle where the stack is.
        mov(1, Operand::Reg(10)),
        add(1, -16),
        mov(2, Operand::Imm(8)),
        mov(3, Operand::Reg(9)),
        Insn::Call { id: 113 },
        Insn::StoreImm {
            size: Size::W,
            dst: 10,
            off: -4,
            imm: 0,
        },
        Insn::LdImm64 {
            dst: 1,
            src: LdImm64Src::MapFd(1),
        },
        Insn::LdImm64Tail,
        mov(2, Operand::Reg(10)),
        add(2, -4),
        Insn::Call { id: 1 },
        Insn::Jmp {
            width: Width::W64,
            cond: JmpCond::Ne,
            dst: 0,
            src: Operand::Imm(0),
            off: 2,
        },
        mov(0, Operand::Imm(0)),
        Insn::Exit,
        mov(8, Operand::Reg(0)),
    ];
    if zero_stack {
        for k in 3..=9 {
            out.push(Insn::StoreImm {
                size: Size::DW,
                dst: 10,
                off: -8 * k,
                imm: 0,
            });
        }
    }
    for (r, v) in inits.iter().enumerate() {
        if let Some(v) = v {
            out.push(mov(r as u8, Operand::Imm(*v)));
        }
    }
    let mut calls = Vec::new();
    lay_out(&mut out, items, &mut calls);
    if let Some(v) = ret {
        out.push(mov(0, Operand::Imm(v)));
    }
    out.push(Insn::Exit);
    if let Some((body, ret)) = callee {
        let f = out.len();
        // The function sets its scratch registers first, as compiled code does.
        for r in [0u8, 3, 4, 5] {
            out.push(mov(r, Operand::Imm(0)));
        }
        let mut inner = Vec::new();
        lay_out(&mut out, body, &mut inner);
        if let Some(v) = ret {
            out.push(mov(0, Operand::Imm(*v)));
        }
        out.push(Insn::Exit);
        for c in calls {
            out[c] = Insn::CallLocal {
                off: f as i32 - c as i32 - 1,
            };
        }
    }
    out
}

/// Appends `items` to `out`, resolving forward jumps to item starts (or the
/// end of the items); records where local calls are, for patching.
fn lay_out(out: &mut Vec<Insn>, items: &[Gen], calls: &mut Vec<usize>) {
    let mov = |dst: u8, src: Operand| Insn::Alu {
        width: Width::W64,
        op: AluOp::Mov,
        dst,
        src,
    };
    let add = |dst: u8, imm: i32| Insn::Alu {
        width: Width::W64,
        op: AluOp::Add,
        dst,
        src: Operand::Imm(imm),
    };
    // Slot where each item starts; the epilogue starts at the end.
    let mut starts = Vec::with_capacity(items.len() + 1);
    let mut pos = out.len();
    for it in items {
        starts.push(pos);
        pos += match it {
            Gen::Plain(v) => v.len(),
            Gen::Jmp(..) => 1,
            Gen::Loop(body, ..) => body.len() + 3,
            Gen::CallF(setup, after) => setup.len() + 1 + after.len(),
        };
    }
    starts.push(pos);
    for (i, it) in items.iter().enumerate() {
        match it {
            Gen::Plain(v) => out.extend_from_slice(v),
            Gen::CallF(setup, after) => {
                out.extend_from_slice(setup);
                calls.push(out.len());
                // Patched to the function's start once it is laid out.
                out.push(Insn::CallLocal { off: 0 });
                out.extend_from_slice(after);
            }
            Gen::Jmp(width, cond, dst, src, skip) => {
                let t = starts[(i + 1 + *skip as usize).min(items.len())];
                let off = (t - out.len() - 1) as i16;
                out.push(Insn::Jmp {
                    width: *width,
                    cond: *cond,
                    dst: *dst,
                    src: *src,
                    off,
                });
            }
            Gen::Loop(body, bound, w32) => {
                out.push(mov(7, Operand::Imm(0)));
                let top = out.len();
                // The body must not touch the counter.
                for b in body {
                    let mut b = *b;
                    if let Insn::Alu { dst, .. }
                    | Insn::Neg { dst, .. }
                    | Insn::MovSx { dst, .. }
                    | Insn::Endian { dst, .. } = &mut b
                    {
                        if *dst == 7 {
                            *dst = 6;
                        }
                    }
                    out.push(b);
                }
                out.push(add(7, 1));
                let off = top as i64 - out.len() as i64 - 1;
                let width = if *w32 { Width::W32 } else { Width::W64 };
                out.push(Insn::Jmp {
                    width,
                    cond: JmpCond::Lt,
                    dst: 7,
                    src: Operand::Imm(*bound),
                    off: off as i16,
                });
            }
        }
    }
}

fn program() -> impl Strategy<Value = Vec<Insn>> {
    (
        prop::collection::vec(prop_oneof![40 => imm().prop_map(Some), 1 => Just(None)], 8),
        any::<bool>(),
        prop::collection::vec(item(), 1..28),
        prop_oneof![3 => imm().prop_map(Some), 1 => Just(None)],
        prop::option::weighted(
            0.3,
            (
                prop::collection::vec(callee_item(), 1..10),
                prop_oneof![4 => imm().prop_map(Some), 1 => Just(None)],
            ),
        ),
        prop::collection::vec(call_site(), 0..3),
    )
        .prop_map(|(inits, zero, mut items, ret, callee, sites)| {
            if callee.is_some() {
                // Insert the call sites at spread positions.
                for (k, site) in sites.into_iter().enumerate() {
                    let at = (k * 7) % (items.len() + 1);
                    items.insert(at, site);
                }
            }
            build(&inits, zero, &items, ret, callee.as_ref())
        })
}

/// Arguments for the generated function: a pointer into the caller's
/// stack and the map value, or plain numbers.
fn call_site() -> impl Strategy<Value = Gen> {
    let mov = |dst: u8, src: Operand| Insn::Alu {
        width: Width::W64,
        op: AluOp::Mov,
        dst,
        src,
    };
    let add = |dst: u8, imm: i32| Insn::Alu {
        width: Width::W64,
        op: AluOp::Add,
        dst,
        src: Operand::Imm(imm),
    };
    (
        prop_oneof![3 => (1i32..10).prop_map(|k| -8 * k), 1 => -80i32..0],
        prop::bool::weighted(0.8),
        prop::collection::vec(imm(), 5),
    )
        .prop_map(move |(k, ptrs, vals)| {
            let setup = if ptrs {
                vec![mov(1, Operand::Reg(10)), add(1, k), mov(2, Operand::Reg(8))]
            } else {
                vec![mov(1, Operand::Imm(k)), mov(2, Operand::Imm(k))]
            };
            let after = vals
                .into_iter()
                .enumerate()
                .map(|(r, v)| mov(r as u8 + 1, Operand::Imm(v)))
                .collect();
            Gen::CallF(setup, after)
        })
}

/// Items of the generated function: r1 may point into the caller's stack,
/// r2 at the map value; r6..r9 are not set.
fn callee_item() -> impl Strategy<Value = Gen> {
    // Scratch registers of the function; r1/r2 are mostly left as the
    // pointers they arrived as.
    let data = || prop::sample::select(vec![0u8, 3, 4, 5]);
    let any = || prop_oneof![8 => prop::sample::select(vec![0u8, 3, 4, 5]), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(10u8)];
    let mem = || {
        prop_oneof![
            (-16i16..16).prop_map(|o| (1u8, o)),
            (-8i16..72).prop_map(|o| (2u8, o)),
            (-72i16..8).prop_map(|o| (10u8, o)),
        ]
    };
    prop_oneof![
        4 => (width(), alu_op(), data(), prop_oneof![data().prop_map(Operand::Reg), imm().prop_map(Operand::Imm)])
            .prop_map(|(width, op, dst, src)| Gen::Plain(vec![Insn::Alu { width, op, dst, src }])),
        1 => (alu_op(), prop::sample::select(vec![1u8, 2]), operand())
            .prop_map(|(op, dst, src)| Gen::Plain(vec![Insn::Alu { width: Width::W64, op, dst, src }])),
        3 => (size(), data(), mem())
            .prop_map(|(size, dst, (src, off))| Gen::Plain(vec![Insn::Load { size, dst, src, off }])),
        3 => (size(), mem(), any())
            .prop_map(|(size, (dst, off), src)| Gen::Plain(vec![Insn::Store { size, dst, off, src }])),
        2 => (width(), cond(), data(), prop_oneof![data().prop_map(Operand::Reg), imm().prop_map(Operand::Imm)], 0u8..4)
            .prop_map(|(w, c, d, s, k)| Gen::Jmp(w, c, d, s, k)),
        1 => prop::sample::select(vec![1u8, 2, 10]).prop_map(|r| Gen::Plain(vec![Insn::Alu { width: Width::W64, op: AluOp::Mov, dst: 0, src: Operand::Reg(r) }])),
    ]
}

/// The helper stand-in of the oracle run, derived from the platform's
/// helper table (`linux::helpers()`, the one the verifier checks calls
/// against): every helper the verifier accepts is modelled here from its
/// prototype. Each argument is checked as its kind promises the helper
/// may use it (memory read or written at the promised size, the context,
/// a map of an allowed type, a live ring buffer record), and the return
/// value is what the return kind allows (a scalar, a map value or NULL, a
/// fresh record or NULL). What a helper copies out of the program (map
/// updates, ring buffer output, scalar arguments) is kept, so a pointer
/// that leaks through a helper is caught like one stored in a map.
struct Oracle<'t> {
    table: &'t HelperTable,
    maps: &'t [MapDef],
    ctx: u64,
    array: *mut u8,
    seed: u64,
    /// r10 of frame 0, learned from the prologue's probe_read_kernel.
    fp: Cell<u64>,
    /// Ring buffer records handed out: bytes, and whether still reserved.
    records: Vec<(Vec<u8>, bool)>,
    /// Values of the hash map handed out by lookups or stored by updates,
    /// and bytes sent out (ring buffer / perf output).
    copies: Vec<Vec<u8>>,
    /// Arguments the prototype says are scalars (`Anything`).
    scalars: Vec<(u32, usize, u64)>,
}

impl Oracle<'_> {
    fn map(&self, handle: u64) -> Option<&MapDef> {
        let fd = handle.checked_sub(HANDLE_BASE)?;
        self.maps.iter().find(|m| m.fd as u64 == fd)
    }
}

impl Helpers for Oracle<'_> {
    fn call(
        &mut self,
        id: u32,
        args: [u64; 5],
        mem: &mut HelperMem<'_>,
    ) -> Result<u64, HelperError> {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let proto = i32::try_from(id)
            .ok()
            .and_then(|id| self.table.get(id))
            .ok_or(HelperError::Unknown(id))?;
        let mut map: Option<MapDef> = None;
        let mut key = Vec::new();
        let mut value = None;
        let mut data = None;
        let mut alloc_size = 0;
        for (i, kind) in proto.args.iter().enumerate() {
            let arg = args[i];
            // A memory argument's size is the next argument.
            let size = args.get(i + 1).copied().unwrap_or(0);
            match kind {
                ArgKind::ConstMapPtr => {
                    let m = self
                        .map(arg)
                        .ok_or(HelperError::Failed("map argument is not a map"))?;
                    if !proto.map_types.is_empty() && !proto.map_types.contains(&m.map_type) {
                        return Err(HelperError::Failed("map of a type the helper refuses"));
                    }
                    map = Some(*m);
                }
                ArgKind::PtrToMapKey | ArgKind::PtrToMapValue => {
                    let m = map
                        .as_ref()
                        .ok_or(HelperError::Failed("key or value without a map"))?;
                    if *kind == ArgKind::PtrToMapKey {
                        key = mem.read(arg, m.key_size as usize)?.to_vec();
                    } else {
                        value = Some(mem.read(arg, m.value_size as usize)?.to_vec());
                    }
                }
                ArgKind::PtrToMem => data = Some(mem.read(arg, size as usize)?.to_vec()),
                ArgKind::PtrToUninitMem => {
                    if id == helper::PROBE_READ_KERNEL as u32 && self.fp.get() == 0 {
                        self.fp.set(arg + 16);
                    }
                    let fill = vec![0x5a; size as usize];
                    mem.write(arg, &fill)?;
                }
                ArgKind::PtrToCtx => {
                    if arg != self.ctx {
                        return Err(HelperError::Failed("context argument is not the context"));
                    }
                }
                ArgKind::PtrToAllocMem => {
                    let Some(r) = self
                        .records
                        .iter_mut()
                        .find(|(b, _)| b.as_ptr() as u64 == arg)
                    else {
                        return Err(HelperError::Failed(
                            "submit of something that is not a record",
                        ));
                    };
                    if !r.1 {
                        return Err(HelperError::Failed("record submitted twice"));
                    }
                    r.1 = false;
                }
                ArgKind::ConstAllocSize => alloc_size = arg,
                ArgKind::Anything => self.scalars.push((id, i + 1, arg)),
                ArgKind::ScalarOrUninit
                | ArgKind::UnsafePtr
                | ArgKind::ConstSize
                | ArgKind::ConstSizeOrZero => {}
            }
        }
        let scalar = self.seed >> 3;
        match proto.ret {
            RetKind::MapValueOrNull => {
                let m = map.ok_or(HelperError::Failed("lookup without a map"))?;
                let idx = u32::from_le_bytes(key[..4].try_into().unwrap()) as usize;
                if m.map_type != map_type::ARRAY {
                    // A hash map: found or not, at random.
                    if self.seed >> 63 == 0 {
                        return Ok(0);
                    }
                    self.copies.push(vec![0; m.value_size as usize]);
                    let v = self.copies.last_mut().unwrap();
                    let addr = v.as_mut_ptr() as u64;
                    // SAFETY: the value's heap buffer lives until the oracle
                    // is dropped, after the run, and does not move (growing
                    // `copies` moves the vectors, not their buffers).
                    unsafe { mem.allow(addr, m.value_size as u64, true) };
                    return Ok(addr);
                }
                if idx >= ARRAY_ENTRIES {
                    return Ok(0);
                }
                let addr = self.array as u64 + (idx * VALUE_SIZE) as u64;
                // SAFETY: the array buffer outlives the run and is only
                // touched through guest accesses while the program runs.
                unsafe { mem.allow(addr, VALUE_SIZE as u64, true) };
                Ok(addr)
            }
            RetKind::AllocMemOrNull => {
                if self.seed >> 62 == 0 {
                    return Ok(0); // ring buffer full
                }
                let mut rec = vec![0u8; alloc_size as usize];
                let addr = rec.as_mut_ptr() as u64;
                // SAFETY: the record's heap buffer lives (and does not move)
                // until the oracle is dropped, after the run.
                unsafe { mem.allow(addr, alloc_size, true) };
                self.records.push((rec, true));
                Ok(addr)
            }
            RetKind::Integer | RetKind::Void => {
                // What the helper takes out of the program: an update's
                // value lands in the map, output leaves with its bytes.
                match (map, value) {
                    (Some(m), Some(v)) if m.map_type == map_type::ARRAY => {
                        let idx = u32::from_le_bytes(key[..4].try_into().unwrap()) as usize;
                        if idx < ARRAY_ENTRIES {
                            // SAFETY: in bounds of the array buffer, which
                            // no guest access touches during a helper call.
                            unsafe {
                                core::ptr::copy_nonoverlapping(
                                    v.as_ptr(),
                                    self.array.add(idx * VALUE_SIZE),
                                    VALUE_SIZE,
                                )
                            };
                        }
                    }
                    (_, Some(v)) => self.copies.push(v),
                    _ => {}
                }
                if let Some(d) = data {
                    self.copies.push(d);
                }
                Ok(scalar)
            }
        }
    }
}

/// Runs an accepted program several times; returns a description of the
/// first soundness violation.
fn oracle(insns: &[Insn], seed: u64) -> Result<(), String> {
    let prog = Program::from_insns(insns.to_vec()).map_err(|e| format!("bad layout: {e}"))?;
    let exe = Executable::with_resolver(&prog, |src| match src {
        LdImm64Src::MapFd(fd) => u64::try_from(fd).ok().map(|fd| HANDLE_BASE + fd),
        _ => None,
    })
    .map_err(|e| format!("prepare: {e}"))?;
    let mut vm = Vm::new();
    let mut array = vec![0u8; ARRAY_ENTRIES * VALUE_SIZE];
    let table = linux::helpers();
    let maps = maps();
    let handles = HANDLE_BASE..HANDLE_BASE + maps.len() as u64;
    for run in 0..3u64 {
        let mut ctx = [0u8; CTX_LEN];
        let mut s = seed ^ run.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for (i, b) in ctx.iter_mut().enumerate() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Mix small numbers (typical indices) with arbitrary bytes.
            *b = if run == 0 {
                (i % 7) as u8
            } else {
                (s >> 56) as u8
            };
        }
        let ctx_addr = ctx.as_ptr() as u64;
        let mut h = Oracle {
            table: &table,
            maps: &maps,
            ctx: ctx_addr,
            array: array.as_mut_ptr(),
            seed: s,
            fp: Cell::new(0),
            records: Vec::new(),
            copies: Vec::new(),
            scalars: Vec::new(),
        };
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

fn fuzz_config() -> Config<'static> {
    // Lower than the default so complexity rejections stay fast in debug builds.
    Config {
        max_insns: 20_000,
        ..Config::default()
    }
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
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = maps();
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
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
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = maps();
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
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
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = maps();
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
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
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = maps();
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
    for p in [&oob, &leak, &store, &through_helper, &as_scalar] {
        assert!(verify(p, &env, &Config::default()).is_err());
    }
}

/// Hand-built instruction slices (not from the decoder) may be malformed in
/// ways bytes cannot express: stray `ld_imm64` halves, registers above r10,
/// writes to r10. The verifier must still answer without panicking.
#[test]
fn arbitrary_insn_slices_never_panic() {
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = maps();
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
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

/// A call of `proto` with well-formed arguments built from its prototype
/// (and `map` for its map argument), then what its return kind requires
/// (a reserved record is discarded).
fn call_from_prototype(
    table: &HelperTable,
    proto: &HelperProto,
    map: Option<&MapDef>,
) -> Vec<Insn> {
    let mov = |dst: u8, src: Operand| Insn::Alu {
        width: Width::W64,
        op: AluOp::Mov,
        dst,
        src,
    };
    let fp_minus = |dst: u8, off: i32| {
        [
            mov(dst, Operand::Reg(10)),
            Insn::Alu {
                width: Width::W64,
                op: AluOp::Add,
                dst,
                src: Operand::Imm(-off),
            },
        ]
    };
    let by_args = |kind: ArgKind| {
        table
            .iter()
            .find(|p| p.args.first() == Some(&kind))
            .unwrap()
            .id
    };
    let reserve = table
        .iter()
        .find(|p| p.ret == RetKind::AllocMemOrNull)
        .unwrap();
    let ringbuf = maps()
        .into_iter()
        .find(|m| reserve.map_types.contains(&m.map_type))
        .unwrap();
    // 160 initialised bytes of stack: a key at fp-160, a value at fp-136,
    // memory at fp-64.
    let mut v: Vec<Insn> = (1..=20)
        .map(|k| Insn::StoreImm {
            size: Size::DW,
            dst: 10,
            off: -8 * k,
            imm: 0,
        })
        .collect();
    let mut tail = Vec::new();
    if proto.args.contains(&ArgKind::PtrToAllocMem) {
        v.extend([
            Insn::LdImm64 {
                dst: 1,
                src: LdImm64Src::MapFd(ringbuf.fd),
            },
            Insn::LdImm64Tail,
            mov(2, Operand::Imm(16)),
            mov(3, Operand::Imm(0)),
            Insn::Call { id: reserve.id },
        ]);
        v.push(mov(6, Operand::Reg(0)));
    }
    for (i, kind) in proto.args.iter().enumerate() {
        let r = i as u8 + 1;
        match kind {
            ArgKind::ConstMapPtr => v.extend([
                Insn::LdImm64 {
                    dst: r,
                    src: LdImm64Src::MapFd(map.expect("a map for a map argument").fd),
                },
                Insn::LdImm64Tail,
            ]),
            ArgKind::PtrToMapKey => v.extend(fp_minus(r, 160)),
            ArgKind::PtrToMapValue => v.extend(fp_minus(r, 136)),
            ArgKind::PtrToMem | ArgKind::PtrToUninitMem => v.extend(fp_minus(r, 64)),
            ArgKind::ConstSize | ArgKind::ConstSizeOrZero => v.push(mov(r, Operand::Imm(8))),
            ArgKind::ConstAllocSize => v.push(mov(r, Operand::Imm(16))),
            ArgKind::PtrToCtx | ArgKind::UnsafePtr => v.push(mov(r, Operand::Reg(9))),
            ArgKind::PtrToAllocMem => v.push(mov(r, Operand::Reg(6))),
            ArgKind::Anything | ArgKind::ScalarOrUninit => v.push(mov(r, Operand::Imm(0))),
        }
    }
    v.push(Insn::Call { id: proto.id });
    if proto.ret == RetKind::AllocMemOrNull {
        tail = vec![
            mov(1, Operand::Reg(0)),
            mov(2, Operand::Imm(0)),
            Insn::Call {
                id: by_args(ArgKind::PtrToAllocMem),
            },
        ];
    }
    if proto.args.contains(&ArgKind::PtrToAllocMem) || !tail.is_empty() {
        // The record (reserved before the call, or returned by it) may be
        // NULL: skip the rest then.
        let null = if tail.is_empty() { 6 } else { 0 };
        let at = if tail.is_empty() {
            // Before the argument set-up, right after the reserve.
            v.iter()
                .position(|i| *i == mov(6, Operand::Reg(0)))
                .unwrap()
                + 1
        } else {
            v.len()
        };
        let skip = (v.len() - at + tail.len()) as i16;
        v.insert(
            at,
            Insn::Jmp {
                width: Width::W64,
                cond: JmpCond::Eq,
                dst: null,
                src: Operand::Imm(0),
                off: skip,
            },
        );
        v.extend(tail);
    }
    v
}

/// Every helper the verifier lets a kprobe program call runs in the
/// oracle, checked against its prototype (the stand-in once knew only a
/// hand-picked few, and 100k-case runs failed on `bpf_map_delete_elem`
/// and `bpf_get_current_comm` with "unknown helper").
#[test]
fn oracle_models_every_helper_the_verifier_accepts() {
    let table = linux::helpers();
    let pt = linux::kprobe();
    let maps = maps();
    let env = Env {
        prog_type: &pt,
        helpers: &table,
        maps: &maps,
    };
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
            let call = call_from_prototype(&table, proto, map);
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
