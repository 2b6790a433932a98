#!/usr/bin/env bash
# Boot the kernel in QEMU, show what it reports, stop it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
cargo build --quiet -p ktrace-tools --bin ktrace
ktrace() { target/debug/ktrace --vm demo "$@"; }

echo "\$ ktrace vm start"
ktrace vm start
trap 'echo "\$ ktrace vm stop"; ktrace vm stop' EXIT
echo
echo "\$ ktrace info"
ktrace info
