//! The host end of the control channel: [`Client`].
//!
//! QEMU serves the kernel's second serial port (COM2) as a Unix socket; a
//! [`Client`] connects to it, performs the [`Request::Hello`] handshake and
//! then sends [`Request`]s and waits for the [`Response`] carrying the same
//! id. Frames the kernel pushes on its own (id [`PUSH_ID`], e.g. event
//! streams) are queued apart so they are never taken for an answer.
//!
//! The channel is a byte stream without flow control, shared with whatever
//! a previous client left behind, so the client is defensive:
//! - on connect it drops any bytes already waiting in the socket and starts
//!   with an empty frame reader (a stale half frame cannot glue onto a new
//!   answer);
//! - the handshake is re-sent until answered, because the kernel may still
//!   be booting, or may be discarding a stale partial frame of a previous
//!   client, when the first `Hello` arrives;
//! - answers whose id belongs to an earlier, abandoned request are dropped.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ktrace_abi::frame::{FrameEvent, FrameReader};
use ktrace_abi::vm::{DebugRequest, Hello, HelloReply, SelfTestResult, SystemInfo};
use ktrace_abi::{Envelope, ErrorCode, ErrorReply, Request, Response, PROTOCOL_VERSION, PUSH_ID};

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the VM is not running.
    #[error("cannot connect to the control socket {}: {source} (is the VM running? start it with `ktrace vm start`)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket accepted the connection but the kernel never answered `Hello`.
    #[error("the kernel did not answer the handshake on {} within {:.1} s (still booting, hung, or another client is connected)", path.display(), timeout.as_secs_f64())]
    HandshakeTimeout { path: PathBuf, timeout: Duration },
    /// The kernel speaks another protocol version.
    #[error("protocol version mismatch: this host speaks version {host}; {detail}")]
    VersionMismatch { host: u32, detail: String },
    /// No answer to a request in time.
    #[error("no answer to request #{id} ({what}) within {:.1} s", timeout.as_secs_f64())]
    Timeout {
        id: u32,
        what: &'static str,
        timeout: Duration,
    },
    /// The kernel answered with an error frame.
    #[error("the kernel refused {what}: {} ({:?}, errno {})", reply.message, reply.code, reply.errno)]
    Kernel {
        what: &'static str,
        reply: ErrorReply,
    },
    /// The kernel answered with a response of the wrong kind.
    #[error("unexpected answer to {what}: {got}")]
    Unexpected { what: &'static str, got: String },
    /// QEMU closed the socket (the VM exited).
    #[error("the control channel was closed (did the VM exit?)")]
    Closed,
    /// A request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(#[source] postcard::Error),
    /// Any other I/O error on the socket.
    #[error("I/O error on the control channel: {0}")]
    Io(#[from] io::Error),
}

impl ClientError {
    /// The kernel's error frame, if this error carries one.
    pub fn kernel_reply(&self) -> Option<&ErrorReply> {
        match self {
            ClientError::Kernel { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

/// Result of client operations.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How [`Client::connect`] behaves.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name sent in the handshake (shows up in the kernel log).
    pub client_name: String,
    /// How long to wait for the handshake answer in total.
    pub handshake_timeout: Duration,
    /// How long to wait before sending `Hello` again.
    pub hello_retry: Duration,
    /// Default time limit of [`Client::request`].
    pub request_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            client_name: "ktrace".into(),
            handshake_timeout: Duration::from_secs(10),
            hello_retry: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What the reader saw besides good frames (bad input, stale answers).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStats {
    /// Bytes skipped while looking for a frame magic.
    pub skipped_bytes: u64,
    /// Frames dropped for a bad CRC or an absurd length.
    pub bad_frames: u64,
    /// Frames whose payload did not decode as a response envelope.
    pub undecodable: u64,
    /// Answers to requests nobody waits for any more.
    pub stale: u64,
}

/// Longest a write to the control socket may make no progress.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to the kernel's control channel.
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    reader: FrameReader,
    next_id: u32,
    pushes: VecDeque<Response>,
    request_timeout: Duration,
    hello: Option<HelloReply>,
    stats: ChannelStats,
    /// The session's lock file, held while connected (see `Vm::connect`).
    _session_lock: Option<std::fs::File>,
}

impl Client {
    /// Connect and perform the handshake.
    pub fn connect(path: &Path, opts: &ConnectOptions) -> Result<Self> {
        let mut client = Self::connect_raw(path)?;
        client.request_timeout = opts.request_timeout;
        client.handshake(&opts.client_name, opts.handshake_timeout, opts.hello_retry)?;
        Ok(client)
    }

    /// Connect without the handshake (tests use this to check that the
    /// kernel refuses requests sent before `Hello`).
    pub fn connect_raw(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        // A kernel that takes nothing for this long is not reading this
        // port (it is gone, or it serves another link): fail the write
        // instead of blocking the caller for good.
        stream.set_write_timeout(Some(WRITE_STALL_TIMEOUT))?;
        let mut client = Self {
            stream,
            path: path.to_path_buf(),
            reader: FrameReader::new(),
            next_id: 1,
            pushes: VecDeque::new(),
            request_timeout: ConnectOptions::default().request_timeout,
            hello: None,
            stats: ChannelStats::default(),
            _session_lock: None,
        };
        client.discard_pending()?;
        Ok(client)
    }

    /// Keep `lock` (a session's lock file) for as long as the client lives.
    pub fn holding(mut self, lock: std::fs::File) -> Self {
        self._session_lock = Some(lock);
        self
    }

    /// Drop bytes already waiting in the socket: they belong to nobody.
    fn discard_pending(&mut self) -> Result<()> {
        self.stream.set_nonblocking(true)?;
        let mut buf = [0u8; 4096];
        let outcome = loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break Err(ClientError::Closed),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e.into()),
            }
        };
        self.stream.set_nonblocking(false)?;
        self.reader.clear();
        outcome
    }

    /// Send `Hello` (again every `retry`) until the kernel answers or
    /// `timeout` passes.
    pub fn handshake(
        &mut self,
        client_name: &str,
        timeout: Duration,
        retry: Duration,
    ) -> Result<HelloReply> {
        let id = self.alloc_id();
        let req = Request::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: client_name.into(),
        });
        let frame = ktrace_abi::encode(id, &req).map_err(ClientError::Encode)?;
        let deadline = Instant::now() + timeout;
        loop {
            self.stream.write_all(&frame)?;
            let attempt_end = (Instant::now() + retry).min(deadline);
            match self.wait_for(id, attempt_end)? {
                Some(Response::Hello(reply)) => {
                    if reply.protocol_version != PROTOCOL_VERSION {
                        return Err(ClientError::VersionMismatch {
                            host: PROTOCOL_VERSION,
                            detail: format!("the kernel speaks version {}", reply.protocol_version),
                        });
                    }
                    self.hello = Some(reply.clone());
                    // Pushes queued before the answer may be an earlier
                    // client's events.
                    let queued = std::mem::take(&mut self.pushes);
                    for body in queued {
                        let env = Envelope { id: PUSH_ID, body };
                        if self.stale_events(&env) {
                            self.stats.stale += 1;
                        } else {
                            self.pushes.push_back(env.body);
                        }
                    }
                    return Ok(reply);
                }
                // A kernel whose Request enum differs cannot decode our
                // Hello at all: that is a version mismatch too.
                Some(Response::Error(reply))
                    if matches!(reply.code, ErrorCode::Version | ErrorCode::Decode) =>
                {
                    return Err(ClientError::VersionMismatch {
                        host: PROTOCOL_VERSION,
                        detail: format!("the kernel said: {}", reply.message),
                    });
                }
                Some(Response::Error(reply)) => {
                    return Err(ClientError::Kernel {
                        what: "Hello",
                        reply,
                    })
                }
                Some(other) => {
                    return Err(ClientError::Unexpected {
                        what: "Hello",
                        got: format!("{other:?}"),
                    })
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(ClientError::HandshakeTimeout {
                    path: self.path.clone(),
                    timeout,
                });
            }
        }
    }

    /// The kernel's handshake answer, if the handshake was done.
    pub fn hello_reply(&self) -> Option<&HelloReply> {
        self.hello.as_ref()
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters of what the reader dropped.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Change the default time limit of [`Client::request`].
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// Send a request and wait for its answer. An error frame becomes
    /// [`ClientError::Kernel`].
    pub fn request(&mut self, req: &Request) -> Result<Response> {
        let timeout = self.request_timeout;
        self.request_timeout(req, timeout)
    }

    /// [`Client::request`] with an explicit time limit.
    pub fn request_timeout(&mut self, req: &Request, timeout: Duration) -> Result<Response> {
        let what = request_name(req);
        match self.request_raw(req, timeout)? {
            Response::Error(reply) => Err(ClientError::Kernel { what, reply }),
            other => Ok(other),
        }
    }

    /// Send a request and wait for its answer, error frames included.
    pub fn request_raw(&mut self, req: &Request, timeout: Duration) -> Result<Response> {
        let id = self.send_request(req)?;
        let deadline = Instant::now() + timeout;
        self.wait_for(id, deadline)?.ok_or(ClientError::Timeout {
            id,
            what: request_name(req),
            timeout,
        })
    }

    /// Send a request without waiting; returns its id.
    pub fn send_request(&mut self, req: &Request) -> Result<u32> {
        let id = self.alloc_id();
        let frame = ktrace_abi::encode(id, req).map_err(ClientError::Encode)?;
        self.stream.write_all(&frame)?;
        Ok(id)
    }

    /// Write raw bytes to the channel (for tests of the kernel's input checks).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// The next decoded frame of any id, or `None` after `timeout`.
    /// Queued push frames come first.
    pub fn recv_any(&mut self, timeout: Duration) -> Result<Option<Envelope<Response>>> {
        if let Some(body) = self.pushes.pop_front() {
            return Ok(Some(Envelope { id: PUSH_ID, body }));
        }
        self.read_envelope(Instant::now() + timeout)
    }

    /// The next pushed frame (id 0), waiting at most `timeout`.
    pub fn next_push(&mut self, timeout: Duration) -> Result<Option<Response>> {
        if let Some(body) = self.pushes.pop_front() {
            return Ok(Some(body));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_envelope(deadline)? {
                None => return Ok(None),
                Some(env) if env.id == PUSH_ID => return Ok(Some(env.body)),
                Some(_) => self.stats.stale += 1,
            }
        }
    }

    /// Take every push frame queued so far.
    pub fn take_pushes(&mut self) -> Vec<Response> {
        self.pushes.drain(..).collect()
    }

    /// [`Request::Info`].
    pub fn info(&mut self) -> Result<SystemInfo> {
        match self.request(&Request::Info)? {
            Response::Info(info) => Ok(info),
            other => Err(unexpected("Info", &other)),
        }
    }

    /// Run an in-kernel self test.
    pub fn self_test(&mut self, name: &str) -> Result<SelfTestResult> {
        let req = Request::Debug(DebugRequest::SelfTest { name: name.into() });
        match self.request(&req)? {
            Response::SelfTest(result) => Ok(result),
            other => Err(unexpected("SelfTest", &other)),
        }
    }

    /// Names of the in-kernel self tests.
    pub fn list_self_tests(&mut self) -> Result<Vec<String>> {
        match self.request(&Request::Debug(DebugRequest::ListSelfTests))? {
            Response::SelfTests(names) => Ok(names),
            other => Err(unexpected("ListSelfTests", &other)),
        }
    }

    /// Edge coverage of this client's session (fuzzing build only; see
    /// [`ktrace_abi::vm::CoverageOp`]).
    pub fn coverage(
        &mut self,
        op: ktrace_abi::vm::CoverageOp,
    ) -> Result<ktrace_abi::vm::CoverageReport> {
        match self.request(&Request::Debug(DebugRequest::Coverage(op)))? {
            Response::Coverage(report) => Ok(report),
            other => Err(unexpected("Coverage", &other)),
        }
    }

    /// Ask the kernel to power off with `exit_code`. The kernel may close
    /// the channel before its answer gets out; that counts as success.
    pub fn shutdown(&mut self, exit_code: u8, timeout: Duration) -> Result<()> {
        match self.request_raw(&Request::Shutdown { exit_code }, timeout) {
            Ok(Response::Ok) | Err(ClientError::Closed) => Ok(()),
            Ok(Response::Error(reply)) => Err(ClientError::Kernel {
                what: "Shutdown",
                reply,
            }),
            Ok(other) => Err(unexpected("Shutdown", &other)),
            Err(e) => Err(e),
        }
    }

    fn alloc_id(&mut self) -> u32 {
        let id = self.next_id;
        // Skip PUSH_ID when wrapping around.
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Wait for the answer with `id` until `deadline`; pushes are queued,
    /// answers to other ids are dropped as stale.
    fn wait_for(&mut self, id: u32, deadline: Instant) -> Result<Option<Response>> {
        loop {
            match self.read_envelope(deadline)? {
                None => return Ok(None),
                Some(env) if env.id == id => return Ok(Some(env.body)),
                Some(env) if env.id == PUSH_ID => self.pushes.push_back(env.body),
                Some(_) => self.stats.stale += 1,
            }
        }
    }

    /// An event batch made for an earlier client of this session: QEMU
    /// keeps what the kernel wrote while that client was leaving and hands
    /// it to the next one.
    fn stale_events(&self, env: &Envelope<Response>) -> bool {
        match (&env.body, &self.hello) {
            (Response::Bpf(ktrace_abi::bpf::BpfResponse::Events(b)), Some(h)) => {
                env.id == PUSH_ID && b.client_generation != h.client_generation
            }
            _ => false,
        }
    }

    /// The next decodable envelope, or `None` at the deadline.
    fn read_envelope(&mut self, deadline: Instant) -> Result<Option<Envelope<Response>>> {
        let mut buf = [0u8; 4096];
        loop {
            while let Some(event) = self.reader.next_event() {
                match event {
                    FrameEvent::Frame(payload) => match ktrace_abi::decode::<Response>(&payload) {
                        Ok(env) if self.stale_events(&env) => self.stats.stale += 1,
                        Ok(env) => return Ok(Some(env)),
                        Err(_) => self.stats.undecodable += 1,
                    },
                    FrameEvent::Skipped(n) => self.stats.skipped_bytes += n as u64,
                    FrameEvent::TooLong(_) | FrameEvent::BadCrc => self.stats.bad_frames += 1,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // A zero read timeout means "block forever"; keep at least 1 ms.
            let left = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(ClientError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn unexpected(what: &'static str, got: &Response) -> ClientError {
    ClientError::Unexpected {
        what,
        got: format!("{got:?}"),
    }
}

/// A short name of a request for error messages.
pub fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Hello(_) => "Hello",
        Request::Info => "Info",
        Request::Shutdown { .. } => "Shutdown",
        Request::Debug(DebugRequest::Panic) => "Debug(Panic)",
        Request::Debug(DebugRequest::SelfTest { .. }) => "Debug(SelfTest)",
        Request::Debug(DebugRequest::ListSelfTests) => "Debug(ListSelfTests)",
        Request::Debug(DebugRequest::Coverage(_)) => "Debug(Coverage)",
        Request::Trace(_) => "Trace",
        Request::Bpf(_) => "Bpf",
        Request::Block(_) => "Block",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A fake kernel on a socketpair-like listener: answers Hello and Info,
    /// pushes one record first, and sends a stale answer before the real one.
    fn fake_kernel(listener: UnixListener) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut reader = FrameReader::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                reader.push(&buf[..n]);
                while let Some(ev) = reader.next_event() {
                    let FrameEvent::Frame(p) = ev else { continue };
                    let env: Envelope<Request> = ktrace_abi::decode(&p).unwrap();
                    let body = match env.body {
                        Request::Hello(h) => Response::Hello(HelloReply {
                            kernel_version: "test".into(),
                            protocol_version: h.protocol_version,
                            uptime_ns: 5,
                            client_generation: 0,
                            session: 1,
                        }),
                        Request::Shutdown { .. } => return,
                        _ => Response::Error(ErrorReply::new(ErrorCode::NotFound, "nope")),
                    };
                    s.write_all(&ktrace_abi::encode(PUSH_ID, &Response::Ok).unwrap())
                        .unwrap();
                    s.write_all(b"garbage").unwrap();
                    s.write_all(&ktrace_abi::encode(env.id + 100, &Response::Ok).unwrap())
                        .unwrap();
                    s.write_all(&ktrace_abi::encode(env.id, &body).unwrap())
                        .unwrap();
                }
            }
        })
    }

    #[test]
    fn handshake_routes_pushes_and_drops_stale_answers() {
        let dir = std::env::temp_dir().join(format!("ktrace-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&path);
        let kernel = fake_kernel(UnixListener::bind(&path).unwrap());
        let mut c = Client::connect(&path, &ConnectOptions::default()).unwrap();
        assert_eq!(c.hello_reply().unwrap().uptime_ns, 5);
        let err = c.request(&Request::Info).unwrap_err();
        assert_eq!(err.kernel_reply().unwrap().code, ErrorCode::NotFound);
        assert_eq!(
            err.to_string(),
            "the kernel refused Info: nope (NotFound, errno 0)"
        );
        assert_eq!(c.take_pushes(), vec![Response::Ok, Response::Ok]);
        let stats = c.stats();
        assert_eq!(stats.stale, 2);
        assert_eq!(stats.skipped_bytes, 2 * 7);
        assert!(matches!(
            c.shutdown(0x10, Duration::from_secs(2)),
            Ok(()) | Err(ClientError::Closed)
        ));
        kernel.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refused_hello_is_a_version_mismatch() {
        let dir = std::env::temp_dir().join(format!("ktrace-client-ver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let kernel = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut reader = FrameReader::new();
            let mut buf = [0u8; 256];
            loop {
                let n = s.read(&mut buf).unwrap();
                reader.push(&buf[..n]);
                if let Some(FrameEvent::Frame(p)) = reader.next_event() {
                    let env: Envelope<Request> = ktrace_abi::decode(&p).unwrap();
                    let reply = ErrorReply::new(ErrorCode::Version, "this kernel speaks 9");
                    s.write_all(&ktrace_abi::encode(env.id, &Response::Error(reply)).unwrap())
                        .unwrap();
                    return;
                }
            }
        });
        let err = match Client::connect(&path, &ConnectOptions::default()) {
            Err(e) => e,
            Ok(_) => panic!("handshake accepted"),
        };
        assert_eq!(
            err.to_string(),
            "protocol version mismatch: this host speaks version 1; the kernel said: this kernel speaks 9"
        );
        kernel.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_socket_is_a_clear_error() {
        let err = match Client::connect_raw(Path::new("/nonexistent/ktrace/ctl.sock")) {
            Err(e) => e,
            Ok(_) => panic!("connected to a missing socket"),
        };
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot connect to the control socket /nonexistent/ktrace/ctl.sock: "),
            "{msg}"
        );
        assert!(msg.ends_with("(is the VM running? start it with `ktrace vm start`)"));
    }

    #[test]
    fn handshake_times_out_when_nobody_answers() {
        let dir = std::env::temp_dir().join(format!("ktrace-client-hang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let opts = ConnectOptions {
            handshake_timeout: Duration::from_millis(300),
            hello_retry: Duration::from_millis(100),
            ..ConnectOptions::default()
        };
        let err = match Client::connect(&path, &opts) {
            Err(e) => e,
            Ok(_) => panic!("handshake succeeded without a kernel"),
        };
        assert!(matches!(err, ClientError::HandshakeTimeout { .. }), "{err}");
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
