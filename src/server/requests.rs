//! Reading requests and answering them: the request half of a connection's life.
//!
//! Bytes are read into a shared scratch buffer, every complete request at its front is served
//! (pipelining works), and only a half-received request gets a buffer of its own. Answers are
//! framed here; what they say comes from `api`.

use super::commit::QueuedWrite;
use super::{Now, Server};
use super::{IO_BUDGET_PER_TURN, KEEP_ALIVE_TIMEOUT_MS, READ_CHUNK, REQUEST_TIMEOUT_MS};
use crate::api::{self, Ctx, Outcome};
use crate::conn::{InBuf, Phase, ReadOutcome};
use crate::http::{self, Parse, Request};
use crate::metrics::CloseReason;
use crate::metrics::Gauges;

/// What an answer's head depends on besides the answer itself.
#[derive(Clone, Default)]
pub(super) struct Reply {
    pub(super) keep_alive: bool,
    pub(super) http10: bool,
    /// The request's `Origin`, when CORS allows it.
    pub(super) allowed_origin: Option<Vec<u8>>,
    /// The token came in the query string: nothing may cache the answer.
    pub(super) token_in_query: bool,
    pub(super) route: &'static str,
}

impl Reply {
    fn persistence(&self) -> http::Persistence {
        http::Persistence::of(self.keep_alive, self.http10)
    }
}

/// How far a read goes before it stops.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// Until `EAGAIN` or EOF: needed whenever no fresh event will tell us about what is left
    /// (a resumed read, a read the event said ends in EOF).
    ToTheEnd,
    /// Until a read returns less than it asked for: the socket is empty then, and anything
    /// arriving later raises a new edge-triggered event. One `recv` per request instead of a
    /// second that only says `EAGAIN`.
    UntilShortRead,
}

impl Server {
    /// `drain`: `UntilShortRead` for a fresh readiness event that did not report the peer's
    /// close, `ToTheEnd` otherwise (see `Drain`).
    pub(super) fn on_readable(&mut self, key: usize, now: Now, drain: Drain) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.doomed.is_some() {
            return;
        }
        match conn.phase {
            Phase::Request => self.read_requests(key, now, drain),
            // Reading resumes after the commit answers (see `commit_writes`).
            Phase::Committing => {}
            Phase::Stream(_) | Phase::Closing { .. } => self.read_and_discard(key, now, drain),
        }
    }

    /// Streams and closing connections expect nothing more from the client but its EOF.
    pub(super) fn read_and_discard(&mut self, key: usize, _now: Now, drain: Drain) {
        let mut buf = std::mem::take(&mut self.scratch_in);
        let mut budget = IO_BUDGET_PER_TURN;
        let outcome = loop {
            let Some(conn) = self.conns.get_mut(key) else {
                break None;
            };
            buf.clear();
            match conn.read_into(&mut buf, READ_CHUNK) {
                ReadOutcome::Data(n) => {
                    if n < READ_CHUNK && drain == Drain::UntilShortRead {
                        break None;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.again.push((key, conn.gen));
                        break None;
                    }
                }
                ReadOutcome::WouldBlock => break None,
                ReadOutcome::Eof | ReadOutcome::Gone => break Some(()),
            }
        };
        buf.clear();
        self.scratch_in = buf;
        if outcome.is_some() {
            let reason = match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::Closing { .. }) => CloseReason::Finished,
                _ => CloseReason::ClientGone,
            };
            self.close_later(key, reason);
        }
    }

    pub(super) fn read_requests(&mut self, key: usize, now: Now, drain: Drain) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (mut buf, mut started_ms) = match conn.inbuf.take() {
            Some(inbuf) => (inbuf.bytes, Some(inbuf.started_ms)),
            None => {
                let mut scratch = std::mem::take(&mut self.scratch_in);
                scratch.clear();
                (scratch, None)
            }
        };
        // Read what is there, but never more than one largest-possible request beyond what
        // is already buffered: the parser decides after that.
        let limit = http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES + 1;
        let mut eof = false;
        let mut gone = false;
        let mut budget = IO_BUDGET_PER_TURN + limit;
        let mut cut_short = false;
        while buf.len() < limit {
            if budget == 0 {
                cut_short = true;
                break;
            }
            let want = READ_CHUNK.min(limit - buf.len());
            match conn.read_into(&mut buf, want) {
                ReadOutcome::Data(n) => {
                    budget = budget.saturating_sub(n);
                    started_ms.get_or_insert(now.mono_ms);
                    if n < want && drain == Drain::UntilShortRead {
                        break;
                    }
                }
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Eof => {
                    eof = true;
                    break;
                }
                ReadOutcome::Gone => {
                    gone = true;
                    break;
                }
            }
        }
        if buf.len() >= limit {
            cut_short = true;
        }
        let consumed = self.serve_buffered(key, &buf, now);
        let rest = &buf[consumed..];
        let wants_more = self
            .conns
            .get(key)
            .is_some_and(|c| matches!(c.phase, Phase::Request | Phase::Committing));
        if gone {
            // Reset: nothing can reach the client any more.
            self.close_later(key, CloseReason::ClientGone);
        } else if eof {
            // The client will send nothing more, but may still read (a half-close): what it
            // asked for is answered, then the connection closes.
            if let Some(conn) = self.conns.get_mut(key) {
                conn.peer_closed = true;
            }
            match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::Committing) => {
                    for write in self.writes.iter_mut().filter(|w| w.key == key) {
                        write.reply.keep_alive = false;
                    }
                }
                Some(Phase::Request) => self.begin_close(key, CloseReason::ClientGone, now),
                _ => {}
            }
        } else if wants_more && !rest.is_empty() {
            let started =
                if consumed == 0 { started_ms.unwrap_or(now.mono_ms) } else { now.mono_ms };
            if let Some(conn) = self.conns.get_mut(key) {
                conn.inbuf = Some(Box::new(InBuf { bytes: rest.to_vec(), started_ms: started }));
                if matches!(conn.phase, Phase::Request) {
                    self.wheel.schedule(key, started + REQUEST_TIMEOUT_MS);
                }
            }
        }
        if cut_short && wants_more {
            if let Some(conn) = self.conns.get(key) {
                self.again.push((key, conn.gen));
            }
        }
        // Give the scratch back (keeping its capacity, not the conn's buffer's).
        if buf.capacity() >= self.scratch_in.capacity()
            && buf.capacity() <= 2 * (limit + READ_CHUNK)
        {
            buf.clear();
            self.scratch_in = buf;
        }
    }

    /// Parses and serves every complete request at the front of `buf`; returns the bytes used.
    pub(super) fn serve_buffered(&mut self, key: usize, buf: &[u8], now: Now) -> usize {
        let mut used = 0;
        while used < buf.len() {
            match self.conns.get(key) {
                Some(c) if c.doomed.is_none() && matches!(c.phase, Phase::Request) => {}
                _ => break,
            }
            match http::parse_request(&buf[used..]) {
                Parse::Partial => break,
                Parse::Reject(rejection) => {
                    let response =
                        api::Response::error(rejection.status, rejection.code, rejection.message);
                    let reply = Reply { keep_alive: false, route: "invalid", ..Reply::default() };
                    self.respond(key, &response, &reply, now);
                    return buf.len();
                }
                Parse::Complete(request, n) => {
                    used += n;
                    self.serve(key, &request, now);
                }
            }
        }
        used
    }

    pub(super) fn serve(&mut self, key: usize, request: &Request<'_>, now: Now) {
        let shutting_down = self.shutdown_deadline.is_some();
        let route = api::Route::of(request.path);
        let allowed_origin = match request.origin {
            Some(origin) if self.config.cors.allows(origin) => Some(origin.to_vec()),
            _ => None,
        };
        let reply = Reply {
            keep_alive: request.keep_alive && !shutting_down,
            http10: request.http10,
            allowed_origin,
            token_in_query: request.authorization.is_none()
                && request.query.contains("access_token"),
            route: route.label(),
        };
        let outcome = {
            let gauges = self.gauges();
            let metrics = &self.metrics;
            let render = move || metrics.render(&gauges);
            let ctx = Ctx {
                store: &self.store,
                registry: &self.registry,
                config: &self.config,
                secret: &self.secret,
                now_ms: now.epoch_ms,
                render_metrics: &render,
            };
            api::handle(request, &ctx)
        };
        match outcome {
            Outcome::Respond(response) => self.respond(key, &response, &reply, now),
            Outcome::Preflight => self.respond_preflight(key, &reply, now),
            Outcome::Stream(start) => self.start_stream(key, request, start, &reply, now),
            Outcome::Write(op) => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.phase = Phase::Committing;
                    self.wheel.cancel(key);
                    self.writes.push(QueuedWrite { key, gen: conn.gen, op, reply });
                }
            }
        }
    }

    pub(super) fn gauges(&self) -> Gauges {
        Gauges {
            connections_open: self.conns.len(),
            streams_open: self.registry.total(),
            users_with_streams: self.registry.users(),
            max_conns: self.max_conns,
        }
    }

    pub(super) fn write_cors(&self, out: &mut Vec<u8>, reply: &Reply) {
        if let Some(origin) = &reply.allowed_origin {
            http::header(out, "Access-Control-Allow-Origin", origin);
        }
        // With CORS on, every answer depends on Origin, allowed or not: a shared cache must
        // not hand one origin's answer to another.
        if self.config.cors.is_enabled() {
            http::header(out, "Vary", b"Origin");
        }
    }

    pub(super) fn respond(
        &mut self,
        key: usize,
        response: &api::Response,
        reply: &Reply,
        now: Now,
    ) {
        self.metrics.count_request(reply.route, response.status);
        let mut out = std::mem::take(&mut self.scratch_out);
        out.clear();
        http::start_head(&mut out, response.status);
        if !response.content_type.is_empty() {
            http::header(&mut out, "Content-Type", response.content_type.as_bytes());
        }
        if let Some(challenge) = response.www_authenticate {
            http::header(&mut out, "WWW-Authenticate", challenge.as_bytes());
        }
        if let Some(allow) = response.allow {
            http::header(&mut out, "Allow", allow.as_bytes());
        }
        if reply.token_in_query {
            http::header(&mut out, "Cache-Control", b"no-store");
        } else if let Some(cache) = response.cache_control {
            http::header(&mut out, "Cache-Control", cache.as_bytes());
        }
        self.write_cors(&mut out, reply);
        http::end_head(&mut out, response.status, response.body.len(), reply.persistence());
        out.extend_from_slice(response.body.as_bytes());
        self.send(key, &out, now);
        self.scratch_out = out;
        self.after_answer(key, reply.keep_alive, now);
    }

    pub(super) fn respond_preflight(&mut self, key: usize, reply: &Reply, now: Now) {
        self.metrics.count_request("options", 204);
        let mut out = std::mem::take(&mut self.scratch_out);
        out.clear();
        http::start_head(&mut out, 204);
        if reply.allowed_origin.is_some() {
            self.write_cors(&mut out, reply);
            http::header(&mut out, "Access-Control-Allow-Methods", b"GET, POST, PUT, OPTIONS");
            http::header(
                &mut out,
                "Access-Control-Allow-Headers",
                b"Authorization, Content-Type, Last-Event-ID",
            );
            http::header(&mut out, "Access-Control-Max-Age", b"600");
        }
        http::end_head(&mut out, 204, 0, reply.persistence());
        self.send(key, &out, now);
        self.scratch_out = out;
        self.after_answer(key, reply.keep_alive, now);
    }

    /// After a whole answer: wait for the next request, or close.
    pub(super) fn after_answer(&mut self, key: usize, keep_alive: bool, now: Now) {
        if !keep_alive {
            self.begin_close(key, CloseReason::Finished, now);
            return;
        }
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.doomed.is_none() {
                conn.phase = Phase::Request;
                self.wheel.schedule(key, now.mono_ms + KEEP_ALIVE_TIMEOUT_MS);
            }
        }
    }
}
