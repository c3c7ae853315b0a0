//! Writing a snapshot of jobs into a journal in one transaction: how the
//! results of a shared queue are collected into a local journal, so that
//! `jobmill results` and `status` read them offline afterwards.
//!
//! The types here know nothing of where the jobs ran: the caller (the CLI,
//! for a Redis queue) maps its records onto [`RunHeader`] and
//! [`JobSnapshot`]. A journal is created with the normal schema, or an
//! existing one is updated: the run row and every job given are upserted
//! by sequence number, so collecting again never duplicates a job. An
//! existing file that fails [`super::check`] is refused and left unchanged,
//! as is a journal that holds another source's run.
//!
//! Everything written by one [`Snapshot`] becomes visible at once, at
//! [`Snapshot::commit`]; dropping it without committing writes nothing to an
//! existing journal, and removes a journal file it created.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::read::JobState;
use super::{JournalError, APPLICATION_ID, SCHEMA, SCHEMA_VERSION};

/// The run a snapshot records (the one row of table `run`).
#[derive(Debug, Clone)]
pub struct RunHeader {
    /// The run id, used when the journal is created; an existing journal
    /// keeps its own.
    pub run_id: String,
    /// Where the jobs come from, e.g. a queue URL with its password
    /// redacted. Stored as option `source`; an existing journal with
    /// another source (or none: a local run's journal) is refused.
    pub source: String,
    /// The command template's arguments, when known (empty if not).
    pub command: Vec<OsString>,
    /// Further options of the run (a JSON object; `source` is added).
    pub options: serde_json::Map<String, serde_json::Value>,
    /// The working directory.
    pub cwd: PathBuf,
    /// The host taking the snapshot.
    pub host: String,
    /// When the run started, Unix seconds (an existing journal keeps the
    /// earlier of its own and this).
    pub started_at: f64,
    /// When it ended, Unix seconds; `None` if it has not.
    pub ended_at: Option<f64>,
    /// Why it ended: `complete`, or a note such as `snapshot: ...`.
    pub end_reason: Option<String>,
    /// Whether every job of the run is given (no more will come).
    pub input_complete: bool,
    /// The number of jobs, when known.
    pub total_jobs: Option<u64>,
}

/// One job of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot<'a> {
    /// Its sequence number in the journal (the primary key of `job`).
    pub seq: u64,
    /// Its exact input bytes, when known. `None` keeps the input already
    /// recorded for this job, or records an empty one.
    pub input: Option<&'a [u8]>,
    /// Its state.
    pub state: JobState,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's exit code.
    pub exit_code: Option<i64>,
    /// The signal that killed the last attempt.
    pub signal: Option<i64>,
    /// Why it failed or died.
    pub reason: Option<String>,
    /// Whether the last attempt was stopped for its timeout.
    pub timed_out: bool,
    /// When it reached its final state, Unix seconds.
    pub finished_at: Option<f64>,
    /// How long its last attempt ran, seconds.
    pub duration: Option<f64>,
    /// How its last attempt ended: one of the names of
    /// [`crate::outcome::AttemptEnd::cause`], when known.
    pub cause: Option<String>,
    /// The worker that ran its last attempt (the queue's id of it), when
    /// known.
    pub worker: Option<u64>,
    /// The host that ran its last attempt, when known.
    pub host: Option<String>,
}

/// What a committed snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The journal file.
    pub path: PathBuf,
    /// Its run id.
    pub run_id: String,
    /// Job rows written (a job given twice counts twice).
    pub jobs_written: u64,
    /// Whether the file was created by this snapshot.
    pub created: bool,
}

/// A snapshot being written: one open transaction on the journal, under
/// the writer's lock (an exclusive `flock` on the file).
#[derive(Debug)]
pub struct Snapshot {
    conn: Option<Connection>,
    committed: bool,
    path: PathBuf,
    run_id: String,
    jobs: u64,
    created: bool,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

impl Snapshot {
    /// Opens (or creates) the journal at `path` and starts the snapshot:
    /// writes the run row inside a transaction that [`Snapshot::commit`]
    /// ends.
    ///
    /// # Errors
    ///
    /// The errors of [`super::check`] for an existing file that is not a
    /// readable journal (the file is left unchanged);
    /// [`JournalError::Locked`] when another jobmill writes it;
    /// [`JournalError::Corrupt`] when it holds another source's run;
    /// [`JournalError::Io`] or [`JournalError::Sqlite`] otherwise.
    pub fn begin(path: &Path, header: &RunHeader) -> Result<Snapshot, JournalError> {
        let exists = match std::fs::symlink_metadata(path) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(path)(e)),
        };
        if exists {
            super::check(path)?;
        }
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(!exists)
            .mode(super::private::FILE_MODE)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(JournalError::Locked {
                path: path.to_path_buf(),
                pid: super::read::flock_holder(path).flatten(),
            });
        }
        let sql = |op| JournalError::sqlite(path, op);
        let conn = Connection::open(path).map_err(sql("open for writing"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(sql("set busy timeout"))?;
        // A file this snapshot created, or one left empty by a snapshot
        // that never committed, has no tables yet.
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'run'",
                [],
                |r| r.get(0),
            )
            .map_err(sql("read the schema"))?;
        let fresh = tables == 0;
        if fresh {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(sql("set WAL mode"))?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("set synchronous"))?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(sql("begin the snapshot"))?;
        if fresh {
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(sql("set application_id"))?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql("set user_version"))?;
            conn.execute_batch(SCHEMA)
                .map_err(sql("create the schema"))?;
        } else {
            // An existing journal of an older schema version is migrated
            // in the snapshot's transaction.
            super::schema::migrate_in(&conn, path)?;
        }
        let mut s = Snapshot {
            conn: Some(conn),
            committed: false,
            path: path.to_path_buf(),
            run_id: header.run_id.clone(),
            jobs: 0,
            created: !exists,
            _lock: lock,
        };
        s.write_run(header)?;
        Ok(s)
    }

    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("the connection is open until commit")
    }

    fn write_run(&mut self, h: &RunHeader) -> Result<(), JournalError> {
        let sql = |op| JournalError::sqlite(&self.path, op);
        let existing: Option<(String, String)> = self
            .conn()
            .query_row("SELECT run_id, options FROM run WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql("read the run"))?;
        if let Some((run_id, options)) = existing {
            let source = serde_json::from_str::<serde_json::Value>(&options)
                .ok()
                .and_then(|o| o.get("source")?.as_str().map(str::to_owned));
            if source.as_deref() != Some(h.source.as_str()) {
                return Err(JournalError::Corrupt {
                    path: self.path.clone(),
                    detail: match source {
                        Some(s) => format!(
                            "it holds run {run_id} collected from {s}, not from {}; \
                             collect into another file",
                            h.source
                        ),
                        None => format!(
                            "it holds run {run_id}, a local run's journal, not a \
                             collection of {}; collect into another file",
                            h.source
                        ),
                    },
                });
            }
            self.run_id = run_id;
        }
        let mut options = h.options.clone();
        options.insert("source".into(), h.source.clone().into());
        let command_json = serde_json::to_string(
            &h.command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap_or_else(|_| "[]".into());
        let mut raw = Vec::new();
        for a in &h.command {
            raw.extend_from_slice(a.as_bytes());
            raw.push(0);
        }
        self.conn()
            .execute(
                "INSERT INTO run (id, run_id, command, command_raw, options, cwd, host, \
                 started_at, ended_at, end_reason, input_complete, total_jobs, \
                 jobmill_version, schema_version) \
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                 ON CONFLICT (id) DO UPDATE SET command = excluded.command, \
                 command_raw = excluded.command_raw, options = excluded.options, \
                 cwd = excluded.cwd, host = excluded.host, \
                 started_at = MIN(run.started_at, excluded.started_at), \
                 ended_at = excluded.ended_at, end_reason = excluded.end_reason, \
                 input_complete = excluded.input_complete, total_jobs = excluded.total_jobs, \
                 jobmill_version = excluded.jobmill_version",
                params![
                    self.run_id,
                    command_json,
                    raw,
                    serde_json::Value::Object(options).to_string(),
                    h.cwd.as_os_str().as_bytes(),
                    h.host,
                    h.started_at,
                    h.ended_at,
                    h.end_reason,
                    h.input_complete,
                    h.total_jobs.map(|t| t as i64),
                    env!("CARGO_PKG_VERSION"),
                    SCHEMA_VERSION,
                ],
            )
            .map_err(sql("write the run"))?;
        // Attempts refer to a session: the snapshot's is session 1, a
        // `run` by this process.
        self.conn()
            .execute(
                "INSERT INTO session (id, kind, pid, started_at, ended_at, end_reason) \
                 VALUES (1, 'run', ?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, \
                 ended_at = excluded.ended_at, end_reason = excluded.end_reason",
                params![
                    i64::from(std::process::id()),
                    h.started_at,
                    h.ended_at,
                    h.end_reason
                ],
            )
            .map_err(sql("write the session"))?;
        Ok(())
    }

    /// Records one job (insert, or update the row of the same `seq`), and
    /// its last attempt when it has made one.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a write error.
    pub fn job(&mut self, j: &JobSnapshot<'_>) -> Result<(), JournalError> {
        let path = &self.path;
        let conn = self
            .conn
            .as_ref()
            .expect("the connection is open until commit");
        let sql = |op| JournalError::sqlite(path, op);
        let seq = j.seq as i64;
        let hash = j.input.map(|i| Sha256::digest(i).to_vec());
        let empty_hash = Sha256::digest(b"").to_vec();
        conn.prepare_cached(
            "INSERT INTO job (seq, input, hash, state, attempts, exit_code, signal, reason, \
                 finished_at) VALUES (?1, COALESCE(?2, x''), COALESCE(?3, ?10), ?4, ?5, ?6, ?7, \
                 ?8, ?9) \
                 ON CONFLICT (seq) DO UPDATE SET input = COALESCE(?2, job.input), \
                 hash = COALESCE(?3, job.hash), state = excluded.state, \
                 attempts = excluded.attempts, exit_code = excluded.exit_code, \
                 signal = excluded.signal, reason = excluded.reason, \
                 finished_at = excluded.finished_at",
        )
        .and_then(|mut st| {
            st.execute(params![
                seq,
                j.input,
                hash,
                j.state.as_str(),
                j.attempts,
                j.exit_code,
                j.signal,
                j.reason,
                j.finished_at,
                empty_hash,
            ])
        })
        .map_err(sql("write a job"))?;
        // Only the last attempt is known: it replaces whatever was recorded.
        conn.prepare_cached("DELETE FROM attempt WHERE seq = ?1")
            .and_then(|mut st| st.execute([seq]))
            .map_err(sql("replace a job's attempts"))?;
        // A final attempt with a known end is recorded; an attempt in
        // progress is counted in `attempts` only (its start is not known).
        let outcome = match j.state {
            JobState::Done => Some("done"),
            JobState::Failed => Some("failed"),
            JobState::Dead => Some("dead"),
            JobState::Queued | JobState::Running => None,
        };
        if let (true, Some(outcome), Some(ended)) = (j.attempts > 0, outcome, j.finished_at) {
            let started = ended - j.duration.unwrap_or(0.0);
            conn.prepare_cached(
                "INSERT INTO attempt (seq, attempt, session, slot, started_at, ended_at, \
                     exit_code, signal, timed_out, outcome, reason, duration, cause, worker, \
                     host) VALUES (?1, ?2, 1, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    seq,
                    j.attempts,
                    started,
                    ended,
                    j.exit_code,
                    j.signal,
                    j.timed_out,
                    outcome,
                    j.reason,
                    j.duration,
                    j.cause,
                    j.worker.map(|w| w as i64),
                    j.host,
                ])
            })
            .map_err(sql("write an attempt"))?;
        }
        self.jobs += 1;
        Ok(())
    }

    /// Commits everything written, at once.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] if the commit fails (nothing of the
    /// snapshot is then in the journal).
    pub fn commit(mut self) -> Result<SnapshotSummary, JournalError> {
        // The run started no later than its earliest recorded attempt.
        self.conn()
            .execute(
                "UPDATE run SET started_at = MIN(started_at, \
                 COALESCE((SELECT MIN(started_at) FROM attempt), started_at)) WHERE id = 1",
                [],
            )
            .map_err(JournalError::sqlite(&self.path, "write the run's start"))?;
        self.conn()
            .execute_batch("COMMIT")
            .map_err(JournalError::sqlite(&self.path, "commit the snapshot"))?;
        self.committed = true;
        // Closing checkpoints the WAL into the file and removes it, so
        // readers open the file alone.
        if let Some(conn) = self.conn.take() {
            conn.close()
                .map_err(|(_, e)| JournalError::sqlite(&self.path, "close")(e))?;
        }
        Ok(SnapshotSummary {
            path: self.path.clone(),
            run_id: self.run_id.clone(),
            jobs_written: self.jobs,
            created: self.created,
        })
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // Closing without COMMIT rolls the transaction back.
        drop(self.conn.take());
        if self.created && !self.committed {
            for p in std::iter::once(self.path.clone()).chain(super::read::companions(&self.path)) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::read::{Journal, StateFilter};

    fn header(source: &str) -> RunHeader {
        RunHeader {
            run_id: "20261130-000000-abcd".into(),
            source: source.into(),
            command: vec!["echo".into(), "{}".into()],
            options: serde_json::Map::new(),
            cwd: "/tmp".into(),
            host: "here".into(),
            started_at: 1000.0,
            ended_at: Some(1010.0),
            end_reason: Some("complete".into()),
            input_complete: true,
            total_jobs: Some(2),
        }
    }

    fn job(seq: u64, input: &[u8], state: JobState) -> JobSnapshot<'_> {
        JobSnapshot {
            seq,
            input: Some(input),
            state,
            attempts: 1,
            exit_code: Some(0),
            signal: None,
            reason: None,
            timed_out: false,
            finished_at: Some(1005.0),
            duration: Some(0.5),
            cause: Some("succeeded".into()),
            worker: Some(3),
            host: Some("node-1".into()),
        }
    }

    fn rows(path: &Path) -> Vec<(u64, Vec<u8>, Option<JobState>, u32)> {
        let j = Journal::open(path).unwrap();
        let mut v = Vec::new();
        j.for_each_job::<JournalError, _>(StateFilter::default(), |r| {
            v.push((r.seq, r.input.clone(), r.state, r.attempts));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn a_snapshot_creates_a_readable_journal_and_a_second_one_updates_it_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        let mut s = Snapshot::begin(&p, &header("redis://h/q")).unwrap();
        s.job(&job(1, b"a", JobState::Done)).unwrap();
        s.job(&job(2, b"b", JobState::Running)).unwrap();
        let sum = s.commit().unwrap();
        assert!(sum.created);
        assert_eq!(
            rows(&p),
            [
                (1, b"a".to_vec(), Some(JobState::Done), 1),
                (2, b"b".to_vec(), Some(JobState::Running), 1)
            ]
        );
        let mut h = header("redis://h/q");
        h.run_id = "another".into();
        let mut s = Snapshot::begin(&p, &h).unwrap();
        let mut two = job(2, b"", JobState::Dead);
        two.input = None;
        two.attempts = 3;
        s.job(&two).unwrap();
        s.job(&two).unwrap();
        let sum = s.commit().unwrap();
        assert_eq!(
            (sum.created, sum.run_id.as_str()),
            (false, "20261130-000000-abcd")
        );
        assert_eq!(
            rows(&p),
            [
                (1, b"a".to_vec(), Some(JobState::Done), 1),
                (2, b"b".to_vec(), Some(JobState::Dead), 3)
            ],
            "upserted by seq, the known input kept"
        );
    }

    #[test]
    fn an_uncommitted_snapshot_leaves_an_existing_journal_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        let mut s = Snapshot::begin(&p, &header("redis://h/q")).unwrap();
        s.job(&job(1, b"a", JobState::Done)).unwrap();
        s.commit().unwrap();
        let before = std::fs::read(&p).unwrap();
        let mut s = Snapshot::begin(&p, &header("redis://h/q")).unwrap();
        s.job(&job(7, b"z", JobState::Done)).unwrap();
        drop(s);
        assert_eq!(rows(&p).len(), 1);
        assert_eq!(std::fs::read(&p).unwrap(), before);
        let fresh = dir.path().join("fresh.sqlite");
        let mut s = Snapshot::begin(&fresh, &header("redis://h/q")).unwrap();
        s.job(&job(1, b"a", JobState::Done)).unwrap();
        drop(s);
        assert!(!fresh.exists(), "a journal the snapshot created is removed");
    }

    #[test]
    fn a_journal_of_another_source_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        Snapshot::begin(&p, &header("redis://h/one"))
            .unwrap()
            .commit()
            .unwrap();
        let before = std::fs::read(&p).unwrap();
        let e = Snapshot::begin(&p, &header("redis://h/two")).unwrap_err();
        assert!(
            e.to_string().contains("collected from redis://h/one"),
            "{e}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn a_local_runs_journal_is_refused_and_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        Snapshot::begin(&p, &header("redis://h/q"))
            .unwrap()
            .commit()
            .unwrap();
        // What a journal written by `jobmill run` looks like: no source.
        let c = Connection::open(&p).unwrap();
        c.execute("UPDATE run SET options = '{\"jobs\":2}'", [])
            .unwrap();
        drop(c);
        let before = std::fs::read(&p).unwrap();
        let e = Snapshot::begin(&p, &header("redis://h/q")).unwrap_err();
        assert!(e.to_string().contains("a local run's journal"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn a_journal_another_process_writes_is_refused_while_its_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        Snapshot::begin(&p, &header("redis://h/q"))
            .unwrap()
            .commit()
            .unwrap();
        let writer = File::open(&p).unwrap();
        rustix::fs::flock(&writer, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let e = Snapshot::begin(&p, &header("redis://h/q")).unwrap_err();
        assert!(matches!(e, JournalError::Locked { .. }), "{e}");
        drop(writer);
        Snapshot::begin(&p, &header("redis://h/q"))
            .unwrap()
            .commit()
            .unwrap();
    }

    #[test]
    fn collecting_into_a_v1_journal_migrates_it_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        // A journal an older jobmill collected from the queue (schema v1).
        let c = Connection::open(&p).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(include_str!("../../tests/fixtures/journal_v1_schema.sql"))
            .unwrap();
        c.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;
             INSERT INTO run (id, run_id, command, command_raw, options, cwd, host, started_at,
                 jobmill_version, schema_version)
             VALUES (1, 'old', '[]', x'', '{{\"source\":\"redis://h/q\"}}', x'2f', 'h', 1000,
                 '0.1.0', 1);
             INSERT INTO session (id, kind, pid, started_at) VALUES (1, 'run', 1, 1000);
             INSERT INTO job (seq, input, hash, state, attempts, exit_code, reason, finished_at)
             VALUES (1, x'61', x'00', 'failed', 1, 2, 'exited with code 2', 1001);
             INSERT INTO attempt (seq, attempt, session, slot, started_at, ended_at, exit_code,
                 outcome, reason, duration)
             VALUES (1, 1, 1, 1, 1000.5, 1001, 2, 'failed', 'exited with code 2', 0.5);"
        ))
        .unwrap();
        drop(c);
        let mut s = Snapshot::begin(&p, &header("redis://h/q")).unwrap();
        s.job(&job(2, b"b", JobState::Done)).unwrap();
        s.commit().unwrap();
        let c = Connection::open(&p).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        type Row = (i64, Option<String>, Option<i64>, Option<String>);
        let rows: Vec<Row> = c
            .prepare("SELECT seq, cause, worker, host FROM attempt ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, Some("exit".into()), None, None),
                (2, Some("succeeded".into()), Some(3), Some("node-1".into()))
            ]
        );
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused_and_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sqlite");
        std::fs::write(&p, b"not a database").unwrap();
        let e = Snapshot::begin(&p, &header("redis://h/q")).unwrap_err();
        assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"not a database");
    }
}
