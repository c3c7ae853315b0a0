//! A queue whose tasks must be signed: the side of a shared queue that
//! feeds worker processes (`jobmill worker` with a key, see
//! [`crate::sign`]).
//!
//! [`Signed`] wraps any [`Queue`]. Every job it leases is checked
//! ([`Key::verify_task`]) before it is handed on, so a worker process never
//! sees a task that is unsigned or wrongly signed: such a job is failed
//! with [`FailReason::Refused`] (dead at once, the reason in its record),
//! the refusal is reported to the `on_refused` callback (the CLI says why
//! on stderr), and the next job is leased instead. Results handed to
//! [`Queue::complete_many_results`] are signed ([`Key::sign_result`]), and
//! so are failure messages reported by workers ([`Key::sign_message`]),
//! so that the producer can check what it unpickles.
//!
//! The payload handed on is the signed payload, unchanged (its 64-byte
//! header is skipped by the worker), so the backend's bookkeeping of
//! payload sizes is untouched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::job::{FailReason, Job, JobId, NewJob, WorkerId};
use crate::sign::{Key, Refusal};

use super::{
    AttemptInfo, Completion, Counts, Disposition, GetError, Lease, PutError, Queue, QueueError,
    TryGetError,
};

/// What to do when a job is refused (e.g. say why on stderr).
pub type OnRefused = Box<dyn Fn(&Job, &Refusal) + Send + Sync>;

/// A queue that hands on only signed tasks. See the module docs.
pub struct Signed {
    inner: Arc<dyn Queue>,
    key: Key,
    on_refused: OnRefused,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed").finish_non_exhaustive()
    }
}

impl Signed {
    /// `inner`, checking every task leased with `key`.
    pub fn new(inner: Arc<dyn Queue>, key: Key, on_refused: OnRefused) -> Signed {
        Signed {
            inner,
            key,
            on_refused,
        }
    }

    /// Whether `lease`'s task is signed; if not, fails it as refused.
    fn admit(&self, lease: &Lease) -> Result<bool, QueueError> {
        match self.key.verify_task(lease.job.seq, &lease.job.payload) {
            Ok(_) => Ok(true),
            Err(refusal) => {
                self.inner.fail(
                    lease,
                    FailReason::Refused {
                        why: refusal.to_string(),
                    },
                )?;
                (self.on_refused)(&lease.job, &refusal);
                Ok(false)
            }
        }
    }

    fn sign_reason(&self, lease: &Lease, reason: FailReason) -> FailReason {
        match reason {
            FailReason::Reported { message } => FailReason::Reported {
                message: self.key.sign_message(lease.job.seq, &message),
            },
            other => other,
        }
    }
}

impl Queue for Signed {
    fn put(&self, job: NewJob) -> Result<JobId, PutError> {
        self.inner.put(job)
    }

    fn get(&self, worker: WorkerId, timeout: Option<Duration>) -> Result<Lease, GetError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let lease = self.inner.get(worker, left)?;
            if self.admit(&lease).map_err(GetError::Backend)? {
                return Ok(lease);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(GetError::Timeout);
            }
        }
    }

    fn try_get(&self, worker: WorkerId) -> Result<Lease, TryGetError> {
        loop {
            let lease = self.inner.try_get(worker)?;
            if self.admit(&lease).map_err(TryGetError::Backend)? {
                return Ok(lease);
            }
        }
    }

    fn try_get_many(
        &self,
        worker: WorkerId,
        max: usize,
        out: &mut Vec<Lease>,
    ) -> Result<usize, TryGetError> {
        loop {
            let mut got = Vec::new();
            self.inner.try_get_many(worker, max, &mut got)?;
            let before = out.len();
            for lease in got {
                if self.admit(&lease).map_err(TryGetError::Backend)? {
                    out.push(lease);
                }
            }
            if out.len() > before {
                return Ok(out.len() - before);
            }
        }
    }

    fn complete_many(&self, leases: &[Lease]) -> Result<Vec<Completion>, QueueError> {
        self.inner.complete_many(leases)
    }

    fn complete(&self, lease: &Lease) -> Result<Completion, QueueError> {
        self.inner.complete(lease)
    }

    fn complete_with(&self, lease: &Lease, info: &AttemptInfo) -> Result<Completion, QueueError> {
        self.inner.complete_with(lease, info)
    }

    fn complete_many_with(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
    ) -> Result<Vec<Completion>, QueueError> {
        self.inner.complete_many_with(leases, info)
    }

    fn complete_many_results(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
        results: &[Bytes],
    ) -> Result<Vec<Completion>, QueueError> {
        let signed: Vec<Bytes> = leases
            .iter()
            .zip(results)
            .map(|(l, r)| Bytes::from(self.key.sign_result(l.job.seq, r)))
            .collect();
        self.inner.complete_many_results(leases, info, &signed)
    }

    fn fail_with(
        &self,
        lease: &Lease,
        reason: FailReason,
        info: &AttemptInfo,
    ) -> Result<Disposition, QueueError> {
        let reason = self.sign_reason(lease, reason);
        self.inner.fail_with(lease, reason, info)
    }

    fn fail(&self, lease: &Lease, reason: FailReason) -> Result<Disposition, QueueError> {
        let reason = self.sign_reason(lease, reason);
        self.inner.fail(lease, reason)
    }

    fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        self.inner.release(lease)
    }

    fn worker_lost(
        &self,
        worker: WorkerId,
        detail: &str,
    ) -> Result<Vec<(JobId, Disposition)>, QueueError> {
        self.inner.worker_lost(worker, detail)
    }

    fn close(&self) -> Result<(), QueueError> {
        self.inner.close()
    }

    fn counts(&self) -> Result<Counts, QueueError> {
        self.inner.counts()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::job::RetryPolicy;
    use crate::queue::memory::MemoryQueue;

    #[test]
    fn unsigned_and_tampered_tasks_are_dead_and_never_handed_on() {
        let key = Key::new(vec![7; 32], "test").unwrap();
        let mem = Arc::new(MemoryQueue::new(100, RetryPolicy::with_retries(3)));
        mem.put(NewJob::new(1, Bytes::from(key.sign_task(1, b"good"))))
            .unwrap();
        mem.put(NewJob::new(2, Bytes::from_static(b"unsigned")))
            .unwrap();
        let mut tampered = key.sign_task(3, b"evil");
        *tampered.last_mut().unwrap() ^= 1;
        mem.put(NewJob::new(3, Bytes::from(tampered))).unwrap();
        mem.put(NewJob::new(4, Bytes::from(key.sign_task(4, b"fine"))))
            .unwrap();
        mem.close().unwrap();
        let refused = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&refused);
        let q = Signed::new(
            mem.clone(),
            key.clone(),
            Box::new(move |job, why| seen.lock().unwrap().push((job.seq, why.clone()))),
        );
        let mut out = Vec::new();
        let mut handed = Vec::new();
        while let Ok(n) = q.try_get_many(WorkerId(1), 10, &mut out) {
            assert!(n > 0);
            for l in out.drain(..) {
                handed.push(l.job.seq);
                q.complete_many_results(
                    std::slice::from_ref(&l),
                    &AttemptInfo::default(),
                    &[Bytes::from_static(b"r")],
                )
                .unwrap();
            }
        }
        assert_eq!(handed, vec![1, 4]);
        assert_eq!(
            *refused.lock().unwrap(),
            vec![
                (2, Refusal::NotSigned("task")),
                (3, Refusal::BadSignature("task"))
            ]
        );
        let c = mem.counts().unwrap();
        assert_eq!((c.done, c.dead, c.failed), (2, 2, 0), "{c:?}");
    }
}
