#!/usr/bin/env bash
# Our figures beside the peers' (../shared/peers: axum current_thread, nginx+nchan, Hono), all
# measured by periode-density in one session, rounds interleaved so that the machine's load
# drifts over every target alike. Prints the medians as one table.
#
# The target "floor" is tools/src/bin/periode-floor.rs: nchan's protocol with almost no user-space work,
# so its figures show what this machine's loopback TCP allows at all (driven with --target nchan,
# reported under the label "floor ...").
#
#   scripts/peers.sh                      3 rounds, every target
#   TARGETS="periode axum nchan" RUNS=5 scripts/peers.sh
#
# Each round and target: N = 19000 idle streams at 30 s heartbeats (connect rate, memory,
# fan-out of 50 events to one user's 100 streams, then 32 writers with fan-out probes: 10 s
# paced at 5000 writes/s, then 10 s as fast as they are answered), and N = 10000 streams at
# 1 s heartbeats (CPU per heartbeat over 10 s).
#
# Needs: the peers built (done here, in /tmp, never in the repository): cargo for axum, node and
# npm for hono, the Debian packages nginx and libnginx-mod-nchan for nchan. A target whose
# prerequisites are missing is skipped with a message. Env: TARGETS, RUNS (default 3), N
# (default 19000), HB_N (default 10000), WRITERS (default 32), WRITERS_RATE (default 5000),
# PEERS (default ../shared/peers),
# OUT (report folder). Every run is bounded by `timeout`; servers are stopped by their PID.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

targets=${TARGETS:-"periode floor axum nchan hono"}
runs=${RUNS:-3}
n=${N:-19000}
hb_n=${HB_N:-10000}
writers=${WRITERS:-32}
writers_rate=${WRITERS_RATE:-5000}
peers=$(cd "${PEERS:-../shared/peers}" && pwd)
out=${OUT:-$(mktemp -d /tmp/periode-peers.XXXXXX)}
mkdir -p "$out"
reports="$out/peers.jsonl"
secret=${JWT_SECRET:-density-benchmark-secret-0123456789abcdef}
export JWT_SECRET=$secret

cargo build --release --quiet --bin periode-sse --bin periode-density --bin periode-floor
release=${CARGO_TARGET_DIR:-$root/target}/release # where the cargo build above put them
tool=$release/periode-density
bin=$release/periode-sse
floor=$release/periode-floor

# ---- building the peers (outside the repository) ---------------------------------------------
build_axum() {
  command -v cargo >/dev/null || return 1
  [ -x /tmp/peer-axum/target/release/sse-peer-axum ] && return 0
  rm -rf /tmp/peer-axum && cp -r "$peers/axum" /tmp/peer-axum && chmod -R u+w /tmp/peer-axum
  (cd /tmp/peer-axum && timeout 900 cargo build --release --quiet)
}
build_hono() {
  command -v node >/dev/null && command -v npm >/dev/null || return 1
  [ -f /tmp/peer-hono/dist/server.js ] && return 0
  rm -rf /tmp/peer-hono && cp -r "$peers/hono" /tmp/peer-hono && chmod -R u+w /tmp/peer-hono
  (cd /tmp/peer-hono && timeout 600 npm ci --silent && timeout 300 npm run --silent build)
}
build_nchan() {
  command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]
}

available=""
for t in $targets; do
  case $t in
    periode | floor) available="$available $t" ;;
    axum) if build_axum; then available="$available axum"; else echo "skipping axum: cannot build it" >&2; fi ;;
    hono) if build_hono; then available="$available hono"; else echo "skipping hono: node/npm missing or build failed" >&2; fi ;;
    nchan) if build_nchan; then available="$available nchan"; else echo "skipping nchan: apt-get install -y nginx libnginx-mod-nchan" >&2; fi ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done

# ---- starting and stopping a peer --------------------------------------------------------------
pid="" measure_pid="" port="" nchan_prefix=""
wait_listening() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "port $1 never listened" >&2
  return 1
}
start_peer() { # target heartbeat_secs
  local t=$1 hb=$2
  case $t in
    floor)
      port=18084
      PORT=$port HEARTBEAT_SECS=$hb "$floor" 2>>"$out/floor.log" &
      pid=$! measure_pid=$pid ;;
    axum)
      port=18081
      PORT=$port HEARTBEAT_SECS=$hb RUNTIME=current_thread BACKLOG=4096 \
        /tmp/peer-axum/target/release/sse-peer-axum 2>>"$out/axum.log" &
      pid=$! measure_pid=$pid ;;
    hono)
      port=18083
      (cd /tmp/peer-hono && PORT=$port HEARTBEAT_SECS=$hb exec node dist/server.js) 2>>"$out/hono.log" &
      pid=$! measure_pid=$pid ;;
    nchan)
      port=18082
      PORT=$port HEARTBEAT_SECS=$hb "$peers/nchan/start.sh" 2>"$out/nchan-start.log" &
      pid=$!
      wait_listening $port
      measure_pid=$(pgrep -P "$pid" | head -1)
      nchan_prefix=$(sed -n 's/^nchan peer: prefix \([^,]*\),.*/\1/p' "$out/nchan-start.log") ;;
  esac
  wait_listening $port
}
stop_peer() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ -n "$nchan_prefix" ] && [ -d "$nchan_prefix" ]; then rm -rf "$nchan_prefix"; fi
  pid="" nchan_prefix=""
}
trap stop_peer EXIT

run_tool() { # target label args...
  local t=$1 label=$2; shift 2
  echo "  $label (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  local protocol=$t
  if [ "$t" = floor ]; then protocol=nchan; fi # nchan's protocol; the label says floor
  if [ "$t" = periode ]; then
    timeout 600 "$tool" --server "$bin" --label "$label" --quiet "$@" >>"$reports" || true
  else
    timeout 600 "$tool" --target "$protocol" --addr "127.0.0.1:$port" --pid "$measure_pid" \
      --label "$label" --quiet "$@" >>"$reports" || true
  fi
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)" >&2
echo "reports: $reports" >&2
for run in $(seq 1 "$runs"); do
  echo "round $run" >&2
  for t in $available; do
    [ "$t" = periode ] || start_peer "$t" 30
    run_tool "$t" "$t N=$n" --streams "$n" --writers "$writers" --writers-secs 10 \
      --writers-rate "$writers_rate" --heartbeat 30
    stop_peer
    [ "$t" = periode ] || start_peer "$t" 1
    run_tool "$t" "$t heartbeat N=$hb_n" --streams "$hb_n" --heartbeat 1 --heartbeat-window 10 \
      --fanout-posts 0
    stop_peer
    sleep 2 # let the closed sockets' TIME_WAIT and the load settle a little
  done
done
echo >&2
"$tool" summarize "$reports"
