//! The SSE oracle: a parser that dispatches events as WHATWG HTML §9.2.6 says a browser does
//! (`data` lines joined with LF, one leading space stripped from a value, comments skipped,
//! `id` only when it holds no NUL), fed bytes as they arrive. It also returns `retry:`-only
//! blocks, which a browser applies silently, because the tests assert them.
//!
//! It lives beside the encoder so that the encoder's unit tests, the integration tests (through
//! `periode_kit::sse`) and the tools check against one parser. The server never calls it.
//! Unlike the kit's `wire::SseScan` it keeps whole events: it is for checking, not for 19 000
//! streams.

/// One SSE block as a browser would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The block's `id:` field, when it has one.
    pub id: Option<String>,
    /// The `event:` name; empty when the block has none (a browser calls it "message").
    pub event: String,
    pub data: String,
    pub retry: Option<u64>,
}

impl Event {
    /// A block with neither a name nor data: only a `retry:`.
    pub fn is_retry_only(&self) -> bool {
        self.event.is_empty() && self.data.is_empty()
    }
}

/// Bytes in, events out, across any split of the input.
#[derive(Debug, Default)]
pub struct Parser {
    text: Vec<u8>,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Adds bytes of the (de-chunked) body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.text.extend_from_slice(bytes);
    }

    /// Bytes pushed and not yet part of a returned event.
    pub fn pending(&self) -> &[u8] {
        &self.text
    }

    /// The next complete block that carries data or a retry; `None` until one is complete.
    /// Blocks with neither (comments only) are consumed and skipped.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let end = block_end(&self.text)?;
            let block = String::from_utf8_lossy(&self.text[..end.0]).to_string();
            self.text.drain(..end.1);
            if let Some(ev) = parse_block(&block) {
                return Some(ev);
            }
        }
    }
}

/// Every complete event in `text` (the oracle over a whole body).
pub fn parse_all(text: &str) -> Vec<Event> {
    let mut p = Parser::new();
    p.push(text.as_bytes());
    std::iter::from_fn(|| p.next_event()).collect()
}

/// Where the first block ends: (end of its text, end of its blank line).
fn block_end(text: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'\n' || b == b'\r' {
            let next = if b == b'\r' && text.get(i + 1) == Some(&b'\n') { i + 2 } else { i + 1 };
            if b == b'\r' && next == text.len() {
                return None; // a CR at the end may still be followed by its LF
            }
            if i == line_start && line_start > 0 {
                return Some((line_start, next));
            }
            if i == line_start {
                // A blank line with no block before it: skip it.
                return Some((0, next));
            }
            line_start = next;
            i = next;
            continue;
        }
        i += 1;
    }
    None
}

fn parse_block(block: &str) -> Option<Event> {
    let mut ev = Event { id: None, event: String::new(), data: String::new(), retry: None };
    let mut has_data = false;
    for line in block.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" if !value.contains('\0') => ev.id = Some(value.to_string()),
            "event" => ev.event = value.to_string(),
            "data" => {
                if has_data {
                    ev.data.push('\n');
                }
                ev.data.push_str(value);
                has_data = true;
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                ev.retry = value.parse().ok()
            }
            _ => {}
        }
    }
    (has_data || ev.retry.is_some()).then_some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: Option<&str>, event: &str, data: &str) -> Event {
        Event { id: id.map(String::from), event: event.into(), data: data.into(), retry: None }
    }

    #[test]
    fn the_whatwg_examples() {
        assert_eq!(parse_all("data:test\n\n"), parse_all("data: test\n\n"));
        let two = parse_all("data\n\ndata\ndata\n\ndata:");
        assert_eq!(two, vec![ev(None, "", ""), ev(None, "", "\n")]);
        let three = parse_all(
            ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        );
        let want = vec![
            ev(Some("1"), "", "first event"),
            ev(Some(""), "", "second event"),
            ev(None, "", " third event"),
        ];
        assert_eq!(three, want);
    }

    #[test]
    fn retry_blocks_and_any_split() {
        let text = "retry: 5000\n\nevent: connected\r\ndata: {}\r\n\r\nid: 7\nevent: notification\ndata: x\n\n";
        let whole = parse_all(text);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].retry, Some(5000));
        assert!(whole[0].is_retry_only());
        assert_eq!(whole[1], ev(None, "connected", "{}"));
        assert_eq!(whole[2], ev(Some("7"), "notification", "x"));
        for split in 0..text.len() {
            let mut p = Parser::new();
            let mut got = Vec::new();
            for part in [&text.as_bytes()[..split], &text.as_bytes()[split..]] {
                p.push(part);
                got.extend(std::iter::from_fn(|| p.next_event()));
            }
            assert_eq!(got, whole, "split {split}");
        }
    }
}
