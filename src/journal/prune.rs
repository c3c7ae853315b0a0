//! The journals of a state directory: listing them (`jobmill runs`) and
//! deleting finished ones older than an age (`jobmill runs --prune AGE`).
//!
//! Only `*.sqlite` files are considered. A file that is not a readable
//! journal is listed with its error and never touched; a run that is
//! running or interrupted is never deleted, whatever its age.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use super::read::companions;
use super::read::{Counts, Journal, Liveness, RunInfo};
use super::{JournalError, EXTENSION};

/// A readable journal's summary.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run.
    pub run: RunInfo,
    /// Running, finished or interrupted.
    pub liveness: Liveness,
    /// Jobs by state.
    pub counts: Counts,
}

/// One `*.sqlite` file of the state directory.
#[derive(Debug)]
pub struct RunEntry {
    /// The journal file.
    pub path: PathBuf,
    /// Bytes on disk of the file and its `-wal` and `-shm`.
    pub size: u64,
    /// The summary, or why the file is not a readable journal.
    pub summary: Result<RunSummary, JournalError>,
}

/// A deleted journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The run id.
    pub run_id: String,
    /// The journal file (deleted with its `-wal` and `-shm`).
    pub path: PathBuf,
    /// Bytes freed.
    pub size: u64,
}

/// Bytes of `path` and its companions (missing files count 0).
pub fn size_on_disk(path: &Path) -> u64 {
    std::iter::once(path.to_path_buf())
        .chain(companions(path))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn summarize(j: &Journal) -> Result<RunSummary, JournalError> {
    Ok(RunSummary {
        run: j.run()?,
        liveness: j.liveness()?,
        counts: j.counts()?,
    })
}

/// The `*.sqlite` files of `dir`, sorted by name (run ids sort by start
/// time). Each is opened read-only after a header check (no full
/// integrity check, so listing stays fast). A missing directory lists
/// nothing.
///
/// # Errors
///
/// [`JournalError::Io`] if `dir` exists but cannot be read.
pub fn list(dir: &Path) -> Result<Vec<RunEntry>, JournalError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Io {
                path: dir.to_path_buf(),
                cause: source,
            })
        }
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == EXTENSION)
                && std::fs::metadata(p).is_ok_and(|m| m.is_file())
        })
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let summary = Journal::open_header_only(&path).and_then(|j| summarize(&j));
            RunEntry {
                size: size_on_disk(&path),
                path,
                summary,
            }
        })
        .collect())
}

/// The peak memory, in bytes, of attempts that ran to their end (done or
/// failed, not killed for memory, lost or interrupted) in the journals of
/// `dir` whose command is `command` exactly, newest runs first, at most
/// `limit`: what `--mem-per-job auto` starts from. Journals that cannot be
/// read are skipped.
pub fn earlier_peaks(dir: &Path, command: &[std::ffi::OsString], limit: usize) -> Vec<u64> {
    let Ok(entries) = list(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.iter().rev() {
        if out.len() >= limit {
            break;
        }
        let Ok(summary) = &e.summary else { continue };
        if summary.run.command != command {
            continue;
        }
        if let Ok(j) = Journal::open_header_only(&e.path) {
            if let Ok(peaks) = j.peaks(limit - out.len()) {
                out.extend(peaks);
            }
        }
    }
    out
}

/// Deletes the journals of `dir` (with their `-wal` and `-shm`) whose run
/// finished more than `age` before `now` (Unix seconds). Running and
/// interrupted runs, and files that fail the full [`super::check`], are
/// kept. Returns what was deleted.
///
/// # Errors
///
/// [`JournalError::Io`] if `dir` cannot be read or a file cannot be
/// deleted (journals deleted before the error stay deleted).
pub fn prune(dir: &Path, age: Duration, now: f64) -> Result<Vec<Pruned>, JournalError> {
    let cutoff = now - age.as_secs_f64();
    let mut pruned = Vec::new();
    for entry in list(dir)? {
        let Ok(summary) = entry.summary else { continue };
        if summary.liveness != Liveness::Finished {
            continue;
        }
        let Some(ended) = summary.run.ended_at else {
            continue;
        };
        if ended > cutoff {
            continue;
        }
        // Take the writer's lock, so no `jobmill resume` can start on the
        // file while it is checked and deleted (one that holds it now
        // makes us skip the file); then the full check (quick_check), and
        // look again that the run is finished and old enough.
        let Some(_lock) = try_lock(&entry.path) else {
            continue;
        };
        let still_finished = match Journal::open(&entry.path).and_then(|j| j.run()) {
            Ok(run) => {
                matches!(run.end_reason.as_deref(), Some("complete") | Some("halted"))
                    && run.ended_at.is_some_and(|t| t <= cutoff)
            }
            Err(_) => false,
        };
        if !still_finished {
            continue;
        }
        let size = size_on_disk(&entry.path);
        remove(&entry.path)?;
        for c in companions(&entry.path) {
            remove(&c)?;
        }
        pruned.push(Pruned {
            run_id: summary.run.run_id,
            path: entry.path,
            size,
        });
    }
    Ok(pruned)
}

/// The writer's lock (an exclusive `flock` on the file), if free.
fn try_lock(path: &Path) -> Option<std::fs::File> {
    let f = std::fs::File::open(path).ok()?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(f)
}

fn remove(path: &Path) -> Result<(), JournalError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JournalError::Io {
            path: path.to_path_buf(),
            cause: source,
        }),
    }
}
