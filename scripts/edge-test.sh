#!/usr/bin/env bash
# The checks of everything around the server on an edge box, in the order CI runs them, each
# timed: the systemd unit (systemd-analyze verify), the proxies (scripts/proxy-test.sh), and
# the aarch64 static build under qemu (scripts/cross-smoke.sh, fast profile).
#
#   scripts/edge-test.sh
#   PERIODE_SSE_BIN=target/release/periode-sse scripts/edge-test.sh   # reuse a release build
#
# Installs what it lacks (systemd for systemd-analyze; the scripts install their own).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }
# timed NAME COMMAND...: runs it and prints how long it took, whether it passed or not.
timed() {
    local name=$1 start=$SECONDS rc=0
    shift
    "$@" || rc=$?
    echo "--- $name: $((SECONDS - start)) s$( ((rc)) && echo ", FAILED (exit $rc)")"
    return "$rc"
}

if [[ -z "${PERIODE_SSE_BIN:-}" ]]; then
    step "release build (host)"
    timed "release build" cargo build --release --quiet
    export PERIODE_SSE_BIN=$PWD/target/release/periode-sse
fi

verify_unit() {
    command -v systemd-analyze >/dev/null || {
        echo "edge-test: installing systemd (for systemd-analyze)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
    }
    local unit=dist/periode-sse.service work out setting
    for setting in Type=notify DynamicUser=yes StateDirectory=periode-sse UMask=0077 \
        TimeoutStopSec= LimitNOFILE= NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes \
        ProtectHome=yes 'ExecStart=/usr/local/bin/periode-sse serve --db /var/lib/periode-sse/'; do
        grep -q "^$setting" "$unit" || { echo "FAIL - $unit lacks $setting"; return 1; }
    done
    # verify checks that ExecStart's program exists; no binary is installed here, so a copy
    # of the unit names the one just built. Nothing else is changed.
    work=$(mktemp -d)
    sed "s|^ExecStart=/usr/local/bin/periode-sse |ExecStart=$PERIODE_SSE_BIN |" "$unit" \
        >"$work/periode-sse.service"
    out=$(systemd-analyze verify --man=no "$work/periode-sse.service" 2>&1) || {
        echo "$out"
        echo "FAIL - systemd-analyze verify $unit"
        rm -rf "$work"
        return 1
    }
    rm -rf "$work"
    if [[ -n $out ]]; then
        echo "$out"
        echo "FAIL - systemd-analyze verify $unit: warnings"
        return 1
    fi
    echo "ok - systemd-analyze verify $unit: clean"
}

step "systemd unit"
timed "systemd-analyze verify" verify_unit
step "proxies (nginx, HAProxy)"
timed "proxy-test.sh" scripts/proxy-test.sh
step "aarch64 static build, smoke test under qemu"
timed "cross-smoke.sh" scripts/cross-smoke.sh
step "edge checks passed"
