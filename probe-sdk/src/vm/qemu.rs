//! QEMU's command line: how a VM is configured ([`VmConfig`]), the
//! arguments that boot the kernel with its console, control sessions and
//! disks ([`qemu_args`]), finding QEMU, and creating disk images.

use super::{
    io_err, Result, VmError, VmPaths, DEFAULT_BOOT_TIMEOUT, DEFAULT_CPUS, DEFAULT_DISK_SIZE,
    DEFAULT_MEMORY, SESSIONS,
};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Virtual CPUs (`-smp`), 1 to [`ktrace_abi::vm::MAX_CPUS`]; more
    /// than one run in parallel on host threads (multi-threaded TCG).
    pub cpus: u32,
    /// Kernel command line (`-append`).
    pub append: Option<String>,
    /// Where to look for QEMU; `None` means `$PATH`.
    pub search_path: Option<OsString>,
    /// Hide cargo's progress while building the kernel.
    pub quiet_build: bool,
    /// Wait for the handshake answer (the normal case). Without it,
    /// [`Vm::start`](super::Vm::start) returns as soon as the control
    /// socket accepts a connection, and the kernel has seen no `Hello` yet
    /// (tests use this to check that requests before `Hello` are refused).
    pub handshake: bool,
    /// What the control channel runs on.
    pub control_link: ControlLink,
    /// Extra QEMU arguments, appended last (e.g. `-icount shift=5` for
    /// deterministic guest time in benchmarks).
    pub extra_qemu_args: Vec<OsString>,
}

/// Check a CPU count before anything starts.
pub fn check_cpus(cpus: u32) -> Result<u32> {
    if (1..=ktrace_abi::vm::MAX_CPUS).contains(&cpus) {
        Ok(cpus)
    } else {
        Err(VmError::BadCpuCount(cpus))
    }
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
            cpus: DEFAULT_CPUS,
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
    let smp = cfg.cpus.to_string();
    push(&[
        "-machine".as_ref(),
        "q35".as_ref(),
        "-m".as_ref(),
        cfg.memory.as_ref(),
        "-cpu".as_ref(),
        "max".as_ref(),
        "-smp".as_ref(),
        smp.as_ref(),
        "-display".as_ref(),
        "none".as_ref(),
        "-no-reboot".as_ref(),
        "-kernel".as_ref(),
        kernel.as_os_str(),
    ]);
    // One host thread per vCPU, so vCPUs really run in parallel (QEMU 7.2
    // supports multi-threaded TCG for x86_64 guests). `-icount` needs the
    // single-threaded round robin, so a config that asks for it keeps it.
    let icount = cfg.extra_qemu_args.iter().any(|a| a == "-icount");
    if cfg.cpus > 1 && !icount {
        push(&["-accel".as_ref(), "tcg,thread=multi".as_ref()]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{Vm, QEMU};

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
    fn qemu_command_line_follows_the_convention() {
        let mut cfg = VmConfig::new("t");
        cfg.cpus = 1;
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

    #[test]
    fn several_cpus_run_on_host_threads() {
        let paths = VmPaths::new(Path::new("/run/k"), "t");
        let line = |cfg: &VmConfig| {
            let args: Vec<String> = qemu_args(cfg, &paths, Path::new("/k/kernel.ktrace"))
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect();
            args.join(" ")
        };
        let mut cfg = VmConfig::new("t");
        cfg.cpus = 4;
        assert!(line(&cfg).starts_with(
            "-machine q35 -m 256M -cpu max -smp 4 -display none -no-reboot \
             -kernel /k/kernel.ktrace -accel tcg,thread=multi -serial "
        ));
        // -icount needs QEMU's single-threaded round robin.
        cfg.extra_qemu_args = vec!["-icount".into(), "shift=5".into()];
        assert!(!line(&cfg).contains("thread=multi"));
        assert!(line(&cfg).contains("-smp 4 "));
    }

    #[test]
    fn cpu_counts_outside_the_kernels_limit_are_refused() {
        assert_eq!(check_cpus(1).unwrap(), 1);
        assert_eq!(check_cpus(16).unwrap(), 16);
        for bad in [0, 17, u32::MAX] {
            assert_eq!(
                check_cpus(bad).unwrap_err().to_string(),
                format!("invalid CPU count {bad}: expected 1 to 16 (the kernel's limit)")
            );
        }
        let mut cfg = VmConfig::new("t-no-cpus");
        cfg.cpus = 0;
        assert!(matches!(Vm::start(&cfg), Err(VmError::BadCpuCount(0))));
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
