//! `jobmill run` end to end, with real processes and real signals.

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use assert_cmd::Command as AssertCommand;
use common::*;

fn run_cmd() -> AssertCommand {
    AssertCommand::new(env!("CARGO_BIN_EXE_jobmill"))
}

#[test]
fn empty_input_exits_zero_with_no_output() {
    run_cmd()
        .args(["run", "--", "echo"])
        .write_stdin("")
        .assert()
        .code(0)
        .stdout("")
        .stderr("");
}

#[test]
fn injection_strings_arrive_as_one_literal_argument() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [
        "$(touch pwned1)",
        "; touch pwned2",
        "`touch pwned3`",
        "a'b\"c",
        "two  spaces",
        "| touch pwned4",
        "&& touch pwned5 &",
    ];
    let out = run_cmd()
        .current_dir(dir.path())
        .args(["run", "-k", "-j", "3", "--", "printf", "[%s]\\n"])
        .write_stdin(inputs.join("\n"))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let want: String = inputs.iter().map(|i| format!("[{i}]\n")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), want);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "an input was interpreted: {leftovers:?}"
    );
}

#[test]
fn shell_mode_quotes_substituted_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cmd()
        .current_dir(dir.path())
        .args(["run", "--shell", "--", "printf '<%s>' {} | tr a-z A-Z"])
        .write_stdin("x; touch pwned $(touch pwned2)\n")
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(out, b"<X; TOUCH PWNED $(TOUCH PWNED2)>");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn non_utf8_input_reaches_the_job_unchanged() {
    let input: &[u8] = b"caf\xe9\n\xff\xfe\x80\n";
    let out = run_cmd()
        .args(["run", "-k", "--", "printf", "%s|"])
        .write_stdin(input)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(out, b"caf\xe9|\xff\xfe\x80|");
}

#[test]
fn nul_separated_input_keeps_newlines_inside_records() {
    let out = run_cmd()
        .args(["run", "-0", "-k", "--", "printf", "<%s>"])
        .write_stdin(&b"a\nb\0c\0"[..])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(out, b"<a\nb><c>");
}

#[test]
fn keep_order_prints_ten_thousand_inputs_in_order() {
    let input: String = (1..=10_000).map(|i| format!("{i}\n")).collect();
    let out = run_cmd()
        .args(["run", "-k", "-j", "4", "--", "echo"])
        .write_stdin(input.clone())
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(String::from_utf8(out).unwrap(), input);
}

#[test]
fn inputs_after_triple_colon_and_arg_file_are_read() {
    run_cmd()
        .args(["run", "-k", "--", "echo", "x{}", ":::", "a", "b"])
        .assert()
        .code(0)
        .stdout("xa\nxb\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inputs");
    std::fs::write(&file, "1\n2\n").unwrap();
    run_cmd()
        .args(["run", "-k", "-a"])
        .arg(&file)
        .args(["--", "echo", "{#}:{}"])
        .assert()
        .code(0)
        .stdout("1:1\n2:2\n");
}

#[test]
fn unreadable_arg_file_is_one_clear_error() {
    run_cmd()
        .args(["run", "-a", "/nonexistent/list.txt", "--", "echo"])
        .assert()
        .code(255)
        .stderr(predicates::str::contains("/nonexistent/list.txt"));
}

#[test]
fn replacement_strings_and_slots() {
    let out = run_cmd()
        .args([
            "run", "-k", "-j", "2", "--", "echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}",
        ])
        .write_stdin("d/f.txt\ng.tar.gz\n")
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "d/f.txt d/f f.txt d f 1\ng.tar.gz g.tar g.tar.gz . g.tar 2\n"
    );
    // {%} is a slot number within 1..=j.
    let out = run_cmd()
        .args(["run", "-j", "3", "--", "echo", "{%}", "{}"])
        .write_stdin("a\nb\nc\nd\ne\nf\n")
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    for line in String::from_utf8(out).unwrap().lines() {
        let slot: usize = line.split(' ').next().unwrap().parse().unwrap();
        assert!((1..=3).contains(&slot), "slot {slot} out of range");
    }
}

#[test]
fn exit_status_counts_failed_jobs() {
    run_cmd()
        .args([
            "run", "--", "sh", "-c", "exit $1", "sh", ":::", "0", "1", "2", "3",
        ])
        .assert()
        .code(3);
}

#[test]
fn exit_status_is_capped_at_101() {
    let input: String = (1..=150).map(|i| format!("{i}\n")).collect();
    run_cmd()
        .args(["run", "-j", "4", "--", "false"])
        .write_stdin(input)
        .assert()
        .code(101);
}

#[test]
fn job_that_kills_itself_once_succeeds_with_one_retry() {
    let dir = tempfile::tempdir().unwrap();
    let script = "if [ -e marker.$1 ]; then echo ok $1; else touch marker.$1; kill -9 $$; fi";
    run_cmd()
        .current_dir(dir.path())
        .args([
            "run",
            "--retries",
            "1",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            ":::",
            "a",
        ])
        .assert()
        .code(0)
        .stdout("ok a\n");
}

#[test]
fn job_killed_by_a_signal_is_reported_with_its_name() {
    run_cmd()
        .args(["run", "--", "sh", "-c", "kill -9 $$", ":::", "x"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("SIGKILL"));
}

#[test]
fn missing_command_is_one_clear_error() {
    let out = run_cmd()
        .args(["run", "--", "no-such-program-jobmill", ":::", "x"])
        .assert()
        .code(255)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no-such-program-jobmill"));
}

#[test]
fn usage_error_exits_255() {
    run_cmd()
        .args(["run", "--no-such-option", "--", "echo"])
        .assert()
        .code(255);
}

#[test]
fn output_of_each_job_is_grouped() {
    // Each job writes 200 lines in separate writes, slowly enough to overlap.
    let script = "for i in $(seq 200); do echo \"$1 $i\"; done";
    let out = run_cmd()
        .args([
            "run", "-j", "4", "--", "sh", "-c", script, "sh", ":::", "A", "B", "C", "D",
        ])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let tags: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(tags.len(), 800);
    for chunk in tags.chunks(200) {
        assert!(chunk.iter().all(|t| *t == chunk[0]), "output interleaved");
    }
}

#[test]
fn halt_soon_starts_no_new_jobs_after_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo $1 >> ran; [ $1 != 2 ]";
    let input: String = (1..=50).map(|i| format!("{i}\n")).collect();
    run_cmd()
        .current_dir(dir.path())
        .args([
            "run",
            "-j",
            "1",
            "--halt",
            "soon,fail=1",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .write_stdin(input)
        .assert()
        .code(1);
    let ran = std::fs::read_to_string(dir.path().join("ran")).unwrap();
    assert_eq!(ran, "1\n2\n");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 100 & echo $! >> pids; echo $$ >> pids; sleep 100";
    let out = run_cmd()
        .current_dir(dir.path())
        .args([
            "run",
            "--timeout",
            "1",
            "--grace",
            "1",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            ":::",
            "x",
        ])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let _ = out;
    let pids = read_pids(&dir.path().join("pids"));
    assert_eq!(pids.len(), 2, "the job recorded its pids");
    wait_until("every process of the timed-out job is gone", || {
        pids.iter().all(|&p| !pid_alive(p))
    });
}

/// First Ctrl-C (to jobmill's process group, as a terminal sends it): no new
/// job starts, the running ones are shielded and finish, exit 130.
#[test]
fn first_sigint_drains_running_jobs_and_starts_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        "echo $$ >> started; while [ ! -e release ]; do sleep 0.05; done; echo $1 >> finished";
    let mut child = spawn_in_own_group(common::jobmill().current_dir(dir.path()).args([
        "run", "-j", "2", "--", "sh", "-c", script, "sh", ":::", "1", "2", "3", "4", "5",
    ]));
    let started = dir.path().join("started");
    wait_until("two jobs started", || read_pids(&started).len() == 2);
    signal_group("INT", child.id());
    // jobmill announces the drain before we let the jobs finish.
    let seen = read_stderr_until(&mut child, "Ctrl-C again");
    assert!(seen.contains("2 running"), "{seen}");
    std::fs::write(dir.path().join("release"), "").unwrap();
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(130));
    let finished = std::fs::read_to_string(dir.path().join("finished")).unwrap();
    assert_eq!(finished.lines().count(), 2, "the running jobs finished");
    assert_eq!(read_pids(&started).len(), 2, "no job started after Ctrl-C");
}

#[test]
fn second_sigint_stops_running_jobs_and_leaves_no_child() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 100 & echo $! >> pids; echo $$ >> pids; wait";
    let mut child = spawn_in_own_group(common::jobmill().current_dir(dir.path()).args([
        "run", "-j", "2", "--grace", "1", "--", "sh", "-c", script, "sh", ":::", "1", "2", "3",
    ]));
    let pids_file = dir.path().join("pids");
    wait_until("two jobs started", || read_pids(&pids_file).len() == 4);
    signal_group("INT", child.id());
    read_stderr_until(&mut child, "Ctrl-C again");
    signal_group("INT", child.id());
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(130));
    let pids = read_pids(&pids_file);
    assert_eq!(pids.len(), 4, "no new job started");
    wait_until("no child of jobmill is left", || {
        pids.iter().all(|&p| !pid_alive(p))
    });
}

#[test]
fn sigterm_stops_running_jobs_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo $$ >> pids; sleep 100";
    let mut child = spawn_in_own_group(common::jobmill().current_dir(dir.path()).args([
        "run", "-j", "2", "--", "sh", "-c", script, "sh", ":::", "1", "2",
    ]));
    let pids_file = dir.path().join("pids");
    wait_until("two jobs started", || read_pids(&pids_file).len() == 2);
    send_signal("TERM", child.id());
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(130));
    let pids = read_pids(&pids_file);
    wait_until("the jobs are gone", || pids.iter().all(|&p| !pid_alive(p)));
}

#[test]
fn kill_9_of_jobmill_leaves_no_child_running() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 100 & echo $! >> pids; echo $$ >> pids; wait";
    let mut child = spawn_in_own_group(common::jobmill().current_dir(dir.path()).args([
        "run", "-j", "2", "--grace", "1", "--", "sh", "-c", script, "sh", ":::", "1", "2", "3",
    ]));
    let pids_file = dir.path().join("pids");
    wait_until("two jobs started", || read_pids(&pids_file).len() == 4);
    send_signal("KILL", child.id());
    let status = wait_exit(&mut child);
    assert_eq!(status.signal(), Some(9));
    let pids = read_pids(&pids_file);
    wait_until(
        "every job process is gone after jobmill was SIGKILLed",
        || pids.iter().all(|&p| !pid_alive(p)),
    );
}

#[test]
fn broken_stdout_pipe_exits_quietly() {
    let mut child = common::jobmill()
        .args(["run", "-k", "-j", "2", "--", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close our end of its stdout at once, then feed it work.
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..100_000 {
            if writeln!(stdin, "{i}").is_err() {
                break;
            }
        }
    });
    let status = wait_exit(&mut child);
    feeder.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.code().is_some(), "exited, not killed by SIGPIPE");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.to_lowercase().contains("broken pipe"), "{err}");
}

/// The first job starts while the input is still open, and a producer far
/// ahead of the jobs is held back: jobmill reads only a bounded amount of a
/// 10-million-line input while its jobs are busy.
#[test]
fn input_is_read_lazily_with_bounded_memory() {
    use rustix::event::{poll, PollFd, PollFlags};
    use std::io::Write;
    use std::os::fd::AsFd;

    let dir = tempfile::tempdir().unwrap();
    let script = "echo $1 >> started; while [ ! -e release ]; do sleep 0.05; done";
    let mut child = common::jobmill()
        .current_dir(dir.path())
        .args(["run", "-j", "2", "--", "sh", "-c", script, "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\n").unwrap();
    stdin.flush().unwrap();
    let started = dir.path().join("started");
    wait_until("the first job starts before the input ends", || {
        std::fs::read_to_string(&started).is_ok_and(|s| s.starts_with("first"))
    });

    // Now offer 10 million lines without blocking; jobmill must stop reading
    // once its queue is full.
    rustix::io::ioctl_fionbio(&stdin, true).unwrap();
    let total: u64 = 10_000_000;
    let mut written: u64 = 1;
    let mut pending: Vec<u8> = Vec::new();
    let mut stalled = false;
    while written < total || !pending.is_empty() {
        if pending.is_empty() {
            for i in written..(written + 1000).min(total) {
                pending.extend_from_slice(format!("{i}\n").as_bytes());
            }
            written = (written + 1000).min(total);
        }
        match stdin.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let fd = stdin.as_fd();
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                let ready = poll(
                    &mut fds,
                    Some(&rustix::event::Timespec {
                        tv_sec: 3,
                        tv_nsec: 0,
                    }),
                )
                .unwrap();
                if ready == 0 {
                    stalled = true;
                    break;
                }
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        stalled,
        "jobmill read all {total} lines while its jobs were blocked"
    );
    assert!(
        written < 1_000_000,
        "jobmill read {written} lines ahead of its jobs"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss_kib < 200 * 1024, "jobmill holds {rss_kib} KiB");
    send_signal("KILL", child.id());
    wait_exit(&mut child);
}

/// With `-k`, hundreds of finished jobs wait behind a slow first job; their
/// output is held (and past a limit spilled to one file), then printed in
/// order and intact.
#[test]
fn keep_order_holds_many_finished_jobs_behind_a_slow_one() {
    let dir = tempfile::tempdir().unwrap();
    let script = "if [ $1 = 1 ]; then while [ ! -e release ]; do sleep 0.05; done; fi; \
                  printf '%s\\n' \"$1\" \"$1-second-line\"; echo $1 >> finished";
    let mut child = common::jobmill()
        .current_dir(dir.path())
        .args([
            "run",
            "-k",
            "-j",
            "4",
            "--output-memory",
            "4K",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let input: String = (1..=600).map(|i| format!("{i}\n")).collect();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let finished = dir.path().join("finished");
    wait_until("every job but the first finished", || {
        std::fs::read_to_string(&finished).is_ok_and(|s| s.lines().count() == 599)
    });
    std::fs::write(dir.path().join("release"), "").unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    let want: String = (1..=600)
        .map(|i| format!("{i}\n{i}-second-line\n"))
        .collect();
    assert_eq!(out, want);
}

#[test]
fn halt_now_stops_running_jobs() {
    let dir = tempfile::tempdir().unwrap();
    // Job 1 fails as soon as job 2 is running; job 2 would run forever.
    let script = "if [ $1 = 1 ]; then while [ ! -e pid2 ]; do sleep 0.05; done; exit 3; \
                  else echo $$ > pid$1; exec sleep 100; fi";
    run_cmd()
        .current_dir(dir.path())
        .args([
            "run",
            "-j",
            "2",
            "--grace",
            "1",
            "--halt",
            "now,fail=1",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            ":::",
            "1",
            "2",
            "3",
        ])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("--halt now,fail=1"));
    let pid2 = read_pids(&dir.path().join("pid2"));
    assert_eq!(pid2.len(), 1);
    wait_until("the running job was stopped", || !pid_alive(pid2[0]));
    assert!(
        !dir.path().join("pid3").exists(),
        "no job started after the halt"
    );
}

#[test]
fn progress_draws_nothing_when_stderr_is_not_a_terminal() {
    run_cmd()
        // --no-journal: with a journal, --progress also prints its path.
        .args([
            "run",
            "--progress",
            "--no-journal",
            "-k",
            "--",
            "echo",
            ":::",
            "a",
            "b",
        ])
        .assert()
        .code(0)
        .stdout("a\nb\n")
        .stderr("");
}
