//! `jobmill run --persistent` end to end: the binary, Python workers (the
//! library in python/), real signals.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use assert_cmd::Command as AssertCommand;
use common::*;

const PYTHONPATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

fn lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::to_string)
        .collect()
}

const UPPER: &str = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(job.payload.upper() + b'\\n')\n";

#[test]
fn persistent_run_prints_each_result_once_in_order_with_k() {
    let out = AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .env("PYTHONPATH", PYTHONPATH)
        .args([
            "run",
            "-k",
            "-j",
            "3",
            "--persistent",
            "--window",
            "2",
            "--",
        ])
        .args(["python3", "-c", UPPER])
        .write_stdin((0..200).map(|i| format!("item{i}\n")).collect::<String>())
        .assert()
        .code(0)
        .get_output()
        .clone();
    let want: Vec<String> = (0..200).map(|i| format!("ITEM{i}")).collect();
    assert_eq!(lines(&out.stdout), want);
}

#[test]
fn persistent_failures_are_retried_then_counted_in_the_exit_status() {
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    if job.payload == b'bad':\n        job.fail('cannot parse %r' % job.payload)\n    else:\n        job.complete(b'ok\\n')\n";
    let out = AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .env("PYTHONPATH", PYTHONPATH)
        .args(["run", "--retries", "1", "--persistent", "--"])
        .args(["python3", "-c", script])
        .write_stdin("a\nbad\nb\n")
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert_eq!(lines(&out.stdout), vec!["ok", "ok"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("job 2 attempt 1 failed: cannot parse b'bad'"),
        "{err}"
    );
    assert!(
        err.contains("job 2 attempt 2 failed: cannot parse b'bad'"),
        "{err}"
    );
}

#[test]
fn persistent_worker_killed_mid_job_is_replaced_and_the_job_retried() {
    let script = "import os, jobmill_worker\nfor job in jobmill_worker.jobs():\n    if job.payload == b'die' and job.attempt == 1:\n        os.kill(os.getpid(), 9)\n    job.complete(job.payload + b'\\n')\n";
    let out = AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .env("PYTHONPATH", PYTHONPATH)
        .args([
            "run",
            "-k",
            "-j",
            "2",
            "--retries",
            "1",
            "--persistent",
            "--",
        ])
        .args(["python3", "-c", script])
        .write_stdin("a\nb\ndie\nc\nd\n")
        .assert()
        .code(0)
        .get_output()
        .clone();
    assert_eq!(lines(&out.stdout), vec!["a", "b", "die", "c", "d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was killed by SIGKILL while running job"),
        "{err}"
    );
}

#[test]
fn persistent_timeout_kills_the_worker_and_the_job_is_dead() {
    let script = "import time, jobmill_worker\nfor job in jobmill_worker.jobs():\n    if job.payload == b'slow':\n        time.sleep(60)\n    job.complete(job.payload + b'\\n')\n";
    let out = AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .env("PYTHONPATH", PYTHONPATH)
        .args([
            "run",
            "-k",
            "-j",
            "1",
            "--timeout",
            "500ms",
            "--persistent",
            "--",
        ])
        .args(["python3", "-c", script])
        .write_stdin("a\nslow\nb\n")
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert_eq!(lines(&out.stdout), vec!["a", "b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("past the timeout"), "{err}");
    assert!(err.contains("job 2 timed out"), "{err}");
}

#[test]
fn persistent_worker_prints_go_to_stderr_not_to_results() {
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    print('debug', job.payload.decode(), flush=True)\n    job.complete(b'result\\n')\n";
    let out = AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .env("PYTHONPATH", PYTHONPATH)
        .args(["run", "-j", "1", "--persistent", "--"])
        .args(["python3", "-c", script])
        .write_stdin("x\ny\n")
        .assert()
        .code(0)
        .get_output()
        .clone();
    assert_eq!(lines(&out.stdout), vec!["result", "result"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[worker 1] debug x"), "{err}");
    assert!(err.contains("[worker 1] debug y"), "{err}");
}

#[test]
fn persistent_first_ctrl_c_drains_and_exits_130() {
    // Each job takes a while; after the first result, SIGINT: the jobs
    // already sent finish, no more start, and the run exits 130.
    let script = "import time, jobmill_worker\nfor job in jobmill_worker.jobs():\n    time.sleep(0.05)\n    job.complete(job.payload + b'\\n')\n";
    let mut child = jobmill()
        .env("PYTHONPATH", PYTHONPATH)
        .args(["run", "-j", "1", "--window", "2", "--persistent", "--"])
        .args(["python3", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..200 {
            writeln!(stdin, "{i}").unwrap();
        }
    }
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "0\n");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let printed = 1 + rest.lines().count();
    assert!(
        printed < 200,
        "the run drained instead of finishing: {printed}"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("lost"), "{stderr}");
    assert!(!stderr.contains("killed"), "{stderr}");
}

#[test]
fn persistent_rejects_shell_and_a_missing_command() {
    AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .args(["run", "--persistent", "--shell", "--", "python3"])
        .write_stdin("")
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "--shell cannot be used with --persistent",
        ));
    AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .args(["run", "--persistent", "--", "/nonexistent/worker"])
        .write_stdin("a\n")
        .assert()
        .failure()
        .stderr(predicates::str::contains("/nonexistent/worker"));
}

#[test]
fn persistent_command_that_is_not_a_worker_fails_clearly() {
    let out = AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .args(["run", "-j", "1", "--persistent", "--", "true"])
        .write_stdin("a\n")
        .assert()
        .code(255)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is it a jobmill worker?"), "{err}");
    assert!(err.contains("workers keep failing"), "{err}");
}

#[test]
fn persistent_second_ctrl_c_kills_the_workers_and_exits_130() {
    let script = "import os, sys, time, jobmill_worker\nfor job in jobmill_worker.jobs():\n    print('started', os.getpid(), file=sys.stderr, flush=True)\n    time.sleep(120)\n    job.complete(b'late\\n')\n";
    let mut child = jobmill()
        .env("PYTHONPATH", PYTHONPATH)
        .args(["run", "-j", "1", "--persistent", "--"])
        .args(["python3", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"a\nb\nc\n").unwrap();
    }
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut worker_pid = 0u32;
    let mut line = String::new();
    while worker_pid == 0 {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "stderr ended early");
        if let Some(rest) = line.trim().strip_prefix("[worker 1] started ") {
            worker_pid = rest.parse().unwrap();
        }
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    wait_until("the drain message", || {
        line.clear();
        err.read_line(&mut line).unwrap() > 0 && line.contains("interrupted")
    });
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    wait_until("the worker to be gone", || !pid_alive(worker_pid));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, "", "no job finished");
}

#[test]
fn persistent_workers_die_with_a_killed_jobmill() {
    let script = "import os, sys, time, jobmill_worker\nfor job in jobmill_worker.jobs():\n    print('started', os.getpid(), file=sys.stderr, flush=True)\n    time.sleep(120)\n";
    let mut child = jobmill()
        .env("PYTHONPATH", PYTHONPATH)
        .args(["run", "-j", "1", "--persistent", "--"])
        .args(["python3", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"a\n").unwrap();
    }
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut worker_pid = 0u32;
    let mut line = String::new();
    while worker_pid == 0 {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "stderr ended early");
        if let Some(rest) = line.trim().strip_prefix("[worker 1] started ") {
            worker_pid = rest.parse().unwrap();
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_until("the guardian to stop the worker", || !pid_alive(worker_pid));
}

/// Workers carry the guardian's token, so that a worker spawned just
/// before jobmill is killed is still found and stopped (see
/// `guardian_stops_unregistered_jobs_with_its_token_when_jobmill_dies`).
#[test]
fn persistent_workers_carry_the_guardian_token() {
    let script = "import os, jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(os.environ.get('JOBMILL_GUARD', 'none').encode() + b'\\n')\n";
    let out = AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
        .env("PYTHONPATH", PYTHONPATH)
        .args(["run", "--no-journal", "-j1", "--persistent", "--"])
        .args(["python3", "-c", script])
        .write_stdin("a\n")
        .assert()
        .code(0)
        .get_output()
        .clone();
    let got = lines(&out.stdout);
    assert_eq!(got.len(), 1);
    let (pid, stamp) = got[0].split_once('-').expect("pid-stamp token");
    assert!(pid.parse::<u32>().is_ok() && !stamp.is_empty(), "{got:?}");
}
