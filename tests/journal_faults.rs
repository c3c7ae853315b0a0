//! Journal faults, end to end: files that are not journals are refused and
//! left byte-for-byte unchanged, a journal in use is refused, a full disk
//! stops the run without losing what was committed, `--no-journal` writes
//! nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

fn jm(state: &Path) -> Command {
    let mut c = jobmill();
    c.env("XDG_STATE_HOME", state);
    c
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

/// A finished journal of 20 `true` jobs.
fn finished_journal(dir: &Path) -> PathBuf {
    let journal = dir.join("j.sqlite");
    let st = jm(&dir.join("state"))
        .args(["run", "-j2", "--journal"])
        .arg(&journal)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .args([":::"])
        .args((1..=20).map(|i| i.to_string()))
        .status()
        .unwrap();
    assert!(st.success());
    journal
}

/// Runs `jobmill resume PATH`; asserts it fails with `needle` in stderr and
/// leaves the file unchanged.
fn refused_unchanged(path: &Path, needle: &str) {
    let before = sha(path);
    let out = jm(&path.parent().unwrap().join("state"))
        .arg("resume")
        .arg(path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        err.contains(&path.display().to_string()),
        "names the file: {err}"
    );
    assert_eq!(sha(path), before, "the file was changed");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.sqlite");
    std::fs::write(&p, b"these are my notes, not a journal\n".repeat(100)).unwrap();
    refused_unchanged(&p, "not an SQLite database");
}

#[test]
fn a_truncated_journal_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let journal = finished_journal(dir.path());
    let data = std::fs::read(&journal).unwrap();
    assert!(data.len() > 8192, "{} bytes", data.len());
    std::fs::write(&journal, &data[..data.len() / 2]).unwrap();
    refused_unchanged(&journal, "not a readable jobmill journal");
}

#[test]
fn a_corrupt_journal_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let journal = finished_journal(dir.path());
    let mut data = std::fs::read(&journal).unwrap();
    // Scribble over every page after the first (the header stays valid).
    for b in data.iter_mut().skip(4096) {
        *b = 0x5a;
    }
    std::fs::write(&journal, &data).unwrap();
    refused_unchanged(&journal, "not a readable jobmill journal");
}

#[test]
fn another_sqlite_database_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("other.sqlite");
    let c = Connection::open(&p).unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    refused_unchanged(&p, "not a jobmill journal");
}

#[test]
fn a_journal_from_a_newer_schema_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let journal = finished_journal(dir.path());
    let c = Connection::open(&journal).unwrap();
    c.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(c);
    refused_unchanged(&journal, "schema version 99, newer than");
}

#[test]
fn journal_path_that_exists_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let journal = finished_journal(dir.path());
    let before = sha(&journal);
    let out = jm(&dir.path().join("state"))
        .args(["run", "--journal"])
        .arg(&journal)
        .args(["--", "true", ":::", "x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        err.contains("already exists") && err.contains("jobmill resume"),
        "{err}"
    );
    assert_eq!(sha(&journal), before);
}

#[test]
fn a_journal_in_use_is_refused_until_its_jobmill_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let journal = dir.path().join("j.sqlite");
    let gate = dir.path().join("gate");
    let release = dir.path().join("release");
    let mut first = spawn_in_own_group(
        jm(&state)
            .args(["run", "-j1", "--journal"])
            .arg(&journal)
            .args(["--", "sh", "-c"])
            .arg(format!(
                "touch {}; [ -e {} ] || sleep 30",
                gate.display(),
                release.display()
            ))
            .args(["sh", ":::", "a", "b"]),
    );
    wait_until("the first job runs", || gate.exists());
    let before = sha(&journal);
    let out = jm(&state).arg("resume").arg(&journal).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(&format!("in use by another jobmill (pid {})", first.id())),
        "{err}"
    );
    assert_eq!(sha(&journal), before, "the refused resume wrote nothing");
    send_signal("KILL", first.id());
    wait_exit(&mut first);
    std::fs::write(&release, "").unwrap();
    let st = jm(&state).arg("resume").arg(&journal).status().unwrap();
    assert!(st.success(), "accepted once the first jobmill is gone");
}

#[test]
fn no_journal_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let st = jm(&state)
        .args(["run", "--no-journal", "--", "true", ":::", "a", "b"])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!state.exists(), "the state directory was created");
    // Without --no-journal, the run is journaled in the state directory.
    let st = jm(&state)
        .args(["run", "--", "true", ":::", "a", "b"])
        .status()
        .unwrap();
    assert!(st.success());
    let files: Vec<_> = std::fs::read_dir(state.join("jobmill"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn the_journal_line_is_printed_on_failures_and_resume_takes_the_run_id() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = jm(&state)
        .args(["run", "--", "false", ":::", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let id = err
        .split("resume with: jobmill resume ")
        .nth(1)
        .expect("resume hint")
        .trim()
        .to_string();
    assert!(err.contains(&format!("(run {id})")), "{err}");
    let st = jm(&state).args(["resume", &id]).status().unwrap();
    assert_eq!(st.code(), Some(1), "the run still has its failed job");
}

struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk: the journal lives on a 512 KiB tmpfs and jobs write more
/// output than fits. The run stops starting jobs, says why naming the
/// file, exits non-zero; what was committed is intact; once there is room,
/// reading the journal records the ends its completions log kept, and the
/// run resumes without re-running a job recorded done.
#[test]
fn a_full_disk_stops_the_run_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?): disk-full test not run");
        return;
    }
    let _guard = Tmpfs(mnt.clone());
    let state = dir.path().join("state");
    let journal = mnt.join("j.sqlite");
    let side = dir.path().join("side");
    let job = format!(
        "printf '%s\\n' \"$1\" >> {}; head -c 30000 /dev/urandom | od -An | head -c 30000",
        side.display()
    );
    let out = jm(&state)
        .args(["run", "-j2", "--journal"])
        .arg(&journal)
        .args(["--", "sh", "-c", &job, "sh", ":::"])
        .args((1..=200).map(|i| format!("in{i}")))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains(&journal.display().to_string()), "{err}");
    // SQLite says "database or disk is full", the completions log the
    // system's "No space left on device": whichever write hit it first.
    let lower = err.to_lowercase();
    assert!(
        lower.contains("full") || lower.contains("no space left"),
        "{err}"
    );
    let ran = std::fs::read_to_string(&side).unwrap().lines().count();
    assert!(ran < 200, "the run stopped starting jobs ({ran} ran)");
    // Consistent up to the last commit.
    let c = Connection::open_with_flags(&journal, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    drop(c);
    // Make room; the first read records the ends the completions log
    // kept (the batch commit that would have carried them hit the full
    // disk).
    let st = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let out = jm(&state).arg("status").arg(&journal).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = PathBuf::from(format!("{}-completions", journal.display()));
    assert!(!log.exists(), "status recovered the completions log");
    let c = Connection::open_with_flags(&journal, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let done: Vec<Vec<u8>> = c
        .prepare("SELECT input FROM job WHERE state = 'done'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!done.is_empty());
    let with_output: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM job j WHERE state = 'done'
               AND EXISTS (SELECT 1 FROM output o WHERE o.seq = j.seq AND o.stream = 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        with_output as usize,
        done.len(),
        "done jobs keep their output"
    );
    drop(c);
    // Resume finishes the run and never re-runs a done job.
    let st = jm(&state)
        .arg("resume")
        .arg(&journal)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let text = std::fs::read_to_string(&side).unwrap();
    for input in &done {
        let input = String::from_utf8(input.clone()).unwrap();
        assert_eq!(text.lines().filter(|l| *l == input).count(), 1, "{input}");
    }
    let c = Connection::open_with_flags(&journal, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let done: i64 = c
        .query_row("SELECT COUNT(*) FROM job WHERE state = 'done'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(done, 200);
}

#[test]
fn verbose_prints_the_journal_and_run_id_at_the_start_and_nothing_on_success_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = jm(&state)
        .args(["run", "-v", "--", "true", ":::", "a"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = std::fs::read_dir(state.join("jobmill"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let id = file.file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        err.trim(),
        format!(
            "jobmill: journal {} (run {id}); resume with: jobmill resume {id}",
            file.display()
        )
    );
    let out = jm(&state)
        .args(["run", "--", "true", ":::", "a"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `jobmill` run through `sh` with umask 022 (the usual default), so that
/// the modes checked are jobmill's choice, not the test's umask.
fn jm_umask(state: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_jobmill"))
        .env("XDG_STATE_HOME", state);
    c
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Fault 9: under umask 022, the state directory is created 0700 and a
/// journal, its -wal and -shm files and its completions log are 0600, while
/// the run is live and after it; an existing directory readable by others
/// is tightened.
#[test]
fn journals_and_the_state_directory_are_private_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let gate = dir.path().join("gate");
    let release = dir.path().join("release");
    let mut child = spawn_in_own_group(
        jm_umask(&state)
            .args(["run", "-j2", "--"])
            .args(["sh", "-c"])
            .arg(format!(
                "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
                gate.display(),
                release.display()
            ))
            .args(["sh", ":::", "a", "b", "c"]),
    );
    wait_until("a job runs", || gate.exists());
    let jdir = state.join("jobmill");
    assert_eq!(mode(&jdir), 0o700, "state directory");
    let journal = std::fs::read_dir(&jdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sqlite"))
        .expect("a journal");
    wait_until("the first commit made the WAL", || {
        Path::new(&format!("{}-wal", journal.display())).exists()
    });
    for suffix in ["", "-wal", "-shm", "-completions"] {
        let p = PathBuf::from(format!("{}{suffix}", journal.display()));
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    std::fs::write(&release, "").unwrap();
    assert!(wait_exit(&mut child).success());
    assert_eq!(mode(&journal), 0o600);

    // An existing directory that others can read is tightened.
    let state2 = dir.path().join("state2");
    let jdir2 = state2.join("jobmill");
    std::fs::create_dir_all(&jdir2).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&jdir2, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = jm_umask(&state2)
        .args(["run", "--", "true", ":::", "x"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&jdir2), 0o700, "tightened");
    // --journal FILE elsewhere: the file is private too.
    let j = dir.path().join("mine.sqlite");
    let out = jm_umask(&state2)
        .args(["run", "--journal"])
        .arg(&j)
        .args(["--", "true", ":::", "x"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&j), 0o600);
}

/// Issue 12: `--journal DIR` and `--journal /dev/null` say what the path
/// is, not "already exists; use jobmill resume".
#[test]
fn a_journal_path_that_is_a_directory_or_a_device_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    for (path, needle) in [
        (dir.path().to_path_buf(), "is a directory"),
        (PathBuf::from("/dev/null"), "is a device"),
    ] {
        let out = jm(&dir.path().join("state"))
            .args(["run", "--journal"])
            .arg(&path)
            .args(["--", "true", ":::", "x"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{err}");
        assert!(err.contains(needle), "{needle:?} in {err}");
        assert!(!err.contains("jobmill resume"), "{err}");
    }
}

/// Issue 12: an OS error is printed once, not once per level of the chain.
#[test]
fn an_os_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such.sqlite");
    let out = jm(&dir.path().join("state"))
        .arg("resume")
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

/// Issue 12: two resumes started just after a `kill -9` name the live
/// holder of the journal (the other resume), never the dead run's pid.
#[test]
fn a_refused_resume_names_the_live_holder_not_the_dead_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let journal = dir.path().join("j.sqlite");
    let gate = dir.path().join("gate");
    let job = format!("touch {}; sleep 30", gate.display());
    let mut run = spawn_in_own_group(
        jm(&state)
            .args(["run", "-j1", "--journal"])
            .arg(&journal)
            .args(["--", "sh", "-c", &job, "sh", ":::", "a"]),
    );
    wait_until("the job runs", || gate.exists());
    let dead = run.id();
    send_signal("KILL", dead);
    wait_exit(&mut run);
    std::fs::remove_file(&gate).unwrap();
    let mut first = spawn_in_own_group(jm(&state).arg("resume").arg(&journal));
    wait_until("the resumed job runs", || gate.exists());
    let out = jm(&state).arg("resume").arg(&journal).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(&format!("in use by another jobmill (pid {})", first.id())),
        "{err}"
    );
    assert!(!err.contains(&format!("pid {dead}")), "{err}");
    send_signal("KILL", first.id());
    wait_exit(&mut first);
}
