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

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::job::{Job, JobId};
use crate::protocol::io::{FrameReader, ReadError};
use crate::protocol::{
    decode, encode, encode_empty, kind, BatchBuilder, Decoded, Frame, Hello, Payload, ARENA_FD_ENV,
    CAP_ARENA, CAP_RUNNING_PAGE, DEFAULT_MAX_FRAME, FD_ENV, RESULTS_CONSUMED_SLOT, STATE_FD_ENV,
    VERSION,
};
use crate::sys::shm::{Arena, SharedPage};

/// Alignment of results in the arena's result area.
const RESULT_ALIGN: u64 = 64;

/// The worker's result area: a ring of regions written in order and
/// consumed by the coordinator in the same order (it counts them on the
/// state page). Restarts at its beginning whenever it is empty, so a few
/// pages stay in use.
#[derive(Debug)]
struct Ring {
    /// Offset of the area in the arena.
    base: u64,
    len: u64,
    /// Where the next region starts, relative to `base`.
    head: u64,
    /// Regions written and not yet consumed, oldest first.
    outstanding: VecDeque<(u64, u64)>,
    /// Regions known consumed.
    seen: u64,
}

impl Ring {
    /// A region of `n` bytes (its offset in the arena), or `None` if there
    /// is no room until the coordinator has consumed more results.
    fn alloc(&mut self, n: u64, consumed: u64) -> Option<u64> {
        while self.seen < consumed && self.outstanding.pop_front().is_some() {
            self.seen += 1;
        }
        let n = n.max(1).div_ceil(RESULT_ALIGN) * RESULT_ALIGN;
        if self.outstanding.is_empty() {
            self.head = 0;
        }
        // Regions never end exactly at the oldest one's start, so that a
        // full ring cannot look empty.
        let start = match self.outstanding.front() {
            None => (n <= self.len).then_some(0)?,
            Some(&(tail, _)) if self.head > tail => {
                if self.head + n <= self.len {
                    self.head
                } else if n < tail {
                    0
                } else {
                    return None;
                }
            }
            Some(&(tail, _)) => {
                if self.head + n < tail {
                    self.head
                } else {
                    return None;
                }
            }
        };
        self.outstanding.push_back((start, start + n));
        self.head = start + n;
        Some(self.base + start)
    }
}

/// The arena as granted by the coordinator.
#[derive(Debug)]
struct ArenaGrant {
    arena: Arc<Arena>,
    page: Arc<SharedPage>,
    threshold: usize,
    jobs_len: u64,
    results_len: u64,
}

/// Longest a finished job's result waits in the local batch before the
/// background thread writes it.
pub const FLUSH_DELAY: Duration = Duration::from_millis(2);

/// A batch is written once it holds this many results.
const BATCH_ENTRIES: usize = 256;

/// A batch is written once its body reaches this many bytes.
const BATCH_BYTES: usize = 64 << 10;

/// Name sent in HELLO.
const NAME: &str = concat!("rust/jobmill ", env!("CARGO_PKG_VERSION"));

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

/// The write side, shared with the background flusher.
struct Outbox {
    state: Mutex<Out>,
    cond: Condvar,
}

struct Out {
    stream: UnixStream,
    buf: Vec<u8>,
    batch: Option<BatchBuilder>,
    /// When the oldest unwritten result was added.
    first_pending: Option<Instant>,
    /// The first write error; every later write reports it.
    failed: Option<io::ErrorKind>,
    max_frame: usize,
    heartbeat: Option<Duration>,
    last_write: Instant,
    stop: bool,
    /// The arena's result area, if granted.
    ring: Option<Ring>,
}

impl Out {
    fn check(&self) -> Result<(), WorkerError> {
        match self.failed {
            Some(kind) => Err(WorkerError::Io(io::Error::new(
                kind,
                "an earlier write to the coordinator failed",
            ))),
            None => Ok(()),
        }
    }

    /// Writes everything buffered (closing an open batch).
    fn flush(&mut self) -> Result<(), WorkerError> {
        self.check()?;
        if let Some(b) = self.batch.take() {
            b.finish(&mut self.buf);
        }
        self.first_pending = None;
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.buf);
        self.buf.clear();
        self.last_write = Instant::now();
        if let Err(e) = result {
            self.failed = Some(e.kind());
            return Err(WorkerError::Io(e));
        }
        Ok(())
    }

    /// Adds a result already written to the arena at `offset` and writes
    /// the batch (a large result is worth a write of its own).
    fn push_arena(&mut self, id: u64, offset: u64, len: u64) -> Result<(), WorkerError> {
        self.check()?;
        loop {
            let batch = match &mut self.batch {
                Some(b) => b,
                None => self
                    .batch
                    .insert(BatchBuilder::begin(&mut self.buf, self.max_frame)),
            };
            match batch.push_result_arena(&mut self.buf, id, offset, len) {
                Ok(()) => break,
                Err(e) if batch.count() == 0 => {
                    return Err(WorkerError::Protocol(format!(
                        "the frame limit of {} bytes is too small for an arena reference",
                        e.max
                    )))
                }
                Err(_) => self.flush()?,
            }
        }
        self.flush()
    }

    /// Adds one result or failure to the open batch; writes when full.
    /// Returns whether the flusher should be woken (first pending entry).
    fn push(&mut self, id: u64, ok: bool, data: &[u8]) -> Result<bool, WorkerError> {
        self.check()?;
        loop {
            let batch = match &mut self.batch {
                Some(b) => b,
                None => self
                    .batch
                    .insert(BatchBuilder::begin(&mut self.buf, self.max_frame)),
            };
            let pushed = if ok {
                batch.push_result(&mut self.buf, id, data)
            } else {
                batch.push_failure(&mut self.buf, id, data)
            };
            match pushed {
                Ok(()) => break,
                Err(e) if batch.count() == 0 => {
                    return Err(WorkerError::ResultTooLarge {
                        id: JobId(id),
                        len: data.len(),
                        max: e.max,
                    })
                }
                // Full: send this batch and start another.
                Err(_) => self.flush()?,
            }
        }
        let batch = self.batch.as_ref().expect("just pushed");
        if batch.count() >= BATCH_ENTRIES || batch.body_len(&self.buf) >= BATCH_BYTES {
            self.flush()?;
            return Ok(false);
        }
        let first = self.first_pending.is_none();
        if first {
            self.first_pending = Some(Instant::now());
        }
        Ok(first)
    }
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Out> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The background thread: writes pending results after [`FLUSH_DELAY`] and
/// heartbeats when asked for.
fn flusher(outbox: Arc<Outbox>) {
    let mut out = outbox.lock();
    loop {
        if out.stop {
            return;
        }
        let now = Instant::now();
        let flush_at = out.first_pending.map(|t| t + FLUSH_DELAY);
        let beat_at = out.heartbeat.map(|h| out.last_write + h);
        let next = match (flush_at, beat_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next {
            None => out = outbox.cond.wait(out).unwrap_or_else(|e| e.into_inner()),
            Some(t) if t > now => {
                out = outbox
                    .cond
                    .wait_timeout(out, t - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            Some(_) => {
                if flush_at.is_some() {
                    // Pending results (due, or the heartbeat is): sending
                    // them is the sign of life. A heartbeat must never be
                    // appended while a batch is open: it would land inside.
                    let _ = out.flush();
                } else if out.failed.is_none() {
                    if let Some(b) = out.batch.take() {
                        b.finish(&mut out.buf);
                    }
                    let _ = encode(&mut out.buf, &Frame::Heartbeat { nonce: 0 }, usize::MAX);
                    let _ = out.flush();
                }
                if out.failed.is_some() {
                    // Nothing more can be written; the main thread will see
                    // the error on its next call.
                    out.heartbeat = None;
                    out.first_pending = None;
                }
            }
        }
    }
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

impl Worker {
    /// Connects through the descriptor named by `$JOBMILL_FD` and performs
    /// the handshake.
    ///
    /// # Errors
    ///
    /// [`WorkerError::NotStarted`] when the variable is missing (the program
    /// was not started by jobmill), [`WorkerError::BadFd`] or
    /// [`WorkerError::Channel`] when it does not name a usable socket, and
    /// the errors of [`Worker::from_stream`].
    pub fn connect() -> Result<Worker, WorkerError> {
        let value = std::env::var(FD_ENV).map_err(|_| WorkerError::NotStarted)?;
        let fd: i32 = value.trim().parse().map_err(|_| WorkerError::BadFd {
            value: value.clone(),
        })?;
        let stream = crate::sys::fd::adopt_inherited_socket(fd).map_err(WorkerError::Channel)?;
        // The state page is optional: without it, crashes are blamed on the
        // oldest unanswered job.
        let page = std::env::var(STATE_FD_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .and_then(|fd| SharedPage::adopt(fd).ok());
        // So is the arena (it needs the page): without it, every payload
        // comes inline.
        let arena = page.as_ref().and_then(|_| {
            std::env::var(ARENA_FD_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .and_then(|fd| Arena::adopt(fd).ok())
        });
        Worker::handshake(stream, page, arena)
    }

    /// Performs the handshake over an already connected stream.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Refused`] if the coordinator refuses this protocol
    /// version, [`WorkerError::Protocol`] if it answers something else,
    /// [`WorkerError::Io`] or [`WorkerError::Disconnected`] if the channel
    /// fails.
    pub fn from_stream(stream: UnixStream) -> Result<Worker, WorkerError> {
        Worker::handshake(stream, None, None)
    }

    fn handshake(
        stream: UnixStream,
        page: Option<SharedPage>,
        arena: Option<Arena>,
    ) -> Result<Worker, WorkerError> {
        let mut write = stream.try_clone().map_err(WorkerError::Channel)?;
        let mut hello = Vec::new();
        encode(
            &mut hello,
            &Frame::Hello(Hello {
                version: VERSION,
                capabilities: match (&page, &arena) {
                    (Some(_), Some(_)) => CAP_RUNNING_PAGE | CAP_ARENA,
                    (Some(_), None) => CAP_RUNNING_PAGE,
                    _ => 0,
                },
                name: NAME.as_bytes(),
            }),
            DEFAULT_MAX_FRAME,
        )
        .expect("a HELLO is small");
        write.write_all(&hello).map_err(WorkerError::Io)?;
        let mut reader = FrameReader::new(stream, DEFAULT_MAX_FRAME);
        let raw = reader.read_frame()?.ok_or(WorkerError::Disconnected)?;
        let welcome = match decode(&raw, DEFAULT_MAX_FRAME)
            .map_err(|e| WorkerError::Protocol(e.to_string()))?
        {
            Decoded::Frame {
                frame: Frame::Welcome(w),
                ..
            } => w,
            Decoded::Frame {
                frame: Frame::Refuse(r),
                ..
            } => {
                return Err(WorkerError::Refused {
                    version: r.version,
                    reason: String::from_utf8_lossy(r.reason).into_owned(),
                })
            }
            Decoded::Frame { frame, .. } => {
                return Err(WorkerError::Protocol(format!(
                    "expected WELCOME, got {}",
                    frame.name()
                )))
            }
            Decoded::Incomplete { .. } => unreachable!("read_frame returns whole frames"),
        };
        let max_frame = welcome.max_frame as usize;
        reader.set_max_frame(max_frame);
        let page = page
            .filter(|_| welcome.capabilities & CAP_RUNNING_PAGE != 0)
            .map(Arc::new);
        let arena = match (arena, &page) {
            (Some(arena), Some(page)) if welcome.capabilities & CAP_ARENA != 0 => {
                let need = welcome.arena_jobs.saturating_add(welcome.arena_results);
                if (arena.len() as u64) < need {
                    return Err(WorkerError::Protocol(format!(
                        "the arena has {} bytes, the coordinator announced {need}",
                        arena.len()
                    )));
                }
                Some(ArenaGrant {
                    arena: Arc::new(arena),
                    page: Arc::clone(page),
                    threshold: welcome.arena_threshold as usize,
                    jobs_len: welcome.arena_jobs,
                    results_len: welcome.arena_results,
                })
            }
            _ => None,
        };
        let ring = arena.as_ref().map(|a| Ring {
            base: a.jobs_len,
            len: a.results_len,
            head: 0,
            outstanding: VecDeque::new(),
            seen: 0,
        });
        let heartbeat =
            (welcome.heartbeat_ms > 0).then(|| Duration::from_millis(welcome.heartbeat_ms.into()));
        let outbox = Arc::new(Outbox {
            state: Mutex::new(Out {
                stream: write,
                buf: Vec::with_capacity(BATCH_BYTES + 1024),
                batch: None,
                first_pending: None,
                failed: None,
                max_frame,
                heartbeat,
                last_write: Instant::now(),
                stop: false,
                ring,
            }),
            cond: Condvar::new(),
        });
        let flusher = {
            let outbox = Arc::clone(&outbox);
            std::thread::Builder::new()
                .name("jobmill-flush".into())
                .spawn(move || flusher(outbox))
                .map_err(WorkerError::Io)?
        };
        Ok(Worker {
            reader,
            outbox,
            flusher: Some(flusher),
            buffer: VecDeque::with_capacity(welcome.window as usize),
            closed: false,
            polls_pending: 0,
            taken: 0,
            max_frame,
            window: welcome.window,
            left: false,
            page,
            arena,
            arena_unanswered: std::collections::HashSet::new(),
            warned_views: false,
        })
    }

    /// The most jobs the coordinator keeps in flight to this worker.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The largest frame body the coordinator accepts (bounds a result).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Handles one raw frame from the coordinator.
    fn handle(&mut self, raw: Bytes) -> Result<(), WorkerError> {
        let frame = match decode(&raw, self.max_frame) {
            Ok(Decoded::Frame { frame, .. }) => frame,
            Ok(Decoded::Incomplete { .. }) => unreachable!("read_frame returns whole frames"),
            Err(e) => return Err(WorkerError::Protocol(e.to_string())),
        };
        match frame {
            Frame::Job(j) => {
                let payload = match j.payload {
                    Payload::Inline(bytes) => raw.slice_ref(bytes),
                    Payload::Arena { offset, len } => {
                        let Some(a) = &self.arena else {
                            return Err(WorkerError::Protocol(format!(
                                "job {} refers to an arena that was not granted",
                                j.id
                            )));
                        };
                        let inside = offset.checked_add(len).is_some_and(|end| end <= a.jobs_len);
                        if !inside {
                            return Err(WorkerError::Protocol(format!(
                                "job {} is at {offset}+{len}, outside the job area of {} bytes",
                                j.id, a.jobs_len
                            )));
                        }
                        // Per the arena contract the coordinator leaves this
                        // region alone until the job is answered.
                        let view = a
                            .arena
                            .bytes(offset as usize, len as usize)
                            .map_err(|e| WorkerError::Protocol(e.to_string()))?;
                        self.arena_unanswered.insert(j.id);
                        view
                    }
                };
                self.buffer.push_back(Job {
                    id: JobId(j.id),
                    seq: j.seq,
                    payload,
                    attempts: j.attempt,
                    lost: 0,
                    oom: 0,
                });
            }
            Frame::PollEnd => self.polls_pending = self.polls_pending.saturating_sub(1),
            Frame::Closed => self.closed = true,
            Frame::Heartbeat { .. } => {}
            other => {
                return Err(WorkerError::Protocol(format!(
                    "unexpected {} frame from the coordinator",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    /// Reads one frame (blocking), then every further frame already
    /// buffered.
    fn pump(&mut self) -> Result<(), WorkerError> {
        let raw = self.reader.read_frame()?.ok_or(WorkerError::Disconnected)?;
        self.handle(raw)?;
        self.drain_buffered()
    }

    /// Handles the frames already buffered, without I/O.
    fn drain_buffered(&mut self) -> Result<(), WorkerError> {
        while self
            .reader
            .has_frame()
            .map_err(|e| WorkerError::Protocol(e.to_string()))?
        {
            let raw = self.reader.read_frame()?.ok_or(WorkerError::Disconnected)?;
            self.handle(raw)?;
        }
        Ok(())
    }

    /// Writes pending results followed by a POLL, in one write.
    fn send_poll(&mut self) -> Result<(), WorkerError> {
        let mut out = self.outbox.lock();
        if let Some(b) = out.batch.take() {
            b.finish(&mut out.buf);
        }
        encode_empty(&mut out.buf, kind::POLL);
        out.flush()?;
        self.polls_pending += 1;
        Ok(())
    }

    /// Warns (once) if more payload views are alive than jobs that may hold
    /// them: a view kept past its job's answer sees the region's next use.
    fn check_views(&mut self) {
        if self.warned_views {
            return;
        }
        if let Some(a) = &self.arena {
            let alive = a.arena.views();
            if alive > self.arena_unanswered.len() {
                self.warned_views = true;
                eprintln!(
                    "jobmill worker: {} payload view(s) outlived their jobs' answers; \
                     the arena reuses that memory for later jobs, so their bytes will \
                     change: copy a payload you keep (job.payload.to_vec())",
                    alive - self.arena_unanswered.len()
                );
            }
        }
    }

    fn pop(&mut self) -> Option<Job> {
        let job = self.buffer.pop_front()?;
        self.taken += 1;
        if let Some(page) = &self.page {
            page.store(0, job.id.0);
        }
        Some(job)
    }

    /// The next job, blocking until one arrives.
    ///
    /// # Errors
    ///
    /// [`GetError::Closed`] once no job will ever come (closed and drained);
    /// [`GetError::Worker`] if the connection fails.
    pub fn get(&mut self) -> Result<Job, GetError> {
        self.check_views();
        // POLLs sent by this call. Two at most: the first answer may be a
        // full window's; the second one's POLL_END means the queue was
        // empty, and the coordinator then sends the next job as soon as
        // there is one (polling on would spin while the queue is empty).
        let mut polled = 0;
        loop {
            if let Some(job) = self.pop() {
                return Ok(job);
            }
            if self.closed {
                self.outbox.lock().flush()?;
                return Err(GetError::Closed);
            }
            self.drain_buffered()?;
            if !self.buffer.is_empty() || self.closed {
                continue;
            }
            if self.polls_pending == 0 && polled < 2 {
                self.send_poll()?;
                polled += 1;
            }
            self.pump()?;
        }
    }

    /// Like [`get`](Worker::get) but gives `None` when the queue is closed
    /// and drained, for `while let Some(job) = worker.next_job()?`.
    ///
    /// # Errors
    ///
    /// [`WorkerError`] if the connection fails.
    pub fn next_job(&mut self) -> Result<Option<Job>, WorkerError> {
        match self.get() {
            Ok(job) => Ok(Some(job)),
            Err(GetError::Closed) => Ok(None),
            Err(GetError::Worker(e)) => Err(e),
        }
    }

    /// The next job if the coordinator has one queued now.
    ///
    /// With jobs buffered locally this does no I/O. Otherwise it writes
    /// pending results and a POLL, and waits for the coordinator's answer
    /// (one round trip; two when the queue is empty or the worker holds its
    /// whole window).
    ///
    /// # Errors
    ///
    /// [`TryGetError::Empty`] if the coordinator had no job queued when it
    /// answered; [`TryGetError::Closed`] once no job will ever come;
    /// [`TryGetError::Worker`] if the connection fails.
    pub fn try_get(&mut self) -> Result<Job, TryGetError> {
        self.check_views();
        if let Some(job) = self.pop() {
            return Ok(job);
        }
        self.drain_buffered()?;
        if let Some(job) = self.pop() {
            return Ok(job);
        }
        if self.closed {
            self.outbox.lock().flush()?;
            return Err(TryGetError::Closed);
        }
        // A fresh POLL: only an answer given after this call began may
        // justify "empty". Answers come in order, so ours is the last
        // POLL_END outstanding.
        self.send_poll()?;
        while self.buffer.is_empty() && !self.closed && self.polls_pending > 0 {
            self.pump()?;
        }
        if self.buffer.is_empty() && !self.closed {
            // A coordinator answers a full window with nothing the first
            // time (the jobs it sent meanwhile answer the POLL); asked again
            // with nothing sent since, it knows the jobs are held here and
            // sends one past the window.
            self.send_poll()?;
            while self.buffer.is_empty() && !self.closed && self.polls_pending > 0 {
                self.pump()?;
            }
        }
        if let Some(job) = self.pop() {
            return Ok(job);
        }
        if self.closed {
            return Err(TryGetError::Closed);
        }
        Err(TryGetError::Empty)
    }

    fn push(&mut self, id: JobId, ok: bool, data: &[u8]) -> Result<(), WorkerError> {
        if self.arena.is_some() {
            self.arena_unanswered.remove(&id.0);
        }
        if let Some(page) = &self.page {
            if page.load(0) == id.0 {
                page.store(0, 0);
            }
        }
        if let Some(a) = &self.arena {
            let len = data.len() as u64;
            if ok && data.len() >= a.threshold && len <= a.results_len {
                return self.push_arena(id, data);
            }
        }
        let mut out = self.outbox.lock();
        match out.push(id.0, ok, data) {
            Ok(wake) => {
                drop(out);
                if wake {
                    self.outbox.cond.notify_one();
                }
                Ok(())
            }
            Err(e @ WorkerError::ResultTooLarge { .. }) => {
                let msg = e.to_string();
                out.push(id.0, false, msg.as_bytes())?;
                drop(out);
                self.outbox.cond.notify_one();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies a large result into the arena's result area, waiting for the
    /// coordinator to consume earlier results if there is no room.
    fn push_arena(&self, id: JobId, data: &[u8]) -> Result<(), WorkerError> {
        let a = self.arena.as_ref().expect("checked by the caller");
        let mut waited = 0u32;
        loop {
            let mut out = self.outbox.lock();
            out.check()?;
            let consumed = a.page.load(RESULTS_CONSUMED_SLOT);
            let ring = out.ring.as_mut().expect("a ring comes with the arena");
            if let Some(offset) = ring.alloc(data.len() as u64, consumed) {
                // The region is free: the coordinator consumed what was
                // there, and reads it again only after our RESULT.
                a.arena
                    .write(offset as usize, data)
                    .map_err(|e| WorkerError::Protocol(e.to_string()))?;
                return out.push_arena(id.0, offset, data.len() as u64);
            }
            // No room: make sure the coordinator has every earlier result,
            // then give it a moment to consume them.
            out.flush()?;
            drop(out);
            waited += 1;
            if waited < 64 {
                std::hint::spin_loop();
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Reports `job` done with `result`.
    ///
    /// # Errors
    ///
    /// [`WorkerError::ResultTooLarge`] if the result is over the
    /// coordinator's frame limit (the job is reported failed instead), or
    /// [`WorkerError::Io`] if writing fails.
    pub fn complete(&mut self, job: Job, result: &[u8]) -> Result<(), WorkerError> {
        self.push(job.id, true, result)
    }

    /// Reports `job` failed, with `message` as the reason (the job's own
    /// verdict: retried if it has attempts left, then final).
    ///
    /// # Errors
    ///
    /// [`WorkerError::Io`] if writing fails.
    pub fn fail(&mut self, job: Job, message: &str) -> Result<(), WorkerError> {
        let max = self.max_frame.saturating_sub(64);
        let msg = if message.len() > max {
            &message.as_bytes()[..max]
        } else {
            message.as_bytes()
        };
        self.push(job.id, false, msg)
    }

    /// Writes pending results now.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Io`] if writing fails.
    pub fn flush(&mut self) -> Result<(), WorkerError> {
        self.outbox.lock().flush()
    }

    /// Writes pending results and ends the connection. If the queue was not
    /// closed, tells the coordinator the worker is leaving, so that jobs it
    /// received but never took go back to the queue with no attempt counted.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Io`] if writing fails.
    pub fn close(mut self) -> Result<(), WorkerError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), WorkerError> {
        if self.left {
            return Ok(());
        }
        self.left = true;
        let result = {
            let mut out = self.outbox.lock();
            if let Some(b) = out.batch.take() {
                b.finish(&mut out.buf);
            }
            if !self.closed {
                let _ = encode(
                    &mut out.buf,
                    &Frame::Leaving { taken: self.taken },
                    usize::MAX,
                );
            }
            let r = out.flush();
            out.stop = true;
            let _ = out.stream.shutdown(std::net::Shutdown::Write);
            r
        };
        self.outbox.cond.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        result
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.finish();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(len: u64) -> Ring {
        Ring {
            base: 1000,
            len,
            head: 0,
            outstanding: VecDeque::new(),
            seen: 0,
        }
    }

    #[test]
    fn the_result_ring_wraps_and_restarts_when_empty() {
        let mut r = ring(1024);
        assert_eq!(r.alloc(400, 0), Some(1000));
        assert_eq!(r.alloc(400, 0), Some(1000 + 448));
        assert_eq!(r.alloc(400, 0), None, "full");
        // The first is consumed: the next wraps to the start.
        assert_eq!(r.alloc(300, 1), Some(1000));
        // Ending exactly at the oldest region's start is refused.
        assert_eq!(r.alloc(128, 1), None);
        // Everything consumed: restart at the beginning.
        assert_eq!(r.alloc(1024, 3), Some(1000));
        assert_eq!(r.alloc(1025, 4), None, "larger than the area");
    }

    #[test]
    fn outstanding_result_regions_never_overlap() {
        let mut r = ring(10_000);
        let mut consumed = 0u64;
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = x % 3000;
            if r.alloc(n, consumed).is_none() {
                // Nothing is ever too big for an empty ring.
                consumed = r.seen + r.outstanding.len() as u64;
                assert!(r.alloc(n, consumed).is_some());
            }
            if x % 3 == 0 {
                consumed = (consumed + 1).min(r.seen + r.outstanding.len() as u64);
            }
            let mut v: Vec<_> = r.outstanding.iter().copied().collect();
            v.sort();
            for w in v.windows(2) {
                assert!(w[0].1 <= w[1].0, "{:?} overlaps", w);
            }
            assert!(v.iter().all(|&(_, end)| end <= 10_000));
        }
    }
}
