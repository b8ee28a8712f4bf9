#!/usr/bin/env bash
# Idempotent bootstrap for a fresh clone: node modules, Debian packages, the tun module.
#   bash scripts/setup.sh test|demo|bench
# Quiet when there is nothing to do, one line per thing it installs, loud (full output, non-zero
# exit) when something fails. Run by `npm test`, `npm run demo` and `npm run bench` first.
set -euo pipefail

MODE="${1:-}"
case "$MODE" in
  test | demo | bench) ;;
  *)
    echo "usage: $0 test|demo|bench" >&2
    exit 2
    ;;
esac

cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { echo "setup: $*"; }

# Runs a command with its output captured; on failure prints everything and exits.
quietly() {
  local out
  if ! out="$("$@" 2>&1)"; then
    echo "setup: FAILED: $*" >&2
    echo "$out" >&2
    exit 1
  fi
}

# --- node modules ------------------------------------------------------------------------------
# npm writes node_modules/.package-lock.json on every install; our stamp covers `npm install`.
node_modules_stale() {
  # A symlinked node_modules (a worktree sharing another checkout's) is that checkout's to install:
  # npm ci here would empty the directory it points to, under everyone who shares it.
  [ -L node_modules ] && return 1
  [ -d node_modules ] || return 0
  [ -f package-lock.json ] || return 1
  local ref=node_modules/.cladnet-installed
  [ -e "$ref" ] || ref=node_modules/.package-lock.json
  [ -e "$ref" ] || return 0
  [ package-lock.json -nt "$ref" ]
}

if node_modules_stale; then
  if [ -f package-lock.json ]; then
    if ci_out="$(npm ci --no-audit --no-fund 2>&1)"; then
      say "installed node modules (npm ci)"
    elif grep -q 'in sync' <<<"$ci_out"; then
      # A lock file that lost entries (e.g. other platforms' optional packages) still describes the
      # versions we want: install from it with npm install, which repairs it, and say so.
      echo "setup: WARNING: package-lock.json is out of sync with package.json; using npm install" >&2
      quietly npm install --no-audit --no-fund
      say "installed node modules (npm install)"
    else
      echo "setup: FAILED: npm ci --no-audit --no-fund" >&2
      echo "$ci_out" >&2
      exit 1
    fi
  else
    quietly npm install --no-audit --no-fund
    say "installed node modules (npm install)"
  fi
  touch node_modules/.cladnet-installed
fi

# --- Debian packages (package:command that proves it is there) ---------------------------------
PKGS=(
  iproute2:ip
  iputils-ping:ping
  etcd-server:etcd
  etcd-client:etcdctl
  iptables:iptables
  nftables:nft
  procps:pgrep
  tcpdump:tcpdump
  iperf3:iperf3
)
if [ "$MODE" = test ] || [ "$MODE" = bench ]; then
  PKGS+=(conntrack:conntrack) # flushes a NAT site's mappings (roaming tests, npm run bench:roam)
  PKGS+=(python3-minimal:python3) # the raw-socket flood of spoofed sources (e2e mesh-flood), the sd_notify receiver
  PKGS+=(systemd:systemd-analyze) # verify and security-rate systemd/cladnet.service (unit systemd-unit)
fi
if [ "$MODE" = test ]; then
  # `cladnet cloud-init` output checked by `cloud-init schema` (unit test cloud-init, python3-yaml
  # comes with it); the boot test (e2e cloudinit-boot) debootstraps a Debian rootfs and boots it
  # with systemd-nspawn.
  PKGS+=(cloud-init:cloud-init debootstrap:debootstrap systemd-container:systemd-nspawn)
  PKGS+=(gcc:gcc) # compiles native/abi-check.c (unit native-abi)
  PKGS+=(prometheus:promtool) # `promtool check metrics` on the agent's metrics, and a real scrape (unit metrics, e2e mesh-metrics)
  # The dashboard's browser test (e2e dashboard) drives Debian's chromium with playwright-core
  # (executablePath /usr/bin/chromium; playwright's own browser downloads are not used).
  PKGS+=(chromium:chromium)
fi
if [ "$MODE" = bench ]; then
  PKGS+=(wireguard-go:wireguard-go wireguard-tools:wg nebula:nebula)
  PKGS+=(gcc:gcc) # builds native/cladnet_fast.c (the batch AEAD helper) for the bench's agents
fi

missing=()
for entry in "${PKGS[@]}"; do
  command -v "${entry#*:}" >/dev/null 2>&1 || missing+=("${entry%%:*}")
done
# The data plane seals with Debian's libsodium and OpenSSL through koffi (src/os/ffi/libsodium.ts,
# libcrypto.ts; without them the agent falls back to sodium-native, slower per packet). Libraries
# have no command either.
for lib in libsodium23 libssl3; do
  dpkg-query -W -f='${Status}' "$lib" 2>/dev/null | grep -q 'ok installed' || missing+=("$lib")
done
# PyNaCl has no command: test/unit/noise-kat.test.ts regenerates the handshake vectors with
# Debian's python3 (test/vectors/noise_kat.py) when it can import nacl.
if [ "$MODE" = test ] && ! /usr/bin/python3 -c 'import nacl.bindings' >/dev/null 2>&1; then
  missing+=(python3-nacl)
fi
# The C headers native/abi-check.c includes (libc6-dev brings linux-libc-dev): no command proves them.
if [ "$MODE" = test ] && { [ ! -e /usr/include/stdio.h ] || [ ! -e /usr/include/linux/virtio_net.h ]; }; then
  missing+=(libc6-dev)
fi
# OpenSSL's headers for native/cladnet_fast.c (the batch AEAD helper; unit fast-aead, stages-batch).
if { [ "$MODE" = test ] || [ "$MODE" = bench ]; } && [ ! -e /usr/include/openssl/evp.h ]; then
  missing+=(libssl-dev)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: FAILED: missing packages ${missing[*]} and no apt-get to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  quietly apt-get update
  quietly apt-get install -y --no-install-recommends "${missing[@]}"
  for p in "${missing[@]}"; do say "installed $p"; done
fi

# --- the batch AEAD helper (native/cladnet_fast.c -> native/build/libcladnet_fast.so) -----------
# The agent seals and opens a whole batch in one call through it; without it (no compiler, no
# headers: a demo on a bare host) the agent falls back to one call per packet and its status says
# why. Rebuilt when the source is newer than the library.
if [ native/cladnet_fast.c -nt native/build/libcladnet_fast.so ] || [ ! -e native/build/libcladnet_fast.so ]; then
  if command -v gcc >/dev/null 2>&1 && [ -e /usr/include/openssl/evp.h ]; then
    quietly bash scripts/build-native.sh
    say "built native/build/libcladnet_fast.so"
  elif [ "$MODE" != demo ]; then
    echo "setup: FAILED: cannot build native/cladnet_fast.c (gcc and libssl-dev are needed)" >&2
    exit 1
  fi
fi

# --- TUN device ---------------------------------------------------------------------------------
if [ ! -e /dev/net/tun ]; then
  modprobe tun >/dev/null 2>&1 || true
  if [ ! -e /dev/net/tun ]; then
    mkdir -p /dev/net 2>/dev/null || true
    mknod /dev/net/tun c 10 200 2>/dev/null && chmod 0666 /dev/net/tun 2>/dev/null || true
  fi
  if [ -e /dev/net/tun ]; then
    say "loaded tun (/dev/net/tun)"
  else
    echo "setup: WARNING: /dev/net/tun is missing and could not be created (modprobe tun failed)" >&2
  fi
fi
