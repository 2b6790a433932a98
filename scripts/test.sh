#!/usr/bin/env bash
# The whole check: tools, formatting, kernel build, every test (including
# the QEMU end-to-end tests), clippy with warnings as errors.
# Run from anywhere: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
elapsed() { echo "    ($((SECONDS - $1)) s)"; }

step "setup"
bash scripts/setup.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "build the kernel (profile kernel)"
t=$SECONDS
cargo build --profile kernel -p ktrace-kernel --target-dir target/kernel
elapsed $t

step "cargo test --workspace"
t=$SECONDS
cargo test --workspace
elapsed $t

step "cargo clippy --workspace --all-targets"
t=$SECONDS
cargo clippy --workspace --all-targets -- -D warnings
elapsed $t

step "all checks passed in ${SECONDS} s"
