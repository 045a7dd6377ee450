//! The NOTIFY payloads every node sends and hears on one channel: a notification with its id
//! and data, and the changes that make another node's per-user view stale.
//!
//! Pure text in both directions. A payload is a one-letter kind, the user id and, for a
//! notification, its id and its data, separated by single spaces (the data is JSON and comes
//! last, so it may hold spaces). PostgreSQL caps a payload at 8000 bytes; a notification's
//! data is a few hundred.
//!
//! ```text
//! n 13 42 {"userId":13,"currentSpending":272000,…}   notification 42 of user 13
//! l 13                                                user 13's limit changed
//! u 13 0                                              user 13 deactivated (1: activated)
//! v 13                                                user 13's spending changed, no notification
//! ```

use crate::domain::UserId;
use std::fmt::Write as _;

/// The one channel every node listens on.
pub const CHANNEL: &str = "periode_sse";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Notification {
        user: UserId,
        id: u64,
        data: String,
    },
    LimitChanged {
        user: UserId,
    },
    ActiveChanged {
        user: UserId,
        active: bool,
    },
    /// A transaction that produced no notification (no limit covers now): the cached
    /// spending of the user's view is stale all the same.
    SpendingChanged {
        user: UserId,
    },
}

impl Event {
    pub fn user(&self) -> UserId {
        match self {
            Event::Notification { user, .. }
            | Event::LimitChanged { user }
            | Event::ActiveChanged { user, .. }
            | Event::SpendingChanged { user } => *user,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(32);
        let _ = match self {
            Event::Notification { user, id, data } => write!(out, "n {user} {id} {data}"),
            Event::LimitChanged { user } => write!(out, "l {user}"),
            Event::ActiveChanged { user, active } => write!(out, "u {user} {}", u8::from(*active)),
            Event::SpendingChanged { user } => write!(out, "v {user}"),
        };
        out
    }

    /// `None` for anything this version does not understand (a newer node's kind of event,
    /// or a stranger's NOTIFY on our channel): the caller then treats it as "something
    /// changed" and catches up, rather than trusting a guess.
    pub fn parse(payload: &str) -> Option<Event> {
        let mut parts = payload.splitn(4, ' ');
        let kind = parts.next()?;
        let user = parse_user(parts.next()?)?;
        let event = match kind {
            "n" => {
                let id: u64 = parse_digits(parts.next()?)?;
                let data = parts.next()?;
                if data.is_empty() {
                    return None;
                }
                return Some(Event::Notification { user, id, data: data.to_string() });
            }
            "l" => Event::LimitChanged { user },
            "u" => match parts.next()? {
                "0" => Event::ActiveChanged { user, active: false },
                "1" => Event::ActiveChanged { user, active: true },
                _ => return None,
            },
            "v" => Event::SpendingChanged { user },
            _ => return None,
        };
        // Nothing may follow the short kinds.
        parts.next().is_none().then_some(event)
    }
}

fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_user(text: &str) -> Option<UserId> {
    let id = i64::try_from(parse_digits(text)?).ok()?;
    Some(UserId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back() {
        let data = r#"{"userId":13,"description":"a b  c"}"#.to_string();
        for event in [
            Event::Notification { user: UserId(13), id: 42, data },
            Event::LimitChanged { user: UserId(7) },
            Event::ActiveChanged { user: UserId(0), active: false },
            Event::ActiveChanged { user: UserId(i64::MAX), active: true },
            Event::SpendingChanged { user: UserId(5) },
        ] {
            assert_eq!(Event::parse(&event.encode()), Some(event));
        }
    }

    #[test]
    fn exact_text() {
        let n = Event::Notification { user: UserId(13), id: 1, data: "{}".into() };
        assert_eq!(n.encode(), "n 13 1 {}");
        assert_eq!(Event::ActiveChanged { user: UserId(2), active: false }.encode(), "u 2 0");
    }

    #[test]
    fn strangers_are_refused() {
        for text in [
            "",
            "n",
            "n 13",
            "n 13 1",
            "n 13 1 ",
            "n -1 1 {}",
            "n 13 x {}",
            "n 13 +1 {}",
            "x 13",
            "l",
            "l 13 extra",
            "u 13",
            "u 13 2",
            "v 99999999999999999999",
            "l  13",
        ] {
            assert_eq!(Event::parse(text), None, "{text:?}");
        }
    }
}
