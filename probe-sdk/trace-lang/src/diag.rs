//! Spans and diagnostics: where in the script, and what was expected.

use std::fmt;

/// Byte range `start..end` of the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }

    /// 1-based line and column (in characters) of `start` in `source`.
    pub fn line_col(&self, source: &str) -> (usize, usize) {
        let start = self.start.min(source.len());
        let before = &source[..floor_char(source, start)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = source[line_start..floor_char(source, start)]
            .chars()
            .count()
            + 1;
        (line, col)
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// An error in the script: where, and what was wrong or expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
}

impl Diagnostic {
    pub fn new(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            span,
            message: message.into(),
        }
    }

    /// `name:line:col: error: message`, the source line, and a caret (or
    /// carets under the whole span when it stays on that line).
    pub fn render(&self, name: &str, source: &str) -> String {
        let (line, col) = self.span.line_col(source);
        let text = source.lines().nth(line - 1).unwrap_or("");
        let line_start: usize = source
            .split_inclusive('\n')
            .take(line - 1)
            .map(str::len)
            .sum();
        let line_end = line_start + text.len();
        let width = if self.span.end > self.span.start && self.span.end <= line_end {
            source[self.span.start.min(line_end)..self.span.end]
                .chars()
                .count()
                .max(1)
        } else {
            1
        };
        let pad: String = text
            .chars()
            .take(col - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        // A long explanation (candidates, hints) goes under the caret.
        let (first, rest) = self.message.split_once('\n').unwrap_or((&self.message, ""));
        let mut out = format!(
            "{name}:{line}:{col}: error: {first}\n{text}\n{pad}{}\n",
            "^".repeat(width)
        );
        if !rest.is_empty() {
            out.push_str(rest.trim_end());
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_under_the_span() {
        let src = "BEGIN {\n  @x = cont();\n}";
        let d = Diagnostic::new(Span::new(15, 19), "unknown function `cont`");
        assert_eq!(
            d.render("s.bt", src),
            "s.bt:2:8: error: unknown function `cont`\n  @x = cont();\n       ^^^^\n"
        );
    }
}
