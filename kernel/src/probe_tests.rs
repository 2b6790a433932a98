//! Kernel test functions for the attach-point tests (placeholder).
