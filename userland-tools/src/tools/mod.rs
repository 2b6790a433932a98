//! What the tools (`biolatency`, `biosnoop`, `kperf`, and `ktrace demo`
//! built on them) know of their probes and data: the probes embedded at
//! build time, and one module per tool that reads and shapes what its probe
//! or perf events collect, with its arguments and `run` in a submodule
//! (`biolatency::run`, `biosnoop::run`; `kperf::{list, stat, record,
//! report}`) so that the binaries only parse and dispatch. Loading and
//! removing a probe is in [`crate::kernel`], running a workload in
//! [`crate::workload`].

pub mod biolatency;
pub mod biosnoop;
pub mod kperf;

use anyhow::bail;

/// Bytes aligned for the ELF parser, which reads headers in place
/// (`include_bytes!` alone guarantees no alignment).
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

/// The `biolatency` probe object, built from `examples/biolatency` when
/// this crate was compiled (empty when that build failed).
static BIOLATENCY_OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/biolatency.bpf.o"
)));
const BIOLATENCY_ERROR: &str = include_str!(concat!(env!("OUT_DIR"), "/biolatency.error"));
/// The `biosnoop` probe object, from `examples/biosnoop`.
static BIOSNOOP_OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/biosnoop.bpf.o")));
const BIOSNOOP_ERROR: &str = include_str!(concat!(env!("OUT_DIR"), "/biosnoop.error"));

/// The embedded object of probe `name` (`biolatency` or `biosnoop`), or
/// why it is missing and how to get it.
pub fn embedded_probe(name: &str) -> anyhow::Result<&'static [u8]> {
    let (object, error) = match name {
        "biolatency" => (&BIOLATENCY_OBJECT.0, BIOLATENCY_ERROR),
        "biosnoop" => (&BIOSNOOP_OBJECT.0, BIOSNOOP_ERROR),
        other => bail!("no embedded probe `{other}`"),
    };
    if object.is_empty() {
        bail!(
            "this build of the tools has no `{name}` probe: building examples/{name} failed when \
             the tools were compiled:\n  {}\nInstall the LLVM `llc` matching rustc's LLVM \
             (`bash scripts/setup.sh` does, e.g. llc-22 from Debian's llvm-22 package), then \
             rebuild the tools (`cargo build -p ktrace-tools`); or build the probe yourself with \
             `ktrace build examples/{name}` and load it with `ktrace load`.",
            error.trim()
        );
    }
    Ok(object)
}
