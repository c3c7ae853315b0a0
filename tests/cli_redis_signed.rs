//! `jobmill worker` with a signing key (`JOBMILL_KEY`) against a real
//! `redis-server`: signed tasks run and their results come back signed in
//! the queue's records; an unsigned or changed task is refused before a
//! worker process sees it, dead with the reason, and the worker says why.

mod common;
mod redis_support;

use std::process::Stdio;

use bytes::Bytes;
use common::{finish, jobmill};
use jobmill::job::NewJob;
use jobmill::queue::redis::{RedisConfig, RedisQueue};
use jobmill::queue::Queue;
use jobmill::sign::Key;
use redis_support::RedisServer;

const PYTHONPATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");
const KEY: &str = "a test signing key of 32 bytes!!";

/// Completes each job with `r-` and its payload after the 64-byte header,
/// and records every payload it was handed in the file `$SEEN`.
const ECHO: &str = "import os, jobmill_worker\n\
for job in jobmill_worker.jobs():\n    \
    open(os.environ['SEEN'], 'ab').write(bytes(job.payload)[64:] + b'\\n')\n    \
    job.complete(b'r-' + bytes(job.payload)[64:] + b'\\n')\n";

#[test]
fn a_worker_with_a_key_runs_signed_tasks_and_refuses_unsigned_or_changed_ones() {
    let server = RedisServer::start();
    let url = server.url("signed");
    let key = Key::new(KEY.as_bytes().to_vec(), "test").unwrap();
    let q = RedisQueue::connect(&url, RedisConfig::default()).unwrap();
    let mut changed = key.sign_task(3, b"evil");
    *changed.last_mut().unwrap() ^= 1;
    q.put(NewJob::new(1, Bytes::from(key.sign_task(1, b"one"))))
        .unwrap();
    q.put(NewJob::new(2, Bytes::from_static(b"unsigned")))
        .unwrap();
    q.put(NewJob::new(3, Bytes::from(changed))).unwrap();
    q.put(NewJob::new(4, Bytes::from(key.sign_task(4, b"four"))))
        .unwrap();
    q.close().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let worker = jobmill()
        .env("PYTHONPATH", PYTHONPATH)
        .env("JOBMILL_KEY", KEY)
        .env_remove("JOBMILL_KEY_FILE")
        .env("SEEN", &seen)
        .args(["worker", "--queue", &url, "-j", "1", "--persistent", "--"])
        .args(["python3", "-c", ECHO])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, err) = finish(worker);
    assert_eq!(out, "", "results go to the queue, not to stdout");
    assert!(
        err.contains("refused job 2 (seq 2): the task is not signed"),
        "{err}"
    );
    assert!(err.contains("the task's signature does not match"), "{err}");
    assert_eq!(code, 0, "as for failed jobs, the queue records them: {err}");
    // The worker process never saw the refused tasks.
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "one\nfour\n");

    let mut records = q.take_results(100).unwrap();
    records.sort_by_key(|r| r.seq);
    let got: Vec<(u64, &str, &str)> = records
        .iter()
        .map(|r| (r.seq, r.state.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "done", ""),
            (2, "dead", "refused: the task is not signed"),
            (
                3,
                "dead",
                "refused: the task's signature does not match (a wrong key, or it was changed in the queue)"
            ),
            (4, "done", ""),
        ]
    );
    // Results are signed for their job: verified, and not for another.
    let r1 = records[0].output.as_deref().unwrap();
    assert_eq!(key.verify_result(1, r1), Ok(&b"r-one\n"[..]));
    assert!(key.verify_result(4, r1).is_err());
    assert!(q.take_results(100).unwrap().is_empty(), "taken once");
}
