//! The Redis backend against a real `redis-server` (one per test): the same
//! semantics as the memory queue, plus leases that idle out, dead letters,
//! large payloads, backpressure and a lost producer.

mod redis_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use jobmill::job::{FailReason, JobState, NewJob, RetryPolicy, WorkerId};
use jobmill::queue::redis::{
    AttemptInfo, OpenError, ProducerState, RedisConfig, RedisQueue, Requeue, MAX_PAYLOAD,
};
use jobmill::queue::{Completion, Disposition, GetError, PutError, Queue, QueueError, TryGetError};
use redis_support::{wait_until, RedisServer};

const LONG: Option<Duration> = Some(Duration::from_secs(30));

fn open(server: &RedisServer, name: &str, config: RedisConfig) -> RedisQueue {
    RedisQueue::connect(&server.url(name), config).expect("connect to the test server")
}

fn job(seq: u64) -> NewJob {
    NewJob::new(seq, format!("input {seq}").into_bytes())
}

#[test]
fn put_get_complete_close_and_drain_like_the_memory_queue() {
    let server = RedisServer::start();
    let q = open(&server, "basic", RedisConfig::default());
    let w = WorkerId(1);
    let a = q.put(job(1)).unwrap();
    let b = q.put(job(2)).unwrap();
    assert_ne!(a, b);
    let l1 = q.get(w, LONG).unwrap();
    assert_eq!(l1.job.id, a);
    assert_eq!(l1.job.seq, 1);
    assert_eq!(&l1.job.payload[..], b"input 1");
    assert_eq!(l1.job.attempts, 1);
    assert_eq!(q.complete(&l1).unwrap(), Completion::Recorded);
    assert_eq!(
        q.complete(&l1).unwrap(),
        Completion::Stale,
        "second ack is stale"
    );

    q.close().unwrap();
    q.close().unwrap(); // idempotent
    match q.put(job(3)) {
        Err(PutError::Closed(back)) => assert_eq!(back.seq, 3, "the job comes back"),
        other => panic!("put after close: {other:?}"),
    }
    // Closed but not drained: the queued job is still handed out.
    let l2 = q.try_get(w).unwrap();
    assert_eq!(l2.job.id, b);
    let c = q.counts().unwrap();
    assert_eq!((c.produced, c.queued, c.leased, c.done), (2, 0, 1, 1));
    assert!(c.closed && !c.is_drained());
    // Leased but not finished: not drained yet.
    assert!(matches!(q.try_get(w), Err(TryGetError::Empty)));
    assert!(matches!(
        q.get(w, Some(Duration::from_millis(100))),
        Err(GetError::Timeout)
    ));
    assert_eq!(q.complete(&l2).unwrap(), Completion::Recorded);
    assert!(matches!(q.try_get(w), Err(TryGetError::Closed)));
    assert!(matches!(q.get(w, None), Err(GetError::Closed)));
    let c = q.counts().unwrap();
    assert!(c.is_drained());
    assert_eq!(c.done, 2);
    assert_eq!(q.status().unwrap().producer, ProducerState::Closed);
}

#[test]
fn try_get_never_reports_empty_right_after_a_put_from_another_client() {
    let server = RedisServer::start();
    let producer = open(&server, "noempty", RedisConfig::default());
    let consumer = open(&server, "noempty", RedisConfig::default());
    for i in 1..=300 {
        producer.put(job(i)).unwrap();
        let l = consumer
            .try_get(WorkerId(1))
            .unwrap_or_else(|e| panic!("job {i} was put but try_get said {e:?}"));
        assert_eq!(l.job.seq, i);
        consumer.complete(&l).unwrap();
    }
}

#[test]
fn blocked_get_wakes_on_put_and_on_drain() {
    let server = RedisServer::start();
    let q = Arc::new(open(&server, "wake", RedisConfig::default()));
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let waiter = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            let l = q.get(WorkerId(2), None).unwrap();
            tx.send(l.job.seq).unwrap();
            q.complete(&l).unwrap();
            go_rx.recv().unwrap();
            // Now wait for the end, while the peer below holds a lease.
            q.get(WorkerId(2), None)
        })
    };
    q.put(job(7)).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), 7);
    q.put(job(8)).unwrap();
    let held = q.get(WorkerId(1), LONG).unwrap();
    go_tx.send(()).unwrap();
    q.close().unwrap();
    // Closed, but job 8 is leased: the waiter must not end yet. It ends
    // once job 8 reaches its final state (no retries: failed).
    assert!(matches!(
        q.fail(&held, FailReason::Exit { code: 1 }).unwrap(),
        Disposition::Final(JobState::Failed { .. })
    ));
    let end = waiter.join().unwrap();
    assert!(matches!(end, Err(GetError::Closed)), "{end:?}");
}

#[test]
fn a_failed_lease_is_requeued_to_a_waiting_peer_after_close() {
    let server = RedisServer::start();
    let cfg = RedisConfig {
        policy: RetryPolicy::with_retries(1),
        ..RedisConfig::default()
    };
    let q = Arc::new(open(&server, "requeue", cfg));
    q.put(job(1)).unwrap();
    q.close().unwrap();
    let held = q.get(WorkerId(1), LONG).unwrap();
    let waiter = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || q.get(WorkerId(2), None))
    };
    assert_eq!(
        q.fail(&held, FailReason::Exit { code: 2 }).unwrap(),
        Disposition::Requeued { attempts: 1 }
    );
    let again = waiter.join().unwrap().unwrap();
    assert_eq!(again.job.id, held.job.id);
    assert_eq!(again.job.attempts, 2);
    assert_eq!(q.complete(&again).unwrap(), Completion::Recorded);
    assert!(matches!(q.get(WorkerId(1), None), Err(GetError::Closed)));
}

#[test]
fn two_consumers_and_one_producer_run_1000_jobs_exactly_once() {
    const N: u64 = 1000;
    let server = RedisServer::start();
    let url = server.url("many");
    let cfg = RedisConfig {
        capacity: 64, // exercise backpressure too
        ..RedisConfig::default()
    };
    let done: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let consumers: Vec<_> = (0..2)
        .map(|c| {
            let q = RedisQueue::connect(&url, cfg.clone()).unwrap();
            let done = Arc::clone(&done);
            std::thread::spawn(move || loop {
                match q.get_many(WorkerId(c), 16, None) {
                    Ok(leases) => {
                        for (l, r) in leases.iter().zip(q.complete_many(&leases).unwrap()) {
                            assert_eq!(r, Completion::Recorded);
                            *done.lock().unwrap().entry(l.job.seq).or_default() += 1;
                        }
                    }
                    Err(GetError::Closed) => return,
                    Err(e) => panic!("consumer {c}: {e}"),
                }
            })
        })
        .collect();
    let producer = RedisQueue::connect(&url, cfg).unwrap();
    for i in 1..=N {
        producer.put(job(i)).unwrap();
    }
    producer.close().unwrap();
    for c in consumers {
        c.join().unwrap();
    }
    let done = done.lock().unwrap();
    assert_eq!(done.len() as u64, N);
    assert!(done.values().all(|&n| n == 1), "a job was done twice");
    let c = producer.counts().unwrap();
    assert_eq!((c.produced, c.done), (N, N));
    assert!(c.is_drained());
    // Nothing left behind: no pending entry, no lease.
    let pending: Vec<redis::Value> = server.cmd(&["XPENDING", "jm:{many}:s", "g"]);
    assert_eq!(pending[0], redis::Value::Int(0));
    let leases: u64 = server.cmd(&["HLEN", "jm:{many}:l"]);
    assert_eq!(leases, 0);
}

#[test]
fn an_idle_lease_is_redelivered_as_a_lost_attempt_and_the_late_ack_is_stale() {
    let server = RedisServer::start();
    let url = server.url("idle");
    // No retries: the job did not fail, it was lost, so it runs again.
    let hung_cfg = RedisConfig {
        policy: RetryPolicy::with_retries(0),
        visibility_timeout: Duration::from_millis(300),
        lease_heartbeat: false, // this client "hangs": it never extends its lease
        ..RedisConfig::default()
    };
    let hung = RedisQueue::connect(&url, hung_cfg).unwrap();
    let live = RedisQueue::connect(&url, RedisConfig::default()).unwrap();
    assert_eq!(
        live.visibility_timeout(),
        Duration::from_millis(300),
        "first creator wins"
    );
    hung.put(job(1)).unwrap();
    hung.close().unwrap();
    let old = hung.get(WorkerId(1), LONG).unwrap();
    assert_eq!(old.job.attempts, 1);
    let new = live.get(WorkerId(1), LONG).unwrap();
    assert_eq!(new.job.id, old.job.id);
    assert_eq!(
        (new.job.attempts, new.job.lost),
        (2, 1),
        "the lost attempt is recorded, as lost"
    );
    assert_eq!(&new.job.payload[..], b"input 1");
    assert_eq!(hung.complete(&old).unwrap(), Completion::Stale);
    assert_eq!(
        hung.fail(&old, FailReason::Timeout).unwrap(),
        Disposition::Stale
    );
    assert_eq!(live.complete(&new).unwrap(), Completion::Recorded);
    assert_eq!(hung.complete(&old).unwrap(), Completion::Stale);
    let c = live.counts().unwrap();
    assert_eq!((c.done, c.failed, c.dead), (1, 0, 0));
    assert!(c.is_drained());
}

#[test]
fn a_lease_idling_out_past_max_lost_is_dead_as_lost_keeps_its_input_and_can_be_requeued() {
    let server = RedisServer::start();
    let url = server.url("lastidle");
    let cfg = RedisConfig {
        policy: RetryPolicy::with_retries(0).max_lost(1),
        visibility_timeout: Duration::from_millis(200),
        lease_heartbeat: false,
        ..RedisConfig::default()
    };
    let hung = RedisQueue::connect(&url, cfg.clone()).unwrap();
    let hung2 = RedisQueue::connect(&url, cfg).unwrap();
    let live = RedisQueue::connect(&url, RedisConfig::default()).unwrap();
    assert_eq!(
        live.policy().max_lost,
        1,
        "max_lost is a setting of the queue"
    );
    hung.put(job(1)).unwrap();
    hung.close().unwrap();
    let first = hung.get(WorkerId(1), LONG).unwrap();
    assert_eq!((first.job.attempts, first.job.lost), (1, 0));
    // The first loss is forgiven: another hung client gets it back.
    let second = hung2.get(WorkerId(1), LONG).unwrap();
    assert_eq!((second.job.attempts, second.job.lost), (2, 1));
    // The second is past max_lost: the peer reclaims it and it is dead.
    assert!(matches!(live.get(WorkerId(1), None), Err(GetError::Closed)));
    let dl = live.dead_letters().unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].state, "dead");
    assert_eq!((dl[0].attempts, dl[0].lost), (2, 2));
    assert!(dl[0].reason.contains("worker lost"), "{}", dl[0].reason);
    assert_eq!(
        dl[0].input.as_deref(),
        Some(&b"input 1"[..]),
        "a dead job keeps its input"
    );
    // Requeued: a fresh allowance, and it completes.
    let done = live.requeue(|r| r.state == "dead").unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1, Requeue::Requeued);
    assert!(live.dead_letters().unwrap().is_empty());
    let c = live.counts().unwrap();
    assert_eq!((c.queued, c.dead, c.closed), (1, 0, true));
    assert!(!c.is_drained());
    let again = live.get(WorkerId(2), LONG).unwrap();
    assert_eq!(again.job.id, first.job.id);
    assert_eq!(again.job.seq, 1);
    assert_eq!((again.job.attempts, again.job.lost), (1, 0));
    assert_eq!(&again.job.payload[..], b"input 1");
    assert_eq!(
        live.complete_with(&again, &AttemptInfo::default()).unwrap(),
        Completion::Recorded
    );
    // The late reports of the hung clients change nothing.
    assert_eq!(hung.complete(&first).unwrap(), Completion::Stale);
    assert_eq!(hung2.complete(&second).unwrap(), Completion::Stale);
    let c = live.counts().unwrap();
    assert_eq!((c.done, c.dead), (1, 0));
    assert!(c.is_drained());
    let r = live.results().unwrap();
    assert_eq!((r.len(), r[0].state.as_str()), (1, "done"));
    // Nothing left to requeue.
    assert!(live.requeue(|_| true).unwrap().is_empty());
}

#[test]
fn a_large_input_of_a_job_dead_as_lost_is_kept_and_requeued_whole() {
    let server = RedisServer::start();
    let url = server.url("bigdead");
    let cfg = RedisConfig {
        policy: RetryPolicy::with_retries(0).max_lost(0),
        visibility_timeout: Duration::from_millis(200),
        lease_heartbeat: false,
        ..RedisConfig::default()
    };
    let hung = RedisQueue::connect(&url, cfg).unwrap();
    let live = RedisQueue::connect(&url, RedisConfig::default()).unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    hung.put(NewJob::new(1, payload.clone())).unwrap();
    hung.close().unwrap();
    let _held = hung.get(WorkerId(1), LONG).unwrap();
    assert!(matches!(live.get(WorkerId(1), None), Err(GetError::Closed)));
    let dl = live.dead_letters().unwrap();
    assert_eq!((dl[0].state.as_str(), dl[0].lost), ("dead", 1));
    assert_eq!(dl[0].input_bytes, Some(100_000));
    assert_eq!(dl[0].input, None, "too large for the record");
    let out = live.requeue(|_| true).unwrap();
    assert_eq!(out[0].1, Requeue::Requeued);
    let again = live.get(WorkerId(2), LONG).unwrap();
    assert_eq!(&again.job.payload[..], &payload[..], "the whole input");
    live.complete(&again).unwrap();
    let keys: Vec<String> = server.cmd(&["KEYS", "jm:{bigdead}:p:*"]);
    assert!(keys.is_empty(), "payload key left: {keys:?}");
}

#[test]
fn requeue_selects_failed_or_dead_jobs_and_an_old_record_without_input_is_reported() {
    let server = RedisServer::start();
    let q = open(&server, "rq", RedisConfig::default());
    for i in 1..=3 {
        q.put(job(i)).unwrap();
    }
    q.close().unwrap();
    let a = q.get(WorkerId(1), LONG).unwrap();
    let b = q.get(WorkerId(1), LONG).unwrap();
    let c = q.get(WorkerId(1), LONG).unwrap();
    q.fail(&a, FailReason::Exit { code: 3 }).unwrap();
    q.fail(&b, FailReason::Timeout).unwrap();
    q.complete(&c).unwrap();
    assert!(q.counts().unwrap().is_drained());
    // Only the failed one.
    let out = q.requeue(|r| r.state == "failed").unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.job, out[0].1), (a.job.id.0, Requeue::Requeued));
    let c = q.counts().unwrap();
    assert_eq!((c.queued, c.failed, c.dead), (1, 0, 1));
    let again = q.get(WorkerId(2), LONG).unwrap();
    assert_eq!((again.job.seq, again.job.attempts), (1, 1));
    q.complete(&again).unwrap();
    // A dead-letter record written without the input cannot be requeued.
    let key = "jm:{rq}:d";
    let rec: String = server.cmd(&["HGET", key, &b.job.id.0.to_string()]);
    let mut v: serde_json::Value = serde_json::from_str(&rec).unwrap();
    v.as_object_mut().unwrap().remove("input_b64");
    let _: i64 = server.cmd(&["HSET", key, &b.job.id.0.to_string(), &v.to_string()]);
    let out = q.requeue(|_| true).unwrap();
    assert_eq!(out[0].1, Requeue::InputNotKept);
    assert_eq!(q.counts().unwrap().dead, 1);
}

#[test]
fn heartbeats_keep_a_long_lease_from_being_taken_over() {
    let server = RedisServer::start();
    let url = server.url("beat");
    let cfg = RedisConfig {
        visibility_timeout: Duration::from_millis(200),
        ..RedisConfig::default()
    };
    let holder = RedisQueue::connect(&url, cfg.clone()).unwrap();
    let peer = RedisQueue::connect(&url, cfg).unwrap();
    holder.put(job(1)).unwrap();
    let l = holder.get(WorkerId(1), LONG).unwrap();
    // Ten visibility timeouts pass; the peer keeps reclaiming and finds
    // nothing idle.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(peer.reclaim_idle().unwrap(), 0);
        assert!(matches!(
            peer.get(WorkerId(9), Some(Duration::from_millis(100))),
            Err(GetError::Timeout)
        ));
    }
    assert_eq!(holder.complete(&l).unwrap(), Completion::Recorded);
}

#[test]
fn an_always_failing_job_ends_failed_after_n_attempts_with_a_dead_letter() {
    let server = RedisServer::start();
    let cfg = RedisConfig {
        policy: RetryPolicy::with_retries(2),
        ..RedisConfig::default()
    };
    let q = open(&server, "failing", cfg);
    q.put(job(5)).unwrap();
    q.close().unwrap();
    let mut seen = Vec::new();
    loop {
        let l = match q.get(WorkerId(1), LONG) {
            Ok(l) => l,
            Err(GetError::Closed) => break,
            Err(e) => panic!("{e}"),
        };
        seen.push(l.job.attempts);
        let d = q.fail(&l, FailReason::Exit { code: 3 }).unwrap();
        match l.job.attempts {
            1 | 2 => assert_eq!(
                d,
                Disposition::Requeued {
                    attempts: l.job.attempts
                }
            ),
            3 => assert_eq!(
                d,
                Disposition::Final(JobState::Failed {
                    attempts: 3,
                    reason: FailReason::Exit { code: 3 }
                })
            ),
            n => panic!("attempt {n}"),
        }
    }
    assert_eq!(seen, [1, 2, 3]);
    let dl = q.dead_letters().unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (
            dl[0].seq,
            dl[0].state.as_str(),
            dl[0].attempts,
            dl[0].exit_code
        ),
        (5, "failed", 3, Some(3))
    );
    assert_eq!(
        q.results().unwrap(),
        dl,
        "a failed job's record is also its result"
    );
    let c = q.counts().unwrap();
    assert_eq!((c.failed, c.dead, c.done), (1, 0, 0));
    assert!(c.is_drained());
}

#[test]
fn a_job_killed_by_a_signal_on_its_last_attempt_is_dead() {
    let server = RedisServer::start();
    let q = open(&server, "signal", RedisConfig::default());
    q.put(job(1)).unwrap();
    let l = q.get(WorkerId(1), LONG).unwrap();
    let d = q.fail(&l, FailReason::Signal { signal: 9 }).unwrap();
    assert!(matches!(
        d,
        Disposition::Final(JobState::Dead { attempts: 1, .. })
    ));
    let dl = q.dead_letters().unwrap();
    assert_eq!((dl[0].state.as_str(), dl[0].signal), ("dead", Some(9)));
    assert_eq!(q.counts().unwrap().dead, 1);
}

#[test]
fn release_gives_the_attempt_back() {
    let server = RedisServer::start();
    let q = open(&server, "release", RedisConfig::default());
    q.put(job(1)).unwrap();
    let l = q.get(WorkerId(1), LONG).unwrap();
    assert_eq!(l.job.attempts, 1);
    q.release(&l).unwrap();
    assert_eq!(
        q.complete(&l).unwrap(),
        Completion::Stale,
        "released lease is gone"
    );
    let again = q.get(WorkerId(2), LONG).unwrap();
    assert_eq!(again.job.id, l.job.id);
    assert_eq!(again.job.attempts, 1, "release does not count an attempt");
    assert_eq!(q.complete(&again).unwrap(), Completion::Recorded);
}

#[test]
fn worker_lost_requeues_only_that_workers_leases_without_counting_against_retries() {
    let server = RedisServer::start();
    // No retries: lost jobs still run again, because they never failed.
    let cfg = RedisConfig {
        policy: RetryPolicy::with_retries(0),
        ..RedisConfig::default()
    };
    let q = open(&server, "lost", cfg);
    for i in 1..=3 {
        q.put(job(i)).unwrap();
    }
    let a = q.get(WorkerId(1), LONG).unwrap();
    let b = q.get(WorkerId(1), LONG).unwrap();
    let other = q.get(WorkerId(2), LONG).unwrap();
    let mut out = q.worker_lost(WorkerId(1), "exited with SIGKILL").unwrap();
    out.sort_by_key(|(id, _)| *id);
    assert_eq!(
        out,
        vec![
            (a.job.id, Disposition::Requeued { attempts: 1 }),
            (b.job.id, Disposition::Requeued { attempts: 1 })
        ]
    );
    assert_eq!(q.complete(&a).unwrap(), Completion::Stale);
    assert_eq!(q.complete(&other).unwrap(), Completion::Recorded);
    let r = q.get(WorkerId(3), LONG).unwrap();
    assert_eq!(r.job.id, a.job.id);
    // The lost attempt is recorded, and known to be lost.
    assert_eq!((r.job.attempts, r.job.lost), (2, 1));
    // Its next, real failure is judged on counted attempts only: with no
    // retries, it is final at once.
    match q.fail(&r, FailReason::Exit { code: 2 }).unwrap() {
        Disposition::Final(JobState::Failed { attempts, .. }) => assert_eq!(attempts, 2),
        other => panic!("expected failed, got {other:?}"),
    }
    let rec = q.dead_letters().unwrap();
    assert_eq!((rec[0].attempts, rec[0].lost), (2, 1));
}

#[test]
fn a_job_lost_past_max_lost_is_dead_with_the_reason_kept() {
    let server = RedisServer::start();
    let cfg = RedisConfig {
        policy: RetryPolicy::with_retries(5).max_lost(1),
        ..RedisConfig::default()
    };
    let q = open(&server, "maxlost", cfg);
    q.put(job(1)).unwrap();
    let _first = q.get(WorkerId(1), LONG).unwrap();
    let lost = q
        .worker_lost(WorkerId(1), "killed by the OOM killer")
        .unwrap();
    assert_eq!(lost[0].1, Disposition::Requeued { attempts: 1 });
    let _second = q.get(WorkerId(2), LONG).unwrap();
    let lost = q
        .worker_lost(WorkerId(2), "killed by the OOM killer")
        .unwrap();
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
    let dl = q.dead_letters().unwrap();
    assert_eq!((dl[0].attempts, dl[0].lost), (2, 2));
    assert_eq!(dl[0].input.as_deref(), Some(&b"input 1"[..]));
}

#[test]
fn a_64_mib_payload_round_trips_and_its_key_is_removed_when_done() {
    let server = RedisServer::start();
    let q = open(&server, "big", RedisConfig::default());
    let payload: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let id = q.put(NewJob::new(1, payload.clone())).unwrap();
    let key = format!("jm:{{big}}:p:{}", id.0);
    let exists: i64 = server.cmd(&["EXISTS", &key]);
    assert_eq!(exists, 1, "a large payload lives in its own key");
    let l = q.get(WorkerId(1), LONG).unwrap();
    assert_eq!(l.job.payload.len(), payload.len());
    assert!(l.job.payload[..] == payload[..], "payload differs");
    assert_eq!(q.complete(&l).unwrap(), Completion::Recorded);
    let exists: i64 = server.cmd(&["EXISTS", &key]);
    assert_eq!(exists, 0);
}

#[test]
fn a_payload_above_the_limit_is_refused_with_the_sizes() {
    let server = RedisServer::start();
    let q = open(&server, "toolarge", RedisConfig::default());
    // calloc'd and never touched: no real memory is used.
    let huge = vec![0u8; MAX_PAYLOAD + 1];
    match q.put(NewJob::new(1, huge)) {
        Err(PutError::Backend(QueueError::TooLarge { size, limit })) => {
            assert_eq!((size, limit), (MAX_PAYLOAD + 1, MAX_PAYLOAD));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(q.counts().unwrap().produced, 0);
}

#[test]
fn put_blocks_at_capacity_until_a_lease_makes_room_and_wakes_on_close() {
    let server = RedisServer::start();
    let cfg = RedisConfig {
        capacity: 2,
        ..RedisConfig::default()
    };
    let q = Arc::new(open(&server, "cap", cfg));
    q.put(job(1)).unwrap();
    q.put(job(2)).unwrap();
    let returned = Arc::new(AtomicBool::new(false));
    let t = {
        let (q, returned) = (Arc::clone(&q), Arc::clone(&returned));
        std::thread::spawn(move || {
            let r = q.put(job(3));
            returned.store(true, Ordering::SeqCst);
            r
        })
    };
    // The third put was refused for room and now blocks in XREAD on the
    // wake-up stream.
    wait_until(
        "the third put to block in XREAD",
        Duration::from_secs(30),
        || {
            let clients: String = server.cmd(&["CLIENT", "LIST"]);
            clients.contains("cmd=xread")
        },
    );
    assert!(!returned.load(Ordering::SeqCst), "put returned while full");
    assert_eq!(q.counts().unwrap().produced, 2);
    let _l = q.get(WorkerId(1), LONG).unwrap();
    t.join().unwrap().unwrap();
    assert_eq!(q.counts().unwrap().produced, 3);

    // Full again (2 queued): a blocked put wakes with Closed on close.
    let t = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || q.put(job(4)))
    };
    q.close().unwrap();
    assert!(matches!(t.join().unwrap(), Err(PutError::Closed(j)) if j.seq == 4));
}

#[test]
fn a_producer_that_vanishes_without_closing_is_reported_lost() {
    let server = RedisServer::start();
    let url = server.url("orphan");
    let cfg = RedisConfig {
        producer_ttl: Duration::from_secs(2),
        ..RedisConfig::default()
    };
    let consumer = RedisQueue::connect(&url, cfg.clone()).unwrap();
    assert_eq!(consumer.status().unwrap().producer, ProducerState::NotSeen);
    let producer = RedisQueue::connect(&url, cfg).unwrap();
    producer.put(job(1)).unwrap();
    assert_eq!(consumer.status().unwrap().producer, ProducerState::Alive);
    drop(producer); // gone without close
    let l = consumer.get(WorkerId(1), LONG).unwrap();
    consumer.complete(&l).unwrap();
    match consumer.get(WorkerId(1), None) {
        Err(GetError::Backend(QueueError::ProducerLost { queue, .. })) => {
            assert!(queue.contains("orphan"), "{queue}")
        }
        other => panic!("expected producer lost, got {other:?}"),
    }
    assert_eq!(consumer.status().unwrap().producer, ProducerState::Lost);
}

#[test]
fn an_unreachable_server_is_an_error_within_seconds() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let e = RedisQueue::connect(
        &format!("redis://127.0.0.1:{port}/q"),
        RedisConfig::default(),
    )
    .unwrap_err();
    // A generous bound: the connect timeout (5 s) gives up long before.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let msg = jobmill::events::error_chain(&e);
    assert!(matches!(e, OpenError::Queue { .. }));
    // The client's own error is kept as the source, not flattened.
    assert!(std::error::Error::source(&e)
        .and_then(std::error::Error::source)
        .is_some());
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("unreachable"),
        "{msg}"
    );
}

#[test]
fn a_bad_url_is_refused_before_connecting() {
    let e =
        RedisQueue::connect("redis://:secret@localhost:6379", RedisConfig::default()).unwrap_err();
    assert!(matches!(e, OpenError::Url(_)));
    let msg = e.to_string();
    assert!(
        msg.contains("queue name") && !msg.contains("secret"),
        "{msg}"
    );
}

#[test]
fn settled_entries_are_trimmed_but_never_a_pending_one() {
    let server = RedisServer::start();
    let q = open(&server, "trim", RedisConfig::default());
    let jobs: Vec<NewJob> = (1..=3000).map(job).collect();
    q.put_many(&jobs).unwrap();
    let oldest = q.get(WorkerId(1), LONG).unwrap();
    loop {
        match q.get_many(WorkerId(2), 500, Some(Duration::from_millis(50))) {
            Ok(ls) => assert!(q
                .complete_many(&ls)
                .unwrap()
                .iter()
                .all(|c| *c == Completion::Recorded)),
            Err(GetError::Timeout) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // 2999 settled entries, but the oldest is pending: nothing may go.
    let entry = format!("{}-{}", oldest.token.hi, oldest.token.lo);
    let found: Vec<redis::Value> = server.cmd(&["XRANGE", "jm:{trim}:s", &entry, &entry]);
    assert_eq!(found.len(), 1, "the pending entry was trimmed");
    assert_eq!(q.complete(&oldest).unwrap(), Completion::Recorded);
    // Once it is settled, the settled entries are trimmed.
    q.put_many(&jobs).unwrap();
    q.close().unwrap();
    loop {
        match q.get_many(WorkerId(2), 500, LONG) {
            Ok(ls) => {
                q.complete_many(&ls).unwrap();
            }
            Err(GetError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let len: u64 = server.cmd(&["XLEN", "jm:{trim}:s"]);
    assert!(len < 3000, "stream still holds {len} entries");
    assert_eq!(q.counts().unwrap().done, 6000);
}

#[test]
fn complete_with_stores_the_result_record_once() {
    let server = RedisServer::start();
    let q = open(&server, "results", RedisConfig::default());
    q.put(job(4)).unwrap();
    q.put(job(5)).unwrap();
    let a = q.get(WorkerId(1), LONG).unwrap();
    let b = q.get(WorkerId(1), LONG).unwrap();
    let info = AttemptInfo {
        host: Some("hostA".into()),
        duration: Some(Duration::from_millis(1500)),
    };
    assert_eq!(q.complete_with(&a, &info).unwrap(), Completion::Recorded);
    assert_eq!(q.complete_with(&a, &info).unwrap(), Completion::Stale);
    q.complete(&b).unwrap(); // no record asked for
    let r = q.results().unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].seq, r[0].state.as_str(), r[0].attempts, r[0].exit_code),
        (4, "done", 1, Some(0))
    );
    assert_eq!(
        (r[0].host.as_deref(), r[0].duration_ms),
        (Some("hostA"), Some(1500))
    );
    assert!(q.dead_letters().unwrap().is_empty());
}

#[test]
fn settings_set_by_a_later_client_are_followed_by_an_earlier_one() {
    let server = RedisServer::start();
    let url = server.url("settings");
    let worker = RedisQueue::connect(&url, RedisConfig::default()).unwrap();
    assert_eq!(worker.policy(), RetryPolicy::default());
    let submitter = RedisQueue::connect(&url, RedisConfig::default()).unwrap();
    submitter
        .set_settings(
            RetryPolicy::with_retries(2).max_lost(7),
            Duration::from_secs(5),
            10,
        )
        .unwrap();
    submitter.put(job(1)).unwrap();
    let l = worker.get(WorkerId(1), LONG).unwrap();
    assert_eq!(worker.policy(), RetryPolicy::with_retries(2).max_lost(7));
    assert_eq!(worker.visibility_timeout(), Duration::from_secs(5));
    assert_eq!(
        worker.fail(&l, FailReason::Exit { code: 1 }).unwrap(),
        Disposition::Requeued { attempts: 1 }
    );
}

#[test]
fn a_queue_left_open_on_purpose_is_waited_on_not_reported_lost() {
    let server = RedisServer::start();
    let url = server.url("leftopen");
    let cfg = RedisConfig {
        producer_ttl: Duration::from_millis(100),
        ..RedisConfig::default()
    };
    let consumer = RedisQueue::connect(&url, cfg.clone()).unwrap();
    {
        let producer = RedisQueue::connect(&url, cfg.clone()).unwrap();
        producer.put(job(1)).unwrap();
        producer.leave_open().unwrap();
    }
    let l = consumer.get(WorkerId(1), LONG).unwrap();
    consumer.complete(&l).unwrap();
    // Many producer TTLs pass: still waiting, never "lost".
    assert!(matches!(
        consumer.get(WorkerId(1), Some(Duration::from_millis(500))),
        Err(GetError::Timeout)
    ));
    assert_eq!(consumer.status().unwrap().producer, ProducerState::NotSeen);
    // A later producer adds a job and closes.
    let producer = RedisQueue::connect(&url, cfg).unwrap();
    producer.put(job(2)).unwrap();
    producer.close().unwrap();
    let l = consumer.get(WorkerId(1), LONG).unwrap();
    assert_eq!(l.job.seq, 2);
    consumer.complete(&l).unwrap();
    assert!(matches!(
        consumer.get(WorkerId(1), None),
        Err(GetError::Closed)
    ));
}

#[test]
fn a_missing_queue_is_an_error_when_not_creating_and_destroy_removes_every_key() {
    let server = RedisServer::start();
    let url = server.url("gone");
    let read_only = RedisConfig {
        create: false,
        ..RedisConfig::default()
    };
    let e = RedisQueue::connect(&url, read_only.clone()).unwrap_err();
    assert!(e.to_string().contains("no queue named \"gone\""), "{e}");
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert!(keys.is_empty(), "a read-only open created {keys:?}");

    let q = RedisQueue::connect(&url, RedisConfig::default()).unwrap();
    q.put(NewJob::new(1, vec![7u8; 100_000])).unwrap(); // payload in its own key
    q.put(job(2)).unwrap();
    let l = q.get(WorkerId(1), LONG).unwrap();
    q.fail(&l, FailReason::Timeout).unwrap();
    RedisQueue::connect(&url, read_only).expect("exists now");
    q.destroy().unwrap();
    drop(q);
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert!(keys.is_empty(), "left behind: {keys:?}");
}

#[test]
fn a_password_in_the_url_is_used_and_a_wrong_or_missing_one_is_a_clear_error_without_it() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let good = format!("redis://:s3cret@127.0.0.1:{}/auth", server.port);
    let q = RedisQueue::connect(&good, RedisConfig::default()).expect("password accepted");
    q.put(job(1)).unwrap();
    assert_eq!(q.counts().unwrap().produced, 1);
    let bad = format!("redis://:wrong@127.0.0.1:{}/auth", server.port);
    let msg = jobmill::events::error_chain(
        &RedisQueue::connect(&bad, RedisConfig::default()).unwrap_err(),
    );
    assert!(!msg.contains("wrong"), "password shown: {msg}");
    assert!(msg.contains(":***@"), "{msg}");
    assert!(msg.contains("refused the password"), "{msg}");
    let none = server.url("auth");
    let msg = jobmill::events::error_chain(
        &RedisQueue::connect(&none, RedisConfig::default()).unwrap_err(),
    );
    assert!(
        msg.contains(&format!(
            "the Redis server at 127.0.0.1:{} requires a password: put it in the URL as \
             redis://:PASSWORD@127.0.0.1:{}/auth",
            server.port, server.port
        )),
        "{msg}"
    );
    assert!(!msg.contains("multibulk"), "{msg}");
}

#[test]
fn requeue_puts_back_many_dead_jobs_across_pages_in_job_order() {
    let server = RedisServer::start();
    let q = open(&server, "rqmany", RedisConfig::default());
    let n = 1200u64;
    q.put_many(&(1..=n).map(job).collect::<Vec<_>>()).unwrap();
    q.close().unwrap();
    let mut leases = Vec::new();
    while (leases.len() as u64) < n {
        leases.extend(q.get_many(WorkerId(1), 500, LONG).unwrap());
    }
    for l in &leases {
        q.fail(l, FailReason::Timeout).unwrap();
    }
    assert_eq!(q.counts().unwrap().dead, n);
    // Every other one only: the selection is honoured.
    let out = q.requeue(|r| r.job % 2 == 0).unwrap();
    assert_eq!(out.len() as u64, n / 2);
    assert!(out.iter().all(|(_, w)| *w == Requeue::Requeued));
    let c = q.counts().unwrap();
    assert_eq!((c.queued, c.dead), (n / 2, n / 2));
    let mut again = Vec::new();
    while (again.len() as u64) < n / 2 {
        again.extend(q.get_many(WorkerId(2), 500, LONG).unwrap());
    }
    let ids: Vec<u64> = again.iter().map(|l| l.job.id.0).collect();
    let want: Vec<u64> = (1..=n).filter(|i| i % 2 == 0).collect();
    assert_eq!(ids, want, "requeued in job order");
    assert!(again
        .iter()
        .all(|l| l.job.attempts == 1 && l.job.payload == format!("input {}", l.job.seq)));
    assert_eq!(q.complete_many(&again).unwrap().len() as u64, n / 2);
    let c = q.counts().unwrap();
    assert_eq!((c.done, c.dead), (n / 2, n / 2));
    assert!(c.is_drained());
}

#[test]
fn oom_kills_are_carried_in_the_entry_and_bounded_by_max_oom() {
    let server = RedisServer::start();
    let cfg = RedisConfig {
        policy: RetryPolicy::with_retries(0).max_oom(1),
        ..RedisConfig::default()
    };
    let q = open(&server, "oom", cfg);
    q.put(job(1)).unwrap();
    let oom = FailReason::OutOfMemory { likely: false };
    let a = q.get(WorkerId(1), LONG).unwrap();
    assert_eq!(
        q.fail(&a, oom.clone()).unwrap(),
        Disposition::Requeued { attempts: 1 }
    );
    // Another client sees the OOM kill (and no loss) in the requeued entry.
    let other = open(&server, "oom", RedisConfig::default());
    let b = other.get(WorkerId(2), LONG).unwrap();
    assert_eq!((b.job.attempts, b.job.lost, b.job.oom), (2, 0, 1));
    other.release(&b).unwrap();
    let c = q.get(WorkerId(1), LONG).unwrap();
    assert_eq!(
        (c.job.attempts, c.job.oom),
        (2, 1),
        "release keeps the OOM count"
    );
    match q.fail(&c, oom).unwrap() {
        Disposition::Final(JobState::Dead { attempts, reason }) => {
            assert_eq!((attempts, reason.cause()), (2, "oom"))
        }
        other => panic!("the second OOM kill is past --max-oom 1: {other:?}"),
    }
}

#[test]
fn a_delayed_retry_waits_on_the_server_without_a_lease_and_keeps_the_queue_undrained() {
    let server = RedisServer::start();
    let delay = Duration::from_millis(400);
    let cfg = RedisConfig {
        policy: RetryPolicy::with_retries(1).backoff(jobmill::job::Backoff {
            delay,
            factor: 1.0,
            max: delay,
        }),
        ..RedisConfig::default()
    };
    let q = open(&server, "delayed", cfg);
    q.put(job(1)).unwrap();
    q.put(NewJob::new(2, vec![b'x'; MAX_PAYLOAD.min(1 << 20)]))
        .unwrap();
    q.close().unwrap();
    let a = q.get(WorkerId(1), LONG).unwrap();
    let b = q.get(WorkerId(1), LONG).unwrap();
    let failed_at = Instant::now();
    assert_eq!(
        q.fail(&a, FailReason::Exit { code: 1 }).unwrap(),
        Disposition::Requeued { attempts: 1 }
    );
    // A large (external) payload is delayed too.
    assert_eq!(
        q.fail(&b, FailReason::Timeout).unwrap(),
        Disposition::Requeued { attempts: 1 }
    );
    assert!(matches!(q.try_get(WorkerId(2)), Err(TryGetError::Empty)));
    assert!(!q.counts().unwrap().is_drained());
    let mut again = vec![
        q.get(WorkerId(2), LONG).unwrap(),
        q.get(WorkerId(2), LONG).unwrap(),
    ];
    assert!(failed_at.elapsed() >= delay.mul_f64(0.8));
    again.sort_by_key(|l| l.job.seq);
    assert_eq!(&again[0].job.payload[..], b"input 1");
    assert_eq!(again[1].job.payload.len(), MAX_PAYLOAD.min(1 << 20));
    assert_eq!((again[0].job.attempts, again[1].job.attempts), (2, 2));
    for l in &again {
        assert_eq!(q.complete(l).unwrap(), Completion::Recorded);
    }
    assert!(matches!(q.get(WorkerId(2), LONG), Err(GetError::Closed)));
}
