// Stream tickets seen from both ends (SPEC §8): the browser's own requests (every stream URL
// the module opens) and the server's access log (--access-log: method, path without query,
// status). Together they show that the module's streams were opened with tickets, one fresh
// ticket per stream, and that no token ever sat in a stream URL.
import { check } from '../server.mjs';

const STREAM_PATH = '/api/periode-limit/notifications/stream';
const TICKET_PATH = '/api/periode-limit/notifications/ticket';

/** Records the URL of every stream request any page of the browser context makes. */
export function watchStreams(context) {
  let urls = [];
  context.on('request', (req) => {
    let url;
    try { url = new URL(req.url()); } catch { return; }
    if (url.pathname === STREAM_PATH) urls.push(url);
  });
  return {
    /** The stream URLs requested since the last call, and forget them. */
    take() { const taken = urls; urls = []; return taken; },
  };
}

/** Access-log lines of the server log text, as { method, path, status }. */
function accessLines(logText) {
  const lines = [];
  for (const line of logText.split('\n')) {
    const m = / (GET|HEAD|POST|PUT|OPTIONS) (\/\S*) (\d{3}) \d+ /.exec(line);
    if (m) lines.push({ method: m[1], path: m[2], status: Number(m[3]), line });
  }
  return lines;
}

/** Each stream URL carries a ticket, never a token, and no ticket twice; the tickets. */
export function checkTicketUrls(what, urls) {
  check(urls.length > 0, `${what}: the module opened ${urls.length} streams`);
  const tickets = urls.map((u) => u.searchParams.get('ticket'));
  check(urls.every((u) => !u.searchParams.has('access_token')),
    `${what}: no token in any stream URL`);
  check(tickets.every((t) => /^[A-Za-z0-9_-]{22}$/.test(t ?? '')),
    `${what}: every stream URL carries a ticket (?ticket=, 22 base64url characters)`);
  check(new Set(tickets).size === tickets.length, `${what}: a fresh ticket for every stream`);
  return tickets;
}

/**
 * Checks the stream URLs the module requested (`urls`, from `watchStreams`) against the
 * server's log since `logFrom` (an offset into `server.log()`): each URL carries one ticket
 * and nothing else that authenticates, no ticket twice; the server minted at least as many
 * tickets as it opened streams, opened one for every URL, refused none, and logged no query
 * and no ticket.
 */
export function checkTicketStreams(what, urls, server, logFrom) {
  const tickets = checkTicketUrls(what, urls);

  const log = server.log().slice(logFrom);
  const access = accessLines(log);
  const streams = access.filter((a) => a.method === 'GET' && a.path === STREAM_PATH);
  const opened = streams.filter((a) => a.status === 200).length;
  const minted = access.filter((a) => a.method === 'POST' && a.path === TICKET_PATH &&
    a.status === 201).length;
  check(opened === urls.length,
    `${what}: the server's access log has ${opened} streams opened for ${urls.length} requested`);
  check(streams.every((a) => a.status === 200),
    `${what}: no stream request refused (${streams.map((a) => a.status).join(',')})`);
  check(minted >= opened, `${what}: ${minted} tickets minted for ${opened} streams`);
  check(!access.some((a) => a.path.includes('?')), `${what}: the access log has no query`);
  check(!tickets.some((t) => log.includes(t)), `${what}: no ticket in the server log`);
}
