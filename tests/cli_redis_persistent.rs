//! `jobmill worker --queue URL --persistent` (and `run --queue URL
//! --persistent`) against a real `redis-server`, with Python workers (the
//! library in python/): many jobs through two worker hosts, a worker
//! process killed with SIGKILL mid-job, close and drain, SIGTERM.

mod common;
mod redis_support;

use std::collections::HashMap;
use std::process::{Child, Stdio};

use common::{finish, jobmill, submit, wait_until};
use redis_support::RedisServer;

const PYTHONPATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

/// Completes each job with `r-PAYLOAD` and a newline.
const ECHO: &str = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(b'r-' + job.payload + b'\\n')\n";

fn spawn_worker(url: &str, jobs: usize, extra: &[&str], script: &str) -> Child {
    jobmill()
        .env("PYTHONPATH", PYTHONPATH)
        .args([
            "worker",
            "--queue",
            url,
            "-j",
            &jobs.to_string(),
            "--persistent",
        ])
        .args(extra)
        .args(["--", "python3", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jobmill worker --persistent")
}

/// `results` rows by sequence number: (state, attempts, host).
fn results(url: &str) -> HashMap<u64, (String, u32, String)> {
    let out = jobmill()
        .args(["results", "--queue", url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let seq: u64 = f[0].parse().unwrap();
        let row = (f[1].to_string(), f[2].parse().unwrap(), f[5].to_string());
        let prev = rows.insert(seq, row);
        assert!(prev.is_none(), "job {seq} has two results");
    }
    rows
}

fn status(url: &str) -> String {
    let out = jobmill().args(["status", "--queue", url]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// (queued, running, done) from `status`.
fn counts(url: &str) -> (u64, u64, u64) {
    let st = status(url);
    let line = st
        .lines()
        .find_map(|l| l.strip_prefix("jobs:"))
        .unwrap_or_else(|| panic!("no jobs line in {st}"));
    let n = |what: &str| -> u64 {
        line.split(',')
            .find_map(|p| p.trim().strip_suffix(what))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {what} in {line}"))
    };
    (n(" queued"), n(" running"), n(" done"))
}

/// Counts `r-N` result lines by N.
fn tally<'a>(outs: impl IntoIterator<Item = &'a str>) -> HashMap<u64, u32> {
    let mut seen = HashMap::new();
    for out in outs {
        for line in out.lines() {
            let n: u64 = line
                .strip_prefix("r-")
                .unwrap_or_else(|| panic!("unexpected output line {line:?}"))
                .parse()
                .unwrap();
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}

#[test]
fn two_persistent_workers_run_1000_jobs_each_exactly_once() {
    let server = RedisServer::start();
    let url = server.url("pthousand");
    let workers: Vec<Child> = (0..2)
        .map(|_| spawn_worker(&url, 2, &["--window", "64"], ECHO))
        .collect();
    let input: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    submit(&url, &[], &input);
    let mut outs = Vec::new();
    for w in workers {
        let (code, stdout, stderr) = finish(w);
        assert_eq!(code, 0, "worker failed: {stderr}");
        outs.push(stdout);
    }
    let seen = tally(outs.iter().map(String::as_str));
    assert_eq!(seen.len(), 1000);
    assert!(seen.values().all(|&c| c == 1), "a result was printed twice");
    let r = results(&url);
    assert_eq!(r.len(), 1000);
    assert!(
        r.values()
            .all(|(s, a, host)| s == "done" && *a == 1 && host != "-"),
        "every job done once, at its first attempt, with its host"
    );
    let st = status(&url);
    assert!(st.contains("state:    drained"), "{st}");
    assert!(st.contains("1000 done"), "{st}");
}

#[test]
fn a_persistent_worker_process_killed_mid_job_under_no_retries_is_replaced_and_every_job_ends_done_once(
) {
    let server = RedisServer::start();
    let url = server.url("pkilled");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pid");
    let input: String = (1..=60).map(|i| format!("{i}\n")).collect();
    // No retries: the job its worker died with was lost, not failed, so it
    // runs again all the same.
    submit(&url, &[], &input);
    // Job 7's first attempt hangs after writing its worker's pid; every
    // other attempt completes at once.
    let script = format!(
        "import os, time, jobmill_worker\n\
         for job in jobmill_worker.jobs():\n\
         \x20   if job.payload == b'7' and job.attempt == 1:\n\
         \x20       with open({m:?} + '.tmp', 'w') as f: f.write(str(os.getpid()))\n\
         \x20       os.rename({m:?} + '.tmp', {m:?})\n\
         \x20       time.sleep(60)\n\
         \x20   job.complete(b'r-' + job.payload + b'\\n')\n",
        m = marker.display().to_string()
    );
    let worker = spawn_worker(&url, 2, &["--window", "4"], &script);
    wait_until("job 7 to start", || marker.exists());
    let pid: u32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::send_signal("KILL", pid);
    let (code, out, err) = finish(worker);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("while running"), "the loss is reported: {err}");
    let seen = tally([out.as_str()]);
    assert_eq!(seen.len(), 60, "{seen:?}");
    assert!(seen.values().all(|&c| c == 1), "{seen:?}");
    let r = results(&url);
    assert_eq!(r.len(), 60);
    assert_eq!(
        (r[&7].0.as_str(), r[&7].1),
        ("done", 2),
        "the lost attempt is recorded (not counted against the retries: there are none)"
    );
    for i in (1..=60).filter(|&i| i != 7) {
        assert_eq!(
            (r[&i].0.as_str(), r[&i].1),
            ("done", 1),
            "job {i}: jobs never started by the lost worker go back uncounted"
        );
    }
    assert!(status(&url).contains("state:    drained"));
}

#[test]
fn a_persistent_worker_waits_on_an_open_queue_and_exits_0_once_it_is_closed_and_drained() {
    let server = RedisServer::start();
    let url = server.url("popen");
    let mut worker = spawn_worker(&url, 2, &[], ECHO);
    submit(&url, &["--keep-open"], "1\n2\n3\n");
    wait_until("the three jobs to be done", || {
        status(&url).contains("3 done")
    });
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker left an open queue"
    );
    submit(&url, &["--keep-open"], "4\n");
    wait_until("the fourth job to be done", || {
        status(&url).contains("4 done")
    });
    assert!(worker.try_wait().unwrap().is_none());
    // An empty submit closes the queue; the worker drains and exits 0.
    submit(&url, &[], "");
    let (code, out, err) = finish(worker);
    assert_eq!(code, 0, "{err}");
    let seen = tally([out.as_str()]);
    assert_eq!(seen, (1..=4).map(|i| (i, 1)).collect());
}

#[test]
fn sigterm_stops_persistent_workers_and_gives_every_lease_back_unrun() {
    let server = RedisServer::start();
    let url = server.url("pterm");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let input: String = (1..=10).map(|i| format!("{i}\n")).collect();
    submit(&url, &[], &input);
    // The first job a worker gets hangs, the first time only.
    let script = format!(
        "import os, time, jobmill_worker\n\
         for job in jobmill_worker.jobs():\n\
         \x20   if not os.path.exists({m:?}):\n\
         \x20       open({m:?}, 'w').close()\n\
         \x20       time.sleep(60)\n\
         \x20   job.complete(b'r-' + job.payload + b'\\n')\n",
        m = marker.display().to_string()
    );
    let first = spawn_worker(&url, 1, &["--window", "4"], &script);
    wait_until("a job to start", || marker.exists());
    assert!(counts(&url).1 >= 1);
    common::send_signal("TERM", first.id());
    let (code, out, err) = finish(first);
    assert_eq!(code, 130, "{err}");
    assert!(out.is_empty(), "{out}");
    let st = status(&url);
    assert!(st.contains("10 queued, 0 running, 0 done"), "{st}");
    // Another worker runs them all, each as attempt 1: the stopped
    // attempts were given back, not counted.
    let second = spawn_worker(&url, 2, &[], &script);
    let (code, out, err) = finish(second);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tally([out.as_str()]).len(), 10);
    let r = results(&url);
    assert_eq!(r.len(), 10);
    assert!(r.values().all(|(s, a, _)| s == "done" && *a == 1), "{r:?}");
}

#[test]
fn run_with_a_queue_and_persistent_workers_prints_every_result_once() {
    let server = RedisServer::start();
    let url = server.url("prun");
    let out = jobmill()
        .env("PYTHONPATH", PYTHONPATH)
        .args(["run", "--queue", &url, "-j", "2", "--persistent", "--"])
        .args(["python3", "-c", ECHO])
        .args([":::", "1", "2", "3", "4", "5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(tally([stdout.as_str()]), (1..=5).map(|i| (i, 1)).collect());
    assert!(status(&url).contains("state:    drained"));
}

#[test]
fn the_first_sigint_lets_the_jobs_sent_finish_and_leaves_the_rest_queued() {
    let server = RedisServer::start();
    let url = server.url("pint");
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let go = dir.path().join("go");
    let input: String = (1..=10).map(|i| format!("{i}\n")).collect();
    submit(&url, &[], &input);
    // The first job waits for the test's go-ahead.
    let script = format!(
        "import os, time, jobmill_worker\n\
         for job in jobmill_worker.jobs():\n\
         \x20   if not os.path.exists({s:?}):\n\
         \x20       open({s:?}, 'w').close()\n\
         \x20       while not os.path.exists({g:?}): time.sleep(0.01)\n\
         \x20   job.complete(b'r-' + job.payload + b'\\n')\n",
        s = started.display().to_string(),
        g = go.display().to_string()
    );
    let worker = spawn_worker(&url, 1, &["--window", "4"], &script);
    wait_until("a job to start", || started.exists());
    let mut worker = worker;
    common::send_signal("INT", worker.id());
    common::read_stderr_until(&mut worker, "interrupted");
    std::fs::write(&go, "").unwrap();
    let (code, out, err) = finish(worker);
    assert_eq!(code, 130, "{err}");
    // The jobs sent to the worker (at most a window and a poll's worth,
    // since the first one blocked it) finish; the rest stays queued.
    let seen = tally([out.as_str()]);
    assert!(seen.values().all(|&c| c == 1));
    let done = seen.len() as u64;
    assert!((1..=5).contains(&done), "{seen:?}");
    assert_eq!(counts(&url), (10 - done, 0, done));
}

#[test]
fn a_long_job_keeps_its_lease_past_the_visibility_timeout() {
    let server = RedisServer::start();
    let url = server.url("plong");
    submit(&url, &["--visibility", "1s"], "slow\n");
    let script = "import time, jobmill_worker\nfor job in jobmill_worker.jobs():\n    time.sleep(3)\n    job.complete(b'r-1\\n')\n";
    // The second worker would take the lease over if heartbeats stopped.
    let a = spawn_worker(&url, 1, &[], script);
    let b = spawn_worker(&url, 1, &[], script);
    let (ca, oa, ea) = finish(a);
    let (cb, ob, eb) = finish(b);
    assert_eq!((ca, cb), (0, 0), "{ea}\n{eb}");
    assert_eq!(format!("{oa}{ob}"), "r-1\n", "ran once, by one worker");
    let r = results(&url);
    assert_eq!((r[&1].0.as_str(), r[&1].1), ("done", 1));
}

#[test]
fn a_killed_persistent_worker_host_takes_its_processes_along_and_peers_take_its_leases_over() {
    let server = RedisServer::start();
    let url = server.url("phost");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pid");
    let input: String = (1..=20).map(|i| format!("{i}\n")).collect();
    submit(&url, &["--visibility", "1s", "--retries", "2"], &input);
    // The first job of the doomed host hangs, after writing its pid.
    let script = format!(
        "import os, time, jobmill_worker\n\
         for job in jobmill_worker.jobs():\n\
         \x20   if not os.path.exists({m:?}):\n\
         \x20       with open({m:?} + '.tmp', 'w') as f: f.write(str(os.getpid()))\n\
         \x20       os.rename({m:?} + '.tmp', {m:?})\n\
         \x20       time.sleep(60)\n\
         \x20   job.complete(b'r-' + job.payload + b'\\n')\n",
        m = marker.display().to_string()
    );
    let doomed = spawn_worker(&url, 1, &["--window", "4"], &script);
    wait_until("a job to start", || marker.exists());
    let child: u32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::send_signal("KILL", doomed.id());
    let (_, doomed_out, _) = finish(doomed);
    assert!(doomed_out.is_empty(), "{doomed_out}");
    wait_until("the guardian to kill the worker process", || {
        !common::pid_alive(child)
    });
    // A peer takes the four idle leases over; they run again as lost
    // attempts (recorded, not counted against the retries).
    let survivor = spawn_worker(&url, 2, &[], &script);
    let (code, out, err) = finish(survivor);
    assert_eq!(code, 0, "{err}");
    let seen = tally([out.as_str()]);
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|&c| c == 1));
    let r = results(&url);
    assert_eq!(r.len(), 20);
    assert!(r.values().all(|(s, _, _)| s == "done"));
    // Every job the lost host held (at least the one it ran) idled out and
    // was taken over, its lost attempt recorded; the others ran once.
    let retried = r.values().filter(|(_, a, _)| *a == 2).count();
    assert!(retried >= 1, "{r:?}");
    assert!(r.values().all(|(_, a, _)| *a <= 2), "{r:?}");
}

#[test]
fn a_missing_worker_command_or_shell_with_persistent_is_refused_before_connecting() {
    // Nothing listens on this URL: the command line is refused first.
    let url = "redis://127.0.0.1:1/none";
    let out = jobmill()
        .args(["worker", "--queue", url, "--persistent", "--"])
        .arg("/nonexistent/worker")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("command not found") && err.contains("/nonexistent/worker"),
        "{err}"
    );
    let out = jobmill()
        .args(["worker", "--queue", url, "--persistent", "--shell", "--"])
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--shell cannot be used with --persistent"),
        "{err}"
    );
}

#[test]
fn a_hung_worker_process_is_replaced_after_missed_heartbeats_and_its_job_retried() {
    let server = RedisServer::start();
    let url = server.url("phung");
    submit(&url, &["--retries", "1"], "1\n2\n3\n");
    // Job 2's first attempt stops its own process (SIGSTOP): it neither
    // answers nor heartbeats, yet it does not exit.
    let script = "import os, signal, jobmill_worker\n\
                  for job in jobmill_worker.jobs():\n\
                  \x20   if job.payload == b'2' and job.attempt == 1:\n\
                  \x20       os.kill(os.getpid(), signal.SIGSTOP)\n\
                  \x20   job.complete(b'r-' + job.payload + b'\\n')\n";
    let worker = spawn_worker(&url, 1, &["--window", "1", "--heartbeat", "100ms"], script);
    let (code, out, err) = finish(worker);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stopped heartbeating"), "{err}");
    assert_eq!(tally([out.as_str()]), (1..=3).map(|i| (i, 1)).collect());
    let r = results(&url);
    assert_eq!((r[&2].0.as_str(), r[&2].1), ("done", 2), "{r:?}");
    assert_eq!((r[&1].1, r[&3].1), (1, 1));
}

#[test]
fn a_worker_command_that_keeps_crashing_gives_up_with_255_and_leaves_the_jobs_queued() {
    let server = RedisServer::start();
    let url = server.url("pcrash");
    submit(&url, &[], "1\n2\n3\n");
    let worker = spawn_worker(&url, 2, &[], "raise SystemExit(1)");
    let (code, out, err) = finish(worker);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("workers keep failing"), "{err}");
    assert!(out.is_empty());
    // Nothing was leased for long or lost: another host can run them all.
    let st = status(&url);
    assert!(st.contains("3 queued, 0 running, 0 done"), "{st}");
    let (code, out, err) = finish(spawn_worker(&url, 1, &[], ECHO));
    assert_eq!(code, 0, "{err}");
    assert_eq!(tally([out.as_str()]), (1..=3).map(|i| (i, 1)).collect());
}

#[test]
fn persistent_workers_ride_out_a_redis_restart_and_every_job_ends_done_once() {
    let mut server = RedisServer::start();
    let url = server.url("prestart");
    let input: String = (1..=400).map(|i| format!("{i}\n")).collect();
    submit(&url, &[], &input);
    let script = "import time, jobmill_worker\nfor job in jobmill_worker.jobs():\n    time.sleep(0.005)\n    job.complete(b'r-' + job.payload + b'\\n')\n";
    let mut workers: Vec<Child> = (0..2)
        .map(|_| spawn_worker(&url, 1, &["--window", "8"], script))
        .collect();
    wait_until("some jobs to be done", || counts(&url).2 >= 20);
    server.stop();
    for w in &mut workers {
        assert!(
            w.try_wait().unwrap().is_none(),
            "a worker ended before the restart"
        );
    }
    server.start_again();
    let mut outs = Vec::new();
    for w in workers {
        let (code, out, err) = finish(w);
        assert_eq!(code, 0, "{err}");
        outs.push(out);
    }
    let seen = tally(outs.iter().map(String::as_str));
    assert_eq!(seen.len(), 400);
    assert!(seen.values().all(|&n| n == 1), "a result was printed twice");
    let r = results(&url);
    assert_eq!(r.len(), 400);
    assert!(r.values().all(|(s, _, _)| s == "done"));
}
