"""periode-sse with Python's httpx + httpx-sse (pinned in requirements.txt).

A stream with the token in the Authorization header, a notification after a POST, a clean end of
the stream when the server stops (SIGTERM: a `retry:` between retry-ms and 3x, and no truncated
chunked body, which httpx would raise as RemoteProtocolError), and a resume with Last-Event-ID
after a restart that receives exactly the notifications recorded while it was away.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from httpx_sse import connect_sse

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("PERIODE_SSE_BIN", str(ROOT / "target/release/periode-sse"))
STREAM = "/api/periode-limit/notifications/stream"
RETRY_MS = 1000


class Server:
    """A real periode-sse on loopback; every wait is bounded."""

    def __init__(self, db, listen="127.0.0.1:0"):
        self.proc = subprocess.Popen(
            [BIN, "--demo", "--db", db, "--listen", listen, "--heartbeat", "1",
             "--retry-ms", str(RETRY_MS)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        self.log = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log += line
            m = re.search(r"listening on (http://[0-9.]+:\d+)", line)
            if m:
                self.base = m.group(1)
                return
        self.proc.kill()
        raise RuntimeError("server did not start:\n" + self.log)

    def stop(self):
        """SIGTERM; SPEC §5 wants exit 0 within 5 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=6)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
            check(code == 0, f"server exited {code} after SIGTERM")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok - {what}", flush=True)


def token(db):
    return subprocess.run([BIN, "token", "13", "--db", db], check=True, capture_output=True,
                          text=True, timeout=10).stdout.strip()


def record(base, headers, amount):
    r = httpx.post(base + "/api/periode-limit/transactions", headers=headers,
                   json={"amount": amount, "description": "python client test"}, timeout=5)
    check(r.status_code == 201, f"POST {amount} -> {r.status_code}")


def next_event(events, wanted):
    """The next event of a wanted type; httpx's read timeout bounds the wait."""
    for sse in events:
        if sse.event in wanted:
            return sse
    raise AssertionError(f"the stream ended before any {wanted}")


def main():
    work = ROOT / "target" / "clients"
    work.mkdir(parents=True, exist_ok=True)
    db = str(Path(tempfile.mkdtemp(prefix="run-", dir=work)) / "python.db")
    server = Server(db)
    port = server.base.rsplit(":", 1)[1]
    auth = {"Authorization": "Bearer " + token(db)}
    timeout = httpx.Timeout(5.0)
    try:
        with httpx.Client(timeout=timeout) as client:
            # 1. Connect, snapshot, a live notification after a POST, then the server stops.
            with connect_sse(client, "GET", server.base + STREAM, headers=auth) as source:
                r = source.response
                check(r.status_code == 200 and
                      r.headers["content-type"].startswith("text/event-stream"),
                      "200 text/event-stream")
                events = source.iter_sse()
                # httpx-sse yields the lone `retry:` block as an empty "message" event (a browser
                # dispatches nothing for it); take the retry from what precedes `connected`.
                first = next(events)
                check(first.retry == RETRY_MS and not first.data, f"retry: {first.retry} first")
                check(next(events).event == "connected", "then connected")
                snap = next_event(events, {"notification"})
                data = json.loads(snap.data)
                check((data["currentSpending"], data["maxSpending"], data["isAlert"])
                      == (267000, 200000, True), f"snapshot 267000 / 200000, alert (id {snap.id})")
                k = int(snap.id)
                hb = next_event(events, {"heartbeat"})
                check(json.loads(hb.data)["timestamp"] > 0, "heartbeat")

                record(server.base, auth, 1000)
                live = next_event(events, {"notification"})
                check(int(live.id) == k + 1 and json.loads(live.data)["currentSpending"] == 268000,
                      f"notification after POST: id {live.id}, 268000")

                server.stop()
                rest = list(events)  # must end without RemoteProtocolError
                retries = [e.retry for e in rest if e.retry is not None]
                check(len(retries) == 1 and RETRY_MS <= retries[0] <= 3 * RETRY_MS,
                      f"clean end of stream at shutdown with retry: {retries}")
                last_id = live.id

            # 2. While the client is away, a restarted server records two transactions.
            server = Server(db, listen="127.0.0.1:" + port)
            record(server.base, auth, 2000)
            record(server.base, auth, 3000)

            # 3. Resume with Last-Event-ID: exactly the missed ones, in order, then live.
            headers = dict(auth, **{"Last-Event-ID": last_id})
            with connect_sse(client, "GET", server.base + STREAM, headers=headers) as source:
                events = source.iter_sse()
                check(next_event(events, {"connected", "notification"}).event == "connected",
                      "reconnected")
                missed = [next_event(events, {"notification"}) for _ in range(2)]
                check([int(e.id) for e in missed] == [k + 2, k + 3] and
                      [json.loads(e.data)["currentSpending"] for e in missed] == [270000, 273000],
                      f"replayed exactly ids {[e.id for e in missed]} (270000, 273000)")
                nxt = next_event(events, {"notification", "heartbeat"})
                check(nxt.event == "heartbeat", "nothing repeated after the replay")
                record(server.base, auth, 4000)
                after = next_event(events, {"notification"})
                spent = json.loads(after.data)["currentSpending"]
                check(int(after.id) == k + 4 and spent == 277000,
                      f"live after resume: id {after.id}, {spent}")
    finally:
        try:
            server.stop()
        except Exception as err:  # clean-up must not hide the real failure
            print(f"(clean-up) {err}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback
        traceback.print_exc()
        print("httpx-sse: 0 passed, 1 failed")
        sys.exit(1)
    print("httpx-sse: 1 passed, 0 failed")
