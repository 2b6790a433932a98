//! Pieces shared by `biolatency`, `biosnoop`, `kperf` and `ktrace demo`:
//! the probes embedded at build time, loading one into the kernel with its
//! settings and tearing it down again, and running a workload while
//! pushed events keep arriving.

pub mod biolatency;
pub mod biosnoop;
pub mod kperf;

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ktrace_abi::block::{
    BlockRequest, BlockResponse, WorkloadProgress, WorkloadReport, WorkloadSpec,
};
use ktrace_abi::bpf::{BpfResponse, EventBatch, LinkInfo, LoadOptions, MapInfo, ProgInfo};
use ktrace_abi::{Request, Response};
use probe_sdk::client::Client;
use probe_sdk::runtime::{Runtime, RuntimeError};

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

/// A probe loaded into the kernel: what was created, to read and remove.
#[derive(Debug, Clone)]
pub struct LoadedProbe {
    pub maps: Vec<MapInfo>,
    pub programs: Vec<ProgInfo>,
    pub links: Vec<LinkInfo>,
}

impl LoadedProbe {
    /// The map named `name`.
    pub fn map(&self, name: &str) -> anyhow::Result<&MapInfo> {
        self.maps
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("the probe has no map `{name}`"))
    }

    /// Detaches every link, unloads every program and frees every map.
    /// Keeps going past errors so as much as possible is removed; returns
    /// the first.
    pub fn remove(&self, rt: &mut Runtime) -> anyhow::Result<()> {
        let mut first: Option<anyhow::Error> = None;
        let mut keep = |r: Result<(), RuntimeError>, what: String| {
            if let Err(e) = r {
                first.get_or_insert_with(|| anyhow::Error::new(e).context(what));
            }
        };
        for l in &self.links {
            keep(rt.detach(l.id), format!("detaching link {}", l.id));
        }
        for p in &self.programs {
            keep(rt.prog_unload(p.id), format!("unloading program {}", p.id));
        }
        for m in &self.maps {
            keep(rt.map_free(m.id), format!("freeing map {}", m.id));
        }
        first.map_or(Ok(()), Err)
    }
}

/// Loads the object `bytes` as `name`, writes `settings` (map name, key,
/// value) into its maps, then attaches every program where its section
/// says. Settings are written before attaching so no event sees defaults.
pub fn load_probe(
    rt: &mut Runtime,
    name: &str,
    bytes: &[u8],
    settings: &[(&str, Vec<u8>, Vec<u8>)],
) -> anyhow::Result<LoadedProbe> {
    let object = probe_sdk::object::parse(bytes)
        .with_context(|| format!("the embedded `{name}` probe is not a usable eBPF object"))?;
    let targets: Vec<_> = object
        .programs
        .iter()
        .map(|p| (p.name.clone(), p.attach.clone()))
        .collect();
    let loaded = rt
        .load_object(name, object.into_load(), false, LoadOptions::default())
        .map_err(|e| anyhow::Error::new(e).context(format!("loading the `{name}` probe")))?;
    let mut probe = LoadedProbe {
        maps: loaded.maps,
        programs: loaded.programs,
        links: Vec::new(),
    };
    let result = (|| -> anyhow::Result<()> {
        for (map, key, value) in settings {
            let id = probe.map(map)?.id;
            rt.map_update(id, key, value, 0)
                .with_context(|| format!("setting map `{map}`"))?;
        }
        for (prog, target) in targets {
            let Some(p) = probe.programs.iter().find(|p| p.name == prog) else {
                bail!("the kernel did not report program `{prog}` as loaded");
            };
            let link = rt
                .attach(p.id, target, false)
                .with_context(|| format!("attaching program `{prog}`"))?;
            probe.links.push(link);
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = probe.remove(rt);
        return Err(e);
    }
    Ok(probe)
}

/// Runs a workload in the kernel and returns its report, handing every
/// pushed event batch that arrives meanwhile to `on_events` and every
/// progress frame to `on_progress`.
pub fn run_workload_with_events(
    client: &mut Client,
    spec: &WorkloadSpec,
    mut on_progress: impl FnMut(&WorkloadProgress),
    mut on_events: impl FnMut(EventBatch),
) -> anyhow::Result<WorkloadReport> {
    let id = client.send_request(&Request::Block(BlockRequest::Workload(spec.clone())))?;
    let budget = match spec.limit {
        ktrace_abi::block::WorkloadLimit::TimeMs(ms) => {
            Duration::from_millis(ms) + Duration::from_secs(120)
        }
        ktrace_abi::block::WorkloadLimit::Count(_) => Duration::from_secs(3600),
    };
    let deadline = Instant::now() + budget;
    let mut told = false;
    loop {
        // The kernel runs a workload to its end (there is no request to
        // cut it short) and answers nothing else on this channel until
        // then, so a tool asked to stop waits for the report before it can
        // remove its probe.
        if crate::stop::stop_requested() && !crate::stop::stdout_closed() && !told {
            errln!(
                "stopping when the in-kernel workload ends ({}); a second Ctrl-C quits at once",
                match spec.limit {
                    ktrace_abi::block::WorkloadLimit::Count(n) => format!("{n} I/Os"),
                    ktrace_abi::block::WorkloadLimit::TimeMs(ms) => format!("{ms} ms"),
                }
            );
            told = true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the workload did not finish within {} s", budget.as_secs());
        }
        let Some(env) = client.recv_any(left.min(Duration::from_secs(1)))? else {
            continue;
        };
        match (env.id == id, env.body) {
            (_, Response::Block(BlockResponse::Progress(p))) => on_progress(&p),
            (_, Response::Bpf(BpfResponse::Events(b))) => on_events(b),
            (true, Response::Block(BlockResponse::Workload(r))) => return Ok(r),
            (true, Response::Error(reply)) => {
                bail!("the kernel refused the workload: {}", reply.message)
            }
            (true, other) => bail!("unexpected answer to the workload: {other:?}"),
            (false, _) => {}
        }
    }
}

/// Parses `ktrace workload` arguments given after `--`.
pub fn workload_spec(args: &[String]) -> anyhow::Result<WorkloadSpec> {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    #[command(name = "workload", no_binary_name = true)]
    struct W {
        #[command(flatten)]
        args: crate::cmd::workload::Args,
    }
    let w = W::try_parse_from(args).map_err(|e| {
        anyhow::anyhow!(
            "bad workload arguments after `--` (those of `ktrace workload`):\n{}",
            e.render().to_string().trim_end()
        )
    })?;
    crate::cmd::workload::spec_from_args(&w.args)
}

/// `dev` of trace records (`major << 20 | minor`) → device name, from the
/// kernel's disk list; unknown devices print as `major:minor`.
pub fn disk_names(client: &mut Client) -> anyhow::Result<Vec<(u32, String)>> {
    Ok(client
        .disk_stats()?
        .into_iter()
        .map(|d| ((d.major << 20) | d.minor, d.name))
        .collect())
}

/// The `dev` of disk `name` (`vda` or `/dev/vda`) in `names`, for `-d
/// DISK`; an unknown name is refused with the disks there are.
pub fn disk_dev(names: &[(u32, String)], name: &str) -> anyhow::Result<u32> {
    let wanted = name.strip_prefix("/dev/").unwrap_or(name);
    if let Some((dev, _)) = names.iter().find(|(_, n)| n == wanted) {
        return Ok(*dev);
    }
    let mut known: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
    known.sort_unstable();
    bail!(
        "no disk `{name}` (disks: {}; see `ktrace disk stats`)",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// The name of `dev` in `names`.
pub fn disk_name(names: &[(u32, String)], dev: u32) -> String {
    names
        .iter()
        .find(|(d, _)| *d == dev)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| format!("{}:{}", dev >> 20, dev & 0xfffff))
}

/// A NUL-padded byte string (`rwbs`, `comm`) as text.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Connects to VM `vm_name` as `who`, saying how to start one when none runs.
pub fn connect(vm_name: &str, who: &str) -> anyhow::Result<Client> {
    crate::cmd::bpf_common::connect(vm_name, who)
}
