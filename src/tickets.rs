//! Stream tickets (SPEC §8): single-use, 30-second stand-ins for a token in a stream URL.
//!
//! `POST …/notifications/ticket` mints one for the caller's verified claims; `?ticket=` on the
//! stream URL redeems it and gives those claims back, so a ticketed stream is served exactly as
//! one opened with the token itself would be (same user, same role, and it still ends at the
//! token's `exp` plus the leeway: a ticket never outlives the token it was bought with). A
//! ticket is 128 random bits from the kernel (`getrandom`), shown to the client as 22 base64url
//! characters; the server keeps only what it needs to redeem it (the bits, the claims, the
//! ticket's expiry, whether it was used). Pure apart from `fresh_secret`'s one system call: no
//! sockets, no clock (`now_ms` is passed in), no logging, and a ticket never appears in a
//! `Debug` or `Display` output: it is a credential for as long as it lives.
//!
//! Memory is bounded: at most `max_outstanding` tickets are kept in all and
//! `max_per_user` per user (so one user minting in a loop cannot crowd out the others);
//! expired ones are swept on every mint and redemption, oldest first. A used ticket is kept
//! until it would have expired, so that a second use is told apart from a made-up ticket
//! (both are answered `401 invalid_token`; the difference is for logs and metrics).
//!
//! In cluster mode the tickets live in PostgreSQL instead (`pg/tickets.rs`), so that any node
//! redeems a ticket any node minted; `draw_shared` and `shared_key` are the pieces it shares
//! with this file: the same random bits and text, and the hash the shared table keys them by.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::domain::UserId;
use crate::jwt::Claims;

/// How long a ticket is valid, in milliseconds (SPEC §8: 30 s).
pub const TICKET_TTL_MS: i64 = 30_000;
/// What the answer's `expiresIn` says, in seconds.
pub const TICKET_TTL_SECS: i64 = TICKET_TTL_MS / 1000;
/// Random bytes per ticket: 128 bits, SPEC §8's floor.
const SECRET_BYTES: usize = 16;
/// Their base64url length, without padding.
const ENCODED_LEN: usize = 22;
/// Defaults: a page mints one ticket per stream (re)connection, so even a browser with a
/// stream per tab in a reconnection storm stays far below 64 in 30 s; the total bounds what a
/// flood of authenticated minting can hold, about 100 bytes a ticket (a few MiB in all).
pub const DEFAULT_MAX_OUTSTANDING: usize = 65_536;
pub const DEFAULT_MAX_PER_USER: usize = 64;

/// 128 random bits. No `Debug`, `Display` or accessor that would let them leak into a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Secret([u8; SECRET_BYTES]);

/// A freshly minted ticket: the text to hand to the client once, in the `201` answer.
pub struct Minted {
    text: String,
}

impl Minted {
    /// The ticket as the client sends it back in `?ticket=`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The `201` body: `{"ticket":"…","expiresIn":30}` (base64url needs no JSON escaping).
    pub fn answer_json(&self) -> String {
        format!(r#"{{"ticket":"{}","expiresIn":{TICKET_TTL_SECS}}}"#, self.text)
    }
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Minted(..)") // never the ticket
    }
}

/// Why a ticket was not minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintError {
    /// This user already holds `max_per_user` live tickets (answer `429`).
    UserFull,
    /// `max_outstanding` live tickets in all (answer `503`).
    Full,
    /// The kernel gave no random bytes (answer `503`).
    NoRandomness,
}

impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MintError::UserFull => f.write_str("too many outstanding stream tickets for this user"),
            MintError::Full => f.write_str("too many outstanding stream tickets"),
            MintError::NoRandomness => f.write_str("no random bytes for a stream ticket"),
        }
    }
}

impl std::error::Error for MintError {}

/// Why a ticket was refused. Every variant is answered `401 invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Never minted here, already swept, or not even the shape of a ticket.
    Unknown,
    /// Minted, but its 30 s have passed.
    Expired,
    /// Already redeemed once.
    Used,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unknown => f.write_str("unknown stream ticket"),
            Refusal::Expired => f.write_str("stream ticket expired"),
            Refusal::Used => f.write_str("stream ticket already used"),
        }
    }
}

impl std::error::Error for Refusal {}

struct Entry {
    claims: Claims,
    expires_at_ms: i64,
    used: bool,
}

/// The outstanding tickets of one server.
pub struct Tickets {
    by_secret: HashMap<Secret, Entry>,
    /// Minting order, which is expiry order (every ticket lives the same 30 s), for the sweep.
    order: VecDeque<(Secret, i64)>,
    per_user: HashMap<UserId, usize>,
    max_outstanding: usize,
    max_per_user: usize,
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts only: the keys of the map are the tickets.
        f.debug_struct("Tickets").field("outstanding", &self.by_secret.len()).finish()
    }
}

impl Default for Tickets {
    fn default() -> Tickets {
        Tickets::new(DEFAULT_MAX_OUTSTANDING, DEFAULT_MAX_PER_USER)
    }
}

impl Tickets {
    pub fn new(max_outstanding: usize, max_per_user: usize) -> Tickets {
        Tickets {
            by_secret: HashMap::new(),
            order: VecDeque::new(),
            per_user: HashMap::new(),
            max_outstanding,
            max_per_user,
        }
    }

    /// Live (and used but not yet expired) tickets held.
    pub fn outstanding(&self) -> usize {
        self.by_secret.len()
    }

    /// Mints a ticket for the claims of a verified token, with fresh random bits from the
    /// kernel. The claims come back whole from `redeem`.
    pub fn mint(&mut self, claims: Claims, now_ms: i64) -> Result<Minted, MintError> {
        let secret = fresh_secret().ok_or(MintError::NoRandomness)?;
        self.mint_with(claims, secret, now_ms)
    }

    /// Mints a ticket from given random bytes: `mint` without the system call, for tests.
    pub fn mint_from(
        &mut self,
        claims: Claims,
        random: [u8; SECRET_BYTES],
        now_ms: i64,
    ) -> Result<Minted, MintError> {
        self.mint_with(claims, Secret(random), now_ms)
    }

    fn mint_with(
        &mut self,
        claims: Claims,
        secret: Secret,
        now_ms: i64,
    ) -> Result<Minted, MintError> {
        self.sweep(now_ms);
        let user = claims.user;
        if self.per_user.get(&user).copied().unwrap_or(0) >= self.max_per_user {
            return Err(MintError::UserFull);
        }
        if self.by_secret.len() >= self.max_outstanding {
            return Err(MintError::Full);
        }
        if self.by_secret.contains_key(&secret) {
            // 2^-128 with a working kernel: a repeat means the randomness is broken, and a
            // ticket that might be someone else's must not be handed out.
            return Err(MintError::NoRandomness);
        }
        let expires_at_ms = now_ms.saturating_add(TICKET_TTL_MS);
        self.by_secret.insert(secret, Entry { claims, expires_at_ms, used: false });
        self.order.push_back((secret, expires_at_ms));
        *self.per_user.entry(user).or_insert(0) += 1;
        Ok(Minted { text: URL_SAFE_NO_PAD.encode(secret.0) })
    }

    /// Redeems the `?ticket=` value: the claims it was minted for, once, within its 30 s. The
    /// caller still checks what it checks for a token (the user is active, and the claims'
    /// `expires_at` bounds the stream).
    pub fn redeem(&mut self, ticket: &[u8], now_ms: i64) -> Result<Claims, Refusal> {
        self.sweep(now_ms);
        let secret = parse(ticket).ok_or(Refusal::Unknown)?;
        // The map's own comparison is not constant-time, but what it compares is 128 random
        // bits the attacker does not know, hashed with a per-process random key first: timing
        // tells nothing that would help guess one.
        let entry = self.by_secret.get_mut(&secret).ok_or(Refusal::Unknown)?;
        if now_ms >= entry.expires_at_ms {
            return Err(Refusal::Expired);
        }
        if entry.used {
            return Err(Refusal::Used);
        }
        entry.used = true;
        Ok(entry.claims)
    }

    /// What `redeem` would answer now, without using the ticket up: for a request whose
    /// head is checked before its body has come (the request itself redeems it later).
    pub fn check(&self, ticket: &[u8], now_ms: i64) -> Result<Claims, Refusal> {
        let secret = parse(ticket).ok_or(Refusal::Unknown)?;
        let entry = self.by_secret.get(&secret).ok_or(Refusal::Unknown)?;
        if now_ms >= entry.expires_at_ms {
            return Err(Refusal::Expired);
        }
        if entry.used {
            return Err(Refusal::Used);
        }
        Ok(entry.claims)
    }

    /// Drops every ticket whose 30 s have passed, oldest first; bounded by what it removes.
    pub fn sweep(&mut self, now_ms: i64) {
        while let Some(&(secret, expires_at_ms)) = self.order.front() {
            if now_ms < expires_at_ms {
                break;
            }
            self.order.pop_front();
            if let Some(entry) = self.by_secret.remove(&secret) {
                let user = entry.claims.user;
                if let Some(count) = self.per_user.get_mut(&user) {
                    *count -= 1;
                    if *count == 0 {
                        self.per_user.remove(&user);
                    }
                }
            }
        }
    }
}

/// A ticket for a store that several nodes share (cluster mode, `pg/tickets.rs`): the text
/// for the client, and the SHA-256 of its bits, which is all the shared store keeps (a dump
/// of the table holds no usable ticket). `None` when the kernel gave no random bytes.
pub fn draw_shared() -> Option<(Minted, [u8; 32])> {
    let secret = fresh_secret()?;
    Some((Minted { text: URL_SAFE_NO_PAD.encode(secret.0) }, shared_key_of(secret)))
}

/// The key a shared store finds a presented `?ticket=` by; `None` when it is not even the
/// shape of a ticket (then it is unknown without asking the store).
pub fn shared_key(ticket: &[u8]) -> Option<[u8; 32]> {
    parse(ticket).map(shared_key_of)
}

fn shared_key_of(secret: Secret) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.0).into()
}

/// The `?ticket=` text back to its bits: exactly 22 canonical base64url characters.
fn parse(ticket: &[u8]) -> Option<Secret> {
    if ticket.len() != ENCODED_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(ticket).ok()?;
    bytes.try_into().ok().map(Secret)
}

/// 128 bits from the kernel's CSPRNG (`getrandom(2)`, which blocks only before the pool is
/// first seeded, long before a server runs), or `None` when it fails.
fn fresh_secret() -> Option<Secret> {
    let mut bytes = [0u8; SECRET_BYTES];
    let mut filled = 0;
    // Requests of up to 256 bytes are never cut short once the pool is ready; the bound is
    // against an interrupted call, retried a few times.
    for _ in 0..4 {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), SECRET_BYTES - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
            if filled == SECRET_BYTES {
                return Some(Secret(bytes));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_730_000_000_000;
    use crate::domain::Role;

    const ALICE: Claims =
        Claims { user: UserId(13), role: Role::User, expires_at: 1_730_000_000 + 3600 };
    const BOB: Claims = Claims { user: UserId(14), role: Role::User, expires_at: 1_730_000_000 };

    fn user(id: i64) -> Claims {
        Claims { user: UserId(id), role: Role::User, expires_at: 1_730_000_000 }
    }

    fn seeded(n: u8) -> [u8; SECRET_BYTES] {
        [n; SECRET_BYTES]
    }

    #[test]
    fn a_ticket_redeems_once_for_its_user() {
        let mut tickets = Tickets::default();
        let minted = tickets.mint(ALICE, NOW).expect("kernel randomness");
        assert_eq!(minted.as_str().len(), ENCODED_LEN);
        assert!(minted
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(tickets.redeem(minted.as_str().as_bytes(), NOW + 1), Ok(ALICE));
        assert_eq!(tickets.redeem(minted.as_str().as_bytes(), NOW + 2), Err(Refusal::Used));
        assert_eq!(
            minted.answer_json(),
            format!(r#"{{"ticket":"{}","expiresIn":30}}"#, minted.as_str())
        );
    }

    #[test]
    fn each_ticket_is_bound_to_the_user_it_was_minted_for() {
        let mut tickets = Tickets::default();
        let alice = tickets.mint_from(ALICE, seeded(1), NOW).expect("room");
        let bob = tickets.mint_from(BOB, seeded(2), NOW).expect("room");
        assert_eq!(tickets.redeem(bob.as_str().as_bytes(), NOW), Ok(BOB));
        assert_eq!(tickets.redeem(alice.as_str().as_bytes(), NOW), Ok(ALICE));
    }

    #[test]
    fn expiry_at_30_seconds() {
        let mut tickets = Tickets::default();
        let a = tickets.mint_from(ALICE, seeded(1), NOW).expect("room");
        let b = tickets.mint_from(ALICE, seeded(2), NOW).expect("room");
        assert_eq!(tickets.redeem(a.as_str().as_bytes(), NOW + TICKET_TTL_MS - 1), Ok(ALICE));
        // Past its 30 s it is swept before it is looked up: unknown, not merely expired.
        assert_eq!(
            tickets.redeem(b.as_str().as_bytes(), NOW + TICKET_TTL_MS),
            Err(Refusal::Unknown)
        );
        assert_eq!(tickets.outstanding(), 0);
        // A clock that went back and forth: the entry is still held, but past its expiry.
        let c = tickets.mint_from(ALICE, seeded(3), NOW + 10_000).expect("room");
        let d = tickets.mint_from(ALICE, seeded(4), NOW).expect("room");
        assert_eq!(
            tickets.redeem(d.as_str().as_bytes(), NOW + TICKET_TTL_MS + 1),
            Err(Refusal::Expired)
        );
        assert_eq!(tickets.redeem(c.as_str().as_bytes(), NOW + TICKET_TTL_MS + 1), Ok(ALICE));
    }

    #[test]
    fn unknown_and_malformed_tickets() {
        let mut tickets = Tickets::default();
        let real = tickets.mint_from(ALICE, seeded(7), NOW).expect("room");
        let text = real.as_str().to_owned();
        let mut flipped = text.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let cases: &[(&str, Vec<u8>)] = &[
            ("empty", Vec::new()),
            ("made up", b"AAAAAAAAAAAAAAAAAAAAAA".to_vec()),
            ("one character changed", flipped),
            ("too short", text.as_bytes()[..21].to_vec()),
            ("too long", format!("{text}A").into_bytes()),
            ("padded", format!("{}=", &text[..21]).into_bytes()),
            ("standard alphabet", b"+AAAAAAAAAAAAAAAAAAAAA".to_vec()),
            ("not UTF-8", vec![0xff; ENCODED_LEN]),
            ("a JWT", b"eyJhbGciOiJIUzI1NiJ9.e30.x".to_vec()),
        ];
        for (name, ticket) in cases {
            assert_eq!(tickets.redeem(ticket, NOW), Err(Refusal::Unknown), "{name}");
        }
        // None of that used the real one up.
        assert_eq!(tickets.redeem(text.as_bytes(), NOW), Ok(ALICE));
    }

    #[test]
    fn memory_is_bounded_per_user_and_in_all() {
        let mut tickets = Tickets::new(4, 2);
        tickets.mint_from(ALICE, seeded(1), NOW).expect("room");
        tickets.mint_from(ALICE, seeded(2), NOW).expect("room");
        assert_eq!(tickets.mint_from(ALICE, seeded(3), NOW).map(|_| ()), Err(MintError::UserFull));
        tickets.mint_from(BOB, seeded(4), NOW + 1).expect("room");
        tickets.mint_from(BOB, seeded(5), NOW + 1).expect("room");
        assert_eq!(
            tickets.mint_from(user(15), seeded(6), NOW + 1).map(|_| ()),
            Err(MintError::Full)
        );
        assert_eq!(tickets.outstanding(), 4);
        // Used tickets still count until their 30 s are over, then everything is swept.
        tickets.sweep(NOW + TICKET_TTL_MS);
        assert_eq!(tickets.outstanding(), 2);
        tickets.mint_from(ALICE, seeded(7), NOW + TICKET_TTL_MS).expect("Alice's room is back");
        tickets.sweep(NOW + 2 * TICKET_TTL_MS);
        assert_eq!(tickets.outstanding(), 0);
        assert!(tickets.per_user.is_empty() && tickets.order.is_empty());
    }

    #[test]
    fn check_answers_as_redeem_would_without_using_the_ticket() {
        let mut tickets = Tickets::default();
        let a = tickets.mint_from(ALICE, seeded(1), NOW).expect("room");
        let a = a.as_str().as_bytes();
        assert_eq!(tickets.check(a, NOW), Ok(ALICE));
        assert_eq!(tickets.check(a, NOW + 1), Ok(ALICE), "checking twice uses nothing up");
        assert_eq!(tickets.check(b"AAAAAAAAAAAAAAAAAAAAAA", NOW), Err(Refusal::Unknown));
        assert_eq!(tickets.check(a, NOW + TICKET_TTL_MS), Err(Refusal::Expired));
        assert_eq!(tickets.redeem(a, NOW + 2), Ok(ALICE));
        assert_eq!(tickets.check(a, NOW + 3), Err(Refusal::Used));
    }

    #[test]
    fn shared_tickets_are_keyed_by_a_hash_of_their_bits() {
        let (minted, key) = draw_shared().expect("kernel randomness");
        assert_eq!(minted.as_str().len(), ENCODED_LEN);
        assert_eq!(shared_key(minted.as_str().as_bytes()), Some(key));
        let bits = URL_SAFE_NO_PAD.decode(minted.as_str()).expect("base64url");
        assert_ne!(&key[..bits.len()], &bits[..], "the key is not the ticket");
        // SHA-256 of sixteen zero bytes.
        assert_eq!(
            shared_key(b"AAAAAAAAAAAAAAAAAAAAAA").map(|k| k[..4].to_vec()),
            Some(vec![0x37, 0x47, 0x08, 0xff])
        );
        for bad in [&b""[..], b"short", b"+AAAAAAAAAAAAAAAAAAAAA", b"AAAAAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(shared_key(bad), None, "{bad:?}");
        }
        let (other, other_key) = draw_shared().expect("kernel randomness");
        assert_ne!(other.as_str(), minted.as_str());
        assert_ne!(other_key, key);
    }

    #[test]
    fn a_repeated_secret_is_refused_not_shared() {
        let mut tickets = Tickets::default();
        tickets.mint_from(ALICE, seeded(9), NOW).expect("room");
        assert_eq!(
            tickets.mint_from(BOB, seeded(9), NOW).map(|_| ()),
            Err(MintError::NoRandomness)
        );
    }

    #[test]
    fn kernel_tickets_differ() {
        let mut tickets = Tickets::default();
        let texts: std::collections::HashSet<String> = (0..50)
            .map(|i| tickets.mint(user(i), NOW).expect("kernel randomness").as_str().to_owned())
            .collect();
        assert_eq!(texts.len(), 50);
    }

    #[test]
    fn no_ticket_in_debug_or_display() {
        let mut tickets = Tickets::default();
        let minted = tickets.mint(ALICE, NOW).expect("kernel randomness");
        let text = minted.as_str().to_owned();
        let shown = [
            format!("{minted:?}"),
            format!("{tickets:?}"),
            format!("{:?}", tickets.redeem(text.as_bytes(), NOW)),
            format!("{:?} {}", tickets.redeem(text.as_bytes(), NOW), Refusal::Used),
            format!("{} {:?}", MintError::Full, MintError::UserFull),
        ];
        for s in shown {
            assert!(!s.contains(&text), "{s}");
        }
        assert_eq!(format!("{minted:?}"), "Minted(..)");
        assert_eq!(format!("{tickets:?}"), "Tickets { outstanding: 1 }");
    }
}
