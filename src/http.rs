//! HTTP/1.1 request reading and response writing, without sockets.
//!
//! `parse_request` takes whatever bytes have arrived and says `Partial`, `Complete` (with how
//! many bytes the request used, so pipelined requests follow) or `Reject` with the status to
//! answer. It never retries forever: the head is bounded by `MAX_HEAD_BYTES` here and the
//! server bounds the time. Only the headers the server acts on are kept. Everything that could
//! let a request be read two ways (`Transfer-Encoding`, conflicting `Content-Length`) is
//! refused rather than guessed at.
//!
//! `Expect: 100-continue` (RFC 9110 §10.1.1) is read here too: a head says whether its client
//! waits for `100 Continue` (`Request::awaits_continue`), and `mark_continue_sent` writes into
//! the held bytes that it has been answered, so that no later parse of them asks again.

use std::fmt::Write as _;

pub const MAX_HEAD_BYTES: usize = 8 * 1024;
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The interim answer to `Expect: 100-continue` (RFC 9110 §15.2.1): a status line, no fields.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// More headers than this is no client we serve: answered 431.
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Options,
    Other,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The path without its query, still percent-encoded.
    pub path: &'a str,
    /// The query without its `?`, still percent-encoded; empty when there is none.
    pub query: &'a str,
    /// HTTP/1.0 clients get close-delimited responses.
    pub http10: bool,
    pub keep_alive: bool,
    pub authorization: Option<&'a [u8]>,
    pub last_event_id: Option<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
    /// How many `Host` headers came (saturating): RFC 9112 §3.2 wants exactly one from an
    /// HTTP/1.1 client. The parser reads the request either way; the server answers 400.
    pub hosts: u8,
    /// The client waits for `100 Continue` before it sends its body: an HTTP/1.1 head with
    /// `Expect: 100-continue`, a body announced, and none of it here yet. Only a head
    /// (`parse_head`) can say so; HTTP/1.0 must be ignored (RFC 9110 §10.1.1), and once some
    /// of the body has come the client is sending it anyway (the RFC lets us omit the 100).
    pub awaits_continue: bool,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`; HTTP/1.0 may omit it.
    pub fn host_is_valid(&self) -> bool {
        self.hosts == 1 || (self.http10 && self.hosts == 0)
    }
}

/// Why a request cannot be served; answered with `status` and then the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parse<'a> {
    /// More bytes are needed.
    Partial,
    /// A whole request, and how many bytes of the buffer it used.
    Complete(Request<'a>, usize),
    Reject(Rejection),
}

const fn reject(status: u16, code: &'static str, message: &'static str) -> Rejection {
    Rejection { status, code, message }
}

pub const HEAD_TOO_LARGE: Rejection =
    reject(431, "headers_too_large", "the request head is larger than 8 KiB");
pub const BODY_TOO_LARGE: Rejection =
    reject(413, "body_too_large", "the request body is larger than 64 KiB");
pub const TIMEOUT: Rejection =
    reject(408, "request_timeout", "the request was not complete within 10 s");
const MALFORMED: Rejection = reject(400, "bad_request", "malformed request line or headers");
const BAD_LENGTH: Rejection = reject(400, "bad_request", "invalid or conflicting Content-Length");
const CHUNKED: Rejection =
    reject(501, "not_implemented", "Transfer-Encoding on requests is not supported");
const TOO_MANY_HEADERS: Rejection = reject(431, "headers_too_large", "too many request headers");
const TWO_AUTHORIZATIONS: Rejection =
    reject(400, "bad_request", "more than one Authorization header");
const BAD_VERSION: Rejection = reject(400, "bad_request", "only HTTP/1.0 and HTTP/1.1 are served");

pub fn parse_request(buf: &[u8]) -> Parse<'_> {
    match parse_parts(buf) {
        Parts::Done(parse) => parse,
        Parts::HeadOnly(_) => Parse::Partial,
    }
}

/// The head of a request whose body has not fully arrived (its `body` is empty); `None` when
/// the head itself is not complete, or `parse_request` would refuse it. A request that
/// cannot be authorized is answered from this, without waiting for (or holding) its body.
pub fn parse_head(buf: &[u8]) -> Option<Request<'_>> {
    match parse_parts(buf) {
        Parts::HeadOnly(request) => Some(request),
        Parts::Done(_) => None,
    }
}

enum Parts<'a> {
    Done(Parse<'a>),
    /// The head is whole and valid; the body is still coming.
    HeadOnly(Request<'a>),
}

fn parse_parts(buf: &[u8]) -> Parts<'_> {
    match parse_whole(buf) {
        Ok(parts) => parts,
        Err(rejection) => Parts::Done(Parse::Reject(rejection)),
    }
}

fn parse_whole(buf: &[u8]) -> Result<Parts<'_>, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(HEAD_TOO_LARGE)
            } else {
                Ok(Parts::Done(Parse::Partial))
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY_HEADERS),
        Err(_) => return Err(MALFORMED),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HEAD_TOO_LARGE);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(MALFORMED);
    };
    if version > 1 {
        return Err(BAD_VERSION);
    }
    let http10 = version == 0;
    let mut keep_alive = !http10;
    let mut content_length: Option<usize> = None;
    let (mut authorization, mut last_event_id, mut origin) = (None, None, None);
    let mut hosts: u8 = 0;
    let mut expects_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if value.contains(&0) {
            return Err(MALFORMED);
        }
        if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = parse_content_length(value) else {
                return Err(BAD_LENGTH);
            };
            if content_length.is_some_and(|prev| prev != n) {
                return Err(BAD_LENGTH);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(CHUNKED);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Err(TWO_AUTHORIZATIONS);
            }
            authorization = Some(value);
        } else if name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = Some(value);
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(value);
        } else if name.eq_ignore_ascii_case("host") {
            hosts = hosts.saturating_add(1);
        } else if name.eq_ignore_ascii_case("expect") {
            // A list of expectations (RFC 9110 §10.1.1); only `100-continue` is defined, and
            // any other is ignored (the RFC allows 417, but SPEC's codes are fixed).
            expects_continue |= value
                .split(|b| *b == b',')
                .any(|member| member.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Err(BODY_TOO_LARGE);
    }
    let total = head_len + body_len;
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let (path, query) = split_target(target);
    let whole = buf.len() >= total;
    let request = Request {
        method,
        path,
        query,
        http10,
        keep_alive,
        authorization,
        last_event_id,
        origin,
        hosts,
        awaits_continue: expects_continue && !http10 && body_len > 0 && buf.len() == head_len,
        body: if whole { &buf[head_len..total] } else { &[] },
    };
    if !whole {
        return Ok(Parts::HeadOnly(request));
    }
    Ok(Parts::Done(Parse::Complete(request, total)))
}

/// The field name that `mark_continue_sent` gives an `Expect` field: a name of the same
/// length that nothing reads.
const EXPECT_MET: &[u8; 6] = b"X-Done";

/// Records in a request's own bytes (`buf` starts with its head) that its `100 Continue` has
/// been sent: every `Expect` field is renamed, so the head parses as before but no longer
/// awaits a 100. The held bytes are all a half-received request has between reads, parks and
/// commits, so this is where "answered once" is kept; a buffer without a whole head is left
/// as it is.
pub fn mark_continue_sent(buf: &mut [u8]) {
    let mut at = [0usize; MAX_HEADERS];
    let mut found = 0;
    {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(buf), Ok(httparse::Status::Complete(_))) {
            return;
        }
        let start = buf.as_ptr() as usize;
        for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("expect")) {
            // ok: httparse's names are slices of `buf`, so the difference is an offset in it.
            at[found] = h.name.as_ptr() as usize - start;
            found += 1;
        }
    }
    for &offset in &at[..found] {
        if let Some(name) = buf.get_mut(offset..offset + EXPECT_MET.len()) {
            name.copy_from_slice(EXPECT_MET);
        }
    }
}

/// Splits a request target into path and query. RFC 9112 §3.2.2: a server accepts the
/// absolute form (`http://host:port/p?q`) too; its authority is dropped.
fn split_target(target: &str) -> (&str, &str) {
    // Compared as bytes: a target may hold UTF-8, and a str slice inside a character panics.
    let has_prefix = |prefix: &str| {
        target
            .as_bytes()
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    let origin_form = if has_prefix("http://") || has_prefix("https://") {
        let after_scheme = &target[target.find("//").map_or(0, |at| at + 2)..];
        match after_scheme.find(['/', '?']) {
            Some(at) if after_scheme.as_bytes()[at] == b'/' => &after_scheme[at..],
            Some(at) => return ("/", &after_scheme[at + 1..]),
            None => return ("/", ""),
        }
    } else {
        target
    };
    origin_form.split_once('?').unwrap_or((origin_form, ""))
}

/// Only plain decimal digits: no sign, no spaces inside, no list form.
fn parse_content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The value of query parameter `name`, percent-decoded; `None` when absent or undecodable.
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key.as_bytes())? == name.as_bytes())
            .then(|| percent_decode(value.as_bytes()))?
    })
}

/// Decodes `%XX` escapes and `+` (form encoding, which browsers use for query strings).
pub fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let hi = hex_value(*input.get(i + 1)?)?;
                let lo = hex_value(*input.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Starts a response head: status line. Headers follow with `header`, then `end_head`.
pub fn start_head(out: &mut Vec<u8>, status: u16) {
    let mut line = String::with_capacity(40);
    let _ = write!(line, "HTTP/1.1 {status} {}\r\n", reason(status));
    out.extend_from_slice(line.as_bytes());
}

pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    // A value that came from a peer (an echoed Origin) must not break the head.
    out.extend(value.iter().filter(|b| **b != b'\r' && **b != b'\n'));
    out.extend_from_slice(b"\r\n");
}

/// Whether the connection stays open after this answer, and how to say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1's default: nothing to say.
    KeepAlive,
    /// An HTTP/1.0 client asked to keep the connection: it must hear that we agree.
    KeepAlive10,
    Close,
}

impl Persistence {
    pub fn of(keep_alive: bool, http10: bool) -> Persistence {
        match (keep_alive, http10) {
            (false, _) => Persistence::Close,
            (true, false) => Persistence::KeepAlive,
            (true, true) => Persistence::KeepAlive10,
        }
    }
}

/// Ends a head for a response with a body of `body_len` bytes (or none, for 204).
pub fn end_head(out: &mut Vec<u8>, status: u16, body_len: usize, persistence: Persistence) {
    if status != 204 {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(body_len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match persistence {
        Persistence::KeepAlive => {}
        Persistence::KeepAlive10 => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persistence::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The JSON error body every non-stream error answer carries.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": code, "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_request(buf) {
            Parse::Complete(r, n) => (r, n),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn rejected(buf: &[u8]) -> u16 {
        match parse_request(buf) {
            Parse::Reject(r) => r.status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_stream_request_with_its_headers() {
        let raw = b"GET /api/periode-limit/notifications/stream?lastEventId=4 HTTP/1.1\r\n\
            Host: x\r\nAuthorization: Bearer abc\r\nLast-Event-ID: 7\r\nOrigin: http://a\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/api/periode-limit/notifications/stream");
        assert_eq!(r.query, "lastEventId=4");
        assert_eq!(r.authorization, Some(&b"Bearer abc"[..]));
        assert_eq!(r.last_event_id, Some(&b"7"[..]));
        assert_eq!(r.origin, Some(&b"http://a"[..]));
        assert!(r.keep_alive && !r.http10);
        assert_eq!(r.body, b"");
    }

    #[test]
    fn every_prefix_is_partial_and_pipelined_requests_split() {
        let one = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..one.len() {
            assert_eq!(parse_request(&one[..cut]), Parse::Partial, "cut at {cut}");
        }
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET /y HTTP/1.1\r\nConnection: close\r\n\r\n");
        let (first, n) = complete(&two);
        assert_eq!((first.path, first.body), ("/x", &b"hello"[..]));
        let (second, m) = complete(&two[n..]);
        assert_eq!(second.path, "/y");
        assert!(!second.keep_alive);
        assert_eq!(n + m, two.len());
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(r.http10 && !r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn rejections() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
            (b"GET /\0 HTTP/1.1\r\n\r\n", 400),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        ];
        for (raw, want) in cases {
            assert_eq!(rejected(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(rejected(&many), 431);
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(9 * 1024, b'a');
        assert_eq!(rejected(&big), 431);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(rejected(&big), 431);
    }

    #[test]
    fn targets_in_origin_and_absolute_form() {
        let cases = [
            ("/a?b=1", ("/a", "b=1")),
            ("/a", ("/a", "")),
            ("http://h:8989/a/b?c", ("/a/b", "c")),
            ("HTTP://h/a", ("/a", "")),
            ("https://h?x=1", ("/", "x=1")),
            ("http://h", ("/", "")),
            ("*", ("*", "")),
            ("/abcde\u{e9}", ("/abcde\u{e9}", "")),
            ("/\u{e9}\u{e9}\u{e9}\u{e9}?q", ("/\u{e9}\u{e9}\u{e9}\u{e9}", "q")),
        ];
        for (target, want) in cases {
            assert_eq!(split_target(target), want, "{target}");
        }
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n"),
            400
        );
    }

    #[test]
    fn duplicate_equal_content_lengths_are_one() {
        let (r, _) =
            complete(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(r.body, b"ok");
    }

    #[test]
    fn a_head_awaits_continue_only_when_a_100_would_help() {
        let post = |version: &str, fields: &str, body: &str| {
            format!("POST /t {version}\r\nHost: h\r\n{fields}\r\n{body}")
        };
        let awaits = |raw: &str| parse_head(raw.as_bytes()).map(|r| r.awaits_continue);
        let cases = [
            (post("HTTP/1.1", "Expect: 100-continue\r\nContent-Length: 5\r\n", ""), true),
            (post("HTTP/1.1", "Content-Length: 5\r\nexpect:  100-Continue \r\n", ""), true),
            (post("HTTP/1.1", "Expect: foo, 100-CONTINUE\r\nContent-Length: 5\r\n", ""), true),
            // The body has begun: the client is sending it already.
            (post("HTTP/1.1", "Expect: 100-continue\r\nContent-Length: 5\r\n", "he"), false),
            // HTTP/1.0 must ignore the field; an expectation we do not know is ignored.
            (post("HTTP/1.0", "Expect: 100-continue\r\nContent-Length: 5\r\n", ""), false),
            (post("HTTP/1.1", "Expect: 200-ok\r\nContent-Length: 5\r\n", ""), false),
            (post("HTTP/1.1", "Expect: 100-continued\r\nContent-Length: 5\r\n", ""), false),
            (post("HTTP/1.1", "Content-Length: 5\r\n", ""), false),
        ];
        for (raw, want) in &cases {
            assert_eq!(awaits(raw), Some(*want), "{raw:?}");
        }
        // No body to wait for: complete requests, never a head that awaits.
        for raw in [
            post("HTTP/1.1", "Expect: 100-continue\r\nContent-Length: 0\r\n", ""),
            post("HTTP/1.1", "Expect: 100-continue\r\n", ""),
            post("HTTP/1.1", "Expect: 100-continue\r\nContent-Length: 2\r\n", "ok"),
        ] {
            let (r, _) = complete(raw.as_bytes());
            assert!(!r.awaits_continue, "{raw:?}");
        }
    }

    #[test]
    fn a_marked_head_is_the_same_request_without_its_expectation() {
        let raw = b"POST /t?q HTTP/1.1\r\nExpect: 100-continue\r\nHost: h\r\n\
            EXPECT: 100-continue\r\nContent-Length: 2\r\nAuthorization: Bearer a\r\n\r\n";
        let mut marked = raw.to_vec();
        mark_continue_sent(&mut marked);
        let (before, after) = (parse_head(raw), parse_head(&marked));
        assert!(before.as_ref().is_some_and(|r| r.awaits_continue));
        let want = before.map(|r| Request { awaits_continue: false, ..r });
        assert_eq!(after, want);
        assert_eq!(marked.len(), raw.len());
        // Marked again (a re-read) or with its body come, it stays one whole request.
        mark_continue_sent(&mut marked);
        marked.extend_from_slice(b"ok");
        let (r, n) = complete(&marked);
        assert_eq!((r.body, n, r.awaits_continue), (&b"ok"[..], marked.len(), false));
        // A buffer without a whole head is left alone.
        let mut partial = b"POST /t HTTP/1.1\r\nExpect: 100-continue\r\n".to_vec();
        mark_continue_sent(&mut partial);
        assert_eq!(partial, b"POST /t HTTP/1.1\r\nExpect: 100-continue\r\n".to_vec());
    }

    #[test]
    fn query_params_are_percent_decoded() {
        let q = "a=1&access_token=ab%2Ecd%3D&lastEventId=12&x";
        assert_eq!(query_param(q, "access_token"), Some(b"ab.cd=".to_vec()));
        assert_eq!(query_param(q, "lastEventId"), Some(b"12".to_vec()));
        assert_eq!(query_param(q, "x"), Some(Vec::new()));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("access_token=%zz", "access_token"), None);
        assert_eq!(query_param("access_token=%4", "access_token"), None);
        assert_eq!(percent_decode(b"a+b%20c"), Some(b"a b c".to_vec()));
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        start_head(&mut out, 405);
        header(&mut out, "Allow", b"GET\r\nX: injected");
        end_head(&mut out, 405, 2, Persistence::Close);
        assert_eq!(
            out,
            b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GETX: injected\r\nContent-Length: 2\r\n\
              Connection: close\r\n\r\n"
                .to_vec()
        );
        let mut out = Vec::new();
        start_head(&mut out, 204);
        end_head(&mut out, 204, 0, Persistence::KeepAlive);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n".to_vec());
        assert_eq!(error_body("x", "a \"q\""), r#"{"error":"x","message":"a \"q\""}"#);
    }
}
