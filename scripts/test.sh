#!/usr/bin/env bash
# Runs every test of periode-sse: unit and integration tests (real binary, real sockets, real
# SQLite), the curl smoke test, the browser and client tests, a short soak, the PostgreSQL
# backend against a throwaway PostgreSQL, the edge checks (systemd unit, nginx and HAProxy,
# the aarch64 static build under qemu), and a small run of the density tool. Installs what a
# fresh machine lacks. Each step says how many seconds the run has taken so far.
# Usage: scripts/test.sh            (everything)
#        SKIP_BROWSER=1 scripts/test.sh   (no Chromium / npm / pip steps)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== [%ss] %s\n' "$SECONDS" "$*"; }

need_pkgs=()
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  step "installing ${need_pkgs[*]}"
  apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

step "unit and integration tests"
cargo test --quiet 2>&1 | tee target/cargo-test.log
grep -q "test result" target/cargo-test.log

step "release build (and the README's run command resolves to the server)"
cargo build --release --quiet
cargo run --release --quiet -- --version | grep -q '^periode-sse '
export PERIODE_SSE_BIN="$PWD/target/release/periode-sse"

step "smoke test (the seed's curl tests)"
scripts/smoke.sh

if [ -z "${SKIP_BROWSER:-}" ]; then
  step "browser test (headless Chromium)"
  scripts/browser-test.sh
  step "client tests (npm eventsource, Python httpx-sse)"
  scripts/clients-test.sh
fi

step "soak (short)"
scripts/soak.sh --seconds 20

step "PostgreSQL backend (the postgres feature, a throwaway cluster)"
scripts/pg-test.sh

step "edge: systemd unit, nginx and HAProxy, aarch64 under qemu"
scripts/edge-test.sh

# The benches are compiled (type-checked) by clippy --all-targets above; building them again
# in the bench profile would cost CI a third of its time for nothing it does not already know.
step "density tool at N=200"
SIZES=200 HEARTBEAT=0 WRITERS=0 RUNS=1 scripts/density.sh

step "all passed"
