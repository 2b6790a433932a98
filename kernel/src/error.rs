//! Why a request was refused, as the subsystems say it ([`Error`]), and
//! the one place that turns it into the wire's answer: an error frame with
//! its [`ErrorCode`] and Linux errno ([`Error::into_response`]).
//!
//! Subsystems (`bpf`, `trace`, `block`) return `Result<_, Error>` and never
//! write an errno number; `control` answers with what this module makes of
//! the error. The module imports nothing of the kernel, so every subsystem
//! may use it without reaching into another.

use alloc::boxed::Box;
use alloc::string::String;

use ktrace_abi::bpf::{BpfResponse, Rejected};
use ktrace_abi::{ErrorCode, ErrorReply, Response};
use ktrace_block::BlockError;
use ktrace_bpf_maps::errno::{E2BIG, EAGAIN, EBUSY, EEXIST, EINVAL, ENOENT, ENOMEM};
use ktrace_bpf_maps::MapError;

/// A refused request: what kind of refusal, and a message that says what
/// was wrong and where.
#[derive(Debug)]
#[must_use = "a refusal the host never hears of leaves it waiting or wrong"]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

/// The kinds of refusal. Each maps to one wire code and errno in
/// [`Kind::wire`].
#[derive(Debug)]
pub enum Kind {
    /// No such object: `NotFound`, `-ENOENT`.
    NoEntry,
    /// The name is taken: `Exists`, `-EEXIST`.
    Exists,
    /// A field is invalid: `InvalidArgument`, `-EINVAL`.
    Invalid,
    /// Over a count or size limit: `Limit`, `-E2BIG`.
    TooBig,
    /// Out of memory, or over the memory limit: `Limit`, `-ENOMEM`.
    NoMemory,
    /// In use: `Limit`, `-EBUSY`.
    Busy,
    /// Try again later: `Limit`, `-EAGAIN`.
    Again,
    /// A map operation failed: the errno the map crate gives it.
    Map(MapError),
    /// An I/O failed: the errno the block core gives it.
    Io(BlockError),
    /// A refusal this kernel gives no Linux errno for (errno 0): trace,
    /// block and session requests.
    Plain(ErrorCode),
    /// The verifier rejected a program: answered with its report (a
    /// `BpfResponse::Rejected`), not an error frame.
    Rejected(Box<Rejected>),
}

impl Kind {
    /// The wire's code and errno (negative, as Linux returns it) for this
    /// kind: the only table of them.
    fn wire(&self) -> (ErrorCode, i32) {
        match self {
            Kind::NoEntry => (ErrorCode::NotFound, -ENOENT),
            Kind::Exists => (ErrorCode::Exists, -EEXIST),
            Kind::Invalid => (ErrorCode::InvalidArgument, -EINVAL),
            Kind::TooBig => (ErrorCode::Limit, -E2BIG),
            Kind::NoMemory => (ErrorCode::Limit, -ENOMEM),
            Kind::Busy => (ErrorCode::Limit, -EBUSY),
            Kind::Again => (ErrorCode::Limit, -EAGAIN),
            Kind::Map(e) => {
                let code = match e {
                    MapError::NotFound => ErrorCode::NotFound,
                    MapError::Exists => ErrorCode::Exists,
                    MapError::TooBig | MapError::NoMemory | MapError::NoSpace | MapError::Busy => {
                        ErrorCode::Limit
                    }
                    MapError::Invalid => ErrorCode::InvalidArgument,
                    MapError::NotSupported => ErrorCode::NotSupported,
                    MapError::Fault | MapError::Internal => ErrorCode::Other,
                };
                (code, e.errno())
            }
            Kind::Io(e) => {
                let code = match e {
                    BlockError::Device { .. } => ErrorCode::Io,
                    BlockError::ReadOnly => ErrorCode::NotSupported,
                    _ => ErrorCode::InvalidArgument,
                };
                (code, e.errno())
            }
            Kind::Plain(code) => (*code, 0),
            Kind::Rejected(_) => (ErrorCode::Verifier, -EINVAL),
        }
    }
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A refusal with no errno.
    pub fn plain(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Kind::Plain(code), message)
    }

    /// The error frame's contents.
    pub fn into_reply(self) -> ErrorReply {
        let (code, errno) = self.kind.wire();
        ErrorReply {
            code,
            errno,
            message: self.message,
        }
    }

    /// What the host is answered.
    pub fn into_response(self) -> Response {
        match self.kind {
            Kind::Rejected(r) => Response::Bpf(BpfResponse::Rejected(r)),
            _ => Response::Error(self.into_reply()),
        }
    }
}

/// The answer to a request: the response, or the refusal.
pub type Answer = Result<Response, Error>;
