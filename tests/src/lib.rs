//! Shared helpers for the end-to-end tests.
//!
//! Every test boots its own VM under a unique name ([`unique_name`]), so
//! tests run in parallel, and [`TestVm`] stops it even when the test fails.
//! The kernel is built once per test process ([`kernel_image`]); the
//! `ktrace` binary is built on demand ([`ktrace_bin`]) so CLI tests always
//! run the current code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub mod fuzz;
pub mod gen;

use probe_sdk::client::{Client, ConnectOptions};
use probe_sdk::kernel_image::{self, Flavor, KernelImage};
use probe_sdk::runtime::Runtime;
use probe_sdk::vm::{Vm, VmConfig};

/// Boot timeout for tests: generous, since tests boot VMs in parallel on
/// few cores under TCG.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The kernel image, built and post-processed once per test process: the
/// self-test flavor, with the in-kernel self tests and the functions the
/// tests probe (`kernel::probe_tests::*`).
pub fn kernel_image() -> &'static KernelImage {
    static IMAGE: OnceLock<KernelImage> = OnceLock::new();
    IMAGE.get_or_init(
        || match kernel_image::prepare_flavor(Flavor::SelfTests, true) {
            Ok(image) => image,
            Err(e) => panic!("cannot prepare the kernel image: {e}"),
        },
    )
}

/// The coverage build of the kernel (the fuzzer's), built once per test
/// process.
pub fn coverage_kernel_image() -> &'static KernelImage {
    static IMAGE: OnceLock<KernelImage> = OnceLock::new();
    IMAGE.get_or_init(
        || match kernel_image::prepare_flavor(Flavor::Coverage, true) {
            Ok(image) => image,
            Err(e) => panic!("cannot prepare the coverage kernel: {e}"),
        },
    )
}

/// The kernel's symbol index (from the ELF [`kernel_image`] built).
pub fn kernel_symbols() -> &'static ktrace_symbols::SymbolIndex {
    static INDEX: OnceLock<ktrace_symbols::SymbolIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        ktrace_symbols::SymbolIndex::from_path(&kernel_image().source)
            .unwrap_or_else(|e| panic!("cannot index the kernel: {e}"))
    })
}

/// A kprobe on the entry of kernel function `name` (its demangled path),
/// resolved against [`kernel_symbols`] as the host loader does.
pub fn kprobe_at(name: &str) -> ktrace_abi::bpf::AttachTarget {
    let f = kernel_symbols()
        .functions()
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} is not a kernel function"));
    ktrace_abi::bpf::AttachTarget::Kprobe {
        spec: name.into(),
        points: vec![ktrace_abi::bpf::KprobePoint {
            address: f.addr,
            function: name.into(),
            offset: 0,
        }],
    }
}

/// A VM name unique to this test and process.
pub fn unique_name(test: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("t-{test}-{}-{seq}", std::process::id());
    name.retain(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    name.truncate(64);
    name
}

/// Virtual CPUs of the tests' VMs: `KTRACE_TEST_CPUS` (so the whole
/// suite can run on several CPUs), else the VM default.
pub fn test_cpus() -> u32 {
    match std::env::var("KTRACE_TEST_CPUS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("KTRACE_TEST_CPUS={v:?}: expected a number of CPUs")),
        Err(_) => probe_sdk::vm::DEFAULT_CPUS,
    }
}

/// A VM config for a test: unique name, the prepared kernel, the CPUs of
/// [`test_cpus`].
pub fn test_config(test: &str) -> VmConfig {
    let mut cfg = VmConfig::new(unique_name(test));
    cfg.cpus = test_cpus();
    cfg.kernel = Some(kernel_image().source.clone());
    cfg.boot_timeout = BOOT_TIMEOUT;
    cfg.quiet_build = true;
    cfg
}

/// Runs `cfg`'s QEMU with `-icount VALUE` when the environment variable
/// `var` is set to VALUE (e.g. `shift=0`): guest time then counts guest
/// instructions, so the TSC advances 2^shift per instruction and a
/// benchmark's cycle counts become instruction counts, free of host load.
/// Returns the shift when VALUE names one (`shift=N`), for converting
/// cycles or time back to instructions.
pub fn icount_from_env(cfg: &mut VmConfig, var: &str) -> Option<u32> {
    let value = std::env::var(var).ok()?;
    let shift = value
        .split(',')
        .find_map(|p| p.strip_prefix("shift=").and_then(|n| n.parse::<u32>().ok()));
    cfg.extra_qemu_args = vec!["-icount".into(), value.into()];
    shift
}

/// A VM config for a test with `n` virtio disks of 32 MiB (fresh sparse
/// images in the returned directory) besides ram0.
pub fn disk_config(test: &str, n: usize) -> (VmConfig, std::path::PathBuf) {
    let mut cfg = test_config(test);
    let dir = std::env::temp_dir().join(&cfg.name);
    std::fs::create_dir_all(&dir).unwrap();
    cfg.disks = (0..n).map(|i| dir.join(format!("disk{i}.img"))).collect();
    cfg.disk_size = 32 << 20;
    (cfg, dir)
}

/// A VM that is killed when dropped.
pub struct TestVm {
    vm: Option<Vm>,
}

impl TestVm {
    /// Boot a VM for `test` and wait for the handshake.
    pub fn boot(test: &str) -> Self {
        Self::boot_with(test_config(test))
    }

    /// Boot a VM for `test` with `cpus` virtual CPUs.
    pub fn boot_cpus(test: &str, cpus: u32) -> Self {
        let mut cfg = test_config(test);
        cfg.cpus = cpus;
        Self::boot_with(cfg)
    }

    /// Boot a VM for `test` with `n` virtio disks of 32 MiB besides ram0
    /// ([`disk_config`]); also returns the directory of their images.
    pub fn boot_with_disks(test: &str, n: usize) -> (Self, PathBuf) {
        let (cfg, dir) = disk_config(test, n);
        (Self::boot_with(cfg), dir)
    }

    /// Boot with a custom config; panics with the boot error.
    pub fn boot_with(cfg: VmConfig) -> Self {
        match Vm::start(&cfg) {
            Ok(vm) => Self { vm: Some(vm) },
            Err(e) => panic!("VM {} did not boot: {e}", cfg.name),
        }
    }

    pub fn vm(&mut self) -> &mut Vm {
        self.vm.as_mut().expect("VM already stopped")
    }

    pub fn name(&self) -> &str {
        self.vm.as_ref().expect("VM already stopped").name()
    }

    /// Connect and handshake.
    pub fn client(&mut self) -> Client {
        let opts = ConnectOptions {
            client_name: "ktrace-tests".into(),
            handshake_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(20),
            ..ConnectOptions::default()
        };
        match self.vm().connect(&opts) {
            Ok(c) => c,
            Err(e) => {
                let vm = self.vm();
                panic!(
                    "cannot connect to VM {}: {e}\nconsole:\n{}",
                    vm.name(),
                    vm.console()
                )
            }
        }
    }

    /// The statistics of block device `dev` (`vda`, `ram0`) now, read
    /// through a client of its own.
    pub fn disk_stats(&mut self, dev: &str) -> ktrace_abi::block::DeviceStats {
        self.client()
            .disk_stats_of(dev)
            .unwrap()
            .unwrap_or_else(|| panic!("no block device {dev}"))
    }

    /// Connect without the handshake.
    pub fn raw_client(&mut self) -> Client {
        match self.vm().connect_raw() {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to VM {}: {e}", self.name()),
        }
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            // No clean shutdown: the test is over, and a kernel in a bad
            // state must not stall the suite.
            vm.kill();
            remove_vm_dir(&vm.paths().dir);
        }
    }
}

/// The directory of the tool binaries of this workspace (`ktrace`,
/// `kperf`, `biolatency`, `biosnoop`), all built once if missing or stale.
pub fn tools_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test executable lives in <target>/<profile-dir>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable outside a cargo target dir");
        let target_dir = profile_dir.parent().expect("cargo target dir");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(kernel_image::workspace_root())
            .args(["build", "--quiet", "-p", "ktrace-tools", "--bins"])
            .args(["--profile", &profile])
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("cannot run cargo");
        assert!(status.success(), "building the tools failed");
        profile_dir.to_path_buf()
    })
}

/// A tool binary of this workspace (`biolatency`, `biosnoop`, `kperf`,
/// `ktrace`), built once, reading the tests' kernel ELF.
pub fn tool(name: &str) -> Command {
    let mut cmd = Command::new(tools_dir().join(name));
    cmd.env(kernel_image::KERNEL_ENV, &kernel_image().source);
    cmd
}

/// Runs a [`tool`] to its end.
pub fn run_tool(name: &str, args: &[&str]) -> Output {
    tool(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Runs a [`tool`] that must succeed; its standard output.
pub fn run_tool_ok(name: &str, args: &[&str]) -> String {
    let out = run_tool(name, args);
    assert!(
        out.status.success(),
        "{name} {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `ktrace` binary of this workspace, built if missing or stale.
pub fn ktrace_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| tools_dir().join("ktrace"))
}

/// A `ktrace` command that boots the prepared kernel (no rebuild).
pub fn ktrace() -> Command {
    let mut cmd = Command::new(ktrace_bin());
    cmd.env(kernel_image::KERNEL_ENV, &kernel_image().source);
    cmd
}

/// Run `ktrace args...`; panics with its output if it fails.
pub fn ktrace_ok(args: &[&str]) -> String {
    let out = ktrace().args(args).output().expect("cannot run ktrace");
    assert_success(args, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_success(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "ktrace {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills VM `name` (started through the CLI) when dropped.
pub struct CliVmGuard(pub String);

impl Drop for CliVmGuard {
    fn drop(&mut self) {
        if let Ok(mut vm) = Vm::attach(&self.0) {
            vm.kill();
        }
        if let Ok(entry) = probe_sdk::vm::status(&self.0) {
            remove_vm_dir(&entry.paths.dir);
        }
    }
}

/// Remove a test VM's directory, unless the test failed (its console log
/// is then worth keeping).
pub fn remove_vm_dir(dir: &Path) {
    if !std::thread::panicking() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `text` parsed as JSON; panics showing the text when it is not.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Compiles the C BPF program `source` with clang (`clang-22 -target bpf
/// -O2 -g`, the compiler the setup installs) into `dir/NAME.bpf.o` and
/// returns the object's path; the source is kept beside it as `NAME.c`,
/// with the header `ktrace helpers --c-header` prints
/// (`#include "ktrace_helpers.h"`: `struct bpf_map_def`, the helpers).
pub fn compile_c(dir: &Path, name: &str, source: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the object's directory");
    std::fs::write(
        dir.join(ktrace_bpf_platform::C_HEADER_NAME),
        ktrace_bpf_platform::CHeader.to_string(),
    )
    .expect("write the helpers' C header");
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write the C source");
    let obj = dir.join(format!("{name}.bpf.o"));
    let out = Command::new("clang-22")
        .args(["-target", "bpf", "-O2", "-g", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .expect("run clang-22 (installed by scripts/setup.sh)");
    assert!(
        out.status.success(),
        "clang-22 -target bpf failed on {name}.c:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    obj
}

/// BPF assembly (the `probe_sdk` assembler's syntax): adds 1 to slot 0 of
/// map 0, an array, with `lock add`, so hits on every CPU at once count
/// exactly. Returns 0.
pub const COUNT_IN_SLOT_0: &str = "
    stw [%r10-4], 0
    lddw %r1, map_idx(0)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    mov %r1, 1
    lock add [%r0], %r1
out:
    mov %r0, 0
    exit
";

/// BPF assembly: adds 1 to this CPU's slot 0 of map 0, a per-CPU array,
/// with a plain add: only this CPU writes that value, and programs run
/// with interrupts off, so the count is exact. Returns 0.
pub const PER_CPU_COUNT_IN_SLOT_0: &str = "
    stw [%r10-4], 0
    lddw %r1, map_idx(0)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    ldxdw %r1, [%r0]
    add %r1, 1
    stxdw [%r0], %r1
out:
    mov %r0, 0
    exit
";

/// BPF assembly: appends a 16-byte record `[0x55, seq]` to the ring buffer
/// map 1, `seq` counting up from 1 in slot 0 of the array map 0 (`lock
/// fetch add`, so records from several CPUs still get distinct numbers).
/// Returns 0.
pub const RING_RECORD_WITH_SEQ: &str = "
    stw [%r10-4], 0
    lddw %r1, map_idx(0)
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, out
    mov %r1, 1
    lock fetch add [%r0], %r1
    stxdw [%r10-16], %r1
    stdw [%r10-24], 0x55
    lddw %r1, map_idx(1)
    mov %r2, %r10
    add %r2, -24
    mov %r3, 16
    mov %r4, 0
    call 130
out:
    mov %r0, 0
    exit
";

/// A program to load, from BPF assembly (the `probe_sdk` assembler's
/// syntax): GPL, no line table. Panics naming `name` when the assembly is
/// wrong.
pub fn asm_program(
    name: &str,
    section: String,
    prog_type: ktrace_abi::bpf::ProgramType,
    attach: ktrace_abi::bpf::AttachTarget,
    asm: &str,
) -> ktrace_abi::bpf::ProgramLoad {
    let prog = bpf_vm::asm::assemble(asm).unwrap_or_else(|e| panic!("{name}: {e}"));
    ktrace_abi::bpf::ProgramLoad {
        name: name.into(),
        section,
        prog_type,
        attach,
        insns: prog.encode(),
        license: "GPL".into(),
        lines: None,
    }
}

/// Creates a map of [`map_def`]`(name, ...)` through `rt`; its id.
pub fn create_map(
    rt: &mut Runtime,
    name: &str,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> u32 {
    rt.map_create(map_def(name, map_type, key_size, value_size, max_entries))
        .unwrap_or_else(|e| panic!("creating map {name}: {e}"))
        .id
}

/// What the kernel lists of program `id`.
pub fn prog_info(rt: &mut Runtime, id: u32) -> ktrace_abi::bpf::ProgInfo {
    rt.progs()
        .unwrap()
        .into_iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("no program {id} listed"))
}

/// What the kernel lists of link `id`.
pub fn link_info(rt: &mut Runtime, id: u32) -> ktrace_abi::bpf::LinkInfo {
    rt.links()
        .unwrap()
        .into_iter()
        .find(|l| l.id == id)
        .unwrap_or_else(|| panic!("no link {id} listed"))
}

/// `bytes` as little-endian u64s (a map value: per-CPU values, counters).
pub fn u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A map definition with no flags, no initial value and no types: what a
/// test creates through the protocol (`Runtime::map_create`).
pub fn map_def(
    name: &str,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> ktrace_abi::bpf::MapDefinition {
    ktrace_abi::bpf::MapDefinition {
        name: name.into(),
        map_type,
        key_size,
        value_size,
        max_entries,
        flags: 0,
        initial_value: Vec::new(),
        read_only: false,
        types: Default::default(),
    }
}

/// Runs the tool `bin` with `args` writing into a pipe whose reader has
/// already left, and checks that it ended the way `cat` does: killed by
/// SIGPIPE, with no panic on stderr.
pub fn assert_ends_by_sigpipe(bin: &str, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = tool(bin)
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(13),
        "{bin} {args:?}: {}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{bin} {args:?}: {stderr}");
}
