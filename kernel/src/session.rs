//! The handle `control` passes down with every request: which control
//! session asked, and which of its clients.
//!
//! `control` owns the sessions (their links, buffers, tasks and client
//! generations). A subsystem never asks it which session is running: it is
//! handed a [`Session`] with the request (`bpf::handle(request, &session)`)
//! and keeps copies of it to say who holds what. The module imports nothing
//! of the kernel, so data flows one way: host -> control -> subsystem ->
//! events -> control -> host.

/// Client sessions on virtio-serial: ports `1..=MAX_SESSIONS` (QEMU's
/// `virtserialport`s `nr=1..`). COM2 carries session 0 only.
pub const MAX_SESSIONS: usize = 4;

/// One client of one control session, as it was when its request came: a
/// later client of the same session is another `Session`, so what this one
/// created can be let go when it leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The control session (virtio-serial port index, 0 on COM2).
    pub id: usize,
    /// How many clients of the session had gone before this one.
    pub generation: u64,
}

/// The way back to the clients, which `control` provides: a subsystem that
/// answers over time (event streams, a workload's progress) is handed it
/// rather than calling into `control`.
pub trait Link: Sync {
    /// The client session `id` has now (its generation moves on when a
    /// client goes).
    fn current(&self, id: usize) -> Session;
    /// Whether a host client is connected to session `id` (always true
    /// on COM2, which cannot tell).
    fn connected(&self, id: usize) -> bool;
    /// Pushes an unsolicited frame to `to`; dropped if that client has
    /// gone. Task context only: it waits while the link is full.
    fn push(&self, to: &Session, resp: &ktrace_abi::Response);
    /// Encodes an unsolicited frame the way [`Link::push`] sends it (an
    /// answer too large for a frame becomes an error frame); `None` when it
    /// cannot be encoded (logged).
    fn encode_push(&self, resp: &ktrace_abi::Response) -> Option<alloc::vec::Vec<u8>>;
    /// Queues an encoded frame for `to` without waiting: whole, in order
    /// with every other frame of the session, or not at all.
    fn try_push(&self, to: &Session, frame: alloc::vec::Vec<u8>) -> Result<(), NotPushed>;
    /// The longest frame [`Link::try_push`] can queue at once, once the
    /// client has read what was queued before.
    fn max_push_bytes(&self) -> usize;
    /// Whether `client` is still its session's client.
    fn present(&self, client: &Session) -> bool {
        self.current(client.id) == *client
    }
}

/// Why [`Link::try_push`] queued nothing.
#[derive(Debug)]
pub enum NotPushed {
    /// The link cannot take the frame now (the host reads too slowly, or
    /// another frame of the session is going out): try again later.
    Full(alloc::vec::Vec<u8>),
    /// The client is gone (or its host side closed): nobody will read it.
    Gone,
}
