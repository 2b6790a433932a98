//! Code generation: one BPF program per probe, straight to
//! [`bpf_vm::Insn`]s.
//!
//! Register use. `r6` holds the context for the whole program. An
//! expression leaves its value in `r7`; a binary operator spills its left
//! value to a stack temporary while the right one is computed (helpers
//! clobber `r0`–`r5`, never `r6`–`r9`), then combines them with `r8`. `r9`
//! is scratch for the log2 bucket.
//!
//! Stack. Scratch variables get fixed slots, zeroed at entry (so no path
//! reads an unwritten byte); keys, values, records and temporaries are
//! allocated below them for one statement and released after it.
//!
//! Maps. Every `@name` is a hash map whose key is its keys laid out in
//! 8-byte units (strings rounded up), or one zero `u64` when it has none;
//! histograms add the bucket index as a last `u64`. Updates look the key up
//! and change the value in place (atomic adds), or insert the first value.
//! `printf`, `print`, `clear` and `exit` write records into one ring buffer
//! ([`EVENTS_MAP`]) that the tool reads: a `u64` record id, then the
//! arguments in 8-byte units.

use bpf_vm::insn::{AluOp, AtomicOp, Insn, JmpCond, LdImm64Src, Operand, Size, Width};
use bpf_vm::verifier::linux::{helper, pt_regs};
use ktrace_abi::bpf::{map_type, AttachTarget, MapDefinition, ProgramLoad, ProgramType};

use crate::ast::*;
use crate::check::{Checked, MapKind, MapSig, Ty, Types};
use crate::diag::{Diagnostic, Span};
use crate::World;

/// The ring buffer carrying `printf`, `print`, `clear` and `exit` records.
pub const EVENTS_MAP: &str = "printf";
/// Ring buffer bytes.
pub const EVENTS_BYTES: u32 = 1 << 18;
/// Entries of each script map (bpftrace's default key limit).
pub const MAP_ENTRIES: u32 = 4096;
/// `BPF_NOEXIST`: a map update that only inserts.
const BPF_NOEXIST: i32 = 1;
/// Frames kept per `kstack`.
pub const STACK_DEPTH: u32 = 32;
/// Distinct stacks kept.
pub const STACK_ENTRIES: u32 = 1024;

/// Record ids above this are not `printf`s.
pub const EVENT_EXIT: u64 = 1 << 40;
pub const EVENT_PRINT: u64 = 2 << 40;
pub const EVENT_CLEAR: u64 = 3 << 40;

/// A `printf` the tool formats: the text, and each argument's type (string
/// literals are substituted by the tool; they take no bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintfFormat {
    pub format: String,
    pub args: Vec<Ty>,
}

/// How a program runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Attached to a kernel probe point.
    Attach,
    /// Run once by the tool at start (`BEGIN`) or end (`END`).
    Begin,
    End,
    /// Run by the tool every `ms` milliseconds.
    Interval {
        ms: u64,
    },
}

/// One compiled probe.
#[derive(Debug, Clone)]
pub struct CompiledProbe {
    pub probe: Probe,
    pub trigger: Trigger,
    /// Ready to load; kprobe targets are unresolved (`points` empty).
    pub load: ProgramLoad,
    /// Instruction slot → the script span it came from, sorted by slot.
    pub spans: Vec<(usize, Span)>,
}

impl CompiledProbe {
    /// The script span of instruction slot `insn`.
    pub fn span_of(&self, insn: usize) -> Option<Span> {
        let i = self.spans.partition_point(|(at, _)| *at <= insn);
        self.spans.get(i.checked_sub(1)?).map(|(_, s)| *s)
    }
}

/// A compiled script.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// All maps: the script's first (same order as [`Compiled::sigs`]), then
    /// the events ring buffer and the helpers' maps.
    pub maps: Vec<MapDefinition>,
    pub sigs: Vec<MapSig>,
    pub events_map: usize,
    pub stack_map: Option<usize>,
    pub programs: Vec<CompiledProbe>,
    pub printfs: Vec<PrintfFormat>,
    /// `probe` builtin values: index → the probe as written.
    pub probe_names: Vec<String>,
}

pub fn compile(script: &Script, checked: &Checked, world: &World) -> Result<Compiled, Diagnostic> {
    let mut maps: Vec<MapDefinition> = checked
        .maps
        .iter()
        .map(|m| MapDefinition {
            name: m.name.clone(),
            map_type: map_type::HASH,
            key_size: m.key_size(),
            value_size: m.kind.value_size(),
            max_entries: MAP_ENTRIES,
            flags: 0,
            initial_value: Vec::new(),
            read_only: false,
            types: Default::default(),
        })
        .collect();
    let events_map = maps.len();
    maps.push(MapDefinition {
        name: EVENTS_MAP.into(),
        map_type: map_type::RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: EVENTS_BYTES,
        flags: 0,
        initial_value: Vec::new(),
        read_only: false,
        types: Default::default(),
    });
    let uses = |b: Builtin| script.blocks.iter().any(|blk| block_uses(blk, b));
    let stack_map = uses(Builtin::Kstack).then(|| {
        maps.push(MapDefinition {
            name: "kstack".into(),
            map_type: map_type::STACK_TRACE,
            key_size: 4,
            value_size: STACK_DEPTH * 8,
            max_entries: STACK_ENTRIES,
            flags: 0,
            initial_value: Vec::new(),
            read_only: false,
            types: Default::default(),
        });
        maps.len() - 1
    });
    let elapsed_map = uses(Builtin::Elapsed).then(|| {
        maps.push(MapDefinition {
            name: "elapsed".into(),
            map_type: map_type::ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            flags: 0,
            initial_value: Vec::new(),
            read_only: false,
            types: Default::default(),
        });
        maps.len() - 1
    });
    let mut out = Compiled {
        maps,
        sigs: checked.maps.clone(),
        events_map,
        stack_map,
        programs: Vec::new(),
        printfs: Vec::new(),
        probe_names: Vec::new(),
    };
    // `elapsed` counts from the start: a BEGIN program records it.
    let synthetic_begin;
    let mut blocks: Vec<&ProbeBlock> = script.blocks.iter().collect();
    if elapsed_map.is_some()
        && !script
            .blocks
            .iter()
            .any(|b| b.probes.iter().any(|p| p.kind == ProbeKind::Begin))
    {
        synthetic_begin = ProbeBlock {
            probes: vec![Probe {
                kind: ProbeKind::Begin,
                text: "BEGIN".into(),
                span: Span::default(),
            }],
            filter: None,
            body: Vec::new(),
        };
        blocks.insert(0, &synthetic_begin);
    }
    for block in blocks {
        for probe in &block.probes {
            let mut types = Types::new(world, probe, &checked.maps);
            types.vars = crate::check::vars_of(&types, &block.body)?;
            let probe_index = out.probe_names.len();
            out.probe_names.push(probe.text.clone());
            let mut g = Gen {
                e: Emitter::default(),
                t: types,
                checked,
                events_map,
                stack_map,
                elapsed_map,
                probe_index,
                printfs: &mut out.printfs,
                vars: Vec::new(),
            };
            g.program(probe, block)?;
            let Gen { e, .. } = g;
            let (insns, spans) = e.finish()?;
            let (prog_type, attach, trigger, section) = target(probe);
            out.programs.push(CompiledProbe {
                probe: probe.clone(),
                trigger,
                load: ProgramLoad {
                    name: program_name(probe, out.programs.len()),
                    section,
                    prog_type,
                    attach,
                    insns: bpf_vm::encode(&insns),
                    license: "GPL".into(),
                    lines: None,
                },
                spans,
            });
        }
    }
    Ok(out)
}

/// A short program name (shown by `ktrace prog list`).
fn program_name(probe: &Probe, i: usize) -> String {
    let kind = match probe.kind {
        ProbeKind::Begin => "begin",
        ProbeKind::End => "end",
        ProbeKind::Kprobe(_) => "kprobe",
        ProbeKind::Kretprobe(_) => "kretprobe",
        ProbeKind::Tracepoint { .. } => "tracepoint",
        ProbeKind::Profile { .. } => "profile",
        ProbeKind::Interval { .. } => "interval",
    };
    format!("trace_{kind}_{i}")
}

fn target(probe: &Probe) -> (ProgramType, AttachTarget, Trigger, String) {
    let host = |t: Trigger| {
        (
            ProgramType::Kprobe,
            AttachTarget::Kprobe {
                spec: probe.text.clone(),
                points: Vec::new(),
            },
            t,
            format!("trace/{}", probe.text),
        )
    };
    match &probe.kind {
        ProbeKind::Begin => host(Trigger::Begin),
        ProbeKind::End => host(Trigger::End),
        ProbeKind::Interval { ms } => host(Trigger::Interval { ms: *ms }),
        ProbeKind::Kprobe(spec) => (
            ProgramType::Kprobe,
            AttachTarget::Kprobe {
                spec: spec.clone(),
                points: Vec::new(),
            },
            Trigger::Attach,
            format!("kprobe/{spec}"),
        ),
        ProbeKind::Kretprobe(spec) => (
            ProgramType::Kretprobe,
            AttachTarget::Kprobe {
                spec: spec.clone(),
                points: Vec::new(),
            },
            Trigger::Attach,
            format!("kretprobe/{spec}"),
        ),
        ProbeKind::Tracepoint { category, name } => (
            ProgramType::Tracepoint,
            AttachTarget::Tracepoint {
                category: category.clone(),
                name: name.clone(),
            },
            Trigger::Attach,
            format!("tracepoint/{category}/{name}"),
        ),
        ProbeKind::Profile { hz } => (
            ProgramType::PerfEvent,
            AttachTarget::PerfEventHz { sample_hz: *hz },
            Trigger::Attach,
            "perf_event".into(),
        ),
    }
}

/// Where a DWARF register (x86-64 numbering) is in `struct pt_regs`.
fn pt_regs_offset(dwarf_reg: u16) -> Option<u32> {
    use pt_regs::*;
    Some(match dwarf_reg {
        0 => RAX,
        1 => RDX,
        2 => RCX,
        3 => RBX,
        4 => RSI,
        5 => RDI,
        6 => RBP,
        7 => RSP,
        8 => R8,
        9 => R9,
        10 => R10,
        11 => R11,
        12 => R12,
        13 => R13,
        14 => R14,
        15 => R15,
        16 => RIP,
        _ => return None,
    })
}

fn block_uses(b: &ProbeBlock, which: Builtin) -> bool {
    fn e(x: &Expr, w: Builtin) -> bool {
        match &x.kind {
            ExprKind::Builtin(b) => *b == w,
            ExprKind::Map(m) => m.keys.iter().any(|k| e(k, w)),
            ExprKind::Binary(_, a, b) => e(a, w) || e(b, w),
            ExprKind::Unary(_, a) => e(a, w),
            ExprKind::Ternary(a, b, c) => e(a, w) || e(b, w) || e(c, w),
            ExprKind::Call(_, args) => args.iter().any(|a| e(a, w)),
            _ => false,
        }
    }
    fn s(x: &Stmt, w: Builtin) -> bool {
        let m = |m: &MapRef| m.keys.iter().any(|k| e(k, w));
        match x {
            Stmt::MapAssign { map, value } => m(map) || e(value, w),
            Stmt::MapAgg { map, args, .. } => m(map) || args.iter().any(|a| e(a, w)),
            Stmt::VarAssign { value, .. } => e(value, w),
            Stmt::Printf { args, .. } => args.iter().any(|a| e(a, w)),
            Stmt::Delete { map, .. } => m(map),
            Stmt::If {
                cond,
                then,
                otherwise,
            } => e(cond, w) || then.iter().chain(otherwise).any(|x| s(x, w)),
            Stmt::Print { .. } | Stmt::Clear { .. } | Stmt::Exit { .. } => false,
        }
    }
    b.filter.as_ref().is_some_and(|f| e(f, which)) || b.body.iter().any(|x| s(x, which))
}

// ---------------------------------------------------------------------------
// The instruction buffer: labels, jumps fixed up at the end, spans.
// ---------------------------------------------------------------------------

/// Instruction slot → script span rows.
type SpanTable = Vec<(usize, Span)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Label(usize);

#[derive(Default)]
struct Emitter {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
    spans: Vec<(usize, Span)>,
    /// Bytes of stack in use below r10, and the most ever used.
    depth: usize,
    max_depth: usize,
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const CTX: u8 = 6;
const ACC: u8 = 7;
const AUX: u8 = 8;
const SCRATCH: u8 = 9;
const FP: u8 = 10;
/// Far beyond the verifier's 512 bytes; offsets stay well inside `i16`.
const MAX_FRAME: usize = 8192;

impl Emitter {
    fn push(&mut self, i: Insn) {
        self.insns.push(i);
        if let Insn::LdImm64 { .. } = i {
            self.insns.push(Insn::LdImm64Tail);
        }
    }

    fn span(&mut self, s: Span) {
        let at = self.insns.len();
        match self.spans.last_mut() {
            Some((last, sp)) if *last == at => *sp = s,
            _ => self.spans.push((at, s)),
        }
    }

    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    fn jmp(&mut self, cond: JmpCond, dst: u8, src: Operand, l: Label) {
        self.fixups.push((self.insns.len(), l));
        self.push(Insn::Jmp {
            width: Width::W64,
            cond,
            dst,
            src,
            off: 0,
        });
    }

    fn ja(&mut self, l: Label) {
        self.fixups.push((self.insns.len(), l));
        self.push(Insn::Ja {
            off: 0,
            long: false,
        });
    }

    fn alu(&mut self, op: AluOp, dst: u8, src: Operand) {
        self.push(Insn::Alu {
            width: Width::W64,
            op,
            dst,
            src,
        });
    }

    fn mov(&mut self, dst: u8, src: u8) {
        self.alu(AluOp::Mov, dst, Operand::Reg(src));
    }

    fn imm(&mut self, dst: u8, v: u64) {
        match i32::try_from(v as i64) {
            Ok(small) => self.alu(AluOp::Mov, dst, Operand::Imm(small)),
            Err(_) => self.push(Insn::LdImm64 {
                dst,
                src: LdImm64Src::Imm(v),
            }),
        }
    }

    fn map(&mut self, dst: u8, idx: usize) {
        self.push(Insn::LdImm64 {
            dst,
            src: LdImm64Src::MapIdx(idx as i32),
        });
    }

    fn call(&mut self, id: i32) {
        self.push(Insn::Call { id });
    }

    /// `dst = r10 + off`.
    fn stack_ptr(&mut self, dst: u8, off: i16) {
        self.mov(dst, FP);
        self.alu(AluOp::Add, dst, Operand::Imm(i32::from(off)));
    }

    fn load(&mut self, size: Size, dst: u8, src: u8, off: i16) {
        self.push(Insn::Load {
            size,
            dst,
            src,
            off,
        });
    }

    fn store(&mut self, size: Size, dst: u8, off: i16, src: u8) {
        self.push(Insn::Store {
            size,
            dst,
            off,
            src,
        });
    }

    fn store_imm(&mut self, size: Size, dst: u8, off: i16, imm: i32) {
        self.push(Insn::StoreImm {
            size,
            dst,
            off,
            imm,
        });
    }

    /// Reserves `n` bytes (rounded up to 8) of stack: their offset from r10.
    /// The BPF stack limit itself is the verifier's to enforce (its refusal
    /// points at the statement that went past it); this only keeps offsets
    /// in range.
    fn alloc(&mut self, n: usize, span: Span) -> Result<i16, Diagnostic> {
        self.depth += n.div_ceil(8) * 8;
        if self.depth > MAX_FRAME {
            return Err(Diagnostic::new(
                span,
                "this needs far more than the 512 bytes of BPF stack a probe has: use fewer or shorter keys, strings or printf arguments",
            ));
        }
        self.max_depth = self.max_depth.max(self.depth);
        Ok(-(self.depth as i16))
    }

    fn finish(mut self) -> Result<(Vec<Insn>, SpanTable), Diagnostic> {
        for (at, l) in std::mem::take(&mut self.fixups) {
            let target = self.labels[l.0].expect("every label is bound");
            let off = target as i64 - at as i64 - 1;
            let off16 = i16::try_from(off).map_err(|_| {
                Diagnostic::new(
                    Span::default(),
                    "the probe's program is too long for 16-bit jumps",
                )
            })?;
            match &mut self.insns[at] {
                Insn::Jmp { off, .. } => *off = off16,
                Insn::Ja { off, .. } => *off = i32::from(off16),
                _ => unreachable!("fixups are jumps"),
            }
        }
        Ok((self.insns, self.spans))
    }
}

// ---------------------------------------------------------------------------
// Statements and expressions.
// ---------------------------------------------------------------------------

struct Gen<'a, 'w> {
    e: Emitter,
    t: Types<'w>,
    checked: &'a Checked,
    events_map: usize,
    stack_map: Option<usize>,
    elapsed_map: Option<usize>,
    probe_index: usize,
    printfs: &'a mut Vec<PrintfFormat>,
    /// Scratch variables: name, type, stack offset.
    vars: Vec<(String, Ty, i16)>,
}

type R<T = ()> = Result<T, Diagnostic>;

impl Gen<'_, '_> {
    fn program(&mut self, probe: &Probe, block: &ProbeBlock) -> R {
        self.e.span(probe.span);
        self.e.mov(CTX, R1);
        let vars: Vec<(String, Ty)> = self
            .t
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, ty) in vars {
            let off = self.e.alloc(ty.size() as usize, probe.span)?;
            for i in (0..ty.size() as i16).step_by(8) {
                self.e.store_imm(Size::DW, FP, off + i, 0);
            }
            self.vars.push((name, ty, off));
        }
        if probe.kind == ProbeKind::Begin {
            if let Some(m) = self.elapsed_map {
                self.e.call(helper::KTIME_GET_NS);
                self.e.mov(ACC, R0);
                self.store_elapsed_base(m, probe.span)?;
            }
        }
        let end = self.e.label();
        if let Some(f) = &block.filter {
            self.expr(f)?;
            self.e.jmp(JmpCond::Eq, ACC, Operand::Imm(0), end);
        }
        self.stmts(&block.body, end)?;
        self.e.bind(end);
        self.e.span(probe.span);
        self.e.imm(R0, 0);
        self.e.push(Insn::Exit);
        Ok(())
    }

    fn store_elapsed_base(&mut self, m: usize, span: Span) -> R {
        let mark = self.e.depth;
        let key = self.e.alloc(8, span)?;
        let val = self.e.alloc(8, span)?;
        self.e.store_imm(Size::DW, FP, key, 0);
        self.e.store(Size::DW, FP, val, ACC);
        self.e.map(R1, m);
        self.e.stack_ptr(R2, key);
        self.e.stack_ptr(R3, val);
        self.e.imm(R4, 0);
        self.e.call(helper::MAP_UPDATE_ELEM);
        self.e.depth = mark;
        Ok(())
    }

    fn stmts(&mut self, body: &[Stmt], end: Label) -> R {
        for s in body {
            let mark = self.e.depth;
            self.stmt(s, end)?;
            self.e.depth = mark;
            if matches!(s, Stmt::Exit { .. }) {
                // What follows exit() never runs (and unreachable code
                // would be refused by the verifier).
                break;
            }
        }
        Ok(())
    }

    fn sig(&self, name: &str) -> (usize, MapSig) {
        let (i, s) = self.checked.map(name).expect("checked maps exist");
        (i, s.clone())
    }

    fn stmt(&mut self, s: &Stmt, end: Label) -> R {
        match s {
            Stmt::MapAssign { map, value } => {
                self.e.span(map.span.to(value.span));
                let (idx, sig) = self.sig(&map.name);
                let key = self.key(map, &sig)?;
                let ty = self.t.of(value)?;
                let val = self.e.alloc(ty.size() as usize, value.span)?;
                self.value_into(value, &ty, val)?;
                self.e.span(map.span.to(value.span));
                self.update(idx, key, val, 0);
            }
            Stmt::MapAgg {
                map, args, span, ..
            } => {
                self.e.span(*span);
                self.aggregate(map, args, *span)?;
            }
            Stmt::VarAssign { name, value, span } => {
                self.e.span(*span);
                let (ty, off) = self.var(name);
                self.value_into(value, &ty, off)?;
            }
            Stmt::Printf {
                format, args, span, ..
            } => {
                self.e.span(*span);
                let mut types = Vec::new();
                let mut size = 8usize;
                for a in args {
                    let ty = self.t.of(a)?;
                    size += ty.size() as usize;
                    types.push(ty);
                }
                let id = self.printfs.len() as u64;
                self.printfs.push(PrintfFormat {
                    format: format.clone(),
                    args: types.clone(),
                });
                let rec = self.e.alloc(size, *span)?;
                let mut at = rec + 8;
                for (a, ty) in args.iter().zip(&types) {
                    if ty.size() > 0 {
                        self.value_into(a, ty, at)?;
                    }
                    at += ty.size() as i16;
                }
                self.e.span(*span);
                self.emit_record(rec, id, size);
            }
            Stmt::Print { map, span } | Stmt::Clear { map, span } => {
                self.e.span(*span);
                let (idx, _) = self.sig(map);
                let base = if matches!(s, Stmt::Print { .. }) {
                    EVENT_PRINT
                } else {
                    EVENT_CLEAR
                };
                let rec = self.e.alloc(8, *span)?;
                self.emit_record(rec, base | idx as u64, 8);
            }
            Stmt::Delete { map, span } => {
                self.e.span(*span);
                let (idx, sig) = self.sig(&map.name);
                let key = self.key(map, &sig)?;
                self.e.map(R1, idx);
                self.e.stack_ptr(R2, key);
                self.e.call(helper::MAP_DELETE_ELEM);
            }
            Stmt::Exit { span } => {
                self.e.span(*span);
                let rec = self.e.alloc(8, *span)?;
                self.emit_record(rec, EVENT_EXIT, 8);
                self.e.ja(end);
            }
            Stmt::If {
                cond,
                then,
                otherwise,
            } => {
                self.e.span(cond.span);
                let els = self.e.label();
                let done = self.e.label();
                self.expr(cond)?;
                self.e.jmp(JmpCond::Eq, ACC, Operand::Imm(0), els);
                self.stmts(then, end)?;
                if !matches!(self.e.insns.last(), Some(Insn::Ja { .. })) {
                    self.e.ja(done);
                }
                self.e.bind(els);
                self.stmts(otherwise, end)?;
                self.e.bind(done);
            }
        }
        Ok(())
    }

    fn var(&self, name: &str) -> (Ty, i16) {
        let (_, ty, off) = self
            .vars
            .iter()
            .find(|(n, _, _)| n == name)
            .expect("checked variables have slots");
        (ty.clone(), *off)
    }

    /// Writes record `rec` (its first 8 bytes get `id`) to the events ring buffer.
    fn emit_record(&mut self, rec: i16, id: u64, size: usize) {
        self.e.imm(R1, id);
        self.e.store(Size::DW, FP, rec, R1);
        self.e.map(R1, self.events_map);
        self.e.stack_ptr(R2, rec);
        self.e.imm(R3, size as u64);
        self.e.imm(R4, 0);
        self.e.call(helper::RINGBUF_OUTPUT);
    }

    /// `bpf_map_update_elem(map, key, val, flags)`.
    fn update(&mut self, idx: usize, key: i16, val: i16, flags: i32) {
        self.e.map(R1, idx);
        self.e.stack_ptr(R2, key);
        self.e.stack_ptr(R3, val);
        self.e.imm(R4, flags as u64);
        self.e.call(helper::MAP_UPDATE_ELEM);
    }

    /// Builds the key of `m` on the stack (without a histogram's bucket).
    fn key(&mut self, m: &MapRef, sig: &MapSig) -> R<i16> {
        let off = self.e.alloc(sig.key_size() as usize, m.span)?;
        if m.keys.is_empty() {
            self.e.store_imm(Size::DW, FP, off, 0);
        }
        let mut at = off;
        for (k, ty) in m.keys.iter().zip(&sig.keys) {
            let ty = match ty {
                Ty::Int { .. } => Ty::U64,
                t => t.clone(),
            };
            self.value_into(k, &ty, at)?;
            at += ty.size() as i16;
        }
        Ok(off)
    }

    /// Stores the value of `e` (of type `ty`) at `r10 + off`.
    fn value_into(&mut self, e: &Expr, ty: &Ty, off: i16) -> R {
        match ty {
            Ty::Str(n) => self.str_into(e, *n, off),
            Ty::Literal(_) => Ok(()),
            _ => {
                self.expr(e)?;
                self.e.store(Size::DW, FP, off, ACC);
                Ok(())
            }
        }
    }

    /// Copies string `e` into `size` (rounded up to 8) bytes at `r10 + off`.
    fn str_into(&mut self, e: &Expr, size: u32, off: i16) -> R {
        let padded = (size.div_ceil(8) * 8) as i16;
        match &e.kind {
            ExprKind::Builtin(Builtin::Comm) => {
                self.e.stack_ptr(R1, off);
                self.e.imm(R2, 16);
                self.e.call(helper::GET_CURRENT_COMM);
                for i in (16..padded).step_by(8) {
                    self.e.store_imm(Size::DW, FP, off + i, 0);
                }
            }
            ExprKind::Args(path) => {
                let f = self.t.field(path)?;
                for i in (0..padded).step_by(8) {
                    self.e.store_imm(Size::DW, FP, off + i, 0);
                }
                let mut i = 0u32;
                while i < f.size.min(size) {
                    let at = f.offset + i;
                    let left = f.size - i;
                    let size = [Size::DW, Size::W, Size::H, Size::B]
                        .into_iter()
                        .find(|s| s.bytes() as u32 <= left && at.is_multiple_of(s.bytes() as u32) && (off as i32 + i as i32) % s.bytes() as i32 == 0)
                        .unwrap_or(Size::B);
                    self.e.load(size, R1, CTX, at as i16);
                    self.e.store(size, FP, off + i as i16, R1);
                    i += size.bytes() as u32;
                }
            }
            ExprKind::Var(name) => {
                let (ty, from) = self.var(name);
                for i in (0..padded.min(ty.size() as i16)).step_by(8) {
                    self.e.load(Size::DW, R1, FP, from + i);
                    self.e.store(Size::DW, FP, off + i, R1);
                }
            }
            ExprKind::Map(m) => {
                let (idx, sig) = self.sig(&m.name);
                let key = self.key(m, &sig)?;
                let found = self.e.label();
                let done = self.e.label();
                self.e.map(R1, idx);
                self.e.stack_ptr(R2, key);
                self.e.call(helper::MAP_LOOKUP_ELEM);
                self.e.jmp(JmpCond::Ne, R0, Operand::Imm(0), found);
                for i in (0..padded).step_by(8) {
                    self.e.store_imm(Size::DW, FP, off + i, 0);
                }
                self.e.ja(done);
                self.e.bind(found);
                for i in (0..padded).step_by(8) {
                    self.e.load(Size::DW, R1, R0, i);
                    self.e.store(Size::DW, FP, off + i, R1);
                }
                self.e.bind(done);
            }
            ExprKind::Call(name, args) if name == "str" => {
                // Kernel memory, read safely: a Rust `&str` is a pointer
                // and a length (`str(arg0, arg1)`), a C string stops at NUL.
                // The buffer is zeroed first and one byte is kept for the NUL.
                let mark = self.e.depth;
                for i in (0..padded).step_by(8) {
                    self.e.store_imm(Size::DW, FP, off + i, 0);
                }
                let max = size.min(padded as u32).saturating_sub(1);
                let len_tmp = self.e.alloc(8, e.span)?;
                match args.get(1) {
                    Some(len) => self.expr(len)?,
                    None => self.e.imm(ACC, u64::from(max)),
                }
                self.e.store(Size::DW, FP, len_tmp, ACC);
                self.expr(&args[0])?;
                self.e.span(e.span);
                self.e.mov(R3, ACC);
                self.e.load(Size::DW, R2, FP, len_tmp);
                let fits = self.e.label();
                self.e.jmp(JmpCond::Le, R2, Operand::Imm(max as i32), fits);
                self.e.imm(R2, u64::from(max));
                self.e.bind(fits);
                self.e.stack_ptr(R1, off);
                self.e.call(if args.len() == 2 {
                    helper::PROBE_READ_KERNEL
                } else {
                    helper::PROBE_READ_KERNEL_STR
                });
                self.e.depth = mark;
            }
            _ => {
                return Err(Diagnostic::new(
                    e.span,
                    "this string expression is not supported here: expected comm, str(ptr, len), a tracepoint string field, a variable or a map holding a string",
                ))
            }
        }
        Ok(())
    }

    fn aggregate(&mut self, map: &MapRef, args: &[Expr], span: Span) -> R {
        let (idx, sig) = self.sig(&map.name);
        let key = self.key(map, &sig)?;
        // The value (1 for count), kept on the stack across the helper calls.
        let v = self.e.alloc(8, span)?;
        match args.first() {
            Some(a) => self.expr(a)?,
            None => self.e.imm(ACC, 1),
        }
        self.e.span(span);
        self.e.store(Size::DW, FP, v, ACC);
        if sig.kind.bucketed() {
            let slot_at = key + (sig.key_size() - 8) as i16;
            match sig.kind {
                MapKind::Lhist { min, max, step } => self.lhist_slot(min, max, step),
                _ => self.log2_slot(),
            }
            self.e.store(Size::DW, FP, slot_at, ACC);
        }
        let init = self.e.label();
        let done = self.e.label();
        self.e.map(R1, idx);
        self.e.stack_ptr(R2, key);
        self.e.call(helper::MAP_LOOKUP_ELEM);
        self.e.jmp(JmpCond::Eq, R0, Operand::Imm(0), init);
        self.add_in_place(&sig, v);
        self.e.ja(done);
        self.e.bind(init);
        let val = self.e.alloc(sig.kind.value_size() as usize, span)?;
        match sig.kind {
            MapKind::Hist | MapKind::Lhist { .. } => self.e.store_imm(Size::DW, FP, val, 1),
            MapKind::Avg | MapKind::Stats => {
                self.e.load(Size::DW, R1, FP, v);
                self.e.store(Size::DW, FP, val, R1);
                self.e.store_imm(Size::DW, FP, val + 8, 1);
            }
            _ => {
                self.e.load(Size::DW, R1, FP, v);
                self.e.store(Size::DW, FP, val, R1);
            }
        }
        // The first value goes in only if the key is still absent: another
        // CPU may have inserted it since the lookup, and overwriting its
        // entry would lose what it counted. Then the value is added to
        // that entry instead (a full map finds no entry and drops it).
        self.update(idx, key, val, BPF_NOEXIST);
        self.e.jmp(JmpCond::Eq, R0, Operand::Imm(0), done);
        self.e.map(R1, idx);
        self.e.stack_ptr(R2, key);
        self.e.call(helper::MAP_LOOKUP_ELEM);
        self.e.jmp(JmpCond::Eq, R0, Operand::Imm(0), done);
        self.add_in_place(&sig, v);
        self.e.bind(done);
        Ok(())
    }

    /// Adds the value at `FP + v` into the entry `R0` points at, as the
    /// aggregation `sig` does: atomic adds, so CPUs updating one entry at
    /// once lose nothing (min and max compare and store).
    fn add_in_place(&mut self, sig: &MapSig, v: i16) {
        self.e.load(Size::DW, R1, FP, v);
        let add = |g: &mut Self, off: i16, src: u8| {
            g.e.push(Insn::Atomic {
                size: Size::DW,
                op: AtomicOp::Add,
                fetch: false,
                dst: R0,
                off,
                src,
            });
        };
        match sig.kind {
            MapKind::Count | MapKind::Sum => add(self, 0, R1),
            MapKind::Avg | MapKind::Stats => {
                add(self, 0, R1);
                self.e.imm(R1, 1);
                add(self, 8, R1);
            }
            MapKind::Hist | MapKind::Lhist { .. } => {
                self.e.imm(R1, 1);
                add(self, 0, R1);
            }
            MapKind::Min | MapKind::Max => {
                let keep = self.e.label();
                self.e.load(Size::DW, R2, R0, 0);
                let cond = if sig.kind == MapKind::Min {
                    JmpCond::Sle
                } else {
                    JmpCond::Sge
                };
                self.e.jmp(cond, R2, Operand::Reg(R1), keep);
                self.e.store(Size::DW, R0, 0, R1);
                self.e.bind(keep);
            }
            MapKind::Value(_) => unreachable!("aggregations do not make value maps"),
        }
    }

    /// `ACC` = the log2 bucket of `ACC`: 0 for negative values, 1 for 0,
    /// `2 + floor(log2 v)` above.
    fn log2_slot(&mut self) {
        let neg = self.e.label();
        let zero = self.e.label();
        let done = self.e.label();
        self.e.jmp(JmpCond::Slt, ACC, Operand::Imm(0), neg);
        self.e.jmp(JmpCond::Eq, ACC, Operand::Imm(0), zero);
        self.e.imm(AUX, 2);
        for shift in [32, 16, 8, 4, 2, 1] {
            let skip = self.e.label();
            self.e.mov(SCRATCH, ACC);
            self.e.alu(AluOp::Rsh, SCRATCH, Operand::Imm(shift));
            self.e.jmp(JmpCond::Eq, SCRATCH, Operand::Imm(0), skip);
            self.e.mov(ACC, SCRATCH);
            self.e.alu(AluOp::Add, AUX, Operand::Imm(shift));
            self.e.bind(skip);
        }
        self.e.mov(ACC, AUX);
        self.e.ja(done);
        self.e.bind(neg);
        self.e.imm(ACC, 0);
        self.e.ja(done);
        self.e.bind(zero);
        self.e.imm(ACC, 1);
        self.e.bind(done);
    }

    /// `ACC` = the linear bucket: 0 below `min`, `1 + (v - min) / step`
    /// inside, one past the last at or above `max`.
    fn lhist_slot(&mut self, min: i64, max: i64, step: i64) {
        let below = self.e.label();
        let above = self.e.label();
        let done = self.e.label();
        let buckets = ((max - min) / step) as u64;
        self.e.imm(AUX, min as u64);
        self.e.jmp(JmpCond::Slt, ACC, Operand::Reg(AUX), below);
        self.e.imm(AUX, max as u64);
        self.e.jmp(JmpCond::Sge, ACC, Operand::Reg(AUX), above);
        self.e.imm(AUX, min as u64);
        self.e.alu(AluOp::Sub, ACC, Operand::Reg(AUX));
        self.e.imm(AUX, step as u64);
        self.e.alu(AluOp::Div, ACC, Operand::Reg(AUX));
        self.e.alu(AluOp::Add, ACC, Operand::Imm(1));
        self.e.ja(done);
        self.e.bind(below);
        self.e.imm(ACC, 0);
        self.e.ja(done);
        self.e.bind(above);
        self.e.imm(ACC, buckets + 1);
        self.e.bind(done);
    }

    /// Evaluates a scalar expression into `ACC`.
    fn expr(&mut self, x: &Expr) -> R {
        self.e.span(x.span);
        match &x.kind {
            ExprKind::Int(v) => self.e.imm(ACC, *v),
            ExprKind::Str(_) => {
                return Err(Diagnostic::new(x.span, "a string literal has no numeric value: compare it with a string (`comm == \"x\"`) or print it"))
            }
            ExprKind::Builtin(b) => self.builtin(*b, x.span)?,
            ExprKind::Args(path) if self.t.ctx() == crate::check::Ctx::Kprobe => {
                self.param(path, x.span)?;
            }
            ExprKind::Args(path) => {
                let f = self.t.field(path)?;
                let size = match f.size {
                    1 => Size::B,
                    2 => Size::H,
                    4 => Size::W,
                    8 => Size::DW,
                    _ => {
                        return Err(Diagnostic::new(x.span, format!("`{}` is {} bytes: not an integer", f.name, f.size)))
                    }
                };
                self.e.load(size, ACC, CTX, f.offset as i16);
                if f.signed && f.size < 8 {
                    let sh = 64 - 8 * f.size as i32;
                    self.e.alu(AluOp::Lsh, ACC, Operand::Imm(sh));
                    self.e.alu(AluOp::Arsh, ACC, Operand::Imm(sh));
                }
            }
            ExprKind::Var(name) => {
                let (_, off) = self.var(name);
                self.e.load(Size::DW, ACC, FP, off);
            }
            ExprKind::Map(m) => {
                let mark = self.e.depth;
                let (idx, sig) = self.sig(&m.name);
                let key = self.key(m, &sig)?;
                let found = self.e.label();
                let done = self.e.label();
                self.e.span(x.span);
                self.e.map(R1, idx);
                self.e.stack_ptr(R2, key);
                self.e.call(helper::MAP_LOOKUP_ELEM);
                self.e.jmp(JmpCond::Ne, R0, Operand::Imm(0), found);
                self.e.imm(ACC, 0);
                self.e.ja(done);
                self.e.bind(found);
                self.e.load(Size::DW, ACC, R0, 0);
                self.e.bind(done);
                self.e.depth = mark;
            }
            ExprKind::Unary(op, a) => {
                self.expr(a)?;
                self.e.span(x.span);
                match op {
                    UnOp::Neg => self.e.push(Insn::Neg { width: Width::W64, dst: ACC }),
                    UnOp::BitNot => self.e.alu(AluOp::Xor, ACC, Operand::Imm(-1)),
                    UnOp::Not => self.bool_of(JmpCond::Eq, Operand::Imm(0)),
                }
            }
            ExprKind::Binary(op, a, b) => self.binary(*op, a, b, x.span)?,
            ExprKind::Ternary(c, a, b) => {
                let els = self.e.label();
                let done = self.e.label();
                self.expr(c)?;
                self.e.jmp(JmpCond::Eq, ACC, Operand::Imm(0), els);
                self.expr(a)?;
                self.e.ja(done);
                self.e.bind(els);
                self.expr(b)?;
                self.e.bind(done);
            }
            ExprKind::Call(..) => {
                self.t.of(x)?;
            }
        }
        Ok(())
    }

    /// `ACC` = the kprobe parameter path `args.PATH`, as DWARF places it at
    /// the probe address: registers from the `pt_regs` context, memory
    /// (fields behind references) through `bpf_probe_read_kernel`. A read
    /// that faults leaves zeros, as bpftrace's do.
    fn param(&mut self, path: &[(String, Span)], span: Span) -> R {
        use ktrace_symbols::params::{AccessStep, LeafKind, Place};
        let access = self.t.param(path)?;
        let mark = self.e.depth;
        let tmp = self.e.alloc(8, span)?;
        for step in &access.steps {
            match *step {
                AccessStep::Register(r) => {
                    let Some(off) = pt_regs_offset(r) else {
                        return Err(Diagnostic::new(
                            span,
                            format!("DWARF puts this in register {r}, which a kprobe's registers do not hold"),
                        ));
                    };
                    self.e.load(Size::DW, ACC, CTX, off as i16);
                }
                AccessStep::Add(n) => {
                    self.e.imm(AUX, n as u64);
                    self.e.alu(AluOp::Add, ACC, Operand::Reg(AUX));
                }
                AccessStep::Load => self.read_kernel(tmp, 8),
            }
        }
        let size = access.size;
        let signed = matches!(
            access.kind,
            LeafKind::Int { signed: true } | LeafKind::Enum { signed: true, .. }
        );
        match access.place {
            Place::Register { shift } => {
                if shift > 0 {
                    self.e.alu(AluOp::Rsh, ACC, Operand::Imm(8 * shift as i32));
                }
            }
            Place::Memory => self.read_kernel(tmp, size),
        }
        if size < 8 {
            let sh = 64 - 8 * size as i32;
            self.e.alu(AluOp::Lsh, ACC, Operand::Imm(sh));
            let op = if signed { AluOp::Arsh } else { AluOp::Rsh };
            self.e.alu(op, ACC, Operand::Imm(sh));
        }
        self.e.depth = mark;
        Ok(())
    }

    /// `ACC` = the `size` bytes of kernel memory at address `ACC` (zero
    /// when the read faults), through the 8-byte stack slot `tmp`.
    fn read_kernel(&mut self, tmp: i16, size: u32) {
        self.e.store_imm(Size::DW, FP, tmp, 0);
        self.e.stack_ptr(R1, tmp);
        self.e.imm(R2, u64::from(size));
        self.e.mov(R3, ACC);
        self.e.call(helper::PROBE_READ_KERNEL);
        self.e.load(Size::DW, ACC, FP, tmp);
    }

    /// `ACC = (ACC cond src) ? 1 : 0`.
    fn bool_of(&mut self, cond: JmpCond, src: Operand) {
        let yes = self.e.label();
        let done = self.e.label();
        self.e.jmp(cond, ACC, src, yes);
        self.e.imm(ACC, 0);
        self.e.ja(done);
        self.e.bind(yes);
        self.e.imm(ACC, 1);
        self.e.bind(done);
    }

    fn binary(&mut self, op: BinOp, a: &Expr, b: &Expr, span: Span) -> R {
        let (ta, tb) = (self.t.of(a)?, self.t.of(b)?);
        if let (Ty::Str(n), Ty::Literal(lit)) | (Ty::Literal(lit), Ty::Str(n)) = (&ta, &tb) {
            let s = if matches!(ta, Ty::Str(_)) { a } else { b };
            return self.str_eq(s, *n, lit, op == BinOp::Ne, span);
        }
        if matches!(op, BinOp::LogAnd | BinOp::LogOr) {
            let short = self.e.label();
            let done = self.e.label();
            let (cond, short_value) = if op == BinOp::LogAnd {
                (JmpCond::Eq, 0)
            } else {
                (JmpCond::Ne, 1)
            };
            self.expr(a)?;
            self.e.jmp(cond, ACC, Operand::Imm(0), short);
            self.expr(b)?;
            self.e.span(span);
            self.bool_of(JmpCond::Ne, Operand::Imm(0));
            self.e.ja(done);
            self.e.bind(short);
            self.e.imm(ACC, short_value);
            self.e.bind(done);
            return Ok(());
        }
        let signed =
            matches!(ta, Ty::Int { signed: true }) || matches!(tb, Ty::Int { signed: true });
        let mark = self.e.depth;
        let tmp = self.e.alloc(8, span)?;
        self.expr(a)?;
        self.e.store(Size::DW, FP, tmp, ACC);
        self.expr(b)?;
        self.e.span(span);
        self.e.mov(AUX, ACC);
        self.e.load(Size::DW, ACC, FP, tmp);
        self.e.depth = mark;
        let alu = |op| Some(op);
        let arith = match op {
            BinOp::Add => alu(AluOp::Add),
            BinOp::Sub => alu(AluOp::Sub),
            BinOp::Mul => alu(AluOp::Mul),
            BinOp::Div => alu(if signed { AluOp::SDiv } else { AluOp::Div }),
            BinOp::Mod => alu(if signed { AluOp::SMod } else { AluOp::Mod }),
            BinOp::And => alu(AluOp::And),
            BinOp::Or => alu(AluOp::Or),
            BinOp::Xor => alu(AluOp::Xor),
            BinOp::Shl => alu(AluOp::Lsh),
            BinOp::Shr => alu(if signed { AluOp::Arsh } else { AluOp::Rsh }),
            _ => None,
        };
        if let Some(o) = arith {
            self.e.alu(o, ACC, Operand::Reg(AUX));
            return Ok(());
        }
        let cond = match (op, signed) {
            (BinOp::Eq, _) => JmpCond::Eq,
            (BinOp::Ne, _) => JmpCond::Ne,
            (BinOp::Lt, false) => JmpCond::Lt,
            (BinOp::Lt, true) => JmpCond::Slt,
            (BinOp::Le, false) => JmpCond::Le,
            (BinOp::Le, true) => JmpCond::Sle,
            (BinOp::Gt, false) => JmpCond::Gt,
            (BinOp::Gt, true) => JmpCond::Sgt,
            (BinOp::Ge, false) => JmpCond::Ge,
            (BinOp::Ge, true) => JmpCond::Sge,
            _ => unreachable!("all operators handled"),
        };
        self.bool_of(cond, Operand::Reg(AUX));
        Ok(())
    }

    /// `ACC` = whether string `s` equals the literal (its bytes and the
    /// terminating NUL, or all `n` bytes when the literal fills them).
    fn str_eq(&mut self, s: &Expr, n: u32, lit: &str, negate: bool, span: Span) -> R {
        let mark = self.e.depth;
        let buf = self.e.alloc(n as usize, span)?;
        self.str_into(s, n, buf)?;
        self.e.span(span);
        let mut want = lit.as_bytes().to_vec();
        let differ = self.e.label();
        let done = self.e.label();
        if want.len() > n as usize {
            self.e.ja(differ);
        } else {
            if want.len() < n as usize {
                want.push(0);
            }
            for (i, chunk) in want.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.e.load(Size::DW, ACC, FP, buf + 8 * i as i16);
                if chunk.len() < 8 {
                    let mask = if chunk.is_empty() {
                        0
                    } else {
                        u64::MAX >> (64 - 8 * chunk.len())
                    };
                    self.e.imm(AUX, mask);
                    self.e.alu(AluOp::And, ACC, Operand::Reg(AUX));
                }
                self.e.imm(AUX, u64::from_le_bytes(word));
                self.e.jmp(JmpCond::Ne, ACC, Operand::Reg(AUX), differ);
            }
        }
        self.e.imm(ACC, u64::from(!negate));
        self.e.ja(done);
        self.e.bind(differ);
        self.e.imm(ACC, u64::from(negate));
        self.e.bind(done);
        self.e.depth = mark;
        Ok(())
    }

    fn builtin(&mut self, b: Builtin, span: Span) -> R {
        match b {
            Builtin::Pid | Builtin::Tid => {
                self.e.call(helper::GET_CURRENT_PID_TGID);
                self.e.mov(ACC, R0);
                if b == Builtin::Pid {
                    self.e.alu(AluOp::Rsh, ACC, Operand::Imm(32));
                } else {
                    self.e.alu(AluOp::Lsh, ACC, Operand::Imm(32));
                    self.e.alu(AluOp::Rsh, ACC, Operand::Imm(32));
                }
            }
            Builtin::Cpu => {
                self.e.call(helper::GET_SMP_PROCESSOR_ID);
                self.e.mov(ACC, R0);
            }
            Builtin::Nsecs => {
                self.e.call(helper::KTIME_GET_NS);
                self.e.mov(ACC, R0);
            }
            Builtin::Elapsed => {
                let m = self.elapsed_map.expect("elapsed map made when used");
                let mark = self.e.depth;
                let key = self.e.alloc(8, span)?;
                self.e.call(helper::KTIME_GET_NS);
                self.e.mov(ACC, R0);
                self.e.store_imm(Size::W, FP, key, 0);
                self.e.map(R1, m);
                self.e.stack_ptr(R2, key);
                self.e.call(helper::MAP_LOOKUP_ELEM);
                let none = self.e.label();
                self.e.jmp(JmpCond::Eq, R0, Operand::Imm(0), none);
                self.e.load(Size::DW, AUX, R0, 0);
                self.e.alu(AluOp::Sub, ACC, Operand::Reg(AUX));
                self.e.bind(none);
                self.e.depth = mark;
            }
            Builtin::Func => {
                self.e.mov(R1, CTX);
                self.e.call(helper::GET_FUNC_IP);
                self.e.mov(ACC, R0);
            }
            Builtin::Probe => self.e.imm(ACC, self.probe_index as u64),
            Builtin::Retval => self.e.load(Size::DW, ACC, CTX, pt_regs::RAX as i16),
            Builtin::Arg(n) => {
                let off = pt_regs::ARGS[n as usize];
                self.e.load(Size::DW, ACC, CTX, off as i16);
            }
            Builtin::Kstack => {
                let m = self.stack_map.expect("stack map made when used");
                self.e.mov(R1, CTX);
                self.e.map(R2, m);
                self.e.imm(R3, 0);
                self.e.call(helper::GET_STACKID);
                self.e.mov(ACC, R0);
            }
            Builtin::Comm => {
                return Err(Diagnostic::new(span, "`comm` is a string: use it as a map key, with printf's %s, or compare it with a literal"))
            }
        }
        Ok(())
    }
}
