mod common;
use common::*;
use std::time::Duration;

#[test]
fn harness_sees_a_demo_stream() {
    let server = Server::start(&["--heartbeat", "1"]);
    let token = server.token(13);
    let mut s = server.open_stream(&token);
    assert_eq!(s.status, 200);
    let first = s.next_any(Duration::from_secs(5)).unwrap();
    assert_eq!(first.retry, Some(5000));
    let connected = s.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(connected.event, "connected");
    let note = s.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(note.event, "notification");
    assert_eq!(note.json()["currentSpending"], 267000);
    let hb = s.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(hb.event, "heartbeat");
    server.signal("TERM");
    assert!(s.wait_end(Duration::from_secs(5)));
}
