//! Working with a VM's kernel, for `ktrace` subcommands and the tools
//! alike: connecting, loading a probe with its settings and removing it
//! again, and naming disks.

use anyhow::{bail, Context as _};
use ktrace_abi::bpf::{LinkInfo, LoadOptions, MapInfo, ProgInfo};
use probe_sdk::client::{Client, ConnectOptions};
use probe_sdk::runtime::{Runtime, RuntimeError};
use probe_sdk::vm::Vm;

/// Connects to VM `vm_name` as `who`, saying how to start one when none runs.
pub fn connect(vm_name: &str, who: &str) -> anyhow::Result<Client> {
    let vm = Vm::attach(vm_name)?;
    Ok(vm.connect(&ConnectOptions {
        client_name: who.into(),
        ..ConnectOptions::default()
    })?)
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
