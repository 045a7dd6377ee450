//! Reading requests and answering them: the request half of a connection's life.
//!
//! Bytes are read into a shared scratch buffer, every complete request at its front is served
//! (pipelining works), and only a half-received request gets a buffer of its own. Answers are
//! framed here; what they say comes from `api`. Every function takes the one connection it
//! serves and returns a `Verdict`; a write leaves as `Verdict::Commit` and is answered by the
//! group commit (`commit.rs`), after which the loop reads this connection again.

use super::ctx::{Ctx, Now, ParkedOn};
use super::head::{self, Framing};
use super::output;
use super::streams;
use super::verdict::Verdict;
use super::{IO_BUDGET_PER_TURN, KEEP_ALIVE_TIMEOUT_MS, READ_CHUNK, REQUEST_TIMEOUT_MS};

/// What all half-received request heads together may hold: a few thousand slow clients'
/// worth (a head is at most 8 KiB). Bodies are held only once their head is authorized.
const MAX_UNAUTHORIZED_BYTES: usize = 16 << 20;
use crate::api::{self, Outcome};
use crate::backend::{MintFor, TicketKey, Wanted};
use crate::conn::{Conn, HeldBytes, InBuf, Phase, ReadOutcome};
use crate::http::{self, Parse, Request};
use crate::jwt::Claims;
use crate::key::ConnKey;
use crate::metrics::CloseReason;

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
    /// A HEAD request: the answer's head as GET's would be, and no body.
    pub(super) head_only: bool,
    /// With `--access-log`: what the request's log line says besides the answer.
    pub(super) access: Option<Box<Access>>,
}

/// The request half of an access log line.
#[derive(Clone)]
pub(super) struct Access {
    method: &'static str,
    /// Without the query: a token may be there (`access_token`), and tokens are never logged.
    path: String,
    user: Option<crate::domain::UserId>,
    started: std::time::Instant,
}

impl Access {
    fn of(request: &Request<'_>, ctx: &Ctx, verified: Option<Claims>, now: Now) -> Access {
        let method = match request.method {
            http::Method::Get => "GET",
            http::Method::Head => "HEAD",
            http::Method::Post => "POST",
            http::Method::Put => "PUT",
            http::Method::Options => "OPTIONS",
            http::Method::Other => "OTHER",
        };
        // The credential `api` acts on, in its order: a stream's `?ticket=` (when there is
        // no `Authorization`), else the bearer token. Looked at before `api` redeems the
        // ticket, and without using it up.
        let claims = match api::stream_ticket(request) {
            Some(text) => ticket_claims(ctx, &text, now),
            None => verified.or_else(|| {
                let token = api::bearer_token(request)?;
                crate::jwt::verify_with_keys(&token, &ctx.secret, now.epoch_ms.div_euclid(1000))
                    .ok()
            }),
        };
        let user = claims.map(|claims| claims.user);
        Access { method, path: request.path.to_string(), user, started: std::time::Instant::now() }
    }
}

/// The claims of a stream ticket that is still good, for the access line: on SQLite from
/// the loop's tickets, in cluster mode what the store thread redeemed for this request
/// (`waits_for_store`). A used, expired or unknown ticket names no one.
fn ticket_claims(ctx: &Ctx, text: &[u8], now: Now) -> Option<Claims> {
    if ctx.store.shares_tickets() {
        let key = crate::tickets::shared_key(text).map(TicketKey)?;
        match ctx.store.redeemed(key) {
            Some(Ok(Ok(claims))) => Some(claims),
            _ => None,
        }
    } else {
        ctx.tickets.borrow().check(text, now.epoch_ms).ok()
    }
}

/// One access log line (`--access-log`): method, path, status, bytes written, time from
/// the request's arrival to its answer, and the user when the token (or the stream ticket)
/// named a valid one.
pub(super) fn log_access(ctx: &Ctx, reply: &Reply, status: u16, bytes: usize) {
    if !ctx.config.access_log {
        return;
    }
    match reply.access.as_deref() {
        Some(a) => {
            let ms = a.started.elapsed().as_secs_f64() * 1000.0;
            match a.user {
                Some(user) => {
                    log::info!("{} {} {status} {bytes} {ms:.3}ms user {user}", a.method, a.path)
                }
                None => log::info!("{} {} {status} {bytes} {ms:.3}ms user -", a.method, a.path),
            }
        }
        None => log::info!("- - {status} {bytes} - user -"),
    }
}

impl Reply {
    fn persistence(&self) -> http::Persistence {
        http::Persistence::of(self.keep_alive, self.http10)
    }

    /// The CORS fields of an ordinary answer.
    pub(super) fn cors<'a>(&'a self, ctx: &Ctx) -> head::Cors<'a> {
        head::Cors {
            allowed_origin: self.allowed_origin.as_deref(),
            vary: ctx.config.cors.is_enabled(),
        }
    }

    /// The answer to a request that could not be read: no keep-alive.
    fn invalid() -> Reply {
        Reply { keep_alive: false, route: "invalid", ..Reply::default() }
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

/// `drain`: `UntilShortRead` for a fresh readiness event that did not report the peer's
/// close, `ToTheEnd` otherwise (see `Drain`).
pub(super) fn on_readable(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    now: Now,
    drain: Drain,
) -> Verdict {
    match conn.phase {
        Phase::Request => read_requests(conn, key, ctx, now, drain),
        // Reading resumes once the commit has answered: this event is not reported again.
        Phase::Committing => {
            ctx.read_later.insert(key);
            Verdict::Continue
        }
        Phase::Stream(_) | Phase::Closing { .. } => read_and_discard(conn, ctx, drain),
    }
}

/// Streams and closing connections expect nothing more from the client but its EOF.
fn read_and_discard(conn: &mut Conn, ctx: &mut Ctx, drain: Drain) -> Verdict {
    let mut buf = std::mem::take(&mut ctx.scratch_in);
    let mut budget = IO_BUDGET_PER_TURN;
    let verdict = loop {
        buf.clear();
        match conn.read_into(&mut buf, READ_CHUNK) {
            ReadOutcome::Data(n) => {
                if n < READ_CHUNK && drain == Drain::UntilShortRead {
                    break Verdict::Continue;
                }
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    break Verdict::Again;
                }
            }
            ReadOutcome::WouldBlock => break Verdict::Continue,
            ReadOutcome::Eof | ReadOutcome::Gone => {
                break Verdict::Close(match conn.phase {
                    Phase::Closing { .. } => CloseReason::Finished,
                    _ => CloseReason::ClientGone,
                })
            }
        }
    };
    buf.clear();
    ctx.scratch_in = buf;
    verdict
}

pub(super) fn read_requests(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    now: Now,
    drain: Drain,
) -> Verdict {
    // Held bytes are read on in the scratch, not in their own exact-size buffer: that one
    // would be grown by `READ_CHUNK` for the `recv` and dropped after, 16 KiB of the loop's
    // heap taken and freed per re-served parked request (cluster mode parks every stream
    // request of a user not yet loaded), leaving holes between the connections' lasting
    // allocations that stayed in the RSS (docs/memory.md).
    let mut buf = std::mem::take(&mut ctx.scratch_in);
    buf.clear();
    let mut started_ms = None;
    if let Some(inbuf) = conn.bufs.take_request() {
        buf.extend_from_slice(&inbuf.bytes);
        started_ms = Some(inbuf.started_ms);
    }
    // Read what is there, but never more than one largest-possible request beyond what
    // is already buffered: the parser decides after that.
    let limit = http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES + 1;
    let mut eof = false;
    let mut gone = false;
    let mut budget = IO_BUDGET_PER_TURN + limit;
    let mut cut_short = false;
    // The socket was read empty: whatever comes next raises a new event.
    let mut drained = false;
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
                    drained = true;
                    break;
                }
            }
            ReadOutcome::WouldBlock => {
                drained = true;
                break;
            }
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
    let (consumed, verdict) = serve_buffered(conn, key, ctx, &mut buf, now);
    if matches!(verdict, Verdict::Commit(..)) && !drained {
        // An EOF or bytes left in the socket: looked at again once the write is answered.
        ctx.read_later.insert(key);
    }
    let rest = &buf[consumed..];
    // Still reading requests: nothing ended the connection and no stream started.
    let reading = matches!(verdict, Verdict::Continue | Verdict::Commit(..) | Verdict::Wait)
        && matches!(conn.phase, Phase::Request);
    let verdict = if gone {
        // Reset: nothing can reach the client any more. A write already queued is still
        // applied (the client cannot tell either way); its answer will find the socket dead.
        conn.peer_closed = true;
        match verdict {
            Verdict::Commit(..) => verdict,
            _ => Verdict::Close(CloseReason::ClientGone),
        }
    } else if eof {
        // The client will send nothing more, but may still read (a half-close): what it
        // asked for is answered, then the connection closes.
        conn.peer_closed = true;
        if matches!(verdict, Verdict::Wait) {
            // The parked request is served later: keep it (the EOF is read again then).
            if let Some(refused) =
                hold_rest(conn, key, ctx, rest, consumed, started_ms, &verdict, now)
            {
                return refused;
            }
        }
        match verdict {
            Verdict::Continue if matches!(conn.phase, Phase::Request) => {
                Verdict::Finish(CloseReason::ClientGone)
            }
            // The EOF came with the stream request: the stream is over before it began, and
            // must not be counted (health, per-user limit) until a heartbeat finds out.
            Verdict::Continue if matches!(conn.phase, Phase::Stream(_)) => {
                Verdict::Close(CloseReason::ClientGone)
            }
            other => other,
        }
    } else {
        if reading && !rest.is_empty() {
            hold_rest(conn, key, ctx, rest, consumed, started_ms, &verdict, now).unwrap_or(
                match verdict {
                    Verdict::Continue if cut_short => Verdict::Again,
                    other => other,
                },
            )
        } else {
            match verdict {
                Verdict::Continue if cut_short && reading => Verdict::Again,
                other => other,
            }
        }
    };
    // Give the scratch back (keeping its capacity, not the conn's buffer's).
    if buf.capacity() >= ctx.scratch_in.capacity() && buf.capacity() <= 2 * (limit + READ_CHUNK) {
        buf.clear();
        ctx.scratch_in = buf;
    }
    verdict
}

/// Keeps the start of a request that has not fully arrived. A head still incomplete is
/// not authorized yet: all of those together may hold at most `MAX_UNAUTHORIZED_BYTES`,
/// past which the newcomer is answered 503 instead of being held. Returns a verdict only
/// when it refuses.
#[allow(clippy::too_many_arguments)]
fn hold_rest(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    rest: &[u8],
    consumed: usize,
    started_ms: Option<u64>,
    verdict: &Verdict,
    now: Now,
) -> Option<Verdict> {
    let unauthorized = http::parse_head(rest).is_none();
    // Behind a write, the bytes are already read and must be kept: its client is
    // authorized, and they are served once the write is answered.
    let over = ctx.held.unauthorized() + rest.len() > MAX_UNAUTHORIZED_BYTES;
    if unauthorized && over && !matches!(verdict, Verdict::Commit(..) | Verdict::Wait) {
        log::warn!("too many half-received requests held: answering a new one 503");
        let response = api::Response::error(
            503,
            "unavailable",
            "too many requests are half-received; try again",
        );
        return Some(respond(conn, key, ctx, &response, &Reply::invalid(), now));
    }
    let started = if consumed == 0 { started_ms.unwrap_or(now.mono_ms) } else { now.mono_ms };
    let held = HeldBytes::new(&ctx.held, rest.len(), unauthorized);
    conn.bufs.set_request(InBuf { bytes: rest.to_vec(), started_ms: started, held });
    if matches!(verdict, Verdict::Continue) {
        ctx.wheel.schedule(key, started + REQUEST_TIMEOUT_MS);
    }
    None
}

/// Parses and serves every complete request at the front of `buf`, until one of them needs
/// more than an answer (a commit, a stream, a close). Returns the bytes used and the verdict
/// of the last request served. A half-received request whose head is accepted and whose
/// client awaits `100 Continue` gets it here, and its bytes in `buf` say so from then on.
fn serve_buffered(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    buf: &mut [u8],
    now: Now,
) -> (usize, Verdict) {
    let mut used = 0;
    while used < buf.len() && matches!(conn.phase, Phase::Request) {
        match http::parse_request(&buf[used..]) {
            Parse::Partial => {
                let mut continued = false;
                if let Some(head) = http::parse_head(&buf[used..]) {
                    // Answering from the head may read the user (active?): it waits too.
                    let verified = match admit(conn, ctx, &head, false, now) {
                        Admit::Wait => return (used, Verdict::Wait),
                        Admit::Serve(verified) => verified,
                    };
                    if let Some(verdict) = refuse_from_head(conn, key, ctx, &head, verified, now) {
                        // Refused: no 100 went out, so the client never sends the body.
                        return (buf.len(), verdict);
                    }
                    // Shutting down, the half-received request is closed: inviting its body
                    // would be a lie.
                    if head.awaits_continue && !ctx.shutting_down() {
                        if let Err(reason) = output::send(conn, ctx, http::CONTINUE, now) {
                            return (buf.len(), Verdict::Close(reason));
                        }
                        continued = true;
                    }
                }
                if continued {
                    // Held, parked or re-read, these bytes never ask for a second 100.
                    http::mark_continue_sent(&mut buf[used..]);
                }
                break;
            }
            Parse::Reject(rejection) => {
                let response =
                    api::Response::error(rejection.status, rejection.code, rejection.message);
                return (buf.len(), respond(conn, key, ctx, &response, &Reply::invalid(), now));
            }
            Parse::Complete(request, n) => {
                let verified = match admit(conn, ctx, &request, true, now) {
                    // Left in the buffer, and served when the user's batch is back.
                    Admit::Wait => return (used, Verdict::Wait),
                    Admit::Serve(verified) => verified,
                };
                used += n;
                match serve(conn, key, ctx, &request, verified, now) {
                    Verdict::Continue => {}
                    other => return (used, other),
                }
            }
        }
    }
    (used, Verdict::Continue)
}

/// Whether a request is served now or waits for the store (`waits_for_store`).
enum Admit {
    Wait,
    /// Served, with its bearer token's claims when they were verified on the way (so that
    /// `api` does not verify the token again).
    Serve(Option<Claims>),
}

fn admit(conn: &Conn, ctx: &mut Ctx, request: &Request<'_>, whole: bool, now: Now) -> Admit {
    // The metrics port reads no store: it never waits.
    if conn.metrics_only {
        return Admit::Serve(None);
    }
    waits_for_store(ctx, request, whole, now)
}

/// Whether the request is of a user with writes on the store thread (queued there, or in
/// the batch it is applying). Until that batch's
/// completion is handled the loop's reader may already see its commit, and a stream opened
/// then would get its notification twice (in its snapshot, then from the fan-out); a read
/// would see a write not yet answered. So such a request waits; everyone else's go on. The
/// user is the token's, or the stream ticket's.
///
/// In cluster mode a request also waits while the store thread fetches what it needs
/// (PostgreSQL is never queried on the loop thread), asked for here: what it reads of its
/// user; a presented `?ticket=`, redeemed in the table every node shares (with its user's
/// reads, in the same job); and for `POST …/ticket` (`whole`: its body has come too, and its
/// user's reads say it may have one) a ticket minted there.
fn waits_for_store(ctx: &mut Ctx, request: &Request<'_>, whole: bool, now: Now) -> Admit {
    let shared = ctx.store.shares_tickets();
    if ctx.busy_users.is_empty() && !shared {
        return Admit::Serve(None);
    }
    let route = api::Route::of(request.path);
    let after = (route == api::Route::Stream).then(|| api::resume_point(request)).flatten();
    // A ticket's claims are the ticket's to give (`api` redeems it); a bearer token's
    // verified here are handed on.
    let (claims, verified) = if let Some(text) = api::stream_ticket(request) {
        let claims = if shared {
            // Not even the shape of a ticket: refused by `api` without asking anyone.
            let Some(key) = crate::tickets::shared_key(&text).map(TicketKey) else {
                return Admit::Serve(None);
            };
            match ctx.store.redeemed(key) {
                Some(Ok(Ok(claims))) => claims,
                // Refused, used, or the store failed: answered at once.
                Some(_) => return Admit::Serve(None),
                None => return ask_store(ctx, Wanted::Redeem(key), after),
            }
        } else {
            // SQLite: the ticket is in memory, and is only looked at here (`api` uses it).
            match ctx.tickets.borrow().check(&text, now.epoch_ms) {
                Ok(claims) => claims,
                Err(_) => return Admit::Serve(None),
            }
        };
        (claims, None)
    } else {
        // A token that does not verify is refused by `api` without reading anything.
        let Some(claims) = api::bearer_token(request).and_then(|token| {
            crate::jwt::verify_with_keys(&token, &ctx.secret, now.epoch_ms.div_euclid(1000)).ok()
        }) else {
            return Admit::Serve(None);
        };
        (claims, Some(claims))
    };
    let user = claims.user;
    if ctx.busy_users.contains_key(&user) {
        ctx.parking_on = Some(ParkedOn::Batch);
        return Admit::Wait;
    }
    if ctx.loading.contains_key(&Wanted::User(user)) {
        ctx.parking_on = Some(ParkedOn::Load(Wanted::User(user)));
        return Admit::Wait;
    }
    if ctx.store.needs_load(user, after) {
        return ask_store(ctx, Wanted::User(user), after);
    }
    let mints = shared
        && whole
        && route == api::Route::Ticket
        && request.method == http::Method::Post
        && request.host_is_valid()
        && (claims.role == crate::domain::Role::Admin
            || matches!(ctx.store.user_active(user), Ok(Some(true))));
    if mints {
        let wanted = MintFor::of(claims);
        if !ctx.store.has_minted(wanted) {
            return ask_store(ctx, Wanted::Mint(wanted), None);
        }
    }
    Admit::Serve(verified)
}

/// Asks the store thread (at step 7) for `wanted`, unless it is already on its way; the
/// request waits either way.
fn ask_store(ctx: &mut Ctx, wanted: Wanted, after: Option<u64>) -> Admit {
    if !ctx.loading.contains_key(&wanted) {
        ctx.loading.insert(wanted, ctx.feed_epoch);
        ctx.loads_wanted.push((wanted, after));
    }
    ctx.parking_on = Some(ParkedOn::Load(wanted));
    Admit::Wait
}

/// `verified`: the request's bearer claims if `waits_for_store` verified them already.
fn serve(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    request: &Request<'_>,
    verified: Option<Claims>,
    now: Now,
) -> Verdict {
    let route = api::Route::of(request.path);
    let allowed_origin = match request.origin {
        Some(origin) if ctx.config.cors.allows(origin) => Some(origin.to_vec()),
        _ => None,
    };
    let reply = Reply {
        keep_alive: request.keep_alive && !ctx.shutting_down(),
        http10: request.http10,
        allowed_origin,
        token_in_query: request.authorization.is_none()
            && (request.query.contains("access_token") || request.query.contains("ticket")),
        route: route.label(),
        head_only: request.method == http::Method::Head,
        access: ctx.config.access_log.then(|| Box::new(Access::of(request, ctx, verified, now))),
    };
    if conn.metrics_only {
        return respond(conn, key, ctx, &metrics_port_answer(request, ctx), &reply, now);
    }
    if !request.host_is_valid() {
        return respond(
            conn,
            key,
            ctx,
            &missing_host(),
            &Reply { keep_alive: false, ..reply },
            now,
        );
    }
    let outcome = {
        let ctx: &Ctx = ctx;
        let render = || ctx.render_metrics();
        let api_ctx = api::Ctx {
            store: &ctx.store,
            registry: &ctx.registry,
            config: &ctx.config,
            secret: &ctx.secret,
            tickets: &ctx.tickets,
            now_ms: now.epoch_ms,
            render_metrics: &render,
            verified,
        };
        api::handle(request, &api_ctx)
    };
    match outcome {
        Outcome::Respond(response) => respond(conn, key, ctx, &response, &reply, now),
        Outcome::Preflight => respond_preflight(conn, key, ctx, &reply, now),
        Outcome::Stream(start) => streams::start(conn, key, ctx, request, start, &reply, now),
        Outcome::Write(op) => Verdict::Commit(op, reply),
    }
}

/// The `--metrics-listen` port serves `/metrics` to anyone who can reach it (it is meant
/// for a private address) and nothing else.
fn metrics_port_answer(request: &Request<'_>, ctx: &Ctx) -> api::Response {
    if request.path != "/metrics" {
        return api::Response::error(404, "not_found", "this port serves /metrics only");
    }
    if !matches!(request.method, http::Method::Get | http::Method::Head) {
        let mut response =
            api::Response::error(405, "method_not_allowed", "/metrics takes GET or HEAD");
        response.allow = Some("GET, HEAD");
        return response;
    }
    let mut response = api::Response::json(200, ctx.render_metrics());
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    response
}

fn missing_host() -> api::Response {
    api::Response::error(400, "bad_request", "an HTTP/1.1 request needs exactly one Host header")
}

/// A request whose head has come but whose body has not: answered now when the head
/// settles it (no Host, unknown path, wrong method, no valid token), so that its body is
/// never held. The connection then closes: the body that may still come is read and
/// dropped while it lingers.
fn refuse_from_head(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    request: &Request<'_>,
    verified: Option<Claims>,
    now: Now,
) -> Option<Verdict> {
    let reply = Reply {
        keep_alive: false,
        http10: request.http10,
        allowed_origin: match request.origin {
            Some(origin) if ctx.config.cors.allows(origin) => Some(origin.to_vec()),
            _ => None,
        },
        token_in_query: request.authorization.is_none()
            && (request.query.contains("access_token") || request.query.contains("ticket")),
        route: api::Route::of(request.path).label(),
        head_only: request.method == http::Method::Head,
        access: ctx.config.access_log.then(|| Box::new(Access::of(request, ctx, verified, now))),
    };
    let response = if request.host_is_valid() {
        let ctx: &Ctx = ctx;
        let render = || ctx.render_metrics();
        let api_ctx = api::Ctx {
            store: &ctx.store,
            registry: &ctx.registry,
            config: &ctx.config,
            secret: &ctx.secret,
            tickets: &ctx.tickets,
            now_ms: now.epoch_ms,
            render_metrics: &render,
            verified,
        };
        api::refuse_from_head(request, &api_ctx)?
    } else {
        missing_host()
    };
    Some(respond(conn, key, ctx, &response, &reply, now))
}

pub(super) fn respond(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    response: &api::Response,
    reply: &Reply,
    now: Now,
) -> Verdict {
    ctx.metrics.count_request(reply.route, response.status);
    let mut out = std::mem::take(&mut ctx.scratch_out);
    out.clear();
    let mut fields: [(&str, &[u8]); 4] = [("", b""); 4];
    let mut n = 0;
    let mut field = |name, value| {
        fields[n] = (name, value);
        n += 1;
    };
    if !response.content_type.is_empty() {
        field("Content-Type", response.content_type.as_bytes());
    }
    if let Some(challenge) = response.www_authenticate {
        field("WWW-Authenticate", challenge.as_bytes());
    }
    if let Some(allow) = response.allow {
        field("Allow", allow.as_bytes());
    }
    if reply.token_in_query {
        field("Cache-Control", b"no-store");
    } else if let Some(cache) = response.cache_control {
        field("Cache-Control", cache.as_bytes());
    }
    head::write_head(
        &mut out,
        response.status,
        ctx.date(),
        &fields[..n],
        reply.cors(ctx),
        Framing::Length(response.body.len(), reply.persistence()),
    );
    if !reply.head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    log_access(ctx, reply, response.status, out.len());
    let sent = output::send(conn, ctx, &out, now);
    ctx.scratch_out = out;
    match sent {
        Ok(()) => after_answer(conn, key, ctx, reply.keep_alive, now),
        Err(reason) => Verdict::Close(reason),
    }
}

fn respond_preflight(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    reply: &Reply,
    now: Now,
) -> Verdict {
    ctx.metrics.count_request("options", 204);
    let mut out = std::mem::take(&mut ctx.scratch_out);
    out.clear();
    let persistence = reply.persistence();
    if reply.allowed_origin.is_some() {
        let fields: [(&str, &[u8]); 3] = [
            ("Access-Control-Allow-Methods", b"GET, POST, PUT, OPTIONS"),
            ("Access-Control-Allow-Headers", b"Authorization, Content-Type, Last-Event-ID"),
            ("Access-Control-Max-Age", b"600"),
        ];
        let date = ctx.date();
        head::write_head(
            &mut out,
            204,
            date,
            &fields,
            reply.cors(ctx),
            Framing::Length(0, persistence),
        );
    } else {
        head::write_head(
            &mut out,
            204,
            ctx.date(),
            &[],
            head::Cors::default(),
            Framing::Length(0, persistence),
        );
    }
    log_access(ctx, reply, 204, out.len());
    let sent = output::send(conn, ctx, &out, now);
    ctx.scratch_out = out;
    match sent {
        Ok(()) => after_answer(conn, key, ctx, reply.keep_alive, now),
        Err(reason) => Verdict::Close(reason),
    }
}

/// After a whole answer: wait for the next request, or close.
fn after_answer(
    conn: &mut Conn,
    key: ConnKey,
    ctx: &mut Ctx,
    keep_alive: bool,
    now: Now,
) -> Verdict {
    if !keep_alive {
        return Verdict::Finish(CloseReason::Finished);
    }
    conn.await_request();
    ctx.wheel.schedule(key, now.mono_ms + KEEP_ALIVE_TIMEOUT_MS);
    Verdict::Continue
}

/// A request-phase connection's deadline passed: a started request gets 408, an idle
/// connection is closed without a word.
pub(super) fn on_request_timer(conn: &mut Conn, key: ConnKey, ctx: &mut Ctx, now: Now) -> Verdict {
    if let Some(at) = ctx.parked.iter().position(|(k, _, _)| *k == key) {
        // The store did not answer in time (SPEC §7: 503 within 2 s, never a hang).
        ctx.parked.swap_remove(at);
        conn.bufs.clear_request();
        let response = api::Response::error(
            503,
            "storage_unavailable",
            "the database did not answer in time; nothing was read or stored",
        );
        return respond(conn, key, ctx, &response, &Reply::invalid(), now);
    }
    if !conn.bufs.has_request() {
        return Verdict::Close(CloseReason::Timeout);
    }
    let t = http::TIMEOUT;
    let response = api::Response::error(t.status, t.code, t.message);
    let verdict = respond(conn, key, ctx, &response, &Reply::invalid(), now);
    conn.bufs.clear_request();
    verdict
}
