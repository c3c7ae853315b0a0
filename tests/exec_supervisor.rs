//! Supervision of real processes: exit codes, signals, output capture,
//! timeouts, interrupts, stray processes and the guardian.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobmill::exec::{Attempt, AttemptSpec, End, SpillBudget, Supervisor};

/// Generous deadline for conditions that should become true quickly.
const DEADLINE: Duration = Duration::from_secs(30);

fn supervisor() -> Supervisor {
    Supervisor::new(None, SpillBudget::new(64 << 20)).expect("supervisor")
}

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn run_with(
    sup: &Supervisor,
    args: &[&str],
    timeout: Option<Duration>,
    grace: Duration,
) -> Attempt {
    let argv = argv(args);
    sup.run(&AttemptSpec {
        argv: &argv,
        env: &[],
        timeout,
        grace,
        on_output: None,
    })
}

fn run(sup: &Supervisor, args: &[&str]) -> Attempt {
    run_with(sup, args, None, Duration::from_secs(2))
}

fn text(c: &mut jobmill::exec::Capture) -> String {
    String::from_utf8(c.to_vec().unwrap()).unwrap()
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z' | 'X') | None)
        }
    }
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads the pids a script wrote to `path`, once it holds `n` lines.
fn read_pids(path: &Path, n: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    wait_until("the pid file", || {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if !content.ends_with('\n') {
            return false;
        }
        pids = content.lines().map(|l| l.trim().parse().unwrap()).collect();
        pids.len() >= n
    });
    pids
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn exit_codes_are_reported() {
    let sup = supervisor();
    assert_eq!(run(&sup, &["true"]).end, End::Exited(0));
    assert_eq!(run(&sup, &["false"]).end, End::Exited(1));
    assert_eq!(run(&sup, &["sh", "-c", "exit 42"]).end, End::Exited(42));
    assert_eq!(sup.running(), 0);
}

#[test]
fn job_killing_itself_is_reported_as_signaled() {
    let sup = supervisor();
    let a = run(&sup, &["sh", "-c", "kill -9 $$"]);
    assert_eq!(a.end, End::Signaled(9));
    assert!(!a.timed_out && !a.terminated);
}

#[test]
fn stdout_and_stderr_are_captured_separately() {
    let sup = supervisor();
    let mut a = run(&sup, &["sh", "-c", "echo out1; echo err1 >&2; echo out2"]);
    assert_eq!(a.end, End::Exited(0));
    assert_eq!(text(&mut a.stdout), "out1\nout2\n");
    assert_eq!(text(&mut a.stderr), "err1\n");
    assert!(a.max_rss_kib > 0, "peak memory comes from wait4");
}

#[test]
fn output_larger_than_pipe_buffers_on_both_streams_does_not_deadlock() {
    let sup = supervisor();
    let a = run(
        &sup,
        &[
            "sh",
            "-c",
            "head -c 10000000 /dev/zero >&2 & head -c 10000000 /dev/zero; wait",
        ],
    );
    assert_eq!(a.end, End::Exited(0));
    assert_eq!(a.stdout.len(), 10_000_000);
    assert_eq!(a.stderr.len(), 10_000_000);
}

#[test]
fn output_past_the_budget_spills_to_a_file_with_content_intact() {
    let budget = SpillBudget::new(1 << 20);
    let sup = Supervisor::new(None, budget.clone()).unwrap();
    let mut a = run(&sup, &["seq", "1", "300000"]);
    assert_eq!(a.end, End::Exited(0));
    let expected: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    assert!(expected.len() > 1 << 20);
    assert!(
        a.stdout.is_spilled(),
        "output larger than the budget spills"
    );
    assert!(budget.in_memory() <= 1 << 20);
    let mut out = Vec::new();
    a.stdout.copy_to(&mut out).unwrap();
    assert_eq!(out, expected.as_bytes());
    let (head, truncated) = a.stdout.head(8).unwrap();
    assert_eq!(head, b"1\n2\n3\n4\n");
    assert!(truncated);
    drop(a);
    assert_eq!(budget.in_memory(), 0, "dropped captures give memory back");
}

#[test]
fn non_utf8_argument_bytes_arrive_unchanged() {
    let sup = supervisor();
    let arg = OsString::from_vec(vec![0xff, 0xfe, b'a', 0x80, b' ', b'$', b'(', b')']);
    let argv = vec![OsString::from("printf"), OsString::from("%s"), arg.clone()];
    let mut a = sup.run(&AttemptSpec {
        argv: &argv,
        env: &[],
        timeout: None,
        grace: Duration::from_secs(1),
        on_output: None,
    });
    assert_eq!(a.end, End::Exited(0));
    assert_eq!(a.stdout.to_vec().unwrap(), arg.into_vec());
}

#[test]
fn extra_environment_reaches_the_job() {
    let sup = supervisor();
    let argv = argv(&["sh", "-c", "printf %s \"$JOBMILL_SEQ\""]);
    let env = [("JOBMILL_SEQ", OsString::from("42"))];
    let mut a = sup.run(&AttemptSpec {
        argv: &argv,
        env: &env,
        timeout: None,
        grace: Duration::from_secs(1),
        on_output: None,
    });
    assert_eq!(text(&mut a.stdout), "42");
}

#[test]
fn job_stdin_is_empty() {
    let sup = supervisor();
    let a = run(&sup, &["cat"]);
    assert_eq!(a.end, End::Exited(0));
    assert!(a.stdout.is_empty());
}

#[test]
fn missing_program_is_a_spawn_failure_naming_it() {
    let sup = supervisor();
    let a = run(&sup, &["jobmill-no-such-program-xyz", "arg"]);
    match a.end {
        End::SpawnFailed(msg) => {
            assert!(msg.contains("jobmill-no-such-program-xyz"), "{msg}");
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
    assert_eq!(sup.running(), 0);
}

#[test]
fn empty_command_is_a_spawn_failure() {
    let sup = supervisor();
    let a = sup.run(&AttemptSpec {
        argv: &[],
        env: &[],
        timeout: None,
        grace: Duration::from_secs(1),
        on_output: None,
    });
    assert!(matches!(a.end, End::SpawnFailed(_)), "{:?}", a.end);
}

#[test]
fn timeout_stops_the_whole_group_leaving_no_sleep() {
    let dir = tmp();
    let pids = dir.path().join("pids");
    let sup = supervisor();
    let a = run_with(
        &sup,
        &[
            "sh",
            "-c",
            "sleep 100 & echo $! > \"$1\"; sleep 100 & echo $! >> \"$1\"; wait",
            "sh",
            pids.to_str().unwrap(),
        ],
        Some(Duration::from_secs(1)),
        Duration::from_secs(5),
    );
    assert!(a.timed_out);
    assert!(!a.terminated);
    assert_eq!(a.end, End::Signaled(libc::SIGTERM));
    for pid in read_pids(&pids, 2) {
        wait_until(&format!("sleep {pid} to die"), || !alive(pid));
    }
}

#[test]
fn timeout_escalates_to_kill_after_grace_when_term_is_ignored() {
    let dir = tmp();
    let ready = dir.path().join("ready");
    let sup = supervisor();
    let a = run_with(
        &sup,
        &[
            "sh",
            "-c",
            "trap '' TERM; touch \"$1\"; while :; do sleep 1; done",
            "sh",
            ready.to_str().unwrap(),
        ],
        // Generous, so that the trap is set before the timeout.
        Some(Duration::from_secs(2)),
        Duration::from_millis(300),
    );
    assert!(ready.exists(), "the job ignored TERM before its timeout");
    assert!(a.timed_out);
    assert_eq!(a.end, End::Signaled(libc::SIGKILL));
}

#[test]
fn fast_job_is_not_timed_out() {
    let sup = supervisor();
    let a = run_with(
        &sup,
        &["true"],
        Some(Duration::from_secs(60)),
        Duration::from_secs(1),
    );
    assert_eq!(a.end, End::Exited(0));
    assert!(!a.timed_out);
}

#[test]
fn stray_background_child_of_an_exited_job_is_killed() {
    let dir = tmp();
    let pids = dir.path().join("pids");
    let sup = supervisor();
    let mut a = run(
        &sup,
        &[
            "sh",
            "-c",
            "sleep 100 & echo $! > \"$1\"; echo done",
            "sh",
            pids.to_str().unwrap(),
        ],
    );
    assert_eq!(a.end, End::Exited(0));
    assert_eq!(text(&mut a.stdout), "done\n");
    let pid = read_pids(&pids, 1)[0];
    wait_until("the stray sleep to die", || !alive(pid));
}

#[test]
fn a_job_that_closes_its_output_before_exiting_is_waited_for_to_its_own_exit() {
    // Its pipes reach end of file while it still runs: its exit is then
    // awaited (not guessed from the pipes), with its own status.
    let sup = supervisor();
    let a = run(&sup, &["sh", "-c", "exec >&- 2>&-; sleep 0.3; exit 3"]);
    assert_eq!(a.end, End::Exited(3));
    assert!(!a.timed_out && !a.terminated);
}

#[test]
fn a_job_that_closed_its_output_is_still_timed_out_and_terminated() {
    let sup = Arc::new(supervisor());
    let a = run_with(
        &sup,
        &["sh", "-c", "exec >&- 2>&- </dev/null; exec sleep 100"],
        Some(Duration::from_millis(200)),
        Duration::from_secs(2),
    );
    assert_eq!(a.end, End::Signaled(libc::SIGTERM));
    assert!(a.timed_out);

    let dir = tmp();
    let ready = dir.path().join("ready");
    let job = {
        let sup = Arc::clone(&sup);
        let ready = ready.to_str().unwrap().to_owned();
        std::thread::spawn(move || {
            run(
                &sup,
                &[
                    "sh",
                    "-c",
                    "exec >&- 2>&-; touch \"$1\"; exec sleep 100",
                    "sh",
                    &ready,
                ],
            )
        })
    };
    wait_until("the job to close its output", || ready.exists());
    sup.terminate_all();
    let a = job.join().unwrap();
    assert_eq!(a.end, End::Signaled(libc::SIGTERM));
    assert!(a.terminated && !a.timed_out);
}

#[test]
fn terminate_all_stops_running_jobs() {
    let dir = tmp();
    let ready = dir.path().join("ready");
    let ready_arg = ready.to_str().unwrap().to_owned();
    let sup = Arc::new(supervisor());
    let threads: Vec<_> = [
        vec!["sleep".to_owned(), "100".to_owned()],
        // Ignores TERM: gets KILL after the grace period.
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "trap '' TERM; touch \"$1\"; while :; do sleep 1; done".to_owned(),
            "sh".to_owned(),
            ready_arg,
        ],
    ]
    .into_iter()
    .map(|args| {
        let sup = Arc::clone(&sup);
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_with(&sup, &args, None, Duration::from_millis(200))
        })
    })
    .collect();
    wait_until("both jobs to run", || sup.running() == 2 && ready.exists());
    sup.terminate_all();
    let ends: Vec<Attempt> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(ends[0].end, End::Signaled(libc::SIGTERM));
    assert_eq!(ends[1].end, End::Signaled(libc::SIGKILL));
    for a in &ends {
        assert!(a.terminated && !a.timed_out);
    }
    assert_eq!(sup.running(), 0);
}

#[test]
fn attempt_started_after_terminate_all_is_terminated_at_once() {
    let sup = supervisor();
    sup.terminate_all();
    assert!(sup.is_stopping());
    let a = run(&sup, &["sleep", "100"]);
    assert!(a.terminated);
    assert_eq!(a.end, End::Signaled(libc::SIGTERM));
}

fn jobmill_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobmill"))
}

/// Starts `jobmill __guardian <grace_ms> [<token>]` with a pipe as stdin,
/// waiting for it to say it is ready.
fn start_guardian(grace_ms: u64, token: Option<&str>) -> std::process::Child {
    use std::io::Read;
    let mut g = Command::new(jobmill_bin())
        .args(["__guardian", &grace_ms.to_string()])
        .args(token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    g.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    g
}

#[test]
fn guardian_stops_registered_groups_when_its_input_ends() {
    let mut term = Command::new("sleep")
        .arg("100")
        .process_group(0)
        .spawn()
        .unwrap();
    let dir = tmp();
    let ready = dir.path().join("ready");
    let mut stubborn = Command::new("sh")
        .args([
            "-c",
            "trap '' TERM; touch \"$1\"; while :; do sleep 1; done",
            "sh",
        ])
        .arg(&ready)
        .process_group(0)
        .spawn()
        .unwrap();
    wait_until("the stubborn job to ignore TERM", || ready.exists());
    let mut g = start_guardian(200, None);
    let mut stdin = g.stdin.take().unwrap();
    write!(stdin, "+{}\n+{}\n", term.id(), stubborn.id()).unwrap();
    drop(stdin);
    assert!(g.wait().unwrap().success());
    assert_eq!(term.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(stubborn.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn guardian_leaves_unregistered_groups_alone() {
    let mut job = Command::new("sleep")
        .arg("100")
        .process_group(0)
        .spawn()
        .unwrap();
    let mut g = start_guardian(100, None);
    let mut stdin = g.stdin.take().unwrap();
    write!(stdin, "+{0}\n-{0}\n", job.id()).unwrap();
    drop(stdin);
    assert!(g.wait().unwrap().success());
    assert!(
        job.try_wait().unwrap().is_none(),
        "an unregistered job runs on"
    );
    job.kill().unwrap();
    job.wait().unwrap();
}

/// Starts `sleep 100` in its own process group with `JOBMILL_GUARD=token`,
/// as a job spawned but not yet registered.
fn unregistered_job(token: &str) -> std::process::Child {
    Command::new("sleep")
        .arg("100")
        .env("JOBMILL_GUARD", token)
        .process_group(0)
        .spawn()
        .unwrap()
}

/// jobmill killed between a spawn and its registration: the guardian's
/// input ends without the clean-close line, and it stops the groups whose
/// leader carries its token, and only those.
#[test]
fn guardian_stops_unregistered_jobs_with_its_token_when_jobmill_dies() {
    let token = format!("test-{}", std::process::id());
    let mut ours = unregistered_job(&token);
    let mut other = unregistered_job("someone-else");
    let mut g = start_guardian(200, Some(&token));
    drop(g.stdin.take());
    assert!(g.wait().unwrap().success());
    assert_eq!(ours.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert!(
        other.try_wait().unwrap().is_none(),
        "another token's job runs on"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}

/// A clean close (jobmill ended normally: every job has ended) skips the
/// sweep.
#[test]
fn guardian_sweeps_nothing_after_a_clean_close() {
    let token = format!("clean-{}", std::process::id());
    let mut job = unregistered_job(&token);
    let mut g = start_guardian(100, Some(&token));
    let mut stdin = g.stdin.take().unwrap();
    stdin.write_all(b".\n").unwrap();
    drop(stdin);
    assert!(g.wait().unwrap().success());
    assert!(
        job.try_wait().unwrap().is_none(),
        "no sweep after a clean close"
    );
    job.kill().unwrap();
    job.wait().unwrap();
}

/// Jobs run by a supervisor with a guardian carry the guardian's token.
#[test]
fn jobs_carry_the_guardian_token() {
    let sup = Supervisor::new(Some(&jobmill_bin()), SpillBudget::new(1 << 20)).unwrap();
    let mut a = run(&sup, &["sh", "-c", "printf %s \"$JOBMILL_GUARD\""]);
    let token = text(&mut a.stdout);
    assert!(
        token.starts_with(&format!("{}-", std::process::id())),
        "{token:?}"
    );
}

#[test]
fn supervisor_with_guardian_runs_jobs() {
    let sup = Supervisor::new(Some(&jobmill_bin()), SpillBudget::new(1 << 20)).unwrap();
    let mut a = run(&sup, &["echo", "hi"]);
    assert_eq!(text(&mut a.stdout), "hi\n");
    assert_eq!(sup.guardian_lost(), None);
}

#[test]
fn supervisor_refuses_a_guardian_that_is_not_jobmill() {
    let err = Supervisor::new(Some(Path::new("/bin/true")), SpillBudget::new(1)).unwrap_err();
    assert!(err.to_string().contains("/bin/true"), "{err}");
    let err =
        Supervisor::new(Some(Path::new("/no/such/jobmill")), SpillBudget::new(1)).unwrap_err();
    assert!(err.to_string().contains("/no/such/jobmill"), "{err}");
}

/// Env var that makes [`helper_supervising_a_sleep`] act as the process to kill.
const HELPER_ENV: &str = "JOBMILL_TEST_GUARDIAN_HELPER";

/// Not a test on its own: run by [`sigkill_of_the_supervising_process_stops_its_jobs`]
/// in a child process, it runs a job under a guarded supervisor and blocks.
#[test]
fn helper_supervising_a_sleep() {
    let Some(pid_file) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let sup = Supervisor::with_guardian_grace(
        Some(&jobmill_bin()),
        Duration::from_millis(200),
        SpillBudget::new(1 << 20),
    )
    .unwrap();
    let argv = vec![
        OsString::from("sh"),
        OsString::from("-c"),
        OsString::from(detaching(
            ">/dev/null 2>&1",
            "sleep 100 & echo $! >> \"$1\"; echo $$ >> \"$1\"; wait",
        )),
        OsString::from("sh"),
        pid_file,
    ];
    std::thread::scope(|scope| {
        scope.spawn(|| {
            sup.run(&AttemptSpec {
                argv: &argv,
                env: &[],
                timeout: None,
                grace: Duration::from_secs(1),
                on_output: None,
            })
        });
        // `running()` counts an attempt once the guardian knows its group.
        wait_until("the job to be registered", || sup.running() == 1);
        let marker =
            PathBuf::from(std::env::var_os(HELPER_ENV).unwrap()).with_extension("registered");
        std::fs::write(marker, b"").unwrap();
    });
}

#[test]
fn sigkill_of_the_supervising_process_stops_its_jobs() {
    let dir = tmp();
    let pids = dir.path().join("pids");
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_supervising_a_sleep", "--nocapture"])
        .env(HELPER_ENV, &pids)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The daemon detached with setsid, the background sleep, the shell.
    let job_pids = read_pids(&pids, 3);
    let marker = pids.with_extension("registered");
    wait_until("the helper to say its job is registered", || {
        marker.exists()
    });
    helper.kill().unwrap(); // SIGKILL
    helper.wait().unwrap();
    for pid in job_pids {
        wait_until(&format!("job process {pid} to die"), || !alive(pid));
    }
}

/// Env var that makes [`helper_losing_its_guardian`] act as the process to
/// kill; its value is a directory for the files the two processes share.
const RESTART_HELPER_ENV: &str = "JOBMILL_TEST_GUARDIAN_RESTART_HELPER";

/// Not a test on its own: run by
/// [`a_killed_guardian_is_replaced_and_still_stops_every_job`]. Runs job A,
/// reports its guardian, waits until it has been replaced (the test kills
/// it), reports the new one, runs job B, and blocks.
#[test]
fn helper_losing_its_guardian() {
    let Some(dir) = std::env::var_os(RESTART_HELPER_ENV).map(PathBuf::from) else {
        return;
    };
    let sup = Supervisor::with_guardian_grace(
        Some(&jobmill_bin()),
        Duration::from_millis(200),
        SpillBudget::new(1 << 20),
    )
    .unwrap();
    let job = |pids: PathBuf| {
        vec![
            OsString::from("sh"),
            OsString::from("-c"),
            OsString::from(detaching(
                ">/dev/null 2>&1",
                "sleep 100 & echo $! >> \"$1\"; echo $$ >> \"$1\"; wait",
            )),
            OsString::from("sh"),
            pids.into_os_string(),
        ]
    };
    let (job_a, job_b) = (job(dir.join("a")), job(dir.join("b")));
    let run = |argv: &Vec<OsString>| {
        sup.run(&AttemptSpec {
            argv,
            env: &[],
            timeout: None,
            grace: Duration::from_secs(1),
            on_output: None,
        })
    };
    std::thread::scope(|scope| {
        scope.spawn(|| run(&job_a));
        wait_until("job A to be registered", || sup.running() == 1);
        let first = sup.guardian_pid().unwrap();
        std::fs::write(dir.join("guardian1"), format!("{first}\n")).unwrap();
        wait_until("a new guardian", || {
            sup.guardian_pid().is_some_and(|p| p != first)
        });
        let second = sup.guardian_pid().unwrap();
        std::fs::write(dir.join("guardian2"), format!("{second}\n")).unwrap();
        scope.spawn(|| run(&job_b));
        wait_until("job B to be registered", || sup.running() == 2);
        std::fs::write(dir.join("registered"), b"").unwrap();
    });
}

/// `kill -9` of the guardian is noticed and a new guardian takes over the
/// running jobs (and the token); a later `kill -9` of jobmill then leaves
/// no process of either job alive, detached daemons included.
#[test]
fn a_killed_guardian_is_replaced_and_still_stops_every_job() {
    let dir = tmp();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_losing_its_guardian", "--nocapture"])
        .env(RESTART_HELPER_ENV, dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let first = read_pids(&dir.path().join("guardian1"), 1)[0];
    let job_a = read_pids(&dir.path().join("a"), 3);
    Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    let second = read_pids(&dir.path().join("guardian2"), 1)[0];
    assert_ne!(first, second);
    let job_b = read_pids(&dir.path().join("b"), 3);
    let marker = dir.path().join("registered");
    wait_until("the helper to say job B is registered", || marker.exists());
    assert!(job_a.iter().chain(&job_b).all(|&p| alive(p)));
    helper.kill().unwrap(); // SIGKILL
    helper.wait().unwrap();
    for pid in job_a.into_iter().chain(job_b) {
        wait_until(&format!("job process {pid} to die"), || !alive(pid));
    }
    wait_until("the new guardian to exit", || !alive(second));
}

#[test]
fn stopped_job_is_still_stopped_by_its_timeout() {
    let sup = supervisor();
    let a = run_with(
        &sup,
        &["sh", "-c", "kill -STOP $$; echo resumed"],
        Some(Duration::from_millis(200)),
        Duration::from_secs(20),
    );
    assert!(a.timed_out);
    assert_eq!(
        a.end,
        End::Signaled(libc::SIGTERM),
        "TERM is delivered after CONT"
    );
}

#[test]
fn huge_timeout_and_grace_do_not_overflow() {
    let sup = supervisor();
    let a = run_with(&sup, &["true"], Some(Duration::MAX), Duration::MAX);
    assert_eq!(a.end, End::Exited(0));
    let a = run_with(
        &sup,
        &["sleep", "100"],
        Some(Duration::from_millis(100)),
        Duration::MAX,
    );
    assert!(a.timed_out);
    assert_eq!(a.end, End::Signaled(libc::SIGTERM));
}

/// A job script that detaches a daemon into a session of its own, which
/// appends its pid to the file `$1` and then sleeps; `redirect` (e.g.
/// `>/dev/null 2>&1`) applies to the daemon. The script goes on with
/// `then` once the daemon has written its pid (so that it has left the
/// group before the job can end).
fn detaching(redirect: &str, then: &str) -> String {
    format!(
        "setsid sh -c 'echo $$ >> \"$1\"; exec sleep 1000' sh \"$1\" {redirect} & \
         while [ ! -s \"$1\" ]; do sleep 0.01; done; {then}"
    )
}

#[test]
fn detached_daemon_of_a_finished_job_is_killed_at_its_end() {
    let dir = tmp();
    let pids = dir.path().join("pids");
    let sup = supervisor();
    let script = detaching("", "echo main");
    let mut a = run(&sup, &["sh", "-c", &script, "sh", pids.to_str().unwrap()]);
    let pid = read_pids(&pids, 1)[0];
    // The daemon left the job's group and holds its pipes: the attempt
    // ends without waiting for them, and its sweep finds the daemon by
    // the attempt's marks.
    assert_eq!(a.end, End::Exited(0));
    assert_eq!(text(&mut a.stdout), "main\n");
    wait_until("the detached daemon to be killed", || !alive(pid));
    assert_eq!(sup.sweeps(), 1);
}

#[test]
fn detached_daemon_with_redirected_output_is_killed_when_the_supervisor_ends() {
    let dir = tmp();
    let pids = dir.path().join("pids");
    let sup = supervisor();
    // The daemon holds none of the job's pipes, so nothing at the job's
    // end points to it (documented); the supervisor's last sweep does.
    let script = detaching(">/dev/null 2>&1", "true");
    let a = run(&sup, &["sh", "-c", &script, "sh", pids.to_str().unwrap()]);
    assert_eq!(a.end, End::Exited(0));
    assert_eq!(sup.sweeps(), 0, "nothing pointed to the daemon");
    let pid = read_pids(&pids, 1)[0];
    drop(sup);
    wait_until("the detached daemon to be killed", || !alive(pid));
}

#[test]
fn detached_daemon_of_a_terminated_job_is_killed() {
    let dir = tmp();
    let pids = dir.path().join("pids");
    let pids_arg = pids.to_str().unwrap().to_owned();
    let sup = Arc::new(supervisor());
    let job = {
        let sup = Arc::clone(&sup);
        std::thread::spawn(move || {
            let script = detaching(">/dev/null 2>&1", "exec sleep 1000");
            run(&sup, &["sh", "-c", &script, "sh", &pids_arg])
        })
    };
    let pid = read_pids(&pids, 1)[0];
    wait_until("the job to run", || sup.running() == 1);
    sup.terminate_all();
    let a = job.join().unwrap();
    assert!(a.terminated);
    assert_eq!(a.end, End::Signaled(libc::SIGTERM));
    // Checked before the supervisor is dropped: the attempt's own sweep.
    wait_until("the detached daemon to be killed", || !alive(pid));
}

#[test]
fn an_attempt_sweep_leaves_other_attempts_alone() {
    let dir = tmp();
    let other_pids = dir.path().join("other");
    let other_arg = other_pids.to_str().unwrap().to_owned();
    let sup = Arc::new(supervisor());
    // A running attempt with a detached daemon of its own.
    let other = {
        let sup = Arc::clone(&sup);
        std::thread::spawn(move || {
            let script = detaching("", "echo $$ >> \"$1\"; exec sleep 1000");
            run(&sup, &["sh", "-c", &script, "sh", &other_arg])
        })
    };
    let others = read_pids(&other_pids, 2);
    // An attempt that ends leaving a daemon that holds its pipes: swept.
    let pids = dir.path().join("pids");
    let script = detaching("", "echo main");
    let a = run(&sup, &["sh", "-c", &script, "sh", pids.to_str().unwrap()]);
    assert_eq!(a.end, End::Exited(0));
    let pid = read_pids(&pids, 1)[0];
    wait_until("the finished attempt's daemon to be killed", || !alive(pid));
    for &p in &others {
        assert!(alive(p), "process {p} of the running attempt was spared");
    }
    sup.terminate_all();
    assert!(other.join().unwrap().terminated);
    for p in others {
        wait_until(&format!("process {p} to be killed"), || !alive(p));
    }
}

#[test]
fn concurrent_attempts_keep_their_output_apart() {
    let sup = Arc::new(supervisor());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sup = Arc::clone(&sup);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let word = format!("job-{t}-{i}");
                    let mut a = run(
                        &sup,
                        &["sh", "-c", "echo \"$1\"; echo \"$1\" >&2", "sh", &word],
                    );
                    assert_eq!(a.end, End::Exited(0));
                    assert_eq!(text(&mut a.stdout), format!("{word}\n"));
                    assert_eq!(text(&mut a.stderr), format!("{word}\n"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(sup.running(), 0);
}

#[test]
fn supervisor_and_attempt_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Supervisor>();
    send_sync::<SpillBudget>();
    send::<Attempt>();
}

#[test]
fn malformed_commands_fail_to_spawn_without_panicking() {
    let sup = supervisor();
    let dir = tmp();
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "echo hi\n").unwrap();
    let cases: Vec<Vec<OsString>> = vec![
        vec![
            OsString::from("echo"),
            OsString::from_vec(b"nul\0inside".to_vec()),
        ],
        vec![OsString::from_vec(b"prog\0ram".to_vec())],
        vec![dir.path().as_os_str().to_owned()],
        vec![not_exec.as_os_str().to_owned()],
        vec![OsString::new()],
    ];
    for argv in &cases {
        let a = sup.run(&AttemptSpec {
            argv,
            env: &[],
            timeout: None,
            grace: Duration::from_secs(1),
            on_output: None,
        });
        match &a.end {
            End::SpawnFailed(msg) => {
                let program = argv[0].to_string_lossy();
                let shown = program.split('\0').next().unwrap();
                assert!(msg.contains(shown), "{msg:?} should name {program:?}");
                assert!(!msg.contains('\0'), "{msg:?} is printable");
            }
            other => panic!("{argv:?}: expected SpawnFailed, got {other:?}"),
        }
    }
    let argv = argv(&["true"]);
    let a = sup.run(&AttemptSpec {
        argv: &argv,
        env: &[("BAD\0KEY", OsString::from("v"))],
        timeout: None,
        grace: Duration::from_secs(1),
        on_output: None,
    });
    assert!(matches!(a.end, End::SpawnFailed(_)), "{:?}", a.end);
    assert_eq!(sup.running(), 0);
}

#[test]
fn output_hook_sees_every_chunk_as_captured() {
    let sup = supervisor();
    let argv = argv(&["sh", "-c", "printf a; echo b >&2; seq 1 20000; printf end"]);
    let seen = std::cell::RefCell::new((Vec::new(), Vec::new()));
    let hook = |stderr: bool, bytes: &[u8]| {
        let mut s = seen.borrow_mut();
        if stderr { &mut s.1 } else { &mut s.0 }.extend_from_slice(bytes);
    };
    let mut a = sup.run(&AttemptSpec {
        argv: &argv,
        env: &[],
        timeout: None,
        grace: Duration::from_secs(2),
        on_output: Some(&hook),
    });
    assert_eq!(a.end, End::Exited(0));
    let (out, err) = seen.into_inner();
    assert_eq!(out, a.stdout.to_vec().unwrap());
    assert_eq!(err, a.stderr.to_vec().unwrap());
    assert!(out.starts_with(b"a1\n2\n") && out.ends_with(b"20000\nend"));
    assert_eq!(err, b"b\n");
}

/// A guardian killed when no new one can be started (its binary is gone)
/// is reported, with the reason, through `guardian_lost`; the library does
/// not print it (the engine turns it into a notice).
#[test]
fn a_guardian_that_cannot_be_replaced_is_reported_lost_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("jobmill-copy");
    std::fs::copy(jobmill_bin(), &exe).unwrap();
    let sup = Supervisor::new(Some(&exe), SpillBudget::new(1 << 20)).unwrap();
    let pid = sup.guardian_pid().unwrap();
    std::fs::remove_file(&exe).unwrap();
    assert_eq!(sup.guardian_lost(), None);
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("the guardian's loss to be noticed", || {
        sup.guardian_lost().is_some()
    });
    let why = sup.guardian_lost().unwrap();
    assert!(
        why.contains("no new one could be started") && why.contains("no longer stopped"),
        "{why}"
    );
    // Jobs still run, unguarded.
    let mut a = run(&sup, &["echo", "still"]);
    assert_eq!(text(&mut a.stdout), "still\n");
}

/// With a memory option, attempts start by `fork` and `exec` (in a cgroup
/// of their own, or under RLIMIT_AS where none can be made): what the
/// supervisor does around them is the same.
#[test]
fn with_a_memory_option_output_exit_environment_timeout_and_group_kill_are_unchanged() {
    use jobmill::exec::MemoryOptions;
    let sup = supervisor().with_memory(MemoryOptions {
        limit: Some(512 << 20),
    });
    let argv = argv(&["sh", "-c", "echo \"out $X\"; echo err >&2; cat; exit 3"]);
    let mut a = sup.run(&AttemptSpec {
        argv: &argv,
        env: &[("X", OsString::from("x"))],
        timeout: None,
        grace: Duration::from_secs(2),
        on_output: None,
    });
    assert_eq!(a.end, End::Exited(3));
    assert_eq!(text(&mut a.stdout), "out x\n");
    assert_eq!(text(&mut a.stderr), "err\n");
    assert_eq!(a.outcome().end.cause(), "exit", "no memory cause");

    let dir = tmp();
    let pids = dir.path().join("pids");
    let a = run_with(
        &sup,
        &[
            "sh",
            "-c",
            "sleep 100 & echo $! > \"$1\"; wait",
            "sh",
            pids.to_str().unwrap(),
        ],
        Some(Duration::from_secs(1)),
        Duration::from_secs(5),
    );
    assert!(a.timed_out);
    assert_eq!(a.end, End::Signaled(libc::SIGTERM));
    assert_eq!(a.outcome().end.cause(), "timeout");
    let pid = read_pids(&pids, 1)[0];
    wait_until("the group's sleep to die", || !alive(pid));

    let a = run(&sup, &["jobmill-no-such-program-xyz"]);
    assert!(
        matches!(&a.end, End::SpawnFailed(m) if m.contains("jobmill-no-such-program-xyz")),
        "{:?}",
        a.end
    );
}
