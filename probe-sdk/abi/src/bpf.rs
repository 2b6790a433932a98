//! BPF programs, maps, links and event streams (filled in by the
//! BPF runtime work).

use serde::{Deserialize, Serialize};

/// Requests to the BPF runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BpfRequest {}

/// Answers from the BPF runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BpfResponse {}
