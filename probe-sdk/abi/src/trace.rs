//! Kprobes, kretprobes, tracepoints and perf events (filled in by the
//! attach-points work).

use serde::{Deserialize, Serialize};

/// Requests to the trace subsystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TraceRequest {}

/// Answers from the trace subsystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TraceResponse {}
