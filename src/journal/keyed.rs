//! Jobs found by key: what a front end that names its own jobs (Python's
//! `jobmill.Pool(journal=...)`) needs to run a script again on its journal
//! and reuse the results already recorded.
//!
//! A job's **key** is the first line of its input (the bytes before the
//! first newline, or the whole input when it has none); the front end
//! chooses it, e.g. the function and a hash of its arguments. Nothing in
//! the schema changes: the key is read out of `job.input`, and a job's
//! result is its kept stdout (`output`, stream 1). A result is reusable
//! only when the job is `done` and its stdout was kept whole (not
//! truncated at the journal's output cap).
//!
//! Reading uses a plain read-only connection, which sees what a writer of
//! the same file has committed (WAL mode), so a front end can look results
//! up while it records new ones: open it once the writer has started.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use super::JournalError;

/// A recorded job, by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedJob {
    /// The job's key: its input's first line.
    pub key: Vec<u8>,
    /// Its sequence number.
    pub seq: u64,
    /// Whether its result can be reused: the job is `done` and its stdout
    /// was kept whole.
    pub reusable: bool,
}

/// A journal open for key lookups.
#[derive(Debug)]
pub struct Keyed {
    path: PathBuf,
    conn: Connection,
}

impl Keyed {
    /// Opens the journal at `path` read-only for key lookups (never as
    /// `immutable`: a writer may be changing it).
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] naming the file if it cannot be opened.
    pub fn open(path: &Path) -> Result<Keyed, JournalError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(JournalError::sqlite(path, "open"))?;
        Ok(Keyed {
            path: path.to_path_buf(),
            conn,
        })
    }

    /// Every recorded job with its key, in sequence order.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] naming the file if it cannot be read.
    pub fn jobs(&self) -> Result<Vec<KeyedJob>, JournalError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT j.seq,
                        CASE WHEN instr(j.input, x'0a') > 0
                             THEN substr(j.input, 1, instr(j.input, x'0a') - 1)
                             ELSE j.input END,
                        j.state = 'done' AND o.truncated = 0
                 FROM job j LEFT JOIN output o ON o.seq = j.seq AND o.stream = 1
                 ORDER BY j.seq",
            )
            .map_err(JournalError::sqlite(&self.path, "read job keys"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(KeyedJob {
                    seq: r.get::<_, i64>(0)?.max(0) as u64,
                    key: r.get::<_, Vec<u8>>(1)?,
                    reusable: r.get::<_, Option<bool>>(2)?.unwrap_or(false),
                })
            })
            .and_then(Iterator::collect)
            .map_err(JournalError::sqlite(&self.path, "read job keys"))?;
        Ok(rows)
    }

    /// The result of job `seq`: its whole stdout if it is `done` and its
    /// stdout was kept whole, else `None`.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] naming the file if it cannot be read.
    pub fn result(&self, seq: u64) -> Result<Option<Vec<u8>>, JournalError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT o.data FROM job j JOIN output o ON o.seq = j.seq AND o.stream = 1
                 WHERE j.seq = ?1 AND j.state = 'done' AND o.truncated = 0",
            )
            .and_then(|mut s| {
                let mut rows = s.query(params![seq as i64])?;
                match rows.next()? {
                    Some(r) => r.get::<_, Vec<u8>>(0).map(Some),
                    None => Ok(None),
                }
            });
        row.map_err(JournalError::sqlite(&self.path, "read a result"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;

    use super::*;
    use crate::events::{AttemptReport, Observer, Resolution, RunSummary};
    use crate::exec::{Capture, SpillBudget};
    use crate::journal::writer::{create, RunRecord, WriterConfig};
    use crate::outcome::{AttemptEnd, Outcome};

    fn finish(j: &crate::journal::Journal, seq: u64, stdout: &[u8]) {
        let budget = SpillBudget::new(1 << 20);
        let mut out = Capture::new(budget.clone());
        out.append(stdout);
        let mut err = Capture::new(budget);
        let outcome = Outcome {
            end: AttemptEnd::Succeeded,
            started: SystemTime::now(),
            duration: Some(Duration::from_millis(1)),
            max_rss_kib: None,
            exit_code: Some(0),
        };
        j.attempt_started(&crate::events::AttemptStart {
            seq,
            attempt: 1,
            slot: 1,
            at: SystemTime::now(),
            runner: crate::events::Runner::default(),
        })
        .unwrap();
        j.attempt_finished(&mut AttemptReport {
            seq,
            attempt: 1,
            slot: 1,
            runner: crate::events::Runner::default(),
            outcome: &outcome,
            resolution: &Resolution::Done,
            stdout: &mut out,
            stderr: &mut err,
        })
        .unwrap();
    }

    #[test]
    fn keys_are_first_lines_and_only_whole_done_results_are_reusable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.sqlite");
        let run = RunRecord {
            run_id: "20261205-000000-keys".into(),
            command: vec!["python".into()],
            options: serde_json::json!({}),
            cwd: dir.path().to_path_buf(),
        };
        let config = WriterConfig {
            output_cap: 8,
            ..WriterConfig::default()
        };
        let j = create(&path, &run, config).unwrap();
        j.record_job(1, &Bytes::from_static(b"f abc\nargs"))
            .unwrap();
        j.record_job(2, &Bytes::from_static(b"f def")).unwrap();
        j.record_job(3, &Bytes::from_static(b"g abc\n")).unwrap();
        j.record_job(4, &Bytes::from_static(b"h\n")).unwrap();
        finish(&j, 1, b"result1\n");
        finish(&j, 2, b"a result past the cap\n");
        j.flush().unwrap();
        let k = Keyed::open(&path).unwrap();
        let jobs = k.jobs().unwrap();
        let got: Vec<(&[u8], u64, bool)> = jobs
            .iter()
            .map(|j| (j.key.as_slice(), j.seq, j.reusable))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"f abc"[..], 1, true),
                (&b"f def"[..], 2, false),
                (&b"g abc"[..], 3, false),
                (&b"h"[..], 4, false),
            ]
        );
        assert_eq!(k.result(1).unwrap().as_deref(), Some(&b"result1\n"[..]));
        assert_eq!(k.result(2).unwrap(), None, "truncated at the cap");
        assert_eq!(k.result(3).unwrap(), None, "not done");
        j.run_finished(&RunSummary::default()).unwrap();
    }
}
