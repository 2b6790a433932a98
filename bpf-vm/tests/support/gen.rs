//! The structure-aware generator of probe-shaped programs used by the
//! verifier soundness fuzzer (`verifier_soundness.rs`) and the JIT
//! differential fuzzer (`jit.rs`), and the helpers both run them with.

use bpf_vm::insn::{
    AluOp, AtomicOp, ByteOrder, Insn, JmpCond, LdImm64Src, Operand, Program, Size, Width,
};
use bpf_vm::interp::{HelperError, HelperMem, Helpers, PrepareError};
use bpf_vm::verifier::linux::{self, helper, map_type};
use bpf_vm::verifier::{
    ArgKind, Config, Env, HelperProto, HelperTable, MapDef, ProgramType, RetKind,
};
use bpf_vm::Executable;
use proptest::prelude::*;
use std::cell::Cell;

pub const CTX_LEN: usize = 168;
pub const ARRAY_ENTRIES: usize = 16;
pub const VALUE_SIZE: usize = 64;
pub const HANDLE_BASE: u64 = 0xdead_0000;

pub fn maps() -> Vec<MapDef> {
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

/// What the tests verify programs against: a kprobe program with Linux's
/// helper table and the given maps (owned, so [`VerifyEnv::env`] can lend
/// them to the verifier).
pub struct VerifyEnv {
    pub helpers: HelperTable,
    pub prog_type: ProgramType,
    pub maps: Vec<MapDef>,
}

impl VerifyEnv {
    /// A kprobe program with the fuzzers' [`maps`].
    pub fn kprobe() -> VerifyEnv {
        VerifyEnv::kprobe_with(maps())
    }

    /// A kprobe program with `maps`.
    pub fn kprobe_with(maps: Vec<MapDef>) -> VerifyEnv {
        VerifyEnv {
            helpers: linux::helpers(),
            prog_type: linux::kprobe(),
            maps,
        }
    }

    pub fn env(&self) -> Env<'_> {
        Env {
            prog_type: &self.prog_type,
            helpers: &self.helpers,
            maps: &self.maps,
        }
    }
}

/// `prog` ready to run, each map fd `n` resolved to the handle
/// `HANDLE_BASE + n` that [`Oracle`] knows the map by.
pub fn executable(prog: &Program) -> Result<Executable, PrepareError> {
    Executable::with_resolver(prog, |src| match src {
        LdImm64Src::MapFd(fd) => u64::try_from(fd).ok().map(|fd| HANDLE_BASE + fd),
        _ => None,
    })
}

/// The context of run `run` of the program drawn with `seed` (run 0 holds
/// small numbers, typical indices; later runs arbitrary bytes), and the
/// seed the run's helpers draw from.
pub fn context(seed: u64, run: u64) -> ([u8; CTX_LEN], u64) {
    let mut ctx = [0u8; CTX_LEN];
    let mut s = seed ^ run.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for (i, b) in ctx.iter_mut().enumerate() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = if run == 0 {
            (i % 7) as u8
        } else {
            (s >> 56) as u8
        };
    }
    (ctx, s)
}

/// Cases of a fuzz run: `VERIFIER_FUZZ_CASES` or `default`.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("VERIFIER_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One generated item; jumps are resolved to item boundaries later.
#[derive(Clone, Debug)]
pub enum Gen {
    Plain(Vec<Insn>),
    /// Forward conditional jump over up to `.4` items.
    Jmp(Width, JmpCond, u8, Operand, u8),
    /// `r7 = 0; body; r7 += 1; if r7 < bound goto body`.
    Loop(Vec<Insn>, i32, bool),
    /// Argument setup, a bpf-to-bpf call of the generated function, then
    /// re-initialisation of r1..r5.
    CallF(Vec<Insn>, Vec<Insn>),
}

pub fn alu_op() -> impl Strategy<Value = AluOp> {
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

pub fn cond() -> impl Strategy<Value = JmpCond> {
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

pub fn width() -> impl Strategy<Value = Width> {
    prop_oneof![3 => Just(Width::W64), 1 => Just(Width::W32)]
}

pub fn size() -> impl Strategy<Value = Size> {
    prop::sample::select(vec![Size::B, Size::H, Size::W, Size::DW])
}

pub fn imm() -> impl Strategy<Value = i32> {
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
pub fn scratch() -> impl Strategy<Value = u8> {
    0u8..8
}

/// Any register, biased towards scratch ones.
pub fn any_reg() -> impl Strategy<Value = u8> {
    prop_oneof![6 => 0u8..8, 1 => Just(8u8), 1 => Just(9u8), 1 => Just(10u8)]
}

pub fn operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        any_reg().prop_map(Operand::Reg),
        imm().prop_map(Operand::Imm)
    ]
}

/// A base register and an offset that is usually near a valid one for it.
pub fn base_off() -> impl Strategy<Value = (u8, i16)> {
    prop_oneof![
        3 => (-72i16..=8).prop_map(|o| (10u8, o)),
        3 => (-8i16..=72).prop_map(|o| (8u8, o)),
        2 => (-8i16..=176).prop_map(|o| (9u8, o)),
        1 => (scratch(), -16i16..=72),
    ]
}

pub fn alu_insn() -> impl Strategy<Value = Insn> {
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

pub fn mem_insn() -> impl Strategy<Value = Vec<Insn>> {
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
pub fn calls_from_the_table() -> Vec<Vec<Insn>> {
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

pub fn helper_call() -> impl Strategy<Value = Vec<Insn>> {
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

pub fn helper_call_raw() -> impl Strategy<Value = Vec<Insn>> {
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
pub fn guarded_access() -> impl Strategy<Value = Vec<Insn>> {
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

pub fn item() -> impl Strategy<Value = Gen> {
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
pub fn build(
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
pub fn lay_out(out: &mut Vec<Insn>, items: &[Gen], calls: &mut Vec<usize>) {
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

pub fn program() -> impl Strategy<Value = Vec<Insn>> {
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
pub fn call_site() -> impl Strategy<Value = Gen> {
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
pub fn callee_item() -> impl Strategy<Value = Gen> {
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
pub struct Oracle<'t> {
    pub table: &'t HelperTable,
    pub maps: &'t [MapDef],
    pub ctx: u64,
    pub array: *mut u8,
    pub seed: u64,
    /// r10 of frame 0, learned from the prologue's probe_read_kernel.
    pub fp: Cell<u64>,
    /// Ring buffer records handed out: bytes, and whether still reserved.
    pub records: Vec<(Vec<u8>, bool)>,
    /// Values of the hash map handed out by lookups or stored by updates,
    /// and bytes sent out (ring buffer / perf output).
    pub copies: Vec<Vec<u8>>,
    /// Arguments the prototype says are scalars (`Anything`).
    pub scalars: Vec<(u32, usize, u64)>,
}

impl<'t> Oracle<'t> {
    /// The helpers of one run on `ctx`, with the array map's values at
    /// `array` and random values drawn from `seed`.
    pub fn new(
        table: &'t HelperTable,
        maps: &'t [MapDef],
        ctx: &[u8],
        array: *mut u8,
        seed: u64,
    ) -> Oracle<'t> {
        Oracle {
            table,
            maps,
            ctx: ctx.as_ptr() as u64,
            array,
            seed,
            fp: Cell::new(0),
            records: Vec::new(),
            copies: Vec::new(),
            scalars: Vec::new(),
        }
    }

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
        // Array lookups draw nothing from the seed and do not advance it, so
        // that a JIT which inlines them (no helper call) sees the same
        // random values in later calls.
        let array_lookup = id == helper::MAP_LOOKUP_ELEM as u32
            && self.map(args[0]).map(|m| m.map_type) == Some(map_type::ARRAY);
        if !array_lookup {
            self.seed = self
                .seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
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

pub fn fuzz_config() -> Config<'static> {
    // Lower than the default so complexity rejections stay fast in debug builds.
    Config {
        max_insns: 20_000,
        ..Config::default()
    }
}

/// A call of `proto` with well-formed arguments built from its prototype
/// (and `map` for its map argument), then what its return kind requires
/// (a reserved record is discarded).
pub fn call_from_prototype(
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
