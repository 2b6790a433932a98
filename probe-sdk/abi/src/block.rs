//! Block devices, statistics and the workload generator (filled in by the
//! block-layer work).

use serde::{Deserialize, Serialize};

/// Requests to the block layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlockRequest {}

/// Answers from the block layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BlockResponse {}
