//! Running the ktrace kernel in QEMU: start, status, stop, list, console.
//!
//! Each VM has a name (default [`DEFAULT_NAME`]) and a directory under the
//! per-user runtime directory ([`runtime_root`]) holding:
//!
//! | file            | what                                                 |
//! |-----------------|------------------------------------------------------|
//! | `qemu.pid`      | QEMU's pid (QEMU runs in its own session)            |
//! | `ctl.sock`      | the control channel (COM2), served by QEMU           |
//! | `console.log`   | the kernel console (COM1)                            |
//! | `qemu.cmdline`  | the QEMU command line, one argument per line         |
//! | `qemu.log`      | QEMU's own stdout and stderr                         |
//!
//! [`Vm::start`] boots and classifies the outcome: **ready** (the kernel
//! answered the handshake), **panicked** (the console shows a panic or
//! fatal-exception report, returned as a [`PanicReport`]), **hung** (no
//! answer before the timeout; the console tail is returned), or QEMU exited
//! for another reason.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ktrace_abi::vm::{qemu_exit_status, HelloReply, EXIT_EXCEPTION, EXIT_PANIC, EXIT_SHUTDOWN};

use crate::client::{Client, ClientError, ConnectOptions};
use crate::kernel_image::{self, ImageError, KernelImage};

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
/// How often `Hello` is re-sent while the kernel boots. Bytes that arrive
/// before the kernel has set up COM2 are lost, so the first `Hello` often
/// is; a short interval keeps that from adding to the boot time.
const HELLO_RETRY: Duration = Duration::from_millis(50);
/// How long to wait for the kernel's first console output before talking
/// to the control channel anyway.
const CONSOLE_GRACE: Duration = Duration::from_secs(3);

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

/// The per-user directory holding one subdirectory per VM:
/// `$XDG_RUNTIME_DIR/ktrace`, else `/tmp/ktrace-<uid>`.
pub fn runtime_root() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("ktrace"),
        // SAFETY: getuid has no preconditions and cannot fail.
        _ => PathBuf::from(format!("/tmp/ktrace-{}", unsafe { libc::getuid() })),
    }
}

/// Check a VM name (it becomes a directory name).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VmError::BadName(name.into()))
    }
}

/// Control sessions a VM offers on virtio-serial (the kernel's
/// `control::MAX_SESSIONS`): one client each, at the same time.
pub const SESSIONS: usize = 4;

/// The files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
    pub pid: PathBuf,
    /// The first control session's socket (the only one on COM2).
    pub socket: PathBuf,
    pub console: PathBuf,
    pub cmdline: PathBuf,
    pub qemu_log: PathBuf,
}

impl VmPaths {
    /// The files of VM `name` under `root`.
    pub fn new(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        Self {
            pid: dir.join("qemu.pid"),
            socket: dir.join("ctl.sock"),
            console: dir.join("console.log"),
            cmdline: dir.join("qemu.cmdline"),
            qemu_log: dir.join("qemu.log"),
            dir,
        }
    }

    /// The socket of control session `k` (`ctl.sock`, `ctl2.sock`, ...).
    pub fn session_socket(&self, k: usize) -> PathBuf {
        if k == 0 {
            self.socket.clone()
        } else {
            self.dir.join(format!("ctl{}.sock", k + 1))
        }
    }

    /// The lock file a client holds while it uses session `k`.
    fn session_lock(&self, k: usize) -> PathBuf {
        let mut p = self.session_socket(k).into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    }
}

/// Parse a size such as `64M`, `1G`, `4096` or `512KiB` (binary units).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(VmError::BadSize(text.into())),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| VmError::BadSize(text.into()))
}

/// Find an executable `name` in a `PATH`-style list.
pub fn find_in_path(name: &str, search_path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(search_path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// How to start a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    /// Kernel ELF to boot (its symbol table is embedded first); `None`
    /// builds the workspace's kernel (or uses `KTRACE_KERNEL`).
    pub kernel: Option<PathBuf>,
    /// Raw disk images, each attached as a virtio-blk device.
    pub disks: Vec<PathBuf>,
    /// Size of disk images that do not exist yet (created sparse).
    pub disk_size: u64,
    /// Time from QEMU's start to the handshake answer.
    pub boot_timeout: Duration,
    pub memory: String,
    /// Kernel command line (`-append`).
    pub append: Option<String>,
    /// Where to look for QEMU; `None` means `$PATH`.
    pub search_path: Option<OsString>,
    /// Hide cargo's progress while building the kernel.
    pub quiet_build: bool,
    /// Wait for the handshake answer (the normal case). Without it,
    /// [`Vm::start`] returns as soon as the control socket accepts a
    /// connection, and the kernel has seen no `Hello` yet (tests use this
    /// to check that requests before `Hello` are refused).
    pub handshake: bool,
    /// What the control channel runs on.
    pub control_link: ControlLink,
    /// Extra QEMU arguments, appended last (e.g. `-icount shift=5` for
    /// deterministic guest time in benchmarks).
    pub extra_qemu_args: Vec<OsString>,
}

impl VmConfig {
    /// Defaults for VM `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kernel: None,
            disks: Vec::new(),
            disk_size: DEFAULT_DISK_SIZE,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            memory: DEFAULT_MEMORY.into(),
            append: None,
            search_path: None,
            quiet_build: false,
            handshake: true,
            control_link: ControlLink::default(),
            extra_qemu_args: Vec::new(),
        }
    }
}

/// The device the control channel (requests, answers and event streams)
/// runs on. Either way the host sees the same Unix socket and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlLink {
    /// Port 1 of a virtio-serial device: about 40 MB/s under TCG, and
    /// QEMU throttles the guest instead of dropping bytes when the host
    /// reads slowly.
    #[default]
    VirtioSerial,
    /// The COM2 UART: about 70 KB/s. Kept as the fallback for machines
    /// without PCI.
    Com2,
}

/// QEMU's chardev id of control session `k`.
fn session_chardev(k: usize) -> String {
    if k == 0 {
        "ctl".into()
    } else {
        format!("ctl{}", k + 1)
    }
}

/// QEMU's arguments for booting `kernel` with the files of `paths`.
pub fn qemu_args(cfg: &VmConfig, paths: &VmPaths, kernel: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&OsStr]| args.extend(parts.iter().map(|p| p.to_os_string()));
    push(&[
        "-machine".as_ref(),
        "q35".as_ref(),
        "-m".as_ref(),
        cfg.memory.as_ref(),
        "-cpu".as_ref(),
        "max".as_ref(),
        "-smp".as_ref(),
        "1".as_ref(),
        "-display".as_ref(),
        "none".as_ref(),
        "-no-reboot".as_ref(),
        "-kernel".as_ref(),
        kernel.as_os_str(),
    ]);
    let mut console = OsString::from("file:");
    console.push(&paths.console);
    let chardev = |k: usize| {
        let mut c = OsString::from(format!("socket,id={},path=", session_chardev(k)));
        c.push(paths.session_socket(k));
        c.push(",server=on,wait=off");
        c
    };
    push(&[
        "-serial".as_ref(),
        &console,
        "-chardev".as_ref(),
        &chardev(0),
    ]);
    match cfg.control_link {
        ControlLink::VirtioSerial => {
            push(&[
                "-serial".as_ref(),
                "null".as_ref(),
                "-device".as_ref(),
                "virtio-serial-pci,id=ktrace-serial".as_ref(),
            ]);
            for k in 0..SESSIONS {
                if k > 0 {
                    push(&["-chardev".as_ref(), &chardev(k)]);
                }
                let name = if k == 0 {
                    "org.ktrace.control".to_string()
                } else {
                    format!("org.ktrace.control.{}", k + 1)
                };
                let port = format!(
                    "virtserialport,bus=ktrace-serial.0,nr={},chardev={},name={name}",
                    k + 1,
                    session_chardev(k)
                );
                push(&["-device".as_ref(), port.as_ref()]);
            }
        }
        ControlLink::Com2 => push(&["-serial".as_ref(), "chardev:ctl".as_ref()]),
    }
    push(&[
        "-device".as_ref(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".as_ref(),
    ]);
    for (i, disk) in cfg.disks.iter().enumerate() {
        let id = format!("vd{}", (b'a' + (i % 26) as u8) as char);
        let mut drive = OsString::from("file=");
        drive.push(disk);
        drive.push(format!(",if=none,id={id},format=raw"));
        let device = format!("virtio-blk-pci,drive={id}");
        push(&[
            "-drive".as_ref(),
            &drive,
            "-device".as_ref(),
            device.as_ref(),
        ]);
    }
    if let Some(append) = &cfg.append {
        push(&["-append".as_ref(), append.as_ref()]);
    }
    args.extend(cfg.extra_qemu_args.iter().cloned());
    args
}

/// Create a sparse raw image of `size` bytes if `path` does not exist;
/// check it is a regular file otherwise.
pub fn ensure_disk(path: &Path, size: u64) -> Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(false),
        Ok(_) => Err(VmError::BadDisk {
            path: path.into(),
            reason: "not a regular file".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| VmError::BadDisk {
                    path: path.into(),
                    reason: format!("cannot create: {e}"),
                })?;
            file.set_len(size).map_err(io_err(path))?;
            Ok(true)
        }
        Err(e) => Err(VmError::BadDisk {
            path: path.into(),
            reason: e.to_string(),
        }),
    }
}

/// A VM that booted (or one found running by name).
pub struct Vm {
    name: String,
    paths: VmPaths,
    pid: u32,
    /// Present when this process started QEMU (so it can reap it).
    child: Option<Child>,
    boot: Option<BootInfo>,
}

/// What [`Vm::start`] measured.
#[derive(Debug, Clone)]
pub struct BootInfo {
    pub hello: HelloReply,
    /// QEMU process start → handshake answered.
    pub boot_time: Duration,
    pub image: KernelImage,
    /// Disk images created by this start.
    pub created_disks: Vec<PathBuf>,
}

impl Vm {
    /// Boot a VM and wait until the kernel answers the handshake.
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        check_name(&cfg.name)?;
        let search = cfg
            .search_path
            .clone()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        // Before anything slow: a missing QEMU is the most common problem
        // on a fresh machine.
        let qemu = find_in_path(QEMU, &search).ok_or(VmError::QemuMissing)?;

        let root = runtime_root();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io_err(&root))?;
        let paths = VmPaths::new(&root, &cfg.name);
        let sock_len = paths.socket.as_os_str().len();
        if sock_len > 107 {
            return Err(VmError::SocketPathTooLong {
                path: paths.socket,
                len: sock_len,
            });
        }
        if let Some(pid) = running_pid(&paths) {
            return Err(VmError::AlreadyRunning {
                name: cfg.name.clone(),
                pid,
            });
        }
        fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;

        let image = match &cfg.kernel {
            Some(elf) => kernel_image::embed_if_changed(elf)?,
            None => kernel_image::prepare(cfg.quiet_build)?,
        };
        let mut created_disks = Vec::new();
        for disk in &cfg.disks {
            if ensure_disk(disk, cfg.disk_size)? {
                created_disks.push(disk.clone());
            }
        }

        let stale: Vec<PathBuf> = (0..SESSIONS)
            .map(|k| paths.session_socket(k))
            .chain([paths.pid.clone()])
            .collect();
        for stale in &stale {
            match fs::remove_file(stale) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(stale)(e)),
                _ => {}
            }
        }
        File::create(&paths.console).map_err(io_err(&paths.console))?;
        let args = qemu_args(cfg, &paths, &image.image);
        let mut cmdline = qemu.as_os_str().to_string_lossy().into_owned();
        for a in &args {
            cmdline.push('\n');
            cmdline.push_str(&a.to_string_lossy());
        }
        cmdline.push('\n');
        fs::write(&paths.cmdline, cmdline).map_err(io_err(&paths.cmdline))?;
        let log = File::create(&paths.qemu_log).map_err(io_err(&paths.qemu_log))?;
        let log2 = log.try_clone().map_err(io_err(&paths.qemu_log))?;

        let mut cmd = Command::new(&qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setsid, which is async-signal-safe and touches no memory of
        // the parent. A new session keeps QEMU out of the terminal's
        // signals (Ctrl-C, hang-up) so it outlives the command that started it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                VmError::QemuMissing
            } else {
                VmError::Spawn(e)
            }
        })?;
        let pid = child.id();
        let mut vm = Vm {
            name: cfg.name.clone(),
            paths,
            pid,
            child: Some(child),
            boot: None,
        };
        if let Err(e) = fs::write(&vm.paths.pid, format!("{pid}\n")) {
            // Without a pid file nobody could stop this QEMU later.
            let err = io_err(&vm.paths.pid)(e);
            vm.kill();
            return Err(err);
        }
        match vm.wait_ready(started, cfg.boot_timeout, cfg.handshake) {
            Ok(None) => Ok(vm),
            Ok(Some(hello)) => {
                vm.boot = Some(BootInfo {
                    hello,
                    boot_time: started.elapsed(),
                    image,
                    created_disks,
                });
                Ok(vm)
            }
            Err(e) => {
                vm.kill();
                Err(e)
            }
        }
    }

    /// Poll until the handshake is answered (or, without `handshake`, the
    /// socket accepts), QEMU exits, the console shows a panic report, or
    /// the timeout passes.
    fn wait_ready(
        &mut self,
        started: Instant,
        timeout: Duration,
        handshake: bool,
    ) -> Result<Option<HelloReply>> {
        let deadline = started + timeout;
        let mut client: Option<Client> = None;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(self.exit_error(status));
            }
            let console = read_lossy(&self.paths.console);
            if let Some(report) = PanicReport::find(&console) {
                // Give the kernel a moment to finish the report and exit.
                if !report.complete {
                    thread::sleep(Duration::from_millis(300));
                }
                let console = read_lossy(&self.paths.console);
                let report = PanicReport::find(&console).unwrap_or(report);
                return Err(VmError::Panicked {
                    name: self.name.clone(),
                    console: self.paths.console.clone(),
                    report,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VmError::Hung {
                    name: self.name.clone(),
                    timeout,
                    console: self.paths.console.clone(),
                    tail: tail_lines(&console, 20),
                });
            }
            match client.as_mut() {
                None => {
                    // QEMU serves the socket long before the kernel runs
                    // (firmware takes most of a boot under TCG); bytes
                    // queued then are partly lost when the kernel resets
                    // COM2. Wait for the first console output, or a while.
                    let kernel_running = !console.is_empty() || now - started > CONSOLE_GRACE;
                    if kernel_running && self.paths.socket.exists() {
                        if let Ok(c) = Client::connect_raw(&self.paths.socket) {
                            if !handshake {
                                return Ok(None);
                            }
                            client = Some(c);
                            continue;
                        }
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Some(c) => {
                    let attempt = (deadline - now).min(HELLO_RETRY);
                    match c.handshake("ktrace vm start", attempt, attempt) {
                        Ok(hello) => return Ok(Some(hello)),
                        Err(ClientError::HandshakeTimeout { .. }) => {}
                        // QEMU went away: the next round reports why.
                        Err(ClientError::Closed) => {
                            client = None;
                            thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    fn exit_error(&self, status: ExitStatus) -> VmError {
        let console = read_lossy(&self.paths.console);
        if let Some(report) = PanicReport::find(&console) {
            return VmError::Panicked {
                name: self.name.clone(),
                console: self.paths.console.clone(),
                report,
            };
        }
        let qemu = read_lossy(&self.paths.qemu_log);
        let qemu_output = if qemu.trim().is_empty() {
            String::new()
        } else {
            format!("\nQEMU said:\n{}", tail_lines(&qemu, 10))
        };
        VmError::Exited {
            status: describe_status(status.code()),
            console: self.paths.console.clone(),
            tail: tail_lines(&console, 20),
            qemu_output,
        }
    }

    /// Find the running VM `name`.
    pub fn attach(name: &str) -> Result<Vm> {
        check_name(name)?;
        let paths = VmPaths::new(&runtime_root(), name);
        let pid = running_pid(&paths).ok_or_else(|| VmError::NotRunning { name: name.into() })?;
        Ok(Vm {
            name: name.into(),
            paths,
            pid,
            child: None,
            boot: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn paths(&self) -> &VmPaths {
        &self.paths
    }

    /// Boot measurements, for a VM this process started.
    pub fn boot_info(&self) -> Option<&BootInfo> {
        self.boot.as_ref()
    }

    /// Connect to a free control session and handshake.
    ///
    /// Each session serves one client; a client holds an advisory lock on
    /// the session's lock file while connected (released when it exits,
    /// however it exits), so concurrent `ktrace` commands, tools and tests
    /// each find a session of their own.
    pub fn connect(&self, opts: &ConnectOptions) -> Result<Client> {
        let (socket, lock) = self.free_session()?;
        Ok(Client::connect(&socket, opts)?.holding(lock))
    }

    /// Connect to a free control session without the handshake.
    pub fn connect_raw(&self) -> Result<Client> {
        let (socket, lock) = self.free_session()?;
        Ok(Client::connect_raw(&socket)?.holding(lock))
    }

    /// The first session nobody holds, locked for the caller.
    fn free_session(&self) -> Result<(PathBuf, File)> {
        let sessions: Vec<usize> = (0..SESSIONS)
            .filter(|&k| k == 0 || self.paths.session_socket(k).exists())
            .collect();
        for &k in &sessions {
            let path = self.paths.session_lock(k);
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            match file.try_lock() {
                Ok(()) => return Ok((self.paths.session_socket(k), file)),
                Err(fs::TryLockError::WouldBlock) => continue,
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
        }
        Err(VmError::Busy(sessions.len()))
    }

    /// The console log so far.
    pub fn console(&self) -> String {
        read_lossy(&self.paths.console)
    }

    /// Whether QEMU still runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => process_alive(self.pid, &self.paths.socket),
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait up to `timeout` for QEMU to exit and classify why it did.
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitReport> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = match &mut self.child {
                Some(child) => child.try_wait().ok().flatten().map(|s| s.code()),
                None => (!process_alive(self.pid, &self.paths.socket)).then_some(None),
            };
            if let Some(code) = status {
                self.cleanup();
                return Some(ExitReport::classify(code, &self.console()));
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the VM: ask the kernel to shut down, then terminate and finally
    /// kill QEMU if it does not exit. Removes the pid file and socket.
    pub fn stop(mut self, timeout: Duration) -> StopReport {
        let opts = ConnectOptions {
            client_name: "ktrace vm stop".into(),
            handshake_timeout: Duration::from_secs(2),
            ..ConnectOptions::default()
        };
        let asked = self
            .connect(&opts)
            .ok()
            .and_then(|mut c| c.shutdown(EXIT_SHUTDOWN, Duration::from_secs(2)).ok())
            .is_some();
        if asked {
            if let Some(exit) = self.wait_exit(timeout) {
                return StopReport {
                    how: StopHow::Shutdown,
                    exit: Some(exit),
                };
            }
        }
        self.signal(libc::SIGTERM);
        if let Some(exit) = self.wait_exit(Duration::from_secs(3)) {
            return StopReport {
                how: StopHow::Terminated,
                exit: Some(exit),
            };
        }
        self.kill();
        StopReport {
            how: StopHow::Killed,
            exit: None,
        }
    }

    /// Kill QEMU at once and clean up.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        } else {
            let deadline = Instant::now() + Duration::from_secs(3);
            while process_alive(self.pid, &self.paths.socket) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.cleanup();
    }

    fn signal(&self, sig: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return;
        };
        if pid <= 1 {
            return;
        }
        // Only signal a process that is still our QEMU (pid reuse).
        let ours = self.child.is_some() || process_alive(self.pid, &self.paths.socket);
        if ours {
            // SAFETY: kill has no memory-safety preconditions; the pid was
            // checked to be this VM's QEMU (a session leader of its own).
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    fn cleanup(&self) {
        let _ = fs::remove_file(&self.paths.pid);
        for k in 0..SESSIONS {
            let _ = fs::remove_file(self.paths.session_socket(k));
            let _ = fs::remove_file(self.paths.session_lock(k));
        }
    }
}

/// How [`Vm::stop`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    /// The kernel shut down on request.
    Shutdown,
    /// QEMU exited on SIGTERM.
    Terminated,
    /// QEMU had to be killed.
    Killed,
}

/// Result of [`Vm::stop`].
#[derive(Debug, Clone)]
pub struct StopReport {
    pub how: StopHow,
    pub exit: Option<ExitReport>,
}

/// Why QEMU exited.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitKind {
    /// The kernel powered off on request (status 33).
    Shutdown,
    /// The console holds a panic or fatal-exception report.
    Panicked(PanicReport),
    /// Anything else (killed, QEMU error, unknown status).
    Other,
}

/// QEMU's exit, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitReport {
    /// QEMU's exit status, when this process started it.
    pub status: Option<i32>,
    pub kind: ExitKind,
}

impl ExitReport {
    /// Classify an exit from its status and the console log.
    pub fn classify(status: Option<i32>, console: &str) -> Self {
        let kind = if let Some(report) = PanicReport::find(console) {
            ExitKind::Panicked(report)
        } else if status == Some(qemu_exit_status(EXIT_SHUTDOWN)) {
            ExitKind::Shutdown
        } else {
            ExitKind::Other
        };
        Self { status, kind }
    }
}

fn describe_status(code: Option<i32>) -> String {
    match code {
        Some(c) if c == qemu_exit_status(EXIT_SHUTDOWN) => format!("status {c}: clean shutdown"),
        Some(c) if c == qemu_exit_status(EXIT_PANIC) => format!("status {c}: kernel panic"),
        Some(c) if c == qemu_exit_status(EXIT_EXCEPTION) => {
            format!("status {c}: fatal CPU exception")
        }
        Some(c) => format!("status {c}"),
        None => "killed by a signal".into(),
    }
}

/// Kind of a console report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// `KERNEL PANIC`
    Panic,
    /// `FATAL EXCEPTION`
    Exception,
}

/// One `#N 0xADDR symbol+0xOFF` line of a backtrace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacktraceFrame {
    pub index: u32,
    pub addr: u64,
    /// The demangled function, if the kernel could symbolize the address.
    pub symbol: Option<String>,
    pub offset: Option<u64>,
}

/// A panic or fatal-exception report found on the console.
#[derive(Debug, Clone, PartialEq)]
pub struct PanicReport {
    pub kind: ReportKind,
    /// The report's lines, start marker to end marker, timestamps kept.
    pub lines: Vec<String>,
    pub frames: Vec<BacktraceFrame>,
    /// False if the end marker is missing (the report was cut short).
    pub complete: bool,
}

/// Line that ends a report.
pub const END_OF_REPORT: &str = "---[ end of report ]---";

impl PanicReport {
    /// The first report on the console, if any.
    pub fn find(console: &str) -> Option<Self> {
        let lines: Vec<&str> = console.lines().collect();
        let (start, kind) = lines.iter().enumerate().find_map(|(i, l)| {
            if l.contains("KERNEL PANIC") {
                Some((i, ReportKind::Panic))
            } else if l.contains("FATAL EXCEPTION") {
                Some((i, ReportKind::Exception))
            } else {
                None
            }
        })?;
        let end = lines[start..]
            .iter()
            .position(|l| l.contains(END_OF_REPORT))
            .map(|p| start + p);
        let body = &lines[start..=end.unwrap_or(lines.len() - 1)];
        Some(Self {
            kind,
            lines: body.iter().map(|l| l.to_string()).collect(),
            frames: body.iter().filter_map(|l| parse_frame(l)).collect(),
            complete: end.is_some(),
        })
    }

    /// Whether some backtrace frame is in function `name` (exact demangled path).
    pub fn has_frame(&self, name: &str) -> bool {
        self.frames
            .iter()
            .any(|f| f.symbol.as_deref() == Some(name))
    }
}

impl fmt::Display for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{line}")?;
        }
        if !self.complete {
            write!(f, "\n(report cut short: no `{END_OF_REPORT}` line)")?;
        }
        Ok(())
    }
}

/// Parse `  #3 0xffffffff80012345 kernel::a::b+0x1a`, with or without a
/// console timestamp and level in front.
pub fn parse_frame(line: &str) -> Option<BacktraceFrame> {
    let at = line.find('#')?;
    let rest = &line[at + 1..];
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let index = rest[..digits].parse().ok()?;
    let rest = rest[digits..].trim_start();
    let hex_start = rest.strip_prefix("0x")?;
    let hex_len = hex_start
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(hex_start.len());
    let addr = u64::from_str_radix(&hex_start[..hex_len], 16).ok()?;
    let sym = hex_start[hex_len..].trim();
    let (symbol, offset) = match sym.rsplit_once("+0x") {
        Some((name, off)) if !name.is_empty() => (
            Some(name.to_string()),
            u64::from_str_radix(off.trim(), 16).ok(),
        ),
        _ if sym.is_empty() || sym.starts_with('?') || sym.starts_with('<') => (None, None),
        _ => (Some(sym.to_string()), None),
    };
    Some(BacktraceFrame {
        index,
        addr,
        symbol,
        offset,
    })
}

/// State of a named VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    Running { pid: u32 },
    Stopped,
}

/// One VM in [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEntry {
    pub name: String,
    pub state: VmState,
    pub paths: VmPaths,
}

impl VmEntry {
    /// The console log of the VM's last boot (empty if there is none).
    pub fn console(&self) -> String {
        read_lossy(&self.paths.console)
    }
}

/// The state of VM `name`.
pub fn status(name: &str) -> Result<VmEntry> {
    check_name(name)?;
    let paths = VmPaths::new(&runtime_root(), name);
    let state = match running_pid(&paths) {
        Some(pid) => VmState::Running { pid },
        None => VmState::Stopped,
    };
    Ok(VmEntry {
        name: name.into(),
        state,
        paths,
    })
}

/// Every VM with a directory in the runtime root, by name.
pub fn list() -> Result<Vec<VmEntry>> {
    let root = runtime_root();
    let dir = match fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&root)(e)),
    };
    let mut out = Vec::new();
    for entry in dir {
        let entry = entry.map_err(io_err(&root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && check_name(&name).is_ok() {
            out.push(status(&name)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes what VM `name` left in the runtime root (console, QEMU's log,
/// sockets), unless it runs. Returns whether there was anything.
pub fn remove_state(name: &str) -> Result<bool> {
    let entry = status(name)?;
    if let VmState::Running { pid } = entry.state {
        return Err(VmError::AlreadyRunning {
            name: name.into(),
            pid,
        });
    }
    match fs::remove_dir_all(&entry.paths.dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&entry.paths.dir)(e)),
    }
}

/// Removes the state of every VM that stopped more than `age` ago (no file
/// of its directory written since), so that a list of VMs does not keep
/// every VM that ever ran. Returns their names.
pub fn prune_stopped(age: Duration) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in list()? {
        if matches!(entry.state, VmState::Running { .. }) {
            continue;
        }
        // A VM being started has fresh files; only long-quiet ones go.
        let last_write = fs::read_dir(&entry.paths.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.metadata().ok()?.modified().ok())
            .chain(fs::metadata(&entry.paths.dir).and_then(|m| m.modified()))
            .max();
        let quiet_for = last_write.and_then(|t| t.elapsed().ok());
        if quiet_for.is_some_and(|q| q > age) && remove_state(&entry.name)? {
            removed.push(entry.name);
        }
    }
    Ok(removed)
}

/// Write the console of VM `name` to `out`; with `follow`, keep writing
/// what the kernel prints until the VM stops.
pub fn console(name: &str, follow: bool, out: &mut dyn Write) -> Result<()> {
    let entry = status(name)?;
    let path = &entry.paths.console;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VmError::NotRunning { name: name.into() })
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // A new boot truncated the log: start over.
            pos = 0;
            file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        }
        loop {
            let n = file.read(&mut buf).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            pos += n as u64;
            out.write_all(&buf[..n]).map_err(io_err(path))?;
        }
        out.flush().map_err(io_err(path))?;
        if !follow || running_pid(&entry.paths).is_none() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    if lines.is_empty() {
        "(console is empty)".into()
    } else {
        lines[from..].join("\n")
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The pid in the pid file if that process is alive and is this VM's QEMU.
fn running_pid(paths: &VmPaths) -> Option<u32> {
    let pid: u32 = fs::read_to_string(&paths.pid).ok()?.trim().parse().ok()?;
    process_alive(pid, &paths.socket).then_some(pid)
}

/// Whether `pid` is alive (not a zombie) and its command line names
/// `socket` (so a recycled pid is not taken for the VM).
fn process_alive(pid: u32, socket: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let needle = socket.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "M", "0", "12Q", "-1M", "99999999999T"] {
            assert_eq!(
                parse_size(bad).unwrap_err().to_string(),
                format!("invalid size {bad:?}: expected a number of bytes with an optional K, M, G or T suffix, e.g. 64M")
            );
        }
    }

    #[test]
    fn names() {
        assert!(check_name("default").is_ok());
        assert!(check_name("t-1_a.b").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn qemu_command_line_follows_the_convention() {
        let mut cfg = VmConfig::new("t");
        cfg.disks = vec![PathBuf::from("/d/a.img"), PathBuf::from("/d/b.img")];
        let paths = VmPaths::new(Path::new("/run/k"), "t");
        let args: Vec<String> = qemu_args(&cfg, &paths, Path::new("/k/kernel.ktrace"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "-machine q35 -m 256M -cpu max -smp 1 -display none -no-reboot \
             -kernel /k/kernel.ktrace -serial file:/run/k/t/console.log \
             -chardev socket,id=ctl,path=/run/k/t/ctl.sock,server=on,wait=off \
             -serial null -device virtio-serial-pci,id=ktrace-serial \
             -device virtserialport,bus=ktrace-serial.0,nr=1,chardev=ctl,name=org.ktrace.control \
             -chardev socket,id=ctl2,path=/run/k/t/ctl2.sock,server=on,wait=off \
             -device virtserialport,bus=ktrace-serial.0,nr=2,chardev=ctl2,name=org.ktrace.control.2 \
             -chardev socket,id=ctl3,path=/run/k/t/ctl3.sock,server=on,wait=off \
             -device virtserialport,bus=ktrace-serial.0,nr=3,chardev=ctl3,name=org.ktrace.control.3 \
             -chardev socket,id=ctl4,path=/run/k/t/ctl4.sock,server=on,wait=off \
             -device virtserialport,bus=ktrace-serial.0,nr=4,chardev=ctl4,name=org.ktrace.control.4 \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
             -drive file=/d/a.img,if=none,id=vda,format=raw -device virtio-blk-pci,drive=vda \
             -drive file=/d/b.img,if=none,id=vdb,format=raw -device virtio-blk-pci,drive=vdb"
        );
    }

    const CONSOLE: &str = "\
[    0.001000] INFO  booting
[    0.200000] ERROR KERNEL PANIC: forced by the host
[    0.200001] ERROR   at kernel/src/debug.rs:12:5
[    0.200002] ERROR backtrace:
[    0.200003] ERROR   #0 0xffffffff80012345 kernel::debug::forced_panic+0x1a
[    0.200004] ERROR   #1 0xffffffff80013000 <kernel::ctl::Server as core::ops::Drop>::drop+0x5
[    0.200005] ERROR   #2 0x0000000000001234 ?
[    0.200006] ERROR ---[ end of report ]---
[    0.300000] INFO  after
";

    #[test]
    fn panic_report_is_found_and_parsed() {
        let r = PanicReport::find(CONSOLE).unwrap();
        assert_eq!(r.kind, ReportKind::Panic);
        assert!(r.complete);
        assert_eq!(r.lines.len(), 7);
        assert_eq!(
            r.frames,
            vec![
                BacktraceFrame {
                    index: 0,
                    addr: 0xffffffff80012345,
                    symbol: Some("kernel::debug::forced_panic".into()),
                    offset: Some(0x1a),
                },
                BacktraceFrame {
                    index: 1,
                    addr: 0xffffffff80013000,
                    symbol: Some("<kernel::ctl::Server as core::ops::Drop>::drop".into()),
                    offset: Some(5),
                },
                BacktraceFrame {
                    index: 2,
                    addr: 0x1234,
                    symbol: None,
                    offset: None,
                },
            ]
        );
        assert!(r.has_frame("kernel::debug::forced_panic"));
        let exit = ExitReport::classify(Some(35), CONSOLE);
        assert!(matches!(exit.kind, ExitKind::Panicked(_)));
        assert_eq!(
            ExitReport::classify(Some(33), "[ 0.1] INFO  bye\n").kind,
            ExitKind::Shutdown
        );
    }

    #[test]
    fn cut_short_report_is_marked() {
        let cut = "x\nFATAL EXCEPTION #GP error 0x0\n  #0 0x10 kernel::f+0x1\n";
        let r = PanicReport::find(cut).unwrap();
        assert_eq!(r.kind, ReportKind::Exception);
        assert!(!r.complete);
        assert_eq!(r.frames.len(), 1);
        assert!(r
            .to_string()
            .ends_with("(report cut short: no `---[ end of report ]---` line)"));
        assert!(PanicReport::find("all good\n").is_none());
    }

    #[test]
    fn qemu_is_looked_up_in_the_given_path() {
        assert_eq!(find_in_path(QEMU, OsStr::new("")), None);
        assert_eq!(
            VmError::QemuMissing.to_string(),
            "qemu-system-x86_64 not found in PATH: install the Debian package qemu-system-x86 (apt-get install qemu-system-x86)"
        );
        let mut cfg = VmConfig::new("t-no-qemu");
        cfg.search_path = Some(OsString::new());
        assert!(matches!(Vm::start(&cfg), Err(VmError::QemuMissing)));
    }

    #[test]
    fn disks_are_created_sparse() {
        let dir = std::env::temp_dir().join(format!("ktrace-disk-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let img = dir.join("d.img");
        assert!(ensure_disk(&img, 64 << 20).unwrap());
        assert_eq!(fs::metadata(&img).unwrap().len(), 64 << 20);
        assert!(!ensure_disk(&img, 1).unwrap());
        assert_eq!(fs::metadata(&img).unwrap().len(), 64 << 20);
        let err = ensure_disk(&dir, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("disk {}: not a regular file", dir.display())
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
