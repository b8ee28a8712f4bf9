#!/usr/bin/env bash
# Builds native/cladnet_fast.c into libcladnet_fast.so (default: native/build/), the batch AEAD
# helper src/os/ffi/fast.ts loads. Needs gcc and OpenSSL's headers (libssl-dev); links Debian's
# libsodium.so.23 only. The EVP calls bind at load time to the OpenSSL already in the process (node's
# own, which its binary exports for addons, or the libcrypto.so.3 a distribution's node links), so
# the agent does not map a second OpenSSL (2.4 MiB of RSS; docs/performance.md, Memory). Run by
# scripts/setup.sh; the unit test test/unit/fast-aead.test.ts runs it too. Prints nothing on success; exits non-zero with the
# compiler's output when it fails (the agent then falls back to the per-packet ffi AEAD).
#   bash scripts/build-native.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-native/build}"
mkdir -p "$out"
tmp="$out/libcladnet_fast.so.tmp.$$"
trap 'rm -f "$tmp"' EXIT
${CC:-gcc} -std=c11 -O2 -fPIC -shared -Wall -Wextra -Werror -fvisibility=default \
  -o "$tmp" native/cladnet_fast.c -l:libsodium.so.23
mv -f "$tmp" "$out/libcladnet_fast.so"
