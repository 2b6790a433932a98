//! Host SDK (work in progress).
