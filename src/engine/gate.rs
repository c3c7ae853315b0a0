//! The run's queue as executors see it: [`Gate`].
//!
//! Every lease and settle of every executor goes through it, so that the
//! rules about the backend live in one place:
//!
//! - no lease once the run stops (draining or killing);
//! - a lost producer (`worker` on a shared queue) drains the run, exit 3;
//! - any other backend failure stops the run once (exit 255), and later
//!   calls are not tried, so that stopping does not wait a reconnect window
//!   per lease held (those leases idle out and peers take them over);
//! - what the worker observed (host, duration) goes with each settle, for
//!   backends that keep a record;
//! - executors never close the run's queue: the input (or, on a shared
//!   queue, the producer) does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::events::{Notice, StopCause};
use crate::job::{FailReason, JobId, NewJob, WorkerId};
use crate::queue::{
    AttemptInfo, Completion, Counts, Disposition, GetError, Lease, PutError, Queue, QueueError,
    TryGetError,
};

use super::stop::Level;
use super::Dispatch;

/// The run's queue as executors use it (see [`Dispatch::queue`]).
pub struct Gate<'a> {
    pub(super) d: &'a Dispatch,
}

impl Gate<'_> {
    /// Turns a backend error into the run's stop: a lost producer drains
    /// (exit 3); anything else is fatal, once.
    fn failed(&self, e: QueueError) -> QueueError {
        if let QueueError::ProducerLost { .. } = e {
            if self.d.control.cause() == StopCause::None {
                self.d.notice(Notice::Info(format!(
                    "{e}; stopping (run `jobmill submit` again to add jobs, or an empty submit \
                     to close it)"
                )));
            }
            self.d.stop(Level::Draining, StopCause::ProducerLost);
            return e;
        }
        if !self.d.backend_failed.swap(true, Ordering::SeqCst) {
            self.d.fatal(Arc::new(e.clone()));
        }
        e
    }

    /// `Err` once the backend has failed: the call is not tried again, so
    /// that stopping does not wait a reconnect window per lease held (those
    /// leases idle out and peers take them over).
    fn usable(&self, operation: &'static str) -> Result<(), QueueError> {
        if self.d.backend_failed.load(Ordering::Relaxed) {
            return Err(QueueError::backend(
                operation,
                "not tried after an earlier failure of the queue",
            ));
        }
        Ok(())
    }
}

impl Queue for Gate<'_> {
    fn put(&self, job: NewJob) -> Result<JobId, PutError> {
        self.usable("put")?;
        self.d.queue.put(job)
    }

    fn get(&self, worker: WorkerId, timeout: Option<Duration>) -> Result<Lease, GetError> {
        if !self.d.may_start() {
            return Err(GetError::Closed);
        }
        self.usable("lease")?;
        self.d.queue.get(worker, timeout).map_err(|e| match e {
            // Nothing is queued or leased anywhere and the producer is gone:
            // the run drains (see `failed`); to the executor this is a lease
            // that timed out, so that it ends its workers as a drain does
            // (CLOSED to each), instead of failing with them still waiting.
            GetError::Backend(e) => match self.failed(e) {
                QueueError::ProducerLost { .. } => GetError::Timeout,
                e => GetError::Backend(e),
            },
            other => other,
        })
    }

    fn try_get(&self, worker: WorkerId) -> Result<Lease, TryGetError> {
        let mut v = Vec::with_capacity(1);
        self.try_get_many(worker, 1, &mut v)?;
        v.pop().ok_or(TryGetError::Empty)
    }

    fn try_get_many(
        &self,
        worker: WorkerId,
        max: usize,
        out: &mut Vec<Lease>,
    ) -> Result<usize, TryGetError> {
        if !self.d.may_start() {
            return Err(TryGetError::Empty);
        }
        self.usable("lease")?;
        match self.d.queue.try_get_many(worker, max, out) {
            Err(TryGetError::Backend(e)) => match self.failed(e) {
                QueueError::ProducerLost { .. } => Err(TryGetError::Empty),
                e => Err(TryGetError::Backend(e)),
            },
            other => other,
        }
    }

    fn complete(&self, lease: &Lease) -> Result<Completion, QueueError> {
        self.complete_with(lease, &AttemptInfo::default())
    }

    fn complete_with(&self, lease: &Lease, info: &AttemptInfo) -> Result<Completion, QueueError> {
        self.usable("complete")?;
        self.d
            .queue
            .complete_with(lease, info)
            .map_err(|e| self.failed(e))
    }

    fn complete_many(&self, leases: &[Lease]) -> Result<Vec<Completion>, QueueError> {
        let info = AttemptInfo {
            host: self.d.opts.host.clone(),
            duration: None,
        };
        self.complete_many_with(leases, &info)
    }

    fn complete_many_with(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
    ) -> Result<Vec<Completion>, QueueError> {
        self.usable("complete")?;
        self.d
            .queue
            .complete_many_with(leases, info)
            .map_err(|e| self.failed(e))
    }

    fn complete_many_results(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
        results: &[bytes::Bytes],
    ) -> Result<Vec<Completion>, QueueError> {
        self.usable("complete")?;
        let info = AttemptInfo {
            host: info.host.clone().or_else(|| self.d.opts.host.clone()),
            duration: info.duration,
        };
        self.d
            .queue
            .complete_many_results(leases, &info, results)
            .map_err(|e| self.failed(e))
    }

    fn fail(&self, lease: &Lease, reason: FailReason) -> Result<Disposition, QueueError> {
        let info = AttemptInfo {
            host: self.d.opts.host.clone(),
            duration: None,
        };
        self.fail_with(lease, reason, &info)
    }

    fn fail_with(
        &self,
        lease: &Lease,
        reason: FailReason,
        info: &AttemptInfo,
    ) -> Result<Disposition, QueueError> {
        self.usable("fail")?;
        self.d.mark_ending(lease.job.seq);
        self.d
            .queue
            .fail_with(lease, reason, info)
            .map_err(|e| self.failed(e))
    }

    fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        self.usable("release")?;
        self.d.queue.release(lease).map_err(|e| self.failed(e))
    }

    fn worker_lost(
        &self,
        worker: WorkerId,
        detail: &str,
    ) -> Result<Vec<(JobId, Disposition)>, QueueError> {
        self.usable("worker lost")?;
        self.d
            .queue
            .worker_lost(worker, detail)
            .map_err(|e| self.failed(e))
    }

    fn close(&self) -> Result<(), QueueError> {
        // Executors never close the run's queue: the input (or the
        // producer, on a shared queue) does.
        Ok(())
    }

    fn counts(&self) -> Result<Counts, QueueError> {
        self.usable("counts")?;
        self.d.queue.counts().map_err(|e| self.failed(e))
    }
}
