//! The journal writer: an [`Observer`] of a run that records every event
//! in the journal file with group commits, one writer at a time.
//!
//! ## Group commits
//!
//! Observer calls never run SQL themselves on the way in: they append the
//! event to a pending list (one mutex) and get a ticket. The writer thread
//! commits everything pending in one transaction every 50 ms,
//! so one commit carries the events of many jobs. A thread that must see
//! its events committed ([`Journal::flush`], a start whose job row is not
//! committed yet) writes the batch itself when no one else is (a `writing`
//! flag under the mutex: the connection is never used by two threads).
//!
//! ## The durability gate
//!
//! [`Observer::attempt_finished`] buffers the attempt's end for the
//! completions log ([`super::completions`]); [`Observer::attempt_started`]
//! writes every buffered end there (one `write(2)`, not a commit) before it
//! returns. So no job starts before every end recorded so far would
//! survive jobmill's death, and the jobs that would run twice after a crash
//! are only those in flight, at most one per slot. A start also waits, if
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
//! observer call returns an [`ObserverError`] naming the file: the run
//! drains. What was committed before stays.

use std::collections::{HashMap, HashSet, VecDeque};
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

use crate::events::{AttemptReport, AttemptStart, Observer, ObserverError, Resolution, RunSummary};
use crate::job::{FailReason, JobState, NewJob};
use crate::outcome::AttemptEnd;

use super::completions::{self, Completion, Log};
use super::{JournalError, APPLICATION_ID, SCHEMA, SCHEMA_VERSION};

/// Pending events that make the writer commit before its interval ends.
const BATCH_EVENTS: usize = 1024;

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
    start(path, conn, lock, Some(1), 0, true, config).inspect_err(|_| {
        // Nothing was run: leave nothing half-made (but never remove a
        // completions log this did not create).
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    })
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
    if !config.sync_interval.is_zero() {
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(JournalError::sqlite(path, "set synchronous"))?;
    }
    let log_sync = log.sync_handle().map_err(|source| JournalError::Io {
        path: log.path().to_path_buf(),
        source,
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
                source,
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

/// A running journal: the [`Observer`] that records a run.
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

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    /// The completions log; `None` once closed. Locked before `state`
    /// when both are needed.
    log: Mutex<Option<Log>>,
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
    /// When each running attempt started, by job (the value its start
    /// event carries, so its end can be matched to it).
    started: HashMap<u64, f64>,
    /// (job, ticket) of the job rows not known to be committed, in input
    /// order.
    job_tickets: VecDeque<(u64, u64)>,
    /// Bytes in the completions log (mirrors [`Log::len`]).
    log_len: u64,
    /// Ticket of the last event whose record is in the completions log.
    log_ticket: u64,
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
                return Err(ObserverError::msg(f.clone()));
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

    /// Empties the completions log if every record in it has a ticket up
    /// to `durable` (committed and synced). Takes the log's lock, then the
    /// state's (the order appends use).
    fn clear_log(&self, durable: u64) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.lock();
        let Some(log) = log.as_mut() else {
            st.log_len = 0;
            return Ok(());
        };
        if st.log_ticket <= durable && log.len > 0 {
            log.clear()?;
            st.log_len = 0;
        }
        Ok(())
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
            Ok(()) => {
                st.committed = last;
                while st.job_tickets.front().is_some_and(|&(_, t)| t <= last) {
                    st.job_tickets.pop_front();
                }
            }
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

/// The background thread: commits what is pending every 50 ms, syncs the WAL and the completions log to disk every
/// `sync_interval`, empties the completions log once a synced commit covers
/// it, checkpoints the WAL into the file every second (so slots never pay
/// for a checkpoint), and stops when the journal closes.
fn background(shared: &Shared, config: WriterConfig, log_sync: &File) {
    // Between two batch commits. Readers see a live run at most this
    // late; slots never wait for it (their gate is the completions log).
    // Measured on 2000 `true` jobs at -j2: 1.05x the time of --no-journal
    // at 50 ms, 1.10x at 5 ms (ten times the commits and wake-ups).
    const FLUSH_EVERY: Duration = Duration::from_millis(50);
    const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
    let wal_path = PathBuf::from(format!("{}-wal", shared.path.display()));
    let mut wal: Option<File> = None;
    let mut checkpointer: Option<Connection> = None;
    let mut last_sync = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut synced_to = 0u64;
    let mut checkpointed_to = 0u64;
    let full = config.sync_interval.is_zero();
    let mut last_write = Instant::now();
    let mut st = shared.lock();
    loop {
        if st.closing || st.failed.is_some() {
            break;
        }
        if !st.events.is_empty() && !st.writing {
            // One batch per interval, however fast events arrive, unless
            // they pile up (fast jobs: their rows must be in before their
            // starts, which would otherwise commit on the slots' path).
            let since = last_write.elapsed();
            if since >= FLUSH_EVERY || st.events.len() >= BATCH_EVENTS {
                st = shared.write_pending(st);
                last_write = Instant::now();
            } else {
                st = wait_for(shared, st, Some(FLUSH_EVERY - since));
            }
            continue;
        }
        let committed = st.committed;
        if full {
            // Every commit is synced (FULL), every record too.
            synced_to = committed;
        } else if committed > synced_to && last_sync.elapsed() >= config.sync_interval {
            // fdatasync of the WAL through a descriptor of our own: it
            // covers every commit written before it, and holds up no
            // writer. The log is synced too, for the ends not committed yet.
            drop(st);
            if wal.is_none() {
                wal = File::open(&wal_path).ok();
            }
            let synced = wal
                .as_ref()
                .map_or(Ok(()), File::sync_data)
                .and_then(|()| log_sync.sync_data());
            if let Err(e) = synced {
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
        if st.log_len > 0 && st.log_ticket <= synced_to {
            // Every record is in a commit on disk: drop them.
            drop(st);
            if let Err(e) = shared.clear_log(synced_to) {
                let mut s = shared.lock();
                s.failed = Some(format!(
                    "journal {}: cannot empty its completions log: {e}; the run stops",
                    shared.path.display()
                ));
                shared.durable.notify_all();
                break;
            }
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
        if !full && committed > synced_to {
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
    /// Per event of the batch being written, how to write it
    /// ([`Writer::plan`]). Kept to reuse the allocation.
    plan: Vec<Plan>,
    /// Scratch map of [`Writer::plan`]: job → index of the nearest end seen.
    ends: HashMap<u64, usize>,
    /// Jobs of this session with an attempt ended but not final (retried
    /// or interrupted): the only new jobs that may have output rows to
    /// replace.
    retried: HashSet<u64>,
}

/// How [`Writer::write`] writes one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// As itself.
    Apply,
    /// Not at all: a start whose end is in the same batch.
    Skip,
    /// An end whose start was skipped: one finished attempt row.
    Insert,
}

#[derive(Debug)]
enum Event {
    Job { seq: u64, input: Bytes },
    InputComplete,
    Started { seq: u64, slot: usize, at: f64 },
    Finished(Box<Completion>),
    RunFinished { reason: String },
}

impl Journal {
    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `event` (with the state locked); returns its ticket.
    fn push_locked(&self, st: &mut Pending, event: Event) -> Result<u64, ObserverError> {
        if let Some(f) = &st.failed {
            return Err(ObserverError::msg(f.clone()));
        }
        if st.closing {
            return Err(ObserverError::msg(format!(
                "journal {}: written after it was closed",
                self.path.display()
            )));
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

    fn push(&self, event: Event) -> Result<u64, ObserverError> {
        let mut st = self.shared.lock();
        self.push_locked(&mut st, event)
    }

    /// Writes the buffered attempt ends to the completions log (one
    /// `write(2)`; with `--journal-fsync 0`, and an fsync).
    fn write_log(&self) -> Result<(), ObserverError> {
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        let Some(log) = log.as_mut().filter(|l| l.has_buffered()) else {
            return Ok(());
        };
        if let Some(f) = &self.shared.lock().failed {
            return Err(ObserverError::msg(f.clone()));
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
            return Err(ObserverError::msg(msg));
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
    pub fn flush(&self) -> Result<(), ObserverError> {
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
    pub fn close(&self, reason: &str) -> Result<(), ObserverError> {
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
                Err(ObserverError::msg(f.clone()))
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

/// (attempt outcome, job state, reason) of a resolution.
fn outcome_fields(
    resolution: &Resolution,
    end: &AttemptEnd,
) -> (&'static str, &'static str, Option<String>) {
    match resolution {
        Resolution::Done => ("done", "done", None),
        Resolution::Requeued { reason } => ("requeued", "queued", Some(reason.to_string())),
        Resolution::Final(JobState::Failed { reason, .. }) => {
            ("failed", "failed", Some(reason.to_string()))
        }
        Resolution::Final(JobState::Dead { reason, .. }) => {
            ("dead", "dead", Some(reason.to_string()))
        }
        Resolution::Final(other) => ("failed", "failed", Some(format!("{other:?}"))),
        Resolution::Interrupted if *end == AttemptEnd::Stopped => (
            "interrupted",
            "queued",
            Some("stopped by jobmill (interrupted)".to_string()),
        ),
        Resolution::Interrupted => (
            "interrupted",
            "queued",
            Some("the lease was taken over by another worker".to_string()),
        ),
    }
}

impl Observer for Journal {
    fn job_read(&self, job: &NewJob) -> Result<(), ObserverError> {
        if job.seq <= self.known_jobs {
            // Recorded by an earlier session.
            return Ok(());
        }
        let mut st = self.shared.lock();
        let ticket = self.push_locked(
            &mut st,
            Event::Job {
                seq: job.seq,
                input: job.payload.clone(),
            },
        )?;
        st.job_tickets.push_back((job.seq, ticket));
        Ok(())
    }

    fn input_complete(&self, _total: u64) -> Result<(), ObserverError> {
        self.push(Event::InputComplete).map(drop)
    }

    fn attempt_started(&self, start: &AttemptStart) -> Result<(), ObserverError> {
        let (seq, slot) = (start.seq, start.slot);
        // The durability gate: every attempt end recorded so far survives
        // jobmill's death before anything new starts.
        self.write_log()?;
        let mut st = self.shared.lock();
        // The job's row must be in the file before the job runs (its end
        // refers to it). It usually is: rows are committed as they are
        // read, long before their turn.
        let pending = st
            .job_tickets
            .binary_search_by_key(&seq, |&(s, _)| s)
            .ok()
            .map(|i| st.job_tickets[i].1);
        if let Some(ticket) = pending {
            st = self.shared.wait_committed(st, ticket)?;
        }
        let at = unix(start.at);
        st.started.insert(seq, at);
        self.push_locked(&mut st, Event::Started { seq, slot, at })
            .map(drop)
    }

    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        let o = report.outcome;
        let (outcome, job_state, mut reason) = outcome_fields(report.resolution, &o.end);
        if let AttemptEnd::Failed(FailReason::Spawn { error }) = &o.end {
            if reason.is_none() {
                reason = Some(error.clone());
            }
        }
        let cap = self.config.output_cap;
        let mut output: [Option<completions::Output>; 2] = [None, None];
        for (i, stream) in [&mut *report.stdout, &mut *report.stderr]
            .into_iter()
            .enumerate()
        {
            let total = stream.len();
            if total == 0 {
                continue;
            }
            let (data, truncated) = match stream.head(cap) {
                Ok(v) => v,
                Err(e) => (format!("(output lost: {e})").into_bytes(), true),
            };
            output[i] = Some(completions::Output {
                data,
                total,
                truncated,
            });
        }
        let started_at = self.shared.lock().started.remove(&report.seq);
        let completion = Completion {
            session: self.session,
            seq: report.seq,
            slot: report.slot as u64,
            started_at: started_at.unwrap_or_else(|| unix(o.started)),
            ended_at: now(),
            exit_code: o.exit_code,
            signal: o.end.signal(),
            timed_out: o.end == AttemptEnd::Failed(FailReason::Timeout),
            outcome,
            job_state,
            reason,
            duration: o.duration.map(|d| d.as_secs_f64()),
            max_rss_kib: o.max_rss_kib,
            output,
        };
        // Buffered: written to the completions log, in one write(2) with
        // any others, before the next attempt starts anywhere.
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        let Some(log) = log.as_mut() else {
            return Err(ObserverError::msg(format!(
                "journal {}: written after it was closed",
                self.path.display()
            )));
        };
        let mut st = self.shared.lock();
        let ticket = self.push_locked(&mut st, Event::Finished(Box::new(completion)))?;
        if let Some(Event::Finished(c)) = st.events.last() {
            log.buffer(c);
        }
        log.buffered_ticket = ticket;
        Ok(())
    }

    fn run_finished(&self, summary: &RunSummary) -> Result<(), ObserverError> {
        let reason = match &summary.error {
            Some(e) => format!("error: {e}"),
            None => summary.ending().to_string(),
        };
        self.close(&reason)
    }
}

impl Writer {
    /// Writes `batch` in one transaction.
    ///
    /// An attempt whose start and end are both in the batch (the common
    /// case) is written as one finished row and one job update, instead of
    /// a start and then an update of each: the same rows as writing them
    /// one by one.
    fn write(&mut self, path: &Path, batch: &[Event]) -> Result<(), JournalError> {
        self.plan(batch);
        let tx = self
            .conn
            .transaction()
            .map_err(JournalError::sqlite(path, "begin"))?;
        for (e, plan) in batch.iter().zip(&self.plan) {
            Self::apply(
                &tx,
                e,
                *plan,
                self.session,
                self.known_jobs,
                self.whole_input,
                &mut self.retried,
            )
            .map_err(JournalError::sqlite(path, "write"))?;
        }
        tx.commit().map_err(JournalError::sqlite(path, "commit"))
    }

    /// Fills [`Writer::plan`]: each start followed in `batch` by its end
    /// (the next end of the same job, before any later start of it) is
    /// skipped, and that end written as a whole attempt.
    fn plan(&mut self, batch: &[Event]) {
        self.plan.clear();
        self.plan.resize(batch.len(), Plan::Apply);
        self.ends.clear();
        for (i, e) in batch.iter().enumerate().rev() {
            match e {
                Event::Finished(f) => {
                    self.ends.insert(f.seq, i);
                }
                Event::Started { seq, .. } => {
                    if let Some(end) = self.ends.remove(seq) {
                        self.plan[i] = Plan::Skip;
                        self.plan[end] = Plan::Insert;
                    }
                }
                _ => {}
            }
        }
    }

    /// Writes event `e` as `plan` says. `retried`: [`Writer::retried`].
    fn apply(
        tx: &rusqlite::Transaction<'_>,
        e: &Event,
        plan: Plan,
        session: i64,
        known_jobs: u64,
        whole_input: bool,
        retried: &mut HashSet<u64>,
    ) -> rusqlite::Result<()> {
        match (e, plan) {
            (_, Plan::Skip) => {}
            // Only jobs new to the journal are queued ([`Journal::job_read`]).
            (Event::Job { seq, input }, _) => {
                let hash = Sha256::digest(input);
                tx.prepare_cached("INSERT INTO job (seq, input, hash) VALUES (?1, ?2, ?3)")?
                    .execute(params![*seq as i64, &input[..], &hash[..]])?;
            }
            (Event::InputComplete, _) => {
                if whole_input {
                    tx.prepare_cached(
                        "UPDATE run SET input_complete = 1,
                                total_jobs = (SELECT COUNT(*) FROM job) WHERE id = 1",
                    )?
                    .execute([])?;
                }
            }
            (Event::Started { seq, slot, at }, _) => {
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
            (Event::Finished(c), _) => {
                let start = if plan == Plan::Insert {
                    StartRow::Missing
                } else {
                    StartRow::Recorded
                };
                // Output rows to replace: only an earlier session's, or an
                // earlier attempt's of this session.
                let replace = c.seq <= known_jobs || retried.contains(&c.seq);
                record_end(tx, c, start, replace)?;
                if c.final_at().is_some() {
                    retried.remove(&c.seq);
                } else {
                    retried.insert(c.seq);
                }
            }
            (Event::RunFinished { reason }, _) => {
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

/// Whether the journal already has the row of an attempt's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartRow {
    /// Committed: the end updates it (matched by job, session and start
    /// time).
    Recorded,
    /// Not written (its start came in the same batch, or never reached the
    /// journal): the end inserts the whole row and counts the attempt.
    Missing,
}

/// Records the end of attempt `c`: its `attempt` row, the job's state
/// after it, and its kept output (first deleting the job's earlier output
/// rows if `replace`: they may exist).
pub(super) fn record_end(
    tx: &rusqlite::Transaction<'_>,
    c: &Completion,
    start: StartRow,
    replace: bool,
) -> rusqlite::Result<()> {
    let seq = c.seq as i64;
    let (attempt_sql, new_attempts) = match start {
        StartRow::Missing => (
            "INSERT INTO attempt (seq, attempt, session, slot, started_at,
                    ended_at, exit_code, signal, timed_out, outcome, reason,
                    duration, max_rss_kb)
             VALUES (?1, (SELECT attempts FROM job WHERE seq = ?1) + 1, ?2, ?3,
                     ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            1,
        ),
        StartRow::Recorded => (
            "UPDATE attempt SET slot = ?3, ended_at = ?5, exit_code = ?6, signal = ?7,
                    timed_out = ?8, outcome = ?9, reason = ?10, duration = ?11,
                    max_rss_kb = ?12
             WHERE seq = ?1 AND session = ?2 AND started_at = ?4",
            0,
        ),
    };
    tx.prepare_cached(attempt_sql)?.execute(params![
        seq,
        c.session,
        c.slot as i64,
        c.started_at,
        c.ended_at,
        c.exit_code,
        c.signal,
        c.timed_out,
        c.outcome,
        c.reason,
        c.duration,
        c.max_rss_kib.map(|k| k as i64),
    ])?;
    tx.prepare_cached(
        "UPDATE job SET attempts = attempts + ?7, state = ?2, exit_code = ?3,
                signal = ?4, reason = ?5, finished_at = ?6 WHERE seq = ?1",
    )?
    .execute(params![
        seq,
        c.job_state,
        c.exit_code,
        c.signal,
        c.reason,
        c.final_at(),
        new_attempts,
    ])?;
    write_output(tx, c, replace)
}

/// Replaces job `c.seq`'s kept output with this attempt's.
fn write_output(
    tx: &rusqlite::Transaction<'_>,
    c: &Completion,
    replace: bool,
) -> rusqlite::Result<()> {
    let seq = c.seq as i64;
    if replace {
        tx.prepare_cached("DELETE FROM output WHERE seq = ?1")?
            .execute(params![seq])?;
    }
    for (i, o) in c.output.iter().enumerate() {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Resolution as AttemptOutcome;
    use crate::exec::{Attempt, Capture, End, SpillBudget};

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

    fn finish(j: &Journal, seq: u64, slot: usize, a: &mut Attempt, resolution: AttemptOutcome) {
        let outcome = a.outcome();
        let mut report = AttemptReport {
            seq,
            attempt: 1,
            slot,
            outcome: &outcome,
            resolution: &resolution,
            stdout: &mut a.stdout,
            stderr: &mut a.stderr,
        };
        j.attempt_finished(&mut report).unwrap();
    }

    fn started(j: &Journal, seq: u64, attempt: u32, slot: usize, at: SystemTime) {
        j.attempt_started(&AttemptStart {
            seq,
            attempt,
            slot,
            at,
        })
        .unwrap();
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

    /// The records in `journal`'s completions log.
    fn logged(journal: &Path) -> Vec<Completion> {
        let bytes = std::fs::read(completions::path_of(journal)).unwrap();
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let (c, n) = completions::decode(&bytes[at..]).unwrap();
            out.push(c);
            at += n;
        }
        out
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
        j.job_read(&NewJob::new(1, "in1")).unwrap();
        j.job_read(&NewJob::new(2, "in2")).unwrap();
        let at = SystemTime::now();
        started(&j, 1, 1, 2, at);
        // The job's row was committed before its start returned.
        let n: i64 = read(&path)
            .query_row("SELECT COUNT(*) FROM job WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        finish(
            &j,
            1,
            2,
            &mut attempt(b"hello\n", End::Exited(0)),
            AttemptOutcome::Done,
        );
        // Buffered until a start (batched with other ends)...
        assert_eq!(logged(&path).len(), 0);
        started(&j, 2, 1, 1, SystemTime::now());
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
        j.job_read(&NewJob::new(1, "in1")).unwrap();
        started(&j, 1, 1, 1, SystemTime::now());
        finish(
            &j,
            1,
            1,
            &mut attempt(b"", End::Exited(0)),
            AttemptOutcome::Done,
        );
        j.job_read(&NewJob::new(2, "in2")).unwrap();
        // Writes job 1's end to the log (the test above shows it there).
        started(&j, 2, 1, 1, SystemTime::now());
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
        j.job_read(&NewJob::new(1, "in1")).unwrap();
        j.job_read(&NewJob::new(2, "in2")).unwrap();
        let at = SystemTime::now();
        started(&j, 1, 1, 1, at);
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

    fn write_log(journal: &Path, records: &[Completion], tail: &[u8]) {
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
        started(&j, 1, 1, 2, SystemTime::now());
        finish(
            &j,
            1,
            2,
            &mut attempt(b"hello world", End::Exited(3)),
            AttemptOutcome::Requeued {
                reason: crate::job::FailReason::Exit { code: 3 },
            },
        );
        started(&j, 1, 2, 2, SystemTime::now());
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
        started(&j, 1, 1, 1, SystemTime::now());
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
