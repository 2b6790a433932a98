//! The kprobe blacklist: code that must never trap.
//!
//! A probe inside the code that handles the probe's own trap recurses
//! without end; a probe in interrupt entry runs before the frame is saved;
//! a probe in the console used by a panic report hides the report. Linux
//! marks such code with `NOKPROBE_SYMBOL`; a kernel using this crate marks
//! it three ways, all listable with their reasons:
//!
//! - **ranges** of addresses (a linker section such as `.text.entry`, or a
//!   function marked through a `.nokprobe` section of addresses);
//! - **symbol prefixes** (`kernel::trace::kprobe::`, `spin::`, ...): a
//!   whole module or crate, so generic code instantiated there is covered
//!   too.

use crate::Refusal;

/// One blacklisted address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Why it is blacklisted.
    pub reason: &'static str,
}

/// A blacklisted symbol prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Demangled path prefix, e.g. `kernel::trace::kprobe::`.
    pub prefix: &'static str,
    /// Why it is blacklisted.
    pub reason: &'static str,
}

/// Checks an address (and the demangled name of its function) against
/// ranges and prefixes.
pub fn check(
    addr: u64,
    symbol: Option<&str>,
    ranges: &[Range],
    prefixes: &[Prefix],
) -> Result<(), Refusal> {
    if let Some(r) = ranges.iter().find(|r| addr >= r.start && addr < r.end) {
        return Err(Refusal::Blacklisted {
            addr,
            reason: r.reason,
        });
    }
    if let Some(name) = symbol {
        // `<T as Trait>::f` paths start with `<`: the implementing type
        // decides (a handler trait implemented elsewhere stays probe-able).
        let trimmed = name.trim_start_matches('<');
        if let Some(p) = prefixes.iter().find(|p| trimmed.starts_with(p.prefix)) {
            return Err(Refusal::Blacklisted {
                addr,
                reason: p.reason,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    const RANGES: &[Range] = &[Range {
        start: 0x1000,
        end: 0x1100,
        reason: "interrupt entry",
    }];
    const PREFIXES: &[Prefix] = &[Prefix {
        prefix: "kernel::trace::kprobe::",
        reason: "the kprobe engine",
    }];

    #[test]
    fn ranges_and_prefixes() {
        assert_eq!(
            check(0x10ff, None, RANGES, PREFIXES),
            Err(Refusal::Blacklisted {
                addr: 0x10ff,
                reason: "interrupt entry"
            })
        );
        assert_eq!(check(0x1100, None, RANGES, PREFIXES), Ok(()));
        assert_eq!(
            check(
                0x2000,
                Some("kernel::trace::kprobe::on_int3"),
                RANGES,
                PREFIXES
            ),
            Err(Refusal::Blacklisted {
                addr: 0x2000,
                reason: "the kprobe engine"
            })
        );
        assert_eq!(
            check(
                0x2000,
                Some("<kernel::trace::kprobe::Site as core::ops::Drop>::drop"),
                RANGES,
                PREFIXES
            ),
            Err(Refusal::Blacklisted {
                addr: 0x2000,
                reason: "the kprobe engine"
            })
        );
        assert_eq!(
            check(0x2000, Some("kernel::probe_tests::add3"), RANGES, PREFIXES),
            Ok(())
        );
        let msg = alloc_string(&check(0x10ff, None, RANGES, PREFIXES).unwrap_err());
        assert_eq!(msg, "0x10ff is blacklisted: interrupt entry");
    }

    fn alloc_string(r: &Refusal) -> std::string::String {
        std::format!("{r}")
    }
}
