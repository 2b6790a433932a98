//! The ktrace control protocol, shared by the kernel and the host tools.
//!
//! The host talks to the kernel over a dedicated serial port that QEMU
//! connects to a Unix socket. Every message travels in a [`frame`]: a fixed
//! header (magic, payload length, CRC-32 of the payload) followed by a
//! postcard-encoded [`Envelope`]. The magic lets a reader resynchronise after
//! garbage; the CRC rejects frames damaged in transit.
//!
//! A session starts with [`Request::Hello`]; the kernel answers with its
//! version and [`PROTOCOL_VERSION`]. Requests carry a host-chosen id that the
//! matching response echoes. Records the kernel pushes on its own (event
//! streams) use id [`PUSH_ID`].
//!
//! Requests are grouped by subsystem so that each group can grow on its own:
//! [`vm`] (hello, info, shutdown, debug), [`trace`] (kprobes, tracepoints,
//! perf events), [`bpf`] (programs, maps, links), [`block`] (devices,
//! statistics, workloads); [`types`] describes map keys, values and event
//! records. Program types and map type numbers are the platform
//! description's (`ktrace-bpf-platform`), sent as they are.
#![no_std]

extern crate alloc;

pub mod block;
pub mod bpf;
pub mod frame;
pub mod ksyms;
pub mod trace;
pub mod types;
pub mod vm;

use alloc::string::String;
use serde::{Deserialize, Serialize};

/// Version of this protocol. The kernel refuses a `Hello` that names another.
pub const PROTOCOL_VERSION: u32 = 1;

/// The id of frames the kernel sends without a request (event streams).
pub const PUSH_ID: u32 = 0;

/// What travels inside one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Request id chosen by the host; echoed in the response.
    pub id: u32,
    /// The request or response.
    pub body: T,
}

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Version handshake; must come first.
    Hello(vm::Hello),
    /// Uptime, memory and tasks.
    Info,
    /// Power the machine off with this exit status.
    Shutdown { exit_code: u8 },
    /// Debug requests used by the test harness.
    Debug(vm::DebugRequest),
    /// Kprobes, tracepoints and perf events.
    Trace(trace::TraceRequest),
    /// BPF programs, maps and links.
    Bpf(bpf::BpfRequest),
    /// Block devices, their statistics and the workload generator.
    Block(block::BlockRequest),
}

/// A response (or pushed record) from the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello(vm::HelloReply),
    /// Answer to [`Request::Info`].
    Info(vm::SystemInfo),
    /// The request succeeded and has nothing to return.
    Ok,
    /// The request was refused; nothing changed in the kernel.
    Error(ErrorReply),
    /// Answers from the trace subsystem.
    Trace(trace::TraceResponse),
    /// Answers from the BPF runtime.
    Bpf(bpf::BpfResponse),
    /// Answers from the block layer.
    Block(block::BlockResponse),
    /// Answer to [`vm::DebugRequest::SelfTest`].
    SelfTest(vm::SelfTestResult),
    /// Answer to [`vm::DebugRequest::ListSelfTests`].
    SelfTests(alloc::vec::Vec<String>),
    /// Answer to [`vm::DebugRequest::Coverage`].
    Coverage(vm::CoverageReport),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame was damaged: bad magic, bad CRC, absurd length, truncated.
    BadFrame,
    /// The payload did not decode as a request.
    Decode,
    /// A `Hello` named another protocol version, or none was sent yet.
    Version,
    /// The request decoded but a field is invalid.
    InvalidArgument,
    /// The named object (probe, map, program, device...) does not exist.
    NotFound,
    /// The object exists already.
    Exists,
    /// The kernel does not support this (e.g. hardware counters under TCG).
    NotSupported,
    /// A resource limit would be exceeded.
    Limit,
    /// The BPF verifier rejected the program.
    Verifier,
    /// The device reported an error.
    Io,
    /// Anything else.
    Other,
}

/// An error frame: a code a program can act on and a message a person can read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    /// Linux errno, negative, where one applies (e.g. -2 for ENOENT), else 0.
    pub errno: i32,
    pub message: String,
}

impl ErrorReply {
    /// Linux's ENOMEM, for refusals for want of memory.
    pub const ENOMEM: i32 = -12;

    /// A `Limit` refusal for want of memory (`ENOMEM`).
    pub fn no_memory(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Limit,
            errno: Self::ENOMEM,
            message: message.into(),
        }
    }

    /// An error with no errno.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            errno: 0,
            message: message.into(),
        }
    }
}

/// Encode an envelope into a complete frame (header + payload).
pub fn encode<T: Serialize>(id: u32, body: &T) -> Result<alloc::vec::Vec<u8>, postcard::Error> {
    let payload = postcard::to_allocvec(&Envelope { id, body })?;
    Ok(frame::wrap(&payload))
}

/// Decode the payload of a frame.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<Envelope<T>, postcard::Error> {
    postcard::from_bytes(payload)
}
