// Helpers shared by the browser scenarios: waits with deadlines, the page's log, README
// snippets, and a static server that plays "another origin" (and the app's token endpoint).
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, check } from '../server.mjs';

export const OUT = join(ROOT, 'target', 'browser');
export const WAIT_MS = 10000;

/** Wait until the element's text (or an attribute) equals the expected value. */
export async function expectText(page, selector, expected,
  { attr = null, timeout = WAIT_MS, quiet = false } = {}) {
  try {
    await page.waitForFunction(([sel, exp, at]) => {
      const el = document.querySelector(sel);
      return el && (at ? el.getAttribute(at) : el.textContent.trim()) === exp;
    }, [selector, expected, attr], { timeout, polling: 100 });
  } catch (err) {
    const got = await page.$eval(selector, (el, at) => (at ? el.getAttribute(at) : el.textContent),
      attr).catch(() => '(missing)');
    throw new Error(`${selector}${attr ? `[${attr}]` : ''}: wanted "${expected}", got "${got}"`);
  }
  if (!quiet) check(true, `${selector}${attr ? `[${attr}]` : ''} = ${expected}`);
}

/** Notification ids in the page's log, oldest first. */
export function loggedIds(page) {
  return page.$$eval('#log li[data-kind="notification"] .id',
    (spans) => spans.map((s) => Number(s.textContent.slice(1))).reverse());
}

/** Extract a marked ```block from README.md. */
export function snippet(name) {
  const md = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const f = '```';
  const m = new RegExp(`<!-- snippet:${name}\\b[^]*?-->\\s*${f}\\w*\\n([^]*?)${f}`).exec(md);
  if (!m) throw new Error(`README.md has no snippet:${name}`);
  return m[1];
}

export function replaceOnce(text, from, to) {
  const parts = text.split(from);
  if (parts.length !== 2) throw new Error(`the snippet must contain ${from} exactly once`);
  return parts.join(to);
}

/**
 * A static server for snippet pages: another origin than periode-sse's. `setPage` sets the
 * HTML at every path but those given to `route(path, handler)`.
 */
export function serveStatic() {
  let html = '';
  const routes = new Map();
  const srv = createServer((req, res) => {
    const handler = routes.get(new URL(req.url, 'http://x').pathname);
    if (handler) {
      const body = handler(req);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
      res.end(body);
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(html);
  });
  return new Promise((res) => srv.listen(0, '127.0.0.1', () => res({
    port: srv.address().port,
    setPage: (body) => { html = body; },
    route: (path, handler) => routes.set(path, handler),
    close: () => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }),
  })));
}

/** Poll `fn` until it returns a truthy value; its value, or an error naming `what`. */
export async function until(what, fn, timeoutMs = WAIT_MS, everyMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** GET /health for the token's user. */
export async function health(base, tok) {
  const res = await fetch(`${base}/api/periode-limit/notifications/health`, {
    headers: { Authorization: `Bearer ${tok}` }, signal: AbortSignal.timeout(5000),
  });
  if (res.status !== 200) throw new Error(`health: ${res.status}`);
  return res.json();
}

/** The ids are exactly first, first + 1, …, last. */
export function contiguous(ids, first, last) {
  if (ids.length !== last - first + 1) return false;
  return ids.every((id, i) => id === first + i);
}
