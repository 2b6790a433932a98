//! The type checker: every expression gets a [`Ty`], every map one
//! [`MapKind`] and key signature across the whole script, every scratch
//! variable one type per probe. Codegen asks [`Types::of`] again for each
//! expression, which cannot fail on a checked script.

use std::collections::BTreeMap;

use crate::ast::*;
use crate::diag::{Diagnostic, Span};
use crate::World;

/// Bytes `str()` reads at most (bpftrace's default `BPFTRACE_STRLEN` is 64).
pub const STR_LEN: u32 = 64;

/// Types of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// A 64-bit integer.
    Int { signed: bool },
    /// A NUL-padded string of this many bytes (`comm`, `char` arrays).
    Str(u32),
    /// A kernel stack (`kstack`), kept as a stack id.
    Stack,
    /// A kernel address printed as its function (`func`).
    Func,
    /// The probe that fired (`probe`), kept as an index.
    Probe,
    /// A string literal: only in `printf` and string comparisons.
    Literal(String),
    /// A fieldless Rust enum read from a parameter (`args.bio.op`): an
    /// integer printed as its variant's name.
    Enum {
        name: String,
        variants: Vec<(i64, String)>,
    },
}

impl Ty {
    pub const U64: Ty = Ty::Int { signed: false };

    /// Bytes the value takes in a key, a map value or an event record.
    pub fn size(&self) -> u32 {
        match self {
            Ty::Str(n) => n.div_ceil(8) * 8,
            Ty::Literal(_) => 0,
            _ => 8,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Ty::Int { signed: true } => "a signed integer".into(),
            Ty::Int { signed: false } => "an integer".into(),
            Ty::Str(n) => format!("a string (char[{n}])"),
            Ty::Stack => "a stack (kstack)".into(),
            Ty::Func => "a function (func)".into(),
            Ty::Probe => "a probe name (probe)".into(),
            Ty::Literal(_) => "a string literal".into(),
            Ty::Enum { name, .. } => format!("an enum (`{name}`)"),
        }
    }
}

/// What a map's values are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapKind {
    /// Assigned with `=`.
    Value(Ty),
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Stats,
    Hist,
    Lhist {
        min: i64,
        max: i64,
        step: i64,
    },
}

impl MapKind {
    pub fn describe(&self) -> String {
        match self {
            MapKind::Value(t) => t.describe(),
            MapKind::Lhist { .. } => "lhist()".into(),
            other => format!("{}()", format!("{other:?}").to_lowercase()),
        }
    }

    /// Bytes of one value in the BPF map.
    pub fn value_size(&self) -> u32 {
        match self {
            MapKind::Value(t) => t.size(),
            MapKind::Avg | MapKind::Stats => 16,
            _ => 8,
        }
    }

    /// Whether the map has a trailing 8-byte bucket index in its key.
    pub fn bucketed(&self) -> bool {
        matches!(self, MapKind::Hist | MapKind::Lhist { .. })
    }
}

/// One map of the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSig {
    pub name: String,
    pub keys: Vec<Ty>,
    pub kind: MapKind,
    /// Where its kind was fixed, for messages.
    pub first: Span,
}

impl MapSig {
    /// Bytes of a key (8 for a map without keys).
    pub fn key_size(&self) -> u32 {
        let keys: u32 = self.keys.iter().map(Ty::size).sum::<u32>().max(8);
        keys + if self.kind.bucketed() { 8 } else { 0 }
    }
}

/// What a probe gives programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    Kprobe,
    Kretprobe,
    Tracepoint,
    Profile,
    /// BEGIN, END, interval: run by the host, no kernel context.
    Host,
}

pub fn ctx_of(kind: &ProbeKind) -> Ctx {
    match kind {
        ProbeKind::Kprobe(_) => Ctx::Kprobe,
        ProbeKind::Kretprobe(_) => Ctx::Kretprobe,
        ProbeKind::Tracepoint { .. } => Ctx::Tracepoint,
        ProbeKind::Profile { .. } => Ctx::Profile,
        ProbeKind::Begin | ProbeKind::End | ProbeKind::Interval { .. } => Ctx::Host,
    }
}

/// The result of checking a script.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// In order of first appearance; the map index of codegen.
    pub maps: Vec<MapSig>,
}

impl Checked {
    pub fn map(&self, name: &str) -> Option<(usize, &MapSig)> {
        self.maps.iter().enumerate().find(|(_, m)| m.name == name)
    }
}

/// Types of expressions in one probe of one block.
pub struct Types<'a> {
    pub world: &'a World,
    pub probe: &'a Probe,
    pub maps: &'a [MapSig],
    pub vars: BTreeMap<String, Ty>,
    /// While collecting map kinds, reads of maps not yet known are integers.
    lenient_reads: bool,
}

fn err<T>(span: Span, msg: impl Into<String>) -> Result<T, Diagnostic> {
    Err(Diagnostic::new(span, msg))
}

impl<'a> Types<'a> {
    pub fn new(world: &'a World, probe: &'a Probe, maps: &'a [MapSig]) -> Self {
        Types {
            world,
            probe,
            maps,
            vars: BTreeMap::new(),
            lenient_reads: false,
        }
    }

    pub fn ctx(&self) -> Ctx {
        ctx_of(&self.probe.kind)
    }

    /// The tracepoint field `name` of this probe.
    pub fn field(
        &self,
        path: &[(String, Span)],
    ) -> Result<ktrace_abi::trace::TracepointField, Diagnostic> {
        let (name, span) = &path[0];
        let ProbeKind::Tracepoint { category, name: tp } = &self.probe.kind else {
            return err(
                *span,
                format!(
                    "`args` names a tracepoint's fields or a kprobe's parameters, and `{}` is neither",
                    self.probe.text
                ),
            );
        };
        let Some(info) = self.world.tracepoint(category, tp) else {
            return err(
                self.probe.span,
                format!("no tracepoint `{category}:{tp}` in this kernel"),
            );
        };
        if path.len() > 1 {
            return err(
                path[1].1,
                format!("`{name}` is a field of `{category}:{tp}` with no fields of its own"),
            );
        }
        info.fields
            .iter()
            .find(|f| &f.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = info.fields.iter().map(|f| f.name.as_str()).collect();
                Diagnostic::new(
                    *span,
                    format!(
                        "`{category}:{tp}` has no field `{name}`: expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }

    /// Where the parameter path `args.PATH` of this kprobe is.
    pub fn param(
        &self,
        path: &[(String, Span)],
    ) -> Result<ktrace_symbols::params::ParamAccess, Diagnostic> {
        let span = path[0].1;
        let spec = match &self.probe.kind {
            ProbeKind::Kprobe(spec) => spec,
            ProbeKind::Kretprobe(_) => {
                return err(
                    span,
                    format!(
                        "`args` is not available in a kretprobe: the parameters of `{}` are gone when it returns; save what you need in its kprobe (`@x[tid] = args.NAME`) and read it here",
                        self.probe.text
                    ),
                )
            }
            _ => unreachable!("param() is asked for kprobes only"),
        };
        let Some(params) = &self.world.params else {
            return err(
                span,
                format!("the parameters of `{spec}` need the kernel's DWARF, which is not at hand: use arg0..arg5"),
            );
        };
        let names: Vec<&str> = path.iter().map(|(n, _)| n.as_str()).collect();
        params.access(spec, &names).map_err(|e| {
            let at = path.get(e.at).map_or(span, |(_, s)| *s);
            Diagnostic::new(at, e.message)
        })
    }

    /// The type of `e`.
    pub fn of(&self, e: &Expr) -> Result<Ty, Diagnostic> {
        let ctx = self.ctx();
        Ok(match &e.kind {
            ExprKind::Int(_) => Ty::U64,
            ExprKind::Str(s) => Ty::Literal(s.clone()),
            ExprKind::Builtin(b) => match b {
                Builtin::Pid | Builtin::Tid | Builtin::Cpu | Builtin::Nsecs | Builtin::Elapsed => {
                    Ty::U64
                }
                Builtin::Comm => Ty::Str(16),
                Builtin::Probe => Ty::Probe,
                Builtin::Func => {
                    if !matches!(ctx, Ctx::Kprobe | Ctx::Kretprobe) {
                        return err(
                            e.span,
                            format!(
                                "`func` needs a kprobe or kretprobe, not `{}`",
                                self.probe.text
                            ),
                        );
                    }
                    Ty::Func
                }
                Builtin::Retval => {
                    if ctx != Ctx::Kretprobe {
                        return err(
                            e.span,
                            format!(
                                "`retval` is only known in a kretprobe, not in `{}`",
                                self.probe.text
                            ),
                        );
                    }
                    Ty::Int { signed: true }
                }
                Builtin::Arg(n) => {
                    if ctx != Ctx::Kprobe {
                        return err(
                            e.span,
                            format!(
                                "`arg{n}` is a kprobe's argument register; `{}` has none",
                                self.probe.text
                            ),
                        );
                    }
                    Ty::U64
                }
                Builtin::Kstack => {
                    if ctx == Ctx::Host {
                        return err(
                            e.span,
                            format!(
                                "`kstack` needs a kernel probe; `{}` runs in the tool",
                                self.probe.text
                            ),
                        );
                    }
                    Ty::Stack
                }
            },
            ExprKind::Args(path) if matches!(ctx, Ctx::Kprobe | Ctx::Kretprobe) => {
                use ktrace_symbols::params::LeafKind;
                match self.param(path)?.kind {
                    LeafKind::Int { signed } => Ty::Int { signed },
                    LeafKind::Enum { variants, .. } => Ty::Enum {
                        name: self.param(path)?.type_name,
                        variants,
                    },
                    LeafKind::Bool | LeafKind::Char | LeafKind::Pointer => Ty::U64,
                }
            }
            ExprKind::Args(path) => {
                let f = self.field(path)?;
                if f.type_name.starts_with('[') {
                    Ty::Str(f.size)
                } else {
                    Ty::Int { signed: f.signed }
                }
            }
            ExprKind::Var(v) => match self.vars.get(v) {
                Some(t) => t.clone(),
                None => {
                    return err(
                        e.span,
                        format!("`${v}` is used before it is assigned in this probe"),
                    )
                }
            },
            ExprKind::Map(m) => {
                let sig = self.maps.iter().find(|s| s.name == m.name);
                let Some(sig) = sig else {
                    if self.lenient_reads {
                        return Ok(Ty::U64);
                    }
                    return err(m.span, format!("`@{}` is read but never assigned", m.name));
                };
                self.keys(m, sig)?;
                match &sig.kind {
                    MapKind::Value(t) => t.clone(),
                    MapKind::Count | MapKind::Sum | MapKind::Min | MapKind::Max => Ty::U64,
                    other => {
                        return err(
                            m.span,
                            format!(
                                "`@{}` holds {}, which cannot be read as a value",
                                m.name,
                                other.describe()
                            ),
                        )
                    }
                }
            }
            ExprKind::Unary(op, a) => {
                let t = self.of(a)?;
                self.int(a, &t, "an operand of a unary operator")?;
                match op {
                    UnOp::Not => Ty::U64,
                    UnOp::Neg => Ty::Int { signed: true },
                    UnOp::BitNot => t,
                }
            }
            ExprKind::Binary(op, a, b) => {
                let (ta, tb) = (self.of(a)?, self.of(b)?);
                if matches!(op, BinOp::Eq | BinOp::Ne) {
                    match (&ta, &tb) {
                        (Ty::Str(_), Ty::Literal(_)) | (Ty::Literal(_), Ty::Str(_)) => return Ok(Ty::U64),
                        (Ty::Str(_), Ty::Str(_)) => {
                            return err(e.span, "comparing two string values is not supported: compare a string with a literal such as \"kworker\"")
                        }
                        _ => {}
                    }
                }
                self.int(a, &ta, "an operand")?;
                self.int(b, &tb, "an operand")?;
                let signed = matches!(ta, Ty::Int { signed: true })
                    || matches!(tb, Ty::Int { signed: true });
                match op {
                    BinOp::Eq
                    | BinOp::Ne
                    | BinOp::Lt
                    | BinOp::Le
                    | BinOp::Gt
                    | BinOp::Ge
                    | BinOp::LogAnd
                    | BinOp::LogOr => Ty::U64,
                    _ => Ty::Int { signed },
                }
            }
            ExprKind::Ternary(c, a, b) => {
                let tc = self.of(c)?;
                self.int(c, &tc, "a condition")?;
                let (ta, tb) = (self.of(a)?, self.of(b)?);
                match (&ta, &tb) {
                    (Ty::Int { signed: x }, Ty::Int { signed: y }) => Ty::Int { signed: *x || *y },
                    _ if ta == tb && !matches!(ta, Ty::Literal(_)) => ta,
                    _ => {
                        return err(
                            e.span,
                            format!(
                                "the branches of `?:` differ: {} and {}",
                                ta.describe(),
                                tb.describe()
                            ),
                        )
                    }
                }
            }
            ExprKind::Call(name, args) if name == "str" => {
                if ctx == Ctx::Host {
                    return err(
                        e.span,
                        format!(
                            "`str()` reads kernel memory; `{}` runs in the tool",
                            self.probe.text
                        ),
                    );
                }
                if args.is_empty() || args.len() > 2 {
                    return err(
                        e.span,
                        format!(
                            "str(ptr) or str(ptr, len) takes 1 or 2 arguments, not {}",
                            args.len()
                        ),
                    );
                }
                for a in args {
                    let t = self.of(a)?;
                    self.int(a, &t, "an argument of str()")?;
                }
                Ty::Str(STR_LEN)
            }
            ExprKind::Call(name, _) => {
                if AggFunc::from_name(name).is_some() {
                    return err(e.span, format!("`{name}()` is a map aggregation: expected `@name = {name}(...)` as a statement"));
                }
                return err(e.span, format!("unknown function `{name}`"));
            }
        })
    }

    fn int(&self, e: &Expr, t: &Ty, what: &str) -> Result<(), Diagnostic> {
        match t {
            Ty::Int { .. } | Ty::Enum { .. } => Ok(()),
            other => err(
                e.span,
                format!("expected an integer as {what}, found {}", other.describe()),
            ),
        }
    }

    /// Checks the key expressions of `m` against the map's signature.
    fn keys(&self, m: &MapRef, sig: &MapSig) -> Result<(), Diagnostic> {
        let got = self.key_types(m)?;
        if got.len() != sig.keys.len() {
            return err(
                m.span,
                format!(
                    "`@{}` has {} key(s) elsewhere, not {}",
                    m.name,
                    sig.keys.len(),
                    got.len()
                ),
            );
        }
        for (i, (g, want)) in got.iter().zip(&sig.keys).enumerate() {
            if !same_key(g, want) {
                return err(
                    m.keys[i].span,
                    format!(
                        "key {} of `@{}` is {}, but it was {} before",
                        i + 1,
                        m.name,
                        g.describe(),
                        want.describe()
                    ),
                );
            }
        }
        Ok(())
    }

    pub fn key_types(&self, m: &MapRef) -> Result<Vec<Ty>, Diagnostic> {
        m.keys
            .iter()
            .map(|k| {
                let t = self.of(k)?;
                if let Ty::Literal(_) = t {
                    return err(k.span, "a string literal cannot be a map key: expected a value such as comm or pid");
                }
                Ok(t)
            })
            .collect()
    }
}

fn same_key(a: &Ty, b: &Ty) -> bool {
    matches!((a, b), (Ty::Int { .. }, Ty::Int { .. })) || a == b
}

/// Checks the script: map kinds first (so a read may come before the
/// block that assigns), then every expression.
pub fn check(script: &Script, world: &World) -> Result<Checked, Diagnostic> {
    let mut profile: Option<&Probe> = None;
    for b in &script.blocks {
        for p in &b.probes {
            if let ProbeKind::Profile { hz } = p.kind {
                if let Some(first) = profile {
                    return err(p.span, format!("the kernel has one sampling timer, which `{}` already uses: one `profile` probe a script", first.text));
                }
                profile = Some(p);
                use ktrace_abi::trace::{SAMPLE_MAX_HZ, SAMPLE_MIN_HZ};
                if !(SAMPLE_MIN_HZ..=SAMPLE_MAX_HZ).contains(&hz) {
                    return err(p.span, format!("the kernel's sampling timer runs at {SAMPLE_MIN_HZ} to {SAMPLE_MAX_HZ} Hz, not {hz} Hz"));
                }
            }
        }
    }
    let mut maps: Vec<MapSig> = Vec::new();
    for lenient in [true, false] {
        for block in &script.blocks {
            for probe in &block.probes {
                let snapshot = maps.clone();
                let mut t = Types::new(world, probe, &snapshot);
                t.lenient_reads = lenient;
                if let Some(f) = &block.filter {
                    let ty = t.of(f)?;
                    t.int(f, &ty, "the filter")?;
                }
                let mut new_maps = snapshot.clone();
                stmts(&mut t, &block.body, &mut new_maps)?;
                maps = new_maps;
            }
        }
    }
    for m in &maps {
        if let MapKind::Lhist { min, max, step } = m.kind {
            let buckets = max.checked_sub(min).map_or(i64::MAX, |w| w / step);
            if buckets > 1000 {
                return err(
                    m.first,
                    format!("lhist({min}, {max}, {step}) has {buckets} buckets: at most 1000"),
                );
            }
        }
    }
    Ok(Checked { maps })
}

/// The scratch variables of `body` and their types, for the probe `t` is
/// for (on a checked script).
pub fn vars_of(t: &Types<'_>, body: &[Stmt]) -> Result<BTreeMap<String, Ty>, Diagnostic> {
    let mut scratch = Types::new(t.world, t.probe, t.maps);
    let mut maps = t.maps.to_vec();
    stmts(&mut scratch, body, &mut maps)?;
    Ok(scratch.vars)
}

fn stmts(t: &mut Types<'_>, body: &[Stmt], maps: &mut Vec<MapSig>) -> Result<(), Diagnostic> {
    for s in body {
        stmt(t, s, maps)?;
    }
    Ok(())
}

fn define(
    maps: &mut Vec<MapSig>,
    m: &MapRef,
    keys: Vec<Ty>,
    kind: MapKind,
    span: Span,
) -> Result<(), Diagnostic> {
    match maps.iter().find(|s| s.name == m.name) {
        None => {
            maps.push(MapSig {
                name: m.name.clone(),
                keys,
                kind,
                first: span,
            });
            Ok(())
        }
        Some(s) => {
            if s.kind != kind
                && !matches!(
                    (&s.kind, &kind),
                    (
                        MapKind::Value(Ty::Int { .. }),
                        MapKind::Value(Ty::Int { .. })
                    )
                )
            {
                return err(
                    span,
                    format!(
                        "`@{}` holds {}, so it cannot also hold {}",
                        m.name,
                        s.kind.describe(),
                        kind.describe()
                    ),
                );
            }
            if s.keys.len() != keys.len() || s.keys.iter().zip(&keys).any(|(a, b)| !same_key(a, b))
            {
                let show = |k: &[Ty]| k.iter().map(Ty::describe).collect::<Vec<_>>().join(", ");
                return err(
                    m.span,
                    format!(
                        "`@{}` is keyed by [{}] elsewhere, not [{}]",
                        m.name,
                        show(&s.keys),
                        show(&keys)
                    ),
                );
            }
            Ok(())
        }
    }
}

fn const_int(e: &Expr) -> Option<i64> {
    match &e.kind {
        ExprKind::Int(v) => i64::try_from(*v).ok(),
        ExprKind::Unary(UnOp::Neg, a) => const_int(a).map(|v| -v),
        _ => None,
    }
}

fn stmt(t: &mut Types<'_>, s: &Stmt, maps: &mut Vec<MapSig>) -> Result<(), Diagnostic> {
    match s {
        Stmt::MapAssign { map, value } => {
            let keys = t.key_types(map)?;
            let ty = t.of(value)?;
            if let Ty::Literal(_) = ty {
                return err(value.span, "a string literal cannot be stored in a map: expected a value such as comm or nsecs");
            }
            define(maps, map, keys, MapKind::Value(ty), map.span)
        }
        Stmt::MapAgg {
            map,
            func,
            args,
            span,
        } => {
            let keys = t.key_types(map)?;
            let want = match func {
                AggFunc::Count => 0,
                AggFunc::Lhist => 4,
                _ => 1,
            };
            if args.len() != want {
                let what = match func {
                    AggFunc::Count => "count() takes no arguments".to_string(),
                    AggFunc::Lhist => "lhist(value, min, max, step) takes 4 arguments".to_string(),
                    f => format!("{}(value) takes 1 argument", f.name()),
                };
                return err(*span, format!("{what}, not {}", args.len()));
            }
            if let Some(v) = args.first() {
                let ty = t.of(v)?;
                t.int(v, &ty, &format!("the value of {}()", func.name()))?;
            }
            let kind = match func {
                AggFunc::Count => MapKind::Count,
                AggFunc::Sum => MapKind::Sum,
                AggFunc::Avg => MapKind::Avg,
                AggFunc::Min => MapKind::Min,
                AggFunc::Max => MapKind::Max,
                AggFunc::Stats => MapKind::Stats,
                AggFunc::Hist => MapKind::Hist,
                AggFunc::Lhist => {
                    let mut c = [0i64; 3];
                    for (i, a) in args[1..].iter().enumerate() {
                        c[i] = const_int(a).ok_or_else(|| {
                            Diagnostic::new(
                                a.span,
                                "lhist's min, max and step must be integer constants",
                            )
                        })?;
                    }
                    if c[2] <= 0 || c[1] <= c[0] {
                        return err(*span, "lhist needs min < max and a step above 0");
                    }
                    MapKind::Lhist {
                        min: c[0],
                        max: c[1],
                        step: c[2],
                    }
                }
            };
            define(maps, map, keys, kind, map.span)
        }
        Stmt::VarAssign { name, value, span } => {
            let ty = t.of(value)?;
            let ty = match ty {
                Ty::Literal(_) => {
                    return err(
                        value.span,
                        "a string literal cannot be stored in a variable",
                    )
                }
                other => other,
            };
            match t.vars.get(name) {
                Some(old) if !same_key(old, &ty) => err(
                    *span,
                    format!(
                        "`${name}` holds {}, so it cannot be assigned {}",
                        old.describe(),
                        ty.describe()
                    ),
                ),
                Some(_) => Ok(()),
                None => {
                    t.vars.insert(name.clone(), ty);
                    Ok(())
                }
            }
        }
        Stmt::Printf {
            format,
            format_span,
            args,
            span,
        } => {
            let convs =
                crate::output::conversions(format).map_err(|m| Diagnostic::new(*format_span, m))?;
            if convs.len() != args.len() {
                return err(
                    *span,
                    format!(
                        "the format has {} conversion(s) but {} argument(s) follow it",
                        convs.len(),
                        args.len()
                    ),
                );
            }
            for (conv, a) in convs.iter().zip(args) {
                let ty = t.of(a)?;
                let ok = match conv {
                    's' => true,
                    _ => matches!(ty, Ty::Int { .. } | Ty::Func | Ty::Enum { .. }),
                };
                if !ok {
                    return err(
                        a.span,
                        format!(
                            "`%{conv}` expects an integer, found {}: use `%s`",
                            ty.describe()
                        ),
                    );
                }
            }
            Ok(())
        }
        Stmt::Print { map, span } | Stmt::Clear { map, span } => {
            if !t.lenient_reads
                && !t.maps.iter().any(|m| &m.name == map)
                && !maps.iter().any(|m| &m.name == map)
            {
                return err(*span, format!("no map `@{map}` in this script"));
            }
            Ok(())
        }
        Stmt::Delete { map, .. } => {
            if !t.lenient_reads {
                let Some(sig) = maps.iter().find(|m| m.name == map.name).cloned() else {
                    return err(map.span, format!("no map `@{}` in this script", map.name));
                };
                if sig.kind.bucketed() {
                    return err(map.span, format!("`@{}` is a histogram: delete one element of a value map, or clear(@{})", map.name, map.name));
                }
                t.keys(map, &sig)?;
            }
            Ok(())
        }
        Stmt::Exit { .. } => Ok(()),
        Stmt::If {
            cond,
            then,
            otherwise,
        } => {
            let ty = t.of(cond)?;
            t.int(cond, &ty, "the `if` condition")?;
            stmts(t, then, maps)?;
            stmts(t, otherwise, maps)
        }
    }
}
