//! The control channel: framed, postcard-encoded requests from the host,
//! answered by the `control` task, and the event streams pushed back.
//!
//! The link is a virtio-serial device when QEMU provides one: ports 1 to
//! [`MAX_SESSIONS`], one client session each, served by its own `control`
//! task, so several host tools can work at once (about 40 MB/s each way
//! under TCG, throttled rather than lossy when the host reads slowly).
//! Without it, the COM2 UART carries one session (about 70 KB/s: one port
//! access per byte). Bytes arrive by interrupt into a session's buffer;
//! its task feeds them to a
//! resynchronising [`FrameReader`], so garbage, damaged frames and absurd
//! lengths are reported with an error frame and skipped, and the next good
//! frame is still answered. A session must start with `Hello`.
//!
//! Control owns the sessions: each request goes down to its subsystem
//! with a [`Session`] handle naming the client that sent it, refusals come
//! back as typed [`crate::error::Error`]s turned into error frames in one
//! place, and the event streams come back through the [`Link`] control
//! hands the event task. No subsystem calls into this module.

// `unsafe` lives in the hardware corner (arch, mm, drivers, task, sync,
// ksyms: see main.rs) behind safe interfaces; this subsystem uses those.
#![deny(unsafe_code)]

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::apic::{self, IrqTrigger};
use crate::arch::serial::{COM2, COM2_IRQ};
use crate::arch::{self, trap};
use crate::drivers::virtio_serial::{self, SerialPorts, TX_CHUNK};
use crate::error::{Error, Kind};
pub use crate::session::MAX_SESSIONS;
use crate::session::{Link as ClientLink, NotPushed, Session};
use crate::sync::SpinLock;
use crate::task::WaitQueue;
use ktrace_abi::frame::{FrameEvent, FrameReader, MAGIC};
use ktrace_abi::vm::{DebugRequest, HelloReply, SystemInfo};
use ktrace_abi::{ErrorCode, Request, Response, PROTOCOL_VERSION, PUSH_ID};

/// Vector of the COM2 receive interrupt.
const COM2_VECTOR: u8 = 0x23;
/// Bytes a session's queue holds before the control task drains them.
/// Beyond this, virtio-serial leaves bytes in the device (QEMU holds the
/// client back); COM2, which cannot, drops the oldest input (counted).
const RX_LIMIT: usize = 8 << 20;

/// Idle time after which a buffered partial frame is dropped. A 4 MiB
/// frame at the serial rate never pauses this long between chunks.
const PARTIAL_FRAME_IDLE_NS: u64 = 500_000_000;

const PORT_IDS: [u32; MAX_SESSIONS] = [1, 2, 3, 4];

/// What the control channel runs on.
enum Link {
    Uart,
    Virtio(alloc::boxed::Box<SerialPorts>),
}

/// One session's buffers and state shared with interrupt context.
struct Channel {
    rx: SpinLock<VecDeque<u8>>,
    rx_wait: WaitQueue,
    tx: spin::Mutex<()>,
    /// Bumped each time the host side goes away.
    disconnects: AtomicU64,
    /// Bytes the client that went away left unread in `rx`.
    abandoned: AtomicU64,
    /// The client generation whose requests the session's task is
    /// answering: it lags `disconnects` until the task has seen a client
    /// go, so what a request creates belongs to the client that sent it
    /// even when that client left meanwhile.
    serving: AtomicU64,
}

static LINK: spin::Once<Link> = spin::Once::new();
static CHANNELS: [Channel; MAX_SESSIONS] = [const {
    Channel {
        rx: SpinLock::new(VecDeque::new()),
        rx_wait: WaitQueue::new(),
        tx: spin::Mutex::new(()),
        disconnects: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        serving: AtomicU64::new(0),
    }
}; MAX_SESSIONS];
static BAD_FRAMES: AtomicU64 = AtomicU64::new(0);
static RX_DROPPED: AtomicU64 = AtomicU64::new(0);
static RX_BYTES: AtomicU64 = AtomicU64::new(0);
static TX_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes of unfinished frames that clients left behind, since boot.
static ABANDONED_RX_BYTES: AtomicU64 = AtomicU64::new(0);
/// Received bytes dropped as no part of a good frame, since boot: garbage
/// skipped, the headers of damaged or stalled frames, frames there was no
/// memory for. With the abandoned ones and the whole frames, every byte
/// received.
static DROPPED_RX_BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes the control task takes out of a session's receive buffer at once.
const RX_CHUNK: usize = 64 << 10;

/// Makes room for `n` more bytes in a receive queue, fallibly (interrupt
/// context); past one chunk only while the heap can spare the growth
/// without touching its reserve, so small requests (a delete that frees
/// memory) always get through.
fn rx_may_grow(rx: &mut VecDeque<u8>, n: usize) -> bool {
    if rx.capacity() - rx.len() >= n {
        return true;
    }
    if rx.len() + n > RX_CHUNK && crate::mm::heap::spare_bytes() < 2 * (rx.len() + n) {
        return false;
    }
    rx.try_reserve(n).is_ok()
}

fn rx_push(rx: &mut VecDeque<u8>, b: u8) {
    RX_BYTES.fetch_add(1, Ordering::Relaxed);
    if rx.len() >= RX_LIMIT {
        rx.pop_front();
        RX_DROPPED.fetch_add(1, Ordering::Relaxed);
    } else if !rx_may_grow(rx, 1) {
        // Interrupt context: a failed allocation here would stop the
        // kernel. The byte is dropped and counted; the frame it belonged
        // to then fails its CRC and is answered as a bad frame.
        RX_DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    rx.push_back(b);
}

fn drain_uart(rx: &mut VecDeque<u8>) -> usize {
    if !matches!(LINK.get(), Some(Link::Uart)) {
        return 0;
    }
    let mut n = 0;
    while let Some(b) = COM2.try_read() {
        rx_push(rx, b);
        n += 1;
    }
    n
}

/// Where the virtio-serial ports deliver received bytes. `false` when the
/// session's queue cannot take them now (full, or the heap cannot spare
/// the room): the driver keeps them in the device's buffer and offers them
/// again after the control task drained the queue, so QEMU holds the
/// client back and no byte is lost.
fn virtio_sink(session: usize, bytes: &[u8]) -> bool {
    let Some(ch) = CHANNELS.get(session) else {
        return true;
    };
    if bytes.is_empty() {
        return true;
    }
    let taken = {
        let mut rx = ch.rx.lock();
        let fits = rx.len() + bytes.len() <= RX_LIMIT && rx_may_grow(&mut rx, bytes.len());
        if fits {
            RX_BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            rx.extend(bytes);
        }
        fits
    };
    ch.rx_wait.wake_all();
    taken
}

/// A port's host side connected or went away (interrupt context). Bytes
/// still buffered belong to the client that left, like the `discarded`
/// ones the driver had not delivered yet.
fn on_host_change(session: usize, connected: bool, discarded: usize) {
    let Some(ch) = CHANNELS.get(session) else {
        return;
    };
    if !connected {
        // The driver's `discarded` bytes reached the kernel too, in its
        // buffers: received, and left behind.
        RX_BYTES.fetch_add(discarded as u64, Ordering::Relaxed);
        // Under the receive lock, so the control task sees the count
        // change and the queue emptied at once (see `control_task`).
        let mut rx = ch.rx.lock();
        ch.abandoned
            .fetch_add((rx.len() + discarded) as u64, Ordering::Relaxed);
        rx.clear();
        ch.disconnects.fetch_add(1, Ordering::AcqRel);
        drop(rx);
        ch.rx_wait.wake_all();
    }
}

/// Whether a host client is connected to `session`. Always true on COM2,
/// which cannot tell. The event task leaves records in their buffers while
/// nobody listens, so they are delivered later or counted lost, never
/// pushed into a closed socket.
fn host_connected(session: usize) -> bool {
    match LINK.get() {
        Some(Link::Virtio(ports)) => ports.host_connected(session),
        _ => session == 0,
    }
}

/// How many clients of `session` have gone away: a subscription made
/// under one generation is void under the next.
fn client_generation(session: usize) -> u64 {
    CHANNELS
        .get(session)
        .map_or(0, |c| c.disconnects.load(Ordering::Acquire))
}

/// The client of `session` whose requests are being answered (see
/// [`Channel::serving`]): the handle its requests go down with.
fn serving(session: usize) -> Session {
    Session {
        id: session,
        generation: CHANNELS
            .get(session)
            .map_or(0, |c| c.serving.load(Ordering::Acquire)),
    }
}

/// The link as the subsystems see it: a way to push to a client and to
/// ask whether it is still there, never a way into this module.
struct Clients;

impl ClientLink for Clients {
    fn current(&self, id: usize) -> Session {
        Session {
            id,
            generation: client_generation(id),
        }
    }
    fn connected(&self, id: usize) -> bool {
        host_connected(id)
    }
    fn push(&self, to: &Session, resp: &Response) {
        push_to(to.id, to.generation, resp);
    }
    fn encode_push(&self, resp: &Response) -> Option<Vec<u8>> {
        encode_frame(PUSH_ID, resp)
    }
    fn try_push(&self, to: &Session, frame: Vec<u8>) -> Result<(), NotPushed> {
        try_push_frame(to, frame)
    }
    fn max_push_bytes(&self) -> usize {
        match LINK.get() {
            Some(Link::Virtio(_)) => ktrace_abi::frame::MAX_FRAME.min(virtio_serial::TX_QUEUED_MAX),
            _ => ktrace_abi::frame::MAX_FRAME,
        }
    }
}

static CLIENTS: Clients = Clients;

/// Sessions the link carries.
fn sessions() -> usize {
    match LINK.get() {
        Some(Link::Virtio(ports)) => ports.len(),
        _ => 1,
    }
}

fn on_virtio_interrupt() {
    if let Some(Link::Virtio(port)) = LINK.get() {
        port.interrupt();
    }
}

/// Complete virtio work an interrupt may not have announced. Never call
/// it with a session's `rx` held: the ports deliver into it.
fn poll_link() {
    if let Some(Link::Virtio(port)) = LINK.get() {
        port.poll();
    }
}

/// The link's name, for `Info`.
fn link_name() -> &'static str {
    match LINK.get() {
        Some(Link::Virtio(_)) => "virtio-serial",
        _ => "COM2",
    }
}

fn on_com2_interrupt(_regs: &mut arch::PtRegs, _vector: u8) -> bool {
    let got = drain_uart(&mut CHANNELS[0].rx.lock());
    if got > 0 {
        CHANNELS[0].rx_wait.wake_all();
    }
    true
}

/// Find the link (virtio-serial, else COM2), start a control task per
/// session and the event task that pushes their streams.
pub fn start() {
    let link = match virtio_serial::probe(&PORT_IDS, virtio_sink, on_host_change) {
        Ok(ports) => Link::Virtio(alloc::boxed::Box::new(ports)),
        Err(virtio_serial::ProbeError::NoDevice) => Link::Uart,
        Err(e) => {
            log::warn!("control: the virtio-serial device is unusable ({e}): falling back to COM2");
            Link::Uart
        }
    };
    match LINK.call_once(|| link) {
        Link::Virtio(port) => {
            if let Err(e) = crate::drivers::intx::register(port.gsi, on_virtio_interrupt) {
                // The control task also polls, so the channel still works.
                log::error!("control: no interrupt for virtio-serial ({e}): polling");
            }
        }
        Link::Uart => {
            COM2.init();
            trap::set_handler(COM2_VECTOR, on_com2_interrupt);
            apic::route_irq(COM2_IRQ, COM2_VECTOR, IrqTrigger::ISA);
            COM2.enable_rx_interrupt();
        }
    }
    for session in 0..sessions().min(MAX_SESSIONS) {
        let name = if session == 0 {
            String::from("control")
        } else {
            format!("control-{session}")
        };
        if crate::task::spawn(&name, move || control_task(session)).is_none() {
            if session == 0 {
                panic!("cannot spawn the control task");
            }
            log::error!("cannot spawn {name}: session {session} is not served");
        }
    }
    crate::bpf::events::start(&CLIENTS);
}

/// Frames refused since boot.
fn bad_frames() -> u64 {
    BAD_FRAMES.load(Ordering::Relaxed)
}

/// Send one frame on `session`. Task context only.
fn send(session: usize, id: u32, resp: &Response) {
    send_frame(session, None, id, resp);
}

/// Send one frame on `session`, unless `generation` is given and its
/// client has gone since (checked once the frame may go out: waiting for
/// the link can take long enough for another client to connect).
fn send_frame(session: usize, generation: Option<u64>, id: u32, resp: &Response) {
    let Some(ch) = CHANNELS.get(session) else {
        return;
    };
    let Some(frame) = encode_frame(id, resp) else {
        return;
    };
    // A frame goes out whole: the lock spans every chunk. Waiting for it
    // yields (the holder may be waiting for the host).
    let _g = loop {
        if let Some(g) = ch.tx.try_lock() {
            break g;
        }
        crate::task::yield_now();
    };
    if generation.is_some_and(|g| g != client_generation(session)) {
        return;
    }
    TX_BYTES.fetch_add(frame.len() as u64, Ordering::Relaxed);
    match LINK.get() {
        Some(Link::Virtio(port)) => {
            let chunks: Vec<Vec<u8>> = if frame.len() <= TX_CHUNK {
                alloc::vec![frame]
            } else {
                frame.chunks(TX_CHUNK).map(<[u8]>::to_vec).collect()
            };
            for mut data in chunks {
                while let Err(back) = port.try_send(session, data) {
                    if !port.host_connected(session) {
                        // Nobody reads: QEMU discards, nothing to wait for.
                        return;
                    }
                    // Every buffer is in flight: QEMU throttles the port
                    // until the host reads.
                    data = back;
                    crate::task::sleep_ms(1);
                }
            }
        }
        _ => COM2.write(&frame),
    }
}

/// The frame `resp` goes out in as the answer to request `id`. The host
/// refuses frames beyond `MAX_PAYLOAD` and would wait for an answer that
/// never comes: an answer that large becomes an error it can read.
fn encode_frame(id: u32, resp: &Response) -> Option<Vec<u8>> {
    match ktrace_abi::encode(id, resp) {
        Ok(f) if f.len() > ktrace_abi::frame::MAX_FRAME => {
            let message = format!(
                "the answer is {} bytes, more than the frame limit of {} bytes: ask for less (a smaller batch or count)",
                f.len() - ktrace_abi::frame::HEADER_LEN,
                ktrace_abi::frame::MAX_PAYLOAD
            );
            ktrace_abi::encode(id, &error(ErrorCode::Limit, message)).ok()
        }
        Ok(f) => Some(f),
        Err(e) => {
            log::error!("cannot encode a response: {e}");
            None
        }
    }
}

/// Queue `frame` for the client `to` without waiting (the event task's
/// way to push, see [`ClientLink::try_push`]).
///
/// Ordering: every frame of a session is queued under its `tx` lock, whole,
/// and the device sends a port's buffers in the order they were queued; so
/// what the caller queued before it told another task (which then sends)
/// reaches the host first. The lock is only tried: its holder may be
/// waiting for the host, and the event task serves every session.
fn try_push_frame(to: &Session, frame: Vec<u8>) -> Result<(), NotPushed> {
    let Some(ch) = CHANNELS.get(to.id) else {
        return Err(NotPushed::Gone);
    };
    let Some(_g) = ch.tx.try_lock() else {
        return Err(NotPushed::Full(frame));
    };
    if to.generation != client_generation(to.id) {
        return Err(NotPushed::Gone);
    }
    match LINK.get() {
        Some(Link::Virtio(port)) => {
            if !port.host_connected(to.id) {
                // QEMU would discard it: the client closed its socket and
                // the generation moves on as soon as the close is read.
                return Err(NotPushed::Gone);
            }
            let buffers = frame.len().div_ceil(TX_CHUNK);
            if !port.tx_room(to.id, buffers) {
                return Err(NotPushed::Full(frame));
            }
            TX_BYTES.fetch_add(frame.len() as u64, Ordering::Relaxed);
            // Room for every chunk was there and only the device frees
            // buffers while the lock is held, so these go in at once; the
            // wait is for a device that took a buffer back meanwhile.
            let chunks: Vec<Vec<u8>> = if frame.len() <= TX_CHUNK {
                alloc::vec![frame]
            } else {
                frame.chunks(TX_CHUNK).map(<[u8]>::to_vec).collect()
            };
            for mut data in chunks {
                while let Err(back) = port.try_send(to.id, data) {
                    if !port.host_connected(to.id) {
                        return Ok(());
                    }
                    data = back;
                    crate::task::sleep_ms(1);
                }
            }
            Ok(())
        }
        _ => {
            TX_BYTES.fetch_add(frame.len() as u64, Ordering::Relaxed);
            COM2.write(&frame);
            Ok(())
        }
    }
}

/// Push an unsolicited frame to `session`.
fn push(session: usize, resp: &Response) {
    send(session, PUSH_ID, resp);
}

/// Push an unsolicited frame (event streams) to the client of `session`
/// whose generation (see [`client_generation`]) is `generation`; dropped
/// if that client has gone.
fn push_to(session: usize, generation: u64, resp: &Response) {
    send_frame(session, Some(generation), PUSH_ID, resp);
}

fn error(code: ErrorCode, message: String) -> Response {
    Error::plain(code, message).into_response()
}

/// What a session's task knows of its client.
struct Greeting {
    greeted: bool,
}

fn control_task(id: usize) {
    let ch = &CHANNELS[id];
    let mut reader = FrameReader::new();
    let mut chunk: Vec<u8> = Vec::with_capacity(RX_CHUNK);
    let mut greeting = Greeting { greeted: false };
    let mut last_rx_ns = crate::time::now_ns();
    let mut disconnects = ch.disconnects.load(Ordering::Acquire);
    ch.serving.store(disconnects, Ordering::Release);
    log::info!("control channel ready on {} (session {id})", link_name());
    loop {
        // Interrupts deliver bytes; the timeout also polls, in case an
        // interrupt was coalesced away.
        ch.rx_wait
            .wait_until_timeout(|| !ch.rx.lock().is_empty(), 20_000_000);
        poll_link();
        // The disconnect count is read with the bytes, under the receive
        // lock that `on_host_change` empties the queue under: the bytes
        // taken here all came after the last disconnect seen. Read apart,
        // a disconnect between the two would feed the next client's first
        // bytes to the reader holding the old client's half frame, and
        // the reset below would then drop them.
        chunk.clear();
        let (left, abandoned) = {
            let mut rx = ch.rx.lock();
            let now_disconnects = ch.disconnects.load(Ordering::Acquire);
            let left = now_disconnects != disconnects;
            disconnects = now_disconnects;
            let abandoned = if left {
                ch.abandoned.swap(0, Ordering::Relaxed)
            } else {
                0
            };
            drain_uart(&mut rx);
            let n = rx.len().min(RX_CHUNK);
            chunk.extend(rx.drain(..n));
            // Give back what a large frame made the queue grow to.
            if rx.is_empty() && rx.capacity() > 2 * RX_CHUNK {
                rx.shrink_to(RX_CHUNK);
            }
            (left, abandoned)
        };
        if left {
            // The client left: its half frame, its handshake and its event
            // subscriptions go with it.
            ch.serving.store(disconnects, Ordering::Release);
            // A frame the client left half-sent is a bad frame, counted
            // once, like one cut short on a live line.
            let partial = reader.buffered() as u64 + abandoned;
            ABANDONED_RX_BYTES.fetch_add(partial, Ordering::Relaxed);
            if partial > 0 {
                BAD_FRAMES.fetch_add(1, Ordering::Relaxed);
                log::warn!("session {id}: the client left {partial} bytes of an unfinished frame");
            }
            reader.clear();
            greeting.greeted = false;
            // What the clients before this one created and did not pin
            // goes with them; their event streams stop.
            let now = CLIENTS.current(id);
            crate::bpf::release_session(&now);
            crate::trace::control::release_session(&now);
            #[cfg(feature = "coverage")]
            arch::coverage::disable(id);
            log::info!("host disconnected from session {id}");
        }
        if !chunk.is_empty() {
            // Bytes the driver held back while the queue was full come now.
            poll_link();
        }
        let bytes = &chunk;
        if bytes.is_empty() {
            // A header that announced more bytes than ever came would
            // otherwise hold every later request hostage: once the line
            // has been idle long enough, give up on it and look for frames
            // in what followed it. That is also how a new client's first
            // frame gets through when the bytes of the client before it
            // arrived after its close and could not be told from it (see
            // `virtio_serial`'s `close_host_side`): they end in the old
            // client's unfinished frame, whose header would otherwise take
            // the new client's `Hello` as payload.
            let now = crate::time::now_ns();
            if reader.buffered() == 0 || now.saturating_sub(last_rx_ns) <= PARTIAL_FRAME_IDLE_NS {
                continue;
            }
            let n = reader.buffered();
            let dropped = match reader.give_up_partial() {
                // Only the start of a magic, which nothing completed.
                0 => {
                    reader.clear();
                    n
                }
                d => d,
            };
            bad_frame(
                id,
                dropped,
                format!(
                    "gave up on a partial frame ({n} bytes) after the line was idle for {} ms; reading on after its header",
                    PARTIAL_FRAME_IDLE_NS / 1_000_000
                ),
            );
            // The next give-up waits for another idle period.
            last_rx_ns = now;
        } else {
            last_rx_ns = crate::time::now_ns();
        }
        // Past one chunk, a frame's buffer grows only while the heap can
        // spare it (doubling may need twice the bytes held).
        let held = reader.buffered() + bytes.len();
        let room = if held > RX_CHUNK {
            crate::mm::heap::check_room(2 * held).map_err(|full| format!("{full}"))
        } else {
            Ok(0)
        };
        if let Err(why) = room.and_then(|_| {
            reader
                .try_push(bytes)
                .map_err(|_| String::from("cannot grow the receive buffer"))
        }) {
            // Answer the request the frame carried, when its id arrived.
            let request = postcard::take_from_bytes::<u32>(reader.partial_payload())
                .map(|(id, _)| id)
                .unwrap_or(PUSH_ID);
            reader.clear();
            BAD_FRAMES.fetch_add(1, Ordering::Relaxed);
            DROPPED_RX_BYTES.fetch_add(held as u64, Ordering::Relaxed);
            send(
                id,
                request,
                &Error::new(
                    Kind::NoMemory,
                    format!("dropped an unfinished frame of {held} bytes: buffering it {why}"),
                )
                .into_response(),
            );
            continue;
        }
        loop {
            while let Some(event) = reader.next_event() {
                match event {
                    FrameEvent::Frame(payload) => {
                        handle_payload(serving(id), &mut greeting, &payload)
                    }
                    FrameEvent::Skipped(n) => {
                        bad_frame(id, n, format!("skipped {n} bytes that were not a frame"))
                    }
                    FrameEvent::TooLong(len) => bad_frame(
                        id,
                        MAGIC.len(),
                        format!(
                            "frame announces {len} bytes, more than the limit of {}",
                            ktrace_abi::frame::MAX_PAYLOAD
                        ),
                    ),
                    FrameEvent::BadCrc => bad_frame(
                        id,
                        MAGIC.len(),
                        String::from(
                            "frame CRC mismatch: frame dropped, reading on after its header",
                        ),
                    ),
                }
            }
            // Before its `Hello`, a client's first frame may sit behind the
            // unfinished frame of the client before it (its bytes arrived
            // after its close, see `virtio_serial`'s `close_host_side`),
            // whose header would take the new frame as payload: skip to a
            // whole frame near the end rather than wait for the line to go
            // idle. A client that has said `Hello` sends frames one after
            // the other, so none can be whole behind an unfinished one.
            if greeting.greeted || reader.buffered() == 0 {
                break;
            }
            let skipped = reader.skip_to_last_frame(bytes.len() + FIRST_FRAME_MAX);
            if skipped == 0 {
                break;
            }
            bad_frame(
                id,
                skipped,
                format!("skipped {skipped} bytes of an unfinished frame before a whole one"),
            );
        }
    }
}

/// Counts a bad frame of `session` whose `dropped` bytes were thrown away,
/// and tells its client why.
fn bad_frame(session: usize, dropped: usize, why: String) {
    BAD_FRAMES.fetch_add(1, Ordering::Relaxed);
    DROPPED_RX_BYTES.fetch_add(dropped as u64, Ordering::Relaxed);
    push(session, &error(ErrorCode::BadFrame, why));
}

/// The longest first frame (`Hello`) a client is expected to send, for
/// [`FrameReader::skip_to_last_frame`].
const FIRST_FRAME_MAX: usize = 4096;

/// Heap a decoded request may take per payload byte/// Heap a decoded request may take per payload byte: its vectors and
/// strings are copies of payload bytes, and the handler may copy them once.
const DECODED_BYTES_PER_PAYLOAD_BYTE: usize = 2;
/// Requests up to this size decode without a heap check.
const SMALL_REQUEST_BYTES: usize = 64 << 10;

/// Answers one request frame of `session`'s client.
fn handle_payload(session: Session, greeting: &mut Greeting, payload: &[u8]) {
    // Small requests always decode: the heap's reserve covers them, and a
    // delete that would free memory must get through on a full heap.
    let room = if payload.len() > SMALL_REQUEST_BYTES {
        crate::mm::heap::check_room(payload.len() * DECODED_BYTES_PER_PAYLOAD_BYTE)
    } else {
        Ok(0)
    };
    if let Err(full) = room {
        let id = postcard::take_from_bytes::<u32>(payload)
            .map(|(id, _)| id)
            .unwrap_or(PUSH_ID);
        send(
            session.id,
            id,
            &Error::new(
                Kind::NoMemory,
                format!("a request of {} bytes {full}", payload.len()),
            )
            .into_response(),
        );
        return;
    }
    let envelope = match ktrace_abi::decode::<Request>(payload) {
        Ok(e) => e,
        Err(e) => {
            BAD_FRAMES.fetch_add(1, Ordering::Relaxed);
            // The id is the first field; answer with it when it decodes.
            let id = postcard::take_from_bytes::<u32>(payload)
                .map(|(id, _)| id)
                .unwrap_or(PUSH_ID);
            send(
                session.id,
                id,
                &error(ErrorCode::Decode, format!("request does not decode: {e}")),
            );
            return;
        }
    };
    let id = envelope.id;
    let resp = match envelope.body {
        Request::Hello(h) => {
            if h.protocol_version != PROTOCOL_VERSION {
                error(
                    ErrorCode::Version,
                    format!("protocol version {} is not supported; this kernel speaks {PROTOCOL_VERSION}", h.protocol_version),
                )
            } else {
                greeting.greeted = true;
                log::info!("host connected: {}", h.client);
                Response::Hello(HelloReply {
                    kernel_version: String::from(crate::KERNEL_VERSION),
                    protocol_version: PROTOCOL_VERSION,
                    uptime_ns: crate::time::now_ns(),
                    client_generation: session.generation,
                    session: session.id as u32,
                })
            }
        }
        _ if !greeting.greeted => error(ErrorCode::Version, String::from("send Hello first")),
        Request::Info => Response::Info(system_info()),
        Request::Shutdown { exit_code } => {
            send(session.id, id, &Response::Ok);
            log::info!("shutdown requested by the host (exit code {exit_code:#x})");
            arch::qemu_exit(exit_code);
        }
        Request::Debug(DebugRequest::Panic) => crate::debug::forced_panic(),
        Request::Debug(DebugRequest::ListSelfTests) => {
            Response::SelfTests(crate::debug::self_test_names())
        }
        Request::Debug(DebugRequest::SelfTest { name }) => match crate::debug::run_self_test(&name)
        {
            Some(r) => Response::SelfTest(r),
            None if !crate::debug::HAS_SELF_TESTS => error(
                ErrorCode::NotFound,
                format!(
                    "no self test named {name:?}: this kernel was built without them (the `self-tests` feature)"
                ),
            ),
            None => error(
                ErrorCode::NotFound,
                format!(
                    "no self test named {name:?}; known: {}",
                    crate::debug::self_test_names().join(", ")
                ),
            ),
        },
        Request::Debug(DebugRequest::Coverage(op)) => coverage(op, &session),
        Request::Trace(r) => answer(crate::trace::control::handle(r, &session)),
        Request::Bpf(r) => answer(crate::bpf::handle(r, &session)),
        Request::Block(r) => answer(crate::block::handle(r, &session, &CLIENTS)),
    };
    // Only to the client that asked: a request can take long (a workload,
    // a subscribe waiting for the event task), and a client that left
    // meanwhile has a successor that never sent this id.
    send_frame(session.id, Some(session.generation), id, &resp);
}

/// The answer to a subsystem's request: its response, or its refusal as
/// the wire says it.
fn answer(a: crate::error::Answer) -> Response {
    a.unwrap_or_else(Error::into_response)
}

/// Edge coverage of the asking session's task (fuzzing builds).
#[cfg(feature = "coverage")]
fn coverage(op: ktrace_abi::vm::CoverageOp, session: &Session) -> Response {
    use arch::coverage;
    use ktrace_abi::vm::{CoverageOp, CoverageReport, CoveredEdge};
    let session = session.id;
    let mut edges = Vec::new();
    match op {
        CoverageOp::Enable => coverage::enable(session, crate::task::current_pid()),
        CoverageOp::Disable => coverage::disable(session),
        CoverageOp::Collect { reset } => coverage::collect(session, reset, |guard, pc| {
            edges.push(CoveredEdge { guard, pc })
        }),
    }
    Response::Coverage(CoverageReport {
        edges_total: coverage::edges_total(),
        enabled: coverage::enabled(session),
        edges,
    })
}

#[cfg(not(feature = "coverage"))]
fn coverage(_op: ktrace_abi::vm::CoverageOp, _session: &Session) -> Response {
    error(
        ErrorCode::NotSupported,
        String::from("this kernel records no coverage: boot the fuzzing build (`ktrace vm start --coverage`)"),
    )
}

fn system_info() -> SystemInfo {
    let (total, used) = crate::mm::usage();
    let tx_abandoned = match LINK.get() {
        Some(Link::Virtio(port)) => port.tx_abandoned(),
        _ => (0, 0, 0),
    };
    SystemInfo {
        kernel_version: String::from(crate::KERNEL_VERSION),
        uptime_ns: crate::time::now_ns(),
        cpus: crate::percpu::cpu_count(),
        tsc_khz: crate::time::tsc_khz(),
        memory_total_bytes: total,
        memory_used_bytes: used,
        heap_total_bytes: crate::mm::heap::total_bytes(),
        heap_used_bytes: crate::mm::heap::used_bytes() as u64,
        timer_ticks: crate::time::ticks(),
        timer_hz: crate::time::TIMER_HZ,
        context_switches: crate::task::context_switches(),
        tasks: crate::task::snapshot(),
        bad_frames: bad_frames(),
        control_link: String::from(link_name()),
        control_rx_bytes: RX_BYTES.load(Ordering::Relaxed),
        control_tx_bytes: TX_BYTES.load(Ordering::Relaxed),
        control_tx_waits: match LINK.get() {
            Some(Link::Virtio(port)) => port.tx_full(),
            _ => 0,
        },
        control_disconnects: CHANNELS
            .iter()
            .map(|c| c.disconnects.load(Ordering::Relaxed))
            .sum(),
        control_abandoned_rx_bytes: ABANDONED_RX_BYTES.load(Ordering::Relaxed),
        control_dropped_rx_bytes: DROPPED_RX_BYTES.load(Ordering::Relaxed)
            + RX_DROPPED.load(Ordering::Relaxed),
        control_abandoned_tx_bytes: tx_abandoned.0,
        control_tx_slots_lost: tx_abandoned.1,
        control_tx_queue_rebuilds: tx_abandoned.2,
        control_closes_after_reopen: match LINK.get() {
            Some(Link::Virtio(port)) => port.closes_after_reopen(),
            _ => 0,
        },
        event_sessions: crate::bpf::events::session_stats(sessions().min(MAX_SESSIONS)),
    }
}
