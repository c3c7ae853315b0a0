//! Journals are private: they hold every input and up to 1 MiB of each
//! job's output. The state directory is made `0700`, and journals, their
//! `-wal`/`-shm` files (SQLite creates them with the journal's mode) and
//! completions logs `0600`, whatever the umask. An existing state
//! directory that others can read is tightened; when it cannot be (another
//! user's directory), the caller gets a [`Warning::NotPrivate`].

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use super::{JournalError, Warning};

/// Mode of the state directory.
pub const DIR_MODE: u32 = 0o700;

/// Mode of journal files and completions logs.
pub const FILE_MODE: u32 = 0o600;

/// Creates the directory `dir` (and its parents) if missing, with mode
/// [`DIR_MODE`] for `dir` itself, and tightens it to that if others can
/// read or enter it. Returns a warning when it cannot be tightened.
///
/// # Errors
///
/// [`JournalError::Io`] when the directory cannot be created or is not a
/// directory.
pub fn ensure_private_dir(dir: &Path) -> Result<Vec<Warning>, JournalError> {
    let io = |cause| JournalError::Io {
        path: dir.to_path_buf(),
        cause,
    };
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            match DirBuilder::new().mode(DIR_MODE).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        Err(e) => return Err(io(e)),
    }
    Ok(tighten(dir, DIR_MODE).into_iter().collect())
}

/// Removes the permissions of group and others from `path` (which must
/// exist) beyond `mode`; a warning when that fails.
pub fn tighten(path: &Path, mode: u32) -> Option<Warning> {
    let current = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) => {
            return Some(Warning::NotPrivate {
                path: path.to_path_buf(),
                mode: 0,
                error: e.to_string(),
            })
        }
    };
    if current & 0o077 == 0 {
        return None;
    }
    let wanted = current & mode;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted)) {
        Ok(()) => None,
        Err(e) => Some(Warning::NotPrivate {
            path: path.to_path_buf(),
            mode: current,
            error: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_state_directory_is_created_private_and_an_open_one_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/jobmill");
        assert_eq!(ensure_private_dir(&dir).unwrap(), vec![]);
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(ensure_private_dir(&dir).unwrap(), vec![]);
        assert_eq!(mode(&dir), 0o700);
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(ensure_private_dir(&file).is_err());
    }

    #[test]
    fn what_cannot_be_tightened_is_a_warning_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let w = tighten(&tmp.path().join("gone"), DIR_MODE).expect("a warning");
        assert!(matches!(w, Warning::NotPrivate { .. }));
        assert!(w.to_string().contains("could not be made private"), "{w}");
    }
}
