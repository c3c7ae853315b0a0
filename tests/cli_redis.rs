//! `jobmill submit | worker | status | results | run --queue` against a real
//! `redis-server`: many workers, a worker killed with SIGKILL mid-job,
//! workers ending on close and drain.

mod common;
mod redis_support;

use std::collections::HashMap;
use std::process::{Child, Stdio};

use common::{finish, jobmill, submit, wait_until};
use jobmill::queue::redis::{RedisConfig, RedisQueue};
use redis_support::RedisServer;

fn spawn_worker(url: &str, jobs: usize, command: &[&str]) -> Child {
    jobmill()
        .args(["worker", "--queue", url, "-j", &jobs.to_string(), "--"])
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jobmill worker")
}

/// `results` rows by sequence number: (state, attempts).
fn results(url: &str) -> HashMap<u64, (String, u32)> {
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
        let prev = rows.insert(seq, (f[1].to_string(), f[2].parse().unwrap()));
        assert!(prev.is_none(), "job {seq} has two results");
    }
    rows
}

fn status(url: &str) -> String {
    let out = jobmill().args(["status", "--queue", url]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn two_workers_and_a_submitter_run_1000_jobs_exactly_once() {
    let server = RedisServer::start();
    let url = server.url("thousand");
    let workers: Vec<Child> = (0..2)
        .map(|_| spawn_worker(&url, 2, &["echo", "out-{}"]))
        .collect();
    let input: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    submit(&url, &[], &input);
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for w in workers {
        let (code, stdout, stderr) = finish(w);
        assert_eq!(code, 0, "worker failed: {stderr}");
        for line in stdout.lines() {
            let n: u64 = line.strip_prefix("out-").unwrap().parse().unwrap();
            *seen.entry(n).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 1000);
    assert!(seen.values().all(|&c| c == 1), "a job ran twice");
    let r = results(&url);
    assert_eq!(r.len(), 1000);
    assert!(r.values().all(|(s, a)| s == "done" && *a == 1));
    let st = status(&url);
    assert!(st.contains("state:    drained"), "{st}");
    assert!(st.contains("1000 done"), "{st}");
}

#[test]
fn a_worker_killed_with_sigkill_under_no_retries_loses_its_leases_and_its_jobs_run_again_elsewhere()
{
    let server = RedisServer::start();
    let url = server.url("killed");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let input: String = (1..=10).map(|i| format!("{i}\n")).collect();
    // The default --retries 0: a lost job must run again all the same.
    submit(&url, &["--visibility", "1s"], &input);
    // The first attempts of jobs 1 and 2 hang; every other attempt is quick.
    let script = format!(
        "echo $1 >> {m}; if [ $1 -le 2 ] && [ $JOBMILL_ATTEMPT = 1 ]; then sleep 60; fi; echo out-$1",
        m = marker.display()
    );
    let command = ["sh", "-c", &script, "sh", "{}"];
    let doomed = spawn_worker(&url, 2, &command);
    wait_until("the first worker to start jobs 1 and 2", || {
        std::fs::read_to_string(&marker)
            .is_ok_and(|s| s.lines().any(|l| l == "1") && s.lines().any(|l| l == "2"))
    });
    let pid = doomed.id();
    common::send_signal("KILL", pid);
    let (_, doomed_out, _) = finish(doomed);
    assert!(
        !doomed_out.contains("out-1\n") && !doomed_out.contains("out-2\n"),
        "jobs 1 and 2 should not have finished"
    );
    let survivor = spawn_worker(&url, 2, &command);
    let (code, out, err) = finish(survivor);
    assert_eq!(code, 0, "{err}");
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in doomed_out.lines().chain(out.lines()) {
        *seen.entry(line.to_string()).or_default() += 1;
    }
    for i in 1..=10 {
        assert_eq!(seen.get(&format!("out-{i}")), Some(&1), "job {i}: {seen:?}");
    }
    let r = results(&url);
    assert_eq!(r.len(), 10);
    for i in 1..=2 {
        assert_eq!(
            r[&i],
            ("done".to_string(), 2),
            "job {i}: done at its second attempt, the lost one recorded"
        );
    }
    assert!((3..=10).all(|i| r[&i] == ("done".to_string(), 1)));
    // The records say which attempts were lost.
    let q = RedisQueue::connect(
        &url,
        RedisConfig {
            create: false,
            ..RedisConfig::default()
        },
    )
    .unwrap();
    let recs = q.results().unwrap();
    let lost: Vec<(u64, u32)> = recs.iter().map(|r| (r.seq, r.lost)).collect();
    assert!(lost.contains(&(1, 1)) && lost.contains(&(2, 1)), "{lost:?}");
    assert!(recs.iter().filter(|r| r.seq > 2).all(|r| r.lost == 0));
    assert!(q.dead_letters().unwrap().is_empty());
}

#[test]
fn a_worker_waits_on_an_open_queue_and_exits_once_it_is_closed_and_drained() {
    let server = RedisServer::start();
    let url = server.url("opening");
    // The worker starts before the queue has any job.
    let mut worker = spawn_worker(&url, 2, &["echo", "out-{}"]);
    submit(&url, &["--keep-open"], "a\nb\nc\n");
    wait_until("the three jobs to be done", || {
        status(&url).contains("3 done")
    });
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker left an open queue"
    );
    assert!(status(&url).contains("state:    open"));
    // An empty submit closes it; the worker drains and exits 0.
    submit(&url, &[], "");
    let (code, out, err) = finish(worker);
    assert_eq!(code, 0, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["out-a", "out-b", "out-c"]);
}

#[test]
fn run_with_a_queue_runs_locally_and_exits_with_the_failure_count() {
    let server = RedisServer::start();
    let url = server.url("runq");
    let state = tempfile::tempdir().unwrap();
    let out = jobmill()
        .env("XDG_STATE_HOME", state.path())
        .args(["run", "--queue", &url, "-j", "2", "--retries", "1", "--"])
        .args(["sh", "-c", "echo out-$1; [ $1 != bad ]", "sh", "{}"])
        .args([":::", "ok1", "bad", "ok2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for w in ["out-ok1", "out-ok2", "out-bad"] {
        assert!(stdout.contains(w), "{stdout}");
    }
    let r = results(&url);
    assert_eq!(r[&2], ("failed".to_string(), 2));
    assert_eq!(r[&1].0, "done");
}

#[test]
fn an_unreachable_queue_is_a_clear_error_and_status_255() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = jobmill()
        .args([
            "worker",
            "--queue",
            &format!("redis://127.0.0.1:{port}/q"),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unreachable") && err.contains(&port.to_string()),
        "{err}"
    );
}

#[test]
fn a_job_running_longer_than_the_visibility_timeout_keeps_its_lease() {
    let server = RedisServer::start();
    let url = server.url("long");
    submit(&url, &["--visibility", "1s"], "slow\n");
    // The second worker would take the lease over if heartbeats stopped.
    let a = spawn_worker(&url, 1, &["sh", "-c", "sleep 3; echo out-$1", "sh", "{}"]);
    let b = spawn_worker(&url, 1, &["sh", "-c", "sleep 3; echo out-$1", "sh", "{}"]);
    let (ca, oa, ea) = finish(a);
    let (cb, ob, eb) = finish(b);
    assert_eq!((ca, cb), (0, 0), "{ea}\n{eb}");
    assert_eq!(format!("{oa}{ob}"), "out-slow\n", "ran once, by one worker");
    assert_eq!(results(&url)[&1], ("done".to_string(), 1));
}

#[test]
fn workers_ride_out_a_redis_restart_and_every_job_ends_done_once() {
    let mut server = RedisServer::start();
    let url = server.url("restart");
    let input: String = (1..=400).map(|i| format!("{i}\n")).collect();
    submit(&url, &[], &input);
    let mut workers: Vec<Child> = (0..2)
        .map(|_| {
            spawn_worker(
                &url,
                2,
                &["sh", "-c", "sleep 0.02; echo out-$1", "sh", "{}"],
            )
        })
        .collect();
    wait_until("some jobs to be done", || {
        let out = jobmill()
            .args(["status", "--queue", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split(", ")
            .find_map(|p| p.strip_suffix(" done"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 20)
    });
    server.stop();
    for w in &mut workers {
        if let Some(st) = w.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            w.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the run ended before the restart: {st:?} {err}");
        }
    }
    server.start_again();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for w in workers {
        let (code, out, err) = finish(w);
        assert_eq!(code, 0, "{err}");
        for l in out.lines() {
            *seen.entry(l.to_string()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 400);
    assert!(seen.values().all(|&n| n == 1));
    let r = results(&url);
    assert_eq!(r.len(), 400);
    assert!(r.values().all(|(s, _)| s == "done"));
}

#[test]
fn status_of_a_queue_that_does_not_exist_is_an_error_and_creates_nothing() {
    let server = RedisServer::start();
    let url = server.url("typo");
    let out = jobmill()
        .args(["status", "--queue", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no queue named \"typo\""), "{err}");
    let keys: Vec<String> = server.cmd(&["KEYS", "*"]);
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn sigterm_stops_a_worker_and_gives_its_running_job_back_unrun() {
    let server = RedisServer::start();
    let url = server.url("term");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    submit(&url, &[], "x\n");
    let script = format!(
        "echo $JOBMILL_ATTEMPT >> {}; if [ $JOBMILL_ATTEMPT = 1 ] && [ ! -e {}.2 ]; then touch {}.2; sleep 60; fi; echo out-$1",
        marker.display(),
        marker.display(),
        marker.display()
    );
    let command = ["sh", "-c", &script, "sh", "{}"];
    let first = spawn_worker(&url, 1, &command);
    wait_until("the job to start", || marker.exists());
    common::send_signal("TERM", first.id());
    let (code, out, _) = finish(first);
    assert_eq!(code, 130);
    assert!(out.is_empty(), "{out}");
    assert!(status(&url).contains("1 queued"), "{}", status(&url));
    // The next worker runs it as attempt 1 again: the stopped attempt was
    // given back, not counted.
    let second = spawn_worker(&url, 1, &command);
    let (code, out, err) = finish(second);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "out-x\n");
    assert_eq!(results(&url)[&1], ("done".to_string(), 1));
}

#[test]
fn a_worker_retries_by_its_retry_on_and_waits_its_retry_delay_on_the_queue() {
    let server = RedisServer::start();
    let url = server.url("retrypolicy");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // Exit 3 until the third attempt; exit 1 at once.
    submit(&url, &["--retries", "2"], "3\n1\n");
    let script = format!(
        "date +%s.%N >> {d}/starts.$1; [ $1 = 3 ] && [ $(wc -l < {d}/starts.$1) -ge 3 ] && exit 0; exit $1"
    );
    let worker = jobmill()
        .args([
            "worker",
            "--queue",
            &url,
            "-j",
            "2",
            "--retry-on",
            "exit=3",
            "--retry-delay",
            "0.3s",
            "--",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, _, err) = finish(worker);
    assert_eq!(code, 0, "{err}");
    let r = results(&url);
    assert_eq!(r[&1], ("done".to_string(), 3), "exit 3 is retried");
    assert_eq!(r[&2], ("failed".to_string(), 1), "exit 1 is not");
    let t: Vec<f64> = std::fs::read_to_string(dir.path().join("starts.3"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    // Lower bounds only: 0.3 s and 0.6 s, less the jitter of 20%.
    assert!(t[1] - t[0] >= 0.24 && t[2] - t[1] >= 0.48, "{t:?}");
}

#[test]
fn a_worker_enforces_its_mem_limit_and_the_queue_keeps_the_cause() {
    // Each host limits its own jobs: a job over the worker's --mem-limit
    // ends with the cause "memory-limit" (in a job cgroup as root, by
    // RLIMIT_AS elsewhere), a job under it is done.
    let server = RedisServer::start();
    let url = server.url("memlimit");
    submit(&url, &[], "16\n300\n");
    let worker = jobmill()
        .args([
            "worker",
            "--queue",
            &url,
            "-j",
            "2",
            "--mem-limit",
            "96M",
            "--",
        ])
        .args([
            "python3",
            "-c",
            "import sys; b = bytearray(int(sys.argv[1]) << 20); print(len(b))",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, _, err) = finish(worker);
    let out = jobmill()
        .args(["results", "--queue", &url])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    let row = |input: &str| rows.iter().find(|r| r[10] == input).cloned();
    assert_eq!(row("16").map(|r| r[1]), Some("done"), "{text} {err}");
    let big = row("300").unwrap_or_else(|| panic!("{text}"));
    assert_ne!(big[1], "done", "{text}");
    assert_eq!(big[9], "memory-limit", "{text} {err}");
    assert!(big[8].contains("memory limit of 96 MiB"), "{text}");
}
