//! The journal's lock: an exclusive `flock` on the journal file, held by
//! the jobmill writing it for its whole life, released by the kernel when
//! that process dies.

use std::fs::File;
use std::path::Path;

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
    /// [`JournalError::Locked`] when another process holds it (with the pid
    /// of the live process that holds the lock, from `/proc/locks`, never
    /// that of a dead session), [`JournalError::Io`] when
    /// the file cannot be opened.
    pub fn acquire(path: &Path) -> Result<JournalLock, JournalError> {
        let file = File::open(path).map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            cause: source,
        })?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(JournalLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(JournalError::Locked {
                path: path.to_path_buf(),
                pid: super::read::flock_holder(path).flatten(),
            }),
            Err(e) => Err(JournalError::Io {
                path: path.to_path_buf(),
                cause: e.into(),
            }),
        }
    }
}
