//! systemd readiness: tells the service manager, over `$NOTIFY_SOCKET`, that the server is
//! listening (`READY=1`) and later that it is stopping (`STOPPING=1`), for `Type=notify` units.
//!
//! The protocol is one datagram of `KEY=value` lines on a Unix socket whose address systemd
//! puts in the environment: a path, or `@name` for an abstract socket. That is a few lines
//! with the standard library, so no crate. With the variable unset (not under systemd, or a
//! unit of another type) nothing happens. A failure to notify is logged and never stops the
//! server: it would only make systemd give up on a server that is serving, which its
//! start-up timeout does anyway.
//!
//! Parsing the variable and building the message are pure (tested below); `send` is the only
//! I/O, and this module must never block the event loop: a datagram to a Unix socket either
//! goes at once or fails.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The environment variable systemd sets for services that may notify it.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where the notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file, e.g. `/run/systemd/notify`.
    Path(PathBuf),
    /// A socket in the abstract namespace: `@name` in the variable, `name` here.
    Abstract(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyError {
    /// The variable is set but names nothing we can send to (relative path, `vsock:`, …).
    Unsupported(String),
    Send(String),
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyError::Unsupported(value) => write!(
                f,
                "{NOTIFY_SOCKET}={value:?} is neither an absolute path nor an @abstract name"
            ),
            NotifyError::Send(e) => write!(f, "cannot notify systemd: {e}"),
        }
    }
}

/// `$NOTIFY_SOCKET`'s value → where to send. `None` for an empty value (nothing to do).
pub fn parse_target(value: &OsStr) -> Result<Option<Target>, NotifyError> {
    let bytes = value.as_bytes();
    match bytes.first() {
        None => Ok(None),
        Some(b'@') if bytes.len() > 1 => Ok(Some(Target::Abstract(bytes[1..].to_vec()))),
        // sd_notify(3) accepts only absolute paths; a relative one would depend on our cwd.
        Some(b'/') => Ok(Some(Target::Path(PathBuf::from(value)))),
        Some(_) => Err(NotifyError::Unsupported(value.to_string_lossy().into_owned())),
    }
}

/// The datagram: `state` (e.g. `READY=1`) and a one-line `STATUS=` that `systemctl status`
/// shows. The protocol is newline-separated, so a newline in the status would start a new
/// assignment: those become spaces.
pub fn message(state: &str, status: &str) -> String {
    let status: String = status.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
    format!("{state}\nSTATUS={status}\n")
}

/// Sends `message` to `target` from an unbound datagram socket.
pub fn send(target: &Target, message: &str) -> Result<(), NotifyError> {
    let sock = UnixDatagram::unbound().map_err(|e| NotifyError::Send(e.to_string()))?;
    let sent = match target {
        Target::Path(path) => sock.send_to(message.as_bytes(), path),
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
        }
    };
    match sent {
        Ok(n) if n == message.len() => Ok(()),
        Ok(n) => Err(NotifyError::Send(format!("sent {n} of {} bytes", message.len()))),
        Err(e) => Err(NotifyError::Send(e.to_string())),
    }
}

/// Tells systemd the server is ready (listening), if it is listening for that.
pub fn ready(status: &str) {
    notify("READY=1", status);
}

/// Tells systemd the server has begun to stop, so `systemctl status` says so.
pub fn stopping(status: &str) {
    notify("STOPPING=1", status);
}

fn notify(state: &str, status: &str) {
    let Some(value) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let outcome = parse_target(&value).and_then(|target| match target {
        Some(target) => send(&target, &message(state, status)),
        None => Ok(()),
    });
    if let Err(e) = outcome {
        log::warn!("{e}; {state} not sent (the server keeps running)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let cases: &[(&str, Result<Option<Target>, ()>)] = &[
            ("", Ok(None)),
            ("/run/systemd/notify", Ok(Some(Target::Path("/run/systemd/notify".into())))),
            (
                "@/org/freedesktop/systemd1/notify/1",
                Ok(Some(Target::Abstract(b"/org/freedesktop/systemd1/notify/1".to_vec()))),
            ),
            ("@x", Ok(Some(Target::Abstract(b"x".to_vec())))),
            ("@", Err(())),
            ("run/notify", Err(())),
            ("vsock:2:1234", Err(())),
        ];
        for (value, want) in cases {
            let got = parse_target(OsStr::new(value)).map_err(|_| ());
            assert_eq!(&got, want, "NOTIFY_SOCKET={value:?}");
        }
    }

    #[test]
    fn messages() {
        assert_eq!(message("READY=1", "listening"), "READY=1\nSTATUS=listening\n");
        assert_eq!(message("STOPPING=1", "a\nb"), "STOPPING=1\nSTATUS=a b\n");
    }

    #[test]
    fn unsupported_value_is_named_in_the_error() {
        let e = parse_target(OsStr::new("vsock:2:1")).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err("NOTIFY_SOCKET=\"vsock:2:1\" is neither an absolute path nor an @abstract name"
                .to_string())
        );
    }
}
