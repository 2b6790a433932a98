//! The request generator shared by the request fuzzer
//! (`tests/robustness.rs`) and the coverage-guided fuzzer ([`crate::fuzz`]):
//! typed requests of every variant with hostile field values, probe
//! addresses near instruction boundaries, armed probes, static-key and
//! fix-up sites, and the ids of live, freed and never existing objects.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ktrace_abi::block::{BlockRequest, IoOp, IoRequest, RwMode, WorkloadLimit, WorkloadSpec};
use ktrace_abi::bpf::{
    AttachTarget, BpfRequest, BpfResponse, Engine, KprobePoint, LineInfo, LineTable, LoadOptions,
    MapDefinition, MapEntry, ObjectLoad, ProgramLoad, ProgramType,
};
use ktrace_abi::trace::{
    HardwareEvent, PerfEvent, ProbeKind, ProbeTarget, SoftwareEvent, TraceRequest, TraceResponse,
};
use ktrace_abi::types::{Field, MapTypes, TypeDesc, TypeKind, TypeNode, Variant};
use ktrace_abi::vm::{DebugRequest, Hello};
use ktrace_abi::{Request, Response, PROTOCOL_VERSION};
use object::{Object, ObjectSection};
use probe_sdk::client::Client;
use probe_sdk::kernel_image;

/// splitmix64: small, seedable, good enough to pick hostile values.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)] // a generator, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// A hostile u32: boundaries, small values, random.
    pub fn u32(&mut self) -> u32 {
        match self.below(8) {
            0 => 0,
            1 => u32::MAX,
            2 => u32::MAX - 1,
            3 => 1 << 31,
            4 => self.below(4) as u32,
            5 => self.below(100_000) as u32,
            _ => self.next() as u32,
        }
    }
    pub fn u64(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << 63,
            3 => self.below(16),
            _ => self.next(),
        }
    }
    /// Empty, long, odd characters, or a plausible name.
    pub fn string(&mut self, plausible: &[&str]) -> String {
        match self.below(8) {
            0 => String::new(),
            // Long names, now and then one past any sane limit.
            1 if self.chance(10) => "x".repeat(70_000),
            1 => "x".repeat(self.below(5_000) as usize),
            2 => "\0\u{1}\u{7f}é∂😀:/..%s%n\\".into(),
            3 => String::from_utf8_lossy(&self.bytes(40)).into_owned(),
            4 => ":::".into(),
            _ if !plausible.is_empty() => {
                let p = self.pick(plausible);
                if self.chance(30) {
                    format!("{p}{}", self.pick(&["x", ":", "::", " ", "\0"]))
                } else {
                    p.to_string()
                }
            }
            _ => "nope".into(),
        }
    }
}

/// What the fuzzer knows about the kernel: functions, entry text, and the
/// ids of objects it created (so it can operate on live, closed and never
/// existing ones).
#[derive(Clone)]
pub struct World {
    pub functions: Vec<(String, u64, u32)>,
    /// Functions that run while the fuzzer works (the block path, the
    /// scheduler, the BPF helper dispatch and test target): a probe there
    /// is hit, so a bad patch shows at once.
    pub hot: Vec<(String, u64, u32)>,
    pub entry_ranges: Vec<(u64, u64)>,
    /// Addresses where probes were armed (live or removed since): the
    /// bytes next to them are where a neighbour's `int3` once fooled the
    /// boundary check.
    pub armed: Vec<u64>,
    /// Addresses of armed probes that were hit (code that runs, learnt
    /// from `ListProbes` after each program): where a broken neighbour
    /// shows.
    pub hit: Vec<u64>,
    /// Tracepoint static-key call sites (`.static_keys`): text another
    /// mechanism patches.
    pub static_key_sites: Vec<u64>,
    /// Instructions with an exception fix-up (`.ex_table`).
    pub fixup_sites: Vec<u64>,
    /// Every instruction of the hot functions (start, length), decoded
    /// from the ELF: probes land on real boundaries of code that runs, and
    /// next to an armed probe by its instruction's length.
    pub insns: Arc<BTreeMap<u64, u8>>,
    /// The multi-byte instructions among `insns` in the first 64 bytes of
    /// a hot function (they run whenever the function does; entries are
    /// one-byte `push rbp`, where a neighbour is the next instruction).
    pub entry_insns: Arc<Vec<u64>>,
    pub maps: Vec<u32>,
    pub progs: Vec<u32>,
    /// Live programs of type kprobe (the ones a function entry takes).
    pub kprobe_progs: Vec<u32>,
    pub links: Vec<u32>,
    pub probes: Vec<u32>,
    pub tracepoint_attachments: Vec<u32>,
    pub perf: Vec<u32>,
    pub tracepoints: Vec<String>,
    /// Ids freed already (operations on them must be refused).
    pub dead: Vec<u32>,
}

impl World {
    /// Forget every object id (live and dead); what is known about the
    /// kernel and the armed addresses stay.
    pub fn forget_objects(&mut self) {
        for list in [
            &mut self.maps,
            &mut self.progs,
            &mut self.kprobe_progs,
            &mut self.links,
            &mut self.probes,
            &mut self.tracepoint_attachments,
            &mut self.perf,
            &mut self.dead,
        ] {
            list.clear();
        }
    }

    pub fn id(&mut self, rng: &mut Rng, live: &[u32]) -> u32 {
        match rng.below(6) {
            0 | 1 if !live.is_empty() => rng.pick(live),
            2 if !self.dead.is_empty() => rng.pick(&self.dead),
            3 => u32::MAX,
            4 => 0,
            _ => rng.u32(),
        }
    }

    pub fn address(&mut self, rng: &mut Rng) -> u64 {
        let (_, addr, size) = if !self.hot.is_empty() && rng.chance(50) {
            rng.pick(&self.hot)
        } else {
            rng.pick(&self.functions)
        };
        match rng.below(20) {
            11 | 12 | 16 | 17 if !self.armed.is_empty() => {
                // The latest armed probe half the time: it may still be
                // armed.
                let armed = if rng.chance(50) {
                    *self.armed.last().unwrap()
                } else {
                    rng.pick(&self.armed)
                };
                self.next_to(armed, rng)
            }
            18 | 19 if !self.entry_insns.is_empty() => self.hot_insn(rng),
            13 if !self.static_key_sites.is_empty() => {
                rng.pick(&self.static_key_sites) + rng.below(6)
            }
            14 if !self.fixup_sites.is_empty() => rng.pick(&self.fixup_sites),
            0 => 0,
            1 => u64::MAX,
            2 => 0x0000_8000_0000_0000, // non-canonical
            3 => 0xffff_8000_0000_0000 + rng.below(1 << 20),
            4 => addr + rng.below(u64::from(size.max(1))), // often mid-instruction
            5 => addr + u64::from(size),                   // just past the function
            6 if !self.entry_ranges.is_empty() => {
                let (s, e) = rng.pick(&self.entry_ranges);
                s + rng.below(e.saturating_sub(s).max(1))
            }
            7 => 0x1000 + rng.below(0x10_0000), // low memory / data
            8 => addr.wrapping_add(0x40_0000),  // past text: rodata / data
            9 => rng.next(),
            _ => addr,
        }
    }

    /// A byte next to the instruction at `armed` (where a probe is or
    /// was): inside it (+1, +len-1), the next instruction (+len), the one
    /// before, or a byte around it.
    pub fn next_to(&self, armed: u64, rng: &mut Rng) -> u64 {
        let len = self.insns.get(&armed).copied();
        match (rng.below(6), len) {
            (0, _) => armed + 1,
            (1, Some(len)) => armed + u64::from(len.max(2)) - 1,
            (2 | 3, Some(len)) => armed + u64::from(len),
            (4, Some(_)) => self
                .insns
                .range(..armed)
                .next_back()
                .map_or(armed.wrapping_sub(1), |(&a, _)| a),
            (4 | 5, _) => armed + 1 + rng.below(8),
            _ => armed.wrapping_add(rng.below(31)).wrapping_sub(15),
        }
    }

    /// A multi-byte instruction near the start of a hot function (it runs
    /// whenever the function does), or any instruction of one.
    pub fn hot_insn(&self, rng: &mut Rng) -> u64 {
        if rng.chance(75) || self.insns.is_empty() {
            rng.pick(&self.entry_insns)
        } else {
            let k = rng.below(self.insns.len() as u64) as usize;
            *self.insns.keys().nth(k).unwrap()
        }
    }

    pub fn symbol(&mut self, rng: &mut Rng) -> String {
        let (name, _, _) = rng.pick(&self.functions);
        match rng.below(6) {
            0 => rng.string(&[]),
            1 => format!("{name}::nope"),
            2 => name[..name.len() / 2].to_string(),
            3 => format!("{name}\0"),
            _ => name,
        }
    }

    pub fn tracepoint(&mut self, rng: &mut Rng) -> String {
        let known: Vec<&str> = self.tracepoints.iter().map(String::as_str).collect();
        rng.string(&known)
    }

    pub fn probe_target(&mut self, rng: &mut Rng) -> ProbeTarget {
        if rng.chance(50) {
            ProbeTarget::Address(self.address(rng))
        } else {
            ProbeTarget::Symbol {
                name: self.symbol(rng),
                offset: match rng.below(4) {
                    0 => 0,
                    1 => rng.below(64),
                    _ => rng.u64(),
                },
            }
        }
    }
}

/// Instruction bytes: a valid tiny program, garbage, odd lengths, huge.
pub fn program_bytes(rng: &mut Rng) -> Vec<u8> {
    const RET0: [u8; 16] = [
        0xb7, 0, 0, 0, 0, 0, 0, 0, // mov r0, 0
        0x95, 0, 0, 0, 0, 0, 0, 0, // exit
    ];
    match rng.below(9) {
        0 | 1 => RET0.to_vec(),
        2 => Vec::new(),
        3 => {
            let n = 1 + rng.below(30) as usize;
            rng.bytes(n)
        }
        4 => {
            let n = 1 + rng.below(200) as usize;
            rng.bytes(n * 8)
        }
        5 => {
            // Random instructions ending in exit: gets past the decoder more often.
            let mut v = Vec::new();
            for _ in 0..rng.below(40) {
                let mut insn = rng.bytes(8);
                insn[0] = rng.pick(&[
                    0x07, 0xb7, 0xbf, 0x61, 0x79, 0x7b, 0x85, 0x05, 0x15, 0x18, 0xdb,
                ]);
                v.extend_from_slice(&insn);
            }
            v.extend_from_slice(&RET0[8..]);
            v
        }
        6 if rng.chance(25) => {
            // More instructions than any limit: 70 000 (560 KB).
            let mut v = RET0[..8].repeat(70_000);
            v.extend_from_slice(&RET0[8..]);
            v
        }
        7 => {
            // An infinite loop: ja -1.
            vec![0x05, 0, 0xff, 0xff, 0, 0, 0, 0]
        }
        8 if rng.chance(50) => {
            // bpf_probe_read_kernel of a mapped or unmapped address: runs
            // the fix-up instruction inside the helper dispatch, which the
            // fuzzer may have probed.
            let any = rng.next();
            let addr = rng.pick(&[0x10u64, 0x10_0000, 0x7fff_0000_0000, any]);
            let asm = format!(
                "mov %r1, %r10\nadd %r1, -8\nmov %r2, 8\nlddw %r3, {addr:#x}\ncall 113\nexit"
            );
            bpf_vm::asm::assemble(&asm).unwrap().encode()
        }
        _ => {
            // Map references through ld_imm64 with hostile map indices.
            let idx = rng.u32().to_le_bytes();
            let mut v = vec![0x18, 0x11, 0, 0, idx[0], idx[1], idx[2], idx[3]];
            v.extend_from_slice(&[0; 8]);
            v.extend_from_slice(&RET0);
            v
        }
    }
}

pub fn map_definition(rng: &mut Rng) -> MapDefinition {
    if rng.chance(50) {
        // A sane map, so later operations reach a live one with the right
        // and the wrong key and value sizes.
        return MapDefinition {
            name: "sane".into(),
            map_type: rng.pick(&[1u32, 2, 5, 6, 9]),
            key_size: 4,
            value_size: rng.pick(&[8u32, 16]),
            max_entries: rng.pick(&[16u32, 1024]),
            flags: 0,
            initial_value: Vec::new(),
            read_only: false,
            types: map_types(rng),
        };
    }
    let map_type = match rng.below(10) {
        0 => rng.u32(),
        _ => rng.pick(&[1u32, 2, 4, 5, 6, 7, 9, 27, 3, 0]),
    };
    let size = |rng: &mut Rng| match rng.below(5) {
        0 => rng.u32(),
        _ => rng.pick(&[0u32, 1, 4, 8, 16, 64, 512, 4096]),
    };
    let key_size = size(rng);
    let value_size = size(rng);
    let max_entries = match rng.below(5) {
        0 => rng.u32(),
        _ => rng.pick(&[0u32, 1, 16, 1024, 4096, 1 << 20]),
    };
    let init_len = match rng.below(4) {
        0 => rng.below(9000) as usize,
        _ => 0,
    };
    MapDefinition {
        name: rng.string(&["counts", "hist", "events"]),
        map_type,
        key_size,
        value_size,
        max_entries,
        flags: if rng.chance(80) { 0 } else { rng.u32() },
        initial_value: rng.bytes(init_len),
        read_only: rng.chance(10),
        types: map_types(rng),
    }
}

/// Declared types: mostly none, else small descriptions with plausible
/// and absurd sizes, references forward and backward, and sometimes far
/// more nodes, fields or variants than the bounds allow.
pub fn map_types(rng: &mut Rng) -> MapTypes {
    if rng.chance(60) {
        return MapTypes::default();
    }
    let desc = |rng: &mut Rng| rng.chance(60).then(|| type_desc(rng));
    MapTypes {
        key: desc(rng),
        value: desc(rng),
        record: desc(rng),
    }
}

pub fn type_desc(rng: &mut Rng) -> TypeDesc {
    let n = match rng.below(8) {
        0 => rng.below(300) as usize,
        _ => 1 + rng.below(6) as usize,
    };
    let mut nodes = Vec::new();
    for i in 0..n {
        let r = |rng: &mut Rng| {
            if i > 0 && rng.chance(90) {
                rng.below(i as u64) as u32
            } else {
                rng.u32()
            }
        };
        let many = |rng: &mut Rng| match rng.below(10) {
            0 => rng.below(100),
            _ => rng.below(5),
        };
        let kind = match rng.below(8) {
            0 => TypeKind::Int {
                signed: rng.chance(50),
            },
            1 => TypeKind::Bool,
            2 => TypeKind::Char,
            3 => TypeKind::Float,
            4 => TypeKind::Array {
                elem: r(rng),
                len: rng.pick(&[0u32, 1, 4, 16, u32::MAX]),
            },
            5 => TypeKind::Struct {
                fields: (0..many(rng))
                    .map(|_| Field {
                        name: rng.string(&["pid", "comm"]),
                        offset: rng.pick(&[0u32, 4, 8, u32::MAX]),
                        ty: r(rng),
                    })
                    .collect(),
            },
            6 => TypeKind::Enum {
                signed: rng.chance(50),
                variants: (0..many(rng))
                    .map(|_| Variant {
                        name: rng.string(&["Read", "Write"]),
                        value: rng.u64() as i64,
                    })
                    .collect(),
            },
            _ => TypeKind::Opaque,
        };
        nodes.push(TypeNode {
            name: rng.string(&["u32", "Start"]),
            size: rng.pick(&[0u32, 1, 4, 8, 16, 40, u32::MAX]),
            kind,
        });
    }
    TypeDesc { nodes }
}

pub fn attach_target(world: &mut World, rng: &mut Rng) -> AttachTarget {
    match rng.below(4) {
        0 if !world.functions.is_empty() => {
            // A well-formed target: a function's entry, named right.
            let (name, addr, _) = rng.pick(&world.functions);
            AttachTarget::Kprobe {
                spec: name.clone(),
                points: vec![KprobePoint {
                    address: addr,
                    function: name,
                    offset: 0,
                }],
            }
        }
        0 | 1 => {
            let n = rng.pick(&[0usize, 1, 1, 2, 50]);
            let points = (0..n)
                .map(|_| KprobePoint {
                    address: world.address(rng),
                    function: world.symbol(rng),
                    offset: rng.u64(),
                })
                .collect();
            AttachTarget::Kprobe {
                spec: world.symbol(rng),
                points,
            }
        }
        2 => {
            let tp = world.tracepoint(rng);
            let (category, name) = tp.split_once(':').unwrap_or(("", &tp));
            AttachTarget::Tracepoint {
                category: category.into(),
                name: if rng.chance(20) {
                    rng.string(&[])
                } else {
                    name.into()
                },
            }
        }
        _ => AttachTarget::PerfEvent,
    }
}

pub fn program_load(world: &mut World, rng: &mut Rng) -> ProgramLoad {
    let prog_type = rng.pick(&[
        ProgramType::Kprobe,
        ProgramType::Kretprobe,
        ProgramType::Tracepoint,
        ProgramType::PerfEvent,
    ]);
    let lines = if rng.chance(20) {
        Some(LineTable {
            files: vec![rng.string(&[])],
            rows: vec![LineInfo {
                insn: rng.u32(),
                file: rng.u32(),
                line: rng.u32(),
                column: rng.u32(),
                call_sites: Vec::new(),
            }],
        })
    } else {
        None
    };
    ProgramLoad {
        name: rng.string(&["prog"]),
        section: rng.string(&["kprobe/x", "tracepoint/block/block_rq_issue", "perf_event"]),
        prog_type,
        attach: attach_target(world, rng),
        insns: program_bytes(rng),
        license: rng.pick(&["GPL", "", "Proprietary"]).into(),
        lines,
    }
}

pub fn options(rng: &mut Rng) -> LoadOptions {
    LoadOptions {
        log_level: if rng.chance(70) { 0 } else { rng.next() as u8 },
        insn_budget: if rng.chance(60) { 0 } else { rng.u64() },
        engine: match rng.below(4) {
            0 => None,
            1 => Some(Engine::Jit),
            2 => Some(Engine::JitHardened),
            _ => Some(Engine::Interpreter),
        },
    }
}

pub fn key(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(6) {
        0 => 0,
        1 => rng.below(600) as usize,
        2 => 8,
        3 => 16,
        _ => 4,
    };
    rng.bytes(len)
}

pub fn workload(rng: &mut Rng) -> WorkloadSpec {
    // Each field is sane three times in four, so some workloads run (and
    // the checks behind the first refusal are reached too).
    let mut spec = WorkloadSpec::new("ram0", RwMode::RandRw);
    if rng.chance(25) {
        spec.devices = match rng.below(4) {
            0 => Vec::new(),
            1 => vec!["nope".into()],
            2 => vec!["ram0".into(); 20],
            _ => vec![rng.string(&["ram0", "vda"])],
        };
    }
    spec.rw = rng.pick(&[
        RwMode::Read,
        RwMode::Write,
        RwMode::RandRead,
        RwMode::RandWrite,
        RwMode::RandRw,
    ]);
    if rng.chance(25) {
        spec.block_size = rng.pick(&[0, 1, 511, 1 << 20, (1 << 20) + 1, u32::MAX]);
    } else {
        spec.block_size = rng.pick(&[512, 4096, 65536]);
    }
    spec.iodepth = if rng.chance(25) {
        rng.pick(&[0, 257, u32::MAX])
    } else {
        rng.pick(&[1, 4, 32])
    };
    spec.jobs = if rng.chance(25) {
        rng.pick(&[0, 16, 17, u32::MAX])
    } else {
        rng.pick(&[1, 2])
    };
    // Valid limits stay small so a workload the kernel accepts ends quickly.
    spec.limit = if rng.chance(25) {
        rng.pick(&[
            WorkloadLimit::Count(0),
            WorkloadLimit::TimeMs(0),
            WorkloadLimit::TimeMs(u64::MAX),
            WorkloadLimit::TimeMs(600_001),
        ])
    } else {
        rng.pick(&[
            WorkloadLimit::Count(1),
            WorkloadLimit::Count(64),
            WorkloadLimit::TimeMs(50),
        ])
    };
    spec.verify = rng.chance(50);
    spec.read_percent = if rng.chance(25) {
        rng.next() as u8
    } else {
        rng.below(101) as u8
    };
    if rng.chance(25) {
        spec.offset = rng.pick(&[511, u64::MAX, u64::MAX - 4095, 1 << 40]);
        spec.size = rng.pick(&[4096, 1 << 20, u64::MAX, 1 << 40, 100]);
    }
    spec.seed = rng.next();
    spec.plug = rng.chance(50);
    spec
}

/// Return-probe targets on the task exit path.
pub const TASK_EXIT_PATH: [&str; 2] = [
    "kernel::task::sched::exit_current",
    "kernel::task::sched::reap_zombies",
];

/// One request of kind `kind`, with hostile values.
pub fn gen_request(kind: usize, world: &mut World, rng: &mut Rng) -> Request {
    use BpfRequest as B;
    use TraceRequest as T;
    match kind {
        0 => Request::Hello(Hello {
            protocol_version: if rng.chance(50) {
                PROTOCOL_VERSION
            } else {
                rng.u32()
            },
            client: rng.string(&["fuzzer"]),
        }),
        1 => Request::Info,
        2 => Request::Debug(DebugRequest::ListSelfTests),
        3 => Request::Debug(DebugRequest::SelfTest {
            name: format!("no-such-test{}", rng.string(&[])),
        }),
        4 => Request::Trace(T::ListProbes),
        5 if rng.chance(15) => Request::Trace(T::AddProbe {
            // Return probes on the task exit path: a function that never
            // returns and the reaper (issue 14: instances of exited tasks
            // crashed the next task on their stack, or filled the pool).
            target: ProbeTarget::Symbol {
                name: rng.pick(&TASK_EXIT_PATH).into(),
                offset: 0,
            },
            kind: ProbeKind::Kretprobe {
                maxactive: match rng.below(4) {
                    0 => 0,
                    1 => 1,
                    2 => 512,
                    _ => rng.u32(),
                },
            },
        }),
        5 => Request::Trace(T::AddProbe {
            target: world.probe_target(rng),
            kind: if rng.chance(60) {
                ProbeKind::Kprobe
            } else {
                ProbeKind::Kretprobe {
                    maxactive: rng.u32(),
                }
            },
        }),
        6 => Request::Trace(T::RemoveProbe {
            id: world.id(rng, &world.probes.clone()),
        }),
        7 => Request::Trace(rng.pick(&[T::ListBlacklist, T::ListTracepoints])),
        8 => Request::Trace(T::AttachTracepoint {
            name: world.tracepoint(rng),
        }),
        9 => Request::Trace(T::DetachTracepoint {
            id: world.id(rng, &world.tracepoint_attachments.clone()),
        }),
        10 => Request::Trace(T::PerfOpen {
            event: match rng.below(6) {
                0 => PerfEvent::Software(rng.pick(&[
                    SoftwareEvent::TaskClock,
                    SoftwareEvent::ContextSwitches,
                    SoftwareEvent::Irqs,
                    SoftwareEvent::TimerTicks,
                    SoftwareEvent::PageFaults,
                ])),
                1 => PerfEvent::Hardware(rng.pick(&[
                    HardwareEvent::CpuCycles,
                    HardwareEvent::Instructions,
                    HardwareEvent::CacheMisses,
                    HardwareEvent::BranchMisses,
                ])),
                2 => PerfEvent::Tracepoint {
                    name: world.tracepoint(rng),
                },
                3 => PerfEvent::Kprobe {
                    target: world.probe_target(rng),
                },
                _ => PerfEvent::Sampling {
                    freq_hz: rng.pick(&[0, 1, 99, 1000, 100_000, u32::MAX]),
                    max_stack: rng.u32(),
                },
            },
        }),
        11 => {
            let id = world.id(rng, &world.perf.clone());
            Request::Trace(match rng.below(5) {
                0 => T::PerfEnable { id },
                1 => T::PerfDisable { id },
                2 => T::PerfRead { id },
                3 => T::PerfDrain { id, max: rng.u32() },
                _ => T::PerfClose { id },
            })
        }
        12 => Request::Bpf(B::MapCreate(Box::new(map_definition(rng)))),
        13 => {
            let map = world.id(rng, &world.maps.clone());
            Request::Bpf(match rng.below(8) {
                0 => B::MapLookup { map, key: key(rng) },
                1 => B::MapUpdate {
                    map,
                    key: key(rng),
                    value: key(rng),
                    flags: rng.pick(&[0, 1, 2, 3, u64::MAX]),
                },
                2 => B::MapDelete { map, key: key(rng) },
                3 => B::MapNextKey {
                    map,
                    key: if rng.chance(50) { None } else { Some(key(rng)) },
                },
                4 => B::MapDump {
                    map,
                    after: if rng.chance(50) { None } else { Some(key(rng)) },
                    max: rng.u32(),
                },
                5 => B::MapUpdateBatch {
                    map,
                    entries: (0..rng.pick(&[0, 1, 3, 300]))
                        .map(|_| MapEntry {
                            key: key(rng),
                            value: key(rng),
                        })
                        .collect(),
                    flags: rng.pick(&[0, 1, 2, u64::MAX]),
                },
                6 => B::MapDeleteBatch {
                    map,
                    keys: (0..rng.pick(&[0, 1, 5])).map(|_| key(rng)).collect(),
                },
                _ => B::MapFree { map },
            })
        }
        14 => Request::Bpf(rng.pick(&[
            B::MapList,
            B::ProgList,
            B::LinkList,
            B::GetLimits,
            B::DefaultEngine { set: None },
            B::DefaultEngine {
                set: Some(Engine::Interpreter),
            },
            B::DefaultEngine {
                set: Some(Engine::JitHardened),
            },
            B::DefaultEngine {
                set: Some(Engine::Jit),
            },
            B::RunTimeStats { set: None },
            B::RunTimeStats { set: Some(true) },
            B::RunTimeStats { set: Some(false) },
        ])),
        15 => {
            let maps = (0..rng.pick(&[0, 0, 0, 1, 2, 40]))
                .map(|_| world.id(rng, &world.maps.clone()))
                .collect();
            Request::Bpf(B::ProgLoad {
                prog: Box::new(program_load(world, rng)),
                maps,
                options: options(rng),
            })
        }
        16 => {
            let prog = world.id(rng, &world.progs.clone());
            Request::Bpf(match rng.below(3) {
                0 => B::ProgDump { prog },
                1 => B::ProgUnload { prog },
                _ => B::ProgTestRun {
                    prog,
                    ctx: {
                        let n = rng.pick(&[0, 1, 168, 200, 4096]);
                        rng.bytes(n)
                    },
                    // Small repeats mostly: the count limit is checked by the 3rd arm.
                    repeat: rng.pick(&[0, 1, 100, 1_000_001, u32::MAX]),
                },
            })
        }
        17 if !world.kprobe_progs.is_empty() && rng.chance(50) => {
            // A live kprobe program on a function's entry: reaches the
            // attach path itself (blacklist, patching, text checks).
            let prog = rng.pick(&world.kprobe_progs);
            let (name, addr, _) = rng.pick(&world.functions);
            Request::Bpf(B::Attach {
                prog,
                target: Box::new(AttachTarget::Kprobe {
                    spec: name.clone(),
                    points: vec![KprobePoint {
                        address: addr,
                        function: name,
                        offset: 0,
                    }],
                }),
                kretprobe: rng.chance(30),
            })
        }
        17 => Request::Bpf(B::Attach {
            prog: world.id(rng, &world.progs.clone()),
            target: Box::new(attach_target(world, rng)),
            kretprobe: rng.chance(30),
        }),
        18 if rng.chance(25) => Request::Bpf(match rng.below(3) {
            // Objects by pin, id or name (live, dead or made up), pins.
            0 => B::ObjectUnload {
                object: match rng.below(3) {
                    0 => rng.string(&["obj", "pin"]),
                    _ => format!("{}", rng.below(64)),
                },
            },
            1 => B::Unpin {
                name: rng.string(&["pin", "obj"]),
            },
            _ => B::ObjectList,
        }),
        18 => Request::Bpf(B::Detach {
            link: world.id(rng, &world.links.clone()),
        }),
        19 => {
            let maps: Vec<u32> = (0..rng.pick(&[0, 1, 3]))
                .map(|_| world.id(rng, &world.maps.clone()))
                .collect();
            Request::Bpf(if rng.chance(30) {
                B::EventsSubscribe {
                    maps,
                    printk: rng.chance(50),
                }
            } else {
                B::EventsPoll {
                    maps,
                    printk: rng.chance(50),
                    max: rng.u32(),
                }
            })
        }
        20 => Request::Bpf(match rng.below(5) {
            0 => B::Trigger {
                count: rng.pick(&[0, 1, 1000, 1_000_001, u32::MAX]),
                arg: rng.u64(),
            },
            1 => B::TriggerSpawn {
                count: rng.pick(&[0, 1, 5000]),
            },
            2 => B::Bench {
                count: rng.pick(&[0, 1, 1000, 1_000_001, u32::MAX]),
            },
            3 => B::TriggerBench {
                cpus: rng.pick(&[
                    vec![],
                    vec![0],
                    vec![0, 1],
                    vec![1, 1],
                    vec![7],
                    vec![u32::MAX],
                ]),
                ms: rng.pick(&[0, 1, 20, 10_001, u32::MAX]),
            },
            _ => B::SetLimits(Box::new(ktrace_abi::bpf::Limits {
                map_memory_bytes: rng.u64(),
                programs: rng.u32(),
                insns_per_program: rng.u32(),
                maps: rng.u32(),
            })),
        }),
        21 => {
            let n_maps = rng.pick(&[0, 1, 3]);
            let n_progs = rng.pick(&[0, 1, 2]);
            let maps = (0..n_maps).map(|_| map_definition(rng)).collect();
            let programs = (0..n_progs).map(|_| program_load(world, rng)).collect();
            Request::Bpf(B::LoadObject {
                name: rng.string(&["obj"]),
                object: Box::new(ObjectLoad { maps, programs }),
                attach: rng.chance(50),
                options: options(rng),
                pin: rng.chance(20).then(|| rng.string(&["pin"])),
            })
        }
        22 => Request::Block(match rng.below(3) {
            0 => BlockRequest::Stats,
            1 => BlockRequest::SetScheduler {
                dev: rng.string(&["ram0", "vda"]),
                scheduler: rng.string(&["deadline", "none", "mq-deadline"]),
            },
            _ => BlockRequest::InjectErrors {
                dev: rng.string(&["ram0", "vda"]),
                sectors: if rng.chance(40) {
                    None
                } else {
                    Some((rng.u64(), rng.u64()))
                },
            },
        }),
        23 if rng.chance(50) => {
            // A well-formed I/O near the start of the RAM disk.
            let op = rng.pick(&[IoOp::Read, IoOp::Write, IoOp::Flush]);
            let len = 512 * (1 + rng.below(16) as u32);
            Request::Block(BlockRequest::Io(IoRequest {
                dev: "ram0".into(),
                op,
                sector: rng.below(1024),
                len: if op == IoOp::Read { len } else { 0 },
                data: if op == IoOp::Write {
                    rng.bytes(len as usize)
                } else {
                    Vec::new()
                },
            }))
        }
        23 => Request::Block(BlockRequest::Io(IoRequest {
            dev: rng.string(&["ram0", "ram0", "vda"]),
            op: rng.pick(&[IoOp::Read, IoOp::Write, IoOp::Flush]),
            sector: {
                let near = rng.below(1 << 20);
                rng.pick(&[0, 1, 7, u64::MAX, u64::MAX - 1, 1 << 55, near])
            },
            len: rng.pick(&[0, 1, 511, 512, 4096, 1 << 20, (1 << 20) + 1, u32::MAX]),
            data: {
                let n = rng.pick(&[0, 1, 512, 4096, 1000]);
                rng.bytes(n)
            },
        })),
        _ => Request::Block(BlockRequest::Workload(workload(rng))),
    }
}

pub const KINDS: [&str; 25] = [
    "Hello",
    "Info",
    "Debug::ListSelfTests",
    "Debug::SelfTest",
    "Trace::ListProbes",
    "Trace::AddProbe",
    "Trace::RemoveProbe",
    "Trace::List(Blacklist|Tracepoints)",
    "Trace::AttachTracepoint",
    "Trace::DetachTracepoint",
    "Trace::PerfOpen",
    "Trace::Perf(Enable|Disable|Read|Drain|Close)",
    "Bpf::MapCreate",
    "Bpf::Map(Lookup|Update|Delete|NextKey|Dump|Batch|Free)",
    "Bpf::(Map|Prog|Link)List, GetLimits, DefaultEngine, RunTimeStats",
    "Bpf::ProgLoad",
    "Bpf::Prog(Dump|Unload|TestRun)",
    "Bpf::Attach",
    "Bpf::Detach",
    "Bpf::Events(Subscribe|Poll)",
    "Bpf::(Trigger|TriggerSpawn|Bench|TriggerBench|SetLimits)",
    "Bpf::LoadObject",
    "Block::(Stats|SetScheduler|InjectErrors)",
    "Block::Io",
    "Block::Workload",
];

/// Remember the ids a successful request created; forget the ones it freed.
pub fn record(world: &mut World, req: &Request, resp: &Response) {
    pub fn kill(list: &mut Vec<u32>, dead: &mut Vec<u32>, id: u32) {
        if let Some(i) = list.iter().position(|&x| x == id) {
            list.swap_remove(i);
            dead.push(id);
        }
    }
    match (req, resp) {
        (_, Response::Trace(TraceResponse::ProbeAdded(p))) => {
            world.probes.push(p.id);
            // The last 64 armed addresses, the latest last.
            if world.armed.len() >= 64 {
                world.armed.remove(0);
            }
            world.armed.push(p.addr);
        }
        (_, Response::Trace(TraceResponse::Attached { id })) => {
            world.tracepoint_attachments.push(*id)
        }
        (_, Response::Trace(TraceResponse::PerfOpened { id })) => world.perf.push(*id),
        (_, Response::Bpf(BpfResponse::Map(m))) => world.maps.push(m.id),
        (_, Response::Bpf(BpfResponse::Program(p))) => {
            world.progs.push(p.id);
            if p.prog_type == ProgramType::Kprobe {
                world.kprobe_progs.push(p.id);
            }
        }
        (_, Response::Bpf(BpfResponse::Link(l))) => world.links.push(l.id),
        (_, Response::Bpf(BpfResponse::Object(o))) => {
            world.maps.extend(o.maps.iter().map(|m| m.id));
            world.progs.extend(o.programs.iter().map(|p| p.id));
            world.links.extend(o.links.iter().map(|l| l.id));
        }
        (Request::Trace(TraceRequest::RemoveProbe { id }), Response::Ok) => {
            kill(&mut world.probes, &mut world.dead, *id)
        }
        (Request::Trace(TraceRequest::DetachTracepoint { id }), Response::Ok) => {
            kill(&mut world.tracepoint_attachments, &mut world.dead, *id)
        }
        (Request::Trace(TraceRequest::PerfClose { id }), Response::Ok) => {
            kill(&mut world.perf, &mut world.dead, *id)
        }
        (Request::Bpf(BpfRequest::MapFree { map }), Response::Ok) => {
            kill(&mut world.maps, &mut world.dead, *map)
        }
        (Request::Bpf(BpfRequest::ProgUnload { prog }), Response::Ok) => {
            world.kprobe_progs.retain(|p| p != prog);
            kill(&mut world.progs, &mut world.dead, *prog)
        }
        (Request::Bpf(BpfRequest::Detach { link }), Response::Ok) => {
            kill(&mut world.links, &mut world.dead, *link)
        }
        (
            Request::Bpf(req @ (BpfRequest::ObjectUnload { .. } | BpfRequest::Unpin { .. })),
            Response::Bpf(BpfResponse::Objects(objects)),
        ) => {
            // What an unload or an unpin freed is gone (an unpinned object
            // a session still holds stays, as `session` says).
            let unload = matches!(req, BpfRequest::ObjectUnload { .. });
            for o in objects.iter().filter(|o| unload || o.session.is_none()) {
                for &m in &o.maps {
                    kill(&mut world.maps, &mut world.dead, m);
                }
                for &p in &o.programs {
                    world.kprobe_progs.retain(|x| *x != p);
                    kill(&mut world.progs, &mut world.dead, p);
                }
                for &l in &o.links {
                    kill(&mut world.links, &mut world.dead, l);
                }
            }
        }
        _ => {}
    }
}

impl World {
    /// What the kernel ELF at `elf_path` (the one the VM runs) and the
    /// kernel behind `client` tell about functions, the blacklist,
    /// tracepoints and the text other mechanisms patch; no object yet.
    pub fn explore(client: &mut Client, elf_path: &Path) -> World {
        let elf = std::fs::read(elf_path).unwrap();
        let functions: Vec<(String, u64, u32)> = kernel_image::functions(elf_path, &elf)
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.addr, f.size))
            .collect();
        assert!(functions.len() > 100);

        let mut entry_ranges = Vec::new();
        if let Ok(Response::Trace(TraceResponse::Blacklist(list))) =
            client.request(&Request::Trace(TraceRequest::ListBlacklist))
        {
            entry_ranges = list
                .iter()
                .filter(|e| e.end > e.start)
                .map(|e| (e.start, e.end))
                .collect();
        }
        let tracepoints = match client.request(&Request::Trace(TraceRequest::ListTracepoints)) {
            Ok(Response::Trace(TraceResponse::Tracepoints(t))) => t
                .iter()
                .map(|t| format!("{}:{}", t.category, t.name))
                .collect(),
            other => panic!("ListTracepoints: {other:?}"),
        };
        // Text other mechanisms patch, from the ELF the VM runs.
        let parsed = object::File::parse(&*elf).unwrap();
        let words = |name: &str| -> Vec<u64> {
            parsed
                .section_by_name(name)
                .and_then(|s| s.data().ok())
                .unwrap_or_default()
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                .collect()
        };
        let static_key_sites: Vec<u64> = words(".static_keys")
            .chunks_exact(3)
            .map(|e| e[0])
            .collect();
        let fixup_sites: Vec<u64> = words(".ex_table").chunks_exact(2).map(|e| e[0]).collect();
        assert!(!static_key_sites.is_empty() && !fixup_sites.is_empty());
        let hot: Vec<(String, u64, u32)> = functions
            .iter()
            .filter(|(name, _, _)| {
                [
                    "kernel::block::",
                    "kernel::task::sched::",
                    "kernel::bpf::testing::target",
                    "<kernel::bpf::helpers::RunEnv as bpf_vm::interp::Helpers>::call",
                ]
                .iter()
                .any(|p| name.starts_with(p))
            })
            .cloned()
            .collect();
        let (insns, entry_insns) = decode_hot(&parsed, &hot, &entry_ranges);
        World {
            functions,
            hot,
            entry_ranges,
            armed: Vec::new(),
            hit: Vec::new(),
            static_key_sites,
            fixup_sites,
            insns: Arc::new(insns),
            entry_insns: Arc::new(entry_insns),
            maps: Vec::new(),
            progs: Vec::new(),
            kprobe_progs: Vec::new(),
            links: Vec::new(),
            probes: Vec::new(),
            tracepoint_attachments: Vec::new(),
            perf: Vec::new(),
            tracepoints,
            dead: Vec::new(),
        }
    }
}

/// The instructions of `hot` functions (start, length) read from the ELF,
/// and the multi-byte ones in the first 64 bytes of each, outside the
/// blacklisted entry text.
fn decode_hot(
    elf: &object::File,
    hot: &[(String, u64, u32)],
    entry_ranges: &[(u64, u64)],
) -> (BTreeMap<u64, u8>, Vec<u64>) {
    let mut insns = BTreeMap::new();
    let mut entry = Vec::new();
    let Some(text) = elf.section_by_name(".text") else {
        return (insns, entry);
    };
    let (base, bytes) = (text.address(), text.data().unwrap_or_default());
    for &(_, addr, size) in hot {
        let Some(off) = addr.checked_sub(base) else {
            continue;
        };
        let (off, size) = (off as usize, size as usize);
        if size == 0 || off + size > bytes.len() {
            continue;
        }
        if entry_ranges.iter().any(|&(s, e)| addr >= s && addr < e) {
            continue;
        }
        ktrace_kprobe::x86_64::for_each_insn(&bytes[off..off + size], addr, |at, len| {
            insns.insert(at, len as u8);
            if len > 1 && at < addr + 64 {
                entry.push(at);
            }
            true
        });
    }
    (insns, entry)
}
