//! systemd readiness against the real binary: the test plays the service manager, binds the
//! datagram socket named by `NOTIFY_SOCKET`, and checks what arrives and when.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Binds a notify socket in `dir` the way systemd does, with a receive deadline.
fn bind_notify_socket(dir: &TempDir) -> (UnixDatagram, String) {
    let path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
    (sock, path.to_string_lossy().into_owned())
}

fn receive(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
}

fn start_notifying(dir: std::sync::Arc<TempDir>, notify_socket: &str) -> Server {
    Server::start_with(Options {
        args: &["--demo"],
        env: &[("NOTIFY_SOCKET", notify_socket)],
        dir: Some(dir),
        ..Options::default()
    })
}

#[test]
fn ready_once_listening_then_stopping_at_sigterm() {
    let dir = std::sync::Arc::new(TempDir::new());
    let (notify, path) = bind_notify_socket(&dir);
    let mut server = start_notifying(dir.clone(), &path);

    let ready = receive(&notify);
    assert_eq!(ready, format!("READY=1\nSTATUS=listening on http://{}\n", server.addr));
    // Ready means serving: the very next request is answered.
    let token = server.token(13);
    assert_eq!(server.health(&token)["status"], "healthy");

    let mut stream = server.open_stream(&token);
    assert!(stream.next_named("connected", Duration::from_secs(5)).is_some());
    server.signal("TERM");
    // Sent when the stop begins, before the streams have ended.
    assert_eq!(receive(&notify), "STOPPING=1\nSTATUS=stopping: ending every stream\n");
    assert!(stream.wait_end(Duration::from_secs(6)), "the stream ends cleanly at SIGTERM");
    assert_eq!(server.wait_exit(Duration::from_secs(6)), Some(0));
}

#[test]
fn abstract_socket_names_work() {
    let dir = std::sync::Arc::new(TempDir::new());
    let name = format!("periode-sse-test-notify-{}", std::process::id());
    let notify = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        UnixDatagram::bind_addr(&addr).expect("bind abstract socket")
    };
    notify.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
    let server = start_notifying(dir, &format!("@{name}"));
    assert_eq!(receive(&notify), format!("READY=1\nSTATUS=listening on http://{}\n", server.addr));
}

#[test]
fn a_notify_socket_nobody_listens_on_is_logged_not_fatal() {
    let dir = std::sync::Arc::new(TempDir::new());
    let missing = dir.0.join("nobody-here.sock").to_string_lossy().into_owned();
    let server = start_notifying(dir, &missing);
    server.log.wait_for("READY=1 not sent (the server keeps running)", 0, Duration::from_secs(5));
    let token = server.token(13);
    assert_eq!(server.health(&token)["status"], "healthy");
}
