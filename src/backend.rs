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
//!
//! Both readers are kept true by the loop: it forgets a user when a batch that wrote them is
//! back, and (cluster mode) on every event of the feed; it never reads a user whose batch is
//! in flight.

use crate::domain::UserId;
use crate::spending::{Limit, Status};
use crate::store::{self, Store, StoreError, Transaction, WriteRefusal};
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
    pub fn load(&self, user: UserId, after: Option<u64>) -> store::Result<Load> {
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
        Ok(Load { user, view, replay: after.map(|after| Replay { after, rows }) })
    }
}

/// Everything a connect or a status read needs of one user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    active: bool,
    last_id: u64,
    limit: Option<Limit>,
    spending: i64,
}

/// One user's reads as the store thread loaded them: `view` is `None` when the user does not
/// exist; `replay` the notifications after an id, when one was asked for.
#[derive(Debug)]
pub struct Load {
    pub user: UserId,
    view: Option<View>,
    replay: Option<Replay>,
}

/// The kept notifications of a user above `after`, oldest first.
#[derive(Debug)]
struct Replay {
    after: u64,
    rows: Vec<(u64, String)>,
}

/// Past this many users the cache starts over (a bound, not an eviction policy).
const MAX_LOADED_USERS: usize = 200_000;

/// The loop's cache of PostgreSQL reads, filled by the store thread.
#[derive(Default)]
pub struct Loaded {
    views: RefCell<HashMap<UserId, Option<View>>>,
    /// The replay asked for by a stream waiting to open, by user: taken when it opens.
    replays: RefCell<HashMap<UserId, Replay>>,
    /// A load that failed: reads of the user answer 503 with this until the waiting requests
    /// are served (`fill`, serve them, `done_with`).
    failures: RefCell<HashMap<UserId, String>>,
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
                !loaded.replays.borrow().get(&user).is_some_and(|r| r.after == after)
            }
            _ => false,
        }
    }

    /// Puts a load into the cache, or its failure in place of the user's reads.
    pub fn fill(&self, user: UserId, load: store::Result<Load>) {
        let Reader::Loaded(loaded) = self else {
            return;
        };
        match load {
            Ok(load) => {
                let mut views = loaded.views.borrow_mut();
                if views.len() >= MAX_LOADED_USERS {
                    views.clear();
                }
                views.insert(user, load.view);
                if let Some(replay) = load.replay {
                    loaded.replays.borrow_mut().insert(user, replay);
                }
            }
            Err(e) => {
                loaded.failures.borrow_mut().insert(user, e.to_string());
            }
        }
    }

    /// After the requests that waited for `user`'s load are served: the replay and the
    /// failure were theirs only, and the view too unless `keep` (nothing may have changed it
    /// since the load was asked for, and the feed that would say so is heard).
    pub fn done_with(&self, user: UserId, keep: bool) {
        if let Reader::Loaded(loaded) = self {
            loaded.failures.borrow_mut().remove(&user);
            loaded.replays.borrow_mut().remove(&user);
            if !keep {
                loaded.views.borrow_mut().remove(&user);
            }
        }
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
            Reader::Loaded(l) => Ok(Reader::loaded_view(l, user)?.map(|v| v.active)),
        }
    }

    pub fn active_status(&self, user: UserId, now_ms: i64) -> store::Result<Option<Status>> {
        match self {
            Reader::Sqlite(s) => s.active_status(user, now_ms),
            Reader::Loaded(l) => Ok(match Reader::loaded_view(l, user)? {
                Some(View { limit: Some(limit), spending, .. }) if limit.covers(now_ms) => {
                    Some(Status::compute(spending, limit))
                }
                _ => None,
            }),
        }
    }

    pub fn last_notification_id(&self, user: UserId) -> store::Result<u64> {
        match self {
            Reader::Sqlite(s) => s.last_notification_id(user),
            Reader::Loaded(l) => Ok(Reader::loaded_view(l, user)?.map_or(0, |v| v.last_id)),
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
