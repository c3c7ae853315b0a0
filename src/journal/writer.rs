//! The journal writer: an [`Observer`] of a run that records every event
//! in the journal file with group commits, one writer at a time.
//!
//! ## Group commits
//!
//! Observer calls never run SQL themselves on the way in: they append the
//! event to a pending list (one mutex) and get a ticket. A batch is written
//! in one transaction by whichever thread needs it first: a slot that must
//! wait for its previous completion (below), or the background thread,
//! which commits what is left every few milliseconds. Whoever writes takes
//! *everything* pending (every slot's events), so one commit carries the
//! events of many jobs under load, and at most one thread writes at a time
//! (a `writing` flag under the mutex; the connection is never shared
//! concurrently). Letting the waiting slot write, instead of waking a
//! writer thread and sleeping until it is done, saves two thread wake-ups
//! per job (measured: see `docs/JOURNAL.md`).
//!
//! ## The durability gate
//!
//! A slot about to start an attempt first waits until the completion of its
//! previous attempt is committed ([`Observer::attempt_started`] blocks).
//! So at any moment the jobs that are finished but not yet recorded, plus
//! the jobs running, are at most one per slot: after any crash, the only
//! jobs that run twice are those in flight, at most `-j`.
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
//! observer call returns an [`ObserverError`] naming the file: the run
//! drains. What was committed before stays.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::exec::End;
use crate::job::{JobState, NewJob};
use crate::run::{AttemptOutcome, AttemptReport, Observer, ObserverError, RunSummary};

use super::{JournalError, APPLICATION_ID, SCHEMA, SCHEMA_VERSION};

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

fn now() -> f64 {
    unix(SystemTime::now())
}

/// The host name, or `""`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

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
    /// [`JournalError::Locked`] when another process holds it (with that
    /// process's pid when the journal names it), [`JournalError::Io`] when
    /// the file cannot be opened.
    pub fn acquire(path: &Path) -> Result<JournalLock, JournalError> {
        let file = File::open(path).map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(JournalLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(JournalError::Locked {
                path: path.to_path_buf(),
                pid: holder_pid(path).unwrap_or(0),
            }),
            Err(e) => Err(JournalError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            }),
        }
    }
}

/// The pid of the latest unfinished session of a journal (best effort).
fn holder_pid(path: &Path) -> Option<i64> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row(
        "SELECT pid FROM session WHERE ended_at IS NULL ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
    .ok()
    .flatten()
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

/// Creates a new journal at `path`, which must not exist, records the run
/// and its first session, and starts the writer.
///
/// # Errors
///
/// [`JournalError::Exists`] if the file exists, [`JournalError::Io`] or
/// [`JournalError::Sqlite`] if it cannot be created.
pub fn create(path: &Path, run: &RunRecord, config: WriterConfig) -> Result<Journal, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                JournalError::Exists {
                    path: path.to_path_buf(),
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
    start(path, conn, lock, Some(1), 0, true, config)
}

/// Writes the header, the schema, the run and its first session into the
/// new, empty file at `path`, in one `FULL` transaction.
fn initialize(path: &Path, run: &RunRecord) -> Result<Connection, JournalError> {
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
    if !config.sync_interval.is_zero() {
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(JournalError::sqlite(path, "set synchronous"))?;
    }
    let shared = Arc::new(Shared {
        path: path.to_path_buf(),
        state: Mutex::new(Pending {
            events: Vec::with_capacity(256),
            next_ticket: 1,
            committed: 0,
            failed: None,
            closing: false,
            writing: false,
            idle: false,
            slot_tickets: Vec::new(),
        }),
        writer: Mutex::new(Some(Writer {
            conn,
            session,
            known_jobs,
            whole_input,
            spare: Vec::with_capacity(256),
        })),
        work: Condvar::new(),
        durable: Condvar::new(),
    });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("jobmill-journal".into())
            .spawn(move || background(&shared, config))
            .map_err(|source| JournalError::Io {
                path: path.to_path_buf(),
                source,
            })?
    };
    Ok(Journal {
        path: path.to_path_buf(),
        shared,
        config,
        thread: Mutex::new(Some(thread)),
        _lock: lock,
    })
}

/// A running journal: the [`Observer`] that records a run.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    shared: Arc<Shared>,
    config: WriterConfig,
    thread: Mutex<Option<JoinHandle<()>>>,
    _lock: JournalLock,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    state: Mutex<Pending>,
    /// The connection; used only by the thread that set
    /// [`Pending::writing`], so never contended.
    writer: Mutex<Option<Writer>>,
    /// Signalled when a completion is pending or the journal is closing.
    work: Condvar,
    /// Signalled after each commit (or failure).
    durable: Condvar,
}

#[derive(Debug)]
struct Pending {
    events: Vec<Event>,
    /// The ticket of the next event.
    next_ticket: u64,
    /// Every event with a ticket up to this one is committed.
    committed: u64,
    /// Why the writer stopped, if it failed.
    failed: Option<String>,
    closing: bool,
    /// A thread is writing a batch (only one at a time).
    writing: bool,
    /// The background thread sleeps with nothing to do: the next event
    /// wakes it.
    idle: bool,
    /// Per slot, the ticket of its last finished attempt.
    slot_tickets: Vec<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ticket` is committed, committing the pending events
    /// itself when no other thread is writing (leader/follower group
    /// commit: whoever writes takes everything pending).
    fn wait_committed<'a>(
        &'a self,
        mut st: MutexGuard<'a, Pending>,
        ticket: u64,
    ) -> Result<MutexGuard<'a, Pending>, ObserverError> {
        loop {
            if let Some(f) = &st.failed {
                return Err(ObserverError(f.clone()));
            }
            if st.committed >= ticket {
                return Ok(st);
            }
            if st.writing {
                st = self.durable.wait(st).unwrap_or_else(|e| e.into_inner());
            } else {
                st = self.write_pending(st);
            }
        }
    }

    /// Writes every pending event in one transaction. Called with the
    /// state locked and no writer active; returns with it locked.
    fn write_pending<'a>(&'a self, mut st: MutexGuard<'a, Pending>) -> MutexGuard<'a, Pending> {
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = guard.as_mut() else {
            if st.failed.is_none() {
                st.failed = Some(format!("journal {}: already closed", self.path.display()));
            }
            self.durable.notify_all();
            return st;
        };
        st.writing = true;
        let mut batch = std::mem::take(&mut w.spare);
        std::mem::swap(&mut batch, &mut st.events);
        let last = st.next_ticket - 1;
        drop(st);
        let result = w.write(&self.path, &batch);
        batch.clear();
        w.spare = batch;
        if result.is_err() {
            // Rolled back; the connection is not used again.
            *guard = None;
        }
        drop(guard);
        let mut st = self.lock();
        st.writing = false;
        match result {
            Ok(()) => st.committed = last,
            Err(e) => {
                st.failed = Some(format!(
                    "{e}; the run stops (what was recorded before is kept)"
                ));
            }
        }
        self.durable.notify_all();
        st
    }
}

/// The background thread: commits what slots left pending (job reads,
/// starts) within a few milliseconds, syncs the WAL to disk every
/// `sync_interval`, checkpoints the WAL into the file every second (so
/// slots never pay for a checkpoint), and stops when the journal closes.
fn background(shared: &Shared, config: WriterConfig) {
    const FLUSH_EVERY: Duration = Duration::from_millis(5);
    const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
    let wal_path = PathBuf::from(format!("{}-wal", shared.path.display()));
    let mut wal: Option<File> = None;
    let mut checkpointer: Option<Connection> = None;
    let mut last_sync = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut synced_to = 0u64;
    let mut checkpointed_to = 0u64;
    let mut st = shared.lock();
    loop {
        if st.closing || st.failed.is_some() {
            break;
        }
        if !st.events.is_empty() && !st.writing {
            st = shared.write_pending(st);
            continue;
        }
        let committed = st.committed;
        if !config.sync_interval.is_zero()
            && committed > synced_to
            && last_sync.elapsed() >= config.sync_interval
        {
            // fdatasync of the WAL through a descriptor of our own: it
            // covers every commit written before it, and holds up no
            // writer.
            drop(st);
            if wal.is_none() {
                wal = File::open(&wal_path).ok();
            }
            if let Some(Err(e)) = wal.as_ref().map(File::sync_data) {
                let mut s = shared.lock();
                s.failed = Some(format!(
                    "journal {}: cannot sync to disk: {e}; the run stops",
                    shared.path.display()
                ));
                shared.durable.notify_all();
                break;
            }
            synced_to = committed;
            last_sync = Instant::now();
            st = shared.lock();
            continue;
        }
        if committed > checkpointed_to && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            drop(st);
            if checkpointer.is_none() {
                checkpointer = open_checkpointer(&shared.path);
            }
            if let Some(c) = &checkpointer {
                // PASSIVE: copies what it can without blocking writers; a
                // failure here loses nothing (the frames stay in the WAL).
                let _ = c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
            }
            checkpointed_to = committed;
            last_checkpoint = Instant::now();
            st = shared.lock();
            continue;
        }
        if !st.events.is_empty() {
            // Another thread is writing; look again shortly.
            st = wait_for(shared, st, Some(FLUSH_EVERY));
            continue;
        }
        // Nothing pending: sleep until a sync or a checkpoint is due, or
        // an event arrives (the first one after idling wakes us), so an
        // idle run costs no wake-ups.
        let mut due: Option<Duration> = None;
        if !config.sync_interval.is_zero() && committed > synced_to {
            due = Some(config.sync_interval.saturating_sub(last_sync.elapsed()));
        }
        if committed > checkpointed_to {
            let c = CHECKPOINT_EVERY.saturating_sub(last_checkpoint.elapsed());
            due = Some(due.map_or(c, |d| d.min(c)));
        }
        st.idle = true;
        st = wait_for(shared, st, due);
        st.idle = false;
        if !st.events.is_empty() && !st.closing {
            // Woken by an event: let more gather, to commit them together.
            st = wait_for(shared, st, Some(FLUSH_EVERY));
        }
    }
}

/// Waits on `shared.work`, at most `timeout` if given.
fn wait_for<'a>(
    shared: &'a Shared,
    st: MutexGuard<'a, Pending>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, Pending> {
    match timeout {
        Some(t) => {
            shared
                .work
                .wait_timeout(st, t)
                .unwrap_or_else(|e| e.into_inner())
                .0
        }
        None => shared.work.wait(st).unwrap_or_else(|e| e.into_inner()),
    }
}

/// A second connection, for checkpoints off the slots' path.
fn open_checkpointer(path: &Path) -> Option<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    c.busy_timeout(Duration::from_secs(1)).ok()?;
    c.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0;")
        .ok()?;
    Some(c)
}

/// The connection and what the writer needs to write events.
#[derive(Debug)]
struct Writer {
    conn: Connection,
    session: i64,
    known_jobs: u64,
    whole_input: bool,
    /// An empty batch, to swap with the pending list.
    spare: Vec<Event>,
}

#[derive(Debug)]
enum Event {
    Job { seq: u64, input: Bytes },
    InputComplete,
    Started { seq: u64, slot: usize, at: f64 },
    Finished(Box<Finished>),
    RunFinished { reason: String },
}

#[derive(Debug)]
struct Finished {
    seq: u64,
    ended_at: f64,
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    outcome: &'static str,
    job_state: &'static str,
    reason: Option<String>,
    duration: f64,
    max_rss_kib: u64,
    output: [Option<Output>; 2],
}

#[derive(Debug)]
struct Output {
    data: Vec<u8>,
    total: u64,
    truncated: bool,
}

impl Journal {
    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `event` (with the state locked); returns its ticket.
    fn push_locked(&self, st: &mut Pending, event: Event) -> Result<u64, ObserverError> {
        if let Some(f) = &st.failed {
            return Err(ObserverError(f.clone()));
        }
        if st.closing {
            return Err(ObserverError(format!(
                "journal {}: written after it was closed",
                self.path.display()
            )));
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.events.push(event);
        if st.idle {
            st.idle = false;
            self.shared.work.notify_one();
        }
        Ok(ticket)
    }

    fn push(&self, event: Event) -> Result<u64, ObserverError> {
        let mut st = self.shared.lock();
        self.push_locked(&mut st, event)
    }

    /// Waits until every event queued so far is committed.
    ///
    /// # Errors
    ///
    /// The writer failed; the message names the file.
    pub fn flush(&self) -> Result<(), ObserverError> {
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
    pub fn close(&self, reason: &str) -> Result<(), ObserverError> {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = handle else {
            return Ok(());
        };
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
                Err(ObserverError(f.clone()))
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
        result
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.close("ended");
    }
}

fn end_fields(end: &End) -> (Option<i32>, Option<i32>) {
    match end {
        End::Exited(c) => (Some(*c), None),
        End::Signaled(s) => (None, Some(*s)),
        End::SpawnFailed(_) => (None, None),
    }
}

/// (attempt outcome, job state, reason) of an outcome.
fn outcome_fields(outcome: &AttemptOutcome) -> (&'static str, &'static str, Option<String>) {
    match outcome {
        AttemptOutcome::Done => ("done", "done", None),
        AttemptOutcome::Requeued { reason } => ("requeued", "queued", Some(reason.to_string())),
        AttemptOutcome::Final(JobState::Failed { reason, .. }) => {
            ("failed", "failed", Some(reason.to_string()))
        }
        AttemptOutcome::Final(JobState::Dead { reason, .. }) => {
            ("dead", "dead", Some(reason.to_string()))
        }
        AttemptOutcome::Final(other) => ("failed", "failed", Some(format!("{other:?}"))),
        AttemptOutcome::Interrupted => (
            "interrupted",
            "queued",
            Some("stopped by jobmill (interrupted)".to_string()),
        ),
    }
}

impl Observer for Journal {
    fn job_read(&self, job: &NewJob) -> Result<(), ObserverError> {
        self.push(Event::Job {
            seq: job.seq,
            input: job.payload.clone(),
        })
        .map(drop)
    }

    fn input_complete(&self, _total: u64) -> Result<(), ObserverError> {
        self.push(Event::InputComplete).map(drop)
    }

    fn attempt_started(
        &self,
        seq: u64,
        _attempt: u32,
        slot: usize,
        at: SystemTime,
    ) -> Result<(), ObserverError> {
        let st = self.shared.lock();
        // Start nothing before this slot's previous completion is
        // committed (committing it here if no one else is writing).
        let previous = st.slot_tickets.get(slot).copied().unwrap_or(0);
        let mut st = self.shared.wait_committed(st, previous)?;
        self.push_locked(
            &mut st,
            Event::Started {
                seq,
                slot,
                at: unix(at),
            },
        )
        .map(drop)
    }

    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        let a = &mut *report.attempt_result;
        let (exit_code, signal) = end_fields(&a.end);
        let (outcome, job_state, mut reason) = outcome_fields(report.outcome);
        if let End::SpawnFailed(e) = &a.end {
            if reason.is_none() {
                reason = Some(e.clone());
            }
        }
        let cap = self.config.output_cap;
        let mut output: [Option<Output>; 2] = [None, None];
        for (i, cap_of) in [&mut a.stdout, &mut a.stderr].into_iter().enumerate() {
            let total = cap_of.len();
            if total == 0 {
                continue;
            }
            let (data, truncated) = match cap_of.head(cap) {
                Ok(v) => v,
                Err(e) => (format!("(output lost: {e})").into_bytes(), true),
            };
            output[i] = Some(Output {
                data,
                total,
                truncated,
            });
        }
        let finished = Finished {
            seq: report.seq,
            ended_at: now(),
            exit_code,
            signal,
            timed_out: a.timed_out,
            outcome,
            job_state,
            reason,
            duration: a.duration.as_secs_f64(),
            max_rss_kib: a.max_rss_kib,
            output,
        };
        let mut st = self.shared.lock();
        let ticket = self.push_locked(&mut st, Event::Finished(Box::new(finished)))?;
        let slot = report.slot;
        if st.slot_tickets.len() <= slot {
            st.slot_tickets.resize(slot + 1, 0);
        }
        st.slot_tickets[slot] = ticket;
        Ok(())
    }

    fn run_finished(&self, summary: &RunSummary) -> Result<(), ObserverError> {
        let reason = if let Some(e) = &summary.error {
            format!("error: {e}")
        } else if summary.halted {
            "halted".to_string()
        } else if summary.interrupted {
            "interrupted".to_string()
        } else if summary.input_complete {
            "complete".to_string()
        } else {
            "stopped".to_string()
        };
        self.close(&reason)
    }
}

impl Writer {
    /// Writes `batch` in one transaction.
    fn write(&mut self, path: &Path, batch: &[Event]) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction()
            .map_err(JournalError::sqlite(path, "begin"))?;
        for e in batch {
            Self::apply(&tx, e, self.session, self.known_jobs, self.whole_input)
                .map_err(JournalError::sqlite(path, "write"))?;
        }
        tx.commit().map_err(JournalError::sqlite(path, "commit"))
    }

    fn apply(
        tx: &rusqlite::Transaction<'_>,
        e: &Event,
        session: i64,
        known_jobs: u64,
        whole_input: bool,
    ) -> rusqlite::Result<()> {
        match e {
            Event::Job { seq, input } => {
                if *seq > known_jobs {
                    let hash = Sha256::digest(input);
                    tx.prepare_cached("INSERT INTO job (seq, input, hash) VALUES (?1, ?2, ?3)")?
                        .execute(params![*seq as i64, &input[..], &hash[..]])?;
                }
            }
            Event::InputComplete => {
                if whole_input {
                    tx.prepare_cached(
                        "UPDATE run SET input_complete = 1,
                                total_jobs = (SELECT COUNT(*) FROM job) WHERE id = 1",
                    )?
                    .execute([])?;
                }
            }
            Event::Started { seq, slot, at } => {
                tx.prepare_cached(
                    "UPDATE job SET state = 'running', attempts = attempts + 1 WHERE seq = ?1",
                )?
                .execute(params![*seq as i64])?;
                tx.prepare_cached(
                    "INSERT INTO attempt (seq, attempt, session, slot, started_at)
                     VALUES (?1, (SELECT attempts FROM job WHERE seq = ?1), ?2, ?3, ?4)",
                )?
                .execute(params![*seq as i64, session, *slot as i64, at])?;
            }
            Event::Finished(f) => {
                let seq = f.seq as i64;
                tx.prepare_cached(
                    "UPDATE attempt SET ended_at = ?2, exit_code = ?3, signal = ?4,
                            timed_out = ?5, outcome = ?6, reason = ?7, duration = ?8,
                            max_rss_kb = ?9
                     WHERE seq = ?1 AND attempt = (SELECT attempts FROM job WHERE seq = ?1)",
                )?
                .execute(params![
                    seq,
                    f.ended_at,
                    f.exit_code,
                    f.signal,
                    f.timed_out,
                    f.outcome,
                    f.reason,
                    f.duration,
                    f.max_rss_kib as i64,
                ])?;
                let final_state = matches!(f.job_state, "done" | "failed" | "dead");
                tx.prepare_cached(
                    "UPDATE job SET state = ?2, exit_code = ?3, signal = ?4, reason = ?5,
                            finished_at = ?6 WHERE seq = ?1",
                )?
                .execute(params![
                    seq,
                    f.job_state,
                    f.exit_code,
                    f.signal,
                    f.reason,
                    final_state.then_some(f.ended_at),
                ])?;
                tx.prepare_cached("DELETE FROM output WHERE seq = ?1")?
                    .execute(params![seq])?;
                for (i, o) in f.output.iter().enumerate() {
                    if let Some(o) = o {
                        tx.prepare_cached(
                            "INSERT INTO output (seq, stream, data, total_bytes, truncated)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![
                            seq,
                            i as i64 + 1,
                            o.data,
                            o.total as i64,
                            o.truncated
                        ])?;
                    }
                }
            }
            Event::RunFinished { reason } => {
                let at = now();
                tx.prepare_cached(
                    "UPDATE session SET ended_at = ?2, end_reason = ?3 WHERE id = ?1",
                )?
                .execute(params![session, at, reason])?;
                tx.prepare_cached("UPDATE run SET ended_at = ?1, end_reason = ?2 WHERE id = 1")?
                    .execute(params![at, reason])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Attempt, Capture, SpillBudget};

    fn record() -> RunRecord {
        RunRecord {
            run_id: "20261130-000000-test".into(),
            command: vec!["echo".into(), "{}".into()],
            options: serde_json::json!({"jobs": 2}),
            cwd: PathBuf::from("/"),
        }
    }

    fn attempt(stdout: &[u8], end: End) -> Attempt {
        let budget = SpillBudget::new(1 << 20);
        let mut out = Capture::new(budget.clone());
        out.append(stdout);
        Attempt {
            started: SystemTime::now(),
            duration: Duration::from_millis(5),
            end,
            timed_out: false,
            terminated: false,
            max_rss_kib: 1234,
            stdout: out,
            stderr: Capture::new(budget),
        }
    }

    fn finish(j: &Journal, seq: u64, slot: usize, a: &mut Attempt, outcome: AttemptOutcome) {
        let mut report = AttemptReport {
            seq,
            attempt: 1,
            slot,
            attempt_result: a,
            outcome: &outcome,
        };
        j.attempt_finished(&mut report).unwrap();
    }

    fn read(path: &Path) -> Connection {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    #[test]
    fn a_slot_starts_only_after_its_previous_completion_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        // A long interval: nothing but the gate commits in this test's time.
        let config = WriterConfig {
            output_cap: 1 << 20,
            sync_interval: Duration::from_secs(3600),
        };
        let j = create(&path, &record(), config).unwrap();
        for seq in 1..=2 {
            j.job_read(&NewJob::new(seq, format!("in{seq}"))).unwrap();
        }
        j.attempt_started(1, 1, 1, SystemTime::now()).unwrap();
        finish(
            &j,
            1,
            1,
            &mut attempt(b"", End::Exited(0)),
            AttemptOutcome::Done,
        );
        // The next start in slot 1 returns only once job 1's completion is
        // in the file, visible to another connection.
        j.attempt_started(2, 1, 1, SystemTime::now()).unwrap();
        let state: String = read(&path)
            .query_row("SELECT state FROM job WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(state, "done");
        j.close("complete").unwrap();
    }

    #[test]
    fn attempts_outputs_and_the_end_are_recorded_with_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let config = WriterConfig {
            output_cap: 4,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        };
        let j = create(&path, &record(), config).unwrap();
        j.job_read(&NewJob::new(1, &b"\xff\x00x"[..])).unwrap();
        j.input_complete(1).unwrap();
        j.attempt_started(1, 1, 2, SystemTime::now()).unwrap();
        finish(
            &j,
            1,
            2,
            &mut attempt(b"hello world", End::Exited(3)),
            AttemptOutcome::Requeued {
                reason: crate::job::FailReason::Exit { code: 3 },
            },
        );
        j.attempt_started(1, 2, 2, SystemTime::now()).unwrap();
        finish(
            &j,
            1,
            2,
            &mut attempt(b"ok", End::Exited(0)),
            AttemptOutcome::Done,
        );
        j.run_finished(&RunSummary {
            read: 1,
            done: 1,
            input_complete: true,
            ..RunSummary::default()
        })
        .unwrap();
        drop(j);
        assert!(
            !PathBuf::from(format!("{}-wal", path.display())).exists(),
            "a finished journal is one file"
        );
        super::super::check(&path).unwrap();
        let c = read(&path);
        let (input, state, attempts, complete): (Vec<u8>, String, i64, bool) = c
            .query_row(
                "SELECT input, state, attempts, (SELECT input_complete FROM run) FROM job",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(input, b"\xff\x00x");
        assert_eq!((state.as_str(), attempts, complete), ("done", 2, true));
        let outcomes: Vec<(i64, String, Option<i64>, i64)> = c
            .prepare("SELECT attempt, outcome, exit_code, max_rss_kb FROM attempt ORDER BY attempt")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (1, "requeued".to_string(), Some(3), 1234),
                (2, "done".to_string(), Some(0), 1234)
            ]
        );
        // The output of the last attempt only; "ok" fits the cap of 4.
        let out: (Vec<u8>, i64, bool) = c
            .query_row(
                "SELECT data, total_bytes, truncated FROM output WHERE seq = 1 AND stream = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(out, (b"ok".to_vec(), 2, false));
        let reason: String = c
            .query_row("SELECT end_reason FROM run", [], |r| r.get(0))
            .unwrap();
        assert_eq!(reason, "complete");
    }

    #[test]
    fn output_past_the_cap_is_truncated_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let config = WriterConfig {
            output_cap: 5,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        };
        let j = create(&path, &record(), config).unwrap();
        j.job_read(&NewJob::new(1, "a")).unwrap();
        j.attempt_started(1, 1, 1, SystemTime::now()).unwrap();
        finish(
            &j,
            1,
            1,
            &mut attempt(b"0123456789", End::Exited(0)),
            AttemptOutcome::Done,
        );
        j.close("complete").unwrap();
        let out: (Vec<u8>, i64, bool) = read(&path)
            .query_row("SELECT data, total_bytes, truncated FROM output", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(out, (b"01234".to_vec(), 10, true));
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
                assert_eq!(pid, i64::from(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(j);
        JournalLock::acquire(&path).expect("free once the journal is closed");
    }
}
