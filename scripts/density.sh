#!/usr/bin/env bash
# Density figures of periode-sse on this machine: builds in release, then for each N starts a
# fresh server on a temporary database (the tool creates the users and limits it needs through
# the admin API, restarts the server on that database, and measures), and prints one table.
#
#   scripts/density.sh                   N = 1000, 10000, 19000; heartbeats at N = 10000;
#                                        32 concurrent writers at N = 19000: paced at
#                                        5000 writes/s, then as fast as they are answered
#   SIZES="200" HEARTBEAT=0 WRITERS=0 scripts/density.sh      the CI-sized check
#   RUNS=3 scripts/density.sh            medians of three runs
#
# Env: SIZES, RUNS (default 1), HEARTBEAT (streams for the --heartbeat 1 run; 0 skips; default
# 10000), WRITERS (concurrent writers in the largest run; 0 skips; default 32), WRITERS_RATE
# (writes/s of the paced phase; 0 skips it; default 5000), OUT (folder for
# the JSON reports; default a temp folder, kept). Every run is bounded by `timeout`; the whole
# script takes about a minute per round.
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=${SIZES:-"1000 10000 19000"}
runs=${RUNS:-1}
hb_streams=${HEARTBEAT:-10000}
writers=${WRITERS:-32}
writers_rate=${WRITERS_RATE:-5000}
out=${OUT:-$(mktemp -d /tmp/periode-density.XXXXXX)}
mkdir -p "$out"
reports="$out/periode.jsonl"

cargo build --release --quiet --bin periode-sse --bin periode-density
tool=target/release/periode-density
bin=target/release/periode-sse
largest=$(printf '%s\n' $sizes | sort -n | tail -1)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)" >&2
echo "reports: $reports" >&2
status=0
for run in $(seq 1 "$runs"); do
  for n in $sizes; do
    extra=()
    if [ "$n" = "$largest" ] && [ "$writers" -gt 0 ]; then
      extra=(--writers "$writers" --writers-secs 10 --writers-rate "$writers_rate")
    fi
    echo "run $run: N=$n (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    timeout 600 "$tool" --server "$bin" --streams "$n" --label "periode N=$n" --quiet \
      "${extra[@]}" >>"$reports" || status=1
  done
  if [ "$hb_streams" -gt 0 ]; then
    echo "run $run: heartbeats, N=$hb_streams at --heartbeat 1" >&2
    timeout 300 "$tool" --server "$bin" --streams "$hb_streams" --heartbeat 1 \
      --heartbeat-window 10 --fanout-posts 0 --label "periode heartbeat N=$hb_streams" \
      --quiet >>"$reports" || status=1
  fi
done

stripped="$out/periode-sse.stripped"
cp "$bin" "$stripped" && strip "$stripped" 2>/dev/null || true
echo >&2
"$tool" summarize "$reports"
echo
echo "release binary: $(stat -c %s "$bin") bytes, stripped $(stat -c %s "$stripped") bytes"
[ "$status" = 0 ] || echo "some runs failed or reported failures: see $reports" >&2
exit "$status"
