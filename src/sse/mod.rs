//! Server-Sent Events framing (WHATWG HTML §9.2) and the HTTP/1.1 chunk that carries a frame.
//!
//! Pure byte building: no sockets, no clock. A frame is encoded once per event and the same
//! bytes are written to every stream that should see it, so everything here appends to a
//! caller's buffer instead of allocating. Field values must never smuggle a line break into
//! the stream: event names and ids lose CR/LF, and data is split into one `data:` line per line.
//!
//! `oracle` is the other side: a parser that dispatches events as a browser does, used only
//! by tests and tools to check these bytes.

pub mod oracle;

/// Appends one event: `id:` (if any), `event:` (if not empty), one `data:` line per line of
/// `data`, and the blank line that dispatches it.
pub fn encode_event(out: &mut Vec<u8>, id: Option<u64>, event: &str, data: &str) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        push_u64(out, id);
        out.push(b'\n');
    }
    if !event.is_empty() {
        out.extend_from_slice(b"event: ");
        push_single_line(out, event);
        out.push(b'\n');
    }
    // A client splits data on CRLF, LF and CR alike, so each of them starts a new data line.
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.find(['\r', '\n']) {
            Some(at) => {
                out.extend_from_slice(&rest.as_bytes()[..at]);
                out.push(b'\n');
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
            None => {
                out.extend_from_slice(rest.as_bytes());
                out.push(b'\n');
                break;
            }
        }
    }
    out.push(b'\n');
}

/// Appends a `retry:` field on its own, which sets the client's reconnection delay.
pub fn encode_retry(out: &mut Vec<u8>, retry_ms: u64) {
    out.extend_from_slice(b"retry: ");
    push_u64(out, retry_ms);
    out.extend_from_slice(b"\n\n");
}

/// The `heartbeat` event, whose data is the server's clock in epoch milliseconds.
pub fn encode_heartbeat(out: &mut Vec<u8>, epoch_ms: i64) {
    out.extend_from_slice(b"event: heartbeat\ndata: {\"timestamp\":");
    out.extend_from_slice(epoch_ms.to_string().as_bytes());
    out.extend_from_slice(b"}\n\n");
}

/// Runs `encode` and wraps what it appended in one HTTP/1.1 chunk (`<hex len>\r\n…\r\n`).
/// Returns the range of `out` that holds the bare frame, for clients that are not chunked.
pub fn encode_chunk(
    out: &mut Vec<u8>,
    encode: impl FnOnce(&mut Vec<u8>),
) -> std::ops::Range<usize> {
    // Leave room for the longest size line, encode, then slide the frame down to sit right
    // after the real size line: one small copy instead of a second buffer.
    const ROOM: usize = 18; // 16 hex digits + CRLF
    let start = out.len();
    out.resize(start + ROOM, 0);
    encode(out);
    let len = out.len() - start - ROOM;
    if len == 0 {
        // An empty chunk would end the response; encode nothing instead.
        out.truncate(start);
        return start..start;
    }
    let size_line = format!("{len:x}\r\n");
    let body_at = start + size_line.len();
    out.copy_within(start + ROOM.., body_at);
    out.truncate(body_at + len);
    out[start..body_at].copy_from_slice(size_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    body_at..body_at + len
}

/// The zero-length chunk that ends a chunked response: what makes `curl -N` exit 0.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn push_single_line(out: &mut Vec<u8>, value: &str) {
    out.extend(value.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(id: Option<u64>, event: &str, data: &str) -> String {
        let mut out = Vec::new();
        encode_event(&mut out, id, event, data);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encodes_the_spec_examples_byte_for_byte() {
        let cases: &[(Option<u64>, &str, &str, &str)] = &[
            (
                None,
                "connected",
                r#"{"message":"Connected to Spending notifications"}"#,
                "event: connected\ndata: {\"message\":\"Connected to Spending notifications\"}\n\n",
            ),
            (Some(41), "notification", "{}", "id: 41\nevent: notification\ndata: {}\n\n"),
            (Some(0), "x", "", "id: 0\nevent: x\ndata: \n\n"),
            (None, "", "a\nb", "data: a\ndata: b\n\n"),
            (None, "", "a\r\nb\rc", "data: a\ndata: b\ndata: c\n\n"),
        ];
        for (id, event, data, want) in cases {
            assert_eq!(encoded(*id, event, data), *want);
        }
    }

    #[test]
    fn round_trips_through_a_spec_parser() {
        let cases = ["plain", "two\nlines", "crlf\r\nline", "", " leading space", "trail\n"];
        for data in cases {
            let text = encoded(Some(7), "notification", data);
            let got = oracle::parse_all(&text);
            let want = oracle::Event {
                id: Some("7".into()),
                event: "notification".into(),
                data: data.replace("\r\n", "\n"),
                retry: None,
            };
            assert_eq!(got, vec![want], "data {data:?}");
        }
    }

    #[test]
    fn line_breaks_cannot_inject_fields() {
        let text = encoded(None, "evil\r\nid: 99\n\ndata: x", "ok");
        let got = oracle::parse_all(&text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, "evilid: 99data: x");
        assert_eq!(got[0].id, None);
    }

    #[test]
    fn retry_and_heartbeat_bytes() {
        let mut out = Vec::new();
        encode_retry(&mut out, 5000);
        encode_heartbeat(&mut out, 1729503005915);
        assert_eq!(
            out,
            b"retry: 5000\n\nevent: heartbeat\ndata: {\"timestamp\":1729503005915}\n\n"
        );
    }

    #[test]
    fn chunk_wraps_the_frame_and_reports_its_range() {
        let mut out = b"HEAD".to_vec();
        let range = encode_chunk(&mut out, |o| encode_retry(o, 5000));
        assert_eq!(out, b"HEADd\r\nretry: 5000\n\n\r\n");
        assert_eq!(&out[range], b"retry: 5000\n\n");
        let mut big = Vec::new();
        let range = encode_chunk(&mut big, |o| o.extend(std::iter::repeat_n(b'x', 300)));
        assert!(big.starts_with(b"12c\r\nxxx"));
        assert_eq!(range, 5..305);
        assert!(big.ends_with(b"x\r\n"));
        let mut empty = b"keep".to_vec();
        assert_eq!(encode_chunk(&mut empty, |_| {}), 4..4);
        assert_eq!(empty, b"keep");
    }

    #[test]
    fn u64_digits() {
        for v in [0u64, 9, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }
}
