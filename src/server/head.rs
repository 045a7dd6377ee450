//! The one writer of response heads: status line, fields, CORS, framing, persistence.
//!
//! Every answer the server sends — JSON, the page, `/metrics`, a preflight, a stream's
//! opening, the 503 of a refused connection — starts here, so a field every answer must carry
//! is added in one place.

use crate::http::{self, Persistence};

/// How the body that follows is delimited.
#[derive(Clone, Copy)]
pub(super) enum Framing {
    /// `Content-Length` (none for a 204), then the connection stays or closes.
    Length(usize, Persistence),
    /// A stream: chunked for HTTP/1.1, close-delimited for HTTP/1.0; the last thing on the
    /// connection either way.
    Stream { chunked: bool },
}

/// CORS fields of one answer.
#[derive(Clone, Copy, Default)]
pub(super) struct Cors<'a> {
    /// The request's `Origin`, echoed when allowed.
    pub(super) allowed_origin: Option<&'a [u8]>,
    /// With CORS on, every answer depends on Origin, allowed or not: a shared cache must not
    /// hand one origin's answer to another.
    pub(super) vary: bool,
}

/// Appends a whole head: status line, `Date` (RFC 9110 §6.6.1: an origin server with a
/// clock sends it on every answer), `fields` in order, the CORS fields, then the framing.
pub(super) fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    date: &[u8],
    fields: &[(&str, &[u8])],
    cors: Cors<'_>,
    framing: Framing,
) {
    http::start_head(out, status);
    http::header(out, "Date", date);
    for (name, value) in fields {
        http::header(out, name, value);
    }
    if let Some(origin) = cors.allowed_origin {
        http::header(out, "Access-Control-Allow-Origin", origin);
    }
    if cors.vary {
        http::header(out, "Vary", b"Origin");
    }
    match framing {
        Framing::Length(len, persistence) => http::end_head(out, status, len, persistence),
        Framing::Stream { chunked } => {
            if chunked {
                http::header(out, "Transfer-Encoding", b"chunked");
            }
            out.extend_from_slice(b"Connection: close\r\n\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let mut out = Vec::new();
        let cors = Cors { allowed_origin: Some(b"http://a"), vary: true };
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        write_head(
            &mut out,
            200,
            date,
            &[("Content-Type", b"text/event-stream")],
            cors,
            Framing::Stream { chunked: true },
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: text/event-stream\r\n\
             Access-Control-Allow-Origin: http://a\r\nVary: Origin\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        out.clear();
        write_head(
            &mut out,
            404,
            date,
            &[],
            Cors::default(),
            Framing::Length(7, Persistence::Close),
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 404 Not Found\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 7\r\nConnection: close\r\n\r\n"
        );
    }
}
