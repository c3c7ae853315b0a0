//! Lost workers, dead jobs and `jobmill requeue` on a real `redis-server`,
//! plus the checks that keep a queue usable: refused settings, a server
//! wanting a password, a worker on a queue that does not exist, and
//! `run --queue` run again after being killed.

mod common;
mod redis_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};

use common::{finish, jobmill, read_stderr_until, submit, wait_until};
use redis_support::RedisServer;

fn spawn_worker(url: &str, command: &[&str]) -> Child {
    jobmill()
        .args(["worker", "--queue", url, "-j", "1", "--"])
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jobmill worker")
}

/// `results --queue` rows by job number: (state, attempts, reason, input).
fn results(url: &str) -> HashMap<u64, (String, u32, String, String)> {
    let out = jobmill()
        .args(["results", "--queue", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let seq: u64 = f[0].parse().unwrap();
        let row = (
            f[1].to_string(),
            f[2].parse().unwrap(),
            f[8].to_string(),
            f[10].to_string(),
        );
        assert!(rows.insert(seq, row).is_none(), "job {seq} listed twice");
    }
    rows
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn keys(server: &RedisServer) -> Vec<String> {
    server.cmd(&["KEYS", "*"])
}

#[test]
fn a_job_lost_more_than_max_lost_times_is_dead_keeps_its_input_and_requeue_runs_it() {
    let server = RedisServer::start();
    let url = server.url("maxlost");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let ok = dir.path().join("ok");
    submit(&url, &["--visibility", "1s", "--max-lost", "1"], "a\nb\n");
    // Job a hangs until the file `ok` exists; b is quick.
    let script = format!(
        "echo \"$1 $JOBMILL_ATTEMPT\" >> {m}; if [ $1 = a ] && [ ! -e {ok} ]; then sleep 60; fi; echo out-$1",
        m = marker.display(),
        ok = ok.display()
    );
    let command = ["sh", "-c", &script, "sh", "{}"];
    // Lost once: forgiven (max-lost 1), it runs again on the next worker.
    let first = spawn_worker(&url, &command);
    wait_until("job a to start", || {
        lines_of(&marker).contains(&"a 1".into())
    });
    common::send_signal("KILL", first.id());
    finish(first);
    let second = spawn_worker(&url, &command);
    wait_until("job a to start again", || {
        lines_of(&marker).contains(&"a 2".into())
    });
    // Lost twice: past --max-lost, so the next worker finds it dead.
    common::send_signal("KILL", second.id());
    let (_, second_out, _) = finish(second);
    assert_eq!(second_out, "out-b\n");
    let third = spawn_worker(&url, &command);
    let (code, out, err) = finish(third);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "nothing left to run");
    let r = results(&url);
    let (state, attempts, reason, input) = &r[&1];
    assert_eq!((state.as_str(), *attempts), ("dead", 2));
    assert!(reason.contains("worker lost"), "{reason}");
    assert_eq!(input, "a", "a dead job keeps its input");
    assert_eq!(r[&2].0, "done");
    let out = jobmill()
        .args(["status", "--queue", &url])
        .output()
        .unwrap();
    let st = String::from_utf8_lossy(&out.stdout);
    assert!(st.contains("1 done, 0 failed, 1 dead"), "{st}");
    assert!(
        st.contains(&format!("jobmill requeue --queue {url}")),
        "status says how to put it back: {st}"
    );
    // A typo requeues nothing.
    let out = jobmill()
        .args(["requeue", "--queue", &url, "1", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job 2 is not failed or dead"), "{err}");
    assert_eq!(results(&url)[&1].0, "dead");
    // Requeued, it runs again with a fresh allowance and completes.
    std::fs::write(&ok, "").unwrap();
    let out = jobmill()
        .args(["requeue", "--queue", &url, "--dead"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("requeued 1 job"), "{err}");
    let fourth = spawn_worker(&url, &command);
    let (code, out, err) = finish(fourth);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "out-a\n");
    let r = results(&url);
    assert_eq!(
        (r[&1].0.as_str(), r[&1].1, r[&1].3.as_str()),
        ("done", 1, "a"),
        "attempts count from 1 again after a requeue"
    );
    let out = jobmill()
        .args(["status", "--queue", &url])
        .output()
        .unwrap();
    let st = String::from_utf8_lossy(&out.stdout);
    assert!(st.contains("state:    drained"), "{st}");
    assert!(st.contains("2 done, 0 failed, 0 dead"), "{st}");
    assert!(st.contains("max 1 lost"), "{st}");
}

#[test]
fn requeue_with_failed_puts_failed_jobs_back_and_says_when_there_is_nothing() {
    let server = RedisServer::start();
    let url = server.url("rqfailed");
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok");
    submit(&url, &[], "x\ny\n");
    let script = format!(
        "if [ $1 = x ] && [ ! -e {ok} ]; then exit 3; fi; echo out-$1",
        ok = ok.display()
    );
    let command = ["sh", "-c", &script, "sh", "{}"];
    let (code, _, err) = finish(spawn_worker(&url, &command));
    assert_eq!(code, 0, "{err}");
    assert_eq!(results(&url)[&1].0, "failed");
    // Without --failed only dead jobs are selected: there are none.
    let out = jobmill()
        .args(["requeue", "--queue", &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("nothing to requeue"), "{err}");
    let out = jobmill()
        .args(["requeue", "--queue", &url, "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("job 1 is failed, not dead (add --failed)"),
        "{err}"
    );
    std::fs::write(&ok, "").unwrap();
    let out = jobmill()
        .args(["requeue", "--queue", &url, "--failed", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let (code, out, err) = finish(spawn_worker(&url, &command));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "out-x\n");
    assert_eq!(results(&url)[&1].0, "done");
}

#[test]
fn queue_settings_that_cannot_work_are_refused_with_the_reason() {
    let server = RedisServer::start();
    let url = server.url("settings");
    for (args, needle) in [
        (
            ["--visibility", "0"],
            "a visibility timeout of 0 is too short",
        ),
        (
            ["--visibility", "500ms"],
            "a visibility timeout of 500ms is too short",
        ),
        (["--capacity", "0"], "a capacity of 0 would let no job wait"),
    ] {
        let out = jobmill()
            .args(["submit", "--queue", &url])
            .args(args)
            .args([":::", "a"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            err.contains("use at least"),
            "{args:?}: says what works: {err}"
        );
    }
    assert!(keys(&server).is_empty(), "{:?}", keys(&server));
    // The least accepted values work.
    submit(&url, &["--visibility", "1s", "--capacity", "1"], "a\n");
}

#[test]
fn a_server_that_needs_a_password_says_how_to_give_it() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = server.url("auth");
    let cases: [&[&str]; 3] = [
        &["status", "--queue", &url],
        &["submit", "--queue", &url, ":::", "a"],
        &["worker", "--queue", &url, "--", "true"],
    ];
    for args in cases {
        let out = jobmill().args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "the Redis server at 127.0.0.1:{} requires a password",
                server.port
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains("redis://:PASSWORD@"), "{err}");
        assert!(!err.contains("multibulk"), "{err}");
    }
    let bad = format!("redis://:wrong@127.0.0.1:{}/auth", server.port);
    let out = jobmill()
        .args(["status", "--queue", &bad])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the password"), "{err}");
    assert!(!err.contains("wrong"), "password shown: {err}");
    let good = format!("redis://:s3cret@127.0.0.1:{}/auth", server.port);
    submit(&good, &[], "a\n");
}

#[test]
fn a_worker_on_a_queue_that_does_not_exist_says_so_waits_and_creates_no_keys() {
    let server = RedisServer::start();
    let url = server.url("typo");
    let mut worker = spawn_worker(&url, &["echo", "out-{}"]);
    let said = read_stderr_until(&mut worker, "Ctrl-C stops");
    assert!(said.contains("there is no queue named \"typo\""), "{said}");
    assert!(said.contains("nothing is created"), "{said}");
    // Looking again and again creates nothing.
    let polls = || -> u64 {
        // Scripts run as EVALSHA, or EVAL the first time: count both.
        let info: String = server.cmd(&["INFO", "commandstats"]);
        info.lines()
            .filter(|l| l.starts_with("cmdstat_eval"))
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|v| v.split(',').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let seen = polls();
    wait_until("the worker to look for the queue twice more", || {
        polls() >= seen + 2
    });
    assert!(keys(&server).is_empty(), "{:?}", keys(&server));
    assert!(worker.try_wait().unwrap().is_none(), "still waiting");
    // Once the queue exists, it works and exits when drained.
    submit(&url, &[], "a\n");
    let (code, out, err) = finish(worker);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "out-a\n");
}

#[test]
fn run_with_a_queue_killed_with_sigkill_and_run_again_finishes_the_same_jobs_once() {
    let server = RedisServer::start();
    let url = server.url("rerun");
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let again = dir.path().join("again");
    // A queue with a short visibility timeout, so the killed run's lease
    // idles out quickly.
    submit(&url, &["--visibility", "1s", "--keep-open"], "");
    let script = format!(
        "echo $1 >> {m}; if [ $1 = 1 ] && [ ! -e {a} ]; then sleep 60; fi; echo out-$1",
        m = marker.display(),
        a = again.display()
    );
    let run = || {
        let mut cmd = jobmill();
        cmd.env("XDG_STATE_HOME", state.path())
            .args(["run", "--queue", &url, "-j", "2", "--"])
            .args(["sh", "-c", &script, "sh", "{}"])
            .args([":::", "1", "2", "3", "4", "5", "6"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let first = run().spawn().unwrap();
    wait_until("jobs 2 to 6 to be done while job 1 hangs", || {
        let out = jobmill()
            .args(["status", "--queue", &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("5 done")
    });
    common::send_signal("KILL", first.id());
    let (_, first_out, _) = finish(first);
    std::fs::write(&again, "").unwrap();
    let out = run().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("not submitting the input again"),
        "says what it does: {err}"
    );
    assert!(!err.contains("0 jobs were submitted"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in first_out.lines().chain(stdout.lines()) {
        *seen.entry(line.to_string()).or_default() += 1;
    }
    for i in 1..=6 {
        assert_eq!(seen.get(&format!("out-{i}")), Some(&1), "job {i}: {seen:?}");
    }
    let r = results(&url);
    assert_eq!(r.len(), 6);
    assert_eq!((r[&1].0.as_str(), r[&1].1), ("done", 2), "one lost attempt");
    assert!((2..=6).all(|i| r[&i].0 == "done" && r[&i].1 == 1), "{r:?}");
}

#[test]
fn run_with_a_queue_killed_mid_submission_and_run_again_resumes_the_submission() {
    use std::io::Write;
    let server = RedisServer::start();
    let url = server.url("resume");
    let state = tempfile::tempdir().unwrap();
    let run = || {
        let mut cmd = jobmill();
        cmd.env("XDG_STATE_HOME", state.path())
            .args(["run", "--queue", &url, "-j", "2", "--", "echo", "out-{}"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    // The first run reads three inputs, runs them, and is killed while its
    // input is still open.
    let mut first = run().spawn().unwrap();
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(b"1\n2\n3\n").unwrap();
    stdin.flush().unwrap();
    wait_until("the first three jobs to be done", || {
        let out = jobmill()
            .args(["status", "--queue", &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("3 done")
    });
    common::send_signal("KILL", first.id());
    drop(stdin);
    let (_, first_out, _) = finish(first);
    // The same command with the whole input: it waits out the dead
    // producer's liveness, then submits the inputs the queue lacks.
    let mut again = run().spawn().unwrap();
    again
        .stdin
        .take()
        .unwrap()
        .write_all(b"1\n2\n3\n4\n5\n6\n")
        .unwrap();
    let (code, out, err) = finish(again);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming it"), "{err}");
    assert!(err.contains("after the first 3"), "{err}");
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in first_out.lines().chain(out.lines()) {
        *seen.entry(line.to_string()).or_default() += 1;
    }
    for i in 1..=6 {
        assert_eq!(seen.get(&format!("out-{i}")), Some(&1), "job {i}: {seen:?}");
    }
    let r = results(&url);
    assert_eq!(r.len(), 6);
    assert!(
        (1..=6).all(|i| r[&i].0 == "done" && r[&i].3 == i.to_string()),
        "{r:?}"
    );
}
