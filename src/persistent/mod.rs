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
//!   by line to [`Observer::output`], within a budget per worker
//!   ([`Config::output_limit`], lines cut at 64 KiB; drops reported as
//!   [`WorkerEvent::OutputDropped`]); they never touch the protocol. The
//!   library itself never prints.
//! - **Handshake.** A worker has [`Config::handshake_timeout`] to send
//!   HELLO. When the first worker of every slot fails its handshake the
//!   same way, the command is not a worker: [`run`] gives up at once.
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
//!
//! The code, by concern: `proc.rs` (a worker's life cycle: spawn, handshake,
//! conversation, reaping, replacement), `link.rs` (what a worker's reader
//! and feeder share), `feed.rs` (filling the window), `read.rs` (reading
//! results and applying them to the queue), `output.rs` (relaying worker
//! output within its budget), `blame.rs` (which jobs a dead worker is
//! blamed for). The arena's allocator is [`crate::arena`].

mod blame;
mod feed;
mod link;
mod output;
mod proc;
mod read;

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::job::{FailReason, Job, WorkerId};
use crate::queue::{Completion, Disposition, Queue, QueueError};

/// Default size of each of a worker's two arena areas (job payloads,
/// results): 2 GiB, so that items of 1 GiB pass both ways. The memory file
/// is sparse: only the pages payloads actually use take memory.
pub const DEFAULT_ARENA: usize = 2 << 30;

/// Default threshold from which payloads go through the arena: 64 KiB.
pub const DEFAULT_ARENA_THRESHOLD: usize = 64 << 10;

/// Default soft cap on arena bytes in flight to one worker: 8 MiB.
pub const DEFAULT_ARENA_INFLIGHT: usize = 8 << 20;
/// Default deadline for a new worker's HELLO: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default output budget of a worker: 1 MiB per second.
pub const DEFAULT_OUTPUT_LIMIT: usize = 1 << 20;

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
    /// Deprecated: use [`Config::handshake_timeout`]. If not zero (the
    /// default), it is the handshake deadline instead.
    pub hello_timeout: Duration,
    /// How long a new worker may take to send HELLO (imports, model
    /// loads). If the first worker of every slot fails its handshake the
    /// same way (no HELLO in time, exits first, speaks another protocol),
    /// [`run`] gives up at once with [`PersistentError::WorkersFailing`].
    pub handshake_timeout: Duration,
    /// Each worker's output budget, in bytes per second (bursts of as
    /// much), both streams together: lines over it are dropped and
    /// reported with [`WorkerEvent::OutputDropped`]. Each line costs its
    /// length plus 64 bytes; lines are cut at 64 KiB. 0: no limit.
    pub output_limit: usize,
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
    /// Memory options applied to each worker (`--mem-limit`): a cgroup of
    /// its own, or `RLIMIT_AS` (see [`crate::exec::memory`]). A worker
    /// that dies of memory fails the job it was running with
    /// [`FailReason::OutOfMemory`] or
    /// [`FailReason::MemoryLimit`]
    /// instead of "worker lost".
    pub memory: Option<std::sync::Arc<crate::exec::memory::MemoryControl>>,
    /// Descriptors every worker inherits, under the same numbers (say
    /// which in [`Config::env`]). The caller keeps them open for the run.
    /// The Python pool passes its shared arena this way.
    pub inherit_fds: Vec<std::os::fd::RawFd>,
}

impl Config {
    /// A configuration with defaults: `workers` processes of `command`,
    /// window 16, no timeout, 64 MiB frames, 10 s to say hello, 1 MiB/s
    /// of output per worker, no
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
            hello_timeout: Duration::ZERO,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            heartbeat: None,
            max_failed_starts: 5,
            arena: DEFAULT_ARENA,
            arena_threshold: DEFAULT_ARENA_THRESHOLD,
            arena_inflight: DEFAULT_ARENA_INFLIGHT,
            memory: None,
            inherit_fds: Vec::new(),
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
    /// exited with code 1 while running job 7 (peak RSS 38.5 MiB)" (the
    /// worker's peak resident set, from `wait4`'s rusage, when it did not
    /// end by being told to).
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
    /// A worker printed more than [`Config::output_limit`] allows (or a
    /// line over 64 KiB): `bytes` of its output were dropped since the
    /// last such notice. `detail` says so, naming the worker.
    OutputDropped {
        /// The slot, from 1.
        slot: usize,
        /// Its id.
        worker: WorkerId,
        /// Bytes dropped.
        bytes: u64,
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

    /// A worker started or ended, or its output was dropped. By default
    /// nothing: the library never prints. Report at least
    /// [`WorkerEvent::Ended`] with `lost: true`, [`WorkerEvent::GaveUp`]
    /// and [`WorkerEvent::OutputDropped`] (each has a `detail` line).
    fn worker(&self, event: WorkerEvent) {
        let _ = event;
    }

    /// A line (without its newline) a worker printed, within its output
    /// budget. By default nothing: the library never prints. A command-line
    /// front end shows it, e.g. on stderr as `[worker SLOT] line`.
    fn output(&self, slot: usize, worker: WorkerId, stream: Stream, line: &[u8]) {
        let _ = (slot, worker, stream, line);
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
        first_round: proc::FirstRound::new(config.workers),
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

/// What every thread of a [`run`] shares.
struct Ctx<'a> {
    queue: &'a dyn Queue,
    config: &'a Config,
    observer: &'a dyn Observer,
    stop: &'a dyn StopSource,
    next_worker: AtomicU64,
    summary: Mutex<Summary>,
    first_round: proc::FirstRound,
}

impl Ctx<'_> {
    fn stopping(&self) -> bool {
        self.stop.level() != StopLevel::Running
    }

    fn summary_mut(&self) -> MutexGuard<'_, Summary> {
        self.summary.lock().unwrap_or_else(|e| e.into_inner())
    }
}
