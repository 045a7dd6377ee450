//! The HS256 key: `JWT_SECRET` when set, otherwise a random key kept beside the database.
//!
//! `serve` and `token` both resolve it here, so a token printed by one is accepted by the
//! other with no set-up. The file holds one line of base64url text and the key is that text's
//! bytes, exactly as if it had been given as `JWT_SECRET`.
//!
//! Only `serve` may create the file (`Missing::Create`); `token` never does (`Missing::Refuse`):
//! a key made by `token` in the wrong directory would sign tokens the server refuses. A file
//! that group or others may read is refused, with the `chmod` that fixes it.
//!
//! `JWT_SECRET_PREVIOUS` (key rotation) is read here too, under the same length rule; it is
//! never written to a file and never used to sign.

use base64::Engine as _;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug)]
pub struct SecretError(String);

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the generated key of database `db` lives: `<db>.secret`.
pub fn secret_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".secret");
    PathBuf::from(name)
}

/// What to do when neither `JWT_SECRET` nor `<db>.secret` is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `serve`: generate a key and keep it in `<db>.secret`.
    Create,
    /// `token`: stop, saying where we looked.
    Refuse,
}

pub fn resolve(
    db: &Path,
    env_secret: Option<String>,
    missing: Missing,
) -> Result<Vec<u8>, SecretError> {
    if let Some(secret) = env_secret {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError(format!(
                "JWT_SECRET is {} bytes long; HS256 needs at least {MIN_SECRET_BYTES} (RFC 7518 §3.2). \
                 Use a longer secret, or unset JWT_SECRET to have one generated in {}",
                secret.len(),
                secret_path(db).display()
            )));
        }
        return Ok(secret.into_bytes());
    }
    let path = secret_path(db);
    match read_secret_file(&path) {
        Ok(Some(secret)) => Ok(secret),
        Ok(None) if missing == Missing::Create => create_secret_file(&path),
        Ok(None) => Err(SecretError(format!(
            "no key to sign with: JWT_SECRET is not set and there is no {} (token never creates \
             one). Start the server once with this --db to have it generated, pass the --db the \
             server uses, or set JWT_SECRET to the server's key",
            path.display()
        ))),
        Err(e) => Err(e),
    }
}

/// `JWT_SECRET_PREVIOUS` (SPEC §8): the key being rotated out, accepted for verification
/// only. Unset outside a rotation; when set it obeys `JWT_SECRET`'s rule (at least 32 bytes),
/// so a key cut short in a deployment file stops the start instead of silently refusing
/// every token it signed.
pub fn resolve_previous(env_previous: Option<String>) -> Result<Option<Vec<u8>>, SecretError> {
    match env_previous {
        None => Ok(None),
        Some(previous) if previous.len() < MIN_SECRET_BYTES => Err(SecretError(format!(
            "JWT_SECRET_PREVIOUS is {} bytes long; HS256 needs at least {MIN_SECRET_BYTES} \
             (RFC 7518 §3.2). Set it to the whole previous key, or unset it once no token \
             signed with that key is still in use",
            previous.len()
        ))),
        Some(previous) => Ok(Some(previous.into_bytes())),
    }
}

fn read_secret_file(path: &Path) -> Result<Option<Vec<u8>>, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SecretError(format!("cannot open the secret file {shown}: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| SecretError(format!("cannot stat the secret file {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(SecretError(format!(
            "the secret file {shown} is not a regular file; remove it to have a key generated, \
             or put the key in it (one line)"
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError(format!(
            "the secret file {shown} can be read by group or others (mode {mode:o}); it signs \
             every token. Fix it with: chmod 600 {shown}"
        )));
    }
    // One line of printable text; a bigger file is not a key.
    let mut text = String::new();
    (&mut file).take(4096).read_to_string(&mut text).map_err(|e| {
        SecretError(format!(
            "cannot read the secret file {shown}: {e} (it must be one line of text)"
        ))
    })?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.len() < MIN_SECRET_BYTES || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SecretError(format!(
            "the secret file {shown} must hold one line of at least {MIN_SECRET_BYTES} printable \
             characters (it holds {} bytes); delete it to have a new one generated (tokens signed \
             with the old one stop working)",
            text.len()
        )));
    }
    Ok(Some(secret.as_bytes().to_vec()))
}

fn create_secret_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| SecretError(format!("cannot read /dev/urandom to make a secret: {e}")))?;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    match created {
        Ok(mut file) => {
            file.write_all(format!("{text}\n").as_bytes()).and_then(|_| file.sync_all()).map_err(
                |e| SecretError(format!("cannot write the secret file {}: {e}", path.display())),
            )?;
            log::info!("generated a new HS256 secret in {}", path.display());
            Ok(text.into_bytes())
        }
        // Another process (`serve` and `token` started together) made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_secret_file(path)?
            .ok_or_else(|| SecretError(format!("the secret file {} vanished", path.display()))),
        Err(e) => {
            Err(SecretError(format!("cannot create the secret file {}: {e}", path.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_then_reused_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("periode-sse-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        assert!(resolve(&db, None, Missing::Refuse).is_err());
        let first = resolve(&db, None, Missing::Create).unwrap();
        let second = resolve(&db, None, Missing::Refuse).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 43);
        let path = secret_path(&db);
        assert_eq!(path, dir.join("x.db.secret"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim_end().as_bytes(), &first[..]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn env_secret_wins_and_must_be_long_enough() {
        let db = Path::new("/nonexistent/dir/x.db");
        let long = "a".repeat(32);
        assert_eq!(resolve(db, Some(long.clone()), Missing::Refuse).unwrap(), long.into_bytes());
        let err = resolve(db, Some("short".into()), Missing::Create).unwrap_err().to_string();
        assert!(err.contains("JWT_SECRET is 5 bytes long"), "{err}");
    }

    #[test]
    fn the_previous_key_follows_the_same_rule() {
        assert_eq!(resolve_previous(None).unwrap(), None);
        let long = "p".repeat(32);
        assert_eq!(resolve_previous(Some(long.clone())).unwrap(), Some(long.into_bytes()));
        for short in ["", "x", &"p".repeat(31)] {
            let err = resolve_previous(Some(short.to_string())).unwrap_err().to_string();
            let want = format!("JWT_SECRET_PREVIOUS is {} bytes long", short.len());
            assert!(err.contains(&want) && err.contains("at least 32"), "{err}");
            assert!(short.is_empty() || !err.contains(short), "the key is not echoed: {err}");
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_fix() {
        let dir =
            std::env::temp_dir().join(format!("periode-sse-secret-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        let path = secret_path(&db);
        let write = |text: &str, mode: u32| {
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let good = "a".repeat(43);
        let cases: &[(&str, u32, &str)] = &[
            (&good, 0o644, "chmod 600"),
            (&good, 0o640, "chmod 600"),
            ("", 0o600, "at least 32"),
            ("short\n", 0o600, "at least 32"),
            (&format!("{good}\n{good}\n"), 0o600, "one line"),
            (&format!("{good} x"), 0o600, "printable"),
        ];
        for (text, mode, needle) in cases {
            write(text, *mode);
            let err = resolve(&db, None, Missing::Create).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} {mode:o}: {err}");
        }
        write(&format!("{good}\r\n"), 0o600);
        assert_eq!(resolve(&db, None, Missing::Create).unwrap(), good.as_bytes());
        write(&good, 0o400);
        assert_eq!(resolve(&db, None, Missing::Refuse).unwrap(), good.as_bytes());
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = resolve(&db, None, Missing::Create).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
