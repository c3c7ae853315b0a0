//! The journal's writer thread and its group commits: events wait in a
//! pending list; one thread at a time writes them in one transaction
//! (see the module docs of [`super::writer`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};

use super::completions::{Completion, Log, RanBy};
use super::rows::apply;
use super::writer::WriterConfig;
use super::JournalError;

/// Pending events that make the writer commit before its interval ends.
pub(super) const BATCH_EVENTS: usize = 1024;

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) path: PathBuf,
    /// The completions log; `None` once closed. Locked before `state`
    /// when both are needed.
    pub(super) log: Mutex<Option<Log>>,
    pub(super) state: Mutex<Pending>,
    /// The connection; used only by the thread that set
    /// [`Pending::writing`], so never contended.
    pub(super) writer: Mutex<Option<Writer>>,
    /// Signalled when a completion is pending or the journal is closing.
    pub(super) work: Condvar,
    /// Signalled after each commit (or failure).
    pub(super) durable: Condvar,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) events: Vec<Event>,
    /// The ticket of the next event.
    pub(super) next_ticket: u64,
    /// Every event with a ticket up to this one is committed.
    pub(super) committed: u64,
    /// Why the writer stopped, if it failed.
    pub(super) failed: Option<String>,
    pub(super) closing: bool,
    /// A thread is writing a batch (only one at a time).
    pub(super) writing: bool,
    /// The background thread sleeps with nothing to do: the next event
    /// wakes it.
    pub(super) idle: bool,
    /// When each running attempt started, by job (the value its start
    /// event carries, so its end can be matched to it).
    pub(super) started: HashMap<u64, f64>,
    /// (job, ticket) of the job rows not known to be committed, in input
    /// order.
    pub(super) job_tickets: VecDeque<(u64, u64)>,
    /// Bytes in the completions log (mirrors [`Log::len`]).
    pub(super) log_len: u64,
    /// Ticket of the last event whose record is in the completions log.
    pub(super) log_ticket: u64,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ticket` is committed, committing the pending events
    /// itself when no other thread is writing (leader/follower group
    /// commit: whoever writes takes everything pending).
    pub(super) fn wait_committed<'a>(
        &'a self,
        mut st: MutexGuard<'a, Pending>,
        ticket: u64,
    ) -> Result<MutexGuard<'a, Pending>, JournalError> {
        loop {
            if let Some(f) = &st.failed {
                return Err(JournalError::Stopped(f.clone()));
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
    pub(super) fn clear_log(&self, durable: u64) -> std::io::Result<()> {
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
    pub(super) fn write_pending<'a>(
        &'a self,
        mut st: MutexGuard<'a, Pending>,
    ) -> MutexGuard<'a, Pending> {
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
pub(super) fn background(shared: &Shared, config: WriterConfig, log_sync: &File) {
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
pub(super) fn wait_for<'a>(
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
pub(super) fn open_checkpointer(path: &Path) -> Option<Connection> {
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
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) session: i64,
    pub(super) known_jobs: u64,
    pub(super) whole_input: bool,
    /// An empty batch, to swap with the pending list.
    pub(super) spare: Vec<Event>,
    /// Per event of the batch being written, how to write it
    /// ([`Writer::plan`]). Kept to reuse the allocation.
    pub(super) plan: Vec<Plan>,
    /// Scratch map of [`Writer::plan`]: job → index of the nearest end seen.
    pub(super) ends: HashMap<u64, usize>,
    /// Jobs of this session with an attempt ended but not final (retried
    /// or interrupted): the only new jobs that may have output rows to
    /// replace.
    pub(super) retried: HashSet<u64>,
}

/// How [`Writer::write`] writes one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// As itself.
    Apply,
    /// Not at all: a start whose end is in the same batch.
    Skip,
    /// An end whose start was skipped: one finished attempt row.
    Insert,
}

#[derive(Debug)]
pub(super) enum Event {
    Job {
        seq: u64,
        input: Bytes,
        read_at: f64,
    },
    InputComplete,
    Started {
        seq: u64,
        slot: usize,
        at: f64,
        ran_by: RanBy,
    },
    Finished(Box<Completion>),
    RunFinished {
        reason: String,
    },
}

impl Writer {
    /// Writes `batch` in one transaction.
    ///
    /// An attempt whose start and end are both in the batch (the common
    /// case) is written as one finished row and one job update, instead of
    /// a start and then an update of each: the same rows as writing them
    /// one by one.
    pub(super) fn write(&mut self, path: &Path, batch: &[Event]) -> Result<(), JournalError> {
        self.plan(batch);
        let tx = self
            .conn
            .transaction()
            .map_err(JournalError::sqlite(path, "begin"))?;
        for (e, plan) in batch.iter().zip(&self.plan) {
            apply(
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
    pub(super) fn plan(&mut self, batch: &[Event]) {
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
}
