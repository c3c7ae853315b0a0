//! The journal writer: records every event of a run (a job read, an
//! attempt started or ended, the end) in the journal file with group
//! commits, one writer at a time. `observer.rs` feeds it the run's events.
//!
//! ## Group commits
//!
//! The `record_*` calls never run SQL themselves on the way in: they append the
//! event to a pending list (one mutex) and get a ticket. The writer thread
//! commits everything pending in one transaction every 50 ms,
//! so one commit carries the events of many jobs. A thread that must see
//! its events committed ([`Journal::flush`], a start whose job row is not
//! committed yet) writes the batch itself when no one else is (a `writing`
//! flag under the mutex: the connection is never used by two threads).
//!
//! ## The durability gate
//!
//! `Journal::record_end` buffers the attempt's end for the completions
//! log ([`super::completions`]); `Journal::record_start` writes its own
//! start record and every buffered end there (one `write(2)`, not a
//! commit) before it returns. So no job starts before its start and every
//! end recorded so far would survive jobmill's death: after a crash, an
//! attempt that ran is in the journal, and the jobs that run twice are
//! only those in flight, at most one per slot. A start also waits, if
//! ever, for the job's own row to be committed (it usually was, long
//! before).
//!
//! ## Synchronous mode
//!
//! WAL mode. With [`WriterConfig::sync_interval`] zero, every commit is
//! `synchronous=FULL` (an fsync of the WAL per commit). Otherwise commits
//! are `synchronous=NORMAL` and the background thread fdatasyncs the WAL
//! every interval through a descriptor of its own, without holding up
//! writers. A commit written with `NORMAL` is in the kernel when `COMMIT`
//! returns: it survives any death of jobmill (`kill -9`, a panic, the OOM
//! killer); only a crash of the machine can take the commits of the last
//! interval. Checkpoints also run on the background thread (automatic
//! checkpoints are off), so a slot never pays for one. Closing the journal
//! commits with `FULL` and folds the WAL into the file.
//!
//! ## Faults
//!
//! When a write fails (disk full, I/O error, a read-only file), the
//! transaction is rolled back, the connection is dropped, and every later
//! later call returns [`JournalError::Stopped`] naming the file: the run
//! drains. What was committed before stays.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{params, Connection};

use super::commit::{background, Event, Pending, Shared, Writer, BATCH_EVENTS};
use super::completions::{self, Completion, Log, RanBy};
use super::schema::initialize;
use super::JournalError;

pub use super::lock::JournalLock;
pub(crate) use super::rows::{record_end, StartRow};
pub(crate) use super::schema::open_rw;

/// Default cap of the output kept per stream per job: 1 MiB.
pub const DEFAULT_OUTPUT_CAP: usize = 1 << 20;

/// Default time between two commits that reach the disk (fsync).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// How the writer writes.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Bytes of output kept per stream per job; the rest is counted and
    /// the row marked truncated.
    pub output_cap: usize,
    /// Most time between two fsynced commits (see the module docs); zero
    /// syncs every commit.
    pub sync_interval: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            output_cap: DEFAULT_OUTPUT_CAP,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        }
    }
}

/// What a new journal records about its run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// The command template's arguments, exactly.
    pub command: Vec<OsString>,
    /// The run's options, as the caller encodes them (enough to resume).
    pub options: serde_json::Value,
    /// The working directory.
    pub cwd: PathBuf,
}

/// Seconds since the Unix epoch of `t`.
pub(crate) fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(crate) fn now() -> f64 {
    unix(SystemTime::now())
}

/// Creates a new journal at `path`, which must not exist, records the run
/// and its first session, and starts the writer.
///
/// # Errors
///
/// [`JournalError::Exists`] if the file exists ([`JournalError::NotAFile`]
/// if that is a directory or a device), [`JournalError::Io`] or
/// [`JournalError::Sqlite`] if it cannot be created.
pub fn create(path: &Path, run: &RunRecord, config: WriterConfig) -> Result<Journal, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    // Private whatever the umask: a journal holds every input and output.
    // SQLite gives its -wal and -shm files the mode of this file.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(super::private::FILE_MODE)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                match std::fs::metadata(path) {
                    Ok(m) if m.is_dir() => JournalError::NotAFile {
                        path: path.to_path_buf(),
                        kind: "a directory",
                    },
                    Ok(m) if !m.is_file() => JournalError::NotAFile {
                        path: path.to_path_buf(),
                        kind: "a device or special file",
                    },
                    _ => JournalError::Exists {
                        path: path.to_path_buf(),
                    },
                }
            } else {
                io(source)
            }
        })?;
    drop(file);
    let lock = JournalLock::acquire(path)?;
    let conn = initialize(path, run).inspect_err(|_| {
        // The file is ours (created above): leave nothing half-made.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    })?;
    // The file's directory entry reaches the disk too.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    start(path, conn, lock, Some(1), 0, true, config).inspect_err(|_| {
        // Nothing was run: leave nothing half-made (but never remove a
        // completions log this did not create).
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    })
}

/// Starts the writer on an open journal connection, in session `session`
/// (`None`: record a new `resume` session).
///
/// `known_jobs` is the number of jobs already recorded (their `job_read`
/// events are not written again). `whole_input` says whether the job
/// source of this session ends where the run's input ends (so its end
/// marks the input complete).
pub(crate) fn start(
    path: &Path,
    conn: Connection,
    lock: JournalLock,
    session: Option<i64>,
    known_jobs: u64,
    whole_input: bool,
    config: WriterConfig,
) -> Result<Journal, JournalError> {
    let log = Log::create(path)?;
    let session = match session {
        Some(id) => id,
        None => {
            conn.execute(
                "INSERT INTO session (kind, pid, started_at) VALUES ('resume', ?1, ?2)",
                params![std::process::id(), now()],
            )
            .map_err(JournalError::sqlite(path, "record the session"))?;
            conn.last_insert_rowid()
        }
    };
    // Checkpoints run on the background thread, not inside the commits
    // slots wait for.
    conn.execute_batch("PRAGMA wal_autocheckpoint=0;")
        .map_err(JournalError::sqlite(path, "disable automatic checkpoints"))?;
    // The schema's CHECK constraints on `job.state`, `attempt.outcome` and
    // `session.kind` stay in the file, for other writers; this writer's
    // values are the fixed strings of the model (`rows.rs`), so it skips
    // them: SQLite evaluates each `IN (...)` list by building a temporary
    // b-tree (open, five inserts, close) on every insert and update, three
    // times per job (measured: about 2 µs of jobmill's CPU per job, of the
    // journal's 16 to 18, on 10,000 `true` jobs at -j2).
    conn.execute_batch("PRAGMA ignore_check_constraints=ON;")
        .map_err(JournalError::sqlite(path, "set ignore_check_constraints"))?;
    if !config.sync_interval.is_zero() {
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(JournalError::sqlite(path, "set synchronous"))?;
    }
    let log_sync = log.sync_handle().map_err(|source| JournalError::Io {
        path: log.path().to_path_buf(),
        cause: source,
    })?;
    let shared = Arc::new(Shared {
        path: path.to_path_buf(),
        log: Mutex::new(Some(log)),
        state: Mutex::new(Pending {
            events: Vec::with_capacity(256),
            next_ticket: 1,
            committed: 0,
            failed: None,
            closing: false,
            writing: false,
            idle: false,
            started: HashMap::new(),
            job_tickets: VecDeque::new(),
            log_len: 0,
            log_ticket: 0,
        }),
        writer: Mutex::new(Some(Writer {
            conn,
            session,
            known_jobs,
            whole_input,
            spare: Vec::with_capacity(256),
            plan: Vec::with_capacity(256),
            ends: HashMap::new(),
            retried: HashSet::new(),
        })),
        work: Condvar::new(),
        durable: Condvar::new(),
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("jobmill-journal".into())
            .spawn(move || background(&shared, config, &log_sync))
            .map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                cause: source,
            })?
    };
    Ok(Journal {
        path: path.to_path_buf(),
        shared,
        config,
        session,
        known_jobs,
        thread: Mutex::new(Some(thread)),
        _lock: lock,
    })
}

/// A running journal: records a run (it is the run's observer, see
/// `observer.rs`).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    shared: Arc<Shared>,
    config: WriterConfig,
    /// This session's row id.
    session: i64,
    /// Jobs recorded before this session (their rows exist).
    known_jobs: u64,
    thread: Mutex<Option<JoinHandle<()>>>,
    _lock: JournalLock,
}

impl Journal {
    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This session's row id (`session.id`).
    pub fn session(&self) -> i64 {
        self.session
    }

    /// Bytes of output kept per stream per job.
    pub fn output_cap(&self) -> usize {
        self.config.output_cap
    }

    /// The error of a journal that stopped writing (`failed`).
    fn stopped(message: &str) -> JournalError {
        JournalError::Stopped(message.to_string())
    }

    /// Queues `event` (with the state locked); returns its ticket.
    fn push_locked(&self, st: &mut Pending, event: Event) -> Result<u64, JournalError> {
        if let Some(f) = &st.failed {
            return Err(Self::stopped(f));
        }
        if st.closing {
            return Err(self.closed());
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.events.push(event);
        if st.idle || st.events.len() == BATCH_EVENTS {
            st.idle = false;
            self.shared.work.notify_one();
        }
        Ok(ticket)
    }

    fn closed(&self) -> JournalError {
        JournalError::Stopped(format!(
            "journal {}: written after it was closed",
            self.path.display()
        ))
    }

    /// Records job `seq` as read, with its exact input (committed with the
    /// next batch; a start of it waits for that). Jobs recorded by an
    /// earlier session are skipped.
    ///
    /// # Errors
    ///
    /// The journal stopped writing (the message names the file).
    pub fn record_job(&self, seq: u64, input: &Bytes) -> Result<(), JournalError> {
        if seq <= self.known_jobs {
            // Recorded by an earlier session.
            return Ok(());
        }
        let mut st = self.shared.lock();
        let ticket = self.push_locked(
            &mut st,
            Event::Job {
                seq,
                input: input.clone(),
                read_at: now(),
            },
        )?;
        st.job_tickets.push_back((seq, ticket));
        Ok(())
    }

    /// Records that the input ended (when this session reads the run's
    /// input to its end).
    ///
    /// # Errors
    ///
    /// The journal stopped writing.
    pub fn record_input_complete(&self) -> Result<(), JournalError> {
        let mut st = self.shared.lock();
        self.push_locked(&mut st, Event::InputComplete).map(drop)
    }

    /// Records that an attempt of job `seq` starts in `slot` at `at`, run
    /// by `ran_by`. The
    /// durability gate: returns once the attempt's start and every attempt
    /// end recorded so far would survive jobmill's death (one `write(2)`
    /// to the completions log), and the job's row is committed.
    ///
    /// # Errors
    ///
    /// The journal stopped writing: the attempt must not start.
    pub(crate) fn record_start(
        &self,
        seq: u64,
        slot: usize,
        ran_by: RanBy,
        at: SystemTime,
    ) -> Result<(), JournalError> {
        {
            let st = self.shared.lock();
            // The job's row must be in the file before the job runs (its
            // start and end refer to it). It usually is: rows are
            // committed as they are read, long before their turn.
            let pending = st
                .job_tickets
                .binary_search_by_key(&seq, |&(s, _)| s)
                .ok()
                .map(|i| st.job_tickets[i].1);
            if let Some(ticket) = pending {
                drop(self.shared.wait_committed(st, ticket)?);
            }
        }
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        let Some(log) = log.as_mut() else {
            return Err(self.closed());
        };
        let at = unix(at);
        let ticket = {
            let mut st = self.shared.lock();
            let ticket = self.push_locked(
                &mut st,
                Event::Started {
                    seq,
                    slot,
                    at,
                    ran_by: ran_by.clone(),
                },
            )?;
            st.started.insert(seq, at);
            ticket
        };
        // The start goes to the log with the ends buffered before it, in
        // one write(2): an attempt that runs is in the log even if jobmill
        // dies before the next batch commit (recovery then records it
        // `interrupted`).
        log.buffer_start(&completions::Start {
            session: self.session,
            seq,
            slot: slot as u64,
            started_at: at,
            ran_by,
        });
        log.buffered_ticket = ticket;
        self.write_buffered(log)
    }

    /// When the running attempt of job `seq` started, as its start was
    /// recorded (so its end matches it); forgets it.
    pub(crate) fn take_started(&self, seq: u64) -> Option<f64> {
        self.shared.lock().started.remove(&seq)
    }

    /// Records an attempt's end: buffered for the completions log (written
    /// with the next start, in one `write(2)`), and queued for the next
    /// batch commit.
    ///
    /// # Errors
    ///
    /// The journal stopped writing, or was closed.
    pub(crate) fn record_end(&self, completion: Completion) -> Result<(), JournalError> {
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        let Some(log) = log.as_mut() else {
            return Err(self.closed());
        };
        let mut st = self.shared.lock();
        let ticket = self.push_locked(&mut st, Event::Finished(Box::new(completion)))?;
        if let Some(Event::Finished(c)) = st.events.last() {
            log.buffer(c);
        }
        log.buffered_ticket = ticket;
        Ok(())
    }

    /// Writes the buffered attempt ends to the completions log (one
    /// `write(2)`; with `--journal-fsync 0`, and an fsync).
    fn write_log(&self) -> Result<(), JournalError> {
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        let Some(log) = log.as_mut().filter(|l| l.has_buffered()) else {
            return Ok(());
        };
        self.write_buffered(log)
    }

    /// [`Journal::write_log`] with the log locked.
    fn write_buffered(&self, log: &mut Log) -> Result<(), JournalError> {
        if let Some(f) = &self.shared.lock().failed {
            return Err(Self::stopped(f));
        }
        if let Err(e) = log.write(self.config.sync_interval.is_zero()) {
            let msg = format!(
                "journal {}: cannot record attempt ends in {}: {e}; the run stops (what was recorded before is kept)",
                self.path.display(),
                log.path().display()
            );
            let mut st = self.shared.lock();
            st.failed.get_or_insert(msg.clone());
            self.shared.durable.notify_all();
            return Err(JournalError::Stopped(msg));
        }
        let mut st = self.shared.lock();
        st.log_ticket = log.buffered_ticket;
        st.log_len = log.len;
        Ok(())
    }

    /// Waits until every event queued so far is committed (and the
    /// buffered attempt ends are in the completions log).
    ///
    /// # Errors
    ///
    /// The writer failed; the message names the file.
    pub fn flush(&self) -> Result<(), JournalError> {
        self.write_log()?;
        let st = self.shared.lock();
        let target = st.next_ticket - 1;
        self.shared.wait_committed(st, target).map(drop)
    }

    /// Records the end of the session, commits everything with an fsync
    /// and stops the writer. Later calls do nothing.
    ///
    /// # Errors
    ///
    /// The writer failed; the message names the file.
    pub fn close(&self, reason: &str) -> Result<(), JournalError> {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = handle else {
            return Ok(());
        };
        // Written before the last commit: if that commit fails, resume
        // still finds them.
        let _ = self.write_log();
        {
            let mut st = self.shared.lock();
            st.closing = true;
            self.shared.work.notify_all();
        }
        let _ = handle.join();
        // The last commit reaches the disk, whatever the interval.
        if let Some(w) = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let _ = w.conn.execute_batch("PRAGMA synchronous=FULL");
        }
        let result = {
            let mut st = self.shared.lock();
            if let Some(f) = &st.failed {
                Err(Self::stopped(f))
            } else {
                let ticket = st.next_ticket;
                st.next_ticket += 1;
                st.events.push(Event::RunFinished {
                    reason: reason.to_string(),
                });
                self.shared.wait_committed(st, ticket).map(drop)
            }
        };
        // Fold the WAL into the file, so a finished journal is one file.
        if let Some(w) = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = w.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        }
        // Every end is committed with FULL: the completions log is not
        // needed. After a failure it is kept, for `jobmill resume`.
        let log = self
            .shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(log), Ok(())) = (log, &result) {
            log.remove();
        }
        result
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.close("ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::OpenFlags;
    use std::time::Instant;

    use super::super::completions::{self, Completion};

    fn record() -> RunRecord {
        RunRecord {
            run_id: "20261130-000000-test".into(),
            command: vec!["echo".into(), "{}".into()],
            options: serde_json::json!({"jobs": 2}),
            cwd: PathBuf::from("/"),
        }
    }

    /// Records the end of job `seq`'s running attempt: done, exit 0.
    fn end(j: &Journal, seq: u64, slot: usize, stdout: &[u8]) {
        let started_at = j.take_started(seq).expect("started");
        let mut c = completion(seq, started_at, stdout);
        c.slot = slot as u64;
        c.session = j.session();
        if stdout.is_empty() {
            c.output[0] = None;
        }
        j.record_end(c).unwrap();
    }

    fn read(path: &Path) -> Connection {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    /// The recorded state of job `seq`.
    fn state_of(path: &Path, seq: i64) -> String {
        read(path)
            .query_row("SELECT state FROM job WHERE seq = ?1", [seq], |r| r.get(0))
            .unwrap()
    }

    /// The attempt ends in `journal`'s completions log.
    fn logged(journal: &Path) -> Vec<Completion> {
        let bytes = std::fs::read(completions::path_of(journal)).unwrap();
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let (r, n) = completions::decode(&bytes[at..]).unwrap();
            if let completions::Record::End(c) = r {
                out.push(*c);
            }
            at += n;
        }
        out
    }

    #[test]
    fn the_journals_check_constraints_still_hold_for_other_writers() {
        // The writer skips the schema's CHECKs for its own fixed values;
        // they stay in the file: another connection cannot write a state
        // or an outcome outside the schema's lists.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let j = create(&path, &record(), WriterConfig::default()).unwrap();
        j.record_job(1, &Bytes::from("in1")).unwrap();
        j.record_start(1, 1, RanBy::default(), SystemTime::now())
            .unwrap();
        end(&j, 1, 1, b"");
        j.close("complete").unwrap();
        assert_eq!(state_of(&path, 1), "done");
        let other = Connection::open(&path).unwrap();
        let bad_state = other.execute("UPDATE job SET state = 'bogus' WHERE seq = 1", []);
        assert!(bad_state.is_err(), "{bad_state:?}");
        let bad_outcome = other.execute("UPDATE attempt SET outcome = 'bogus' WHERE seq = 1", []);
        assert!(bad_outcome.is_err(), "{bad_outcome:?}");
        assert_eq!(state_of(&path, 1), "done");
    }

    #[test]
    fn an_attempt_end_is_in_the_completions_log_before_the_next_attempt_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let config = WriterConfig {
            output_cap: 1 << 20,
            sync_interval: Duration::from_secs(3600),
        };
        let j = create(&path, &record(), config).unwrap();
        j.record_job(1, &Bytes::from("in1")).unwrap();
        j.record_job(2, &Bytes::from("in2")).unwrap();
        let at = SystemTime::now();
        j.record_start(1, 2, RanBy::default(), at).unwrap();
        // The job's row was committed before its start returned.
        let n: i64 = read(&path)
            .query_row("SELECT COUNT(*) FROM job WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        end(&j, 1, 2, b"hello\n");
        // Buffered until a start (batched with other ends)...
        assert_eq!(logged(&path).len(), 0);
        j.record_start(2, 1, RanBy::default(), SystemTime::now())
            .unwrap();
        // ...and written when the next attempt starts.
        let logged = logged(&path);
        assert_eq!(logged.len(), 1);
        let c = &logged[0];
        assert_eq!((c.seq, c.slot, c.session), (1, 2, 1));
        assert_eq!(c.started_at, unix(at));
        assert_eq!(
            (c.outcome, c.job_state, c.exit_code),
            ("done", "done", Some(0))
        );
        assert_eq!(c.output[0].as_ref().unwrap().data, b"hello\n");
        j.close("complete").unwrap();
        // Closed cleanly: everything is in the journal, the log is gone.
        assert!(!completions::path_of(&path).exists());
        assert_eq!(state_of(&path, 1), "done");
    }

    #[test]
    fn the_completions_log_is_emptied_once_a_synced_commit_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let config = WriterConfig {
            output_cap: 1 << 20,
            sync_interval: Duration::from_millis(10),
        };
        let j = create(&path, &record(), config).unwrap();
        j.record_job(1, &Bytes::from("in1")).unwrap();
        j.record_start(1, 1, RanBy::default(), SystemTime::now())
            .unwrap();
        end(&j, 1, 1, b"");
        j.record_job(2, &Bytes::from("in2")).unwrap();
        // Writes job 1's end to the log (the test above shows it there).
        j.record_start(2, 1, RanBy::default(), SystemTime::now())
            .unwrap();
        let log = completions::path_of(&path);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&log).unwrap().len() > 0 {
            assert!(Instant::now() < deadline, "the log was never emptied");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Emptied only after the end was committed.
        assert_eq!(state_of(&path, 1), "done");
        j.close("complete").unwrap();
    }

    /// A journal whose job 1 (and 2, if `two`) started in session 1 at the
    /// returned time and whose ends were never committed, as after a
    /// crash; the log is gone (closed).
    fn started_never_finished(path: &Path) -> f64 {
        let config = WriterConfig {
            output_cap: 1 << 20,
            sync_interval: Duration::from_millis(50),
        };
        let j = create(path, &record(), config).unwrap();
        j.record_job(1, &Bytes::from("in1")).unwrap();
        j.record_job(2, &Bytes::from("in2")).unwrap();
        let at = SystemTime::now();
        j.record_start(1, 1, RanBy::default(), at).unwrap();
        j.close("killed").unwrap();
        unix(at)
    }

    fn completion(seq: u64, started_at: f64, stdout: &[u8]) -> Completion {
        Completion {
            session: 1,
            seq,
            slot: 1,
            started_at,
            ended_at: started_at + 1.0,
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            outcome: "done",
            job_state: "done",
            reason: None,
            duration: Some(1.0),
            max_rss_kib: Some(10),
            cause: Some("succeeded"),
            ran_by: RanBy::default(),
            output: [
                Some(completions::Output {
                    data: stdout.to_vec(),
                    total: stdout.len() as u64,
                    truncated: false,
                }),
                None,
            ],
        }
    }

    pub(super) fn write_log(journal: &Path, records: &[Completion], tail: &[u8]) {
        let mut buf = Vec::new();
        for c in records {
            completions::encode(c, &mut buf);
        }
        buf.extend_from_slice(tail);
        std::fs::write(completions::path_of(journal), buf).unwrap();
    }

    #[test]
    fn recovery_writes_the_ends_only_the_log_holds_once_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let at = started_never_finished(&path);
        // Job 1's start is in the journal; job 2's start and end are only
        // in the log; job 1's record appears twice (recovered once).
        let one = completion(1, at, b"one\n");
        let two = completion(2, at + 0.5, b"two\n");
        write_log(&path, &[one.clone(), two, one], &[7, 0, 0]);
        let r = completions::recover(&path).unwrap();
        assert_eq!((r.applied, r.already, r.kept_as), (2, 1, None));
        assert!(!completions::path_of(&path).exists());
        let db = read(&path);
        let rows: Vec<(i64, String, i64)> = db
            .prepare("SELECT seq, state, attempts FROM job ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(1, "done".into(), 1), (2, "done".into(), 1)]);
        let attempts: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM attempt WHERE outcome = 'done' AND ended_at IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(attempts, 2);
        let out: Vec<u8> = db
            .query_row("SELECT data FROM output WHERE seq = 2", [], |r| r.get(0))
            .unwrap();
        assert_eq!(out, b"two\n");
    }

    #[test]
    fn recovery_keeps_a_log_with_a_bad_checksum_after_recovering_what_precedes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let at = started_never_finished(&path);
        let mut bad = Vec::new();
        completions::encode(&completion(2, at + 0.5, b"two\n"), &mut bad);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        write_log(&path, &[completion(1, at, b"one\n")], &bad);
        let r = completions::recover(&path).unwrap();
        assert_eq!(r.applied, 1);
        let kept = r.kept_as.expect("kept");
        assert!(r.problem.unwrap().contains("checksum"));
        assert!(kept.exists());
        assert!(!completions::path_of(&path).exists());
        assert_eq!(state_of(&path, 2), "queued");
    }

    #[test]
    fn a_new_journal_refuses_an_unrecovered_completions_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        std::fs::write(completions::path_of(&path), b"x").unwrap();
        let err = create(&path, &record(), WriterConfig::default()).unwrap_err();
        assert!(err.to_string().contains("not recovered"), "{err}");
        assert_eq!(std::fs::read(completions::path_of(&path)).unwrap(), b"x");
    }

    #[test]
    fn an_existing_path_is_refused_and_a_held_journal_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let j = create(&path, &record(), WriterConfig::default()).unwrap();
        assert!(matches!(
            create(&path, &record(), WriterConfig::default()),
            Err(JournalError::Exists { .. })
        ));
        match JournalLock::acquire(&path) {
            Err(JournalError::Locked { pid, .. }) => {
                // The holder is named when /proc/locks shows it, and never
                // wrongly (on some filesystems the lock's device differs
                // from stat's, and then no holder is named).
                assert!(
                    pid.is_none() || pid == Some(i64::from(std::process::id())),
                    "{pid:?}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(j);
        JournalLock::acquire(&path).expect("free once the journal is closed");
    }
}
