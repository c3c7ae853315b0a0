//! The Python worker library (python/jobmill_worker.py) against the
//! coordinator, with real python3 processes.

mod workers_common;

use std::time::Duration;

use jobmill::job::{FailReason, JobState, RetryPolicy};
use jobmill::persistent::{self, Config, OutcomeKind, Stop, Stream};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::{Disposition, Queue};
use workers_common::{fill, python, wait_until, Recorder};

fn config(script: &str, workers: usize) -> Config {
    let (command, env) = python(script);
    let mut c = Config::new(command, workers);
    c.env = env;
    c
}

fn queue_of(n: usize, policy: RetryPolicy) -> MemoryQueue {
    let q = MemoryQueue::new(n.max(1), policy);
    let items: Vec<Vec<u8>> = (0..n).map(|i| format!("item-{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = items.iter().map(|v| &v[..]).collect();
    fill(&q, &refs);
    q.close().unwrap();
    q
}

#[test]
fn python_jobs_loop_completes_every_job_once() {
    let q = queue_of(1000, RetryPolicy::default());
    let rec = Recorder::default();
    let mut c = config(
        "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(job.payload.upper())\n",
        2,
    );
    c.window = 16;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    let done = rec.done();
    assert_eq!(done.len(), 1000);
    for o in rec.outcomes.lock().unwrap().iter() {
        assert_eq!(done[&o.job.id], o.job.payload.to_ascii_uppercase());
    }
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
    assert!(q.counts().unwrap().is_drained());
}

#[test]
fn python_worker_killed_mid_job_has_the_job_done_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
import os, time, jobmill_worker
for job in jobmill_worker.jobs():
    if job.payload == b"item-5" and job.attempt == 1:
        open("{}/running.%d" % os.getpid(), "w").close()
        time.sleep(120)
    job.complete(job.payload)
"#,
        dir.path().display()
    );
    let q = queue_of(12, RetryPolicy::with_retries(1));
    let rec = Recorder::default();
    let mut c = config(&script, 2);
    c.window = 2;
    let killer = {
        let dir = dir.path().to_owned();
        std::thread::spawn(move || {
            let mut pid = 0;
            wait_until("a python worker to block on item-5", || {
                std::fs::read_dir(&dir).unwrap().any(|e| {
                    let name = e.unwrap().file_name().into_string().unwrap();
                    name.strip_prefix("running.")
                        .map(|p| pid = p.parse().unwrap())
                        .is_some()
                })
            });
            let pid = rustix::process::Pid::from_raw(pid).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        })
    };
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    killer.join().unwrap();
    assert_eq!(rec.done().len(), 12);
    let outcomes = rec.outcomes.lock().unwrap();
    let mut item5: Vec<_> = outcomes
        .iter()
        .filter(|o| o.job.payload == "item-5")
        .collect();
    item5.sort_by_key(|o| o.job.attempts);
    assert_eq!(item5.len(), 2);
    assert!(matches!(
        &item5[0].kind,
        OutcomeKind::Failed {
            reason: FailReason::WorkerLost { detail },
            disposition: Disposition::Requeued { attempts: 1 }
        } if detail.contains("SIGKILL")
    ));
    assert!(matches!(item5[1].kind, OutcomeKind::Done { .. }));
}

#[test]
fn python_worker_prints_do_not_corrupt_the_protocol() {
    let q = queue_of(40, RetryPolicy::default());
    let rec = Recorder::default();
    let script = "import sys, jobmill_worker\nfor job in jobmill_worker.jobs():\n    print('printing', job.payload.decode())\n    print('to stderr', file=sys.stderr)\n    job.complete(b'ok')\n";
    persistent::run(&q, &config(script, 2), &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 40);
    assert!(rec.done().values().all(|r| r == b"ok"));
    let lines = rec.lines.lock().unwrap();
    let out = lines
        .iter()
        .filter(|(_, s, l)| *s == Stream::Stdout && l.starts_with("printing item-"))
        .count();
    let err = lines
        .iter()
        .filter(|(_, s, l)| *s == Stream::Stderr && l == "to stderr")
        .count();
    assert_eq!((out, err), (40, 40));
}

#[test]
fn python_try_get_is_never_empty_while_jobs_are_queued() {
    let q = queue_of(300, RetryPolicy::default());
    let rec = Recorder::default();
    let script = r#"
import sys, jobmill_worker as jw
w = jw.Worker()
while True:
    try:
        job = w.try_get()
    except jw.Empty:
        sys.exit(42)
    except jw.Closed:
        break
    job.complete(job.payload)
w.close()
"#;
    let mut c = config(script, 1);
    c.window = 3;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 300);
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
}

#[test]
fn python_try_get_while_holding_the_whole_window_is_not_empty() {
    // Window 1: the worker holds a job while it asks for the next one; an
    // even number of jobs, so the held job's pair is always queued.
    let q = queue_of(100, RetryPolicy::default());
    let rec = Recorder::default();
    let script = r#"
import sys, jobmill_worker as jw
w = jw.Worker()
while True:
    try:
        a = w.get()
    except jw.Closed:
        break
    try:
        b = w.try_get()
    except (jw.Empty, jw.Closed):
        sys.exit(42)
    b.complete(b.payload)
    a.complete(a.payload)
w.close()
"#;
    let mut c = config(script, 1);
    c.window = 1;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 100);
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
}

#[test]
fn python_worker_exiting_early_is_replaced_and_nothing_is_lost() {
    let q = queue_of(20, RetryPolicy::with_retries(3));
    let rec = Recorder::default();
    let script = r#"
import sys, jobmill_worker as jw
w = jw.Worker()
for i in range(3):
    job = w.get()
    job.complete(job.payload)
w.flush()
w.get()
sys.exit(3)
"#;
    let mut c = config(script, 1);
    c.window = 4;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 20);
    let lost = rec.lost_details();
    assert!(!lost.is_empty());
    assert!(
        lost[0].contains("exited with code 3 while running job"),
        "{lost:?}"
    );
    assert!(q.counts().unwrap().is_drained());
}

#[test]
fn python_leaving_worker_gives_back_untaken_jobs_without_counting() {
    // Takes two jobs, completes them, and leaves with `break`: the jobs it
    // was sent but never took go back with no attempt counted.
    let q = queue_of(30, RetryPolicy::default());
    let rec = Recorder::default();
    let script = r#"
import jobmill_worker
for i, job in enumerate(jobmill_worker.jobs()):
    job.complete(job.payload)
    if i == 1:
        break
"#;
    let mut c = config(script, 1);
    c.window = 8;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 30);
    let outcomes = rec.outcomes.lock().unwrap();
    assert!(
        outcomes.iter().all(|o| o.job.attempts == 1),
        "no attempt counted twice"
    );
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
}

#[test]
fn python_failure_is_retried_then_failed() {
    let q = queue_of(5, RetryPolicy::with_retries(1));
    let rec = Recorder::default();
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    if job.payload == b'item-2':\n        job.fail('no good')\n    else:\n        job.complete(b'')\n";
    persistent::run(&q, &config(script, 1), &rec, &Stop::new()).unwrap();
    let outcomes = rec.outcomes.lock().unwrap();
    assert!(outcomes.iter().any(|o| matches!(&o.kind,
        OutcomeKind::Failed {
            reason: FailReason::Reported { message },
            disposition: Disposition::Final(JobState::Failed { attempts: 2, .. })
        } if message == "no good")));
}

#[test]
fn python_worker_with_another_protocol_version_is_refused_by_name() {
    let q = queue_of(1, RetryPolicy::default());
    let rec = Recorder::default();
    let script = "import jobmill_worker as jw\njw.PROTOCOL_VERSION = 99\njw.Worker()\n";
    let mut c = config(script, 1);
    c.max_failed_starts = 1;
    c.handshake_timeout = Duration::from_secs(30);
    let err = persistent::run(&q, &c, &rec, &Stop::new()).unwrap_err();
    assert!(
        err.to_string().contains("speaks protocol version 99"),
        "{err}"
    );
    let lines = rec.lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|(_, _, l)| l.contains("refused this worker")),
        "the worker saw the refusal: {lines:?}"
    );
}

#[test]
fn minimal_worker_from_the_protocol_doc_works_without_the_library() {
    let q = queue_of(100, RetryPolicy::default());
    let rec = Recorder::default();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/python/examples/minimal_worker.py"
    );
    let mut c = Config::new(vec!["python3".into(), script.into()], 2);
    c.window = 4;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    let done = rec.done();
    assert_eq!(done.len(), 100);
    for o in rec.outcomes.lock().unwrap().iter() {
        assert_eq!(done[&o.job.id], o.job.payload.to_ascii_uppercase());
    }
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
}

#[test]
fn example_analysis_script_summarises_each_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "the cat sat\nthe cat ran\n").unwrap();
    let q = MemoryQueue::new(10, RetryPolicy::default());
    let inputs = [file.to_str().unwrap().as_bytes(), b"dog dog bird"];
    fill(&q, &inputs);
    q.close().unwrap();
    let rec = Recorder::default();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/examples/analyze.py");
    let (_, env) = python("");
    let mut c = Config::new(vec!["python3".into(), script.into()], 1);
    c.env = env;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    let results: Vec<serde_json::Value> = rec
        .done()
        .values()
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["lines"], 2);
    assert_eq!(results[0]["words"], 6);
    assert_eq!(results[0]["top"][0], serde_json::json!(["cat", 2]));
    assert_eq!(results[1]["top"][0], serde_json::json!(["dog", 2]));
}

#[test]
fn python_crash_is_blamed_on_the_running_job_only() {
    // No loss forgiven: a wrongly blamed job would end dead.
    let q = queue_of(100, RetryPolicy::default().max_lost(0));
    let rec = Recorder::default();
    let script = "import os, jobmill_worker\nfor job in jobmill_worker.jobs():\n    if job.payload == b'item-20' and job.attempt == 1:\n        os.kill(os.getpid(), 9)\n    job.complete(job.payload)\n";
    let mut c = config(script, 1);
    c.window = 64;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    let failed: Vec<_> = rec
        .outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|o| matches!(o.kind, OutcomeKind::Failed { .. }))
        .map(|o| String::from_utf8_lossy(&o.job.payload).into_owned())
        .collect();
    assert_eq!(failed, vec!["item-20"]);
    assert_eq!(rec.done().len(), 99);
}

#[test]
fn a_silent_worker_holding_a_job_is_declared_lost_when_heartbeats_are_asked() {
    // A raw worker that takes a job and then hangs without a word.
    let script = r#"
import os, socket, struct, time
s = socket.socket(fileno=int(os.environ["JOBMILL_FD"]))
body = b"JMWP" + struct.pack("<HI", 1, 0)
s.sendall(struct.pack("<IB", len(body), 1) + body)
s.recv(4096)
time.sleep(60)
"#;
    // No loss forgiven, so the lost job ends dead at once.
    let q = queue_of(1, RetryPolicy::default().max_lost(0));
    let rec = Recorder::default();
    let mut c = config(script, 1);
    c.heartbeat = Some(Duration::from_millis(100));
    c.max_failed_starts = 1;
    let _ = persistent::run(&q, &c, &rec, &Stop::new());
    let lost = rec.lost_details();
    assert!(
        lost.first()
            .is_some_and(|d| d.contains("stopped heartbeating")),
        "{lost:?}"
    );
    assert_eq!(q.counts().unwrap().dead, 1, "its job was counted");
}

#[test]
fn a_library_worker_in_a_long_job_keeps_heartbeating() {
    // 1 s of work against a 100 ms heartbeat (lost after 400 ms of
    // silence): the library's background thread keeps it alive.
    let script = "import time, jobmill_worker\nfor job in jobmill_worker.jobs():\n    time.sleep(1)\n    job.complete(b'ok')\n";
    let q = queue_of(2, RetryPolicy::default());
    let rec = Recorder::default();
    let mut c = config(script, 1);
    c.heartbeat = Some(Duration::from_millis(100));
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 2);
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
}

#[test]
fn python_loop_that_forgets_to_answer_a_job_fails_it_instead_of_stalling() {
    let q = queue_of(3, RetryPolicy::default());
    let rec = Recorder::default();
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    if job.payload != b'item-1':\n        job.complete(b'ok')\n";
    persistent::run(&q, &config(script, 1), &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 2);
    let outcomes = rec.outcomes.lock().unwrap();
    assert!(outcomes.iter().any(|o| o.job.payload == "item-1"
        && matches!(&o.kind, OutcomeKind::Failed {
            reason: FailReason::Reported { message }, ..
        } if message.contains("without completing or failing"))));
}
