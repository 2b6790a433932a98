//! A VM's life: [`Vm::start`] boots QEMU and waits for the handshake (or a
//! panic, a hang, an early exit), [`Vm::attach`] finds a running one,
//! [`Vm::connect`] takes a free control session, and [`Vm::stop`] asks the
//! kernel to shut down before terminating or killing QEMU.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ktrace_abi::vm::{HelloReply, EXIT_SHUTDOWN};

use super::registry::{process_alive, running_pid};
use super::report::describe_status;
use super::{
    check_name, ensure_disk, find_in_path, io_err, qemu_args, read_lossy, runtime_root, tail_lines,
    ExitReport, PanicReport, Result, VmConfig, VmError, VmPaths, QEMU, SESSIONS,
};
use crate::client::{Client, ClientError, ConnectOptions};
use crate::kernel_image::{self, KernelImage};

/// How often `Hello` is re-sent while the kernel boots. Bytes that arrive
/// before the kernel has set up COM2 are lost, so the first `Hello` often
/// is; a short interval keeps that from adding to the boot time.
const HELLO_RETRY: Duration = Duration::from_millis(50);
/// How long to wait for the kernel's first console output before talking
/// to the control channel anyway.
const CONSOLE_GRACE: Duration = Duration::from_secs(3);

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
        super::qemu::check_cpus(cfg.cpus)?;
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
