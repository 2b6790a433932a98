//! Recursive descent over [`Lexer`] tokens, one token of look-ahead.
//!
//! ```text
//! script  := block*
//! block   := probe (',' probe)* ('/' expr '/')? '{' stmts '}'
//! stmts   := (stmt (';' stmt)*)? ';'?
//! stmt    := '@'map keys? ('=' expr | '+=' expr | '++') | '$'var '=' expr
//!          | 'if' '(' expr ')' '{' stmts '}' ('else' ('if' ... | '{' stmts '}'))?
//!          | printf(...) | print(@m) | clear(@m) | delete(@m[k]) | exit()
//! expr    := C precedence: ?: || && | ^ & ==,!= <,<=,>,>= <<,>> +,- *,/,% unary
//! ```

use crate::ast::*;
use crate::diag::{Diagnostic, Span};
use crate::lexer::{Lexer, Tok};

pub fn parse(src: &str) -> Result<Script, Diagnostic> {
    let mut p = Parser::new(src)?;
    let mut blocks = Vec::new();
    loop {
        p.lex.skip_blank()?;
        if p.lex.pos() >= src.len() {
            break;
        }
        blocks.push(p.block()?);
    }
    if blocks.is_empty() {
        return Err(Diagnostic::new(
            Span::new(0, 0),
            "the script is empty: expected a probe such as `kprobe:PATH { ... }` or `BEGIN { ... }`",
        ));
    }
    Ok(Script { blocks })
}

struct Parser<'s> {
    lex: Lexer<'s>,
    /// The current token (after `bump`), lazily read.
    tok: Option<(Tok, Span)>,
    /// Inside a filter at parenthesis depth 0, `/` ends the filter.
    in_filter: bool,
}

type R<T> = Result<T, Diagnostic>;

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> R<Self> {
        Ok(Parser {
            lex: Lexer::new(src),
            tok: None,
            in_filter: false,
        })
    }

    fn peek(&mut self) -> R<&(Tok, Span)> {
        if self.tok.is_none() {
            self.tok = Some(self.lex.next_token()?);
        }
        Ok(self.tok.as_ref().expect("just filled"))
    }

    fn bump(&mut self) -> R<(Tok, Span)> {
        self.peek()?;
        Ok(self.tok.take().expect("peeked"))
    }

    fn is_punct(&mut self, p: &str) -> R<bool> {
        Ok(matches!(&self.peek()?.0, Tok::Punct(q) if *q == p))
    }

    fn eat(&mut self, p: &str) -> R<bool> {
        if self.is_punct(p)? {
            self.bump()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn expect(&mut self, p: &str, what: &str) -> R<Span> {
        let (t, span) = self.bump()?;
        match t {
            Tok::Punct(q) if q == p => Ok(span),
            other => Err(Diagnostic::new(
                span,
                format!("expected `{p}` {what}, found {}", other.describe()),
            )),
        }
    }

    fn block(&mut self) -> R<ProbeBlock> {
        let mut probes = vec![self.probe()?];
        loop {
            self.lex.skip_blank()?;
            if self.lex_rest().starts_with(',') {
                self.lex.next_token()?;
                self.lex.skip_blank()?;
                probes.push(self.probe()?);
            } else {
                break;
            }
        }
        let filter = if self.eat("/")? {
            self.in_filter = true;
            let e = self.expr();
            self.in_filter = false;
            let e = e?;
            self.expect("/", "to end the filter")?;
            Some(e)
        } else {
            None
        };
        self.expect("{", "to open the probe's block")?;
        let body = self.stmts()?;
        self.expect("}", "to close the block")?;
        Ok(ProbeBlock {
            probes,
            filter,
            body,
        })
    }

    /// The unread source (a probe name is read raw from it).
    fn lex_rest(&self) -> &'s str {
        &self.lex.source()[self.lex.pos()..]
    }

    fn probe(&mut self) -> R<Probe> {
        debug_assert!(self.tok.is_none());
        let (text, span) = self.lex.probe_text()?;
        if text.is_empty() {
            return Err(Diagnostic::new(
                Span::new(span.start, span.start + 1),
                "expected a probe such as `kprobe:PATH`, `tracepoint:CATEGORY:NAME`, `BEGIN` or `END`",
            ));
        }
        let (kind_text, rest) = match text.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (text.as_str(), None),
        };
        let rest_span = Span::new(span.start + kind_text.len() + 1, span.end);
        let need = |what: &str| -> R<&str> {
            match rest {
                Some(r) if !r.is_empty() => Ok(r),
                _ => Err(Diagnostic::new(
                    Span::new(span.end, span.end + 1),
                    format!("expected {what} after `{kind_text}:`"),
                )),
            }
        };
        let number = |s: &str, what: &str| -> R<u64> {
            s.parse::<u64>()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| Diagnostic::new(rest_span, format!("expected {what}, found `{s}`")))
        };
        let kind = match kind_text {
            "BEGIN" | "END" if rest.is_some() => {
                return Err(Diagnostic::new(
                    span,
                    format!("`{kind_text}` takes no target: expected `{kind_text}` alone"),
                ))
            }
            "BEGIN" => ProbeKind::Begin,
            "END" => ProbeKind::End,
            "kprobe" | "k" => ProbeKind::Kprobe(need("a Rust path, glob or file.rs:line")?.to_string()),
            "kretprobe" | "kr" => {
                ProbeKind::Kretprobe(need("a Rust path or glob")?.to_string())
            }
            "tracepoint" | "t" => {
                let r = need("CATEGORY:NAME")?;
                let Some((c, n)) = r.split_once(':').filter(|(c, n)| !c.is_empty() && !n.is_empty())
                else {
                    return Err(Diagnostic::new(
                        rest_span,
                        format!("expected CATEGORY:NAME (such as `block:block_rq_issue`), found `{r}`"),
                    ));
                };
                ProbeKind::Tracepoint {
                    category: c.to_string(),
                    name: n.to_string(),
                }
            }
            "profile" | "p" => {
                let r = need("hz:RATE")?;
                let Some(v) = r.strip_prefix("hz:") else {
                    return Err(Diagnostic::new(
                        rest_span,
                        format!("expected `hz:RATE` (such as `profile:hz:99`), found `{r}`"),
                    ));
                };
                let hz = number(v, "a rate in Hz")?;
                ProbeKind::Profile {
                    hz: u32::try_from(hz).unwrap_or(u32::MAX),
                }
            }
            "interval" | "i" => {
                let r = need("s:SECONDS or ms:MILLISECONDS")?;
                let ms = if let Some(v) = r.strip_prefix("s:") {
                    number(v, "a number of seconds")?.saturating_mul(1000)
                } else if let Some(v) = r.strip_prefix("ms:") {
                    number(v, "a number of milliseconds")?
                } else {
                    return Err(Diagnostic::new(
                        rest_span,
                        format!("expected `s:SECONDS` or `ms:MILLISECONDS` (such as `interval:s:1`), found `{r}`"),
                    ));
                };
                ProbeKind::Interval { ms }
            }
            other => {
                return Err(Diagnostic::new(
                    Span::new(span.start, span.start + other.len()),
                    format!("unknown probe type `{other}`: expected kprobe, kretprobe, tracepoint, profile, interval, BEGIN or END"),
                ))
            }
        };
        Ok(Probe { kind, text, span })
    }

    fn stmts(&mut self) -> R<Vec<Stmt>> {
        let mut out = Vec::new();
        loop {
            if self.is_punct("}")? || matches!(self.peek()?.0, Tok::Eof) {
                return Ok(out);
            }
            if self.eat(";")? {
                continue;
            }
            let s = self.stmt()?;
            let block_like = matches!(s, Stmt::If { .. });
            out.push(s);
            if block_like || self.eat(";")? {
                continue;
            }
            if !self.is_punct("}")? && !matches!(self.peek()?.0, Tok::Eof) {
                let (t, span) = self.bump()?;
                return Err(Diagnostic::new(
                    span,
                    format!(
                        "expected `;` or `}}` after the statement, found {}",
                        t.describe()
                    ),
                ));
            }
        }
    }

    fn block_body(&mut self, what: &str) -> R<Vec<Stmt>> {
        self.expect("{", what)?;
        let b = self.stmts()?;
        self.expect("}", "to close the block")?;
        Ok(b)
    }

    fn stmt(&mut self) -> R<Stmt> {
        let (tok, span) = self.peek()?.clone();
        match tok {
            Tok::Map(_) => {
                let map = self.map_ref()?;
                if self.eat("++")? {
                    let span = map.span;
                    return Ok(Stmt::MapAgg { map, func: AggFunc::Count, args: vec![], span });
                }
                if self.eat("+=")? {
                    let value = self.expr()?;
                    let span = map.span.to(value.span);
                    return Ok(Stmt::MapAgg { map, func: AggFunc::Sum, args: vec![value], span });
                }
                self.expect("=", "to assign to the map (or `+=`, `++`)")?;
                let value = self.expr()?;
                if let ExprKind::Call(name, args) = &value.kind {
                    if let Some(func) = AggFunc::from_name(name) {
                        return Ok(Stmt::MapAgg {
                            map,
                            func,
                            args: args.clone(),
                            span: value.span,
                        });
                    }
                }
                Ok(Stmt::MapAssign { map, value })
            }
            Tok::Var(name) => {
                self.bump()?;
                self.expect("=", &format!("to assign to `${name}`"))?;
                let value = self.expr()?;
                Ok(Stmt::VarAssign { name, span: span.to(value.span), value })
            }
            Tok::Ident(word) if word == "if" => {
                self.bump()?;
                self.expect("(", "after `if`")?;
                let cond = self.expr()?;
                self.expect(")", "to close the condition")?;
                let then = self.block_body("to open the `if` block")?;
                let otherwise = if matches!(&self.peek()?.0, Tok::Ident(w) if w == "else") {
                    self.bump()?;
                    if matches!(&self.peek()?.0, Tok::Ident(w) if w == "if") {
                        vec![self.stmt()?]
                    } else {
                        self.block_body("to open the `else` block")?
                    }
                } else {
                    Vec::new()
                };
                Ok(Stmt::If { cond, then, otherwise })
            }
            Tok::Ident(word) => {
                self.bump()?;
                if !self.is_punct("(")? {
                    return Err(Diagnostic::new(
                        span,
                        format!("expected a statement (a map or variable assignment, or a call such as printf(...)), found `{word}`"),
                    ));
                }
                self.bump()?;
                self.call_stmt(&word, span)
            }
            other => Err(Diagnostic::new(
                span,
                format!("expected a statement (a map or variable assignment, or a call such as printf(...)), found {}", other.describe()),
            )),
        }
    }

    /// A statement call after its `(`.
    fn call_stmt(&mut self, name: &str, name_span: Span) -> R<Stmt> {
        let map_arg = |p: &mut Self, what: &str| -> R<(String, Span)> {
            match p.bump()? {
                (Tok::Map(m), s) => Ok((m, s)),
                (t, s) => Err(Diagnostic::new(
                    s,
                    format!(
                        "expected a map such as `@name` {what}, found {}",
                        t.describe()
                    ),
                )),
            }
        };
        let stmt = match name {
            "printf" => {
                let (format, format_span) = match self.bump()? {
                    (Tok::Str(s), sp) => (s, sp),
                    (t, sp) => {
                        return Err(Diagnostic::new(
                            sp,
                            format!(
                                "expected a format string as printf's first argument, found {}",
                                t.describe()
                            ),
                        ))
                    }
                };
                let mut args = Vec::new();
                while self.eat(",")? {
                    args.push(self.expr()?);
                }
                let end = self.expect(")", "to close printf's arguments")?;
                return Ok(Stmt::Printf {
                    format,
                    format_span,
                    args,
                    span: name_span.to(end),
                });
            }
            "print" => {
                let (map, s) = map_arg(self, "to print")?;
                Stmt::Print {
                    map,
                    span: name_span.to(s),
                }
            }
            "clear" => {
                let (map, s) = map_arg(self, "to clear")?;
                Stmt::Clear {
                    map,
                    span: name_span.to(s),
                }
            }
            "delete" => {
                if !matches!(self.peek()?.0, Tok::Map(_)) {
                    let (t, s) = self.bump()?;
                    return Err(Diagnostic::new(
                        s,
                        format!(
                            "expected a map element such as `@start[tid]` to delete, found {}",
                            t.describe()
                        ),
                    ));
                }
                let map = self.map_ref()?;
                Stmt::Delete {
                    span: name_span.to(map.span),
                    map,
                }
            }
            "exit" => Stmt::Exit { span: name_span },
            other => {
                let known = if AggFunc::from_name(other).is_some() {
                    format!("`{other}()` is a map aggregation: expected `@name = {other}(...)`")
                } else {
                    format!("unknown statement `{other}(...)`: expected printf, print, clear, delete or exit")
                };
                return Err(Diagnostic::new(name_span, known));
            }
        };
        self.expect(")", &format!("to close `{name}(`"))?;
        Ok(stmt)
    }

    fn map_ref(&mut self) -> R<MapRef> {
        let (Tok::Map(name), span) = self.bump()? else {
            unreachable!("called on a map token")
        };
        let mut keys = Vec::new();
        let mut end = span;
        if self.eat("[")? {
            let saved = std::mem::replace(&mut self.in_filter, false);
            loop {
                keys.push(self.expr()?);
                if !self.eat(",")? {
                    break;
                }
            }
            self.in_filter = saved;
            end = self.expect("]", "to close the map key")?;
        }
        Ok(MapRef {
            name,
            keys,
            span: span.to(end),
        })
    }

    fn expr(&mut self) -> R<Expr> {
        let cond = self.binary(0)?;
        if self.eat("?")? {
            let a = self.expr()?;
            self.expect(":", "between the two branches of `?:`")?;
            let b = self.expr()?;
            let span = cond.span.to(b.span);
            return Ok(Expr {
                kind: ExprKind::Ternary(Box::new(cond), Box::new(a), Box::new(b)),
                span,
            });
        }
        Ok(cond)
    }

    fn binop(&mut self, level: usize) -> R<Option<BinOp>> {
        const LEVELS: &[&[(&str, BinOp)]] = &[
            &[("||", BinOp::LogOr)],
            &[("&&", BinOp::LogAnd)],
            &[("|", BinOp::Or)],
            &[("^", BinOp::Xor)],
            &[("&", BinOp::And)],
            &[("==", BinOp::Eq), ("!=", BinOp::Ne)],
            &[
                ("<", BinOp::Lt),
                ("<=", BinOp::Le),
                (">", BinOp::Gt),
                (">=", BinOp::Ge),
            ],
            &[("<<", BinOp::Shl), (">>", BinOp::Shr)],
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Mod)],
        ];
        let Some(ops) = LEVELS.get(level) else {
            return Ok(None);
        };
        let in_filter = self.in_filter;
        let Tok::Punct(p) = self.peek()?.0 else {
            return Ok(None);
        };
        if in_filter && p == "/" {
            return Ok(None);
        }
        Ok(ops.iter().find(|(s, _)| *s == p).map(|(_, op)| *op))
    }

    fn binary(&mut self, level: usize) -> R<Expr> {
        if level == 10 {
            return self.unary();
        }
        let mut lhs = self.binary(level + 1)?;
        while let Some(op) = self.binop(level)? {
            self.bump()?;
            let rhs = self.binary(level + 1)?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> R<Expr> {
        let op = match &self.peek()?.0 {
            Tok::Punct("!") => Some(UnOp::Not),
            Tok::Punct("-") => Some(UnOp::Neg),
            Tok::Punct("~") => Some(UnOp::BitNot),
            _ => None,
        };
        if let Some(op) = op {
            let (_, span) = self.bump()?;
            let e = self.unary()?;
            let span = span.to(e.span);
            return Ok(Expr {
                kind: ExprKind::Unary(op, Box::new(e)),
                span,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> R<Expr> {
        let (tok, span) = self.peek()?.clone();
        match tok {
            Tok::Int(v) => {
                self.bump()?;
                Ok(Expr {
                    kind: ExprKind::Int(v),
                    span,
                })
            }
            Tok::Str(s) => {
                self.bump()?;
                Ok(Expr {
                    kind: ExprKind::Str(s),
                    span,
                })
            }
            Tok::Var(v) => {
                self.bump()?;
                Ok(Expr {
                    kind: ExprKind::Var(v),
                    span,
                })
            }
            Tok::Map(_) => {
                let m = self.map_ref()?;
                Ok(Expr {
                    span: m.span,
                    kind: ExprKind::Map(m),
                })
            }
            Tok::Punct("(") => {
                self.bump()?;
                let saved = std::mem::replace(&mut self.in_filter, false);
                let e = self.expr();
                self.in_filter = saved;
                let mut e = e?;
                let end = self.expect(")", "to close the parenthesis")?;
                e.span = span.to(end);
                Ok(e)
            }
            Tok::Ident(name) => {
                self.bump()?;
                if name == "args" {
                    let mut path = Vec::new();
                    let mut end = span;
                    while self.eat(".")? || self.eat_arrow()? {
                        match self.bump()? {
                            (Tok::Ident(f), s) => {
                                end = s;
                                path.push((f, s));
                            }
                            (t, s) => {
                                return Err(Diagnostic::new(
                                    s,
                                    format!(
                                        "expected a field name after `.`, found {}",
                                        t.describe()
                                    ),
                                ))
                            }
                        }
                    }
                    if path.is_empty() {
                        return Err(Diagnostic::new(
                            span,
                            "expected a field after `args`, such as `args.bytes`",
                        ));
                    }
                    return Ok(Expr {
                        kind: ExprKind::Args(path),
                        span: span.to(end),
                    });
                }
                if self.is_punct("(")? {
                    self.bump()?;
                    let mut args = Vec::new();
                    let saved = std::mem::replace(&mut self.in_filter, false);
                    if !self.is_punct(")")? {
                        loop {
                            args.push(self.expr()?);
                            if !self.eat(",")? {
                                break;
                            }
                        }
                    }
                    self.in_filter = saved;
                    let end = self.expect(")", &format!("to close `{name}(`"))?;
                    return Ok(Expr {
                        kind: ExprKind::Call(name, args),
                        span: span.to(end),
                    });
                }
                match Builtin::from_name(&name) {
                    Some(b) => Ok(Expr { kind: ExprKind::Builtin(b), span }),
                    None => Err(Diagnostic::new(
                        span,
                        format!("unknown identifier `{name}`: expected a builtin (pid tid cpu comm nsecs elapsed func probe retval kstack arg0..arg5), `args.FIELD`, `$var` or `@map`"),
                    )),
                }
            }
            other => Err(Diagnostic::new(
                span,
                format!("expected an expression, found {}", other.describe()),
            )),
        }
    }

    /// `->` (as in bpftrace's `args->field`).
    fn eat_arrow(&mut self) -> R<bool> {
        if self.is_punct("-")? && self.lex_rest().starts_with('>') {
            self.bump()?;
            self.bump()?;
            return Ok(true);
        }
        Ok(false)
    }
}
