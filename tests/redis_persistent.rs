//! `jobmill::remote::work_persistent` (the library behind `jobmill worker
//! --persistent`) against a real `redis-server`: a producer that vanishes
//! without closing the queue drains the workers instead of stalling them.

mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use jobmill::job::NewJob;
use jobmill::queue::redis::{RedisConfig, RedisQueue};
use jobmill::queue::Queue;
use jobmill::remote::{work_persistent, PersistentWorkOptions};
use redis_support::RedisServer;

const PYTHONPATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

fn short_ttl() -> RedisConfig {
    RedisConfig {
        producer_ttl: Duration::from_millis(300),
        ..RedisConfig::default()
    }
}

#[test]
fn a_lost_producer_drains_the_persistent_workers_with_exit_status_3() {
    let server = RedisServer::start();
    let url = server.url("plost");
    let producer = RedisQueue::connect(&url, short_ttl()).unwrap();
    let jobs: Vec<NewJob> = (1..=5)
        .map(|i| NewJob::new(i, format!("{i}").into_bytes()))
        .collect();
    producer.put_many(&jobs).unwrap();
    // Gone without closing the queue: its liveness key expires.
    drop(producer);
    let queue = Arc::new(RedisQueue::connect(&url, short_ttl()).unwrap());
    let script = format!(
        "import sys\nsys.path.insert(0, {PYTHONPATH:?})\nimport jobmill_worker\n\
         for job in jobmill_worker.jobs():\n    job.complete(b'')\n"
    );
    let mut opts = PersistentWorkOptions::new(vec!["python3".into(), "-c".into(), script.into()]);
    opts.workers = 2;
    let summary = work_persistent(Arc::clone(&queue), opts).unwrap();
    assert_eq!(summary.done, 5, "{summary:?}");
    assert!(summary.producer_lost, "{summary:?}");
    assert_eq!(summary.error, None);
    assert_eq!(summary.exit_code(), 3);
    let c = queue.counts().unwrap();
    assert_eq!((c.done, c.queued, c.leased, c.closed), (5, 0, 0, false));
}
