//! DWARF line tables of an eBPF object, mapped to instruction indices.
//!
//! In a relocatable object every code section starts at address 0, and
//! `.debug_line`'s `DW_LNE_set_address` operands are relocations against the
//! section they describe. To tell sections apart, relocations against code
//! are applied with a per-section base (`section index << 40`), so every row
//! carries its section in the high bits of its address. Offsets into string
//! sections (`DW_FORM_line_strp`) keep their in-place value (REL relocations
//! against section symbols of value 0).

use std::collections::HashMap;

use gimli::{AttributeValue, EndianSlice, LittleEndian, RelocateReader};
use object::{Object as _, ObjectSection, ObjectSymbol, RelocationTarget, SectionFlags};

use crate::object::Placed;
use ktrace_abi::bpf::{LineInfo, LineTable};

/// Addresses of section `i` are `i << SECTION_SHIFT | offset`.
const SECTION_SHIFT: u32 = 40;

/// One row of a line table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineRow {
    section: usize,
    insn: usize,
    file: String,
    line: u32,
    column: u32,
}

/// Bases to add to values read at given offsets of `.debug_line`.
#[derive(Debug, Clone, Copy)]
struct Bases<'a>(&'a HashMap<usize, u64>);

impl gimli::Relocate<usize> for Bases<'_> {
    fn relocate_address(&self, offset: usize, value: u64) -> gimli::Result<u64> {
        Ok(value.wrapping_add(self.0.get(&offset).copied().unwrap_or(0)))
    }

    fn relocate_offset(&self, offset: usize, value: usize) -> gimli::Result<usize> {
        Ok(value.wrapping_add(self.0.get(&offset).copied().unwrap_or(0) as usize))
    }
}

type Reader<'a> = RelocateReader<EndianSlice<'a, LittleEndian>, Bases<'a>>;

/// Every row of every line program, or `None` without `.debug_line`.
pub(crate) fn line_rows(file: &object::File<'_>) -> Option<Vec<LineRow>> {
    let section = file.section_by_name(".debug_line")?;
    let data = section.data().ok()?;
    let mut bases = HashMap::new();
    for (offset, rel) in section.relocations() {
        let RelocationTarget::Symbol(si) = rel.target() else {
            continue;
        };
        let Ok(sym) = file.symbol_by_index(si) else {
            continue;
        };
        let Some(sec) = sym.section_index() else {
            continue;
        };
        let is_code = file
            .section_by_index(sec)
            .map(|s| matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & 0x4 != 0))
            .unwrap_or(false);
        if is_code {
            bases.insert(
                offset as usize,
                ((sec.0 as u64) << SECTION_SHIFT) + sym.address(),
            );
        }
    }
    let strings = |name: &str| {
        file.section_by_name(name)
            .and_then(|s| s.data().ok())
            .unwrap_or(&[])
    };
    let (line_str, str_sec) = (strings(".debug_line_str"), strings(".debug_str"));
    let reader: Reader<'_> =
        RelocateReader::new(EndianSlice::new(data, LittleEndian), Bases(&bases));
    let debug_line = gimli::DebugLine::from(reader);

    let mut rows = Vec::new();
    let mut offset = 0usize;
    while offset < data.len() {
        let Ok(program) = debug_line.program(gimli::DebugLineOffset(offset), 8, None, None) else {
            break;
        };
        let header = program.header();
        let next = offset + header.format().initial_length_size() as usize + header.unit_length();
        let mut state = program.rows();
        while let Ok(Some((header, row))) = state.next_row() {
            if row.end_sequence() {
                continue;
            }
            let Some(line) = row.line() else { continue };
            let addr = row.address();
            let file_name = row
                .file(header)
                .map(|f| {
                    let name = string(&f.path_name(), line_str, str_sec);
                    let dir = if f.directory_index() == 0 {
                        None
                    } else {
                        f.directory(header).map(|d| string(&d, line_str, str_sec))
                    };
                    match dir {
                        Some(d) if !d.is_empty() && !name.starts_with('/') => format!("{d}/{name}"),
                        _ => name,
                    }
                })
                .unwrap_or_else(|| "?".into());
            let column = match row.column() {
                gimli::ColumnType::LeftEdge => 0,
                gimli::ColumnType::Column(c) => c.get() as u32,
            };
            rows.push(LineRow {
                section: (addr >> SECTION_SHIFT) as usize,
                insn: (addr & ((1 << SECTION_SHIFT) - 1)) as usize / 8,
                file: file_name,
                line: line.get() as u32,
                column,
            });
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    Some(rows)
}

/// A string attribute of a line program header.
fn string(value: &AttributeValue<Reader<'_>>, line_str: &[u8], str_sec: &[u8]) -> String {
    use gimli::Reader as _;
    let at = |sec: &[u8], off: usize| {
        let rest = sec.get(off..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end]).into_owned()
    };
    match value {
        AttributeValue::String(s) => s
            .to_string_lossy()
            .map(|c| c.into_owned())
            .unwrap_or_default(),
        AttributeValue::DebugLineStrRef(o) => at(line_str, o.0),
        AttributeValue::DebugStrRef(o) => at(str_sec, o.0),
        _ => String::new(),
    }
}

/// The rows that fall in the functions placed in one program, renumbered
/// to the program's instruction indices.
pub(crate) fn table_for(rows: &[LineRow], placed: &[Placed]) -> Option<LineTable> {
    let mut files: Vec<String> = Vec::new();
    let mut file_ids: HashMap<&str, u32> = HashMap::new();
    let mut by_insn: std::collections::BTreeMap<u32, LineInfo> = Default::default();
    for p in placed {
        for r in rows
            .iter()
            .filter(|r| r.section == p.section && r.insn >= p.start && r.insn < p.end)
        {
            let file = *file_ids.entry(r.file.as_str()).or_insert_with(|| {
                files.push(r.file.clone());
                files.len() as u32 - 1
            });
            let insn = (p.at + r.insn - p.start) as u32;
            // Several rows at one address: the last one describes the
            // instruction (earlier ones are empty ranges).
            by_insn.insert(
                insn,
                LineInfo {
                    insn,
                    file,
                    line: r.line,
                    column: r.column,
                },
            );
        }
    }
    if by_insn.is_empty() {
        return None;
    }
    Some(LineTable {
        files,
        rows: by_insn.into_values().collect(),
    })
}
