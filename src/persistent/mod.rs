//! The coordinator side of the worker protocol: long-lived worker processes
//! fed from a [`Queue`].
//!
//! [`run`] starts [`Config::workers`] processes of one command, each with a
//! protocol channel (a `socketpair` end named by `$JOBMILL_FD`), and feeds
//! them jobs until the queue is closed and drained. It returns when every
//! worker has been told CLOSED and has exited, or after a [`Stop`].
//!
//! ```text
//!            ┌──── slot thread: spawn, handshake, read results ◀──┐
//!  queue ────┤                                                     │ socketpair
//!            └──── feeder thread: lease jobs, write JOB frames ───▶┘ (JOBMILL_FD)
//! ```
//!
//! Per worker:
//!
//! - **Window.** The feeder keeps at most [`Config::window`] leased jobs in
//!   flight to the worker, refilling when half of it has come back, so jobs
//!   are pipelined and written in batches. A worker that has run out of
//!   jobs sends POLL; the answer carries what the queue has right now, up
//!   to the window, and ends with POLL_END. With the window full it carries
//!   nothing (the jobs in flight reach the worker first); a worker that asks
//!   again with nothing sent since holds its whole window itself, and gets
//!   one job past it.
//! - **Results** arrive in batches and go to [`Queue::complete`] /
//!   [`Queue::fail`] (the worker's verdict, [`FailReason::Reported`]); each
//!   outcome is reported to the [`Observer`].
//! - **Close and drain.** When the queue is closed and drained, the worker
//!   is sent CLOSED; it exits, and is not replaced.
//! - **Loss.** A worker that exits, crashes, is killed, breaks the protocol
//!   or stops heartbeating is killed (its process group), and its in-flight
//!   jobs are resolved: the job it was running fails with
//!   [`FailReason::WorkerLost`], its attempt counted; the others (never
//!   started, or finished with their results still unsent in a batch) are
//!   released with no attempt counted. The running job is the one named on
//!   the worker's *state page* (a shared memory file, `$JOBMILL_STATE_FD`,
//!   where the worker libraries write the id of the job they run: no system
//!   call per job); for a worker without it, the oldest unanswered job. A
//!   worker that said LEAVING tells exactly how many jobs it took. The
//!   worker is then replaced (if work remains).
//! - **Timeout.** A job running longer than [`Config::timeout`] (measured
//!   from when its id appeared on the state page; without it, from when it
//!   became the worker's oldest job) gets its worker killed; the job fails
//!   with [`FailReason::Timeout`] and the worker is replaced.
//! - **Output.** The workers' stdout and stderr are piped and handed line
//!   by line to [`Observer::output`]; they never touch the protocol.
//! - **Large payloads.** Job payloads and results of at least
//!   [`Config::arena_threshold`] bytes travel through the worker's *arena*, a
//!   shared memory file mapped once by both sides (`$JOBMILL_ARENA_FD`): the
//!   coordinator copies a job's payload into a free region and sends its
//!   `(offset, len)`; the region is free again when the job is answered. A
//!   worker writes large results into its own result area and the
//!   coordinator copies them out. A dead worker's arena goes with it; its
//!   replacement gets a fresh one. See `docs/PAYLOADS.md`.
//! - **Crash loops.** A slot whose workers die [`Config::max_failed_starts`]
//!   times in a row without completing a job gives up; [`run`] then fails
//!   with [`PersistentError::WorkersFailing`] if no other slot could finish
//!   the queue.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::job::{signal_name, FailReason, Job, WorkerId};
use crate::protocol::io::{FrameReader, ReadError};
use crate::protocol::{
    decode, encode, encode_empty, encode_job, encode_job_arena, job_body_len, kind, BatchEntry,
    Decoded, Frame, Payload, Refuse, Welcome, ARENA_FD_ENV, CAP_ARENA, CAP_RUNNING_PAGE, FD_ENV,
    MIN_VERSION, RESULTS_CONSUMED_SLOT, STATE_FD_ENV, VERSION,
};
use crate::queue::{Completion, Disposition, GetError, Lease, Queue, QueueError, TryGetError};
use crate::sys::shm::{Arena, SharedPage};

/// Default size of each of a worker's two arena areas (job payloads,
/// results): 2 GiB, so that items of 1 GiB pass both ways. The memory file
/// is sparse: only the pages payloads actually use take memory.
pub const DEFAULT_ARENA: usize = 2 << 30;

/// Default threshold from which payloads go through the arena: 64 KiB.
pub const DEFAULT_ARENA_THRESHOLD: usize = 64 << 10;

/// Default soft cap on arena bytes in flight to one worker: 8 MiB.
pub const DEFAULT_ARENA_INFLIGHT: usize = 8 << 20;

/// How much of the start of each arena area stays in memory once used:
/// regions beyond it are given back to the system when they are freed, so a
/// worker that once handled a huge item does not keep its memory.
const ARENA_KEEP: u64 = 256 << 20;

/// Alignment of job payloads in the arena (a page: numpy-friendly).
const ARENA_ALIGN: u64 = 4096;

/// How often blocked threads look at stop requests and deadlines.
const TICK: Duration = Duration::from_millis(50);

/// How long a worker that closed its channel gets to exit before it is
/// killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How a coordinator runs its workers.
#[derive(Debug, Clone)]
pub struct Config {
    /// The worker command: program and arguments, run without a shell.
    pub command: Vec<OsString>,
    /// Extra environment variables for the workers.
    pub env: Vec<(OsString, OsString)>,
    /// Number of worker processes (at least 1).
    pub workers: usize,
    /// Most jobs in flight per worker (at least 1). Larger windows pipeline
    /// small jobs better; 1 or 2 balances long jobs better.
    pub window: usize,
    /// Per-job timeout; the worker running a job past it is killed.
    pub timeout: Option<Duration>,
    /// Cap on a frame body, both ways: bounds one job's payload and one
    /// result.
    pub max_frame: usize,
    /// How long a new worker may take to send HELLO (imports, model loads).
    pub hello_timeout: Duration,
    /// If set, workers are asked to send a heartbeat this often, and one
    /// that holds jobs and sends nothing for four intervals is declared
    /// lost. Catches a worker stuck outside any job timeout.
    pub heartbeat: Option<Duration>,
    /// Consecutive worker deaths, with no job completed in between, after
    /// which a slot gives up.
    pub max_failed_starts: u32,
    /// Size in bytes of each of the two areas of a worker's payload arena:
    /// job payloads (allocated by the coordinator) and results (by the
    /// worker). The arena is a sparse shared memory file of twice this size,
    /// mapped once per worker. A payload larger than its area goes inline
    /// if it fits [`Config::max_frame`], else the job fails with an error
    /// naming both limits. 0: no arena, every payload inline.
    pub arena: usize,
    /// Payloads (jobs and results) of at least this many bytes go through
    /// the arena; smaller ones go inline in their frames.
    pub arena_threshold: usize,
    /// Soft cap on the arena bytes in flight to one worker: further jobs
    /// with arena payloads wait until it has room, though two such jobs are
    /// always allowed (so a worker never waits for its next item). Few
    /// regions in use stay in the CPU caches: 1 MiB items measured 3-5x
    /// faster with 8 MiB in flight than with 32 MiB.
    pub arena_inflight: usize,
}

impl Config {
    /// A configuration with defaults: `workers` processes of `command`,
    /// window 16, no timeout, 64 MiB frames, 60 s to say hello, no
    /// heartbeat, give up after 5 failed starts, arenas of
    /// [`DEFAULT_ARENA`] for payloads of [`DEFAULT_ARENA_THRESHOLD`] and
    /// more.
    pub fn new(command: Vec<OsString>, workers: usize) -> Config {
        Config {
            command,
            env: Vec::new(),
            workers,
            window: 16,
            timeout: None,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            hello_timeout: Duration::from_secs(60),
            heartbeat: None,
            max_failed_starts: 5,
            arena: DEFAULT_ARENA,
            arena_threshold: DEFAULT_ARENA_THRESHOLD,
            arena_inflight: DEFAULT_ARENA_INFLIGHT,
        }
    }
}

/// Which output stream of a worker a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The worker's stdout.
    Stdout,
    /// The worker's stderr.
    Stderr,
}

/// What became of one job attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The worker completed the job with this result.
    Done {
        /// The result bytes.
        result: Bytes,
        /// Whether the queue recorded it ([`Completion::Stale`] if the lease
        /// had already been resolved).
        completion: Completion,
    },
    /// The attempt failed: reported by the worker, timed out, or lost with
    /// its worker.
    Failed {
        /// Why.
        reason: FailReason,
        /// What the queue did with the job.
        disposition: Disposition,
    },
}

/// One job attempt's outcome, as reported to [`Observer::outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The worker slot, from 1 (like `{%}`).
    pub slot: usize,
    /// The worker process incarnation that ran it.
    pub worker: WorkerId,
    /// The job, `attempts` counting this attempt.
    pub job: Job,
    /// What happened.
    pub kind: OutcomeKind,
}

/// A change in a worker's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A worker process completed its handshake.
    Started {
        /// The slot, from 1.
        slot: usize,
        /// Its id for the queue.
        worker: WorkerId,
        /// Its process id.
        pid: u32,
    },
    /// A worker ended: told CLOSED and exited, left, or was lost. `detail`
    /// says which, naming the worker, e.g. "worker 3 (pid 123, slot 1)
    /// exited with code 1 while running job 7".
    Ended {
        /// The slot, from 1.
        slot: usize,
        /// Its id.
        worker: WorkerId,
        /// Whether it ended abnormally (lost, killed, protocol error).
        lost: bool,
        /// What happened.
        detail: String,
    },
    /// A slot gave up restarting workers.
    GaveUp {
        /// The slot, from 1.
        slot: usize,
        /// Why.
        detail: String,
    },
}

/// Receives what happens during [`run`]. Called from several threads at
/// once; keep it quick (it runs on the path of results).
pub trait Observer: Sync {
    /// A job was leased for a worker and is being sent to it: its attempt
    /// starts now, as far as the coordinator can tell (it may wait in the
    /// worker's window first). By default nothing.
    fn sent(&self, slot: usize, worker: WorkerId, job: &Job) {
        let _ = (slot, worker, job);
    }

    /// A job attempt ended.
    fn outcome(&self, outcome: Outcome);

    /// A worker process was started, in its own process group (`pid` is
    /// also the group id), e.g. to register it with a guardian that kills
    /// it if the coordinator dies. By default nothing.
    fn spawned(&self, slot: usize, worker: WorkerId, pid: u32) {
        let _ = (slot, worker, pid);
    }

    /// A worker process is about to be reaped: it exited, or its group was
    /// killed. Its pid must not be signalled after this. By default nothing.
    fn reaping(&self, slot: usize, worker: WorkerId, pid: u32) {
        let _ = (slot, worker, pid);
    }

    /// A worker started or ended. By default, abnormal ends and give-ups
    /// are written to stderr.
    fn worker(&self, event: WorkerEvent) {
        match event {
            WorkerEvent::Ended {
                lost: true, detail, ..
            }
            | WorkerEvent::GaveUp { detail, .. } => eprintln!("jobmill: {detail}"),
            _ => {}
        }
    }

    /// A line (without its newline) a worker printed. By default it goes to
    /// stderr, prefixed with the slot.
    fn output(&self, slot: usize, worker: WorkerId, stream: Stream, line: &[u8]) {
        let _ = (worker, stream);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "[worker {slot}] ");
        let _ = err.write_all(line);
        let _ = err.write_all(b"\n");
    }
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const KILLING: u8 = 2;

/// How far [`run`] has been asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    /// Feed the workers as usual.
    Running,
    /// Lease no more jobs; let the jobs already sent finish, then tell the
    /// workers CLOSED.
    Draining,
    /// Kill the workers now; their in-flight jobs are released with no
    /// attempt counted.
    Killing,
}

/// Where [`run`] reads whether to stop. Read often (on every loop of its
/// threads), so it must be cheap, e.g. an atomic load.
pub trait StopSource: Sync {
    /// The current level; it should only ever rise.
    fn level(&self) -> StopLevel;
}

/// A ready-made [`StopSource`]: ask a running [`run`] to stop from any
/// thread (e.g. a signal handler thread).
#[derive(Debug, Default)]
pub struct Stop(AtomicU8);

impl StopSource for Stop {
    fn level(&self) -> StopLevel {
        match self.0.load(Ordering::SeqCst) {
            RUNNING => StopLevel::Running,
            DRAINING => StopLevel::Draining,
            _ => StopLevel::Killing,
        }
    }
}

impl Stop {
    /// Not stopping.
    pub fn new() -> Stop {
        Stop(AtomicU8::new(RUNNING))
    }

    /// Lease no more jobs; let the jobs already sent finish, then tell the
    /// workers CLOSED (the first Ctrl-C).
    pub fn drain(&self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Kill the workers now; their in-flight jobs are released with no
    /// attempt counted (the second Ctrl-C).
    pub fn kill(&self) {
        self.0.store(KILLING, Ordering::SeqCst);
    }

    /// Whether a drain or kill was requested.
    pub fn is_stopping(&self) -> bool {
        self.0.load(Ordering::SeqCst) != RUNNING
    }
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Worker processes started (handshake completed).
    pub started: u64,
    /// Workers lost (crashed, killed, timed out, broke the protocol).
    pub lost: u64,
    /// Jobs completed by workers.
    pub completed: u64,
    /// Job failures reported by workers.
    pub reported_failures: u64,
    /// Job payloads sent through a worker's arena.
    pub arena_jobs: u64,
    /// Results received through a worker's arena.
    pub arena_results: u64,
    /// Job payloads over the threshold sent inline because they are larger
    /// than the arena's job area.
    pub arena_fallbacks: u64,
    /// Payload bytes still held in a worker's arena when the worker ended
    /// (lost with it, or never answered), reclaimed by discarding that
    /// arena. 0 when every job was answered.
    pub arena_reclaimed: u64,
    /// Bytes of arena memory given back to the system after use: the parts
    /// of freed regions beyond the first 256 MiB of their area.
    pub arena_released: u64,
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistentError {
    /// The configuration cannot work.
    #[error("invalid persistent-worker configuration: {0}")]
    Config(String),
    /// The worker command could not be started at all.
    #[error("cannot start worker command {program:?}: {error}")]
    Spawn {
        /// The program.
        program: OsString,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// Every slot gave up while the queue still had jobs.
    #[error("workers keep failing, giving up: {detail}")]
    WorkersFailing {
        /// The last failure seen.
        detail: String,
    },
    /// The queue backend failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Runs workers over `queue` until it is closed and drained (or `stop`).
///
/// # Errors
///
/// [`PersistentError::Config`] for an empty command, zero workers or a
/// zero window; [`PersistentError::Spawn`] if the command cannot be
/// started; [`PersistentError::WorkersFailing`] if every slot gave up with
/// jobs left; [`PersistentError::Queue`] if the backend fails.
pub fn run(
    queue: &dyn Queue,
    config: &Config,
    observer: &dyn Observer,
    stop: &dyn StopSource,
) -> Result<Summary, PersistentError> {
    if config.command.is_empty() {
        return Err(PersistentError::Config(
            "the worker command is empty".into(),
        ));
    }
    if config.workers == 0 || config.window == 0 {
        return Err(PersistentError::Config(
            "workers and window must be at least 1".into(),
        ));
    }
    if config.max_frame < 64 {
        return Err(PersistentError::Config(
            "the frame limit must be at least 64 bytes".into(),
        ));
    }
    let ctx = Ctx {
        queue,
        config,
        observer,
        stop,
        next_worker: AtomicU64::new(1),
        summary: Mutex::new(Summary::default()),
    };
    let results: Vec<Result<(), SlotEnd>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=config.workers)
            .map(|slot| {
                let ctx = &ctx;
                std::thread::Builder::new()
                    .name(format!("jobmill-slot-{slot}"))
                    .spawn_scoped(s, move || ctx.slot(slot))
                    .expect("spawning a thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(SlotEnd::Failing("a slot thread panicked".into())))
            })
            .collect()
    });
    let summary = ctx.summary.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut failing = None;
    for r in results {
        match r {
            Ok(()) => {}
            Err(SlotEnd::Spawn(program, error)) => {
                return Err(PersistentError::Spawn { program, error })
            }
            Err(SlotEnd::Queue(e)) => return Err(e.into()),
            Err(SlotEnd::Failing(detail)) => failing = Some(detail),
        }
    }
    if let Some(detail) = failing {
        if stop.level() == StopLevel::Running && !queue.counts()?.is_drained() {
            return Err(PersistentError::WorkersFailing { detail });
        }
    }
    Ok(summary)
}

/// Why a slot stopped for good, other than normally.
enum SlotEnd {
    Spawn(OsString, std::io::Error),
    Queue(QueueError),
    Failing(String),
}

struct Ctx<'a> {
    queue: &'a dyn Queue,
    config: &'a Config,
    observer: &'a dyn Observer,
    stop: &'a dyn StopSource,
    next_worker: AtomicU64,
    summary: Mutex<Summary>,
}

/// How one worker incarnation ended.
enum Ended {
    /// Told CLOSED, channel ended: the normal end.
    Closed,
    /// Channel ended without CLOSED.
    Eof,
    /// Channel ended before the handshake.
    EarlyExit,
    /// The worker speaks another protocol version; it was sent REFUSE and
    /// is given time to exit and say why.
    Refused(String),
    /// The worker broke the protocol.
    Protocol(String),
    /// The channel failed.
    Io(String),
    /// The oldest job ran past the timeout.
    Timeout,
    /// No heartbeat.
    Silent,
    /// Stop::kill.
    Killed,
    /// The queue backend failed.
    Queue(QueueError),
}

/// One job sent to a worker and not yet resolved.
struct InFlight {
    lease: Lease,
    /// Its position among the jobs sent to this worker, from 0.
    index: u64,
    sent: Instant,
    /// Its payload's region of the arena (offset, allocated length), freed
    /// when the job is answered.
    region: Option<(u64, u64)>,
}

/// First-fit allocator of the arena's job area: a sorted list of free
/// extents. It holds at most a window of allocations, so a linear scan is
/// cheap, and reusing the lowest addresses keeps the pages in use few and
/// warm.
#[derive(Debug)]
struct Extents {
    /// Free (offset, length) extents, sorted by offset, never adjacent.
    free: Vec<(u64, u64)>,
    in_use: u64,
    /// Allocations made and not freed.
    count: usize,
    /// Soft cap on `in_use` (see [`Config::arena_inflight`]).
    budget: u64,
}

impl Extents {
    fn new(len: u64, budget: u64) -> Extents {
        Extents {
            free: vec![(0, len)],
            in_use: 0,
            count: 0,
            budget,
        }
    }

    fn rounded(n: u64) -> u64 {
        n.max(1).div_ceil(ARENA_ALIGN) * ARENA_ALIGN
    }

    /// Whether `n` bytes could be allocated now, within the budget.
    fn fits(&self, n: u64) -> bool {
        let n = Self::rounded(n);
        let within = self.count < 2 || self.in_use + n <= self.budget;
        within && self.free.iter().any(|&(_, len)| len >= n)
    }

    /// Allocates `n` bytes: (offset, allocated length), if it
    /// [`fits`](Extents::fits).
    fn alloc(&mut self, n: u64) -> Option<(u64, u64)> {
        if !self.fits(n) {
            return None;
        }
        let n = Self::rounded(n);
        let i = self.free.iter().position(|&(_, len)| len >= n)?;
        let (off, len) = self.free[i];
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (off + n, len - n);
        }
        self.in_use += n;
        self.count += 1;
        Some((off, n))
    }

    fn free(&mut self, off: u64, n: u64) {
        self.in_use -= n;
        self.count -= 1;
        let i = self.free.partition_point(|&(o, _)| o < off);
        let joins_prev = i > 0 && {
            let (po, pl) = self.free[i - 1];
            po + pl == off
        };
        let joins_next = i < self.free.len() && off + n == self.free[i].0;
        match (joins_prev, joins_next) {
            (true, true) => {
                let (_, nl) = self.free.remove(i);
                self.free[i - 1].1 += n + nl;
            }
            (true, false) => self.free[i - 1].1 += n,
            (false, true) => self.free[i] = (off, n + self.free[i].1),
            (false, false) => self.free.insert(i, (off, n)),
        }
    }
}

/// State shared by a worker's reader (slot thread) and feeder.
struct Flight {
    inflight: VecDeque<InFlight>,
    /// When the current oldest in-flight job became the oldest.
    head_since: Instant,
    /// Jobs sent so far.
    sent: u64,
    /// The worker asked (POLL) and got nothing: send the next job even past
    /// the window.
    want: bool,
    /// `sent` when a POLL was last answered with nothing because the window
    /// was full: another POLL with nothing sent since means the worker holds
    /// those jobs itself.
    full_at: Option<u64>,
    /// The incarnation is over: the feeder must stop.
    dead: bool,
    /// Jobs taken out of `inflight` whose outcomes are not yet
    /// reported: they still count against the window, so no job is sent in
    /// their place before observers (the journal) have seen them.
    resolving: usize,
    /// Jobs the worker took, from LEAVING.
    taken: Option<u64>,
    /// The arena's job area, when the worker was granted the arena.
    alloc: Option<Extents>,
    /// Jobs leased for the worker that wait for room in its arena (sent
    /// first when room opens; released if the worker ends).
    parked: VecDeque<Lease>,
}

/// The write side: held while leasing and writing, so that jobs leased for
/// the worker are written in lease order and before any POLL_END.
struct Writer {
    stream: UnixStream,
    buf: Vec<u8>,
}

struct Link {
    /// The worker's slot, from 1.
    slot: usize,
    /// CLOSED was written.
    closed_sent: AtomicBool,
    flight: Mutex<Flight>,
    /// Signalled when room opens in the window or the arena, on POLL, and
    /// on death.
    cond: Condvar,
    writer: Mutex<Writer>,
    /// The worker's arena and state page, if it was granted the arena.
    arena: Option<(Arc<Arena>, Arc<SharedPage>)>,
}

impl Link {
    fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What leasing into a writer found.
struct Filled {
    count: usize,
    closed: bool,
}

/// A spawned, not yet handshaken worker.
struct Proc {
    child: Child,
    pid: u32,
    /// The worker's state page (the id of the job it runs), used once the
    /// worker has offered it in HELLO.
    page: Arc<SharedPage>,
    page_granted: bool,
    /// The worker's payload arena (if configured), used once granted.
    arena: Option<Arc<Arena>>,
    arena_granted: bool,
}

impl Proc {
    /// The id of the job the worker says it is running (0: none), if it
    /// keeps the state page.
    fn running(&self) -> Option<u64> {
        self.page_granted.then(|| self.page.load(0))
    }
}

impl Proc {
    fn kill_group(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    /// Waits for the process, killing its group after `grace`.
    fn reap(&mut self, grace: Duration) -> ExitStatus {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ => {
                    self.kill_group();
                    match self.child.wait() {
                        Ok(s) => return s,
                        Err(_) => return ExitStatus::from_raw(9),
                    }
                }
            }
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by {}", signal_name(sig)),
        _ => "ended".into(),
    }
}

impl Ctx<'_> {
    /// Runs one slot: workers one after another until the queue is drained
    /// or the run stops.
    fn slot(&self, slot: usize) -> Result<(), SlotEnd> {
        let mut failures = 0u32;
        loop {
            if self.stopping() {
                return Ok(());
            }
            let worker = WorkerId(self.next_worker.fetch_add(1, Ordering::Relaxed));
            let life = self.incarnation(slot, worker)?;
            match life {
                Life::Done => return Ok(()),
                Life::Left => {
                    failures = 0;
                    // Replace it once there is work for a replacement.
                    if !self.wait_for_work()? {
                        return Ok(());
                    }
                }
                Life::Lost { progressed, detail } => {
                    failures = if progressed { 0 } else { failures + 1 };
                    if self.stopping() {
                        return Ok(());
                    }
                    if failures >= self.config.max_failed_starts {
                        let detail = format!(
                            "slot {slot}: {failures} workers in a row died without completing a job; last: {detail}"
                        );
                        self.observer.worker(WorkerEvent::GaveUp {
                            slot,
                            detail: detail.clone(),
                        });
                        return Err(SlotEnd::Failing(detail));
                    }
                    if self.queue.counts().map_err(SlotEnd::Queue)?.is_drained() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits until a job is queued (true) or the queue is drained or the
    /// run stops (false).
    fn wait_for_work(&self) -> Result<bool, SlotEnd> {
        // From 5 ms up to a tick: quick when work follows at once, cheap
        // when the queue stays empty.
        let mut pause = Duration::from_millis(5);
        loop {
            if self.stopping() {
                return Ok(false);
            }
            let c = self.queue.counts().map_err(SlotEnd::Queue)?;
            if c.is_drained() {
                return Ok(false);
            }
            if c.queued > 0 {
                return Ok(true);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(TICK);
        }
    }

    fn spawn(&self, slot: usize, worker: WorkerId) -> Result<(Proc, UnixStream), SlotEnd> {
        let program = &self.config.command[0];
        let (ours, theirs) = UnixStream::pair().map_err(|e| SlotEnd::Spawn(program.clone(), e))?;
        for s in [&ours, &theirs] {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, 1 << 20);
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(s, 1 << 20);
        }
        let fd = theirs.as_raw_fd();
        let page = SharedPage::create("jobmill-worker-state")
            .map_err(|e| SlotEnd::Spawn(program.clone(), e))?;
        let arena = if self.config.arena > 0 {
            let len = self.config.arena.saturating_mul(2);
            let arena = Arena::create("jobmill-worker-arena", len).map_err(|e| {
                SlotEnd::Spawn(
                    program.clone(),
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot create a payload arena of {len} bytes: {e}"),
                    ),
                )
            })?;
            Some(Arc::new(arena))
        } else {
            None
        };
        let mut cmd = Command::new(program);
        cmd.args(&self.config.command[1..])
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .env(FD_ENV, fd.to_string())
            .env(STATE_FD_ENV, page.fd().to_string())
            .env("JOBMILL_WORKER_SLOT", slot.to_string())
            .env("JOBMILL_WORKER_ID", worker.0.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        crate::sys::fd::keep_open_in_child(&mut cmd, fd);
        crate::sys::fd::keep_open_in_child(&mut cmd, page.fd());
        if let Some(arena) = &arena {
            cmd.env(ARENA_FD_ENV, arena.fd().to_string());
            crate::sys::fd::keep_open_in_child(&mut cmd, arena.fd());
        }
        let child = cmd
            .spawn()
            .map_err(|e| SlotEnd::Spawn(program.clone(), e))?;
        drop(theirs);
        let pid = child.id();
        Ok((
            Proc {
                child,
                pid,
                page: Arc::new(page),
                page_granted: false,
                arena,
                arena_granted: false,
            },
            ours,
        ))
    }

    /// One worker process from spawn to reaping.
    fn incarnation(&self, slot: usize, worker: WorkerId) -> Result<Life, SlotEnd> {
        let (mut proc, stream) = self.spawn(slot, worker)?;
        self.observer.spawned(slot, worker, proc.pid);
        let name = format!("worker {} (pid {}, slot {slot})", worker.0, proc.pid);
        let stdout = proc.child.stdout.take();
        let stderr = proc.child.stderr.take();
        std::thread::scope(|s| {
            if let Some(out) = stdout {
                s.spawn(move || self.pipe_lines(slot, worker, Stream::Stdout, out));
            }
            if let Some(err) = stderr {
                s.spawn(move || self.pipe_lines(slot, worker, Stream::Stderr, err));
            }
            self.converse(slot, worker, &name, &mut proc, stream)
        })
    }

    fn pipe_lines(&self, slot: usize, worker: WorkerId, stream: Stream, r: impl Read) {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    self.observer.output(slot, worker, stream, &line);
                }
            }
        }
    }

    /// Handshake, then the feeder and the read loop, then the end of life.
    fn converse(
        &self,
        slot: usize,
        worker: WorkerId,
        name: &str,
        proc: &mut Proc,
        stream: UnixStream,
    ) -> Result<Life, SlotEnd> {
        let write = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                return Ok(self.bury(slot, worker, name, proc, None, Ended::Io(e.to_string()), 0))
            }
        };
        let mut reader = FrameReader::new(stream, self.config.max_frame);
        let mut link = Link {
            slot,
            closed_sent: AtomicBool::new(false),
            flight: Mutex::new(Flight {
                inflight: VecDeque::new(),
                head_since: Instant::now(),
                sent: 0,
                want: false,
                full_at: None,
                dead: false,
                resolving: 0,
                taken: None,
                alloc: None,
                parked: VecDeque::new(),
            }),
            cond: Condvar::new(),
            writer: Mutex::new(Writer {
                stream: write,
                buf: Vec::with_capacity(64 << 10),
            }),
            arena: None,
        };
        if let Err(ended) = self.handshake(&mut reader, &link, name, proc) {
            return Ok(self.bury(slot, worker, name, proc, Some(&link), ended, 0));
        }
        if proc.arena_granted {
            if let Some(arena) = &proc.arena {
                link.arena = Some((Arc::clone(arena), Arc::clone(&proc.page)));
                link.flight().alloc = Some(Extents::new(
                    self.config.arena as u64,
                    self.config.arena_inflight as u64,
                ));
            }
        }
        self.observer.worker(WorkerEvent::Started {
            slot,
            worker,
            pid: proc.pid,
        });
        self.summary_mut().started += 1;
        let mut completed = 0u64;
        let ended = std::thread::scope(|s| {
            let feeder = std::thread::Builder::new()
                .name(format!("jobmill-feed-{slot}"))
                .spawn_scoped(s, || self.feed(worker, &link))
                .expect("spawning a thread");
            let ended = self.read_loop(slot, worker, &mut reader, &link, proc, &mut completed);
            // Stop the feeder before resolving leases, so that none is
            // taken after.
            link.flight().dead = true;
            link.cond.notify_all();
            if !matches!(
                ended,
                Ended::Closed | Ended::Eof | Ended::EarlyExit | Ended::Refused(_)
            ) {
                proc.kill_group();
            }
            let _ = link.writer().stream.shutdown(std::net::Shutdown::Both);
            match feeder.join() {
                Ok(Err(e)) => Ended::Queue(e),
                _ => ended,
            }
        });
        Ok(self.bury(slot, worker, name, proc, Some(&link), ended, completed))
    }

    fn stopping(&self) -> bool {
        self.stop.level() != StopLevel::Running
    }

    fn summary_mut(&self) -> MutexGuard<'_, Summary> {
        self.summary.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handshake(
        &self,
        reader: &mut FrameReader<UnixStream>,
        link: &Link,
        name: &str,
        proc: &mut Proc,
    ) -> Result<(), Ended> {
        let deadline = Instant::now() + self.config.hello_timeout;
        let raw = loop {
            if self.stop.level() == StopLevel::Killing {
                return Err(Ended::Killed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Ended::Protocol(format!(
                    "sent no HELLO within {:?}",
                    self.config.hello_timeout
                )));
            }
            let _ = reader.get_ref().set_read_timeout(Some(left.min(TICK)));
            match reader.read_frame() {
                Ok(Some(raw)) => break raw,
                Ok(None) => return Err(Ended::EarlyExit),
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(read_error(e)),
            }
        };
        let hello = match decode(&raw, self.config.max_frame) {
            Ok(Decoded::Frame {
                frame: Frame::Hello(h),
                ..
            }) => h,
            Ok(Decoded::Frame { frame, .. }) => {
                return Err(Ended::Protocol(format!(
                    "sent {} instead of HELLO",
                    frame.name()
                )))
            }
            Ok(Decoded::Incomplete { .. }) => unreachable!("whole frames only"),
            Err(e) => return Err(Ended::Protocol(e.to_string())),
        };
        let mut w = link.writer();
        let mut buf = Vec::new();
        if !(MIN_VERSION..=VERSION).contains(&hello.version) {
            let reason = format!(
                "{name} speaks protocol version {}, this coordinator speaks {MIN_VERSION} to {VERSION}",
                hello.version
            );
            let _ = encode(
                &mut buf,
                &Frame::Refuse(Refuse {
                    version: VERSION,
                    reason: reason.as_bytes(),
                }),
                usize::MAX,
            );
            let _ = w.stream.write_all(&buf);
            return Err(Ended::Refused(reason));
        }
        let version = hello.version;
        let mut capabilities = hello.capabilities & CAP_RUNNING_PAGE;
        let arena_wanted = CAP_ARENA | CAP_RUNNING_PAGE;
        if version >= 2 && hello.capabilities & arena_wanted == arena_wanted && proc.arena.is_some()
        {
            capabilities |= CAP_ARENA;
        }
        let arena_len = if capabilities & CAP_ARENA != 0 {
            self.config.arena as u64
        } else {
            0
        };
        let welcome = Welcome {
            version,
            window: self.config.window.min(u32::MAX as usize) as u32,
            max_frame: self.config.max_frame.min(u32::MAX as usize) as u32,
            heartbeat_ms: self
                .config
                .heartbeat
                .map_or(0, |h| h.as_millis().clamp(1, u32::MAX as u128) as u32),
            capabilities,
            arena_threshold: if arena_len > 0 {
                self.config.arena_threshold.min(u32::MAX as usize) as u32
            } else {
                0
            },
            arena_jobs: arena_len,
            arena_results: arena_len,
        };
        proc.page_granted = welcome.capabilities & CAP_RUNNING_PAGE != 0;
        proc.arena_granted = welcome.capabilities & CAP_ARENA != 0;
        let _ = encode(&mut buf, &Frame::Welcome(welcome), usize::MAX);
        w.stream
            .write_all(&buf)
            .map_err(|e| Ended::Io(format!("writing WELCOME: {e}")))
    }

    /// Leases up to `n` jobs and encodes them into the writer's buffer,
    /// registering them as in flight. Jobs parked for room in the arena go
    /// first, as many as fit now; more are leased only once none is left
    /// parked. The first new job that does not fit the arena now is parked,
    /// with every job leased after it (they keep their order).
    fn fill(
        &self,
        worker: WorkerId,
        link: &Link,
        w: &mut Writer,
        n: usize,
        first: Option<Lease>,
    ) -> Result<Filled, QueueError> {
        let threshold = self.config.arena_threshold;
        let area = self.config.arena as u64;
        // How a payload travels: Some(len) through the arena, None inline
        // (small, no arena, or a fallback: larger than the job area).
        let via_arena = |lease: &Lease| {
            let len = lease.job.payload.len();
            (link.arena.is_some() && len >= threshold && len as u64 <= area).then_some(len as u64)
        };
        // (lease, its arena region if allocated)
        let mut ready: Vec<(Lease, Option<(u64, u64)>)> = Vec::new();
        // Parked jobs that may go now: (lease, region if via the arena).
        let mut unparked: Vec<(Lease, Option<(u64, u64)>)> = Vec::new();
        let mut leases = Vec::new();
        let mut closed = false;
        let parked_left = {
            let mut f = link.flight();
            let f = &mut *f;
            while unparked.len() < n {
                let Some(front) = f.parked.front() else { break };
                let region = match via_arena(front) {
                    None => None,
                    Some(len) => match f.alloc.as_mut().and_then(|a| a.alloc(len)) {
                        Some(region) => Some(region),
                        None => break,
                    },
                };
                let lease = f.parked.pop_front().expect("front exists");
                unparked.push((lease, region));
            }
            !f.parked.is_empty()
        };
        if let Some(l) = first {
            leases.push(l);
        }
        if !parked_left && unparked.len() + leases.len() < n {
            match self
                .queue
                .try_get_many(worker, n - unparked.len() - leases.len(), &mut leases)
            {
                Ok(_) | Err(TryGetError::Empty) => {}
                Err(TryGetError::Closed) => closed = true,
                Err(TryGetError::Backend(e)) => return Err(e),
            }
        }
        let mut park = Vec::new();
        let mut failed = Vec::new();
        let mut fallbacks = 0;
        let todo = unparked
            .into_iter()
            .map(|(lease, region)| (lease, region, true))
            .chain(leases.into_iter().map(|lease| (lease, None, false)));
        for (lease, region, was_parked) in todo {
            if region.is_some() {
                ready.push((lease, region));
                continue;
            }
            // A new job waits behind the parked ones, in order.
            if !was_parked && (parked_left || !park.is_empty()) {
                park.push(lease);
                continue;
            }
            let len = lease.job.payload.len() as u64;
            if link.arena.is_none() || lease.job.payload.len() < threshold {
                ready.push((lease, None));
            } else if len > area {
                // Never fits: inline if the frame limit allows.
                if job_body_len(lease.job.payload.len()) > self.config.max_frame {
                    let message = format!(
                        "payload of {len} bytes exceeds both the worker arena's job area \
                         ({area} bytes) and the frame limit ({} bytes)",
                        self.config.max_frame
                    );
                    failed.push((lease, message));
                } else {
                    fallbacks += 1;
                    ready.push((lease, None));
                }
            } else {
                let got = link.flight().alloc.as_mut().and_then(|a| a.alloc(len));
                match got {
                    Some(region) => ready.push((lease, Some(region))),
                    None => park.push(lease),
                }
            }
        }
        if !park.is_empty() {
            link.flight().parked.extend(park);
        }
        let mut sendable = Vec::with_capacity(ready.len());
        let mut arena_jobs = 0;
        for (lease, region) in ready {
            let j = &lease.job;
            let encoded = match (region, &link.arena) {
                (Some((off, alloc_len)), Some((arena, _))) => {
                    // The region is ours until the job is answered: nobody
                    // else writes it now.
                    match arena.write(off as usize, &j.payload) {
                        Ok(()) => {
                            encode_job_arena(
                                &mut w.buf,
                                j.id.0,
                                j.seq,
                                j.attempts,
                                off,
                                j.payload.len() as u64,
                            );
                            arena_jobs += 1;
                            Ok(())
                        }
                        Err(e) => {
                            if let Some(a) = link.flight().alloc.as_mut() {
                                a.free(off, alloc_len);
                            }
                            Err(format!(
                                "cannot copy the payload into the worker arena: {e}"
                            ))
                        }
                    }
                }
                _ => encode_job(
                    &mut w.buf,
                    j.id.0,
                    j.seq,
                    j.attempts,
                    &j.payload,
                    self.config.max_frame,
                )
                .map_err(|_| {
                    format!(
                        "payload of {} bytes exceeds the worker frame limit of {} bytes",
                        j.payload.len(),
                        self.config.max_frame
                    )
                }),
            };
            match encoded {
                Ok(()) => {
                    self.observer.sent(link.slot, worker, &lease.job);
                    sendable.push((lease, region));
                }
                Err(message) => failed.push((lease, message)),
            }
        }
        for (lease, message) in failed {
            let reason = FailReason::Reported { message };
            let d = self.queue.fail(&lease, reason.clone())?;
            self.observer.outcome(Outcome {
                slot: link.slot,
                worker,
                job: lease.job.clone(),
                kind: OutcomeKind::Failed {
                    reason,
                    disposition: d,
                },
            });
        }
        let count = sendable.len();
        if arena_jobs + fallbacks > 0 {
            let mut s = self.summary_mut();
            s.arena_jobs += arena_jobs;
            s.arena_fallbacks += fallbacks;
        }
        if count > 0 {
            let now = Instant::now();
            let mut f = link.flight();
            if f.inflight.is_empty() {
                f.head_since = now;
            }
            for (lease, region) in sendable {
                let index = f.sent;
                f.sent += 1;
                f.inflight.push_back(InFlight {
                    lease,
                    index,
                    sent: now,
                    region,
                });
            }
            f.want = false;
        }
        Ok(Filled { count, closed })
    }

    /// Writes CLOSED once.
    fn push_closed(link: &Link, w: &mut Writer) {
        if !link.closed_sent.swap(true, Ordering::SeqCst) {
            encode_empty(&mut w.buf, kind::CLOSED);
        }
    }

    fn write_out(w: &mut Writer) -> bool {
        if w.buf.is_empty() {
            return true;
        }
        let ok = w.stream.write_all(&w.buf).is_ok();
        w.buf.clear();
        ok
    }

    /// The feeder thread: keeps the window full.
    fn feed(&self, worker: WorkerId, link: &Link) -> Result<(), QueueError> {
        let window = self.config.window;
        let refill = (window / 2).max(1);
        loop {
            // Wait for room in the window, or a worker asking.
            let n = {
                let mut f = link.flight();
                loop {
                    if f.dead {
                        return Ok(());
                    }
                    match self.stop.level() {
                        StopLevel::Killing => return Ok(()),
                        StopLevel::Draining => {
                            if f.inflight.is_empty() {
                                drop(f);
                                let mut w = link.writer();
                                Self::push_closed(link, &mut w);
                                Self::write_out(&mut w);
                                return Ok(());
                            }
                        }
                        _ => {
                            let free = window.saturating_sub(f.inflight.len() + f.resolving);
                            if let Some(next) = f.parked.front() {
                                // Jobs wait for room in the arena: send them
                                // once the first fits (it always does when
                                // nothing is in flight), and never before the
                                // outcomes just taken are reported (the
                                // journal's gate).
                                let len = next.job.payload.len() as u64;
                                let fits = f.alloc.as_ref().is_none_or(|a| a.fits(len));
                                if (fits || f.inflight.is_empty()) && f.resolving == 0 {
                                    break free.max(1);
                                }
                            } else if free >= refill || f.want {
                                break free.max(1);
                            }
                        }
                    }
                    f = link
                        .cond
                        .wait_timeout(f, TICK)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            let mut w = link.writer();
            // A POLL answered meanwhile may have filled the window.
            let n = {
                let f = link.flight();
                let free = window.saturating_sub(f.inflight.len());
                if f.parked.is_empty() && !f.want {
                    n.min(free)
                } else {
                    n
                }
            };
            if n == 0 {
                continue;
            }
            let filled = self.fill(worker, link, &mut w, n, None)?;
            if filled.closed {
                Self::push_closed(link, &mut w);
            }
            let closed = filled.closed;
            if filled.count == 0 && !closed && !link.flight().parked.is_empty() {
                // Still waiting for room in the arena.
                drop(w);
                continue;
            }
            if filled.count == 0 && !closed {
                let sent_before = link.flight().sent;
                drop(w);
                // Nothing queued: wait for a job, outside the writer lock so
                // that POLLs are answered meanwhile.
                match self.queue.get(worker, Some(TICK)) {
                    Ok(lease) => {
                        let mut w = link.writer();
                        // A POLL answered while we waited may have filled
                        // the window, or sent jobs queued after this one:
                        // the job goes back to the front, so that the
                        // worker gets its jobs in queue order.
                        let full = {
                            let f = link.flight();
                            f.sent != sent_before
                                || f.parked.is_empty() && !f.want && f.inflight.len() >= window
                        };
                        if full {
                            self.queue.release(&lease)?;
                            continue;
                        }
                        let filled = self.fill(worker, link, &mut w, n, Some(lease))?;
                        if filled.closed {
                            Self::push_closed(link, &mut w);
                        }
                        if !Self::write_out(&mut w) {
                            return Ok(());
                        }
                    }
                    Err(GetError::Timeout) => {}
                    Err(GetError::Closed) => {
                        let mut w = link.writer();
                        Self::push_closed(link, &mut w);
                        Self::write_out(&mut w);
                        return Ok(());
                    }
                    Err(GetError::Backend(e)) => return Err(e),
                }
                continue;
            }
            if !Self::write_out(&mut w) || closed {
                return Ok(());
            }
        }
    }

    /// Answers a POLL: the jobs available now, up to the window, then
    /// POLL_END. With the window full, the first answer is empty: every job
    /// in flight was written before it (under the writer lock), so the jobs
    /// the feeder sent while the POLL was on its way reach the worker before
    /// POLL_END, and one more would wait behind them while another worker
    /// may be idle. A worker that asks again with nothing sent since holds
    /// those jobs itself (it takes several before answering): it gets one
    /// past the window (at least one if any is queued), so that it never
    /// waits for nothing.
    fn answer_poll(&self, worker: WorkerId, link: &Link) -> Result<(), Ended> {
        let mut w = link.writer();
        let (n, empty_flight) = {
            let mut f = link.flight();
            let free = self.config.window.saturating_sub(f.inflight.len());
            let n = if free > 0 || f.full_at == Some(f.sent) {
                free.max(1)
            } else {
                f.full_at = Some(f.sent);
                0
            };
            (n, f.inflight.is_empty())
        };
        let mut got = 0;
        if self.stopping() {
            if empty_flight {
                Self::push_closed(link, &mut w);
            }
        } else if n > 0 {
            let filled = self
                .fill(worker, link, &mut w, n, None)
                .map_err(Ended::Queue)?;
            got = filled.count;
            if filled.closed {
                Self::push_closed(link, &mut w);
            }
        }
        encode_empty(&mut w.buf, kind::POLL_END);
        if got == 0 && n > 0 {
            link.flight().want = true;
            link.cond.notify_one();
        }
        // A failed write means the worker is gone or going; the read side
        // sees the end of the channel and decides what it was.
        Self::write_out(&mut w);
        Ok(())
    }

    /// Reads frames until the worker's channel ends or something goes wrong.
    fn read_loop(
        &self,
        slot: usize,
        worker: WorkerId,
        reader: &mut FrameReader<UnixStream>,
        link: &Link,
        proc: &Proc,
        completed: &mut u64,
    ) -> Ended {
        let mut last_heard = Instant::now();
        let silence = self.config.heartbeat.map(|h| h * 4);
        let mut resolved = Vec::new();
        // The running job as last seen on the state page, and since when.
        let mut running = (0u64, Instant::now());
        let mut poll_every = TICK;
        if let Some(t) = self.config.timeout {
            poll_every = poll_every.min(t / 2);
        }
        if let Some(h) = self.config.heartbeat {
            poll_every = poll_every.min(h);
        }
        let _ = reader
            .get_ref()
            .set_read_timeout(Some(poll_every.max(Duration::from_millis(1))));
        loop {
            // Deadlines: the oldest job's timeout, and the heartbeat.
            let now = Instant::now();
            if let Some(timeout) = self.config.timeout {
                if let Some(id) = proc.running() {
                    // Exact: the worker says which job it runs.
                    if id != running.0 {
                        running = (id, now);
                    } else if id != 0 && now >= running.1 + timeout {
                        return Ended::Timeout;
                    }
                } else {
                    // The oldest unanswered job is taken to be running
                    // since the previous one was answered.
                    let f = link.flight();
                    if let Some(head) = f.inflight.front() {
                        if now >= head.sent.max(f.head_since) + timeout {
                            return Ended::Timeout;
                        }
                    }
                }
            }
            if let Some(silence) = silence {
                let holding = !link.flight().inflight.is_empty();
                if holding && now >= last_heard + silence {
                    return Ended::Silent;
                }
            }
            if self.stop.level() == StopLevel::Killing {
                return Ended::Killed;
            }
            let raw = match reader.read_frame() {
                Ok(Some(raw)) => raw,
                Ok(None) => {
                    return if link.closed_sent.load(Ordering::SeqCst) {
                        Ended::Closed
                    } else {
                        Ended::Eof
                    }
                }
                Err(e) if e.is_timeout() => continue,
                Err(e) => return read_error(e),
            };
            last_heard = Instant::now();
            let frame = match decode(&raw, self.config.max_frame) {
                Ok(Decoded::Frame { frame, .. }) => frame,
                Ok(Decoded::Incomplete { .. }) => unreachable!("whole frames only"),
                Err(e) => return Ended::Protocol(e.to_string()),
            };
            let step = match frame {
                Frame::Result(r) => {
                    self.take_results(link, [(r.id, Ok(r.payload))], &raw, &mut resolved)
                }
                Frame::Failure(f) => {
                    self.take_results(link, [(f.id, Err(f.message))], &raw, &mut resolved)
                }
                Frame::Batch(b) => self.take_results(
                    link,
                    b.iter().map(|e| match e {
                        BatchEntry::Result(r) => (r.id, Ok(r.payload)),
                        BatchEntry::Failure(f) => (f.id, Err(f.message)),
                    }),
                    &raw,
                    &mut resolved,
                ),
                Frame::Poll => {
                    if let Err(e) = self.answer_poll(worker, link) {
                        return e;
                    }
                    Ok(false)
                }
                Frame::Leaving { taken } => {
                    link.flight().taken = Some(taken);
                    Ok(false)
                }
                Frame::Heartbeat { .. } => Ok(false),
                other => Err(format!(
                    "sent {}, which only a coordinator sends",
                    other.name()
                )),
            };
            let refill = match step {
                Ok(refill) => refill,
                Err(detail) => return Ended::Protocol(detail),
            };
            let reported = self.report(slot, worker, &mut resolved, completed);
            link.flight().resolving = 0;
            if let Err(e) = reported {
                return Ended::Queue(e);
            }
            // Only once the outcomes are reported (and so recorded by the
            // journal's observer) may the freed window be refilled: the
            // journal's durability gate counts on it.
            if refill {
                link.cond.notify_one();
            }
        }
    }

    /// Removes the named jobs from the in-flight list (a protocol error if
    /// one is not there), frees their payloads' arena regions, and queues
    /// their outcomes in `resolved`. Results in the arena are copied out,
    /// and their count published on the state page so that the worker can
    /// reuse the space. Returns whether the sender should be woken to
    /// refill the window or send parked jobs (after the outcomes are
    /// reported).
    fn take_results<'r>(
        &self,
        link: &Link,
        entries: impl IntoIterator<Item = (u64, Result<Payload<'r>, &'r [u8]>)>,
        raw: &Bytes,
        resolved: &mut Vec<(Lease, Result<Bytes, String>)>,
    ) -> Result<bool, String> {
        // Copy arena results out first, without holding the lock.
        let mut arena_results = 0u64;
        let mut released = 0u64;
        let mut outcomes = Vec::new();
        for (id, outcome) in entries {
            let outcome = match outcome {
                Ok(Payload::Inline(bytes)) => Ok(raw.slice_ref(bytes)),
                Ok(Payload::Arena { offset, len }) => {
                    let Some((arena, _)) = &link.arena else {
                        return Err(format!(
                            "sent an arena result for job {id} without an arena"
                        ));
                    };
                    let area = self.config.arena as u64;
                    let inside = offset >= area
                        && offset.checked_add(len).is_some_and(|end| end <= 2 * area);
                    if !inside {
                        return Err(format!(
                            "sent a result for job {id} at {offset}+{len}, outside its result area"
                        ));
                    }
                    arena_results += 1;
                    let copied = match arena.copy_out(offset as usize, len as usize) {
                        Ok(v) => Bytes::from(v),
                        Err(e) => return Err(format!("result of job {id}: {e}")),
                    };
                    // Before the worker may reuse it (the count below).
                    released += release_beyond_keep(arena, area, offset, len);
                    Ok(copied)
                }
                Err(msg) => Err(String::from_utf8_lossy(msg).into_owned()),
            };
            outcomes.push((id, outcome));
        }
        if arena_results > 0 {
            if let Some((_, page)) = &link.arena {
                let consumed = page.load(RESULTS_CONSUMED_SLOT);
                page.store(RESULTS_CONSUMED_SLOT, consumed + arena_results);
            }
            self.summary_mut().arena_results += arena_results;
        }
        let mut f = link.flight();
        let before = f.inflight.len();
        let head = f.inflight.front().map(|h| h.index);
        let mut freed = false;
        for (id, outcome) in outcomes {
            let Some(pos) = f.inflight.iter().position(|x| x.lease.job.id.0 == id) else {
                return Err(format!(
                    "reported an outcome for job {id}, which it does not hold"
                ));
            };
            let held = f.inflight.remove(pos).expect("position is in range");
            if let (Some((off, n)), Some(alloc)) = (held.region, f.alloc.as_mut()) {
                // Before the allocator may hand the region out again.
                if let Some((arena, _)) = &link.arena {
                    released += release_beyond_keep(arena, 0, off, n);
                }
                alloc.free(off, n);
                freed = true;
            }
            f.resolving += 1;
            resolved.push((held.lease, outcome));
        }
        let unpark = freed && !f.parked.is_empty();
        if released > 0 {
            self.summary_mut().arena_released += released;
        }
        if f.inflight.front().map(|h| h.index) != head {
            f.head_since = Instant::now();
        }
        let window = self.config.window;
        let refill = (window / 2).max(1);
        let free_before = window.saturating_sub(before);
        let free_after = window.saturating_sub(f.inflight.len());
        drop(f);
        Ok(unpark || free_before < refill && free_after >= refill || self.stopping())
    }

    /// Applies resolved outcomes to the queue and reports them.
    fn report(
        &self,
        slot: usize,
        worker: WorkerId,
        resolved: &mut Vec<(Lease, Result<Bytes, String>)>,
        completed: &mut u64,
    ) -> Result<(), QueueError> {
        if resolved.is_empty() {
            return Ok(());
        }
        let mut done = 0;
        let mut failed = 0;
        // Completions in one call to the queue, failures one by one.
        let (oks, fails): (Vec<_>, Vec<_>) = resolved.drain(..).partition(|(_, o)| o.is_ok());
        if !oks.is_empty() {
            let leases: Vec<Lease> = oks.iter().map(|(l, _)| l.clone()).collect();
            let completions = self.queue.complete_many(&leases)?;
            for ((lease, outcome), completion) in oks.into_iter().zip(completions) {
                done += 1;
                let Ok(result) = outcome else { continue };
                self.observer.outcome(Outcome {
                    slot,
                    worker,
                    job: lease.job,
                    kind: OutcomeKind::Done { result, completion },
                });
            }
        }
        for (lease, outcome) in fails {
            let Err(message) = outcome else { continue };
            failed += 1;
            let reason = FailReason::Reported { message };
            let disposition = self.queue.fail(&lease, reason.clone())?;
            self.observer.outcome(Outcome {
                slot,
                worker,
                job: lease.job,
                kind: OutcomeKind::Failed {
                    reason,
                    disposition,
                },
            });
        }
        *completed += done + failed;
        let mut s = self.summary_mut();
        s.completed += done;
        s.reported_failures += failed;
        Ok(())
    }

    /// Ends a worker's life: reaps it, resolves its in-flight jobs, reports.
    #[allow(clippy::too_many_arguments)]
    fn bury(
        &self,
        slot: usize,
        worker: WorkerId,
        name: &str,
        proc: &mut Proc,
        link: Option<&Link>,
        ended: Ended,
        completed: u64,
    ) -> Life {
        if !matches!(
            ended,
            Ended::Closed | Ended::Eof | Ended::EarlyExit | Ended::Refused(_)
        ) {
            proc.kill_group();
        }
        self.observer.reaping(slot, worker, proc.pid);
        let status = proc.reap(EXIT_GRACE);
        let (inflight, taken, parked) = match link {
            Some(link) => {
                let mut f = link.flight();
                (
                    std::mem::take(&mut f.inflight),
                    f.taken,
                    std::mem::take(&mut f.parked),
                )
            }
            None => (VecDeque::new(), None, VecDeque::new()),
        };
        // Jobs that waited for room in the arena were never sent.
        for lease in &parked {
            let _ = self.queue.release(lease);
        }
        // The arena goes with the worker (a replacement gets a fresh one):
        // whatever its unanswered jobs held there is reclaimed.
        let reclaimed: u64 = inflight
            .iter()
            .filter(|h| h.region.is_some())
            .map(|h| h.lease.job.payload.len() as u64)
            .sum();
        if reclaimed > 0 {
            self.summary_mut().arena_reclaimed += reclaimed;
        }
        // Which in-flight jobs did the worker start? If it said LEAVING, the
        // first `taken`; if it keeps the state page, the one named there;
        // otherwise the oldest, since workers answer in order.
        let page_running = proc.running();
        let started = |i: usize, held: &InFlight| match (taken, page_running) {
            (Some(t), _) => held.index < t,
            (None, Some(id)) => held.lease.job.id.0 == id,
            (None, None) => i == 0,
        };
        let running = inflight
            .iter()
            .enumerate()
            .find(|(i, h)| taken.is_none() && started(*i, h))
            .map(|(_, h)| h.lease.job.id);
        let what = match &ended {
            Ended::Closed => format!("{name} finished ({})", describe_status(status)),
            Ended::Eof => format!("{name} {}", describe_status(status)),
            Ended::EarlyExit => format!(
                "{name} {} before the protocol handshake (is it a jobmill worker?)",
                describe_status(status)
            ),
            Ended::Protocol(d) => format!("{name} broke the protocol ({d}) and was killed"),
            Ended::Refused(d) => format!("{name} was refused: {d}"),
            Ended::Io(d) => format!("{name} channel failed ({d}); killed"),
            Ended::Timeout => format!(
                "{name} ran {} past the timeout of {:?} and was killed",
                running.map_or("a job".into(), |id| id.to_string()),
                self.config.timeout.unwrap_or_default()
            ),
            Ended::Silent => format!("{name} stopped heartbeating and was killed"),
            Ended::Killed => format!("{name} was stopped"),
            Ended::Queue(e) => format!("{name} stopped: {e}"),
        };
        let held = inflight.len();
        let detail = match (running, taken) {
            (_, Some(_)) | (None, _) => what.clone(),
            (Some(id), None) => format!("{what} while running {id}"),
        };
        // A worker that said LEAVING told how many jobs it took; without it,
        // the oldest in-flight job is taken to be the one it was running.
        let killed = matches!(ended, Ended::Killed);
        let mut lost_jobs = 0;
        for (i, held) in inflight.iter().enumerate() {
            let was_started = started(i, held);
            if !was_started || killed {
                let _ = self.queue.release(&held.lease);
                continue;
            }
            lost_jobs += 1;
            let reason = match ended {
                Ended::Timeout if Some(held.lease.job.id) == running => FailReason::Timeout,
                _ => FailReason::WorkerLost {
                    detail: detail.clone(),
                },
            };
            match self.queue.fail(&held.lease, reason.clone()) {
                Ok(disposition) => self.observer.outcome(Outcome {
                    slot,
                    worker,
                    job: held.lease.job.clone(),
                    kind: OutcomeKind::Failed {
                        reason,
                        disposition,
                    },
                }),
                Err(_) => {
                    // The backend failed; worker_lost below tries again.
                }
            }
        }
        // Anything still leased to this incarnation (nothing, normally).
        if let Ok(rest) = self.queue.worker_lost(worker, &detail) {
            lost_jobs += rest.len();
        }
        let clean_exit = status.success() && lost_jobs == 0;
        let life = match ended {
            Ended::Closed => Life::Done,
            Ended::Killed => Life::Done,
            Ended::Eof if clean_exit => Life::Left,
            _ => Life::Lost {
                progressed: completed > 0,
                detail: detail.clone(),
            },
        };
        let lost = matches!(life, Life::Lost { .. });
        if lost {
            self.summary_mut().lost += 1;
        }
        let detail = if held > 0 && lost {
            format!(
                "{detail}; {held} job(s) were in flight, {lost_jobs} counted as failed attempts"
            )
        } else {
            detail
        };
        self.observer.worker(WorkerEvent::Ended {
            slot,
            worker,
            lost,
            detail,
        });
        life
    }
}

/// How an incarnation ended, for the slot's decision.
enum Life {
    /// Told CLOSED (or stopped): the slot is finished.
    Done,
    /// Exited cleanly on its own with nothing lost: replace when needed.
    Left,
    /// Died: replace now, unless the slot keeps failing.
    Lost {
        /// Whether it completed at least one job.
        progressed: bool,
        /// What happened.
        detail: String,
    },
}

/// Gives back the memory of the part of a free region `offset, len` that
/// lies beyond [`ARENA_KEEP`] bytes from its area's start `area_start`.
/// Returns the bytes released.
fn release_beyond_keep(arena: &Arena, area_start: u64, offset: u64, len: u64) -> u64 {
    let keep_end = area_start + ARENA_KEEP;
    let end = offset + len;
    if end <= keep_end {
        return 0;
    }
    let start = offset.max(keep_end);
    // Failing to punch a hole only costs memory.
    match arena.release(start as usize, (end - start) as usize) {
        Ok(()) => end - start,
        Err(_) => 0,
    }
}

fn read_error(e: ReadError) -> Ended {
    match e {
        // A process killed with unread data in its socket resets the
        // connection: that is its end, like EOF.
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ended::Eof,
        ReadError::Io(e) => Ended::Io(e.to_string()),
        other => Ended::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_extents_coalesce_back_into_the_whole_area() {
        let mut a = Extents::new(1 << 20, u64::MAX);
        let x = a.alloc(5000).unwrap();
        let y = a.alloc(4096).unwrap();
        let z = a.alloc(1).unwrap();
        assert_eq!((x, y, z), ((0, 8192), (8192, 4096), (12288, 4096)));
        assert_eq!(a.in_use, 16384);
        a.free(y.0, y.1);
        // First fit reuses the lowest hole.
        assert_eq!(a.alloc(10).unwrap(), (8192, 4096));
        a.free(8192, 4096);
        a.free(x.0, x.1);
        a.free(z.0, z.1);
        assert_eq!(a.free, vec![(0, 1 << 20)]);
        assert_eq!((a.in_use, a.count), (0, 0));
        assert!(a.alloc((1 << 20) + 1).is_none());
        assert!(a.alloc(1 << 20).is_some());
    }

    #[test]
    fn the_in_flight_budget_always_allows_two_jobs() {
        let mut a = Extents::new(1 << 30, 1 << 20);
        assert!(a.alloc(64 << 20).is_some());
        assert!(a.alloc(64 << 20).is_some());
        assert!(!a.fits(4096), "over budget with two in flight");
        let mut b = Extents::new(1 << 30, 1 << 20);
        for _ in 0..4 {
            assert!(b.alloc(256 << 10).is_some());
        }
        assert!(b.alloc(1).is_none(), "the budget is full");
    }
}
