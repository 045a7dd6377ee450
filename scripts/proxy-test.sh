#!/usr/bin/env bash
# periode-sse behind real nginx and HAProxy, over HTTPS, with the configs of dist/.
#
#   scripts/proxy-test.sh                         # builds the release binary, then tests
#   PERIODE_SSE_BIN=path/to/periode-sse scripts/proxy-test.sh
#
# One server (--heartbeat 1, --retry-ms 300) on a free loopback port, nginx and HAProxy in
# front of it on free loopback ports, each with its own temporary config derived from
# dist/nginx.conf and dist/haproxy.cfg (ports, certificate and log paths replaced; nothing
# else) and a self-signed certificate made here with openssl. Through each proxy, over
# HTTP/1.1 and HTTP/2 (and HAProxy over plain HTTP too), it checks:
#   - an event arrives soon after its POST (printed against the 50 ms target; a check fails
#     only past 1 s: speed is measured, not asserted);
#   - heartbeats pass;
#   - SIGTERM to the server ends every stream cleanly through the proxy (curl exits 0);
#   - while the server is down the proxy answers a stream request with a bare close, not a
#     502/503 (which would make an EventSource give up for good);
#   - after a restart, the npm `eventsource` client (clients/node) reconnects by itself and
#     gets events again;
#   - the proxies' access logs hold no token (browsers send it in the query string).
# Prints "ok - ..." or "FAIL - ..." per check, exits non-zero if any failed. Bounded: a
# watchdog stops it after 240 s. Installs nginx, haproxy, openssl, curl and the npm client
# when missing. Every process it starts is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v node >/dev/null || need+=(nodejs npm)
if ((${#need[@]})); then
    echo "proxy-test: installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [[ ! -d clients/node/node_modules/eventsource ]]; then
    (cd clients/node && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
fi
if [[ -n "${PERIODE_SSE_BIN:-}" ]]; then
    BIN=$PERIODE_SSE_BIN
else
    cargo build --release --quiet
    BIN=$ROOT/target/release/periode-sse
fi

WORK=$(mktemp -d)
# nginx's workers (user nobody) write their temporary files under it.
chmod 755 "$WORK"
SERVER_PID=""
NGINX_PID=""
HAPROXY_PID=""
WATCHDOG_PID=""
BG_PIDS=()
FAILED=0

cleanup() {
    local pid
    for pid in "${BG_PIDS[@]}" $SERVER_PID $NGINX_PID $HAPROXY_PID $WATCHDOG_PID; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
# The watchdog ends this script (and so, through the EXIT trap, everything it started). It
# holds no output open, and takes its sleep with it when stopped, so nothing outlives us.
trap 'echo "FAIL - proxy-test.sh did not finish within 240 s"; exit 1' TERM
(
    exec >/dev/null 2>&1
    sleep 240 &
    nap=$!
    trap 'kill $nap; exit 0' TERM
    wait $nap && kill -TERM $$
) &
WATCHDOG_PID=$!

ok() { echo "ok - $*"; }
fail() {
    echo "FAIL - $*"
    FAILED=1
}
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
# wait_until SECONDS COMMAND...: polls the command every 0.1 s until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
count() { grep -c -- "$2" "$1" 2>/dev/null || true; }

SPORT=$(free_port)
NPORT=$(free_port)
HPORT=$(free_port)
HPLAIN=$(free_port)
export JWT_SECRET=proxy-test-secret-of-at-least-thirty-two-bytes
unset PERIODE_SSE_LISTEN PERIODE_SSE_DB RUST_LOG
DB=$WORK/proxy.db
LOG=$WORK/server.log
STREAM_PATH=/api/periode-limit/notifications/stream
HEALTH_PATH=/api/periode-limit/notifications/health

# ---- certificate: what the proxies present; every client below trusts it, nothing else.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"
CA=$WORK/cert.pem

# ---- the server
start_server() {
    local before
    before=$(count "$LOG" 'listening on http://')
    "$BIN" --demo --db "$DB" --listen "127.0.0.1:$SPORT" --heartbeat 1 --retry-ms 300 \
        2>>"$LOG" &
    SERVER_PID=$!
    listening() { (($(count "$LOG" 'listening on http://') > before)) || ! kill -0 "$SERVER_PID"; }
    wait_until 10 listening && kill -0 "$SERVER_PID"
}
if ! start_server; then
    cat "$LOG"
    fail "server did not start"
    exit 1
fi
ok "server listening on 127.0.0.1:$SPORT"
TOKEN=$("$BIN" token 13 --db "$DB")

# ---- nginx: dist/nginx.conf inside a minimal main config of its own
# replace FILE FROM TO: FROM must occur in FILE (so a change to dist/ cannot slip by).
replace() {
    grep -qF -- "$2" "$1" || { fail "$1 no longer contains '$2': update proxy-test.sh"; exit 1; }
    python3 -c 'import sys; p, a, b = sys.argv[1:]; s = open(p).read(); open(p, "w").write(s.replace(a, b))' \
        "$1" "$2" "$3"
}
cp dist/nginx.conf "$WORK/nginx-site.conf"
replace "$WORK/nginx-site.conf" "listen 443 ssl http2;" "listen 127.0.0.1:$NPORT ssl http2;"
replace "$WORK/nginx-site.conf" "listen [::]:443 ssl http2;" ""
replace "$WORK/nginx-site.conf" "server 127.0.0.1:8989;" "server 127.0.0.1:$SPORT;"
replace "$WORK/nginx-site.conf" /etc/ssl/periode-sse/fullchain.pem "$WORK/cert.pem"
replace "$WORK/nginx-site.conf" /etc/ssl/periode-sse/privkey.pem "$WORK/key.pem"
replace "$WORK/nginx-site.conf" /var/log/nginx/periode-sse.access.log "$WORK/nginx-access.log"
replace "$WORK/nginx-site.conf" "error_log /var/log/nginx/error.log crit;" \
    "error_log $WORK/nginx-error.log crit;"
mkdir -m 777 "$WORK/nginx-tmp"
cat >"$WORK/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    include $WORK/nginx-site.conf;
}
EOF
if ! nginx -t -q -c "$WORK/nginx.conf" -p "$WORK"; then
    fail "nginx -t refuses dist/nginx.conf"
    exit 1
fi
nginx -c "$WORK/nginx.conf" -p "$WORK" 2>>"$WORK/nginx-error.log" &
NGINX_PID=$!

# ---- HAProxy: dist/haproxy.cfg, logging to its standard output, no chroot or user switch
cp dist/haproxy.cfg "$WORK/haproxy.cfg"
# Plus a plain-HTTP listener: where `option http-no-delay` matters most (without it, ~200 ms
# per event there), measured below beside the TLS one.
replace "$WORK/haproxy.cfg" "bind :443 ssl crt /etc/haproxy/certs/periode-sse.pem" \
    "bind 127.0.0.1:$HPLAIN"$'\n'"    bind 127.0.0.1:$HPORT ssl crt $WORK/haproxy.pem"
replace "$WORK/haproxy.cfg" "server periode-sse 127.0.0.1:8989" "server periode-sse 127.0.0.1:$SPORT"
replace "$WORK/haproxy.cfg" "log /dev/log local0" "log stdout format raw local0"
replace "$WORK/haproxy.cfg" "    chroot /var/lib/haproxy"$'\n' ""
replace "$WORK/haproxy.cfg" "    user haproxy"$'\n' ""
replace "$WORK/haproxy.cfg" "    group haproxy"$'\n' ""
# HAProxy refuses to start when it cannot get about 2 descriptors per connection; a test
# needs few.
replace "$WORK/haproxy.cfg" "maxconn 20000" "maxconn 1000"
if ! haproxy -c -q -f "$WORK/haproxy.cfg"; then
    fail "haproxy -c refuses dist/haproxy.cfg"
    exit 1
fi
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!

NGINX=https://127.0.0.1:$NPORT
HAPROXY=https://127.0.0.1:$HPORT
healthy_through() {
    [[ $(curl -s --cacert "$CA" -H "Authorization: Bearer $TOKEN" "$1$HEALTH_PATH") == *'"status":"healthy"'* ]]
}
check "nginx answers over HTTPS" wait_until 10 healthy_through "$NGINX"
check "HAProxy answers over HTTPS" wait_until 10 healthy_through "$HAPROXY"

# ---- latency and heartbeats: a stream through curl, timestamps taken as its lines arrive,
# POSTs on a kept-alive connection through the same proxy (its TLS handshake done before the
# clock starts).
cat >"$WORK/probe.py" <<'EOF'
import http.client, json, queue, ssl, subprocess, sys, threading, time

name, base, http_version, cafile, token, stream_path = sys.argv[1:7]
scheme, rest = base.split("://")
host, port = rest.split(":")
curl = subprocess.Popen(
    ["curl", "-sN", "--cacert", cafile, "--http" + http_version, "--max-time", "30",
     "-H", "Authorization: Bearer " + token, base + stream_path],
    stdout=subprocess.PIPE)
lines = queue.Queue()

def read():
    for raw in curl.stdout:
        lines.put((time.monotonic(), raw.decode().rstrip("\n")))
    lines.put((time.monotonic(), None))

threading.Thread(target=read, daemon=True).start()

def next_event(name, timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            at, line = lines.get(timeout=left)
        except queue.Empty:
            return None
        if line is None:
            return None
        if line == "event: " + name:
            return at

failed = False
def report(ok, what):
    global failed
    print(("ok - " if ok else "FAIL - ") + what, flush=True)
    failed |= not ok

label = f"{name} (HTTP/{http_version}{'' if scheme == 'https' else ', plain, no TLS'})"
report(next_event("connected", 5) is not None, f"{label}: stream opened")
report(next_event("notification", 5) is not None, f"{label}: status snapshot")
if scheme == "https":
    conn = http.client.HTTPSConnection(host, int(port), timeout=5,
                                       context=ssl.create_default_context(cafile=cafile))
else:
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
conn.connect()
latencies = []
for i in range(5):
    body = json.dumps({"amount": 100, "description": f"proxy test {i}"})
    sent = time.monotonic()
    conn.request("POST", "/api/periode-limit/transactions", body,
                 {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    if response.status != 201:
        report(False, f"{label}: POST answered {response.status}")
        break
    arrived = next_event("notification", 5)
    if arrived is None:
        report(False, f"{label}: no notification within 5 s of POST {i}")
        break
    latencies.append((arrived - sent) * 1000)
if len(latencies) == 5:
    ms = sorted(latencies)
    report(ms[-1] < 1000,
           f"{label}: POST to event {ms[2]:.1f} ms median, {ms[-1]:.1f} ms max over 5 "
           f"(target 50 ms: {'met' if ms[-1] <= 50 else 'MISSED'})")
beats = [next_event("heartbeat", 3) for _ in range(2)]
report(all(b is not None for b in beats), f"{label}: heartbeats pass (--heartbeat 1)")
curl.kill()
curl.wait()
sys.exit(1 if failed else 0)
EOF
for proxy in nginx HAProxy; do
    base=$NGINX
    [[ $proxy == HAProxy ]] && base=$HAPROXY
    for version in 1.1 2; do
        python3 "$WORK/probe.py" "$proxy" "$base" "$version" "$CA" "$TOKEN" "$STREAM_PATH" ||
            FAILED=1
    done
done
python3 "$WORK/probe.py" HAProxy "http://127.0.0.1:$HPLAIN" 1.1 "$CA" "$TOKEN" "$STREAM_PATH" ||
    FAILED=1

# ---- SIGTERM and restart: curl streams (HTTP/1.1 and HTTP/2) and an npm eventsource client
# (its own reconnection, the token in the query string as browsers send it) through each proxy.
cat >"$WORK/client.cjs" <<'EOF'
// Prints one line per event: "<type> <lastEventId>". Reconnection is the package's own.
const { createRequire } = require('node:module');
const { EventSource } = createRequire(process.argv[2] + '/package.json')('eventsource');
const es = new EventSource(process.argv[3]);
for (const type of ['connected', 'notification']) {
  es.addEventListener(type, (ev) => console.log(`${type} ${ev.lastEventId}`));
}
es.addEventListener('error', () => console.log(`error readyState=${es.readyState}`));
EOF
declare -A CURL_PID NODE_OUT
for proxy in nginx HAProxy; do
    base=$NGINX
    [[ $proxy == HAProxy ]] && base=$HAPROXY
    for version in 1.1 2; do
        out=$WORK/term-$proxy-$version.out
        curl -sN --cacert "$CA" "--http$version" -H "Authorization: Bearer $TOKEN" \
            "$base$STREAM_PATH" >"$out" &
        CURL_PID[$proxy-$version]=$!
        BG_PIDS+=($!)
    done
    NODE_OUT[$proxy]=$WORK/node-$proxy.out
    NODE_EXTRA_CA_CERTS=$CA node "$WORK/client.cjs" "$ROOT/clients/node" \
        "$base$STREAM_PATH?access_token=$TOKEN" >"${NODE_OUT[$proxy]}" 2>&1 &
    BG_PIDS+=($!)
done
all_connected() {
    local f
    for f in "$WORK"/term-*.out "$WORK"/node-*.out; do
        grep -q connected "$f" 2>/dev/null || return 1
    done
}
check "curl and eventsource streams open through both proxies" wait_until 10 all_connected

kill -TERM "$SERVER_PID"
server_gone() { ! kill -0 "$SERVER_PID" 2>/dev/null; }
if wait_until 10 server_gone; then
    set +e
    wait "$SERVER_PID"
    rc=$?
    set -e
    check "SIGTERM: server exits 0 (got $rc)" test "$rc" -eq 0
else
    fail "SIGTERM: server still running after 10 s"
fi
SERVER_PID=""
for key in "${!CURL_PID[@]}"; do
    pid=${CURL_PID[$key]}
    curl_gone() { ! kill -0 "$1" 2>/dev/null; }
    if wait_until 10 curl_gone "$pid"; then
        set +e
        wait "$pid"
        rc=$?
        set -e
        proxy=${key%-*}
        version=${key##*-}
        check "SIGTERM through $proxy (HTTP/$version): curl exits 0, the stream ended cleanly (got $rc)" \
            test "$rc" -eq 0
        check "SIGTERM through $proxy (HTTP/$version): the shutdown retry: reached the client" \
            test "$(count "$WORK/term-$proxy-$version.out" '^retry: ')" -ge 2
    else
        fail "SIGTERM through $key: curl still running 10 s after the server stopped"
    fi
done

# The server is down: a stream request gets a bare close (curl: 52 "empty reply" over
# HTTP/1.1), not the proxy's 502/503.
for proxy in nginx HAProxy; do
    base=$NGINX
    [[ $proxy == HAProxy ]] && base=$HAPROXY
    set +e
    answer=$(curl -s --http1.1 --max-time 5 --cacert "$CA" -o /dev/null -w '%{http_code}' \
        -H "Authorization: Bearer $TOKEN" "$base$STREAM_PATH")
    rc=$?
    set -e
    check "server down: $proxy closes a stream request without an answer (curl $rc, status $answer)" \
        test "$rc" -eq 52
done
# The eventsource clients have been refused at least once meanwhile (retry: 300 ms).
sleep 1
if ! start_server; then
    tail -n 20 "$LOG"
    fail "server did not restart"
    exit 1
fi
ok "server restarted on the same port"
for proxy in nginx HAProxy; do
    reconnected() { (($(count "${NODE_OUT[$1]}" '^connected') >= 2)); }
    check "restart behind $proxy: the eventsource client reconnected by itself" \
        wait_until 15 reconnected "$proxy"
done
before_nginx=$(count "${NODE_OUT[nginx]}" '^notification')
before_haproxy=$(count "${NODE_OUT[HAProxy]}" '^notification')
code=$(curl -s --cacert "$CA" -o /dev/null -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"amount": 100, "description": "after the restart"}' "$NGINX/api/periode-limit/transactions")
check "POST after the restart: 201 (got $code)" test "$code" = 201
more_notifications() { (($(count "${NODE_OUT[$1]}" '^notification') > $2)); }
check "restart behind nginx: the eventsource client gets events again" \
    wait_until 5 more_notifications nginx "$before_nginx"
check "restart behind HAProxy: the eventsource client gets events again" \
    wait_until 5 more_notifications HAProxy "$before_haproxy"
for proxy in nginx HAProxy; do
    check "restart behind $proxy: the eventsource client never closed for good" \
        bash -c "! grep -q 'readyState=2' '${NODE_OUT[$proxy]}'"
done

# Tokens travel in the query string (access_token); no log may hold one.
check "nginx access log has requests and no token" \
    bash -c "grep -q 'GET $STREAM_PATH' '$WORK/nginx-access.log' && ! grep -qF -- '$TOKEN' '$WORK/nginx-access.log'"
check "nginx error log has no token" bash -c "! grep -qF -- '$TOKEN' '$WORK/nginx-error.log'"
check "HAProxy log has requests and no token" \
    bash -c "grep -q 'GET $STREAM_PATH' '$WORK/haproxy.log' && ! grep -qF -- '$TOKEN' '$WORK/haproxy.log'"

if ((FAILED)); then
    for f in server.log nginx-error.log haproxy.log node-nginx.out node-HAProxy.out; do
        echo "---- $f"
        tail -n 30 "$WORK/$f" 2>/dev/null || true
    done
    exit 1
fi
echo "all proxy checks passed"
