//! The queue model and its backends.
//!
//! A [`Queue`] holds jobs between the producer (an input reader, `jobmill
//! submit`) and the consumers (slots, long-lived workers, remote workers).
//! Every backend implements the same narrow trait and follows the same state
//! machine, [`JobState::apply`](crate::job::JobState::apply):
//!
//! - [`memory`]: in-process, bounded, for `jobmill run` on one machine;
//! - [`redis`]: Redis Streams with a consumer group, for many machines.
//!
//! # Close and drain
//!
//! A queue is *open* until [`Queue::close`] is called. After close, `put`
//! fails with [`PutError::Closed`], but consumers keep receiving the jobs
//! that are queued, and jobs that fail and are requeued. A blocking
//! [`Queue::get`] returns [`GetError::Closed`] only when the queue is closed
//! **and drained**: nothing queued and nothing leased. A consumer therefore
//! ends its loop on `Closed` with no sentinel, and no job can be left behind
//! by a consumer that quit early while a peer's lease could still fail.
//!
//! # No false empty
//!
//! [`Queue::try_get`] returns [`TryGetError::Empty`] only when no job is
//! queued at that instant. Once `put` has returned, the job is visible to
//! every consumer until one of them leases it; there is no buffering thread
//! between `put` and visibility (the flaw of Python's `multiprocessing.Queue`).

pub mod memory;
pub mod redis;
pub mod signed;

use std::time::Duration;

use crate::job::{FailReason, Job, JobId, JobState, NewJob, WorkerId};

/// Opaque data a backend attaches to a lease to recognise it later, so that
/// a late acknowledgement of an expired lease can be told apart from the
/// current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LeaseToken {
    /// First backend-defined word.
    pub hi: u64,
    /// Second backend-defined word.
    pub lo: u64,
}

/// A job held by one worker until it is completed, failed or released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job, with `attempts` counting this attempt.
    pub job: Job,
    /// The worker holding the lease.
    pub worker: WorkerId,
    /// The backend's token for this lease.
    pub token: LeaseToken,
}

/// What happened to a job after [`Queue::fail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Back in the queue for another attempt; `attempts` were made so far.
    Requeued {
        /// Attempts made so far.
        attempts: u32,
    },
    /// Out of attempts: the job's final state ([`JobState::Failed`] or
    /// [`JobState::Dead`]), carrying the reason.
    Final(JobState),
    /// The lease had already expired or been resolved (a late report from a
    /// worker presumed lost); nothing changed.
    Stale,
}

/// What happened after [`Queue::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The job is now done, recorded exactly once.
    Recorded,
    /// The lease had already expired or been resolved; the completion was
    /// ignored so that the job is not recorded twice.
    Stale,
}

/// What the worker observed of an attempt, for backends that keep a record
/// of each job (Redis stores it in the job's result record; the in-memory
/// queue ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptInfo {
    /// The host that ran it.
    pub host: Option<String>,
    /// How long it ran, where known.
    pub duration: Option<Duration>,
}

/// Counts of jobs by state, as a backend knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Jobs ever put.
    pub produced: u64,
    /// Jobs waiting to be leased.
    pub queued: u64,
    /// Jobs currently leased.
    pub leased: u64,
    /// Jobs done.
    pub done: u64,
    /// Jobs failed (final).
    pub failed: u64,
    /// Jobs dead (final).
    pub dead: u64,
    /// Whether the queue is closed to producers.
    pub closed: bool,
}

impl Counts {
    /// Closed, with every produced job in a final state.
    pub fn is_drained(&self) -> bool {
        self.closed && self.queued == 0 && self.leased == 0
    }
}

/// Errors of a backend's own machinery (I/O, connection, protocol), as
/// opposed to the expected outcomes modelled by the other error types.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The backend could not be reached or failed an operation.
    #[error("queue backend failed during {operation}: {detail}")]
    Backend {
        /// The operation, e.g. "lease".
        operation: &'static str,
        /// What went wrong, and where (e.g. "redis at HOST:PORT unreachable
        /// for 30.0 s"); the underlying error, if any, is the source.
        detail: String,
        /// The backend's own error (a connection's, a client library's),
        /// kept whole.
        #[source]
        source: Option<crate::events::SharedError>,
    },
    /// The queue is open but nothing is left to do, and its producer
    /// stopped signalling that it is alive without closing the queue.
    #[error("producer lost: queue {queue} is still open, but its producer has not been heard from for {ttl:?}")]
    ProducerLost {
        /// The queue, e.g. its URL (without password).
        queue: String,
        /// How long the producer's liveness signal lasts.
        ttl: Duration,
    },
    /// A payload is larger than the backend accepts.
    #[error("job payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The backend's limit.
        limit: usize,
    },
}

impl QueueError {
    /// A backend failure during `operation` described by `detail`, with no
    /// underlying error.
    pub fn backend(operation: &'static str, detail: impl Into<String>) -> QueueError {
        QueueError::Backend {
            operation,
            detail: detail.into(),
            source: None,
        }
    }

    /// A backend failure during `operation`, described by `detail`, caused
    /// by `source` (kept as the error's source, not copied into the text).
    pub fn backend_caused(
        operation: &'static str,
        detail: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> QueueError {
        QueueError::Backend {
            operation,
            detail: detail.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }
}

/// Why [`Queue::put`] did not enqueue.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The queue was closed; the job was not enqueued and is returned.
    #[error("queue is closed")]
    Closed(NewJob),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] QueueError),
}

/// Why a blocking [`Queue::get`] returned without a job.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Closed and drained: no job will ever be available again.
    #[error("queue is closed and drained")]
    Closed,
    /// The timeout passed with no job available (the queue is not drained).
    #[error("timed out waiting for a job")]
    Timeout,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] QueueError),
}

/// Why [`Queue::try_get`] returned without a job.
#[derive(Debug, thiserror::Error)]
pub enum TryGetError {
    /// No job is queued right now, but the queue is not drained: more may
    /// come (from a producer, or a failed lease being requeued).
    #[error("no job is queued right now")]
    Empty,
    /// Closed and drained.
    #[error("queue is closed and drained")]
    Closed,
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] QueueError),
}

/// The one interface every queue backend implements.
///
/// All methods take `&self`: a queue is shared between a producer and many
/// consumers, across threads (and, for remote backends, across hosts).
pub trait Queue: Send + Sync {
    /// Enqueues a job, blocking while the queue is at capacity
    /// (backpressure on the producer).
    ///
    /// When `put` returns `Ok`, the job is visible to every consumer.
    ///
    /// # Errors
    ///
    /// [`PutError::Closed`] if the queue is closed (also when it is closed
    /// while `put` waits for room); the job comes back in the error.
    fn put(&self, job: NewJob) -> Result<JobId, PutError>;

    /// Leases the next job for `worker`, waiting up to `timeout` (`None`:
    /// forever) for one to be queued.
    ///
    /// # Errors
    ///
    /// [`GetError::Closed`] once the queue is closed and drained;
    /// [`GetError::Timeout`] if `timeout` passed first.
    fn get(&self, worker: WorkerId, timeout: Option<Duration>) -> Result<Lease, GetError>;

    /// Leases the next job for `worker` if one is queued now.
    ///
    /// # Errors
    ///
    /// [`TryGetError::Empty`] if nothing is queued at this instant but the
    /// queue is not drained; [`TryGetError::Closed`] once closed and drained.
    fn try_get(&self, worker: WorkerId) -> Result<Lease, TryGetError>;

    /// Leases up to `max` jobs queued now for `worker`, appending them to
    /// `out` in queue order; returns how many. One call instead of `max`
    /// calls to [`Queue::try_get`] (the default does exactly that; backends
    /// override it to take their lock once, or, on Redis, to make one round
    /// trip).
    ///
    /// # Errors
    ///
    /// As [`Queue::try_get`], when not even one job could be leased.
    fn try_get_many(
        &self,
        worker: WorkerId,
        max: usize,
        out: &mut Vec<Lease>,
    ) -> Result<usize, TryGetError> {
        let mut n = 0;
        while n < max {
            match self.try_get(worker) {
                Ok(lease) => {
                    out.push(lease);
                    n += 1;
                }
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(n)
    }

    /// Marks several leased jobs done, in order; one [`Completion`] per
    /// lease. The default calls [`Queue::complete`] for each; backends
    /// override it to resolve the batch in one step (one lock, or one Redis
    /// script call), each lease still recorded only if it is current.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn complete_many(&self, leases: &[Lease]) -> Result<Vec<Completion>, QueueError> {
        leases.iter().map(|l| self.complete(l)).collect()
    }

    /// Marks a leased job done.
    ///
    /// # Errors
    ///
    /// Only backend failures. A lease that is no longer current gives
    /// `Ok(Completion::Stale)` and changes nothing.
    fn complete(&self, lease: &Lease) -> Result<Completion, QueueError>;

    /// As [`Queue::complete`], with what the worker observed of the attempt
    /// for backends that record it. The default ignores `info`.
    ///
    /// # Errors
    ///
    /// As [`Queue::complete`].
    fn complete_with(&self, lease: &Lease, info: &AttemptInfo) -> Result<Completion, QueueError> {
        let _ = info;
        self.complete(lease)
    }

    /// As [`Queue::complete_many`], with `info` for every lease. The
    /// default ignores `info`.
    ///
    /// # Errors
    ///
    /// As [`Queue::complete_many`].
    fn complete_many_with(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
    ) -> Result<Vec<Completion>, QueueError> {
        let _ = info;
        self.complete_many(leases)
    }

    /// As [`Queue::complete_many_with`], with each job's result (what its
    /// worker answered), one per lease. The default drops the results;
    /// a backend keeps them only when told to (the Redis backend with
    /// [`redis::RedisQueue::keep_results`], for the signed results of
    /// `jobmill.Pool(queue=...)`, see [`crate::sign`]).
    ///
    /// # Errors
    ///
    /// As [`Queue::complete_many`].
    fn complete_many_results(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
        results: &[bytes::Bytes],
    ) -> Result<Vec<Completion>, QueueError> {
        let _ = results;
        self.complete_many_with(leases, info)
    }

    /// As [`Queue::fail`], with what the worker observed of the attempt.
    /// The default ignores `info`.
    ///
    /// # Errors
    ///
    /// As [`Queue::fail`].
    fn fail_with(
        &self,
        lease: &Lease,
        reason: FailReason,
        info: &AttemptInfo,
    ) -> Result<Disposition, QueueError> {
        let _ = info;
        self.fail(lease, reason)
    }

    /// Records a failed attempt; the job is requeued or reaches a final state
    /// per the queue's retry policy.
    ///
    /// # Errors
    ///
    /// Only backend failures. A stale lease gives `Ok(Disposition::Stale)`.
    fn fail(&self, lease: &Lease, reason: FailReason) -> Result<Disposition, QueueError>;

    /// Returns a leased job that was never started; the attempt is not
    /// counted. Used when a consumer stops (first Ctrl-C) holding a lease.
    ///
    /// # Errors
    ///
    /// Only backend failures. A stale lease is ignored.
    fn release(&self, lease: &Lease) -> Result<(), QueueError>;

    /// Fails every lease held by `worker` with [`FailReason::WorkerLost`]:
    /// each is a lost attempt, judged by the lost-worker rule of
    /// [`JobState::apply`](crate::job::JobState::apply) (requeued without
    /// counting against the retries, or dead once lost more than
    /// `max_lost` times). Returns what happened to each job.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn worker_lost(
        &self,
        worker: WorkerId,
        detail: &str,
    ) -> Result<Vec<(JobId, Disposition)>, QueueError>;

    /// Closes the queue to producers. Idempotent. Consumers drain what is
    /// left; blocked producers wake with [`PutError::Closed`].
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn close(&self) -> Result<(), QueueError>;

    /// The current counts by state.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn counts(&self) -> Result<Counts, QueueError>;
}
