//! Tokens of the language. Probe names (`kprobe:kernel::block::*`,
//! `kprobe:queue.rs:120`) are not tokens: the parser reads them raw with
//! [`Lexer::probe_text`], since Rust paths and file names hold characters
//! that are operators elsewhere.

use crate::diag::{Diagnostic, Span};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    /// `@name` (`@` alone is the unnamed map, name `""`).
    Map(String),
    /// `$name`.
    Var(String),
    Int(u64),
    Str(String),
    /// Operators and punctuation, as written.
    Punct(&'static str),
    Eof,
}

impl Tok {
    /// How the token is named in "expected …, found …" messages.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Map(s) => format!("`@{s}`"),
            Tok::Var(s) => format!("`${s}`"),
            Tok::Int(v) => format!("`{v}`"),
            Tok::Str(_) => "a string".into(),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Eof => "the end of the script".into(),
        }
    }
}

/// Longest first, so `<=` wins over `<`.
const PUNCT: &[&str] = &[
    "<<", ">>", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=", "++", "--", "{", "}", "(", ")",
    "[", "]", ",", ";", "=", "<", ">", "+", "-", "*", "/", "%", "&", "|", "^", "!", "~", ".", "?",
    ":",
];

pub struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

impl<'s> Lexer<'s> {
    pub fn new(src: &'s str) -> Self {
        Lexer { src, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn source(&self) -> &'s str {
        self.src
    }

    fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    /// Skips blanks and comments.
    pub fn skip_blank(&mut self) -> Result<(), Diagnostic> {
        loop {
            let r = self.rest();
            let t = r.trim_start();
            self.pos += r.len() - t.len();
            if t.starts_with("//") {
                self.pos += t.find('\n').unwrap_or(t.len());
            } else if let Some(body) = t.strip_prefix("/*") {
                let end = body.find("*/").ok_or_else(|| {
                    Diagnostic::new(
                        Span::new(self.pos, self.pos + 2),
                        "this comment is never closed: expected `*/`",
                    )
                })?;
                self.pos += end + 4;
            } else {
                return Ok(());
            }
        }
    }

    /// The next token and its span.
    pub fn next_token(&mut self) -> Result<(Tok, Span), Diagnostic> {
        self.skip_blank()?;
        let start = self.pos;
        let r = self.rest();
        let Some(c) = r.chars().next() else {
            return Ok((Tok::Eof, Span::new(start, start)));
        };
        let ident_len = |s: &str| {
            s.char_indices()
                .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(s.len(), |(i, _)| i)
        };
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            let n = ident_len(r);
            self.pos += n;
            Tok::Ident(r[..n].to_string())
        } else if c == '@' || c == '$' {
            let n = ident_len(&r[1..]);
            self.pos += 1 + n;
            let name = r[1..1 + n].to_string();
            if c == '@' {
                Tok::Map(name)
            } else {
                if name.is_empty() {
                    return Err(Diagnostic::new(
                        Span::new(start, start + 1),
                        "expected a variable name after `$`",
                    ));
                }
                Tok::Var(name)
            }
        } else if c.is_ascii_digit() {
            let n = ident_len(r);
            let text: String = r[..n].chars().filter(|&c| c != '_').collect();
            self.pos += n;
            let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse::<u64>(),
            };
            Tok::Int(parsed.map_err(|_| {
                Diagnostic::new(
                    Span::new(start, self.pos),
                    format!("`{}` is not an integer that fits in 64 bits", &r[..n]),
                )
            })?)
        } else if c == '"' {
            let mut out = String::new();
            let mut chars = r[1..].char_indices();
            loop {
                let Some((i, c)) = chars.next() else {
                    return Err(Diagnostic::new(
                        Span::new(start, start + 1),
                        "this string is never closed: expected `\"`",
                    ));
                };
                match c {
                    '"' => {
                        self.pos += 1 + i + 1;
                        break;
                    }
                    '\\' => {
                        let Some((j, e)) = chars.next() else { continue };
                        out.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            '\\' => '\\',
                            '"' => '"',
                            '0' => '\0',
                            other => {
                                let at = start + 1 + j;
                                return Err(Diagnostic::new(
                                    Span::new(at - 1, at + other.len_utf8()),
                                    format!("unknown escape `\\{other}`: expected one of \\n \\t \\\\ \\\" \\0"),
                                ));
                            }
                        });
                    }
                    c => out.push(c),
                }
            }
            Tok::Str(out)
        } else if let Some(p) = PUNCT.iter().find(|p| r.starts_with(**p)) {
            self.pos += p.len();
            Tok::Punct(p)
        } else {
            return Err(Diagnostic::new(
                Span::new(start, start + c.len_utf8()),
                format!("unexpected character `{c}`"),
            ));
        };
        Ok((tok, Span::new(start, self.pos)))
    }

    /// The raw text of a probe name up to a blank, `{` or `,` (or a quoted
    /// name, for paths with blanks such as `<impl A for B>::f`).
    pub fn probe_text(&mut self) -> Result<(String, Span), Diagnostic> {
        let start = self.pos;
        let r = self.rest();
        if let Some(q) = r.strip_prefix('"') {
            let end = q.find('"').ok_or_else(|| {
                Diagnostic::new(
                    Span::new(start, start + 1),
                    "this probe name is never closed: expected `\"`",
                )
            })?;
            self.pos += end + 2;
            return Ok((q[..end].to_string(), Span::new(start, self.pos)));
        }
        let n = r
            .char_indices()
            .find(|&(_, c)| c.is_whitespace() || c == '{' || c == ',')
            .map_or(r.len(), |(i, _)| i);
        self.pos += n;
        Ok((r[..n].to_string(), Span::new(start, self.pos)))
    }
}
