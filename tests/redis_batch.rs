//! The Redis backend's batch path (`Queue::try_get_many` /
//! `Queue::complete_many`, as the persistent-worker coordinator calls them
//! through `&dyn Queue`) against a real `redis-server`: one script call per
//! batch, queue order, no false empty, close and drain, and "done exactly
//! once" when a late batch ack races the redelivered copies.

mod redis_support;

use std::time::Duration;

use jobmill::job::{NewJob, RetryPolicy, WorkerId};
use jobmill::queue::redis::{AttemptInfo, RedisConfig, RedisQueue, INLINE_LIMIT};
use jobmill::queue::{Completion, Lease, Queue, TryGetError};
use redis_support::{wait_until, RedisServer};

fn job(seq: u64) -> NewJob {
    NewJob::new(seq, format!("input {seq}").into_bytes())
}

/// Script calls (`EVALSHA`) the server has run so far.
fn script_calls(server: &RedisServer) -> u64 {
    let info: String = server.cmd(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A client with no heartbeat thread, so that the only script calls are
/// the test's own.
fn quiet() -> RedisConfig {
    RedisConfig {
        lease_heartbeat: false,
        ..RedisConfig::default()
    }
}

#[test]
fn try_get_many_leases_in_queue_order_and_complete_many_acks_a_batch_in_one_script_call() {
    let server = RedisServer::start();
    let rq = RedisQueue::connect(&server.url("batch"), quiet()).unwrap();
    let q: &dyn Queue = &rq;
    let w = WorkerId(1);
    let big = vec![7u8; INLINE_LIMIT + 1000];
    let mut jobs: Vec<NewJob> = (1..=10).map(job).collect();
    jobs[4] = NewJob::new(5, big.clone()); // stored beside the entry
    rq.put_many(&jobs).unwrap();
    rq.close().unwrap();

    // Warm up: the first call of each script loads it (NOSCRIPT, LOAD).
    let mut first = Vec::new();
    assert_eq!(q.try_get_many(w, 1, &mut first).unwrap(), 1);
    assert_eq!(q.complete_many(&first).unwrap(), [Completion::Recorded]);

    let mut leases = Vec::new();
    let before = script_calls(&server);
    assert_eq!(q.try_get_many(w, 4, &mut leases).unwrap(), 4);
    let after_lease = script_calls(&server);
    // One LEASE call, plus at most one RECLAIM pass if one fell due.
    assert!(
        after_lease - before <= 2,
        "{} script calls for one batch lease",
        after_lease - before
    );
    assert_eq!(q.try_get_many(w, 100, &mut leases).unwrap(), 5);
    let seqs: Vec<u64> = leases.iter().map(|l| l.job.seq).collect();
    assert_eq!(seqs, (2..=10).collect::<Vec<_>>(), "queue order");
    assert!(leases.iter().all(|l| l.job.attempts == 1));
    assert_eq!(
        &leases[3].job.payload[..],
        &big[..],
        "large payload fetched"
    );
    assert_eq!(&leases[0].job.payload[..], b"input 2");

    // Everything is leased but not done: empty, not closed.
    let mut none = Vec::new();
    assert!(matches!(
        q.try_get_many(w, 10, &mut none),
        Err(TryGetError::Empty)
    ));
    assert!(none.is_empty());

    let before = script_calls(&server);
    let done = q.complete_many(&leases).unwrap();
    assert_eq!(
        script_calls(&server) - before,
        1,
        "one script call per batch"
    );
    assert_eq!(done, vec![Completion::Recorded; 9]);
    // The payload key beside the large job's entry is gone with the job.
    let payload_keys: Vec<String> = server.cmd(&["KEYS", "jm:{batch}:p:*"]);
    assert!(payload_keys.is_empty(), "{payload_keys:?}");

    // A second ack of the same batch changes nothing.
    assert_eq!(
        q.complete_many(&leases).unwrap(),
        vec![Completion::Stale; 9]
    );
    assert!(matches!(
        q.try_get_many(w, 10, &mut none),
        Err(TryGetError::Closed)
    ));
    let c = q.counts().unwrap();
    assert_eq!((c.produced, c.done, c.queued, c.leased), (10, 10, 0, 0));
    assert!(c.is_drained());
}

#[test]
fn a_batch_holding_the_same_lease_twice_records_it_once() {
    let server = RedisServer::start();
    let rq = RedisQueue::connect(&server.url("twice"), quiet()).unwrap();
    let q: &dyn Queue = &rq;
    rq.put_many(&[job(1), job(2)]).unwrap();
    let mut l = Vec::new();
    q.try_get_many(WorkerId(1), 2, &mut l).unwrap();
    let batch = [l[0].clone(), l[1].clone(), l[0].clone()];
    assert_eq!(
        q.complete_many(&batch).unwrap(),
        [
            Completion::Recorded,
            Completion::Recorded,
            Completion::Stale
        ]
    );
    assert_eq!(q.counts().unwrap().done, 2);
}

#[test]
fn a_late_batch_ack_racing_the_redelivered_copies_is_stale_and_each_job_is_done_once() {
    let server = RedisServer::start();
    let url = server.url("lateack");
    // No retries: leases that idle out are lost attempts, not failures.
    let hung_cfg = RedisConfig {
        policy: RetryPolicy::with_retries(0),
        visibility_timeout: Duration::from_secs(1),
        lease_heartbeat: false, // this client "hangs": it never extends its leases
        ..RedisConfig::default()
    };
    let hung = RedisQueue::connect(&url, hung_cfg).unwrap();
    let live = RedisQueue::connect(&url, RedisConfig::default()).unwrap();
    let (hung_q, live_q): (&dyn Queue, &dyn Queue) = (&hung, &live);
    hung.put_many(&(1..=6).map(job).collect::<Vec<_>>())
        .unwrap();
    hung.close().unwrap();

    let mut old = Vec::new();
    assert_eq!(hung_q.try_get_many(WorkerId(1), 4, &mut old).unwrap(), 4);

    // The live client finishes the two jobs never leased, then gets the
    // four idle ones back once their leases time out, as lost attempts.
    let mut fresh = Vec::new();
    let mut redelivered: Vec<Lease> = Vec::new();
    wait_until(
        "the idle leases to be redelivered",
        Duration::from_secs(30),
        || {
            let mut got = Vec::new();
            match live_q.try_get_many(WorkerId(1), 10, &mut got) {
                Ok(_) => {}
                Err(TryGetError::Empty) => {}
                Err(e) => panic!("try_get_many: {e}"),
            }
            for l in got {
                if l.job.attempts == 1 {
                    fresh.push(l);
                } else {
                    redelivered.push(l);
                }
            }
            redelivered.len() == 4
        },
    );
    assert_eq!(fresh.len(), 2);
    let mut old_ids: Vec<_> = old.iter().map(|l| l.job.id).collect();
    let mut new_ids: Vec<_> = redelivered.iter().map(|l| l.job.id).collect();
    old_ids.sort();
    new_ids.sort();
    assert_eq!(old_ids, new_ids, "the same four jobs came back");
    assert!(redelivered
        .iter()
        .all(|l| (l.job.attempts, l.job.lost) == (2, 1)));

    // The slow client's batch ack arrives late: every lease in it is stale.
    assert_eq!(
        hung_q.complete_many(&old).unwrap(),
        vec![Completion::Stale; 4]
    );
    // The live client acks the copies and the fresh jobs in one batch; the
    // copies' results are recorded with attempt 2.
    let mut batch = redelivered.clone();
    batch.extend(fresh.iter().cloned());
    let info = AttemptInfo {
        host: Some("live".into()),
        duration: None,
    };
    assert_eq!(
        live.complete_many_with(&batch, &info).unwrap(),
        vec![Completion::Recorded; 6]
    );
    // And the slow client's retry of its ack is still stale.
    assert_eq!(
        hung_q.complete_many(&old).unwrap(),
        vec![Completion::Stale; 4]
    );
    let c = live_q.counts().unwrap();
    assert_eq!((c.done, c.failed, c.dead), (6, 0, 0));
    assert!(c.is_drained());
    let results = live.results().unwrap();
    assert_eq!(results.len(), 6);
    for r in &results {
        let want = if old_ids.iter().any(|id| id.0 == r.job) {
            2
        } else {
            1
        };
        assert_eq!((r.state.as_str(), r.attempts), ("done", want), "{r:?}");
        assert_eq!(r.host.as_deref(), Some("live"));
    }
}

#[test]
fn batches_larger_than_the_scripts_chunk_size_lease_and_ack_every_job_once() {
    let server = RedisServer::start();
    let rq = RedisQueue::connect(&server.url("huge"), quiet()).unwrap();
    let q: &dyn Queue = &rq;
    let n = 2500;
    rq.put_many(&(1..=n).map(job).collect::<Vec<_>>()).unwrap();
    rq.close().unwrap();
    let mut leases = Vec::new();
    while leases.len() < n as usize {
        q.try_get_many(WorkerId(1), 2500, &mut leases).unwrap();
    }
    let seqs: Vec<u64> = leases.iter().map(|l| l.job.seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    let held: u64 = server.cmd(&["HLEN", "jm:{huge}:l"]);
    assert_eq!(held, n, "one lease hash field per lease");
    // 1200 with result records (2400 fields: three chunks), the rest and a
    // repeated lease without.
    let info = AttemptInfo::default();
    let first = rq.complete_many_with(&leases[..1200], &info).unwrap();
    assert_eq!(first, vec![Completion::Recorded; 1200]);
    let mut rest = leases[1200..].to_vec();
    rest.push(leases[1300].clone());
    let second = q.complete_many(&rest).unwrap();
    assert_eq!(second[..1300], vec![Completion::Recorded; 1300]);
    assert_eq!(second[1300], Completion::Stale, "the repeated lease");
    assert_eq!(rq.results().unwrap().len(), 1200);
    let held: u64 = server.cmd(&["HLEN", "jm:{huge}:l"]);
    assert_eq!(held, 0);
    let c = q.counts().unwrap();
    assert_eq!((c.done, c.leased, c.queued), (n, 0, 0));
    assert!(c.is_drained());
}
