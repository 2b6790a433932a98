#!/usr/bin/env bash
# The whole check: tools, formatting (reported), kernel build, every test
# (including the QEMU end-to-end tests), clippy with warnings as errors.
# Run from anywhere: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
elapsed() { echo "    ($((SECONDS - $1)) s)"; }

step "setup"
bash scripts/setup.sh

# Reported, not fatal: formatting alone should not block a run of the tests.
step "cargo fmt --all --check"
# The kernel binary is a workspace of its own, hence the second manifest.
for manifest in Cargo.toml kernel/image/Cargo.toml; do
    if ! unformatted=$(cargo fmt --all --manifest-path "$manifest" --check -- --files-with-diff 2>&1); then
        echo "warning: not formatted with rustfmt (run \`cargo fmt --all --manifest-path $manifest\`):"
        echo "$unformatted" | sed 's/^/    /'
    fi
done

# The same flags as probe_sdk::kernel_image::build_kernel: the repository
# root is remapped so the kernel's DWARF names no path of this machine.
root=$(pwd -P)
cargo_home=$(cd "${CARGO_HOME:-$HOME/.cargo}" && pwd -P)
remap="build.rustflags=['--remap-path-prefix=$root/=', '--remap-path-prefix=$root/kernel/image=', '--remap-path-prefix=$cargo_home/registry/src/=']"

step "build the kernel (profile kernel)"
t=$SECONDS
cargo build --manifest-path kernel/image/Cargo.toml --profile kernel --target-dir "${CARGO_TARGET_DIR:-target}/kernel" --config "$remap"
elapsed $t

step "cargo test --workspace --no-fail-fast"
t=$SECONDS
cargo test --workspace --no-fail-fast
elapsed $t

step "cargo clippy --workspace --all-targets"
t=$SECONDS
cargo clippy --workspace --all-targets -- -D warnings
elapsed $t

# The kernel is a workspace of its own (kernel/image/Cargo.toml): built with
# the host crates, cargo would unify their std features into its
# dependencies, which a no_std binary cannot link.
step "cargo clippy (kernel)"
t=$SECONDS
cargo clippy --manifest-path kernel/image/Cargo.toml --profile kernel --target-dir "${CARGO_TARGET_DIR:-target}/kernel" --config "$remap" -- -D warnings
# The tests' kernel: the same with the in-kernel self tests.
cargo clippy --manifest-path kernel/image/Cargo.toml --profile kernel-self-tests --features self-tests --target-dir "${CARGO_TARGET_DIR:-target}/kernel" --config "$remap" -- -D warnings
# The fuzzer's kernel: the coverage callbacks (lint only; the sancov pass
# is added when probe_sdk::kernel_image builds it).
cargo clippy --manifest-path kernel/image/Cargo.toml --profile kernel --features coverage --target-dir "${CARGO_TARGET_DIR:-target}/kernel" --config "$remap" -- -D warnings
elapsed $t

step "all checks passed in ${SECONDS} s"
