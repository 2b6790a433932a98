//! Frame layout and a resynchronising frame reader.
//!
//! ```text
//! offset 0   magic  "KTRC"          4 bytes
//! offset 4   length (payload bytes) u32 little-endian, at most MAX_PAYLOAD
//! offset 8   crc32 of the payload   u32 little-endian
//! offset 12  payload                `length` bytes (postcard)
//! ```

use alloc::vec::Vec;

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"KTRC";
/// Header size in bytes.
pub const HEADER_LEN: usize = 12;
/// Largest payload either side accepts.
pub const MAX_PAYLOAD: usize = 4 << 20;

/// Wrap a payload into a frame.
pub fn wrap(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// What the reader found while scanning its input.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete frame with a good CRC.
    Frame(Vec<u8>),
    /// Bytes that did not start a frame were skipped.
    Skipped(usize),
    /// A header announced a payload longer than [`MAX_PAYLOAD`].
    TooLong(u32),
    /// The payload's CRC did not match.
    BadCrc,
}

/// Incremental frame reader: feed it bytes as they arrive, take events out.
///
/// It never fails: garbage is skipped up to the next magic, and a damaged
/// frame is reported and dropped, so the next good frame is still read.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// A reader with an empty buffer.
    pub const fn new() -> Self {
        Self { buf: Vec::new() }
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Append received bytes, or leave the buffer as it was when there is
    /// no memory for them (a kernel must not fail an allocation).
    pub fn try_push(&mut self, bytes: &[u8]) -> Result<(), alloc::collections::TryReserveError> {
        self.buf.try_reserve(bytes.len())?;
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The payload bytes of a frame still arriving (empty before its
    /// header is complete): enough to read the request id of a frame that
    /// has to be dropped.
    pub fn partial_payload(&self) -> &[u8] {
        if self.buf.len() > HEADER_LEN && self.buf[..4] == MAGIC {
            &self.buf[HEADER_LEN..]
        } else {
            &[]
        }
    }

    /// Bytes buffered but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Discard everything buffered (e.g. after a read timeout on a partial frame).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The next event, or `None` if more input is needed.
    pub fn next_event(&mut self) -> Option<FrameEvent> {
        // Find the magic.
        let start = find_magic(&self.buf);
        match start {
            Some(0) => {}
            Some(n) => {
                self.buf.drain(..n);
                return Some(FrameEvent::Skipped(n));
            }
            None => {
                // Keep a possible magic prefix at the end.
                let keep = magic_prefix_len(&self.buf);
                let skip = self.buf.len() - keep;
                if skip > 0 {
                    self.buf.drain(..skip);
                    return Some(FrameEvent::Skipped(skip));
                }
                return None;
            }
        }
        if self.buf.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        let crc = u32::from_le_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]);
        if len as usize > MAX_PAYLOAD {
            // Drop the magic so the scan moves past this header.
            self.buf.drain(..4);
            return Some(FrameEvent::TooLong(len));
        }
        let total = HEADER_LEN + len as usize;
        if self.buf.len() < total {
            return None;
        }
        if crc32fast::hash(&self.buf[HEADER_LEN..total]) != crc {
            self.buf.drain(..4);
            return Some(FrameEvent::BadCrc);
        }
        if 2 * total < self.buf.len() {
            // Small next to what is buffered (a stream of event batches):
            // copy it out and keep the buffer and its capacity.
            let payload = self.buf[HEADER_LEN..total].to_vec();
            self.buf.drain(..total);
            return Some(FrameEvent::Frame(payload));
        }
        // Most of the buffer: it becomes the payload without a copy (a frame
        // can be 4 MiB, and a kernel has no heap to spare for a second one);
        // what follows the frame moves to a fresh buffer.
        let rest = self.buf.split_off(total);
        let mut payload = core::mem::replace(&mut self.buf, rest);
        payload.drain(..HEADER_LEN);
        Some(FrameEvent::Frame(payload))
    }
}

fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == MAGIC)
}

fn magic_prefix_len(buf: &[u8]) -> usize {
    (1..4.min(buf.len() + 1))
        .rev()
        .find(|&k| k <= buf.len() && buf[buf.len() - k..] == MAGIC[..k])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_garbage_between() {
        let mut r = FrameReader::new();
        r.push(b"xx");
        r.push(&wrap(b"hello"));
        r.push(b"KT");
        r.push(&wrap(b"again"));
        assert_eq!(r.next_event(), Some(FrameEvent::Skipped(2)));
        assert_eq!(r.next_event(), Some(FrameEvent::Frame(b"hello".to_vec())));
        assert_eq!(r.next_event(), Some(FrameEvent::Skipped(2)));
        assert_eq!(r.next_event(), Some(FrameEvent::Frame(b"again".to_vec())));
        assert_eq!(r.next_event(), None);
    }

    #[test]
    fn bad_crc_and_absurd_length_are_reported_then_skipped() {
        let mut r = FrameReader::new();
        let mut bad = wrap(b"abc");
        bad[12] ^= 1;
        r.push(&bad);
        let mut huge = Vec::from(MAGIC);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        r.push(&huge);
        r.push(&wrap(b"ok"));
        assert_eq!(r.next_event(), Some(FrameEvent::BadCrc));
        // The rest of the damaged frame is skipped up to the next magic.
        assert!(matches!(r.next_event(), Some(FrameEvent::Skipped(_))));
        assert_eq!(r.next_event(), Some(FrameEvent::TooLong(u32::MAX)));
        assert!(matches!(r.next_event(), Some(FrameEvent::Skipped(_))));
        assert_eq!(r.next_event(), Some(FrameEvent::Frame(b"ok".to_vec())));
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let mut r = FrameReader::new();
        let f = wrap(b"partial");
        r.push(&f[..7]);
        assert_eq!(r.next_event(), None);
        r.push(&f[7..]);
        assert_eq!(r.next_event(), Some(FrameEvent::Frame(b"partial".to_vec())));
    }
}
