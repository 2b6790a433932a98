//! Symbol index (work in progress).
