//! The eBPF object loader: ELF bytes in, load requests out, nothing else.
//!
//! [`parse`] reads a standard eBPF ELF object — what `ktrace build` makes
//! from Rust and what `clang -target bpf` makes from C — and produces an
//! [`Object`]:
//!
//! - **Programs** from sections `kprobe/<target>`, `kretprobe/<target>`,
//!   `tracepoint/<category>/<name>` (or `tp/...`) and `perf_event`, one per
//!   function symbol in the section. Subprograms from `.text` that a program
//!   calls (`call` with `src_reg = 1`) are appended after its body, once
//!   each, and the call offsets are rewritten for the new layout.
//! - **Maps** from the legacy `maps` section (`struct bpf_map_def`, one per
//!   symbol) and from `.rodata*`/`.data*`/`.bss*` as single-entry array maps.
//!   `ld_imm64` instructions relocated against them become map-index
//!   references (`src_reg` 5, or 6 with a value offset).
//! - The **license** string and, from `.debug_line`, a **line table** per
//!   program mapping instruction indices to source lines.
//! - From `.debug_info`, the declared **key, value and record types** of
//!   each map (`HashMap<K, V>`'s `K` and `V`, ...), when the object has them.
//!
//! What it cannot honour it refuses, naming the feature and the section:
//! BTF-defined maps (`.maps`), CO-RE relocations (`.BTF.ext`), unknown code
//! sections, program types other than the four above.
//!
//! [`Object::resolve_targets`] then resolves kprobe targets through the
//! kernel's [`ktrace_symbols::SymbolIndex`]; [`Object::into_load`] gives the
//! [`ObjectLoad`] the kernel accepts.

use std::collections::{BTreeMap, HashMap};

use ktrace_abi::bpf::{
    map_type, AttachTarget, KprobePoint, LineInfo, LineTable, MapDefinition, ObjectLoad,
    ProgramLoad, ProgramType, PSEUDO_CALL, PSEUDO_MAP_IDX, PSEUDO_MAP_IDX_VALUE,
};
use object::{
    Object as _, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionFlags,
    SectionIndex, SymbolKind,
};

/// Size of one instruction slot.
const INSN: usize = 8;
/// `BPF_LD | BPF_IMM | BPF_DW`: the first half of a 16-byte `ld_imm64`.
const LD_IMM64: u8 = 0x18;
/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `SHF_EXECINSTR`.
const SHF_EXECINSTR: u64 = 0x4;
/// `EM_BPF`.
const EM_BPF: u16 = 247;

/// A parsed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The `license` section's string (empty when there is none).
    pub license: String,
    /// Maps, in the order program references index them.
    pub maps: Vec<MapDefinition>,
    /// Programs, in section order, with relocations applied.
    pub programs: Vec<ProgramLoad>,
}

/// Why an object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// Not an ELF file, or a damaged one.
    #[error("not a valid ELF object: {0}")]
    Elf(String),
    /// An ELF file for another machine.
    #[error("not an eBPF object: ELF machine is {machine} (eBPF is 247), class/endianness must be ELF64 little-endian")]
    NotBpf { machine: u16 },
    /// A feature this loader does not implement.
    #[error("section `{section}`: {feature} are not supported")]
    Unsupported {
        feature: &'static str,
        section: String,
    },
    /// Executable code in a section that is no known program type.
    #[error("section `{section}` holds code but is not a program section (expected kprobe/<target>, kretprobe/<target>, tracepoint/<category>/<name> or perf_event)")]
    UnknownCodeSection { section: String },
    /// A program section with a malformed name.
    #[error("section `{section}`: {message}")]
    BadSection { section: String, message: String },
    /// A bad map definition.
    #[error("map `{map}` in section `{section}`: {message}")]
    BadMap {
        map: String,
        section: String,
        message: String,
    },
    /// A relocation or call that cannot be applied.
    #[error("section `{section}`, instruction {insn}: {message}")]
    Relocation {
        section: String,
        insn: usize,
        message: String,
    },
    /// No program sections at all.
    #[error("the object has no program sections (kprobe/, kretprobe/, tracepoint/, perf_event)")]
    NoPrograms,
    /// A kprobe target the symbol index could not resolve.
    #[error("program `{program}`: cannot attach to `{target}`: {message}")]
    Resolve {
        program: String,
        target: String,
        message: String,
    },
}

/// Where a run of code lives in the ELF file: section and instruction range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FuncKey {
    section: usize,
    start: usize,
}

#[derive(Debug, Clone)]
struct Func {
    name: String,
    section: usize,
    /// Instruction indices within the section.
    start: usize,
    end: usize,
}

/// One code section: its bytes and relocations by instruction index.
struct CodeSection {
    name: String,
    insns: Vec<u8>,
    relocs: HashMap<usize, Reloc>,
}

#[derive(Debug, Clone)]
struct Reloc {
    symbol_name: String,
    symbol_section: Option<usize>,
    symbol_value: u64,
    symbol_kind: SymbolKind,
}

/// A data section that becomes an array map.
struct DataMap {
    map_index: usize,
}

/// Parse an eBPF ELF object.
pub fn parse(bytes: &[u8]) -> Result<Object, ObjectError> {
    check_header(bytes)?;
    let file = object::File::parse(bytes).map_err(|e| ObjectError::Elf(e.to_string()))?;

    let mut license = String::new();
    let mut maps = Vec::new();
    let mut map_by_offset: HashMap<(usize, u64), usize> = HashMap::new();
    let mut data_maps: HashMap<usize, DataMap> = HashMap::new();
    let mut code: BTreeMap<usize, CodeSection> = BTreeMap::new();
    let mut program_sections = Vec::new();

    for section in file.sections() {
        let name = section
            .name()
            .map_err(|e| ObjectError::Elf(e.to_string()))?
            .to_string();
        let index = section.index().0;
        let flags = match section.flags() {
            SectionFlags::Elf { sh_flags } => sh_flags,
            _ => 0,
        };
        let data = || {
            section
                .data()
                .map(<[u8]>::to_vec)
                .map_err(|e| ObjectError::Elf(format!("section `{name}`: {e}")))
        };
        if name == "license" {
            let d = data()?;
            let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
            license = String::from_utf8_lossy(&d[..end]).into_owned();
        } else if name == "maps" {
            legacy_maps(&file, &section, &name, &mut maps, &mut map_by_offset)?;
        } else if name == ".maps" {
            return Err(ObjectError::Unsupported {
                feature: "BTF-defined maps (use the legacy `maps` section, struct bpf_map_def)",
                section: name,
            });
        } else if name == ".BTF.ext" {
            check_btf_ext(&data()?, &name)?;
        } else if is_data_section(&name) && section.size() > 0 {
            let value_size =
                u32::try_from(section.size()).map_err(|_| ObjectError::BadSection {
                    section: name.clone(),
                    message: format!(
                        "{} bytes of global data is more than one map value can hold",
                        section.size()
                    ),
                })?;
            let read_only = name.starts_with(".rodata");
            let initial_value = if name.starts_with(".bss") {
                Vec::new()
            } else {
                data()?
            };
            data_maps.insert(
                index,
                DataMap {
                    map_index: maps.len(),
                },
            );
            maps.push(MapDefinition {
                name: name.clone(),
                map_type: map_type::ARRAY,
                key_size: 4,
                value_size,
                max_entries: 1,
                flags: 0,
                initial_value,
                read_only,
                types: Default::default(),
            });
        } else if flags & SHF_EXECINSTR != 0 {
            let kind = program_kind(&name)?;
            let insns = data()?;
            if insns.len() % INSN != 0 {
                return Err(ObjectError::BadSection {
                    section: name,
                    message: format!("code size {} is not a multiple of 8", insns.len()),
                });
            }
            let relocs = code_relocations(&file, &section, &name)?;
            if let Some(kind) = kind {
                program_sections.push((index, kind));
            }
            code.insert(
                index,
                CodeSection {
                    name,
                    insns,
                    relocs,
                },
            );
        }
    }

    // Declared types from the DWARF. One whose size disagrees with the
    // map definition (a wrapper the table in `object_types` misreads) is
    // left out: the kernel would refuse the whole load for it, and the map
    // works untyped.
    let names: Vec<&str> = maps
        .iter()
        .filter(|m| !m.name.starts_with('.'))
        .map(|m| m.name.as_str())
        .collect();
    let mut types = crate::object_types::map_types(&file, &names);
    for m in &mut maps {
        let Some(t) = types.remove(&m.name) else {
            continue;
        };
        let record_map = matches!(m.map_type, map_type::RINGBUF | map_type::PERF_EVENT_ARRAY);
        if ktrace_abi::types::check_map_types(&t, &m.name, m.key_size, m.value_size, record_map)
            .is_ok()
        {
            m.types = t;
        }
    }

    let funcs = functions(&file, &code);
    let lines = crate::object_lines::line_rows(&file).unwrap_or_default();
    let inlined = crate::object_lines::inlined_calls(&file);

    let mut programs = Vec::new();
    for (section_index, kind) in program_sections {
        let section = &code[&section_index];
        let (prog_type, attach) = kind;
        for f in funcs.iter().filter(|f| f.section == section_index) {
            let linker = Linker {
                code: &code,
                funcs: &funcs,
                maps: &map_by_offset,
                data_maps: &data_maps,
            };
            let (insns, placed) = linker.link(f)?;
            let table = crate::object_lines::table_for(&lines, &inlined, &placed);
            programs.push(ProgramLoad {
                name: f.name.clone(),
                section: section.name.clone(),
                prog_type,
                attach: attach.clone(),
                insns,
                license: license.clone(),
                lines: table,
            });
        }
    }
    if programs.is_empty() {
        return Err(ObjectError::NoPrograms);
    }
    for p in &mut programs {
        p.license = license.clone();
    }
    Ok(Object {
        license,
        maps,
        programs,
    })
}

/// Refuse anything but ELF64 little-endian `EM_BPF` before the generic
/// parser (which would accept any machine).
fn check_header(bytes: &[u8]) -> Result<(), ObjectError> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(ObjectError::Elf("no ELF header".into()));
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    if bytes[4] != 2 || bytes[5] != 1 || machine != EM_BPF {
        return Err(ObjectError::NotBpf { machine });
    }
    Ok(())
}

fn is_data_section(name: &str) -> bool {
    [".rodata", ".data", ".bss"]
        .iter()
        .any(|p| name == *p || name.starts_with(&format!("{p}.")))
}

/// The program type and attach target a section name asks for; `None` for
/// `.text` (subprograms).
fn program_kind(name: &str) -> Result<Option<(ProgramType, AttachTarget)>, ObjectError> {
    let bad = |message: &str| ObjectError::BadSection {
        section: name.to_string(),
        message: message.to_string(),
    };
    if name == ".text" {
        return Ok(None);
    }
    if name == "perf_event" {
        return Ok(Some((ProgramType::PerfEvent, AttachTarget::PerfEvent)));
    }
    let (prefix, rest) = name.split_once('/').unwrap_or((name, ""));
    match prefix {
        "kprobe" | "kretprobe" => {
            if rest.is_empty() {
                return Err(bad("no target after the prefix (write kprobe/<function>)"));
            }
            let ty = if prefix == "kprobe" {
                ProgramType::Kprobe
            } else {
                ProgramType::Kretprobe
            };
            Ok(Some((
                ty,
                AttachTarget::Kprobe {
                    spec: ktrace_symbols::path::decode_section_target(rest),
                    points: Vec::new(),
                },
            )))
        }
        "tracepoint" | "tp" => {
            let (category, event) = rest
                .split_once('/')
                .filter(|(c, e)| !c.is_empty() && !e.is_empty() && !e.contains('/'))
                .ok_or_else(|| bad("expected tracepoint/<category>/<name>"))?;
            Ok(Some((
                ProgramType::Tracepoint,
                AttachTarget::Tracepoint {
                    category: category.to_string(),
                    name: event.to_string(),
                },
            )))
        }
        "xdp" | "socket" | "classifier" | "tc" | "cgroup" | "fentry" | "fexit"
        | "raw_tracepoint" | "raw_tp" | "lsm" | "uprobe" | "uretprobe" | "ksyscall"
        | "kretsyscall" | "tp_btf" | "iter" | "struct_ops" | "sk_msg" | "sk_skb" | "lwt_in"
        | "lwt_out" | "sockops" => Err(ObjectError::Unsupported {
            feature: "programs of this type (supported: kprobe, kretprobe, tracepoint, perf_event)",
            section: name.to_string(),
        }),
        _ => Err(ObjectError::UnknownCodeSection {
            section: name.to_string(),
        }),
    }
}

/// Legacy `struct bpf_map_def` entries, one per symbol in `maps`.
fn legacy_maps(
    file: &object::File<'_>,
    section: &object::Section<'_, '_>,
    name: &str,
    maps: &mut Vec<MapDefinition>,
    by_offset: &mut HashMap<(usize, u64), usize>,
) -> Result<(), ObjectError> {
    let data = section
        .data()
        .map_err(|e| ObjectError::Elf(format!("section `{name}`: {e}")))?;
    let mut syms: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|s| s.section_index() == Some(section.index()) && s.kind() != SymbolKind::Section)
        .map(|s| (s.address(), s.size(), s.name().unwrap_or("").to_string()))
        .collect();
    syms.sort();
    if syms.is_empty() && !data.is_empty() {
        return Err(ObjectError::BadMap {
            map: "?".into(),
            section: name.into(),
            message: "the section has no symbols naming its maps".into(),
        });
    }
    // clang gives legacy map symbols no size; then they share the section
    // evenly, as libbpf assumes.
    let even = data.len() as u64 / syms.len().max(1) as u64;
    for (offset, size, map) in syms {
        let size = if size == 0 { even } else { size };
        let bad = |message: String| ObjectError::BadMap {
            map: map.clone(),
            section: name.into(),
            message,
        };
        let start = offset as usize;
        let def = start
            .checked_add(size as usize)
            .and_then(|end| data.get(start..end))
            .ok_or_else(|| {
                bad(format!(
                    "definition at {offset}+{size} is outside the section"
                ))
            })?;
        if def.len() < 20 {
            return Err(bad(format!(
                "definition is {} bytes; struct bpf_map_def needs 20",
                def.len()
            )));
        }
        if def[20..].iter().any(|&b| b != 0) {
            return Err(bad(format!(
                "definition is {} bytes with non-zero fields after struct bpf_map_def's 20 (map extensions such as pinning are not supported)",
                def.len()
            )));
        }
        let field =
            |i: usize| u32::from_le_bytes(def[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
        by_offset.insert((section.index().0, offset), maps.len());
        maps.push(MapDefinition {
            name: map.clone(),
            map_type: field(0),
            key_size: field(1),
            value_size: field(2),
            max_entries: field(3),
            flags: field(4),
            initial_value: Vec::new(),
            read_only: false,
            types: Default::default(),
        });
    }
    Ok(())
}

/// `.BTF.ext` is fine for its function and line info, but CO-RE relocations
/// need BTF of the running kernel to rewrite field offsets, which ktrace
/// does not provide.
fn check_btf_ext(data: &[u8], name: &str) -> Result<(), ObjectError> {
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if data.len() < 8 || data[..2] != [0x9f, 0xeb] {
        return Err(ObjectError::BadSection {
            section: name.into(),
            message: "bad .BTF.ext header (magic is not 0xeb9f)".into(),
        });
    }
    let hdr_len = u32_at(4).unwrap_or(0);
    if hdr_len >= 32 {
        if let Some(core_len) = u32_at(28) {
            if core_len > 0 {
                return Err(ObjectError::Unsupported {
                    feature: "CO-RE relocations (BPF_CORE_READ / preserve_access_index)",
                    section: name.into(),
                });
            }
        }
    }
    Ok(())
}

/// Relocations of a code section, by instruction index.
fn code_relocations(
    file: &object::File<'_>,
    section: &object::Section<'_, '_>,
    name: &str,
) -> Result<HashMap<usize, Reloc>, ObjectError> {
    let mut out = HashMap::new();
    for (offset, rel) in section.relocations() {
        let insn = offset as usize / INSN;
        let RelocationTarget::Symbol(si) = rel.target() else {
            return Err(ObjectError::Relocation {
                section: name.into(),
                insn,
                message: "relocation without a symbol".into(),
            });
        };
        let sym = file
            .symbol_by_index(si)
            .map_err(|e| ObjectError::Relocation {
                section: name.into(),
                insn,
                message: e.to_string(),
            })?;
        let r_type = match rel.flags() {
            RelocationFlags::Elf { r_type } => r_type,
            _ => 0,
        };
        // R_BPF_64_64 (ld_imm64) and R_BPF_64_32 (call); anything else in
        // code is an unknown kind of fix-up.
        if r_type != 1 && r_type != 10 {
            return Err(ObjectError::Relocation {
                section: name.into(),
                insn,
                message: format!("relocation type {r_type} is not supported in code"),
            });
        }
        let mut symbol_name = sym.name().unwrap_or("").to_string();
        if symbol_name.is_empty() && sym.kind() == SymbolKind::Section {
            if let Some(s) = sym
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
            {
                symbol_name = s.name().unwrap_or("").to_string();
            }
        }
        out.insert(
            insn,
            Reloc {
                symbol_name,
                symbol_section: sym.section_index().map(|SectionIndex(i)| i),
                symbol_value: sym.address(),
                symbol_kind: sym.kind(),
            },
        );
    }
    Ok(out)
}

/// Functions of every code section, from the symbol table; a section
/// without function symbols is one function named after the section.
fn functions(file: &object::File<'_>, code: &BTreeMap<usize, CodeSection>) -> Vec<Func> {
    let mut out = Vec::new();
    for (&index, section) in code {
        let n = section.insns.len() / INSN;
        let mut syms: Vec<(usize, usize, String)> = file
            .symbols()
            .filter(|s| {
                s.section_index() == Some(SectionIndex(index)) && s.kind() == SymbolKind::Text
            })
            .map(|s| {
                let start = (s.address() / INSN as u64).min(n as u64) as usize;
                let end = if s.size() > 0 {
                    start.saturating_add((s.size() / INSN as u64).min(n as u64) as usize)
                } else {
                    n
                };
                (start, end.min(n), s.name().unwrap_or("").to_string())
            })
            // A symbol outside the section's code (damaged or hand-made
            // object) names no function.
            .filter(|(start, end, _)| start < end)
            .collect();
        syms.sort();
        syms.dedup_by_key(|s| s.0);
        if syms.is_empty() && n > 0 {
            syms.push((0, n, section.name.clone()));
        }
        for (start, end, name) in syms {
            out.push(Func {
                name,
                section: index,
                start,
                end,
            });
        }
    }
    out
}

/// Lays out one program: its function, then every subprogram it reaches.
struct Linker<'a> {
    code: &'a BTreeMap<usize, CodeSection>,
    funcs: &'a [Func],
    maps: &'a HashMap<(usize, u64), usize>,
    data_maps: &'a HashMap<usize, DataMap>,
}

/// Where a function's instructions went in the linked program.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    pub(crate) section: usize,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) at: usize,
}

impl Linker<'_> {
    fn link(&self, main: &Func) -> Result<(Vec<u8>, Vec<Placed>), ObjectError> {
        let mut out: Vec<u8> = Vec::new();
        let mut placed: Vec<Placed> = Vec::new();
        let mut index: HashMap<FuncKey, usize> = HashMap::new();
        let mut queue = vec![main.clone()];
        index.insert(
            FuncKey {
                section: main.section,
                start: main.start,
            },
            0,
        );
        // (byte offset of the call, callee's queue position, instruction
        // offset into the callee): patched once every callee has a place.
        let mut fixups: Vec<(usize, usize, usize)> = Vec::new();
        let mut qi = 0;
        while qi < queue.len() {
            let f = queue[qi].clone();
            qi += 1;
            let sec = &self.code[&f.section];
            let at = out.len() / INSN;
            placed.push(Placed {
                section: f.section,
                start: f.start,
                end: f.end,
                at,
            });
            out.extend_from_slice(&sec.insns[f.start * INSN..f.end * INSN]);
            let mut i = f.start;
            while i < f.end {
                let o = (at + i - f.start) * INSN;
                let opcode = out[o];
                let src = out[o + 1] >> 4;
                let reloc = sec.relocs.get(&i);
                let err = |message: String| ObjectError::Relocation {
                    section: sec.name.clone(),
                    insn: i,
                    message,
                };
                if opcode == LD_IMM64 {
                    if let Some(r) = reloc {
                        if i + 1 >= f.end {
                            return Err(err(
                                "ld_imm64 is cut off at the end of the function".into()
                            ));
                        }
                        self.map_reference(&mut out[o..o + 16], r).map_err(err)?;
                    }
                    i += 2;
                    continue;
                }
                if reloc.is_some() && opcode != CALL {
                    return Err(err(format!(
                        "relocation against `{}` on an instruction that is neither ld_imm64 nor call (opcode {opcode:#04x})",
                        reloc.map(|r| r.symbol_name.as_str()).unwrap_or("")
                    )));
                }
                if opcode == CALL && (src == PSEUDO_CALL || reloc.is_some()) {
                    let imm = i32::from_le_bytes(out[o + 4..o + 8].try_into().unwrap_or([0; 4]));
                    let (target_section, target) = match reloc {
                        Some(r) => {
                            let s = r.symbol_section.filter(|s| self.code.contains_key(s)).ok_or_else(|| {
                                err(format!(
                                    "call to `{}`, which is not BPF code in this object (external functions and kfuncs are not supported)",
                                    r.symbol_name
                                ))
                            })?;
                            let base = r.symbol_value as i64 / INSN as i64;
                            (s, base + i64::from(imm) + 1)
                        }
                        None => (f.section, i as i64 + i64::from(imm) + 1),
                    };
                    let callee = self
                        .funcs
                        .iter()
                        .find(|c| {
                            c.section == target_section
                                && target >= c.start as i64
                                && target < c.end as i64
                        })
                        .ok_or_else(|| {
                            err(format!("call target {target} is outside every function"))
                        })?;
                    let key = FuncKey {
                        section: callee.section,
                        start: callee.start,
                    };
                    let callee_pos = match index.get(&key) {
                        Some(&q) => q,
                        None => {
                            index.insert(key, queue.len());
                            queue.push(callee.clone());
                            queue.len() - 1
                        }
                    };
                    // The callee's final position is only known once it is
                    // placed; remember the fix-up until then.
                    out[o + 1] = (out[o + 1] & 0x0f) | (PSEUDO_CALL << 4);
                    fixups.push((o, callee_pos, (target - callee.start as i64) as usize));
                }
                i += 1;
            }
        }
        for (o, callee_pos, offset) in fixups {
            let target = placed[callee_pos].at + offset;
            let rel = target as i64 - (o / INSN) as i64 - 1;
            out[o + 4..o + 8].copy_from_slice(&(rel as i32).to_le_bytes());
        }
        Ok((out, placed))
    }

    /// Turn a relocated `ld_imm64` into a map-index reference.
    fn map_reference(&self, insn: &mut [u8], r: &Reloc) -> Result<(), String> {
        let section = r.symbol_section.ok_or_else(|| {
            format!(
                "ld_imm64 refers to `{}`, which is not defined in this object (extern variables are not supported)",
                r.symbol_name
            )
        })?;
        if let Some(&map) = self.maps.get(&(section, r.symbol_value)) {
            insn[1] = (insn[1] & 0x0f) | (PSEUDO_MAP_IDX << 4);
            insn[4..8].copy_from_slice(&(map as u32).to_le_bytes());
            insn[12..16].copy_from_slice(&0u32.to_le_bytes());
            return Ok(());
        }
        if let Some(d) = self.data_maps.get(&section) {
            // Section symbols carry the offset in the instruction (REL
            // addend); named symbols add their own value.
            let addend = u32::from_le_bytes(insn[4..8].try_into().unwrap_or([0; 4])) as u64;
            let offset = addend
                + if r.symbol_kind == SymbolKind::Section {
                    0
                } else {
                    r.symbol_value
                };
            insn[1] = (insn[1] & 0x0f) | (PSEUDO_MAP_IDX_VALUE << 4);
            insn[4..8].copy_from_slice(&(d.map_index as u32).to_le_bytes());
            insn[12..16].copy_from_slice(&(offset as u32).to_le_bytes());
            return Ok(());
        }
        if self.code.contains_key(&section) {
            return Err(format!(
                "ld_imm64 loads the address of function `{}` (function pointers and callbacks are not supported)",
                r.symbol_name
            ));
        }
        Err(format!(
            "ld_imm64 refers to `{}`, which is neither a map in `maps` nor in .rodata/.data/.bss",
            r.symbol_name
        ))
    }
}

impl Object {
    /// Resolve every kprobe/kretprobe target against the kernel's symbol
    /// index, filling in address and symbol.
    pub fn resolve_targets(
        &mut self,
        index: &ktrace_symbols::SymbolIndex,
    ) -> Result<(), ObjectError> {
        self.resolve_targets_with(index, ktrace_symbols::ResolveOptions::default())
    }

    /// [`Object::resolve_targets`] with resolver options (`all`: a name
    /// several functions share attaches to each).
    pub fn resolve_targets_with(
        &mut self,
        index: &ktrace_symbols::SymbolIndex,
        opts: ktrace_symbols::ResolveOptions,
    ) -> Result<(), ObjectError> {
        for p in &mut self.programs {
            if let AttachTarget::Kprobe { spec, points } = &mut p.attach {
                *points = resolve_kprobe(index, spec, p.prog_type, opts).map_err(|message| {
                    ObjectError::Resolve {
                        program: p.name.clone(),
                        target: spec.clone(),
                        message,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// The request the kernel's BPF runtime accepts.
    pub fn into_load(self) -> ObjectLoad {
        ObjectLoad {
            maps: self.maps,
            programs: self.programs,
        }
    }

    /// The program called `name`.
    pub fn program(&self, name: &str) -> Option<&ProgramLoad> {
        self.programs.iter().find(|p| p.name == name)
    }
}

/// Parse an object and, given the kernel's symbol index, resolve its kprobe
/// targets: everything a `load` request needs, in one call.
pub fn load_request(
    bytes: &[u8],
    kernel: Option<&ktrace_symbols::SymbolIndex>,
) -> Result<ObjectLoad, ObjectError> {
    let mut obj = parse(bytes)?;
    if let Some(index) = kernel {
        obj.resolve_targets(index)?;
    }
    Ok(obj.into_load())
}

/// Resolve one kprobe target. A kretprobe hooks a function's return, so
/// its target must be a function entry, not an offset or a line inside.
fn resolve_kprobe(
    index: &ktrace_symbols::SymbolIndex,
    spec: &str,
    ty: ProgramType,
    opts: ktrace_symbols::ResolveOptions,
) -> Result<Vec<KprobePoint>, String> {
    let res = index.resolve(spec, opts).map_err(|e| e.to_string())?;
    let mut points = Vec::new();
    for p in res.points {
        if ty == ProgramType::Kretprobe && p.offset != 0 {
            return Err(format!(
                "a kretprobe attaches to a function entry, but this target is {:#x} bytes into `{}`",
                p.offset,
                p.function.as_deref().unwrap_or("?")
            ));
        }
        points.push(KprobePoint {
            address: p.addr,
            function: p.function.unwrap_or_default(),
            offset: p.offset,
        });
    }
    Ok(points)
}

/// Where instruction `insn` came from, for people: the probe's own line
/// first, then the inlined code's position when that differs
/// (`src/lib.rs:22 (inlined ebpf/src/helpers.rs:70)`). The same text the
/// kernel puts in its verifier messages ([`ktrace_abi::bpf::describe_row`]).
pub fn describe_location(lines: &LineTable, insn: usize) -> Option<String> {
    let i = lines.rows.partition_point(|r| r.insn as usize <= insn);
    let row = lines.rows.get(i.checked_sub(1)?)?;
    Some(ktrace_abi::bpf::describe_row(lines, row))
}

pub use ktrace_abi::bpf::short_path;

/// The source line of instruction `insn` of a program, as `file:line`.
pub fn source_line(lines: &LineTable, insn: usize) -> Option<(String, u32, u32)> {
    let row: &LineInfo = lines
        .rows
        .iter()
        .take_while(|r| r.insn as usize <= insn)
        .last()?;
    let file = lines.files.get(row.file as usize)?.clone();
    Some((file, row.line, row.column))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrace_abi::bpf::CallSite;

    #[test]
    fn section_names_map_to_program_types() {
        assert_eq!(program_kind(".text").unwrap(), None);
        assert_eq!(
            program_kind("perf_event").unwrap(),
            Some((ProgramType::PerfEvent, AttachTarget::PerfEvent))
        );
        assert_eq!(
            program_kind("tp/sched/sched_switch").unwrap().unwrap().1,
            AttachTarget::Tracepoint {
                category: "sched".into(),
                name: "sched_switch".into()
            }
        );
        let (ty, at) = program_kind("kretprobe/src/block/queue.rs:42")
            .unwrap()
            .unwrap();
        assert_eq!(ty, ProgramType::Kretprobe);
        assert_eq!(
            at,
            AttachTarget::Kprobe {
                spec: "src/block/queue.rs:42".into(),
                points: vec![]
            }
        );
        assert!(program_kind("tracepoint/a/b/c").is_err());
        assert!(is_data_section(".rodata.str1.1"));
        assert!(is_data_section(".bss"));
        assert!(!is_data_section(".rodatax"));
    }

    fn table(rows: Vec<LineInfo>) -> LineTable {
        LineTable {
            files: vec![
                "src/lib.rs".into(),
                "/home/u/probe-sdk/ebpf/src/helpers.rs".into(),
                "/home/u/probe-sdk/ebpf/src/maps/hash_map.rs".into(),
                "/rustc/abc/library/core/src/ptr/mod.rs".into(),
            ],
            rows,
        }
    }

    fn row(insn: u32, file: u32, line: u32, call_sites: &[(u32, u32)]) -> LineInfo {
        LineInfo {
            insn,
            file,
            line,
            column: 0,
            call_sites: call_sites
                .iter()
                .map(|&(file, line)| CallSite { file, line })
                .collect(),
        }
    }

    #[test]
    fn locations_name_the_probes_own_line_first() {
        let t = table(vec![
            row(0, 0, 10, &[]),
            // helpers.rs:70 inlined into hash_map.rs:48, called at lib.rs:22,
            // itself inside the macro's wrapper (lib.rs:19).
            row(3, 1, 70, &[(2, 48), (0, 22), (0, 19)]),
            // Only dependency code, no own line on the chain.
            row(9, 3, 500, &[(1, 70)]),
        ]);
        assert_eq!(describe_location(&t, 0).unwrap(), "src/lib.rs:10");
        assert_eq!(describe_location(&t, 2).unwrap(), "src/lib.rs:10");
        assert_eq!(
            describe_location(&t, 4).unwrap(),
            "src/lib.rs:22 (inlined ebpf/src/helpers.rs:70)"
        );
        assert_eq!(describe_location(&t, 9).unwrap(), "core/src/ptr/mod.rs:500");
        assert_eq!(
            source_line(&t, 5),
            Some(("/home/u/probe-sdk/ebpf/src/helpers.rs".into(), 70, 0))
        );
        assert_eq!(describe_location(&table(vec![]), 0), None);
    }

    #[test]
    fn short_paths_keep_the_crate() {
        assert_eq!(short_path("src/lib.rs"), "src/lib.rs");
        assert_eq!(
            short_path("/a/b/ebpf/src/maps/array.rs"),
            "ebpf/src/maps/array.rs"
        );
        assert_eq!(short_path("/usr/include/linux/bpf.h"), "bpf.h");
    }
}
