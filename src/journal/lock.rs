//! The journal's lock: an exclusive `flock` on the journal file, held by
//! the jobmill writing it for its whole life, released by the kernel when
//! that process dies.

use std::fs::File;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::JournalError;

/// An exclusive lock on a journal file, held for as long as this lives
/// (`flock`, released by the kernel when the process dies).
#[derive(Debug)]
pub struct JournalLock {
    _file: File,
}

impl JournalLock {
    /// Takes the lock on `path`, which must exist.
    ///
    /// # Errors
    ///
    /// [`JournalError::Locked`] when another process holds it (with that
    /// process's pid when the journal names it), [`JournalError::Io`] when
    /// the file cannot be opened.
    pub fn acquire(path: &Path) -> Result<JournalLock, JournalError> {
        let file = File::open(path).map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(JournalLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(JournalError::Locked {
                path: path.to_path_buf(),
                pid: holder_pid(path).unwrap_or(0),
            }),
            Err(e) => Err(JournalError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            }),
        }
    }
}

/// The pid of the latest unfinished session of a journal (best effort).
fn holder_pid(path: &Path) -> Option<i64> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row(
        "SELECT pid FROM session WHERE ended_at IS NULL ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
    .ok()
    .flatten()
}
