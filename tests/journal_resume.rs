//! `jobmill run` journals and `jobmill resume` continues, end to end: real
//! processes, real signals, real SQLite files.
//!
//! The invariant, checked against the journal and a side-effect file each
//! job appends its input to: every input ends with exactly one final result;
//! no job recorded done before an interruption runs again; the only jobs
//! that run twice are those in flight at the interruption, at most `-j`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use rusqlite::{Connection, OpenFlags};

const JOBS: usize = 4;

/// jobmill with its state directory in `state`.
fn jm(state: &Path) -> Command {
    let mut c = jobmill();
    c.env("XDG_STATE_HOME", state);
    c
}

fn db(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open journal")
}

/// Lines of the side-effect file, counted per input.
fn side_counts(side: &Path) -> HashMap<Vec<u8>, usize> {
    let mut m = HashMap::new();
    for line in std::fs::read(side)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
    {
        if !line.is_empty() {
            *m.entry(line.to_vec()).or_insert(0) += 1;
        }
    }
    m
}

fn side_lines(side: &Path) -> usize {
    side_counts(side).values().sum()
}

/// Inputs recorded done in the journal.
fn done_inputs(journal: &Path) -> BTreeSet<Vec<u8>> {
    let c = db(journal);
    let mut s = c
        .prepare("SELECT input FROM job WHERE state = 'done'")
        .unwrap();
    let rows = s.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// A tiny deterministic generator, seeded per test run (printed).
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ u64::from(std::process::id());
        eprintln!("rng seed {seed}");
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// One SIGINT: drain.
    IntOnce,
    /// Two SIGINTs: kill the running jobs.
    IntTwice,
    /// SIGKILL of jobmill.
    Kill,
    /// SIGKILL while the journal is under heavy write load (big outputs).
    KillWhileWriting,
}

struct Scenario {
    dir: tempfile::TempDir,
    journal: PathBuf,
    side: PathBuf,
    inputs: PathBuf,
    n: usize,
    /// How long each job works (shell words after `sleep`).
    sleep: String,
}

impl Scenario {
    fn new(n: usize) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("run.sqlite");
        let side = dir.path().join("side");
        let inputs = dir.path().join("inputs");
        let text: String = (1..=n).map(|i| format!("input-{i}\n")).collect();
        std::fs::write(&inputs, text).unwrap();
        Scenario {
            dir,
            journal,
            side,
            inputs,
            n,
            sleep: "0.02".into(),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The job: append the input to the side file, then work briefly
    /// (and with `heavy`, write 200 KB of output).
    fn job(&self, heavy: bool) -> Vec<String> {
        let extra = if heavy {
            "; head -c 200000 /dev/zero | tr '\\0' x"
        } else {
            ""
        };
        vec![
            "sh".into(),
            "-c".into(),
            format!(
                "printf '%s\\n' \"$1\" >> {}; sleep {}{extra}",
                self.side.display(),
                self.sleep
            ),
            "sh".into(),
        ]
    }

    /// Runs the scenario interrupted by `stop` once `after` jobs started;
    /// returns the inputs recorded done at the interruption.
    fn interrupt(&self, stop: Stop, after: usize) -> BTreeSet<Vec<u8>> {
        let heavy = stop == Stop::KillWhileWriting;
        let mut cmd = jm(&self.state());
        cmd.arg("run")
            .args(["-j", &JOBS.to_string()])
            .arg("--journal")
            .arg(&self.journal)
            .arg("-a")
            .arg(&self.inputs)
            .arg("--")
            .args(self.job(heavy));
        let mut child = spawn_in_own_group(&mut cmd);
        // Drain stdout so that jobs never block on a full pipe.
        let mut out = child.stdout.take().unwrap();
        let drain = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        wait_until("enough jobs started", || {
            side_lines(&self.side) >= after || child.try_wait().unwrap().is_some()
        });
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        let status = match stop {
            Stop::IntOnce => {
                send_signal("INT", child.id());
                wait_exit(&mut child)
            }
            Stop::IntTwice => {
                send_signal("INT", child.id());
                read_stderr_until(&mut child, "Ctrl-C again");
                send_signal("INT", child.id());
                wait_exit(&mut child)
            }
            Stop::Kill | Stop::KillWhileWriting => {
                send_signal("KILL", child.id());
                wait_exit(&mut child)
            }
        };
        let _ = drain.join();
        assert!(!status.success(), "{stop:?}: {status:?}");
        done_inputs(&self.journal)
    }

    /// Runs `jobmill status` on the stopped run, which records the attempt
    /// ends left in the completions log; returns the inputs done then.
    fn read_after_crash(&self) -> BTreeSet<Vec<u8>> {
        let committed = done_inputs(&self.journal);
        let out = jm(&self.state())
            .arg("status")
            .arg(&self.journal)
            .output()
            .unwrap();
        assert!(out.status.success(), "status failed: {out:?}");
        let log = PathBuf::from(format!("{}-completions", self.journal.display()));
        assert!(
            !log.exists(),
            "the completions log was not recovered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done = done_inputs(&self.journal);
        assert!(done.is_superset(&committed));
        done
    }

    fn resume(&self) {
        let out = jm(&self.state())
            .arg("resume")
            .arg(&self.journal)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resume failed: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Checks the invariant after the run was resumed to completion;
    /// returns how many jobs ran twice.
    fn check(&self, done_before: &BTreeSet<Vec<u8>>, stop: Stop) -> usize {
        let c = db(&self.journal);
        let (rows, done, complete): (i64, i64, bool) = c
            .query_row(
                "SELECT (SELECT COUNT(*) FROM job), (SELECT COUNT(*) FROM job WHERE state = 'done'),
                        (SELECT input_complete FROM run)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(rows as usize, self.n, "{stop:?}: one row per input");
        assert_eq!(done as usize, self.n, "{stop:?}: every job done");
        assert!(complete, "{stop:?}: input recorded complete");
        let finals: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM attempt WHERE outcome IN ('done', 'failed', 'dead')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            finals as usize, self.n,
            "{stop:?}: exactly one final result per input"
        );
        for seq in 1..=self.n {
            let input: Vec<u8> = c
                .query_row("SELECT input FROM job WHERE seq = ?1", [seq as i64], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(input, format!("input-{seq}").into_bytes());
        }
        let counts = side_counts(&self.side);
        let mut doubles = 0;
        for seq in 1..=self.n {
            let input = format!("input-{seq}").into_bytes();
            let ran = counts.get(&input).copied().unwrap_or(0);
            assert!(ran >= 1, "{stop:?}: input {seq} never ran");
            if done_before.contains(&input) {
                assert_eq!(ran, 1, "{stop:?}: input {seq} was done, yet ran again");
            }
            assert!(ran <= 2, "{stop:?}: input {seq} ran {ran} times");
            if ran == 2 {
                doubles += 1;
            }
        }
        assert!(
            doubles <= JOBS,
            "{stop:?}: {doubles} jobs ran twice, more than the {JOBS} in flight"
        );
        if stop == Stop::IntOnce {
            assert_eq!(doubles, 0, "a drained run leaves nothing in flight");
        }
        doubles
    }
}

/// THE invariant: 20 runs of 200 jobs at -j4, each interrupted at a random
/// moment (one SIGINT, two SIGINTs, SIGKILL, SIGKILL under heavy journal
/// writes), then resumed to completion.
#[test]
fn interrupted_runs_resume_with_only_in_flight_jobs_run_twice() {
    let mut rng = Rng::new();
    let stops = [
        Stop::IntOnce,
        Stop::IntTwice,
        Stop::Kill,
        Stop::KillWhileWriting,
    ];
    let mut total_doubles = 0;
    for round in 0..20 {
        let stop = stops[round % stops.len()];
        let s = Scenario::new(200);
        let after = 1 + rng.below(180) as usize;
        let mut done_before = s.interrupt(stop, after);
        if rng.below(2) == 0 {
            // Let a read command record what the completions log holds
            // (else resume does): the done set is then exact.
            done_before = s.read_after_crash();
        }
        s.resume();
        total_doubles += s.check(&done_before, stop);
    }
    eprintln!("jobs run twice over 20 interruptions: {total_doubles}");
}

#[test]
fn resume_after_sigkill_skips_jobs_recorded_done() {
    let s = Scenario::new(60);
    let done_before = s.interrupt(Stop::Kill, 20);
    assert!(!done_before.is_empty());
    s.resume();
    s.check(&done_before, Stop::Kill);
    // Attempt numbers keep increasing across sessions, and the crashed
    // session's open attempts are closed as interrupted.
    let c = db(&s.journal);
    let open: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM attempt WHERE outcome IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0);
    let sessions: Vec<(String, Option<String>)> = c
        .prepare("SELECT kind, end_reason FROM session ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        sessions,
        vec![
            ("run".to_string(), Some("killed".to_string())),
            ("resume".to_string(), Some("complete".to_string()))
        ]
    );
}

/// A crash halfway through writing a commit: the WAL ends with a torn
/// transaction (a whole frame whose checksum does not match, then half a
/// frame), as a crash in the middle of a commit's writes leaves it. The
/// journal still opens at its last whole commit, the jobs it records done
/// are not run again, and every input ends done once.
#[test]
fn resume_after_a_torn_wal_keeps_what_was_committed() {
    let s = Scenario::new(80);
    s.interrupt(Stop::KillWhileWriting, 40);
    let wal = PathBuf::from(format!("{}-wal", s.journal.display()));
    let data = std::fs::read(&wal).expect("a WAL after kill -9");
    let page = u32::from_be_bytes(data[8..12].try_into().unwrap()) as usize;
    let frame = 24 + page;
    let frames = (data.len() - 32) / frame;
    assert!(frames >= 1, "WAL of {} bytes", data.len());
    let last = &data[32 + (frames - 1) * frame..32 + frames * frame];
    let mut torn = last.to_vec();
    torn[24 + page / 2] ^= 0xff;
    torn.extend_from_slice(&last[..frame / 2]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);
    let done_before = done_inputs(&s.journal);
    s.resume();
    let c = db(&s.journal);
    let done: i64 = c
        .query_row("SELECT COUNT(*) FROM job WHERE state = 'done'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(done, 80);
    let counts = side_counts(&s.side);
    for input in &done_before {
        assert_eq!(counts[input], 1, "{}", String::from_utf8_lossy(input));
    }
}

#[test]
fn resume_after_sigint_twice_reruns_the_killed_jobs_as_next_attempts() {
    let mut s = Scenario::new(40);
    // The first jobs block until `go` exists: the second SIGINT finds
    // them running.
    let go = s.dir.path().join("go");
    s.sleep = format!("0; [ -e {} ] || sleep 30", go.display());
    let done_before = s.interrupt(Stop::IntTwice, JOBS);
    std::fs::write(&go, "").unwrap();
    let c = db(&s.journal);
    let interrupted: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM attempt WHERE outcome = 'interrupted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(interrupted >= 1, "the killed jobs are recorded interrupted");
    drop(c);
    s.resume();
    s.check(&done_before, Stop::IntTwice);
    let c = db(&s.journal);
    // Every interrupted attempt is followed by a done attempt 2.
    let bad: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM attempt i WHERE i.outcome = 'interrupted' AND NOT EXISTS
               (SELECT 1 FROM attempt d WHERE d.seq = i.seq AND d.attempt = i.attempt + 1
                  AND d.outcome = 'done' AND d.session = 2)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bad, 0);
}

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn resume_failed_reruns_failed_and_dead_jobs_but_never_done_ones() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let side = dir.path().join("side");
    let flag = dir.path().join("fixed");
    // Fails ("bad") or dies by a signal ("die") until `fixed` exists.
    let job = write_script(
        dir.path(),
        "job.sh",
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> {side}\n[ -e {flag} ] && exit 0\n\
             case \"$1\" in bad) exit 3;; die) kill -9 $$;; esac\nexit 0\n",
            side = side.display(),
            flag = flag.display()
        ),
    );
    let journal = dir.path().join("j.sqlite");
    let st = jm(&state)
        .args(["run", "-j2", "--journal"])
        .arg(&journal)
        .arg("--")
        .arg(&job)
        .args([":::", "ok1", "bad", "ok2", "die"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
    // Without --failed: nothing to do, the run still has 2 failed jobs.
    let st = jm(&state).arg("resume").arg(&journal).status().unwrap();
    assert_eq!(st.code(), Some(2));
    assert_eq!(side_lines(&side), 4);
    std::fs::write(&flag, "").unwrap();
    let st = jm(&state)
        .args(["resume", "--failed"])
        .arg(&journal)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    let counts = side_counts(&side);
    assert_eq!(counts[&b"ok1".to_vec()], 1);
    assert_eq!(counts[&b"ok2".to_vec()], 1);
    assert_eq!(counts[&b"bad".to_vec()], 2);
    assert_eq!(counts[&b"die".to_vec()], 2);
    let c = db(&journal);
    let states: Vec<(String, String, i64)> = c
        .prepare("SELECT input, state, attempts FROM job ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((
                String::from_utf8(r.get::<_, Vec<u8>>(0)?).unwrap(),
                r.get(1)?,
                r.get(2)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        states,
        vec![
            ("ok1".into(), "done".into(), 1),
            ("bad".into(), "done".into(), 2),
            ("ok2".into(), "done".into(), 1),
            ("die".into(), "done".into(), 2),
        ]
    );
}

#[test]
fn non_utf8_inputs_are_stored_and_replayed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let side = dir.path().join("side");
    let inputs: Vec<Vec<u8>> = (0..30u8)
        .map(|i| vec![b'x', 0xff, 0xfe, i + 1, b' ', b'\\', 0x80 + i])
        .collect();
    let mut stdin = Vec::new();
    for i in &inputs {
        stdin.extend_from_slice(i);
        stdin.push(0);
    }
    let journal = dir.path().join("j.sqlite");
    let mut cmd = jm(&state);
    cmd.args(["run", "-0", "-j2", "--journal"])
        .arg(&journal)
        .arg("--")
        .args([
            "sh",
            "-c",
            &format!(
                "printf '%s\\0' \"$1\" >> {}; [ -e {}/go ] || sleep 30",
                side.display(),
                dir.path().display()
            ),
            "sh",
        ]);
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stdin).unwrap();
    // Two jobs block; kill jobmill while they run.
    wait_until("two jobs started", || {
        std::fs::read(&side)
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == 0)
            .count()
            >= 2
    });
    wait_until("the input is recorded complete", || {
        db(&journal)
            .query_row("SELECT input_complete FROM run", [], |r| {
                r.get::<_, bool>(0)
            })
            .unwrap_or(false)
    });
    send_signal("KILL", child.id());
    wait_exit(&mut child);
    std::fs::write(dir.path().join("go"), "").unwrap();
    let c = db(&journal);
    let stored: Vec<Vec<u8>> = c
        .prepare("SELECT input FROM job ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored, inputs, "the journal holds the exact bytes");
    drop(c);
    // The input was read to its end (stdin closed), so resume needs no stdin.
    let st = jm(&state).arg("resume").arg(&journal).status().unwrap();
    assert!(st.success());
    let ran: BTreeSet<Vec<u8>> = std::fs::read(&side)
        .unwrap()
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(ran, inputs.iter().cloned().collect::<BTreeSet<_>>());
}

#[test]
fn resume_continues_an_argument_file_past_the_recorded_jobs() {
    // The input file is longer than what the queue lets the reader take
    // ahead, so a kill leaves it unread; resume re-reads it after checking
    // the recorded prefix.
    let mut s = Scenario::new(1500);
    s.sleep = "0".into();
    let done_before = s.interrupt(Stop::Kill, 8);
    let c = db(&s.journal);
    let (recorded, complete): (i64, bool) = c
        .query_row(
            "SELECT (SELECT COUNT(*) FROM job), input_complete FROM run",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(c);
    assert!(
        !complete && (recorded as usize) < 1500,
        "recorded {recorded}"
    );
    // A changed input file is refused.
    let original = std::fs::read(&s.inputs).unwrap();
    std::fs::write(&s.inputs, b"something else\n").unwrap();
    let out = jm(&s.state())
        .arg("resume")
        .arg(&s.journal)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("differs from the one recorded"), "{err}");
    std::fs::write(&s.inputs, original).unwrap();
    s.resume();
    s.check(&done_before, Stop::Kill);
}

#[test]
fn resume_of_a_cut_stdin_runs_only_the_recorded_jobs_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let journal = dir.path().join("j.sqlite");
    let side = dir.path().join("side");
    let mut child = jm(&state)
        .args(["run", "-j1", "--journal"])
        .arg(&journal)
        .arg("--")
        .args([
            "sh",
            "-c",
            &format!("printf '%s\\n' \"$1\" >> {}; sleep 0.05", side.display()),
            "sh",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Keep stdin open: the input never ends.
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin.write_all(b"a\nb\nc\n").unwrap();
    stdin.flush().unwrap();
    wait_until("a job ran", || side_lines(&side) >= 1);
    send_signal("INT", child.id());
    wait_exit(&mut child);
    drop(stdin);
    let out = jm(&state).arg("resume").arg(&journal).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was not read to its end"), "{err}");
    let counts = side_counts(&side);
    for input in ["a", "b", "c"] {
        assert_eq!(
            counts.get(input.as_bytes()),
            Some(&1),
            "{input}: {counts:?}"
        );
    }
}

/// `--persistent` reports through the same observers: a killed persistent
/// run resumes with every input done once in the journal.
#[test]
fn persistent_run_resumes_after_sigkill() {
    const PYTHONPATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python");
    let s = Scenario::new(300);
    let script = format!(
        "import time, jobmill_worker\nfor job in jobmill_worker.jobs():\n    \
         open({side:?}, 'ab').write(job.payload + b'\\n')\n    time.sleep(0.005)\n    \
         job.complete(b'ok\\n')\n",
        side = s.side.display().to_string()
    );
    let mut cmd = jm(&s.state());
    cmd.env("PYTHONPATH", PYTHONPATH)
        .args(["run", "-j2", "--persistent", "--window", "2", "--journal"])
        .arg(&s.journal)
        .arg("-a")
        .arg(&s.inputs)
        .args(["--", "python3", "-c", &script]);
    let mut child = spawn_in_own_group(&mut cmd);
    let mut out = child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    wait_until("jobs ran", || side_lines(&s.side) >= 100);
    send_signal("KILL", child.id());
    wait_exit(&mut child);
    let _ = drain.join();
    let done_before = done_inputs(&s.journal);
    let out = jm(&s.state())
        .env("PYTHONPATH", PYTHONPATH)
        .arg("resume")
        .arg(&s.journal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let c = db(&s.journal);
    let done: i64 = c
        .query_row("SELECT COUNT(*) FROM job WHERE state = 'done'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(done, 300);
    let counts = side_counts(&s.side);
    let mut doubles = 0;
    for seq in 1..=300 {
        let input = format!("input-{seq}").into_bytes();
        let ran = counts.get(&input).copied().unwrap_or(0);
        assert!(ran >= 1);
        if done_before.contains(&input) {
            assert_eq!(ran, 1, "input {seq} was done, yet ran again");
        }
        if ran > 1 {
            doubles += 1;
        }
    }
    // In flight: -j2 workers with a window of 2 jobs each.
    assert!(doubles <= 4, "{doubles} jobs ran twice");
}

/// Resume runs the jobs in the run's working directory, and finds the
/// journal given by a path relative to where resume is invoked.
#[test]
fn resume_runs_in_the_original_directory_with_a_relative_journal_path() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let st = jm(&state)
        .current_dir(&work)
        .args(["run", "--journal", "../j.sqlite", "--"])
        .args(["sh", "-c", "pwd >> ran; exit 1", "sh", ":::", "a"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1));
    let st = jm(&state)
        .current_dir(dir.path())
        .args(["resume", "--failed", "j.sqlite"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1), "the job fails again");
    let ran = std::fs::read_to_string(work.join("ran")).unwrap();
    assert_eq!(ran.lines().count(), 2, "{ran}");
    let c = db(&dir.path().join("j.sqlite"));
    let sessions: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM session WHERE ended_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sessions, 2);
}

/// kill -9 right after a job's end reached the completions log (written
/// when its slot starts the next job; the batch commit that follows
/// within 50 ms empties the log, so the kill usually, not always, lands
/// while only the log has it): reading the journal records that end (with
/// its output) without resuming, and the log is gone; the jobs left
/// running stay unfinished for resume.
#[test]
fn results_after_sigkill_show_the_ends_the_completions_log_held() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("run.sqlite");
    let log = PathBuf::from(format!("{}-completions", journal.display()));
    let mut cmd = jm(&dir.path().join("state"));
    cmd.args(["run", "-j2", "--journal"]).arg(&journal).args([
        "--",
        "sh",
        "-c",
        "if [ \"$1\" = quick ]; then echo out-$1; else sleep 1000; fi",
        "sh",
        ":::",
        "quick",
        "slow",
        "slow2",
    ]);
    let mut child = spawn_in_own_group(&mut cmd);
    let committed = || {
        Connection::open_with_flags(&journal, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row("SELECT COUNT(*) FROM job WHERE state = 'done'", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .is_ok_and(|n| n > 0)
    };
    // The log also holds attempt starts: wait for the quick job's end,
    // which carries its output.
    wait_until("the quick job's end in the completions log", || {
        std::fs::read(&log).is_ok_and(|b| b.windows(9).any(|w| w == b"out-quick")) || committed()
    });
    send_signal("KILL", child.id());
    wait_exit(&mut child);
    assert!(log.exists());
    let out = jm(&dir.path().join("state"))
        .args(["results", "--format", "tsv"])
        .arg(&journal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!log.exists(), "results left the completions log");
    let c = db(&journal);
    let (state, attempts): (String, i64) = c
        .query_row(
            "SELECT state, attempts FROM job WHERE input = CAST('quick' AS BLOB)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), attempts), ("done", 1));
    let output: Vec<u8> = c
        .query_row(
            "SELECT o.data FROM output o JOIN job j ON j.seq = o.seq
             WHERE j.input = CAST('quick' AS BLOB) AND o.stream = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(output, b"out-quick\n");
    for input in ["slow", "slow2"] {
        let state: String = c
            .query_row(
                "SELECT state FROM job WHERE input = CAST(?1 AS BLOB)",
                [input],
                |r| r.get(0),
            )
            .unwrap();
        assert_ne!(state, "done", "{input}");
    }
}

/// Fault 7: after any crash and resume, a job that ran twice shows two
/// attempts. Repeated `kill -9` of the run, then of each resume, then a
/// resume to completion; each job appends its input to a side file when
/// it runs. For every job, the journal's attempts are at least the times
/// it really ran. An attempt can be recorded and its process killed
/// before it wrote its line (jobmill died between the two); those extra
/// attempts are `interrupted`, at most one per slot per kill, and a job
/// never interrupted has exactly one attempt.
#[test]
fn attempts_cover_every_real_run_across_repeated_kill_and_resume() {
    const KILLS: usize = 6;
    let mut rng = Rng::new();
    let s = Scenario::new(400);
    s.interrupt(Stop::Kill, 1 + rng.below(40) as usize);
    for _ in 1..KILLS {
        let before = side_lines(&s.side);
        let mut cmd = jm(&s.state());
        cmd.arg("resume").arg(&s.journal);
        let mut child = spawn_in_own_group(&mut cmd);
        let mut out = child.stdout.take().unwrap();
        let drain = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let after = before + 1 + rng.below(40) as usize;
        wait_until("enough jobs started", || {
            side_lines(&s.side) >= after || child.try_wait().unwrap().is_some()
        });
        assert!(
            child.try_wait().unwrap().is_none(),
            "the resume ended early"
        );
        send_signal("KILL", child.id());
        wait_exit(&mut child);
        let _ = drain.join();
    }
    s.resume();
    let c = db(&s.journal);
    let counts = side_counts(&s.side);
    let (mut twice, mut extra) = (0, 0);
    for seq in 1..=s.n {
        let ran = counts
            .get(&format!("input-{seq}").into_bytes())
            .copied()
            .unwrap_or(0);
        let (attempts, rows, interrupted): (i64, i64, i64) = c
            .query_row(
                "SELECT attempts, (SELECT COUNT(*) FROM attempt a WHERE a.seq = job.seq),
                        (SELECT COUNT(*) FROM attempt a WHERE a.seq = job.seq
                           AND a.outcome = 'interrupted')
                 FROM job WHERE seq = ?1",
                [seq as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            attempts, rows,
            "job {seq}: job.attempts and its attempt rows"
        );
        assert!(
            attempts as usize >= ran,
            "job {seq} ran {ran} times but the journal records {attempts} attempts"
        );
        if interrupted == 0 {
            assert_eq!((attempts, ran), (1, 1), "job {seq}, never interrupted");
        }
        if ran >= 2 {
            twice += 1;
        }
        extra += attempts as usize - ran;
    }
    assert!(
        extra <= KILLS * JOBS,
        "{extra} attempts recorded beyond the real runs, more than {JOBS} per kill"
    );
    eprintln!("{KILLS} kills: {twice} jobs ran twice or more; {extra} attempts recorded but killed before they ran");
}
