//! Links: a program attached to a kprobe, kretprobe, tracepoint or perf
//! event, through the kernel's trace subsystem (`crate::trace`).
//!
//! Each link registers one handler. The trace subsystem runs the handlers
//! of one point in registration order, under its per-CPU recursion guard,
//! with interrupts off, and unregistering waits until no CPU runs the
//! handler — which is what makes detaching while the program fires safe:
//! the handler (and the `Arc<Program>` in it) outlives every run.
//!
//! Every handler (kprobe, kretprobe, tracepoint, perf sample) runs its
//! program through [`Program::run`], which calls the JIT-compiled code
//! directly (or the interpreter, for programs loaded that way): no extra
//! dispatch per attach point.
//!
//! Kprobe targets the host resolved are re-checked against the kernel's
//! own symbol table: the address must be kernel text, inside the named
//! function at the stated offset.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;

use ktrace_abi::bpf::{AttachTarget, KprobePoint, LinkInfo, LinkTarget, ProgramType};
use ktrace_abi::trace::PerfEvent;

use super::prog::{HitInfo, Program};
use super::Runtime;
use crate::arch::PtRegs;
use crate::error::{Error, Kind};
use crate::percpu::PerCpuCounter;
use crate::trace::kprobe::{self, Kprobe, KprobeHandler};
use crate::trace::kretprobe::{self, KretprobeHandler, RetInstance};
use crate::trace::perf::{self, PerfHandler, Sample};
use crate::trace::tracepoint::{self, TracepointHandler};
use ktrace_bpf_platform::PerfEventData;
use ktrace_kprobe::TextAddr;

/// Sampling frequency of `perf_event` programs (bpftrace's `profile:hz:99`).
pub const PERF_SAMPLE_HZ: u32 = 99;

/// What to undo on detach.
enum Handle {
    Kprobe(u32),
    Kretprobe(u32),
    Tracepoint(u32),
    Perf(u32),
}

/// Where a link's hit count comes from.
enum Hits {
    /// A counter of its own, which its handler adds to.
    Own(Arc<PerCpuCounter>),
    /// The kprobe's own count of its pre handler's runs: a kprobe link's
    /// handler is the probe's only one, so it runs exactly once per hit the
    /// probe counts, and a second counter would only add an add per hit.
    Kprobe(Arc<Kprobe>),
}

/// A program attached to one point.
pub struct Link {
    pub id: u32,
    pub prog: Arc<Program>,
    pub target: LinkTarget,
    pub order: u32,
    hits: Hits,
    handle: Handle,
}

impl Link {
    /// The listing the host shows.
    pub fn info(&self) -> LinkInfo {
        LinkInfo {
            id: self.id,
            prog: self.prog.id,
            target: self.target.clone(),
            hits: match &self.hits {
                Hits::Own(c) => c.sum(),
                Hits::Kprobe(k) => k.hits(),
            },
            order: self.order,
        }
    }
}

/// Runs `prog` on a `pt_regs` context (kprobes and kretprobes).
/// The frame itself is the context, without a copy (programs only read
/// their context, see `Program::run`).
#[inline]
fn run_on_regs(prog: &Program, regs: &PtRegs, func_ip: u64) {
    prog.run(
        crate::arch::regs_bytes(regs),
        &HitInfo {
            func_ip,
            rip: regs.rip,
            rbp: regs.rbp,
        },
    );
}

/// Counts no hits itself: the link reads the kprobe's count ([`Hits`]).
struct BpfKprobe {
    prog: Arc<Program>,
    func: u64,
}

impl KprobeHandler for BpfKprobe {
    fn pre(&self, regs: &mut PtRegs) {
        run_on_regs(&self.prog, regs, self.func);
    }
    fn kind(&self) -> &'static str {
        "bpf"
    }
    fn missed(&self) {
        self.prog.count_miss();
    }
}

struct BpfKretprobe {
    prog: Arc<Program>,
    hits: Arc<PerCpuCounter>,
}

impl KretprobeHandler for BpfKretprobe {
    fn ret(&self, regs: &mut PtRegs, inst: &RetInstance) {
        self.hits.add(1);
        run_on_regs(&self.prog, regs, inst.func);
    }
    fn kind(&self) -> &'static str {
        "bpf"
    }
    fn missed(&self) {
        self.prog.count_miss();
    }
}

struct BpfTracepoint {
    prog: Arc<Program>,
    hits: Arc<PerCpuCounter>,
}

impl TracepointHandler for BpfTracepoint {
    fn event(&self, record: &[u8], regs: &PtRegs) {
        self.hits.add(1);
        // The record itself is the context, without a copy: programs only
        // read their context (see `Program::run`). A record of another size
        // than the program was verified for is a miss (`run` checks it).
        self.prog.run(
            record,
            &HitInfo {
                func_ip: 0,
                rip: regs.rip,
                rbp: regs.rbp,
            },
        );
    }
    fn kind(&self) -> &'static str {
        "bpf"
    }
    fn missed(&self) {
        self.prog.count_miss();
    }
}

struct BpfPerf {
    prog: Arc<Program>,
    hits: Arc<PerCpuCounter>,
    period_ns: u64,
}

impl PerfHandler for BpfPerf {
    fn sample(&self, sample: &Sample, regs: &PtRegs) {
        let ctx = PerfEventData {
            regs: *regs,
            sample_period: self.period_ns,
            addr: 0,
        }
        .to_bytes();
        self.hits.add(1);
        self.prog.run(
            &ctx,
            &HitInfo {
                func_ip: 0,
                rip: sample.ip,
                rbp: regs.rbp,
            },
        );
    }
    fn missed(&self) {
        self.prog.count_miss();
    }
}

/// Checks a host-resolved kprobe point against `ksyms`.
pub fn check_point(p: &KprobePoint) -> Result<(), Error> {
    if !crate::mm::is_kernel_text(p.address) {
        return Err(Error::new(
            Kind::Invalid,
            format!("{:#x} is not in kernel text", p.address),
        ));
    }
    match crate::ksyms::lookup(p.address) {
        Some((sym, off)) if sym.name == p.function && off == p.offset => Ok(()),
        Some((sym, off)) => Err(Error::new(Kind::Invalid,
            format!(
                "the host resolved `{}+{:#x}` to {:#x}, but this kernel has `{}+{:#x}` there (is the kernel ELF the one running?)",
                p.function, p.offset, p.address, sym.name, off
            ),
        )),
        None => Err(Error::new(Kind::Invalid, format!("{:#x} is in no function of this kernel", p.address))),
    }
}

fn same_point(a: &LinkTarget, b: &LinkTarget) -> bool {
    match (a, b) {
        (LinkTarget::Kprobe { address: x, .. }, LinkTarget::Kprobe { address: y, .. }) => x == y,
        (LinkTarget::Kretprobe { address: x, .. }, LinkTarget::Kretprobe { address: y, .. }) => {
            x == y
        }
        (
            LinkTarget::Tracepoint {
                category: c1,
                name: n1,
            },
            LinkTarget::Tracepoint {
                category: c2,
                name: n2,
            },
        ) => c1 == c2 && n1 == n2,
        (LinkTarget::PerfEvent { .. }, LinkTarget::PerfEvent { .. }) => true,
        _ => false,
    }
}

/// Attaches `prog` to one point of `target` (a kprobe target must hold
/// exactly one resolved point).
pub fn attach(
    rt: &mut Runtime,
    prog: &Arc<Program>,
    target: &AttachTarget,
    kretprobe: bool,
) -> Result<Link, Error> {
    let hits = Arc::new(PerCpuCounter::new());
    let mut counted_by: Option<Arc<Kprobe>> = None;
    let refused = |what: &str, e: &dyn core::fmt::Display| {
        Error::new(
            Kind::Invalid,
            format!("program `{}`: cannot attach to {what}: {e}", prog.name),
        )
    };
    let want_ctx = |t: ProgramType| -> Result<(), Error> {
        let ok = match t {
            ProgramType::Kprobe | ProgramType::Kretprobe => {
                matches!(prog.prog_type, ProgramType::Kprobe | ProgramType::Kretprobe)
            }
            other => prog.prog_type == other,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::new(
                Kind::Invalid,
                format!(
                    "program `{}` is a {:?} program and cannot attach to a {t:?} point",
                    prog.name, prog.prog_type
                ),
            ))
        }
    };
    let (target, handle) = match target {
        AttachTarget::Kprobe { spec, points } => {
            want_ctx(ProgramType::Kprobe)?;
            let [p] = &points[..] else {
                return Err(Error::new(Kind::Invalid,
                    format!("kprobe target `{spec}` must be resolved to exactly one address here, not {}", points.len()),
                ));
            };
            check_point(p)?;
            if kretprobe {
                if p.offset != 0 {
                    return Err(Error::new(
                        Kind::Invalid,
                        format!(
                            "a kretprobe needs a function entry; `{}+{:#x}` is not one",
                            p.function, p.offset
                        ),
                    ));
                }
                let h = Arc::new(BpfKretprobe {
                    prog: prog.clone(),
                    hits: hits.clone(),
                });
                let rp = kretprobe::register(TextAddr(p.address), 0, h)
                    .map_err(|e| refused(&p.function, &e))?;
                (
                    LinkTarget::Kretprobe {
                        address: p.address,
                        function: p.function.clone(),
                    },
                    Handle::Kretprobe(rp.id()),
                )
            } else {
                let h = Arc::new(BpfKprobe {
                    prog: prog.clone(),
                    func: p.address - p.offset,
                });
                let kp = kprobe::register(TextAddr(p.address), h)
                    .map_err(|e| refused(&p.function, &e))?;
                let id = kp.id();
                counted_by = Some(kp);
                (
                    LinkTarget::Kprobe {
                        address: p.address,
                        function: p.function.clone(),
                        offset: p.offset,
                    },
                    Handle::Kprobe(id),
                )
            }
        }
        AttachTarget::Tracepoint { category, name } => {
            want_ctx(ProgramType::Tracepoint)?;
            if prog.attach
                != (AttachTarget::Tracepoint {
                    category: category.clone(),
                    name: name.clone(),
                })
            {
                return Err(Error::new(
                    Kind::Invalid,
                    format!(
                        "program `{}` was verified for {:?}, not {category}:{name}",
                        prog.name, prog.attach
                    ),
                ));
            }
            let full = format!("{category}:{name}");
            let h = Arc::new(BpfTracepoint {
                prog: prog.clone(),
                hits: hits.clone(),
            });
            let id = tracepoint::attach(&full, h).map_err(|e| refused(&full, &e))?;
            (
                LinkTarget::Tracepoint {
                    category: category.clone(),
                    name: name.clone(),
                },
                Handle::Tracepoint(id),
            )
        }
        AttachTarget::PerfEvent | AttachTarget::PerfEventHz { .. } => {
            want_ctx(ProgramType::PerfEvent)?;
            let hz = match target {
                AttachTarget::PerfEventHz { sample_hz } => *sample_hz,
                _ => PERF_SAMPLE_HZ,
            };
            // `perf::open` refuses a rate the timer cannot run at.
            let id = perf::open(&PerfEvent::Sampling {
                freq_hz: hz,
                max_stack: 32,
            })
            .map_err(|e| refused("the sampling timer", &e))?;
            let h = Arc::new(BpfPerf {
                prog: prog.clone(),
                hits: hits.clone(),
                period_ns: 1_000_000_000 / u64::from(hz),
            });
            if let Err(e) = perf::attach(id, h).and_then(|()| perf::enable(id)) {
                let _ = perf::close(id);
                return Err(refused("the sampling timer", &e));
            }
            (LinkTarget::PerfEvent { sample_hz: hz }, Handle::Perf(id))
        }
    };
    let order = rt
        .links
        .values()
        .filter(|l| same_point(&l.target, &target))
        .count() as u32;
    Ok(Link {
        id: rt.id(),
        prog: prog.clone(),
        target,
        order,
        hits: match counted_by {
            Some(kp) => Hits::Kprobe(kp),
            None => Hits::Own(hits),
        },
        handle,
    })
}

/// Attaches `prog` to what its section names: every resolved point of a
/// kprobe glob, the tracepoint, or the perf event.
pub fn attach_section(rt: &mut Runtime, prog: &Arc<Program>) -> Result<Vec<Link>, Error> {
    let kret = prog.prog_type == ProgramType::Kretprobe;
    let target = prog.attach.clone();
    match &target {
        AttachTarget::Kprobe { spec, points } if points.is_empty() => Err(Error::new(
            Kind::Invalid,
            format!(
                "program `{}`: kprobe target `{spec}` was not resolved by the host",
                prog.name
            ),
        )),
        AttachTarget::Kprobe { spec, points } => {
            let mut links: Vec<Link> = Vec::new();
            for p in points {
                let one = AttachTarget::Kprobe {
                    spec: spec.clone(),
                    points: alloc::vec![p.clone()],
                };
                match attach(rt, prog, &one, kret) {
                    Ok(l) => links.push(l),
                    Err(e) => {
                        for l in links {
                            detach(l);
                        }
                        return Err(e);
                    }
                }
            }
            Ok(links)
        }
        _ => Ok(alloc::vec![attach(rt, prog, &target, kret)?]),
    }
}

/// Detaches a link: after this returns no CPU runs the program through it.
pub fn detach(link: Link) {
    let r = match link.handle {
        Handle::Kprobe(id) => kprobe::unregister(id).map_err(|e| format!("{e}")),
        Handle::Kretprobe(id) => kretprobe::unregister(id).map_err(|e| format!("{e}")),
        Handle::Tracepoint(id) => tracepoint::detach(id).map_err(|e| format!("{e}")),
        Handle::Perf(id) => perf::close(id).map_err(|e| format!("{e}")),
    };
    if let Err(e) = r {
        log::warn!(
            "bpf: detaching link {} of program {}: {e}",
            link.id,
            link.prog.id
        );
    }
}
