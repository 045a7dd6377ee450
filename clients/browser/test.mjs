// The live page and the README snippet in headless Chromium (Debian's /usr/bin/chromium),
// driven by playwright-core over the DevTools protocol.
//
// 1. The live page at / with the demo token in the fragment: "live", 267000 / 200000, alert.
// 2. A transaction through the page's form moves the gauge (272000).
// 3. SIGTERM; a server restarted on the same database and port records a transaction (POST from
//    this process) while the page is away; the module reconnects by itself with lastEventId
//    and the page shows it (277000) with the next event id — nothing lost, nothing repeated.
//    Then the server freezes (SIGSTOP): heartbeats stop, the module's watchdog reopens from the
//    last id once it answers again.
// 4. README.md's snippets, as written, on a page from another origin allowed by
//    --cors-origin: the stream shows the spending, the fetch POST records (preflight with
//    Authorization), and the browser's resume after a restart passes CORS too; from an origin
//    not allowed the browser gets nothing.
// 5. The browser module in many tabs (tabs.mjs): eight tabs share one stream, the leader tab
//    closes mid-burst and another takes over; without BroadcastChannel one stream per tab;
//    README's module snippet renews 4-second tokens with no gap.
// 6. Tickets (tickets.mjs): every stream the module opened (live page and tabs) carried a
//    fresh single-use ticket and no token, as the browser's own requests and the server's
//    access log (--access-log) both show; no ticket and no token reached the server log.
// Screenshots go to target/browser/ (CI artifact); UPDATE_SCREENSHOT=1 also copies the live
// page's to docs/screenshot.png.
import { chromium } from 'playwright-core';
import { copyFileSync, mkdirSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import {
  ROOT, startServer, stopQuietly, token, recordSpending, tempDir, check,
} from '../server.mjs';
import {
  OUT, WAIT_MS, expectText, loggedIds, snippet, replaceOnce, serveStatic,
} from './util.mjs';
import {
  moduleServed, sharedStream, fallbackStreams, tokenRenewal, measureTabs,
} from './tabs.mjs';
import { watchStreams, checkTicketUrls, checkTicketStreams } from './tickets.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const RETRY_MS = 2000; // long enough that the POST after the restart lands before the page is back

async function livePage(browser, server, db, tok, args) {
  const page = await browser.newPage();
  await page.setViewportSize({ width: 820, height: 640 });
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  try {
    await page.goto(`${server.base}/#token=${encodeURIComponent(tok)}`);
    await expectText(page, '#state', 'live');
    await expectText(page, '#spent', '267000');
    await expectText(page, '#limit', '200000');
    await expectText(page, '#percent', '133.5 %');
    await expectText(page, '#gauge', 'true', { attr: 'data-alert' });
    // The period comes from /status, fetched beside the stream: wait for it, don't race it.
    await page.waitForFunction(
      () => /^\d{4}-\d\d-01 → \d{4}-\d\d-\d\d \(UTC\)$/.test(document.querySelector('#period').textContent),
      null, { timeout: 5000 }).catch(() => {});
    const period = await page.textContent('#period');
    check(/^\d{4}-\d\d-01 → \d{4}-\d\d-\d\d \(UTC\)$/.test(period), `period ${period}`);
    await page.waitForFunction(() => /\d/.test(document.querySelector('#heartbeat').textContent),
      null, { timeout: 5000 });
    check(true, `heartbeat shown: ${await page.textContent('#heartbeat')}`);
    const [k] = await loggedIds(page);

    // The form posts with the Authorization header; the stream brings the new status back.
    await page.fill('#amount', '5000');
    await page.fill('#description', 'browser test');
    await page.click('#record');
    await expectText(page, '#spent', '272000');
    check((await page.textContent('#formmsg')).startsWith('recorded'), 'the form says recorded');
    check((await loggedIds(page)).join() === `${k},${k + 1}`, `log ids ${k}, ${k + 1}`);

    // Restart under the page's feet; record while it is away.
    await server.stop();
    const firstLog = server.log();
    await expectText(page, '#state', 'reconnecting');
    server = await startServer({ db, listen: new URL(server.base).host, args });
    await recordSpending(server.base, tok, 5000, 'while the page was away');
    check(await page.textContent('#state') === 'reconnecting', 'recorded before the page was back');
    await expectText(page, '#spent', '277000', { timeout: 3 * RETRY_MS + WAIT_MS });
    await expectText(page, '#state', 'live');
    check((await loggedIds(page)).join() === `${k},${k + 1},${k + 2}`,
      `event id continues: ${k}, ${k + 1}, ${k + 2} (replayed once, no snapshot)`);
    await page.waitForTimeout(1200); // a heartbeat on the new stream, for the screenshot
    check(pageErrors.length === 0, `no script errors on the page ${pageErrors.join('; ')}`);
    check(!(firstLog + server.log()).includes(tok), 'the token is not in the server log');

    const shot = join(OUT, 'live-page.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);
    if (process.env.UPDATE_SCREENSHOT) {
      copyFileSync(shot, join(ROOT, 'docs/screenshot.png'));
      console.log('copied to docs/screenshot.png');
    }

    // A connection that dies silently (server frozen: no FIN, no error): heartbeats stop, the
    // page's watchdog reopens from the last id once the server answers again.
    // The watchdog arms once it has seen two heartbeats on one connection (the period).
    await page.waitForFunction(() => window.periodeClient._beatPeriodMs > 0, null,
      { timeout: 5000 });
    server.child.kill('SIGSTOP');
    try {
      await page.waitForFunction(() => [...document.querySelectorAll('#log li')]
        .some((li) => li.textContent.includes('no heartbeat')), null, { timeout: WAIT_MS });
    } finally {
      server.child.kill('SIGCONT');
    }
    check(true, 'the watchdog noticed the missing heartbeats');
    await expectText(page, '#state', 'live');
    await recordSpending(server.base, tok, 1000);
    await expectText(page, '#spent', '278000');
    check((await loggedIds(page)).join() === `${k},${k + 1},${k + 2},${k + 3}`,
      'after the watchdog reopen: nothing lost, nothing repeated');

    // A token the server refuses: the browser gives up (CLOSED) and the page says why.
    await page.goto(`${server.base}/#token=not.a.token`);
    await page.reload();
    await expectText(page, '#state', 'token refused');
  } finally {
    await page.close();
  }
  return server;
}

async function snippetPage(browser, server, db, tok, statics, args) {
  const html = replaceOnce(replaceOnce(snippet('eventsource'),
    "'http://127.0.0.1:8989'", JSON.stringify(server.base)),
  "'PASTE-A-USER-TOKEN-HERE'", JSON.stringify(tok));
  statics.setPage(`<!doctype html><meta charset="utf-8"><title>snippet</title>\n${html}`);
  const page = await browser.newPage();
  await page.setViewportSize({ width: 640, height: 200 });
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  try {
    // Allowed origin: the stream delivers, and a cross-origin POST with Authorization works.
    await page.goto(`http://127.0.0.1:${statics.port}/`);
    await expectText(page, '#spending', '278000 / 200000 (139 %) — past the alert threshold');
    await page.evaluate(() => {
      window.seenIds = [];
      stream.addEventListener('notification', (e) => window.seenIds.push(Number(e.lastEventId)));
    });
    await page.evaluate(`(async () => { ${snippet('fetch')} })()`);
    check(true, 'the fetch snippet recorded 5000 from the allowed origin (preflight passed)');
    await expectText(page, '#spending', '283000 / 200000 (141.5 %) — past the alert threshold');

    // Cross-origin resume: the browser's reconnection (with Last-Event-ID) passes CORS too.
    await server.stop();
    server = await startServer({ db, listen: new URL(server.base).host, args });
    await recordSpending(server.base, tok, 5000, 'while the snippet was away');
    await recordSpending(server.base, tok, 5000, 'while the snippet was away');
    await expectText(page, '#spending', '293000 / 200000 (146.5 %) — past the alert threshold',
      { timeout: 3 * RETRY_MS + WAIT_MS });
    const ids = await page.evaluate(() => window.seenIds);
    check(ids.length === 3 && ids[1] === ids[0] + 1 && ids[2] === ids[0] + 2,
      `cross-origin resume replayed both missed notifications: ids ${ids.join(', ')}`);
    check(pageErrors.length === 0, `no script errors ${pageErrors.join('; ')}`);
    await page.screenshot({ path: join(OUT, 'snippet.png') });

    // Same page from an origin not on the list (localhost is not 127.0.0.1): blocked.
    await page.goto(`http://localhost:${statics.port}/`);
    await page.waitForFunction(() => stream.readyState === EventSource.CLOSED, null,
      { timeout: WAIT_MS });
    check(await page.textContent('#spending') === 'connecting…',
      'from an origin not allowed the browser blocks the stream');
  } finally {
    await page.close();
  }
  return server;
}

async function main() {
  mkdirSync(OUT, { recursive: true });
  const db = join(tempDir('browser'), 'page.db');
  const statics = await serveStatic();
  const args = ['--retry-ms', String(RETRY_MS), '--access-log',
    '--cors-origin', `http://127.0.0.1:${statics.port}`];
  let server = await startServer({ db, args });
  const tok = token(db);
  // A fresh profile for every run: no cache, no stored state from an earlier one.
  const browser = await chromium.launchPersistentContext(mkdtempSync(join(OUT, 'profile-')), {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const streams = watchStreams(browser);
  try {
    await moduleServed(server);
    server = await livePage(browser, server, db, tok, args);
    checkTicketUrls('the live page', streams.take());
    server = await snippetPage(browser, server, db, tok, statics, args);
    streams.take(); // README's plain EventSource snippet: access_token, by design
    const logFrom = server.log().length;
    let lastId = await sharedStream(browser, server, tok);
    lastId = await fallbackStreams(browser, server, tok, lastId);
    lastId = await tokenRenewal(browser, server, db, statics, lastId);
    checkTicketStreams('the module in tabs', streams.take(), server, logFrom);
    if (process.env.MEASURE) await measureTabs(browser, server, tok);
  } finally {
    await browser.close();
    await stopQuietly(server);
    await statics.close();
  }
}

const watchdog = setTimeout(() => {
  console.error('browser test: overall time limit (240 s) reached');
  process.exit(1);
}, 240000);
main().then(
  () => { clearTimeout(watchdog); console.log('browser: 1 passed, 0 failed'); },
  (err) => {
    console.error(err);
    console.log('browser: 0 passed, 1 failed');
    process.exit(1);
  },
);
