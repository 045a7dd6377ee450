//! What each request means: routing, the order of checks (404, 405, 401/403, 400), the read
//! endpoints' answers, and the validated form of each write.
//!
//! Takes a parsed request and read access to the store and registry; returns an `Outcome`
//! for the server to carry out. Never touches a socket and never writes to the database:
//! writes leave here as `WriteOp`s and are applied by `writes.rs` inside the group commit.

use crate::backend::Reader as Store;
use crate::config::Config;
use crate::domain::{Role, UserId};
use crate::http::{self, Method, Request};
use crate::jwt;
use crate::registry::Registry;
use crate::spending::{AlertPercentage, Limit};
use crate::time::parse_rfc3339_ms;
use serde_json::{Map, Value};

pub const STREAM_PATH: &str = "/api/periode-limit/notifications/stream";
const HEALTH_PATH: &str = "/api/periode-limit/notifications/health";
const STATUS_PATH: &str = "/api/periode-limit/notifications/status";
const TICKET_PATH: &str = "/api/periode-limit/notifications/ticket";
const TRANSACTIONS_PATH: &str = "/api/periode-limit/transactions";
const LIMIT_PATH: &str = "/api/periode-limit";
const ADMIN_USERS_PREFIX: &str = "/api/admin/users/";
const METRICS_PATH: &str = "/metrics";
const PAGE_PATH: &str = "/";
/// The live page: one static file, compiled in, no build step and no external assets.
pub const PAGE_HTML: &str = include_str!("page/index.html");
const SCRIPT_PATH: &str = "/periode-sse.js";
/// The browser module (SPEC §8), compiled in like the page. It changes only with the binary,
/// so browsers may keep it an hour: a new tab within that hour costs no request, and an
/// upgrade reaches every browser within the hour (older copies keep working: they use only
/// the public API). There is no validator, so after the hour it is simply fetched again.
pub const SCRIPT_JS: &str = include_str!("page/periode-sse.js");
const SCRIPT_CACHE_CONTROL: &str = "public, max-age=3600";
const MAX_DESCRIPTION_CHARS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Status,
    Stream,
    Ticket,
    Transactions,
    Limit,
    AdminUser,
    Metrics,
    Page,
    Script,
    Unknown,
}

impl Route {
    pub fn of(path: &str) -> Route {
        match path {
            HEALTH_PATH => Route::Health,
            STATUS_PATH => Route::Status,
            STREAM_PATH => Route::Stream,
            TICKET_PATH => Route::Ticket,
            TRANSACTIONS_PATH => Route::Transactions,
            LIMIT_PATH => Route::Limit,
            METRICS_PATH => Route::Metrics,
            PAGE_PATH | "/index.html" => Route::Page,
            SCRIPT_PATH => Route::Script,
            p if p.starts_with(ADMIN_USERS_PREFIX)
                && !p[ADMIN_USERS_PREFIX.len()..].contains('/') =>
            {
                Route::AdminUser
            }
            _ => Route::Unknown,
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Status => "status",
            Route::Stream => "stream",
            Route::Ticket => "ticket",
            Route::Transactions => "transactions",
            Route::Limit => "limit",
            Route::AdminUser => "admin_user",
            Route::Metrics => "metrics",
            Route::Page => "page",
            Route::Script => "script",
            Route::Unknown => "unknown",
        }
    }

    fn allowed(self) -> (Method, &'static str) {
        match self {
            Route::Health
            | Route::Status
            | Route::Stream
            | Route::Metrics
            | Route::Page
            | Route::Script
            | Route::Unknown => (Method::Get, "GET, HEAD, OPTIONS"),
            Route::Transactions | Route::Ticket => (Method::Post, "POST, OPTIONS"),
            Route::Limit | Route::AdminUser => (Method::Put, "PUT, OPTIONS"),
        }
    }
}

/// An answer with a body, ready for the server to frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub www_authenticate: Option<&'static str>,
    pub allow: Option<&'static str>,
    /// `Cache-Control` for answers that may be cached (the browser module); `None`: no header.
    pub cache_control: Option<&'static str>,
}

pub const JSON: &str = "application/json";

impl Response {
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: JSON,
            body,
            www_authenticate: None,
            allow: None,
            cache_control: None,
        }
    }

    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, http::error_body(code, message))
    }

    pub fn no_content() -> Response {
        Response {
            status: 204,
            content_type: "",
            body: String::new(),
            www_authenticate: None,
            allow: None,
            cache_control: None,
        }
    }
}

/// Where a resumed stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// First connect: the current status as a snapshot.
    Snapshot,
    /// Every kept notification with a larger id, then live ones.
    After(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamStart {
    pub user: UserId,
    /// The token's `exp`, unix seconds; the stream ends at `exp + LEEWAY_SECS`.
    pub expires_at: i64,
    pub resume: Resume,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    Transaction { user: UserId, amount: i64, description: Option<String>, occurred_at_ms: i64 },
    Limit { user: UserId, limit: Limit },
    User { user: UserId, active: bool },
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Respond(Response),
    /// CORS preflight or a bare OPTIONS: 204 with the preflight headers when allowed.
    Preflight,
    Stream(StreamStart),
    Write(WriteOp),
}

/// What a handler may read.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub registry: &'a Registry,
    pub config: &'a Config,
    pub secret: &'a crate::jwt::Keys,
    /// The outstanding stream tickets on SQLite: minted by `Route::Ticket`, redeemed by
    /// `?ticket=`. In cluster mode (`store.shares_tickets()`) they are PostgreSQL's instead.
    pub tickets: &'a std::cell::RefCell<crate::tickets::Tickets>,
    pub now_ms: i64,
    /// `/metrics` text, rendered by the server only when that route asks for it.
    pub render_metrics: &'a dyn Fn() -> String,
    /// The claims of this request's bearer token (`bearer_token`), when the caller has
    /// already verified it against `secret` at `now_ms`: not verified a second time. Only
    /// used when the request carries no stream ticket, as in `authenticate`.
    pub verified: Option<jwt::Claims>,
}

pub fn handle(req: &Request<'_>, ctx: &Ctx<'_>) -> Outcome {
    match handle_inner(req, ctx) {
        Ok(outcome) => outcome,
        Err(response) => Outcome::Respond(response),
    }
}

fn handle_inner(req: &Request<'_>, ctx: &Ctx<'_>) -> Result<Outcome, Response> {
    if req.method == Method::Options {
        return Ok(Outcome::Preflight);
    }
    let route = Route::of(req.path);
    if matches!(route, Route::Page | Route::Script) {
        let (method, allow) = route.allowed();
        if req.method != method && req.method != Method::Head {
            let mut response = Response::error(
                405,
                "method_not_allowed",
                "this endpoint does not take that method",
            );
            response.allow = Some(allow);
            return Err(response);
        }
        // Neither file holds data: they ask for a token and use the API like any client.
        if route == Route::Page {
            let mut response = Response::json(200, PAGE_HTML.to_string());
            response.content_type = "text/html; charset=utf-8";
            return Ok(Outcome::Respond(response));
        }
        let mut response = Response::json(200, SCRIPT_JS.to_string());
        response.content_type = "text/javascript; charset=utf-8";
        response.cache_control = Some(SCRIPT_CACHE_CONTROL);
        return Ok(Outcome::Respond(response));
    }
    let claims = handle_inner_checks(req, ctx, route, Ticket::Redeem)?;
    match route {
        Route::Health => Ok(Outcome::Respond(health(claims.user, ctx))),
        Route::Status => status(claims.user, ctx).map(Outcome::Respond),
        Route::Stream => stream(req, claims, ctx),
        Route::Ticket => mint_ticket(claims, ctx).map(Outcome::Respond),
        Route::Transactions => transaction(req.body, claims, ctx).map(Outcome::Write),
        Route::Limit => limit(req.body, claims).map(Outcome::Write),
        Route::AdminUser => admin_user(req.path, req.body, claims).map(Outcome::Write),
        Route::Metrics => {
            require_admin(claims)?;
            let mut response = Response::json(200, (ctx.render_metrics)());
            response.content_type = "text/plain; version=0.0.4; charset=utf-8";
            Ok(Outcome::Respond(response))
        }
        Route::Page | Route::Script | Route::Unknown => {
            Err(Response::error(404, "not_found", "no such endpoint"))
        }
    }
}

/// The answer to a request whose head has arrived but whose body has not, when the head
/// alone settles it: unknown path, wrong method, or no valid token (SPEC §5: a request that
/// cannot be authorized is answered from its head, and its body is never held). `None`
/// means the body is needed. Runs the same checks, in the same order, as `handle`.
pub fn refuse_from_head(req: &Request<'_>, ctx: &Ctx<'_>) -> Option<Response> {
    if req.method == Method::Options {
        return None;
    }
    let route = Route::of(req.path);
    if route == Route::Page {
        return None;
    }
    handle_inner_checks(req, ctx, route, Ticket::Check).err()
}

/// Routing, method and authentication: everything but the body.
fn handle_inner_checks(
    req: &Request<'_>,
    ctx: &Ctx<'_>,
    route: Route,
    ticket: Ticket,
) -> Result<jwt::Claims, Response> {
    if route == Route::Unknown {
        return Err(Response::error(404, "not_found", "no such endpoint"));
    }
    let (method, allow) = route.allowed();
    let as_method = if req.method == Method::Head { Method::Get } else { req.method };
    if as_method != method {
        let mut response =
            Response::error(405, "method_not_allowed", "this endpoint does not take that method");
        response.allow = Some(allow);
        return Err(response);
    }
    authenticate(req, ctx, ticket)
}

/// Where the token came from: the header, or (for browsers) the query string.
pub fn bearer_token(req: &Request<'_>) -> Option<Vec<u8>> {
    if let Some(value) = req.authorization {
        let value = value.trim_ascii();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(value[7..].trim_ascii().to_vec());
        }
    }
    http::query_param(req.query, "access_token").filter(|t| !t.is_empty())
}

/// What a `?ticket=` on the stream route does to the ticket: `handle` redeems it (single
/// use); `refuse_from_head`, which only asks whether the head alone settles the answer, looks
/// at it without using it up, so the request it lets through can still redeem it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Redeem,
    Check,
}

const INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";

/// The claims a request may act with. The `Authorization` header wins; on the stream route
/// a `?ticket=` comes next (SPEC §8), then `access_token`. A ticket gives back the claims of
/// the token it was minted with, so it is checked as that token would be (the user active).
fn authenticate(req: &Request<'_>, ctx: &Ctx<'_>, ticket: Ticket) -> Result<jwt::Claims, Response> {
    let claims = if let Some(text) = stream_ticket(req) {
        let found = if ctx.store.shares_tickets() {
            shared_ticket(&text, ctx.store, ticket)?
        } else {
            match ticket {
                Ticket::Redeem => ctx.tickets.borrow_mut().redeem(&text, ctx.now_ms),
                Ticket::Check => ctx.tickets.borrow().check(&text, ctx.now_ms),
            }
        };
        found.map_err(|e| {
            let mut response =
                Response::error(401, "invalid_token", &format!("invalid ticket: {e}"));
            response.www_authenticate = Some(INVALID_TOKEN);
            // The ticket sat in the URL: nothing may keep this answer either.
            response.cache_control = Some("no-store");
            response
        })?
    } else if let Some(claims) = ctx.verified {
        // The caller verified this very token already (`Ctx::verified`).
        claims
    } else {
        let Some(token) = bearer_token(req) else {
            let mut response =
                Response::error(401, "missing_token", "send Authorization: Bearer <token>");
            response.www_authenticate = Some("Bearer");
            return Err(response);
        };
        jwt::verify_with_keys(&token, ctx.secret, ctx.now_ms.div_euclid(1000)).map_err(|e| {
            let mut response =
                Response::error(401, "invalid_token", &format!("invalid token: {e}"));
            response.www_authenticate = Some(INVALID_TOKEN);
            response
        })?
    };
    if claims.role == Role::User {
        match ctx.store.user_active(claims.user) {
            Ok(Some(true)) => {}
            Ok(Some(false)) => {
                return Err(Response::error(
                    403,
                    "user_inactive",
                    &format!("user {} is not active", claims.user),
                ))
            }
            Ok(None) => {
                return Err(Response::error(
                    403,
                    "unknown_user",
                    &format!("user {} does not exist", claims.user),
                ))
            }
            Err(e) => return Err(storage_error(e)),
        }
    }
    Ok(claims)
}

/// The `?ticket=` a request presents: read on the stream route only, and only when there is
/// no `Authorization` header (the header wins); an empty one is no credential.
pub fn stream_ticket(req: &Request<'_>) -> Option<Vec<u8>> {
    (req.authorization.is_none() && Route::of(req.path) == Route::Stream)
        .then(|| http::query_param(req.query, "ticket"))
        .flatten()
        .filter(|t| !t.is_empty())
}

/// Cluster mode: what the store thread answered for this ticket (the request waited for it,
/// `requests::waits_for_store`): redeemed in PostgreSQL, so it works once on every node.
/// `Redeem` takes the claims (one request only), `Check` only looks.
fn shared_ticket(
    text: &[u8],
    store: &Store,
    ticket: Ticket,
) -> Result<Result<jwt::Claims, crate::tickets::Refusal>, Response> {
    // Not even the shape of a ticket: the store was never asked.
    let Some(key) = crate::tickets::shared_key(text).map(crate::backend::TicketKey) else {
        return Ok(Err(crate::tickets::Refusal::Unknown));
    };
    let answer = match ticket {
        Ticket::Redeem => store.take_redeemed(key),
        Ticket::Check => store.redeemed(key),
    };
    match answer {
        Some(answer) => answer.map_err(storage_error),
        // The request was let through without its answer: a bug, answered 503.
        None => Err(storage_error(crate::store::StoreError::Unavailable(
            "a stream ticket was not redeemed before its request was served".to_string(),
        ))),
    }
}

/// `POST …/notifications/ticket`: a single-use, 30-second ticket for the caller's claims
/// (SPEC §8). Any body is ignored. The answer holds a credential: `no-store`. In cluster mode
/// the ticket was minted into PostgreSQL by the store thread while the request waited.
fn mint_ticket(claims: jwt::Claims, ctx: &Ctx<'_>) -> Result<Response, Response> {
    use crate::tickets::MintError;
    let minted = if ctx.store.shares_tickets() {
        match ctx.store.take_minted(crate::backend::MintFor::of(claims)) {
            Some(minted) => minted.map_err(storage_error)?,
            None => {
                return Err(storage_error(crate::store::StoreError::Unavailable(
                    "no stream ticket was minted for this request".to_string(),
                )))
            }
        }
    } else {
        ctx.tickets.borrow_mut().mint(claims, ctx.now_ms)
    };
    let minted = minted.map_err(|e| match e {
        MintError::UserFull => Response::error(429, "too_many_tickets", &e.to_string()),
        // A policy limit, counted in /metrics (route "ticket", 503); not logged per request,
        // or a flood of minting would flood the log too.
        MintError::Full => Response::error(503, "tickets_unavailable", &e.to_string()),
        MintError::NoRandomness => {
            log::error!("stream ticket refused: {e}");
            Response::error(503, "tickets_unavailable", &e.to_string())
        }
    })?;
    let mut response = Response::json(201, minted.answer_json());
    response.cache_control = Some("no-store");
    Ok(response)
}

fn require_admin(claims: jwt::Claims) -> Result<(), Response> {
    match claims.role {
        Role::Admin => Ok(()),
        Role::User => Err(Response::error(403, "forbidden", "this endpoint needs an admin token")),
    }
}

pub fn storage_error(e: crate::store::StoreError) -> Response {
    log_storage_error(&e);
    let (status, code) = storage_status(&e);
    Response::error(status, code, "the database could not be read or written; see the server log")
}

/// One line a second at most: during an outage every request fails alike, and the first line
/// of each second (with the count of the others) says all the rest would.
fn log_storage_error(e: &crate::store::StoreError) {
    static THROTTLE: crate::throttle::Throttle = crate::throttle::Throttle::new(1000);
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now_ms = START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64;
    match THROTTLE.admit(now_ms) {
        Some(0) => log::error!("{e}"),
        Some(held) => log::error!("{e} ({held} more storage errors since the last line like this)"),
        None => {}
    }
}

/// SPEC §5: a database that is unreachable, read-only or gone answers `503
/// storage_unavailable`, a full disk `507 insufficient_storage`; anything else is a 500.
pub fn storage_status(e: &crate::store::StoreError) -> (u16, &'static str) {
    use crate::store::StoreError;
    use rusqlite::ErrorCode;
    const UNAVAILABLE: (u16, &str) = (503, "storage_unavailable");
    const FULL: (u16, &str) = (507, "insufficient_storage");
    match e {
        StoreError::Unavailable(_) => UNAVAILABLE,
        StoreError::Full => FULL,
        #[cfg(feature = "postgres")]
        StoreError::Postgres(e) if e.is_unavailable() => UNAVAILABLE,
        // Errors the store did not classify itself: SQLite's result codes say the same.
        StoreError::Sql(rusqlite::Error::SqliteFailure(failure, _))
        | StoreError::Open(_, rusqlite::Error::SqliteFailure(failure, _)) => match failure.code {
            ErrorCode::DiskFull => FULL,
            ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::PermissionDenied
            | ErrorCode::NotADatabase
            | ErrorCode::DatabaseCorrupt => UNAVAILABLE,
            _ => (500, "storage_error"),
        },
        _ => (500, "storage_error"),
    }
}

fn health(user: UserId, ctx: &Ctx<'_>) -> Response {
    Response::json(
        200,
        format!(
            "{{\"status\":\"healthy\",\"userId\":{},\"connectedClients\":{},\"totalSystemClients\":{}}}",
            user,
            ctx.registry.count(user),
            ctx.registry.total()
        ),
    )
}

fn status(user: UserId, ctx: &Ctx<'_>) -> Result<Response, Response> {
    match ctx.store.active_status(user, ctx.now_ms).map_err(storage_error)? {
        Some(status) => {
            let mut body = String::with_capacity(256);
            status.write_json(&mut body);
            Ok(Response::json(200, body))
        }
        None => Err(Response::error(
            404,
            "no_active_limit",
            "no spending limit covers the current time",
        )),
    }
}

fn stream(req: &Request<'_>, claims: jwt::Claims, ctx: &Ctx<'_>) -> Result<Outcome, Response> {
    if ctx.registry.count(claims.user) >= ctx.config.max_conns_per_user {
        return Err(Response::error(
            429,
            "too_many_streams",
            &format!(
                "user {} already holds {} streams",
                claims.user, ctx.config.max_conns_per_user
            ),
        ));
    }
    let last_event_id = resume_point(req);
    // An id above the latest stored one was seen on a database since restored from a
    // backup: the client converges through a snapshot (SPEC §4).
    let last_event_id = match last_event_id {
        Some(k) if k > ctx.store.last_notification_id(claims.user).map_err(storage_error)? => None,
        other => other,
    };
    let resume = last_event_id.map_or(Resume::Snapshot, Resume::After);
    Ok(Outcome::Stream(StreamStart { user: claims.user, expires_at: claims.expires_at, resume }))
}

/// The id a stream request resumes after, if it gives one. The header wins when both are
/// given; a value that is not a decimal id means "no resume".
pub fn resume_point(req: &Request<'_>) -> Option<u64> {
    match req.last_event_id {
        Some(header) => parse_event_id(header),
        None => http::query_param(req.query, "lastEventId").and_then(|v| parse_event_id(&v)),
    }
}

fn parse_event_id(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn bad_request(message: &str) -> Response {
    Response::error(400, "bad_request", message)
}

/// The body as a JSON object; a repeated member name is a `400` (SPEC §5), see `json.rs`.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match crate::json::parse(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(e) => Err(bad_request(&format!("the body is not valid JSON: {e}"))),
    }
}

/// Whose write this is: a user writes for themselves; an admin names `userId`.
fn target_user(body: &Map<String, Value>, claims: jwt::Claims) -> Result<UserId, Response> {
    let named = match body.get("userId") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .filter(|id| *id >= 0)
                .map(UserId)
                .ok_or_else(|| bad_request("userId must be a non-negative integer"))?,
        ),
    };
    match (claims.role, named) {
        (Role::User, None) => Ok(claims.user),
        (Role::User, Some(user)) if user == claims.user => Ok(user),
        (Role::User, Some(_)) => {
            Err(Response::error(403, "forbidden", "a user token may only write for its own user"))
        }
        (Role::Admin, Some(user)) => Ok(user),
        (Role::Admin, None) => Err(bad_request("an admin token must name the userId to write for")),
    }
}

fn whole_number(body: &Map<String, Value>, name: &str) -> Result<i64, Response> {
    match body.get(name) {
        None | Some(Value::Null) => Err(bad_request(&format!("{name} is required"))),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_i64() {
                if v > 0 {
                    return Ok(v);
                }
                return Err(bad_request(&format!("{name} must be greater than 0")));
            }
            if n.is_u64()
                || n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() > i64::MAX as f64)
            {
                return Err(bad_request(&format!("{name} is too large: at most {}", i64::MAX)));
            }
            if n.as_f64().is_some_and(|f| f <= 0.0) {
                return Err(bad_request(&format!("{name} must be greater than 0")));
            }
            Err(bad_request(&format!("{name} must be a whole number (minor currency units)")))
        }
        Some(_) => Err(bad_request(&format!("{name} must be a number"))),
    }
}

fn time_field(body: &Map<String, Value>, name: &str) -> Result<Option<i64>, Response> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_rfc3339_ms(s).map(Some).map_err(|_| {
            bad_request(&format!(
                "{name} must be an RFC 3339 date-time, e.g. 2025-01-31T23:59:59.999Z"
            ))
        }),
        Some(_) => Err(bad_request(&format!("{name} must be an RFC 3339 date-time string"))),
    }
}

fn transaction(body: &[u8], claims: jwt::Claims, ctx: &Ctx<'_>) -> Result<WriteOp, Response> {
    let body = body_object(body)?;
    let user = target_user(&body, claims)?;
    let amount = whole_number(&body, "amount")?;
    let description = match body.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_DESCRIPTION_CHARS => Some(s.clone()),
        Some(Value::String(_)) => {
            return Err(bad_request(&format!(
                "description is longer than {MAX_DESCRIPTION_CHARS} characters"
            )))
        }
        Some(_) => return Err(bad_request("description must be a string")),
    };
    let occurred_at_ms = time_field(&body, "occurredAt")?.unwrap_or(ctx.now_ms);
    Ok(WriteOp::Transaction { user, amount, description, occurred_at_ms })
}

fn limit(body: &[u8], claims: jwt::Claims) -> Result<WriteOp, Response> {
    let body = body_object(body)?;
    let user = target_user(&body, claims)?;
    let max_limit = whole_number(&body, "maxLimit")?;
    let alert = match body.get("alertPercentage") {
        None | Some(Value::Null) => return Err(bad_request("alertPercentage is required")),
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(AlertPercentage::new)
            .ok_or_else(|| bad_request("alertPercentage must be greater than 0 and at most 100"))?,
        Some(_) => return Err(bad_request("alertPercentage must be a number")),
    };
    let start = time_field(&body, "periodeStart")?
        .ok_or_else(|| bad_request("periodeStart is required"))?;
    let end =
        time_field(&body, "periodeEnd")?.ok_or_else(|| bad_request("periodeEnd is required"))?;
    if start >= end {
        return Err(bad_request("periodeStart must be before periodeEnd"));
    }
    Ok(WriteOp::Limit {
        user,
        limit: Limit { max_limit, alert, periode_start_ms: start, periode_end_ms: end },
    })
}

fn admin_user(path: &str, body: &[u8], claims: jwt::Claims) -> Result<WriteOp, Response> {
    require_admin(claims)?;
    let id_text = &path[ADMIN_USERS_PREFIX.len()..];
    let user = parse_event_id(id_text.as_bytes())
        .and_then(|id| i64::try_from(id).ok())
        .map(UserId)
        .ok_or_else(|| bad_request("the user id in the path must be a non-negative integer"))?;
    let body = body_object(body)?;
    let active = match body.get("active") {
        Some(Value::Bool(b)) => *b,
        None => return Err(bad_request("active is required")),
        Some(_) => return Err(bad_request("active must be true or false")),
    };
    Ok(WriteOp::User { user, active })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cases = [
            ("/api/periode-limit/notifications/health", Route::Health),
            ("/api/periode-limit/notifications/status", Route::Status),
            ("/api/periode-limit/notifications/stream", Route::Stream),
            ("/api/periode-limit/transactions", Route::Transactions),
            ("/api/periode-limit", Route::Limit),
            ("/api/admin/users/13", Route::AdminUser),
            ("/api/admin/users/x", Route::AdminUser),
            ("/api/admin/users/13/x", Route::Unknown),
            ("/api/periode-limit/notifications/ticket", Route::Ticket),
            ("/metrics", Route::Metrics),
            ("/periode-sse.js", Route::Script),
            ("/api/periode-limit/", Route::Unknown),
            ("/nope", Route::Unknown),
        ];
        for (path, want) in cases {
            assert_eq!(Route::of(path), want, "{path}");
        }
    }

    #[test]
    fn event_ids() {
        assert_eq!(parse_event_id(b"41"), Some(41));
        assert_eq!(parse_event_id(b" 7 "), Some(7));
        for bad in [&b""[..], b"-1", b"abc", b"4.5", b"99999999999999999999999", b"\xff"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}
