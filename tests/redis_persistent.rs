//! The engine with long-lived workers on a shared queue (the library
//! behind `jobmill worker --persistent`) against a real `redis-server`: a producer that vanishes
//! without closing the queue drains the workers instead of stalling them.

mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use jobmill::engine::{Plan, Work, WorkersOptions};
use jobmill::events::{RunSummary, StopCause};
use jobmill::job::NewJob;
use jobmill::queue::redis::{RedisConfig, RedisQueue};
use jobmill::queue::Queue;
use redis_support::RedisServer;

const PYTHONPATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

/// `jobmill worker --persistent -j workers --window window` on `queue`.
fn work_persistent(
    queue: Arc<RedisQueue>,
    command: Vec<std::ffi::OsString>,
    workers: usize,
    window: usize,
) -> RunSummary {
    let mut w = WorkersOptions::new(command, workers);
    w.config.window = window;
    let mut plan = Plan::new(Work::Persistent(w));
    plan.jobs = workers;
    plan.host = Some("test-host".into());
    plan.run(queue, None, Vec::new()).unwrap()
}

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
    let command = vec!["python3".into(), "-c".into(), script.into()];
    let summary = work_persistent(Arc::clone(&queue), command, 2, 16);
    assert_eq!(summary.done, 5, "{summary:?}");
    assert_eq!(summary.stop, StopCause::ProducerLost, "{summary:?}");
    assert!(summary.error.is_none(), "{summary:?}");
    assert_eq!(summary.worker_exit_code(), 3);
    let c = queue.counts().unwrap();
    assert_eq!((c.done, c.queued, c.leased, c.closed), (5, 0, 0, false));
}

#[test]
fn redis_gone_past_the_reconnect_window_stops_the_persistent_workers_with_an_error() {
    let mut server = RedisServer::start();
    let url = server.url("pgone");
    let config = RedisConfig {
        reconnect_for: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    };
    let producer = RedisQueue::connect(&url, config.clone()).unwrap();
    let jobs: Vec<NewJob> = (1..=500)
        .map(|i| NewJob::new(i, format!("{i}").into_bytes()))
        .collect();
    producer.put_many(&jobs).unwrap();
    producer.close().unwrap();
    let queue = Arc::new(RedisQueue::connect(&url, config).unwrap());
    let script = format!(
        "import sys, time\nsys.path.insert(0, {PYTHONPATH:?})\nimport jobmill_worker\n\
         for job in jobmill_worker.jobs():\n    time.sleep(0.01)\n    job.complete(b'')\n"
    );
    let command = vec!["python3".into(), "-c".into(), script.into()];
    let worker = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || work_persistent(queue, command, 2, 4))
    };
    redis_support::wait_until("some jobs to be done", Duration::from_secs(60), || {
        producer.counts().unwrap().done >= 5
    });
    drop(producer);
    server.kill9();
    let summary = worker.join().unwrap();
    assert_eq!(summary.worker_exit_code(), 255, "{summary:?}");
    let error = summary.error.unwrap().to_string();
    assert!(error.contains("queue backend failed"), "{error}");
    assert!(summary.done >= 5 && summary.done < 500, "{}", summary.done);
}
