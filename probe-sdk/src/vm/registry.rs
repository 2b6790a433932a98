//! The registry of VMs: one directory per VM name under the per-user
//! runtime root, which VMs run (a pid file checked against `/proc`), their
//! status and list, removing what stopped VMs left, and their consoles.

use super::{io_err, read_lossy, Result, VmError};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

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
    pub(super) fn session_lock(&self, k: usize) -> PathBuf {
        let mut p = self.session_socket(k).into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    }
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

/// The pid in the pid file if that process is alive and is this VM's QEMU.
pub(super) fn running_pid(paths: &VmPaths) -> Option<u32> {
    let pid: u32 = fs::read_to_string(&paths.pid).ok()?.trim().parse().ok()?;
    process_alive(pid, &paths.socket).then_some(pid)
}

/// Whether `pid` is alive (not a zombie) and its command line names
/// `socket` (so a recycled pid is not taken for the VM).
pub(super) fn process_alive(pid: u32, socket: &Path) -> bool {
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
    fn names() {
        assert!(check_name("default").is_ok());
        assert!(check_name("t-1_a.b").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
