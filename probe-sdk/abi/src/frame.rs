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
/// Largest frame either side accepts: a header and [`MAX_PAYLOAD`].
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;

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

    /// Gives up on the frame whose header starts the buffer (its bytes
    /// stopped coming): drops its magic, so the next [`Self::next_event`]
    /// scans what followed the header for frames, as after a bad CRC. The
    /// header's length is not trusted: bytes that came after a stalled
    /// header may be another sender's whole frames (a new client after
    /// the one that stopped mid-frame). Returns the bytes dropped (0 when
    /// no header starts the buffer).
    pub fn give_up_partial(&mut self) -> usize {
        if self.buf.starts_with(&MAGIC) {
            self.buf.drain(..MAGIC.len());
            MAGIC.len()
        } else {
            0
        }
    }

    /// For a reader that knows the next good frame must start after the
    /// first bytes it holds (a new client's first frame, behind what an
    /// earlier client left unfinished): when a complete frame with a good
    /// CRC starts at a magic after the first byte and within the last
    /// `window` bytes, drops everything before it and returns how many
    /// bytes that was (0 when there is no such frame, and nothing
    /// changes). Looking only near the end bounds the work per call: a
    /// caller passes the bytes it just pushed plus the longest first frame
    /// it expects.
    pub fn skip_to_last_frame(&mut self, window: usize) -> usize {
        let from = self.buf.len().saturating_sub(window).max(1);
        let mut at = from;
        while let Some(k) = find_magic(&self.buf[at..]) {
            let p = at + k;
            if self.complete_frame_at(p) {
                self.buf.drain(..p);
                return p;
            }
            at = p + 1;
        }
        0
    }

    /// Whether a whole frame with a good CRC starts at `p`.
    fn complete_frame_at(&self, p: usize) -> bool {
        let Some((len, crc)) = header_at(&self.buf, p) else {
            return false;
        };
        let len = len as usize;
        len <= MAX_PAYLOAD
            && self
                .buf
                .get(p + HEADER_LEN..p + HEADER_LEN + len)
                .is_some_and(|payload| crc32fast::hash(payload) == crc)
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
        let (len, crc) = header_at(&self.buf, 0)?;
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

/// The payload length and CRC of the header at `p`, once it is all there.
fn header_at(buf: &[u8], p: usize) -> Option<(u32, u32)> {
    let h = buf.get(p..p + HEADER_LEN)?;
    Some((
        u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
    ))
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
    fn a_frame_after_a_stalled_header_is_read_once_the_header_is_given_up() {
        let mut r = FrameReader::new();
        // A header announcing 100 bytes, 10 of them, then a whole frame
        // from someone else.
        let mut stalled = Vec::from(MAGIC);
        stalled.extend_from_slice(&100u32.to_le_bytes());
        stalled.extend_from_slice(&[0; 4]);
        stalled.extend_from_slice(&[7; 10]);
        r.push(&stalled);
        r.push(&wrap(b"hello"));
        assert_eq!(r.next_event(), None);
        assert_eq!(r.give_up_partial(), 4);
        assert_eq!(r.next_event(), Some(FrameEvent::Skipped(18)));
        assert_eq!(r.next_event(), Some(FrameEvent::Frame(b"hello".to_vec())));
        assert_eq!(r.next_event(), None);
        assert_eq!(r.give_up_partial(), 0);
    }

    #[test]
    fn a_whole_frame_behind_an_unfinished_one_is_found_near_the_end() {
        let mut stalled = Vec::from(MAGIC);
        stalled.extend_from_slice(&1000u32.to_le_bytes());
        stalled.extend_from_slice(&[0; 4]);
        stalled.extend_from_slice(&[7; 300]);
        let hello = wrap(b"hello");
        let mut r = FrameReader::new();
        r.push(&stalled);
        // Nothing whole yet: nothing changes.
        assert_eq!(r.skip_to_last_frame(usize::MAX), 0);
        r.push(&hello[..10]);
        assert_eq!(r.skip_to_last_frame(10 + 64), 0);
        // Outside the window: not looked at.
        r.push(&hello[10..]);
        assert_eq!(r.skip_to_last_frame(3), 0);
        assert_eq!(r.skip_to_last_frame(hello.len()), stalled.len());
        assert_eq!(r.next_event(), Some(FrameEvent::Frame(b"hello".to_vec())));
        // A frame at the start is not skipped to.
        r.push(&hello);
        assert_eq!(r.skip_to_last_frame(usize::MAX), 0);
        // A magic whose frame fails its CRC is passed over.
        let mut r = FrameReader::new();
        let mut bad = wrap(b"bad");
        bad[12] ^= 1;
        r.push(&stalled);
        r.push(&bad);
        assert_eq!(r.skip_to_last_frame(usize::MAX), 0);
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
