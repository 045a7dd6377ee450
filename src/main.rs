//! periode-sse: wires the configuration, the store and the event loop together and runs them.
//! Start-up errors end here with a message and a non-zero exit; nothing below may panic.
//!
//! `serve`'s order is what makes a failed start change nothing: the store's checks and lock
//! come first (before even the key file is made beside the database), then the key, then the
//! listener; the demo data are written only once the port is ours, so a start that cannot bind
//! has not touched a database another server may be using.

use periode_sse::backend::Database;
use periode_sse::config::{self, BackupArgs, Command, Config, TokenArgs};
use periode_sse::{jwt, secret, server, store};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let command = match config::parse_args(std::env::args_os().skip(1), env) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("periode-sse: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            print!("{}", config::USAGE);
            Ok(())
        }
        Command::TokenHelp => {
            print!("{}", config::TOKEN_USAGE);
            Ok(())
        }
        Command::BackupHelp => {
            print!("{}", config::BACKUP_USAGE);
            Ok(())
        }
        Command::Backup(args) => backup(&args),
        Command::Version => {
            println!("periode-sse {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Token(args) => print_token(&args),
        Command::Serve(config) => serve(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("periode-sse: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_token(args: &TokenArgs) -> Result<(), String> {
    let database = Database::select(&args.db)?;
    let key = database.secret(std::env::var("JWT_SECRET").ok(), secret::Missing::Refuse)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_string())?
        .as_secs() as i64;
    println!("{}", jwt::sign(args.user, args.role, now, args.ttl_secs, &key));
    Ok(())
}

fn backup(args: &BackupArgs) -> Result<(), String> {
    // `backup` copies a SQLite file. A PostgreSQL `--db` would otherwise be taken for a
    // missing file's path, echoing the URI (and its password); say what to use instead.
    if periode_sse::backend::names_postgres(&args.db) {
        return Err("backup copies a SQLite database file, and --db names PostgreSQL: back it \
                    up with PostgreSQL's own tools, e.g. `pg_dump --format=custom --file=DEST \
                    DBNAME` (the tokens' key is JWT_SECRET: keep it with the dump)"
            .to_string());
    }
    let done = store::backup(&args.db, &args.dest).map_err(|e| e.to_string())?;
    eprintln!(
        "periode-sse: backup of {} written to {} ({} bytes)",
        args.db.display(),
        args.dest.display(),
        done.bytes
    );
    match done.secret {
        Some(secret) => eprintln!("periode-sse: its key copied to {}", secret.display()),
        None => eprintln!(
            "periode-sse: no {} beside the database: the key is JWT_SECRET, keep it with the backup",
            secret::secret_path(&args.db).display()
        ),
    }
    Ok(())
}

fn serve(config: Config) -> Result<(), String> {
    periode_sse::logging::init(config.log_filter.clone())
        .map_err(|e| format!("cannot start logging: {e}"))?;
    // Checked first: a bad previous key stops the start before anything is opened or made.
    let previous = secret::resolve_previous(std::env::var("JWT_SECRET_PREVIOUS").ok())
        .map_err(|e| e.to_string())?;
    let open_files = usize::try_from(server::raise_open_files_limit()).unwrap_or(usize::MAX);
    // Descriptors beyond connections: listener, epoll, signal pipe, SQLite (db, WAL, shm), spare.
    let max_conns = config.max_conns.unwrap_or_else(|| open_files.saturating_sub(32).max(1));
    // SQLite: the file's checks and lock before its key file; PostgreSQL: the key (required)
    // before the connection. The URI is shown masked, never as given.
    let database = Database::select(&config.db)?;
    if !matches!(database, Database::Sqlite(_)) {
        database.secret(std::env::var("JWT_SECRET").ok(), secret::Missing::Create)?;
    }
    let store = database.open()?;
    let secret = database.secret(std::env::var("JWT_SECRET").ok(), secret::Missing::Create)?;
    let keys = jwt::Keys::new(&secret, previous.as_deref());
    if keys.rotating() {
        log::info!("key rotation: tokens signed with JWT_SECRET_PREVIOUS are still accepted");
    }
    let listen = config.listen;
    let demo = config.demo;
    let mut server = server::Server::new(config.clone(), store, keys, max_conns)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    if demo {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        server.seed_demo(now_ms).map_err(|e| format!("cannot seed the demo data: {e}"))?;
        log::info!(
            "demo data ready: user 13, limit 200000 over this month; try `periode-sse token 13`"
        );
    }
    let addr = server.local_addr().unwrap_or(listen);
    log::info!(
        "periode-sse listening on http://{addr} (db {}, heartbeat {} s, max {} connections, {} per user)",
        database.shown(),
        config.heartbeat_secs,
        max_conns,
        config.max_conns_per_user
    );
    periode_sse::notify::ready(&format!("listening on http://{addr}"));
    server.run().map_err(|e| format!("the event loop failed: {e}"))
}
