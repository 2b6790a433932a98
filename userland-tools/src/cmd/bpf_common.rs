//! Shared pieces of the BPF subcommands (`load`, `prog`, `map`, `link`,
//! `events`): naming maps and programs, parsing and printing
//! keys and values.

use anyhow::{bail, Context as _};
use ktrace_abi::bpf::{map_type, MapInfo};
use ktrace_abi::types::{TypeDesc, TypeKind};
use probe_sdk::runtime::Runtime;
use probe_sdk::typed;

/// Arguments of a BPF object command (`ktrace prog`, `map`, `link`): its
/// subcommand and `--json`, which every subcommand takes.
#[derive(clap::Args, Debug)]
pub struct ObjectArgs<C: clap::Subcommand> {
    #[command(subcommand)]
    pub command: C,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The map named by `spec`: its id, or its name when unique.
pub fn find_map(rt: &mut Runtime, spec: &str) -> anyhow::Result<MapInfo> {
    let maps = rt.maps()?;
    if let Ok(id) = spec.parse::<u32>() {
        if let Some(m) = maps.iter().find(|m| m.id == id) {
            return Ok(m.clone());
        }
    }
    let named: Vec<&MapInfo> = maps.iter().filter(|m| m.name == spec).collect();
    match named[..] {
        [m] => Ok(m.clone()),
        [] => {
            let known: Vec<String> = maps
                .iter()
                .map(|m| format!("{} ({})", m.id, m.name))
                .collect();
            bail!(
                "no map `{spec}`; maps: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        }
        _ => bail!(
            "{} maps are named `{spec}`; use the id ({})",
            named.len(),
            named
                .iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Parses a key or value of `size` bytes: a decimal or `0x` integer when
/// the size is 1, 2, 4 or 8 (little-endian, as the kernel stores it), or
/// `hex:` followed by exactly `size` bytes of hex.
pub fn parse_bytes(text: &str, size: usize, what: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("hex:") {
        let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        if !hex.len().is_multiple_of(2) {
            bail!("{what} `{text}`: odd number of hex digits");
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .with_context(|| format!("{what} `{text}`: not hex"))?;
        if bytes.len() != size {
            bail!(
                "{what} `{text}` is {} bytes; the map's {what}s are {size} bytes",
                bytes.len()
            );
        }
        return Ok(bytes);
    }
    let v: u128 = if let Some(h) = text.strip_prefix("0x") {
        u128::from_str_radix(h, 16)
    } else if let Some(neg) = text.strip_prefix('-') {
        neg.parse::<u128>()
            .map(|n| (n as i128).wrapping_neg() as u128 & u64::MAX as u128)
    } else {
        text.parse::<u128>()
    }
    .with_context(|| format!("{what} `{text}`: expected an integer or hex:BYTES"))?;
    if !matches!(size, 1 | 2 | 4 | 8) {
        bail!(
            "{what}s of this map are {size} bytes: give them as hex:{}",
            "00".repeat(size)
        );
    }
    if size < 16 && v >> (size * 8) != 0 {
        bail!("{what} {text} does not fit in {size} bytes");
    }
    Ok(v.to_le_bytes()[..size].to_vec())
}

/// Prints bytes as an unsigned integer when they are 1, 2, 4 or 8 long,
/// else as hex.
pub fn show_bytes(b: &[u8]) -> String {
    match b.len() {
        1 | 2 | 4 | 8 => {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w).to_string()
        }
        _ => b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Same as [`show_bytes`], as JSON (a number or a hex string).
pub fn json_bytes(b: &[u8]) -> serde_json::Value {
    match b.len() {
        1 | 2 | 4 | 8 => {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            serde_json::json!(u64::from_le_bytes(w))
        }
        _ => serde_json::json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

/// Parses a key (or value) as its declared type when there is one (see
/// `probe_sdk::typed` for the forms accepted; `hex:BYTES` always works),
/// else as [`parse_bytes`] does.
pub fn parse_typed(
    desc: Option<&TypeDesc>,
    text: &str,
    size: usize,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    match desc {
        Some(d) if d.size() as usize == size => {
            typed::parse(d, text, what).map_err(|e| anyhow::anyhow!(e))
        }
        _ => parse_bytes(text, size, what),
    }
}

/// A value as the host sees it: per-CPU maps hold one copy per CPU, each
/// padded to 8 bytes. `None` for other maps.
pub fn per_cpu_copies<'a>(m: &MapInfo, bytes: &'a [u8]) -> Option<Vec<&'a [u8]>> {
    if !map_type::is_per_cpu(m.map_type) {
        return None;
    }
    let stride = (m.value_size as usize).div_ceil(8) * 8;
    if stride == 0 || !bytes.len().is_multiple_of(stride) {
        return None;
    }
    Some(
        bytes
            .chunks(stride)
            .map(|c| &c[..m.value_size as usize])
            .collect(),
    )
}

/// A key printed as its declared type, else as [`show_bytes`].
pub fn show_key(m: &MapInfo, bytes: &[u8]) -> String {
    m.types
        .key
        .as_ref()
        .and_then(|d| typed::format(d, bytes))
        .unwrap_or_else(|| show_bytes(bytes))
}

/// One value (one CPU's copy of a per-CPU value) printed as its declared
/// type, else as [`show_bytes`].
pub fn show_one(m: &MapInfo, bytes: &[u8]) -> String {
    m.types
        .value
        .as_ref()
        .and_then(|d| typed::format(d, bytes))
        .unwrap_or_else(|| show_bytes(bytes))
}

/// One value as an integer, when it is one: a declared integer type, or
/// untyped 1, 2, 4 or 8 bytes (unsigned, as [`show_bytes`] prints them).
fn int_value(m: &MapInfo, bytes: &[u8]) -> Option<i128> {
    let signed = match m.types.value.as_ref().and_then(|d| d.root()) {
        Some(n) => match n.kind {
            TypeKind::Int { signed } if n.size as usize == bytes.len() => signed,
            _ => return None,
        },
        None => false,
    };
    let n = bytes.len();
    if !matches!(n, 1 | 2 | 4 | 8 | 16) {
        return None;
    }
    let fill = if signed && bytes[n - 1] & 0x80 != 0 {
        0xff
    } else {
        0
    };
    let mut w = [fill; 16];
    w[..n].copy_from_slice(bytes);
    Some(i128::from_le_bytes(w))
}

/// The sum over CPUs of a per-CPU value whose copies are integers (what
/// a per-CPU counter counted in all), else `None`.
pub fn per_cpu_sum(m: &MapInfo, bytes: &[u8]) -> Option<i128> {
    per_cpu_copies(m, bytes)?
        .iter()
        .try_fold(0i128, |acc, c| Some(acc.wrapping_add(int_value(m, c)?)))
}

/// A value printed as its declared type, else as [`show_bytes`];
/// per-CPU maps: `[cpu0, cpu1, ...]`, then `sum N` when the copies are
/// integers.
pub fn show_value(m: &MapInfo, bytes: &[u8]) -> String {
    match per_cpu_copies(m, bytes) {
        Some(copies) => {
            let each: Vec<String> = copies.iter().map(|c| show_one(m, c)).collect();
            match per_cpu_sum(m, bytes) {
                Some(sum) => format!("[{}] sum {sum}", each.join(", ")),
                None => format!("[{}]", each.join(", ")),
            }
        }
        None => show_one(m, bytes),
    }
}

/// A key as JSON, typed when declared, else as [`json_bytes`].
pub fn json_key(m: &MapInfo, bytes: &[u8]) -> serde_json::Value {
    m.types
        .key
        .as_ref()
        .and_then(|d| typed::to_json(d, bytes))
        .unwrap_or_else(|| json_bytes(bytes))
}

/// One value as JSON, typed when declared, else as [`json_bytes`].
fn json_one(m: &MapInfo, bytes: &[u8]) -> serde_json::Value {
    m.types
        .value
        .as_ref()
        .and_then(|d| typed::to_json(d, bytes))
        .unwrap_or_else(|| json_bytes(bytes))
}

/// A value as JSON, typed when declared, else as [`json_bytes`]; per-CPU
/// maps: an array, one element per CPU.
pub fn json_value(m: &MapInfo, bytes: &[u8]) -> serde_json::Value {
    match per_cpu_copies(m, bytes) {
        Some(copies) => serde_json::Value::Array(copies.iter().map(|c| json_one(m, c)).collect()),
        None => json_one(m, bytes),
    }
}

/// A map entry as JSON: `{"key", "value"}`, and for per-CPU maps of
/// integers `"sum"`, the total over CPUs.
pub fn json_entry(m: &MapInfo, key: &[u8], value: &[u8]) -> serde_json::Value {
    let mut v = serde_json::json!({ "key": json_key(m, key), "value": json_value(m, value) });
    if let Some(sum) = per_cpu_sum(m, value) {
        // As a number where JSON numbers reach (every u64 and i64).
        v["sum"] = match (i64::try_from(sum), u64::try_from(sum)) {
            (Ok(x), _) => serde_json::json!(x),
            (_, Ok(x)) => serde_json::json!(x),
            _ => serde_json::json!(sum.to_string()),
        };
    }
    v
}

/// A value to store: typed input is one value, which per-CPU maps get on
/// every CPU; untyped input is all `host_size` bytes, as before.
pub fn parse_value(m: &MapInfo, text: &str) -> anyhow::Result<Vec<u8>> {
    let Some(d) = m.types.value.as_ref().filter(|d| d.size() == m.value_size) else {
        return parse_bytes(text, m.host_value_size as usize, "value");
    };
    let one = typed::parse(d, text, "value").map_err(|e| anyhow::anyhow!(e))?;
    if m.host_value_size == m.value_size {
        return Ok(one);
    }
    let stride = (m.value_size as usize).div_ceil(8) * 8;
    let mut out = vec![0u8; m.host_value_size as usize];
    for c in out.chunks_mut(stride) {
        c[..one.len()].copy_from_slice(&one);
    }
    Ok(out)
}

/// Map type name as bpftool prints it.
pub fn type_name(t: u32) -> &'static str {
    map_type::name(t)
}

/// Prints rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_show() {
        assert_eq!(parse_bytes("5", 4, "key").unwrap(), vec![5, 0, 0, 0]);
        assert_eq!(parse_bytes("0x0102", 2, "key").unwrap(), vec![2, 1]);
        assert_eq!(parse_bytes("-1", 8, "value").unwrap(), vec![0xff; 8]);
        assert_eq!(parse_bytes("hex:00ff", 2, "key").unwrap(), vec![0, 0xff]);
        assert_eq!(
            parse_bytes("hex:00", 2, "key").unwrap_err().to_string(),
            "key `hex:00` is 1 bytes; the map's keys are 2 bytes"
        );
        assert_eq!(
            parse_bytes("256", 1, "key").unwrap_err().to_string(),
            "key 256 does not fit in 1 bytes"
        );
        assert!(parse_bytes("x", 4, "key")
            .unwrap_err()
            .to_string()
            .contains("expected an integer"));
        assert_eq!(show_bytes(&[1, 0, 0, 0]), "1");
        assert_eq!(show_bytes(&[1, 2, 3]), "01 02 03");
    }

    fn int(name: &str, size: u32, signed: bool) -> TypeDesc {
        use ktrace_abi::types::{TypeKind, TypeNode};
        TypeDesc {
            nodes: vec![TypeNode {
                name: name.into(),
                size,
                kind: TypeKind::Int { signed },
            }],
        }
    }

    fn map(map_type: u32, value_size: u32, host_value_size: u32) -> MapInfo {
        MapInfo {
            id: 1,
            name: "M".into(),
            map_type,
            key_size: 4,
            value_size,
            max_entries: 4,
            flags: 0,
            host_value_size,
            memory_bytes: 0,
            entries: None,
            submitted: 0,
            lost: 0,
            consumed: 0,
            lost_per_cpu: vec![],
            busy: 0,
            programs: vec![],
            types: ktrace_abi::types::MapTypes {
                key: Some(int("u32", 4, false)),
                value: Some(int("i32", 4, true)),
                record: None,
            },
        }
    }

    #[test]
    fn typed_values_print_signed_and_per_cpu_maps_one_per_cpu() {
        let m = map(map_type::HASH, 4, 4);
        assert_eq!(show_value(&m, &(-5i32).to_le_bytes()), "-5");
        assert_eq!(
            json_value(&m, &(-5i32).to_le_bytes()),
            serde_json::json!(-5)
        );
        assert_eq!(show_key(&m, &7u32.to_le_bytes()), "7");
        // Two CPUs, each value padded to 8 bytes.
        let p = map(map_type::PERCPU_ARRAY, 4, 16);
        let mut v = vec![0u8; 16];
        v[..4].copy_from_slice(&(-1i32).to_le_bytes());
        v[8..12].copy_from_slice(&3i32.to_le_bytes());
        assert_eq!(show_value(&p, &v), "[-1, 3] sum 2");
        assert_eq!(json_value(&p, &v), serde_json::json!([-1, 3]));
        assert_eq!(
            json_entry(&p, &0u32.to_le_bytes(), &v),
            serde_json::json!({"key": 0, "value": [-1, 3], "sum": 2})
        );
        // Untyped per-CPU values are split per CPU too, and summed.
        let mut pu = p.clone();
        pu.types = Default::default();
        assert_eq!(show_value(&pu, &v), "[4294967295, 3] sum 4294967298");
        assert_eq!(json_value(&pu, &v), serde_json::json!([4294967295u64, 3]));
        // Typed input goes to every CPU.
        let mut both = vec![0u8; 16];
        both[..4].copy_from_slice(&(-2i32).to_le_bytes());
        both[8..12].copy_from_slice(&(-2i32).to_le_bytes());
        assert_eq!(parse_value(&p, "-2").unwrap(), both);
        assert_eq!(
            parse_value(&p, "3000000000").unwrap_err().to_string(),
            "value: 3000000000 does not fit in `i32` (4 bytes, signed)"
        );
        // Untyped maps keep the untyped forms.
        let mut u = map(map_type::HASH, 4, 4);
        u.types = Default::default();
        assert_eq!(show_value(&u, &[0xff; 4]), "4294967295");
        assert_eq!(parse_value(&u, "5").unwrap(), vec![5, 0, 0, 0]);
    }
}
