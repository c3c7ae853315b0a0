//! Memory end to end: `--mem-limit` in job cgroups, OOM detection, the
//! whole tree's peak memory, cgroups removed after runs (also SIGTERM'd
//! ones), the RLIMIT_AS fallback, and long-lived workers killed for memory.
//!
//! Making cgroups needs root and a memory controller. CI runs as root, so
//! the tests that make cgroups run there; with `CI` set, a machine where no
//! cgroup can be made fails them loudly instead of skipping them. The
//! RLIMIT_AS test needs no privilege and always runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use jobmill::exec::cgroup::{Hierarchy, Version};

/// A Python job that allocates (and touches) its argument in MiB.
const ALLOC: &str = "import sys; b = bytearray(int(sys.argv[1]) << 20); print(len(b) >> 20)";

/// This test process's memory cgroup, when job cgroups can be made there.
/// `None` (skipped, said on stderr) elsewhere, unless `CI` is set: CI runs
/// as root, so there a failure to make cgroups fails the test.
fn cgroups() -> Option<Hierarchy> {
    let probe = || -> Result<Hierarchy, String> {
        let h = Hierarchy::detect().map_err(|e| e.to_string())?;
        h.prepare().map_err(|e| e.to_string())?;
        drop(h.create(None).map_err(|e| e.to_string())?);
        Ok(h)
    };
    match probe() {
        Ok(h) => Some(h),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set (root) but job cgroups cannot be made here: {e}")
        }
        Err(e) => {
            eprintln!("skipped: job cgroups cannot be made here ({e})");
            None
        }
    }
}

/// The job cgroups of jobmill process `pid` under `dir`.
fn job_cgroups(dir: &Path, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("jobmill-{pid}-");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// One attempt row of a journal: (seq, reason, signal, max_rss_kb).
type Row = (i64, Option<String>, Option<i64>, Option<i64>);

/// The attempt rows of a journal, in order.
fn attempts(journal: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(journal).unwrap();
    let mut st = conn
        .prepare("SELECT seq, reason, signal, max_rss_kb FROM attempt ORDER BY seq, attempt")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs `jobmill run --journal J ARGS -- python3 -c ALLOC ::: INPUTS`
/// (through `prefix`, a shell line that ends in `exec "$@"`, if given);
/// returns the process's output and the attempt rows.
fn run_alloc(
    dir: &Path,
    prefix: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
    inputs: &[&str],
) -> (std::process::Output, Vec<Row>, u32) {
    let journal = dir.join(format!("j{}.db", rand_suffix()));
    let jobmill = env!("CARGO_BIN_EXE_jobmill");
    let mut cmd = match prefix {
        Some(line) => {
            let mut c = Command::new("sh");
            c.args(["-c", line, "sh", jobmill]);
            c
        }
        None => Command::new(jobmill),
    };
    cmd.arg("run")
        .arg("--journal")
        .arg(&journal)
        .args(args)
        .args(["--", "python3", "-c", ALLOC, ":::"])
        .args(inputs)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Through `sh -c '... exec "$@"'` the pid is jobmill's too.
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let rows = attempts(&journal);
    (out, rows, pid)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[test]
fn a_job_over_its_mem_limit_ends_with_cause_memory_limit_and_its_peak_recorded() {
    let Some(h) = cgroups() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (out, rows, pid) = run_alloc(
        dir.path(),
        None,
        &[],
        &["-j", "2", "--mem-limit", "64M"],
        &["200", "16"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "16\n");
    assert!(
        stderr.contains("job 1 over its memory limit of 64 MiB"),
        "{stderr}"
    );
    let (seq, reason, signal, rss) = rows[0].clone();
    assert_eq!(seq, 1);
    assert_eq!(reason.as_deref(), Some("over its memory limit of 64 MiB"));
    assert_eq!(signal, Some(9));
    // The tree reached (about) its limit before the kill: far more than
    // the interpreter alone.
    assert!(rss.unwrap() > 32 << 10, "peak {rss:?} KiB");
    // The job that fitted succeeded, its peak at least its allocation.
    assert_eq!(rows[1].1, None);
    assert!(rows[1].3.unwrap() >= 16 << 10, "peak {:?} KiB", rows[1].3);
    // `status` names the input that died of memory, with its peak.
    let journal = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "db"))
        .unwrap()
        .path();
    let status = jobmill().arg("status").arg(&journal).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("died of memory (1 job):"), "{status}");
    let line = status
        .lines()
        .find(|l| l.contains("job 1 ") && l.contains("peak"))
        .filter(|l| l.contains("MiB") && l.contains("200"))
        .unwrap_or_else(|| panic!("no line for job 1 with its peak: {status}"));
    assert!(line.contains("over its memory limit of 64 MiB"), "{line}");
    // Every job cgroup of the run is gone (they are named by jobmill's
    // pid).
    assert_eq!(job_cgroups(h.own(), pid), Vec::<PathBuf>::new());
}

/// A cgroup of `limit_mib` under this process's own, with a child `run`
/// for jobmill (v2 cannot hold processes in a cgroup that delegates).
struct TestCgroup {
    parent: PathBuf,
    run: PathBuf,
}

impl TestCgroup {
    fn new(h: &Hierarchy, limit_mib: u64) -> TestCgroup {
        let parent = h.own().join(format!("jmtest-{}", rand_suffix()));
        std::fs::create_dir(&parent).unwrap();
        let run = parent.join("run");
        let limit = (limit_mib << 20).to_string();
        match h.version() {
            Version::V1 => {
                std::fs::write(parent.join("memory.limit_in_bytes"), &limit).unwrap();
            }
            Version::V2 => {
                std::fs::write(parent.join("memory.max"), &limit).unwrap();
                let _ = std::fs::write(parent.join("memory.swap.max"), "0");
                std::fs::write(parent.join("cgroup.subtree_control"), "+memory").unwrap();
            }
        }
        std::fs::create_dir(&run).unwrap();
        TestCgroup { parent, run }
    }

    /// A shell line that moves itself into `run`, then runs jobmill.
    fn prefix(&self) -> String {
        format!(
            "echo 0 > '{}/cgroup.procs' && exec \"$@\"",
            self.run.display()
        )
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in [&self.run, &self.parent] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn in_a_small_cgroup_oom_killed_jobs_are_recorded_as_out_of_memory() {
    let Some(h) = cgroups() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cg = TestCgroup::new(&h, 100);
    // With a memory option each job has a cgroup of its own; its own limit
    // (1 GiB) is not what kills it, the run's cgroup (100 MiB) is.
    let (out, rows, _) = run_alloc(
        dir.path(),
        Some(&cg.prefix()),
        &[],
        &["--mem-limit", "1G"],
        &["300"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = match h.version() {
        Version::V1 => "killed by the kernel's OOM killer (out of memory)",
        // v2 cannot nest job cgroups under a cgroup holding jobmill: the
        // fallback infers it from the kernel's counter.
        Version::V2 => "likely out of memory",
    };
    assert!(
        rows[0].1.as_deref().unwrap_or("").starts_with(want),
        "{rows:?} {stderr}"
    );
    assert_eq!(rows[0].2, Some(9), "recorded with its signal");
    let left: Vec<_> = std::fs::read_dir(&cg.run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("jobmill-"))
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "job cgroups left in the run's cgroup: {left:?}"
    );
    // Without any memory option: no job cgroup, and the SIGKILL during
    // which the kernel's OOM kill count rose is "likely out of memory".
    let (out, rows, _) = run_alloc(dir.path(), Some(&cg.prefix()), &[], &[], &["300"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        rows[0]
            .1
            .as_deref()
            .unwrap_or("")
            .starts_with("likely out of memory"),
        "{rows:?} {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}

#[test]
fn no_job_cgroups_remain_after_a_sigtermed_run() {
    let Some(h) = cgroups() else { return };
    let mut child = jobmill()
        .args([
            "run",
            "--no-journal",
            "-j",
            "3",
            "--mem-limit",
            "256M",
            "--",
            "sleep",
            "100",
            ":::",
            "1",
            "2",
            "3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_until("three job cgroups exist", || {
        job_cgroups(h.own(), pid).len() == 3
    });
    // Each job's process is in its cgroup, not in jobmill's.
    for cg in job_cgroups(h.own(), pid) {
        wait_until("the job has joined its cgroup", || {
            !std::fs::read_to_string(cg.join("cgroup.procs"))
                .unwrap_or_default()
                .trim()
                .is_empty()
        });
    }
    send_signal("TERM", pid);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(job_cgroups(h.own(), pid), Vec::<PathBuf>::new());
}

#[test]
fn the_rlimit_fallback_reports_a_likely_memory_limit() {
    // Forced with JOBMILL_MEMORY_NO_CGROUP, as where no cgroup can be
    // made; needs no privilege.
    let dir = tempfile::tempdir().unwrap();
    let (out, rows, _) = run_alloc(
        dir.path(),
        None,
        &[("JOBMILL_MEMORY_NO_CGROUP", "1")],
        &["-j", "2", "--mem-limit", "128M"],
        &["300", "8"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RLIMIT_AS"), "one notice says so: {stderr}");
    assert_eq!(stderr.matches("no job cgroups").count(), 1, "{stderr}");
    assert_eq!(
        rows[0].1.as_deref(),
        Some("likely over its memory limit of 128 MiB (RLIMIT_AS: an allocation failed)")
    );
    // An allocation failure is no signal.
    assert_eq!(rows[0].2, None);
    assert_eq!(rows[1].1, None, "the small job fits");
}

#[test]
fn a_persistent_worker_killed_for_memory_fails_its_job_with_the_memory_cause() {
    let Some(_h) = cgroups() else { return };
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    \
                  b = bytearray(int(job.payload) << 20)\n    job.complete(b'%d\\n' % (len(b) >> 20))\n";
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("p.db");
    let out = jobmill()
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .arg("run")
        .arg("--journal")
        .arg(&journal)
        .args([
            "-j",
            "1",
            "--persistent",
            "--window",
            "1",
            "--mem-limit",
            "96M",
            "--",
            "python3",
            "-c",
            script,
            ":::",
            "8",
            "300",
            "8",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "8\n8\n", "{stderr}");
    let rows = attempts(&journal);
    let big = rows.iter().find(|r| r.0 == 2).unwrap();
    assert_eq!(
        big.1.as_deref(),
        Some("over its memory limit of 96 MiB"),
        "{rows:?} {stderr}"
    );
}

#[test]
fn resume_keeps_the_mem_limit_of_the_run() {
    // The RLIMIT_AS path, so that this runs without privilege: what is
    // under test is that `resume` applies the stored limit.
    let dir = tempfile::tempdir().unwrap();
    let env = [("JOBMILL_MEMORY_NO_CGROUP", "1")];
    let journal = dir.path().join("r.db");
    let first = jobmill()
        .arg("run")
        .arg("--journal")
        .arg(&journal)
        .args([
            "--mem-limit",
            "96M",
            "--",
            "python3",
            "-c",
            ALLOC,
            ":::",
            "300",
        ])
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(1));
    let again = jobmill()
        .args(["resume", "--failed"])
        .arg(&journal)
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    let rows = attempts(&journal);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[1]
            .1
            .as_deref()
            .is_some_and(|r| r.starts_with("likely over its memory limit of 96 MiB")),
        "{rows:?} {stderr}"
    );
}

#[test]
fn job_cgroups_left_by_a_killed_jobmill_are_removed_by_the_next_run() {
    let Some(h) = cgroups() else { return };
    let mut child = jobmill()
        .args([
            "run",
            "--no-journal",
            "-j",
            "2",
            "--mem-limit",
            "256M",
            "--",
            "sleep",
            "100",
            ":::",
            "1",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_until("two job cgroups exist", || {
        job_cgroups(h.own(), pid).len() == 2
    });
    send_signal("KILL", pid);
    child.wait().unwrap();
    // The guardian kills the jobs; the cgroups of a jobmill killed with
    // `kill -9` stay until the next run with a memory option.
    let next = jobmill()
        .args([
            "run",
            "--no-journal",
            "--mem-limit",
            "64M",
            "--",
            "true",
            ":::",
            "1",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(next.status.code(), Some(0));
    // Removed before that run started its job.
    assert_eq!(job_cgroups(h.own(), pid), Vec::<PathBuf>::new());
}

#[test]
fn a_worker_under_rlimit_as_reporting_an_allocation_failure_is_likely_over_its_limit() {
    // No privilege needed: the RLIMIT_AS path, forced. The worker catches
    // the MemoryError and reports the job failed with its traceback.
    let script =
        "import jobmill_worker\ndef f(job):\n    b = bytearray(int(job.payload) << 20)\n    \
                  return b'%d\\n' % (len(b) >> 20)\njobmill_worker.serve(f)\n";
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("w.db");
    let out = jobmill()
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .env("JOBMILL_MEMORY_NO_CGROUP", "1")
        .arg("run")
        .arg("--journal")
        .arg(&journal)
        .args([
            "-j",
            "1",
            "--persistent",
            "--window",
            "1",
            "--mem-limit",
            "128M",
            "--",
            "python3",
            "-c",
            script,
            ":::",
            "8",
            "300",
            "8",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "8\n8\n", "{stderr}");
    let rows = attempts(&journal);
    let big = rows.iter().find(|r| r.0 == 2).unwrap();
    assert_eq!(
        big.1.as_deref(),
        Some("likely over its memory limit of 128 MiB (RLIMIT_AS: an allocation failed)"),
        "{rows:?} {stderr}"
    );
}

/// A job that allocates 90 MiB, says so with a file `started-SEQ-ATTEMPT`
/// in DIR, then holds its memory until three such files exist (every job
/// of the test held its memory at once) or 15 s passed.
const HOLD: &str = "import os, sys, time
b = bytearray(90 << 20)
d = sys.argv[1]
open(os.path.join(d, 'started-%s-%s' % (os.environ['JOBMILL_SEQ'], os.environ['JOBMILL_ATTEMPT'])), 'w').close()
end = time.monotonic() + 15
while sum(f.startswith('started-') for f in os.listdir(d)) < 3 and time.monotonic() < end:
    time.sleep(0.02)
";

#[test]
fn an_oom_killed_job_runs_again_with_fewer_beside_it_and_succeeds() {
    // Three jobs of 90 MiB at once do not fit the run's 240 MiB cgroup: the
    // kernel kills one. Its attempt is recorded as out of memory, it goes
    // back to the queue without counting against --retries 0, the run
    // lowers its jobs at once, and the job then runs (with at most one
    // beside it) and succeeds.
    let Some(h) = cgroups() else { return };
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let cg = TestCgroup::new(&h, 240);
    let journal = dir.path().join("oom.sqlite");
    let out = Command::new("sh")
        .args(["-c", &cg.prefix(), "sh", env!("CARGO_BIN_EXE_jobmill")])
        .args([
            "run",
            "-j3",
            "--retries",
            "0",
            "--mem-limit",
            "1G",
            "--journal",
        ])
        .arg(&journal)
        .args(["--", "python3", "-c", HOLD])
        .arg(&marks)
        .args([":::", "a", "b", "c"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let conn = rusqlite::Connection::open(&journal).unwrap();
    let causes: Vec<(i64, i64, Option<String>)> = conn
        .prepare("SELECT seq, attempt, cause FROM attempt ORDER BY seq, attempt")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let oom: Vec<i64> = causes
        .iter()
        .filter(|(_, _, c)| c.as_deref() == Some("oom"))
        .map(|(seq, _, _)| *seq)
        .collect();
    assert!(
        !oom.is_empty(),
        "no attempt was killed out of memory: {causes:?} {stderr}"
    );
    for seq in &oom {
        let last = causes.iter().rfind(|(s, _, _)| s == seq).unwrap();
        assert_eq!(
            last.2.as_deref(),
            Some("succeeded"),
            "job {seq} ran again and succeeded: {causes:?}"
        );
    }
    let states: Vec<String> = conn
        .prepare("SELECT state FROM job ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(states, ["done", "done", "done"], "{causes:?}");
    assert!(
        stderr.contains("was killed out of memory: at most"),
        "the run said it lowered its jobs: {stderr}"
    );
}
