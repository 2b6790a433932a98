//! `ktrace disk`: block devices, their `/proc/diskstats`-like statistics
//! and their I/O schedulers.

use std::fmt::Write as _;

use ktrace_abi::block::DeviceStats;
use probe_sdk::client::ConnectOptions;
use probe_sdk::vm::Vm;

/// Arguments of `ktrace disk`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// `ktrace disk` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Devices and their statistics.
    Stats {
        /// Only this device.
        #[arg(long)]
        dev: Option<String>,
        /// Print the lines of `/proc/diskstats` instead of a table.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Select a device's I/O scheduler.
    Scheduler {
        /// The device (`vda`, `ram0`, ...).
        dev: String,
        /// `deadline` (merging) or `none` (FIFO).
        scheduler: String,
    },
}

/// Run `ktrace disk` against VM `vm_name`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let vm = Vm::attach(vm_name)?;
    let mut client = vm.connect(&ConnectOptions {
        client_name: "ktrace disk".into(),
        ..ConnectOptions::default()
    })?;
    match args.command {
        Command::Stats { dev, raw, json } => {
            let mut stats = client.disk_stats()?;
            if let Some(d) = &dev {
                let known: Vec<String> = stats.iter().map(|s| s.name.clone()).collect();
                stats.retain(|s| &s.name == d);
                if stats.is_empty() {
                    anyhow::bail!("no block device {d:?}; devices: {}", known.join(", "));
                }
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&stats)?);
            } else if raw {
                for s in &stats {
                    outln!("{}", s.diskstats_line());
                }
            } else {
                out!("{}", render(&stats));
            }
        }
        Command::Scheduler { dev, scheduler } => {
            client.set_scheduler(&dev, &scheduler)?;
            outln!("{dev}: scheduler {scheduler}");
        }
    }
    Ok(())
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// The table `ktrace disk stats` prints.
pub fn render(stats: &[DeviceStats]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<6} {:<10} {:>9} {:<9} {:>8} {:>7} {:>10} {:>8} {:>8} {:>7} {:>10} {:>8} {:>6} {:>6} {:>9} {:>9} {:>7}",
        "dev", "kind", "size", "sched", "r_ios", "r_merge", "r_sectors", "r_ms",
        "w_ios", "w_merge", "w_sectors", "w_ms", "f_ios", "inflt", "io_ms", "queue_ms", "errors"
    );
    for d in stats {
        let _ = writeln!(
            s,
            "{:<6} {:<10} {:>8}M {:<9} {:>8} {:>7} {:>10} {:>8} {:>8} {:>7} {:>10} {:>8} {:>6} {:>6} {:>9} {:>9} {:>7}",
            d.name,
            d.kind,
            d.capacity_sectors / 2048,
            d.scheduler,
            d.read.ios,
            d.read.merges,
            d.read.sectors,
            ms(d.read.ticks_ns),
            d.write.ios,
            d.write.merges,
            d.write.sectors,
            ms(d.write.ticks_ns),
            d.flush.ios,
            d.in_flight,
            ms(d.io_ticks_ns),
            ms(d.time_in_queue_ns),
            d.errors
        );
    }
    s
}
