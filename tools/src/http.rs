//! Blocking HTTP/1.1 on the client side: requests that always carry one `Host` header (SPEC
//! §5 requires exactly one), and a reader that takes responses one after another off a
//! keep-alive connection, keeping the bytes read past one answer for the next (pipelining).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The `Host` every request of the kit names: the server answers any host, so one value
/// serves; tests that check the header's rules write their own bytes.
pub const HOST: &str = "127.0.0.1";

/// One whole response. `head` is the status line and headers, up to and with the blank line;
/// `body` is what followed, as text (lossy), not de-chunked.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }
}

/// The value of header `name` (case-insensitive) in a response head, if present.
pub fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// The status code of a response head (`HTTP/1.1 200 OK` → 200).
pub fn status_of(head: &str) -> Option<u16> {
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

/// The bytes of a request: request line, `Host`, then `headers` (each line ending in CRLF),
/// then `Content-Length` and the body when there is a body.
pub fn request_bytes(method: &str, target: &str, headers: &str, body: &str) -> String {
    let length = if body.is_empty() && matches!(method, "GET" | "HEAD" | "OPTIONS") {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n{headers}{length}\r\n{body}")
}

/// A blocking loopback connection with `TCP_NODELAY` and a read timeout.
pub fn connect(addr: SocketAddr, read_timeout: Duration) -> io::Result<TcpStream> {
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(read_timeout))?;
    sock.set_nodelay(true)?;
    Ok(sock)
}

/// One request on a fresh connection that the client closes after the answer: JSON body,
/// bearer token. For tools that want a status and a body and nothing else.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> io::Result<Response> {
    let mut sock = connect(addr, Duration::from_secs(10))?;
    let headers = format!(
        "Authorization: Bearer {token}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    );
    let raw = request_bytes(method, path, &headers, body);
    sock.write_all(raw.as_bytes())?;
    Responses::new(sock).next_response()
}

/// Responses read one after another from one connection.
pub struct Responses<S> {
    sock: S,
    buf: Vec<u8>,
}

impl<S: Read> Responses<S> {
    pub fn new(sock: S) -> Responses<S> {
        Responses { sock, buf: Vec::new() }
    }

    /// The connection, to write the next request on.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    /// Bytes read past the last response returned.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next response: `Content-Length`-framed; none means no body for 1xx, 204 and 304,
    /// and for anything else the body runs to EOF.
    pub fn next_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill("a whole head")?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let status = status_of(&head).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("no status in {head:?}"))
        })?;
        let length = match header_in(&head, "content-length") {
            Some(v) => Some(v.parse::<usize>().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("Content-Length {v:?}"))
            })?),
            None => None,
        };
        let end = match length {
            Some(n) => head_end + n,
            None if status < 200 || status == 204 || status == 304 => head_end,
            None => {
                self.sock.read_to_end(&mut self.buf)?;
                self.buf.len()
            }
        };
        while self.buf.len() < end {
            self.fill("the whole body")?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..end]).to_string();
        self.buf.drain(..end);
        Ok(Response { status, head, body })
    }

    fn fill(&mut self, wanted: &str) -> io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = loop {
            match self.sock.read(&mut chunk) {
                Ok(n) => break n,
                // A signal handled in this process (a test's child reaped, a timer) is not
                // the peer's doing: read again, as `read_exact` would.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let have = String::from_utf8_lossy(&self.buf);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e} while reading {wanted}; have {have:?}"),
                    ));
                }
            }
        };
        if n == 0 {
            let have = String::from_utf8_lossy(&self.buf);
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed before {wanted}; have {have:?}"),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_responses_come_apart_and_the_rest_waits() {
        let bytes: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 404 Not Found\r\ncontent-length: 1\r\n\r\nxHTTP/1.1 500 E\r\n\r\nto the end";
        let mut r = Responses::new(bytes);
        let got: Vec<(u16, String)> = (0..4)
            .filter_map(|_| r.next_response().ok())
            .map(|resp| (resp.status, resp.body))
            .collect();
        let want = [(200, "ok"), (204, ""), (404, "x"), (500, "to the end")];
        assert_eq!(got, want.map(|(s, b)| (s, b.to_string())));
        assert!(r.next_response().is_err());
    }

    #[test]
    fn requests_carry_one_host() {
        let raw = request_bytes("POST", "/x", "A: b\r\n", "{}");
        assert_eq!(
            raw,
            "POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nA: b\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert_eq!(request_bytes("GET", "/", "", ""), "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    }
}
