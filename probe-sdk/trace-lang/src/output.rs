//! What the programs produced, printed the way bpftrace prints it:
//! `printf` text, maps (`@name[key]: value`, sorted by value), log2 and
//! linear histograms with a `@name:` header and `@` bars, and the same as
//! one JSON object per line for `-f json`.

use std::fmt::Write as _;

use crate::check::MapKind;

/// A value decoded from a record or a map (the tool symbolizes `func`,
/// `kstack` and `probe` into text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Str(String),
    /// A kernel stack, one frame a line.
    Stack(Vec<String>),
}

impl Value {
    fn as_i128(&self) -> Option<i128> {
        match self {
            Value::Int(v) => Some(i128::from(*v)),
            Value::Uint(v) => Some(i128::from(*v)),
            _ => None,
        }
    }

    /// As a map key or `%s` argument.
    pub fn text(&self) -> String {
        match self {
            Value::Int(v) => v.to_string(),
            Value::Uint(v) => v.to_string(),
            Value::Str(s) => s.clone(),
            Value::Stack(frames) => {
                let mut s = String::from("\n");
                for f in frames {
                    let _ = writeln!(s, "        {f}");
                }
                s
            }
        }
    }

    pub fn json(&self) -> serde_json_lite::Json {
        match self {
            Value::Int(v) => serde_json_lite::Json::Int(i128::from(*v)),
            Value::Uint(v) => serde_json_lite::Json::Int(i128::from(*v)),
            Value::Str(s) => serde_json_lite::Json::Str(s.clone()),
            Value::Stack(f) => serde_json_lite::Json::Arr(
                f.iter()
                    .map(|x| serde_json_lite::Json::Str(x.clone()))
                    .collect(),
            ),
        }
    }
}

/// The conversions of a printf format (`d`, `u`, `x`, `s`, ...), or what
/// is wrong with it.
pub fn conversions(format: &str) -> Result<Vec<char>, String> {
    Ok(specs(format)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Conv { conv, .. } => Some(conv),
            Piece::Text(_) => None,
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Conv {
        flags: String,
        width: Option<usize>,
        conv: char,
    },
}

fn specs(format: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut it = format.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        if it.peek() == Some(&'%') {
            it.next();
            text.push('%');
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = it.peek().filter(|f| "-+ 0#".contains(**f)) {
            flags.push(f);
            it.next();
        }
        let mut width = String::new();
        while let Some(&d) = it.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            it.next();
        }
        while let Some(&l) = it.peek().filter(|l| matches!(l, 'l' | 'h' | 'z')) {
            let _ = l;
            it.next();
        }
        let conv = match it.next() {
            Some(c @ ('d' | 'i' | 'u' | 'x' | 'X' | 's' | 'c' | 'p' | 'o')) => c,
            Some(other) => return Err(format!("unknown printf conversion `%{other}`: expected one of %d %u %x %X %o %s %c %p")),
            None => return Err("the format ends inside a conversion: expected a letter such as `d` or `s` after `%`".into()),
        };
        if !text.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut text)));
        }
        out.push(Piece::Conv {
            flags,
            width: width.parse().ok(),
            conv,
        });
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// Formats `printf` output (the format was checked at compile time).
pub fn printf(format: &str, args: &[Value]) -> String {
    let Ok(pieces) = specs(format) else {
        return format.to_string();
    };
    let mut out = String::new();
    let mut args = args.iter();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(&t),
            Piece::Conv { flags, width, conv } => {
                let a = args.next().cloned().unwrap_or(Value::Uint(0));
                let n = a.as_i128().unwrap_or(0);
                let body = match conv {
                    'd' | 'i' => (n as i64).to_string(),
                    'u' => (n as u64).to_string(),
                    'x' => format!("{:x}", n as u64),
                    'X' => format!("{:X}", n as u64),
                    'o' => format!("{:o}", n as u64),
                    'p' => format!("0x{:x}", n as u64),
                    'c' => char::from_u32(n as u32 & 0xff).unwrap_or('?').to_string(),
                    _ => a.text(),
                };
                let w = width.unwrap_or(0);
                let padded = if flags.contains('-') {
                    format!("{body:<w$}")
                } else if flags.contains('0') && conv != 's' {
                    let (sign, digits) = body
                        .strip_prefix('-')
                        .map_or(("", body.as_str()), |d| ("-", d));
                    format!("{sign}{digits:0>x$}", x = w.saturating_sub(sign.len()))
                } else {
                    format!("{body:>w$}")
                };
                out.push_str(&padded);
            }
        }
    }
    out
}

/// One map entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub keys: Vec<Value>,
    pub value: Aggregate,
}

/// A decoded map value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregate {
    Scalar(Value),
    /// avg and stats: total and count.
    Total {
        sum: i64,
        count: u64,
    },
    /// A histogram: bucket index → count.
    Buckets(Vec<(u64, u64)>),
}

impl Aggregate {
    fn sort_key(&self) -> (i128, String) {
        match self {
            Aggregate::Scalar(v) => (v.as_i128().unwrap_or(0), v.text()),
            Aggregate::Total { sum, count } => (
                i128::from(*sum) / i128::from((*count).max(1)),
                String::new(),
            ),
            Aggregate::Buckets(b) => (b.iter().map(|(_, c)| i128::from(*c)).sum(), String::new()),
        }
    }
}

/// Merges histogram entries (one per bucket) into one entry per key.
pub fn group_buckets(raw: Vec<(Vec<Value>, u64, u64)>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for (keys, bucket, count) in raw {
        match out.iter_mut().find(|e| e.keys == keys) {
            Some(Entry {
                value: Aggregate::Buckets(b),
                ..
            }) => b.push((bucket, count)),
            _ => out.push(Entry {
                keys,
                value: Aggregate::Buckets(vec![(bucket, count)]),
            }),
        }
    }
    for e in &mut out {
        if let Aggregate::Buckets(b) = &mut e.value {
            b.sort();
        }
    }
    out
}

fn key_text(name: &str, keys: &[Value]) -> String {
    if keys.is_empty() {
        return format!("@{name}");
    }
    let k: Vec<String> = keys.iter().map(Value::text).collect();
    format!("@{name}[{}]", k.join(", "))
}

/// `1024` → `1K`, `1048576` → `1M`, others as they are.
fn size_label(v: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    let mut n = v;
    let mut unit = None;
    for u in UNITS {
        if n >= 1024 && n.is_multiple_of(1024) {
            n /= 1024;
            unit = Some(u);
        } else {
            break;
        }
    }
    match unit {
        Some(u) => format!("{n}{u}"),
        None => v.to_string(),
    }
}

/// The label of a histogram bucket.
pub fn bucket_label(kind: &MapKind, bucket: u64) -> String {
    match *kind {
        MapKind::Lhist { min, max, step } => {
            let last = ((max - min) / step) as u64 + 1;
            if bucket == 0 {
                format!("(..., {min})")
            } else if bucket >= last {
                format!("[{max}, ...)")
            } else {
                let lo = min.saturating_add((bucket as i64 - 1).saturating_mul(step));
                format!("[{lo}, {})", lo.saturating_add(step))
            }
        }
        _ => match bucket {
            0 => "(..., 0)".into(),
            1 => "[0]".into(),
            2 => "[1]".into(),
            b => {
                let lo = 1u64 << (b - 2).min(63);
                let hi = lo.checked_mul(2).map_or("...".to_string(), size_label);
                format!("[{}, {hi})", size_label(lo))
            }
        },
    }
}

/// `(min, max)` values of a bucket for JSON (`max` inclusive).
fn bucket_range(kind: &MapKind, bucket: u64) -> (Option<i64>, Option<i64>) {
    match *kind {
        MapKind::Lhist { min, max, step } => {
            let last = ((max - min) / step) as u64 + 1;
            if bucket == 0 {
                (None, Some(min - 1))
            } else if bucket >= last {
                (Some(max), None)
            } else {
                let lo = min.saturating_add((bucket as i64 - 1).saturating_mul(step));
                (Some(lo), Some(lo.saturating_add(step - 1)))
            }
        }
        _ => match bucket {
            0 => (None, Some(-1)),
            1 => (Some(0), Some(0)),
            b => {
                let lo = 1i64 << (b - 2).min(62);
                (Some(lo), Some(lo.saturating_mul(2) - 1))
            }
        },
    }
}

const BAR: usize = 52;

/// One histogram: rows from the first to the last non-empty bucket.
pub fn histogram(kind: &MapKind, buckets: &[(u64, u64)]) -> String {
    let mut out = String::new();
    let nonzero: Vec<&(u64, u64)> = buckets.iter().filter(|(_, c)| *c > 0).collect();
    let (Some(first), Some(last)) = (nonzero.first(), nonzero.last()) else {
        return out;
    };
    let max = nonzero.iter().map(|(_, c)| *c).max().unwrap_or(1);
    for b in first.0..=last.0 {
        let count = buckets.iter().find(|(i, _)| *i == b).map_or(0, |(_, c)| *c);
        let bar = "@".repeat((count as u128 * BAR as u128 / max as u128) as usize);
        let _ = writeln!(
            out,
            "{:<16}{:>8} |{:<BAR$}|",
            bucket_label(kind, b),
            count,
            bar
        );
    }
    out
}

/// A map as bpftrace prints it at exit or with `print(@m)`.
pub fn render_map(name: &str, kind: &MapKind, mut entries: Vec<Entry>) -> String {
    let mut out = String::new();
    entries.sort_by(|a, b| {
        a.value
            .sort_key()
            .cmp(&b.value.sort_key())
            .then_with(|| a.keys.cmp(&b.keys))
    });
    for e in &entries {
        let k = key_text(name, &e.keys);
        match (&e.value, kind) {
            (Aggregate::Buckets(b), _) => {
                let _ = writeln!(out, "{k}:");
                out.push_str(&histogram(kind, b));
                out.push('\n');
            }
            (Aggregate::Total { sum, count }, MapKind::Stats) => {
                let avg = if *count == 0 { 0 } else { sum / *count as i64 };
                let _ = writeln!(out, "{k}: count {count}, average {avg}, total {sum}");
            }
            (Aggregate::Total { sum, count }, _) => {
                let avg = if *count == 0 { 0 } else { sum / *count as i64 };
                let _ = writeln!(out, "{k}: {avg}");
            }
            (Aggregate::Scalar(v), _) => {
                let _ = writeln!(out, "{k}: {}", v.text());
            }
        }
    }
    if !kind.bucketed() && !entries.is_empty() {
        out.push('\n');
    }
    out
}

/// A map as one JSON line, in bpftrace's shape: `{"type": "map"|"hist"|"stats",
/// "data": {"@name": ...}}`.
pub fn map_json(name: &str, kind: &MapKind, mut entries: Vec<Entry>) -> String {
    use serde_json_lite::Json;
    entries.sort_by(|a, b| {
        a.value
            .sort_key()
            .cmp(&b.value.sort_key())
            .then_with(|| a.keys.cmp(&b.keys))
    });
    let value = |a: &Aggregate| -> Json {
        match a {
            Aggregate::Scalar(v) => v.json(),
            Aggregate::Total { sum, count } => {
                let avg = if *count == 0 { 0 } else { sum / *count as i64 };
                if *kind == MapKind::Stats {
                    Json::Obj(vec![
                        ("count".into(), Json::Int(i128::from(*count))),
                        ("average".into(), Json::Int(i128::from(avg))),
                        ("total".into(), Json::Int(i128::from(*sum))),
                    ])
                } else {
                    Json::Int(i128::from(avg))
                }
            }
            Aggregate::Buckets(b) => Json::Arr(
                b.iter()
                    .filter(|(_, c)| *c > 0)
                    .map(|(i, c)| {
                        let (lo, hi) = bucket_range(kind, *i);
                        let mut o = Vec::new();
                        if let Some(lo) = lo {
                            o.push(("min".to_string(), Json::Int(i128::from(lo))));
                        }
                        if let Some(hi) = hi {
                            o.push(("max".to_string(), Json::Int(i128::from(hi))));
                        }
                        o.push(("count".into(), Json::Int(i128::from(*c))));
                        Json::Obj(o)
                    })
                    .collect(),
            ),
        }
    };
    let data = match entries.as_slice() {
        [only] if only.keys.is_empty() => value(&only.value),
        _ => Json::Obj(
            entries
                .iter()
                .map(|e| {
                    (
                        e.keys
                            .iter()
                            .map(|k| k.text().trim().to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        value(&e.value),
                    )
                })
                .collect(),
        ),
    };
    let ty = match kind {
        MapKind::Hist | MapKind::Lhist { .. } => "hist",
        MapKind::Stats => "stats",
        _ => "map",
    };
    Json::Obj(vec![
        ("type".into(), Json::Str(ty.into())),
        ("data".into(), Json::Obj(vec![(format!("@{name}"), data)])),
    ])
    .to_string()
}

/// A `printf` line as JSON: `{"type": "printf", "data": "..."}`.
pub fn printf_json(text: &str) -> String {
    use serde_json_lite::Json;
    Json::Obj(vec![
        ("type".into(), Json::Str("printf".into())),
        ("data".into(), Json::Str(text.into())),
    ])
    .to_string()
}

/// Just enough JSON writing for one-line records (this crate stays free of
/// dependencies beyond the project's own).
pub mod serde_json_lite {
    use std::fmt;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Json {
        Int(i128),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    fn quote(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
        f.write_str("\"")?;
        for c in s.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }

    impl fmt::Display for Json {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Json::Int(v) => write!(f, "{v}"),
                Json::Str(s) => quote(f, s),
                Json::Arr(a) => {
                    f.write_str("[")?;
                    for (i, x) in a.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{x}")?;
                    }
                    f.write_str("]")
                }
                Json::Obj(o) => {
                    f.write_str("{")?;
                    for (i, (k, v)) in o.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        quote(f, k)?;
                        write!(f, ": {v}")?;
                    }
                    f.write_str("}")
                }
            }
        }
    }
}
