#!/usr/bin/env bash
# periode-sse against real SSE clients, each with pinned versions:
#   clients/node    the npm `eventsource` package (Authorization header through its custom fetch)
#   clients/python  httpx + httpx-sse (venv under target/clients-venv)
# Each test starts its own server (temp db under target/clients/, port 0, --demo), stops and
# restarts it on the same port to check a clean end of stream and the resume with Last-Event-ID.
# Exits non-zero when either fails. Network: 127.0.0.1 only, apart from the package installs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STEP_TIMEOUT=${STEP_TIMEOUT:-120}

step() { printf '\n== %s\n' "$*"; }

step build
if [[ -z "${PERIODE_SSE_BIN:-}" ]]; then
  timeout 900 cargo build --release --quiet
  export PERIODE_SSE_BIN=$ROOT/target/release/periode-sse
fi

step "node: npm ci (eventsource pinned in clients/node/package-lock.json)"
(cd clients/node && timeout 300 npm ci --no-audit --no-fund --loglevel=error)

step "python: venv with clients/python/requirements.txt"
VENV=$ROOT/target/clients-venv
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
if ! cmp -s clients/python/requirements.txt "$VENV/.requirements.txt"; then
  timeout 300 "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    -r clients/python/requirements.txt
  cp clients/python/requirements.txt "$VENV/.requirements.txt"
fi

failed=0
step "node eventsource"
timeout "$STEP_TIMEOUT" node clients/node/test.mjs || failed=1
step "python httpx-sse"
timeout "$STEP_TIMEOUT" "$VENV/bin/python" clients/python/test_client.py || failed=1


if ((failed)); then
  echo "clients-test: FAILED (databases kept under target/clients/)"
  exit 1
fi
rm -rf "$ROOT/target/clients"/run-*
echo "clients-test: all passed"
