//! Log2 histograms printed like BCC's `print_log2_hist`:
//!
//! ```text
//!      usecs               : count     distribution
//!          0 -> 1          : 3        |**                                      |
//!          2 -> 3          : 0        |                                        |
//! ```
//!
//! Slot convention (shared with `ktrace_probe::maps::Log2Histogram`): slot 0
//! counts the value 0, slot `i >= 1` counts values in `[2^(i-1), 2^i - 1]`.
//! BCC prints slots 0 and 1 together as `0 -> 1`; so do we.

use serde::Serialize;

/// Width of the distribution bar.
const BAR_WIDTH: usize = 40;

/// One printed row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Lowest value counted (inclusive).
    pub low: u64,
    /// Highest value counted (inclusive).
    pub high: u64,
    pub count: u64,
}

/// Value range of slot `i` (see the module docs).
pub fn slot_range(i: usize) -> (u64, u64) {
    match i {
        0 => (0, 0),
        64.. => (1 << 63, u64::MAX),
        _ => (1u64 << (i - 1), (1u64 << i) - 1),
    }
}

/// Rows from raw slot counts, BCC style: slots 0 and 1 merged into
/// `0 -> 1`, trailing empty slots dropped. Empty input gives no rows.
pub fn buckets(slots: &[u64]) -> Vec<Bucket> {
    let last = match slots.iter().rposition(|&c| c != 0) {
        Some(i) => i.max(1),
        None => return Vec::new(),
    };
    let mut rows = Vec::new();
    for i in 1..=last {
        let (mut low, high) = slot_range(i);
        let mut count = slots.get(i).copied().unwrap_or(0);
        if i == 1 {
            low = 0;
            count += slots.first().copied().unwrap_or(0);
        }
        rows.push(Bucket { low, high, count });
    }
    rows
}

/// Render rows with a unit label (`usecs`, `msecs`, ...).
pub fn render(unit: &str, rows: &[Bucket]) -> String {
    let mut out = String::new();
    let max = rows.iter().map(|r| r.count).max().unwrap_or(0);
    // BCC widens the columns when values need more than 10 digits.
    let wide = rows.last().is_some_and(|r| r.high > 9_999_999_999);
    let (vw, sw) = if wide { (20, 41) } else { (10, 20) };
    out.push_str(&format!("{:>w$} : count     distribution\n", unit, w = sw));
    for r in rows {
        let bar_len = if max == 0 {
            0
        } else {
            (r.count as u128 * BAR_WIDTH as u128 / max as u128) as usize
        };
        let bar = "*".repeat(bar_len);
        out.push_str(&format!(
            "{:>vw$} -> {:<vw$} : {:<8} |{:<bw$}|\n",
            r.low,
            r.high,
            r.count,
            bar,
            vw = vw,
            bw = BAR_WIDTH
        ));
    }
    out
}

/// Total count over all slots.
pub fn total(slots: &[u64]) -> u64 {
    slots.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_zero_into_first_row_and_drops_trailing_zeros() {
        let mut slots = vec![0u64; 65];
        slots[0] = 2;
        slots[1] = 1;
        slots[4] = 8; // 8..=15
        let rows = buckets(&slots);
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[0],
            Bucket {
                low: 0,
                high: 1,
                count: 3
            }
        );
        assert_eq!(
            rows[1],
            Bucket {
                low: 2,
                high: 3,
                count: 0
            }
        );
        assert_eq!(
            rows[3],
            Bucket {
                low: 8,
                high: 15,
                count: 8
            }
        );
        assert_eq!(total(&slots), 11);
    }

    #[test]
    fn renders_like_bcc() {
        let mut slots = vec![0u64; 65];
        slots[1] = 1;
        slots[2] = 4;
        let text = render("usecs", &buckets(&slots));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "               usecs : count     distribution");
        assert_eq!(
            lines[1],
            "         0 -> 1          : 1        |**********                              |"
        );
        assert_eq!(
            lines[2],
            "         2 -> 3          : 4        |****************************************|"
        );
    }

    #[test]
    fn empty_histogram_has_no_rows() {
        assert!(buckets(&[0; 65]).is_empty());
        assert!(buckets(&[]).is_empty());
    }
}
