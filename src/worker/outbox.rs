//! The write side of the connection, shared with the background flusher:
//! results and failures batched into BATCH frames, arena references, the
//! flush and heartbeat timer.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::job::JobId;
use crate::protocol::{encode, BatchBuilder, Frame};

use super::arena::Ring;
use super::{WorkerError, FLUSH_DELAY};

/// A batch is written once it holds this many results.
const BATCH_ENTRIES: usize = 256;

/// A batch is written once its body reaches this many bytes.
pub(super) const BATCH_BYTES: usize = 64 << 10;

/// The write side, shared with the background flusher.
pub(super) struct Outbox {
    pub(super) state: Mutex<Out>,
    pub(super) cond: Condvar,
}

pub(super) struct Out {
    pub(super) stream: UnixStream,
    pub(super) buf: Vec<u8>,
    pub(super) batch: Option<BatchBuilder>,
    /// When the oldest unwritten result was added.
    pub(super) first_pending: Option<Instant>,
    /// The first write error; every later write reports it.
    pub(super) failed: Option<io::ErrorKind>,
    pub(super) max_frame: usize,
    pub(super) heartbeat: Option<Duration>,
    pub(super) last_write: Instant,
    pub(super) stop: bool,
    /// The arena's result area, if granted.
    pub(super) ring: Option<Ring>,
}

impl Out {
    pub(super) fn check(&self) -> Result<(), WorkerError> {
        match self.failed {
            Some(kind) => Err(WorkerError::Io(io::Error::new(
                kind,
                "an earlier write to the coordinator failed",
            ))),
            None => Ok(()),
        }
    }

    /// Writes everything buffered (closing an open batch).
    pub(super) fn flush(&mut self) -> Result<(), WorkerError> {
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
    pub(super) fn push_arena(&mut self, id: u64, offset: u64, len: u64) -> Result<(), WorkerError> {
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
    pub(super) fn push(&mut self, id: u64, ok: bool, data: &[u8]) -> Result<bool, WorkerError> {
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
    pub(super) fn lock(&self) -> MutexGuard<'_, Out> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The background thread: writes pending results after [`FLUSH_DELAY`] and
/// heartbeats when asked for.
pub(super) fn flusher(outbox: Arc<Outbox>) {
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
