//! `ktrace:*` tracepoints: the kernel's own, for tests and benchmarks.

tracepoints! {
    /// Emitted only by benchmarks and tests (the trigger benchmark's
    /// calls, the self tests), so nothing else disturbs their counts.
    "ktrace": "bench" => struct Bench {
        value: u64,
    }
}
