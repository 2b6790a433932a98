//! "Did you mean" for names that match nothing: edit distance on path
//! segments.

use crate::index::SymbolIndex;
use crate::path::{render, ParsedPath, Segment};

/// Levenshtein distance, on chars.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Cost of reading `query` as a suffix of `key`, segment by segment.
///
/// Leading key segments are free (a query may be a suffix); a segment
/// substituted costs its edit distance; a query segment with no counterpart
/// costs its length; a key segment skipped in the middle costs 3.
fn segment_distance(query: &[&str], key: &[&str]) -> usize {
    let (n, m) = (query.len(), key.len());
    let mut dp = vec![vec![usize::MAX / 2; m + 1]; n + 1];
    for cell in dp[0].iter_mut() {
        *cell = 0;
    }
    for i in 1..=n {
        dp[i][0] = dp[i - 1][0] + query[i - 1].chars().count();
        for j in 1..=m {
            let sub = dp[i - 1][j - 1] + levenshtein(query[i - 1], key[j - 1]);
            let extra = dp[i - 1][j] + query[i - 1].chars().count();
            let skip = dp[i][j - 1] + 3;
            dp[i][j] = sub.min(extra).min(skip);
        }
    }
    dp[n][m]
}

/// How far the last segment the user wrote is from a function's: its edit
/// distance, or 1 when it is a prefix (`schedul` for `schedule_with`).
/// `None` when too far to suggest.
fn last_segment_cost(query: &str, name: &str, limit: usize) -> Option<usize> {
    if query.len() >= 3 && name.starts_with(query) && name != query {
        return Some(1);
    }
    if name.chars().count().abs_diff(query.chars().count()) > limit {
        return None;
    }
    let d = levenshtein(query, name);
    (d <= limit).then_some(d)
}

fn names(segs: &[Segment]) -> Vec<&str> {
    segs.iter().map(|s| s.name.as_str()).collect()
}

/// Up to `limit` function paths close to `query`, closest first.
pub fn suggest(index: &SymbolIndex, query: &ParsedPath, limit: usize) -> Vec<String> {
    let qkeys = query.keys();
    let Some(qkey) = qkeys.first() else {
        return Vec::new();
    };
    let Some(qlast) = qkey.last() else {
        return Vec::new();
    };
    let qnames = names(qkey);
    let last_limit = (qlast.name.chars().count() / 3).max(2);
    let total_limit = (qnames.iter().map(|s| s.chars().count()).sum::<usize>() / 3).max(2);
    let mut scored: Vec<(usize, String)> = Vec::new();
    // Filter on the last segment first: few distinct names pass, and only
    // their functions get the full segment-by-segment comparison.
    for (last, ids) in &index.by_last {
        let Some(last_cost) = last_segment_cost(&qlast.name, last, last_limit) else {
            continue;
        };
        for &id in ids {
            let f = &index.functions[id as usize];
            for key in f.parsed().keys() {
                let names = names(key);
                if names.is_empty() {
                    continue;
                }
                let cost = segment_distance(&qnames[..qnames.len() - 1], &names[..names.len() - 1])
                    + last_cost;
                if cost <= total_limit {
                    scored.push((cost, render(key)));
                }
            }
        }
    }
    scored.sort();
    let mut out: Vec<String> = Vec::new();
    for (_, s) in scored {
        if !out.contains(&s) {
            out.push(s);
            if out.len() == limit {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(levenshtein("submit_bio", "submit_bio"), 0);
        assert_eq!(levenshtein("sumbit_bio", "submit_bio"), 2);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(
            segment_distance(
                &["queue", "submit_bio"],
                &["kernel", "block", "queue", "submit_bio"]
            ),
            0
        );
        assert_eq!(
            segment_distance(&["blok", "submit_bio"], &["kernel", "block", "submit_bio"]),
            1
        );
        // A module left out of the middle costs 3.
        assert_eq!(
            segment_distance(&["block", "submit_bio"], &["block", "queue", "submit_bio"]),
            3
        );
    }
}
