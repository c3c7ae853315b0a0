//! Journal schema v2 and the migration from v1, on real SQLite files and
//! real runs: a genuine v1 journal (the v1 schema as jobmill shipped it,
//! rows as jobmill wrote them: `tests/fixtures/`) stays readable by every
//! read command without a byte changed; `jobmill resume` migrates it in
//! place and finishes the run; a journal of a newer schema is refused and
//! left byte-identical; and v2 journals record each attempt's cause,
//! worker and host and each job's read time, for process, `--persistent`
//! and Redis runs.

mod common;
mod fixtures;
mod redis_support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use common::{jobmill, submit};
use fixtures::{user_version, v1_journal};
use jobmill::journal::read::{Journal, StateFilter};

const PYTHONPATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn companions(path: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-completions"]
        .iter()
        .map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            PathBuf::from(p)
        })
        .filter(|p| p.exists())
        .collect()
}

fn run(state: &Path, args: &[&str]) -> Output {
    jobmill()
        .env("XDG_STATE_HOME", state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Opens `path` as the readers do (nothing is created next to it).
fn read(path: &Path) -> Connection {
    jobmill::journal::read::open_read_only(path).unwrap()
}

/// (seq, attempt, outcome, cause, worker, host) of every attempt.
type AttemptRow = (
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn attempts(path: &Path) -> Vec<AttemptRow> {
    read(path)
        .prepare(
            "SELECT seq, attempt, outcome, cause, worker, host FROM attempt ORDER BY seq, attempt",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The cause of each job's attempts, by input.
fn causes_by_input(path: &Path) -> std::collections::BTreeMap<String, Vec<Option<String>>> {
    let mut m = std::collections::BTreeMap::<String, Vec<Option<String>>>::new();
    let c = read(path);
    let mut st = c
        .prepare(
            "SELECT j.input, a.cause FROM attempt a JOIN job j ON j.seq = a.seq \
             ORDER BY a.seq, a.attempt",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))
        .unwrap();
    for row in rows {
        let (input, cause) = row.unwrap();
        m.entry(String::from_utf8(input).unwrap())
            .or_default()
            .push(cause);
    }
    m
}

#[test]
fn a_v1_journal_is_read_by_status_results_watch_and_the_library_without_a_byte_changed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = dir.path().join("old.sqlite");
    v1_journal(&path);
    let before = sha(&path);
    let p = path.to_str().unwrap();

    let status = run(&state, &["status", p]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("20260921-120000-v1v1"), "{text}");
    assert!(text.contains("2 done"), "{text}");

    let results = run(&state, &["results", p, "--format", "json"]);
    assert!(results.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8(results.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let states: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["input"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("a", "done"),
            ("b", "done"),
            ("c", "failed"),
            ("d", "dead"),
            ("e", "running")
        ]
    );
    assert_eq!(rows[2]["exit_code"], 3);
    let failed = run(&state, &["results", p, "--failed", "--output"]);
    assert!(String::from_utf8_lossy(&failed.stdout).contains("out-c"));

    // The run is not running (no jobmill holds it): --watch shows its last
    // state and ends.
    let watch = run(&state, &["status", p, "--watch"]);
    assert!(
        watch.status.success(),
        "{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    assert!(String::from_utf8_lossy(&watch.stdout).contains("2 done"));

    // The library's readers.
    let j = Journal::open(&path).unwrap();
    let mut seen = Vec::new();
    j.for_each_job::<jobmill::journal::JournalError, _>(StateFilter::default(), |r| {
        seen.push((r.seq, r.attempts));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
    assert_eq!(j.counts().unwrap().done, 2);
    drop(j);

    assert_eq!(sha(&path), before, "reading changed the v1 journal");
    assert_eq!(user_version(&path), 1);
    assert_eq!(companions(&path), Vec::<PathBuf>::new());
}

#[test]
fn resume_migrates_a_v1_journal_in_place_and_finishes_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = dir.path().join("old.sqlite");
    v1_journal(&path);
    let out = run(&state, &["resume", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Job 5 (input e) ran again; the failed and dead jobs were kept.
    assert_eq!(stdout, "out-e\n", "{stderr}");
    assert_eq!(user_version(&path), 2);
    let c = read(&path);
    let (schema, reason): (i64, String) = c
        .query_row("SELECT schema_version, end_reason FROM run", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((schema, reason.as_str()), (2, "complete"));
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    // Nothing of v1 was lost: the jobs, their states and outputs.
    let jobs: Vec<(i64, String, Option<i64>, bool)> = c
        .prepare("SELECT seq, state, exit_code, read_at IS NULL FROM job ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        jobs,
        [
            (1, "done".into(), Some(0), true),
            (2, "done".into(), Some(0), true),
            (3, "failed".into(), Some(3), true),
            (4, "dead".into(), None, true),
            (5, "done".into(), Some(0), true),
        ],
        "states kept; v1 jobs have no read time"
    );
    let outputs: i64 = c
        .query_row("SELECT COUNT(*) FROM output", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outputs, 5, "v1's 4 output rows and job 5's stdout");
    // The v1 attempts' causes were back-filled from their outcomes and
    // reasons; the interrupted one's is not known; the new one's recorded.
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        attempts(&path),
        [
            (1, 1, s("done"), s("succeeded"), None, None),
            (2, 1, s("done"), s("succeeded"), None, None),
            (3, 1, s("failed"), s("exit"), None, None),
            (4, 1, s("dead"), s("timeout"), None, None),
            (5, 1, s("interrupted"), None, None, None),
            (5, 2, s("done"), s("succeeded"), None, None),
        ]
    );
    drop(c);
    assert_eq!(companions(&path), Vec::<PathBuf>::new());
    // And the migrated journal reads as any v2 journal.
    let status = run(&state, &["status", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("3 done"));
}

#[test]
fn a_journal_of_a_newer_schema_is_refused_by_resume_and_left_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = dir.path().join("new.sqlite");
    v1_journal(&path);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let before = sha(&path);
    let p = path.to_str().unwrap();
    for args in [
        vec!["resume", p],
        vec!["status", p],
        vec!["report", p, "-o", "-"],
    ] {
        let out = run(&state, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{args:?}: {err}");
        assert!(
            err.contains("schema version 99, newer than this jobmill's 2"),
            "{args:?}: {err}"
        );
        assert_eq!(sha(&path), before, "{args:?} changed the journal");
        assert_eq!(companions(&path), Vec::<PathBuf>::new(), "{args:?}");
    }
}

#[test]
fn a_v2_journal_records_cause_and_read_time_of_each_process_attempt_and_no_worker() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = dir.path().join("run.sqlite");
    let script = "case $1 in fail) exit 3;; slow) sleep 30;; kill) kill -9 $$;; esac";
    let out = run(
        &state,
        &[
            "run",
            "-j2",
            "--timeout",
            "1s",
            "--journal",
            path.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
            "sh",
            "{}",
            ":::",
            "ok",
            "fail",
            "slow",
            "kill",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(user_version(&path), 2);
    let causes = causes_by_input(&path);
    let s = |x: &str| vec![Some(x.to_string())];
    assert_eq!(causes["ok"], s("succeeded"));
    assert_eq!(causes["fail"], s("exit"));
    assert_eq!(causes["slow"], s("timeout"));
    assert_eq!(causes["kill"], s("signal"));
    for (_, _, _, _, worker, host) in attempts(&path) {
        assert_eq!(
            (worker, host),
            (None, None),
            "a process per attempt, on the run's host"
        );
    }
    // Every job was read before its attempt started.
    let c = read(&path);
    let late: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM job j JOIN attempt a ON a.seq = j.seq \
             WHERE j.read_at IS NULL OR j.read_at > a.started_at",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(late, 0);
}

#[test]
fn a_v2_journal_records_the_long_lived_worker_of_each_persistent_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.sqlite");
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    if job.payload == b'bad':\n        job.fail('cannot parse')\n    else:\n        job.complete(b'ok\\n')\n";
    let out = jobmill()
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env("PYTHONPATH", PYTHONPATH)
        .args(["run", "-j2", "--persistent", "--journal"])
        .arg(&path)
        .args(["--", "python3", "-c", script, ":::", "a", "bad", "b", "c"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let causes = causes_by_input(&path);
    assert_eq!(causes["bad"], vec![Some("reported".to_string())]);
    assert_eq!(causes["a"], vec![Some("succeeded".to_string())]);
    let rows = attempts(&path);
    assert_eq!(rows.len(), 4);
    let mut workers: Vec<i64> = rows
        .iter()
        .map(|r| r.4.expect("each persistent attempt names its worker"))
        .collect();
    workers.sort_unstable();
    workers.dedup();
    assert!(
        (1..=2).contains(&workers.len()),
        "at most the 2 workers ran the jobs: {workers:?}"
    );
    assert!(rows.iter().all(|r| r.5.is_none()), "on the run's host");
    let read: i64 = read(&path)
        .query_row("SELECT COUNT(read_at) FROM job", [], |r| r.get(0))
        .unwrap();
    assert_eq!(read, 4);
}

#[test]
fn a_journal_collected_from_redis_records_the_cause_worker_and_host_of_each_job() {
    let server = redis_support::RedisServer::start();
    let url = server.url("v2");
    let worker = jobmill()
        .args(["worker", "--queue", &url, "-j", "2", "--", "sh", "-c"])
        .arg("[ \"$1\" != bad ] || exit 3")
        .args(["sh", "{}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sub = submit(&url, &[], "a\nbad\nb\n");
    assert!(
        sub.status.success(),
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let (code, _, stderr) = common::finish(worker);
    assert_eq!(code, 0, "worker: {stderr}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collected.sqlite");
    let out = run(
        &dir.path().join("state"),
        &["results", "--queue", &url, "--save", path.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(user_version(&path), 2);
    let causes = causes_by_input(&path);
    assert_eq!(causes["a"], vec![Some("succeeded".to_string())]);
    assert_eq!(causes["bad"], vec![Some("exit".to_string())]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    for (seq, _, _, _, worker, h) in attempts(&path) {
        assert!(
            worker.is_some(),
            "job {seq}: the worker that held its lease"
        );
        assert_eq!(h.as_deref(), Some(host.as_str()), "job {seq}: its host");
    }
}
