//! Reading a journal, never changing it: the run, its sessions, every job
//! (streamed, one reused row at a time), counts by state, progress and ETA,
//! the slowest jobs, the top failure reasons and a job's stored output.
//!
//! [`Journal::open`] first runs [`super::check`], then opens the file with
//! `SQLITE_OPEN_READ_ONLY`: SQLite never writes the main file or the `-wal`
//! through this handle. A journal left with a hot WAL by a crash is read
//! with its committed transactions (SQLite rebuilds the `-shm` index, which
//! is not part of the data; the main file and the `-wal` keep every byte).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use super::JournalError;

/// The state of a job as the journal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Read, not started (or waiting for a retry).
    Queued,
    /// An attempt was running when the journal was last written.
    Running,
    /// Finished successfully.
    Done,
    /// Failed by its own verdict (non-zero exit) with no attempts left.
    Failed,
    /// Killed, timed out or not startable, with no attempts left.
    Dead,
}

impl JobState {
    /// Every state, in display order.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Dead,
    ];

    /// The name stored in the journal (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the state is final (`done`, `failed` or `dead`).
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Dead)
    }
}

/// The run: the one row of table `run`.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The run id, e.g. `20261130-015012-3f9a`.
    pub run_id: String,
    /// The command template's arguments, exact bytes.
    pub command: Vec<OsString>,
    /// The command for display (the stored JSON array, words joined by
    /// spaces, lossy UTF-8).
    pub command_display: String,
    /// The run's options (a JSON object).
    pub options: serde_json::Value,
    /// The working directory.
    pub cwd: PathBuf,
    /// The host it ran on.
    pub host: String,
    /// Start, Unix seconds.
    pub started_at: f64,
    /// End, Unix seconds; `None` while running or after a crash.
    pub ended_at: Option<f64>,
    /// `complete`, `interrupted`, `halted` or `error: ...`.
    pub end_reason: Option<String>,
    /// Whether every input is a row of `job`.
    pub input_complete: bool,
    /// The number of jobs, once the input is complete.
    pub total_jobs: Option<u64>,
    /// The jobmill version that created the journal.
    pub jobmill_version: String,
}

impl RunInfo {
    /// Whether the command ran through `sh -c` (option `shell`).
    pub fn shell(&self) -> bool {
        self.options
            .get("shell")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether the run used long-lived workers (option `persistent`): the
    /// command then ran as is, without an input substituted.
    pub fn persistent(&self) -> bool {
        self.options
            .get("persistent")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

/// One `jobmill run` or `jobmill resume` invocation on the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// 1 for the first run, then one per resume.
    pub id: i64,
    /// `run` or `resume`.
    pub kind: String,
    /// The jobmill process.
    pub pid: i64,
    /// Start, Unix seconds.
    pub started_at: f64,
    /// End, Unix seconds; `None` while running or if it was killed.
    pub ended_at: Option<f64>,
    /// Why it ended.
    pub end_reason: Option<String>,
}

/// Whether a run is still going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// A jobmill process holds the journal's lock.
    Running {
        /// The jobmill process holding it.
        pid: i64,
    },
    /// The run ended: completed, or stopped by `--halt`.
    Finished,
    /// The run stopped before its end (Ctrl-C, kill, crash, or an error
    /// such as a full disk): `jobmill resume` continues it.
    Interrupted,
}

impl Liveness {
    /// `running`, `finished` or `interrupted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Liveness::Running { .. } => "running",
            Liveness::Finished => "finished",
            Liveness::Interrupted => "interrupted",
        }
    }
}

/// Jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Not started, or waiting for a retry.
    pub queued: u64,
    /// Running at the last write.
    pub running: u64,
    /// Done.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Dead.
    pub dead: u64,
}

impl Counts {
    /// Every job read so far.
    pub fn total(&self) -> u64 {
        self.queued + self.running + self.done + self.failed + self.dead
    }

    /// Jobs in a final state.
    pub fn finished(&self) -> u64 {
        self.done + self.failed + self.dead
    }

    /// The count of one state.
    pub fn get(&self, s: JobState) -> u64 {
        match s {
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Done => self.done,
            JobState::Failed => self.failed,
            JobState::Dead => self.dead,
        }
    }

    fn get_mut(&mut self, s: JobState) -> &mut u64 {
        match s {
            JobState::Queued => &mut self.queued,
            JobState::Running => &mut self.running,
            JobState::Done => &mut self.done,
            JobState::Failed => &mut self.failed,
            JobState::Dead => &mut self.dead,
        }
    }
}

/// Which jobs to read: the union of the states set; none set means all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateFilter {
    /// Jobs `done`.
    pub done: bool,
    /// Jobs `failed`.
    pub failed: bool,
    /// Jobs `dead`.
    pub dead: bool,
    /// Only jobs in a final state (`done`, `failed`, `dead`); with none of
    /// the three set, all three.
    pub final_only: bool,
}

impl StateFilter {
    /// The SQL condition on `job.state`.
    fn sql(&self) -> String {
        let mut states = Vec::new();
        if self.done {
            states.push("'done'");
        }
        if self.failed {
            states.push("'failed'");
        }
        if self.dead {
            states.push("'dead'");
        }
        if states.is_empty() {
            if !self.final_only {
                return "1".into();
            }
            states = vec!["'done'", "'failed'", "'dead'"];
        }
        format!("j.state IN ({})", states.join(", "))
    }
}

/// A job that had an attempt die of memory ([`Journal::memory_deaths`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDeath {
    /// Sequence number.
    pub seq: u64,
    /// The exact input bytes.
    pub input: Vec<u8>,
    /// The job's state now.
    pub state: Option<JobState>,
    /// The latest attempt that died of memory.
    pub attempt: u32,
    /// Its stored reason.
    pub reason: String,
    /// Its peak RSS, KiB (the whole tree's where a cgroup measured it).
    pub max_rss_kb: Option<i64>,
}

/// One job with its last attempt. Streamed rows reuse one value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobRow {
    /// Sequence number, from 1.
    pub seq: u64,
    /// The exact input bytes.
    pub input: Vec<u8>,
    /// The state (`None` only for a value not yet filled).
    pub state: Option<JobState>,
    /// Attempts started.
    pub attempts: u32,
    /// Exit code of the final attempt.
    pub exit_code: Option<i64>,
    /// Signal that ended the final attempt.
    pub signal: Option<i64>,
    /// Why the job failed or died.
    pub reason: Option<String>,
    /// Start of the last attempt, Unix seconds.
    pub started_at: Option<f64>,
    /// End of the last attempt (else when the job finished), Unix seconds.
    pub ended_at: Option<f64>,
    /// Duration of the last attempt, seconds.
    pub duration: Option<f64>,
    /// Slot of the last attempt (`{%}`).
    pub slot: Option<u32>,
    /// Whether the last attempt timed out.
    pub timed_out: bool,
    /// Peak RSS of the last attempt, KiB.
    pub max_rss_kb: Option<i64>,
    /// Bytes the job wrote to stdout (stored or not), if recorded.
    pub stdout_bytes: Option<u64>,
    /// How the last attempt ended: one of [`crate::outcome::CAUSES`]
    /// (`exit`, `signal`, `timeout`, `oom`, ...), `None` while it runs or
    /// when its end was never recorded.
    pub cause: Option<String>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (stored as 1).
    Stdout,
    /// Standard error (stored as 2).
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A job's stored output on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The stream.
    pub stream: Stream,
    /// The stored bytes (at most the cap).
    pub data: Vec<u8>,
    /// Bytes the job wrote.
    pub total_bytes: u64,
    /// Whether `data` holds less than `total_bytes`.
    pub truncated: bool,
}

/// Elapsed time, rate and ETA.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Seconds from the run's start to its end, to now while it runs, or
    /// to the last recorded activity after an interruption.
    pub elapsed: f64,
    /// Jobs in a final state.
    pub finished: u64,
    /// Jobs left (`None` while the input is not complete).
    pub remaining: Option<u64>,
    /// Jobs finished per second in the current session (live runs only).
    pub rate: Option<f64>,
    /// Seconds left at that rate (live runs with complete input only).
    pub eta: Option<f64>,
}

/// A journal opened read-only.
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    /// The SQL of an attempt's cause (for the attempt aliased `a`): its
    /// `cause` column (schema v2), else what
    /// [`cause_from_v1`](super::cause_from_v1) works out from a v1 row.
    cause: String,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// The columns of a [`JobRow`] but its cause (which follows them, from
/// [`Journal::cause`]), then the joins they come from.
const JOB_COLUMNS: &str = "SELECT j.seq, j.input, j.state, j.attempts, j.exit_code, j.signal, \
     j.reason, a.started_at, COALESCE(a.ended_at, j.finished_at), a.duration, a.slot, \
     a.timed_out, a.max_rss_kb, o.total_bytes";
const JOB_FROM: &str = "FROM job j \
     LEFT JOIN attempt a ON a.seq = j.seq \
        AND a.attempt = (SELECT MAX(attempt) FROM attempt WHERE seq = j.seq) \
     LEFT JOIN output o ON o.seq = j.seq AND o.stream = 1";

impl Journal {
    /// Checks `path` with [`super::check`] and opens it read-only.
    ///
    /// # Errors
    ///
    /// The errors of [`super::check`], or [`JournalError::Corrupt`] if the
    /// file has no `run` row or cannot be opened.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        super::check(path)?;
        let j = Journal::open_unchecked(path)?;
        j.run()?;
        Ok(j)
    }

    /// Opens read-only after a cheap header check only (SQLite magic,
    /// application id, schema version; no `quick_check`): for listings of
    /// many journals.
    ///
    /// # Errors
    ///
    /// As [`Journal::open`].
    pub fn open_header_only(path: &Path) -> Result<Journal, JournalError> {
        super::check_magic(path)?;
        let j = Journal::open_unchecked(path)?;
        let corrupt = |e: rusqlite::Error| JournalError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let app: i64 = j
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(corrupt)?;
        if app != super::APPLICATION_ID {
            return Err(JournalError::NotAJournal {
                path: path.to_path_buf(),
                found: app,
            });
        }
        let version: i64 = j
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        if version > super::SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                path: path.to_path_buf(),
                found: version,
                supported: super::SCHEMA_VERSION,
            });
        }
        j.run()?;
        Ok(j)
    }

    fn open_unchecked(path: &Path) -> Result<Journal, JournalError> {
        let conn = open_read_only(path).map_err(|e| JournalError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        // A live writer may hold the WAL index briefly (recovery, checkpoint).
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(JournalError::sqlite(path, "set busy timeout"))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(JournalError::sqlite(path, "read the schema version"))?;
        let v1 = super::cause_from_v1(
            "a.outcome",
            "a.reason",
            "a.timed_out",
            "a.signal",
            "a.exit_code",
        );
        let cause = if version >= 2 {
            format!("COALESCE(a.cause, {v1})")
        } else {
            v1
        };
        Ok(Journal {
            conn,
            path: path.to_path_buf(),
            cause,
        })
    }

    /// The SELECT of [`JobRow`]s, before its WHERE.
    fn job_select(&self) -> String {
        format!("{JOB_COLUMNS}, {} {JOB_FROM}", self.cause)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, detail: impl Into<String>) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// The run.
    ///
    /// # Errors
    ///
    /// [`JournalError::Corrupt`] if the `run` row is missing or malformed.
    pub fn run(&self) -> Result<RunInfo, JournalError> {
        let row = self
            .conn
            .query_row(
                "SELECT run_id, command, command_raw, options, cwd, host, started_at, ended_at, \
                 end_reason, input_complete, total_jobs, jobmill_version FROM run WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, f64>(6)?,
                        r.get::<_, Option<f64>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, i64>(9)?,
                        r.get::<_, Option<i64>>(10)?,
                        r.get::<_, String>(11)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.corrupt(format!("reading the run: {e}")))?
            .ok_or_else(|| self.corrupt("it has no run row"))?;
        let (
            run_id,
            command_json,
            command_raw,
            options,
            cwd,
            host,
            started_at,
            ended_at,
            end_reason,
            input_complete,
            total_jobs,
            jobmill_version,
        ) = row;
        let mut command: Vec<OsString> = command_raw
            .split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        // Each argument is followed by a NUL: the split leaves one empty
        // piece at the end.
        if command_raw.last() == Some(&0) {
            command.pop();
        }
        let command_display = match serde_json::from_str::<Vec<String>>(&command_json) {
            Ok(words) => words.join(" "),
            Err(_) => command_json,
        };
        let options = serde_json::from_str(&options).unwrap_or(serde_json::Value::Null);
        Ok(RunInfo {
            run_id,
            command,
            command_display,
            options,
            cwd: PathBuf::from(OsString::from_vec(cwd)),
            host,
            started_at,
            ended_at,
            end_reason,
            input_complete: input_complete != 0,
            total_jobs: total_jobs.map(|t| t.max(0) as u64),
            jobmill_version,
        })
    }

    /// The peak memory, in bytes, of up to `limit` attempts that ran to
    /// their end (done or failed: not killed for memory, lost or
    /// interrupted), latest first.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn peaks(&self, limit: usize) -> Result<Vec<u64>, JournalError> {
        let read = || -> rusqlite::Result<Vec<u64>> {
            let mut stmt = self.conn.prepare(
                "SELECT max_rss_kb FROM attempt WHERE max_rss_kb IS NOT NULL
                   AND (outcome = 'done'
                        OR (outcome IN ('failed', 'dead', 'requeued')
                            AND COALESCE(reason, '') NOT LIKE '%out of memory%'
                            AND COALESCE(reason, '') NOT LIKE '%OOM killer%'
                            AND COALESCE(reason, '') NOT LIKE 'worker lost:%'))
                 ORDER BY ended_at DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|kib| kib.max(0) as u64 * 1024))
                .collect()
        };
        read().map_err(|e| JournalError::Sqlite {
            path: self.path.clone(),
            op: "read the peaks",
            cause: e,
        })
    }

    /// Every session, oldest first.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn sessions(&self) -> Result<Vec<Session>, JournalError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, kind, pid, started_at, ended_at, end_reason FROM session ORDER BY id",
            )
            .map_err(JournalError::sqlite(&self.path, "read sessions"))?;
        let rows = st
            .query_map([], |r| {
                Ok(Session {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    pid: r.get(2)?,
                    started_at: r.get(3)?,
                    ended_at: r.get(4)?,
                    end_reason: r.get(5)?,
                })
            })
            .map_err(JournalError::sqlite(&self.path, "read sessions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(JournalError::sqlite(&self.path, "read sessions"))
    }

    /// Whether the run is running, finished or interrupted.
    ///
    /// Running: a process holds the writer's lock on the file (an `flock`,
    /// seen in `/proc/locks` without taking it, so a starting writer is
    /// never disturbed). Where `/proc/locks` cannot be read: a session
    /// has not ended and its pid is alive. Finished: the run ended
    /// `complete` or `halted`. Anything else is interrupted.
    ///
    /// # Errors
    ///
    /// As [`Journal::run`] and [`Journal::sessions`].
    pub fn liveness(&self) -> Result<Liveness, JournalError> {
        match flock_holder(&self.path) {
            Some(Some(pid)) => return Ok(Liveness::Running { pid }),
            Some(None) => {}
            None => {
                for s in self.sessions()?.iter().rev() {
                    if s.ended_at.is_none() && s.end_reason.is_none() && pid_alive(s.pid) {
                        return Ok(Liveness::Running { pid: s.pid });
                    }
                }
            }
        }
        let run = self.run()?;
        let finished = run.ended_at.is_some()
            && matches!(run.end_reason.as_deref(), Some("complete") | Some("halted"));
        Ok(if finished {
            Liveness::Finished
        } else {
            Liveness::Interrupted
        })
    }

    /// Jobs by state.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn counts(&self) -> Result<Counts, JournalError> {
        let mut st = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM job GROUP BY state")
            .map_err(JournalError::sqlite(&self.path, "count jobs"))?;
        let mut rows = st
            .query([])
            .map_err(JournalError::sqlite(&self.path, "count jobs"))?;
        let mut c = Counts::default();
        while let Some(r) = rows
            .next()
            .map_err(JournalError::sqlite(&self.path, "count jobs"))?
        {
            let name: String = r
                .get(0)
                .map_err(JournalError::sqlite(&self.path, "count jobs"))?;
            let n: i64 = r
                .get(1)
                .map_err(JournalError::sqlite(&self.path, "count jobs"))?;
            let s = JobState::parse(&name)
                .ok_or_else(|| self.corrupt(format!("unknown job state {name:?}")))?;
            *c.get_mut(s) += n.max(0) as u64;
        }
        Ok(c)
    }

    /// The time of the last recorded activity: the latest end of the run,
    /// a session, an attempt or a job, or the latest attempt start.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn last_activity(&self) -> Result<f64, JournalError> {
        self.conn
            .query_row(
                "SELECT MAX(t) FROM ( \
                   SELECT MAX(started_at, COALESCE(ended_at, 0)) AS t FROM run \
                   UNION ALL SELECT MAX(COALESCE(ended_at, 0), started_at) FROM session \
                   UNION ALL SELECT MAX(started_at) FROM attempt \
                   UNION ALL SELECT MAX(ended_at) FROM attempt \
                   UNION ALL SELECT MAX(finished_at) FROM job)",
                [],
                |r| r.get::<_, Option<f64>>(0),
            )
            .map(|t| t.unwrap_or(0.0))
            .map_err(JournalError::sqlite(&self.path, "read times"))
    }

    /// Elapsed time, the rate of the current session and the ETA, as of
    /// `now` (Unix seconds). The rate and ETA are given only while the
    /// run is live: jobs finished in the live session divided by the
    /// session's time so far.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn progress(&self, now: f64) -> Result<Progress, JournalError> {
        let run = self.run()?;
        let counts = self.counts()?;
        let live = self.liveness()?;
        let end = match (&live, run.ended_at) {
            (Liveness::Running { .. }, _) => now,
            (_, Some(t)) => t,
            (_, None) => self.last_activity()?,
        };
        let remaining = run
            .total_jobs
            .filter(|_| run.input_complete)
            .map(|t| t.saturating_sub(counts.finished()));
        let mut rate = None;
        let mut eta = None;
        if let Liveness::Running { .. } = live {
            if let Some(s) = self
                .sessions()?
                .into_iter()
                .rev()
                .find(|s| s.ended_at.is_none())
            {
                let n: i64 = self
                    .conn
                    .query_row(
                        "SELECT COUNT(*) FROM attempt WHERE session = ?1 \
                         AND outcome IN ('done', 'failed', 'dead')",
                        [s.id],
                        |r| r.get(0),
                    )
                    .map_err(JournalError::sqlite(&self.path, "read the rate"))?;
                let span = now - s.started_at;
                if n > 0 && span > 0.0 {
                    let r = n as f64 / span;
                    rate = Some(r);
                    eta = remaining.map(|left| left as f64 / r);
                }
            }
        }
        Ok(Progress {
            elapsed: (end - run.started_at).max(0.0),
            finished: counts.finished(),
            remaining,
            rate,
            eta,
        })
    }

    /// Streams the jobs that pass `filter`, in sequence order, to `f`, one
    /// reused [`JobRow`] at a time (memory stays bounded for any number of
    /// jobs). Stops at the first error `f` returns.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error (converted into `E`), or
    /// the error of `f`.
    pub fn for_each_job<E, F>(&self, filter: StateFilter, f: F) -> Result<(), E>
    where
        E: From<JournalError>,
        F: FnMut(&JobRow) -> Result<(), E>,
    {
        let sql = format!(
            "{} WHERE {} ORDER BY j.seq",
            self.job_select(),
            filter.sql()
        );
        self.stream(&sql, [], f)
    }

    /// One job, or `None` if the journal has no job `seq`.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn job(&self, seq: u64) -> Result<Option<JobRow>, JournalError> {
        let sql = format!("{} WHERE j.seq = ?1", self.job_select());
        let mut found = None;
        self.stream(&sql, [seq as i64], |r: &JobRow| {
            found = Some(r.clone());
            Ok::<(), JournalError>(())
        })?;
        Ok(found)
    }

    /// The `n` jobs whose last attempt took longest, slowest first.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn slowest(&self, n: usize) -> Result<Vec<JobRow>, JournalError> {
        let sql = format!(
            "{} WHERE a.duration IS NOT NULL ORDER BY a.duration DESC, j.seq LIMIT ?1",
            self.job_select()
        );
        let mut out = Vec::new();
        self.stream(&sql, [n as i64], |r: &JobRow| {
            out.push(r.clone());
            Ok::<(), JournalError>(())
        })?;
        Ok(out)
    }

    /// Failed and dead jobs counted by the cause of their last attempt
    /// (one of [`crate::outcome::CAUSES`]; `unknown` where the journal
    /// does not say), most frequent first.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn failure_causes(&self) -> Result<Vec<(String, u64)>, JournalError> {
        let what = "read failure causes";
        let sql = format!(
            "SELECT COALESCE({}, 'unknown') AS c, COUNT(*) AS n {JOB_FROM} \
             WHERE j.state IN ('failed', 'dead') GROUP BY c ORDER BY n DESC, c",
            self.cause
        );
        let mut st = self
            .conn
            .prepare(&sql)
            .map_err(JournalError::sqlite(&self.path, what))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(JournalError::sqlite(&self.path, what))?;
        rows.collect::<Result<_, _>>()
            .map_err(JournalError::sqlite(&self.path, what))
    }

    /// The `n` most frequent reasons of failed and dead jobs, with their
    /// counts, most frequent first. A job without a stored reason counts
    /// as `exit code N` or `signal N`.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn failure_reasons(&self, n: usize) -> Result<Vec<(String, u64)>, JournalError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT COALESCE(reason, 'signal ' || signal, 'exit code ' || exit_code, \
                 'unknown') AS r, COUNT(*) AS c FROM job WHERE state IN ('failed', 'dead') \
                 GROUP BY r ORDER BY c DESC, r LIMIT ?1",
            )
            .map_err(JournalError::sqlite(&self.path, "read failure reasons"))?;
        let rows = st
            .query_map([n as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(JournalError::sqlite(&self.path, "read failure reasons"))?;
        rows.collect::<Result<_, _>>()
            .map_err(JournalError::sqlite(&self.path, "read failure reasons"))
    }

    /// The jobs that had an attempt die of memory (out of memory, or over
    /// their `--mem-limit`), by sequence number, at most `n`, with the
    /// total number of such jobs. Each names its latest such attempt and
    /// that attempt's peak RSS.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn memory_deaths(&self, n: usize) -> Result<(Vec<MemoryDeath>, u64), JournalError> {
        let what = "read memory deaths";
        let sql = format!(
            "SELECT a.seq, j.input, j.state, MAX(a.attempt), a.reason, a.max_rss_kb \
             FROM attempt a JOIN job j ON j.seq = a.seq WHERE {} IN ('oom', 'memory-limit') \
             GROUP BY a.seq ORDER BY a.seq LIMIT ?1",
            self.cause
        );
        let mut st = self
            .conn
            .prepare(&sql)
            .map_err(JournalError::sqlite(&self.path, what))?;
        let rows = st
            .query_map([n as i64], |r| {
                Ok(MemoryDeath {
                    seq: r.get::<_, i64>(0)?.max(0) as u64,
                    input: r.get(1)?,
                    state: r.get::<_, String>(2).ok().and_then(|s| JobState::parse(&s)),
                    attempt: r.get::<_, i64>(3)?.max(0) as u32,
                    reason: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    max_rss_kb: r.get(5)?,
                })
            })
            .map_err(JournalError::sqlite(&self.path, what))?;
        let deaths = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(JournalError::sqlite(&self.path, what))?;
        let total: i64 = self
            .conn
            .query_row(
                &format!(
                    "SELECT COUNT(DISTINCT a.seq) FROM attempt a WHERE {} IN ('oom', 'memory-limit')",
                    self.cause
                ),
                [],
                |r| r.get(0),
            )
            .map_err(JournalError::sqlite(&self.path, what))?;
        Ok((deaths, total.max(0) as u64))
    }

    /// The stored output of job `seq`: stdout first, then stderr; a stream
    /// with nothing stored is absent.
    ///
    /// # Errors
    ///
    /// [`JournalError::Sqlite`] on a read error.
    pub fn output(&self, seq: u64) -> Result<Vec<Output>, JournalError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT stream, data, total_bytes, truncated FROM output WHERE seq = ?1 \
                 ORDER BY stream",
            )
            .map_err(JournalError::sqlite(&self.path, "read output"))?;
        let rows = st
            .query_map([seq as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(JournalError::sqlite(&self.path, "read output"))?;
        let mut out = Vec::new();
        for r in rows {
            let (stream, data, total, truncated) =
                r.map_err(JournalError::sqlite(&self.path, "read output"))?;
            let stream = match stream {
                1 => Stream::Stdout,
                2 => Stream::Stderr,
                s => return Err(self.corrupt(format!("output of job {seq}: stream {s}"))),
            };
            out.push(Output {
                stream,
                data,
                total_bytes: total.max(0) as u64,
                truncated: truncated != 0,
            });
        }
        Ok(out)
    }

    fn stream<E, F, P>(&self, sql: &str, params: P, mut f: F) -> Result<(), E>
    where
        E: From<JournalError>,
        F: FnMut(&JobRow) -> Result<(), E>,
        P: rusqlite::Params,
    {
        let mut st = self
            .conn
            .prepare(sql)
            .map_err(JournalError::sqlite(&self.path, "read jobs"))?;
        let mut rows = st
            .query(params)
            .map_err(JournalError::sqlite(&self.path, "read jobs"))?;
        let mut row = JobRow::default();
        while let Some(r) = rows
            .next()
            .map_err(JournalError::sqlite(&self.path, "read jobs"))?
        {
            self.fill(r, &mut row)?;
            f(&row)?;
        }
        Ok(())
    }

    fn fill(&self, r: &Row<'_>, row: &mut JobRow) -> Result<(), JournalError> {
        let e = JournalError::sqlite(&self.path, "read jobs");
        let res: rusqlite::Result<()> = (|| {
            row.seq = r.get::<_, i64>(0)?.max(0) as u64;
            row.input.clear();
            match r.get_ref(1)? {
                rusqlite::types::ValueRef::Blob(b) => row.input.extend_from_slice(b),
                rusqlite::types::ValueRef::Text(b) => row.input.extend_from_slice(b),
                _ => {}
            }
            let state = r.get_ref(2)?.as_str()?;
            row.state = JobState::parse(state);
            row.attempts = r.get::<_, i64>(3)?.clamp(0, u32::MAX as i64) as u32;
            row.exit_code = r.get(4)?;
            row.signal = r.get(5)?;
            match r.get_ref(6)?.as_str_or_null()? {
                Some(s) => {
                    let reason = row.reason.get_or_insert_with(String::new);
                    reason.clear();
                    reason.push_str(s);
                }
                None => row.reason = None,
            }
            row.started_at = r.get(7)?;
            row.ended_at = r.get(8)?;
            row.duration = r.get(9)?;
            row.slot = r.get::<_, Option<i64>>(10)?.map(|s| s.max(0) as u32);
            row.timed_out = r.get::<_, Option<i64>>(11)?.unwrap_or(0) != 0;
            row.max_rss_kb = r.get(12)?;
            row.stdout_bytes = r.get::<_, Option<i64>>(13)?.map(|b| b.max(0) as u64);
            match r.get_ref(14)?.as_str_or_null()? {
                Some(s) => {
                    let cause = row.cause.get_or_insert_with(String::new);
                    cause.clear();
                    cause.push_str(s);
                }
                None => row.cause = None,
            }
            Ok(())
        })();
        res.map_err(e)?;
        if row.state.is_none() {
            return Err(self.corrupt(format!("job {} has an unknown state", row.seq)));
        }
        Ok(())
    }
}

/// The companion files of a journal: SQLite's `-wal` and `-shm` (WAL
/// mode), and jobmill's completions log ([`super::completions`]).
pub fn companions(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [
        with("-wal"),
        with("-shm"),
        super::completions::path_of(path),
    ]
}

/// Opens an SQLite file read-only without creating or changing anything
/// next to it.
///
/// With a `-wal` file (a live writer, or a crash), a plain read-only open:
/// SQLite reads the committed transactions of the WAL; it may create or
/// update the `-shm` index, never the main file or the `-wal`. Without
/// one (the journal was closed cleanly and holds everything), the file is
/// opened as `immutable`, so SQLite creates no `-wal` or `-shm`.
///
/// # Errors
///
/// SQLite's error.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let [wal, ..] = companions(path);
    if wal.exists() {
        return Connection::open_with_flags(path, flags);
    }
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
}

/// The pid of a process holding an `flock` on `path`, from `/proc/locks`:
/// `Some(Some(pid))` if one does, `Some(None)` if none does, `None` if
/// `/proc/locks` or the file cannot be read.
pub(super) fn flock_holder(path: &Path) -> Option<Option<i64>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let want = (
        u64::from(rustix::fs::major(dev)),
        u64::from(rustix::fs::minor(dev)),
        meta.ino(),
    );
    Some(locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 8229 fe:00:10010876 0 EOF"; a line
        // may carry a "->" marker for a waiting lock.
        let mut f = line.split_whitespace().skip(1).filter(|w| *w != "->");
        if f.next()? != "FLOCK" {
            return None;
        }
        let pid: i64 = f.nth(2)?.parse().ok()?;
        let mut id = f.next()?.split(':');
        let major = u64::from_str_radix(id.next()?, 16).ok()?;
        let minor = u64::from_str_radix(id.next()?, 16).ok()?;
        let ino: u64 = id.next()?.parse().ok()?;
        ((major, minor, ino) == want).then_some(pid)
    }))
}

/// Whether process `pid` exists (signal 0; a process of another user
/// counts as alive).
fn pid_alive(pid: i64) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let Some(p) = rustix::process::Pid::from_raw(raw) else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn format_utc(t: f64) -> String {
    let secs = t.floor() as i64;
    let (y, m, d) = super::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Formats seconds as `1h02m03s`, `4m05s`, `6.2s`.
pub fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m{s:02}s")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_worked_out_from_a_reason_text_is_the_failures_own_cause() {
        // What a v1 row (no cause column) is read as, and what the
        // migration back-fills: for every kind of failure, its own cause,
        // even for a worker whose message or detail talks about memory.
        use crate::job::FailReason;
        let conn = Connection::open_in_memory().unwrap();
        let sql = format!(
            "SELECT {} FROM (SELECT 'requeued' AS outcome, ?1 AS reason, ?2 AS timed_out, \
             ?3 AS signal, ?4 AS exit_code) a",
            super::super::cause_from_v1(
                "a.outcome",
                "a.reason",
                "a.timed_out",
                "a.signal",
                "a.exit_code"
            )
        );
        let worked_out = |reason: &FailReason| -> String {
            let end = crate::outcome::AttemptEnd::Failed(reason.clone());
            conn.query_row(
                &sql,
                rusqlite::params![
                    reason.to_string(),
                    i64::from(*reason == FailReason::Timeout),
                    end.signal(),
                    end.exit_code()
                ],
                |r| r.get(0),
            )
            .unwrap()
        };
        for reason in [
            FailReason::Exit { code: 3 },
            FailReason::Signal { signal: 9 },
            FailReason::Timeout,
            FailReason::Spawn {
                error: "cannot run `x`".into(),
            },
            FailReason::OutOfMemory { likely: false },
            FailReason::OutOfMemory { likely: true },
            FailReason::MemoryLimit {
                limit: 64 << 20,
                likely: false,
            },
            FailReason::MemoryLimit {
                limit: 64 << 20,
                likely: true,
            },
            FailReason::Reported {
                message: "out of memory".into(),
            },
            FailReason::WorkerLost {
                detail: "killed by the kernel's OOM killer (out of memory)".into(),
            },
        ] {
            assert_eq!(worked_out(&reason), reason.cause(), "{reason}");
        }
    }

    #[test]
    fn durations_and_times_format_for_humans() {
        assert_eq!(format_duration(6.25), "6.2s");
        assert_eq!(format_duration(65.0), "1m05s");
        assert_eq!(format_duration(3723.0), "1h02m03s");
        assert_eq!(format_duration(7.0 * 86_400.0), "7d00h00m00s");
        assert_eq!(format_duration(-1.0), "-");
        assert_eq!(format_utc(0.0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_790_000_000.5), "2026-09-21 14:13:20");
    }

    #[test]
    fn state_filters_select_the_union_or_everything() {
        assert_eq!(StateFilter::default().sql(), "1");
        let f = StateFilter {
            failed: true,
            dead: true,
            ..StateFilter::default()
        };
        assert_eq!(f.sql(), "j.state IN ('failed', 'dead')");
        let f = StateFilter {
            final_only: true,
            ..StateFilter::default()
        };
        assert_eq!(f.sql(), "j.state IN ('done', 'failed', 'dead')");
    }

    #[test]
    fn a_path_with_uri_characters_opens_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a b?c#d%e.sqlite");
        Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")
            .unwrap();
        let c = open_read_only(&p).unwrap();
        let x: i64 = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 42);
        assert!(c.execute("INSERT INTO t VALUES (1)", []).is_err());
    }
}
