//! `jobmill report` rendered in headless Chromium, and `jobmill status
//! --watch` in a tmux pane. Both tools are required: a missing one fails
//! the test (scripts/test.sh installs them), it is never skipped.

mod common;
mod fixtures;
mod redis_support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{jobmill, wait_until};

fn require(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{tool} is not installed: this test needs it (apt-get install -y {tool}; scripts/test.sh installs it)")
    })
}

fn target_dir() -> PathBuf {
    let t = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&t).unwrap();
    t
}

/// Runs headless Chromium on `page` with `args` (e.g. `--dump-dom`);
/// returns stdout and stderr (where console messages are logged).
fn chromium(page: &Path, args: &[&str]) -> (String, String) {
    let bin = require("chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {stderr}");
    (stdout, stderr)
}

/// The page's console messages (errors, warnings, logs): none expected.
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// `performance.now()` at the load event, as the page writes it.
fn load_ms(dom: &str) -> f64 {
    let at = dom
        .find("id=\"load-ms\">")
        .expect("the page has its load time")
        + 13;
    let end = at + dom[at..].find('<').unwrap();
    dom[at..end]
        .parse()
        .unwrap_or_else(|_| panic!("the load event did not fire: {:?}", &dom[at..end]))
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(out.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The text of one field as the page shows it in HTML: the readers'
/// escaping (`\xHH` for bytes that are not UTF-8), then HTML's.
fn shown(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        s.push_str(chunk.valid());
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[test]
fn a_report_of_1000_jobs_with_failures_timeouts_and_retries_renders_every_attempt() {
    require("chromium");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let journal = dir.path().join("run.sqlite");
    let mut inputs = Vec::new();
    for i in 1..1000 {
        inputs.extend_from_slice(format!("in-{i}\n").as_bytes());
    }
    // Job 1000: not UTF-8, and HTML that would end the page's script.
    let odd: &[u8] = b"bad \xff </script><b>x";
    inputs.extend_from_slice(odd);
    inputs.push(b'\n');
    std::fs::write(dir.path().join("inputs"), &inputs).unwrap();
    // By job number: exit 3 with stderr (1 in 50), a timeout (1 in 100),
    // killed by a signal (1 in 100), fails once then succeeds (1 in 25),
    // job 1000 exits 4; the rest succeed.
    let script = r#"n={#}
[ "$n" -eq 1000 ] && { echo "odd input" >&2; exit 4; }
case $((n % 100)) in 7) sleep 30;; 13) kill -9 $$;; esac
case $((n % 50)) in 3) echo "starting $n" >&2; echo "boom $n" >&2; exit 3;; esac
case $((n % 25)) in 11) [ -e retried-$n ] || { touch retried-$n; exit 1; };; esac
exit 0"#;
    let run = jobmill()
        .current_dir(dir.path())
        .env("XDG_STATE_HOME", &state)
        .args([
            "run",
            "-j4",
            "--retries",
            "1",
            "--timeout",
            "1s",
            "--shell",
            "--journal",
        ])
        .arg(&journal)
        .args(["-a", "inputs", "--", script])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !run.status.success(),
        "some jobs fail: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    let before = std::fs::read(&journal).unwrap();
    let page = target_dir().join("report-1000.html");
    let out = jobmill()
        .env("XDG_STATE_HOME", &state)
        .arg("report")
        .arg(&journal)
        .arg("-o")
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&journal).unwrap() == before,
        "the journal is unchanged"
    );
    for companion in ["-wal", "-shm"] {
        let mut p = journal.clone().into_os_string();
        p.push(companion);
        assert!(
            !Path::new(&p).exists(),
            "no {companion} appeared next to the journal"
        );
    }
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no network address in the page"
    );
    assert_eq!(
        html.matches("</script>").count(),
        2,
        "only the page's own two scripts end"
    );

    // The journal's own account: attempts per job, and the failed jobs.
    let results = jobmill()
        .env("XDG_STATE_HOME", &state)
        .arg("results")
        .arg(&journal)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(results.status.success());
    let jobs = json_lines(&results.stdout);
    assert_eq!(jobs.len(), 1000);
    let attempts: u64 = jobs.iter().map(|j| j["attempts"].as_u64().unwrap()).sum();
    assert!(
        attempts > 1000,
        "retries and timeouts made more attempts: {attempts}"
    );
    let failed: Vec<&serde_json::Value> = jobs
        .iter()
        .filter(|j| matches!(j["state"].as_str(), Some("failed" | "dead")))
        .collect();
    assert_eq!(
        failed.len(),
        41,
        "20 exit 3, 10 timed out, 10 killed, job 1000: {failed:?}"
    );

    let (dom, log) = chromium(&page, &["--dump-dom"]);
    assert_eq!(console_lines(&log), Vec::<&str>::new(), "console messages");
    assert!(
        dom.contains("data-rendered=\"ok\""),
        "the script ran to its end"
    );
    let bars = dom.matches("class=\"bar o-").count() - html.matches("class=\"bar o-").count();
    assert_eq!(bars as u64, attempts, "one bar per attempt");
    let failures = &dom[dom.find("id=\"failures\"").unwrap()..];
    for j in &failed {
        let seq = j["seq"].as_u64().unwrap();
        let input = if seq == 1000 {
            odd.to_vec()
        } else {
            j["input"].as_str().unwrap().as_bytes().to_vec()
        };
        let row = format!(
            "<tr data-seq=\"{seq}\"><td class=\"num\">{seq}</td><td class=\"input\">{}</td>",
            shown(&input)
        );
        assert!(
            failures.contains(&row),
            "the failure table lists job {seq}: {row}"
        );
    }
    assert!(failures.contains("boom 53"), "stderr tails are shown");
    assert!(failures.contains("timed out"), "timeouts are a group");
    let ms = load_ms(&dom);
    eprintln!("report of 1,000 jobs ({attempts} attempts): load event at {ms:.0} ms");

    // Hovering job 1000's bar shows its input, duration, reason and RSS.
    let hovered = format!("{}#hover=job-1000", page.display());
    let (dom, log) = chromium(Path::new(&hovered), &["--dump-dom"]);
    assert_eq!(console_lines(&log), Vec::<&str>::new(), "console messages");
    let tip = &dom[dom.find("<div id=\"tip\"").expect("the tooltip")..];
    let tip = &tip[..tip.find("</div>").unwrap()];
    assert!(!tip.contains("hidden"), "the tooltip is shown: {tip}");
    for want in [
        "<b>job 1000</b>",
        &shown(odd),
        "duration",
        "exited with code 4",
        "peak RSS",
    ] {
        assert!(tip.contains(want), "the tooltip shows {want:?}: {tip}");
    }

    let png = target_dir().join("report-1000.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &page,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,1800",
        ],
    );
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "a screenshot in {}",
        png.display()
    );
}

#[test]
fn a_report_of_100000_jobs_loads_in_headless_chromium_within_the_budget() {
    use jobmill::journal::read::JobState;
    use jobmill::journal::snapshot::{JobSnapshot, RunHeader, Snapshot};
    require("chromium");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("big.sqlite");
    // 100,000 jobs written through the journal's own snapshot writer (as a
    // collected queue's results are): each job's last attempt.
    let t0 = 1_790_000_000.0;
    let n = 100_000u64;
    let header = RunHeader {
        run_id: "20260921-141320-big0".into(),
        source: "synthetic (tests/report.rs)".into(),
        command: vec![OsStr::from_bytes(b"true").to_owned()],
        options: serde_json::Map::new(),
        cwd: dir.path().to_path_buf(),
        host: "test".into(),
        started_at: t0,
        ended_at: Some(t0 + 400.0),
        end_reason: Some("complete".into()),
        input_complete: true,
        total_jobs: Some(n),
    };
    let mut snap = Snapshot::begin(&journal, &header).unwrap();
    for seq in 1..=n {
        let input = format!("input-{seq:06}");
        let failed = seq % 997 == 0;
        snap.job(&JobSnapshot {
            seq,
            input: Some(input.as_bytes()),
            state: if failed {
                JobState::Failed
            } else {
                JobState::Done
            },
            attempts: 1 + u32::from(seq % 31 == 0),
            exit_code: Some(if failed { 2 } else { 0 }),
            signal: None,
            reason: failed.then(|| "exit code 2".to_string()),
            timed_out: false,
            finished_at: Some(t0 + seq as f64 * 0.004),
            duration: Some(0.001 + (seq % 113) as f64 * 0.0007),
            cause: Some(if failed { "exit" } else { "succeeded" }.into()),
            // Drawn as 4 rows: 2 workers on each of 2 hosts.
            worker: Some(seq % 2 + 1),
            host: Some(format!("node-{}", seq % 4 / 2)),
        })
        .unwrap();
    }
    snap.commit().unwrap();

    let page = target_dir().join("report-100000.html");
    let started = Instant::now();
    let out = jobmill()
        .arg("report")
        .arg(&journal)
        .arg("-o")
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "report of 100,000 jobs: written in {:.1} s, {} bytes",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&page).unwrap().len()
    );
    let (dom, log) = chromium(&page, &["--dump-dom"]);
    assert_eq!(console_lines(&log), Vec::<&str>::new(), "console messages");
    assert!(
        dom.contains("data-rendered=\"ok\""),
        "the script ran to its end"
    );
    assert!(dom.contains("id=\"tl-canvas\""), "a canvas timeline");
    assert_eq!(
        dom.matches("class=\"bar o-").count(),
        1,
        "no DOM bar (only the script's text)"
    );
    let ms = load_ms(&dom);
    eprintln!("report of 100,000 jobs: load event at {ms:.0} ms in headless Chromium");
    // Hover on the canvas finds an attempt under the pointer.
    let hovered = format!("{}#hover=job-50000", page.display());
    let (dom, _) = chromium(Path::new(&hovered), &["--dump-dom"]);
    let tip = &dom[dom.find("<div id=\"tip\"").expect("the tooltip")..];
    let tip = &tip[..tip.find("</div>").unwrap()];
    assert!(
        !tip.contains("hidden") && tip.contains("input: "),
        "the tooltip is shown: {tip}"
    );
    // The issue's budget is 2 s; a shared, busy test machine gets slack.
    assert!(ms < 6000.0, "load event at {ms:.0} ms");
}

#[test]
fn a_report_of_a_v1_journal_groups_failures_by_worked_out_causes_and_says_what_it_lacks() {
    require("chromium");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("old.sqlite");
    fixtures::v1_journal(&journal);
    let before = std::fs::read(&journal).unwrap();
    let page = dir.path().join("old.html");
    let out = jobmill()
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .arg("report")
        .arg(&journal)
        .arg("-o")
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&journal).unwrap() == before,
        "the v1 journal is unchanged"
    );
    assert_eq!(
        fixtures::user_version(&journal),
        1,
        "not migrated by a read"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    let (dom, log) = chromium(&page, &["--dump-dom"]);
    assert_eq!(console_lines(&log), Vec::<&str>::new(), "console messages");
    assert!(
        dom.contains("data-rendered=\"ok\""),
        "the script ran to its end"
    );
    let bars = dom.matches("class=\"bar o-").count() - html.matches("class=\"bar o-").count();
    assert_eq!(bars, 5, "one bar per attempt");
    assert!(
        dom.contains("This journal has schema v1"),
        "the page says what a v1 journal lacks"
    );
    assert!(dom.contains("one row per slot<"), "rows are slots");
    let failures = &dom[dom.find("id=\"failures\"").unwrap()..];
    assert!(
        failures.contains("exit: exit code 3") && failures.contains("</span>timeout</summary>"),
        "grouped by the causes worked out from v1's columns: {failures}"
    );
    assert!(failures.contains("boom c"), "stderr tails are shown");
}

#[test]
fn a_report_of_a_persistent_run_has_one_timeline_row_per_worker() {
    require("chromium");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("p.sqlite");
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    if job.payload.endswith(b'7'):\n        job.fail('no sevens')\n    else:\n        job.complete(job.payload)\n";
    let inputs: String = (1..=40).map(|i| format!("{i}\n")).collect();
    let run = jobmill()
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .args(["run", "-j3", "--persistent", "--journal"])
        .arg(&journal)
        .args(["--", "python3", "-c", script])
        .stdin(
            std::fs::File::open({
                let p = dir.path().join("inputs");
                std::fs::write(&p, inputs).unwrap();
                p
            })
            .unwrap(),
        )
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(4),
        "jobs 7, 17, 27, 37 fail: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let page = dir.path().join("p.html");
    let out = jobmill()
        .arg("report")
        .arg(&journal)
        .arg("-o")
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (dom, log) = chromium(&page, &["--dump-dom"]);
    assert_eq!(console_lines(&log), Vec::<&str>::new(), "console messages");
    assert!(dom.contains("one row per worker<"), "rows are workers");
    let labels = dom
        .matches("<div class=\"tl-label\" title=\"worker ")
        .count();
    assert!(
        (1..=3).contains(&labels),
        "one row per worker process that ran a job: {labels}"
    );
    assert_eq!(dom.matches("class=\"tl-label\" title=\"slot").count(), 0);
    let failures = &dom[dom.find("id=\"failures\"").unwrap()..];
    assert!(
        failures.contains("</span>reported</summary>"),
        "failures grouped by their recorded cause"
    );
    for seq in [7, 17, 27, 37] {
        assert!(
            failures.contains(&format!("<tr data-seq=\"{seq}\">")),
            "job {seq}"
        );
    }
}

/// A tmux server of its own (its socket named after this process), killed
/// on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        require("tmux");
        Tmux {
            socket: format!("jobmill-test-{}", std::process::id()),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-J", "-t", "watch"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

#[test]
fn status_watch_shows_changing_counts_in_a_tmux_pane_and_ends_with_the_run() {
    let tmux = Tmux::new();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.sqlite");
    // Job N waits for the file go-N (the test releases the jobs in steps);
    // job 6 fails.
    let mut run = jobmill()
        .current_dir(dir.path())
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .args(["run", "-j2", "--shell", "--journal"])
        .arg(&journal)
        .args([
            "--",
            "while [ ! -e go-{#} ]; do sleep 0.02; done; [ {#} -ne 6 ] || { echo six >&2; exit 1; }",
            ":::",
        ])
        .args((1..=12).map(|i| i.to_string()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the run's journal is readable", || {
        jobmill()
            .arg("status")
            .arg(&journal)
            .output()
            .unwrap()
            .status
            .success()
    });
    let release = |from: u32, to: u32| {
        for i in from..=to {
            std::fs::write(dir.path().join(format!("go-{i}")), b"").unwrap();
        }
    };

    let watch = format!(
        "{} status {} --watch; echo WATCH-EXIT=$?; exec sleep 600",
        env!("CARGO_BIN_EXE_jobmill"),
        journal.display()
    );
    let ok = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "watch",
            "-x",
            "200",
            "-y",
            "50",
            &watch,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tmux new-session");
    let mut last = String::new();
    let mut seen = |what: &str, want: &[&str]| {
        let deadline = Instant::now() + common::PATIENCE;
        loop {
            last = tmux.capture();
            if want.iter().all(|w| last.contains(w)) {
                return last.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the pane:\n{last}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = seen(
        "the first frame",
        &[
            "state:    running (pid",
            ", 0 done,",
            "slots:    2 busy of 2",
        ],
    );
    release(1, 4);
    seen("4 done", &[", 4 done, 0 failed"]);
    release(5, 8);
    let middle = seen(
        "7 done and 1 failed",
        &[", 7 done, 1 failed", "recent failures:", "job 6 "],
    );
    assert!(!middle.contains("WATCH-EXIT"), "still watching:\n{middle}");
    release(9, 12);
    let end = seen(
        "the end of the run",
        &[
            ", 11 done, 1 failed",
            "not running (any more)",
            "state:    finished",
            "WATCH-EXIT=0",
        ],
    );
    assert!(run.wait().unwrap().code() == Some(1), "one job failed");
    assert_ne!(first, end);
}

#[test]
fn status_watch_on_a_run_that_was_killed_or_finished_shows_its_last_state_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.sqlite");
    let mut run = jobmill()
        .current_dir(dir.path())
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .args(["run", "-j2", "--shell", "--journal"])
        .arg(&journal)
        .args([
            "--",
            "[ {#} -le 2 ] || while [ ! -e go ]; do sleep 0.02; done",
            ":::",
        ])
        .args((1..=6).map(|i| i.to_string()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watch = |what: &str| -> String {
        let out = jobmill()
            .arg("status")
            .arg(&journal)
            .arg("--watch")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("not running (any more): this is its last state"),
            "{what}:\n{text}"
        );
        text
    };
    // Two jobs done, two waiting: kill jobmill (SIGKILL).
    wait_until("two jobs are done", || {
        let out = jobmill().arg("status").arg(&journal).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains(", 2 done,")
    });
    run.kill().unwrap();
    run.wait().unwrap();
    let killed = watch("a killed run");
    assert!(killed.contains("state:    interrupted"), "{killed}");
    assert!(killed.contains(", 2 done,"), "{killed}");
    assert_eq!(
        killed.matches("jobmill status --watch").count(),
        1,
        "one frame:\n{killed}"
    );

    std::fs::write(dir.path().join("go"), b"").unwrap();
    let resumed = jobmill()
        .current_dir(dir.path())
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .arg("resume")
        .arg(&journal)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let companions = || {
        ["-wal", "-shm"]
            .into_iter()
            .filter(|c| {
                let mut p = journal.clone().into_os_string();
                p.push(c);
                Path::new(&p).exists()
            })
            .collect::<Vec<_>>()
    };
    // Whatever is next to the journal now stays as it is.
    let files_before = companions();
    let main_before = std::fs::read(&journal).unwrap();
    let finished = watch("a finished run");
    assert_eq!(
        companions(),
        files_before,
        "watching created nothing next to the journal"
    );
    assert!(
        std::fs::read(&journal).unwrap() == main_before,
        "nor changed it"
    );
    assert!(
        finished.contains("state:    finished (complete)"),
        "{finished}"
    );
    assert!(finished.contains(", 6 done, 0 failed"), "{finished}");
}

#[test]
fn a_report_of_a_shared_queue_draws_its_collected_jobs_and_watch_ends_on_a_drained_queue() {
    require("chromium");
    let server = redis_support::RedisServer::start();
    let url = server.url("pictured");
    let worker = jobmill()
        .args(["worker", "--queue", &url, "-j", "2", "--", "sh", "-c"])
        .arg("[ $(($1 % 10)) -ne 0 ] || { echo \"bad $1\" >&2; exit 3; }")
        .args(["sh", "{}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = (1..=40).map(|i| format!("q-{i}\n")).collect();
    let input = input.replace("q-", "");
    let sub = common::submit(&url, &[], &input);
    assert!(
        sub.status.success(),
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let (code, _, stderr) = common::finish(worker);
    assert_eq!(code, 0, "worker: {stderr}");

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("queue.html");
    let out = jobmill()
        .args(["report", "--queue", &url, "-o"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report --queue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    let (dom, log) = chromium(&page, &["--dump-dom"]);
    assert_eq!(console_lines(&log), Vec::<&str>::new(), "console messages");
    assert!(dom.contains("data-rendered=\"ok\""));
    let bars = dom.matches("class=\"bar o-").count() - html.matches("class=\"bar o-").count();
    assert_eq!(bars, 40, "the last attempt of every job");
    assert!(
        dom.contains("collected from a shared queue"),
        "the page says what is missing"
    );
    let failures = &dom[dom.find("id=\"failures\"").unwrap()..];
    for seq in [10, 20, 30, 40] {
        assert!(
            failures.contains(&format!("<td class=\"input\">{seq}</td>")),
            "failed job {seq} is listed"
        );
    }
    assert!(
        dom.contains("its output (no stderr)"),
        "the page says the stderr is missing"
    );

    let watch = jobmill()
        .args(["status", "--queue", &url, "--watch"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&watch.stdout);
    assert!(
        watch.status.success(),
        "{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    assert!(
        text.contains("closed and drained: this is its last state"),
        "{text}"
    );
    assert!(text.contains("36 done, 4 failed"), "{text}");
}
