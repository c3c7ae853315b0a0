//! The one engine under every front end, tried as a user would: real
//! processes, real signals, real journals and a real Redis.

mod common;
mod redis_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{finish, jobmill, read_stderr_until, send_signal, spawn_in_own_group, wait_until};
use redis_support::RedisServer;

const PYTHONPATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");

/// A fresh state directory for a test's journals.
fn state() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `jobmill runs` in `state`: (state column, done/total) of the one run.
fn the_run(state: &std::path::Path) -> String {
    let out = jobmill()
        .arg("runs")
        .env("XDG_STATE_HOME", state)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert!(!rows.is_empty(), "no run recorded: {text}");
    rows[0].to_string()
}

#[test]
fn sighup_drains_exits_130_and_records_the_run_as_interrupted() {
    let st = state();
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let script = format!("echo $1 >> {}; sleep 1", started.display());
    let mut child = spawn_in_own_group(
        jobmill()
            .env("XDG_STATE_HOME", st.path())
            .args(["run", "-j1", "--", "sh", "-c", &script, "sh"])
            .args([":::", "1", "2", "3", "4"]),
    );
    wait_until("the first job to start", || started.exists());
    send_signal("HUP", child.id());
    let status = common::wait_exit(&mut child);
    assert_eq!(status.code(), Some(130), "a stopped run never exits 0");
    let ran = std::fs::read_to_string(&started).unwrap();
    assert!(
        ran.lines().count() < 4,
        "the drain started no new job: {ran}"
    );
    let row = the_run(st.path());
    assert!(row.contains("interrupted"), "{row}");
    // `runs --prune` deletes finished runs only: this one stays resumable.
    let pruned = jobmill()
        .args(["runs", "--prune", "0s"])
        .env("XDG_STATE_HOME", st.path())
        .output()
        .unwrap();
    assert!(pruned.status.success());
    assert!(the_run(st.path()).contains("interrupted"));
}

#[test]
fn sighup_stops_a_persistent_run_with_130_and_counts_its_running_jobs() {
    let st = state();
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let worker = format!(
        "import sys, time\nsys.path.insert(0, {PYTHONPATH:?})\nimport jobmill_worker\n\
         for job in jobmill_worker.jobs():\n    open({:?}, 'a').write('x')\n    \
         time.sleep(0.5)\n    job.complete(b'ok')\n",
        started.display().to_string()
    );
    let mut child = spawn_in_own_group(
        jobmill()
            .env("XDG_STATE_HOME", st.path())
            .args(["run", "--persistent", "-j1", "--window", "1", "--"])
            .args(["python3", "-c", &worker])
            .args([":::", "1", "2", "3", "4", "5", "6"]),
    );
    wait_until("the first job to start", || started.exists());
    send_signal("HUP", child.id());
    let said = read_stderr_until(&mut child, "running job");
    assert!(
        said.contains("waiting for 1 running job"),
        "the message counts the job the worker holds: {said}"
    );
    let status = common::wait_exit(&mut child);
    assert_eq!(status.code(), Some(130));
    assert!(the_run(st.path()).contains("interrupted"));
}

#[test]
fn a_huge_j_costs_nothing_until_used_and_runs_a_single_job_at_once() {
    let st = state();
    // The job reports jobmill's own threads and peak memory.
    let probe = "grep -E '^(Threads|VmHWM)' /proc/$PPID/status";
    let run = |jobs: &str| {
        let out = jobmill()
            .env("XDG_STATE_HOME", st.path())
            .args(["run", "--no-journal", "-j", jobs, "--", "sh", "-c", probe])
            .args([":::", "a"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (field("Threads:"), field("VmHWM:"))
    };
    let (threads_small, rss_small) = run("1");
    let (threads_huge, rss_huge) = run("100000");
    // One slot thread is used; the others were never started.
    assert!(
        threads_huge <= threads_small + 1,
        "-j 100000 started {threads_huge} threads, -j 1 {threads_small}"
    );
    assert!(
        rss_huge < rss_small * 2 + 8192,
        "memory grew with -j: {rss_huge} KiB against {rss_small} KiB"
    );
}

#[test]
fn slot_numbers_are_the_lowest_free_one() {
    let st = state();
    for _ in 0..10 {
        let out = jobmill()
            .env("XDG_STATE_HOME", st.path())
            .args([
                "run",
                "--no-journal",
                "-j2",
                "--",
                "echo",
                "{%}",
                ":::",
                "x",
            ])
            .output()
            .unwrap();
        // `{%}` is a replacement string: the input is not appended (GNU
        // parallel's `parallel -j2 echo {%} ::: x` prints `1`).
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "1\n");
    }
    // Two at a time: the slots in use are always 1 and 2.
    let out = jobmill()
        .env("XDG_STATE_HOME", st.path())
        .args([
            "run",
            "--no-journal",
            "-j2",
            "--",
            "sh",
            "-c",
            "echo $JOBMILL_SLOT",
        ])
        .args([":::", "1", "2", "3", "4", "5", "6", "7", "8"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 8);
    assert!(text.lines().all(|l| l == "1" || l == "2"), "{text}");
}

#[test]
fn a_reader_that_goes_away_makes_the_run_exit_141_not_0() {
    let st = state();
    let mut child = jobmill()
        .env("XDG_STATE_HOME", st.path())
        .args(["run", "-j2", "--", "echo", "line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..3000 {
            if writeln!(stdin, "{i}").is_err() {
                break;
            }
        }
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("line "), "{first}");
    // `| head -1`: the reader closes its end.
    let (code, _, err) = finish(child);
    writer.join().unwrap();
    assert_eq!(code, 141, "{err}");
    assert!(the_run(st.path()).contains("output-closed") || err.contains("resume"));
}

#[test]
fn a_closed_stdout_or_stdin_is_refused_with_255() {
    let st = state();
    let bin = env!("CARGO_BIN_EXE_jobmill");
    let sh = |script: &str| {
        Command::new("sh")
            .args(["-c", script, "sh", bin])
            .env("XDG_STATE_HOME", st.path())
            .output()
            .unwrap()
    };
    let out = sh(r#""$1" run -- echo ::: a >&-"#);
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdout is closed"));
    let out = sh(r#""$1" run -- echo <&-"#);
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin is closed"));
    // Inputs that do not come from stdin do not need it; /dev/null given on
    // purpose is not a closed stream.
    let out = sh(r#""$1" run -- echo ::: a <&-"#);
    assert_eq!(out.status.code(), Some(0));
    let out = sh(r#""$1" run -- echo ::: a >/dev/null"#);
    assert_eq!(out.status.code(), Some(0));
    // Nor is one opened read-write, as Python's `subprocess.DEVNULL` and
    // systemd's `StandardOutput=null` give it (and as Rust's runtime puts
    // it on a closed one).
    let out = sh(r#""$1" run -- echo ::: a 1<>/dev/null"#);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = sh(r#"printf 'a\n' | "$1" run -- echo 0<>/dev/null"#);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn every_attempt_sees_its_number_in_jobmill_attempt() {
    let st = state();
    let out = jobmill()
        .env("XDG_STATE_HOME", st.path())
        .args(["run", "--retries", "2", "--", "sh", "-c"])
        .args(["echo attempt $JOBMILL_ATTEMPT; exit 3", "sh", ":::", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "attempt 3\n");
}

#[test]
fn persistent_results_are_one_record_each_and_print0_ends_them_with_nul() {
    let st = state();
    let worker = format!(
        "import sys\nsys.path.insert(0, {PYTHONPATH:?})\nimport jobmill_worker\n\
         for job in jobmill_worker.jobs():\n    job.complete(bytes(job.payload).upper())\n"
    );
    let big = "x".repeat(70_000);
    let run = |extra: &[&str]| {
        let out = jobmill()
            .env("XDG_STATE_HOME", st.path())
            .args(["run", "--persistent", "-j1", "-k"])
            .args(extra)
            .args(["--", "python3", "-c", &worker, ":::", "ab", "cd", &big])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        out.stdout
    };
    let lines = run(&[]);
    let expected = format!("AB\nCD\n{}\n", big.to_uppercase());
    assert!(lines == expected.as_bytes(), "results run together");
    let records = run(&["--print0"]);
    let expected = format!("AB\0CD\0{}\0", big.to_uppercase());
    assert!(records == expected.as_bytes());
}

#[test]
fn a_worker_on_a_shared_queue_stops_on_sighup_with_130_leaving_jobs_queued() {
    let server = RedisServer::start();
    let url = server.url("hup");
    let input: String = (1..=10).map(|i| format!("{i}\n")).collect();
    common::submit(&url, &[], input);
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let script = format!("echo $1 >> {}; sleep 1", started.display());
    let mut child = spawn_in_own_group(
        jobmill()
            .args(["worker", "--queue", &url, "-j1", "--", "sh", "-c", &script])
            .args(["sh", "{}"]),
    );
    wait_until("the first job to start", || started.exists());
    send_signal("HUP", child.id());
    let status = common::wait_exit(&mut child);
    assert_eq!(status.code(), Some(130), "a stopped worker never exits 0");
    let out = jobmill()
        .args(["status", "--queue", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("queued"), "{text}");
    assert!(!text.contains("10 done"), "{text}");
}

mod stop_handle {
    //! A library front end stops a run through an
    //! `engine::stop::StopHandle`, not through signals: `drain` starts no
    //! new job and lets the running one finish, `kill` stops the running
    //! ones; either way the run ends with the cause `Requested` (exit 130,
    //! recorded as interrupted).

    use std::ffi::OsString;
    use std::path::Path;
    use std::sync::Arc;

    use jobmill::engine::stop::StopHandle;
    use jobmill::engine::{JobSource, Plan, Work};
    use jobmill::events::{RunSummary, StopCause};
    use jobmill::job::{NewJob, RetryPolicy};
    use jobmill::queue::memory::MemoryQueue;
    use jobmill::template::Template;

    use super::common::wait_until;

    /// Runs `n` jobs of `sh -c script` one at a time, stoppable by `stop`,
    /// on a thread.
    fn start(script: &str, n: u64, stop: &StopHandle) -> std::thread::JoinHandle<RunSummary> {
        let argv: Vec<OsString> = ["sh", "-c", script, "sh"].iter().map(Into::into).collect();
        let mut plan = Plan::new(Work::Command(Template::parse(&argv, false).unwrap()));
        plan.jobs = 1;
        plan.stop = Some(stop.clone());
        let queue = Arc::new(MemoryQueue::new(64, RetryPolicy::default()));
        let input: JobSource =
            Box::new((1..=n).map(|i| Ok(NewJob::new(i, i.to_string().into_bytes()))));
        std::thread::spawn(move || plan.run(queue, Some(input), Vec::new()).unwrap())
    }

    fn lines(p: &Path) -> usize {
        std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
    }

    #[test]
    fn drain_lets_the_running_job_finish_starts_no_other_and_exits_130() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        // Each job says it started, then waits until the test releases it.
        let script =
            format!("echo $1 >> {d}/started; while [ ! -e {d}/release ]; do sleep 0.01; done");
        let stop = StopHandle::new();
        let run = start(&script, 3, &stop);
        let started = dir.path().join("started");
        wait_until("the first job started", || lines(&started) == 1);
        stop.drain();
        std::fs::write(dir.path().join("release"), "").unwrap();
        let summary = run.join().unwrap();
        assert_eq!(summary.done, 1, "{summary:?}");
        assert_eq!(lines(&started), 1, "no job started after the drain");
        assert_eq!(summary.stop, StopCause::Requested, "{summary:?}");
        assert_eq!(summary.exit_code(), 130);
        assert_eq!(summary.ending(), "interrupted");
    }

    #[test]
    fn kill_stops_the_running_job_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let script = format!("echo $1 >> {d}/started; exec sleep 600");
        let stop = StopHandle::new();
        let run = start(&script, 2, &stop);
        wait_until("the first job started", || {
            lines(&dir.path().join("started")) == 1
        });
        stop.kill();
        let summary = run.join().unwrap();
        assert_eq!((summary.done, summary.stopped), (0, 1), "{summary:?}");
        assert_eq!(summary.stop, StopCause::Requested, "{summary:?}");
        assert_eq!(summary.exit_code(), 130);
    }

    #[test]
    fn a_stop_asked_before_the_run_starts_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let stop = StopHandle::new();
        stop.kill();
        let summary = start(&format!("echo $1 >> {d}/started"), 5, &stop)
            .join()
            .unwrap();
        assert_eq!(summary.done, 0, "{summary:?}");
        assert!(!dir.path().join("started").exists());
        assert_eq!(summary.stop, StopCause::Requested, "{summary:?}");
    }
}
