//! Ask the host's Linux kernel for its verdict on a program, to compare with
//! ktrace's verifier (`ktrace check --linux`).
//!
//! libbpf refuses the legacy `maps` section, so this is a small loader of
//! its own: it creates each map of the object with `BPF_MAP_CREATE`
//! (global-data maps filled and, for `.rodata`, frozen read-only as libbpf
//! does), rewrites the loader's map-index references into Linux's map-fd
//! forms (`src_reg` 5 → 1, 6 → 2), and calls `BPF_PROG_LOAD` with a log
//! buffer. Nothing is attached; every fd is closed before returning.
//!
//! Root on Linux is the *privileged* verifier (pointer leaks and
//! uninitialised stack reads allowed), so compare with
//! [`CheckOptions::privileged`](crate::check::CheckOptions). Machines that
//! refuse `bpf(2)` give [`LinuxError::Unavailable`].

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use ktrace_abi::bpf::{
    map_type, MapDefinition, ProgramLoad, ProgramType, PSEUDO_MAP_IDX, PSEUDO_MAP_IDX_VALUE,
};

use crate::object::Object;

const BPF_MAP_CREATE: i32 = 0;
const BPF_MAP_UPDATE_ELEM: i32 = 2;
const BPF_PROG_LOAD: i32 = 5;
const BPF_MAP_FREEZE: i32 = 22;
/// `BPF_PSEUDO_MAP_FD` / `BPF_PSEUDO_MAP_VALUE`: Linux's fd-based forms.
const PSEUDO_MAP_FD: u8 = 1;
const PSEUDO_MAP_VALUE: u8 = 2;
/// `BPF_F_RDONLY_PROG`: programs may only read the map.
const BPF_F_RDONLY_PROG: u32 = 1 << 7;
/// `union bpf_attr` is larger, but the fields used here fit; the kernel
/// checks that bytes past what it knows are zero.
const ATTR_SIZE: usize = 128;
const LOG_SIZE: usize = 1 << 20;

/// Linux's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinuxVerdict {
    /// `BPF_PROG_LOAD` succeeded.
    Accepted,
    /// The verifier (or the loader) refused the program.
    Rejected {
        /// Negative errno of `BPF_PROG_LOAD` (`-EACCES` for a verifier
        /// rejection, `-EINVAL` for malformed programs).
        errno: i32,
        /// The last lines of the verifier log: the reason.
        reason: String,
        /// The whole log.
        log: String,
    },
}

/// Why Linux could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinuxError {
    /// `bpf(2)` is not available to this process.
    #[error("the host kernel refuses bpf(2) ({message}); run as root on Linux with BPF enabled to compare")]
    Unavailable { errno: i32, message: String },
    /// A map of the object could not be created.
    #[error("Linux refused to create map `{map}`: {message}")]
    Map { map: String, message: String },
}

fn bpf(cmd: i32, attr: &mut [u8; ATTR_SIZE]) -> Result<i64, i32> {
    // SAFETY: `attr` is a writable, zero-initialised buffer of ATTR_SIZE
    // bytes laid out as `union bpf_attr` for `cmd`; every pointer stored in
    // it refers to memory the caller keeps alive across this call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_SIZE as u32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc)
    }
}

fn put32(attr: &mut [u8; ATTR_SIZE], off: usize, v: u32) {
    attr[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(attr: &mut [u8; ATTR_SIZE], off: usize, v: u64) {
    attr[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

fn own(fd: i64) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Number of possible CPUs, for perf event arrays declared with 0 entries.
fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn create_map(m: &MapDefinition) -> Result<OwnedFd, LinuxError> {
    let mut attr = [0u8; ATTR_SIZE];
    let max_entries = if m.map_type == map_type::PERF_EVENT_ARRAY && m.max_entries == 0 {
        cpus()
    } else {
        m.max_entries
    };
    let flags = m.flags | if m.read_only { BPF_F_RDONLY_PROG } else { 0 };
    put32(&mut attr, 0, m.map_type);
    put32(&mut attr, 4, m.key_size);
    put32(&mut attr, 8, m.value_size);
    put32(&mut attr, 12, max_entries);
    put32(&mut attr, 16, flags);
    let fd = bpf(BPF_MAP_CREATE, &mut attr).map_err(|e| LinuxError::Map {
        map: m.name.clone(),
        message: errno_text(e),
    })?;
    let fd = own(fd);
    if !m.initial_value.is_empty() {
        let key = 0u32;
        let mut attr = [0u8; ATTR_SIZE];
        put32(&mut attr, 0, raw(&fd) as u32);
        put64(&mut attr, 8, &key as *const u32 as u64);
        put64(&mut attr, 16, m.initial_value.as_ptr() as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(|e| LinuxError::Map {
            map: m.name.clone(),
            message: format!("setting its initial value: {}", errno_text(e)),
        })?;
    }
    if m.read_only {
        let mut attr = [0u8; ATTR_SIZE];
        put32(&mut attr, 0, raw(&fd) as u32);
        bpf(BPF_MAP_FREEZE, &mut attr).map_err(|e| LinuxError::Map {
            map: m.name.clone(),
            message: format!("freezing it: {}", errno_text(e)),
        })?;
    }
    Ok(fd)
}

fn raw(fd: &OwnedFd) -> RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Rewrite map-index references into Linux's map-fd forms.
fn with_fds(insns: &[u8], fds: &[OwnedFd]) -> Vec<u8> {
    let mut out = insns.to_vec();
    let mut i = 0;
    while i + 16 <= out.len() {
        if out[i] == 0x18 {
            let src = out[i + 1] >> 4;
            let idx = u32::from_le_bytes([out[i + 4], out[i + 5], out[i + 6], out[i + 7]]) as usize;
            let form = match src {
                PSEUDO_MAP_IDX => Some(PSEUDO_MAP_FD),
                PSEUDO_MAP_IDX_VALUE => Some(PSEUDO_MAP_VALUE),
                _ => None,
            };
            if let (Some(form), Some(fd)) = (form, fds.get(idx)) {
                out[i + 1] = (out[i + 1] & 0x0f) | (form << 4);
                out[i + 4..i + 8].copy_from_slice(&(raw(fd) as u32).to_le_bytes());
            }
            i += 16;
        } else {
            i += 8;
        }
    }
    out
}

/// Load `program` (with the object's maps) into the host kernel and report
/// Linux's verdict.
pub fn verify_on_linux(obj: &Object, program: &ProgramLoad) -> Result<LinuxVerdict, LinuxError> {
    let mut fds = Vec::new();
    for m in &obj.maps {
        match create_map(m) {
            Ok(fd) => fds.push(fd),
            Err(LinuxError::Map { message, .. })
                if fds.is_empty()
                    && (message.contains("not permitted")
                        || message.contains("not implemented")) =>
            {
                return Err(LinuxError::Unavailable { errno: 1, message })
            }
            Err(e) => return Err(e),
        }
    }
    let insns = with_fds(&program.insns, &fds);
    let license = std::ffi::CString::new(program.license.replace('\0', "")).unwrap_or_default();
    let mut log = vec![0u8; LOG_SIZE];
    let prog_type = match program.prog_type {
        ProgramType::Kprobe | ProgramType::Kretprobe => 2,
        ProgramType::Tracepoint => 5,
        ProgramType::PerfEvent => 7,
    };
    let mut attr = [0u8; ATTR_SIZE];
    put32(&mut attr, 0, prog_type);
    put32(&mut attr, 4, (insns.len() / 8) as u32);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 24, 1); // log_level
    put32(&mut attr, 28, LOG_SIZE as u32);
    put64(&mut attr, 32, log.as_mut_ptr() as u64);
    // prog_name (offset 48, 16 bytes): for bpftool listings while loaded.
    let name = program.name.as_bytes();
    let n = name.len().min(15);
    attr[48..48 + n].copy_from_slice(&name[..n]);
    let result = bpf(BPF_PROG_LOAD, &mut attr);
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let log = String::from_utf8_lossy(&log[..end]).into_owned();
    match result {
        Ok(fd) => {
            drop(own(fd));
            Ok(LinuxVerdict::Accepted)
        }
        Err(e) if (e == libc::EPERM || e == libc::ENOSYS) && log.is_empty() => {
            Err(LinuxError::Unavailable {
                errno: e,
                message: errno_text(e),
            })
        }
        Err(e) => {
            let reason = log
                .lines()
                .rev()
                .find(|l| !l.starts_with("processed ") && !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            Ok(LinuxVerdict::Rejected {
                errno: -e,
                reason,
                log,
            })
        }
    }
}
