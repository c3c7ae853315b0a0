//! Creating a journal's schema and opening its writing connection. (The
//! SQL is `schema.sql`; the header check is [`super::check`].)

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
