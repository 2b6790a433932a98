//! Map key, value and record types from an eBPF object's DWARF.
//!
//! `ktrace build` compiles probes with full debug information, so every map
//! static has a `DW_TAG_variable` whose type is the SDK's map struct, and
//! rustc describes generic structs with `DW_TAG_template_type_parameter`
//! children: `HashMap<u64, Start>` has `K = u64` and `V = Start`. This module
//! finds those variables by symbol name, reads the parameters by the map
//! struct's name (the SDK's, which are also Aya's) and converts the types to
//! [`TypeDesc`]s:
//!
//! | map struct | key | value | record |
//! |---|---|---|---|
//! | `HashMap<K, V>`, `LruHashMap<K, V>`, `PerCpuHashMap<K, V>` | `K` | `V` | |
//! | `Array<V>`, `PerCpuArray<V>` | `u32` | `V` | |
//! | `PerfEventArray<T>`, `RingBuf<T>` | | | `T` (not `()`) |
//! | anything else (`Log2Histogram`, ...) | the map struct it wraps | | |
//!
//! Objects without template parameters (C built by clang, probes built
//! without debug information) simply yield no types: everything still
//! works untyped. Conversion never fails a load: a type that does not fit
//! the bounds of [`ktrace_abi::types`] is cut short (too deep: the inner
//! part becomes opaque bytes) or left out (too many nodes).

use std::collections::HashMap;

use gimli::{AttributeValue, EndianSlice, LittleEndian, UnitOffset};
use ktrace_abi::types::{
    Field, MapTypes, TypeDesc, TypeKind, TypeNode, Variant, MAX_DEPTH, MAX_FIELDS, MAX_NAME,
    MAX_NODES, MAX_VARIANTS,
};
use object::{Object as _, ObjectSection};

type R<'a> = EndianSlice<'a, LittleEndian>;

/// How many wrapper structs (`Log2Histogram` → `Array<u64>`) are followed
/// to reach a map struct with type parameters.
const MAX_WRAPPERS: usize = 4;

/// The declared types of the maps named in `names` (symbol names), for
/// those whose types the DWARF gives. Empty without `.debug_info`.
pub(crate) fn map_types(file: &object::File<'_>, names: &[&str]) -> HashMap<String, MapTypes> {
    map_types_inner(file, names).unwrap_or_default()
}

fn map_types_inner(
    file: &object::File<'_>,
    names: &[&str],
) -> gimli::Result<HashMap<String, MapTypes>> {
    let mut out = HashMap::new();
    if file.section_by_name(".debug_info").is_none() || names.is_empty() {
        return Ok(out);
    }
    // Type references are unit offsets and names are `.debug_str` offsets
    // whose REL relocations have in-place addends against a section symbol
    // of value 0: the raw section bytes are right without relocating.
    let dwarf = gimli::Dwarf::load(|id| -> gimli::Result<R<'_>> {
        let data = file
            .section_by_name(id.name())
            .and_then(|s| s.data().ok())
            .unwrap_or(&[]);
        Ok(EndianSlice::new(data, LittleEndian))
    })?;
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        while let Some((_, entry)) = entries.next_dfs()? {
            if entry.tag() != gimli::DW_TAG_variable || !is_global(entry)? {
                continue;
            }
            let name = match entry.attr_value(gimli::DW_AT_linkage_name)? {
                Some(v) => attr_string(&dwarf, &unit, v),
                None => match entry.attr_value(gimli::DW_AT_name)? {
                    Some(v) => attr_string(&dwarf, &unit, v),
                    None => continue,
                },
            };
            if !names.contains(&name.as_str()) || out.contains_key(&name) {
                continue;
            }
            let Some(AttributeValue::UnitRef(ty)) = entry.attr_value(gimli::DW_AT_type)? else {
                continue;
            };
            let cx = Cx {
                dwarf: &dwarf,
                unit: &unit,
            };
            if let Some(types) = cx.classify(ty, 0)? {
                if !types.is_empty() {
                    out.insert(name, types);
                }
            }
        }
    }
    Ok(out)
}

/// A variable with a static address (`DW_OP_addr`), not a local.
fn is_global(entry: &gimli::DebuggingInformationEntry<'_, '_, R<'_>>) -> gimli::Result<bool> {
    Ok(matches!(
        entry.attr_value(gimli::DW_AT_location)?,
        Some(AttributeValue::Exprloc(e)) if e.0.slice().first() == Some(&gimli::DW_OP_addr.0)
    ))
}

fn attr_string(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    v: AttributeValue<R<'_>>,
) -> String {
    dwarf
        .attr_string(unit, v)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The DWARF of one unit.
struct Cx<'a, 'd> {
    dwarf: &'a gimli::Dwarf<R<'d>>,
    unit: &'a gimli::Unit<R<'d>>,
}

/// What one DIE says, read once.
struct Die {
    tag: gimli::DwTag,
    name: String,
    size: Option<u64>,
    ty: Option<UnitOffset>,
}

impl<'a, 'd> Cx<'a, 'd> {
    fn die(&self, off: UnitOffset) -> gimli::Result<Die> {
        let e = self.unit.entry(off)?;
        let name = match e.attr_value(gimli::DW_AT_name)? {
            Some(v) => attr_string(self.dwarf, self.unit, v),
            None => String::new(),
        };
        let size = e
            .attr_value(gimli::DW_AT_byte_size)?
            .and_then(|v| v.udata_value());
        let ty = match e.attr_value(gimli::DW_AT_type)? {
            Some(AttributeValue::UnitRef(t)) => Some(t),
            _ => None,
        };
        Ok(Die {
            tag: e.tag(),
            name,
            size,
            ty,
        })
    }

    /// The children of `off`: (offset, tag) pairs.
    fn children(&self, off: UnitOffset) -> gimli::Result<Vec<(UnitOffset, gimli::DwTag)>> {
        let mut tree = self.unit.entries_tree(Some(off))?;
        let root = tree.root()?;
        let mut iter = root.children();
        let mut out = Vec::new();
        while let Some(child) = iter.next()? {
            out.push((child.entry().offset(), child.entry().tag()));
        }
        Ok(out)
    }

    /// The key/value/record types of the map struct at `off`.
    fn classify(&self, off: UnitOffset, hops: usize) -> gimli::Result<Option<MapTypes>> {
        let d = self.die(off)?;
        if d.tag != gimli::DW_TAG_structure_type {
            return Ok(None);
        }
        let base = d.name.split('<').next().unwrap_or("").trim();
        let mut params = Vec::new();
        let mut members = Vec::new();
        for (c, tag) in self.children(off)? {
            if tag == gimli::DW_TAG_template_type_parameter {
                let p = self.die(c)?;
                if let Some(t) = p.ty {
                    params.push((p.name, t));
                }
            } else if tag == gimli::DW_TAG_member {
                if let Some(t) = self.die(c)?.ty {
                    members.push(t);
                }
            }
        }
        let param = |wanted: &[&str], index: usize| {
            params
                .iter()
                .find(|(n, _)| wanted.contains(&n.as_str()))
                .or(params.get(index))
                .map(|&(_, t)| t)
        };
        let desc = |t: Option<UnitOffset>| -> gimli::Result<Option<TypeDesc>> {
            match t {
                Some(t) => self.type_desc(t),
                None => Ok(None),
            }
        };
        let types = match base {
            "HashMap" | "LruHashMap" | "PerCpuHashMap" | "LruPerCpuHashMap" => MapTypes {
                key: desc(param(&["K"], 0))?,
                value: desc(param(&["V"], 1))?,
                record: None,
            },
            "Array" | "PerCpuArray" => MapTypes {
                key: Some(TypeDesc {
                    nodes: vec![TypeNode {
                        name: "u32".into(),
                        size: 4,
                        kind: TypeKind::Int { signed: false },
                    }],
                }),
                value: desc(param(&["V", "T"], 0))?,
                record: None,
            },
            "PerfEventArray" | "RingBuf" => MapTypes {
                // `RingBuf<()>` declares nothing.
                record: desc(param(&["T"], 0))?.filter(|d| d.size() > 0),
                ..MapTypes::default()
            },
            _ => {
                // A wrapper (`Log2Histogram { slots: Array<u64> }`): the
                // first member that is itself a map struct.
                if hops >= MAX_WRAPPERS {
                    return Ok(None);
                }
                for m in members {
                    if let Some(t) = self.classify(m, hops + 1)? {
                        return Ok(Some(t));
                    }
                }
                return Ok(None);
            }
        };
        Ok(Some(types))
    }

    /// The description of the type at `off`, or `None` when it needs more
    /// than [`MAX_NODES`] nodes.
    fn type_desc(&self, off: UnitOffset) -> gimli::Result<Option<TypeDesc>> {
        let mut b = Builder {
            nodes: Vec::new(),
            memo: HashMap::new(),
        };
        let root = self.convert(&mut b, off, MAX_DEPTH)?;
        let Some(root) = root else { return Ok(None) };
        // The root must be the last node; a memoised root (a type that
        // refers to itself through a typedef) is copied to the end.
        if root as usize + 1 != b.nodes.len() {
            let n = b.nodes[root as usize].clone();
            if !b.push(n) {
                return Ok(None);
            }
        }
        let desc = TypeDesc { nodes: b.nodes };
        // The conversion keeps every bound; a description that still fails
        // (a DWARF oddity) is dropped rather than refused by the kernel.
        Ok(desc.validate().is_ok().then_some(desc))
    }

    /// Converts the type at `off` with at most `budget` levels of nesting
    /// left. `None`: out of nodes.
    fn convert(
        &self,
        b: &mut Builder,
        off: UnitOffset,
        budget: usize,
    ) -> gimli::Result<Option<u32>> {
        if let Some(&i) = b.memo.get(&(off, budget)) {
            return Ok(Some(i));
        }
        let d = self.die(off)?;
        let size = d.size.and_then(|s| u32::try_from(s).ok());
        let opaque = |name: String, size: u32| TypeNode {
            name,
            size,
            kind: TypeKind::Opaque,
        };
        let node = match d.tag {
            gimli::DW_TAG_base_type => {
                let enc = match self.unit.entry(off)?.attr_value(gimli::DW_AT_encoding)? {
                    Some(AttributeValue::Encoding(e)) => e,
                    _ => gimli::DwAte(0),
                };
                let size = size.unwrap_or(0);
                let kind = match enc {
                    gimli::DW_ATE_boolean if size == 1 => TypeKind::Bool,
                    gimli::DW_ATE_float if matches!(size, 4 | 8) => TypeKind::Float,
                    gimli::DW_ATE_UTF if size == 4 => TypeKind::Char,
                    gimli::DW_ATE_signed | gimli::DW_ATE_signed_char
                        if matches!(size, 1 | 2 | 4 | 8 | 16) =>
                    {
                        TypeKind::Int { signed: true }
                    }
                    gimli::DW_ATE_unsigned | gimli::DW_ATE_unsigned_char
                        if matches!(size, 1 | 2 | 4 | 8 | 16) =>
                    {
                        TypeKind::Int { signed: false }
                    }
                    _ => TypeKind::Opaque,
                };
                TypeNode {
                    name: short(&d.name),
                    size,
                    kind,
                }
            }
            gimli::DW_TAG_typedef
            | gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type => {
                let Some(t) = d.ty else {
                    return Ok(b.push(opaque(short(&d.name), 0)).then(|| b.last()));
                };
                let Some(i) = self.convert(b, t, budget)? else {
                    return Ok(None);
                };
                if d.tag != gimli::DW_TAG_typedef || d.name.is_empty() {
                    b.memo.insert((off, budget), i);
                    return Ok(Some(i));
                }
                // A typedef keeps its own name (`u32` for `unsigned int`).
                let mut n = b.nodes[i as usize].clone();
                n.name = short(&d.name);
                n
            }
            gimli::DW_TAG_array_type => match self.array(b, off, &d, budget)? {
                Ok(n) => n,
                Err(()) => return Ok(None),
            },
            gimli::DW_TAG_structure_type | gimli::DW_TAG_class_type => {
                match self.structure(b, off, &d, budget)? {
                    Ok(n) => n,
                    Err(()) => return Ok(None),
                }
            }
            gimli::DW_TAG_enumeration_type => self.enumeration(off, &d)?,
            _ => {
                let name = if d.name.is_empty() {
                    match d.tag {
                        gimli::DW_TAG_pointer_type => "pointer".to_string(),
                        gimli::DW_TAG_union_type => "union".to_string(),
                        _ => "?".to_string(),
                    }
                } else {
                    short(&d.name)
                };
                opaque(
                    name,
                    size.unwrap_or(if d.tag == gimli::DW_TAG_pointer_type {
                        8
                    } else {
                        0
                    }),
                )
            }
        };
        if !b.push(node) {
            return Ok(None);
        }
        b.memo.insert((off, budget), b.last());
        Ok(Some(b.last()))
    }

    /// An array type: one node per dimension (C's `int a[2][3]` is an
    /// array of 2 arrays of 3). `Err(())`: out of nodes.
    fn array(
        &self,
        b: &mut Builder,
        off: UnitOffset,
        d: &Die,
        budget: usize,
    ) -> gimli::Result<Result<TypeNode, ()>> {
        let total = d.size.and_then(|s| u32::try_from(s).ok());
        let mut dims = Vec::new();
        for (c, tag) in self.children(off)? {
            if tag != gimli::DW_TAG_subrange_type {
                continue;
            }
            let e = self.unit.entry(c)?;
            let count = match e
                .attr_value(gimli::DW_AT_count)?
                .and_then(|v| v.udata_value())
            {
                Some(n) => Some(n),
                None => e
                    .attr_value(gimli::DW_AT_upper_bound)?
                    .and_then(|v| v.udata_value())
                    .map(|u| u + 1),
            };
            dims.push(count.and_then(|n| u32::try_from(n).ok()));
        }
        let opaque = |size: u32| {
            Ok(Ok(TypeNode {
                name: "array".into(),
                size,
                kind: TypeKind::Opaque,
            }))
        };
        let (Some(elem), false) = (d.ty, dims.is_empty()) else {
            return opaque(total.unwrap_or(0));
        };
        if dims.iter().any(Option::is_none) || budget < dims.len() + 1 {
            return opaque(total.unwrap_or(0));
        }
        let Some(mut inner) = self.convert(b, elem, budget - dims.len())? else {
            return Ok(Err(()));
        };
        let dims: Vec<u32> = dims.into_iter().flatten().collect();
        for (k, &len) in dims.iter().enumerate().rev() {
            let e = &b.nodes[inner as usize];
            let Some(size) = e.size.checked_mul(len) else {
                return opaque(total.unwrap_or(0));
            };
            let node = TypeNode {
                name: short(&format!("[{}; {len}]", e.name)),
                size,
                kind: TypeKind::Array { elem: inner, len },
            };
            if k == 0 {
                if total.is_some_and(|t| t != size) {
                    return opaque(total.unwrap_or(0));
                }
                return Ok(Ok(node));
            }
            if !b.push(node) {
                return Ok(Err(()));
            }
            inner = b.last();
        }
        opaque(total.unwrap_or(0))
    }

    /// A struct: its members at constant byte offsets. Rust enums with
    /// data (`DW_TAG_variant_part`), bit fields and declarations are opaque.
    fn structure(
        &self,
        b: &mut Builder,
        off: UnitOffset,
        d: &Die,
        budget: usize,
    ) -> gimli::Result<Result<TypeNode, ()>> {
        let size = d.size.and_then(|s| u32::try_from(s).ok()).unwrap_or(0);
        let opaque = TypeNode {
            name: short(&d.name),
            size,
            kind: TypeKind::Opaque,
        };
        let e = self.unit.entry(off)?;
        if d.size.is_none() || e.attr_value(gimli::DW_AT_declaration)?.is_some() || budget < 2 {
            return Ok(Ok(opaque));
        }
        let mut members = Vec::new();
        for (c, tag) in self.children(off)? {
            match tag {
                gimli::DW_TAG_variant_part => return Ok(Ok(opaque)),
                gimli::DW_TAG_member => {}
                _ => continue,
            }
            let m = self.unit.entry(c)?;
            if m.attr_value(gimli::DW_AT_bit_size)?.is_some()
                || m.attr_value(gimli::DW_AT_data_bit_offset)?.is_some()
            {
                return Ok(Ok(opaque));
            }
            let Some(offset) = m
                .attr_value(gimli::DW_AT_data_member_location)?
                .and_then(|v| v.udata_value())
                .and_then(|o| u32::try_from(o).ok())
            else {
                return Ok(Ok(opaque));
            };
            let md = self.die(c)?;
            let Some(t) = md.ty else {
                return Ok(Ok(opaque));
            };
            members.push((short(&md.name), offset, t));
        }
        if members.len() > MAX_FIELDS {
            return Ok(Ok(opaque));
        }
        let mut fields = Vec::new();
        for (name, offset, t) in members {
            let Some(ty) = self.convert(b, t, budget - 1)? else {
                return Ok(Err(()));
            };
            // Zero-sized members (`PhantomData`) carry nothing to print.
            let fsize = b.nodes[ty as usize].size;
            if fsize == 0 {
                continue;
            }
            if offset.checked_add(fsize).is_none_or(|end| end > size) {
                return Ok(Ok(opaque));
            }
            fields.push(Field { name, offset, ty });
        }
        Ok(Ok(TypeNode {
            name: short(&d.name),
            size,
            kind: TypeKind::Struct { fields },
        }))
    }

    /// A fieldless enum: its enumerators and their values.
    fn enumeration(&self, off: UnitOffset, d: &Die) -> gimli::Result<TypeNode> {
        let size = d.size.and_then(|s| u32::try_from(s).ok()).unwrap_or(0);
        let signed = match d.ty {
            Some(t) => matches!(
                self.unit.entry(t)?.attr_value(gimli::DW_AT_encoding)?,
                Some(AttributeValue::Encoding(
                    gimli::DW_ATE_signed | gimli::DW_ATE_signed_char
                ))
            ),
            None => false,
        };
        let mut variants = Vec::new();
        for (c, tag) in self.children(off)? {
            if tag != gimli::DW_TAG_enumerator {
                continue;
            }
            let e = self.unit.entry(c)?;
            let value = match e.attr_value(gimli::DW_AT_const_value)? {
                Some(AttributeValue::Sdata(v)) => v,
                Some(v) => v.udata_value().map_or(0, |u| u as i64),
                None => 0,
            };
            variants.push(Variant {
                name: short(&self.die(c)?.name),
                value,
            });
        }
        let kind = if matches!(size, 1 | 2 | 4 | 8) && variants.len() <= MAX_VARIANTS {
            TypeKind::Enum { signed, variants }
        } else {
            TypeKind::Opaque
        };
        Ok(TypeNode {
            name: short(&d.name),
            size,
            kind,
        })
    }
}

/// Nodes of the description being built.
struct Builder {
    nodes: Vec<TypeNode>,
    /// (DIE, nesting budget) → node: shared types become one node.
    memo: HashMap<(UnitOffset, usize), u32>,
}

impl Builder {
    /// Appends a node; `false` when the description is full.
    fn push(&mut self, n: TypeNode) -> bool {
        if self.nodes.len() >= MAX_NODES {
            return false;
        }
        self.nodes.push(n);
        true
    }

    fn last(&self) -> u32 {
        self.nodes.len() as u32 - 1
    }
}

/// A name cut to [`MAX_NAME`] bytes on a character boundary.
fn short(name: &str) -> String {
    if name.len() <= MAX_NAME {
        return name.to_string();
    }
    let mut end = MAX_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}
