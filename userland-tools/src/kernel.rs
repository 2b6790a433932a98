//! Working with a VM's kernel, for `ktrace` subcommands and the tools
//! alike: finding the kernel ELF to index, connecting, loading a probe with
//! its settings and removing it again, and naming disks.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use ktrace_abi::bpf::{LinkInfo, LoadOptions, MapInfo, ProgInfo};
use probe_sdk::client::{Client, ConnectOptions};
use probe_sdk::kernel_image;
use probe_sdk::runtime::{Runtime, RuntimeError};
use probe_sdk::vm::Vm;

/// Environment variable naming the kernel ELF.
pub const KERNEL_ENV: &str = "KTRACE_KERNEL";
/// Where the kernel build leaves its ELF, under the workspace root.
pub const KERNEL_ELF: &str = "target/kernel/kernel/kernel";

/// The kernel ELF to index: `--kernel`, else `$KTRACE_KERNEL`, else the
/// kernel build of the ktrace workspace around the current directory, else
/// that of the workspace these tools were built from. In a workspace the
/// build is looked for in cargo's target directory (`$CARGO_TARGET_DIR`,
/// where `ktrace vm start` builds when it is set) and then in `target/`.
pub fn kernel_elf(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(KERNEL_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let candidates = kernel_elf_candidates(&cwd, &kernel_image::workspace_root());
    if let Some(elf) = candidates.iter().find(|p| p.is_file()) {
        return Ok(elf.clone());
    }
    let tried: Vec<String> = candidates
        .iter()
        .map(|p| format!("\n  {}", p.display()))
        .collect();
    bail!(
        "no kernel ELF found; tried:{}\nstart a VM once (`ktrace vm start` builds the kernel), \
         pass --kernel <elf>, or set {KERNEL_ENV}",
        tried.concat()
    )
}

/// Where the kernel build may be, in order: for the ktrace workspace
/// around `cwd`, then for `built_from`, its build in cargo's target
/// directory ([`kernel_image::kernel_elf_path`]) and in `<root>/target`.
fn kernel_elf_candidates(cwd: &Path, built_from: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for root in workspace_root(cwd)
        .into_iter()
        .chain([built_from.to_path_buf()])
    {
        for elf in [kernel_image::kernel_elf_path(&root), root.join(KERNEL_ELF)] {
            if !out.contains(&elf) {
                out.push(elf);
            }
        }
    }
    out
}

/// The nearest directory at or above `start` that holds the ktrace
/// workspace (the kernel's own manifest, `kernel/image/Cargo.toml`, is
/// there; a probe crate's `[workspace]` is not enough).
pub fn workspace_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join("kernel/image/Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

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
/// value) into its maps, then attaches every program but those named in
/// `unattached` where its section says. Settings are written before
/// attaching so no event sees defaults.
pub fn load_probe(
    rt: &mut Runtime,
    name: &str,
    bytes: &[u8],
    settings: &[(&str, Vec<u8>, Vec<u8>)],
    unattached: &[&str],
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
            if unattached.contains(&prog.as_str()) {
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_workspace_root_upward() {
        let dir = std::env::temp_dir().join(format!("ktrace-symbols-cli-{}", std::process::id()));
        // A probe crate is a workspace of its own: not the one sought.
        let nested = dir.join("examples/probe/src");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::create_dir_all(dir.join("kernel/image")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
        std::fs::write(dir.join("kernel/image/Cargo.toml"), "[package]\n").unwrap();
        std::fs::write(dir.join("examples/probe/Cargo.toml"), "[workspace]\n").unwrap();
        assert_eq!(workspace_root(&nested), Some(dir.clone()));
        let elsewhere = std::env::temp_dir();
        assert_eq!(workspace_root(&elsewhere.join("nowhere")), None);
        // Outside any workspace, the one the tools came from is searched.
        let candidates = kernel_elf_candidates(&elsewhere, &dir);
        assert!(candidates.contains(&dir.join(KERNEL_ELF)), "{candidates:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
