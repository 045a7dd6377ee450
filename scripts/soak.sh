#!/usr/bin/env bash
# Soak test (SPEC §4, §5): starts a release periode-sse on loopback with a fresh database, drives
# it with thousands of streams for a bounded time (tools/src/bin/periode-soak/: streams that come
# and go, stalled readers, churn, garbage, transactions for every user), then checks that
# nothing was lost, nothing leaked, nothing panicked, and that SIGTERM still stops it with exit 0.
#
# Usage: scripts/soak.sh [--seconds N] [periode-soak options…]
#        (default 60 s; CI runs --seconds 20; `periode-soak --help` lists the other options)
# Exit status: 0 when every check passed, 1 otherwise. The server's log is kept on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
heartbeat=2
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
case "$seconds" in
  ''|*[!0-9]*) echo "soak: --seconds needs a whole number" >&2; exit 2 ;;
esac

echo "soak: building (release)"
cargo build --release --quiet --bin periode-sse --bin periode-soak
server_bin="${PERIODE_SSE_BIN:-$PWD/target/release/periode-sse}"
soak_bin="$PWD/target/release/periode-soak"

# Thousands of sockets on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
  echo "soak: warning: only $(ulimit -n) descriptors; the soak needs about 4000 per process" >&2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/periode-soak.XXXXXX")"
log="$work/server.log"
pid=""
keep_log=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [ -n "$keep_log" ]; then
    cp "$log" "${TMPDIR:-/tmp}/periode-soak-server.log" 2>/dev/null &&
      echo "soak: server log kept in ${TMPDIR:-/tmp}/periode-soak-server.log"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

export JWT_SECRET="soak-secret-of-at-least-thirty-two-bytes"
"$server_bin" --listen 127.0.0.1:0 --db "$work/soak.db" --heartbeat "$heartbeat" \
  --log-level info 2>"$log" &
pid=$!

addr=""
for _ in $(seq 1 100); do
  addr="$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$log" | head -n1)"
  [ -n "$addr" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "soak: FAIL the server did not start; its log:" >&2
  cat "$log" >&2
  exit 1
fi
echo "soak: server pid $pid on $addr, load for ${seconds} s"

failed=0
"$soak_bin" --addr "$addr" --seconds "$seconds" --heartbeat "$heartbeat" --pid "$pid" \
  "${extra[@]}" || failed=1

if ! kill -0 "$pid" 2>/dev/null; then
  echo "soak: FAIL the server is no longer running"
  failed=1
  pid=""
fi
if grep -q "panicked" "$log"; then
  echo "soak: FAIL the server panicked:"
  grep -m5 -A3 "panicked" "$log"
  failed=1
fi
echo "soak: server log: $(wc -l <"$log") lines, $(grep -c ' WARN ' "$log" || true) warnings," \
  "$(grep -c ' ERROR ' "$log" || true) errors, $(grep -c 'slow consumer' "$log" || true) slow consumers"
if grep -q ' ERROR ' "$log"; then
  echo "soak: FAIL errors in the server log:"
  grep -m5 ' ERROR ' "$log"
  failed=1
fi

# SIGTERM: exit 0 within 5 s (SPEC §5).
if [ -n "$pid" ]; then
  kill -TERM "$pid"
  stopped=""
  for _ in $(seq 1 50); do
    if ! kill -0 "$pid" 2>/dev/null; then stopped=1; break; fi
    sleep 0.1
  done
  if [ -z "$stopped" ]; then
    echo "soak: FAIL the server did not exit within 5 s of SIGTERM"
    failed=1
  else
    status=0
    wait "$pid" || status=$?
    pid=""
    if [ "$status" -ne 0 ]; then
      echo "soak: FAIL the server exited with status $status after SIGTERM"
      failed=1
    else
      echo "soak: SIGTERM: exit 0"
    fi
  fi
fi

if [ "$failed" -ne 0 ]; then
  keep_log=1
  echo "soak: FAILED"
  exit 1
fi
echo "soak: all checks passed"
