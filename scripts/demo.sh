#!/usr/bin/env bash
# The whole user story: install what is missing, build the tools (the Rust
# biolatency probe is compiled into them), then `ktrace demo`: boot the
# kernel with a virtio disk, load the probe, run a random-read workload,
# print the latency histogram and a kperf stat table, shut down.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
echo "building ktrace, kperf, biolatency and biosnoop (the first build takes a few minutes)..."
cargo build --quiet -p ktrace-tools --bins
exec target/debug/ktrace --vm demo demo "$@"
