#!/usr/bin/env bash
# The live page (/) and README.md's snippet in headless Chromium: see
# clients/browser/test.mjs for the scenario (the servers run with --access-log: tickets.mjs
# reads it to show the module opened its streams with tickets). Installs what is missing:
# Debian's chromium and chromium-driver (apt), playwright-core (pinned, npm ci). Screenshots:
# target/browser/*.png (kept as CI artifacts); UPDATE_SCREENSHOT=1 also refreshes
# docs/screenshot.png.
# Exits non-zero on failure. Network: 127.0.0.1 only, apart from the package installs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

step() { printf '\n== %s\n' "$*"; }

step build
if [[ -z "${PERIODE_SSE_BIN:-}" ]]; then
  timeout 900 cargo build --release --quiet
  export PERIODE_SSE_BIN=$ROOT/target/release/periode-sse
fi

step "chromium (Debian)"
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  SUDO=$([[ $(id -u) -eq 0 ]] || echo sudo)
  timeout 300 $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq chromium chromium-driver \
    >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null

step "npm ci (playwright-core pinned in clients/browser/package-lock.json)"
(cd clients/browser && timeout 300 npm ci --no-audit --no-fund --loglevel=error)

step "scenario"
mkdir -p target/browser
rm -rf target/browser/run-* target/browser/profile-*
if timeout 300 node clients/browser/test.mjs; then
  rm -rf target/browser/run-* target/browser/profile-*
  echo "browser-test: passed (screenshots in target/browser/)"
else
  echo "browser-test: FAILED (server databases and profile kept under target/browser/)"
  exit 1
fi
