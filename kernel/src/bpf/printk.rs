//! `bpf_trace_printk`: formats in probe context into a stack buffer and
//! queues the line in a preallocated ring; the event task prints it on the
//! console and pushes it to subscribed hosts (printing from probe context
//! could deadlock on the console lock the probe interrupted).

use bpf_vm::interp::{HelperError, HelperMem};
use ktrace_bpf_maps::{errno, RingBuf};

use crate::arch::trap::copy_from_kernel_nofault;

/// Bytes queued before lines are lost (and counted).
const RING_BYTES: u32 = 64 * 1024;
/// Longest line; longer output is cut.
const LINE: usize = 256;

/// The queue: a many-producer ring (programs on every CPU write it, the
/// event task drains it), so no lock around it.
static RING: spin::Once<Option<RingBuf>> = spin::Once::new();

/// Allocates the ring (at boot).
pub fn init() {
    RING.call_once(|| RingBuf::new(RING_BYTES).ok());
}

fn ring() -> Option<&'static RingBuf> {
    RING.get().and_then(Option::as_ref)
}

/// Moves the next queued line (`[prog id: u32 LE][text]`) into `out`.
pub fn pop(out: &mut alloc::vec::Vec<u8>) -> bool {
    ring().is_some_and(|r| r.pop(out))
}

/// Lines lost because the ring was full.
pub fn lost() -> u64 {
    ring().map_or(0, |r| r.stats().lost)
}

struct Line {
    buf: [u8; LINE],
    len: usize,
}

impl Line {
    fn push(&mut self, b: &[u8]) {
        let n = b.len().min(LINE - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// `bpf_trace_printk(fmt, fmt_size, a, b, c)`: Linux's conversions `%d %i
/// %u %x %X %p %s %c %%` with `l`/`ll` modifiers, at most three arguments.
/// Returns the bytes written, or -EINVAL for a bad format.
pub fn trace_printk(prog: u32, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
    use core::fmt::Write;
    let fmt = mem.read(a[0], a[1] as usize)?;
    let fmt = match fmt.iter().position(|&b| b == 0) {
        Some(n) => &fmt[..n],
        None => fmt,
    };
    let mut line = Line {
        buf: [0; LINE],
        len: 0,
    };
    line.push(&prog.to_le_bytes());
    let args = [a[2], a[3], a[4]];
    let mut next = 0;
    let mut i = 0;
    let einval = (-(errno::EINVAL as i64)) as u64;
    while i < fmt.len() {
        let c = fmt[i];
        i += 1;
        if c != b'%' {
            line.push(&[c]);
            continue;
        }
        let mut longs = 0;
        while i < fmt.len() && fmt[i] == b'l' {
            longs += 1;
            i += 1;
        }
        let Some(&conv) = fmt.get(i) else {
            return Ok(einval);
        };
        i += 1;
        if conv == b'%' {
            line.push(b"%");
            continue;
        }
        if next == args.len() || longs > 2 {
            return Ok(einval);
        }
        let v = args[next];
        next += 1;
        let _ = match conv {
            b'd' | b'i' if longs == 0 => write!(line, "{}", v as i32),
            b'd' | b'i' => write!(line, "{}", v as i64),
            b'u' if longs == 0 => write!(line, "{}", v as u32),
            b'u' => write!(line, "{v}"),
            b'x' if longs == 0 => write!(line, "{:x}", v as u32),
            b'x' => write!(line, "{v:x}"),
            b'X' if longs == 0 => write!(line, "{:X}", v as u32),
            b'X' => write!(line, "{v:X}"),
            b'p' => write!(line, "{v:#x}"),
            b'c' => write!(line, "{}", v as u8 as char),
            b's' => {
                // Read the string fault-safely, byte by byte up to 64 bytes.
                for k in 0..64u64 {
                    let mut b = [0u8; 1];
                    if copy_from_kernel_nofault(&mut b, v.wrapping_add(k)).is_err() || b[0] == 0 {
                        if k == 0 && b[0] != 0 {
                            line.push(b"(fault)");
                        }
                        break;
                    }
                    line.push(&b);
                }
                Ok(())
            }
            _ => return Ok(einval),
        };
    }
    let written = line.len - 4;
    if let Some(r) = ring() {
        // A full ring counts the loss itself.
        let cpu = crate::percpu::this_cpu().id as usize;
        let _ = r.output(&line.buf[..line.len], 0, cpu);
    }
    super::events::kick();
    Ok(written as u64)
}
