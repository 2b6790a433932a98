//! The console on COM1: `log` records with a level and a timestamp since
//! boot, e.g. `[    1.234567] INFO  memory: 256 MiB RAM`.

use crate::arch::serial::COM1;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

static LOCK: Mutex<()> = Mutex::new(());
static PANICKING: AtomicBool = AtomicBool::new(false);

struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                COM1.write_byte(b'\r');
            }
            COM1.write_byte(b);
        }
        Ok(())
    }
}

/// Print formatted text to the console (no level, no timestamp).
pub fn print(args: fmt::Arguments<'_>) {
    if PANICKING.load(Ordering::Relaxed) {
        let _ = Com1.write_fmt(args);
        return;
    }
    let was = crate::arch::irq_save();
    {
        let _g = LOCK.lock();
        let _ = Com1.write_fmt(args);
    }
    crate::arch::irq_restore(was);
}

/// From now on write without taking the lock: the panic path must not wait
/// for a lock the panicking code may hold.
pub fn enter_panic_mode() -> bool {
    !PANICKING.swap(true, Ordering::SeqCst)
}

/// `print!` to the console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// `println!` to the console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ns = crate::time::now_ns();
        print(format_args!(
            "[{:5}.{:06}] {:<5} {}\n",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000,
            record.level(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Initialise COM1 and the logger.
pub fn init() {
    COM1.init();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}
