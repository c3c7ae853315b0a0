//! Reading journals: the library (`jobmill::journal::read`, `prune`) and the
//! commands `results`, `status` and `runs`, on real SQLite files built from
//! the real schema. Every read leaves the journal byte-for-byte unchanged.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use assert_cmd::Command as AssertCommand;
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

use jobmill::journal::prune;
use jobmill::journal::read::{JobState, Journal, Liveness, StateFilter};
use jobmill::journal::{self, JournalError, APPLICATION_ID, SCHEMA, SCHEMA_VERSION};

fn jobmill() -> AssertCommand {
    AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A journal being written, as the writer lays it out.
struct Builder {
    conn: Connection,
}

impl Builder {
    fn create(path: &Path, run_id: &str, command: &[&str], options: &str, started: f64) -> Self {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut raw = Vec::new();
        for a in command {
            raw.extend_from_slice(a.as_bytes());
            raw.push(0);
        }
        conn.execute(
            "INSERT INTO run (id, run_id, command, command_raw, options, cwd, host, started_at, \
             jobmill_version, schema_version) VALUES (1, ?1, ?2, ?3, ?4, ?5, 'testhost', ?6, \
             '0.1.0', ?7)",
            params![
                run_id,
                serde_json::to_string(command).unwrap(),
                raw,
                options,
                b"/tmp".to_vec(),
                started,
                SCHEMA_VERSION
            ],
        )
        .unwrap();
        Builder { conn }
    }

    fn session(&self, id: i64, pid: i64, started: f64, ended: Option<f64>) -> &Self {
        self.conn
            .execute(
                "INSERT INTO session (id, kind, pid, started_at, ended_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, if id == 1 { "run" } else { "resume" }, pid, started, ended],
            )
            .unwrap();
        self
    }

    /// A job with one attempt per `attempts`, the last ending as the job.
    #[allow(clippy::too_many_arguments)]
    fn job(
        &self,
        seq: i64,
        input: &[u8],
        state: &str,
        attempts: i64,
        exit: Option<i64>,
        signal: Option<i64>,
        reason: Option<&str>,
        start: f64,
        duration: f64,
    ) -> &Self {
        let finished = matches!(state, "done" | "failed" | "dead");
        self.conn
            .execute(
                "INSERT INTO job (seq, input, hash, state, attempts, exit_code, signal, reason, \
                 finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    seq,
                    input,
                    Sha256::digest(input).to_vec(),
                    state,
                    attempts,
                    exit,
                    signal,
                    reason,
                    finished.then_some(start + duration)
                ],
            )
            .unwrap();
        for a in 1..=attempts {
            let last = a == attempts;
            let (ended, outcome) = match (last, state) {
                (false, _) => (Some(start + duration), Some("requeued")),
                (true, "running") => (None, None),
                (true, s) => (Some(start + duration), Some(s)),
            };
            self.conn
                .execute(
                    "INSERT INTO attempt (seq, attempt, session, slot, started_at, ended_at, \
                     exit_code, signal, timed_out, outcome, reason, duration, max_rss_kb) \
                     VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1024)",
                    params![
                        seq,
                        a,
                        (seq % 4) + 1,
                        start,
                        ended,
                        if last { exit } else { Some(1) },
                        if last { signal } else { None },
                        i64::from(last && reason.is_some_and(|r| r.contains("timed out"))),
                        outcome,
                        if last { reason } else { Some("exit code 1") },
                        ended.map(|_| duration)
                    ],
                )
                .unwrap();
        }
        self
    }

    fn output(&self, seq: i64, stream: i64, data: &[u8], total: i64) -> &Self {
        self.conn
            .execute(
                "INSERT INTO output (seq, stream, data, total_bytes, truncated) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![seq, stream, data, total, i64::from(total > data.len() as i64)],
            )
            .unwrap();
        self
    }

    fn finish(&self, ended: f64, reason: &str, total: i64) -> &Self {
        self.conn
            .execute(
                "UPDATE run SET ended_at = ?1, end_reason = ?2, input_complete = 1, total_jobs = ?3",
                params![ended, reason, total],
            )
            .unwrap();
        self.conn
            .execute(
                "UPDATE session SET ended_at = ?1, end_reason = ?2 WHERE ended_at IS NULL",
                params![ended, reason],
            )
            .unwrap();
        self
    }

    fn input_complete(&self, total: i64) -> &Self {
        self.conn
            .execute(
                "UPDATE run SET input_complete = 1, total_jobs = ?1",
                params![total],
            )
            .unwrap();
        self
    }
}

/// The lock a running jobmill holds on its journal (an exclusive `flock`
/// on the file), held until the returned file is dropped.
fn writer_lock(path: &Path) -> std::fs::File {
    let f = std::fs::File::open(path).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    f
}

/// A pid that no longer runs (a reaped child).
fn dead_pid() -> i64 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    i64::from(pid)
}

const T0: f64 = 1_790_000_000.0;

/// A finished run of 6 jobs: 3 done, 2 failed, 1 dead, with output.
fn finished_run(path: &Path, run_id: &str) {
    let b = Builder::create(path, run_id, &["echo", "{}"], r#"{"jobs":4}"#, T0);
    b.session(1, dead_pid(), T0, None)
        .job(1, b"alpha", "done", 1, Some(0), None, None, T0 + 1.0, 0.5)
        .job(2, b"a b", "done", 1, Some(0), None, None, T0 + 1.0, 7.25)
        .job(3, b"it's", "done", 1, Some(0), None, None, T0 + 2.0, 1.0)
        .job(
            4,
            b"four",
            "failed",
            2,
            Some(3),
            None,
            Some("exit code 3"),
            T0 + 3.0,
            2.0,
        )
        .job(
            5,
            b"five",
            "failed",
            1,
            Some(3),
            None,
            Some("exit code 3"),
            T0 + 3.0,
            3.0,
        )
        .job(
            6,
            b"six",
            "dead",
            1,
            None,
            Some(15),
            Some("timed out after 10s"),
            T0 + 4.0,
            10.0,
        )
        .output(1, 1, b"alpha\n", 6)
        .output(4, 1, b"out of four", 11)
        .output(4, 2, b"err of four\n", 12)
        .output(6, 1, b"0123456789", 5000)
        .finish(T0 + 20.0, "complete", 6);
}

fn sha(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok().map(|b| Sha256::digest(b).to_vec())
}

fn wal(path: &Path) -> PathBuf {
    prune::companions(path)[0].clone()
}

/// Runs `jobmill ARGS` and returns stdout, asserting exit 0.
fn ok(args: &[&str]) -> String {
    let out = jobmill().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "jobmill {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn results_tsv_has_a_header_and_one_row_per_job_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    finished_run(&p, "20261130-010000-aaaa");
    let out = ok(&["results", p.to_str().unwrap()]);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        lines[0],
        [
            "seq",
            "state",
            "attempts",
            "exit_code",
            "signal",
            "started_at",
            "ended_at",
            "duration",
            "reason",
            "cause",
            "input"
        ]
    );
    assert_eq!(lines.len(), 7);
    assert_eq!(
        lines[2],
        [
            "2",
            "done",
            "1",
            "0",
            "",
            "1790000001.000",
            "1790000008.250",
            "7.250",
            "",
            "succeeded",
            "a b"
        ]
    );
    assert_eq!(lines[4][..5], ["4", "failed", "2", "3", ""]);
    assert_eq!(lines[4][8], "exit code 3");
    assert_eq!(lines[4][9], "exit", "the cause of its last attempt");
    assert_eq!(lines[6][9], "timeout");
    assert_eq!(lines[6][..5], ["6", "dead", "1", "", "15"]);
    let seqs: Vec<&str> = lines[1..].iter().map(|l| l[0]).collect();
    assert_eq!(seqs, ["1", "2", "3", "4", "5", "6"]);
}

#[test]
fn results_filters_select_the_union_of_the_states_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    finished_run(&p, "20261130-010000-aaaa");
    let seqs = |flags: &[&str]| -> Vec<String> {
        let mut args = vec!["results", p.to_str().unwrap()];
        args.extend_from_slice(flags);
        ok(&args)
            .lines()
            .skip(1)
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(seqs(&["--failed"]), ["4", "5"]);
    assert_eq!(seqs(&["--dead"]), ["6"]);
    assert_eq!(seqs(&["--done"]), ["1", "2", "3"]);
    assert_eq!(seqs(&["--failed", "--dead"]), ["4", "5", "6"]);
    assert_eq!(seqs(&[]).len(), 6);
}

/// A small RFC 4180 parser (quoted fields, doubled quotes, CRLF).
fn parse_csv(s: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => assert_eq!(chars.next(), Some('\n'), "CR without LF"),
            (false, '\n') => panic!("bare LF in CSV"),
            (false, c) => field.push(c),
        }
        if !quoted && (chars.peek().is_none() || c == '\r') {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        }
    }
    rows
}

#[test]
fn results_csv_quotes_fields_per_rfc4180_and_parses_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let b = Builder::create(&p, "20261130-010000-cccc", &["echo"], "{}", T0);
    b.session(1, dead_pid(), T0, None)
        .job(1, b"a,b", "done", 1, Some(0), None, None, T0, 1.0)
        .job(2, b"say \"hi\"", "done", 1, Some(0), None, None, T0, 1.0)
        .job(
            3,
            b"plain",
            "failed",
            1,
            Some(2),
            None,
            Some("exit code 2, \"bad\""),
            T0,
            1.0,
        )
        .finish(T0 + 5.0, "complete", 3);
    let out = ok(&["results", p.to_str().unwrap(), "--format", "csv"]);
    assert!(out.ends_with("\r\n"), "{out:?}");
    let rows = parse_csv(&out);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0][0], "seq");
    assert_eq!(rows[0].len(), 11);
    assert!(rows.iter().all(|r| r.len() == 11), "{rows:?}");
    assert_eq!(rows[1][10], "a,b");
    assert_eq!(rows[2][10], "say \"hi\"");
    assert_eq!(rows[3][8], "exit code 2, \"bad\"");
    assert_eq!(rows[3][3], "2");
}

#[test]
fn results_json_lines_parse_back_and_non_utf8_input_is_base64() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let b = Builder::create(&p, "20261130-010000-dddd", &["cat"], "{}", T0);
    b.session(1, dead_pid(), T0, None)
        .job(
            1,
            "héllo\t\"x\"".as_bytes(),
            "done",
            1,
            Some(0),
            None,
            None,
            T0,
            1.5,
        )
        .job(
            2,
            b"\xff\xfe bad",
            "dead",
            1,
            None,
            Some(9),
            Some("killed by signal 9"),
            T0,
            2.0,
        )
        .job(3, b"waiting", "queued", 0, None, None, None, T0, 0.0)
        .output(2, 1, b"\xff out", 5);
    let out = ok(&["results", p.to_str().unwrap(), "--format", "json"]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["seq"], 1);
    assert_eq!(rows[0]["state"], "done");
    assert_eq!(rows[0]["input"], "héllo\t\"x\"");
    assert_eq!(rows[0]["duration"], 1.5);
    assert_eq!(rows[0]["exit_code"], 0);
    assert!(rows[0]["signal"].is_null());
    assert!(rows[1]["input"].is_null());
    assert_eq!(rows[1]["input_base64"], "//4gYmFk");
    assert_eq!(rows[1]["signal"], 9);
    assert_eq!(rows[1]["reason"], "killed by signal 9");
    assert_eq!(rows[2]["state"], "queued");
    assert_eq!(rows[2]["attempts"], 0);
    assert!(rows[2]["started_at"].is_null());

    // Stored output that is not UTF-8 comes as base64 too.
    let out = ok(&[
        "results",
        p.to_str().unwrap(),
        "--output",
        "2",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["stdout"].is_null());
    assert_eq!(v["stdout_base64"], "/yBvdXQ=");
    assert_eq!(v["stdout_truncated"], false);
}

#[test]
fn results_tsv_escapes_non_utf8_and_control_bytes_reversibly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let b = Builder::create(&p, "20261130-010000-eeee", &["cat"], "{}", T0);
    b.session(1, dead_pid(), T0, None)
        .job(
            1,
            b"tab\there\nnl \\ \xff\x01 \xc3\xa9",
            "done",
            1,
            Some(0),
            None,
            None,
            T0,
            1.0,
        )
        .finish(T0 + 1.0, "complete", 1);
    let out = jobmill()
        .args(["results", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("TSV output is UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let fields: Vec<&str> = lines[1].split('\t').collect();
    assert_eq!(fields.len(), 11);
    assert_eq!(fields[10], "tab\\there\\nnl \\\\ \\xff\\x01 é");
}

#[test]
fn results_joblog_matches_gnu_parallel_columns_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    finished_run(&p, "20261130-010000-aaaa");
    // A queued job is not in a joblog (GNU parallel logs finished jobs).
    Connection::open(&p)
        .unwrap()
        .execute(
            "INSERT INTO job (seq, input, hash, state) VALUES (7, x'71', x'00', 'queued')",
            [],
        )
        .unwrap();
    let out = ok(&["results", p.to_str().unwrap(), "--format", "joblog"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
    );
    assert_eq!(lines.len(), 7, "{out}");
    assert_eq!(
        lines[1],
        "1\t:\t1790000001.000\t     0.500\t0\t6\t0\t0\techo alpha"
    );
    assert_eq!(
        lines[2],
        "2\t:\t1790000001.000\t     7.250\t0\t0\t0\t0\techo 'a b'"
    );
    assert_eq!(
        lines[3],
        "3\t:\t1790000002.000\t     1.000\t0\t0\t0\t0\techo 'it'\"'\"'s'"
    );
    assert_eq!(
        lines[4],
        "4\t:\t1790000003.000\t     2.000\t0\t11\t3\t0\techo four"
    );
    // Killed on timeout: Exitval -1 and the signal, as GNU parallel logs it.
    assert_eq!(
        lines[6],
        "6\t:\t1790000004.000\t    10.000\t0\t5000\t-1\t15\techo six"
    );
}

#[test]
fn results_joblog_of_a_shell_run_logs_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let b = Builder::create(
        &p,
        "20261130-010000-ffff",
        &["echo {} >> out"],
        r#"{"shell":true}"#,
        T0,
    );
    b.session(1, dead_pid(), T0, None)
        .job(1, b"x y", "done", 1, Some(0), None, None, T0, 1.0)
        .finish(T0 + 1.0, "complete", 1);
    let out = ok(&["results", p.to_str().unwrap(), "--format", "joblog"]);
    assert_eq!(
        out.lines().nth(1).unwrap(),
        "1\t:\t1790000000.000\t     1.000\t0\t0\t0\t0\techo 'x y' >> out"
    );
}

#[test]
fn results_output_prints_stored_streams_and_says_when_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    finished_run(&p, "20261130-010000-aaaa");
    let ps = p.to_str().unwrap();

    // One job: raw stdout on stdout, raw stderr on stderr.
    let out = jobmill()
        .args(["results", ps, "--output", "4"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"out of four");
    assert_eq!(out.stderr, b"err of four\n");

    let out = jobmill()
        .args(["results", ps, "--output", "6"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"0123456789");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("job 6: stdout truncated: 10 of 5000 bytes stored"),
        "{err}"
    );

    // A job that does not exist: an error naming it.
    let out = jobmill()
        .args(["results", ps, "--output", "99"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no job 99"));

    // All failed jobs, with headers.
    let all = ok(&["results", ps, "--failed", "--dead", "--output"]);
    assert!(
        all.contains("==> job 4 (failed, exit 3) stdout: 11 bytes <==\nout of four\n"),
        "{all}"
    );
    assert!(all.contains("==> job 4 (failed, exit 3) stderr: 12 bytes <==\nerr of four\n"));
    assert!(all.contains(
        "==> job 6 (dead, signal 15) stdout: TRUNCATED, 10 of 5000 bytes stored <==\n0123456789\n"
    ));
    assert!(!all.contains("alpha"), "--failed --dead selects only those");

    // JSON carries the streams and the flags.
    let json = ok(&["results", ps, "--dead", "--output", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["seq"], 6);
    assert_eq!(v["stdout"], "0123456789");
    assert_eq!(v["stdout_bytes"], 5000);
    assert_eq!(v["stdout_truncated"], true);
    assert!(v["stderr"].is_null());
}

#[test]
fn status_shows_counts_slowest_jobs_and_top_failure_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    finished_run(&p, "20261130-010000-aaaa");
    let out = ok(&["status", p.to_str().unwrap()]);
    assert!(out.contains("run:       20261130-010000-aaaa"), "{out}");
    assert!(out.contains("state:     finished (complete)"), "{out}");
    assert!(out.contains("elapsed:   20.0s"), "{out}");
    assert!(
        out.contains("jobs:      6 total, 3 done, 2 failed, 1 dead"),
        "{out}"
    );
    let slowest: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "slowest:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(slowest.len(), 5, "{out}");
    assert!(
        slowest[0].contains("job 6") && slowest[0].contains("six"),
        "{out}"
    );
    assert!(slowest[1].contains("job 2"), "{out}");
    assert!(
        out.lines()
            .any(|l| l == "failures by cause: exit 2, timeout 1"),
        "{out}"
    );
    let reasons: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "top failure reasons:")
        .skip(1)
        .collect();
    assert_eq!(reasons.len(), 2, "{out}");
    assert!(
        reasons[0].trim_start().starts_with("2  exit code 3"),
        "{out}"
    );
    assert!(
        reasons[1]
            .trim_start()
            .starts_with("1  timed out after 10s"),
        "{out}"
    );
    assert!(!out.contains("eta:"), "no ETA for a finished run");
}

#[test]
fn status_of_a_killed_run_says_interrupted_and_suggests_resume() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let b = Builder::create(&p, "20261130-010000-abcd", &["sleep"], "{}", T0);
    b.session(1, dead_pid(), T0, None)
        .job(1, b"1", "done", 1, Some(0), None, None, T0 + 1.0, 1.0)
        .job(2, b"2", "running", 1, None, None, None, T0 + 2.0, 0.0)
        .job(3, b"3", "queued", 0, None, None, None, T0, 0.0)
        .input_complete(3);
    let j = Journal::open(&p).unwrap();
    assert_eq!(j.liveness().unwrap(), Liveness::Interrupted);
    let prog = j.progress(now()).unwrap();
    assert_eq!(prog.remaining, Some(2));
    assert_eq!(prog.elapsed, 2.0, "to the last recorded activity");
    assert_eq!(prog.eta, None);
    let out = ok(&["status", p.to_str().unwrap()]);
    assert!(
        out.contains("interrupted") && out.contains("jobmill resume 20261130-010000-abcd"),
        "{out}"
    );
    assert!(out.contains("1 running, 1 done"), "{out}");
    assert!(out.contains("left:      2 jobs not finished"), "{out}");
}

#[test]
fn status_of_a_run_whose_journal_is_locked_shows_running_and_an_eta_from_the_done_rate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let t = now() - 100.0;
    // This test process plays the live jobmill.
    let b = Builder::create(&p, "20261130-010000-live", &["sleep"], "{}", t);
    b.session(1, i64::from(std::process::id()), t, None);
    for seq in 1..=10 {
        b.job(
            seq,
            b"x",
            "done",
            1,
            Some(0),
            None,
            None,
            t + seq as f64,
            1.0,
        );
    }
    b.job(11, b"x", "running", 1, None, None, None, t + 50.0, 0.0);
    for seq in 12..=40 {
        b.job(seq, b"x", "queued", 0, None, None, None, t, 0.0);
    }
    b.input_complete(40);
    let j = Journal::open(&p).unwrap();
    assert_eq!(
        j.liveness().unwrap(),
        Liveness::Interrupted,
        "a live pid without the writer's lock is not a live run"
    );
    // The writer holds an flock on the journal while it runs.
    let _lock = writer_lock(&p);
    assert_eq!(
        j.liveness().unwrap(),
        Liveness::Running {
            pid: i64::from(std::process::id())
        }
    );
    let prog = j.progress(t + 100.0).unwrap();
    assert_eq!(prog.finished, 10);
    assert_eq!(prog.remaining, Some(30));
    assert_eq!(prog.rate, Some(0.1));
    assert_eq!(prog.eta, Some(300.0));
    let out = ok(&["status", p.to_str().unwrap()]);
    assert!(out.contains("state:     running (pid"), "{out}");
    assert!(out.contains("eta:       "), "{out}");
    assert!(out.contains("0.10 jobs/s"), "{out}");
}

#[test]
fn a_crash_left_hot_wal_is_read_with_its_committed_rows_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sqlite");
    let b = Builder::create(&live, "20261130-010000-wal1", &["echo"], "{}", T0);
    b.conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    b.session(1, dead_pid(), T0, None)
        .job(1, b"one", "done", 1, Some(0), None, None, T0, 1.0)
        .job(
            2,
            b"two",
            "failed",
            1,
            Some(1),
            None,
            Some("exit code 1"),
            T0,
            1.0,
        );
    // The crash image: the main file and the -wal as they are on disk
    // while the writer still holds them (no checkpoint, no -shm).
    let crashed = dir.path().join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    let p = crashed.join("20261130-010000-wal1.sqlite");
    std::fs::copy(&live, &p).unwrap();
    std::fs::copy(wal(&live), wal(&p)).unwrap();
    drop(b);
    assert!(
        std::fs::metadata(wal(&p)).unwrap().len() > 0,
        "the WAL is hot"
    );
    let (db0, wal0) = (sha(&p), sha(&wal(&p)));

    let j = Journal::open(&p).unwrap();
    let c = j.counts().unwrap();
    assert_eq!(
        (c.done, c.failed),
        (1, 1),
        "committed rows in the WAL are seen"
    );
    drop(j);
    let out = ok(&["results", p.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 3, "{out}");
    ok(&["status", p.to_str().unwrap()]);
    jobmill()
        .env("XDG_STATE_HOME", dir.path())
        .args(["runs"])
        .assert()
        .success();
    assert_eq!(sha(&p), db0, "main file unchanged");
    assert_eq!(sha(&wal(&p)), wal0, "-wal unchanged");
}

#[test]
fn every_read_command_leaves_the_journal_byte_for_byte_unchanged() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("jobmill");
    std::fs::create_dir(&dir).unwrap();
    let p = dir.join("20261130-010000-aaaa.sqlite");
    finished_run(&p, "20261130-010000-aaaa");
    let shm = prune::companions(&p)[1].clone();
    let before = (sha(&p), sha(&wal(&p)), sha(&shm));
    assert_eq!((&before.1, &before.2), (&None, &None), "closed cleanly");
    let ps = p.to_str().unwrap();
    for args in [
        vec!["results", ps],
        vec!["results", ps, "--format", "csv"],
        vec!["results", ps, "--format", "json"],
        vec!["results", ps, "--format", "joblog"],
        vec!["results", ps, "--failed", "--output"],
        vec!["results", ps, "--output", "4"],
        vec!["status", ps],
        vec!["runs"],
        vec!["runs", "--prune", "100000d"],
    ] {
        jobmill()
            .env("XDG_STATE_HOME", state.path())
            .args(&args)
            .assert()
            .success();
        assert_eq!(
            (sha(&p), sha(&wal(&p)), sha(&shm)),
            before,
            "jobmill {args:?} changed it or created files next to it"
        );
    }
}

#[test]
fn unreadable_journals_are_refused_with_a_clear_error_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // Not SQLite at all.
    let text = dir.path().join("text.sqlite");
    std::fs::write(&text, b"just some text, not a database\n").unwrap();
    // A valid journal, truncated to half its size.
    let full = dir.path().join("full.sqlite");
    finished_run(&full, "20261130-010000-aaaa");
    let bytes = std::fs::read(&full).unwrap();
    let truncated = dir.path().join("truncated.sqlite");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // Garbage over the pages after the header.
    let corrupt = dir.path().join("corrupt.sqlite");
    let mut c = bytes.clone();
    for b in &mut c[100..] {
        *b = 0xA5;
    }
    std::fs::write(&corrupt, &c).unwrap();
    // From a newer jobmill.
    let newer = dir.path().join("newer.sqlite");
    finished_run(&newer, "20261130-010000-bbbb");
    Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    // Another application's database.
    let other = dir.path().join("other.sqlite");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();

    for (path, expect) in [
        (&text, "not an SQLite database"),
        (&truncated, "not a readable jobmill journal"),
        (&corrupt, "not a readable jobmill journal"),
        (&newer, "newer than this jobmill"),
        (&other, "not a jobmill journal"),
    ] {
        let before = sha(path);
        for cmd in [
            vec!["results", path.to_str().unwrap()],
            vec!["results", path.to_str().unwrap(), "--format", "joblog"],
            vec!["status", path.to_str().unwrap()],
        ] {
            let out = jobmill().args(&cmd).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(255), "{cmd:?}: {err}");
            assert!(err.contains(expect), "{cmd:?}: {err}");
            assert!(
                err.contains(path.to_str().unwrap()),
                "names the file: {err}"
            );
            assert!(out.stdout.is_empty());
            assert_eq!(sha(path), before, "{} changed", path.display());
        }
    }
}

#[test]
fn run_ids_and_unique_prefixes_resolve_in_xdg_state_home() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("jobmill");
    std::fs::create_dir(&dir).unwrap();
    finished_run(
        &dir.join("20261130-010000-aaaa.sqlite"),
        "20261130-010000-aaaa",
    );
    finished_run(
        &dir.join("20261130-020000-bbbb.sqlite"),
        "20261130-020000-bbbb",
    );
    let st = |id: &str| {
        jobmill()
            .env("XDG_STATE_HOME", state.path())
            .args(["status", id])
            .output()
            .unwrap()
    };
    let out = st("20261130-02");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("run:       20261130-020000-bbbb"));
    let out = st("20261130-010000-aaaa");
    assert!(String::from_utf8_lossy(&out.stdout).contains("run:       20261130-010000-aaaa"));
    let out = st("20261130");
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ambiguous"));
    let out = st("1999");
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no journal for run \"1999\""));
}

#[test]
fn results_and_status_need_a_run_or_a_queue_but_not_both() {
    for cmd in ["results", "status"] {
        let out = jobmill().arg(cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(255));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("RUN_ID|PATH"), "{err}");
        let out = jobmill()
            .args([cmd, "some-run", "--queue", "redis://127.0.0.1:1/q"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(255));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot be used with"), "{err}");
    }
}

#[test]
fn a_closed_stdout_pipe_ends_results_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let b = Builder::create(&p, "20261130-010000-pipe", &["echo"], "{}", T0);
    b.session(1, dead_pid(), T0, None);
    b.conn.execute_batch("BEGIN").unwrap();
    for seq in 1..=20_000 {
        b.job(
            seq,
            b"some input line that is not short",
            "done",
            1,
            Some(0),
            None,
            None,
            T0,
            1.0,
        );
    }
    b.conn.execute_batch("COMMIT").unwrap();
    b.finish(T0 + 1.0, "complete", 20_000);
    drop(b);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jobmill"))
        .args(["results", p.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("seq\t"));
    // The reader is dropped: jobmill's next writes fail with EPIPE.
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn streaming_reads_every_job_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let b = Builder::create(&p, "20261130-010000-many", &["echo"], "{}", T0);
    b.session(1, dead_pid(), T0, None);
    b.conn.execute_batch("BEGIN").unwrap();
    for seq in 1..=5000 {
        let state = ["done", "failed", "dead"][(seq % 3) as usize];
        b.job(
            seq,
            seq.to_string().as_bytes(),
            state,
            1,
            Some(seq % 3),
            None,
            None,
            T0,
            1.0,
        );
    }
    b.conn.execute_batch("COMMIT").unwrap();
    drop(b);
    let j = Journal::open(&p).unwrap();
    let mut next = 1;
    j.for_each_job(StateFilter::default(), |r| {
        assert_eq!(r.seq, next);
        assert_eq!(r.input, next.to_string().as_bytes());
        next += 1;
        Ok::<(), JournalError>(())
    })
    .unwrap();
    assert_eq!(next, 5001);
    let mut failed = 0;
    j.for_each_job(
        StateFilter {
            failed: true,
            ..StateFilter::default()
        },
        |r| {
            assert_eq!(r.state, Some(JobState::Failed));
            failed += 1;
            Ok::<(), JournalError>(())
        },
    )
    .unwrap();
    assert_eq!(failed, 1667);
}

fn set_ended(path: &Path, ended: f64) {
    Connection::open(path)
        .unwrap()
        .execute("UPDATE run SET ended_at = ?1", [ended])
        .unwrap();
}

#[test]
fn runs_lists_journals_with_state_counts_and_size_and_marks_unreadable_files() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("jobmill");
    std::fs::create_dir(&dir).unwrap();
    finished_run(
        &dir.join("20261130-010000-aaaa.sqlite"),
        "20261130-010000-aaaa",
    );
    let b = Builder::create(
        &dir.join("20261130-020000-bbbb.sqlite"),
        "20261130-020000-bbbb",
        &["sleep", "{}"],
        "{}",
        T0,
    );
    b.session(1, dead_pid(), T0, None)
        .job(1, b"1", "done", 1, Some(0), None, None, T0, 1.0);
    drop(b);
    std::fs::write(dir.join("junk.sqlite"), b"garbage").unwrap();
    let junk = sha(&dir.join("junk.sqlite"));

    let entries = prune::list(&dir).unwrap();
    assert_eq!(entries.len(), 3);
    let s0 = entries[0].summary.as_ref().unwrap();
    assert_eq!(s0.liveness, Liveness::Finished);
    assert_eq!((s0.counts.done, s0.counts.total()), (3, 6));
    assert_eq!(
        entries[0].size,
        std::fs::metadata(dir.join("20261130-010000-aaaa.sqlite"))
            .unwrap()
            .len()
    );
    assert_eq!(
        entries[1].summary.as_ref().unwrap().liveness,
        Liveness::Interrupted
    );
    assert!(entries[2].summary.is_err());

    let out = jobmill()
        .env("XDG_STATE_HOME", state.path())
        .arg("runs")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("RUN ID"), "{text}");
    assert!(
        lines[1].starts_with("20261130-010000-aaaa")
            && lines[1].contains("finished")
            && lines[1].contains("3/6")
            && lines[1].ends_with("echo {}"),
        "{text}"
    );
    assert!(
        lines[2].contains("interrupted") && lines[2].contains("1/1+"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("! junk.sqlite") && lines[3].contains("not a readable journal"),
        "{text}"
    );
    assert!(lines[4].starts_with("3 journal files"), "{text}");
    assert_eq!(sha(&dir.join("junk.sqlite")), junk);
}

#[test]
fn prune_deletes_only_finished_runs_older_than_age_with_their_wal_and_shm() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("jobmill");
    std::fs::create_dir(&dir).unwrap();
    let day = 86_400.0;
    let old_ended = now() - 10.0 * day;
    // Finished 10 days ago: pruned, with its -wal and -shm.
    let old = dir.join("20261101-000000-0001.sqlite");
    finished_run(&old, "20261101-000000-0001");
    set_ended(&old, old_ended);
    std::fs::write(wal(&old), b"").unwrap();
    std::fs::write(prune::companions(&old)[1].clone(), b"shm").unwrap();
    // Finished 10 days ago but halted by --halt: finished too.
    let halted = dir.join("20261101-000000-0002.sqlite");
    finished_run(&halted, "20261101-000000-0002");
    Connection::open(&halted)
        .unwrap()
        .execute(
            "UPDATE run SET ended_at = ?1, end_reason = 'halted'",
            [old_ended],
        )
        .unwrap();
    // Finished yesterday: kept.
    let recent = dir.join("20261129-000000-0003.sqlite");
    finished_run(&recent, "20261129-000000-0003");
    set_ended(&recent, now() - day);
    // Interrupted (Ctrl-C) 10 days ago: kept.
    let interrupted = dir.join("20261101-000000-0004.sqlite");
    finished_run(&interrupted, "20261101-000000-0004");
    Connection::open(&interrupted)
        .unwrap()
        .execute(
            "UPDATE run SET ended_at = ?1, end_reason = 'interrupted'",
            [old_ended],
        )
        .unwrap();
    // Killed 10 days ago (never ended): kept.
    let killed = dir.join("20261101-000000-0005.sqlite");
    let b = Builder::create(
        &killed,
        "20261101-000000-0005",
        &["echo"],
        "{}",
        old_ended - day,
    );
    b.session(1, dead_pid(), old_ended - day, None);
    drop(b);
    // Still running (this process), started 10 days ago: kept.
    let running = dir.join("20261101-000000-0006.sqlite");
    let b = Builder::create(
        &running,
        "20261101-000000-0006",
        &["echo"],
        "{}",
        old_ended - day,
    );
    b.session(1, i64::from(std::process::id()), old_ended - day, None);
    drop(b);
    let _lock = writer_lock(&running);
    // Finished 10 days ago, but a `jobmill resume --failed` holds it now.
    let resuming = dir.join("20261101-000000-0007.sqlite");
    finished_run(&resuming, "20261101-000000-0007");
    set_ended(&resuming, old_ended);
    let _lock2 = writer_lock(&resuming);
    // Not a journal: kept, untouched.
    let junk = dir.join("junk.sqlite");
    std::fs::write(&junk, b"garbage").unwrap();
    let freed = prune::size_on_disk(&old) + prune::size_on_disk(&halted);
    let kept: Vec<_> = [&recent, &interrupted, &killed, &running, &resuming, &junk]
        .iter()
        .map(|p| (p.to_path_buf(), sha(p)))
        .collect();

    let out = jobmill()
        .env("XDG_STATE_HOME", state.path())
        .args(["runs", "--prune", "7d"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("deleted 20261101-000000-0001"), "{text}");
    assert!(text.contains("deleted 20261101-000000-0002"), "{text}");
    assert_eq!(text.matches("deleted ").count(), 2, "{text}");
    assert!(text.contains("pruned 2 finished runs"), "{text}");
    // At least the two files and their companions (SQLite sizes a -shm it
    // reads to 32 KiB).
    let freed_kib: f64 = text
        .split(": ")
        .nth(1)
        .and_then(|t| t.strip_suffix(" KiB freed\n"))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(freed_kib * 1024.0 >= freed as f64 - 52.0, "{freed} {text}");
    assert!(!old.exists() && !halted.exists());
    assert!(!wal(&old).exists() && !prune::companions(&old)[1].exists());
    for (p, h) in kept {
        assert_eq!(sha(&p), h, "{} must be kept unchanged", p.display());
    }

    // A second prune finds nothing.
    let out = jobmill()
        .env("XDG_STATE_HOME", state.path())
        .args(["runs", "--prune", "7d"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("pruned 0 finished runs"));
}

#[test]
fn journal_open_refuses_a_newer_schema_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("n.sqlite");
    finished_run(&p, "20261130-010000-aaaa");
    Connection::open(&p)
        .unwrap()
        .pragma_update(None, "user_version", 7)
        .unwrap();
    match Journal::open(&p) {
        Err(JournalError::NewerSchema {
            found, supported, ..
        }) => assert_eq!((found, supported), (7, SCHEMA_VERSION)),
        other => panic!("{other:?}"),
    }
    assert!(journal::check(&p).is_err());
}

/// GNU parallel's `--resume` and `--resume-failed` read our joblog: the
/// logged jobs are skipped, the failed one re-run. `scripts/test.sh`
/// installs GNU parallel; without it this test fails, it does not skip.
#[test]
fn gnu_parallel_resumes_from_a_joblog_written_by_results() {
    let has_parallel = std::process::Command::new("parallel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_parallel,
        "GNU parallel is not installed (apt-get install parallel, or run scripts/test.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let b = Builder::create(&p, "20261130-010000-gnup", &["echo"], "{}", T0);
    b.session(1, dead_pid(), T0, None)
        .job(1, b"a", "done", 1, Some(0), None, None, T0, 1.0)
        .job(2, b"b c", "done", 1, Some(0), None, None, T0, 1.0)
        .job(
            3,
            b"c",
            "failed",
            1,
            Some(1),
            None,
            Some("exit code 1"),
            T0,
            1.0,
        )
        .job(4, b"d", "queued", 0, None, None, None, T0, 0.0)
        .input_complete(4);
    drop(b);
    let log = dir.path().join("joblog");
    let out = ok(&["results", p.to_str().unwrap(), "--format", "joblog"]);
    std::fs::write(&log, out).unwrap();
    let resume = |flag: &str| {
        let out = std::process::Command::new("parallel")
            .args(["--will-cite", "-k", flag, "--joblog"])
            .arg(&log)
            .args(["echo", ":::", "a", "b c", "c", "d"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // --resume-failed first: --resume would append job 4 to the log.
    assert_eq!(resume("--resume-failed"), "c\nd\n");
}

#[test]
fn status_shortens_long_inputs_on_a_character_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    let long = "é".repeat(100);
    let b = Builder::create(&p, "20261130-010000-long", &["echo"], "{}", T0);
    b.session(1, dead_pid(), T0, None)
        .job(1, long.as_bytes(), "done", 1, Some(0), None, None, T0, 1.0)
        .finish(T0 + 1.0, "complete", 1);
    let out = jobmill()
        .args(["status", p.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).expect("status output is UTF-8");
    let line = text.lines().find(|l| l.contains("job 1")).unwrap();
    assert!(line.ends_with("é..."), "{line}");
    assert!(line.len() < 120, "{line}");
}

/// Issue 12: `results --output PATH` takes PATH as the run (`--output`'s
/// SEQ is optional), the same as `results PATH --output`.
#[test]
fn results_output_followed_by_a_path_reads_that_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.sqlite");
    finished_run(&p, "20261130-010000-aaaa");
    let ps = p.to_str().unwrap();
    let after = jobmill()
        .args(["results", "--output", ps])
        .output()
        .unwrap();
    assert!(after.status.success(), "{after:?}");
    let before = jobmill()
        .args(["results", ps, "--output"])
        .output()
        .unwrap();
    assert_eq!(after.stdout, before.stdout);
    assert!(!after.stdout.is_empty());
    let bad = jobmill()
        .args(["results", ps, "--output", "x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("job number"));
}
