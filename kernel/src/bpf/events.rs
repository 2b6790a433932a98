//! Event streams: records of ring buffer and perf event array maps, and
//! `trace_printk` lines, drained to the host.
//!
//! Helpers only set a flag ([`kick`]): waking a task from probe context
//! could re-enter the scheduler the probe interrupted. The `bpf-events` task
//! polls that flag every millisecond, drains the streams each control
//! session subscribed to into [`EventBatch`]es of up to [`BATCH_BYTES`] and
//! queues them (id 0) on the [`Link`] control started it with. A stream two
//! sessions subscribed to goes to the one that comes first; a session whose
//! client is gone gets nothing, and its records wait in their buffers. Every
//! batch carries each stream's cumulative lost count, so the host can tell
//! records the kernel dropped (a full buffer) from records in flight; batch
//! numbers (1, 2, 3, ... per subscription) reveal a batch lost in transit.
//!
//! Falling behind: the task never waits for one client. When a session's
//! link is full (its client reads too slowly, or not at all) the batch it
//! collected stays with the task ([`Pending`]) and nothing more is taken
//! out of that session's streams until the link took it: the records wait
//! in their buffers, and once a buffer is full its producers count what
//! they could not write (the stream's lost count, which the next batch
//! tells the client), as a perf buffer does for a reader that falls
//! behind. Meanwhile the task serves the other sessions and sleeps between
//! rounds, so a stalled client costs one look at its link per round. A
//! batch whose client left before the link took it is dropped and counted
//! for its session ([`EventSessionStats`]); every record the task took out
//! is pushed, waiting or dropped.
//!
//! A batch's frame fits what the link queues at once
//! ([`Link::max_push_bytes`]: every transmit buffer of a virtio port, 1 MiB),
//! so the task never waits for a client to read part of a frame: a ring
//! record too long for that (about 960 KiB) is passed over and counted
//! lost, and the client hears of it in the stream's lost count.
//!
//! Ordering with [`subscribe`]: each change of a session's subscription
//! gets a new epoch; the task moves a session to the new epoch only after
//! the batch it kept for the old one went out (or was dropped with its
//! client), and batches of a round are collected from the subscriptions
//! it read at the start of that round. [`subscribe`] returns once the task
//! moved the session on, so the answer control sends next is queued after
//! every batch collected under the old subscription: after the answer to
//! an unsubscribe, no record of that session's streams comes.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ktrace_abi::bpf::{BpfResponse, EventBatch, EventRecord, EventSource, LostCount};
use ktrace_abi::vm::EventSessionStats;
use ktrace_abi::Response;

use super::kmap::KMap;
use crate::session::{Link, NotPushed, Session, MAX_SESSIONS};
use crate::task::WaitQueue;

/// Payload bytes per pushed batch: large enough to amortise framing and
/// the per-record work, and one transmit buffer of the virtio-serial link
/// ([`crate::drivers::virtio_serial::TX_CHUNK`]). On the COM2 fallback a
/// batch holds answers back for up to a second.
pub const BATCH_BYTES: usize = 60 * 1024;
/// Stream id of `trace_printk` in [`LostCount::map`].
pub const PRINTK_STREAM: u32 = u32::MAX;

/// Batches a session may queue in one round of the task: the link takes
/// about one batch per millisecond, so this bounds a round without slowing
/// a fast reader, and a producer that never lets a stream run dry cannot
/// keep the task on one session.
const BATCHES_PER_ROUND: usize = 8;

static KICKED: AtomicBool = AtomicBool::new(false);
/// The event task runs (else [`subscribe`] has nobody to wait for).
static RUNNING: AtomicBool = AtomicBool::new(false);
/// Per session, the subscription epoch the task has moved on to: no batch
/// of an earlier epoch is left with it. Stored by the task (Release),
/// waited for by [`subscribe`] (Acquire) on [`SERVED_WAIT`].
static SERVED: [AtomicU64; MAX_SESSIONS] = [const { AtomicU64::new(0) }; MAX_SESSIONS];
static SERVED_WAIT: WaitQueue = WaitQueue::new();

/// What the task did for one session, read by `Info` without a lock.
struct Counters {
    batches_pushed: AtomicU64,
    records_pushed: AtomicU64,
    batches_held: AtomicU64,
    batches_dropped: AtomicU64,
    records_dropped: AtomicU64,
    records_waiting: AtomicU64,
}

static COUNTERS: [Counters; MAX_SESSIONS] = [const {
    Counters {
        batches_pushed: AtomicU64::new(0),
        records_pushed: AtomicU64::new(0),
        batches_held: AtomicU64::new(0),
        batches_dropped: AtomicU64::new(0),
        records_dropped: AtomicU64::new(0),
        records_waiting: AtomicU64::new(0),
    }
}; MAX_SESSIONS];

/// Event streaming per session since boot, for `Info`.
pub fn session_stats(sessions: usize) -> Vec<EventSessionStats> {
    COUNTERS
        .iter()
        .take(sessions)
        .enumerate()
        .map(|(i, c)| EventSessionStats {
            session: i as u32,
            batches_pushed: c.batches_pushed.load(Ordering::Relaxed),
            records_pushed: c.records_pushed.load(Ordering::Relaxed),
            batches_held: c.batches_held.load(Ordering::Relaxed),
            batches_dropped: c.batches_dropped.load(Ordering::Relaxed),
            records_dropped: c.records_dropped.load(Ordering::Relaxed),
            records_waiting: c.records_waiting.load(Ordering::Relaxed),
        })
        .collect()
}

#[derive(Clone)]
struct Subs {
    maps: Vec<Arc<KMap>>,
    printk: bool,
    /// The session's client generation when it subscribed: a client that
    /// connects after this one left must never receive its streams, even
    /// before the control task has noticed the disconnect.
    generation: u64,
    /// Bumped by every change (see [`SERVED`]).
    epoch: u64,
}

const NO_SUBS: Subs = Subs {
    maps: Vec::new(),
    printk: false,
    generation: 0,
    epoch: 0,
};

/// Subscriptions per control session.
static SUBS: spin::Mutex<[Subs; MAX_SESSIONS]> = spin::Mutex::new([NO_SUBS; MAX_SESSIONS]);

/// Tell the event task there is something to drain (any context).
pub fn kick() {
    KICKED.store(true, Ordering::Release);
}

/// Replace the set of streams pushed to `client`, and return once every
/// batch collected under the old set is queued on the link (or dropped
/// because the client left): the caller's answer then goes out after them.
/// Task context (the session's control task), no lock held: it waits for
/// the event task's next round, which never waits for this task.
pub fn subscribe(client: &Session, maps: Vec<Arc<KMap>>, printk: bool) {
    let Some(epoch) = SUBS.lock().get_mut(client.id).map(|s| {
        s.maps = maps;
        s.printk = printk;
        s.generation = client.generation;
        s.epoch += 1;
        s.epoch
    }) else {
        return;
    };
    kick();
    if RUNNING.load(Ordering::Acquire) {
        // A task that failed to start clears RUNNING and wakes the queue.
        SERVED_WAIT.wait_until(|| {
            SERVED[client.id].load(Ordering::Acquire) >= epoch || !RUNNING.load(Ordering::Acquire)
        });
    }
}

/// Drop the subscriptions of clients of `now`'s session before `now`.
pub fn unsubscribe_gone(now: &Session) {
    if let Some(s) = SUBS.lock().get_mut(now.id) {
        if s.generation != now.generation {
            *s = Subs {
                epoch: s.epoch + 1,
                ..NO_SUBS
            };
        }
    }
}

/// Forget a freed map.
pub fn unsubscribe_map(id: u32) {
    for s in SUBS.lock().iter_mut() {
        s.maps.retain(|m| m.id != id);
    }
}

/// The longest ring buffer record a batch may carry when its frame may be
/// at most `frame_bytes` long: a batch stops taking records past
/// [`BATCH_BYTES`], so its last record gets the rest, less room for the
/// framing and the lost counts. Longer records are passed over and counted
/// lost (`RingBuf::pop_within`).
pub fn max_record_bytes(frame_bytes: usize) -> usize {
    frame_bytes.saturating_sub(BATCH_BYTES + 4096)
}

/// Drains up to `max` records (and [`BATCH_BYTES`]) from `maps` and, with
/// `printk`, the `trace_printk` queue (printing each line on the console),
/// for `client`, in a batch whose frame is at most `frame_bytes` long.
#[must_use = "the records drained into the batch are lost if it is dropped"]
pub fn collect(
    client: &Session,
    maps: &[Arc<KMap>],
    printk: bool,
    max: usize,
    frame_bytes: usize,
) -> EventBatch {
    let max_record = max_record_bytes(frame_bytes);
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut lost = Vec::new();
    let mut buf = Vec::new();
    for m in maps {
        // Ring buffers and perf arrays drain without the map lock: the
        // ring's consumer side runs beside producers on every CPU.
        if let Some(r) = m.ring() {
            while records.len() < max && bytes < BATCH_BYTES && r.pop_within(&mut buf, max_record) {
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

fn has_records(maps: &[Arc<KMap>]) -> bool {
    maps.iter().any(|m| {
        m.ring().is_some_and(|r| r.pending_bytes() > 0)
            || m.perf().is_some_and(|p| p.pending_bytes() > 0)
    })
}

/// A batch the task collected for `client` and the link could not take
/// yet, encoded.
struct Pending {
    client: Session,
    frame: Vec<u8>,
    records: u64,
}

/// What the task keeps per session between rounds.
struct SessionState {
    /// The subscription epoch whose batches the task collects.
    epoch: u64,
    pending: Option<Pending>,
    /// The lost counts the epoch's last batch told: a batch with no
    /// records goes out only when they changed. Reset with the epoch, so
    /// every subscription hears the counts once.
    last_lost: Vec<LostCount>,
    /// The number of the epoch's last batch: batches of one subscription
    /// are numbered 1, 2, 3, ... so a gap is a batch dropped on the way
    /// (its client left, or it could not be encoded).
    seq: u64,
}

/// Queues `p` on the link. `Err` gives it back when the link is full.
fn deliver(link: &dyn Link, session: usize, p: Pending) -> Result<(), Pending> {
    let c = &COUNTERS[session];
    let records = p.records;
    let outcome = match link.try_push(&p.client, p.frame) {
        Ok(()) => {
            c.batches_pushed.fetch_add(1, Ordering::Relaxed);
            c.records_pushed.fetch_add(records, Ordering::Relaxed);
            Ok(())
        }
        Err(NotPushed::Gone) => {
            c.batches_dropped.fetch_add(1, Ordering::Relaxed);
            c.records_dropped.fetch_add(records, Ordering::Relaxed);
            Ok(())
        }
        Err(NotPushed::Full(frame)) => Err(Pending {
            client: p.client,
            frame,
            records,
        }),
    };
    c.records_waiting.store(
        if outcome.is_err() { records } else { 0 },
        Ordering::Relaxed,
    );
    outcome
}

fn task(link: &dyn Link) {
    let mut state: [SessionState; MAX_SESSIONS] = core::array::from_fn(|_| SessionState {
        epoch: 0,
        pending: None,
        last_lost: Vec::new(),
        seq: 0,
    });
    loop {
        crate::task::sleep_ms(1);
        let kicked = KICKED.swap(false, Ordering::AcqRel);
        // The subscriptions this round collects for: a `subscribe` that
        // comes later is seen next round (see the module notes).
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
        let mut moved_on = false;
        for (session, (sub, st)) in subs.iter().zip(state.iter_mut()).enumerate() {
            // The batch kept from an earlier round goes before anything
            // else of this session, whatever its subscription is now.
            let mut caught_up = false;
            if let Some(p) = st.pending.take() {
                if let Err(p) = deliver(link, session, p) {
                    // Still full: take nothing more out of its streams
                    // (they fill and count their losses), and keep the
                    // subscriber of a newer epoch waiting for this batch.
                    st.pending = Some(p);
                    continue;
                }
                // Its streams filled while the batch waited, and the kicks
                // of that time were spent on rounds that skipped them:
                // look now. `has_records` cannot tell for `trace_printk`,
                // whose lines would otherwise wait for the next kick.
                caught_up = true;
            }
            if st.epoch != sub.epoch {
                st.epoch = sub.epoch;
                st.last_lost.clear();
                st.seq = 0;
                SERVED[session].store(sub.epoch, Ordering::Release);
                moved_on = true;
            }
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
            if !kicked && !caught_up && !has_records(&sub.maps) {
                continue;
            }
            for round in 0..BATCHES_PER_ROUND {
                let mut batch = collect(
                    &client,
                    &sub.maps,
                    sub.printk,
                    usize::MAX,
                    link.max_push_bytes(),
                );
                if batch.records.is_empty() && batch.lost == st.last_lost {
                    break;
                }
                st.last_lost = batch.lost.clone();
                st.seq += 1;
                batch.seq = st.seq;
                let records = batch.records.len() as u64;
                let Some(frame) = link.encode_push(&Response::Bpf(BpfResponse::Events(batch)))
                else {
                    // Logged by the link; counted like a batch nobody got.
                    let c = &COUNTERS[session];
                    c.batches_dropped.fetch_add(1, Ordering::Relaxed);
                    c.records_dropped.fetch_add(records, Ordering::Relaxed);
                    continue;
                };
                let p = Pending {
                    client,
                    frame,
                    records,
                };
                if let Err(p) = deliver(link, session, p) {
                    COUNTERS[session]
                        .batches_held
                        .fetch_add(1, Ordering::Relaxed);
                    st.pending = Some(p);
                    break;
                }
                if records == 0 {
                    break;
                }
                // The stream may hold more: look again next round.
                again |= round + 1 == BATCHES_PER_ROUND;
            }
        }
        if moved_on {
            SERVED_WAIT.wake_all();
        }
        if again {
            KICKED.store(true, Ordering::Release);
        }
    }
}

/// Starts the event task, which pushes batches through `link` (control's).
pub fn start(link: &'static dyn Link) {
    // Set first: a subscriber that saw it false would not wait for the
    // task, and one that sees it true is served within a round, or woken
    // below when the task could not be started.
    RUNNING.store(true, Ordering::Release);
    if crate::task::spawn("bpf-events", move || task(link)).is_none() {
        RUNNING.store(false, Ordering::Release);
        SERVED_WAIT.wake_all();
        log::error!("cannot start the bpf-events task: event streams will only be polled");
    }
}
