#!/usr/bin/env bash
# The aarch64 static binary, built and put through scripts/smoke.sh under qemu-aarch64:
# the seed's curl tests and a clean SIGTERM shutdown, on the architecture of the edge boxes.
#
#   scripts/cross-smoke.sh            # CI: fast profile (no LTO, 16 codegen units)
#   FULL=1 scripts/cross-smoke.sh     # the real release settings, as shipped
#
# smoke.sh runs whatever PERIODE_SSE_BIN names, as a command with arguments, and signals the
# pid it started: the wrapper below execs qemu, so that pid is qemu's, which hands SIGTERM to
# the emulated server. Installs qemu-user when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v qemu-aarch64 >/dev/null || {
    echo "cross-smoke.sh: installing qemu-user" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
}

if [[ -n "${FULL:-}" ]]; then
    scripts/release.sh aarch64
    DIST=target/dist
else
    scripts/release.sh --fast aarch64
    DIST=target/dist-fast
fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
BIN=$PWD/$DIST/periode-sse-$VERSION-aarch64-unknown-linux-musl
[[ -x $BIN ]] || { echo "FAIL - $BIN was not built"; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/periode-sse" <<WRAPPER
#!/bin/sh
exec qemu-aarch64 "$BIN" "\$@"
WRAPPER
chmod +x "$WORK/periode-sse"

"$WORK/periode-sse" --version | grep -q '^periode-sse ' || {
    echo "FAIL - the aarch64 binary does not run under qemu-aarch64"
    exit 1
}
echo "ok - $(basename "$BIN") runs under qemu-aarch64 ($(stat -c %s "$BIN") bytes)"
PERIODE_SSE_BIN=$WORK/periode-sse scripts/smoke.sh
