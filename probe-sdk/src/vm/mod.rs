//! Running the ktrace kernel in QEMU: start, status, stop, list, console.
//!
//! Each VM has a name (default [`DEFAULT_NAME`]) and a directory under the
//! per-user runtime directory ([`runtime_root`]) holding:
//!
//! | file            | what                                                 |
//! |-----------------|------------------------------------------------------|
//! | `qemu.pid`      | QEMU's pid (QEMU runs in its own session)            |
//! | `ctl.sock`      | the first control session, served by QEMU            |
//! | `ctlN.sock`     | control sessions 2..[`SESSIONS`] (virtio-serial)     |
//! | `ctl*.sock.lock`| held (flock) by the client using that session        |
//! | `console.log`   | the kernel console (COM1)                            |
//! | `qemu.cmdline`  | the QEMU command line, one argument per line         |
//! | `qemu.log`      | QEMU's own stdout and stderr                         |
//!
//! [`Vm::start`] boots and classifies the outcome: **ready** (the kernel
//! answered the handshake), **panicked** (the console shows a panic or
//! fatal-exception report, returned as a [`PanicReport`]), **hung** (no
//! answer before the timeout; the console tail is returned), or QEMU exited
//! for another reason.
//!
//! | module | what |
//! |---|---|
//! | `qemu` | [`VmConfig`], QEMU's arguments ([`qemu_args`]), finding QEMU, disk images |
//! | `lifecycle` | [`Vm`]: start (boot and classify), attach, connect, stop, kill |
//! | `report` | [`ExitReport`], [`PanicReport`]: QEMU's exit and the console's reports |
//! | `registry` | [`VmPaths`], [`status`], [`list`], [`remove_state`], [`prune_stopped`], [`console`] |

mod lifecycle;
mod qemu;
mod registry;
mod report;

pub use lifecycle::{BootInfo, StopHow, StopReport, Vm};
pub use qemu::{
    check_cpus, ensure_disk, find_in_path, parse_size, qemu_args, ControlLink, VmConfig,
};
pub use registry::{
    check_name, console, list, prune_stopped, remove_state, runtime_root, status, VmEntry, VmPaths,
    VmState,
};
pub use report::{
    parse_frame, tail_lines, BacktraceFrame, ExitKind, ExitReport, PanicReport, ReportKind,
    END_OF_REPORT,
};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::ClientError;
use crate::kernel_image::ImageError;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// Debian package that provides [`QEMU`].
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// Name of the VM commands use when none is given.
pub const DEFAULT_NAME: &str = "default";
/// Default size of a disk image `--disk` creates.
pub const DEFAULT_DISK_SIZE: u64 = 64 << 20;
/// Default time from QEMU's start to the handshake answer.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Guest memory.
pub const DEFAULT_MEMORY: &str = "256M";
/// Virtual CPUs a VM gets unless told otherwise: two, as every kernel a
/// user traces has several (`--cpus 1` for a uniprocessor).
pub const DEFAULT_CPUS: u32 = 2;

/// Errors of VM management.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU is not installed.
    #[error("{QEMU} not found in PATH: install the Debian package {QEMU_PACKAGE} (apt-get install {QEMU_PACKAGE})")]
    QemuMissing,
    #[error("invalid VM name {0:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'")]
    BadName(String),
    #[error(
        "VM {name} is already running (pid {pid}); stop it first with `ktrace vm stop --vm {name}`"
    )]
    AlreadyRunning { name: String, pid: u32 },
    #[error(
        "VM {name} is not running (start it with `ktrace vm start{}`)",
        name_flag(name)
    )]
    NotRunning { name: String },
    #[error("invalid size {0:?}: expected a number of bytes with an optional K, M, G or T suffix, e.g. 64M")]
    BadSize(String),
    #[error("invalid CPU count {0}: expected 1 to {max} (the kernel's limit)", max = ktrace_abi::vm::MAX_CPUS)]
    BadCpuCount(u32),
    #[error("disk {}: {reason}", path.display())]
    BadDisk { path: PathBuf, reason: String },
    #[error("all {0} control sessions of the VM are in use by other clients (ktrace commands, tools or tests); wait for one to finish")]
    Busy(usize),
    #[error("socket path {} is too long for a Unix socket ({len} bytes, at most 107); set XDG_RUNTIME_DIR to a shorter directory", path.display())]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("cannot start {QEMU}: {0}")]
    Spawn(#[source] io::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The kernel panicked or took a fatal exception while booting.
    #[error("VM {name} panicked while booting (console: {}):\n{report}", console.display())]
    Panicked {
        name: String,
        console: PathBuf,
        report: PanicReport,
    },
    /// No handshake answer before the timeout; QEMU was killed.
    #[error("VM {name} hung: no handshake answer within {:.1} s; QEMU was stopped. Last console lines ({}):\n{tail}", timeout.as_secs_f64(), console.display())]
    Hung {
        name: String,
        timeout: Duration,
        console: PathBuf,
        tail: String,
    },
    /// QEMU exited before the handshake without a panic report.
    #[error("QEMU exited ({status}) before the kernel answered the handshake. Last console lines ({}):\n{tail}{qemu_output}", console.display())]
    Exited {
        status: String,
        console: PathBuf,
        tail: String,
        qemu_output: String,
    },
}

fn name_flag(name: &str) -> String {
    if name == DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {name}")
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VmError + '_ {
    move |source| VmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Result of VM operations.
pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// Control sessions a VM offers on virtio-serial (the kernel's
/// `control::MAX_SESSIONS`): one client each, at the same time.
pub const SESSIONS: usize = 4;

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
