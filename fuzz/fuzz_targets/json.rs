//! Fuzzes the strict JSON parser of write bodies (`json::parse`, used by `api::body_object`)
//! against serde_json's own, on raw bytes and on bytes that start like a body.
//!
//! Invariants beyond "no panic": whatever the strict parser accepts, serde_json accepts as the
//! same value; whatever serde_json accepts and the strict parser refuses is refused for a
//! repeated member name, and for nothing else; an error is short (it goes in a 400 answer).

#![no_main]

use libfuzzer_sys::fuzz_target;
use periode_sse::json;

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes as the members of a transaction body, so that the fuzzer's edits land
    // inside an object as often as not.
    let mut body = br#"{"amount":5000,"description":"coffee","#.to_vec();
    body.extend_from_slice(data);
    check(&body);
});

fn check(bytes: &[u8]) {
    let loose = serde_json::from_slice::<serde_json::Value>(bytes);
    match json::parse(bytes) {
        Ok(value) => assert_eq!(loose.ok(), Some(value), "strict accepted what serde_json did not"),
        Err(e) => {
            assert!(e.0.len() <= 400, "error of {} bytes", e.0.len());
            if loose.is_ok() {
                assert!(e.0.contains("appears more than once"), "refused for {e}");
            }
        }
    }
}
