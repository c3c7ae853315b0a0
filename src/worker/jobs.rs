//! The job loop: frames from the coordinator (jobs, inline or in the
//! arena, POLL_END, CLOSED), POLLs, and [`Worker::get`], [`Worker::try_get`]
//! and [`Worker::next_job`].

use bytes::Bytes;

use crate::job::{Job, JobId};
use crate::protocol::{decode, encode_empty, kind, Decoded, Frame, Payload};

use super::{GetError, TryGetError, Worker, WorkerError};

impl Worker {
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
}
