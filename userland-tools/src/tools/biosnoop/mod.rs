//! `biosnoop`: one line per completed block request, decoded from the
//! embedded `examples/biosnoop` probe's ring buffer records through the
//! record type the probe declares (its DWARF `Event`, which the kernel
//! keeps with the map), the same way `ktrace events` prints them.

pub mod run;

use anyhow::Context as _;
use ktrace_abi::types::TypeDesc;
use probe_sdk::typed::{IntField, StructFields, TextField};
use serde::Serialize;

use crate::kernel::disk_name;

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
    /// CPU that completed the request (`None` from a probe whose record
    /// lacks it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
}

/// Reads the probe's records: the fields of its `Event` type, resolved by
/// name once.
#[derive(Debug, Clone)]
pub struct Decoder {
    size: usize,
    ts_ns: IntField,
    sector: IntField,
    queue_ns: IntField,
    service_ns: IntField,
    dev: IntField,
    bytes: IntField,
    pid: IntField,
    error: IntField,
    rwbs: TextField,
    comm: TextField,
    cpu: Option<IntField>,
}

impl Decoder {
    /// A decoder for records of `record` (the `EVENTS` map's declared
    /// record type), refused when the type lacks a field biosnoop prints.
    pub fn new(record: Option<&TypeDesc>) -> anyhow::Result<Decoder> {
        let record = record.context(
            "the biosnoop probe's EVENTS map declares no record type (was it built without debug info?)",
        )?;
        let f = StructFields::new(record)
            .map_err(|e| anyhow::anyhow!("the biosnoop probe's record type: {e}"))?;
        let int = |name: &str| {
            f.int(name)
                .map_err(|e| anyhow::anyhow!("the biosnoop probe's record type: {e}"))
        };
        let text = |name: &str| {
            f.text(name)
                .map_err(|e| anyhow::anyhow!("the biosnoop probe's record type: {e}"))
        };
        Ok(Decoder {
            size: f.size(),
            ts_ns: int("ts_ns")?,
            sector: int("sector")?,
            queue_ns: int("queue_ns")?,
            service_ns: int("service_ns")?,
            dev: int("dev")?,
            bytes: int("bytes")?,
            pid: int("pid")?,
            error: int("error")?,
            rwbs: text("rwbs")?,
            comm: text("comm")?,
            cpu: f.int("cpu").ok(),
        })
    }

    /// The size of a record.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Decodes a record; `None` when it is shorter than the type.
    pub fn decode(&self, b: &[u8], disks: &[(u32, String)]) -> Option<Event> {
        if b.len() < self.size {
            return None;
        }
        Some(Event {
            ts_ns: self.ts_ns.get(b)? as u64,
            sector: self.sector.get(b)? as u64,
            queue_ns: self.queue_ns.get(b)? as u64,
            latency_ns: self.service_ns.get(b)? as u64,
            disk: disk_name(disks, self.dev.get(b)? as u32),
            bytes: self.bytes.get(b)? as u32,
            pid: self.pid.get(b)? as u32,
            error: self.error.get(b)? as i32,
            rwbs: self.rwbs.get(b)?,
            comm: self.comm.get(b)?,
            cpu: match &self.cpu {
                Some(f) => Some(f.get(b)? as u32),
                None => None,
            },
        })
    }
}

/// Which optional columns a line has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Columns {
    /// The queue-time column (`-Q`, as BCC's).
    pub queue: bool,
    /// The CPU that completed the request (`--cpu`; BCC's biosnoop has no
    /// CPU column, so it is an option here).
    pub cpu: bool,
}

/// The column header.
pub fn header(cols: Columns) -> String {
    format!(
        "{:<11} {:<14} {:>6}{} {:<7} {:<2} {:>10} {:>7}{} {:>7}",
        "TIME(s)",
        "COMM",
        "PID",
        if cols.cpu {
            format!(" {:>3}", "CPU")
        } else {
            String::new()
        },
        "DISK",
        "T",
        "SECTOR",
        "BYTES",
        if cols.queue {
            format!(" {:>7}", "QUE(ms)")
        } else {
            String::new()
        },
        "LAT(ms)"
    )
}

/// One line; `t0_ns` is the time shown as 0.
pub fn line(e: &Event, t0_ns: u64, cols: Columns) -> String {
    let rw = if e.rwbs.contains('W') {
        "W"
    } else if e.rwbs.contains('R') {
        "R"
    } else {
        e.rwbs.as_str()
    };
    format!(
        "{:<11.6} {:<14} {:>6}{} {:<7} {:<2} {:>10} {:>7}{} {:>7.2}{}",
        e.ts_ns.saturating_sub(t0_ns) as f64 / 1e9,
        e.comm,
        e.pid,
        if cols.cpu {
            format!(" {:>3}", e.cpu.map_or("?".to_string(), |c| c.to_string()))
        } else {
            String::new()
        },
        e.disk,
        rw,
        e.sector,
        e.bytes,
        if cols.queue {
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

    /// The record type of the embedded probe's `EVENTS` map, from its DWARF.
    fn probe_record_type() -> TypeDesc {
        let bytes = crate::tools::embedded_probe("biosnoop").unwrap();
        let object = probe_sdk::object::parse(bytes).unwrap();
        let events = object.maps.iter().find(|m| m.name == "EVENTS").unwrap();
        events
            .types
            .record
            .clone()
            .expect("EVENTS declares its record type")
    }

    #[test]
    fn decodes_the_probe_layout() {
        let decoder = Decoder::new(Some(&probe_record_type())).unwrap();
        assert_eq!(decoder.size(), 80);
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
        b.extend(1u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        let disks = vec![(252 << 20, "vda".to_string())];
        let e = decoder.decode(&b, &disks).unwrap();
        assert_eq!(e.disk, "vda");
        assert_eq!(e.comm, "workload/0");
        assert_eq!(e.rwbs, "R");
        assert_eq!(e.cpu, Some(1));
        let queue = Columns {
            queue: true,
            cpu: false,
        };
        assert_eq!(
            line(&e, 1_000_000_000, queue),
            "1.000000    workload/0          7 vda     R        4096    4096    0.25    1.50"
        );
        let cpu = Columns {
            queue: false,
            cpu: true,
        };
        assert_eq!(
            header(cpu),
            "TIME(s)     COMM              PID CPU DISK    T      SECTOR   BYTES LAT(ms)"
        );
        assert_eq!(
            line(&e, 1_000_000_000, cpu),
            "1.000000    workload/0          7   1 vda     R        4096    4096    1.50"
        );
        assert!(decoder.decode(&b[..79], &disks).is_none());
    }

    #[test]
    fn a_record_type_without_a_field_is_refused() {
        assert_eq!(
            Decoder::new(None).unwrap_err().to_string(),
            "the biosnoop probe's EVENTS map declares no record type (was it built without debug info?)"
        );
        let mut t = probe_record_type();
        let root = t.nodes.len() - 1;
        if let ktrace_abi::types::TypeKind::Struct { fields } = &mut t.nodes[root].kind {
            fields.retain(|f| f.name != "sector");
        }
        assert_eq!(
            Decoder::new(Some(&t)).unwrap_err().to_string(),
            "the biosnoop probe's record type: `Event` has no field `sector`"
        );
    }
}
