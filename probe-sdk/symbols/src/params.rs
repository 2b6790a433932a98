//! A function's own parameters, from full DWARF: where each one is at a
//! probe address and how to reach a field through references, for
//! `ktrace trace`'s `args.bio.op`.
//!
//! The index ([`crate::SymbolIndex`]) keeps only line tables and inline
//! records; parameters and types are read here, on demand, from the ELF's
//! `.debug_info`, for the few functions a script names. Nothing is guessed
//! from the calling convention: a parameter is where its DWARF location
//! (an expression, or a location list entry covering the probe address)
//! says, and when DWARF has no location there the access is refused.
//!
//! An access is a small program over the probe's registers
//! ([`ParamAccess::steps`]): start from a register, add offsets, load a
//! pointer from memory; the value is then either in that register (a
//! parameter passed in registers) or in memory at the computed address
//! (read with `bpf_probe_read_kernel`).

use std::fmt;
use std::path::Path;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};

use crate::error::SymbolError;

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// One step of an access, run in order; "the value" starts undefined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessStep {
    /// The value is this register (its DWARF number: 0 rax, 1 rdx, 2 rcx,
    /// 3 rbx, 4 rsi, 5 rdi, 6 rbp, 7 rsp, 8–15 r8–r15).
    Register(u16),
    /// Add to the value (an address).
    Add(i64),
    /// The value is an address: replace it by the 8 bytes stored there.
    Load,
}

/// Where the leaf is once the steps ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the value itself, `shift` bytes up (a field of a small struct
    /// passed in a register).
    Register {
        /// Bytes to shift right.
        shift: u32,
    },
    /// In memory at the address the value holds.
    Memory,
}

/// What the leaf's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafKind {
    /// An integer (`u8`..`u64`, `usize`, `i32`, ...).
    Int {
        /// Two's complement.
        signed: bool,
    },
    /// `bool`.
    Bool,
    /// A `char` (a Unicode scalar value) or a C `char`.
    Char,
    /// A pointer or reference (its address).
    Pointer,
    /// A fieldless enum: the discriminant and the variants' names.
    Enum {
        /// The discriminant is signed.
        signed: bool,
        /// Value → name.
        variants: Vec<(i64, String)>,
    },
}

/// How to read `args.PATH` at a probe address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamAccess {
    /// The steps computing the value (or the leaf's address).
    pub steps: Vec<AccessStep>,
    /// Where the leaf is.
    pub place: Place,
    /// Bytes of the leaf (1, 2, 4 or 8).
    pub size: u32,
    /// What they are.
    pub kind: LeafKind,
    /// The leaf's type as DWARF names it (`u64`, `kernel_block::bio::Op`).
    pub type_name: String,
}

/// Why `args.PATH` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The element of the path the message is about (0: the parameter).
    pub at: usize,
    /// What is wrong, and what exists instead.
    pub message: String,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParamError {}

fn perr<T>(at: usize, message: impl Into<String>) -> Result<T, ParamError> {
    Err(ParamError {
        at,
        message: message.into(),
    })
}

/// A parameter as DWARF declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    /// As written in the source (`bio`).
    pub name: String,
    /// Its type as DWARF names it (`&mut kernel::block::queue::Inner`).
    pub type_name: String,
}

/// The parameters of the functions of one ELF, read on demand from its
/// DWARF. Holds the ELF's bytes.
pub struct ParamReader {
    data: Vec<u8>,
}

impl fmt::Debug for ParamReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParamReader({} bytes)", self.data.len())
    }
}

/// One piece of a parameter's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceLoc {
    /// In a register (from its byte 0).
    Reg(u16),
    /// In memory at register + offset.
    Mem(u16, i64),
    /// Optimised out.
    Gone,
}

/// `(byte offset in the value, size in bytes, where)`.
type Piece = (u64, u64, PieceLoc);

/// Where a value is while a path is followed.
#[derive(Debug, Clone)]
enum Loc {
    /// In the parameter's location pieces, `base` bytes into the parameter.
    Pieces { pieces: Vec<Piece>, base: u64 },
    /// In memory at the address the steps compute.
    Mem(Vec<AccessStep>),
}

impl ParamReader {
    /// Reads the ELF at `path`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, SymbolError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| SymbolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ParamReader { data })
    }

    /// An ELF in memory.
    pub fn from_bytes(data: Vec<u8>) -> Self {
        ParamReader { data }
    }

    fn with_dwarf<T>(
        &self,
        f: impl FnOnce(&gimli::Dwarf<R<'_>>) -> Result<T, ParamError>,
    ) -> Result<T, ParamError> {
        let file = object::File::parse(&*self.data).map_err(|e| ParamError {
            at: 0,
            message: format!("the kernel ELF cannot be read: {e}"),
        })?;
        let endian = if file.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let sections =
            gimli::DwarfSections::load(|id| -> Result<std::borrow::Cow<'_, [u8]>, gimli::Error> {
                Ok(match file.section_by_name(id.name()) {
                    Some(s) => s
                        .uncompressed_data()
                        .unwrap_or(std::borrow::Cow::Borrowed(&[])),
                    None => std::borrow::Cow::Borrowed(&[]),
                })
            })
            .map_err(dwarf_err)?;
        let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
        f(&dwarf)
    }

    /// The parameters of the function starting at `func`.
    pub fn parameters(&self, func: u64) -> Result<Vec<Parameter>, ParamError> {
        self.with_dwarf(|dwarf| {
            let f = find_function(dwarf, func)?;
            let cx = Cx {
                dwarf,
                unit: &f.unit,
            };
            f.params
                .iter()
                .map(|p| {
                    Ok(Parameter {
                        name: p.name.clone(),
                        type_name: match p.ty {
                            Some(t) => cx.type_name(t).map_err(dwarf_err)?,
                            None => "?".into(),
                        },
                    })
                })
                .collect()
        })
    }

    /// How to read `path` (`["bio", "op"]`: the parameter `bio`, then its
    /// field `op`, through references) in the function starting at `func`,
    /// probed at `at`.
    pub fn access(&self, func: u64, at: u64, path: &[&str]) -> Result<ParamAccess, ParamError> {
        self.with_dwarf(|dwarf| {
            let f = find_function(dwarf, func)?;
            let cx = Cx {
                dwarf,
                unit: &f.unit,
            };
            let Some(first) = path.first() else {
                return perr(0, "expected a parameter name after `args.`");
            };
            let Some(p) = f.params.iter().find(|p| p.name == *first) else {
                let names: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
                return perr(
                    0,
                    if names.is_empty() {
                        format!(
                            "`{}` has no parameter `{first}`: it has no parameters",
                            f.name
                        )
                    } else {
                        format!(
                            "`{}` has no parameter `{first}`: expected one of {}",
                            f.name,
                            names.join(", ")
                        )
                    },
                );
            };
            let Some(ty) = p.ty else {
                return perr(0, format!("DWARF gives `{first}` no type"));
            };
            let frame = Frame {
                entry: at == func,
                base: f.frame_base,
            };
            let pieces = cx.location(p.location, at, frame, first)?;
            cx.follow(ty, Loc::Pieces { pieces, base: 0 }, path)
        })
    }
}

fn dwarf_err(e: gimli::Error) -> ParamError {
    ParamError {
        at: 0,
        message: format!("the kernel's DWARF cannot be read: {e}"),
    }
}

/// A concrete function's DIE and its parameters.
struct FoundFunction<'d> {
    unit: gimli::Unit<R<'d>>,
    name: String,
    params: Vec<RawParam<'d>>,
    /// The register `DW_AT_frame_base` names, when it is one register.
    frame_base: Option<u16>,
}

struct RawParam<'d> {
    name: String,
    ty: Option<UnitOffset>,
    location: Option<AttributeValue<R<'d>>>,
}

/// The subprogram whose code starts at `func`.
fn find_function<'d>(
    dwarf: &gimli::Dwarf<R<'d>>,
    func: u64,
) -> Result<FoundFunction<'d>, ParamError> {
    let mut units = dwarf.units();
    let mut saw_types = false;
    while let Some(header) = units.next().map_err(dwarf_err)? {
        let unit = dwarf.unit(header).map_err(dwarf_err)?;
        let mut ranges = dwarf.unit_ranges(&unit).map_err(dwarf_err)?;
        let mut inside = false;
        while let Some(r) = ranges.next().map_err(dwarf_err)? {
            if r.begin <= func && func < r.end {
                inside = true;
                break;
            }
        }
        if !inside {
            continue;
        }
        let mut found = None;
        {
            let mut entries = unit.entries();
            while let Some((_, e)) = entries.next_dfs().map_err(dwarf_err)? {
                if matches!(
                    e.tag(),
                    gimli::DW_TAG_base_type | gimli::DW_TAG_structure_type
                ) {
                    saw_types = true;
                }
                if e.tag() != gimli::DW_TAG_subprogram {
                    continue;
                }
                let low = match e.attr_value(gimli::DW_AT_low_pc).map_err(dwarf_err)? {
                    Some(v) => dwarf.attr_address(&unit, v).map_err(dwarf_err)?,
                    None => None,
                };
                if low == Some(func) {
                    found = Some(e.offset());
                    break;
                }
            }
        }
        let Some(off) = found else { continue };
        let cx = Cx { dwarf, unit: &unit };
        let name = cx.name_of(off).map_err(dwarf_err)?.unwrap_or_default();
        let frame_base = match unit
            .entry(off)
            .and_then(|e| e.attr_value(gimli::DW_AT_frame_base))
            .map_err(dwarf_err)?
        {
            Some(AttributeValue::Exprloc(e)) => {
                let mut ops = e.operations(unit.encoding());
                match (ops.next(), ops.next()) {
                    (Ok(Some(gimli::Operation::Register { register })), Ok(None)) => {
                        Some(register.0)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let mut params = Vec::new();
        let mut tree = unit.entries_tree(Some(off)).map_err(dwarf_err)?;
        let root = tree.root().map_err(dwarf_err)?;
        let mut children = root.children();
        while let Some(child) = children.next().map_err(dwarf_err)? {
            let e = child.entry();
            if e.tag() != gimli::DW_TAG_formal_parameter {
                continue;
            }
            let o = e.offset();
            params.push(RawParam {
                name: cx.name_of(o).map_err(dwarf_err)?.unwrap_or_default(),
                ty: cx.type_of(o).map_err(dwarf_err)?,
                location: e.attr_value(gimli::DW_AT_location).map_err(dwarf_err)?,
            });
        }
        if params.is_empty() && !saw_types {
            return perr(
                0,
                format!("the kernel's DWARF has no parameters or types for `{name}`: it was built with line tables only (set `debug = \"full\"` in the kernel profile)"),
            );
        }
        return Ok(FoundFunction {
            unit,
            name,
            params,
            frame_base,
        });
    }
    perr(
        0,
        format!("the kernel's DWARF describes no function at {func:#x}"),
    )
}

/// The probe address as the frame sees it.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// The probe is at the function's first instruction.
    entry: bool,
    /// The frame base register.
    base: Option<u16>,
}

/// DWARF of one unit.
struct Cx<'a, 'd> {
    dwarf: &'a gimli::Dwarf<R<'d>>,
    unit: &'a gimli::Unit<R<'d>>,
}

/// How many typedefs, qualifiers and origins are followed.
const MAX_HOPS: usize = 16;

impl<'d> Cx<'_, 'd> {
    /// An attribute of a DIE, or of the DIE its `DW_AT_abstract_origin` or
    /// `DW_AT_specification` names (in this unit).
    fn attr(
        &self,
        off: UnitOffset,
        at: gimli::DwAt,
    ) -> gimli::Result<Option<AttributeValue<R<'d>>>> {
        let mut off = off;
        for _ in 0..MAX_HOPS {
            let e = self.unit.entry(off)?;
            if let Some(v) = e.attr_value(at)? {
                return Ok(Some(v));
            }
            let next = match e.attr_value(gimli::DW_AT_abstract_origin)? {
                Some(AttributeValue::UnitRef(o)) => Some(o),
                _ => match e.attr_value(gimli::DW_AT_specification)? {
                    Some(AttributeValue::UnitRef(o)) => Some(o),
                    _ => None,
                },
            };
            match next {
                Some(o) => off = o,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    fn name_of(&self, off: UnitOffset) -> gimli::Result<Option<String>> {
        Ok(match self.attr(off, gimli::DW_AT_name)? {
            Some(v) => Some(
                self.dwarf
                    .attr_string(self.unit, v)?
                    .to_string_lossy()
                    .into_owned(),
            ),
            None => None,
        })
    }

    fn type_of(&self, off: UnitOffset) -> gimli::Result<Option<UnitOffset>> {
        Ok(match self.attr(off, gimli::DW_AT_type)? {
            Some(AttributeValue::UnitRef(t)) => Some(t),
            _ => None,
        })
    }

    fn size_of(&self, off: UnitOffset) -> gimli::Result<Option<u64>> {
        Ok(self
            .unit
            .entry(off)?
            .attr_value(gimli::DW_AT_byte_size)?
            .and_then(|v| v.udata_value()))
    }

    /// Through typedefs and qualifiers to the type that says what the
    /// bytes are.
    fn strip(&self, mut off: UnitOffset) -> gimli::Result<UnitOffset> {
        for _ in 0..MAX_HOPS {
            let e = self.unit.entry(off)?;
            if !matches!(
                e.tag(),
                gimli::DW_TAG_typedef
                    | gimli::DW_TAG_const_type
                    | gimli::DW_TAG_volatile_type
                    | gimli::DW_TAG_restrict_type
                    | gimli::DW_TAG_atomic_type
            ) {
                break;
            }
            match self.type_of(off)? {
                Some(t) => off = t,
                None => break,
            }
        }
        Ok(off)
    }

    /// The type's name (`&mut Inner`; a pointer without a name is `*T`).
    fn type_name(&self, off: UnitOffset) -> gimli::Result<String> {
        if let Some(n) = self.name_of(off)? {
            return Ok(n);
        }
        let tag = self.unit.entry(off)?.tag();
        Ok(match (tag, self.type_of(off)?) {
            (gimli::DW_TAG_pointer_type, Some(t)) => format!("*{}", self.type_name(t)?),
            (gimli::DW_TAG_pointer_type, None) => "*void".into(),
            _ => "?".into(),
        })
    }

    /// The pieces of a location at address `at`.
    fn location(
        &self,
        loc: Option<AttributeValue<R<'d>>>,
        at: u64,
        frame: Frame,
        name: &str,
    ) -> Result<Vec<Piece>, ParamError> {
        let Some(loc) = loc else {
            return perr(
                0,
                format!("`{name}` was optimised out: DWARF gives it no location"),
            );
        };
        let expr = match loc {
            AttributeValue::Exprloc(e) => e,
            other => {
                let mut list = match self
                    .dwarf
                    .attr_locations(self.unit, other)
                    .map_err(dwarf_err)?
                {
                    Some(l) => l,
                    None => return perr(0, format!("DWARF gives `{name}` no usable location")),
                };
                let mut found = None;
                while let Some(entry) = list.next().map_err(dwarf_err)? {
                    if entry.range.begin <= at && at < entry.range.end {
                        found = Some(entry.data);
                        break;
                    }
                }
                match found {
                    Some(e) => e,
                    None => {
                        return perr(
                            0,
                            format!("`{name}` has no location at {at:#x} (DWARF's location list does not cover the probe address)"),
                        )
                    }
                }
            }
        };
        let mut ops = expr.operations(self.unit.encoding());
        let mut pieces = Vec::new();
        let mut cur: Option<PieceLoc> = None;
        let mut offset = 0u64;
        let unsupported = |what: String| {
            perr(
                0,
                format!("`{name}` is at a DWARF location this cannot read at the probe address ({what})"),
            )
        };
        while let Some(op) = ops.next().map_err(dwarf_err)? {
            match op {
                gimli::Operation::Register { register } => cur = Some(PieceLoc::Reg(register.0)),
                gimli::Operation::RegisterOffset {
                    register, offset: o, ..
                } => cur = Some(PieceLoc::Mem(register.0, o)),
                gimli::Operation::Piece {
                    size_in_bits,
                    bit_offset: None,
                } if size_in_bits % 8 == 0 => {
                    let size = size_in_bits / 8;
                    pieces.push((offset, size, cur.take().unwrap_or(PieceLoc::Gone)));
                    offset += size;
                }
                gimli::Operation::EntryValue { .. } => {
                    return unsupported("the value it had at entry, DW_OP_entry_value".into())
                }
                gimli::Operation::StackValue => {
                    return unsupported("a computed value, DW_OP_stack_value".into())
                }
                // A stack slot of the frame: the function stores the
                // parameter there after its entry, so it is readable
                // from inside the body only.
                gimli::Operation::FrameOffset { offset: o } => match frame {
                    Frame { entry: true, .. } => {
                        return perr(
                            0,
                            format!("`{name}` is kept in a stack slot the function fills after its entry (DW_OP_fbreg): probe a line of its body (`kprobe:FILE.rs:LINE`)"),
                        )
                    }
                    Frame { base: Some(r), .. } => cur = Some(PieceLoc::Mem(r, o)),
                    Frame { base: None, .. } => {
                        return unsupported("relative to a frame base that is not one register".into())
                    }
                },
                other => return unsupported(format!("{other:?}")),
            }
        }
        if let Some(c) = cur {
            // Without pieces the location holds the whole value.
            pieces.push((offset, u64::MAX / 2, c));
        }
        if pieces.is_empty() {
            return perr(0, format!("`{name}` was optimised out at {at:#x}"));
        }
        Ok(pieces)
    }

    /// Follows `path[1..]` from the parameter of type `ty` at `loc`.
    fn follow(
        &self,
        ty: UnitOffset,
        mut loc: Loc,
        path: &[&str],
    ) -> Result<ParamAccess, ParamError> {
        let mut ty = self.strip(ty).map_err(dwarf_err)?;
        let mut i = 1;
        let shown = |i: usize| path[..i].join(".");
        loop {
            let e = self.unit.entry(ty).map_err(dwarf_err)?;
            let tag = e.tag();
            let type_name = self.type_name(ty).map_err(dwarf_err)?;
            let size = self.size_of(ty).map_err(dwarf_err)?;
            if tag == gimli::DW_TAG_pointer_type || tag == gimli::DW_TAG_reference_type {
                if i == path.len() {
                    return leaf(loc, 8, LeafKind::Pointer, type_name, i - 1, &shown(i));
                }
                // `.field` through a reference or pointer reads the pointer
                // first (as Rust's auto-deref does).
                let Some(target) = self.type_of(ty).map_err(dwarf_err)? else {
                    return perr(i, format!("`{}` is `{type_name}`, a pointer to nothing known: it has no field `{}`", shown(i), path[i]));
                };
                let steps = value_steps(loc, 8, i - 1, &shown(i))?;
                loc = Loc::Mem(steps);
                ty = self.strip(target).map_err(dwarf_err)?;
                continue;
            }
            match tag {
                gimli::DW_TAG_structure_type | gimli::DW_TAG_class_type => {
                    let fields = self.fields(ty)?;
                    if i == path.len() {
                        let names: Vec<&str> = fields.iter().map(|f| f.0.as_str()).collect();
                        return perr(
                            i - 1,
                            format!(
                                "`{}` is a struct (`{type_name}`): expected one of its fields: {}",
                                shown(i),
                                if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
                            ),
                        );
                    }
                    let want = path[i];
                    let Some((_, off, fty)) = fields.iter().find(|f| f.0 == want) else {
                        let names: Vec<&str> = fields.iter().map(|f| f.0.as_str()).collect();
                        if self.has_variants(ty).map_err(dwarf_err)? {
                            return perr(i, format!("`{}` is an enum with data (`{type_name}`): its variants' fields cannot be read", shown(i)));
                        }
                        return perr(
                            i,
                            format!(
                                "`{type_name}` has no field `{want}`: expected one of {}",
                                if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
                            ),
                        );
                    };
                    loc = match loc {
                        Loc::Pieces { pieces, base } => Loc::Pieces { pieces, base: base + off },
                        Loc::Mem(mut steps) => {
                            if *off != 0 {
                                steps.push(AccessStep::Add(*off as i64));
                            }
                            Loc::Mem(steps)
                        }
                    };
                    ty = self.strip(*fty).map_err(dwarf_err)?;
                    i += 1;
                }
                gimli::DW_TAG_base_type | gimli::DW_TAG_enumeration_type => {
                    if i < path.len() {
                        return perr(i, format!("`{}` is `{type_name}`, which has no fields", shown(i)));
                    }
                    let size = size.unwrap_or(0);
                    if !matches!(size, 1 | 2 | 4 | 8) {
                        return perr(i - 1, format!("`{}` is `{type_name}` of {size} bytes: only values of 1, 2, 4 or 8 bytes can be read", shown(i)));
                    }
                    let kind = if tag == gimli::DW_TAG_enumeration_type {
                        self.enumeration(ty).map_err(dwarf_err)?
                    } else {
                        let enc = match e.attr_value(gimli::DW_AT_encoding).map_err(dwarf_err)? {
                            Some(AttributeValue::Encoding(x)) => x,
                            _ => gimli::DwAte(0),
                        };
                        match enc {
                            gimli::DW_ATE_boolean => LeafKind::Bool,
                            gimli::DW_ATE_UTF => LeafKind::Char,
                            gimli::DW_ATE_signed | gimli::DW_ATE_signed_char => LeafKind::Int { signed: true },
                            gimli::DW_ATE_unsigned | gimli::DW_ATE_unsigned_char => LeafKind::Int { signed: false },
                            _ => return perr(i - 1, format!("`{}` is `{type_name}`: only integers, bool, char, enums and pointers can be read", shown(i))),
                        }
                    };
                    return leaf(loc, size as u32, kind, type_name, i - 1, &shown(i));
                }
                _ => {
                    return perr(
                        i - 1,
                        format!("`{}` is `{type_name}`: only integers, bool, char, fieldless enums, pointers and struct fields can be read", shown(i)),
                    )
                }
            }
        }
    }

    /// A struct's fields: name, byte offset, type.
    fn fields(&self, ty: UnitOffset) -> Result<Vec<(String, u64, UnitOffset)>, ParamError> {
        let mut out = Vec::new();
        let mut tree = self.unit.entries_tree(Some(ty)).map_err(dwarf_err)?;
        let root = tree.root().map_err(dwarf_err)?;
        let mut children = root.children();
        while let Some(c) = children.next().map_err(dwarf_err)? {
            let e = c.entry();
            if e.tag() != gimli::DW_TAG_member {
                continue;
            }
            let off = e
                .attr_value(gimli::DW_AT_data_member_location)
                .map_err(dwarf_err)?
                .and_then(|v| v.udata_value());
            let name = self.name_of(e.offset()).map_err(dwarf_err)?;
            let fty = self.type_of(e.offset()).map_err(dwarf_err)?;
            if let (Some(name), Some(off), Some(fty)) = (name, off, fty) {
                out.push((name, off, fty));
            }
        }
        Ok(out)
    }

    fn has_variants(&self, ty: UnitOffset) -> gimli::Result<bool> {
        let mut tree = self.unit.entries_tree(Some(ty))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(c) = children.next()? {
            if c.entry().tag() == gimli::DW_TAG_variant_part {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn enumeration(&self, ty: UnitOffset) -> gimli::Result<LeafKind> {
        let signed = match self.type_of(ty)? {
            Some(t) => matches!(
                self.unit.entry(t)?.attr_value(gimli::DW_AT_encoding)?,
                Some(AttributeValue::Encoding(
                    gimli::DW_ATE_signed | gimli::DW_ATE_signed_char
                ))
            ),
            None => false,
        };
        let mut variants = Vec::new();
        let mut tree = self.unit.entries_tree(Some(ty))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(c) = children.next()? {
            let e = c.entry();
            if e.tag() != gimli::DW_TAG_enumerator {
                continue;
            }
            let value = match e.attr_value(gimli::DW_AT_const_value)? {
                Some(AttributeValue::Sdata(v)) => v,
                Some(v) => v.udata_value().map_or(0, |u| u as i64),
                None => 0,
            };
            let name = self.name_of(e.offset())?.unwrap_or_default();
            variants.push((value, name));
        }
        Ok(LeafKind::Enum { signed, variants })
    }
}

/// The steps that put a `size`-byte value at `loc` into the value
/// register (to use it as an address).
fn value_steps(loc: Loc, size: u64, at: usize, shown: &str) -> Result<Vec<AccessStep>, ParamError> {
    match loc {
        Loc::Mem(mut steps) => {
            steps.push(AccessStep::Load);
            Ok(steps)
        }
        Loc::Pieces { pieces, base } => match piece_at(&pieces, base, size, at, shown)? {
            (PieceLoc::Reg(r), 0) => Ok(vec![AccessStep::Register(r)]),
            (PieceLoc::Reg(_), _) => perr(at, format!("`{shown}` sits inside a register with other data: it cannot be used as an address")),
            (PieceLoc::Mem(r, o), delta) => Ok(vec![
                AccessStep::Register(r),
                AccessStep::Add(o + delta as i64),
                AccessStep::Load,
            ]),
            (PieceLoc::Gone, _) => unreachable!("piece_at refuses optimised-out pieces"),
        },
    }
}

/// The piece holding bytes `base..base + size`, and `base`'s offset in it.
fn piece_at(
    pieces: &[Piece],
    base: u64,
    size: u64,
    at: usize,
    shown: &str,
) -> Result<(PieceLoc, u64), ParamError> {
    for &(off, len, loc) in pieces {
        if base >= off && base - off < len {
            if base - off + size > len {
                return perr(
                    at,
                    format!("`{shown}` spans two locations in DWARF: it cannot be read at once"),
                );
            }
            if loc == PieceLoc::Gone {
                return perr(
                    at,
                    format!("`{shown}` was optimised out at the probe address"),
                );
            }
            if let PieceLoc::Reg(_) = loc {
                if base - off + size > 8 {
                    return perr(
                        at,
                        format!("`{shown}` does not fit in the register DWARF puts it in"),
                    );
                }
            }
            return Ok((loc, base - off));
        }
    }
    perr(
        at,
        format!("`{shown}` was optimised out at the probe address"),
    )
}

/// The access to a leaf of `size` bytes at `loc`.
fn leaf(
    loc: Loc,
    size: u32,
    kind: LeafKind,
    type_name: String,
    at: usize,
    shown: &str,
) -> Result<ParamAccess, ParamError> {
    let (steps, place) = match loc {
        Loc::Mem(steps) => (steps, Place::Memory),
        Loc::Pieces { pieces, base } => {
            match piece_at(&pieces, base, u64::from(size), at, shown)? {
                (PieceLoc::Reg(r), delta) => (
                    vec![AccessStep::Register(r)],
                    Place::Register {
                        shift: delta as u32,
                    },
                ),
                (PieceLoc::Mem(r, o), delta) => (
                    vec![AccessStep::Register(r), AccessStep::Add(o + delta as i64)],
                    Place::Memory,
                ),
                (PieceLoc::Gone, _) => unreachable!("piece_at refuses optimised-out pieces"),
            }
        }
    };
    Ok(ParamAccess {
        steps,
        place,
        size,
        kind,
        type_name,
    })
}
