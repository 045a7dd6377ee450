//! Stream tickets shared by every node of a cluster (SPEC §8: "a ticket from any node works
//! on every node"): the `stream_tickets` table, and minting, redeeming and sweeping in one
//! statement each.
//!
//! The rules are those of `crate::tickets` (30 s, single use, bound to the claims of the
//! token it was bought with, at most `DEFAULT_MAX_PER_USER` live per user); what changes is
//! where they are enforced. Single use holds across nodes because redeeming is one `UPDATE …
//! SET used = true WHERE ticket_hash = $1 AND expires_at > now() AND NOT used RETURNING …`: of
//! two nodes redeeming the same ticket at once, PostgreSQL's row lock lets exactly one update
//! the row, and the other, re-reading it once the first commits, finds it used. A used ticket
//! keeps its row until its 30 s are over, so that it still counts toward its user's cap, as
//! on SQLite (SPEC §7: a single node behaves alike on both backends). Both expiries are read
//! from the database's clock (`now()`), so the nodes' clocks need not agree. The table keeps
//! the SHA-256 of each ticket's bits, never the ticket: a dump, a replica or a log of the
//! table holds nothing a client could present. All three refusals are `Refusal::Unknown`
//! here (all are answered `401 invalid_token` anyway).
//!
//! The functions take the async client and return its own error, so that the store thread
//! can run them under its deadline like any other call (`PgStore`'s `call`); nothing here
//! logs, and no ticket or hash appears in an error.

use crate::domain::{Role, UserId};
use crate::jwt::Claims;
use crate::tickets::{self, MintError, Minted, Refusal, DEFAULT_MAX_PER_USER, TICKET_TTL_MS};
use tokio_postgres::Client;

/// Any constant will do, as long as nothing else in the database uses it: "pSST".
const TABLE_LOCK: i64 = 0x7053_5354;

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS stream_tickets (
    -- SHA-256 of the ticket's 128 random bits: the ticket itself is never stored
    ticket_hash BYTEA PRIMARY KEY,
    user_id BIGINT NOT NULL,
    role TEXT NOT NULL,
    -- the exp of the token the ticket was bought with: the stream still ends there
    token_expires_at BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    -- redeemed: refused from now on, but counted toward the user's cap until it expires
    used BOOLEAN NOT NULL DEFAULT false
);
-- A table made before tickets were marked rather than deleted.
ALTER TABLE stream_tickets ADD COLUMN IF NOT EXISTS used BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS stream_tickets_by_user ON stream_tickets (user_id, expires_at);
CREATE INDEX IF NOT EXISTS stream_tickets_by_expiry ON stream_tickets (expires_at);
";

/// Inserts the ticket unless the user already holds `$6` live ones; the user's expired
/// tickets are dropped on the way, so a user's rows stay few without a global sweep.
const MINT: &str = "
WITH swept AS (DELETE FROM stream_tickets WHERE user_id = $2 AND expires_at <= now())
INSERT INTO stream_tickets (ticket_hash, user_id, role, token_expires_at, expires_at)
SELECT $1, $2, $3, $4, now() + ($5::BIGINT)::FLOAT8 * INTERVAL '1 millisecond'
WHERE (SELECT count(*) FROM stream_tickets WHERE user_id = $2 AND expires_at > now()) < $6";

const REDEEM: &str = "
UPDATE stream_tickets SET used = true
WHERE ticket_hash = $1 AND expires_at > now() AND NOT used
RETURNING user_id, role, token_expires_at";

const SWEEP: &str = "DELETE FROM stream_tickets WHERE expires_at <= now()";

/// Creates the table and its indexes if they are missing. Safe when several nodes start at
/// once: the creation runs in one transaction behind an advisory lock, because `IF NOT
/// EXISTS` alone lets two sessions race on the catalog (see `schema.rs`).
pub async fn ensure_table(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TABLE_LOCK]).await?;
    tx.batch_execute(CREATE).await?;
    tx.commit().await
}

/// Mints a ticket for the claims of a verified token. `Ok(Err(UserFull))` when the user
/// already holds `DEFAULT_MAX_PER_USER` live tickets (answer `429`), `Ok(Err(NoRandomness))`
/// when the kernel gave no random bytes; `Err` is the database's.
pub async fn mint(
    client: &Client,
    claims: Claims,
) -> Result<Result<Minted, MintError>, tokio_postgres::Error> {
    let Some((minted, key)) = tickets::draw_shared() else {
        return Ok(Err(MintError::NoRandomness));
    };
    let max_per_user = i64::try_from(DEFAULT_MAX_PER_USER).unwrap_or(i64::MAX);
    let inserted = client
        .execute(
            MINT,
            &[
                &&key[..],
                &claims.user.0,
                &claims.role.as_str(),
                &claims.expires_at,
                &TICKET_TTL_MS,
                &max_per_user,
            ],
        )
        .await?;
    Ok(if inserted == 1 { Ok(minted) } else { Err(MintError::UserFull) })
}

/// Redeems a presented `?ticket=`: the claims it was minted for, once, within its 30 s, on
/// whichever node. The caller still checks what it checks for a token (the user active; the
/// claims' `expires_at` bounds the stream).
pub async fn redeem(
    client: &Client,
    ticket: &[u8],
) -> Result<Result<Claims, Refusal>, tokio_postgres::Error> {
    // Not the shape of a ticket: unknown, without a round trip.
    let Some(key) = tickets::shared_key(ticket) else { return Ok(Err(Refusal::Unknown)) };
    redeem_key(client, &key).await
}

/// `redeem` for a ticket already hashed (`tickets::shared_key`): what the store thread is
/// handed, so that the ticket's text never leaves the loop thread.
pub async fn redeem_key(
    client: &Client,
    key: &[u8; 32],
) -> Result<Result<Claims, Refusal>, tokio_postgres::Error> {
    let Some(row) = client.query_opt(REDEEM, &[&&key[..]]).await? else {
        return Ok(Err(Refusal::Unknown));
    };
    let user: i64 = row.try_get(0)?;
    let role: &str = row.try_get(1)?;
    let expires_at: i64 = row.try_get(2)?;
    let role = match role {
        "user" => Role::User,
        "admin" => Role::Admin,
        // Only `mint` writes the table; a row it did not write authenticates no one.
        _ => return Ok(Err(Refusal::Unknown)),
    };
    Ok(Ok(Claims { user: UserId(user), role, expires_at }))
}

/// Deletes every expired ticket; how many. `mint` already drops a user's own expired ones,
/// so this only bounds the rows of users who stopped minting: once a minute is plenty.
pub async fn sweep(client: &Client) -> Result<u64, tokio_postgres::Error> {
    client.execute(SWEEP, &[]).await
}
