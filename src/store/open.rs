//! Start-up checks of the SQLite file, and the watch on it while the server runs.
//!
//! Before SQLite sees a path, `check_path` refuses the names that would not survive a restart
//! (`:memory:`, an empty path, `file:` URIs), and `DbFile::lock` opens (creating it 0600 when
//! missing) and `flock`s the file itself: one server per file, and a lock the kernel drops
//! when the process dies, however it dies. `DbFile` then remembers which file it locked, so
//! that `DbFile::check` can tell before each commit whether the path still names that file (and
//! its `-wal`): a write committed to a deleted or replaced file would be acknowledged and then
//! lost at the next start. Nothing here writes to the database; errors are sentences an
//! operator can act on, naming the path and never anything else from the command line.

use super::StoreError;
use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Refuses database names whose data would be gone after a restart, before anything exists.
pub fn check_path(path: &Path) -> Result<(), StoreError> {
    let text = path.as_os_str().as_encoded_bytes();
    let refuse = |why: &str| Err(StoreError::Refused(why.to_string()));
    if text.is_empty() {
        return refuse(
            "the database path is empty (--db \"\" or an empty PERIODE_SSE_DB); SQLite would keep \
             everything in a temporary file that is lost at exit. Give a file path, e.g. \
             --db /var/lib/periode-sse/periode-sse.db",
        );
    }
    if text == b":memory:" {
        return refuse(
            "--db :memory: keeps everything in memory and loses it at exit; give a file path",
        );
    }
    // SQLite reads any name starting with `file:` as a URI (which may say `mode=memory` or
    // `vfs=memdb`); we open plain paths only, so that the file we lock is the file it writes.
    if text.len() >= 5 && text[..5].eq_ignore_ascii_case(b"file:") {
        return refuse(&format!(
            "--db {}: SQLite URIs (file:…) are not accepted; give a plain file path",
            path.display()
        ));
    }
    Ok(())
}

/// Who a file is: a path that names another (dev, inode) is another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity { dev: meta.dev(), ino: meta.ino() }
    }
}

/// The database file, opened and locked by this process for its whole life.
#[derive(Debug)]
pub struct DbFile {
    /// Held only for its `flock`; closing it (or dying) releases the lock.
    lock: File,
    /// The path SQLite is given: symlinks resolved, as SQLite resolves them for its `-wal`.
    pub path: PathBuf,
    id: Identity,
    wal: Cell<Option<Identity>>,
    /// `check` has failed and said so in the log; it says it once.
    gone_logged: Cell<bool>,
}

impl DbFile {
    /// Opens `path` (creating it 0600 when missing) and takes the one-server lock on it.
    pub fn lock(path: &Path) -> Result<DbFile, StoreError> {
        let shown = path.display();
        let refuse = |why: String| Err(StoreError::Refused(why));
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => {
                return refuse(format!(
                    "cannot use the database {shown}: the directory {} does not exist (create it \
                     first; periode-sse creates the file, not its directories)",
                    dir.display()
                ))
            }
            _ => {}
        }
        if path.is_dir() {
            return refuse(format!(
                "cannot use the database {shown}: it is a directory; give a file path inside it"
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            // A FIFO given as --db must not block the start-up; it is refused just below.
            .custom_flags(libc::O_NONBLOCK)
            .open(path);
        let file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return refuse(format!(
                    "cannot use the database {shown}: it cannot be written by this user ({e}); \
                     fix its owner or mode (chmod 600), or the directory's"
                ))
            }
            Err(e) => return refuse(format!("cannot open the database {shown}: {e}")),
        };
        let meta = file
            .metadata()
            .map_err(|e| StoreError::Refused(format!("cannot stat {shown}: {e}")))?;
        if !meta.file_type().is_file() {
            return refuse(format!("cannot use the database {shown}: it is not a regular file"));
        }
        // Root may write a 0444 file anyway; a file its owner marked read-only is refused for
        // everyone, so that the same file behaves the same under any user.
        if meta.permissions().mode() & 0o200 == 0 {
            return refuse(format!(
                "the database {shown} is read-only (mode {:o}); periode-sse must write to it. \
                 Make it writable (chmod 600 {shown}) or point --db at another file",
                meta.permissions().mode() & 0o7777
            ));
        }
        // ok: flock on a descriptor we own; no memory is passed.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return refuse(format!(
                    "the database {shown} is in use by another periode-sse server; \
                     stop it first (one server per database file)"
                ));
            }
            return refuse(format!("cannot lock the database {shown}: {e}"));
        }
        // A file made before databases were created 0600 keeps its mode: changing an operator's
        // file behind their back would surprise more than it protects. Say so instead.
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!(
                "the database {shown} can be read by group or others (mode {mode:o}); it holds \
                 every user's spending: chmod 600 {shown}"
            );
        }
        let resolved = std::fs::canonicalize(path)
            .map_err(|e| StoreError::Refused(format!("cannot resolve the path {shown}: {e}")))?;
        Ok(DbFile {
            lock: file,
            path: resolved,
            id: Identity::of(&meta),
            wal: Cell::new(None),
            gone_logged: Cell::new(false),
        })
    }

    fn wal_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push("-wal");
        PathBuf::from(name)
    }

    /// Remembers the `-wal` file SQLite has open, once it exists.
    pub fn note_wal(&self) {
        if self.wal.get().is_none() {
            if let Ok(meta) = std::fs::metadata(self.wal_path()) {
                self.wal.set(Some(Identity::of(&meta)));
            }
        }
    }

    /// Whether a commit now would reach the files a restart opens. Three `stat`s: cheap next
    /// to the `fdatasync` the commit costs.
    pub fn check(&self) -> Result<(), StoreError> {
        let why = self.what_is_gone();
        match why {
            None => Ok(()),
            Some(why) => {
                let message = format!(
                    "{why}; writes are refused until periode-sse is restarted \
                     (what was committed before is in the file that was removed)"
                );
                if !self.gone_logged.replace(true) {
                    log::error!("{message}");
                }
                Err(StoreError::Unavailable(message))
            }
        }
    }

    fn what_is_gone(&self) -> Option<String> {
        let shown = self.path.display();
        match std::fs::metadata(&self.path) {
            Ok(meta) if Identity::of(&meta) == self.id => {}
            Ok(_) => {
                return Some(format!("the database file {shown} was replaced while the server ran"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some(format!("the database file {shown} was deleted while the server ran"))
            }
            Err(e) => return Some(format!("the database file {shown} cannot be reached ({e})")),
        }
        match self.lock.metadata() {
            Ok(meta) if meta.nlink() > 0 => {}
            _ => {
                return Some(format!("the database file {shown} was deleted while the server ran"))
            }
        }
        if let Some(wal) = self.wal.get() {
            let wal_path = self.wal_path();
            match std::fs::metadata(&wal_path) {
                Ok(meta) if Identity::of(&meta) == wal => {}
                _ => {
                    return Some(format!(
                        "the write-ahead log {} was deleted or replaced while the server ran",
                        wal_path.display()
                    ))
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_not_survive_a_restart_are_refused() {
        for name in ["", ":memory:", "file::memory:", "file:x.db?mode=memory", "FILE:/a/b.db"] {
            let err = check_path(Path::new(name)).unwrap_err().to_string();
            assert!(!err.is_empty(), "{name:?}");
        }
        for name in ["./periode-sse.db", "/var/lib/x.db", "memory", ":memory:.db", "files:x"] {
            assert!(check_path(Path::new(name)).is_ok(), "{name:?}");
        }
    }
}
