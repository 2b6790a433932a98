//! The syntax tree. Every node keeps the [`Span`] it was parsed from.

use crate::diag::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub blocks: Vec<ProbeBlock>,
}

/// `probe, probe /filter/ { statements }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeBlock {
    pub probes: Vec<Probe>,
    pub filter: Option<Expr>,
    pub body: Vec<Stmt>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub kind: ProbeKind,
    /// The probe as written (`kprobe:RequestQueue::submit_bio`).
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    Begin,
    End,
    /// A Rust path, glob, `path+offset` or `file.rs:line`.
    Kprobe(String),
    Kretprobe(String),
    Tracepoint {
        category: String,
        name: String,
    },
    Profile {
        hz: u32,
    },
    Interval {
        ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct MapRef {
    pub name: String,
    pub keys: Vec<Expr>,
    pub span: Span,
}

/// Map aggregations (`@x = count()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Stats,
    Hist,
    Lhist,
}

impl AggFunc {
    pub fn from_name(name: &str) -> Option<AggFunc> {
        Some(match name {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "stats" => AggFunc::Stats,
            "hist" => AggFunc::Hist,
            "lhist" => AggFunc::Lhist,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Avg => "avg",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Stats => "stats",
            AggFunc::Hist => "hist",
            AggFunc::Lhist => "lhist",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `@m[k] = expr`.
    MapAssign {
        map: MapRef,
        value: Expr,
    },
    /// `@m[k] = count()`, `hist(e)`, ...; `@m[k] += e` is `sum(e)`.
    MapAgg {
        map: MapRef,
        func: AggFunc,
        args: Vec<Expr>,
        span: Span,
    },
    /// `$x = expr`.
    VarAssign {
        name: String,
        value: Expr,
        span: Span,
    },
    Printf {
        format: String,
        format_span: Span,
        args: Vec<Expr>,
        span: Span,
    },
    /// `print(@m)`.
    Print {
        map: String,
        span: Span,
    },
    /// `clear(@m)`.
    Clear {
        map: String,
        span: Span,
    },
    /// `delete(@m[k])`.
    Delete {
        map: MapRef,
        span: Span,
    },
    Exit {
        span: Span,
    },
    If {
        cond: Expr,
        then: Vec<Stmt>,
        otherwise: Vec<Stmt>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Pid,
    Tid,
    Cpu,
    Comm,
    Nsecs,
    Elapsed,
    Func,
    Probe,
    Retval,
    Kstack,
    Arg(u8),
}

impl Builtin {
    pub fn from_name(name: &str) -> Option<Builtin> {
        Some(match name {
            "pid" => Builtin::Pid,
            "tid" => Builtin::Tid,
            "cpu" => Builtin::Cpu,
            "comm" => Builtin::Comm,
            "nsecs" => Builtin::Nsecs,
            "elapsed" => Builtin::Elapsed,
            "func" => Builtin::Func,
            "probe" => Builtin::Probe,
            "retval" => Builtin::Retval,
            "kstack" => Builtin::Kstack,
            "arg0" => Builtin::Arg(0),
            "arg1" => Builtin::Arg(1),
            "arg2" => Builtin::Arg(2),
            "arg3" => Builtin::Arg(3),
            "arg4" => Builtin::Arg(4),
            "arg5" => Builtin::Arg(5),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Xor,
    Shl,
    Shr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    LogAnd,
    LogOr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
    BitNot,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Int(u64),
    Str(String),
    Builtin(Builtin),
    /// `args.a.b`: a tracepoint field (or, later, a parameter's field).
    Args(Vec<(String, Span)>),
    Var(String),
    Map(MapRef),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Unary(UnOp, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
    /// A function used as a value (`count()` outside a map assignment is
    /// refused by the checker with a message saying where it belongs).
    Call(String, Vec<Expr>),
}
