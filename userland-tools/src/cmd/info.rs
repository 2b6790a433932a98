//! `ktrace info`: uptime, memory and tasks of the running kernel.

use std::fmt::Write as _;

use ktrace_abi::vm::{SystemInfo, TaskState};
use probe_sdk::client::ConnectOptions;
use probe_sdk::vm::Vm;

/// Arguments of `ktrace info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON (the `SystemInfo` record) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run `ktrace info` against VM `vm_name`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let vm = Vm::attach(vm_name)?;
    let mut client = vm.connect(&ConnectOptions {
        client_name: "ktrace info".into(),
        ..ConnectOptions::default()
    })?;
    let info = client.info()?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        out!("{}", render(&info));
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Running => "running",
        TaskState::Ready => "ready",
        TaskState::Sleeping => "sleeping",
        TaskState::Blocked => "blocked",
        TaskState::Exited => "exited",
    }
}

/// The human-readable form of `info`.
pub fn render(info: &SystemInfo) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "kernel            {}", info.kernel_version);
    let _ = writeln!(s, "uptime            {:.3} s", info.uptime_ns as f64 / 1e9);
    let _ = writeln!(
        s,
        "cpus              {} (TSC {:.3} GHz)",
        info.cpus,
        info.tsc_khz as f64 / 1e6
    );
    let _ = writeln!(
        s,
        "memory            {} used of {}",
        mib(info.memory_used_bytes),
        mib(info.memory_total_bytes)
    );
    let _ = writeln!(
        s,
        "heap              {} used of {} ({} bytes)",
        mib(info.heap_used_bytes),
        mib(info.heap_total_bytes),
        info.heap_used_bytes
    );
    let _ = writeln!(
        s,
        "timer             {} ticks at {} Hz",
        info.timer_ticks, info.timer_hz
    );
    let _ = writeln!(s, "context switches  {}", info.context_switches);
    let _ = writeln!(s, "bad frames        {}", info.bad_frames);
    let _ = writeln!(
        s,
        "control link      {} ({} bytes in, {} bytes out)",
        info.control_link, info.control_rx_bytes, info.control_tx_bytes
    );
    let _ = writeln!(
        s,
        "clients gone      {} (left {} bytes unfinished in, {} bytes unread out; {} transmit queues rebuilt, {} buffers lost)",
        info.control_disconnects,
        info.control_abandoned_rx_bytes,
        info.control_abandoned_tx_bytes,
        info.control_tx_queue_rebuilds,
        info.control_tx_slots_lost
    );
    // Sessions that streamed events since boot, one line each.
    let streamed: Vec<_> = info
        .event_sessions
        .iter()
        .filter(|e| e.batches_pushed + e.batches_held + e.batches_dropped + e.records_waiting > 0)
        .collect();
    if streamed.is_empty() {
        let _ = writeln!(s, "event streams     none since boot");
    }
    for (i, e) in streamed.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:<18}session {}: batches pushed {} ({} records), held back {}, dropped {} ({} records); records waiting {}",
            if i == 0 { "event streams" } else { "" },
            e.session,
            e.batches_pushed,
            e.records_pushed,
            e.batches_held,
            e.batches_dropped,
            e.records_dropped,
            e.records_waiting
        );
    }
    let _ = writeln!(s);
    let name_w = info
        .tasks
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        s,
        "{:>5}  {:<name_w$}  {:<8}  {:>3}  {:>12}  {:>10}  {:>10}",
        "PID", "NAME", "STATE", "CPU", "RUNTIME(ms)", "SWITCHES", "MIGRATIONS"
    );
    for t in &info.tasks {
        let _ = writeln!(
            s,
            "{:>5}  {:<name_w$}  {:<8}  {:>3}  {:>12.3}  {:>10}  {:>10}",
            t.pid,
            t.name,
            state_name(t.state),
            t.cpu,
            t.runtime_ns as f64 / 1e6,
            t.switches,
            t.migrations
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrace_abi::vm::{EventSessionStats, TaskInfo};

    #[test]
    fn table_layout() {
        let info = SystemInfo {
            kernel_version: "ktrace 0.1.0".into(),
            uptime_ns: 1_500_000_000,
            cpus: 1,
            tsc_khz: 2_000_000,
            memory_total_bytes: 256 << 20,
            memory_used_bytes: 3 << 20,
            heap_total_bytes: 16 << 20,
            heap_used_bytes: 1 << 19,
            timer_ticks: 150,
            timer_hz: 100,
            context_switches: 42,
            tasks: vec![
                TaskInfo {
                    pid: 0,
                    name: "idle".into(),
                    state: TaskState::Ready,
                    runtime_ns: 1_000_000_000,
                    switches: 20,
                    cpu: 0,
                    migrations: 0,
                },
                TaskInfo {
                    pid: 1,
                    name: "control".into(),
                    state: TaskState::Running,
                    runtime_ns: 2_500_000,
                    switches: 22,
                    cpu: 1,
                    migrations: 4,
                },
            ],
            bad_frames: 0,
            control_link: "virtio-serial".into(),
            control_rx_bytes: 10,
            control_tx_bytes: 20,
            control_tx_waits: 0,
            control_disconnects: 3,
            control_abandoned_rx_bytes: 7,
            control_abandoned_tx_bytes: 65536,
            control_dropped_rx_bytes: 0,
            control_tx_slots_lost: 0,
            control_tx_queue_rebuilds: 1,
            control_closes_after_reopen: 0,
            event_sessions: vec![
                EventSessionStats {
                    session: 0,
                    batches_pushed: 247,
                    records_pushed: 3000,
                    batches_held: 2,
                    batches_dropped: 0,
                    records_dropped: 0,
                    records_waiting: 0,
                },
                EventSessionStats {
                    session: 1,
                    ..EventSessionStats::default()
                },
                EventSessionStats {
                    session: 2,
                    batches_pushed: 1,
                    records_pushed: 10,
                    batches_held: 1,
                    batches_dropped: 1,
                    records_dropped: 64,
                    records_waiting: 0,
                },
            ],
        };
        assert_eq!(
            render(&info),
            "kernel            ktrace 0.1.0
uptime            1.500 s
cpus              1 (TSC 2.000 GHz)
memory            3.0 MiB used of 256.0 MiB
heap              0.5 MiB used of 16.0 MiB (524288 bytes)
timer             150 ticks at 100 Hz
context switches  42
bad frames        0
control link      virtio-serial (10 bytes in, 20 bytes out)
clients gone      3 (left 7 bytes unfinished in, 65536 bytes unread out; 1 transmit queues rebuilt, 0 buffers lost)
event streams     session 0: batches pushed 247 (3000 records), held back 2, dropped 0 (0 records); records waiting 0
                  session 2: batches pushed 1 (10 records), held back 1, dropped 1 (64 records); records waiting 0

  PID  NAME     STATE     CPU   RUNTIME(ms)    SWITCHES  MIGRATIONS
    0  idle     ready       0      1000.000          20           0
    1  control  running     1         2.500          22           4
"
        );
    }
}
