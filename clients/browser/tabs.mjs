// The browser module (/periode-sse.js) in many tabs of one browser, against the real server.
//
// sharedStream: eight tabs of the live page share one stream (health: connectedClients 1); 50
//   POSTs reach all eight with contiguous ids; the leader tab is closed mid-burst, another
//   leads within 2 s, and no tab misses or repeats an id.
// fallbackStreams: BroadcastChannel removed from the page: one stream per tab, and still every
//   notification in every tab.
// tokenRenewal: README's module snippet on another origin, its getToken() handing out tokens
//   that live 4 s: each is renewed before it expires, a new stream takes over from the old one
//   with no reconnection, and notifications posted across the renewals all arrive, once.
// measureTabs (MEASURE=1): streams and server RSS for eight tabs, one stream per tab and shared.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BIN, ROOT, check, recordSpending, sleep } from '../server.mjs';
import {
  WAIT_MS, expectText, loggedIds, until, health, contiguous, snippet, replaceOnce,
} from './util.mjs';

const TABS = 8;

/** GET /periode-sse.js: the file as compiled in, no auth, JavaScript, cacheable. */
export async function moduleServed(server) {
  const res = await fetch(`${server.base}/periode-sse.js`, { signal: AbortSignal.timeout(5000) });
  const body = await res.text();
  check(res.status === 200, `GET /periode-sse.js: ${res.status}, no token needed`);
  check(res.headers.get('content-type') === 'text/javascript; charset=utf-8',
    `Content-Type: ${res.headers.get('content-type')}`);
  check(res.headers.get('cache-control') === 'public, max-age=3600',
    `Cache-Control: ${res.headers.get('cache-control')}`);
  check(body === readFileSync(join(ROOT, 'src/page/periode-sse.js'), 'utf8'),
    `the body is src/page/periode-sse.js (${body.length} bytes)`);
}
const BURST = 50;

async function openTabs(browser, url, count, { noBroadcastChannel = false, blocked = false } = {}) {
  const pages = [];
  const errors = [];
  for (let i = 0; i < count; i++) {
    const page = await browser.newPage();
    page.on('pageerror', (err) => errors.push(err.message));
    if (noBroadcastChannel) await page.addInitScript(() => { delete window.BroadcastChannel; });
    // With one stream per tab, the seventh tab's page itself waits for a free connection.
    if (blocked) await page.goto(url, { waitUntil: 'commit', timeout: 2000 }).catch(() => {});
    else await page.goto(url);
    pages.push(page);
  }
  return { pages, errors };
}

function role(page) {
  return page.getAttribute('#role', 'data-role');
}

/** Every page's log holds exactly the ids first..last, each once, in order. */
async function waitAllContiguous(pages, first, last, what) {
  await until(what, async () => {
    for (const page of pages) {
      if (!contiguous(await loggedIds(page), first, last)) return false;
    }
    return true;
  }, WAIT_MS, 100).catch(async (err) => {
    const got = await Promise.all(pages.map((p) => loggedIds(p)));
    throw new Error(`${err.message}\nids per tab: ${got.map((ids) => ids.join(',')).join('\n')}`);
  });
  check(true, what);
}

export async function sharedStream(browser, server, tok) {
  const url = `${server.base}/#token=${encodeURIComponent(tok)}`;
  const { pages, errors } = await openTabs(browser, url, TABS);
  try {
    for (const page of pages) await expectText(page, '#state', 'live', { quiet: true });
    check(true, `${TABS} tabs of the live page are live`);
    const roles = await Promise.all(pages.map(role));
    check(roles.filter((r) => r === 'leader').length === 1 &&
      roles.filter((r) => r === 'follower').length === TABS - 1,
    `one leader tab and ${TABS - 1} followers: ${roles.join(' ')}`);
    const h = await health(server.base, tok);
    check(h.connectedClients === 1,
      `the server sees one stream for the user: ${JSON.stringify(h)}`);

    // The snapshot reached every tab: the leader's from its stream, the others' relayed.
    const [k] = await loggedIds(pages[0]);
    await waitAllContiguous(pages, k, k, `every tab shows the snapshot #${k}`);

    // The burst; the leader tab is closed after the 20th POST, while the rest keep coming.
    const leader = pages[roles.indexOf('leader')];
    const rest = pages.filter((p) => p !== leader);
    let closedAt = 0;
    let closing = null;
    const burst = (async () => {
      for (let i = 1; i <= BURST; i++) {
        await recordSpending(server.base, tok, 100, `burst ${i}`);
        if (i === 20) {
          closedAt = Date.now();
          closing = leader.close();
        }
      }
    })();
    const takeover = await until('the leader tab to be closed', () => closedAt, WAIT_MS, 5)
      .then(() => until('another tab to lead', async () => {
        for (const page of rest) if (await role(page) === 'leader') return Date.now() - closedAt;
        return 0;
      }, WAIT_MS, 20));
    await burst;
    await closing;
    check(takeover <= 2000, `another tab leads ${takeover} ms after the leader closed (≤ 2000)`);
    await waitAllContiguous(rest, k, k + BURST,
      `all ${rest.length} remaining tabs show #${k}..#${k + BURST}, each once, in order`);
    const newLeader = [];
    for (const page of rest) if (await role(page) === 'leader') newLeader.push(page);
    check(newLeader.length === 1, 'exactly one tab leads after the handover');
    await expectText(newLeader[0], '#state', 'live', { quiet: true });
    const after = await until('one stream again', async () => {
      const now = await health(server.base, tok);
      return now.connectedClients === 1 && now;
    });
    check(after.connectedClients === 1, 'the server sees one stream after the handover');
    check(errors.length === 0, `no script errors in the tabs ${errors.join('; ')}`);
    return k + BURST;
  } finally {
    for (const page of pages) if (!page.isClosed()) await page.close();
  }
}

export async function fallbackStreams(browser, server, tok, lastId) {
  await until('no stream left from the last scenario',
    async () => (await health(server.base, tok)).connectedClients === 0);
  const count = 3; // under the browser's six connections per host, with room for the fetches
  const url = `${server.base}/#token=${encodeURIComponent(tok)}`;
  const { pages, errors } = await openTabs(browser, url, count, { noBroadcastChannel: true });
  try {
    for (const page of pages) await expectText(page, '#state', 'live', { quiet: true });
    const roles = await Promise.all(pages.map(role));
    check(roles.every((r) => r === 'solo'), `without BroadcastChannel every tab is solo: ${roles}`);
    const h = await health(server.base, tok);
    check(h.connectedClients === count,
      `one stream per tab: connectedClients ${h.connectedClients}`);
    await waitAllContiguous(pages, lastId, lastId, `every tab has its own snapshot #${lastId}`);
    for (let i = 1; i <= 10; i++) await recordSpending(server.base, tok, 100, `solo ${i}`);
    await waitAllContiguous(pages, lastId, lastId + 10,
      `every solo tab shows #${lastId}..#${lastId + 10}, each once, in order`);
    check(errors.length === 0, `no script errors in the tabs ${errors.join('; ')}`);
    return lastId + 10;
  } finally {
    for (const page of pages) await page.close();
  }
}

export async function tokenRenewal(browser, server, db, statics, lastId) {
  const TTL = 4;
  const issued = [];
  statics.route('/token', () => {
    const tok = execFileSync(BIN, ['token', '13', '--ttl', String(TTL), '--db', db])
      .toString().trim();
    issued.push(tok);
    return tok;
  });
  const html = replaceOnce(snippet('module'), "'http://127.0.0.1:8989/periode-sse.js'",
    JSON.stringify(`${server.base}/periode-sse.js`));
  statics.setPage(`<!doctype html><meta charset="utf-8"><title>module snippet</title>\n${html}`);
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  try {
    await page.goto(`http://127.0.0.1:${statics.port}/`);
    await expectText(page, '#state', 'live');
    await expectText(page, '#spending', await spendingAt(server, issued[0]));
    await page.evaluate(() => {
      window.seen = [];
      window.states = [];
      window.renewals = 0;
      spending.addEventListener('notification', (e) => window.seen.push(e.detail.id));
      spending.addEventListener('state', (e) => window.states.push(e.detail.state));
      spending.addEventListener('connected', (e) => { if (e.detail.renewed) window.renewals++; });
    });
    const firstExp = JSON.parse(Buffer.from(issued[0].split('.')[1], 'base64url')).exp;
    // POSTs for 2.5 token lifetimes: at least two renewals happen while they arrive.
    const endAt = Date.now() + 2.5 * TTL * 1000;
    let posted = 0;
    while (Date.now() < endAt) {
      await recordSpending(server.base, issued[issued.length - 1], 100, `renewal ${++posted}`);
      await sleep(100);
    }
    check(Date.now() / 1000 > firstExp, 'the first token expired during the test');
    const ids = await until('every notification', async () => {
      const seen = await page.evaluate(() => window.seen);
      return seen.length >= posted && seen;
    });
    check(contiguous(ids, lastId + 1, lastId + posted),
      `${posted} notifications across the renewals, contiguous, each once: ` +
      `#${ids[0]}..#${ids[ids.length - 1]}`);
    const { states, renewals } = await page.evaluate(() => ({ states, renewals }));
    check(renewals >= 2, `the stream was renewed ${renewals} times with fresh tokens`);
    check(issued.length >= 3, `getToken() was asked ${issued.length} times`);
    check(states.length === 0, `the page stayed live throughout: states ${states.join(',')}`);
    const after = await until('one stream after the renewals', async () => {
      const now = await health(server.base, issued[issued.length - 1]);
      return now.connectedClients === 1 && now;
    });
    check(after.connectedClients === 1, 'each old stream was closed once its successor was up');
    check(errors.length === 0, `no script errors ${errors.join('; ')}`);
    check(!issued.some((tok) => server.log().includes(tok)), 'no token in the server log');
    return lastId + posted;
  } finally {
    await page.close();
  }
}

async function spendingAt(server, tok) {
  const res = await fetch(`${server.base}/api/periode-limit/notifications/status`, {
    headers: { Authorization: `Bearer ${tok}` }, signal: AbortSignal.timeout(5000),
  });
  const s = await res.json();
  return `${s.currentSpending} / ${s.maxLimit} (${s.currentPercentage} %)` +
    (s.isAlert ? ' — past the alert threshold' : '');
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** Streams and server memory for eight tabs, one stream per tab and then shared. */
export async function measureTabs(browser, server, tok) {
  const url = `${server.base}/#token=${encodeURIComponent(tok)}`;
  const rows = [];
  const idle = rssKiB(server.child.pid);
  for (const [name, noBroadcastChannel] of [['one stream per tab', true], ['shared', false]]) {
    await until('no stream', async () => (await health(server.base, tok)).connectedClients === 0);
    const { pages } = await openTabs(browser, url, TABS, { noBroadcastChannel, blocked: true });
    await sleep(3000); // what can connect has connected (the rest wait in the browser's queue)
    const states = await Promise.all(pages.map((p) => p.textContent('#state', { timeout: 500 })
      .catch(() => '(not loaded)')));
    const h = await health(server.base, tok);
    rows.push({ name, streams: h.connectedClients, live: states.filter((s) => s === 'live').length,
      rssKiB: rssKiB(server.child.pid) });
    for (const page of pages) await page.close();
  }
  console.log(`measure: server RSS with no tab open ${idle} KiB`);
  for (const r of rows) {
    console.log(`measure: ${TABS} tabs, ${r.name}: ${r.streams} streams, ${r.live} tabs live, ` +
      `server RSS ${r.rssKiB} KiB`);
  }
}
