//! `jobmill run` output options end to end, with real processes, compared
//! with the real GNU parallel where it has the option: `--tag`,
//! `--tagstring`, `--results`, `--joblog` (live, and `--resume` by it),
//! `--delay`, `--memfree`, `--load`, `--line-buffer`, `-u`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// `jobmill` with its own state directory.
fn jobmill_in(dir: &Path) -> Command {
    let mut c = common::jobmill();
    c.current_dir(dir).env("XDG_STATE_HOME", dir.join("state"));
    c
}

fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// GNU parallel's output for `args`. GNU parallel must be installed
/// (scripts/test.sh installs it): without it the test fails, never skips.
fn gnu(dir: &Path, args: &[&str]) -> Option<Output> {
    let out = Command::new("parallel")
        .current_dir(dir)
        .arg("--will-cite")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("GNU parallel is needed for this test (apt-get install parallel): {e}")
        });
    assert!(
        out.status.success(),
        "GNU parallel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

#[test]
fn tag_prefixes_every_line_with_the_input_as_gnu_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let ours =
        run_ok(jobmill_in(dir.path()).args(["run", "-k", "--tag", "--", "seq", ":::", "2", "3"]));
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        "2\t1\n2\t2\n3\t1\n3\t2\n3\t3\n"
    );
    if let Some(theirs) = gnu(dir.path(), &["-k", "--tag", "seq", ":::", "2", "3"]) {
        assert_eq!(ours.stdout, theirs.stdout);
    }
}

#[test]
fn tag_covers_stderr_and_keeps_a_last_line_without_newline() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo out; echo err >&2; printf last";
    let out = run_ok(jobmill_in(dir.path()).args([
        "run", "--tag", "--", "sh", "-c", script, "sh", ":::", "in put",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "in put\tout\nin put\tlast"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("in put\terr\n"));
}

#[test]
fn tagstring_renders_replacement_strings_as_gnu_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let ours = run_ok(jobmill_in(dir.path()).args([
        "run",
        "-k",
        "--tagstring",
        "{}-x",
        "--",
        "seq",
        ":::",
        "1",
        "2",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        "1-x\t1\n2-x\t1\n2-x\t2\n"
    );
    if let Some(theirs) = gnu(
        dir.path(),
        &["-k", "--tagstring", "{}-x", "seq", ":::", "1", "2"],
    ) {
        assert_eq!(ours.stdout, theirs.stdout);
    }
    let seq = run_ok(jobmill_in(dir.path()).args([
        "run",
        "-k",
        "--tagstring",
        "job{#}",
        "--",
        "echo",
        ":::",
        "a",
        "b",
    ]));
    assert_eq!(String::from_utf8_lossy(&seq.stdout), "job1\ta\njob2\tb\n");
}

/// Every file under `root`, relative, with its content.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn results_dir_is_the_tree_gnu_parallel_writes() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = ["a", "b c", "x/y", "back\\slash"];
    let mut args = vec![
        "run",
        "--results",
        "ours",
        "--",
        "sh",
        "-c",
        "echo o$1; echo e$1 >&2",
        "sh",
        ":::",
    ];
    args.extend(inputs);
    let out = run_ok(jobmill_in(dir.path()).args(&args));
    assert!(
        out.stdout.is_empty(),
        "--results prints nothing, as GNU parallel"
    );
    let ours = tree(&dir.path().join("ours"));
    assert_eq!(ours["1/a/stdout"], b"oa\n");
    assert_eq!(ours["1/a/stderr"], b"ea\n");
    assert_eq!(ours["1/b c/seq"], b"2");
    assert!(ours.contains_key("1/x\\_y/stdout"), "{:?}", ours.keys());
    let mut gargs = vec!["--results", "theirs", "echo o{}; echo e{} >&2", ":::"];
    gargs.extend(inputs);
    if gnu(dir.path(), &gargs).is_some() {
        assert_eq!(ours, tree(&dir.path().join("theirs")));
    }
}

/// Parses CSV (RFC 4180 quoting) into rows of fields.
fn parse_csv(text: &str, sep: char) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => field.push(c),
            }
        } else if c == '"' {
            quoted = true;
        } else if c == sep {
            row.push(std::mem::take(&mut field));
        } else if c == '\n' {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        } else {
            field.push(c);
        }
    }
    rows
}

#[test]
fn results_csv_has_gnu_parallels_columns_and_parses_back() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo \"say \\\"$1\\\", ok\"; echo e >&2; exit $2";
    run_ok(jobmill_in(dir.path()).args([
        "run",
        "-k",
        "-j1",
        "--results",
        "out.csv",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        ":::",
        "0",
    ]));
    let text = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
    let rows = parse_csv(&text, ',');
    assert_eq!(
        rows[0],
        [
            "Seq",
            "Host",
            "Starttime",
            "JobRuntime",
            "Send",
            "Receive",
            "Exitval",
            "Signal",
            "Command",
            "V1",
            "Stdout",
            "Stderr"
        ]
    );
    assert_eq!(rows.len(), 2, "{text}");
    let r = &rows[1];
    assert_eq!(r[0], "1");
    assert_eq!(r[1], ":");
    assert!(r[2].parse::<f64>().unwrap() > 1e9);
    assert_eq!(r[5], "12");
    assert_eq!(r[6], "0");
    assert_eq!(r[9], "0");
    assert_eq!(r[10], "say \"0\", ok\n");
    assert_eq!(r[11], "e\n");
    if gnu(dir.path(), &["--results", "gnu.csv", "echo {}", ":::", "0"]).is_some() {
        let gnu_text = std::fs::read_to_string(dir.path().join("gnu.csv")).unwrap();
        assert_eq!(parse_csv(&gnu_text, ',')[0], rows[0]);
    }
    // A failing job, TSV and JSON forms.
    let failing = jobmill_in(dir.path())
        .args([
            "run",
            "--results",
            "out.tsv",
            "--",
            "sh",
            "-c",
            "exit 3",
            ":::",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(failing.status.code(), Some(1));
    let tsv = parse_csv(
        &std::fs::read_to_string(dir.path().join("out.tsv")).unwrap(),
        '\t',
    );
    assert_eq!(tsv[1][6], "3");
    assert_eq!(tsv[1][9], "x");
    run_ok(jobmill_in(dir.path()).args(["run", "--results", "out.json", "--", "echo", ":::", "j"]));
    let json: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("out.json"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(json["Seq"], 1);
    assert_eq!(json["V"][0], "j");
    assert_eq!(json["Stdout"], "j\n");
    assert_eq!(json["Command"], "echo j");
}

/// The rows of a joblog, after its header, as columns.
fn joblog_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    if let Some(h) = lines.next() {
        assert_eq!(
            h,
            "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
        );
    }
    lines
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn joblog_rows_appear_while_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // Job 3 waits for a file that the test creates once the rows of jobs
    // 1 and 2 are in the joblog.
    let script = "if [ $1 = 3 ]; then while [ ! -e go ]; do sleep 0.02; done; fi; echo $1; exit $1";
    let mut child = jobmill_in(dir.path())
        .args([
            "run", "-j", "1", "--joblog", "jl", "--", "sh", "-c", script, "sh", ":::", "0", "2",
            "3",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = dir.path().join("jl");
    wait_until("two joblog rows", || joblog_rows(&log).len() == 2);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run is still going"
    );
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "two jobs failed");
    let rows = joblog_rows(&log);
    assert_eq!(rows.len(), 3);
    for (i, (row, code)) in rows.iter().zip(["0", "2", "3"]).enumerate() {
        assert_eq!(row.len(), 9, "{row:?}");
        assert_eq!(row[0], (i + 1).to_string());
        assert_eq!(row[1], ":");
        assert!(row[2].parse::<f64>().unwrap() > 1e9);
        assert!(row[3].trim().parse::<f64>().unwrap() >= 0.0);
        assert_eq!(row[4], "0");
        assert_eq!(row[5], "2", "bytes of stdout");
        assert_eq!(row[6], code);
        assert_eq!(row[7], "0");
        assert!(row[8].starts_with("sh -c 'if [") && row[8].ends_with(&format!(" sh {code}")));
    }
    if gnu(dir.path(), &["--joblog", "gjl", "true", ":::", "1"]).is_some() {
        let g = std::fs::read_to_string(dir.path().join("gjl")).unwrap();
        let row: Vec<&str> = g.lines().nth(1).unwrap().split('\t').collect();
        assert_eq!(row.len(), 9);
        assert_eq!(row[8], "true 1");
        let ours = run_ok(
            jobmill_in(dir.path()).args(["run", "--joblog", "ojl", "--", "true", ":::", "1"]),
        );
        drop(ours);
        assert_eq!(joblog_rows(&dir.path().join("ojl"))[0][8], "true 1");
    }
}

#[test]
fn delay_spaces_the_starts() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(jobmill_in(dir.path()).args([
        "run", "-j", "3", "--delay", "0.4", "--joblog", "jl", "--", "true", ":::", "1", "2", "3",
    ]));
    let mut starts: Vec<f64> = joblog_rows(&dir.path().join("jl"))
        .iter()
        .map(|r| r[2].parse().unwrap())
        .collect();
    starts.sort_by(f64::total_cmp);
    assert_eq!(starts.len(), 3);
    for w in starts.windows(2) {
        // Generous: the joblog's times have millisecond precision.
        assert!(w[1] - w[0] >= 0.3, "starts {starts:?}");
    }
}

#[test]
fn throttles_that_hold_nothing_back_let_the_run_through() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(jobmill_in(dir.path()).args([
        "run",
        "-k",
        "--memfree",
        "1K",
        "--load",
        "100000",
        "--",
        "echo",
        ":::",
        "a",
        "b",
    ]));
    assert_eq!(out.stdout, b"a\nb\n");
    let bad = jobmill_in(dir.path())
        .args(["run", "--load", "lots", "--", "echo", ":::", "a"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--load"));
}

#[test]
fn resume_with_joblog_continues_the_run_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // Job 3 hangs until the file `resumed` exists.
    let script = "echo $1 >> ran; if [ $1 = 3 ] && [ ! -e resumed ]; then sleep 100; fi; echo $1";
    let args = [
        "run", "-j", "1", "--resume", "--joblog", "jl", "--", "sh", "-c", script, "sh", ":::", "1",
        "2", "3", "4",
    ];
    // No journal recorded `jl` yet: --resume starts a new run.
    let mut child = spawn_in_own_group(jobmill_in(dir.path()).args(args));
    let ran = dir.path().join("ran");
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_until("job 3 started", || lines(&ran).len() == 3);
    send_signal("KILL", child.id());
    assert_eq!(wait_exit(&mut child).signal(), Some(9));
    assert_eq!(joblog_rows(&dir.path().join("jl")).len(), 2);

    std::fs::write(dir.path().join("resumed"), b"").unwrap();
    let out = run_ok(jobmill_in(dir.path()).args(args));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n4\n");
    assert_eq!(lines(&ran), ["1", "2", "3", "3", "4"]);
    let seqs: Vec<String> = joblog_rows(&dir.path().join("jl"))
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(seqs, ["1", "2", "3", "4"]);

    // Once complete, --resume runs nothing more; --resume-failed neither
    // (nothing failed).
    let again = run_ok(jobmill_in(dir.path()).args(args));
    assert!(again.stdout.is_empty());
    let mut failed_args = args.to_vec();
    failed_args[3] = "--resume-failed";
    run_ok(jobmill_in(dir.path()).args(&failed_args));
    assert_eq!(lines(&ran).len(), 5);
}

mod memfree {
    //! `--memfree` through the library, with a system source the test
    //! controls: the youngest job is stopped when memory falls below half,
    //! and runs again, uncounted, once memory is back.

    use std::ffi::OsString;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use jobmill::engine::throttle::{SystemSource, Throttle};
    use jobmill::engine::{JobSource, Plan, Work};
    use jobmill::events::{AttemptReport, Observer, ObserverError};
    use jobmill::job::{NewJob, RetryPolicy};
    use jobmill::outcome::AttemptEnd;
    use jobmill::queue::memory::MemoryQueue;
    use jobmill::template::Template;

    use super::common::wait_until;

    struct Fake(AtomicU64);

    impl SystemSource for Fake {
        fn mem_available(&self) -> std::io::Result<u64> {
            Ok(self.0.load(Ordering::SeqCst))
        }
        fn load(&self) -> std::io::Result<f64> {
            Ok(0.0)
        }
    }

    #[derive(Default)]
    struct Ends(Mutex<Vec<(u64, AttemptEnd)>>);

    impl Observer for Ends {
        fn attempt_finished(&self, r: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
            self.0.lock().unwrap().push((r.seq, r.outcome.end.clone()));
            Ok(())
        }
    }

    #[test]
    fn the_youngest_job_is_stopped_below_half_and_runs_again_uncounted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let script =
            format!("echo x >> {d}/started.$1; while [ ! -e {d}/release ]; do sleep 0.02; done");
        let argv: Vec<OsString> = ["sh", "-c", &script, "sh"].iter().map(Into::into).collect();
        let mut plan = Plan::new(Work::Command(Template::parse(&argv, false).unwrap()));
        plan.jobs = 2;
        plan.grace = std::time::Duration::from_millis(200);
        let fake = Arc::new(Fake(AtomicU64::new(1 << 30)));
        plan.throttle = Some(Arc::new(Throttle::new(
            None,
            Some(1000),
            None,
            fake.clone(),
        )));
        let queue = Arc::new(MemoryQueue::new(16, RetryPolicy::with_retries(0)));
        let input: JobSource = Box::new(
            ["1", "2"]
                .into_iter()
                .enumerate()
                .map(|(i, v)| Ok(NewJob::new(i as u64 + 1, v.as_bytes().to_vec()))),
        );
        let ends = Arc::new(Ends::default());
        // The journal records the stopped attempt and the next one.
        let record = jobmill::journal::RunRecord {
            run_id: "memfree".into(),
            command: argv.clone(),
            options: serde_json::json!({}),
            cwd: dir.path().to_path_buf(),
        };
        let journal_path = dir.path().join("j.sqlite");
        let journal =
            Arc::new(jobmill::journal::create(&journal_path, &record, Default::default()).unwrap());
        let observers: Vec<Arc<dyn Observer>> = vec![ends.clone(), journal.clone()];
        let run = std::thread::spawn(move || plan.run(queue, Some(input), observers).unwrap());
        let started = |n: u32| {
            std::fs::read_to_string(dir.path().join(format!("started.{n}")))
                .map_or(0, |s| s.lines().count())
        };
        wait_until("both jobs started", || started(1) == 1 && started(2) == 1);
        // Below half of --memfree: the youngest is stopped; below SIZE,
        // nothing starts.
        fake.0.store(400, Ordering::SeqCst);
        wait_until("a job was stopped", || !ends.0.lock().unwrap().is_empty());
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(started(1) + started(2), 2, "nothing starts below --memfree");
        // Memory is back: the stopped job runs again and both finish.
        fake.0.store(1 << 30, Ordering::SeqCst);
        wait_until("the stopped job started again", || {
            started(1) + started(2) == 3
        });
        std::fs::write(dir.path().join("release"), b"").unwrap();
        let summary = run.join().unwrap();
        assert!(summary.error.is_none(), "{:?}", summary.error);
        assert_eq!((summary.done, summary.failed, summary.dead), (2, 0, 0));
        journal.close("ended").unwrap();
        drop(journal);
        let conn = rusqlite::Connection::open(&journal_path).unwrap();
        let outcomes: Vec<String> = conn
            .prepare("SELECT outcome FROM attempt ORDER BY seq, attempt")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut sorted = outcomes.clone();
        sorted.sort();
        assert_eq!(sorted, ["done", "done", "interrupted"], "{outcomes:?}");
        let ends = ends.0.lock().unwrap();
        let stopped: Vec<u64> = ends
            .iter()
            .filter(|(_, e)| *e == AttemptEnd::Stopped)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(stopped.len(), 1, "{ends:?}");
        assert_eq!(started(stopped[0] as u32), 2);
    }
}

#[test]
fn resume_failed_with_joblog_runs_the_failed_jobs_again_and_appends() {
    let dir = tempfile::tempdir().unwrap();
    // Job 2 fails until the file `fixed` exists.
    let script = "echo $1 >> ran; if [ $1 = 2 ] && [ ! -e fixed ]; then exit 5; fi";
    let args = |flag: &'static str| {
        [
            "run", "-j", "1", flag, "--joblog", "log", "--", "sh", "-c", script, "sh", ":::", "1",
            "2", "3",
        ]
    };
    let first = jobmill_in(dir.path())
        .args(args("--resume"))
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(1));
    let rows = joblog_rows(&dir.path().join("log"));
    assert_eq!(
        rows.iter().map(|r| r[6].as_str()).collect::<Vec<_>>(),
        ["0", "5", "0"]
    );
    // --resume: nothing is unfinished; the failed job stays failed.
    let again = jobmill_in(dir.path())
        .args(args("--resume"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    std::fs::write(dir.path().join("fixed"), b"").unwrap();
    run_ok(jobmill_in(dir.path()).args(args("--resume-failed")));
    let ran = std::fs::read_to_string(dir.path().join("ran")).unwrap();
    assert_eq!(ran, "1\n2\n3\n2\n");
    let rows = joblog_rows(&dir.path().join("log"));
    let seqs: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[6].as_str()))
        .collect();
    assert_eq!(seqs, [("1", "0"), ("2", "5"), ("3", "0"), ("2", "0")]);
}

#[test]
fn tag_with_keep_order_survives_the_reorder_spill() {
    // Job 1 ends last, after the 299 others: more than the printer holds
    // as captures (256), so the rest go through its spill file.
    let dir = tempfile::tempdir().unwrap();
    let script = "if [ $1 = 1 ]; then while [ $(wc -l < done) -lt 299 ]; do sleep 0.02; done; \
                  else echo x >> done; fi; echo a$1; echo b$1";
    std::fs::write(dir.path().join("done"), b"").unwrap();
    let inputs: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    let out = run_ok(
        jobmill_in(dir.path())
            .args([
                "run", "-k", "-j", "3", "--tag", "--", "sh", "-c", script, "sh", ":::",
            ])
            .args(&inputs),
    );
    let want: String = (1..=300)
        .map(|i| format!("{i}\ta{i}\n{i}\tb{i}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

#[test]
fn resume_finds_a_journal_kept_beside_the_joblog() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("logs");
    std::fs::create_dir(&sub).unwrap();
    let script = "echo $1 >> ran; [ $1 != 2 ] || [ -e fixed ]";
    let first = jobmill_in(dir.path())
        .args([
            "run",
            "-j1",
            "--journal",
            "logs/run.sqlite",
            "--joblog",
            "logs/jl",
        ])
        .args(["--", "sh", "-c", script, "sh", ":::", "1", "2"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(1));
    std::fs::write(dir.path().join("fixed"), b"").unwrap();
    // From another directory, by another path to the same joblog, and a
    // command that differs: the recorded run is resumed, with a warning.
    let out =
        run_ok(jobmill_in(&sub).args(["run", "--resume-failed", "--joblog", "./jl", "--", "true"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("with its own command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ran")).unwrap(),
        "1\n2\n2\n"
    );
    assert_eq!(joblog_rows(&sub.join("jl")).len(), 3);
}

#[test]
fn the_live_joblog_matches_the_journals_joblog() {
    let dir = tempfile::tempdir().unwrap();
    let script = "printf '%s' \"$1\"; exit ${#1}";
    let run = jobmill_in(dir.path())
        .args([
            "run",
            "-j",
            "2",
            "--journal",
            "j.sqlite",
            "--joblog",
            "live",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            ":::",
            "a",
            "bb",
            "it's",
            "",
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(3), "three jobs exit non-zero");
    let stored = run_ok(jobmill_in(dir.path()).args(["results", "j.sqlite", "--format", "joblog"]));
    std::fs::write(dir.path().join("stored"), &stored.stdout).unwrap();
    // Every column but the times, which each records at its own moment.
    let strip = |rows: Vec<Vec<String>>| {
        let mut rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|mut r| {
                r[2].clear();
                r[3].clear();
                r
            })
            .collect();
        rows.sort();
        rows
    };
    let live = strip(joblog_rows(&dir.path().join("live")));
    assert_eq!(live.len(), 4);
    assert_eq!(live, strip(joblog_rows(&dir.path().join("stored"))));
}

#[test]
fn several_sources_nest_the_results_and_tag_with_every_value_as_gnu_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let ours = run_ok(jobmill_in(dir.path()).args([
        "run", "-k", "--tag", "--", "echo", ":::", "a", "b", ":::", "x", "y",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        "a x\ta x\na y\ta y\nb x\tb x\nb y\tb y\n"
    );
    run_ok(jobmill_in(dir.path()).args([
        "run",
        "--results",
        "ours",
        "--",
        "echo",
        ":::",
        "a",
        "b",
        ":::",
        "x",
        "y",
    ]));
    let tree_ours = tree(&dir.path().join("ours"));
    assert_eq!(tree_ours["1/b/2/y/stdout"], b"b y\n");
    run_ok(jobmill_in(dir.path()).args([
        "run",
        "-k",
        "--results",
        "t.csv",
        "--",
        "echo",
        ":::",
        "a",
        ":::",
        "x",
    ]));
    let rows = parse_csv(
        &std::fs::read_to_string(dir.path().join("t.csv")).unwrap(),
        ',',
    );
    assert_eq!(rows[0][9..], ["V1", "V2", "Stdout", "Stderr"]);
    assert_eq!(rows[1][8..], ["echo a x", "a", "x", "a x\n", ""]);
    if let Some(theirs) = gnu(
        dir.path(),
        &["-k", "--tag", "echo", ":::", "a", "b", ":::", "x", "y"],
    ) {
        assert_eq!(ours.stdout, theirs.stdout);
        gnu(
            dir.path(),
            &[
                "--results",
                "theirs",
                "echo",
                ":::",
                "a",
                "b",
                ":::",
                "x",
                "y",
            ],
        );
        assert_eq!(tree_ours, tree(&dir.path().join("theirs")));
    }
}

/// A job that prints `ready-$1`, waits (at most 60 s, then fails) until the
/// file `go` exists, then prints `done-$1`: a line can only be seen before
/// `go` exists if it is printed while the job runs.
const WAIT_FOR_GO: &str = "printf \"$2\" \"$1\"; i=0; while [ ! -e go ]; do \
     i=$((i+1)); [ $i -gt 1200 ] && exit 3; sleep 0.05; done; echo \"done-$1\"";

/// Reads `r` until what was read contains every one of `needles`.
fn read_until(r: &mut impl std::io::Read, seen: &mut Vec<u8>, needles: &[&str]) {
    let mut buf = [0u8; 256];
    while !needles
        .iter()
        .all(|n| String::from_utf8_lossy(seen).contains(n))
    {
        let n = r.read(&mut buf).expect("read stdout");
        assert!(
            n > 0,
            "stdout closed before {needles:?} appeared: {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn line_buffer_prints_each_line_while_its_job_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = jobmill_in(dir.path())
        .args(["run", "-j2", "--line-buffer", "--tag", "--", "sh", "-c"])
        .args([WAIT_FOR_GO, "sh", "{}", "ready-%s\\n", ":::", "a", "b"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    // Both jobs are still waiting for `go`: grouped output would show
    // nothing yet (and the jobs would give up and fail).
    read_until(&mut stdout, &mut seen, &["a\tready-a\n", "b\tready-b\n"]);
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
    seen.extend_from_slice(&rest);
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
    let mut lines: Vec<&str> = std::str::from_utf8(&seen).unwrap().lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["a\tdone-a", "a\tready-a", "b\tdone-b", "b\tready-b"]
    );
}

#[test]
fn ungroup_prints_half_a_line_while_its_job_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = jobmill_in(dir.path())
        .args(["run", "-u", "--", "sh", "-c"])
        .args([WAIT_FOR_GO, "sh", "{}", "part-%s:", ":::", "a"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, &["part-a:"]);
    std::fs::write(dir.path().join("go"), b"").unwrap();
    std::io::Read::read_to_end(&mut stdout, &mut seen).unwrap();
    assert!(wait_exit(&mut child).success());
    assert_eq!(String::from_utf8_lossy(&seen), "part-a:done-a\n");
}

#[test]
fn line_buffer_keeps_lines_whole_and_tagged_as_gnu_parallel() {
    // Each job writes every line in two pieces, with a pause between them
    // in which the other job writes: whatever the timing, each printed line
    // is whole and carries its own job's tag.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("pieces.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor i in 1 2 3; do printf \"$1-$i\"; sleep 0.05; echo -end; done\necho \"$1-last\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        "-j2",
        "--line-buffer",
        "--tag",
        "./pieces.sh",
        ":::",
        "x",
        "y",
    ];
    let ours = run_ok(
        jobmill_in(dir.path())
            .arg("run")
            .args(&args[..3])
            .arg("--")
            .args(&args[3..]),
    );
    let theirs = gnu(dir.path(), &args).unwrap();
    let sorted = |o: &Output| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&ours), sorted(&theirs));
    for line in sorted(&ours) {
        let (tag, rest) = line.split_once('\t').expect("tagged");
        assert!(rest.starts_with(tag), "{line:?} mixes two jobs");
    }
    assert_eq!(sorted(&ours).len(), 8);
}

#[test]
fn line_buffer_and_ungroup_refuse_keep_order() {
    for opt in ["--line-buffer", "-u"] {
        let dir = tempfile::tempdir().unwrap();
        let out = jobmill_in(dir.path())
            .args(["run", "-k", opt, "--", "echo", ":::", "a"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(255), "{opt}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot be used with --keep-order"),
            "{opt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn line_buffer_stops_quietly_when_the_reader_goes_away() {
    // A reader that closes the pipe after the first line, as `| head -1`:
    // jobmill stops the job and exits without an error message or a hang.
    let dir = tempfile::tempdir().unwrap();
    let mut child = jobmill_in(dir.path())
        .args(["run", "--no-journal", "--line-buffer", "--", "sh", "-c"])
        .args([
            "i=0; while [ $i -lt 600 ]; do echo line $i; i=$((i+1)); sleep 0.05; done",
            ":::",
            "a",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, &["line 0\n"]);
    drop(stdout);
    let status = wait_exit(&mut child);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(
        !err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );
}
