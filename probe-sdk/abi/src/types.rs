//! Type descriptions of map keys, map values and event records: a small,
//! bounded cousin of Linux's BTF, so tools can print what a probe stored
//! with the names and types its source declared.
//!
//! The host derives them from the probe object's DWARF when it loads it;
//! the kernel checks them against the map's sizes, keeps them with the map
//! and returns them in every [`MapInfo`](crate::bpf::MapInfo), so a later
//! process prints typed without the object file.
//!
//! A [`TypeDesc`] is a flat table of [`TypeNode`]s, like BTF's type ids:
//! a node refers to other nodes by index, only to nodes *before* it, and the
//! last node is the described type. That keeps the wire form free of
//! recursion (a deeply nested description cannot exhaust the kernel's stack
//! while it is decoded), makes cycles impossible, and shares repeated types
//! (`u64`) between fields. [`TypeDesc::validate`] checks the bounds below
//! without recursing.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Nodes in one description.
pub const MAX_NODES: usize = 128;
/// Fields of one struct.
pub const MAX_FIELDS: usize = 64;
/// Variants of one enum.
pub const MAX_VARIANTS: usize = 64;
/// Bytes of a type, field or variant name.
pub const MAX_NAME: usize = 64;
/// Nesting of arrays and structs (a struct holding an array of structs
/// holding an integer is depth 4).
pub const MAX_DEPTH: usize = 8;
/// Bytes of a map's [`MapTypes`], postcard-encoded: the kernel refuses
/// more with a `Limit` error.
pub const MAX_TYPES_BYTES: usize = 4096;

/// One type: a table of nodes, the last one being the type described.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDesc {
    /// Nodes; `ty` references point to earlier indices.
    pub nodes: Vec<TypeNode>,
}

/// One node of a [`TypeDesc`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeNode {
    /// The type's name as the source wrote it (`u32`, `Start`, `[u8; 16]`).
    pub name: String,
    /// Size in bytes.
    pub size: u32,
    /// What the bytes are.
    pub kind: TypeKind,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypeKind {
    /// A little-endian integer of `size` bytes (1, 2, 4, 8 or 16).
    Int {
        /// Two's complement (`i32`) rather than unsigned (`u32`).
        signed: bool,
    },
    /// One byte, 0 or 1.
    Bool,
    /// A Rust `char` (4 bytes, a Unicode scalar value) or a C `char`
    /// (1 byte).
    Char,
    /// An IEEE 754 float of 4 or 8 bytes.
    Float,
    /// `len` elements of node `elem`, back to back (`size` = elem size × len).
    Array {
        /// Index of the element's node.
        elem: u32,
        /// Number of elements.
        len: u32,
    },
    /// Named fields at byte offsets; padding and zero-sized fields are left out.
    Struct {
        /// In offset order.
        fields: Vec<Field>,
    },
    /// A fieldless enum: an integer of `size` bytes naming a variant.
    Enum {
        /// The discriminant is signed.
        signed: bool,
        /// Named values; others print as numbers.
        variants: Vec<Variant>,
    },
    /// Bytes with no known structure (pointers, unions, enums with data,
    /// bit fields): printed as hex.
    Opaque,
}

/// A struct field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// As declared (`comm`).
    pub name: String,
    /// Byte offset in the struct.
    pub offset: u32,
    /// Index of the field's node (smaller than the struct's own index).
    pub ty: u32,
}

/// An enum variant and its discriminant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// As declared (`Read`).
    pub name: String,
    /// The discriminant (unsigned ones above `i64::MAX` wrap).
    pub value: i64,
}

/// The declared types of a map, each optional: keys and values for maps
/// with entries, the record type for ring buffers and perf event arrays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapTypes {
    /// Keys of hash and array maps.
    pub key: Option<TypeDesc>,
    /// Values of hash and array maps (per CPU for per-CPU maps).
    pub value: Option<TypeDesc>,
    /// Records of ring buffers and perf event arrays.
    pub record: Option<TypeDesc>,
}

impl MapTypes {
    /// No type is known.
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.value.is_none() && self.record.is_none()
    }
}

/// Why a description was refused: what is wrong, at which node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    /// What is wrong and where, naming the map, the role and the node.
    pub message: String,
    /// A size bound ([`MAX_TYPES_BYTES`]) was exceeded, rather than the
    /// description being wrong.
    pub limit: bool,
}

/// A refusal of a wrong description (not a size bound).
fn invalid(message: String) -> TypeError {
    TypeError {
        message,
        limit: false,
    }
}

impl core::fmt::Display for TypeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.message)
    }
}

impl TypeDesc {
    /// The described type (the last node), if there is one.
    pub fn root(&self) -> Option<&TypeNode> {
        self.nodes.last()
    }

    /// Size of the described type (0 for an empty description).
    pub fn size(&self) -> u32 {
        self.root().map_or(0, |n| n.size)
    }

    /// The node at `index`.
    pub fn node(&self, index: u32) -> Option<&TypeNode> {
        self.nodes.get(index as usize)
    }

    /// Checks every bound and every reference, without recursion: node,
    /// field, variant and name counts, references to earlier nodes only,
    /// sizes that add up (integers 1/2/4/8/16 bytes, arrays = elem × len,
    /// fields inside their struct), nesting at most [`MAX_DEPTH`].
    pub fn validate(&self) -> Result<(), TypeError> {
        let err = |i: usize, m: String| Err(invalid(format!("type node {i}: {m}")));
        if self.nodes.is_empty() {
            return Err(invalid("the type description has no nodes".into()));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(invalid(format!(
                "{} type nodes, over the limit of {MAX_NODES}",
                self.nodes.len()
            )));
        }
        // Depth of each node, computed in index order: references point
        // backwards, so a referenced node's depth is already known.
        let mut depth: Vec<usize> = Vec::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.len() > MAX_NAME {
                return err(
                    i,
                    format!(
                        "name is {} bytes, over the limit of {MAX_NAME}",
                        n.name.len()
                    ),
                );
            }
            let earlier = |r: u32| -> Result<&TypeNode, TypeError> {
                if (r as usize) < i {
                    Ok(&self.nodes[r as usize])
                } else {
                    Err(invalid(format!(
                        "type node {i} (`{}`): reference to node {r}, which is not an earlier node",
                        n.name
                    )))
                }
            };
            let d = match &n.kind {
                TypeKind::Int { .. } => {
                    if !matches!(n.size, 1 | 2 | 4 | 8 | 16) {
                        return err(
                            i,
                            format!(
                                "integer `{}` of {} bytes (1, 2, 4, 8 or 16)",
                                n.name, n.size
                            ),
                        );
                    }
                    1
                }
                TypeKind::Enum { variants, .. } => {
                    if !matches!(n.size, 1 | 2 | 4 | 8) {
                        return err(
                            i,
                            format!("enum `{}` of {} bytes (1, 2, 4 or 8)", n.name, n.size),
                        );
                    }
                    if variants.len() > MAX_VARIANTS {
                        return err(
                            i,
                            format!(
                                "enum `{}` has {} variants, over the limit of {MAX_VARIANTS}",
                                n.name,
                                variants.len()
                            ),
                        );
                    }
                    if let Some(v) = variants.iter().find(|v| v.name.len() > MAX_NAME) {
                        return err(
                            i,
                            format!(
                                "variant name of {} bytes, over the limit of {MAX_NAME}",
                                v.name.len()
                            ),
                        );
                    }
                    1
                }
                TypeKind::Bool if n.size != 1 => {
                    return err(i, format!("bool `{}` of {} bytes (1)", n.name, n.size))
                }
                TypeKind::Char if !matches!(n.size, 1 | 4) => {
                    return err(i, format!("char `{}` of {} bytes (1 or 4)", n.name, n.size))
                }
                TypeKind::Float if !matches!(n.size, 4 | 8) => {
                    return err(
                        i,
                        format!("float `{}` of {} bytes (4 or 8)", n.name, n.size),
                    )
                }
                TypeKind::Bool | TypeKind::Char | TypeKind::Float | TypeKind::Opaque => 1,
                TypeKind::Array { elem, len } => {
                    let e = earlier(*elem)?;
                    if e.size.checked_mul(*len) != Some(n.size) {
                        return err(
                            i,
                            format!(
                                "array `{}` of {len} × {} bytes is not {} bytes",
                                n.name, e.size, n.size
                            ),
                        );
                    }
                    depth[*elem as usize] + 1
                }
                TypeKind::Struct { fields } => {
                    if fields.len() > MAX_FIELDS {
                        return err(
                            i,
                            format!(
                                "struct `{}` has {} fields, over the limit of {MAX_FIELDS}",
                                n.name,
                                fields.len()
                            ),
                        );
                    }
                    let mut d = 1;
                    for f in fields {
                        if f.name.len() > MAX_NAME {
                            return err(
                                i,
                                format!(
                                    "field name of {} bytes, over the limit of {MAX_NAME}",
                                    f.name.len()
                                ),
                            );
                        }
                        let t = earlier(f.ty)?;
                        if f.offset.checked_add(t.size).is_none_or(|end| end > n.size) {
                            return err(
                                i,
                                format!(
                                    "field `{}` at offset {} of {} bytes ends past the {} bytes of struct `{}`",
                                    f.name, f.offset, t.size, n.size, n.name
                                ),
                            );
                        }
                        d = d.max(depth[f.ty as usize] + 1);
                    }
                    d
                }
            };
            if d > MAX_DEPTH {
                return err(
                    i,
                    format!(
                        "`{}` nests {d} levels deep, over the limit of {MAX_DEPTH}",
                        n.name
                    ),
                );
            }
            depth.push(d);
        }
        Ok(())
    }
}

/// Checks a map's declared types against its sizes and the bounds above.
/// `what` names the map in messages (`map `START``). Ring buffers and perf
/// event arrays (`record_map`) take only a record type; other maps only
/// key and value types.
pub fn check_map_types(
    types: &MapTypes,
    what: &str,
    key_size: u32,
    value_size: u32,
    record_map: bool,
) -> Result<(), TypeError> {
    let encoded = postcard::experimental::serialized_size(types).unwrap_or(usize::MAX);
    if encoded > MAX_TYPES_BYTES {
        return Err(TypeError {
            message: format!(
                "{what}: type descriptions take {encoded} bytes, over the limit of {MAX_TYPES_BYTES}"
            ),
            limit: true,
        });
    }
    let check = |desc: &Option<TypeDesc>, role: &str, size: Option<u32>| {
        let Some(d) = desc else { return Ok(()) };
        d.validate()
            .map_err(|e| invalid(format!("{what}: {role} type: {e}")))?;
        if let Some(size) = size {
            if d.size() != size {
                return Err(invalid(format!(
                    "{what}: {role} type `{}` is {} bytes but the map's {role} size is {size} bytes",
                    d.root().map_or("?", |n| n.name.as_str()),
                    d.size()
                )));
            }
        }
        Ok(())
    };
    if record_map {
        if types.key.is_some() || types.value.is_some() {
            return Err(invalid(format!(
                "{what}: a ring buffer or perf event array takes a record type, not key or value types"
            )));
        }
        check(&types.record, "record", None)
    } else {
        if types.record.is_some() {
            return Err(invalid(format!(
                "{what}: only ring buffers and perf event arrays take a record type"
            )));
        }
        check(&types.key, "key", Some(key_size))?;
        check(&types.value, "value", Some(value_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn int(name: &str, size: u32) -> TypeNode {
        TypeNode {
            name: name.into(),
            size,
            kind: TypeKind::Int { signed: false },
        }
    }

    /// `struct Start { ts: u64, pid: u32, comm: [u8; 4] }`, 16 bytes.
    fn start() -> TypeDesc {
        TypeDesc {
            nodes: vec![
                int("u64", 8),
                int("u32", 4),
                int("u8", 1),
                TypeNode {
                    name: "[u8; 4]".into(),
                    size: 4,
                    kind: TypeKind::Array { elem: 2, len: 4 },
                },
                TypeNode {
                    name: "Start".into(),
                    size: 16,
                    kind: TypeKind::Struct {
                        fields: vec![
                            Field {
                                name: "ts".into(),
                                offset: 0,
                                ty: 0,
                            },
                            Field {
                                name: "pid".into(),
                                offset: 8,
                                ty: 1,
                            },
                            Field {
                                name: "comm".into(),
                                offset: 12,
                                ty: 3,
                            },
                        ],
                    },
                },
            ],
        }
    }

    #[test]
    fn a_struct_validates_and_reports_its_size() {
        let d = start();
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.size(), 16);
        assert_eq!(d.root().unwrap().name, "Start");
    }

    #[test]
    fn forward_and_self_references_are_refused() {
        let mut d = start();
        if let TypeKind::Struct { fields } = &mut d.nodes[4].kind {
            fields[1].ty = 4;
        }
        assert_eq!(
            d.validate().unwrap_err().to_string(),
            "type node 4 (`Start`): reference to node 4, which is not an earlier node"
        );
    }

    #[test]
    fn sizes_must_add_up() {
        let mut d = start();
        d.nodes[3].size = 5;
        assert_eq!(
            d.validate().unwrap_err().to_string(),
            "type node 3: array `[u8; 4]` of 4 × 1 bytes is not 5 bytes"
        );
        let mut d = start();
        d.nodes[4].size = 12;
        assert_eq!(
            d.validate().unwrap_err().to_string(),
            "type node 4: field `comm` at offset 12 of 4 bytes ends past the 12 bytes of struct `Start`"
        );
        let mut d = start();
        d.nodes[1].size = 3;
        assert_eq!(
            d.validate().unwrap_err().to_string(),
            "type node 1: integer `u32` of 3 bytes (1, 2, 4, 8 or 16)"
        );
    }

    #[test]
    fn nesting_and_counts_are_bounded() {
        // [[[[...u8; 1]; 1]...]: one level per array.
        let mut nodes = vec![int("u8", 1)];
        for i in 0..MAX_DEPTH as u32 {
            nodes.push(TypeNode {
                name: "a".into(),
                size: 1,
                kind: TypeKind::Array { elem: i, len: 1 },
            });
        }
        assert_eq!(
            TypeDesc {
                nodes: nodes.clone()
            }
            .validate()
            .unwrap_err()
            .to_string(),
            "type node 8: `a` nests 9 levels deep, over the limit of 8"
        );
        nodes.truncate(MAX_DEPTH);
        assert_eq!(TypeDesc { nodes }.validate(), Ok(()));
        let many = TypeDesc {
            nodes: vec![int("u8", 1); MAX_NODES + 1],
        };
        assert_eq!(
            many.validate().unwrap_err().to_string(),
            "129 type nodes, over the limit of 128"
        );
    }

    #[test]
    fn map_types_are_checked_against_map_sizes() {
        let types = MapTypes {
            key: Some(TypeDesc {
                nodes: vec![int("u64", 8)],
            }),
            value: Some(start()),
            record: None,
        };
        assert_eq!(check_map_types(&types, "map `START`", 8, 16, false), Ok(()));
        assert_eq!(
            check_map_types(&types, "map `START`", 8, 40, false)
                .unwrap_err()
                .to_string(),
            "map `START`: value type `Start` is 16 bytes but the map's value size is 40 bytes"
        );
        assert_eq!(
            check_map_types(&types, "map `EVENTS`", 0, 0, true)
                .unwrap_err()
                .to_string(),
            "map `EVENTS`: a ring buffer or perf event array takes a record type, not key or value types"
        );
        let big = MapTypes {
            value: Some(TypeDesc {
                nodes: vec![int(&"x".repeat(60), 8); 100],
            }),
            ..MapTypes::default()
        };
        let e = check_map_types(&big, "map `M`", 4, 8, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("map `M`: type descriptions take 6")
                && e.ends_with("over the limit of 4096"),
            "{e}"
        );
    }
}
