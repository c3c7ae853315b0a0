//! The in-memory queue's semantics: close and drain, no false empty,
//! backpressure, requeue on failure and worker loss, exactly-once outcomes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use jobmill::job::{FailReason, JobState, NewJob, RetryPolicy, WorkerId};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::{Completion, Disposition, GetError, Lease, PutError, Queue, TryGetError};
use proptest::prelude::*;

const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);

fn job(seq: u64) -> NewJob {
    NewJob::new(seq, format!("job-{seq}").into_bytes())
}

#[test]
fn try_get_after_put_never_reports_empty() {
    let q = MemoryQueue::new(16, RetryPolicy::default());
    for seq in 1..=1000 {
        q.put(job(seq)).unwrap();
        let lease = q
            .try_get(W1)
            .expect("a job put a moment ago must be visible");
        assert_eq!(lease.job.seq, seq);
        q.complete(&lease).unwrap();
    }
}

#[test]
fn get_after_close_drains_remaining() {
    let q = MemoryQueue::new(16, RetryPolicy::default());
    for seq in 1..=3 {
        q.put(job(seq)).unwrap();
    }
    q.close().unwrap();
    let mut seen = Vec::new();
    loop {
        match q.get(W1, None) {
            Ok(lease) => {
                seen.push(lease.job.seq);
                q.complete(&lease).unwrap();
            }
            Err(GetError::Closed) => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(seen, vec![1, 2, 3]);
}

#[test]
fn put_after_close_returns_the_job() {
    let q = MemoryQueue::new(4, RetryPolicy::default());
    q.close().unwrap();
    match q.put(job(9)) {
        Err(PutError::Closed(j)) => assert_eq!(j.seq, 9),
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn try_get_on_closed_queue_with_a_lease_out_is_empty_not_closed() {
    let q = MemoryQueue::new(4, RetryPolicy::with_retries(1));
    q.put(job(1)).unwrap();
    q.close().unwrap();
    let lease = q.try_get(W1).unwrap();
    // The lease could still fail and come back: not drained yet.
    assert!(matches!(q.try_get(W2), Err(TryGetError::Empty)));
    assert!(matches!(
        q.get(W2, Some(Duration::from_millis(1))),
        Err(GetError::Timeout)
    ));
    let d = q.fail(&lease, FailReason::Exit { code: 1 }).unwrap();
    assert_eq!(d, Disposition::Requeued { attempts: 1 });
    let again = q.try_get(W2).expect("the requeued job is visible");
    assert_eq!(again.job.attempts, 2);
    q.complete(&again).unwrap();
    assert!(matches!(q.try_get(W2), Err(TryGetError::Closed)));
}

#[test]
fn blocked_get_wakes_with_closed_when_last_lease_completes() {
    let q = Arc::new(MemoryQueue::new(4, RetryPolicy::default()));
    q.put(job(1)).unwrap();
    q.close().unwrap();
    let lease = q.try_get(W1).unwrap();
    let q2 = Arc::clone(&q);
    let waiter = thread::spawn(move || q2.get(W2, None));
    q.complete(&lease).unwrap();
    let r = waiter.join().unwrap();
    assert!(matches!(r, Err(GetError::Closed)));
}

#[test]
fn full_queue_blocks_the_producer_until_a_job_is_taken() {
    let q = Arc::new(MemoryQueue::new(2, RetryPolicy::default()));
    q.put(job(1)).unwrap();
    q.put(job(2)).unwrap();
    let q2 = Arc::clone(&q);
    let returned = Arc::new(AtomicBool::new(false));
    let r2 = Arc::clone(&returned);
    let producer = thread::spawn(move || {
        q2.put(job(3)).unwrap();
        r2.store(true, Ordering::SeqCst);
    });
    // The producer cannot finish while the queue is full: it is either
    // blocked or not yet started, and both leave `returned` false.
    assert_eq!(q.counts().unwrap().queued, 2);
    assert!(!returned.load(Ordering::SeqCst));
    let lease = q.try_get(W1).unwrap();
    producer.join().unwrap();
    assert!(returned.load(Ordering::SeqCst));
    assert_eq!(q.counts().unwrap().queued, 2);
    q.complete(&lease).unwrap();
}

#[test]
fn blocked_producers_are_woken_as_the_queue_drains_to_half_and_none_is_left_waiting() {
    // Three producers block on a full queue of 4; the consumer leases one
    // job at a time. Producers are woken only once the queue is down to
    // half (2), and each lease at or below half wakes one: every job put
    // is leased, and every producer returns.
    for capacity in [1, 3, 4] {
        let q = Arc::new(MemoryQueue::new(capacity, RetryPolicy::default()));
        let first = capacity as u64;
        for seq in 1..=first {
            q.put(job(seq)).unwrap();
        }
        let producers: Vec<_> = (1..=3u64)
            .map(|p| {
                let q = Arc::clone(&q);
                thread::spawn(move || {
                    for i in 0..5 {
                        q.put(job(first + p * 100 + i)).unwrap();
                    }
                })
            })
            .collect();
        let total = first as usize + 15;
        let mut seen = Vec::new();
        while seen.len() < total {
            let lease = q.get(W1, Some(Duration::from_secs(60))).expect("a job");
            seen.push(lease.job.seq);
            q.complete(&lease).unwrap();
        }
        for p in producers {
            p.join().unwrap();
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), total, "capacity {capacity}");
        assert_eq!(q.counts().unwrap().queued, 0);
    }
}

#[test]
fn close_wakes_a_blocked_producer_with_its_job() {
    let q = Arc::new(MemoryQueue::new(1, RetryPolicy::default()));
    q.put(job(1)).unwrap();
    let q2 = Arc::clone(&q);
    let producer = thread::spawn(move || q2.put(job(2)));
    q.close().unwrap();
    match producer.join().unwrap() {
        Err(PutError::Closed(j)) => assert_eq!(j.seq, 2),
        // The producer may have started after the close: same outcome.
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn lost_worker_requeues_its_leases_without_counting_against_retries() {
    // No retries: a lost job still runs again, because it never failed.
    let q = MemoryQueue::new(8, RetryPolicy::with_retries(0));
    q.put(job(1)).unwrap();
    q.put(job(2)).unwrap();
    let a = q.try_get(W1).unwrap();
    let b = q.try_get(W2).unwrap();
    let lost = q.worker_lost(W1, "exited with signal SIGKILL").unwrap();
    assert_eq!(
        lost,
        vec![(a.job.id, Disposition::Requeued { attempts: 1 })]
    );
    let again = q.try_get(W2).unwrap();
    assert_eq!(again.job.seq, 1);
    // The lost attempt is recorded, and known to be lost.
    assert_eq!((again.job.attempts, again.job.lost), (2, 1));
    // The lost worker's late completion is ignored: done exactly once.
    assert_eq!(q.complete(&a).unwrap(), Completion::Stale);
    assert_eq!(q.complete(&again).unwrap(), Completion::Recorded);
    assert_eq!(q.complete(&b).unwrap(), Completion::Recorded);
    assert_eq!(q.counts().unwrap().done, 2);
}

#[test]
fn a_job_lost_past_max_lost_is_dead_with_the_reason_kept() {
    let q = MemoryQueue::new(8, RetryPolicy::with_retries(5).max_lost(1));
    q.put(job(1)).unwrap();
    let _first = q.try_get(W1).unwrap();
    let lost = q.worker_lost(W1, "killed by the OOM killer").unwrap();
    assert_eq!(lost[0].1, Disposition::Requeued { attempts: 1 });
    let _second = q.try_get(W2).unwrap();
    let lost = q.worker_lost(W2, "killed by the OOM killer").unwrap();
    match &lost[0].1 {
        Disposition::Final(JobState::Dead { attempts, reason }) => {
            assert_eq!(*attempts, 2);
            assert_eq!(
                reason,
                &FailReason::WorkerLost {
                    detail: "killed by the OOM killer".into()
                }
            );
        }
        other => panic!("expected dead, got {other:?}"),
    }
    assert_eq!(q.counts().unwrap().dead, 1);
}

#[test]
fn exit_failure_after_all_retries_is_failed() {
    let q = MemoryQueue::new(8, RetryPolicy::with_retries(2));
    q.put(job(1)).unwrap();
    let mut last = None;
    for attempt in 1..=3 {
        let l = q.try_get(W1).unwrap();
        assert_eq!(l.job.attempts, attempt);
        last = Some(q.fail(&l, FailReason::Exit { code: 4 }).unwrap());
    }
    assert!(matches!(
        last,
        Some(Disposition::Final(JobState::Failed { attempts: 3, .. }))
    ));
    q.close().unwrap();
    assert!(matches!(q.try_get(W1), Err(TryGetError::Closed)));
}

#[test]
fn released_lease_goes_back_first_without_counting_an_attempt() {
    let q = MemoryQueue::new(8, RetryPolicy::default());
    q.put(job(1)).unwrap();
    q.put(job(2)).unwrap();
    let l = q.try_get(W1).unwrap();
    q.release(&l).unwrap();
    let again = q.try_get(W2).unwrap();
    assert_eq!(again.job.seq, 1);
    assert_eq!(again.job.attempts, 1);
}

#[test]
fn resumed_job_keeps_its_previous_attempts() {
    let q = MemoryQueue::new(8, RetryPolicy::with_retries(1));
    q.put(NewJob {
        seq: 7,
        payload: b"x".to_vec().into(),
        attempts: 1,
        lost: 0,
        oom: 0,
    })
    .unwrap();
    let l = q.try_get(W1).unwrap();
    assert_eq!(l.job.attempts, 2);
    let d = q.fail(&l, FailReason::Timeout).unwrap();
    assert!(matches!(d, Disposition::Final(JobState::Dead { .. })));
}

/// Many producers and consumers on real threads, with random failures and
/// lost workers: every job reaches exactly one final outcome.
#[test]
fn concurrent_producers_and_failing_consumers_lose_and_duplicate_nothing() {
    const JOBS: u64 = 20_000;
    const PRODUCERS: u64 = 2;
    const CONSUMERS: u64 = 4;
    let q = Arc::new(MemoryQueue::new(64, RetryPolicy::with_retries(2)));
    let start = Arc::new(Barrier::new((PRODUCERS + CONSUMERS) as usize));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let q = Arc::clone(&q);
        let start = Arc::clone(&start);
        producers.push(thread::spawn(move || {
            start.wait();
            for i in 0..JOBS / PRODUCERS {
                q.put(job(p * (JOBS / PRODUCERS) + i + 1)).unwrap();
            }
        }));
    }
    let mut consumers = Vec::new();
    for c in 0..CONSUMERS {
        let q = Arc::clone(&q);
        let start = Arc::clone(&start);
        consumers.push(thread::spawn(move || {
            start.wait();
            let worker = WorkerId(c);
            let mut finals: Vec<(u64, &'static str)> = Vec::new();
            let mut n = 0u64;
            loop {
                match q.get(worker, None) {
                    Ok(lease) => {
                        n += 1;
                        // A deterministic mix of outcomes.
                        let d = match (lease.job.seq + n) % 7 {
                            0 => q.fail(&lease, FailReason::Exit { code: 1 }).unwrap(),
                            1 => {
                                let lost = q.worker_lost(worker, "test").unwrap();
                                assert_eq!(lost.len(), 1);
                                lost.into_iter().next().unwrap().1
                            }
                            _ => {
                                assert_eq!(q.complete(&lease).unwrap(), Completion::Recorded);
                                finals.push((lease.job.seq, "done"));
                                continue;
                            }
                        };
                        if let Disposition::Final(s) = d {
                            finals.push((lease.job.seq, s.name()));
                        }
                    }
                    Err(GetError::Closed) => return finals,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for p in producers {
        p.join().unwrap();
    }
    q.close().unwrap();
    let mut finals: HashMap<u64, Vec<&str>> = HashMap::new();
    for c in consumers {
        for (seq, state) in c.join().unwrap() {
            finals.entry(seq).or_default().push(state);
        }
    }
    assert_eq!(finals.len() as u64, JOBS, "every job reached a final state");
    for (seq, states) in &finals {
        assert_eq!(
            states.len(),
            1,
            "job {seq} finished more than once: {states:?}"
        );
    }
    let c = q.counts().unwrap();
    assert_eq!(c.produced, JOBS);
    assert_eq!(c.done + c.failed + c.dead, JOBS);
    assert!(c.is_drained());
}

#[test]
fn oom_kills_requeue_uncounted_up_to_max_oom_then_the_job_is_dead() {
    let q = MemoryQueue::new(8, RetryPolicy::with_retries(0).max_oom(2));
    q.put(job(1)).unwrap();
    q.close().unwrap();
    let oom = FailReason::OutOfMemory { likely: true };
    for n in 1..=2 {
        let l = q.try_get(W1).unwrap();
        assert_eq!((l.job.attempts, l.job.oom), (n, n - 1));
        assert_eq!(
            q.fail(&l, oom.clone()).unwrap(),
            Disposition::Requeued { attempts: n }
        );
    }
    let l = q.try_get(W1).unwrap();
    assert_eq!(l.job.oom, 2);
    let Disposition::Final(JobState::Dead { attempts, reason }) = q.fail(&l, oom).unwrap() else {
        panic!("the third OOM kill is final")
    };
    assert_eq!((attempts, reason.cause()), (3, "oom"));
    assert!(q.counts().unwrap().is_drained());
}

#[test]
fn a_delayed_retry_waits_in_the_queue_without_being_leased_and_keeps_it_undrained() {
    let delay = Duration::from_millis(300);
    let policy = RetryPolicy::with_retries(1).backoff(jobmill::job::Backoff {
        delay,
        factor: 1.0,
        max: delay,
    });
    let q = MemoryQueue::new(8, policy);
    q.put(job(1)).unwrap();
    q.put(job(2)).unwrap();
    q.close().unwrap();
    let a = q.try_get(W1).unwrap();
    let failed_at = std::time::Instant::now();
    assert_eq!(
        q.fail(&a, FailReason::Exit { code: 1 }).unwrap(),
        Disposition::Requeued { attempts: 1 }
    );
    // The other job is leased meanwhile; the delayed one is not (yet).
    let b = q.try_get(W2).unwrap();
    assert_eq!(b.job.seq, 2);
    q.complete(&b).unwrap();
    assert!(matches!(q.try_get(W2), Err(TryGetError::Empty)));
    let c = q.counts().unwrap();
    assert_eq!(c.queued, 1, "a delayed retry counts as queued");
    assert!(!c.is_drained());
    // A blocking get wakes for it once it is due (no earlier than the
    // smallest jittered delay).
    let again = q.get(W1, Some(Duration::from_secs(30))).unwrap();
    assert!(failed_at.elapsed() >= delay.mul_f64(0.8));
    assert_eq!((again.job.seq, again.job.attempts), (1, 2));
    q.complete(&again).unwrap();
    assert!(matches!(
        q.get(W1, Some(Duration::ZERO)),
        Err(GetError::Closed)
    ));
}

// ---- Model-based property test -------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Put,
    TryGet(u8),
    GetNoWait(u8),
    Complete(u8),
    Fail(u8, u8),
    Release(u8),
    Lost(u8),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Put),
        3 => (0u8..3).prop_map(Op::TryGet),
        1 => (0u8..3).prop_map(Op::GetNoWait),
        3 => any::<u8>().prop_map(Op::Complete),
        2 => (any::<u8>(), 0u8..3).prop_map(|(i, v)| Op::Fail(i, v)),
        1 => any::<u8>().prop_map(Op::Release),
        1 => (0u8..3).prop_map(Op::Lost),
        1 => Just(Op::Close),
    ]
}

#[derive(Default)]
struct Model {
    queued: u64,
    leases: Vec<Lease>,
    closed: bool,
    next_seq: u64,
    finals: BTreeMap<u64, u32>,
}

impl Model {
    fn drained(&self) -> bool {
        self.closed && self.queued == 0 && self.leases.is_empty()
    }
    fn record(&mut self, seq: u64, d: &Disposition) {
        match d {
            Disposition::Requeued { .. } => self.queued += 1,
            Disposition::Final(_) => *self.finals.entry(seq).or_default() += 1,
            Disposition::Stale => panic!("a current lease was reported stale"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random interleavings of put, get, close, complete, fail, release and
    /// worker loss: no job lost or duplicated, `Closed` only when drained,
    /// no false `Empty`.
    #[test]
    fn random_interleavings_keep_the_queue_exact(ops in proptest::collection::vec(op(), 1..200)) {
        let q = MemoryQueue::new(1_000, RetryPolicy::with_retries(1));
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Put => {
                    m.next_seq += 1;
                    match q.put(job(m.next_seq)) {
                        Ok(_) => { prop_assert!(!m.closed); m.queued += 1; }
                        Err(PutError::Closed(_)) => prop_assert!(m.closed),
                        Err(e) => panic!("{e}"),
                    }
                }
                Op::TryGet(w) => match q.try_get(WorkerId(w.into())) {
                    Ok(l) => { prop_assert!(m.queued > 0); m.queued -= 1; m.leases.push(l); }
                    Err(TryGetError::Empty) => { prop_assert_eq!(m.queued, 0, "false empty"); prop_assert!(!m.drained()); }
                    Err(TryGetError::Closed) => prop_assert!(m.drained(), "closed before drained"),
                    Err(e) => panic!("{e}"),
                },
                Op::GetNoWait(w) => match q.get(WorkerId(w.into()), Some(Duration::ZERO)) {
                    Ok(l) => { prop_assert!(m.queued > 0); m.queued -= 1; m.leases.push(l); }
                    Err(GetError::Timeout) => { prop_assert_eq!(m.queued, 0, "false empty"); prop_assert!(!m.drained()); }
                    Err(GetError::Closed) => prop_assert!(m.drained(), "closed before drained"),
                    Err(e) => panic!("{e}"),
                },
                Op::Complete(i) if !m.leases.is_empty() => {
                    let l = m.leases.remove(i as usize % m.leases.len());
                    prop_assert_eq!(q.complete(&l).unwrap(), Completion::Recorded);
                    *m.finals.entry(l.job.seq).or_default() += 1;
                    // A second completion of the same lease is stale.
                    prop_assert_eq!(q.complete(&l).unwrap(), Completion::Stale);
                }
                Op::Fail(i, kind) if !m.leases.is_empty() => {
                    let l = m.leases.remove(i as usize % m.leases.len());
                    let reason = match kind {
                        0 => FailReason::Exit { code: 2 },
                        1 => FailReason::Timeout,
                        _ => FailReason::OutOfMemory { likely: false },
                    };
                    let d = q.fail(&l, reason).unwrap();
                    m.record(l.job.seq, &d);
                }
                Op::Release(i) if !m.leases.is_empty() => {
                    let l = m.leases.remove(i as usize % m.leases.len());
                    q.release(&l).unwrap();
                    m.queued += 1;
                }
                Op::Lost(w) => {
                    let worker = WorkerId(w.into());
                    let (lost, kept): (Vec<Lease>, Vec<Lease>) =
                        m.leases.drain(..).partition(|l| l.worker == worker);
                    m.leases = kept;
                    let got = q.worker_lost(worker, "lost").unwrap();
                    prop_assert_eq!(got.len(), lost.len());
                    for (id, d) in got {
                        let l = lost.iter().find(|l| l.job.id == id).expect("lost lease was ours");
                        m.record(l.job.seq, &d);
                    }
                }
                Op::Close => { q.close().unwrap(); m.closed = true; }
                _ => {}
            }
            let c = q.counts().unwrap();
            prop_assert_eq!(c.queued, m.queued);
            prop_assert_eq!(c.leased, m.leases.len() as u64);
        }
        // Drain: close, then complete everything; every put job ends exactly once.
        q.close().unwrap();
        for l in m.leases.drain(..) {
            prop_assert_eq!(q.complete(&l).unwrap(), Completion::Recorded);
            *m.finals.entry(l.job.seq).or_default() += 1;
        }
        loop {
            match q.try_get(W1) {
                Ok(l) => { q.complete(&l).unwrap(); *m.finals.entry(l.job.seq).or_default() += 1; }
                Err(TryGetError::Closed) => break,
                Err(e) => panic!("after completing every lease the queue must drain: {e}"),
            }
        }
        let c = q.counts().unwrap();
        prop_assert_eq!(m.finals.len() as u64, c.produced, "every job reached a final state");
        prop_assert!(m.finals.values().all(|&n| n == 1), "a job finished twice");
        prop_assert_eq!(c.done + c.failed + c.dead, c.produced);
    }
}
