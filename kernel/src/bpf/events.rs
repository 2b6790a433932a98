//! Event streams: records of ring buffer and perf event array maps, and
//! `trace_printk` lines, drained to the host.
//!
//! Helpers only set a flag ([`kick`]): waking a task from probe context
//! could re-enter the scheduler the probe interrupted. The `bpf-events` task
//! polls that flag every millisecond, drains the streams each control
//! session subscribed to into [`EventBatch`]es of up to [`BATCH_BYTES`] and
//! hands them (id 0) to the [`Link`] control started it with, which pushes
//! them on that session. A stream two sessions subscribed to
//! goes to the one that comes first; a session whose client is gone gets
//! nothing, and its records wait in their buffers. Every
//! batch carries each stream's cumulative lost count, so the host can tell
//! records the kernel dropped (a full buffer) from records in flight; batch
//! numbers reveal a batch lost in transit.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ktrace_abi::bpf::{BpfResponse, EventBatch, EventRecord, EventSource, LostCount};
use ktrace_abi::Response;

use super::kmap::KMap;
use crate::session::{Link, Session, MAX_SESSIONS};

/// Payload bytes per pushed batch: large enough to amortise framing and
/// the per-record work, and one transmit buffer of the virtio-serial link
/// ([`crate::drivers::virtio_serial::TX_CHUNK`]). On the COM2 fallback a
/// batch holds answers back for up to a second.
pub const BATCH_BYTES: usize = 60 * 1024;
/// Stream id of `trace_printk` in [`LostCount::map`].
pub const PRINTK_STREAM: u32 = u32::MAX;

static KICKED: AtomicBool = AtomicBool::new(false);
static SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Clone)]
struct Subs {
    maps: Vec<Arc<KMap>>,
    printk: bool,
    /// The session's client generation when it subscribed: a client that
    /// connects after this one left must never receive its streams, even
    /// before the control task has noticed the disconnect.
    generation: u64,
}

const NO_SUBS: Subs = Subs {
    maps: Vec::new(),
    printk: false,
    generation: 0,
};

/// Subscriptions per control session.
static SUBS: spin::Mutex<[Subs; MAX_SESSIONS]> = spin::Mutex::new([NO_SUBS; MAX_SESSIONS]);

/// Tell the event task there is something to drain (any context).
pub fn kick() {
    KICKED.store(true, Ordering::Release);
}

/// Replace the set of streams pushed to `client`.
pub fn subscribe(client: &Session, maps: Vec<Arc<KMap>>, printk: bool) {
    if let Some(s) = SUBS.lock().get_mut(client.id) {
        s.maps = maps;
        s.printk = printk;
        s.generation = client.generation;
    }
    kick();
}

/// Drop the subscriptions of clients of `now`'s session before `now`.
pub fn unsubscribe_gone(now: &Session) {
    if let Some(s) = SUBS.lock().get_mut(now.id) {
        if s.generation != now.generation {
            *s = NO_SUBS;
        }
    }
}

/// Forget a freed map.
pub fn unsubscribe_map(id: u32) {
    for s in SUBS.lock().iter_mut() {
        s.maps.retain(|m| m.id != id);
    }
}

/// Drains up to `max` records (and [`BATCH_BYTES`]) from `maps` and, with
/// `printk`, the `trace_printk` queue (printing each line on the console),
/// for `client`.
#[must_use = "the records drained into the batch are lost if it is dropped"]
pub fn collect(client: &Session, maps: &[Arc<KMap>], printk: bool, max: usize) -> EventBatch {
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut lost = Vec::new();
    let mut buf = Vec::new();
    for m in maps {
        // Ring buffers and perf arrays drain without the map lock: the
        // ring's consumer side runs beside producers on every CPU.
        if let Some(r) = m.ring() {
            while records.len() < max && bytes < BATCH_BYTES && r.pop(&mut buf) {
                bytes += buf.len() + 8;
                records.push(EventRecord {
                    source: EventSource::RingBuf { map: m.id },
                    data: core::mem::take(&mut buf),
                });
            }
            lost.push(LostCount {
                map: m.id,
                lost: r.stats().lost,
            });
        } else if let Some(p) = m.perf() {
            let mut out = Vec::new();
            let room = max
                .saturating_sub(records.len())
                .min((BATCH_BYTES.saturating_sub(bytes) / 16).max(1));
            p.drain(room, &mut out);
            for r in out {
                bytes += r.data.len() + 12;
                records.push(EventRecord {
                    source: EventSource::Perf {
                        map: m.id,
                        cpu: r.cpu,
                    },
                    data: r.data,
                });
            }
            lost.push(LostCount {
                map: m.id,
                lost: p.stats().lost,
            });
        }
    }
    if printk {
        while records.len() < max && bytes < BATCH_BYTES && super::printk::pop(&mut buf) {
            if buf.len() < 4 {
                continue;
            }
            let prog = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let text = buf.split_off(4);
            log::info!(
                "bpf_trace_printk: prog {prog}: {}",
                String::from_utf8_lossy(&text)
            );
            bytes += text.len() + 8;
            records.push(EventRecord {
                source: EventSource::Printk { prog },
                data: text,
            });
        }
        lost.push(LostCount {
            map: PRINTK_STREAM,
            lost: super::printk::lost(),
        });
    }
    EventBatch {
        client_generation: client.generation,
        seq: 0,
        records,
        lost,
    }
}

fn pending(maps: &[Arc<KMap>]) -> bool {
    maps.iter().any(|m| {
        m.ring().is_some_and(|r| r.pending_bytes() > 0)
            || m.perf().is_some_and(|p| p.pending_bytes() > 0)
    })
}

fn task(link: &dyn Link) {
    let mut last_lost: [Vec<LostCount>; MAX_SESSIONS] = core::array::from_fn(|_| Vec::new());
    loop {
        crate::task::sleep_ms(1);
        let kicked = KICKED.swap(false, Ordering::AcqRel);
        let subs = SUBS.lock().clone();
        if !subs
            .iter()
            .enumerate()
            .any(|(i, s)| s.printk && link.current(i).generation == s.generation)
        {
            // Nobody listens: still show trace_printk on the console.
            let mut buf = Vec::new();
            while super::printk::pop(&mut buf) {
                if buf.len() >= 4 {
                    let prog = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    log::info!(
                        "bpf_trace_printk: prog {prog}: {}",
                        String::from_utf8_lossy(&buf[4..])
                    );
                }
            }
        }
        let mut again = false;
        for (session, sub) in subs.iter().enumerate() {
            if sub.maps.is_empty() && !sub.printk {
                continue;
            }
            let client = Session {
                id: session,
                generation: sub.generation,
            };
            if !link.present(&client) {
                // Its client left (the interrupt handler saw the port
                // close); the control task clears the subscription.
                again |= kicked;
                continue;
            }
            if !link.connected(session) {
                // Records wait in their buffers (a full one counts its
                // losses) until a client subscribes again.
                again |= kicked;
                continue;
            }
            if !kicked && !pending(&sub.maps) {
                continue;
            }
            loop {
                let mut batch = collect(&client, &sub.maps, sub.printk, usize::MAX);
                if batch.records.is_empty() && batch.lost == last_lost[session] {
                    break;
                }
                last_lost[session] = batch.lost.clone();
                batch.seq = SEQ.fetch_add(1, Ordering::Relaxed) + 1;
                let full = !batch.records.is_empty();
                link.push(&client, &Response::Bpf(BpfResponse::Events(batch)));
                if !full {
                    break;
                }
            }
        }
        if again {
            KICKED.store(true, Ordering::Release);
        }
    }
}

/// Starts the event task, which pushes batches through `link` (control's).
pub fn start(link: &'static dyn Link) {
    if crate::task::spawn("bpf-events", move || task(link)).is_none() {
        log::error!("cannot start the bpf-events task: event streams will only be polled");
    }
}
