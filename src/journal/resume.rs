//! Resuming a run from its journal.
//!
//! [`open`] locks an existing journal, checks it without changing a byte
//! ([`super::check`]) and reads the stored run and its options.
//! [`Resumable::plan`] then assembles the session: the stored jobs still to
//! run, then the rest of the input when the run had not read it all
//! (checked against the recorded inputs), and the journal to append to:
//! a [`ResumePlan`]. (It calls [`Resumable::start`], which
//! closes the books of the interrupted sessions (attempts left without an
//! end become `interrupted`, jobs left `running` go back to `queued`),
//! opens a new session and returns the writer with the stored jobs still
//! to run, read lazily in batches.
//!
//! Attempts interrupted by jobmill (a Ctrl-C, a kill, a crash) do not count
//! against `--retries`: a resumed job gets the attempts its failed attempts
//! left it. With `--failed`, failed and dead jobs run again with a fresh
//! allowance. Attempt numbers in the journal keep increasing across
//! sessions.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::input::{InputError, Records, Source};
use crate::job::NewJob;

use super::options::{StoredInput, StoredOptions};
use super::writer::{self, Journal, JournalLock, WriterConfig};
use super::{check, completions, JournalError, Warning};

pub use super::options::{bytes_to_json, json_to_bytes, os_to_json};

/// The run stored in a journal.
#[derive(Debug, Clone)]
pub struct StoredRun {
    /// The run id.
    pub run_id: String,
    /// The command template's arguments, exactly as recorded.
    pub command: Vec<OsString>,
    /// The run's options, as recorded by `jobmill run`.
    pub options: serde_json::Value,
    /// The run's working directory.
    pub cwd: PathBuf,
    /// Whether the whole input was recorded.
    pub input_complete: bool,
    /// Jobs recorded (sequence numbers 1 to this).
    pub jobs: u64,
    /// Jobs recorded `done`.
    pub done: u64,
    /// Jobs recorded `failed`.
    pub failed: u64,
    /// Jobs recorded `dead`.
    pub dead: u64,
}

/// An existing journal, locked and checked, not yet changed.
#[derive(Debug)]
pub struct Resumable {
    path: PathBuf,
    lock: JournalLock,
    conn: Connection,
    /// The stored run.
    pub run: StoredRun,
    /// The run's options, as stored.
    pub options: StoredOptions,
    /// What the completions log left by the last session held.
    pub recovered: completions::Recovered,
}

/// Opens the journal at `path` for resuming: takes its lock, checks it,
/// records the attempt ends its completions log holds
/// ([`completions::recover`]; nothing else changes) and reads the run.
///
/// # Errors
///
/// [`JournalError::Locked`] if another jobmill holds it; the errors of
/// [`super::check`] for a file that is not a readable journal (then it is
/// not changed at all); those of [`completions::recover`];
/// [`JournalError::Invalid`] if the run row is missing.
pub fn open(path: &Path) -> Result<Resumable, JournalError> {
    let lock = JournalLock::acquire(path)?;
    check(path)?;
    let recovered = completions::recover(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(JournalError::sqlite(path, "open"))?;
    let run = read_run(path, &conn)?;
    let options =
        StoredOptions::from_json(&run.options).map_err(|detail| JournalError::Invalid {
            path: path.to_path_buf(),
            detail,
        })?;
    Ok(Resumable {
        path: path.to_path_buf(),
        lock,
        conn,
        run,
        options,
        recovered,
    })
}

fn read_run(path: &Path, conn: &Connection) -> Result<StoredRun, JournalError> {
    let row = conn.query_row(
        "SELECT run_id, command_raw, options, cwd, input_complete FROM run WHERE id = 1",
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, bool>(4)?,
            ))
        },
    );
    let (run_id, raw, options, cwd, input_complete) = match row {
        Ok(v) => v,
        Err(rusqlite::Error::QueryReturnedNoRows) => {
            return Err(JournalError::Invalid {
                path: path.to_path_buf(),
                detail: "it records no run (it was created but never started)".into(),
            })
        }
        Err(e) => return Err(JournalError::sqlite(path, "read the run")(e)),
    };
    let mut command: Vec<OsString> = raw
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    // Every argument is followed by a NUL: the split leaves one empty tail.
    command.pop();
    let options = serde_json::from_str(&options).map_err(|e| JournalError::Invalid {
        path: path.to_path_buf(),
        detail: format!("the stored options are not valid JSON: {e}"),
    })?;
    let count = |state: &str| -> Result<u64, JournalError> {
        conn.query_row("SELECT COUNT(*) FROM job WHERE state = ?1", [state], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
        .map_err(JournalError::sqlite(path, "count jobs"))
    };
    let jobs: i64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM job", [], |r| r.get(0))
        .map_err(JournalError::sqlite(path, "count jobs"))?;
    Ok(StoredRun {
        run_id,
        command,
        options,
        cwd: PathBuf::from(OsString::from_vec(cwd)),
        input_complete,
        jobs: jobs as u64,
        done: count("done")?,
        failed: count("failed")?,
        dead: count("dead")?,
    })
}

impl Resumable {
    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the first [`StoredRun::jobs`] records of `records` (the run's
    /// re-opened input) and checks each against the stored hash, so that
    /// the records after them can continue the run.
    ///
    /// # Errors
    ///
    /// [`JournalError::InputChanged`] naming the first record that differs
    /// or is missing; an input read error as [`JournalError::Io`].
    pub fn verify_prefix(
        &self,
        records: &mut dyn Iterator<Item = Result<Vec<u8>, InputError>>,
        input_name: &str,
    ) -> Result<(), JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, hash FROM job WHERE seq > ?1 ORDER BY seq LIMIT 4096")
            .map_err(JournalError::sqlite(&self.path, "read job hashes"))?;
        let mut last = 0i64;
        loop {
            let batch: Vec<(i64, Vec<u8>)> = stmt
                .query_map([last], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
                .map_err(JournalError::sqlite(&self.path, "read job hashes"))?;
            let Some(&(end, _)) = batch.last() else {
                return Ok(());
            };
            for (seq, hash) in batch {
                let changed = || JournalError::InputChanged {
                    path: self.path.clone(),
                    seq: seq as u64,
                    input: input_name.to_string(),
                };
                match records.next() {
                    Some(Ok(record)) if Sha256::digest(&record)[..] == hash[..] => {}
                    Some(Ok(_)) | None => return Err(changed()),
                    Some(Err(e)) => {
                        return Err(JournalError::Input {
                            path: self.path.clone(),
                            input: e.name,
                            cause: e.source,
                        })
                    }
                }
            }
            last = end;
        }
    }

    /// Closes the books of the earlier sessions and opens a new one: the
    /// returned [`Journal`] records this session, and [`PendingJobs`]
    /// yields the stored jobs that still have to run (with `failed`, the
    /// failed and dead ones too), in input order.
    ///
    /// `whole_input` says whether the caller will continue the input after
    /// the stored jobs up to its end (so the session's input end is the
    /// run's).
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] if the journal cannot be written.
    pub fn start(
        self,
        failed: bool,
        whole_input: bool,
        config: WriterConfig,
    ) -> Result<(Journal, PendingJobs), JournalError> {
        let path = self.path.clone();
        let mut conn = writer::open_rw(&path)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(JournalError::sqlite(&path, "begin"))?;
        // The first write of this session: a journal of an older schema
        // version is migrated in the same transaction, so it is either
        // migrated and resumed or left as it was.
        super::schema::migrate_in(&tx, &path)?;
        tx.execute(
            "UPDATE attempt SET outcome = 'interrupted',
                    reason = 'jobmill stopped before recording its end (killed or crashed)'
             WHERE outcome IS NULL",
            [],
        )
        .map_err(JournalError::sqlite(&path, "close interrupted attempts"))?;
        tx.execute(
            "UPDATE job SET state = 'queued' WHERE state = 'running'",
            [],
        )
        .map_err(JournalError::sqlite(&path, "requeue interrupted jobs"))?;
        tx.execute(
            "UPDATE session SET end_reason = 'killed' WHERE ended_at IS NULL AND end_reason IS NULL",
            [],
        )
        .map_err(JournalError::sqlite(&path, "close killed sessions"))?;
        tx.execute(
            "UPDATE run SET ended_at = NULL, end_reason = NULL WHERE id = 1",
            [],
        )
        .map_err(JournalError::sqlite(&path, "reopen the run"))?;
        tx.commit().map_err(JournalError::sqlite(&path, "commit"))?;
        let pending = PendingJobs {
            path: path.clone(),
            conn: Some(self.conn),
            failed,
            last: 0,
            batch: std::collections::VecDeque::new(),
            done: false,
        };
        let journal = writer::start(
            &path,
            conn,
            self.lock,
            None,
            self.run.jobs,
            whole_input,
            config,
        )?;
        Ok((journal, pending))
    }
}

/// The payloads of a run's input, in order.
pub type Payloads = Box<dyn Iterator<Item = Result<Vec<u8>, InputError>> + Send>;

/// The jobs of a resumed session, in order.
pub type Jobs = Box<dyn Iterator<Item = Result<NewJob, InputError>> + Send>;

/// A resumed session, ready to run: what `jobmill resume` needs besides
/// the command line.
pub struct ResumePlan {
    /// The stored run (id, command, working directory, counts).
    pub run: StoredRun,
    /// The run's options.
    pub options: StoredOptions,
    /// The journal, recording this new session.
    pub journal: Journal,
    /// The stored jobs still to run, then the rest of the input (if the
    /// run had not read it all and it can be read again).
    pub jobs: Jobs,
    /// Whether [`ResumePlan::jobs`] ends where the run's input ends.
    pub whole_input: bool,
    /// What the person resuming should know (e.g. the input was stdin and
    /// its rest is gone).
    pub warnings: Vec<Warning>,
}

impl std::fmt::Debug for ResumePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumePlan")
            .field("run", &self.run)
            .field("options", &self.options)
            .field("journal", &self.journal)
            .field("whole_input", &self.whole_input)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl Resumable {
    /// Assembles the resumed session: when the run had not read its whole
    /// input, re-opens it (a file or the `:::` arguments; stdin is gone:
    /// a [`Warning::StdinNotRead`]) and checks that it starts with the
    /// recorded inputs; then closes the books of the earlier sessions and
    /// opens a new one ([`Resumable::start`]). With `failed`, failed and
    /// dead jobs run again too.
    ///
    /// Reads the input file by the absolute path stored; does not change
    /// the working directory (the caller moves to [`StoredRun::cwd`]).
    ///
    /// # Errors
    ///
    /// [`JournalError::Input`] if the input cannot be read,
    /// [`JournalError::InputChanged`] if it does not start with the
    /// recorded inputs (then the journal is not changed), and the errors
    /// of [`Resumable::start`].
    pub fn plan(self, failed: bool) -> Result<ResumePlan, JournalError> {
        let mut warnings = Vec::new();
        let mut rest: Option<(Payloads, String)> = None;
        if !self.run.input_complete {
            match &self.options.input {
                StoredInput::Stdin => warnings.push(Warning::StdinNotRead {
                    jobs: self.run.jobs,
                }),
                StoredInput::File { path } => {
                    let p = PathBuf::from(path);
                    let source = Source::file(&p).map_err(|e| JournalError::Input {
                        path: self.path.clone(),
                        input: e.name,
                        cause: e.source,
                    })?;
                    let records = Records::new(source, self.options.separator());
                    rest = Some((Box::new(records), p.display().to_string()));
                }
                StoredInput::Args { args } => {
                    let records =
                        Records::new(Source::Args(args.clone()), self.options.separator());
                    rest = Some((Box::new(records), "the `:::` inputs".to_string()));
                }
                // Several sources, columns or batches: the caller, which
                // knows how the input plan was stored, gives the rest.
                StoredInput::Plan => {}
            }
        }
        self.plan_with(failed, rest, warnings)
    }

    /// As [`Resumable::plan`], with the input given by the caller: `rest`
    /// yields the run's payloads from the first (the recorded ones are
    /// checked against the journal's hashes, then the rest is run), named
    /// in messages as its second element; `None` when the input cannot be
    /// read again (stdin), with `warnings` to pass on.
    ///
    /// # Errors
    ///
    /// As [`Resumable::plan`].
    pub fn plan_with(
        self,
        failed: bool,
        rest: Option<(Payloads, String)>,
        warnings: Vec<Warning>,
    ) -> Result<ResumePlan, JournalError> {
        let rest = match rest {
            Some((mut payloads, name)) => {
                self.verify_prefix(&mut payloads, &name)?;
                Some(payloads)
            }
            None => None,
        };
        let whole_input = rest.is_some();
        let run = self.run.clone();
        let options = self.options.clone();
        let (journal, pending) = self.start(failed, whole_input, options.writer_config())?;
        let mut jobs: Jobs = Box::new(pending);
        if let Some(records) = rest {
            let first = run.jobs + 1;
            jobs = Box::new(
                jobs.chain(
                    records
                        .zip(first..)
                        .map(|(r, seq)| r.map(|payload| NewJob::new(seq, payload))),
                ),
            );
        }
        Ok(ResumePlan {
            run,
            options,
            journal,
            jobs,
            whole_input,
            warnings,
        })
    }
}

/// Jobs failed or dead, and jobs not final, in the journal at `path`
/// (after a session: the exit status of the whole run).
///
/// # Errors
///
/// The journal cannot be read.
pub fn final_counts(path: &Path) -> Result<(u64, u64), JournalError> {
    let conn = super::read::open_read_only(path).map_err(JournalError::sqlite(path, "open"))?;
    let (failed, unfinished): (i64, i64) = conn
        .query_row(
            "SELECT COALESCE(SUM(state IN ('failed', 'dead')), 0),
                    COALESCE(SUM(state NOT IN ('done', 'failed', 'dead')), 0) FROM job",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(JournalError::sqlite(path, "count jobs"))?;
    Ok((failed as u64, unfinished as u64))
}

/// The stored jobs a resumed run still has to run, read from the journal
/// in batches (memory stays bounded on any journal size).
#[derive(Debug)]
pub struct PendingJobs {
    path: PathBuf,
    /// Closed once every stored job was read.
    conn: Option<Connection>,
    failed: bool,
    last: i64,
    batch: std::collections::VecDeque<NewJob>,
    done: bool,
}

impl PendingJobs {
    fn fill(&mut self) -> rusqlite::Result<()> {
        let Some(conn) = &self.conn else {
            return Ok(());
        };
        let states = if self.failed {
            "('queued', 'running', 'failed', 'dead')"
        } else {
            "('queued', 'running')"
        };
        let sql = format!(
            "SELECT seq, input, state,
                    (SELECT COUNT(*) FROM attempt a WHERE a.seq = job.seq
                       AND a.outcome IN ('requeued', 'failed', 'dead')),
                    (SELECT COUNT(*) FROM attempt a WHERE a.seq = job.seq
                       AND a.outcome = 'requeued' AND a.cause = 'lost'),
                    (SELECT COUNT(*) FROM attempt a WHERE a.seq = job.seq
                       AND a.outcome = 'requeued' AND a.cause = 'oom')
             FROM job WHERE seq > ?1 AND state IN {states} ORDER BY seq LIMIT 1024"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![self.last], |r| {
            let seq: i64 = r.get(0)?;
            let input: Vec<u8> = r.get(1)?;
            let state: String = r.get(2)?;
            let counted: i64 = r.get(3)?;
            let lost: i64 = r.get(4)?;
            let oom: i64 = r.get(5)?;
            Ok((seq, input, state, counted, lost, oom))
        })?;
        for row in rows {
            let (seq, input, state, counted, lost, oom) = row?;
            self.last = seq;
            // A failed or dead job run again (`--failed`) starts afresh;
            // otherwise it keeps its attempts, and which of them were lost
            // or killed out of memory (they do not count against the
            // retries, and stay bounded by --max-lost and --max-oom).
            let (attempts, lost, oom) = if matches!(state.as_str(), "failed" | "dead") {
                (0, 0, 0)
            } else {
                (counted as u32, lost as u32, oom as u32)
            };
            self.batch.push_back(NewJob {
                seq: seq as u64,
                payload: Bytes::from(input),
                attempts,
                lost,
                oom,
            });
        }
        Ok(())
    }
}

impl Iterator for PendingJobs {
    type Item = Result<NewJob, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.batch.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(InputError {
                    name: format!("journal {}", self.path.display()),
                    source: std::io::Error::other(e.to_string()),
                }));
            }
            if self.batch.is_empty() {
                self.done = true;
                self.conn = None;
            }
        }
        self.batch.pop_front().map(Ok)
    }
}
