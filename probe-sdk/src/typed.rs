//! Typed printing and parsing of map keys, map values and event records,
//! from the [`TypeDesc`]s a map carries (see [`ktrace_abi::types`]).
//!
//! Text form, like bpftool's BTF-formatted dumps: integers in decimal
//! (signed ones with their sign), `true`/`false`, enum variants by name,
//! structs as `{ field: value, ... }`, arrays as `[a, b]`, byte arrays that
//! hold a C string (printable ASCII up to the first NUL, only NULs after)
//! as `"text"`, bytes of unknown structure as `hex:0a0b`. JSON form: the
//! same as numbers, booleans, strings, objects and arrays.
//!
//! Input ([`parse`]): an integer (`42`, `-1`, `0x2a`) for integer and enum
//! types, a variant name for enums, `true`/`false`, a float, a character,
//! or JSON for structs and arrays (`{"pid": 7, "comm": "fio"}`: fields left
//! out are zero; a string fills a byte array, zero-padded). `hex:BYTES`
//! always works and gives the bytes as they are stored.

use ktrace_abi::types::{TypeDesc, TypeKind, TypeNode};
use serde_json::{json, Value};

/// The type's node table, checked, with the root's size equal to `len`.
fn usable(desc: &TypeDesc, len: usize) -> bool {
    desc.validate().is_ok() && desc.size() as usize == len
}

/// `bytes` printed as `desc` says, or `None` when the description is
/// unusable or the size differs (the caller prints untyped).
pub fn format(desc: &TypeDesc, bytes: &[u8]) -> Option<String> {
    if !usable(desc, bytes.len()) {
        return None;
    }
    let mut out = String::new();
    fmt_node(desc, desc.nodes.len() as u32 - 1, bytes, &mut out);
    Some(out)
}

/// `bytes` as JSON, as `desc` says, or `None` like [`format`].
pub fn to_json(desc: &TypeDesc, bytes: &[u8]) -> Option<Value> {
    if !usable(desc, bytes.len()) {
        return None;
    }
    Some(json_node(desc, desc.nodes.len() as u32 - 1, bytes))
}

/// The name of the described type (`Start`, `u64`).
pub fn type_name(desc: &TypeDesc) -> &str {
    desc.root().map_or("?", |n| n.name.as_str())
}

/// The type spelled out, with field offsets:
/// `Start { insert_ns: u64 @0, pid: u32 @8, comm: [u8; 16] @12 }`; enums
/// list their variants (`Op = Read | Write`); unusable descriptions are `?`.
pub fn describe(desc: &TypeDesc) -> String {
    if desc.validate().is_err() {
        return "?".into();
    }
    let mut out = String::new();
    describe_node(desc, desc.nodes.len() as u32 - 1, &mut out);
    out
}

fn describe_node(desc: &TypeDesc, i: u32, out: &mut String) {
    let n = &desc.nodes[i as usize];
    match &n.kind {
        TypeKind::Struct { fields } => {
            out.push_str(&n.name);
            out.push_str(" {");
            for (k, f) in fields.iter().enumerate() {
                out.push_str(if k == 0 { " " } else { ", " });
                out.push_str(&f.name);
                out.push_str(": ");
                describe_node(desc, f.ty, out);
                out.push_str(&format!(" @{}", f.offset));
            }
            out.push_str(if fields.is_empty() { "}" } else { " }" });
        }
        TypeKind::Array { elem, len } => {
            out.push('[');
            describe_node(desc, *elem, out);
            out.push_str(&format!("; {len}]"));
        }
        TypeKind::Enum { variants, .. } => {
            let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
            out.push_str(&format!("{} = {}", n.name, names.join(" | ")));
        }
        TypeKind::Opaque => out.push_str(&format!("{} ({} bytes)", n.name, n.size)),
        _ => out.push_str(&n.name),
    }
}

/// Little-endian integer of up to 16 bytes, sign-extended when `signed`.
fn int(bytes: &[u8], signed: bool) -> i128 {
    let mut w = [0u8; 16];
    w[..bytes.len()].copy_from_slice(bytes);
    let v = u128::from_le_bytes(w);
    let bits = bytes.len() as u32 * 8;
    if signed && bits < 128 && bits > 0 && v >> (bits - 1) & 1 == 1 {
        (v | (u128::MAX << bits)) as i128
    } else {
        v as i128
    }
}

fn uint(bytes: &[u8]) -> u128 {
    let mut w = [0u8; 16];
    w[..bytes.len()].copy_from_slice(bytes);
    u128::from_le_bytes(w)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("hex:");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A byte array holding a C string: printable ASCII up to the first NUL
/// (at least one character), only NULs after it.
fn c_string(bytes: &[u8]) -> Option<&str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let (text, rest) = bytes.split_at(end);
    if text.is_empty() || !text.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    if rest.iter().any(|&b| b != 0) {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// Whether `n` is an array of one-byte integers or characters.
fn byte_array(desc: &TypeDesc, n: &TypeNode) -> bool {
    match n.kind {
        TypeKind::Array { elem, .. } => desc.node(elem).is_some_and(|e| {
            e.size == 1 && matches!(e.kind, TypeKind::Int { .. } | TypeKind::Char)
        }),
        _ => false,
    }
}

enum Scalar {
    Int(i128),
    Bool(bool),
    Char(char),
    Float(f64),
    Name(String),
    Hex(String),
}

/// The value of a node that is not an array or struct.
fn scalar(n: &TypeNode, b: &[u8]) -> Scalar {
    match &n.kind {
        TypeKind::Int { signed } => Scalar::Int(int(b, *signed)),
        TypeKind::Bool => match b[0] {
            0 => Scalar::Bool(false),
            1 => Scalar::Bool(true),
            x => Scalar::Int(x as i128),
        },
        TypeKind::Char => {
            let v = uint(b) as u32;
            match char::from_u32(v) {
                Some(c) => Scalar::Char(c),
                None => Scalar::Int(v as i128),
            }
        }
        TypeKind::Float => Scalar::Float(if n.size == 4 {
            f32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as f64
        } else {
            f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
        }),
        TypeKind::Enum { signed, variants } => {
            let v = int(b, *signed);
            match variants
                .iter()
                .find(|x| x.value as i128 == v || (!signed && x.value as u64 as i128 == v))
            {
                Some(x) => Scalar::Name(x.name.clone()),
                None => Scalar::Int(v),
            }
        }
        TypeKind::Opaque | TypeKind::Array { .. } | TypeKind::Struct { .. } => Scalar::Hex(hex(b)),
    }
}

fn fmt_node(desc: &TypeDesc, i: u32, b: &[u8], out: &mut String) {
    let n = &desc.nodes[i as usize];
    match &n.kind {
        TypeKind::Array { elem, len } => {
            if byte_array(desc, n) {
                if let Some(s) = c_string(b) {
                    out.push_str(&format!("{s:?}"));
                    return;
                }
            }
            let es = desc.nodes[*elem as usize].size as usize;
            out.push('[');
            for k in 0..*len as usize {
                if k > 0 {
                    out.push_str(", ");
                }
                fmt_node(desc, *elem, &b[k * es..(k + 1) * es], out);
            }
            out.push(']');
        }
        TypeKind::Struct { fields } => {
            if fields.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{ ");
            for (k, f) in fields.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                let fs = desc.nodes[f.ty as usize].size as usize;
                out.push_str(&f.name);
                out.push_str(": ");
                let at = f.offset as usize;
                fmt_node(desc, f.ty, &b[at..at + fs], out);
            }
            out.push_str(" }");
        }
        _ => match scalar(n, b) {
            Scalar::Int(v) => out.push_str(&v.to_string()),
            Scalar::Bool(v) => out.push_str(&v.to_string()),
            Scalar::Char(c) => out.push_str(&format!("{c:?}")),
            Scalar::Float(v) => out.push_str(&v.to_string()),
            Scalar::Name(s) | Scalar::Hex(s) => out.push_str(&s),
        },
    }
}

fn json_node(desc: &TypeDesc, i: u32, b: &[u8]) -> Value {
    let n = &desc.nodes[i as usize];
    match &n.kind {
        TypeKind::Array { elem, len } => {
            if byte_array(desc, n) {
                if let Some(s) = c_string(b) {
                    return json!(s);
                }
            }
            let es = desc.nodes[*elem as usize].size as usize;
            Value::Array(
                (0..*len as usize)
                    .map(|k| json_node(desc, *elem, &b[k * es..(k + 1) * es]))
                    .collect(),
            )
        }
        TypeKind::Struct { fields } => {
            let mut m = serde_json::Map::new();
            for f in fields {
                let fs = desc.nodes[f.ty as usize].size as usize;
                let at = f.offset as usize;
                m.insert(f.name.clone(), json_node(desc, f.ty, &b[at..at + fs]));
            }
            Value::Object(m)
        }
        _ => match scalar(n, b) {
            Scalar::Int(v) => {
                if let Ok(x) = i64::try_from(v) {
                    json!(x)
                } else if let Ok(x) = u64::try_from(v) {
                    json!(x)
                } else {
                    json!(v.to_string())
                }
            }
            Scalar::Bool(v) => json!(v),
            Scalar::Char(c) => json!(c.to_string()),
            Scalar::Float(v) => json!(v),
            Scalar::Name(s) | Scalar::Hex(s) => json!(s),
        },
    }
}

/// Encodes `text` as a value of `desc` (see the module comment for what is
/// accepted). `what` names the input in errors (`key`, `value`).
pub fn parse(desc: &TypeDesc, text: &str, what: &str) -> Result<Vec<u8>, String> {
    if desc.validate().is_err() {
        return Err(format!("{what}: the map's type description is unusable"));
    }
    let root = desc.nodes.len() as u32 - 1;
    let t = text.trim();
    let input = if t.starts_with('{') || t.starts_with('[') || t.starts_with('"') {
        serde_json::from_str::<Value>(t)
            .map_err(|e| format!("{what} `{text}`: not valid JSON: {e}"))?
    } else {
        Value::String(t.to_string())
    };
    let mut out = vec![0u8; desc.size() as usize];
    encode(desc, root, &input, &mut out, what)?;
    Ok(out)
}

/// Parses an integer: decimal, `0x` hex, or negative decimal.
fn parse_int(s: &str) -> Option<i128> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x") {
        return u128::from_str_radix(h, 16)
            .ok()
            .and_then(|v| i128::try_from(v).ok());
    }
    s.parse::<i128>().ok()
}

fn fits(v: i128, size: u32, signed: bool) -> bool {
    let bits = size * 8;
    if bits >= 128 {
        return signed || v >= 0;
    }
    if signed {
        let lim = 1i128 << (bits - 1);
        (-lim..lim).contains(&v)
    } else {
        // Negative input for an unsigned type is taken as two's complement
        // (`-1` is all ones), the usual shorthand for "every bit set".
        let lim = 1i128 << bits;
        (-(lim / 2)..lim).contains(&v)
    }
}

fn put_int(out: &mut [u8], v: i128) {
    let b = v.to_le_bytes();
    let n = out.len();
    out.copy_from_slice(&b[..n]);
}

fn encode(desc: &TypeDesc, i: u32, v: &Value, out: &mut [u8], path: &str) -> Result<(), String> {
    let n = &desc.nodes[i as usize];
    let shown = || match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let bad = |expect: &str| {
        Err(format!(
            "{path}: `{}` is not {expect} (type `{}`)",
            shown(),
            n.name
        ))
    };
    if let Value::String(s) = v {
        if let Some(h) = s.strip_prefix("hex:") {
            let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes: Option<Vec<u8>> = (0..h.len())
                .step_by(2)
                .map(|k| h.get(k..k + 2).and_then(|x| u8::from_str_radix(x, 16).ok()))
                .collect();
            return match bytes {
                Some(b) if b.len() == out.len() => {
                    out.copy_from_slice(&b);
                    Ok(())
                }
                Some(b) => Err(format!(
                    "{path}: `{s}` is {} bytes; type `{}` is {} bytes",
                    b.len(),
                    n.name,
                    out.len()
                )),
                None => Err(format!("{path}: `{s}` is not hex")),
            };
        }
    }
    match &n.kind {
        TypeKind::Int { signed } => {
            let x = match v {
                Value::Number(x) => x.as_i64().map(i128::from).or(x.as_u64().map(i128::from)),
                Value::String(s) => parse_int(s),
                _ => None,
            };
            let Some(x) = x else { return bad("an integer") };
            if !fits(x, n.size, *signed) {
                return Err(format!(
                    "{path}: {x} does not fit in `{}` ({} bytes, {})",
                    n.name,
                    n.size,
                    if *signed { "signed" } else { "unsigned" }
                ));
            }
            put_int(out, x);
        }
        TypeKind::Enum { signed, variants } => {
            let x = match v {
                Value::Number(x) => x.as_i64().map(i128::from).or(x.as_u64().map(i128::from)),
                Value::String(s) => parse_int(s).or_else(|| {
                    variants
                        .iter()
                        .find(|x| x.name == *s)
                        .map(|x| x.value as i128)
                }),
                _ => None,
            };
            let Some(x) = x else {
                let names: Vec<&str> = variants.iter().map(|x| x.name.as_str()).collect();
                return Err(format!(
                    "{path}: `{}` is not a variant of `{}` ({}) or an integer",
                    shown(),
                    n.name,
                    names.join(", ")
                ));
            };
            if !fits(x, n.size, *signed) {
                return Err(format!("{path}: {x} does not fit in `{}`", n.name));
            }
            put_int(out, x);
        }
        TypeKind::Bool => match v {
            Value::Bool(b) => out[0] = *b as u8,
            Value::String(s) if s == "true" || s == "1" => out[0] = 1,
            Value::String(s) if s == "false" || s == "0" => out[0] = 0,
            _ => return bad("true or false"),
        },
        TypeKind::Char => {
            let c = match v {
                Value::String(s) if s.chars().count() == 1 => s.chars().next(),
                _ => None,
            };
            let Some(c) = c else {
                return bad("one character");
            };
            if n.size == 1 {
                let Ok(b) = u8::try_from(c as u32) else {
                    return bad("a one-byte character");
                };
                out[0] = b;
            } else {
                out.copy_from_slice(&(c as u32).to_le_bytes());
            }
        }
        TypeKind::Float => {
            let x = match v {
                Value::Number(x) => x.as_f64(),
                Value::String(s) => s.parse::<f64>().ok(),
                _ => None,
            };
            let Some(x) = x else { return bad("a number") };
            if n.size == 4 {
                out.copy_from_slice(&(x as f32).to_le_bytes());
            } else {
                out.copy_from_slice(&x.to_le_bytes());
            }
        }
        TypeKind::Array { elem, len } => {
            let es = desc.nodes[*elem as usize].size as usize;
            match v {
                Value::String(s) if byte_array(desc, n) => {
                    if s.len() > *len as usize {
                        return Err(format!(
                            "{path}: \"{s}\" is {} bytes; `{}` holds {len}",
                            s.len(),
                            n.name
                        ));
                    }
                    out[..s.len()].copy_from_slice(s.as_bytes());
                }
                Value::Array(items) => {
                    if items.len() > *len as usize {
                        return Err(format!(
                            "{path}: {} elements; `{}` holds {len}",
                            items.len(),
                            n.name
                        ));
                    }
                    for (k, item) in items.iter().enumerate() {
                        encode(
                            desc,
                            *elem,
                            item,
                            &mut out[k * es..(k + 1) * es],
                            &format!("{path}[{k}]"),
                        )?;
                    }
                }
                _ => return bad("a JSON array"),
            }
        }
        TypeKind::Struct { fields } => {
            let Value::Object(m) = v else {
                return bad("a JSON object");
            };
            for (name, fv) in m {
                let Some(f) = fields.iter().find(|f| f.name == *name) else {
                    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                    return Err(format!(
                        "{path}: struct `{}` has no field `{name}` (fields: {})",
                        n.name,
                        names.join(", ")
                    ));
                };
                let fs = desc.nodes[f.ty as usize].size as usize;
                let at = f.offset as usize;
                encode(
                    desc,
                    f.ty,
                    fv,
                    &mut out[at..at + fs],
                    &format!("{path}.{name}"),
                )?;
            }
        }
        TypeKind::Opaque => return bad("hex:BYTES"),
    }
    Ok(())
}

/// A struct type's fields resolved by name once, for a tool that reads
/// many records of the type field by field (`biosnoop` reads its probe's
/// ring buffer records so): the same description [`format`] and
/// [`to_json`] print from, so a tool and `ktrace events` decode alike.
#[derive(Debug, Clone)]
pub struct StructFields {
    desc: TypeDesc,
}

/// An integer field of a [`StructFields`]: where it is and its signedness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntField {
    offset: usize,
    size: usize,
    signed: bool,
}

/// A byte-array field holding NUL-padded text (`comm`, `rwbs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextField {
    offset: usize,
    len: usize,
}

impl StructFields {
    /// The fields of `desc`, refused when the description is unusable or
    /// not a struct.
    pub fn new(desc: &TypeDesc) -> Result<Self, String> {
        desc.validate().map_err(|e| e.message)?;
        match desc.root().map(|n| &n.kind) {
            Some(TypeKind::Struct { .. }) => Ok(Self { desc: desc.clone() }),
            _ => Err(format!("`{}` is not a struct", type_name(desc))),
        }
    }

    /// The size of a record.
    pub fn size(&self) -> usize {
        self.desc.size() as usize
    }

    /// Field `name` and its node, or why there is none.
    fn field(&self, name: &str) -> Result<(usize, &TypeNode), String> {
        let root = self.desc.nodes.len() as u32 - 1;
        let TypeKind::Struct { fields } = &self.desc.nodes[root as usize].kind else {
            return Err(format!("`{}` is not a struct", type_name(&self.desc)));
        };
        let f = fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| format!("`{}` has no field `{name}`", type_name(&self.desc)))?;
        Ok((f.offset as usize, &self.desc.nodes[f.ty as usize]))
    }

    /// The integer field `name` (of any size up to 16 bytes).
    pub fn int(&self, name: &str) -> Result<IntField, String> {
        let (offset, n) = self.field(name)?;
        match n.kind {
            TypeKind::Int { signed } => Ok(IntField {
                offset,
                size: n.size as usize,
                signed,
            }),
            _ => Err(format!(
                "field `{name}` of `{}` is `{}`, not an integer",
                type_name(&self.desc),
                n.name
            )),
        }
    }

    /// The byte-array field `name` (`[u8; N]`, `[i8; N]`, `[c_char; N]`).
    pub fn text(&self, name: &str) -> Result<TextField, String> {
        let (offset, n) = self.field(name)?;
        if !byte_array(&self.desc, n) {
            return Err(format!(
                "field `{name}` of `{}` is `{}`, not a byte array",
                type_name(&self.desc),
                n.name
            ));
        }
        Ok(TextField {
            offset,
            len: n.size as usize,
        })
    }
}

impl IntField {
    /// The field's value in `record` (sign-extended when signed), or
    /// `None` when the record is too short to hold it.
    pub fn get(&self, record: &[u8]) -> Option<i128> {
        let b = record.get(self.offset..self.offset.checked_add(self.size)?)?;
        Some(int(b, self.signed))
    }
}

impl TextField {
    /// The field's text in `record`: the bytes up to the first NUL, with
    /// invalid UTF-8 replaced; `None` when the record is too short.
    pub fn get(&self, record: &[u8]) -> Option<String> {
        let b = record.get(self.offset..self.offset.checked_add(self.len)?)?;
        let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
        Some(String::from_utf8_lossy(&b[..end]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrace_abi::types::{Field, Variant};

    fn node(name: &str, size: u32, kind: TypeKind) -> TypeNode {
        TypeNode {
            name: name.into(),
            size,
            kind,
        }
    }

    /// `struct S { id: u64, delta: i32, op: Op (u8 enum), ok: bool, comm: [u8; 8] }`
    fn s() -> TypeDesc {
        TypeDesc {
            nodes: vec![
                node("u64", 8, TypeKind::Int { signed: false }),
                node("i32", 4, TypeKind::Int { signed: true }),
                node(
                    "Op",
                    1,
                    TypeKind::Enum {
                        signed: false,
                        variants: vec![
                            Variant {
                                name: "Read".into(),
                                value: 0,
                            },
                            Variant {
                                name: "Write".into(),
                                value: 1,
                            },
                        ],
                    },
                ),
                node("bool", 1, TypeKind::Bool),
                node("u8", 1, TypeKind::Int { signed: false }),
                node("[u8; 8]", 8, TypeKind::Array { elem: 4, len: 8 }),
                node(
                    "S",
                    24,
                    TypeKind::Struct {
                        fields: vec![
                            Field {
                                name: "id".into(),
                                offset: 0,
                                ty: 0,
                            },
                            Field {
                                name: "delta".into(),
                                offset: 8,
                                ty: 1,
                            },
                            Field {
                                name: "op".into(),
                                offset: 12,
                                ty: 2,
                            },
                            Field {
                                name: "ok".into(),
                                offset: 13,
                                ty: 3,
                            },
                            Field {
                                name: "comm".into(),
                                offset: 16,
                                ty: 5,
                            },
                        ],
                    },
                ),
            ],
        }
    }

    fn bytes() -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[0..8].copy_from_slice(&4096u64.to_le_bytes());
        b[8..12].copy_from_slice(&(-3i32).to_le_bytes());
        b[12] = 1;
        b[13] = 1;
        b[16..19].copy_from_slice(b"fio");
        b
    }

    #[test]
    fn structs_print_with_names_signs_variants_and_strings() {
        assert_eq!(
            format(&s(), &bytes()).unwrap(),
            r#"{ id: 4096, delta: -3, op: Write, ok: true, comm: "fio" }"#
        );
        assert_eq!(
            to_json(&s(), &bytes()).unwrap(),
            json!({"id": 4096, "delta": -3, "op": "Write", "ok": true, "comm": "fio"})
        );
        // A byte array that is no C string prints as numbers.
        let mut b = bytes();
        b[20] = 7;
        assert_eq!(
            format(&s(), &b).unwrap(),
            "{ id: 4096, delta: -3, op: Write, ok: true, comm: [102, 105, 111, 0, 7, 0, 0, 0] }"
        );
        // Wrong size: the caller prints untyped.
        assert_eq!(format(&s(), &b[..8]), None);
    }

    #[test]
    fn typed_input_round_trips() {
        let v = parse(
            &s(),
            r#"{"id": 4096, "delta": -3, "op": "Write", "ok": true, "comm": "fio"}"#,
            "value",
        )
        .unwrap();
        assert_eq!(v, bytes());
        let u64d = TypeDesc {
            nodes: vec![node("u64", 8, TypeKind::Int { signed: false })],
        };
        assert_eq!(parse(&u64d, "0x10", "key").unwrap(), 16u64.to_le_bytes());
        assert_eq!(parse(&u64d, "-1", "key").unwrap(), [0xff; 8]);
        assert_eq!(
            parse(&u64d, "hex:0100000000000000", "key").unwrap(),
            1u64.to_le_bytes()
        );
        assert_eq!(
            parse(&s(), r#"{"pid": 1}"#, "value").unwrap_err(),
            "value: struct `S` has no field `pid` (fields: id, delta, op, ok, comm)"
        );
        assert_eq!(
            parse(&s(), r#"{"delta": 3000000000}"#, "value").unwrap_err(),
            "value.delta: 3000000000 does not fit in `i32` (4 bytes, signed)"
        );
        assert_eq!(
            parse(&s(), r#"{"comm": "a-name-too-long"}"#, "value").unwrap_err(),
            "value.comm: \"a-name-too-long\" is 15 bytes; `[u8; 8]` holds 8"
        );
        assert_eq!(
            parse(&s(), r#"{"op": "Trim"}"#, "value").unwrap_err(),
            "value.op: `Trim` is not a variant of `Op` (Read, Write) or an integer"
        );
        assert_eq!(
            parse(&s(), "12", "value").unwrap_err(),
            "value: `12` is not a JSON object (type `S`)"
        );
    }

    #[test]
    fn struct_fields_read_records_by_name() {
        let f = StructFields::new(&s()).unwrap();
        assert_eq!(f.size(), 24);
        let b = bytes();
        assert_eq!(f.int("id").unwrap().get(&b), Some(4096));
        assert_eq!(f.int("delta").unwrap().get(&b), Some(-3));
        assert_eq!(f.text("comm").unwrap().get(&b).as_deref(), Some("fio"));
        assert_eq!(f.int("id").unwrap().get(&b[..7]), None);
        assert_eq!(f.text("comm").unwrap().get(&b[..23]), None);
        assert_eq!(f.int("pid").unwrap_err(), "`S` has no field `pid`");
        assert_eq!(
            f.int("comm").unwrap_err(),
            "field `comm` of `S` is `[u8; 8]`, not an integer"
        );
        assert_eq!(
            f.text("id").unwrap_err(),
            "field `id` of `S` is `u64`, not a byte array"
        );
        let not_struct = TypeDesc {
            nodes: vec![node("u64", 8, TypeKind::Int { signed: false })],
        };
        assert_eq!(
            StructFields::new(&not_struct).unwrap_err(),
            "`u64` is not a struct"
        );
    }
}
