//! Redis restarting (SIGTERM, AOF reloaded) in the middle of a run: every
//! client reconnects with backoff and every job is done exactly once.

mod redis_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobmill::job::{NewJob, WorkerId};
use jobmill::queue::redis::{RedisConfig, RedisQueue};
use jobmill::queue::{Completion, GetError, Queue};
use redis_support::{wait_until, RedisServer};

/// How the server goes down in the middle of the run.
enum Outage {
    /// SIGTERM: the server writes its AOF and exits.
    Graceful,
    /// SIGKILL with `appendfsync always`: every acknowledged write is on disk.
    Kill9,
}

#[test]
fn a_redis_restart_mid_run_loses_nothing_and_records_each_job_once() {
    run_through(Outage::Graceful);
}

#[test]
fn a_redis_kill_9_with_appendfsync_always_loses_nothing_and_records_each_job_once() {
    run_through(Outage::Kill9);
}

fn run_through(outage: Outage) {
    const N: u64 = 3000;
    let mut server = match outage {
        Outage::Graceful => RedisServer::start(),
        Outage::Kill9 => RedisServer::start_with(&["--appendfsync", "always"]),
    };
    let url = server.url("restart");
    let cfg = RedisConfig {
        capacity: 200,
        reconnect_for: Duration::from_secs(60),
        ..RedisConfig::default()
    };
    let done: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let consumers: Vec<_> = (0..2)
        .map(|c| {
            let q = RedisQueue::connect(&url, cfg.clone()).unwrap();
            let done = Arc::clone(&done);
            std::thread::spawn(move || loop {
                match q.get_many(WorkerId(c), 8, None) {
                    Ok(leases) => {
                        for (l, r) in leases.iter().zip(q.complete_many(&leases).unwrap()) {
                            assert_eq!(r, Completion::Recorded, "job {}", l.job.seq);
                            *done.lock().unwrap().entry(l.job.seq).or_default() += 1;
                        }
                    }
                    Err(GetError::Closed) => return,
                    Err(e) => panic!("consumer {c}: {e}"),
                }
            })
        })
        .collect();
    let producer = {
        let q = RedisQueue::connect(&url, cfg.clone()).unwrap();
        std::thread::spawn(move || {
            for i in 1..=N {
                q.put(NewJob::new(i, format!("{i}").into_bytes())).unwrap();
            }
            q.close().unwrap();
        })
    };
    wait_until(
        "a third of the jobs to be done",
        Duration::from_secs(60),
        || done.lock().unwrap().len() as u64 >= N / 3,
    );
    match outage {
        Outage::Graceful => server.stop(),
        Outage::Kill9 => server.kill9(),
    }
    let at_stop = done.lock().unwrap().len() as u64;
    assert!(at_stop < N, "the run ended before the server stopped");
    server.start_again();
    producer.join().unwrap();
    for c in consumers {
        c.join().unwrap();
    }
    let done = done.lock().unwrap();
    assert_eq!(done.len() as u64, N, "jobs lost");
    assert!(done.values().all(|&n| n == 1), "a job was recorded twice");
    let q = RedisQueue::connect(&url, cfg).unwrap();
    let c = q.counts().unwrap();
    assert_eq!((c.produced, c.done), (N, N));
    assert!(c.is_drained());
}
