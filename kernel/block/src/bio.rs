//! Bios: one I/O from one submitter.

use alloc::vec::Vec;
use core::fmt;

/// Bytes in a sector, the unit of every address and size in the block layer.
pub const SECTOR_SIZE: usize = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;

/// What a bio does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read sectors into the bio's buffer.
    Read,
    /// Write the bio's buffer to sectors.
    Write,
    /// Make earlier completed writes durable; carries no data.
    Flush,
}

impl Op {
    /// Index into per-operation arrays: read 0, write 1, flush 2.
    pub fn index(self) -> usize {
        match self {
            Op::Read => 0,
            Op::Write => 1,
            Op::Flush => 2,
        }
    }

    /// Whether the device writes into the data buffer.
    pub fn is_read(self) -> bool {
        self == Op::Read
    }
}

/// Bio flags, as in Linux's `REQ_*` bits that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BioFlags(pub u32);

impl BioFlags {
    /// No flags.
    pub const NONE: Self = Self(0);
    /// The submitter waits for this I/O (`REQ_SYNC`; `S` in `rwbs`).
    pub const SYNC: Self = Self(1);
    /// Filesystem metadata (`REQ_META`; `M` in `rwbs`).
    pub const META: Self = Self(2);
    /// Force unit access: durable on completion (`REQ_FUA`; `F` in `rwbs`
    /// after the operation letter).
    pub const FUA: Self = Self(4);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for BioFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Linux's `rwbs` string for an operation and flags (`R`, `WS`, `FWS`,
/// `RM`, ...), NUL padded to 8 bytes as in trace records.
pub fn rwbs(op: Op, flags: BioFlags) -> [u8; 8] {
    let mut out = [0u8; 8];
    let mut i = 0;
    let mut put = |c: u8| {
        out[i] = c;
        i += 1;
    };
    match op {
        // Linux writes a flush as `F` followed by the write it carries
        // (`FWS` for a bare preflush); a bare flush has no data: `FN`.
        Op::Flush => {
            put(b'F');
            put(b'N');
        }
        Op::Write => {
            if flags.contains(BioFlags::FUA) {
                put(b'F');
            }
            put(b'W');
        }
        Op::Read => {
            if flags.contains(BioFlags::FUA) {
                put(b'F');
            }
            put(b'R');
        }
    }
    if flags.contains(BioFlags::SYNC) {
        put(b'S');
    }
    if flags.contains(BioFlags::META) {
        put(b'M');
    }
    out
}

/// Why an I/O failed. The submitter gets one of these as its bio's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The bio reaches past the last sector of the device.
    OutOfRange {
        /// First sector of the bio.
        sector: u64,
        /// Sectors in the bio.
        nr_sectors: u64,
        /// Sectors on the device.
        capacity: u64,
    },
    /// The data size is zero (for a read or write) or not a multiple of
    /// [`SECTOR_SIZE`].
    BadSize {
        /// The size given.
        bytes: usize,
    },
    /// A flush carried data.
    FlushWithData {
        /// The size given.
        bytes: usize,
    },
    /// The device refused a write: it is read-only.
    ReadOnly,
    /// The device reported an error for the request.
    Device {
        /// The device's status code (virtio: 1 = I/O error, 2 = unsupported).
        status: u32,
    },
}

impl BlockError {
    /// The negative Linux errno that Linux reports for the same failure
    /// (`block_rq_complete`'s `error` field).
    pub fn errno(&self) -> i32 {
        match self {
            // Linux fails bios beyond the end of the device with EIO.
            BlockError::OutOfRange { .. } | BlockError::Device { status: 1 } => -5,
            BlockError::Device { status: 2 } => -95,
            BlockError::Device { .. } => -5,
            BlockError::BadSize { .. } | BlockError::FlushWithData { .. } => -22,
            BlockError::ReadOnly => -30,
        }
    }
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::OutOfRange { sector, nr_sectors, capacity } => write!(
                f,
                "sectors {sector}..{} are beyond the end of the device ({capacity} sectors)",
                sector.saturating_add(*nr_sectors)
            ),
            BlockError::BadSize { bytes } => write!(
                f,
                "size {bytes} bytes is not a non-zero multiple of the sector size ({SECTOR_SIZE} bytes)"
            ),
            BlockError::FlushWithData { bytes } => {
                write!(f, "a flush carries no data, but {bytes} bytes were given")
            }
            BlockError::ReadOnly => write!(f, "the device is read-only"),
            BlockError::Device { status } => {
                let what = match status {
                    1 => "I/O error",
                    2 => "operation not supported",
                    _ => "unknown status",
                };
                write!(f, "the device reported an error: {what} (status {status})")
            }
        }
    }
}

/// Check a bio before it is queued: size and range. `capacity` is in
/// sectors.
pub fn check_bio(op: Op, sector: u64, bytes: usize, capacity: u64) -> Result<(), BlockError> {
    if op == Op::Flush {
        return if bytes == 0 {
            Ok(())
        } else {
            Err(BlockError::FlushWithData { bytes })
        };
    }
    if bytes == 0 || !bytes.is_multiple_of(SECTOR_SIZE) {
        return Err(BlockError::BadSize { bytes });
    }
    let nr_sectors = (bytes / SECTOR_SIZE) as u64;
    match sector.checked_add(nr_sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(BlockError::OutOfRange {
            sector,
            nr_sectors,
            capacity,
        }),
    }
}

/// One I/O from one submitter.
///
/// `P` is the submitter's completion token: the block layer carries it and
/// hands the bio back through it, so this crate needs no knowledge of tasks
/// or wait queues.
#[derive(Debug)]
pub struct Bio<P> {
    /// Unique id (`bio_id` in trace records).
    pub id: u64,
    /// The operation.
    pub op: Op,
    /// Flags.
    pub flags: BioFlags,
    /// First sector.
    pub sector: u64,
    /// Data: the bytes to write, or the buffer a read fills. Its length is
    /// the I/O size (a multiple of [`SECTOR_SIZE`]; empty for a flush).
    pub data: Vec<u8>,
    /// Pid of the submitting task.
    pub submitter: u32,
    /// When the bio entered the queue (ns).
    pub queued_ns: u64,
    /// Outcome, set at completion.
    pub status: Result<(), BlockError>,
    /// The submitter's completion token.
    pub private: P,
}

impl<P> Bio<P> {
    /// A bio with no id, timestamp or status yet (the queue sets them).
    pub fn new(
        op: Op,
        flags: BioFlags,
        sector: u64,
        data: Vec<u8>,
        submitter: u32,
        private: P,
    ) -> Self {
        Self {
            id: 0,
            op,
            flags,
            sector,
            data,
            submitter,
            queued_ns: 0,
            status: Ok(()),
            private,
        }
    }

    /// Size in sectors.
    pub fn nr_sectors(&self) -> u32 {
        (self.data.len() / SECTOR_SIZE) as u32
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u32 {
        self.data.len() as u32
    }

    /// The sector just past the bio.
    pub fn end_sector(&self) -> u64 {
        self.sector + u64::from(self.nr_sectors())
    }

    /// Linux's `rwbs` string.
    pub fn rwbs(&self) -> [u8; 8] {
        rwbs(self.op, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn checks_size_and_range() {
        assert_eq!(check_bio(Op::Read, 0, 4096, 8), Ok(()));
        assert_eq!(
            check_bio(Op::Read, 1, 4096, 8),
            Err(BlockError::OutOfRange {
                sector: 1,
                nr_sectors: 8,
                capacity: 8
            })
        );
        assert_eq!(
            check_bio(Op::Write, 0, 513, 8),
            Err(BlockError::BadSize { bytes: 513 })
        );
        assert_eq!(
            check_bio(Op::Write, 0, 0, 8),
            Err(BlockError::BadSize { bytes: 0 })
        );
        assert_eq!(check_bio(Op::Flush, 0, 0, 8), Ok(()));
        assert_eq!(
            check_bio(Op::Flush, 0, 512, 8),
            Err(BlockError::FlushWithData { bytes: 512 })
        );
        // No overflow at the top of the sector space.
        assert!(matches!(
            check_bio(Op::Read, u64::MAX, 512, 8),
            Err(BlockError::OutOfRange { .. })
        ));
    }

    #[test]
    fn errors_read_well_and_map_to_errno() {
        let e = BlockError::OutOfRange {
            sector: 131072,
            nr_sectors: 8,
            capacity: 131072,
        };
        assert_eq!(
            e.to_string(),
            "sectors 131072..131080 are beyond the end of the device (131072 sectors)"
        );
        assert_eq!(e.errno(), -5);
        assert_eq!(
            BlockError::BadSize { bytes: 100 }.to_string(),
            "size 100 bytes is not a non-zero multiple of the sector size (512 bytes)"
        );
        assert_eq!(BlockError::BadSize { bytes: 100 }.errno(), -22);
        assert_eq!(
            BlockError::Device { status: 1 }.to_string(),
            "the device reported an error: I/O error (status 1)"
        );
    }

    #[test]
    fn rwbs_matches_linux() {
        assert_eq!(&rwbs(Op::Read, BioFlags::NONE)[..2], b"R\0");
        assert_eq!(&rwbs(Op::Write, BioFlags::SYNC)[..3], b"WS\0");
        assert_eq!(
            &rwbs(Op::Write, BioFlags::SYNC | BioFlags::FUA)[..4],
            b"FWS\0"
        );
        assert_eq!(&rwbs(Op::Read, BioFlags::META)[..3], b"RM\0");
        assert_eq!(&rwbs(Op::Flush, BioFlags::NONE)[..3], b"FN\0");
    }
}
