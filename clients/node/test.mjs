// periode-sse with the npm `eventsource` package (v3, pinned), as a Node service would use it:
// the token in the Authorization header through the package's custom `fetch`, a notification
// after a POST, and the package's own reconnection across a server restart, which must send
// Last-Event-ID and receive exactly the notifications it missed — no more, no fewer.
import { EventSource } from 'eventsource';
import {
  startServer, stopQuietly, token, recordSpending, tempDir, check, sleep,
} from '../server.mjs';
import { join } from 'node:path';

const RETRY_MS = 1500; // the server's retry-ms: long enough to restart before the client is back

/** Events in arrival order, and a bounded wait for the next one of the wanted types. */
function collect(es, types) {
  const queue = [];
  let wake = null;
  for (const type of types) {
    es.addEventListener(type, (ev) => {
      queue.push({ type, id: ev.lastEventId, data: JSON.parse(ev.data) });
      if (wake) wake();
    });
  }
  return async function next(wanted, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = queue.findIndex((e) => wanted.includes(e.type));
      if (i >= 0) return queue.splice(0, i + 1).pop(); // skip what comes before (heartbeats)
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${wanted.join('/')} event within ${timeoutMs} ms`);
      await new Promise((res) => { wake = res; setTimeout(res, Math.min(left, 100)); });
      wake = null;
    }
  };
}

async function main() {
  const db = join(tempDir('clients'), 'node.db');
  let server = await startServer({ db, args: ['--retry-ms', String(RETRY_MS)] });
  const port = new URL(server.base).port;
  const tok = token(db);
  const sentLastEventIds = [];
  const es = new EventSource(`${server.base}/api/periode-limit/notifications/stream`, {
    fetch: (input, init) => {
      sentLastEventIds.push(init.headers['Last-Event-ID'] ?? null);
      const headers = { ...init.headers, Authorization: `Bearer ${tok}` };
      return fetch(input, { ...init, headers });
    },
  });
  try {
    const next = collect(es, ['connected', 'notification', 'heartbeat']);

    // 1. Connect: `connected`, then the current status as a snapshot.
    check((await next(['connected'])).type === 'connected',
      'connected with the Authorization header');
    const snapshot = await next(['notification']);
    check(snapshot.data.currentSpending === 267000 && snapshot.data.maxSpending === 200000 &&
      snapshot.data.isAlert === true, `snapshot 267000 / 200000, alert (id ${snapshot.id})`);
    const k = Number(snapshot.id);
    check(Number.isInteger(k) && k >= 0, 'the snapshot carries a numeric id');
    check((await next(['heartbeat'], 3000)).data.timestamp > 0, 'heartbeat');

    // 2. A POST reaches the open stream as the next notification.
    await recordSpending(server.base, tok, 1000);
    const live = await next(['notification']);
    check(Number(live.id) === k + 1 && live.data.currentSpending === 268000,
      `notification after POST: id ${live.id}, 268000`);

    // 3. Restart: the server ends the stream cleanly; while it is away two transactions are
    //    recorded; the package reconnects by itself with Last-Event-ID and gets both, in order.
    await server.stop();
    server = await startServer({ db, listen: `127.0.0.1:${port}`,
      args: ['--retry-ms', String(RETRY_MS)] });
    await recordSpending(server.base, tok, 2000);
    await recordSpending(server.base, tok, 3000);
    check(sentLastEventIds.length === 1, 'both recorded while the client was away');
    check((await next(['connected'], 3 * RETRY_MS + 5000)).type === 'connected',
      'reconnected by itself');
    const sent = sentLastEventIds.at(-1);
    check(sent === String(k + 1), `it sent Last-Event-ID: ${sent}`);
    const missed = [await next(['notification']), await next(['notification'])];
    check(missed.map((e) => Number(e.id)).join() === `${k + 2},${k + 3}` &&
      missed.map((e) => e.data.currentSpending).join() === '270000,273000',
      `replayed exactly the missed ids ${missed.map((e) => e.id).join(', ')} (270000, 273000)`);
    await next(['heartbeat'], 3000);
    await sleep(300);
    const extra = await next(['notification'], 1200).catch(() => null);
    check(extra === null, 'nothing repeated after the replay (no snapshot on resume)');

    // 4. And live again.
    await recordSpending(server.base, tok, 4000);
    const after = await next(['notification']);
    check(Number(after.id) === k + 4 && after.data.currentSpending === 277000,
      `live after resume: id ${after.id}, 277000`);
  } finally {
    es.close();
    await stopQuietly(server);
  }
}

main().then(
  () => { console.log('eventsource-node: 1 passed, 0 failed'); process.exit(0); },
  (err) => {
    console.error(err);
    console.log('eventsource-node: 0 passed, 1 failed');
    process.exit(1);
  },
);
