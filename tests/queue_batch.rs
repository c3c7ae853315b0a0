//! The batch operations of the `Queue` trait (`try_get_many`,
//! `complete_many`) on the memory backend, and their default
//! implementations, which must agree.

use jobmill::job::{FailReason, Job, JobId, NewJob, RetryPolicy, WorkerId};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::{
    Completion, Counts, Disposition, GetError, Lease, PutError, Queue, QueueError, TryGetError,
};

/// Forwards only the required methods, so the trait's defaults are used.
struct Defaults(MemoryQueue);

impl Queue for Defaults {
    fn put(&self, job: NewJob) -> Result<JobId, PutError> {
        self.0.put(job)
    }
    fn get(
        &self,
        worker: WorkerId,
        timeout: Option<std::time::Duration>,
    ) -> Result<Lease, GetError> {
        self.0.get(worker, timeout)
    }
    fn try_get(&self, worker: WorkerId) -> Result<Lease, TryGetError> {
        self.0.try_get(worker)
    }
    fn complete(&self, lease: &Lease) -> Result<Completion, QueueError> {
        self.0.complete(lease)
    }
    fn fail(&self, lease: &Lease, reason: FailReason) -> Result<Disposition, QueueError> {
        self.0.fail(lease, reason)
    }
    fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        self.0.release(lease)
    }
    fn worker_lost(
        &self,
        worker: WorkerId,
        detail: &str,
    ) -> Result<Vec<(JobId, Disposition)>, QueueError> {
        self.0.worker_lost(worker, detail)
    }
    fn close(&self) -> Result<(), QueueError> {
        self.0.close()
    }
    fn counts(&self) -> Result<Counts, QueueError> {
        self.0.counts()
    }
}

fn both() -> Vec<Box<dyn Queue>> {
    vec![
        Box::new(MemoryQueue::new(100, RetryPolicy::default())),
        Box::new(Defaults(MemoryQueue::new(100, RetryPolicy::default()))),
    ]
}

const W: WorkerId = WorkerId(1);

#[test]
fn try_get_many_leases_in_queue_order_up_to_max() {
    for q in both() {
        for i in 1..=5 {
            q.put(NewJob::new(i, vec![i as u8])).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(q.try_get_many(W, 3, &mut out).unwrap(), 3);
        let seqs: Vec<u64> = out.iter().map(|l| l.job.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(out
            .iter()
            .all(|l: &Lease| l.job.attempts == 1 && l.worker == W));
        assert_eq!(q.try_get_many(W, 10, &mut out).unwrap(), 2);
        assert_eq!(q.counts().unwrap().leased, 5);
    }
}

#[test]
fn try_get_many_says_empty_then_closed_only_when_drained() {
    for q in both() {
        q.put(NewJob::new(1, b"x".to_vec())).unwrap();
        let mut out = Vec::new();
        q.try_get_many(W, 4, &mut out).unwrap();
        assert!(matches!(
            q.try_get_many(W, 4, &mut out),
            Err(TryGetError::Empty)
        ));
        q.close().unwrap();
        // Closed but one job is leased: not drained, so still Empty.
        assert!(matches!(
            q.try_get_many(W, 4, &mut out),
            Err(TryGetError::Empty)
        ));
        q.complete(&out[0]).unwrap();
        assert!(matches!(
            q.try_get_many(W, 4, &mut out),
            Err(TryGetError::Closed)
        ));
    }
}

#[test]
fn complete_many_records_each_once_and_stale_after() {
    for q in both() {
        for i in 1..=3 {
            q.put(NewJob::new(i, vec![])).unwrap();
        }
        let mut out = Vec::new();
        q.try_get_many(W, 3, &mut out).unwrap();
        assert_eq!(
            q.complete_many(&out).unwrap(),
            vec![Completion::Recorded; 3]
        );
        assert_eq!(q.complete_many(&out).unwrap(), vec![Completion::Stale; 3]);
        let c = q.counts().unwrap();
        assert_eq!((c.done, c.leased), (3, 0));
        let _: Option<Job> = None;
    }
}
