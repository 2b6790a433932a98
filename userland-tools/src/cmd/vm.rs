//! `ktrace vm`: start, inspect and stop the QEMU VM that runs the kernel.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use probe_sdk::client::ConnectOptions;
use probe_sdk::vm::{self, StopHow, Vm, VmConfig, VmState};

/// Arguments of `ktrace vm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: VmCommand,
}

/// The `ktrace vm` subcommands.
#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Build the kernel if needed, boot it in QEMU and wait for the handshake.
    Start(StartArgs),
    /// Whether the VM runs, and what its kernel says.
    Status(NameArgs),
    /// Shut the VM down (and kill QEMU if it does not exit), then remove
    /// its console and logs unless the kernel had panicked.
    Stop(StopArgs),
    /// Print the kernel console.
    Console(ConsoleArgs),
    /// List the VMs of this user: running ones, and stopped ones whose
    /// state is left (removed a day after they stopped).
    List,
}

/// The `--name` of `vm status`, as `vm start --name`.
#[derive(clap::Args, Debug)]
pub struct NameArgs {
    /// Name of the VM (default: the global --vm, i.e. `default`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// Arguments of `ktrace vm start`.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Name of the VM (default: the global --vm, i.e. `default`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Raw disk image to attach as a virtio-blk device (repeatable);
    /// created sparse if missing.
    #[arg(long = "disk", value_name = "FILE")]
    pub disks: Vec<PathBuf>,
    /// Size of disk images that get created, e.g. 64M or 1G.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub disk_size: String,
    /// Seconds to wait for the kernel to answer the handshake.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub timeout: f64,
    /// Boot this kernel ELF instead of building the workspace's kernel.
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Virtual CPUs, 1 to 16; several run in parallel on host threads
    /// (QEMU's multi-threaded TCG).
    #[arg(long, value_name = "N", default_value_t = vm::DEFAULT_CPUS)]
    pub cpus: u32,
    /// Kernel command line.
    #[arg(long, value_name = "CMDLINE")]
    pub append: Option<String>,
    /// Boot the fuzzing build: the kernel instrumented with edge coverage
    /// per control session (built in its own target directory; the same
    /// as `KTRACE_COVERAGE=1`). See docs/fuzz.md.
    #[arg(long, conflicts_with = "kernel")]
    pub coverage: bool,
}

/// Arguments of `ktrace vm stop`.
#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Name of the VM (default: the global --vm, i.e. `default`), as
    /// `vm start --name`.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Seconds to wait for a clean shutdown before terminating QEMU.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,
}

/// Arguments of `ktrace vm console`.
#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    /// Name of the VM (default: the global --vm, i.e. `default`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Keep printing what the kernel writes until the VM stops.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    if !value.is_finite() || value <= 0.0 || value > 86_400.0 {
        bail!("invalid {what} {value}: expected seconds between 0 and 86400");
    }
    Ok(Duration::from_secs_f64(value))
}

/// Run `ktrace vm`; `vm_name` is the global `--vm`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    match args.command {
        VmCommand::Start(a) => start(a, vm_name),
        VmCommand::Status(a) => status(a.name.as_deref().unwrap_or(vm_name)),
        VmCommand::Stop(a) => {
            let name = a.name.clone().unwrap_or_else(|| vm_name.to_string());
            stop(a, &name)
        }
        VmCommand::Console(a) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let name = a.name.as_deref().unwrap_or(vm_name);
            Ok(vm::console(name, a.follow, &mut out)?)
        }
        VmCommand::List => list(),
    }
}

fn start(a: StartArgs, vm_name: &str) -> anyhow::Result<()> {
    let mut cfg = VmConfig::new(a.name.as_deref().unwrap_or(vm_name));
    cfg.cpus = vm::check_cpus(a.cpus)?;
    cfg.disks = a.disks;
    cfg.disk_size = vm::parse_size(&a.disk_size)?;
    cfg.boot_timeout = seconds(a.timeout, "--timeout")?;
    cfg.kernel = a.kernel;
    if a.coverage {
        let flavor = probe_sdk::kernel_image::Flavor::Coverage;
        cfg.kernel = Some(probe_sdk::kernel_image::prepare_flavor(flavor, false)?.source);
    }
    cfg.append = a.append;
    let vm = Vm::start(&cfg)?;
    let Some(boot) = vm.boot_info() else {
        bail!("VM {} started without boot information", vm.name());
    };
    for disk in &boot.created_disks {
        outln!(
            "created disk {} ({} bytes, sparse)",
            disk.display(),
            cfg.disk_size
        );
    }
    outln!(
        "VM {} ready in {:.3} s (QEMU start to handshake): kernel {}, protocol {}, {} symbols embedded",
        vm.name(),
        boot.boot_time.as_secs_f64(),
        boot.hello.kernel_version,
        boot.hello.protocol_version,
        boot.image.symbols
    );
    outln!("  cpus    {}", cfg.cpus);
    outln!("  pid     {}", vm.pid());
    outln!("  console {}", vm.paths().console.display());
    outln!("  control {}", vm.paths().socket.display());
    Ok(())
}

fn status(vm_name: &str) -> anyhow::Result<()> {
    let entry = vm::status(vm_name)?;
    let VmState::Running { pid } = entry.state else {
        // A VM that died on its own leaves its console: say why it stopped.
        match vm::PanicReport::find(&entry.console()) {
            Some(report) => outln!("VM {vm_name}: stopped; the kernel had panicked:\n{report}"),
            None => outln!("VM {vm_name}: stopped"),
        }
        return Ok(());
    };
    outln!("VM {vm_name}: running (pid {pid})");
    outln!("  console {}", entry.paths.console.display());
    outln!("  control {}", entry.paths.socket.display());
    let opts = ConnectOptions {
        client_name: "ktrace vm status".into(),
        handshake_timeout: Duration::from_secs(3),
        ..ConnectOptions::default()
    };
    match Vm::attach(vm_name).and_then(|vm| vm.connect(&opts)) {
        Ok(client) => {
            if let Some(hello) = client.hello_reply() {
                outln!(
                    "  kernel  {} (protocol {}), up {:.3} s",
                    hello.kernel_version,
                    hello.protocol_version,
                    hello.uptime_ns as f64 / 1e9
                );
            }
        }
        Err(e) => outln!("  kernel  not answering: {e}"),
    }
    Ok(())
}

fn stop(a: StopArgs, vm_name: &str) -> anyhow::Result<()> {
    let timeout = seconds(a.timeout, "--timeout")?;
    let vm = Vm::attach(vm_name)?;
    let pid = vm.pid();
    let report = vm.stop(timeout);
    let how = match report.how {
        StopHow::Shutdown => "shut down cleanly",
        StopHow::Terminated => "did not shut down; QEMU terminated",
        StopHow::Killed => "did not shut down; QEMU killed",
    };
    outln!("VM {vm_name} (pid {pid}) {how}");
    if let Some(vm::ExitReport {
        kind: vm::ExitKind::Panicked(report),
        ..
    }) = report.exit
    {
        outln!("the kernel had panicked:\n{report}");
        // Kept for `vm status` and `vm console`, until `vm list` prunes it.
        return Ok(());
    }
    vm::remove_state(vm_name)?;
    Ok(())
}

/// How long the state of a stopped VM (its console above all, which says
/// why a VM died) stays listed before `vm list` removes it.
const KEEP_STOPPED: Duration = Duration::from_secs(24 * 3600);

fn list() -> anyhow::Result<()> {
    let pruned = vm::prune_stopped(KEEP_STOPPED)?;
    if !pruned.is_empty() {
        errln!(
            "removed the state of {} VM{} stopped more than a day ago: {}",
            pruned.len(),
            if pruned.len() == 1 { "" } else { "s" },
            pruned.join(", ")
        );
    }
    let vms = vm::list()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if vms.is_empty() {
        writeln!(out, "no VMs (start one with `ktrace vm start`)")?;
        return Ok(());
    }
    let width = vms.iter().map(|v| v.name.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:<width$}  {:<8}  PID", "NAME", "STATE").context("stdout")?;
    for v in vms {
        let (state, pid) = match v.state {
            VmState::Running { pid } => ("running", pid.to_string()),
            VmState::Stopped => ("stopped", "-".into()),
        };
        writeln!(out, "{:<width$}  {state:<8}  {pid}", v.name).context("stdout")?;
    }
    Ok(())
}
