//! virtio-serial: ports of a virtio console device with the MULTIPORT
//! feature, each a fast byte stream to the host.
//!
//! Why not `virtio_drivers::device::console::VirtIOConsole`: it drives only
//! port 0 (a QEMU `virtconsole`), and QEMU *drops* a console port's output
//! when the host reads too slowly, where a `virtserialport` throttles the
//! guest instead. Event streams promise that nothing is lost unaccounted,
//! so the kernel needs a generic port, which needs MULTIPORT and its
//! control queues. The driver also keeps several buffers in flight in both
//! directions (the crate's console has one page for input and waits for
//! every output buffer), and never waits with its lock held.
//!
//! Protocol (virtio 1.2, 5.3.6): queues 2/3 carry 8-byte control messages
//! `{ id: le32, event: le16, value: le16 }`. The driver says
//! `DEVICE_READY`; the device answers `DEVICE_ADD` per port; the driver
//! answers `PORT_READY` and, for the port it drives, `PORT_OPEN` (until
//! then QEMU holds the host's bytes back); the device reports the host
//! side's connection with `PORT_OPEN` and the port's name with
//! `PORT_NAME`. Port `n >= 1` uses queues `2n + 2` (receive) and `2n + 3`
//! (transmit).
//!
//! A host client that goes away while QEMU throttles its port (it read too
//! slowly) leaves QEMU holding one transmit buffer half written. QEMU 7.2
//! *detaches* that buffer when the socket closes: it never appears in the
//! used ring, and the rest of the port's buffers are returned behind it,
//! out of order. The driver therefore completes transmit buffers in
//! whatever order the device returns them, and when it sees the host side
//! close it gives up every buffer still in flight (see
//! [`Port::abandon_tx`]): without that the port would wait forever for the
//! detached one and its session would never answer again. The detached
//! buffer's descriptor is lost to the ring, so when the device offers
//! `VIRTIO_F_RING_RESET` (QEMU 7.2 does) the driver then resets that
//! transmit queue and builds it anew, with all its descriptors; without
//! the feature the port works on with one descriptor fewer per such loss.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use bitflags::bitflags;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::Hal;

use super::pci::{self, PortCam};
use super::virtio::KernelHal;
use crate::sync::SpinLock;

bitflags! {
    /// The features this driver negotiates.
    #[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
    struct Features: u64 {
        const MULTIPORT = 1 << 1;
        const VERSION_1 = 1 << 32;
        /// A driver may reset one queue (virtio 1.2, 2.6.1).
        const RING_RESET = 1 << 40;
    }
}

const CTRL_RX_QUEUE: u16 = 2;
const CTRL_TX_QUEUE: u16 = 3;
/// Control buffers in each direction. A `PORT_NAME` message carries the
/// name after the 8-byte header.
const CTRL_SLOTS: usize = 8;
const CTRL_BUF_LEN: usize = 128;
/// Data buffers in each direction, per port.
const DATA_SLOTS: usize = 16;
/// Receive buffers posted per port (the rest of the ring stays free).
const RX_POSTED: usize = 8;
/// Size of each receive buffer: a 4 MiB request arrives in 64 buffers.
const RX_BUF_LEN: usize = 64 * 1024;
/// Largest transmit buffer: longer writes are split.
pub const TX_CHUNK: usize = 64 * 1024;
/// The most bytes a port can have queued for the host at once.
pub const TX_QUEUED_MAX: usize = DATA_SLOTS * TX_CHUNK;

const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const DEVICE_REMOVE: u16 = 2;
const PORT_READY: u16 = 3;
const PORT_OPEN: u16 = 6;
const PORT_NAME: u16 = 7;

/// `virtio_pci_common_cfg` offsets (virtio 1.2, 4.1.4.3).
const COMMON_QUEUE_SELECT: usize = 0x16;
const COMMON_QUEUE_RESET: usize = 0x3a;
/// The vendor capability of virtio PCI structures, and the common
/// configuration's `cfg_type`.
const PCI_CAP_ID_VNDR: u8 = 0x09;
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;

/// How long [`probe`] waits for the device to announce the port. QEMU
/// answers within milliseconds when its I/O thread runs, but with several
/// vCPU threads on a loaded host it may not run for a while, and falling
/// back to COM2 then leaves the host's sockets unserved: the wait ends as
/// soon as the ports are open, so only a device that never answers pays it.
const ANNOUNCE_TIMEOUT_NS: u64 = 5_000_000_000;

fn rx_queue(port: u32) -> u16 {
    (2 * port + 2) as u16
}

/// One port's queues and state.
struct Port {
    id: u32,
    rx: VirtQueue<KernelHal, DATA_SLOTS>,
    tx: VirtQueue<KernelHal, DATA_SLOTS>,
    rx_bufs: Vec<Box<[u8]>>,
    /// Tokens of the posted receive buffers, in ring order, with the index
    /// of their buffer.
    rx_posted: VecDeque<(u16, usize)>,
    tx_posted: VecDeque<(u16, Vec<u8>)>,
    /// Descriptors of transmit buffers the device kept when the host side
    /// closed (see [`Port::abandon_tx`]): the ring is smaller by this many.
    tx_lost_slots: usize,
    /// The device announced the port and we opened it.
    opened: bool,
    /// The host side of the port is connected (a client on the socket).
    host_connected: bool,
    name: String,
    /// Received buffers (index, length) taken from the device but not
    /// given to the sink yet, oldest first: one the sink refused (it stays
    /// unposted and goes before any later one, so the device runs out of
    /// buffers and QEMU holds the client back), or those taken when the
    /// host side closed (see [`Inner::close_host_side`]).
    pending: VecDeque<(usize, usize)>,
}

struct Inner {
    transport: PciTransport,
    ctrl_rx: VirtQueue<KernelHal, CTRL_SLOTS>,
    ctrl_tx: VirtQueue<KernelHal, CTRL_SLOTS>,
    ctrl_rx_bufs: Vec<Box<[u8]>>,
    ctrl_rx_posted: VecDeque<(u16, usize)>,
    ctrl_tx_posted: VecDeque<(u16, Box<[u8]>)>,
    ports: Vec<Port>,
    /// Where received bytes go (interrupt context, lock held), with the
    /// index of the port in the list given to [`probe`]. `false`: not now
    /// (see [`Port::pending`]).
    sink: fn(usize, &[u8]) -> bool,
    /// Told when a port's host side connects (true) or goes away (false,
    /// with the count of received bytes discarded with it).
    on_host: fn(usize, bool, usize),
    /// Bytes given up with transmit buffers when host sides closed.
    tx_abandoned: u64,
    /// The device's common configuration (MMIO), when it offers queue
    /// reset: [`Inner::rebuild_tx`] needs `queue_select` and `queue_reset`,
    /// which the transport does not expose.
    common_cfg: Option<usize>,
    /// Transmit queues rebuilt after the device kept a buffer.
    tx_rebuilds: u64,
    /// Host-side closes whose port had already been reopened when the
    /// driver read them (see [`Inner::close_host_side`]).
    closes_after_reopen: u64,
}

/// A virtio-serial device and the ports the kernel drives.
pub struct SerialPorts {
    inner: SpinLock<Inner>,
    /// Transmit attempts that found every buffer of a port in flight.
    tx_full: AtomicU64,
    /// The GSI of the device's INTx pin.
    pub gsi: u8,
}

/// Why a port could not be set up.
#[derive(Debug)]
pub enum ProbeError {
    NoDevice,
    Transport(String),
    Queue(virtio_drivers::Error),
    NoMultiport,
    /// The device has fewer ports than the one asked for.
    TooFewPorts(u32),
    /// The device never announced the port.
    NotAnnounced(u32),
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoDevice => write!(f, "no virtio console device on PCI bus 0"),
            Self::Transport(e) => write!(f, "PCI transport: {e}"),
            Self::Queue(e) => write!(f, "virtqueue setup: {e}"),
            Self::NoMultiport => write!(f, "the device does not offer MULTIPORT"),
            Self::TooFewPorts(n) => write!(f, "the device has only {n} ports"),
            Self::NotAnnounced(p) => write!(f, "the device never announced port {p}"),
        }
    }
}

impl Port {
    /// Gives every pending buffer back to the device, its bytes unread:
    /// they came from a client that left. Returns their count, and whether
    /// a buffer went back (then the device wants a notice).
    fn discard_received(&mut self) -> (usize, bool) {
        let mut bytes = 0;
        let reposted = !self.pending.is_empty();
        while let Some((i, len)) = self.pending.pop_front() {
            bytes += len;
            self.post_rx(i);
        }
        (bytes, reposted)
    }

    /// Moves every buffer the device has filled so far behind the pending
    /// ones, in the order the device returned them.
    fn take_received(&mut self) {
        while let Some(&(t, i)) = self.rx_posted.front() {
            if self.rx.peek_used() != Some(t) {
                break;
            }
            self.rx_posted.pop_front();
            // SAFETY: the same buffer that was added with this token.
            let len = unsafe { self.rx.pop_used(t, &[], &mut [&mut self.rx_bufs[i][..]]) }
                .unwrap_or(0) as usize;
            self.pending.push_back((i, len.min(RX_BUF_LEN)));
        }
    }

    fn post_rx(&mut self, i: usize) {
        // SAFETY: the buffer is a boxed slice owned by `self` that is
        // neither moved nor touched until `service` pops its token.
        match unsafe { self.rx.add(&[], &mut [&mut self.rx_bufs[i][..]]) } {
            Ok(t) => self.rx_posted.push_back((t, i)),
            Err(e) => log::error!("virtio-serial: cannot post a receive buffer: {e}"),
        }
    }

    fn reap_tx(&mut self) {
        reap_sent(&mut self.tx, &mut self.tx_posted);
    }

    /// The host side closed: after completing what the device returned,
    /// every transmit buffer still in flight is given up, and their bytes
    /// are returned for counting.
    ///
    /// Why nothing else can still be in flight: QEMU handles a port's close
    /// by returning every queued buffer (`discard_vq_data`) except the one
    /// it was writing when throttled, which it detaches and never returns;
    /// and a buffer the driver posts while the host side is closed is
    /// returned at once, during the notification. The close message is read
    /// here (under the driver's lock, before any later transmit), so what is
    /// left is the detached buffer. Its descriptor stays lost to the ring
    /// ([`Port::tx_lost_slots`]); the device never reads it again, so its
    /// memory is freed.
    fn abandon_tx(&mut self) -> u64 {
        self.reap_tx();
        let mut bytes = 0;
        for (_, buf) in self.tx_posted.drain(..) {
            bytes += buf.len() as u64;
            self.tx_lost_slots += 1;
        }
        bytes
    }
}

/// Frees the transmit buffers the device has finished with, in the order
/// it returns them (which need not be the order they were posted in: see
/// the module notes). `posted` holds each buffer with the token `add`
/// returned for it.
fn reap_sent<const N: usize, B: AsRef<[u8]>>(
    queue: &mut VirtQueue<KernelHal, N>,
    posted: &mut VecDeque<(u16, B)>,
) {
    while let Some(t) = queue.peek_used() {
        let Some(k) = posted.iter().position(|(token, _)| *token == t) else {
            // Not a buffer of ours: the device broke the protocol. Leave
            // the ring alone rather than recycle a descriptor we never
            // posted.
            log::error!("virtio-serial: the device returned unknown buffer {t}");
            break;
        };
        let (token, buf) = &posted[k];
        // SAFETY: the same buffer that was added with this token.
        let _ = unsafe { queue.pop_used(*token, &[buf.as_ref()], &mut []) };
        posted.remove(k);
    }
}

impl Inner {
    fn post_ctrl_rx(&mut self, i: usize) {
        // SAFETY: the buffer is a boxed slice owned by `self` that is
        // neither moved nor touched until `service` pops its token.
        match unsafe { self.ctrl_rx.add(&[], &mut [&mut self.ctrl_rx_bufs[i][..]]) } {
            Ok(t) => self.ctrl_rx_posted.push_back((t, i)),
            Err(e) => log::error!("virtio-serial: cannot post a control buffer: {e}"),
        }
    }

    fn send_ctrl(&mut self, id: u32, event: u16, value: u16) {
        self.reap_ctrl_tx();
        let mut msg: Box<[u8]> = Box::new([0u8; 8]);
        msg[..4].copy_from_slice(&id.to_le_bytes());
        msg[4..6].copy_from_slice(&event.to_le_bytes());
        msg[6..].copy_from_slice(&value.to_le_bytes());
        // SAFETY: the message box moves into `ctrl_tx_posted` (its heap
        // contents stay put) until the device hands the token back.
        match unsafe { self.ctrl_tx.add(&[&msg[..]], &mut []) } {
            Ok(t) => {
                self.ctrl_tx_posted.push_back((t, msg));
                if self.ctrl_tx.should_notify() {
                    self.transport.notify(CTRL_TX_QUEUE);
                }
            }
            Err(e) => log::error!("virtio-serial: control message {event} lost: {e}"),
        }
    }

    fn reap_ctrl_tx(&mut self) {
        reap_sent(&mut self.ctrl_tx, &mut self.ctrl_tx_posted);
    }

    /// Handles control message `msg`; `reopened` says whether a message
    /// after it that the device has already returned connects `msg`'s port
    /// again (see [`Inner::close_host_side`]).
    fn control_message(&mut self, msg: &[u8], reopened: impl Fn(u32) -> bool) {
        let Some((id, event, value)) = parse_ctrl(msg) else {
            return;
        };
        let Some(k) = self.ports.iter().position(|p| p.id == id) else {
            // Ports this driver does not drive are refused.
            if event == DEVICE_ADD {
                self.send_ctrl(id, PORT_READY, 0);
            }
            return;
        };
        match event {
            DEVICE_ADD => {
                self.send_ctrl(id, PORT_READY, 1);
                self.send_ctrl(id, PORT_OPEN, 1);
                self.ports[k].opened = true;
            }
            DEVICE_REMOVE => {
                self.ports[k].opened = false;
                let was = self.ports[k].host_connected;
                let discarded = self.close_host_side(k, reopened(id));
                log::warn!("virtio-serial: port {id} removed");
                if was {
                    (self.on_host)(k, false, discarded);
                }
            }
            PORT_OPEN => {
                let connected = value != 0;
                if connected != self.ports[k].host_connected {
                    let discarded = if connected {
                        self.ports[k].host_connected = true;
                        0
                    } else {
                        self.close_host_side(k, reopened(id))
                    };
                    (self.on_host)(k, connected, discarded);
                }
            }
            PORT_NAME => {
                self.ports[k].name = String::from_utf8_lossy(&msg[8..])
                    .trim_end_matches('\0')
                    .into();
            }
            _ => {}
        }
    }

    /// The host side of port index `k` closed: gives up its transmit
    /// buffers in flight and the bytes its client sent that were not
    /// delivered, and returns their count.
    ///
    /// Which received bytes are the old client's: QEMU's main loop
    /// returns a port's receive buffers and control messages in the order
    /// things happened, and accepts the next client on the socket only
    /// after the close. So every buffer the old client filled was in the
    /// used ring before the close message, hence visible once the close
    /// message is; a buffer of the next client can follow only its
    /// `PORT_OPEN`, which is then visible too (x86 loads are ordered, and
    /// the device updates each ring's index after its entries). The
    /// driver reads the close, then takes the received buffers, then
    /// looks for a later reopening (`reopened`, or any control message
    /// the device returned since): with none, every buffer taken is the
    /// old client's and is given back unread. Delivered after the close
    /// instead, they would reach the session's next client as the start
    /// of its byte stream: a stale frame header there swallows the new
    /// client's `Hello` as payload until the line has been idle for
    /// seconds. With a reopening already visible the buffers may hold
    /// both clients' bytes, which the driver cannot split; they go to the
    /// session as they came (counted: [`SerialPorts::closes_after_reopen`]).
    fn close_host_side(&mut self, k: usize, reopened: bool) -> usize {
        let port = &mut self.ports[k];
        port.host_connected = false;
        self.tx_abandoned += port.abandon_tx();
        port.take_received();
        let (discarded, reposted) = if reopened || self.ctrl_rx.peek_used().is_some() {
            self.closes_after_reopen += 1;
            (0, false)
        } else {
            port.discard_received()
        };
        if reposted && port.rx.should_notify() {
            self.transport.notify(rx_queue(port.id));
        }
        self.rebuild_tx(k);
        discarded
    }

    /// Resets the transmit queue of port index `k` and builds it anew when
    /// the device kept some of its descriptors ([`Port::tx_lost_slots`]).
    ///
    /// Called right after [`Port::abandon_tx`], under the driver's lock:
    /// nothing is in flight on the queue, and QEMU holds no element of it
    /// (it detached the one it held when the host side closed), so after
    /// the reset neither side refers to the old rings. The old rings'
    /// memory goes back to the HAL, which hands it to the new queue.
    fn rebuild_tx(&mut self, k: usize) {
        let Some(cfg) = self.common_cfg else { return };
        let port = &mut self.ports[k];
        if port.tx_lost_slots == 0 || !port.tx_posted.is_empty() {
            return;
        }
        let q = rx_queue(port.id) + 1;
        // SAFETY: `cfg` maps the device's common configuration structure
        // (found in its PCI capabilities, at least 0x3c bytes long since
        // the device offers RING_RESET); both fields are naturally aligned
        // u16 registers, and the driver's lock serialises every access to
        // the structure (the transport's included).
        unsafe {
            core::ptr::write_volatile((cfg + COMMON_QUEUE_SELECT) as *mut u16, q);
            core::ptr::write_volatile((cfg + COMMON_QUEUE_RESET) as *mut u16, 1);
        }
        match VirtQueue::new(&mut self.transport, q, false, false) {
            Ok(fresh) => {
                let lost = core::mem::replace(&mut port.tx_lost_slots, 0);
                // The old queue's rings go back to the HAL here.
                port.tx = fresh;
                self.tx_rebuilds += 1;
                log::info!(
                    "virtio-serial: port {}: transmit queue rebuilt ({lost} buffers the device kept)",
                    port.id
                );
            }
            Err(e) => log::error!(
                "virtio-serial: port {}: cannot rebuild the transmit queue after a reset: {e}",
                port.id
            ),
        }
    }

    /// Takes up to [`CTRL_SLOTS`] control messages the device returned and
    /// handles them in order; returns how many.
    fn control_batch(&mut self) -> usize {
        let mut batch = [[0u8; CTRL_BUF_LEN]; CTRL_SLOTS];
        let mut lens = [0usize; CTRL_SLOTS];
        let mut n = 0;
        while n < CTRL_SLOTS {
            let Some(&(t, i)) = self.ctrl_rx_posted.front() else {
                break;
            };
            if self.ctrl_rx.peek_used() != Some(t) {
                break;
            }
            self.ctrl_rx_posted.pop_front();
            // SAFETY: the same buffer that was added with this token.
            let len = unsafe {
                self.ctrl_rx
                    .pop_used(t, &[], &mut [&mut self.ctrl_rx_bufs[i][..]])
            }
            .unwrap_or(0) as usize;
            let len = len.min(CTRL_BUF_LEN);
            batch[n][..len].copy_from_slice(&self.ctrl_rx_bufs[i][..len]);
            lens[n] = len;
            self.post_ctrl_rx(i);
            n += 1;
        }
        if n > 0 && self.ctrl_rx.should_notify() {
            self.transport.notify(CTRL_RX_QUEUE);
        }
        for m in 0..n {
            let later = &batch[m + 1..n];
            let later_lens = &lens[m + 1..n];
            let reopened = |id: u32| {
                later.iter().zip(later_lens).any(|(msg, &len)| {
                    parse_ctrl(&msg[..len]).is_some_and(|(i, event, value)| {
                        i == id && event == PORT_OPEN && value != 0
                    })
                })
            };
            self.control_message(&batch[m][..lens[m]], reopened);
        }
        n
    }

    /// Completes whatever the device finished: control messages, received
    /// data (to the sink), sent buffers.
    fn service(&mut self) {
        // Every control message the device has returned, in order, a
        // batch at a time, so a close can tell whether a reopening follows
        // (`close_host_side`).
        while self.control_batch() > 0 {}
        self.reap_ctrl_tx();

        let sink = self.sink;
        for k in 0..self.ports.len() {
            let port = &mut self.ports[k];
            let mut notify_rx = false;
            loop {
                // Buffers taken before go first, in order; a refused one
                // stops the port's delivery until the sink has room.
                if port.pending.is_empty() {
                    port.take_received();
                }
                let Some(&(i, len)) = port.pending.front() else {
                    break;
                };
                if !sink(k, &port.rx_bufs[i][..len]) {
                    break;
                }
                port.pending.pop_front();
                port.post_rx(i);
                notify_rx = true;
            }
            if notify_rx && port.rx.should_notify() {
                self.transport.notify(rx_queue(port.id));
            }
            port.reap_tx();
        }
    }
}

/// A control message's `(id, event, value)`, if it is long enough.
fn parse_ctrl(msg: &[u8]) -> Option<(u32, u16, u16)> {
    let head: [u8; 8] = msg.get(..8)?.try_into().ok()?;
    Some((
        u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
        u16::from_le_bytes([head[4], head[5]]),
        u16::from_le_bytes([head[6], head[7]]),
    ))
}

/// The device's common configuration structure, mapped, from its PCI
/// vendor capabilities (the transport keeps its own pointer private).
fn common_cfg(root: &mut PciRoot<PortCam>, df: DeviceFunction) -> Option<usize> {
    let cap = root.capabilities(df).find(|c| {
        c.id == PCI_CAP_ID_VNDR && (c.private_header >> 8) as u8 == VIRTIO_PCI_CAP_COMMON_CFG
    })?;
    let bar = PortCam.read_word(df, cap.offset + 4) as u8;
    let offset = u64::from(PortCam.read_word(df, cap.offset + 8));
    let length = PortCam.read_word(df, cap.offset + 12) as usize;
    let (base, size) = root.bar_info(df, bar).ok()??.memory_address_size()?;
    if base == 0 || offset + length as u64 > size || length < COMMON_QUEUE_RESET + 2 {
        return None;
    }
    // SAFETY: the range lies inside a memory BAR of the device.
    let mapped = unsafe { KernelHal::mmio_phys_to_virt(base + offset, length) };
    Some(mapped.as_ptr() as usize)
}

/// Finds the first virtio console device on bus 0 and opens its ports
/// `ids` (each >= 1), delivering received bytes to `sink` and host
/// connection changes to `on_host`, both with the port's index in `ids`
/// (called in interrupt or task context with interrupts off).
pub fn probe(
    ids: &[u32],
    sink: fn(usize, &[u8]) -> bool,
    on_host: fn(usize, bool, usize),
) -> Result<SerialPorts, ProbeError> {
    let mut root = PciRoot::new(PortCam);
    let df = root
        .enumerate_bus(0)
        .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Console))
        .map(|(df, _)| df)
        .ok_or(ProbeError::NoDevice)?;
    let (_, cmd) = root.get_status_command(df);
    root.set_command(df, cmd | Command::MEMORY_SPACE | Command::BUS_MASTER);
    let mut transport = PciTransport::new::<KernelHal, _>(&mut root, df)
        .map_err(|e| ProbeError::Transport(alloc::format!("{e}")))?;
    let features =
        transport.begin_init(Features::MULTIPORT | Features::VERSION_1 | Features::RING_RESET);
    let common_cfg = if features.contains(Features::RING_RESET) {
        common_cfg(&mut root, df)
    } else {
        None
    };
    if !features.contains(Features::MULTIPORT) {
        return Err(ProbeError::NoMultiport);
    }
    // Config space: cols u16, rows u16, max_nr_ports u32.
    let max_ports: u32 = transport.read_config_space(4).map_err(ProbeError::Queue)?;
    if let Some(&id) = ids.iter().find(|&&id| id >= max_ports || id == 0) {
        return Err(if id == 0 {
            ProbeError::NotAnnounced(0)
        } else {
            ProbeError::TooFewPorts(max_ports)
        });
    }
    let ctrl_rx =
        VirtQueue::new(&mut transport, CTRL_RX_QUEUE, false, false).map_err(ProbeError::Queue)?;
    let ctrl_tx =
        VirtQueue::new(&mut transport, CTRL_TX_QUEUE, false, false).map_err(ProbeError::Queue)?;
    let mut ports = Vec::with_capacity(ids.len());
    for &id in ids {
        ports.push(Port {
            id,
            rx: VirtQueue::new(&mut transport, rx_queue(id), false, false)
                .map_err(ProbeError::Queue)?,
            tx: VirtQueue::new(&mut transport, rx_queue(id) + 1, false, false)
                .map_err(ProbeError::Queue)?,
            rx_bufs: (0..RX_POSTED)
                .map(|_| vec![0u8; RX_BUF_LEN].into_boxed_slice())
                .collect(),
            rx_posted: VecDeque::new(),
            tx_posted: VecDeque::new(),
            tx_lost_slots: 0,
            pending: VecDeque::new(),
            opened: false,
            host_connected: false,
            name: String::new(),
        });
    }
    transport.finish_init();
    let gsi = pci::intx_gsi(df);
    let mut inner = Inner {
        transport,
        ctrl_rx,
        ctrl_tx,
        ctrl_rx_bufs: (0..CTRL_SLOTS)
            .map(|_| vec![0u8; CTRL_BUF_LEN].into_boxed_slice())
            .collect(),
        ctrl_rx_posted: VecDeque::new(),
        ctrl_tx_posted: VecDeque::new(),
        ports,
        sink,
        on_host,
        tx_abandoned: 0,
        common_cfg,
        tx_rebuilds: 0,
        closes_after_reopen: 0,
    };
    for i in 0..CTRL_SLOTS {
        inner.post_ctrl_rx(i);
    }
    inner.transport.notify(CTRL_RX_QUEUE);
    for k in 0..inner.ports.len() {
        for i in 0..RX_POSTED {
            inner.ports[k].post_rx(i);
        }
        let q = rx_queue(inner.ports[k].id);
        inner.transport.notify(q);
    }
    inner.send_ctrl(0, DEVICE_READY, 1);
    // QEMU answers while handling the notification; poll briefly in case
    // a device defers it (interrupts are not routed yet).
    let deadline = crate::time::now_ns() + ANNOUNCE_TIMEOUT_NS;
    while !inner.ports.iter().all(|p| p.opened) && crate::time::now_ns() < deadline {
        inner.service();
        core::hint::spin_loop();
    }
    if let Some(p) = inner.ports.iter().find(|p| !p.opened) {
        return Err(ProbeError::NotAnnounced(p.id));
    }
    // Messages that followed the announcement (names, host connections).
    inner.service();
    for p in &inner.ports {
        log::info!(
            "virtio-serial: port {} {:?} open at slot {}, GSI {gsi}, host {}",
            p.id,
            p.name,
            df.device,
            if p.host_connected {
                "connected"
            } else {
                "not connected"
            }
        );
    }
    Ok(SerialPorts {
        inner: SpinLock::new(inner),
        tx_full: AtomicU64::new(0),
        gsi,
    })
}

impl SerialPorts {
    /// The interrupt handler's work: acknowledge and complete.
    pub fn interrupt(&self) {
        let mut inner = self.inner.lock();
        let status = inner.transport.ack_interrupt();
        if status.is_empty() {
            return;
        }
        inner.service();
    }

    /// Complete finished work without an interrupt (a missed or coalesced
    /// one must not stall the stream).
    pub fn poll(&self) {
        self.inner.lock().service();
    }

    /// Queue `data` (at most [`TX_CHUNK`] bytes) for the host on port
    /// index `k`. Gives it back when every transmit buffer is in flight:
    /// the host reads too slowly (QEMU throttles the port) and the caller
    /// should wait.
    pub fn try_send(&self, k: usize, data: Vec<u8>) -> Result<(), Vec<u8>> {
        debug_assert!(data.len() <= TX_CHUNK && !data.is_empty());
        let mut inner = self.inner.lock();
        inner.service();
        let inner = &mut *inner;
        let Some(port) = inner.ports.get_mut(k) else {
            return Err(data);
        };
        if port.tx_posted.len() + port.tx_lost_slots >= DATA_SLOTS {
            self.tx_full.fetch_add(1, Ordering::Relaxed);
            return Err(data);
        }
        // SAFETY: the vector moves into `tx_posted` (its heap buffer stays
        // put) until the device hands the token back in `reap_tx`.
        match unsafe { port.tx.add(&[&data[..]], &mut []) } {
            Ok(t) => {
                port.tx_posted.push_back((t, data));
                if port.tx.should_notify() {
                    let q = rx_queue(port.id) + 1;
                    inner.transport.notify(q);
                }
                Ok(())
            }
            Err(_) => {
                self.tx_full.fetch_add(1, Ordering::Relaxed);
                Err(data)
            }
        }
    }

    /// Whether port index `k` can take `buffers` transmit buffers now (all
    /// of the ring's, for more than it has). Only the device frees
    /// buffers, so a caller that alone sends on the port (under its
    /// session's transmit lock) can then queue that many. A port without
    /// room is not counted in [`Self::tx_full`]: the caller asks again on
    /// every round while its client reads slowly, and counts its waits
    /// itself (the event task's held batches).
    pub fn tx_room(&self, k: usize, buffers: usize) -> bool {
        let mut inner = self.inner.lock();
        inner.service();
        let Some(port) = inner.ports.get(k) else {
            return false;
        };
        let usable = DATA_SLOTS.saturating_sub(port.tx_lost_slots).max(1);
        port.tx_posted.len() + port.tx_lost_slots + buffers.min(usable) <= DATA_SLOTS
    }

    /// Whether a host client is connected to port index `k`.
    pub fn host_connected(&self, k: usize) -> bool {
        self.inner
            .lock()
            .ports
            .get(k)
            .is_some_and(|p| p.host_connected)
    }

    /// How many ports the kernel drives.
    pub fn len(&self) -> usize {
        self.inner.lock().ports.len()
    }

    /// Transmit attempts that found every buffer in flight (the host
    /// read too slowly).
    pub fn tx_full(&self) -> u64 {
        self.tx_full.load(Ordering::Relaxed)
    }

    /// Bytes sent toward host clients that left before reading them,
    /// transmit descriptors the device keeps now (see
    /// [`Port::abandon_tx`]), and transmit queues rebuilt to get them back.
    pub fn tx_abandoned(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock();
        let slots = inner.ports.iter().map(|p| p.tx_lost_slots as u64).sum();
        (inner.tx_abandoned, slots, inner.tx_rebuilds)
    }

    /// Host-side closes the driver read only after the port had been
    /// reopened (see [`Inner::close_host_side`]).
    pub fn closes_after_reopen(&self) -> u64 {
        self.inner.lock().closes_after_reopen
    }
}
