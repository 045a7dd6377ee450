//! Client-side bytes for many streams at once: the incremental decoders a stream needs
//! (HTTP/1.1 chunked framing, then SSE event boundaries) and response-head parsing.
//!
//! The decoders keep a few bytes of state per stream and never buffer a whole event, so that
//! 19 000 client streams cost the load generator little memory and the server's figures stay
//! the ones that matter.

/// HTTP/1.1 chunked transfer decoding, one byte of state at a time.
#[derive(Clone, Copy)]
pub enum Chunked {
    Size {
        value: u64,
        digits: u8,
    },
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// The zero-length chunk arrived: the response ended properly.
    Ended,
}

pub enum ChunkError {
    Malformed,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked::Size { value: 0, digits: 0 }
    }

    /// Decodes `input`, handing each run of payload bytes to `data`.
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<(), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            *self = match *self {
                Chunked::Size { value, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 15 => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        Chunked::Size { value: value * 16 + d, digits: digits + 1 }
                    }
                    b';' | b' ' if digits > 0 => Chunked::Extension { value },
                    b'\r' if digits > 0 => Chunked::SizeLf { value },
                    b'\n' if digits > 0 => end_of_size(value),
                    _ => return Err(ChunkError::Malformed),
                },
                Chunked::Extension { value } => match b {
                    b'\n' => end_of_size(value),
                    _ => Chunked::Extension { value },
                },
                Chunked::SizeLf { value } => match b {
                    b'\n' => end_of_size(value),
                    _ => return Err(ChunkError::Malformed),
                },
                Chunked::Data { left } => {
                    let take = (left as usize).min(input.len() - i);
                    data(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    *self = if left == 0 { Chunked::DataCr } else { Chunked::Data { left } };
                    continue;
                }
                Chunked::DataCr => match b {
                    b'\r' => Chunked::DataLf,
                    b'\n' => Chunked::new(),
                    _ => return Err(ChunkError::Malformed),
                },
                Chunked::DataLf => match b {
                    b'\n' => Chunked::new(),
                    _ => return Err(ChunkError::Malformed),
                },
                // Trailers after the last chunk are ignored.
                Chunked::Ended => Chunked::Ended,
            };
            i += 1;
        }
        Ok(())
    }
}

fn end_of_size(value: u64) -> Chunked {
    if value == 0 {
        Chunked::Ended
    } else {
        Chunked::Data { left: value }
    }
}

/// The kind of one SSE block (the lines up to a blank line).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Connected,
    Notification,
    Heartbeat,
    /// Another named event, or an unnamed one with data.
    Other,
    /// Only comments or a `retry:` field (nchan's `: hi`, our opening `retry:` block).
    Comment,
}

const LINE_KEEP: usize = 24;

/// Finds SSE block boundaries and each block's `event:` name, keeping only the first few bytes
/// of the current line.
pub struct SseScan {
    line: [u8; LINE_KEEP],
    kept: u8,
    /// The current line has at least one byte.
    in_line: bool,
    /// The current block has at least one line.
    in_block: bool,
    kind: Option<Kind>,
}

impl Default for SseScan {
    fn default() -> SseScan {
        SseScan::new()
    }
}

impl SseScan {
    pub fn new() -> SseScan {
        SseScan { line: [0; LINE_KEEP], kept: 0, in_line: false, in_block: false, kind: None }
    }

    /// Scans `input`, calling `block` with each completed block's kind.
    pub fn feed(&mut self, input: &[u8], mut block: impl FnMut(Kind)) {
        for &b in input {
            match b {
                b'\r' => {}
                b'\n' => {
                    if self.in_line {
                        self.end_line();
                    } else if self.in_block {
                        block(self.kind.take().unwrap_or(Kind::Comment));
                        self.in_block = false;
                    }
                    self.in_line = false;
                    self.kept = 0;
                }
                _ => {
                    self.in_line = true;
                    if (self.kept as usize) < LINE_KEEP {
                        self.line[self.kept as usize] = b;
                        self.kept += 1;
                    }
                }
            }
        }
    }

    fn end_line(&mut self) {
        self.in_block = true;
        let line = &self.line[..self.kept as usize];
        if let Some(name) = line.strip_prefix(b"event:") {
            let name = name.strip_prefix(b" ").unwrap_or(name);
            self.kind = Some(match name {
                b"connected" => Kind::Connected,
                b"notification" => Kind::Notification,
                b"heartbeat" => Kind::Heartbeat,
                _ => Kind::Other,
            });
        } else if line.starts_with(b"data") && self.kind.is_none() {
            self.kind = Some(Kind::Other);
        }
    }
}

/// A response head that is not HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A complete HTTP response at the front of `buf`: (status, bytes it spans, whether the
/// server will close the connection). `None` while incomplete; `Err` when malformed.
pub fn parse_response(buf: &[u8]) -> Result<Option<(u16, usize, bool)>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed),
    };
    let status = response.code.unwrap_or(0);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if chunked {
        let body = &buf[head_len..];
        return Ok(body
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .map(|at| (status, head_len + at + 5, close)));
    }
    let total = head_len + content_length.unwrap_or(0);
    Ok((buf.len() >= total).then_some((status, total, close)))
}

/// Whether a stream response's head says chunked, and its status; `None` while incomplete.
pub fn parse_stream_head(buf: &[u8]) -> Result<Option<(u16, usize, bool)>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let chunked = response.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    && h.value.eq_ignore_ascii_case(b"chunked")
            });
            Ok(Some((response.code.unwrap_or(0), n, chunked)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sse_across_splits() {
        let mut body = Vec::new();
        for part in ["retry: 5000\n\nevent: con", "nected\ndata: x\n\n"] {
            body.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        body.extend_from_slice(b"0\r\n\r\n");
        for split in 0..body.len() {
            let mut c = Chunked::new();
            let mut s = SseScan::new();
            let mut kinds = Vec::new();
            for part in [&body[..split], &body[split..]] {
                let _ = c.feed(part, |d| s.feed(d, |k| kinds.push(k)));
            }
            assert_eq!(kinds, vec![Kind::Comment, Kind::Connected], "split {split}");
            assert!(matches!(c, Chunked::Ended));
        }
    }
}
