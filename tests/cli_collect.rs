//! `jobmill results --queue` and `status --queue` against a real
//! `redis-server`: the same formats as for a journal, collected into a
//! journal (`--save PATH`, or `run --queue`'s own) that stays readable with
//! the server stopped; collecting again updates it in place; a file that is
//! not a journal is refused and left byte-for-byte unchanged.

mod common;
mod redis_support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Output, Stdio};

use common::{jobmill, submit, wait_until};
use redis_support::RedisServer;

/// Fails for input `f` (exit 1), kills itself for input `k` (SIGKILL).
const SCRIPT: &str = "echo out-$1; if [ \"$1\" = k ]; then kill -9 $$; fi; [ \"$1\" != f ]";

fn spawn_worker(url: &str) -> Child {
    jobmill()
        .args([
            "worker", "--queue", url, "-j", "2", "--", "sh", "-c", SCRIPT,
        ])
        .args(["sh", "{}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jobmill worker")
}

/// Waits for a worker and asserts it exited 0.
fn finish_ok(child: Child) {
    let (code, _, stderr) = common::finish(child);
    assert_eq!(code, 0, "worker failed: {stderr}");
}

fn ok(args: &[&str]) -> Output {
    let out = jobmill().args(args).stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "jobmill {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// TSV rows by seq (each seq exactly once): the fields after seq.
fn tsv_rows(tsv: &str) -> BTreeMap<u64, Vec<String>> {
    let mut lines = tsv.lines();
    assert_eq!(
        lines.next(),
        Some("seq\tstate\tattempts\texit_code\tsignal\tstarted_at\tended_at\tduration\treason\tcause\tinput")
    );
    let mut rows = BTreeMap::new();
    for line in lines {
        let f: Vec<String> = line.split('\t').map(str::to_string).collect();
        assert_eq!(f.len(), 11, "{line}");
        let seq: u64 = f[0].parse().unwrap();
        assert!(rows.insert(seq, f).is_none(), "job {seq} listed twice");
    }
    rows
}

/// A queue worked to the end: jobs a, f (fails), k (killed: dead), b, and
/// `x y`, each allowed two attempts.
fn worked_queue(server: &RedisServer, name: &str) -> String {
    let url = server.url(name);
    submit(&url, &["--retries", "1"], b"a\nf\nk\nb\nx y\n");
    finish_ok(spawn_worker(&url));
    url
}

#[test]
fn results_of_a_queue_list_every_job_once_in_tsv_json_and_joblog_with_a_dead_letter() {
    let server = RedisServer::start();
    let url = worked_queue(&server, "formats");

    let rows = tsv_rows(&text(&ok(&["results", "--queue", &url])));
    let got: Vec<(u64, &str, &str, &str, &str, &str)> = rows
        .iter()
        .map(|(seq, f)| (*seq, &*f[1], &*f[2], &*f[3], &*f[4], &*f[10]))
        .collect();
    assert_eq!(
        got,
        [
            (1, "done", "1", "0", "", "a"),
            (2, "failed", "2", "1", "", "f"),
            (3, "dead", "2", "", "9", "k"),
            (4, "done", "1", "0", "", "b"),
            (5, "done", "1", "0", "", "x y"),
        ]
    );
    assert_eq!(rows[&2][8], "exited with code 1");
    assert_eq!(rows[&3][8], "killed by signal SIGKILL");
    assert_eq!(
        (&*rows[&2][9], &*rows[&3][9]),
        ("exit", "signal"),
        "the causes"
    );

    // Filters work as for a journal.
    let dead = tsv_rows(&text(&ok(&["results", "--queue", &url, "--dead"])));
    assert_eq!(dead.keys().copied().collect::<Vec<_>>(), [3]);

    let json = text(&ok(&["results", "--queue", &url, "--format", "json"]));
    let mut by_seq = HashMap::new();
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        assert!(by_seq.insert(seq, v).is_none(), "job {seq} twice in json");
    }
    assert_eq!(by_seq.len(), 5);
    let k = &by_seq[&3];
    assert_eq!(
        (
            k["state"].as_str(),
            k["attempts"].as_u64(),
            k["signal"].as_i64(),
            k["reason"].as_str(),
            k["input"].as_str()
        ),
        (
            Some("dead"),
            Some(2),
            Some(9),
            Some("killed by signal SIGKILL"),
            Some("k")
        )
    );
    assert_eq!(by_seq[&5]["input"].as_str(), Some("x y"));

    let joblog = text(&ok(&["results", "--queue", &url, "--format", "joblog"]));
    let mut lines = joblog.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand")
    );
    let exits: Vec<(String, String, String)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[6].to_string(), f[7].to_string())
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        exits,
        [
            s("1", "0", "0"),
            s("2", "1", "0"),
            s("3", "0", "9"),
            s("4", "0", "0"),
            s("5", "0", "0")
        ]
    );

    let st = text(&ok(&["status", "--queue", &url]));
    assert!(st.contains("state:    drained"), "{st}");
    assert!(st.contains("3 done, 1 failed, 1 dead"), "{st}");
    assert!(st.contains("top failure reasons:"), "{st}");
    assert!(st.contains("killed by signal SIGKILL"), "{st}");
    assert!(st.contains("exited with code 1"), "{st}");
}

#[test]
fn collected_results_are_read_offline_after_the_redis_server_stops() {
    let mut server = RedisServer::start();
    let url = worked_queue(&server, "offline");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collected.sqlite");
    let p = path.to_str().unwrap();
    let online = ok(&["results", "--queue", &url, "--save", p]);
    let online_json = text(&ok(&["results", "--queue", &url, "--format", "json"]));
    assert!(
        String::from_utf8_lossy(&online.stderr).contains("collected the jobs of redis://"),
        "{}",
        String::from_utf8_lossy(&online.stderr)
    );
    server.stop();
    // The server is gone: the queue cannot be read any more...
    let gone = jobmill()
        .args(["results", "--queue", &url])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(255));
    // ... and the journal gives the same rows.
    assert_eq!(text(&ok(&["results", p])), text(&online));
    assert_eq!(text(&ok(&["results", p, "--format", "json"])), online_json);
    let st = text(&ok(&["status", p]));
    assert!(st.contains("state:     finished (complete)"), "{st}");
    assert!(
        st.contains("jobs:      5 total, 3 done, 1 failed, 1 dead"),
        "{st}"
    );
    assert!(st.contains("collected: from redis://127.0.0.1:"), "{st}");
}

#[test]
fn run_with_a_queue_leaves_a_journal_that_results_and_status_read_offline() {
    let mut server = RedisServer::start();
    let url = server.url("runjournal");
    let state = tempfile::tempdir().unwrap();
    let out = jobmill()
        .env("XDG_STATE_HOME", state.path())
        .args(["run", "--queue", &url, "-j", "2", "--retries", "1", "--"])
        .args(["sh", "-c", SCRIPT, "sh", "{}"])
        .args([":::", "a", "f", "b"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let dir = state.path().join("jobmill");
    let journals: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(journals.len(), 1, "{journals:?}");
    let run_id = journals[0]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        stderr.contains(&format!("journal {}", journals[0].display())),
        "{stderr}"
    );
    server.stop();
    let offline = |args: &[&str]| {
        let out = jobmill()
            .env("XDG_STATE_HOME", state.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text(&out)
    };
    let rows = tsv_rows(&offline(&["results", &run_id]));
    let got: Vec<(u64, &str, &str)> = rows
        .iter()
        .map(|(seq, f)| (*seq, &*f[1], &*f[10]))
        .collect();
    assert_eq!(
        got,
        [(1, "done", "a"), (2, "failed", "f"), (3, "done", "b")]
    );
    // The command is known: the joblog renders it.
    let joblog = offline(&["results", &run_id, "--format", "joblog"]);
    assert!(
        joblog.lines().nth(2).unwrap().ends_with(" sh f"),
        "{joblog}"
    );
    let st = offline(&["status", &run_id]);
    assert!(st.contains(&format!("run:       {run_id}")), "{st}");
    assert!(st.contains("2 done, 1 failed"), "{st}");
}

fn sql_count(path: &Path, query: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row(query, [], |r| r.get(0)).unwrap()
}

#[test]
fn collecting_again_updates_the_journal_in_place_without_duplicating_jobs() {
    let server = RedisServer::start();
    let url = server.url("again");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let p = path.to_str().unwrap();
    let worker = spawn_worker(&url);
    submit(&url, &["--keep-open", "--retries", "1"], b"a\nf\n");
    wait_until("both jobs to end", || {
        text(&ok(&["status", "--queue", &url])).contains("1 done, 1 failed")
    });
    ok(&["status", "--queue", &url, "--save", p]);
    let first = text(&ok(&["status", p]));
    assert!(
        first.contains("state:     snapshot of a queue not drained (open; 0 queued, 0 running)"),
        "{first}"
    );
    let run_line = first.lines().next().unwrap().to_string();
    // A second submit numbers its inputs from 1 again: the journal numbers
    // jobs by queue job id, so they are 3 and 4. Its end closes the queue.
    submit(&url, &[], b"b\nk\n");
    finish_ok(worker);
    for _ in 0..2 {
        ok(&["results", "--queue", &url, "--save", p]);
    }
    assert_eq!(sql_count(&path, "SELECT COUNT(*) FROM job"), 4);
    assert_eq!(sql_count(&path, "SELECT COUNT(DISTINCT seq) FROM job"), 4);
    assert_eq!(sql_count(&path, "SELECT COUNT(*) FROM attempt"), 4);
    assert_eq!(sql_count(&path, "SELECT COUNT(*) FROM run"), 1);
    assert_eq!(sql_count(&path, "SELECT COUNT(*) FROM session"), 1);
    let rows = tsv_rows(&text(&ok(&["results", p])));
    let got: Vec<(u64, &str, &str)> = rows
        .iter()
        .map(|(seq, f)| (*seq, &*f[1], &*f[10]))
        .collect();
    assert_eq!(
        got,
        [
            (1, "done", "a"),
            (2, "failed", "f"),
            (3, "done", "b"),
            (4, "dead", "k")
        ]
    );
    let last = text(&ok(&["status", p]));
    assert_eq!(last.lines().next().unwrap(), run_line, "the run id is kept");
    assert!(last.contains("state:     finished (complete)"), "{last}");
}

#[test]
fn a_target_that_is_not_a_journal_is_refused_and_left_byte_for_byte_unchanged() {
    let server = RedisServer::start();
    let url = worked_queue(&server, "refuse");
    let dir = tempfile::tempdir().unwrap();

    let garbage = dir.path().join("garbage.sqlite");
    let bytes: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&garbage, &bytes).unwrap();
    // An SQLite database of another application.
    let other = dir.path().join("other.sqlite");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    // A truncated journal: a good one cut in half.
    let good = dir.path().join("good.sqlite");
    ok(&["results", "--queue", &url, "--save", good.to_str().unwrap()]);
    let cut = dir.path().join("cut.sqlite");
    let full = std::fs::read(&good).unwrap();
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();

    for (path, why) in [
        (&garbage, "not a readable jobmill journal"),
        (&other, "not a jobmill journal"),
        (&cut, "not a readable jobmill journal"),
    ] {
        let before = std::fs::read(path).unwrap();
        for cmd in ["results", "status"] {
            let out = jobmill()
                .args([cmd, "--queue", &url, "--save", path.to_str().unwrap()])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(255),
                "{cmd} {}: {err}",
                path.display()
            );
            assert!(err.contains(why), "{err}");
            assert!(err.contains(path.to_str().unwrap()), "{err}");
            assert!(err.contains("left unchanged"), "{err}");
            assert_eq!(
                std::fs::read(path).unwrap(),
                before,
                "{} changed",
                path.display()
            );
        }
        for companion in ["-wal", "-shm", "-journal"] {
            let mut c = path.as_os_str().to_owned();
            c.push(companion);
            assert!(!Path::new(&c).exists(), "{c:?} was created");
        }
    }
}

#[test]
fn inputs_the_queue_does_not_keep_are_collected_empty_with_a_note() {
    let server = RedisServer::start();
    let url = server.url("bigin");
    let mut input = vec![b'x'; 20 * 1024];
    input.extend_from_slice(b"\nsmall\n");
    submit(&url, &[], &input);
    finish_ok(spawn_worker(&url));
    let out = ok(&["results", "--queue", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 job has no input"), "{err}");
    assert!(err.contains("up to 16 KiB"), "{err}");
    let rows = tsv_rows(&text(&out));
    assert_eq!((&*rows[&1][1], &*rows[&1][10]), ("done", ""));
    assert_eq!((&*rows[&2][1], &*rows[&2][10]), ("done", "small"));
}

#[test]
fn a_snapshot_of_a_busy_queue_records_its_queued_and_running_jobs_then_their_ends() {
    let server = RedisServer::start();
    let url = server.url("busy");
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let release = dir.path().join("release");
    let path = dir.path().join("c.sqlite");
    let p = path.to_str().unwrap();
    // Job `a` holds its (only) worker slot until the test releases it.
    let script = format!(
        "if [ \"$1\" = a ]; then touch {s}; while [ ! -e {r} ]; do sleep 0.05; done; fi",
        s = started.display(),
        r = release.display()
    );
    let worker = jobmill()
        .args([
            "worker", "--queue", &url, "-j", "1", "--", "sh", "-c", &script,
        ])
        .args(["sh", "{}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    submit(&url, &["--keep-open"], b"a\nb\nc\n");
    wait_until("job a to start", || started.exists());
    let rows = tsv_rows(&text(&ok(&["results", "--queue", &url, "--save", p])));
    let got: Vec<(u64, &str, &str, &str)> = rows
        .iter()
        .map(|(seq, f)| (*seq, &*f[1], &*f[2], &*f[10]))
        .collect();
    assert_eq!(
        got,
        [
            (1, "running", "1", "a"),
            (2, "queued", "0", "b"),
            (3, "queued", "0", "c")
        ]
    );
    let st = text(&ok(&["status", p]));
    assert!(
        st.contains("jobs:      3+ (input not complete) total, 2 queued, 1 running, 0 done"),
        "{st}"
    );
    assert!(
        st.contains("snapshot of a queue not drained (open; 2 queued, 1 running)"),
        "{st}"
    );
    std::fs::write(&release, b"").unwrap();
    submit(&url, &[], b"");
    finish_ok(worker);
    let rows = tsv_rows(&text(&ok(&["results", "--queue", &url, "--save", p])));
    let got: Vec<(u64, &str, &str, &str)> = rows
        .iter()
        .map(|(seq, f)| (*seq, &*f[1], &*f[2], &*f[10]))
        .collect();
    assert_eq!(
        got,
        [
            (1, "done", "1", "a"),
            (2, "done", "1", "b"),
            (3, "done", "1", "c")
        ]
    );
    assert_eq!(sql_count(&path, "SELECT COUNT(*) FROM job"), 3);
    let st = text(&ok(&["status", p]));
    assert!(
        st.contains("jobs:      3 total, 3 done, 0 failed, 0 dead"),
        "{st}"
    );
}
