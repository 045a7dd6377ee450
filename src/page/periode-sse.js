// periode-sse.js: the browser client of periode-sse, served by the server at GET /periode-sse.js.
// A dependency-free ES module; see the README's "The browser module" for its API.
//
// One stream per browser for a user and server: the tabs elect a leader with a Web Lock named
// for the server and the user; the leader holds the one EventSource and relays every event to
// the other tabs over a BroadcastChannel of the same name. When the leader goes (tab closed,
// client.close()), its lock is released, another tab is granted it and resumes from the last
// id it saw (`lastEventId`). Every tab drops ids it has already seen, so each notification is
// delivered to every tab once and in order. Without Web Locks or BroadcastChannel every tab
// holds its own stream ("solo").
//
// The stream is authenticated with a single-use ticket (POST …/ticket with the bearer token,
// then `?ticket=`), a fresh one for every connection; a server without that endpoint answers
// 404, and then the token goes in `access_token` instead. Reconnection is ours, not the
// EventSource's: a used ticket cannot be replayed, so after any error the stream is closed and
// reopened with a new ticket, `lastEventId` and a growing, jittered delay. Before the token
// expires the page's getToken() is asked for a new one and a second stream is opened with it;
// the old one is closed once the new one is connected, so the server's end of the old stream
// at `exp` is never seen, and the overlap is removed by the id check.

const STREAM_PATH = '/api/periode-limit/notifications/stream';
const TICKET_PATH = '/api/periode-limit/notifications/ticket';
const HEALTH_PATH = '/api/periode-limit/notifications/health';

/** Renew this long before `exp` at most; a quarter of the token's lifetime for short ones. */
const RENEW_AHEAD_MAX_MS = 60000;
/** A stream silent for three heartbeat periods plus this is taken as dead. */
const WATCHDOG_SLACK_MS = 2000;

/** The states a client reports, in the order a first connection meets them. */
export const STATES = ['connecting', 'live', 'reconnecting', 'refused', 'closed'];

/** The server refused the token (401/403): a new token is needed, not just a new attempt. */
class Refused extends Error {
  constructor(status) {
    super(`the server refused the token (${status})`);
    this.status = status;
  }
}

/** The claims the module reads from a JWT's payload (it verifies nothing: the server does). */
export function tokenClaims(token) {
  try {
    const part = String(token).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    const user = json.sub ?? json.userId;
    return {
      user: user == null ? null : String(user),
      expMs: typeof json.exp === 'number' ? json.exp * 1000 : null,
    };
  } catch (e) {
    return { user: null, expMs: null };
  }
}

/** Open a client: `connect({ getToken, server?, onNotification?, onState? })`. */
export function connect(options) {
  return new PeriodeClient(options);
}

export class PeriodeClient extends EventTarget {
  /**
   * options.getToken: () => string | Promise<string>, a user JWT; called at start, before the
   *   token expires, and when the server refuses it.
   * options.server: the server's origin; default: where this module was loaded from.
   * options.share: false opens one stream per tab even where sharing is possible.
   * options.onNotification(data, id), options.onState(state, detail): shorthands for the
   *   'notification' and 'state' events.
   * options.retryMinMs / retryMaxMs: the reconnection delay's first step and cap (each delay
   *   is drawn between the step and twice it, so that a restart is not met by every browser
   *   in the same instant).
   */
  constructor(options = {}) {
    super();
    if (typeof options.getToken !== 'function') throw new TypeError('getToken is required');
    this.server = String(options.server || new URL(import.meta.url).origin).replace(/\/+$/, '');
    this.state = 'connecting';
    /** 'leader' (holds the shared stream), 'follower' (is relayed to), 'solo' (own stream). */
    this.role = null;
    /** The last notification id delivered to this tab, and that notification. */
    this.lastEventId = null;
    this.last = null;
    this.sharing = options.share !== false && typeof BroadcastChannel === 'function' &&
      typeof navigator !== 'undefined' && !!navigator.locks &&
      typeof navigator.locks.request === 'function';
    this._getToken = options.getToken;
    this._retryMinMs = options.retryMinMs ?? 1000;
    this._retryMaxMs = options.retryMaxMs ?? 30000;
    this._token = null;
    this._tokenAt = 0;       // when the current token was received, ms
    this._noTickets = false; // the server answered 404 to the ticket endpoint
    this._closed = false;
    this._leading = false;
    this._release = null;    // ends the lock's callback, handing the stream to another tab
    this._abort = new AbortController();
    this._channel = null;
    this._live = null;       // the EventSource events come from
    this._pending = null;    // one being opened (a reconnection, or a renewal beside _live)
    this._attempt = 0;       // the newest open attempt: older ones' results are dropped
    this._retries = 0;
    this._timers = { retry: 0, renew: 0, watchdog: 0 };
    this._beatAt = 0;        // last sign of life on the live stream, ms
    this._heartbeatAt = 0;   // last heartbeat on the live stream, ms
    this._beatPeriodMs = 0;  // the heartbeat period, as observed between two heartbeats
    this._everLive = false;
    if (options.onNotification) {
      this.addEventListener('notification',
        (e) => options.onNotification(e.detail.data, e.detail.id));
    }
    if (options.onState) {
      this.addEventListener('state', (e) => options.onState(e.detail.state, e.detail));
    }
    this._start();
  }

  /** Stop: the stream closes (or passes to another tab) and no event follows. */
  close() {
    if (this._closed) return;
    // Said to this tab only: the other tabs go on, one of them taking the stream over.
    this.state = 'closed';
    this.dispatchEvent(new CustomEvent('state', { detail: { state: 'closed' } }));
    this._closed = true;
    this._abort.abort();
    for (const t of Object.values(this._timers)) clearTimeout(t);
    clearInterval(this._timers.watchdog);
    this._closeStreams();
    if (this._release) this._release();
    if (this._channel) this._channel.close();
  }

  // ---- start and leadership ----

  async _start() {
    let token;
    try {
      token = await this._freshToken();
    } catch (err) {
      if (this._closed) return;
      this._setState('refused', { reason: err.message });
      this._timers.retry = setTimeout(() => this._start(), this._nextDelay());
      return;
    }
    if (this._closed) return;
    const { user } = tokenClaims(token);
    // A token whose user cannot be read is one the server will refuse: no lock is worth it.
    if (!this.sharing || user == null) {
      this._setRole('solo');
      this._lead();
      return;
    }
    const name = `periode-sse ${this.server} user ${user}`;
    this._channel = new BroadcastChannel(name);
    this._channel.onmessage = (ev) => this._onMessage(ev.data);
    this._setRole('follower');
    this._post({ t: 'hello' });
    navigator.locks.request(name, { signal: this._abort.signal }, () => this._lead())
      .catch(() => { /* aborted by close() before the lock came */ });
  }

  /** Hold the stream until close(); the returned promise is the lock's lifetime. */
  _lead() {
    if (this._closed) return Promise.resolve();
    this._leading = true;
    if (this.role !== 'solo') this._setRole('leader');
    this._timers.watchdog = setInterval(() => this._watch(), 1000);
    this._open('start');
    return new Promise((resolve) => { this._release = resolve; });
  }

  // ---- the stream (leader or solo) ----

  async _open(kind) {
    if (this._closed || !this._leading) return;
    const attempt = ++this._attempt;
    clearTimeout(this._timers.retry);
    if (this._pending) { this._pending.close(); this._pending = null; }
    if (kind !== 'renew') this._setState(this._everLive ? 'reconnecting' : 'connecting');
    let url;
    try {
      url = await this._streamUrl();
    } catch (err) {
      if (attempt === this._attempt) this._failed(kind, err);
      return;
    }
    if (this._closed || attempt !== this._attempt) return;
    const resumeFrom = this.lastEventId;
    if (resumeFrom != null) url += '&lastEventId=' + encodeURIComponent(resumeFrom);
    const es = new EventSource(url);
    this._pending = es;
    let connected = false;
    let first = true;
    es.addEventListener('connected', (ev) => {
      if (es !== this._pending) return;
      connected = true;
      const old = this._live;
      this._live = es;
      this._pending = null;
      if (old) old.close(); // a renewal: the new stream is up, the old one can go
      clearTimeout(this._timers.retry); // a retry planned while this one was opening
      this._retries = 0;
      this._everLive = true;
      this._beatAt = Date.now();
      this._heartbeatAt = 0;
      this._setState('live');
      this._emit('connected', { message: parse(ev.data).message, renewed: kind === 'renew' });
      this._scheduleRenew();
    });
    es.addEventListener('notification', (ev) => {
      if (es !== this._live && es !== this._pending) return;
      const id = Number(ev.lastEventId);
      // Resumed from k, the server sends only ids above k; a smaller one means it no longer
      // knows k (a database restored from a backup) and started afresh: follow it.
      const reset = first && resumeFrom != null && id <= resumeFrom;
      first = false;
      this._beatAt = Date.now();
      this._deliver(id, parse(ev.data), reset, true);
    });
    es.addEventListener('heartbeat', (ev) => {
      if (es !== this._live) return;
      const now = Date.now();
      if (this._heartbeatAt) this._beatPeriodMs = now - this._heartbeatAt;
      this._heartbeatAt = now;
      this._beatAt = now;
      const detail = parse(ev.data);
      this._emit('heartbeat', detail);
      this._post({ t: 'hb', detail });
    });
    es.onerror = () => {
      es.close();
      if (this._closed) return;
      if (es === this._live) {
        this._live = null;
        // A renewal in flight becomes the reconnection; otherwise start one.
        if (this._pending) this._setState('reconnecting', { reason: 'stream lost' });
        else this._retry('stream lost');
      } else if (es === this._pending && !connected) {
        this._pending = null;
        this._failed(kind, null);
      }
    };
  }

  /** The stream URL for one connection: a fresh ticket, or the token where there are none. */
  async _streamUrl() {
    let token = await this._currentToken();
    if (!this._noTickets) {
      let res = await this._ticket(token);
      if (res.status === 401) {
        // Expired early, or revoked: one more try with a token asked for now.
        token = await this._freshToken();
        res = await this._ticket(token);
      }
      if (res.status === 201) {
        const body = await res.json();
        return this.server + STREAM_PATH + '?ticket=' + encodeURIComponent(body.ticket);
      }
      if (res.status === 401 || res.status === 403) throw new Refused(res.status);
      if (res.status !== 404) throw new Error(`ticket: ${res.status}`);
      // No ticket endpoint (a server from before tickets): the token goes in the URL.
      this._noTickets = true;
    }
    return this.server + STREAM_PATH + '?access_token=' + encodeURIComponent(token);
  }

  _ticket(token) {
    return fetch(this.server + TICKET_PATH, {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
      signal: this._abort.signal,
    });
  }

  /** An open attempt failed before the stream was up. */
  async _failed(kind, err) {
    if (this._closed || !this._leading) return;
    if (!err && this._noTickets) {
      // EventSource does not say why it failed: with the token in the URL, ask /health.
      try {
        const res = await fetch(this.server + HEALTH_PATH, {
          headers: { Authorization: 'Bearer ' + this._token },
          cache: 'no-store', credentials: 'omit', signal: this._abort.signal,
        });
        if (res.status === 401 || res.status === 403) err = new Refused(res.status);
      } catch (e) { /* down: an ordinary retry */ }
      if (this._closed) return;
    }
    if (err instanceof Refused) {
      this._token = null; // the next attempt asks the page for a new one
      this._setState('refused', { status: err.status, reason: err.message });
      this._schedule('retry', () => this._open('retry'), this._nextDelay());
      return;
    }
    if (kind === 'renew' && this._live) {
      // The old stream still runs (until exp + the server's leeway): try again shortly.
      this._schedule('renew', () => this._open('renew'), this._nextDelay());
      return;
    }
    this._retry(err ? err.message : 'stream refused or unreachable');
  }

  _retry(reason) {
    if (this._closed || !this._leading) return;
    this._setState('reconnecting', { reason });
    this._schedule('retry', () => this._open('retry'), this._nextDelay());
  }

  /** Between the step and twice it, the step doubling up to the cap. */
  _nextDelay() {
    const step = Math.min(this._retryMaxMs, this._retryMinMs * 2 ** Math.min(this._retries++, 16));
    return step * (1 + Math.random());
  }

  /** A silent death (sleep, a dropped NAT entry) raises no error: heartbeats just stop. */
  _watch() {
    if (!this._live || !this._beatPeriodMs) return;
    const silentMs = Date.now() - this._beatAt;
    if (silentMs < 3 * this._beatPeriodMs + WATCHDOG_SLACK_MS) return;
    const es = this._live;
    this._live = null;
    this._beatPeriodMs = 0;
    es.close();
    this._retry(`no heartbeat for ${Math.round(silentMs / 1000)} s`);
  }

  _closeStreams() {
    for (const es of [this._live, this._pending]) if (es) es.close();
    this._live = null;
    this._pending = null;
  }

  // ---- tokens ----

  /** The current token, or a new one when it is missing or due for renewal. */
  async _currentToken() {
    if (this._token && Date.now() < this._renewAt()) return this._token;
    return this._freshToken();
  }

  async _freshToken() {
    const token = await this._getToken();
    if (typeof token !== 'string' || token === '') throw new Refused('no token');
    this._token = token;
    this._tokenAt = Date.now();
    return token;
  }

  /** When to renew: before `exp` by a quarter of the token's lifetime, at most a minute. */
  _renewAt() {
    const { expMs } = tokenClaims(this._token);
    if (expMs == null) return Infinity;
    const lifetime = Math.max(0, expMs - this._tokenAt);
    return expMs - Math.min(RENEW_AHEAD_MAX_MS, lifetime / 4);
  }

  _scheduleRenew() {
    clearTimeout(this._timers.renew);
    const at = this._renewAt();
    if (at === Infinity) return;
    // At least a second apart, whatever the token says, so a page that keeps handing out an
    // expired token cannot make a loop of it.
    const delay = Math.max(1000, at - Date.now());
    this._timers.renew = setTimeout(() => this._renew(), Math.min(delay, 2 ** 31 - 1));
  }

  async _renew() {
    if (this._closed || !this._leading || !this._live) return;
    const oldExp = tokenClaims(this._token).expMs;
    try {
      await this._freshToken();
    } catch (err) {
      this._schedule('renew', () => this._renew(), this._nextDelay());
      return;
    }
    const newExp = tokenClaims(this._token).expMs;
    if (newExp != null && oldExp != null && newExp <= oldExp) {
      // Not fresher than the one we have: ask again later. The stream runs until exp + leeway.
      this._schedule('renew', () => this._renew(), 5000);
      return;
    }
    this._open('renew');
  }

  // ---- delivery and relay ----

  /** Hand a notification to this tab unless it has had that id; relay it if leading. */
  _deliver(id, data, reset, fromStream) {
    if (!Number.isFinite(id)) return;
    if (!reset && this.lastEventId != null && id <= this.lastEventId) return;
    this.lastEventId = id;
    this.last = { id, data };
    if (fromStream) this._post({ t: 'n', id, data, reset });
    this._emit('notification', { id, data, reset });
  }

  _onMessage(m) {
    if (this._closed || !m || typeof m !== 'object') return;
    if (m.t === 'hello') {
      // A new tab: tell it where we are and what the latest notification was.
      if (this._leading) this._post({ t: 'sync', state: this.state, last: this.last });
      return;
    }
    if (this._leading) return; // a leader's events come from its stream only
    switch (m.t) {
      case 'n': this._deliver(Number(m.id), m.data, !!m.reset, false); break;
      case 'sync':
        if (m.last) this._deliver(Number(m.last.id), m.last.data, false, false);
        this._setState(m.state);
        break;
      case 'state': this._setState(m.state, m.detail); break;
      case 'hb': this._emit('heartbeat', m.detail); break;
      case 'connected': this._emit('connected', m.detail); break;
      default: break;
    }
  }

  _post(message) {
    if (this._channel && !this._closed) {
      try { this._channel.postMessage(message); } catch (e) { /* closed channel */ }
    }
  }

  _emit(type, detail) {
    if (this._closed) return;
    if (type === 'connected' && this._leading) this._post({ t: 'connected', detail });
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, detail = {}) {
    if (this._closed || !STATES.includes(state)) return;
    if (this._leading) this._post({ t: 'state', state, detail });
    if (state === this.state && !detail.reason) return;
    this.state = state;
    this._emit('state', Object.assign({ state }, detail));
  }

  _setRole(role) {
    this.role = role;
    this._emit('role', { role });
  }

  _schedule(name, fn, delayMs) {
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(fn, delayMs);
  }
}

function parse(text) {
  try { return JSON.parse(text); } catch (e) { return {}; }
}
