//! The store the server runs on: SQLite on local disk, or PostgreSQL in cluster mode.
//!
//! Two halves, each an enum over the backends (no trait objects):
//! - `Backend`, the writing store, owned by the store thread: `writes::apply` and the group
//!   commit call it with the SQLite store's method names, whichever backend is behind it.
//! - `Reader`, the loop's reads (`api` asks it whether a user is active, their status, their
//!   last id, the notifications to replay). On SQLite it is a read-only connection to the
//!   same file (WAL: it reads while the store thread commits). On PostgreSQL no query may run
//!   on the loop thread (the client runs tokio on its caller's thread), so it is a cache that
//!   the store thread fills: a request whose user is not in it waits (`needs_load`) while the
//!   store thread loads the user (`load`), and is then served from what came back (`fill`).
//!   Stream tickets go the same way (SPEC §8: they live in PostgreSQL, so any node redeems
//!   any node's): a `?ticket=` stream waits while the store thread redeems the ticket and
//!   loads its user in one job, a `POST …/ticket` while it mints one (`Wanted`, `fetch`);
//!   the answer is held here until its request takes it.
//!
//! Both readers are kept true by the loop: when a batch that wrote a user is back it forgets
//! them, then (cluster mode) puts in the view the batch returned (`fill_written`) unless
//! another node's event about them was heard meanwhile; it forgets the user of every other
//! node's event of the feed; it never reads a user whose batch is in flight.

use crate::domain::{Role, UserId};
use crate::jwt::Claims;
use crate::spending::{Limit, Status};
use crate::store::{self, Store, StoreError, Transaction, WriteRefusal};
use crate::tickets::{MintError, Minted, Refusal};
use std::cell::RefCell;
use std::collections::HashMap;

/// What `--db` names: a SQLite file, or (cluster mode) a PostgreSQL database.
pub enum Database {
    Sqlite(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(crate::pg::PgUri),
}

/// `postgres://` or `postgresql://`: PostgreSQL (SPEC §7); anything else is a SQLite path.
pub fn names_postgres(db: &std::path::Path) -> bool {
    let text = db.as_os_str().as_encoded_bytes();
    text.starts_with(b"postgres://") || text.starts_with(b"postgresql://")
}

impl Database {
    /// Reads `--db`. Errors never echo a PostgreSQL URI (it may hold a password).
    pub fn select(db: &std::path::Path) -> Result<Database, String> {
        if !names_postgres(db) {
            return Ok(Database::Sqlite(db.to_path_buf()));
        }
        #[cfg(feature = "postgres")]
        {
            let text = db.to_str().ok_or("--db: a PostgreSQL URI must be UTF-8")?;
            crate::pg::PgUri::parse(text).map(Database::Postgres).map_err(|e| format!("--db: {e}"))
        }
        #[cfg(not(feature = "postgres"))]
        Err("--db names PostgreSQL, but this periode-sse was built without it: build with \
             `cargo build --release --features postgres` (see the README, \"Running several \
             nodes\"), or give a SQLite file path"
            .to_string())
    }

    /// How logs name the database: the path, or the URI with its password masked.
    pub fn shown(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            #[cfg(feature = "postgres")]
            Database::Postgres(uri) => uri.to_string(),
        }
    }

    /// The signing key: `JWT_SECRET`, else (SQLite only) the `<db>.secret` file. The nodes of
    /// a cluster must share their key, and there is no file to share: `JWT_SECRET` is
    /// required.
    pub fn secret(
        &self,
        env_secret: Option<String>,
        missing: crate::secret::Missing,
    ) -> Result<Vec<u8>, String> {
        match self {
            Database::Sqlite(path) => {
                crate::secret::resolve(path, env_secret, missing).map_err(|e| e.to_string())
            }
            #[cfg(feature = "postgres")]
            Database::Postgres(_) => {
                let min = crate::secret::MIN_SECRET_BYTES;
                match env_secret {
                    Some(secret) if secret.len() >= min => Ok(secret.into_bytes()),
                    Some(secret) => Err(format!(
                        "JWT_SECRET is {} bytes long; HS256 needs at least {min} (RFC 7518 §3.2)",
                        secret.len()
                    )),
                    None => Err(format!(
                        "JWT_SECRET is required with a PostgreSQL --db: every node must sign \
                         with the same key (at least {min} bytes), and there is no <db>.secret \
                         file in cluster mode"
                    )),
                }
            }
        }
    }

    /// Opens the writing store (the checks, the lock or the connection, the schema).
    pub fn open(&self) -> Result<Backend, String> {
        match self {
            Database::Sqlite(path) => {
                Store::open(path).map(Backend::Sqlite).map_err(|e| e.to_string())
            }
            #[cfg(feature = "postgres")]
            Database::Postgres(uri) => {
                crate::pg::PgStore::open(uri).map(Backend::Postgres).map_err(|e| e.to_string())
            }
        }
    }
}

// One value per process, moved once to the store thread: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Sqlite(Store),
    #[cfg(feature = "postgres")]
    Postgres(crate::pg::PgStore),
}

macro_rules! delegate {
    ($( fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        impl Backend {
            $( pub fn $name(&self $(, $arg: $ty)*) -> store::Result<$ret> {
                match self {
                    Backend::Sqlite(s) => s.$name($($arg),*),
                    #[cfg(feature = "postgres")]
                    Backend::Postgres(s) => s.$name($($arg),*).map_err(StoreError::Postgres),
                }
            } )*
        }
    };
}

delegate! {
    fn user_active(&self, user: UserId) -> Option<bool>;
    fn limit(&self, user: UserId) -> Option<Limit>;
    fn active_status(&self, user: UserId, now_ms: i64) -> Option<Status>;
    fn status_for(&self, user: UserId, limit: Limit) -> Status;
    fn last_notification_id(&self, user: UserId) -> u64;
    fn begin(&self) -> ();
    fn commit(&self) -> ();
    fn put_user(&self, user: UserId, active: bool) -> ();
    fn insert_transaction(
        &self,
        user: UserId,
        amount: i64,
        description: Option<&str>,
        occurred_at_ms: i64
    ) -> Result<Transaction, WriteRefusal>;
    fn put_limit(&self, user: UserId, limit: &Limit) -> Result<(), WriteRefusal>;
    fn insert_notification(&self, user: UserId, data: &str) -> u64;
    fn seed_demo(&self, now_ms: i64) -> ();
}

impl Backend {
    /// One batch of writes in one transaction: every write's answer, or the error that
    /// stored none of them. SQLite applies them one by one (`writes::apply`: in-process,
    /// microseconds each) and returns no views (its reader shares the writer's cache);
    /// PostgreSQL sends the batch in two pipelined round trips (`writes::apply_pg`).
    pub fn apply_batch(
        &self,
        ops: &[&crate::api::WriteOp],
        now_ms: i64,
    ) -> store::Result<(Vec<crate::writes::Applied>, Written)> {
        match self {
            Backend::Sqlite(s) => {
                s.begin()?;
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    match crate::writes::apply(self, op, now_ms) {
                        Ok(applied) => results.push(applied),
                        Err(e) => {
                            s.rollback();
                            return Err(e);
                        }
                    }
                }
                if let Err(e) = s.commit() {
                    s.rollback();
                    return Err(e);
                }
                Ok((results, Written::default()))
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(s) => {
                let (results, views) =
                    crate::writes::apply_pg(s, ops, now_ms).map_err(StoreError::Postgres)?;
                Ok((results, Written { views, pid: s.backend_pid(), retried: s.retried_batches() }))
            }
        }
    }

    pub fn notifications_after(
        &self,
        user: UserId,
        after: u64,
        each: impl FnMut(u64, &str),
    ) -> store::Result<()> {
        match self {
            Backend::Sqlite(s) => s.notifications_after(user, after, each),
            #[cfg(feature = "postgres")]
            Backend::Postgres(s) => {
                s.notifications_after(user, after, each).map_err(StoreError::Postgres)
            }
        }
    }

    pub fn rollback(&self) {
        match self {
            Backend::Sqlite(s) => s.rollback(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(s) => s.rollback(),
        }
    }

    pub fn rollback_if_open(&self) {
        match self {
            Backend::Sqlite(s) => s.rollback_if_open(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(s) => s.rollback_if_open(),
        }
    }

    /// PostgreSQL: a second connection for the loop's loads and catch-ups, on a thread of
    /// their own, so that a read never waits behind a batch stuck on a lock or a slow disk.
    /// `None` on SQLite, whose reads the loop makes itself.
    pub fn open_read_store(&self) -> store::Result<Option<Backend>> {
        match self {
            Backend::Sqlite(_) => Ok(None),
            #[cfg(feature = "postgres")]
            Backend::Postgres(s) => crate::pg::PgStore::open(s.uri())
                .map(|s| Some(Backend::Postgres(s)))
                .map_err(StoreError::Postgres),
        }
    }

    /// A cheap round trip, for `periode_sse_store_up` while no write says how the store is
    /// (SQLite: nothing to reach; its commits tell).
    pub fn ping(&self) -> store::Result<()> {
        match self {
            Backend::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(s) => s.ping().map_err(StoreError::Postgres),
        }
    }

    /// The loop's reader for this backend (see the module comment).
    pub fn open_reader(&self) -> store::Result<Reader> {
        match self {
            Backend::Sqlite(s) => Ok(Reader::Sqlite(s.open_reader()?)),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Ok(Reader::Loaded(Loaded::default())),
        }
    }

    /// What a read of `user` needs, loaded for the loop's cache (PostgreSQL): the user's view
    /// and, when `after` is given, their kept notifications above it.
    pub fn load(&self, user: UserId, after: Option<u64>) -> store::Result<Reads> {
        #[cfg(feature = "postgres")]
        if let Backend::Postgres(s) = self {
            // One query for the view (the period's sum is kept in the row, never summed).
            let view = s.load_view_now(user).map_err(StoreError::Postgres)?;
            let mut rows = Vec::new();
            if let Some(after) = after {
                let each = |id, data: &str| rows.push((id, data.to_string()));
                s.notifications_after(user, after, each).map_err(StoreError::Postgres)?;
            }
            return Ok(Reads { user, view, replay: after.map(|after| Replay { after, rows }) });
        }
        let view = match self.user_active(user)? {
            None => None,
            Some(active) => {
                let limit = self.limit(user)?;
                let spending = match &limit {
                    Some(l) => self.status_for(user, *l)?.current_spending,
                    None => 0,
                };
                Some(View { active, last_id: self.last_notification_id(user)?, limit, spending })
            }
        };
        let mut rows = Vec::new();
        if let Some(after) = after {
            self.notifications_after(user, after, |id, data| rows.push((id, data.to_string())))?;
        }
        Ok(Reads { user, view, replay: after.map(|after| Replay { after, rows }) })
    }

    /// What a waiting request asked the store thread for (cluster mode, see `Wanted`).
    pub fn fetch(&self, wanted: Wanted, after: Option<u64>) -> store::Result<Load> {
        match (wanted, self) {
            (Wanted::User(user), _) => self.load(user, after).map(Load::User),
            #[cfg(feature = "postgres")]
            (Wanted::Redeem(key), Backend::Postgres(s)) => {
                match s.redeem_ticket(key.0).map_err(StoreError::Postgres)? {
                    // The stream that waits for it reads its user next: loaded in the same
                    // job, so a ticketed stream costs one wait, as a token's does.
                    Ok(claims) => Ok(Load::Redeemed(Ok((claims, self.load(claims.user, after)?)))),
                    Err(refusal) => Ok(Load::Redeemed(Err(refusal))),
                }
            }
            #[cfg(feature = "postgres")]
            (Wanted::Mint(wanted), Backend::Postgres(s)) => {
                s.mint_ticket(wanted.claims()).map(Load::Minted).map_err(StoreError::Postgres)
            }
            // SQLite keeps its tickets in the loop's memory and never asks for these.
            (Wanted::Redeem(_) | Wanted::Mint(_), _) => Err(StoreError::Unavailable(
                "stream tickets are not kept in this store".to_string(),
            )),
        }
    }

    /// Cluster mode: deletes the expired stream tickets now and then (called between jobs).
    pub fn sweep_tickets_if_due(&self) {
        #[cfg(feature = "postgres")]
        if let Backend::Postgres(s) = self {
            s.sweep_tickets_if_due();
        }
    }
}

/// What a request waits for while the store thread fetches it (cluster mode: PostgreSQL is
/// never queried on the loop thread), and the key the loop tracks that wait under.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wanted {
    /// A user's reads: any request with a token, before `api` reads the user.
    User(UserId),
    /// A presented `?ticket=`, by its key: redeemed in the shared table, then its user's
    /// reads (SPEC §8: a ticket from any node works once on every node).
    Redeem(TicketKey),
    /// A fresh ticket for a verified token's claims (`POST …/ticket`).
    Mint(MintFor),
}

/// The SHA-256 a shared store keys a ticket by (`tickets::shared_key`). No `Debug`: it is
/// not the ticket, but nothing about a ticket goes to a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TicketKey(pub [u8; 32]);

/// The claims a ticket is minted for, as a key: two requests with the same claims may be
/// handed either of two tickets minted for them (each gets its own).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MintFor {
    user: UserId,
    admin: bool,
    expires_at: i64,
}

impl MintFor {
    pub fn of(claims: Claims) -> MintFor {
        MintFor {
            user: claims.user,
            admin: claims.role == Role::Admin,
            expires_at: claims.expires_at,
        }
    }

    pub fn claims(self) -> Claims {
        let role = if self.admin { Role::Admin } else { Role::User };
        Claims { user: self.user, role, expires_at: self.expires_at }
    }
}

/// What the store thread fetched for a `Wanted`.
#[derive(Debug)]
pub enum Load {
    User(Reads),
    /// The ticket's claims and their user's reads, or why it was refused.
    Redeemed(Result<(Claims, Reads), Refusal>),
    Minted(Result<Minted, MintError>),
}

/// Everything a connect or a status read needs of one user: the one type for it in every
/// backend (SQLite's store caches these, PostgreSQL's store loads them, the loop's cluster
/// cache holds them), so that the reads below are written once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub(crate) active: bool,
    pub(crate) last_id: u64,
    pub(crate) limit: Option<Limit>,
    /// The sum over the limit's period (0 without a limit).
    pub(crate) spending: i64,
}

impl View {
    /// `spending` is the limit's period's (0 without a limit).
    pub fn new(active: bool, last_id: u64, limit: Option<Limit>, spending: i64) -> View {
        View { active, last_id, limit, spending }
    }

    pub fn active(&self) -> bool {
        self.active
    }

    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    pub fn limit(&self) -> Option<Limit> {
        self.limit
    }

    pub fn spending(&self) -> i64 {
        self.spending
    }
}

// The reads every backend answers from a user's view (`None`: no such user). Each store's
// `user_active`, `active_status` and `last_notification_id` (SQLite's, PostgreSQL's, the
// loop's `Reader`) is one call to these, so a rule cannot change in one backend only.

/// Whether the user is active; `None` when there is no such user.
pub fn user_active(view: Option<View>) -> Option<bool> {
    view.map(|v| v.active)
}

/// The status against the user's limit if its period covers `now_ms`.
pub fn active_status(view: Option<View>, now_ms: i64) -> Option<Status> {
    view.and_then(|v| status_covering(v.limit, v.spending, now_ms))
}

/// The user's latest notification id: 0 before the first, and for no such user.
pub fn last_notification_id(view: Option<View>) -> u64 {
    view.map_or(0, |v| v.last_id)
}

/// The status for `spending` against `limit` when its period covers `now_ms`, else none:
/// what a write notifies and `/status` answers (also used by `writes::apply_pg`'s plan).
pub fn status_covering(limit: Option<Limit>, spending: i64, now_ms: i64) -> Option<Status> {
    match limit {
        Some(limit) if limit.covers(now_ms) => Some(Status::compute(spending, limit)),
        _ => None,
    }
}

/// The views a committed batch left its users in (cluster mode: the loop's cache takes them
/// instead of loading the users again), and the backend pid of the connection that wrote
/// them (its own NOTIFYs come back from it).
#[derive(Debug, Default)]
pub struct Written {
    pub views: Vec<(UserId, Option<View>)>,
    pub pid: Option<i32>,
    /// How many batches the store has run again after a conflict since it opened (0 on
    /// SQLite): a running total, so a failed batch's retries show with the next success.
    pub retried: u64,
}

/// One user's reads as the store thread loaded them: `view` is `None` when the user does not
/// exist; `replay` the notifications after an id, when one was asked for.
#[derive(Debug)]
pub struct Reads {
    pub user: UserId,
    view: Option<View>,
    replay: Option<Replay>,
}

impl Reads {
    /// The user's view as loaded (`None`: no such user).
    pub fn view(&self) -> Option<View> {
        self.view
    }
}

/// The kept notifications of a user above `after`, oldest first.
#[derive(Debug)]
struct Replay {
    after: u64,
    rows: Vec<(u64, String)>,
}

/// Past this many users the cache starts over (a bound, not an eviction policy).
const MAX_LOADED_USERS: usize = 200_000;
/// How long a ticket answer waits for the request that asked for it: past the 1.5 s a
/// request may wait for the store, that request has been answered 503 (or its client left),
/// and the answer is dropped at the next `fill`.
const HELD_ANSWER_MS: u128 = 2_000;
/// A bound on held ticket answers (one per waiting request, so far above any real number).
const MAX_HELD_ANSWERS: usize = 65_536;

/// A redeemed ticket as the store thread answered, until its request has used it.
struct HeldRedeem {
    /// The claims or the refusal; `Err` when the store failed (answered 503).
    answer: Result<Result<Claims, Refusal>, String>,
    /// Taken by the request that waited for it: a second look says `Used` until
    /// `done_with` drops it (after which the shared table says `Unknown`, also a 401).
    taken: bool,
    since: std::time::Instant,
}

/// A minted ticket (or why not), until a request with its claims takes it.
struct HeldMint {
    answer: Result<Result<Minted, MintError>, String>,
    since: std::time::Instant,
}

/// The loop's cache of PostgreSQL reads, filled by the store thread.
#[derive(Default)]
pub struct Loaded {
    views: RefCell<HashMap<UserId, Option<View>>>,
    /// The replay asked for by a stream waiting to open, by user: taken when it opens.
    replays: RefCell<HashMap<UserId, Replay>>,
    /// A load that failed: reads of the user answer 503 with this until the waiting requests
    /// are served (`fill`, serve them, `done_with`).
    failures: RefCell<HashMap<UserId, String>>,
    /// Stream tickets redeemed in the shared table, by key, for the streams waiting for them.
    redeemed: RefCell<HashMap<TicketKey, HeldRedeem>>,
    /// Stream tickets minted in the shared table, for the `POST …/ticket` waiting for them.
    minted: RefCell<HashMap<MintFor, HeldMint>>,
}

impl Loaded {
    fn fill_reads(&self, user: UserId, reads: Reads) {
        let mut views = self.views.borrow_mut();
        if views.len() >= MAX_LOADED_USERS {
            views.clear();
        }
        views.insert(user, reads.view);
        if let Some(replay) = reads.replay {
            self.replays.borrow_mut().insert(user, replay);
        }
    }

    /// Ticket answers whose request is long gone (bounded by what it drops).
    fn drop_stale_answers(&self) {
        let stale = |since: &std::time::Instant| since.elapsed().as_millis() >= HELD_ANSWER_MS;
        let mut redeemed = self.redeemed.borrow_mut();
        redeemed.retain(|_, held| !stale(&held.since));
        if redeemed.len() >= MAX_HELD_ANSWERS {
            redeemed.clear();
        }
        let mut minted = self.minted.borrow_mut();
        minted.retain(|_, held| !stale(&held.since));
        if minted.len() >= MAX_HELD_ANSWERS {
            minted.clear();
        }
    }
}

impl HeldRedeem {
    fn answer(&self) -> store::Result<Result<Claims, Refusal>> {
        if self.taken {
            return Ok(Err(Refusal::Used));
        }
        self.answer.clone().map_err(StoreError::Unavailable)
    }
}

pub enum Reader {
    Sqlite(Store),
    Loaded(Loaded),
}

impl Reader {
    /// Whether `user`'s request must wait for a load first (never on SQLite); `after` is the
    /// resume point of a stream request.
    pub fn needs_load(&self, user: UserId, after: Option<u64>) -> bool {
        let Reader::Loaded(loaded) = self else {
            return false;
        };
        if loaded.failures.borrow().contains_key(&user) {
            return false;
        }
        let views = loaded.views.borrow();
        let Some(view) = views.get(&user) else {
            return true;
        };
        match (after, view) {
            // An id above the latest is answered with a snapshot: nothing to replay.
            (Some(after), Some(v)) if after < v.last_id => {
                loaded.replays.borrow().get(&user).is_none_or(|r| r.after != after)
            }
            _ => false,
        }
    }

    /// Puts what the store thread fetched into the cache, or its failure in place of it.
    pub fn fill(&self, wanted: Wanted, load: store::Result<Load>) {
        let Reader::Loaded(loaded) = self else {
            return;
        };
        loaded.drop_stale_answers();
        let now = std::time::Instant::now();
        match (wanted, load) {
            (Wanted::User(user), Ok(Load::User(reads))) => loaded.fill_reads(user, reads),
            (Wanted::User(user), Err(e)) => {
                loaded.failures.borrow_mut().insert(user, e.to_string());
            }
            (Wanted::Redeem(key), Ok(Load::Redeemed(Ok((claims, reads))))) => {
                loaded.fill_reads(claims.user, reads);
                let held = HeldRedeem { answer: Ok(Ok(claims)), taken: false, since: now };
                loaded.redeemed.borrow_mut().insert(key, held);
            }
            (Wanted::Redeem(key), Ok(Load::Redeemed(Err(refusal)))) => {
                let held = HeldRedeem { answer: Ok(Err(refusal)), taken: false, since: now };
                loaded.redeemed.borrow_mut().insert(key, held);
            }
            (Wanted::Redeem(key), Err(e)) => {
                let held = HeldRedeem { answer: Err(e.to_string()), taken: false, since: now };
                loaded.redeemed.borrow_mut().insert(key, held);
            }
            (Wanted::Mint(wanted), load) => {
                let answer = match load {
                    Ok(Load::Minted(minted)) => Ok(minted),
                    Ok(_) => Err("the store answered something else (a bug)".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                loaded.minted.borrow_mut().insert(wanted, HeldMint { answer, since: now });
            }
            (Wanted::User(user), Ok(_)) => {
                let why = "the store answered something else (a bug)".to_string();
                loaded.failures.borrow_mut().insert(user, why);
            }
            (Wanted::Redeem(key), Ok(_)) => {
                let why = "the store answered something else (a bug)".to_string();
                let held = HeldRedeem { answer: Err(why), taken: false, since: now };
                loaded.redeemed.borrow_mut().insert(key, held);
            }
        }
    }

    /// After the requests that waited for `wanted` are served: the replay and the failure
    /// were theirs only, and the view too unless `keep` (nothing may have changed it since
    /// the load was asked for, and the feed that would say so is heard). A ticket answer not
    /// yet taken stays for its request, which waits again (a write of its user in flight):
    /// the ticket is used up in the shared table, and only that request holds it.
    pub fn done_with(&self, wanted: Wanted, keep: bool) {
        let Reader::Loaded(loaded) = self else {
            return;
        };
        let user = match wanted {
            Wanted::User(user) => Some(user),
            Wanted::Redeem(key) => {
                let mut redeemed = loaded.redeemed.borrow_mut();
                let (user, done) = match redeemed.get(&key) {
                    Some(held) => match held.answer {
                        Ok(Ok(claims)) => (Some(claims.user), held.taken),
                        _ => (None, true),
                    },
                    None => (None, false),
                };
                if done {
                    redeemed.remove(&key);
                }
                user
            }
            Wanted::Mint(wanted) => {
                let mut minted = loaded.minted.borrow_mut();
                if minted.get(&wanted).is_some_and(|held| held.answer.is_err()) {
                    minted.remove(&wanted);
                }
                None
            }
        };
        if let Some(user) = user {
            loaded.failures.borrow_mut().remove(&user);
            loaded.replays.borrow_mut().remove(&user);
            if !keep {
                loaded.views.borrow_mut().remove(&user);
            }
        }
    }

    /// Whether stream tickets live in the shared store (cluster mode) rather than in the
    /// loop's memory (`tickets::Tickets`, SQLite).
    pub fn shares_tickets(&self) -> bool {
        matches!(self, Reader::Loaded(_))
    }

    /// The store thread's answer for a presented ticket, if it is here, without taking it.
    pub fn redeemed(&self, key: TicketKey) -> Option<store::Result<Result<Claims, Refusal>>> {
        let Reader::Loaded(loaded) = self else { return None };
        let redeemed = loaded.redeemed.borrow();
        redeemed.get(&key).map(HeldRedeem::answer)
    }

    /// The store thread's answer for a presented ticket, taken: the claims go to one
    /// request only.
    pub fn take_redeemed(&self, key: TicketKey) -> Option<store::Result<Result<Claims, Refusal>>> {
        let Reader::Loaded(loaded) = self else { return None };
        let mut redeemed = loaded.redeemed.borrow_mut();
        let held = redeemed.get_mut(&key)?;
        let answer = held.answer();
        held.taken = true;
        Some(answer)
    }

    /// Whether a ticket minted for these claims waits to be taken.
    pub fn has_minted(&self, wanted: MintFor) -> bool {
        matches!(self, Reader::Loaded(l) if l.minted.borrow().contains_key(&wanted))
    }

    /// A ticket minted for these claims (or why none was), taken.
    pub fn take_minted(&self, wanted: MintFor) -> Option<store::Result<Result<Minted, MintError>>> {
        let Reader::Loaded(loaded) = self else { return None };
        let held = loaded.minted.borrow_mut().remove(&wanted)?;
        Some(held.answer.map_err(StoreError::Unavailable))
    }

    /// Drops what is known of `user`: a batch that wrote them is back, or another node did.
    /// On SQLite nothing is dropped: the writer shares this cache and put the batch's views
    /// in it at commit (reloading them would re-sum the user's history after every write).
    pub fn forget(&self, user: UserId) {
        match self {
            Reader::Sqlite(_) => {}
            Reader::Loaded(loaded) => {
                loaded.views.borrow_mut().remove(&user);
                loaded.replays.borrow_mut().remove(&user);
            }
        }
    }

    /// A batch is back: its users' views as it left them (cluster mode), except `skip`'s
    /// (the feed said something of them from another node meanwhile). A replay loaded
    /// before the batch lacks its notifications: dropped.
    pub fn fill_written(&self, written: &Written, skip: impl Fn(UserId) -> bool) {
        let Reader::Loaded(loaded) = self else {
            return;
        };
        let mut views = loaded.views.borrow_mut();
        let mut replays = loaded.replays.borrow_mut();
        for (user, view) in &written.views {
            replays.remove(user);
            if skip(*user) {
                views.remove(user);
                continue;
            }
            if views.len() >= MAX_LOADED_USERS {
                views.clear();
            }
            views.insert(*user, *view);
        }
    }

    pub fn forget_all(&self) {
        match self {
            Reader::Sqlite(s) => s.forget_all(),
            Reader::Loaded(loaded) => {
                loaded.views.borrow_mut().clear();
                loaded.replays.borrow_mut().clear();
            }
        }
    }

    fn loaded_view(loaded: &Loaded, user: UserId) -> store::Result<Option<View>> {
        if let Some(why) = loaded.failures.borrow().get(&user) {
            return Err(StoreError::Unavailable(why.clone()));
        }
        match loaded.views.borrow().get(&user) {
            Some(view) => Ok(*view),
            // `needs_load` let a request through without its load: a bug, answered 503.
            None => Err(StoreError::Unavailable(format!("user {user} was not loaded"))),
        }
    }

    /// `None` when the user does not exist.
    pub fn user_active(&self, user: UserId) -> store::Result<Option<bool>> {
        match self {
            Reader::Sqlite(s) => s.user_active(user),
            Reader::Loaded(l) => Ok(user_active(Reader::loaded_view(l, user)?)),
        }
    }

    pub fn active_status(&self, user: UserId, now_ms: i64) -> store::Result<Option<Status>> {
        match self {
            Reader::Sqlite(s) => s.active_status(user, now_ms),
            Reader::Loaded(l) => Ok(active_status(Reader::loaded_view(l, user)?, now_ms)),
        }
    }

    pub fn last_notification_id(&self, user: UserId) -> store::Result<u64> {
        match self {
            Reader::Sqlite(s) => s.last_notification_id(user),
            Reader::Loaded(l) => Ok(last_notification_id(Reader::loaded_view(l, user)?)),
        }
    }

    pub fn notifications_after(
        &self,
        user: UserId,
        after: u64,
        mut each: impl FnMut(u64, &str),
    ) -> store::Result<()> {
        match self {
            Reader::Sqlite(s) => s.notifications_after(user, after, each),
            Reader::Loaded(l) => {
                match Reader::loaded_view(l, user)? {
                    Some(v) if v.last_id > after => {}
                    _ => return Ok(()),
                }
                let replays = l.replays.borrow();
                match replays.get(&user) {
                    Some(replay) if replay.after == after => {
                        for (id, data) in &replay.rows {
                            each(*id, data);
                        }
                        Ok(())
                    }
                    _ => Err(StoreError::Unavailable(format!(
                        "the notifications of user {user} were not loaded"
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Claims = Claims { user: UserId(13), role: Role::User, expires_at: 1_900_000_000 };

    fn cluster_reader() -> Reader {
        Reader::Loaded(Loaded::default())
    }

    fn reads_of(user: UserId) -> Reads {
        Reads {
            user,
            view: Some(View { active: true, last_id: 4, limit: None, spending: 0 }),
            replay: None,
        }
    }

    #[test]
    fn a_redeemed_ticket_goes_to_one_request_then_reads_as_used() {
        let reader = cluster_reader();
        let key = TicketKey([7; 32]);
        assert!(reader.redeemed(key).is_none());
        let load = Load::Redeemed(Ok((ALICE, reads_of(ALICE.user))));
        reader.fill(Wanted::Redeem(key), Ok(load));
        // Its user's reads came with it: the stream waits no more.
        assert!(!reader.needs_load(ALICE.user, None));
        assert_eq!(reader.user_active(ALICE.user).ok(), Some(Some(true)));
        assert!(
            matches!(reader.redeemed(key), Some(Ok(Ok(c))) if c == ALICE),
            "looking uses nothing"
        );
        assert!(matches!(reader.take_redeemed(key), Some(Ok(Ok(c))) if c == ALICE));
        assert!(matches!(reader.take_redeemed(key), Some(Ok(Err(Refusal::Used)))));
        reader.done_with(Wanted::Redeem(key), false);
        assert!(reader.redeemed(key).is_none(), "dropped once served");
        assert!(reader.needs_load(ALICE.user, None), "the view was not kept (keep = false)");
    }

    #[test]
    fn an_untaken_ticket_waits_for_its_request_and_failures_do_not() {
        let reader = cluster_reader();
        let (held, failed) = (TicketKey([1; 32]), TicketKey([2; 32]));
        reader.fill(Wanted::Redeem(held), Ok(Load::Redeemed(Ok((ALICE, reads_of(ALICE.user))))));
        reader.fill(Wanted::Redeem(failed), Err(StoreError::Unavailable("down".to_string())));
        // The request parked again (a write of its user in flight): the claims stay for it.
        reader.done_with(Wanted::Redeem(held), true);
        assert!(matches!(reader.redeemed(held), Some(Ok(Ok(_)))));
        assert!(matches!(reader.take_redeemed(failed), Some(Err(StoreError::Unavailable(_)))));
        reader.done_with(Wanted::Redeem(failed), true);
        assert!(reader.redeemed(failed).is_none());
        let refused = TicketKey([3; 32]);
        reader.fill(Wanted::Redeem(refused), Ok(Load::Redeemed(Err(Refusal::Unknown))));
        assert!(matches!(reader.redeemed(refused), Some(Ok(Err(Refusal::Unknown)))));
    }

    #[test]
    fn a_minted_ticket_is_taken_once_by_claims() {
        let reader = cluster_reader();
        let wanted = MintFor::of(ALICE);
        assert_eq!(wanted.claims(), ALICE);
        let other = MintFor::of(Claims { expires_at: ALICE.expires_at + 1, ..ALICE });
        assert!(!reader.has_minted(wanted));
        let (minted, _) = crate::tickets::draw_shared().expect("kernel randomness");
        let text = minted.as_str().to_string();
        reader.fill(Wanted::Mint(wanted), Ok(Load::Minted(Ok(minted))));
        assert!(reader.has_minted(wanted) && !reader.has_minted(other));
        reader.done_with(Wanted::Mint(wanted), true);
        match reader.take_minted(wanted) {
            Some(Ok(Ok(m))) => assert_eq!(m.as_str(), text),
            _ => panic!("the minted ticket was not held"),
        }
        assert!(reader.take_minted(wanted).is_none());
        reader.fill(Wanted::Mint(wanted), Err(StoreError::Unavailable("down".to_string())));
        reader.done_with(Wanted::Mint(wanted), true);
        assert!(!reader.has_minted(wanted), "a failure is its waiting request's only");
    }

    #[test]
    fn sqlite_keeps_no_shared_tickets() {
        let dir = std::env::temp_dir().join(format!("periode-backend-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let store = Store::open(&dir.join("t.db")).expect("a SQLite file in a temp dir");
        let reader = Backend::Sqlite(store).open_reader().expect("its reader");
        assert!(!reader.shares_tickets());
        assert!(reader.redeemed(TicketKey([0; 32])).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
