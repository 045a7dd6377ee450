//! `periode-sse backup DEST`: a consistent copy of a database that a server may be writing.
//!
//! `VACUUM INTO` reads one snapshot (a WAL read transaction, so the server's commits go on
//! meanwhile and none is half in the copy) and writes a compact file. It writes into a
//! temporary file beside DEST, created 0600 by us first so the copy is never readable by
//! others, even for a moment; the file and its directory are fsynced, and only then is the
//! copy given its name, with `link`, which fails rather than replace an existing DEST. The
//! key the database's tokens are signed with (`<db>.secret`) belongs to the backup: without it
//! every token issued is refused after a restore. It is copied to `DEST.secret`, 0600. Takes no
//! lock of the server's and writes nothing into the source (closing the last connection to a
//! WAL database checkpoints it, which SQLite does for any reader when no server runs).

use super::open::check_path;
use super::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What a backup wrote, for the command to report.
#[derive(Debug)]
pub struct BackupDone {
    pub bytes: u64,
    /// `DEST.secret`, when the database had a `.secret` beside it.
    pub secret: Option<PathBuf>,
}

pub fn backup(db: &Path, dest: &Path) -> Result<BackupDone, StoreError> {
    let refuse = |why: String| Err(StoreError::Refused(why));
    check_path(db)?;
    check_path(dest)?;
    if !db.is_file() {
        return refuse(format!("there is no database file at {}", db.display()));
    }
    let dest_secret = crate::secret::secret_path(dest);
    for taken in [dest, dest_secret.as_path()] {
        if taken.symlink_metadata().is_ok() {
            return refuse(format!(
                "{} already exists; backup never overwrites: remove it or choose another name",
                taken.display()
            ));
        }
    }
    let dir = match dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return refuse(format!("the directory {} does not exist", dir.display()));
    }
    let Some(name) = dest.file_name() else {
        return refuse(format!("{} is not a file name", dest.display()));
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = copy_into(db, &tmp).and_then(|bytes| {
        publish(&tmp, dest)?;
        let secret = copy_secret(db, &dest_secret)?;
        sync_dir(&dir)?;
        Ok(BackupDone { bytes, secret })
    });
    // Gone either way: after `link` DEST is the copy's name, and on failure nothing is left.
    let _ = std::fs::remove_file(&tmp);
    result
}

fn copy_into(db: &Path, tmp: &Path) -> Result<u64, StoreError> {
    let shown = db.display().to_string();
    let failed = |e: std::io::Error| {
        StoreError::Refused(format!("cannot write the backup file {}: {e}", tmp.display()))
    };
    // VACUUM INTO accepts an empty file; creating it ourselves fixes its mode.
    let _ = std::fs::remove_file(tmp);
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp).map_err(failed)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let source =
        Connection::open_with_flags(db, flags).map_err(|e| StoreError::Open(shown.clone(), e))?;
    source
        .busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| StoreError::Open(shown.clone(), e))?;
    let tmp_text = tmp.to_str().ok_or_else(|| {
        StoreError::Refused(format!("the backup path {} is not valid UTF-8", tmp.display()))
    })?;
    source
        .execute("VACUUM INTO ?1", [tmp_text])
        .map_err(|e| StoreError::Refused(format!("the backup of {shown} failed: {e}")))?;
    drop(source);
    let file = File::open(tmp).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    Ok(file.metadata().map_err(failed)?.len())
}

/// Gives the finished copy its name; `link` refuses an existing name, atomically.
fn publish(tmp: &Path, dest: &Path) -> Result<(), StoreError> {
    std::fs::hard_link(tmp, dest).map_err(|e| {
        StoreError::Refused(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} already exists; backup never overwrites", dest.display())
        } else {
            format!("cannot create {}: {e}", dest.display())
        })
    })
}

fn copy_secret(db: &Path, dest_secret: &Path) -> Result<Option<PathBuf>, StoreError> {
    let source = crate::secret::secret_path(db);
    let text = match std::fs::read(&source) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Refused(format!(
                "the backup is written, but the key {} could not be read: {e}",
                source.display()
            )))
        }
    };
    let failed = |e: std::io::Error| {
        StoreError::Refused(format!(
            "the backup is written, but not its key {}: {e}",
            dest_secret.display()
        ))
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest_secret)
        .map_err(failed)?;
    file.write_all(&text).and_then(|()| file.sync_all()).map_err(failed)?;
    Ok(Some(dest_secret.to_path_buf()))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
        StoreError::Refused(format!("cannot sync the directory {}: {e}", dir.display()))
    })
}
