#!/usr/bin/env bash
# Cluster mode's figures on this machine (issue 11, "Benchmarks"), all in one run so that the
# ratios compare like with like: builds in release with `--features postgres`, starts its own
# throwaway PostgreSQL (Debian's binaries, initdb as `postgres`, trust auth, a free loopback
# port, fsync on as in production), then measures, each run bounded by `timeout`:
#
#   sqlite-1   one node on SQLite                      (the reference)
#   pg-1       one node on PostgreSQL
#   pg-cross   streams on node B, POSTs to node A      (cross-node fan-out)
#   pg-2       two nodes, streams and writers spread   (two processes, one port each)
#   mem-*      N = MEM_STREAMS idle streams, one node per backend (memory per stream)
#
# Each PostgreSQL run has a new database, dropped after it (then a CHECKPOINT): a run's
# writers leave dead rows and dirty pages whose autovacuum and checkpoint would otherwise
# land in the next run's idle figures.
#
# Every fan-out run: STREAMS streams (100 per user) at --heartbeat 1; ROUNDS fan-out rounds
# to user 1's 100 streams, idle; 5 s of heartbeats (lateness of other users' streams, idle);
# then WRITERS closed-loop writers for WRITERS_SECS while the probe and the heartbeat lateness
# keep being measured. Prints the tables (with the load average of each run) and stops
# PostgreSQL and every node by pid at exit, also on error. About 3 minutes.
#
# Env: ROUNDS (default 300), STREAMS (1000), MEM_STREAMS (10000), WRITERS (32), WRITERS_SECS
# (5), OUT (folder for the JSON reports and the logs; default a temp folder, kept; the
# PostgreSQL data directory is always deleted), PG_BIN (default the newest
# /usr/lib/postgresql/N/bin), BIN and TOOL (a periode-sse built with `--features postgres`
# and its periode-density, instead of building this tree: to run another build in
# alternating rounds), RUNS (the runs to do, of the names above; default all of them).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-300}
streams=${STREAMS:-1000}
mem_streams=${MEM_STREAMS:-10000}
writers=${WRITERS:-32}
writers_secs=${WRITERS_SECS:-5}
pg_bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$pg_bin/postgres" ] || { echo "no PostgreSQL binaries (PG_BIN=$pg_bin)" >&2; exit 1; }

runs=" ${RUNS:-sqlite-1 pg-1 pg-cross pg-2 mem-sqlite mem-pg} "
wanted() { [[ $runs == *" $1 "* ]]; }
if [ -z "${BIN:-}" ] || [ -z "${TOOL:-}" ]; then
  cargo build --release --quiet --features postgres --bin periode-sse --bin periode-density
fi
tool=${TOOL:-$PWD/target/release/periode-density}
bin=${BIN:-$PWD/target/release/periode-sse}
[ -x "$bin" ] && [ -x "$tool" ] || { echo "no server at $bin or no tool at $tool" >&2; exit 1; }

work=$(mktemp -d /tmp/periode-cluster-pg.XXXXXX)
out=${OUT:-$(mktemp -d /tmp/periode-cluster-bench.XXXXXX)}
mkdir -p "$out"
reports="$out/cluster.jsonl"
: >"$reports"
pg_pid=""
node_pids=()

# Stops what we started, by pid: the nodes (SIGTERM, then SIGKILL after 5 s), then
# PostgreSQL (SIGINT: fast shutdown; SIGKILL after 10 s).
stop_pid() { # pid signal seconds
  local pid=$1 i
  kill -"$2" "$pid" 2>/dev/null || return 0
  for i in $(seq 1 $(($3 * 10))); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${node_pids[@]}"; do stop_pid "$p" TERM 5; done
  node_pids=()
  [ -n "$pg_pid" ] && stop_pid "$pg_pid" INT 10
  pg_pid=""
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  local p i
  for i in $(seq 1 100); do
    # Below the kernel's ephemeral range (ip_local_port_range, 32768 and up by default):
    # there the last run's thousands of client sockets may still hold the port, and a
    # listener cannot bind it even though nothing listens.
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "no free port" >&2
  return 1
}
wait_port() { # port seconds
  local i
  for i in $(seq 1 $(($2 * 20))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1 after $2 s" >&2
  return 1
}
load() { cut -d' ' -f1 /proc/loadavg; }

# --- PostgreSQL --------------------------------------------------------------------------
as_pg=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "no postgres user: install postgresql" >&2; exit 1; }
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
  chown postgres: "$work"
fi
pg_port=$(free_port)
"${as_pg[@]}" env LC_ALL=C "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres -E UTF8 \
  >"$out/initdb.log" 2>&1
# max_connections: each node holds three connections: store, reads, listener (docs/cluster.md).
"${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg" -p "$pg_port" -c listen_addresses=127.0.0.1 \
  -c "unix_socket_directories=$work" -c max_connections=50 -c shared_buffers=64MB \
  -c log_min_messages=fatal >"$out/pg.log" 2>&1 &
pg_pid=$!
psql() { "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -qAtc "$1"; }
for i in $(seq 1 100); do psql 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
psql 'SELECT 1' >/dev/null
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on port $pg_port (pid $pg_pid)" >&2
new_db() { psql "CREATE DATABASE $1" && echo "postgres://postgres@127.0.0.1:$pg_port/$1?sslmode=disable"; }
# After a run: its database goes, and a checkpoint writes what its writers left dirty, so
# that the next run's idle figures do not carry this one's autovacuum and checkpoint I/O.
end_db() { psql "DROP DATABASE $1 WITH (FORCE)" && psql "CHECKPOINT"; }

secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
node_port=""
node_pid=""
start_node() { # name uri heartbeat; sets node_port and node_pid (not in a subshell: the
  # pid must reach node_pids for the cleanup)
  node_port=$(free_port)
  JWT_SECRET=$secret "$bin" serve --db "$2" --listen "127.0.0.1:$node_port" --heartbeat "$3" \
    </dev/null >/dev/null 2>"$out/$1.log" &
  node_pid=$!
  node_pids+=("$node_pid")
  wait_port "$node_port" 20 || { echo "node $1 did not start; see $out/$1.log" >&2; exit 1; }
}

fanout_args=(--streams "$streams" --heartbeat 1 --fanout-posts "$rounds" --fanout-gap-ms 10
  --heartbeat-window 5 --writers "$writers" --writers-secs "$writers_secs" --quiet)
run() { # label, then the tool's arguments
  local label=$1
  shift
  echo "$label (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  timeout 180 "$tool" --label "$label" "$@" >>"$reports" || echo "  $label: failures (see $reports)" >&2
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)" >&2
echo "reports: $reports" >&2

echo "server: $bin" >&2
if wanted sqlite-1; then
  run sqlite-1 --server "$bin" "${fanout_args[@]}"
fi
if wanted pg-1; then
  uri=$(new_db pg1) # not inside run's arguments, where a failure would not stop the script
  run pg-1 --server "$bin" --db "$uri" "${fanout_args[@]}"
  end_db pg1
fi

if wanted pg-cross; then
  uri=$(new_db xnode)
  start_node cross-a "$uri" 1
  a_port=$node_port
  start_node cross-b "$uri" 1
  b_port=$node_port b_pid=$node_pid
  run pg-cross --addr "127.0.0.1:$b_port" --write-addr "127.0.0.1:$a_port" --pid "$b_pid" \
    --secret "$secret" "${fanout_args[@]}"
  for p in "${node_pids[@]}"; do stop_pid "$p" TERM 5; done
  node_pids=()
  end_db xnode
fi

if wanted pg-2; then
  uri=$(new_db two)
  start_node two-c "$uri" 1
  c_port=$node_port c_pid=$node_pid
  start_node two-d "$uri" 1
  d_port=$node_port
  run pg-2 --addr "127.0.0.1:$c_port" --node "127.0.0.1:$d_port" --pid "$c_pid" \
    --secret "$secret" "${fanout_args[@]}"
  for p in "${node_pids[@]}"; do stop_pid "$p" TERM 5; done
  node_pids=()
  end_db two
fi

mem_args=(--streams "$mem_streams" --fanout-posts 0 --quiet)
if wanted mem-sqlite; then
  run mem-sqlite --server "$bin" "${mem_args[@]}"
fi
if wanted mem-pg; then
  uri=$(new_db mem)
  run mem-pg --server "$bin" --db "$uri" "${mem_args[@]}"
fi

# --- the tables ----------------------------------------------------------------------------
jq -rs '
  def r(x): if x == null then "-" else (x * 100 | round / 100 | tostring) end;
  def ratio(x; y): if x == null or y == null or y == 0 then "-" else (x / y * 100 | round / 100 | tostring) + "x" end;
  (map({(.label): .}) | add) as $by
  | $by["sqlite-1"] as $ref
  | "| run | load | fan-out p50 / p99 ms (idle) | p99 vs sqlite-1 | heartbeat lateness p99 ms (idle) | writes/s (\(.[0].writers.writers // "-") closed-loop) | probe p99 ms during writes | vs idle p99 | first -> last p99 ms idle / during writes | heartbeat lateness p99 ms during writes | vs idle | streams/s to 99 % | failures |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ( .[] | select(.label | startswith("mem-") | not)
      | "| \(.label) | \(.load_average_before | split(" ")[0]) | \(r(.fanout.to_last_stream.p50_ms)) / \(r(.fanout.to_last_stream.p99_ms)) | \(ratio(.fanout.to_last_stream.p99_ms; $ref.fanout.to_last_stream.p99_ms)) | \(r(.heartbeat.lateness.p99_ms)) | \(r(.writers.writes_per_s)) | \(r(.writers.probe_fanout_to_last_stream.p99_ms)) | \(ratio(.writers.probe_fanout_to_last_stream.p99_ms; .fanout.to_last_stream.p99_ms)) | \(r(.fanout.first_to_last_stream.p99_ms)) / \(r(.writers.probe_first_to_last_stream.p99_ms)) | \(r(.writers.heartbeat_lateness.p99_ms)) | \(ratio(.writers.heartbeat_lateness.p99_ms; .heartbeat.lateness.p99_ms)) | \(r(.connect.streams_per_s_to_99pct)) | \(.failure_count) |" ),
    "",
    "| run | load | live streams | RSS before -> after (bytes) | RSS growth per idle stream (B) | server CPU per connect (us) | failures |",
    "|---|---|---|---|---|---|---|",
    ( .[] | select(.label | startswith("mem-"))
      | "| \(.label) | \(.load_average_before | split(" ")[0]) | \(.memory.live_streams) | \(.memory.rss_before_bytes) -> \(.memory.rss_after_bytes) | \(.memory.rss_growth_per_stream_bytes) | \(.connect.server_run_us_per_stream) | \(.failure_count) |" )
' "$reports"
