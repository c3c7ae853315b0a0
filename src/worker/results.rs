//! Answering jobs: [`Worker::complete`] and [`Worker::fail`] (large
//! results copied into the arena's result area), [`Worker::flush`], and
//! [`Worker::close`] (LEAVING when the queue was not closed).

use std::time::Duration;

use crate::job::{Job, JobId};
use crate::protocol::{encode, Frame, RESULTS_CONSUMED_SLOT};

use super::{Worker, WorkerError};

impl Worker {
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
