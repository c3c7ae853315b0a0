//! Retry policies by cause and memory-aware starts, end to end with real
//! processes: `--retry-on`, `--retry-delay` with backoff (a delayed retry
//! holds no slot, and survives Ctrl-C + `jobmill resume`), `--halt` by
//! cause, `--mem-per-job`
//! (through the library, with a memory source the test controls), and the
//! options' validation.
//!
//! The OOM requeue rule (`--max-oom`) is tested on the model (src/job.rs,
//! tests/queue_memory.rs, tests/redis_queue.rs): a job that kills itself
//! with SIGKILL is not out of memory, and a real OOM kill needs a memory
//! cgroup, so its end-to-end test is in tests/cli_memory.rs.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// `jobmill` in `dir`, with its own state directory.
fn jobmill_in(dir: &Path) -> Command {
    let mut c = common::jobmill();
    c.current_dir(dir).env("XDG_STATE_HOME", dir.join("state"));
    c
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Attempts recorded in the journal at `path` per input, with outcomes.
fn attempts(path: &Path) -> Vec<(String, Vec<String>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, CAST(input AS TEXT) FROM job ORDER BY seq")
        .unwrap();
    let jobs: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    jobs.into_iter()
        .map(|(seq, input)| {
            let mut stmt = conn
                .prepare("SELECT outcome FROM attempt WHERE seq = ?1 ORDER BY attempt")
                .unwrap();
            let outcomes = stmt
                .query_map([seq], |r| r.get::<_, Option<String>>(0))
                .unwrap()
                .map(|o| o.unwrap().unwrap_or_default())
                .collect();
            (input, outcomes)
        })
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn retry_on_exit_3_retries_a_job_exiting_3_and_not_one_exiting_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = jobmill_in(dir.path())
        .args([
            "run",
            "--journal",
            "j.sqlite",
            "--retries",
            "2",
            "--retry-on",
            "exit=3",
            "--",
            "sh",
            "-c",
            "echo x >> tries.$1; exit $1",
            "sh",
            ":::",
            "3",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(lines(&dir.path().join("tries.3")).len(), 3);
    assert_eq!(lines(&dir.path().join("tries.1")).len(), 1);
    let a = attempts(&dir.path().join("j.sqlite"));
    assert_eq!(
        a,
        [
            (
                "3".into(),
                vec!["requeued".into(), "requeued".into(), "failed".into()]
            ),
            ("1".into(), vec!["failed".into()]),
        ]
    );
    // `jobmill results` says the same.
    let res = jobmill_in(dir.path())
        .args(["results", "j.sqlite", "--format", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&res.stdout);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_seq: Vec<i64> = rows
        .iter()
        .map(|r| r["attempts"].as_i64().unwrap())
        .collect();
    assert_eq!(by_seq, [3, 1], "{text}");
}

#[test]
fn retry_on_timeout_retries_a_timed_out_job_and_not_a_failing_one() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo x >> tries.$1; if [ $1 = slow ]; then exec sleep 30; fi; exit 1";
    let out = jobmill_in(dir.path())
        .args([
            "run",
            "--journal",
            "j.sqlite",
            "--retries",
            "1",
            "--retry-on",
            "timeout",
            "--timeout",
            "0.3",
            "--grace",
            "0.2",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            ":::",
            "slow",
            "fail",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(lines(&dir.path().join("tries.slow")).len(), 2);
    assert_eq!(lines(&dir.path().join("tries.fail")).len(), 1);
    let a = attempts(&dir.path().join("j.sqlite"));
    assert_eq!(
        a[0].1,
        ["requeued", "dead"],
        "a timeout is dead, not failed"
    );
    assert_eq!(a[1].1, ["failed"]);
}

#[test]
fn retry_delays_grow_by_the_backoff_factor() {
    let dir = tempfile::tempdir().unwrap();
    // Each attempt records its own start; it fails until the third.
    let script = "date +%s.%N >> starts; [ $(wc -l < starts) -ge 3 ]";
    let out = jobmill_in(dir.path())
        .args([
            "run",
            "--retries",
            "2",
            "--retry-delay",
            "0.2s",
            "--retry-backoff",
            "5",
            "--",
            "sh",
            "-c",
            script,
            ":::",
            "a",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let t: Vec<f64> = lines(&dir.path().join("starts"))
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(t.len(), 3);
    let (d1, d2) = (t[1] - t[0], t[2] - t[1]);
    // Lower bounds only: 0.2 s and 1 s, less the jitter of 20%.
    assert!(d1 >= 0.16, "first retry waited {d1}");
    assert!(d2 >= 0.8, "second retry waited {d2}");
    assert!(d2 > d1, "the delays grow: {d1} then {d2}");
}

#[test]
fn a_delayed_retry_holds_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    // A fails once; B only records that it ran. With one slot, B runs
    // while A waits for its retry, so it finishes before A's second try.
    let script = "if [ $1 = A ] && [ ! -e failed.A ]; then touch failed.A; echo A1 >> log; \
                  exit 1; fi; echo $1-start >> log; echo $1-end >> log";
    let out = jobmill_in(dir.path())
        .args([
            "run",
            "-j",
            "1",
            "--retries",
            "1",
            "--retry-delay",
            "2s",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            ":::",
            "A",
            "B",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&dir.path().join("log")),
        ["A1", "B-start", "B-end", "A-start", "A-end"]
    );
}

#[test]
fn a_pending_delayed_retry_survives_ctrl_c_and_runs_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo x >> tries; [ -e fixed ]";
    let mut child = spawn_in_own_group(jobmill_in(dir.path()).args([
        "run",
        "--journal",
        "j.sqlite",
        "--retries",
        "2",
        "--retry-delay",
        "1h",
        "--",
        "sh",
        "-c",
        script,
        ":::",
        "a",
    ]));
    let journal = dir.path().join("j.sqlite");
    // The first attempt failed and is recorded requeued: its retry waits.
    wait_until("the failed attempt is journaled", || {
        journal.exists()
            && rusqlite::Connection::open(&journal)
                .and_then(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM attempt WHERE outcome = 'requeued'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .unwrap_or(0)
                == 1
    });
    send_signal("INT", child.id());
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(130));
    assert_eq!(lines(&dir.path().join("tries")).len(), 1);
    std::fs::write(dir.path().join("fixed"), b"").unwrap();
    let out = jobmill_in(dir.path())
        .args(["resume", "j.sqlite"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&dir.path().join("tries")).len(), 2);
    assert_eq!(attempts(&journal)[0].1, ["requeued", "done"]);
}

#[test]
fn bad_retry_and_memory_options_are_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    for (args, name) in [
        (&["--retry-on", "exit=0"][..], "--retry-on"),
        (&["--retry-on", "oom"][..], "--retry-on"),
        (&["--retry-on", "exit=9-3"][..], "--retry-on"),
        (&["--retry-backoff", "0.5"][..], "--retry-backoff"),
        (&["--retry-delay", "soon"][..], "--retry-delay"),
        (&["--mem-per-job", "0"][..], "--mem-per-job"),
        (&["--mem-per-job", "lots"][..], "--mem-per-job"),
        (
            &["--mem-per-job", "1G", "--persistent"][..],
            "--mem-per-job",
        ),
        (&["--max-oom", "many"][..], "--max-oom"),
    ] {
        let out = jobmill_in(dir.path())
            .arg("run")
            .args(args)
            .args(["--", "true", ":::", "a"])
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(stderr(&out).contains(name), "{args:?}: {}", stderr(&out));
    }
}

mod mem_per_job {
    //! `--mem-per-job` through the library, with a memory source the test
    //! sets: the jobs report their own start and end, and at no moment do
    //! more run than the budget covers.

    use std::ffi::OsString;
    use std::sync::Arc;

    use jobmill::engine::throttle::{MemPerJob, SystemSource, Throttle};
    use jobmill::engine::{JobSource, Plan, Work};
    use jobmill::job::{NewJob, RetryPolicy};
    use jobmill::queue::memory::MemoryQueue;
    use jobmill::template::Template;

    /// A machine with a fixed amount of memory available.
    struct Fixed(u64);

    impl SystemSource for Fixed {
        fn mem_available(&self) -> std::io::Result<u64> {
            Ok(self.0)
        }
        fn load(&self) -> std::io::Result<f64> {
            Ok(0.0)
        }
    }

    /// The most jobs running at once, from their own start and end lines.
    fn most_at_once(log: &str) -> usize {
        let (mut now, mut most) = (0usize, 0usize);
        for l in log.lines() {
            if l.starts_with("start") {
                now += 1;
                most = most.max(now);
            } else {
                now -= 1;
            }
        }
        most
    }

    fn run(mem: MemPerJob, budget: u64, jobs: usize, n: u64) -> (String, u64) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let script = format!("echo start $1 >> {d}/log; sleep 0.2; echo end $1 >> {d}/log");
        let argv: Vec<OsString> = ["sh", "-c", &script, "sh"].iter().map(Into::into).collect();
        let mut plan = Plan::new(Work::Command(Template::parse(&argv, false).unwrap()));
        plan.jobs = jobs;
        plan.throttle = Some(Arc::new(
            Throttle::new(None, None, None, Arc::new(Fixed(budget))).with_mem_per_job(Some(mem)),
        ));
        let queue = Arc::new(MemoryQueue::new(64, RetryPolicy::default()));
        let input: JobSource =
            Box::new((1..=n).map(|i| Ok(NewJob::new(i, i.to_string().into_bytes()))));
        let summary = plan.run(queue, Some(input), Vec::new()).unwrap();
        assert!(summary.error.is_none(), "{:?}", summary.error);
        (
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            summary.done,
        )
    }

    #[test]
    fn mem_per_job_never_lets_the_jobs_running_exceed_the_budget() {
        // 1000 bytes available, 300 each: 3 at once, though -j is 8.
        let (log, done) = run(MemPerJob::Size(300), 1000, 8, 12);
        assert_eq!(done, 12);
        assert_eq!(log.lines().count(), 24);
        let most = most_at_once(&log);
        assert!(most <= 3, "{most} ran at once:\n{log}");
    }

    #[test]
    fn mem_per_job_auto_starts_one_at_a_time_until_it_has_an_estimate() {
        // `sh` peaks far above 1 KiB: once learned, the estimate keeps one
        // job at a time; before, nothing is known, and it is one at a time.
        let (log, done) = run(MemPerJob::Auto, 1024, 4, 4);
        assert_eq!(done, 4);
        assert_eq!(most_at_once(&log), 1, "{log}");
    }
}

#[test]
fn halt_by_cause_counts_only_jobs_that_ended_with_that_cause() {
    // At -j1: a job exiting 1 does not trigger `--halt now,timeout=1`; the
    // job that times out does, and the job after it never runs.
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("h.sqlite");
    let out = jobmill_in(dir.path())
        .args([
            "run",
            "-j1",
            "--timeout",
            "0.5",
            "--halt",
            "now,timeout=1",
            "--journal",
        ])
        .arg(&journal)
        .args([
            "--",
            "sh",
            "-c",
            "case $1 in fail) exit 1;; slow) exec sleep 30;; *) echo ran $1;; esac",
            "sh",
            ":::",
            "fail",
            "after-fail",
            "slow",
            "never",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("ran after-fail"),
        "an exit is not a timeout: {stdout} {stderr}"
    );
    assert!(!stdout.contains("ran never"), "{stdout}");
    assert!(stderr.contains("--halt now,timeout=1 reached"), "{stderr}");
    assert_ne!(out.status.code(), Some(0));
    let states: Vec<(String, String)> = rusqlite::Connection::open(&journal)
        .unwrap()
        .prepare("SELECT CAST(input AS TEXT), state FROM job ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let state = |input: &str| {
        states
            .iter()
            .find(|(i, _)| i == input)
            .map(|(_, s)| s.as_str())
    };
    assert_eq!(state("fail"), Some("failed"));
    assert_eq!(state("slow"), Some("dead"));
    assert_ne!(state("never"), Some("done"));
}
