//! The verifier (work in progress).
pub mod scalar;
pub mod tnum;
