//! `biosnoop`: one line per completed block request, decoded from the
//! embedded `examples/biosnoop` probe's ring buffer records.

use serde::Serialize;

use super::{c_str, disk_name};

/// Size of the probe's `Event` record.
pub const EVENT_SIZE: usize = 72;

/// One completed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Completion time, ns since boot.
    pub ts_ns: u64,
    pub comm: String,
    pub pid: u32,
    pub disk: String,
    /// `R`, `W`, `WS`, `F`, ...
    pub rwbs: String,
    pub sector: u64,
    pub bytes: u32,
    /// Time between insertion and issue, ns (0 when the insert was missed).
    pub queue_ns: u64,
    /// Time between issue and completion, ns.
    pub latency_ns: u64,
    /// 0 or a negative errno.
    pub error: i32,
}

impl Event {
    /// Decodes a record (layout of `examples/biosnoop`'s `Event`).
    pub fn decode(b: &[u8], disks: &[(u32, String)]) -> Option<Event> {
        if b.len() < EVENT_SIZE {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
        Some(Event {
            ts_ns: u64_at(0),
            sector: u64_at(8),
            queue_ns: u64_at(16),
            latency_ns: u64_at(24),
            disk: disk_name(disks, u32_at(32)),
            bytes: u32_at(36),
            pid: u32_at(40),
            error: u32_at(44) as i32,
            rwbs: c_str(&b[48..56]),
            comm: c_str(&b[56..72]),
        })
    }
}

/// The column header; `queue` adds the queue-time column (`-Q`).
pub fn header(queue: bool) -> String {
    format!(
        "{:<11} {:<14} {:>6} {:<7} {:<2} {:>10} {:>7}{} {:>7}",
        "TIME(s)",
        "COMM",
        "PID",
        "DISK",
        "T",
        "SECTOR",
        "BYTES",
        if queue {
            format!(" {:>7}", "QUE(ms)")
        } else {
            String::new()
        },
        "LAT(ms)"
    )
}

/// One line; `t0_ns` is the time shown as 0.
pub fn line(e: &Event, t0_ns: u64, queue: bool) -> String {
    let rw = if e.rwbs.contains('W') {
        "W"
    } else if e.rwbs.contains('R') {
        "R"
    } else {
        e.rwbs.as_str()
    };
    format!(
        "{:<11.6} {:<14} {:>6} {:<7} {:<2} {:>10} {:>7}{} {:>7.2}{}",
        e.ts_ns.saturating_sub(t0_ns) as f64 / 1e9,
        e.comm,
        e.pid,
        e.disk,
        rw,
        e.sector,
        e.bytes,
        if queue {
            format!(" {:>7.2}", e.queue_ns as f64 / 1e6)
        } else {
            String::new()
        },
        e.latency_ns as f64 / 1e6,
        if e.error != 0 {
            format!("  error {}", e.error)
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_probe_layout() {
        let mut b = Vec::new();
        b.extend(2_000_000_000u64.to_le_bytes());
        b.extend(4096u64.to_le_bytes());
        b.extend(250_000u64.to_le_bytes());
        b.extend(1_500_000u64.to_le_bytes());
        b.extend((252u32 << 20).to_le_bytes());
        b.extend(4096u32.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        b.extend(0i32.to_le_bytes());
        b.extend(*b"R\0\0\0\0\0\0\0");
        b.extend(*b"workload/0\0\0\0\0\0\0");
        let disks = vec![(252 << 20, "vda".to_string())];
        let e = Event::decode(&b, &disks).unwrap();
        assert_eq!(e.disk, "vda");
        assert_eq!(e.comm, "workload/0");
        assert_eq!(e.rwbs, "R");
        assert_eq!(
            line(&e, 1_000_000_000, true),
            "1.000000    workload/0          7 vda     R        4096    4096    0.25    1.50"
        );
        assert!(Event::decode(&b[..71], &disks).is_none());
    }
}
