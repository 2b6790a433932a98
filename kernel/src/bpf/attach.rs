//! Links: a program attached to a kprobe, kretprobe, tracepoint or perf
//! event.
//!
//! Kprobe targets the host resolved are re-checked against the kernel's
//! own symbol table: the address must lie in kernel text, inside the named
//! function at the stated offset. The attach points themselves come from
//! the kernel's trace subsystem.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;

use ktrace_abi::bpf::{AttachTarget, KprobePoint, LinkInfo, LinkTarget, ProgramType};
use ktrace_abi::{ErrorCode, Response};

use super::prog::Program;
use super::{error, Runtime};

/// A program attached to one point.
pub struct Link {
    pub id: u32,
    pub prog: Arc<Program>,
    pub target: LinkTarget,
    pub order: u32,
}

impl Link {
    /// The listing the host shows.
    pub fn info(&self) -> LinkInfo {
        LinkInfo {
            id: self.id,
            prog: self.prog.id,
            target: self.target.clone(),
            hits: 0,
            order: self.order,
        }
    }
}

/// Checks a host-resolved kprobe point against `ksyms`.
pub fn check_point(p: &KprobePoint) -> Result<(), Response> {
    if !crate::mm::is_kernel_text(p.address) {
        return Err(error(
            ErrorCode::InvalidArgument,
            -22,
            format!("{:#x} is not in kernel text", p.address),
        ));
    }
    match crate::ksyms::lookup(p.address) {
        Some((sym, off)) if sym.name == p.function && off == p.offset => Ok(()),
        Some((sym, off)) => Err(error(
            ErrorCode::InvalidArgument,
            -22,
            format!(
                "the host resolved `{}+{:#x}` to {:#x}, but this kernel has `{}+{:#x}` there (is the kernel ELF the one running?)",
                p.function, p.offset, p.address, sym.name, off
            ),
        )),
        None => Err(error(ErrorCode::InvalidArgument, -22, format!("{:#x} is in no function of this kernel", p.address))),
    }
}

/// Attaches `prog` where `target` says.
pub fn attach(
    _rt: &mut Runtime,
    prog: &Arc<Program>,
    target: &AttachTarget,
    _kretprobe: bool,
) -> Result<Link, Response> {
    if let AttachTarget::Kprobe { points, .. } = target {
        for p in points {
            check_point(p)?;
        }
    }
    Err(error(
        ErrorCode::NotSupported,
        -95,
        format!(
            "program `{}`: this kernel has no attach points yet ({target:?})",
            prog.name
        ),
    ))
}

/// Attaches `prog` to what its section names: every resolved point of a
/// kprobe glob, the tracepoint, or the perf event.
pub fn attach_section(rt: &mut Runtime, prog: &Arc<Program>) -> Result<Vec<Link>, Response> {
    let kret = prog.prog_type == ProgramType::Kretprobe;
    let target = prog.attach.clone();
    match &target {
        AttachTarget::Kprobe { spec, points } if points.is_empty() => Err(error(
            ErrorCode::InvalidArgument,
            -22,
            format!(
                "program `{}`: kprobe target `{spec}` was not resolved by the host",
                prog.name
            ),
        )),
        AttachTarget::Kprobe { spec, points } => {
            let mut links = Vec::new();
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
pub fn detach(_link: Link) {}
