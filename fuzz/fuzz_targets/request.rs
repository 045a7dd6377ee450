//! Fuzzes the HTTP/1.1 request reader the way a connection uses it: parse, take the request
//! and everything the server reads from it (query parameters, the bearer token), then parse the
//! pipelined bytes behind it, until the buffer is used up, partial or refused.
//!
//! Invariants beyond "no panic": a complete request uses at least one byte and never more than
//! it was given, its head is within 8 KiB and its body within 64 KiB; a refusal is one of the
//! statuses SPEC §5 names; a buffer that is still partial is no longer than one largest request.

#![no_main]

use libfuzzer_sys::fuzz_target;
use periode_sse::api::bearer_token;
use periode_sse::http::{self, parse_request, Parse};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // A connection serves pipelined requests one after another; bound the loop all the same.
    for _ in 0..256 {
        match parse_request(rest) {
            Parse::Complete(req, used) => {
                assert!(used >= 1 && used <= rest.len(), "used {used} of {}", rest.len());
                assert!(req.body.len() <= http::MAX_BODY_BYTES);
                assert!(used - req.body.len() <= http::MAX_HEAD_BYTES);
                let _ = http::query_param(req.query, "access_token");
                let _ = http::query_param(req.query, "lastEventId");
                let _ = bearer_token(&req);
                rest = &rest[used..];
            }
            Parse::Partial => {
                assert!(rest.len() <= http::MAX_HEAD_BYTES + http::MAX_BODY_BYTES);
                break;
            }
            Parse::Reject(r) => {
                assert!([400, 413, 431, 501].contains(&r.status), "status {}", r.status);
                break;
            }
        }
    }
    if let Some(decoded) = http::percent_decode(data) {
        assert!(decoded.len() <= data.len());
    }
});
