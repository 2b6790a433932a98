#!/usr/bin/env bash
# Install what ktrace needs beyond Rust, only when it is missing:
#   qemu-system-x86 (qemu-system-x86_64 boots the kernel under TCG)
#   llvm-22, clang-22 (llc-22 turns probe bitcode into BPF objects; the LLVM
#   major version must equal rustc's)
# Installing needs root (apt-get); as another user this only checks.
set -euo pipefail

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v llc-22 >/dev/null || missing+=(llvm-22)
command -v clang-22 >/dev/null || missing+=(clang-22)

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: install them as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || {
    echo "setup: cargo not found: install stable Rust (rustup)" >&2
    exit 1
}
echo "setup: $(qemu-system-x86_64 --version | head -n1); $(llc-22 --version | grep -m1 -i 'llvm version' | sed 's/^ *//'); $(rustc --version)"
