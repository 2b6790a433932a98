//! What the index keeps from DWARF: line rows (both directions) and the
//! address ranges of inlined calls.
//!
//! Only line tables and inline records are read, which is all a
//! `debug = "line-tables-only"` build carries. Everything is copied out of
//! the ELF while indexing, so the index owns its data.

use std::collections::HashMap;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};

/// One row of a line table.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Row {
    pub addr: u64,
    pub file: u32,
    pub line: u32,
    pub is_stmt: bool,
}

/// A contiguous run of rows (one DWARF sequence), sorted by address.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sequence {
    pub start: u64,
    pub end: u64,
    pub rows: (usize, usize),
}

/// One address range of an inlined call.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct InlineRange {
    pub start: u64,
    pub end: u64,
    /// Nesting depth: 1 for a call inlined directly into the function.
    pub depth: u32,
    /// Index into [`LineData::names`]: the inlined function's DWARF name.
    pub name: u32,
    /// Where the call was written.
    pub call_file: Option<u32>,
    pub call_line: u32,
}

/// Line tables and inline ranges of one ELF.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct LineData {
    /// Interned file paths, as DWARF spells them (relative to the
    /// compilation directory when DWARF says so).
    pub files: Vec<String>,
    pub rows: Vec<Row>,
    /// Sorted by start; overlapping ones removed.
    pub sequences: Vec<Sequence>,
    /// `(file, line)` → addresses of its `is_stmt` rows.
    pub stmts: HashMap<(u32, u32), Vec<u64>>,
    /// Interned DWARF function names (bare, as line-tables-only DWARF has
    /// them: `checksum<u8>`, `{closure#0}<()>`).
    pub names: Vec<String>,
    /// Sorted by start.
    pub inlines: Vec<InlineRange>,
    /// Bare name without generics → the names with that base.
    pub names_by_base: HashMap<String, Vec<u32>>,
    /// Start address of a generic function's machine code → its generic
    /// arguments as DWARF names the instance (`emit<a::B>` → `a::B`).
    /// Legacy symbol names carry no type arguments, so this is what tells
    /// monomorphizations apart by type (full debug info only).
    pub generics: HashMap<u64, String>,
}

struct Interner {
    ids: HashMap<String, u32>,
}

impl Interner {
    fn intern(&mut self, list: &mut Vec<String>, s: String) -> u32 {
        if let Some(&id) = self.ids.get(&s) {
            return id;
        }
        let id = list.len() as u32;
        list.push(s.clone());
        self.ids.insert(s, id);
        id
    }
}

/// The generic arguments of a DWARF function name, whitespace removed
/// (`emit<a::B, u8>` → `a::B,u8`); `None` for a name without them and for
/// closures, whose arguments are their parent's.
pub(crate) fn generic_args(name: &str) -> Option<String> {
    if name.starts_with('{') || !name.ends_with('>') {
        return None;
    }
    let open = name.find('<').filter(|&i| i > 0)?;
    Some(
        name[open + 1..name.len() - 1]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    )
}

/// Strip generic arguments from a DWARF name (`checksum<u8>` → `checksum`).
pub(crate) fn base_name(name: &str) -> &str {
    match name.find('<') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// Name id of an inlined call whose origin has no name; interned first.
const UNKNOWN_NAME: u32 = 0;

impl LineData {
    /// Read the line tables and inline records. `in_text` says whether an
    /// address lies in an executable section: sequences of code the linker
    /// discarded (left at address 0) are dropped.
    pub fn load(
        dwarf: &gimli::Dwarf<R<'_>>,
        in_text: impl Fn(u64) -> bool,
    ) -> Result<Self, gimli::Error> {
        let mut data = LineData::default();
        let mut files = Interner {
            ids: HashMap::new(),
        };
        let mut names = Interner {
            ids: HashMap::new(),
        };
        names.intern(&mut data.names, "<unknown>".to_string());
        // Subprogram DIE (by its offset in .debug_info) → interned name.
        let mut die_names: HashMap<gimli::DebugInfoOffset, u32> = HashMap::new();
        // Nameless subprogram → the declaration that names it.
        let mut named_by = Vec::new();
        // Subprograms with machine code: DIE → start address.
        let mut starts = Vec::new();
        let mut unit_files: Vec<HashMap<u64, u32>> = Vec::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let unit = dwarf.unit(header)?;
            // File index (as the unit's line program numbers them) → interned id.
            let mut file_ids: HashMap<u64, u32> = HashMap::new();
            if let Some(program) = unit.line_program.clone() {
                let mut rows = program.rows();
                let mut seq_start = data.rows.len();
                while let Some((header, row)) = rows.next_row()? {
                    if row.end_sequence() {
                        let seq_rows = &mut data.rows[seq_start..];
                        seq_rows.sort_by_key(|r| r.addr);
                        if let Some(first) = seq_rows.first() {
                            if in_text(first.addr) {
                                data.sequences.push(Sequence {
                                    start: first.addr,
                                    end: row.address(),
                                    rows: (seq_start, data.rows.len()),
                                });
                                seq_start = data.rows.len();
                                continue;
                            }
                        }
                        data.rows.truncate(seq_start);
                        continue;
                    }
                    let file = match file_ids.get(&row.file_index()) {
                        Some(&id) => id,
                        None => {
                            let path = file_path(dwarf, &unit, header, row.file_index())
                                .unwrap_or_else(|| "<unknown>".to_string());
                            let id = files.intern(&mut data.files, path);
                            file_ids.insert(row.file_index(), id);
                            id
                        }
                    };
                    data.rows.push(Row {
                        addr: row.address(),
                        file,
                        line: row.line().map_or(0, |l| l.get() as u32),
                        is_stmt: row.is_stmt(),
                    });
                }
                data.rows.truncate(seq_start);
            }
            collect_names(
                dwarf,
                &unit,
                &mut data,
                &mut names,
                &mut die_names,
                &mut named_by,
                &mut starts,
            )?;
            unit_files.push(file_ids);
        }
        for (die, decl) in named_by {
            if let Some(&id) = die_names.get(&decl) {
                die_names.insert(die, id);
            }
        }
        for (die, start) in starts {
            let args = die_names
                .get(&die)
                .and_then(|&id| generic_args(&data.names[id as usize]));
            if let Some(args) = args.filter(|_| in_text(start)) {
                data.generics.insert(start, args);
            }
        }
        // Inlined calls may name a subprogram of another unit (LTO, and
        // generic code instantiated elsewhere), so they are read once every
        // name is known.
        let mut units = dwarf.units();
        let mut i = 0;
        while let Some(header) = units.next()? {
            let unit = dwarf.unit(header)?;
            let mut no_files = HashMap::new();
            let file_ids = unit_files.get_mut(i).unwrap_or(&mut no_files);
            load_inlines(dwarf, &unit, &mut data, &die_names, &mut files, file_ids)?;
            i += 1;
        }
        data.sequences
            .sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
        // Keep sequences disjoint so lookups can binary-search them.
        let mut kept: Vec<Sequence> = Vec::with_capacity(data.sequences.len());
        for s in data.sequences.drain(..) {
            match kept.last() {
                Some(prev) if s.start < prev.end => {}
                _ => kept.push(s),
            }
        }
        data.sequences = kept;
        for seq in &data.sequences {
            for r in &data.rows[seq.rows.0..seq.rows.1] {
                if r.is_stmt && r.line != 0 && r.addr < seq.end {
                    data.stmts.entry((r.file, r.line)).or_default().push(r.addr);
                }
            }
        }
        for addrs in data.stmts.values_mut() {
            addrs.sort_unstable();
            addrs.dedup();
        }
        data.inlines.retain(|r| in_text(r.start));
        data.inlines.sort_by_key(|r| (r.start, r.depth));
        for (id, name) in data.names.iter().enumerate() {
            data.names_by_base
                .entry(base_name(name).to_string())
                .or_default()
                .push(id as u32);
        }
        Ok(data)
    }

    /// The row covering `addr`: its file and line.
    pub fn row_at(&self, addr: u64) -> Option<Row> {
        let i = self.sequences.partition_point(|s| s.start <= addr);
        let seq = self.sequences.get(i.checked_sub(1)?)?;
        if addr >= seq.end {
            return None;
        }
        let rows = &self.rows[seq.rows.0..seq.rows.1];
        let j = rows.partition_point(|r| r.addr <= addr);
        rows.get(j.checked_sub(1)?).copied()
    }

    /// Where the run of rows holding `addr` for `(file, line)` begins: the
    /// address of the first row of that line after a row of another line.
    /// Rows of line 0 (code of no line) and rows of code inlined into the
    /// line (deeper in the inline tree than `addr`, e.g. a `len()` between
    /// two arguments) do not end a run. Two `is_stmt` addresses of one line
    /// with the same run start are one copy of it; different run starts
    /// are copies the compiler made (a duplicated tail, an unrolled loop),
    /// any of which may be the one that runs. `function` is the start of
    /// the function holding `addr`.
    pub fn run_start(&self, addr: u64, file: u32, line: u32, function: u64) -> u64 {
        let i = self.sequences.partition_point(|s| s.start <= addr);
        let Some(seq) = i.checked_sub(1).and_then(|i| self.sequences.get(i)) else {
            return addr;
        };
        let depth = self.inlines_at(addr, function).len();
        let rows = &self.rows[seq.rows.0..seq.rows.1];
        let mut j = rows.partition_point(|r| r.addr < addr);
        let mut start = addr;
        while j > 0 && rows[j - 1].addr >= function {
            let r = &rows[j - 1];
            j -= 1;
            if r.line == 0 {
                continue;
            }
            if (r.file, r.line) == (file, line) {
                start = r.addr;
                continue;
            }
            if self.inlines_at(r.addr, function).len() > depth {
                continue;
            }
            break;
        }
        start
    }

    /// The inlined calls covering `addr`, outermost first. `from` bounds the
    /// search (the start of the enclosing function).
    pub fn inlines_at(&self, addr: u64, from: u64) -> Vec<InlineRange> {
        let lo = self.inlines.partition_point(|r| r.start < from);
        let hi = self.inlines.partition_point(|r| r.start <= addr);
        let mut found: Vec<InlineRange> = self.inlines[lo..hi]
            .iter()
            .filter(|r| addr < r.end)
            .copied()
            .collect();
        found.sort_by_key(|r| r.depth);
        found
    }
}

/// Path of file `index` in a unit's line program: directory joined to name.
fn file_path(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    header: &gimli::LineProgramHeader<R<'_>>,
    index: u64,
) -> Option<String> {
    let file = header.file(index)?;
    let name = attr_str(dwarf, unit, file.path_name())?;
    if name.starts_with('/') {
        return Some(name);
    }
    let mut dir = file
        .directory(header)
        .and_then(|d| attr_str(dwarf, unit, d))
        .unwrap_or_default();
    // A relative directory is relative to the unit's compilation
    // directory (DWARF 5, 6.2.4), which holds for crates built from their
    // own directory (a path dependency outside the workspace: `src/...`
    // under comp_dir `bpf-vm`).
    if !dir.starts_with('/') {
        let comp_dir = unit
            .comp_dir
            .as_ref()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !comp_dir.is_empty() && dir != comp_dir {
            dir = if dir.is_empty() {
                comp_dir
            } else {
                format!("{}/{}", comp_dir.trim_end_matches('/'), dir)
            };
        }
    }
    Some(if dir.is_empty() {
        name
    } else {
        format!("{}/{}", dir.trim_end_matches('/'), name)
    })
}

fn attr_str(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    value: AttributeValue<R<'_>>,
) -> Option<String> {
    let s = dwarf.attr_string(unit, value).ok()?;
    Some(s.to_string_lossy().into_owned())
}

/// Record the name of every subprogram of `unit`.
fn collect_names(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    data: &mut LineData,
    names: &mut Interner,
    die_names: &mut HashMap<gimli::DebugInfoOffset, u32>,
    named_by: &mut Vec<(gimli::DebugInfoOffset, gimli::DebugInfoOffset)>,
    starts: &mut Vec<(gimli::DebugInfoOffset, u64)>,
) -> Result<(), gimli::Error> {
    let mut entries = unit.entries();
    while let Some((_, entry)) = entries.next_dfs()? {
        if entry.tag() != gimli::DW_TAG_subprogram {
            continue;
        }
        let name = match entry.attr_value(gimli::DW_AT_name)? {
            Some(v) => attr_str(dwarf, unit, v),
            None => None,
        };
        // With full debug info a method's abstract DIE names it only
        // through its declaration inside the type (`DW_AT_specification`,
        // often in another unit); line tables alone name it directly. The
        // declaration is a named subprogram too: named once all are known.
        if name.is_none() {
            let decl = match entry.attr_value(gimli::DW_AT_specification)? {
                Some(AttributeValue::UnitRef(o)) => o.to_debug_info_offset(&unit.header),
                Some(AttributeValue::DebugInfoRef(o)) => Some(o),
                _ => None,
            };
            if let (Some(decl), Some(offset)) =
                (decl, entry.offset().to_debug_info_offset(&unit.header))
            {
                named_by.push((offset, decl));
            }
        }
        let offset = entry.offset().to_debug_info_offset(&unit.header);
        if let (Some(AttributeValue::Addr(start)), Some(offset)) =
            (entry.attr_value(gimli::DW_AT_low_pc)?, offset)
        {
            starts.push((offset, start));
        }
        if let (Some(name), Some(offset)) = (name, offset) {
            let id = names.intern(&mut data.names, name);
            die_names.insert(offset, id);
        }
    }
    Ok(())
}

/// Record the ranges of every inlined call in `unit`.
fn load_inlines(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    data: &mut LineData,
    die_names: &HashMap<gimli::DebugInfoOffset, u32>,
    files: &mut Interner,
    file_ids: &mut HashMap<u64, u32>,
) -> Result<(), gimli::Error> {
    let mut entries = unit.entries();
    let mut depth = 0isize;
    // Depth (in the DIE tree) of each open inlined call, to number nesting.
    let mut open: Vec<isize> = Vec::new();
    while let Some((delta, entry)) = entries.next_dfs()? {
        depth += delta;
        while open.last().is_some_and(|&d| d >= depth) {
            open.pop();
        }
        if entry.tag() != gimli::DW_TAG_inlined_subroutine {
            continue;
        }
        open.push(depth);
        let origin = match entry.attr_value(gimli::DW_AT_abstract_origin)? {
            Some(AttributeValue::UnitRef(off)) => off.to_debug_info_offset(&unit.header),
            Some(AttributeValue::DebugInfoRef(off)) => Some(off),
            _ => None,
        };
        // An unnamed origin still marks the code as inlined.
        let name = match origin.and_then(|o| die_names.get(&o)) {
            Some(&id) => id,
            None => UNKNOWN_NAME,
        };
        let call_file = match entry.attr_value(gimli::DW_AT_call_file)? {
            Some(AttributeValue::FileIndex(i)) | Some(AttributeValue::Udata(i)) => {
                match file_ids.get(&i) {
                    Some(&id) => Some(id),
                    None => unit
                        .line_program
                        .as_ref()
                        .and_then(|p| file_path(dwarf, unit, p.header(), i))
                        .map(|path| {
                            let id = files.intern(&mut data.files, path);
                            file_ids.insert(i, id);
                            id
                        }),
                }
            }
            _ => None,
        };
        let call_line = match entry.attr_value(gimli::DW_AT_call_line)? {
            Some(v) => v.udata_value().unwrap_or(0) as u32,
            None => 0,
        };
        let mut ranges = dwarf.die_ranges(unit, entry)?;
        while let Some(r) = ranges.next()? {
            if r.begin < r.end {
                data.inlines.push(InlineRange {
                    start: r.begin,
                    end: r.end,
                    depth: open.len() as u32,
                    name,
                    call_file,
                    call_line,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(addr: u64, line: u32) -> Row {
        Row {
            addr,
            file: 0,
            line,
            is_stmt: true,
        }
    }

    /// Line 7 of a function at 0x100: once as a run interrupted only by
    /// code of no line and by an inlined call (one copy), then again after
    /// line 9 (a second copy, as a duplicated tail).
    #[test]
    fn runs_of_a_line_are_its_copies() {
        let rows = vec![
            row(0x100, 6),
            row(0x104, 7),
            row(0x108, 0),
            row(0x10c, 7),
            row(0x110, 30), // inlined callee's own line
            row(0x114, 7),
            row(0x118, 9),
            row(0x120, 7),
            row(0x124, 7),
        ];
        let n = rows.len();
        let data = LineData {
            rows,
            sequences: vec![Sequence {
                start: 0x100,
                end: 0x130,
                rows: (0, n),
            }],
            inlines: vec![InlineRange {
                start: 0x110,
                end: 0x114,
                depth: 1,
                name: 0,
                call_file: Some(0),
                call_line: 7,
            }],
            ..LineData::default()
        };
        for addr in [0x104, 0x10c, 0x114] {
            assert_eq!(data.run_start(addr, 0, 7, 0x100), 0x104, "{addr:#x}");
        }
        for addr in [0x120, 0x124] {
            assert_eq!(data.run_start(addr, 0, 7, 0x100), 0x120, "{addr:#x}");
        }
    }
}
