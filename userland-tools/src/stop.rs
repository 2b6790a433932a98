//! How a tool ends: a reader that closes the pipe (`biosnoop | head -2`),
//! Ctrl-C, SIGTERM, a closed terminal.
//!
//! Rust's runtime ignores SIGPIPE, so a write to a closed pipe fails with
//! `EPIPE`, and `println!` turns that failure into a panic. The tools print
//! through [`outln!`]/[`out!`] (stdout) and [`errln!`]/[`err!`] (stderr)
//! instead, which never panic.
//!
//! Most commands hold nothing in the kernel while they print (`ktrace
//! symbols`, `ktrace check`, `kperf report`): for them a closed stdout ends
//! the process on the spot, the way SIGPIPE ends `cat`, and signals keep
//! their default action.
//!
//! A tool that puts objects into the kernel (biosnoop's programs, maps and
//! links; kperf's counters) must take them out before it exits. Once they
//! exist it calls [`catch_signals`]; from then on SIGINT, SIGTERM and SIGHUP
//! and a closed stdout only record *why* it should stop ([`stop_requested`]),
//! its loops see that, it removes what it loaded and returns, and [`exit`]
//! finally ends the process the way the cause would have: by SIGPIPE or
//! SIGTERM/SIGHUP (so a shell or a supervisor sees the usual status, 141 or
//! 143), or with status 0 after Ctrl-C, which for `biolatency` is the normal
//! way to ask for the histogram, as with BCC's tools.
//!
//! Concurrency: the signal handlers only store into an atomic (which is
//! async-signal-safe); everything else runs on the main thread. A second
//! SIGINT/SIGTERM/SIGHUP kills at once (`SA_RESETHAND`), for a tool stuck in
//! a request that does not come back.

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Why the tool should stop: 0 (keep going), a signal number, or
/// [`CLOSED_STDOUT`].
static STOP: AtomicI32 = AtomicI32::new(0);
/// Set by [`catch_signals`]: the tool cleans up before it exits.
static CATCHING: AtomicBool = AtomicBool::new(false);

/// The reader of stdout went away. Not a signal number (those are > 0).
const CLOSED_STDOUT: i32 = -1;

extern "C" fn on_signal(signal: libc::c_int) {
    // Keep the first cause: a SIGINT that comes after a closed pipe
    // changes nothing.
    let _ = STOP.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM, SIGHUP and a closed stdout ask the tool to
/// stop ([`stop_requested`]) instead of ending it, so it can remove what it
/// put into the kernel. A second signal ends the process at once.
pub fn catch_signals() {
    CATCHING.store(true, Ordering::SeqCst);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only stores to an atomic
        // (async-signal-safe); `SA_RESETHAND` restores the default action
        // once it ran. No `SA_RESTART`: blocking reads return `EINTR`,
        // which the client retries after a look at the flag.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal, &sa, std::ptr::null_mut());
        }
    }
}

/// `true` once a signal came or stdout was closed (after [`catch_signals`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst) != 0
}

/// `true` once a write to stdout failed because its reader left.
pub fn stdout_closed() -> bool {
    STOP.load(Ordering::SeqCst) == CLOSED_STDOUT
}

/// Sleeps `d`, waking early when the tool should stop; returns `false`
/// then.
pub fn sleep_unless_stopped(d: Duration) -> bool {
    let end = Instant::now() + d;
    while !stop_requested() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    false
}

/// Writes to stdout (what [`out!`] and [`outln!`] expand to). After the
/// reader left, writes are dropped.
pub fn write_stdout(args: fmt::Arguments<'_>) {
    if stdout_closed() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        drop(stdout);
        stdout_failed(&e);
    }
}

/// Writes to stderr (what [`err!`] and [`errln!`] expand to); a stderr
/// that cannot be written to has nobody to tell.
pub fn write_stderr(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Flushes stdout (after [`out!`] without a newline).
pub fn flush_stdout() {
    if stdout_closed() {
        return;
    }
    if let Err(e) = std::io::stdout().lock().flush() {
        stdout_failed(&e);
    }
}

/// A write to stdout failed with `e`. A closed pipe (or terminal) is the
/// reader's way of saying "enough": quiet, and either the end of the
/// process or a request to stop. Anything else (a full disk) is said once.
fn stdout_failed(e: &std::io::Error) {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        write_stderr(format_args!("cannot write to stdout: {e}\n"));
    }
    if !CATCHING.load(Ordering::SeqCst) {
        die_of(libc::SIGPIPE);
    }
    STOP.store(CLOSED_STDOUT, Ordering::SeqCst);
}

/// Ends the process by `signal` with its default action (SIGPIPE and
/// SIGTERM terminate), the status a parent expects from a tool it piped
/// into `head` or terminated.
fn die_of(signal: libc::c_int) -> ! {
    // SAFETY: restoring a default action and raising a signal have no
    // memory-safety conditions; the buffered stdout is dropped unflushed,
    // which is what its reader asked for.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    // Not reached for a terminating signal; a status like the shell's.
    std::process::exit(128 + signal)
}

/// `true` when `e` (or one of its causes) is a write to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The end of a tool's `main`: errors go to stderr with the tool's name and
/// their whole chain of causes; after a closed stdout or SIGTERM/SIGHUP the
/// process ends by that signal (see the module docs).
pub fn exit(tool: &str, result: anyhow::Result<()>) -> ExitCode {
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        // A write to the closed pipe that came back as an error (a writer
        // handed to a library) is the pipe's end, not a failure.
        Err(e) if is_broken_pipe(&e) => die_of(libc::SIGPIPE),
        Err(e) => {
            write_stderr(format_args!("{tool}: {e:#}\n"));
            ExitCode::FAILURE
        }
    };
    match STOP.load(Ordering::SeqCst) {
        CLOSED_STDOUT => die_of(libc::SIGPIPE),
        s @ (libc::SIGTERM | libc::SIGHUP) => die_of(s),
        _ => code,
    }
}

/// `print!` that never panics: see the [module docs](crate::stop).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stop::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` that never panics: see the [module docs](crate::stop).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stop::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stop::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that never panics.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::stop::write_stderr(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    () => {
        $crate::stop::write_stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stop::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
