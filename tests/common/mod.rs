//! Helpers shared by the integration tests: the binary, deadlines, process
//! liveness.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `jobmill` binary under test.
pub fn jobmill() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jobmill"))
}

/// A generous deadline for conditions in tests on a shared, noisy machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `cond` until it holds, panicking with `what` after `PATIENCE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name in parentheses.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Reads whitespace-separated pids from `file` (empty if it is missing).
pub fn read_pids(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Sends `signal` (e.g. "INT") to `pid` with kill(1).
pub fn send_signal(signal: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} {pid} failed");
}

/// Sends `signal` to every process of group `pgid`, as a terminal would.
pub fn signal_group(signal: &str, pgid: u32) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} -{pgid} failed");
}

/// Waits for `child` to exit within `PATIENCE`; kills it and panics if not.
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("jobmill did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns jobmill in a process group of its own (as a shell would for a
/// foreground job), with piped stderr and null stdin.
pub fn spawn_in_own_group(cmd: &mut Command) -> Child {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jobmill")
}

/// Reads the child's piped stderr until it contains `needle`; returns what
/// was read. Panics if stderr closes first.
pub fn read_stderr_until(child: &mut Child, needle: &str) -> String {
    use std::io::Read;
    let stderr = child.stderr.as_mut().expect("stderr is piped");
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains(needle) {
        let n = stderr.read(&mut buf).expect("read stderr");
        assert!(n > 0, "stderr closed before {needle:?} appeared: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    seen
}

/// Runs `jobmill submit --queue URL EXTRA...` with `stdin` as its input and
/// asserts that it succeeded.
pub fn submit(url: &str, extra: &[&str], stdin: impl AsRef<[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut child = jobmill()
        .args(["submit", "--queue", url])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jobmill submit");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_ref())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits for `child` and returns its exit code (-1 for a signal), stdout and
/// stderr.
pub fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
