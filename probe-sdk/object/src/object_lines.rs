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
use ktrace_abi::bpf::{CallSite, LineInfo, LineTable};

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

/// Bases for the values at each relocated offset of a debug section: only
/// relocations against code sections get one (see the module comment).
fn relocation_bases(
    file: &object::File<'_>,
    section: &object::Section<'_, '_>,
) -> HashMap<usize, u64> {
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
    bases
}

/// Every row of every line program, or `None` without `.debug_line`.
pub(crate) fn line_rows(file: &object::File<'_>) -> Option<Vec<LineRow>> {
    let section = file.section_by_name(".debug_line")?;
    let data = section.data().ok()?;
    let bases = relocation_bases(file, &section);
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
                .map(|f| file_name(header, f, line_str, str_sec))
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

/// A file's name as the line program gives it: `dir/name`, except for the
/// compilation directory (index 0), which is left out so the probe crate's
/// own files stay relative (`src/lib.rs`).
fn file_name(
    header: &gimli::LineProgramHeader<Reader<'_>>,
    f: &gimli::FileEntry<Reader<'_>>,
    line_str: &[u8],
    str_sec: &[u8],
) -> String {
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

/// One inlined call: the address ranges of the inlined code and where the
/// call was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inlined {
    ranges: Vec<(u64, u64)>,
    /// Number of inlined ancestors (0: inlined straight into a function).
    depth: usize,
    file: String,
    line: u32,
}

/// Every `DW_TAG_inlined_subroutine` of `.debug_info`, with relocated
/// ranges. Empty when the object has no such records.
pub(crate) fn inlined_calls(file: &object::File<'_>) -> Vec<Inlined> {
    inlined_calls_inner(file).unwrap_or_default()
}

fn inlined_calls_inner(file: &object::File<'_>) -> gimli::Result<Vec<Inlined>> {
    // Relocation bases per debug section, owned here so the readers can
    // borrow them.
    let mut bases: HashMap<&'static str, HashMap<usize, u64>> = HashMap::new();
    let mut datas: HashMap<&'static str, &[u8]> = HashMap::new();
    for id in [
        gimli::SectionId::DebugInfo,
        gimli::SectionId::DebugAbbrev,
        gimli::SectionId::DebugLine,
        gimli::SectionId::DebugRanges,
        gimli::SectionId::DebugRngLists,
        gimli::SectionId::DebugStr,
        gimli::SectionId::DebugLineStr,
        gimli::SectionId::DebugAddr,
        gimli::SectionId::DebugStrOffsets,
    ] {
        if let Some(sec) = file.section_by_name(id.name()) {
            bases.insert(id.name(), relocation_bases(file, &sec));
            datas.insert(id.name(), sec.data().unwrap_or(&[]));
        }
    }
    if !datas.contains_key(".debug_info") {
        return Ok(Vec::new());
    }
    let empty = HashMap::new();
    let dwarf = gimli::Dwarf::load(|id| -> gimli::Result<Reader<'_>> {
        let data = datas.get(id.name()).copied().unwrap_or(&[]);
        let b = bases.get(id.name()).unwrap_or(&empty);
        Ok(RelocateReader::new(
            EndianSlice::new(data, LittleEndian),
            Bases(b),
        ))
    })?;
    let (line_str, str_sec) = (
        datas.get(".debug_line_str").copied().unwrap_or(&[]),
        datas.get(".debug_str").copied().unwrap_or(&[]),
    );
    let mut out = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let lp = unit.line_program.clone();
        let mut entries = unit.entries();
        // Inlined-ness of the open ancestors, by depth.
        let mut stack: Vec<bool> = Vec::new();
        let mut depth: isize = 0;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            stack.truncate(depth.max(0) as usize);
            let inlined = entry.tag() == gimli::DW_TAG_inlined_subroutine;
            if inlined {
                let line = match entry.attr_value(gimli::DW_AT_call_line)? {
                    Some(AttributeValue::Udata(l)) => l as u32,
                    Some(v) => v.udata_value().unwrap_or(0) as u32,
                    None => 0,
                };
                let file_index = entry
                    .attr_value(gimli::DW_AT_call_file)?
                    .and_then(|v| match v {
                        AttributeValue::FileIndex(i) => Some(i),
                        v => v.udata_value(),
                    });
                let file_name = match (&lp, file_index) {
                    (Some(lp), Some(i)) => lp
                        .header()
                        .file(i)
                        .map(|f| file_name(lp.header(), f, line_str, str_sec))
                        .unwrap_or_else(|| "?".into()),
                    _ => "?".into(),
                };
                let mut ranges = Vec::new();
                let mut iter = dwarf.die_ranges(&unit, entry)?;
                while let Some(r) = iter.next()? {
                    ranges.push((r.begin, r.end));
                }
                out.push(Inlined {
                    ranges,
                    depth: stack.iter().filter(|&&i| i).count(),
                    file: file_name,
                    line,
                });
            }
            stack.push(inlined);
        }
    }
    Ok(out)
}

/// The call sites, innermost first, of the inlined code at `addr`.
fn call_sites_at(inlined: &[Inlined], addr: u64) -> Vec<(&str, u32)> {
    let mut hits: Vec<&Inlined> = inlined
        .iter()
        .filter(|i| i.ranges.iter().any(|&(lo, hi)| lo <= addr && addr < hi))
        .collect();
    hits.sort_by_key(|i| std::cmp::Reverse(i.depth));
    hits.iter().map(|i| (i.file.as_str(), i.line)).collect()
}

/// The rows that fall in the functions placed in one program, renumbered
/// to the program's instruction indices.
pub(crate) fn table_for(
    rows: &[LineRow],
    inlined: &[Inlined],
    placed: &[Placed],
) -> Option<LineTable> {
    let mut files: Vec<String> = Vec::new();
    let mut file_ids: HashMap<String, u32> = HashMap::new();
    let mut by_insn: std::collections::BTreeMap<u32, LineInfo> = Default::default();
    for p in placed {
        for r in rows
            .iter()
            .filter(|r| r.section == p.section && r.insn >= p.start && r.insn < p.end)
        {
            let mut intern = |name: &str| -> u32 {
                if let Some(&id) = file_ids.get(name) {
                    return id;
                }
                files.push(name.to_string());
                let id = files.len() as u32 - 1;
                file_ids.insert(name.to_string(), id);
                id
            };
            let file = intern(&r.file);
            let addr = ((r.section as u64) << SECTION_SHIFT) | (r.insn as u64 * 8);
            let call_sites = call_sites_at(inlined, addr)
                .into_iter()
                .map(|(f, line)| CallSite {
                    file: intern(f),
                    line,
                })
                .collect();
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
                    call_sites,
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
