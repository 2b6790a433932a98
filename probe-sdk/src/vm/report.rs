//! What a VM's end tells: QEMU's exit status classified ([`ExitReport`]),
//! and panic or fatal-exception reports with their backtraces read from
//! the console ([`PanicReport`]).

use std::fmt;

use ktrace_abi::vm::{qemu_exit_status, EXIT_EXCEPTION, EXIT_PANIC, EXIT_SHUTDOWN};

/// Why QEMU exited.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitKind {
    /// The kernel powered off on request (status 33).
    Shutdown,
    /// The console holds a panic or fatal-exception report.
    Panicked(PanicReport),
    /// Anything else (killed, QEMU error, unknown status).
    Other,
}

/// QEMU's exit, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitReport {
    /// QEMU's exit status, when this process started it.
    pub status: Option<i32>,
    pub kind: ExitKind,
}

impl ExitReport {
    /// Classify an exit from its status and the console log.
    pub fn classify(status: Option<i32>, console: &str) -> Self {
        let kind = if let Some(report) = PanicReport::find(console) {
            ExitKind::Panicked(report)
        } else if status == Some(qemu_exit_status(EXIT_SHUTDOWN)) {
            ExitKind::Shutdown
        } else {
            ExitKind::Other
        };
        Self { status, kind }
    }
}

pub(super) fn describe_status(code: Option<i32>) -> String {
    match code {
        Some(c) if c == qemu_exit_status(EXIT_SHUTDOWN) => format!("status {c}: clean shutdown"),
        Some(c) if c == qemu_exit_status(EXIT_PANIC) => format!("status {c}: kernel panic"),
        Some(c) if c == qemu_exit_status(EXIT_EXCEPTION) => {
            format!("status {c}: fatal CPU exception")
        }
        Some(c) => format!("status {c}"),
        None => "killed by a signal".into(),
    }
}

/// Kind of a console report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// `KERNEL PANIC`
    Panic,
    /// `FATAL EXCEPTION`
    Exception,
}

/// One `#N 0xADDR symbol+0xOFF` line of a backtrace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacktraceFrame {
    pub index: u32,
    pub addr: u64,
    /// The demangled function, if the kernel could symbolize the address.
    pub symbol: Option<String>,
    pub offset: Option<u64>,
}

/// A panic or fatal-exception report found on the console.
#[derive(Debug, Clone, PartialEq)]
pub struct PanicReport {
    pub kind: ReportKind,
    /// The report's lines, start marker to end marker, timestamps kept.
    pub lines: Vec<String>,
    pub frames: Vec<BacktraceFrame>,
    /// False if the end marker is missing (the report was cut short).
    pub complete: bool,
}

/// Line that ends a report.
pub const END_OF_REPORT: &str = "---[ end of report ]---";

impl PanicReport {
    /// The first report on the console, if any.
    pub fn find(console: &str) -> Option<Self> {
        let lines: Vec<&str> = console.lines().collect();
        let (start, kind) = lines.iter().enumerate().find_map(|(i, l)| {
            if l.contains("KERNEL PANIC") {
                Some((i, ReportKind::Panic))
            } else if l.contains("FATAL EXCEPTION") {
                Some((i, ReportKind::Exception))
            } else {
                None
            }
        })?;
        let end = lines[start..]
            .iter()
            .position(|l| l.contains(END_OF_REPORT))
            .map(|p| start + p);
        let body = &lines[start..=end.unwrap_or(lines.len() - 1)];
        Some(Self {
            kind,
            lines: body.iter().map(|l| l.to_string()).collect(),
            frames: body.iter().filter_map(|l| parse_frame(l)).collect(),
            complete: end.is_some(),
        })
    }

    /// Whether some backtrace frame is in function `name` (exact demangled path).
    pub fn has_frame(&self, name: &str) -> bool {
        self.frames
            .iter()
            .any(|f| f.symbol.as_deref() == Some(name))
    }
}

impl fmt::Display for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{line}")?;
        }
        if !self.complete {
            write!(f, "\n(report cut short: no `{END_OF_REPORT}` line)")?;
        }
        Ok(())
    }
}

/// Parse `  #3 0xffffffff80012345 kernel::a::b+0x1a`, with or without a
/// console timestamp and level in front.
pub fn parse_frame(line: &str) -> Option<BacktraceFrame> {
    let at = line.find('#')?;
    let rest = &line[at + 1..];
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let index = rest[..digits].parse().ok()?;
    let rest = rest[digits..].trim_start();
    let hex_start = rest.strip_prefix("0x")?;
    let hex_len = hex_start
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(hex_start.len());
    let addr = u64::from_str_radix(&hex_start[..hex_len], 16).ok()?;
    let sym = hex_start[hex_len..].trim();
    let (symbol, offset) = match sym.rsplit_once("+0x") {
        Some((name, off)) if !name.is_empty() => (
            Some(name.to_string()),
            u64::from_str_radix(off.trim(), 16).ok(),
        ),
        _ if sym.is_empty() || sym.starts_with('?') || sym.starts_with('<') => (None, None),
        _ => (Some(sym.to_string()), None),
    };
    Some(BacktraceFrame {
        index,
        addr,
        symbol,
        offset,
    })
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    if lines.is_empty() {
        "(console is empty)".into()
    } else {
        lines[from..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    0.001000] INFO  booting
[    0.200000] ERROR KERNEL PANIC: forced by the host
[    0.200001] ERROR   at kernel/src/debug.rs:12:5
[    0.200002] ERROR backtrace:
[    0.200003] ERROR   #0 0xffffffff80012345 kernel::debug::forced_panic+0x1a
[    0.200004] ERROR   #1 0xffffffff80013000 <kernel::ctl::Server as core::ops::Drop>::drop+0x5
[    0.200005] ERROR   #2 0x0000000000001234 ?
[    0.200006] ERROR ---[ end of report ]---
[    0.300000] INFO  after
";

    #[test]
    fn panic_report_is_found_and_parsed() {
        let r = PanicReport::find(CONSOLE).unwrap();
        assert_eq!(r.kind, ReportKind::Panic);
        assert!(r.complete);
        assert_eq!(r.lines.len(), 7);
        assert_eq!(
            r.frames,
            vec![
                BacktraceFrame {
                    index: 0,
                    addr: 0xffffffff80012345,
                    symbol: Some("kernel::debug::forced_panic".into()),
                    offset: Some(0x1a),
                },
                BacktraceFrame {
                    index: 1,
                    addr: 0xffffffff80013000,
                    symbol: Some("<kernel::ctl::Server as core::ops::Drop>::drop".into()),
                    offset: Some(5),
                },
                BacktraceFrame {
                    index: 2,
                    addr: 0x1234,
                    symbol: None,
                    offset: None,
                },
            ]
        );
        assert!(r.has_frame("kernel::debug::forced_panic"));
        let exit = ExitReport::classify(Some(35), CONSOLE);
        assert!(matches!(exit.kind, ExitKind::Panicked(_)));
        assert_eq!(
            ExitReport::classify(Some(33), "[ 0.1] INFO  bye\n").kind,
            ExitKind::Shutdown
        );
    }

    #[test]
    fn cut_short_report_is_marked() {
        let cut = "x\nFATAL EXCEPTION #GP error 0x0\n  #0 0x10 kernel::f+0x1\n";
        let r = PanicReport::find(cut).unwrap();
        assert_eq!(r.kind, ReportKind::Exception);
        assert!(!r.complete);
        assert_eq!(r.frames.len(), 1);
        assert!(r
            .to_string()
            .ends_with("(report cut short: no `---[ end of report ]---` line)"));
        assert!(PanicReport::find("all good\n").is_none());
    }
}
