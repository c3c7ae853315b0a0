//! A typed process pool: run a Rust function over serde-typed items in
//! worker processes of the same binary.
//!
//! ```no_run
//! use jobmill::pool::{self, Pool, Task};
//!
//! // A task: a name the workers know it by, and a function (or a closure
//! // that captures nothing).
//! static SQUARE: Task<u64, u64> = Task::new("square", |x| x * x);
//!
//! fn main() -> Result<(), jobmill::pool::PoolError> {
//!     // First thing in main: in a worker process this serves SQUARE and
//!     // exits; in the program it records the task names and returns.
//!     pool::init(&[&SQUARE]);
//!
//!     let pool = Pool::builder().workers(4).retries(1).build()?;
//!     // Results in input order; the input is read lazily.
//!     let mut total = 0;
//!     for result in pool.map(&SQUARE, 1..=1000) {
//!         total += result?;
//!     }
//!     assert_eq!(total, 333_833_500);
//!     // Results as they come.
//!     let n = pool.map_unordered(&SQUARE, 1..=1000).filter(Result::is_ok).count();
//!     assert_eq!(n, 1000);
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//!
//! On the first `next()` of a map, the [`Pool`] hands it the workers it
//! kept from an earlier map, or starts [`PoolBuilder::workers`] copies of
//! the running program (`std::env::current_exe()`) with [`WORKER_ENV`] in
//! their environment; the map feeds them the items through a bounded [`MemoryQueue`] and the
//! long-lived worker protocol ([`crate::persistent`]); each item carries
//! its task's name. In the workers, [`init`] sees [`WORKER_ENV`], runs the
//! named task on every item it is sent, and exits when the pool closes:
//! that is why it must be called at the top of `main`, before the program
//! does anything else, with every task the program maps. Items and results
//! are serialised with bincode (or JSON, [`Codec`]).
//!
//! # Workers between maps
//!
//! A map that finishes cleanly (its input read to the end and every
//! result in) hands its workers back to the pool, and the next map, of
//! any task, runs on them: no process start, and what a worker set up
//! (a model loaded in a `OnceLock`) stays. The pool keeps one such set;
//! maps that run at the same time start their own. A map dropped before
//! it finished kills its workers instead (so that nothing it queued runs
//! for nobody, and an item stuck forever does not hold a worker). The
//! workers kept are stopped and reaped when the last clone of the pool,
//! and the last iterator, is dropped.
//!
//! # Bounded memory
//!
//! The input iterator is consumed lazily, on the caller's thread (it need
//! not be `Send`), and never more than [`PoolBuilder::buffer`] items ahead of
//! the results yielded: an item is read only when fewer than `buffer` items
//! are read and not yet yielded. For [`Pool::map`] that count includes the
//! results waiting in the reorder buffer for an earlier, slower item, so the
//! reorder buffer holds at most `buffer - 1` results; when it is full, no
//! more input is read until the earliest item's result is yielded
//! (backpressure). An infinite input is fine: take what you need and drop
//! the iterator. Beyond half the buffer, input is read only while no result
//! is waiting, so an expensive input does not hold back ready results.
//!
//! # Failures
//!
//! Each item's outcome is a `Result<R, PoolError>`, and the pool goes on
//! after any of them:
//!
//! - a **panic** in the function is caught in the worker, which carries on;
//!   the item fails with [`PoolError::Panicked`] (message and location);
//! - a worker that **dies** while running an item (`std::process::abort`,
//!   a segfault, `exit`, SIGKILL from the OOM killer or anyone) is replaced.
//!   The item is *lost*, not failed (the lost-worker rule of
//!   [`crate::job`]): it runs again on a fresh worker, up to
//!   [`PoolBuilder::max_lost`] times (default 3), without counting against
//!   the retries; after that it fails with [`PoolError::WorkerDied`]. The
//!   other items the dead worker held are sent again with no attempt
//!   counted;
//! - an item running longer than [`PoolBuilder::timeout`] has its worker
//!   killed and replaced, and fails with [`PoolError::Timeout`].
//!
//! With [`PoolBuilder::retries`]`(n)`, an item that fails (a panic, a
//! timeout, or an input the worker could not decode) is run again, up to
//! `n` more times, before its error is yielded.
//! If a slot's workers die [`PoolBuilder::max_failed_starts`] times in a
//! row without finishing an item (say the program does not call [`init`]
//! first), that slot gives up; once every slot has, the items read and not
//! run end with [`PoolError::NotRun`], and, if input was left unread, the
//! iterator ends with [`PoolError::Stopped`]. Nothing hangs, and the next
//! map starts new workers.
//!
//! # Stopping
//!
//! Dropping an iterator before it finished kills its workers (each is in
//! its own process group) and reaps them before `drop` returns; dropping
//! the pool does the same for the workers it kept. No zombie, no orphan,
//! even with a worker stuck in an endless item. If the program itself
//! dies, by Ctrl-C or even SIGKILL, the kernel kills its workers
//! (`PR_SET_PDEATHSIG`, set by each worker in [`init`]); since they are in
//! their own process groups, the terminal's Ctrl-C does not reach them
//! directly, so the program decides: with Rust's default handling it dies
//! and the workers with it; a program that handles SIGINT itself can drop
//! its iterators and its pool to stop them.
//!
//! Worker output (`println!`, `eprintln!` in the function) is forwarded
//! line by line to the program's stdout and stderr.

mod task;

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::job::{FailReason, NewJob, RetryPolicy, WorkerId};
use crate::persistent::{self, Config, Observer, Outcome, OutcomeKind, Stop, Stream};
use crate::queue::memory::MemoryQueue;
use crate::queue::{Completion, Disposition, Queue};

pub use task::{init, AnyTask, Task, CODEC_ENV, PARENT_ENV, WORKER_ENV};

/// How items and results are serialised between the program and its
/// workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// bincode 1: compact and fast. It cannot decode types that need
    /// `deserialize_any` (`#[serde(untagged)]`, `#[serde(flatten)]`,
    /// `serde_json::Value`); use [`Codec::Json`] for those.
    #[default]
    Bincode,
    /// JSON (serde_json): slower and larger, but handles every serde type.
    Json,
}

impl Codec {
    fn env_value(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Json => "json",
        }
    }

    /// Serialises `value` at the end of `out`.
    ///
    /// # Errors
    ///
    /// The value cannot be serialised with this codec.
    pub fn encode_into<T: Serialize + ?Sized>(
        self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match self {
            Codec::Bincode => bincode::serialize_into(out, value).map_err(|e| e.to_string()),
            Codec::Json => serde_json::to_writer(out, value).map_err(|e| e.to_string()),
        }
    }

    /// Deserialises a value from `bytes`.
    ///
    /// # Errors
    ///
    /// The bytes are not a valid `T` in this codec.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Codec::Bincode => bincode::deserialize(bytes).map_err(|e| e.to_string()),
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// Why an item, or the pool, failed. Item errors name the item by its
/// index in the input, from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The function panicked on the item (on its last allowed attempt). The
    /// worker caught the panic and went on.
    #[error("item {index}: the function panicked (attempt {attempts}): {message}")]
    Panicked {
        /// The item's index in the input.
        index: u64,
        /// Attempts made.
        attempts: u32,
        /// The panic message and its location.
        message: String,
    },
    /// The worker running the item died: it aborted, crashed, exited, or
    /// was killed (e.g. by the OOM killer), on the item's last allowed
    /// attempt. The worker was replaced.
    #[error("item {index}: the worker died (attempt {attempts}): {detail}")]
    WorkerDied {
        /// The item's index in the input.
        index: u64,
        /// Attempts made.
        attempts: u32,
        /// What was observed, e.g. "worker 3 (pid 123, slot 1) was killed
        /// by SIGABRT while running job 8".
        detail: String,
    },
    /// The item ran past [`PoolBuilder::timeout`]; its worker was killed
    /// and replaced.
    #[error("item {index}: timed out after {timeout:?} (attempt {attempts})")]
    Timeout {
        /// The item's index in the input.
        index: u64,
        /// Attempts made.
        attempts: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// The item or its result could not be serialised or deserialised
    /// (in the program or in the worker), or was larger than
    /// [`PoolBuilder::max_frame`].
    #[error("item {index}: {detail}")]
    Codec {
        /// The item's index in the input.
        index: u64,
        /// What failed.
        detail: String,
    },
    /// The pool stopped before the item could be run (every worker slot
    /// gave up, or workers could not be started).
    #[error("item {index} was not run: {detail}")]
    NotRun {
        /// The item's index in the input.
        index: u64,
        /// Why the pool stopped.
        detail: String,
    },
    /// The last item of an iterator whose pool stopped before the input
    /// was exhausted: items from `next` on were not read.
    #[error("the pool stopped; input items from {next} on were not read: {detail}")]
    Stopped {
        /// The index of the first input item not read.
        next: u64,
        /// Why the pool stopped.
        detail: String,
    },
    /// The pool cannot run: bad configuration, [`init`] not called, an
    /// unknown task, or used inside a pool worker. Yielded once, as the
    /// iterator's only item.
    #[error("the pool cannot run: {detail}")]
    Setup {
        /// What is wrong.
        detail: String,
    },
}

impl PoolError {
    /// The index of the item the error is about, if it is about one.
    pub fn index(&self) -> Option<u64> {
        match self {
            PoolError::Panicked { index, .. }
            | PoolError::WorkerDied { index, .. }
            | PoolError::Timeout { index, .. }
            | PoolError::Codec { index, .. }
            | PoolError::NotRun { index, .. } => Some(*index),
            PoolError::Stopped { .. } | PoolError::Setup { .. } => None,
        }
    }
}

/// Configures a [`Pool`]; see [`Pool::builder`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: usize,
    window: usize,
    buffer: Option<usize>,
    retries: u32,
    max_lost: u32,
    timeout: Option<Duration>,
    max_frame: usize,
    max_failed_starts: u32,
    codec: Codec,
    program: Option<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            window: 4,
            buffer: None,
            retries: 0,
            max_lost: crate::job::DEFAULT_MAX_LOST,
            timeout: None,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            max_failed_starts: 5,
            codec: Codec::Bincode,
            program: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl PoolBuilder {
    /// Worker processes (default: the number of CPUs). Each map running
    /// at the same time as another has its own.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Items in flight per worker (default 4): larger pipelines tiny items
    /// better, 1 balances long items best.
    pub fn window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }

    /// Most items read from the input and not yet yielded, per iterator
    /// (default: `max(64, 4 × workers × window)`). Bounds the memory of the
    /// input read ahead and of [`Pool::map`]'s reorder buffer. Raised to
    /// `workers × window` if smaller, so that every worker can be fed.
    pub fn buffer(mut self, n: usize) -> Self {
        self.buffer = Some(n);
        self
    }

    /// Runs a failed item (panic, timeout) up to `n` more times before
    /// yielding its error (default 0).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Runs an item whose worker died while running it again, up to `n`
    /// times, on a fresh worker (default 3); the death after that yields
    /// [`PoolError::WorkerDied`]. Such losses do not count against
    /// [`PoolBuilder::retries`].
    pub fn max_lost(mut self, n: u32) -> Self {
        self.max_lost = n;
        self
    }

    /// Kills (and replaces) a worker whose item runs longer than this; the
    /// item fails with [`PoolError::Timeout`] (default: no timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Largest serialised item or result, in bytes (default 64 MiB);
    /// larger ones fail with [`PoolError::Codec`].
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Consecutive worker deaths without a finished item after which a
    /// worker slot gives up (default 5).
    pub fn max_failed_starts(mut self, n: u32) -> Self {
        self.max_failed_starts = n;
        self
    }

    /// How items and results are serialised (default [`Codec::Bincode`]).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The worker program (default: `std::env::current_exe()`). It must
    /// call [`init`] with the same tasks at the top of its `main`.
    pub fn program(mut self, program: impl Into<OsString>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Arguments for the worker processes (default: none). Useful when the
    /// binary needs arguments to reach the [`init`] call, e.g. a test
    /// binary that must run one test.
    pub fn worker_args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// An extra environment variable for the worker processes.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Checks the configuration and makes the pool. No process is started
    /// until a map is iterated.
    ///
    /// # Errors
    ///
    /// [`PoolError::Setup`] if `workers`, `window` or `max_failed_starts` is
    /// zero, if the program's path cannot be found, or if this process is
    /// itself a pool worker (it would start workers of its own, without
    /// end: call [`init`] first thing in `main`).
    pub fn build(self) -> Result<Pool, PoolError> {
        let setup = |detail: &str| PoolError::Setup {
            detail: detail.into(),
        };
        if let Some(err) = worker_guard() {
            return Err(err);
        }
        if self.workers == 0 || self.window == 0 {
            return Err(setup("workers and window must be at least 1"));
        }
        if self.max_failed_starts == 0 {
            return Err(setup("max_failed_starts must be at least 1"));
        }
        if self.max_frame < 64 {
            return Err(setup("max_frame must be at least 64 bytes"));
        }
        let program = match self.program.clone() {
            Some(p) => p,
            None => std::env::current_exe()
                .map_err(|e| PoolError::Setup {
                    detail: format!("cannot find this program's path to start workers: {e}"),
                })?
                .into_os_string(),
        };
        let per_round = self.workers.saturating_mul(self.window);
        let buffer = self
            .buffer
            .unwrap_or_else(|| per_round.saturating_mul(4).max(64))
            .max(per_round)
            .max(1);
        let mut command = vec![program];
        command.extend(self.args.iter().cloned());
        let mut config = Config::new(command, self.workers);
        config.window = self.window;
        config.timeout = self.timeout;
        config.max_frame = self.max_frame;
        config.max_failed_starts = self.max_failed_starts;
        config.env = self.env.clone();
        config.env.push((WORKER_ENV.into(), "1".into()));
        config
            .env
            .push((CODEC_ENV.into(), self.codec.env_value().into()));
        config
            .env
            .push((PARENT_ENV.into(), std::process::id().to_string().into()));
        Ok(Pool {
            config,
            buffer,
            builder: self,
            idle: Arc::new(Mutex::new(None)),
        })
    }
}

/// An error if this process is a pool worker.
fn worker_guard() -> Option<PoolError> {
    std::env::var_os(WORKER_ENV).map(|_| PoolError::Setup {
        detail: format!(
            "this process is a pool worker ({WORKER_ENV} is set): a pool cannot be used inside a pool worker; \
             the program must call jobmill::pool::init first thing in main"
        ),
    })
}

/// Runs [`Task`]s over items in worker processes; see the
/// [module docs](self).
///
/// Clones share the workers kept between maps; they are stopped and reaped
/// when the last clone (and the last iterator) is dropped.
#[derive(Clone)]
pub struct Pool {
    builder: PoolBuilder,
    config: Config,
    buffer: usize,
    /// The workers of the last map that finished cleanly, kept for the
    /// next one.
    idle: Arc<Mutex<Option<Engine>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("builder", &self.builder)
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A builder with the defaults: one worker per CPU, window 4, buffer
    /// `max(64, 4 × workers × window)`, no retries, no timeout, bincode.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The most items read ahead of the results yielded, per iterator.
    pub fn buffer(&self) -> usize {
        self.buffer
    }

    /// Runs `task` on every item, yielding the results in input order.
    ///
    /// Workers are started on the first `next()`, or taken over from the
    /// last map that finished; see [Workers between maps](self#workers-between-maps).
    /// The iterator yields exactly one `Result` per input item, then ends;
    /// or, if the pool stops (see [`PoolError::Stopped`]), one error per
    /// item read and a last [`PoolError::Stopped`]. Setup problems
    /// ([`init`] not called, `task` not given to it) are yielded as a
    /// single [`PoolError::Setup`].
    pub fn map<A, R, I>(&self, task: &Task<A, R>, items: I) -> Map<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned,
    {
        Map {
            core: Core::new(self, task.name(), items.into_iter()),
            slots: VecDeque::new(),
        }
    }

    /// Runs `task` on every item, yielding each result as soon as it is
    /// ready: `Ok` values carry no index, so return it from the function if
    /// you need it. Otherwise as [`Pool::map`].
    pub fn map_unordered<A, R, I>(
        &self,
        task: &Task<A, R>,
        items: I,
    ) -> MapUnordered<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned,
    {
        MapUnordered {
            core: Core::new(self, task.name(), items.into_iter()),
            pending: HashSet::new(),
            ready: VecDeque::new(),
            _result: std::marker::PhantomData,
        }
    }
}

/// What the coordinator reports to an iterator.
enum Event {
    /// An item's final outcome.
    Outcome(u64, Result<Bytes, PoolError>),
    /// The coordinator returned; `Some` if it stopped abnormally.
    Ended(Option<String>),
}

/// The [`Observer`] of a pool's coordinator: final outcomes go to the
/// iterator, worker output to the program's stdout and stderr.
struct Router {
    tx: Sender<Event>,
    timeout: Option<Duration>,
    gave_up: Arc<AtomicBool>,
}

impl Observer for Router {
    fn outcome(&self, o: Outcome) {
        let index = o.job.seq;
        let attempts = o.job.attempts;
        let result = match o.kind {
            OutcomeKind::Done {
                result,
                completion: Completion::Recorded,
            } => Ok(result),
            OutcomeKind::Done { .. } => return,
            OutcomeKind::Failed {
                reason,
                disposition: Disposition::Final(_),
            } => Err(item_error(index, attempts, reason, self.timeout)),
            OutcomeKind::Failed { .. } => return,
        };
        let _ = self.tx.send(Event::Outcome(index, result));
    }

    fn worker(&self, event: persistent::WorkerEvent) {
        // Deaths reach the caller as item errors; nothing is printed. A
        // slot that gave up makes the engine unfit for another map.
        if let persistent::WorkerEvent::GaveUp { .. } = event {
            self.gave_up.store(true, Ordering::SeqCst);
        }
    }

    fn output(&self, _slot: usize, _worker: WorkerId, stream: Stream, line: &[u8]) {
        let write = |w: &mut dyn Write| {
            let _ = w.write_all(line);
            let _ = w.write_all(b"\n");
        };
        match stream {
            Stream::Stdout => write(&mut std::io::stdout().lock()),
            Stream::Stderr => write(&mut std::io::stderr().lock()),
        }
    }
}

fn item_error(
    index: u64,
    attempts: u32,
    reason: FailReason,
    timeout: Option<Duration>,
) -> PoolError {
    match reason {
        FailReason::Reported { message } => {
            if let Some(m) = message.strip_prefix(task::PANIC_TAG) {
                PoolError::Panicked {
                    index,
                    attempts,
                    message: m.to_string(),
                }
            } else if let Some(m) = message.strip_prefix(task::CODEC_TAG) {
                PoolError::Codec {
                    index,
                    detail: m.to_string(),
                }
            } else {
                // The coordinator's or the worker library's own verdicts:
                // an item or a result over the frame limit.
                PoolError::Codec {
                    index,
                    detail: message,
                }
            }
        }
        FailReason::Timeout => PoolError::Timeout {
            index,
            attempts,
            timeout: timeout.unwrap_or_default(),
        },
        other => PoolError::WorkerDied {
            index,
            attempts,
            detail: match other {
                FailReason::WorkerLost { detail } => detail,
                other => other.to_string(),
            },
        },
    }
}

/// What [`Core::step`] found.
enum Step {
    /// An item's outcome.
    Outcome(u64, Result<Bytes, PoolError>),
    /// An item could not be encoded: its error, in its place.
    Unsent(u64, PoolError),
    /// The coordinator stopped: the items in flight were not run.
    Stopped(String),
    /// Nothing is in flight and nothing more can be read now.
    Idle,
}

/// A coordinator and its workers. One iterator uses it at a time; the pool
/// keeps the last one whose map finished cleanly, for the next map.
/// Dropping it kills the workers and waits until they are reaped.
struct Engine {
    queue: Arc<MemoryQueue>,
    stop: Arc<Stop>,
    rx: Receiver<Event>,
    run: Option<JoinHandle<()>>,
    /// A worker slot gave up: fewer workers than asked are left.
    gave_up: Arc<AtomicBool>,
}

impl Engine {
    fn start(pool: &Pool) -> Result<Engine, PoolError> {
        let (tx, rx) = mpsc::channel();
        let gave_up = Arc::new(AtomicBool::new(false));
        let router = Router {
            tx,
            timeout: pool.builder.timeout,
            gave_up: Arc::clone(&gave_up),
        };
        // Room for every item an iterator may have read and not yielded,
        // so that `put` never blocks.
        let queue = Arc::new(MemoryQueue::new(
            pool.buffer + 1,
            RetryPolicy::with_retries(pool.builder.retries).max_lost(pool.builder.max_lost),
        ));
        let stop = Arc::new(Stop::new());
        let config = pool.config.clone();
        let (q, s) = (Arc::clone(&queue), Arc::clone(&stop));
        let run = std::thread::Builder::new()
            .name("jobmill-pool".into())
            .spawn(move || {
                let result = persistent::run(&*q, &config, &router, &*s);
                let _ = router
                    .tx
                    .send(Event::Ended(result.err().map(|e| e.to_string())));
            })
            .map_err(|e| PoolError::Setup {
                detail: format!("cannot start the pool's coordinator thread: {e}"),
            })?;
        Ok(Engine {
            queue,
            stop,
            rx,
            run: Some(run),
            gave_up,
        })
    }

    /// Whether another map can use it: every slot still runs, and no
    /// event is left over.
    fn reusable(&self) -> bool {
        !self.gave_up.load(Ordering::SeqCst)
            && self.run.as_ref().is_some_and(|h| !h.is_finished())
            && matches!(self.rx.try_recv(), Err(TryRecvError::Empty))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Kill the workers (items in flight are abandoned) and wait until
        // every one is reaped.
        self.stop.kill();
        let _ = self.queue.close();
        if let Some(h) = self.run.take() {
            let _ = h.join();
        }
    }
}

/// The part of an iterator shared by [`Map`] and [`MapUnordered`]: the
/// input and the engine.
struct Core<I> {
    pool: Pool,
    input: Option<I>,
    task: &'static str,
    /// An error to yield instead of starting.
    setup: Option<PoolError>,
    started: bool,
    engine: Option<Engine>,
    /// Items read from the input (the next item's index).
    read: u64,
    /// Items read and not yet yielded.
    unyielded: usize,
    /// Items queued and not yet resolved.
    in_flight: usize,
    /// Why the pool stopped, once it has.
    stopped: Option<String>,
    /// Where items are encoded.
    scratch: Vec<u8>,
}

impl<I: Iterator> Core<I>
where
    I::Item: Serialize,
{
    fn new(pool: &Pool, task: &'static str, input: I) -> Core<I> {
        let setup = worker_guard().or_else(|| match task::registered() {
            None => Some(PoolError::Setup {
                detail: "jobmill::pool::init was not called: call it first thing in main, with every task".into(),
            }),
            Some(names) if !names.contains(&task) => Some(PoolError::Setup {
                detail: format!(
                    "task {task:?} was not given to jobmill::pool::init (given: {names:?}); the workers would not know it"
                ),
            }),
            Some(_) => None,
        });
        Core {
            pool: pool.clone(),
            input: Some(input),
            task,
            setup,
            started: false,
            engine: None,
            read: 0,
            unyielded: 0,
            in_flight: 0,
            stopped: None,
            scratch: Vec::new(),
        }
    }

    /// Takes the pool's idle engine if it can serve, or starts one.
    fn start(&mut self) -> Result<(), PoolError> {
        self.started = true;
        let idle = self
            .pool
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A dead engine is dropped (reaped) here, outside the lock.
        let engine = match idle.filter(Engine::reusable) {
            Some(engine) => engine,
            None => Engine::start(&self.pool)?,
        };
        self.engine = Some(engine);
        Ok(())
    }

    /// Reads one more input item, if the buffer has room and the input
    /// is not exhausted, and queues it. Returns its index, and its error if
    /// it could not be sent.
    fn read_one(&mut self) -> Option<(u64, Option<PoolError>)> {
        if self.unyielded >= self.pool.buffer || self.stopped.is_some() {
            return None;
        }
        let engine = self.engine.as_ref()?;
        let input = self.input.as_mut()?;
        let Some(item) = input.next() else {
            self.input = None;
            return None;
        };
        let index = self.read;
        self.read += 1;
        self.unyielded += 1;
        // The task's name, then the item.
        self.scratch.clear();
        self.scratch.push(self.task.len() as u8);
        self.scratch.extend_from_slice(self.task.as_bytes());
        if let Err(e) = self
            .pool
            .builder
            .codec
            .encode_into(&item, &mut self.scratch)
        {
            let detail = format!("cannot encode the item: {e}");
            return Some((index, Some(PoolError::Codec { index, detail })));
        }
        drop(item);
        // One allocation of the exact size per item; the scratch buffer
        // absorbs the growth while encoding.
        let payload = Bytes::copy_from_slice(&self.scratch);
        if self.scratch.capacity() > 4 << 20 {
            self.scratch = Vec::new();
        }
        if let Err(e) = engine.queue.put(NewJob {
            seq: index,
            payload,
            attempts: 0,
            lost: 0,
            oom: 0,
        }) {
            // Not expected: the queue has room and stays open while the
            // engine runs.
            let detail = format!("cannot queue the item: {e}");
            return Some((index, Some(PoolError::NotRun { index, detail })));
        }
        self.in_flight += 1;
        Some((index, None))
    }

    /// Fills the buffer from the input, then waits for the next event.
    /// `sent` is told of each item queued (for the caller's bookkeeping).
    fn step(&mut self, mut sent: impl FnMut(u64)) -> Step {
        if !self.started {
            if let Err(e) = self.start() {
                return self.stop_reading(e.to_string());
            }
        }
        // Read ahead: up to half the buffer unconditionally (so the workers
        // stay fed), beyond that only while no result is waiting (so that a
        // slow input does not delay results that are ready).
        let mut early = None;
        loop {
            if self.unyielded >= self.pool.buffer / 2 {
                if let Some(engine) = &self.engine {
                    match engine.rx.try_recv() {
                        Ok(event) => {
                            early = Some(event);
                            break;
                        }
                        Err(TryRecvError::Empty) => {}
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            }
            match self.read_one() {
                Some((index, Some(e))) => return Step::Unsent(index, e),
                Some((index, None)) => sent(index),
                None => break,
            }
        }
        let event = match (early, &self.engine) {
            (Some(event), _) => Ok(event),
            (None, _) if self.in_flight == 0 => return Step::Idle,
            (None, Some(engine)) => engine.rx.recv().map_err(|_| ()),
            (None, None) => return Step::Idle,
        };
        match event {
            Ok(Event::Outcome(index, result)) => {
                self.in_flight -= 1;
                Step::Outcome(index, result)
            }
            Ok(Event::Ended(detail)) => {
                self.stop_reading(detail.unwrap_or_else(|| "the pool's workers stopped".into()))
            }
            Err(()) => self.stop_reading("the pool's coordinator thread ended".into()),
        }
    }

    /// The engine stopped (or could not start): nothing more is read, the
    /// items in flight are given up.
    fn stop_reading(&mut self, detail: String) -> Step {
        // Reap what is left of it.
        self.engine = None;
        self.in_flight = 0;
        self.stopped = Some(detail.clone());
        Step::Stopped(detail)
    }

    /// After a stop: the final [`PoolError::Stopped`] if input was left
    /// unread (once).
    fn unread_error(&mut self) -> Option<PoolError> {
        let detail = self.stopped.clone()?;
        let mut input = self.input.take()?;
        input.next()?;
        Some(PoolError::Stopped {
            next: self.read,
            detail,
        })
    }

    fn decode<R: DeserializeOwned>(
        &self,
        index: u64,
        result: Result<Bytes, PoolError>,
    ) -> Result<R, PoolError> {
        let bytes = result?;
        self.pool
            .builder
            .codec
            .decode(&bytes)
            .map_err(|e| PoolError::Codec {
                index,
                detail: format!("cannot decode the result: {e}"),
            })
    }
}

impl<I> Core<I> {
    /// Gives the engine back to the pool if the map finished cleanly (all
    /// input read, nothing in flight); otherwise kills its workers and
    /// reaps them.
    fn finish(&mut self) {
        let Some(engine) = self.engine.take() else {
            return;
        };
        if self.input.is_none() && self.in_flight == 0 && self.stopped.is_none() {
            let previous = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(engine);
            // One idle engine is kept; another one is stopped, outside the
            // lock.
            drop(previous);
        } else {
            drop(engine);
        }
    }
}

impl<I> Drop for Core<I> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The iterator of [`Pool::map`]: results in input order.
pub struct Map<I, R> {
    core: Core<I>,
    /// Results of items `core.read - slots.len()` onwards, in order;
    /// `None` while the item is running.
    slots: VecDeque<Option<Result<R, PoolError>>>,
}

impl<I, R> Iterator for Map<I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.core.setup.take() {
            self.core.input = None;
            self.core.stopped = Some(e.to_string());
            return Some(Err(e));
        }
        loop {
            if let Some(Some(_)) = self.slots.front() {
                let result = self.slots.pop_front().flatten();
                self.core.unyielded -= 1;
                return result;
            }
            if self.slots.is_empty() && self.core.stopped.is_some() {
                return self.core.unread_error().map(Err);
            }
            let head = self.core.read - self.slots.len() as u64;
            let slots = &mut self.slots;
            let step = self.core.step(|_| slots.push_back(None));
            let detail = match step {
                Step::Outcome(index, result) => {
                    let result = self.core.decode(index, result);
                    if let Some(slot) = index
                        .checked_sub(head)
                        .and_then(|i| self.slots.get_mut(i as usize))
                    {
                        *slot = Some(result);
                    }
                    continue;
                }
                Step::Unsent(index, error) => {
                    debug_assert_eq!(index, head + self.slots.len() as u64);
                    self.slots.push_back(Some(Err(error)));
                    continue;
                }
                Step::Stopped(detail) => detail,
                Step::Idle if self.slots.is_empty() => {
                    // Every item read and yielded: the workers go back to
                    // the pool.
                    self.core.finish();
                    return None;
                }
                Step::Idle if self.slots.iter().all(Option::is_some) => continue,
                // Not expected: an item is waiting with nothing in flight.
                Step::Idle => "an item's outcome was lost".to_string(),
            };
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = Some(Err(PoolError::NotRun {
                        index: head + i as u64,
                        detail: detail.clone(),
                    }));
                }
            }
        }
    }
}

impl<I, R> std::fmt::Debug for Map<I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("task", &self.core.task)
            .field("read", &self.core.read)
            .field("waiting", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The iterator of [`Pool::map_unordered`]: results as they come.
pub struct MapUnordered<I, R> {
    core: Core<I>,
    /// Items queued and not yet resolved.
    pending: HashSet<u64>,
    /// Errors ready to be yielded (after a stop).
    ready: VecDeque<PoolError>,
    _result: std::marker::PhantomData<fn() -> R>,
}

impl<I, R> Iterator for MapUnordered<I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.core.setup.take() {
            self.core.input = None;
            self.core.stopped = Some(e.to_string());
            return Some(Err(e));
        }
        loop {
            if let Some(e) = self.ready.pop_front() {
                self.core.unyielded -= 1;
                return Some(Err(e));
            }
            if self.pending.is_empty() && self.core.stopped.is_some() {
                return self.core.unread_error().map(Err);
            }
            let pending = &mut self.pending;
            let step = self.core.step(|index| {
                pending.insert(index);
            });
            let detail = match step {
                Step::Outcome(index, result) => {
                    if self.pending.remove(&index) {
                        self.core.unyielded -= 1;
                        return Some(self.core.decode(index, result));
                    }
                    continue;
                }
                Step::Unsent(_, error) => {
                    self.core.unyielded -= 1;
                    return Some(Err(error));
                }
                Step::Stopped(detail) => detail,
                Step::Idle if self.pending.is_empty() => {
                    // Every item read and yielded: the workers go back to
                    // the pool.
                    self.core.finish();
                    return None;
                }
                // Not expected: items waiting with nothing in flight.
                Step::Idle => "an item's outcome was lost".to_string(),
            };
            let mut left: Vec<u64> = self.pending.drain().collect();
            left.sort_unstable();
            self.ready
                .extend(left.into_iter().map(|index| PoolError::NotRun {
                    index,
                    detail: detail.clone(),
                }));
        }
    }
}

impl<I, R> std::fmt::Debug for MapUnordered<I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapUnordered")
            .field("task", &self.core.task)
            .field("read", &self.core.read)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_codecs_round_trip_a_value() {
        for codec in [Codec::Bincode, Codec::Json] {
            let mut buf = Vec::new();
            codec
                .encode_into(&(7u64, "x".to_string()), &mut buf)
                .unwrap();
            let back: (u64, String) = codec.decode(&buf).unwrap();
            assert_eq!(back, (7, "x".into()));
        }
    }

    #[test]
    fn only_json_decodes_self_describing_values() {
        let v = serde_json::json!({"a": [1, 2]});
        let mut buf = Vec::new();
        Codec::Json.encode_into(&v, &mut buf).unwrap();
        assert_eq!(Codec::Json.decode::<serde_json::Value>(&buf).unwrap(), v);
        let mut buf = Vec::new();
        Codec::Bincode.encode_into(&v, &mut buf).unwrap();
        assert!(Codec::Bincode.decode::<serde_json::Value>(&buf).is_err());
    }

    #[test]
    fn worker_failures_map_to_item_errors() {
        let reported = |m: &str| FailReason::Reported { message: m.into() };
        assert_eq!(
            item_error(4, 2, reported("pool-panic:boom (at a.rs:1:2)"), None),
            PoolError::Panicked {
                index: 4,
                attempts: 2,
                message: "boom (at a.rs:1:2)".into()
            }
        );
        assert_eq!(
            item_error(4, 1, reported("pool-codec:bad item"), None),
            PoolError::Codec {
                index: 4,
                detail: "bad item".into()
            }
        );
        assert!(matches!(
            item_error(4, 1, reported("payload of 9 bytes exceeds the worker frame limit"), None),
            PoolError::Codec { index: 4, detail } if detail.contains("frame limit")
        ));
        let t = Duration::from_secs(3);
        assert_eq!(
            item_error(4, 1, FailReason::Timeout, Some(t)),
            PoolError::Timeout {
                index: 4,
                attempts: 1,
                timeout: t
            }
        );
        let lost = FailReason::WorkerLost {
            detail: "worker 2 was killed by SIGKILL".into(),
        };
        assert_eq!(
            item_error(4, 3, lost, None),
            PoolError::WorkerDied {
                index: 4,
                attempts: 3,
                detail: "worker 2 was killed by SIGKILL".into()
            }
        );
    }

    #[test]
    fn a_zero_sized_pool_is_refused() {
        assert!(matches!(
            Pool::builder().workers(0).build(),
            Err(PoolError::Setup { .. })
        ));
        assert!(matches!(
            Pool::builder().window(0).build(),
            Err(PoolError::Setup { .. })
        ));
    }

    #[test]
    fn the_buffer_can_feed_every_worker() {
        let pool = Pool::builder()
            .workers(3)
            .window(8)
            .buffer(2)
            .build()
            .unwrap();
        assert_eq!(pool.buffer(), 24);
        let pool = Pool::builder().workers(1).window(1).build().unwrap();
        assert_eq!(pool.buffer(), 64);
    }

    #[test]
    fn pools_and_iterators_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Pool>();
        send::<Map<std::ops::Range<u64>, u64>>();
        send::<MapUnordered<std::ops::Range<u64>, u64>>();
    }
}
