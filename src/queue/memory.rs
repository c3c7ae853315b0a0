//! The in-process queue: a bounded FIFO behind one mutex.
//!
//! Every operation takes the lock once, so the state a caller sees is exact:
//! a `put` that returned is visible to the next `try_get`, and `Closed` is
//! decided from the same snapshot as "nothing queued, nothing leased".
//!
//! Capacity bounds the jobs *waiting* (queued by producers). A blocked `put`
//! waits for room, and is woken once the queue has drained to half its
//! capacity, not at every lease: a producer reading its input ahead refills
//! the queue in bursts, one wake-up per half a queue of jobs instead of one
//! per job (each a context switch on the consumers' path). Jobs requeued after a failure are not held back by the
//! capacity: a consumer must never block on its own requeue, so the queue may
//! briefly hold up to `capacity + leased` jobs.
//!
//! A job requeued with a retry delay (`--retry-delay`, see
//! [`RetryPolicy::retry_delay`]) waits in a separate set ordered by its
//! not-before time, and joins the back of the queue once that time has come
//! (checked at every lease; a blocking `get` sleeps no longer than the
//! earliest one). It holds no slot meanwhile, and it counts as queued: the
//! queue is not drained while a delayed retry is pending.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::job::{FailReason, Job, JobId, JobState, NewJob, RetryPolicy, Transition, WorkerId};

use super::{
    Completion, Counts, Disposition, GetError, Lease, LeaseToken, PutError, Queue, QueueError,
    TryGetError,
};

/// A bounded, in-process [`Queue`].
#[derive(Debug)]
pub struct MemoryQueue {
    state: Mutex<State>,
    /// Signalled when a job is queued, or the queue becomes drained.
    available: Condvar,
    /// Signalled when the queue drains to half its capacity while a `put`
    /// waits ([`MemoryQueue::wake_putter`]), or when it is closed.
    room: Condvar,
    capacity: usize,
    policy: RetryPolicy,
}

#[derive(Debug)]
struct Held {
    seq: u64,
    payload: bytes::Bytes,
    worker: WorkerId,
    attempt: u32,
    lost: u32,
    oom: u32,
    token: u64,
}

#[derive(Debug, Default)]
struct State {
    queued: VecDeque<Job>,
    /// Retries waiting for their not-before time (`--retry-delay`).
    delayed: BTreeMap<(Instant, JobId), Job>,
    leased: HashMap<JobId, Held>,
    next_id: u64,
    next_token: u64,
    closed: bool,
    counts: Counts,
    /// Threads waiting in `get`: a put wakes one only if there is one
    /// (`notify_one` is a system call even when nobody waits).
    getters: usize,
    /// Threads waiting in `put` for room.
    putters: usize,
}

impl State {
    fn drained(&self) -> bool {
        self.closed && self.queued.is_empty() && self.delayed.is_empty() && self.leased.is_empty()
    }

    /// Moves the delayed retries whose time has come to the back of the
    /// queue.
    fn promote_due(&mut self) {
        if self.delayed.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let job = entry.remove();
            self.queued.push_back(job);
        }
    }

    /// When the earliest delayed retry becomes due.
    fn next_due(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(at, _)| *at)
    }

    fn lease_front(&mut self, worker: WorkerId, policy: RetryPolicy) -> Option<Lease> {
        self.promote_due();
        let mut job = self.queued.pop_front()?;
        let next = JobState::Queued {
            attempts: job.attempts,
            lost: job.lost,
            oom: job.oom,
        }
        .apply(Transition::Lease { worker }, policy)
        .expect("a queued job can always be leased");
        let JobState::Leased {
            attempt, lost, oom, ..
        } = next
        else {
            unreachable!("lease leads to Leased")
        };
        job.attempts = attempt;
        self.next_token += 1;
        let token = self.next_token;
        self.leased.insert(
            job.id,
            Held {
                seq: job.seq,
                payload: job.payload.clone(),
                worker,
                attempt,
                lost,
                oom,
                token,
            },
        );
        Some(Lease {
            job,
            worker,
            token: LeaseToken { hi: 0, lo: token },
        })
    }

    /// Removes the lease if it is current.
    fn take_lease(&mut self, lease: &Lease) -> Option<Held> {
        match self.leased.get(&lease.job.id) {
            Some(h) if h.token == lease.token.lo && h.worker == lease.worker => {
                self.leased.remove(&lease.job.id)
            }
            _ => None,
        }
    }

    fn resolve_failure(
        &mut self,
        id: JobId,
        held: Held,
        reason: FailReason,
        policy: RetryPolicy,
    ) -> Disposition {
        let next = JobState::Leased {
            worker: held.worker,
            attempt: held.attempt,
            lost: held.lost,
            oom: held.oom,
        }
        .apply(
            Transition::Fail {
                reason: reason.clone(),
            },
            policy,
        )
        .expect("a leased job can always fail");
        let delay = policy.requeue_delay(&reason, &next, held.seq);
        match next {
            JobState::Queued {
                attempts,
                lost,
                oom,
            } => {
                let job = Job {
                    id,
                    seq: held.seq,
                    payload: held.payload,
                    attempts,
                    lost,
                    oom,
                };
                if delay.is_zero() {
                    self.queued.push_back(job);
                } else {
                    self.delayed.insert((Instant::now() + delay, id), job);
                }
                Disposition::Requeued { attempts }
            }
            JobState::Failed { .. } => {
                self.counts.failed += 1;
                Disposition::Final(next)
            }
            JobState::Dead { .. } => {
                self.counts.dead += 1;
                Disposition::Final(next)
            }
            other => unreachable!("fail cannot lead to {other:?}"),
        }
    }
}

impl MemoryQueue {
    /// A queue holding at most `capacity` waiting jobs (at least 1), giving
    /// each job the attempts allowed by `policy`.
    pub fn new(capacity: usize, policy: RetryPolicy) -> Self {
        MemoryQueue {
            state: Mutex::new(State::default()),
            available: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
            policy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a
        // way that breaks its invariants more than the panic itself did; keep
        // serving the other threads rather than cascading the panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a lease that left `state` should wake a waiting `put`: one
    /// waits, and the queue is down to half its capacity (so a producer
    /// wakes once per half a queue of jobs, not once per job).
    fn wake_putter(&self, state: &State) -> bool {
        state.putters > 0 && state.queued.len() <= self.capacity / 2
    }

    /// Wakes consumers if the queue just became drained.
    fn notify_if_drained(&self, state: &State) {
        if state.drained() {
            self.available.notify_all();
        }
    }
}

impl Queue for MemoryQueue {
    fn put(&self, job: NewJob) -> Result<JobId, PutError> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(PutError::Closed(job));
            }
            if state.queued.len() < self.capacity {
                break;
            }
            state.putters += 1;
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
            state.putters -= 1;
        }
        state.next_id += 1;
        let id = JobId(state.next_id);
        state.queued.push_back(Job {
            id,
            seq: job.seq,
            payload: job.payload,
            attempts: job.attempts,
            lost: job.lost,
            oom: job.oom,
        });
        state.counts.produced += 1;
        let wake = state.getters > 0;
        drop(state);
        if wake {
            self.available.notify_one();
        }
        Ok(id)
    }

    fn get(&self, worker: WorkerId, timeout: Option<Duration>) -> Result<Lease, GetError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if let Some(lease) = state.lease_front(worker, self.policy) {
                let room = self.wake_putter(&state);
                drop(state);
                if room {
                    self.room.notify_one();
                }
                return Ok(lease);
            }
            if state.drained() {
                return Err(GetError::Closed);
            }
            let wait = match deadline {
                None => None,
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(GetError::Timeout);
                    }
                    Some(deadline - now)
                }
            };
            // Wake for the earliest delayed retry, too.
            let wait = match (wait, state.next_due()) {
                (w, None) => w,
                (None, Some(due)) => Some(due.saturating_duration_since(Instant::now())),
                (Some(w), Some(due)) => Some(w.min(due.saturating_duration_since(Instant::now()))),
            };
            state.getters += 1;
            state = match wait {
                None => self
                    .available
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(left) => {
                    self.available
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            state.getters -= 1;
        }
    }

    fn try_get(&self, worker: WorkerId) -> Result<Lease, TryGetError> {
        let mut state = self.lock();
        if let Some(lease) = state.lease_front(worker, self.policy) {
            let room = self.wake_putter(&state);
            drop(state);
            if room {
                self.room.notify_one();
            }
            return Ok(lease);
        }
        if state.drained() {
            Err(TryGetError::Closed)
        } else {
            Err(TryGetError::Empty)
        }
    }

    fn try_get_many(
        &self,
        worker: WorkerId,
        max: usize,
        out: &mut Vec<Lease>,
    ) -> Result<usize, TryGetError> {
        let mut state = self.lock();
        let mut n = 0;
        while n < max {
            match state.lease_front(worker, self.policy) {
                Some(lease) => {
                    out.push(lease);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            let room = self.wake_putter(&state);
            drop(state);
            if room {
                self.room.notify_all();
            }
            return Ok(n);
        }
        if state.drained() {
            Err(TryGetError::Closed)
        } else {
            Err(TryGetError::Empty)
        }
    }

    fn complete_many(&self, leases: &[Lease]) -> Result<Vec<Completion>, QueueError> {
        let mut state = self.lock();
        let out = leases
            .iter()
            .map(|lease| {
                if state.take_lease(lease).is_none() {
                    Completion::Stale
                } else {
                    state.counts.done += 1;
                    Completion::Recorded
                }
            })
            .collect();
        self.notify_if_drained(&state);
        Ok(out)
    }

    fn complete(&self, lease: &Lease) -> Result<Completion, QueueError> {
        let mut state = self.lock();
        if state.take_lease(lease).is_none() {
            return Ok(Completion::Stale);
        }
        state.counts.done += 1;
        self.notify_if_drained(&state);
        Ok(Completion::Recorded)
    }

    fn fail(&self, lease: &Lease, reason: FailReason) -> Result<Disposition, QueueError> {
        let mut state = self.lock();
        let Some(held) = state.take_lease(lease) else {
            return Ok(Disposition::Stale);
        };
        let disposition = state.resolve_failure(lease.job.id, held, reason, self.policy);
        if matches!(disposition, Disposition::Requeued { .. }) {
            drop(state);
            self.available.notify_one();
        } else {
            self.notify_if_drained(&state);
        }
        Ok(disposition)
    }

    fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        let mut state = self.lock();
        let Some(held) = state.take_lease(lease) else {
            return Ok(());
        };
        // Back to the front: it was next in line and never ran.
        state.queued.push_front(Job {
            id: lease.job.id,
            seq: held.seq,
            payload: held.payload,
            attempts: held.attempt - 1,
            lost: held.lost,
            oom: held.oom,
        });
        drop(state);
        self.available.notify_one();
        Ok(())
    }

    fn worker_lost(
        &self,
        worker: WorkerId,
        detail: &str,
    ) -> Result<Vec<(JobId, Disposition)>, QueueError> {
        let mut state = self.lock();
        let mut ids: Vec<JobId> = state
            .leased
            .iter()
            .filter(|(_, h)| h.worker == worker)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let held = state.leased.remove(&id).expect("listed under the lock");
            let reason = FailReason::WorkerLost {
                detail: detail.to_string(),
            };
            let d = state.resolve_failure(id, held, reason, self.policy);
            out.push((id, d));
        }
        drop(state);
        self.available.notify_all();
        Ok(out)
    }

    fn close(&self) -> Result<(), QueueError> {
        let mut state = self.lock();
        state.closed = true;
        state.counts.closed = true;
        drop(state);
        self.room.notify_all();
        self.available.notify_all();
        Ok(())
    }

    fn counts(&self) -> Result<Counts, QueueError> {
        let state = self.lock();
        let mut c = state.counts;
        c.queued = (state.queued.len() + state.delayed.len()) as u64;
        c.leased = state.leased.len() as u64;
        Ok(c)
    }
}
