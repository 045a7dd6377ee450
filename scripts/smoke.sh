#!/usr/bin/env bash
# Smoke test: the seed's four curl tests against a real server, then a clean shutdown.
#
#   scripts/smoke.sh                       # builds the release binary, then tests it
#   PERIODE_SSE_BIN=path/to/periode-sse scripts/smoke.sh
#
# Starts its own server on a free loopback port with a temporary database (--demo), prints
# "ok - ..." or "FAIL - ..." per check, and exits non-zero if any check failed.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ -n "${PERIODE_SSE_BIN:-}" ]]; then
    BIN=$PERIODE_SSE_BIN
else
    cargo build --release --quiet
    BIN=$PWD/target/release/periode-sse
fi
command -v curl >/dev/null || { echo "FAIL - curl is not installed"; exit 1; }

WORK=$(mktemp -d)
DB=$WORK/smoke.db
LOG=$WORK/server.log
SERVER_PID=""
CURL_PIDS=()
FAILED=0

cleanup() {
    local pid
    for pid in "${CURL_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [[ -n "$SERVER_PID" ]]; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ok() { echo "ok - $*"; }
fail() {
    echo "FAIL - $*"
    FAILED=1
}
# check DESCRIPTION COMMAND...: runs the command, reports ok/FAIL.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
contains() { [[ $1 == *"$2"* ]]; }
# wait_until SECONDS COMMAND...: polls the command every 0.1 s until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}
log_has() { grep -qF -- "$1" "$LOG"; }

unset JWT_SECRET PERIODE_SSE_LISTEN PERIODE_SSE_DB RUST_LOG
"$BIN" --demo --db "$DB" --listen 127.0.0.1:0 --heartbeat 1 2>"$LOG" &
SERVER_PID=$!
# Listening, or gone (then there is no point in waiting).
started() { grep -q 'listening on http://' "$LOG" || ! kill -0 "$SERVER_PID" 2>/dev/null; }
if ! wait_until 10 started || ! grep -q 'listening on http://' "$LOG"; then
    cat "$LOG"
    fail "server did not start"
    exit 1
fi
ADDR=$(grep -o 'listening on http://[^ ]*' "$LOG" | head -n1 | sed 's|listening on http://||')
BASE=http://$ADDR
STREAM=$BASE/api/periode-limit/notifications/stream
HEALTH=$BASE/api/periode-limit/notifications/health
TOKEN=$("$BIN" token 13 --db "$DB")
ok "server listening on $ADDR"

health() { curl -s -H "Authorization: Bearer $TOKEN" "$HEALTH"; }
health_has() { contains "$(health)" "$1"; }

# 1. Basic connection test: curl -N for 3 s (exit 28, the timeout, is expected).
set +e
OUT=$(curl -sN --max-time 3 -H "Accept: text/event-stream" \
    -H "Authorization: Bearer $TOKEN" "$STREAM")
RC=$?
set -e
check "basic stream: curl ended by its own --max-time (exit $RC)" test "$RC" -eq 28
check "basic stream: event: connected" contains "$OUT" "event: connected"
check "basic stream: connected data" \
    contains "$OUT" 'data: {"message":"Connected to Spending notifications"}'
check "basic stream: notification" contains "$OUT" "event: notification"
check "basic stream: currentSpending 267000" contains "$OUT" '"currentSpending":267000'
check "basic stream: heartbeat" contains "$OUT" "event: heartbeat"

# 2. Health check test.
H=$(health)
check "health: status healthy ($H)" contains "$H" '"status":"healthy"'
check "health: userId 13" contains "$H" '"userId":13'

# 3. Multiple connections test: two streams of one user.
curl -sN -H "Accept: text/event-stream" -H "Authorization: Bearer $TOKEN" "$STREAM" \
    >"$WORK/a.out" &
CURL_A=$!
CURL_PIDS+=("$CURL_A")
curl -sN -H "Accept: text/event-stream" -H "Authorization: Bearer $TOKEN" "$STREAM" \
    >"$WORK/b.out" &
CURL_B=$!
CURL_PIDS+=("$CURL_B")
check "two streams: health shows connectedClients 2" \
    wait_until 5 health_has '"connectedClients":2'

# 4. Connection cleanup test: one client goes away.
kill "$CURL_B"
wait "$CURL_B" 2>/dev/null || true
check "one stream closed: health shows connectedClients 1" \
    wait_until 5 health_has '"connectedClients":1'
for line in "SSE stream aborted for user 13" "SSE connection closed for user 13" \
    "SSE client removed for user 13"; do
    check "log: $line" wait_until 5 log_has "$line"
done

# Shutdown with a stream open: curl must exit 0 (not 18), the server 0.
curl -sN -H "Authorization: Bearer $TOKEN" "$STREAM" >"$WORK/c.out" &
CURL_C=$!
CURL_PIDS+=("$CURL_C")
check "shutdown: a new stream is open (connectedClients 2)" \
    wait_until 5 health_has '"connectedClients":2'
kill -TERM "$SERVER_PID"
set +e
wait "$SERVER_PID"
SERVER_RC=$?
wait "$CURL_C"
CURL_RC=$?
wait "$CURL_A"
CURL_A_RC=$?
set -e
SERVER_PID=""
CURL_PIDS=()
check "shutdown: curl exits 0, not 18 (got $CURL_RC)" test "$CURL_RC" -eq 0
check "shutdown: the older curl stream exits 0 too (got $CURL_A_RC)" test "$CURL_A_RC" -eq 0
check "shutdown: server exits 0 (got $SERVER_RC)" test "$SERVER_RC" -eq 0
check "shutdown: the stream got its events" \
    contains "$(cat "$WORK/c.out")" "event: connected"

if ((FAILED)); then
    echo "server log:"
    cat "$LOG"
    exit 1
fi
echo "all smoke checks passed"
