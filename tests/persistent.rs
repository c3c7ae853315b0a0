//! Persistent workers with real processes: the Rust worker library (this
//! test binary re-run as a worker fixture) against the coordinator.

mod workers_common;

use std::sync::Arc;
use std::time::Duration;

use jobmill::job::{FailReason, JobState, RetryPolicy};
use jobmill::persistent::{self, Config, OutcomeKind, PersistentError, Stop, Stream, WorkerEvent};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::{Disposition, Queue};
use jobmill::worker::{self, TryGetError, Worker};
use workers_common::{fill, fixture, python, wait_until, Recorder};

/// Not a test: the worker side, run when this binary is re-executed by the
/// coordinator with `JOBMILL_FIXTURE` set. Does nothing otherwise.
#[test]
fn fixture_worker() {
    let Ok(mode) = std::env::var("JOBMILL_FIXTURE") else {
        return;
    };
    let dir = std::env::var("JOBMILL_FIXTURE_DIR").unwrap_or_default();
    let code = run_fixture(&mode, &dir);
    std::process::exit(code);
}

fn run_fixture(mode: &str, dir: &str) -> i32 {
    let (mode, arg) = mode.split_once(':').unwrap_or((mode, ""));
    if mode == "serve-panics-on" {
        let arg = arg.to_string();
        worker::serve(move |job| {
            if job.payload == arg.as_bytes() {
                panic!("cannot handle {arg}");
            }
            Ok(job.payload.to_vec())
        })
        .unwrap();
        return 0;
    }
    let mut w = Worker::connect().expect("connect");
    match mode {
        // Result = payload.
        "echo" => {
            while let Some(job) = w.next_job().unwrap() {
                let p = job.payload.clone();
                w.complete(job, &p).unwrap();
            }
        }
        // Prints to stdout, then completes with the payload reversed.
        "print" => {
            while let Some(job) = w.next_job().unwrap() {
                println!("printing {}", String::from_utf8_lossy(&job.payload));
                let mut p = job.payload.to_vec();
                p.reverse();
                w.complete(job, &p).unwrap();
            }
        }
        // On payload `arg`, first attempt: mark a file with the pid and
        // block, to be killed from outside.
        "block-on" => {
            while let Some(job) = w.next_job().unwrap() {
                if job.payload == arg.as_bytes() && job.attempts == 1 {
                    w.flush().unwrap();
                    let marker = format!("{dir}/running.{}", std::process::id());
                    std::fs::write(&marker, b"").unwrap();
                    std::thread::sleep(Duration::from_secs(120));
                }
                let p = job.payload.clone();
                w.complete(job, &p).unwrap();
            }
        }
        // On payload `arg`, first attempt: SIGKILL itself at once, with the
        // results of the jobs before it still unsent in its batch.
        "kill-self-on" => {
            while let Some(job) = w.next_job().unwrap() {
                if job.payload == arg.as_bytes() && job.attempts == 1 {
                    let me = rustix::process::getpid();
                    rustix::process::kill_process(me, rustix::process::Signal::KILL).unwrap();
                }
                let p = job.payload.clone();
                w.complete(job, &p).unwrap();
            }
        }
        // Each job takes `arg` milliseconds.
        "sleep-each" => {
            let ms: u64 = arg.parse().unwrap();
            while let Some(job) = w.next_job().unwrap() {
                std::thread::sleep(Duration::from_millis(ms));
                let p = job.payload.clone();
                w.complete(job, &p).unwrap();
            }
        }
        // Completes `arg` jobs, flushes, takes one more and exits with 3.
        "exit-after" => {
            let n: usize = arg.parse().unwrap();
            for _ in 0..n {
                let Some(job) = w.next_job().unwrap() else {
                    return 0;
                };
                let p = job.payload.clone();
                w.complete(job, &p).unwrap();
            }
            w.flush().unwrap();
            let _running = w.next_job().unwrap();
            std::process::exit(3);
        }
        // Fails every job whose payload is `arg`.
        "fail-on" => {
            while let Some(job) = w.next_job().unwrap() {
                if job.payload == arg.as_bytes() {
                    w.fail(job, "bad input").unwrap();
                } else {
                    let p = job.payload.clone();
                    w.complete(job, &p).unwrap();
                }
            }
        }
        // Only try_get; exits 42 on a false Empty (single worker, queue
        // filled and closed beforehand).
        "try-get-only" => loop {
            match w.try_get() {
                Ok(job) => {
                    let p = job.payload.clone();
                    w.complete(job, &p).unwrap();
                }
                Err(TryGetError::Empty) => return 42,
                Err(TryGetError::Closed) => break,
                Err(TryGetError::Worker(e)) => panic!("{e}"),
            }
        },
        // Holds a job while it takes the next one with try_get, then
        // answers both; exits 42 on Empty (single worker, an even number of
        // jobs queued and closed beforehand: the held job's pair is queued).
        "hold-and-try-get" => {
            while let Some(a) = w.next_job().unwrap() {
                let b = match w.try_get() {
                    Ok(b) => b,
                    Err(TryGetError::Empty) | Err(TryGetError::Closed) => return 42,
                    Err(TryGetError::Worker(e)) => panic!("{e}"),
                };
                for job in [b, a] {
                    let p = job.payload.clone();
                    w.complete(job, &p).unwrap();
                }
            }
        }
        // Takes two jobs with get before answering either.
        "take-two" => {
            while let Some(a) = w.next_job().unwrap() {
                let b = w.next_job().unwrap();
                for job in std::iter::once(a).chain(b) {
                    let p = job.payload.clone();
                    w.complete(job, &p).unwrap();
                }
            }
        }
        // The seed's non-blocking strategy: try_get until Empty or Closed.
        "until-empty" => loop {
            match w.try_get() {
                Ok(job) => {
                    let p = job.payload.clone();
                    w.complete(job, &p).unwrap();
                }
                Err(TryGetError::Empty) | Err(TryGetError::Closed) => break,
                Err(TryGetError::Worker(e)) => panic!("{e}"),
            }
        },
        other => panic!("unknown fixture mode {other}"),
    }
    w.close().unwrap();
    0
}

fn config(mode: &str, workers: usize) -> Config {
    let (command, env) = fixture(mode);
    let mut c = Config::new(command, workers);
    c.env = env;
    c
}

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("item-{i}").into_bytes()).collect()
}

fn put_all(q: &MemoryQueue, items: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = items.iter().map(|v| &v[..]).collect();
    fill(q, &refs);
}

#[test]
fn every_job_is_done_exactly_once_with_its_result() {
    let q = MemoryQueue::new(10_000, RetryPolicy::default());
    let items = payloads(2000);
    put_all(&q, &items);
    q.close().unwrap();
    let rec = Recorder::default();
    let mut c = config("echo", 2);
    c.window = 8;
    let summary = persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    let done = rec.done();
    assert_eq!(done.len(), 2000);
    for o in rec.outcomes.lock().unwrap().iter() {
        assert_eq!(done[&o.job.id], o.job.payload.to_vec());
    }
    assert!(q.counts().unwrap().is_drained());
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
    assert_eq!(summary.started, 2);
    assert_eq!(summary.lost, 0);
}

#[test]
fn worker_killed_mid_job_has_the_job_requeued_and_done_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = MemoryQueue::new(100, RetryPolicy::with_retries(1));
    let items = payloads(20);
    put_all(&q, &items);
    q.close().unwrap();
    let rec = Recorder::default();
    // One worker: the retry of item-7 needs the replacement.
    let mut c = config("block-on:item-7", 1);
    c.env
        .push(("JOBMILL_FIXTURE_DIR".into(), dir.path().into()));
    c.window = 2;
    let killer = {
        let dir = dir.path().to_owned();
        std::thread::spawn(move || {
            let mut pid = 0;
            wait_until("a worker to block on item-7", || {
                for e in std::fs::read_dir(&dir).unwrap() {
                    let name = e.unwrap().file_name().into_string().unwrap();
                    if let Some(p) = name.strip_prefix("running.") {
                        pid = p.parse().unwrap();
                        return true;
                    }
                }
                false
            });
            let pid = rustix::process::Pid::from_raw(pid).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        })
    };
    let summary = persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    killer.join().unwrap();
    let done = rec.done();
    assert_eq!(done.len(), 20, "every job done once");
    // By attempt: the retry may finish on another worker before the
    // failure of the first attempt is reported.
    let mut item7: Vec<_> = rec
        .outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.job.payload == "item-7")
        .cloned()
        .collect();
    item7.sort_by_key(|o| o.job.attempts);
    assert_eq!(item7.len(), 2, "{item7:?}");
    assert!(
        matches!(
            &item7[0].kind,
            OutcomeKind::Failed {
                reason: FailReason::WorkerLost { detail },
                disposition: Disposition::Requeued { attempts: 1 },
            } if detail.contains("SIGKILL") && detail.contains("while running job")
                && detail.contains(" (peak RSS ") && detail.contains(" MiB)")
        ),
        "{item7:?}"
    );
    assert_eq!(item7[1].job.attempts, 2);
    assert!(matches!(item7[1].kind, OutcomeKind::Done { .. }));
    assert_eq!(summary.lost, 1);
    let lost = rec.lost_details();
    assert_eq!(lost.len(), 1);
    assert!(lost[0].contains("was killed by SIGKILL"), "{lost:?}");
    assert_eq!(rec.started(), 2, "the killed worker was replaced");
}

#[test]
fn worker_exiting_early_is_replaced_and_only_its_running_job_counts() {
    let q = MemoryQueue::new(100, RetryPolicy::with_retries(2));
    let items = payloads(30);
    put_all(&q, &items);
    q.close().unwrap();
    let rec = Recorder::default();
    let mut c = config("exit-after:4", 1);
    c.window = 4;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 30);
    let lost = rec.lost_details();
    assert!(!lost.is_empty());
    assert!(
        lost[0].contains("exited with code 3 while running job"),
        "{lost:?}"
    );
    // Each incarnation loses exactly the job it was running; the rest of
    // its window is released without counting an attempt.
    let failed: Vec<_> = rec
        .outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|o| matches!(o.kind, OutcomeKind::Failed { .. }))
        .map(|o| o.job.id)
        .collect();
    assert_eq!(failed.len(), lost.len());
    assert!(q.counts().unwrap().is_drained());
}

#[test]
fn worker_writing_garbage_is_named_killed_and_replaced() {
    // A worker that completes the handshake, takes a job, then writes bytes
    // that are not a frame.
    let script = r#"
import os, socket, struct
s = socket.socket(fileno=int(os.environ["JOBMILL_FD"]))
body = b"JMWP" + struct.pack("<HI", 1, 0)
s.sendall(struct.pack("<IB", len(body), 1) + body)
s.recv(23)
s.sendall(struct.pack("<IB", 0, 0x23))
s.recv(4096)
s.sendall(b"\x05\x00\x00\x00\x99garbage!")
import time; time.sleep(60)
"#;
    let q = MemoryQueue::new(100, RetryPolicy::with_retries(1));
    put_all(&q, &payloads(3));
    q.close().unwrap();
    let rec = Recorder::default();
    let (command, env) = python(script);
    let mut c = Config::new(command, 1);
    c.env = env;
    c.max_failed_starts = 2;
    let err = persistent::run(&q, &c, &rec, &Stop::new()).unwrap_err();
    assert!(
        matches!(err, PersistentError::WorkersFailing { .. }),
        "{err}"
    );
    let lost = rec.lost_details();
    assert_eq!(
        lost.len(),
        2,
        "replaced once, then gave up: {lost:?} {:?}",
        rec.lines.lock().unwrap()
    );
    assert!(
        lost[0].contains("worker 1 (pid")
            && lost[0].contains("broke the protocol")
            && lost[0].contains("unknown frame type 0x99"),
        "{lost:?}"
    );
    // The job it held was counted; nothing is lost.
    let c = q.counts().unwrap();
    assert_eq!(c.leased, 0);
    assert_eq!(c.queued + c.dead, 3);
}

#[test]
fn worker_stdout_is_captured_and_never_corrupts_the_protocol() {
    let q = MemoryQueue::new(100, RetryPolicy::default());
    put_all(&q, &payloads(50));
    q.close().unwrap();
    let rec = Recorder::default();
    persistent::run(&q, &config("print", 2), &rec, &Stop::new()).unwrap();
    let done = rec.done();
    assert_eq!(done.len(), 50);
    for o in rec.outcomes.lock().unwrap().iter() {
        let mut expect = o.job.payload.to_vec();
        expect.reverse();
        assert_eq!(done[&o.job.id], expect);
    }
    let lines = rec.lines.lock().unwrap();
    let printed = lines
        .iter()
        .filter(|(_, s, l)| *s == Stream::Stdout && l.contains("printing item-"))
        .count();
    assert_eq!(printed, 50, "{lines:?}");
}

#[test]
fn blocking_get_ends_on_close_and_drain_with_a_slow_producer() {
    let q = Arc::new(MemoryQueue::new(4, RetryPolicy::default()));
    let producer = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            for i in 0..200u64 {
                q.put(jobmill::job::NewJob::new(i + 1, i.to_string().into_bytes()))
                    .unwrap();
                if i % 50 == 0 {
                    std::thread::yield_now();
                }
            }
            q.close().unwrap();
        })
    };
    let rec = Recorder::default();
    persistent::run(&*q, &config("echo", 3), &rec, &Stop::new()).unwrap();
    producer.join().unwrap();
    assert_eq!(rec.done().len(), 200);
    assert!(q.counts().unwrap().is_drained());
    assert!(rec.lost_details().is_empty());
}

#[test]
fn try_get_is_never_empty_while_jobs_are_queued() {
    let q = MemoryQueue::new(1000, RetryPolicy::default());
    put_all(&q, &payloads(500));
    q.close().unwrap();
    let rec = Recorder::default();
    let mut c = config("try-get-only", 1);
    c.window = 3;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 500);
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
}

#[test]
fn job_past_its_timeout_kills_the_worker_and_fails_with_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let q = MemoryQueue::new(100, RetryPolicy::default());
    put_all(&q, &payloads(6));
    q.close().unwrap();
    let rec = Recorder::default();
    let mut c = config("block-on:item-2", 1);
    c.env
        .push(("JOBMILL_FIXTURE_DIR".into(), dir.path().into()));
    c.timeout = Some(Duration::from_millis(300));
    c.window = 4;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert_eq!(
        rec.done().len(),
        5,
        "the others ran, none counted as failed"
    );
    let outcomes = rec.outcomes.lock().unwrap();
    let item2: Vec<_> = outcomes
        .iter()
        .filter(|o| o.job.payload == "item-2")
        .collect();
    assert_eq!(item2.len(), 1);
    assert!(matches!(
        &item2[0].kind,
        OutcomeKind::Failed {
            reason: FailReason::Timeout,
            disposition: Disposition::Final(JobState::Dead { .. })
        }
    ));
    let lost = rec.lost_details();
    assert!(lost[0].contains("past the timeout"), "{lost:?}");
}

#[test]
fn reported_failure_is_retried_then_final_failed() {
    let q = MemoryQueue::new(100, RetryPolicy::with_retries(2));
    put_all(&q, &payloads(10));
    q.close().unwrap();
    let rec = Recorder::default();
    persistent::run(&q, &config("fail-on:item-4", 2), &rec, &Stop::new()).unwrap();
    let outcomes = rec.outcomes.lock().unwrap();
    let mut item4: Vec<_> = outcomes
        .iter()
        .filter(|o| o.job.payload == "item-4")
        .collect();
    item4.sort_by_key(|o| o.job.attempts);
    let item4: Vec<_> = item4.into_iter().map(|o| o.kind.clone()).collect();
    assert_eq!(item4.len(), 3);
    assert!(matches!(
        &item4[2],
        OutcomeKind::Failed {
            reason: FailReason::Reported { message },
            disposition: Disposition::Final(JobState::Failed { attempts: 3, .. })
        } if message == "bad input"
    ));
    assert_eq!(q.counts().unwrap().failed, 1);
}

#[test]
fn a_panic_in_serve_fails_that_job_and_the_worker_goes_on() {
    let q = MemoryQueue::new(100, RetryPolicy::default());
    put_all(&q, &payloads(10));
    q.close().unwrap();
    let rec = Recorder::default();
    persistent::run(&q, &config("serve-panics-on:item-3", 1), &rec, &Stop::new()).unwrap();
    assert_eq!(rec.done().len(), 9);
    assert!(rec.lost_details().is_empty());
    let outcomes = rec.outcomes.lock().unwrap();
    assert!(outcomes.iter().any(|o| matches!(&o.kind,
        OutcomeKind::Failed { reason: FailReason::Reported { message }, .. }
        if message.contains("panicked: cannot handle item-3"))));
}

#[test]
fn a_command_that_is_not_a_worker_gives_up_with_a_clear_error() {
    let q = MemoryQueue::new(100, RetryPolicy::default());
    put_all(&q, &payloads(3));
    q.close().unwrap();
    let rec = Recorder::default();
    let mut c = Config::new(vec!["true".into()], 2);
    c.max_failed_starts = 3;
    let err = persistent::run(&q, &c, &rec, &Stop::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("workers keep failing")
            && msg.contains("all failed their protocol handshake")
            && msg.contains("is it a jobmill worker"),
        "{msg}"
    );
    assert_eq!(q.counts().unwrap().queued, 3, "no job was touched");
    // The first worker of each slot failed the same way: no retries.
    assert_eq!(rec.spawn_count(), 2, "{:?}", rec.events.lock().unwrap());
}

#[test]
fn a_command_that_never_says_hello_gives_up_after_one_handshake_deadline() {
    // Issue 10, fault 4: `sleep 3059` held jobmill for 5 handshake
    // deadlines of 60 s in every slot. Now the first worker of every slot
    // fails the same way, concurrently, and the run gives up at once.
    let q = MemoryQueue::new(100, RetryPolicy::default());
    put_all(&q, &payloads(3));
    q.close().unwrap();
    let rec = Recorder::default();
    let mut c = Config::new(vec!["sleep".into(), "3059".into()], 3);
    c.handshake_timeout = Duration::from_millis(500);
    let t0 = std::time::Instant::now();
    let err = persistent::run(&q, &c, &rec, &Stop::new()).unwrap_err();
    let took = t0.elapsed();
    let msg = err.to_string();
    assert!(
        matches!(err, PersistentError::WorkersFailing { .. })
            && msg.contains("sent no HELLO within 500ms")
            && msg.contains("is it a jobmill worker"),
        "{msg}"
    );
    // Generous: three sequential deadlines or five retries would still
    // pass this, the old 5 x 60 s would not.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_eq!(rec.spawn_count(), 3, "one worker per slot, no retries");
    assert_eq!(q.counts().unwrap().queued, 3, "no job was touched");
}

#[test]
fn first_workers_failing_their_handshakes_in_different_ways_are_retried_as_usual() {
    // Slot 1's worker exits at once, slot 2's never says HELLO: not "the
    // same way", so each slot retries up to max_failed_starts.
    let q = MemoryQueue::new(100, RetryPolicy::default());
    put_all(&q, &payloads(3));
    q.close().unwrap();
    let rec = Recorder::default();
    let script = r#"if [ "$JOBMILL_WORKER_SLOT" = 1 ]; then exit 0; fi; exec sleep 3059"#;
    let mut c = Config::new(vec!["sh".into(), "-c".into(), script.into()], 2);
    c.handshake_timeout = Duration::from_millis(300);
    c.max_failed_starts = 2;
    let err = persistent::run(&q, &c, &rec, &Stop::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("2 workers in a row") && !msg.contains("all failed"),
        "{msg}"
    );
    assert_eq!(rec.spawn_count(), 4, "two starts per slot");
}

#[test]
fn a_worker_flooding_its_output_is_cut_to_its_budget_with_one_notice() {
    // Issue 10, fault 4: `yes` as the worker relayed 450 MB of output
    // while jobmill waited for its HELLO.
    let q = MemoryQueue::new(100, RetryPolicy::default());
    put_all(&q, &payloads(1));
    q.close().unwrap();
    let rec = Recorder::default();
    let mut c = Config::new(vec!["yes".into()], 1);
    c.handshake_timeout = Duration::from_secs(1);
    c.output_limit = 64 << 10;
    let err = persistent::run(&q, &c, &rec, &Stop::new()).unwrap_err();
    assert!(err.to_string().contains("sent no HELLO"), "{err}");
    let lines = rec.lines.lock().unwrap();
    let relayed: usize = lines.iter().map(|(_, _, l)| l.len() + 1).sum();
    // A burst of 64 KiB plus 64 KiB/s for the 1 s deadline (and a slow
    // machine's slack), at 66 bytes of budget per "y" line: well under
    // 10,000 lines, against millions without the budget.
    assert!(!lines.is_empty());
    assert!(lines.len() < 10_000, "{} lines relayed", lines.len());
    assert!(relayed < 64 << 10, "{relayed} bytes relayed");
    let events = rec.events.lock().unwrap();
    let dropped: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::OutputDropped { bytes, detail, .. } => {
                assert!(
                    detail.contains("bytes of worker output dropped"),
                    "{detail}"
                );
                Some(*bytes)
            }
            _ => None,
        })
        .collect();
    assert_eq!(dropped.len(), 1, "one notice for the flood: {dropped:?}");
    assert!(dropped[0] > relayed as u64, "{dropped:?}");
}

#[test]
fn a_line_longer_than_64_kib_is_cut_and_the_rest_reported() {
    let q = MemoryQueue::new(100, RetryPolicy::default());
    q.close().unwrap();
    let rec = Recorder::default();
    let (command, env) = python(
        "import sys\nsys.stderr.write('x' * 200000 + '\\nafter\\n')\nsys.stderr.flush()\n\
         import jobmill_worker\nfor job in jobmill_worker.jobs(): job.complete(b'')\n",
    );
    let mut c = Config::new(command, 1);
    c.env = env;
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    let lines = rec.lines.lock().unwrap();
    let texts: Vec<usize> = lines.iter().map(|(_, _, l)| l.len()).collect();
    assert_eq!(texts, vec![64 << 10, 5], "{texts:?}");
    let events = rec.events.lock().unwrap();
    assert!(
        events.iter().any(|e| matches!(e,
            WorkerEvent::OutputDropped { bytes, .. } if *bytes == 200_000 - (64 << 10) + 1)),
        "{events:?}"
    );
}

#[test]
fn a_missing_program_is_a_spawn_error_naming_it() {
    let q = MemoryQueue::new(100, RetryPolicy::default());
    q.close().unwrap();
    let c = Config::new(vec!["/nonexistent/jobmill-worker".into()], 2);
    let err = persistent::run(&q, &c, &Recorder::default(), &Stop::new()).unwrap_err();
    assert!(matches!(err, PersistentError::Spawn { .. }));
    assert!(
        err.to_string().contains("/nonexistent/jobmill-worker"),
        "{err}"
    );
}

#[test]
fn drain_stop_finishes_sent_jobs_and_leaves_the_rest_queued() {
    let q = MemoryQueue::new(1000, RetryPolicy::default());
    put_all(&q, &payloads(1000));
    let rec = Recorder::default();
    let stop = Stop::new();
    let mut c = config("echo", 2);
    c.window = 4;
    std::thread::scope(|s| {
        s.spawn(|| {
            wait_until("some results", || rec.outcomes.lock().unwrap().len() >= 10);
            stop.drain();
        });
        persistent::run(&q, &c, &rec, &stop).unwrap();
    });
    let counts = q.counts().unwrap();
    assert_eq!(counts.leased, 0, "nothing left leased");
    assert_eq!(counts.done as usize, rec.done().len());
    assert_eq!(counts.done + counts.queued, 1000);
    assert!(rec.lost_details().is_empty());
}

#[test]
fn a_crash_is_blamed_on_the_running_job_not_on_unsent_results_before_it() {
    // No retries and no loss forgiven: a wrongly blamed job would end dead.
    let q = MemoryQueue::new(100, RetryPolicy::default().max_lost(0));
    put_all(&q, &payloads(100));
    q.close().unwrap();
    let rec = Recorder::default();
    // The first window (64 jobs) arrives in one write: items 0..19 are
    // done, their results still in the batch, when item-20 kills it.
    let mut c = config("kill-self-on:item-20", 1);
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
    let c = q.counts().unwrap();
    assert_eq!((c.done, c.dead, c.leased, c.queued), (99, 1, 0, 0));
}

#[test]
fn rust_worker_in_a_long_job_keeps_heartbeating() {
    // 800 ms jobs against a 100 ms heartbeat (lost after 400 ms of silence).
    let q = MemoryQueue::new(10, RetryPolicy::default());
    put_all(&q, &payloads(2));
    q.close().unwrap();
    let rec = Recorder::default();
    let mut c = config("sleep-each:800", 1);
    c.heartbeat = Some(Duration::from_millis(100));
    persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
    assert!(rec.lost_details().is_empty(), "{:?}", rec.lost_details());
    assert_eq!(rec.done().len(), 2);
}

#[test]
fn a_worker_never_holds_more_jobs_than_its_window() {
    // A worker runs items quickly until it blocks on item-12. Each quick
    // item ends with its results and a POLL in one write, which races the
    // feeder's refill: the window must hold all the same. Once the items
    // before item-12 are reported nothing is in transit, so the queue's
    // leases are exactly what the worker holds. Several rounds, since the
    // race goes either way.
    for round in 0..6 {
        let window = 1 + round % 2;
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(MemoryQueue::new(100, RetryPolicy::default()));
        put_all(&q, &payloads(30));
        q.close().unwrap();
        let mut c = config("block-on:item-12", 1);
        c.env
            .push(("JOBMILL_FIXTURE_DIR".into(), dir.path().into()));
        c.window = window;
        let stop = Arc::new(Stop::new());
        let run = {
            let (q, stop) = (Arc::clone(&q), Arc::clone(&stop));
            std::thread::spawn(move || persistent::run(&*q, &c, &Recorder::default(), &*stop))
        };
        let blocked = || std::fs::read_dir(dir.path()).unwrap().next().is_some();
        wait_until("the worker to block on item-12", || {
            blocked() && q.counts().unwrap().done == 12
        });
        let counts = q.counts().unwrap();
        assert!(
            counts.leased <= window as u64,
            "round {round}: window {window}, but the worker holds {} jobs",
            counts.leased
        );
        stop.kill();
        run.join().unwrap().unwrap();
    }
}

#[test]
fn a_worker_holding_its_whole_window_still_gets_the_next_job() {
    // Window 1, and the worker takes a second job before answering the
    // first: past the window, or it would wait forever (get) or be told
    // Empty with jobs queued (try_get).
    for mode in ["take-two", "hold-and-try-get"] {
        let q = MemoryQueue::new(1000, RetryPolicy::default());
        put_all(&q, &payloads(200));
        q.close().unwrap();
        let rec = Recorder::default();
        let mut c = config(mode, 1);
        c.window = 1;
        persistent::run(&q, &c, &rec, &Stop::new()).unwrap();
        assert_eq!(rec.done().len(), 200, "{mode}");
        assert!(
            rec.lost_details().is_empty(),
            "{mode}: {:?}",
            rec.lost_details()
        );
    }
}
