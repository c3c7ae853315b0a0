//! The worker side of the protocol, for Rust programs run by
//! `jobmill run --persistent` (or any [`crate::persistent`] coordinator).
//!
//! A worker is a long-lived process that takes jobs until the queue is
//! closed and drained:
//!
//! ```no_run
//! use jobmill::worker::Worker;
//! # fn main() -> Result<(), jobmill::worker::WorkerError> {
//! let mut worker = Worker::connect()?; // from $JOBMILL_FD
//! while let Some(job) = worker.next_job()? {
//!     let n = job.payload.len();
//!     worker.complete(job, n.to_string().as_bytes())?;
//! }
//! worker.close()
//! # }
//! ```
//!
//! or in one call, [`serve`]:
//!
//! ```no_run
//! jobmill::worker::serve(|job| Ok(job.payload.to_ascii_uppercase())).unwrap();
//! ```
//!
//! # Semantics
//!
//! - [`Worker::get`] blocks for the next job and returns
//!   [`GetError::Closed`] only once the coordinator says no job will ever
//!   come (the queue is closed and drained). There are no sentinels.
//! - [`Worker::try_get`] never returns [`TryGetError::Empty`] while the
//!   coordinator has a job queued: with nothing buffered locally it sends a
//!   POLL and waits for the coordinator's answer, which carries the jobs
//!   it could lease at that instant up to the window; if that answer is
//!   empty it asks once more (a full window is answered with nothing the
//!   first time, one past it the second).
//! - Jobs arrive pipelined (the coordinator keeps a window of them in
//!   flight), and results leave in batches: a batch is written when it is
//!   full, when the worker runs out of jobs, and otherwise within
//!   [`FLUSH_DELAY`] by a background thread, so a result is never held back
//!   while a long job runs.
//! - The id of the job being run is kept on the state page the coordinator
//!   shares (`$JOBMILL_STATE_FD`), so that a crash or a timeout is blamed on
//!   that job, not on finished jobs whose results were still in the batch.
//!   It costs one memory store per job.
//!
//! # Large payloads
//!
//! Payloads of at least the coordinator's threshold (64 KiB by default)
//! come through the worker's shared-memory arena (`$JOBMILL_ARENA_FD`,
//! mapped once): [`Job::payload`](crate::job::Job) is then a view of the
//! arena, not a copy, so reading a 1 GiB item costs no copy at all. Results
//! of that size are copied once into the arena's result area and sent as a
//! reference. See `docs/PAYLOADS.md`.
//!
//! **The view is valid until the job is answered.** Once the job is
//! completed or failed, the coordinator reuses its region for the next
//! job; a clone of the payload kept past that point would see those bytes
//! change. [`Worker::complete`] and [`Worker::fail`] take the job by value
//! for this reason; to keep a payload longer, copy it
//! (`job.payload.to_vec()`). The library counts the live views and warns on
//! stderr (once) when one has outlived its job's answer.

mod arena;
mod connect;
mod jobs;
mod outbox;
mod results;

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::job::{Job, JobId};
use crate::protocol::io::{FrameReader, ReadError};
use crate::protocol::{FD_ENV, VERSION};
use crate::sys::shm::SharedPage;

use arena::ArenaGrant;
use outbox::Outbox;

/// Longest a finished job's result waits in the local batch before the
/// background thread writes it.
pub const FLUSH_DELAY: Duration = Duration::from_millis(2);

/// Why the worker cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The environment variable naming the channel is missing.
    #[error("{FD_ENV} is not set: this program must be started by jobmill as a persistent worker")]
    NotStarted,
    /// The environment variable does not hold a descriptor number.
    #[error("{FD_ENV}={value:?} is not a file descriptor number")]
    BadFd {
        /// The variable's value.
        value: String,
    },
    /// The descriptor cannot be used as the channel.
    #[error("cannot use the jobmill channel: {0}")]
    Channel(io::Error),
    /// The coordinator refused the handshake.
    #[error("the coordinator refused this worker (it speaks protocol version {version}, this library {VERSION}): {reason}")]
    Refused {
        /// The coordinator's protocol version.
        version: u16,
        /// Its reason.
        reason: String,
    },
    /// The coordinator sent something this library does not understand.
    #[error("protocol error from the coordinator: {0}")]
    Protocol(String),
    /// Reading or writing the channel failed.
    #[error("lost the connection to the coordinator: {0}")]
    Io(io::Error),
    /// The coordinator closed the channel without saying CLOSED.
    #[error("the coordinator closed the connection without closing the queue")]
    Disconnected,
    /// A result is larger than the coordinator accepts; the job was reported
    /// as failed instead.
    #[error("result of {id} is {len} bytes, over the coordinator's frame limit of {max} bytes; the job was failed")]
    ResultTooLarge {
        /// The job.
        id: JobId,
        /// The result's size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl From<ReadError> for WorkerError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => WorkerError::Io(e),
            other => WorkerError::Protocol(other.to_string()),
        }
    }
}

/// Why [`Worker::get`] returned no job.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// No job will ever come: the queue is closed and drained (or the run is
    /// stopping). Finish up and exit.
    #[error("the queue is closed and drained")]
    Closed,
    /// The worker cannot go on.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// Why [`Worker::try_get`] returned no job.
#[derive(Debug, thiserror::Error)]
pub enum TryGetError {
    /// The coordinator had no job queued when it answered; more may come.
    #[error("no job is queued right now")]
    Empty,
    /// No job will ever come.
    #[error("the queue is closed and drained")]
    Closed,
    /// The worker cannot go on.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// A connection to the coordinator. See the [module docs](self).
pub struct Worker {
    reader: FrameReader<UnixStream>,
    outbox: Arc<Outbox>,
    flusher: Option<JoinHandle<()>>,
    /// Jobs received and not yet handed out.
    buffer: VecDeque<Job>,
    /// CLOSED was received.
    closed: bool,
    /// POLLs sent and not yet answered by POLL_END.
    polls_pending: u64,
    /// Jobs handed out, for LEAVING.
    taken: u64,
    /// The coordinator's frame cap.
    max_frame: usize,
    window: u32,
    left: bool,
    /// The state page, if the coordinator granted it: the id of the job
    /// being run, so a crash is blamed on the right job.
    page: Option<Arc<SharedPage>>,
    /// The payload arena, if the coordinator granted it.
    arena: Option<ArenaGrant>,
    /// Ids of the jobs received with an arena payload and not answered.
    arena_unanswered: std::collections::HashSet<u64>,
    /// A payload view was seen to outlive its job (warned once).
    warned_views: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("buffered", &self.buffer.len())
            .field("closed", &self.closed)
            .field("taken", &self.taken)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Connects ([`Worker::connect`]) and runs `f` on every job until the queue
/// is closed and drained. `Ok(bytes)` completes the job with that result,
/// `Err(message)` fails it; a panic in `f` fails the job with the panic's
/// message and the worker goes on.
///
/// # Errors
///
/// Any [`WorkerError`] from connecting or from the connection.
pub fn serve<F>(mut f: F) -> Result<(), WorkerError>
where
    F: FnMut(&Job) -> Result<Vec<u8>, String>,
{
    let mut worker = Worker::connect()?;
    while let Some(job) = worker.next_job()? {
        match catch_unwind(AssertUnwindSafe(|| f(&job))) {
            Ok(Ok(result)) => match worker.complete(job, &result) {
                Ok(()) | Err(WorkerError::ResultTooLarge { .. }) => {}
                Err(e) => return Err(e),
            },
            Ok(Err(message)) => worker.fail(job, &message)?,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                worker.fail(job, &format!("panicked: {msg}"))?;
            }
        }
    }
    worker.close()
}
