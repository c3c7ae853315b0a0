//! The crash-safe SQLite journal of a run.
//!
//! Every `jobmill run` records, in one SQLite file (WAL mode), the run's
//! command and options, every job as it is read (its exact input bytes and
//! a SHA-256), every attempt, each job's capped output and its final state.
//! `jobmill resume` continues an interrupted run from the file alone;
//! `jobmill results`, `status` and `runs` read it. The schema is
//! [`SCHEMA`] (documented in `docs/JOURNAL.md`).
//!
//! This module holds what every part shares: the schema, the header check
//! that refuses files that are not journals (without changing a byte of
//! them), the errors and warnings, and where journals live.
//!
//! | file | what |
//! |---|---|
//! | `writer.rs` | [`Journal`]: `create`, `record_*`, `flush`, `close` |
//! | `commit.rs` | the writer thread, group commits, syncs, checkpoints |
//! | `rows.rs` | the SQL rows each event writes |
//! | `schema.rs` | a new journal's schema and header; migration from older versions; the writing connection |
//! | `lock.rs` | the journal's `flock` |
//! | `completions.rs` | the completions log: codec, append, recovery |
//! | `observer.rs` | the journal as the run's observer (the only part that knows `run` and `exec`) |
//! | `options.rs` | [`StoredOptions`]: the run's options as stored |
//! | `resume.rs` | opening a journal to resume, and the [`resume::ResumePlan`] |
//! | `private.rs` | private modes of the state directory and journal files |
//! | `read.rs`, `snapshot.rs`, `prune.rs` | reading, snapshots of a queue, pruning |
//! | `keyed.rs` | jobs found by key (their input's first line) and their reusable results: `jobmill.Pool(journal=...)` |
//!
//! The library never prints: what the person running jobmill should know
//! comes back as a [`Warning`] (or in a report such as
//! [`completions::Recovered`]).

mod commit;
pub mod completions;
pub mod keyed;
mod lock;
mod observer;
pub mod options;
pub mod private;
pub mod prune;
pub mod read;
mod rows;
mod schema;
pub mod snapshot;

use std::path::{Path, PathBuf};

pub mod resume;
pub mod writer;

pub use options::StoredOptions;
pub(crate) use schema::cause_from_v1;
pub use writer::{create, Journal, JournalLock, RunRecord, WriterConfig};

/// The schema of a new journal (SQL).
pub const SCHEMA: &str = include_str!("schema.sql");

/// The schema version this build writes (`PRAGMA user_version`). It reads
/// this version and every older one (version 1 lacks the columns that
/// version 2 added; writing migrates it first); a newer one is refused.
pub const SCHEMA_VERSION: i64 = 2;

/// `PRAGMA application_id` of a jobmill journal ("jmil").
pub const APPLICATION_ID: i64 = 0x6A6D_696C;

/// File name extension of journals in the state directory.
pub const EXTENSION: &str = "sqlite";

/// Errors of the journal; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be read or written.
    #[error("journal {path}: {cause}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The operating system's error (in the message, so not a
        /// `source`: it would be printed twice).
        cause: std::io::Error,
    },
    /// The file is not an SQLite database, or is corrupt or truncated.
    #[error("journal {path} is not a readable jobmill journal ({detail}); it was left unchanged")]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The file is an SQLite database but not a jobmill journal.
    #[error("{path} is an SQLite database but not a jobmill journal (application_id {found:#x}); it was left unchanged")]
    NotAJournal {
        /// The file.
        path: PathBuf,
        /// The application id found.
        found: i64,
    },
    /// The journal was written by a newer jobmill.
    #[error("journal {path} has schema version {found}, newer than this jobmill's {supported}; use a newer jobmill (the file was left unchanged)")]
    NewerSchema {
        /// The journal file.
        path: PathBuf,
        /// The schema version in the file.
        found: i64,
        /// The newest this build reads.
        supported: i64,
    },
    /// No journal matches a run id.
    #[error("no journal for run {id:?} in {dir} (see `jobmill runs`)")]
    NotFound {
        /// The run id asked for.
        id: String,
        /// The state directory searched.
        dir: PathBuf,
    },
    /// A run id prefix matches more than one journal.
    #[error("run id {id:?} is ambiguous: it matches {matches}")]
    Ambiguous {
        /// The run id asked for.
        id: String,
        /// The matching run ids, comma-separated.
        matches: String,
    },
    /// Another jobmill process is writing this journal.
    #[error("journal {path} is in use by another jobmill{}", holder(*pid))]
    Locked {
        /// The journal file.
        path: PathBuf,
        /// The live process holding its lock, if known.
        pid: Option<i64>,
    },
    /// A new journal was asked for at a path that already exists.
    #[error("journal {path} already exists; to continue that run use `jobmill resume {path}` (a journal is never overwritten)")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A new journal was asked for at a path that exists and is not a
    /// regular file (a directory, a device such as `/dev/null`).
    #[error("cannot create journal {path}: it exists and is {kind}, not a journal file; give the path of a new file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is: `a directory`, `a device`, ...
        kind: &'static str,
    },
    /// The input of the run cannot be read again on resume.
    #[error("cannot resume from journal {path}: cannot read its input {input}: {cause}")]
    Input {
        /// The journal file.
        path: PathBuf,
        /// The input (a file path).
        input: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The input file of the run changed since the journal recorded it.
    #[error("cannot resume from journal {path}: input {seq} of {input} differs from the one recorded (the input file changed since the run)")]
    InputChanged {
        /// The journal file.
        path: PathBuf,
        /// The first input that differs.
        seq: u64,
        /// The input file.
        input: String,
    },
    /// The stored run cannot be understood (options missing or invalid).
    #[error("journal {path}: {detail}")]
    Invalid {
        /// The journal file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The journal stopped writing (a write failed earlier, or it was
    /// closed); the message names the file and says what happened.
    #[error("{0}")]
    Stopped(String),
    /// An SQLite error during an operation.
    #[error("journal {path}: {op}: {cause}")]
    Sqlite {
        /// The journal file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// SQLite's error (in the message, so not a `source`).
        cause: rusqlite::Error,
    },
}

/// ` (pid N)`, or nothing when the holder is not known.
fn holder(pid: Option<i64>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// Something the person running jobmill should know that is not an error.
/// The library never prints: front ends render these (the CLI on stderr,
/// as `jobmill: warning: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A journal directory or file could not be made private (others may
    /// read the inputs and outputs it holds).
    NotPrivate {
        /// The directory or file.
        path: PathBuf,
        /// Its mode (0 if unknown).
        mode: u32,
        /// Why it could not be changed.
        error: String,
    },
    /// The run's input was stdin and it was not read to its end: only the
    /// recorded jobs are resumed.
    StdinNotRead {
        /// Jobs recorded.
        jobs: u64,
    },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::NotPrivate { path, mode, error } => write!(
                f,
                "warning: {} (mode {mode:04o}) could not be made private to you: {error}; \
                 other users may read the journals' inputs and outputs",
                path.display()
            ),
            Warning::StdinNotRead { jobs } => write!(
                f,
                "the run's input was stdin and it was not read to its end: \
                 resuming the {jobs} recorded jobs only (the rest of that input is not in the journal)"
            ),
        }
    }
}

impl JournalError {
    /// Wraps an SQLite error of operation `op` on `path`.
    pub fn sqlite(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError {
        let path = path.to_path_buf();
        move |cause| JournalError::Sqlite { path, op, cause }
    }
}

/// The directory of journals: `$XDG_STATE_HOME/jobmill`, else
/// `~/.local/state/jobmill` (not created here).
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("jobmill");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/jobmill")
}

/// The journal path of run `run_id` in `dir`.
pub fn path_of(dir: &Path, run_id: &str) -> PathBuf {
    dir.join(format!("{run_id}.{EXTENSION}"))
}

/// Resolves `RUN_ID|PATH`: an existing file path (anything containing a
/// `/`, or an existing file) is taken as is; otherwise a run id, or a
/// unique prefix of one, in [`state_dir`].
///
/// # Errors
///
/// [`JournalError::NotFound`] or [`JournalError::Ambiguous`] for a run id.
pub fn locate(arg: &str) -> Result<PathBuf, JournalError> {
    locate_in(&state_dir(), arg)
}

/// [`locate`] with an explicit state directory.
///
/// # Errors
///
/// As [`locate`].
pub fn locate_in(dir: &Path, arg: &str) -> Result<PathBuf, JournalError> {
    let p = Path::new(arg);
    if arg.contains('/') || p.is_file() {
        return Ok(p.to_path_buf());
    }
    let exact = path_of(dir, arg);
    if exact.is_file() {
        return Ok(exact);
    }
    let mut matches = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(&format!(".{EXTENSION}")) {
                if id.starts_with(arg) {
                    matches.push(id.to_string());
                }
            }
        }
    }
    matches.sort();
    match matches.len() {
        0 => Err(JournalError::NotFound {
            id: arg.to_string(),
            dir: dir.to_path_buf(),
        }),
        1 => Ok(path_of(dir, &matches[0])),
        _ => Err(JournalError::Ambiguous {
            id: arg.to_string(),
            matches: matches.join(", "),
        }),
    }
}

/// A new run id: `YYYYMMDD-HHMMSS-xxxx` (UTC, 4 random hex digits).
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let salt = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{salt:04x}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Checks that `path` starts with the SQLite magic, reading 16 bytes.
///
/// # Errors
///
/// [`JournalError::Io`] if it cannot be read, [`JournalError::Corrupt`] if
/// it is not an SQLite database.
pub(crate) fn check_magic(path: &Path) -> Result<(), JournalError> {
    use std::io::Read;
    let mut magic = [0u8; 16];
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let n = f.read(&mut magic).map_err(io)?;
    if n < 16 || &magic != b"SQLite format 3\0" {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            detail: "not an SQLite database".into(),
        });
    }
    Ok(())
}

/// Checks that `path` is a jobmill journal this build can read, without
/// changing a byte of it: the SQLite magic, `quick_check`, the
/// application id and the schema version. Call before opening an existing
/// journal for writing.
///
/// # Errors
///
/// [`JournalError::Io`], [`JournalError::Corrupt`],
/// [`JournalError::NotAJournal`] or [`JournalError::NewerSchema`].
pub fn check(path: &Path) -> Result<(), JournalError> {
    check_magic(path)?;
    let corrupt = |e: rusqlite::Error| JournalError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    // Read-only: SQLite never writes the main file through this handle (a
    // hot WAL left by a crash is read, not checkpointed into the file).
    // (and without a `-wal`, nothing is created next to it either).
    let conn = read::open_read_only(path).map_err(corrupt)?;
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(corrupt)?;
    if app != APPLICATION_ID {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            found: app,
        });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(corrupt)?;
    if version > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let ok: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(corrupt)?;
    if ok != "ok" {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("integrity check: {ok}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_dated_and_sortable() {
        let id = new_run_id();
        assert_eq!(id.len(), "20261130-015012-3f9a".len(), "{id}");
        assert!(id.starts_with("20"), "{id}");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_422), (2025, 11, 30));
    }

    #[test]
    fn locate_resolves_unique_prefixes_and_reports_ambiguity() {
        let dir = tempfile::tempdir().unwrap();
        for id in ["20261130-010000-aaaa", "20261130-020000-bbbb"] {
            std::fs::write(path_of(dir.path(), id), b"").unwrap();
        }
        assert_eq!(
            locate_in(dir.path(), "20261130-01").unwrap(),
            path_of(dir.path(), "20261130-010000-aaaa")
        );
        assert!(matches!(
            locate_in(dir.path(), "20261130"),
            Err(JournalError::Ambiguous { .. })
        ));
        assert!(matches!(
            locate_in(dir.path(), "1999"),
            Err(JournalError::NotFound { .. })
        ));
    }

    #[test]
    fn check_refuses_a_file_that_is_not_sqlite_and_leaves_it_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.sqlite");
        std::fs::write(&p, b"hello, not a database at all").unwrap();
        assert!(matches!(check(&p), Err(JournalError::Corrupt { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), b"hello, not a database at all");
    }
}
