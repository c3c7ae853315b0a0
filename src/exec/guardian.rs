//! The guardian: a small process that stops every job if jobmill dies.
//!
//! `PR_SET_PDEATHSIG` is not used: `posix_spawn` cannot set it (it would
//! take a fork+exec with a hook in the child, twice as slow, and slower
//! still with a large parent), and it only reaches the direct child, not
//! the rest of the job's process group.
//!
//! Instead [`super::Supervisor`] starts `jobmill __guardian <grace_ms>` once
//! per run, in its own process group (so the terminal's Ctrl-C does not
//! reach it), with a pipe as its stdin. jobmill's end of the pipe is
//! close-on-exec, so jobs never hold it. After spawning a job jobmill
//! writes `+<pgid>\n`; once the job has ended and its group has had
//! SIGKILL, and before reaping it, `-<pgid>\n` (one small write each,
//! atomic on a pipe, so slot threads need no lock). The guardian keeps the
//! set of live groups, reading it in batches (it pauses 20 ms after
//! emptying the pipe, and the pipe is 1 MiB), so it wakes up at most ~50
//! times a second rather than twice per job; the pause ends at once when
//! the pipe closes. When its stdin ends — jobmill exited or was killed,
//! even by SIGKILL — it sends SIGTERM to every group still registered,
//! waits up to the grace period for them to go, sends SIGKILL, and exits.
//! When jobmill exits normally nothing is registered and the guardian
//! exits at once; dropping the [`super::Supervisor`] also reaps it.
//!
//! A job spawned but not yet registered when jobmill is SIGKILLed (a
//! window of microseconds between the spawn and the `+pgid` write) is
//! covered by a sweep: every job carries `JOBMILL_GUARD=<token>` in its
//! environment, the token unique to this guardian, and when the pipe ends
//! without jobmill's clean-close line (`.`), the guardian also stops the
//! process groups whose leader's environment (`/proc/<pid>/environ`) holds
//! that token, and the token holders that lead no group (each alone: their
//! group may be jobmill's own). This also catches what jobs detached from
//! their group with `setsid`. A clean close skips the sweep (every job has
//! ended then).
//!
//! A guardian that is itself killed (`kill -9`) is replaced: jobmill keeps
//! the set of registered groups next to the pipe, a thread waits on a
//! pidfd of the guardian, and a failed write (`EPIPE`) is noticed too;
//! either starts a new guardian with the same token and hands it every
//! group still registered (see `GuardianLink`).
//!
//! Known window: if a job's main process
//! has already been reaped by init when the guardian signals its group, a
//! group id reused in between would be hit (the kernel does not reuse a
//! pid while its group has members, so this needs the whole group gone
//! and a new group leader given the same pid within the grace period).

use std::collections::HashSet;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::process::{
    kill_process, kill_process_group, pidfd_open, test_kill_process, test_kill_process_group, Pid,
    PidfdFlags, Signal,
};

/// The hidden first argument that starts the guardian mode of the binary.
pub const GUARDIAN_ARG: &str = "__guardian";

/// What the guardian prints on stdout once it is ready.
const READY: &[u8] = b"ready\n";

/// How long the guardian lets registrations pile up between reads.
const COALESCE: Duration = Duration::from_millis(20);

/// Size asked for the registration pipe: 1 MiB holds 100,000 messages,
/// far more than arrive in one [`COALESCE`] interval.
const PIPE_SIZE: usize = 1 << 20;

/// How long [`GuardianLink::start`] waits for the guardian to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the guardian checks, during the grace period, whether the
/// groups it terminated are gone.
const GONE_CHECK: Duration = Duration::from_millis(10);

/// The environment variable that marks the jobs of one guardian.
pub const TOKEN_VAR: &str = "JOBMILL_GUARD";

/// Entry point of `jobmill __guardian <grace_ms> [<token>]`: reads
/// registrations from stdin until it ends, then stops every group still
/// registered, and, unless jobmill closed cleanly, every group led by a
/// process whose environment holds `JOBMILL_GUARD=<token>` (TERM, wait up
/// to `grace`, KILL); exits with status 0.
pub fn run_guardian(grace: Duration, token: Option<&str>) -> ! {
    // Ctrl-C and a terminal hang-up must not end the guardian before
    // jobmill: catch them into a flag that nothing reads.
    let ignored = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&ignored)) {
            eprintln!("jobmill guardian: cannot catch signal {sig}: {e}");
        }
    }
    // If jobmill is no longer listening, carry on anyway.
    let mut out = io::stdout().lock();
    let _ = out.write_all(READY).and_then(|()| out.flush());

    let input = Coalescing {
        inner: io::stdin().lock(),
        pause: COALESCE,
    };
    let (mut groups, clean) = read_registrations(io::BufReader::with_capacity(64 * 1024, input));
    let mut lone = Vec::new();
    if let (false, Some(token)) = (clean, token) {
        let (marked, alone) = marked_groups(token);
        groups.extend(marked);
        lone = alone;
    }
    stop_groups(&groups, &lone, grace);
    std::process::exit(0)
}

/// The processes whose environment holds `JOBMILL_GUARD=<token>`: the
/// groups they lead, and those of them that lead no group (they are
/// signalled alone, never their group: it may be jobmill's own).
fn marked_groups(token: &str) -> (HashSet<i32>, Vec<i32>) {
    let needle = format!("{TOKEN_VAR}={token}");
    let mut groups = HashSet::new();
    let mut lone = Vec::new();
    for m in super::sweep::marked(&[needle.as_bytes()]) {
        if m.leader {
            groups.insert(m.pid);
        } else {
            lone.push(m.pid);
        }
    }
    (groups, lone)
}

/// A reader that pauses after each read that emptied its pipe, so that
/// registrations pile up and are taken in batches: the guardian wakes up at
/// most about `1 / pause` times a second instead of twice per job, leaving
/// the CPU to the jobs. jobmill's end of the pipe is enlarged so that its
/// writes never wait for the guardian.
///
/// The pause is a `poll` for no event: the kernel does not wake it when
/// data arrives, but does when the pipe's writer goes away (`POLLHUP`), so
/// the end of jobmill is seen at once.
struct Coalescing<R> {
    inner: R,
    pause: Duration,
}

impl<R: Read + AsFd> Read for Coalescing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && n < buf.len() {
            let mut fds = [PollFd::new(&self.inner, PollFlags::empty())];
            let pause = Timespec::try_from(self.pause).unwrap_or_default();
            // An interrupted or failed pause only makes the batch smaller.
            let _ = poll(&mut fds, Some(&pause));
        }
        Ok(n)
    }
}

/// Reads `+pgid` / `-pgid` lines until end of input (or a read error) and
/// returns the groups still registered, and whether jobmill closed cleanly
/// (a last line `.`).
fn read_registrations(mut input: impl BufRead) -> (HashSet<i32>, bool) {
    let mut groups = HashSet::new();
    let mut clean = false;
    let mut line = Vec::with_capacity(32);
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        clean = text == b".";
        if clean {
            continue;
        }
        let parsed = std::str::from_utf8(text.get(1..).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|&p| p > 1);
        match (text.first(), parsed) {
            (Some(b'+'), Some(pgid)) => {
                groups.insert(pgid);
            }
            (Some(b'-'), Some(pgid)) => {
                groups.remove(&pgid);
            }
            _ => eprintln!(
                "jobmill guardian: ignoring bad registration {:?}",
                String::from_utf8_lossy(text)
            ),
        }
    }
    (groups, clean)
}

/// TERM to every group and to every lone process, wait until they are
/// gone or `grace` has passed, then KILL to those left.
fn stop_groups(groups: &HashSet<i32>, lone: &[i32], grace: Duration) {
    let pgids: Vec<Pid> = groups.iter().filter_map(|&g| Pid::from_raw(g)).collect();
    let pids: Vec<Pid> = lone.iter().filter_map(|&p| Pid::from_raw(p)).collect();
    if pgids.is_empty() && pids.is_empty() {
        return;
    }
    for &pgid in &pgids {
        let _ = kill_process_group(pgid, Signal::TERM);
    }
    for &pid in &pids {
        let _ = kill_process(pid, Signal::TERM);
    }
    let deadline = Instant::now().checked_add(grace);
    while deadline.is_none_or(|d| Instant::now() < d)
        && (pgids.iter().any(|&p| test_kill_process_group(p).is_ok())
            || pids.iter().any(|&p| test_kill_process(p).is_ok()))
    {
        std::thread::sleep(GONE_CHECK);
    }
    for &pgid in &pgids {
        let _ = kill_process_group(pgid, Signal::KILL);
    }
    for &pid in &pids {
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// jobmill's side of the guardian: the child process and the pipe to it,
/// the set of registered groups, and a thread that restarts the guardian
/// if it dies.
///
/// A guardian that dies (someone `kill -9`s it) is noticed in two ways:
/// the monitor thread waits on a pidfd of it, and a registration write
/// that fails (`EPIPE`) also notices. Either starts a new guardian with
/// the same token (so that its sweep still finds every job) and hands it
/// every group still registered, under the lock that registrations take,
/// so none is lost or doubled. If no new guardian can be started, the
/// link is lost ([`GuardianLink::lost`] says why).
#[derive(Debug)]
pub(crate) struct GuardianLink {
    shared: Arc<Shared>,
    monitor: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    exe: PathBuf,
    grace: Duration,
    ready_timeout: Duration,
    /// The value of [`TOKEN_VAR`] in this guardian's jobs.
    token: String,
    state: Mutex<State>,
    lost: AtomicBool,
    /// Why the link was lost, once it is (for the run's messages: the
    /// library does not print).
    why_lost: Mutex<Option<String>>,
    /// Event fd that ends the monitor thread.
    shutdown: OwnedFd,
}

#[derive(Debug)]
struct State {
    /// The running guardian; `None` once lost for good, or when dropped.
    running: Option<Running>,
    /// Groups registered and not unregistered since: what a new guardian
    /// is told about.
    groups: HashSet<i32>,
    /// Bumped by every restart.
    generation: u64,
}

/// A started guardian process and our end of its stdin.
#[derive(Debug)]
struct Running {
    stdin: ChildStdin,
    child: Child,
}

impl GuardianLink {
    /// Starts `exe __guardian <grace_ms> <token>` and waits until it is
    /// ready.
    pub(crate) fn start(exe: &Path, grace: Duration, token: String) -> io::Result<Self> {
        Self::start_within(exe, grace, token, READY_TIMEOUT)
    }

    /// As [`GuardianLink::start`], waiting at most `ready_timeout` for it.
    fn start_within(
        exe: &Path,
        grace: Duration,
        token: String,
        ready_timeout: Duration,
    ) -> io::Result<Self> {
        let running = spawn_guardian(exe, grace, &token, ready_timeout)?;
        let shutdown = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let shared = Arc::new(Shared {
            exe: exe.to_owned(),
            grace,
            ready_timeout,
            token,
            state: Mutex::new(State {
                running: Some(running),
                groups: HashSet::new(),
                generation: 0,
            }),
            lost: AtomicBool::new(false),
            why_lost: Mutex::new(None),
            shutdown,
        });
        let watched = Arc::clone(&shared);
        let monitor = std::thread::Builder::new()
            .name("jobmill-guardian-monitor".to_owned())
            .spawn(move || watched.monitor())
            .ok();
        Ok(Self { shared, monitor })
    }

    /// The value of [`TOKEN_VAR`] to give every job.
    pub(crate) fn token(&self) -> &str {
        &self.shared.token
    }

    /// Registers a live group (`+pgid`).
    pub(crate) fn register(&self, pgid: i32) {
        self.shared.send(b'+', pgid);
    }

    /// Unregisters a reaped group (`-pgid`).
    pub(crate) fn unregister(&self, pgid: i32) {
        self.shared.send(b'-', pgid);
    }

    /// Why the guardian is gone for good, when it died and no new one
    /// could be started. One atomic load while it is not.
    pub(crate) fn lost(&self) -> Option<String> {
        if !self.shared.lost.load(Ordering::Acquire) {
            return None;
        }
        self.shared
            .why_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The process id of the guardian running now.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.shared.lock().running.as_ref().map(|r| r.child.id())
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `op pgid` in the set and sends it; restarts the guardian if
    /// the write fails (it died).
    fn send(&self, op: u8, pgid: i32) {
        let mut buf = [0u8; 16];
        let n = encode(op, pgid, &mut buf);
        let mut state = self.lock();
        if op == b'+' {
            state.groups.insert(pgid);
        } else {
            state.groups.remove(&pgid);
        }
        let Some(running) = &state.running else {
            return;
        };
        // One write of at most 16 bytes, atomic on a pipe.
        let mut w: &ChildStdin = &running.stdin;
        if w.write_all(&buf[..n]).is_err() {
            self.restart(&mut state);
        }
    }

    /// The link is lost for good, for the reason `why`.
    fn mark_lost(&self, why: String) {
        *self.why_lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.lost.store(true, Ordering::Release);
    }

    /// Replaces a dead guardian with a new one that knows every registered
    /// group. Called with the state locked.
    fn restart(&self, state: &mut State) {
        if let Some(mut old) = state.running.take() {
            // Dead or dying already; make sure, and reap it.
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        state.generation += 1;
        let running = match spawn_guardian(&self.exe, self.grace, &self.token, self.ready_timeout) {
            Ok(running) => running,
            Err(e) => {
                self.mark_lost(format!(
                    "the guardian process died and no new one could be started ({e}): \
                     jobs are no longer stopped if jobmill is killed"
                ));
                return;
            }
        };
        let mut lines = Vec::with_capacity(state.groups.len() * 12);
        let mut buf = [0u8; 16];
        for &pgid in &state.groups {
            let n = encode(b'+', pgid, &mut buf);
            lines.extend_from_slice(&buf[..n]);
        }
        let mut w: &ChildStdin = &running.stdin;
        if w.write_all(&lines).is_err() {
            self.mark_lost(
                "the new guardian process died at once: jobs are no longer stopped if \
                 jobmill is killed"
                    .to_owned(),
            );
            return;
        }
        state.running = Some(running);
    }

    /// The monitor thread: waits on a pidfd of the guardian and restarts it
    /// when it dies; ends when the link is dropped. Without pidfds (old
    /// kernel) it ends at once, and a death is noticed by the next write.
    fn monitor(&self) {
        loop {
            let (pidfd, generation) = {
                let state = self.lock();
                let Some(running) = &state.running else {
                    return;
                };
                let Some(pid) = Pid::from_raw(running.child.id() as i32) else {
                    return;
                };
                // The child is not reaped while we hold the lock, so its pid
                // is still its own.
                match pidfd_open(pid, PidfdFlags::empty()) {
                    Ok(fd) => (fd, state.generation),
                    Err(_) => return,
                }
            };
            let mut fds = [
                PollFd::new(&pidfd, PollFlags::IN),
                PollFd::new(&self.shutdown, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            if !fds[1].revents().is_empty() {
                return;
            }
            if !fds[0].revents().is_empty() {
                let mut state = self.lock();
                if state.generation == generation && state.running.is_some() {
                    self.restart(&mut state);
                }
            }
        }
    }
}

/// Starts `exe __guardian <grace_ms> <token>` in its own process group with
/// a pipe as its stdin and waits up to `ready_timeout` for it to be ready.
fn spawn_guardian(
    exe: &Path,
    grace: Duration,
    token: &str,
    ready_timeout: Duration,
) -> io::Result<Running> {
    use std::os::unix::process::CommandExt;
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let mut child = Command::new(exe)
        .arg(GUARDIAN_ARG)
        .arg(grace_ms.to_string())
        .arg(token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start guardian {}: {e}", exe.display()),
            )
        })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other("guardian started without pipes"));
    };
    if read_ready(stdout, ready_timeout).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::other(format!(
            "guardian {} {GUARDIAN_ARG} did not start (is it the jobmill binary?)",
            exe.display()
        )));
    }
    // Best effort: the default 64 KiB still holds 8,000 messages.
    let _ = rustix::pipe::fcntl_setpipe_size(&stdin, PIPE_SIZE);
    Ok(Running { stdin, child })
}

impl Drop for GuardianLink {
    fn drop(&mut self) {
        // The event fd's counter only has to be non-zero.
        let _ = rustix::io::write(&self.shared.shutdown, &1u64.to_ne_bytes());
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.join();
        }
        // A clean close (no sweep), then closing our end is the guardian's
        // signal to finish: with nothing registered it exits at once. Reap
        // it so no zombie remains.
        let running = self.shared.lock().running.take();
        if let Some(Running {
            mut stdin,
            mut child,
        }) = running
        {
            let _ = stdin.write_all(b".\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Waits up to `timeout` for the guardian's `ready` line.
fn read_ready(mut stdout: ChildStdout, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now().checked_add(timeout);
    let mut got = Vec::with_capacity(READY.len());
    let mut buf = [0u8; 16];
    while got.len() < READY.len() {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let left = left.and_then(|l| Timespec::try_from(l).ok());
        let mut fds = [PollFd::new(&stdout, PollFlags::IN)];
        match poll(&mut fds, left.as_ref()) {
            Ok(0) => return Err(io::ErrorKind::TimedOut.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let want = READY.len() - got.len();
        match stdout.read(&mut buf[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if got == READY {
        Ok(())
    } else {
        Err(io::ErrorKind::InvalidData.into())
    }
}

/// Writes `op` then the decimal `pgid` then `\n` into `buf`; returns the length.
fn encode(op: u8, pgid: i32, buf: &mut [u8; 16]) -> usize {
    let mut digits = [0u8; 11];
    let mut v = pgid.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let d = &digits[i..];
    buf[0] = op;
    buf[1..=d.len()].copy_from_slice(d);
    buf[d.len() + 1] = b'\n';
    d.len() + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guardian_that_never_answers_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("silent");
        std::fs::write(&exe, "#!/bin/sh\nexec sleep 100\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = GuardianLink::start_within(
            &exe,
            Duration::ZERO,
            "t".to_owned(),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(err.to_string().contains("silent"), "{err}");
    }

    #[test]
    fn registration_lines_encode_pgid() {
        let mut buf = [0u8; 16];
        let n = encode(b'+', 12345, &mut buf);
        assert_eq!(&buf[..n], b"+12345\n");
        let n = encode(b'-', i32::MAX, &mut buf);
        assert_eq!(&buf[..n], b"-2147483647\n");
        let n = encode(b'+', 7, &mut buf);
        assert_eq!(&buf[..n], b"+7\n");
    }

    #[test]
    fn registrations_add_and_remove_and_skip_garbage() {
        let input: &[u8] = b"+100\n+200\n-100\nhello\n+1\n+-5\n+300";
        let (groups, clean) = read_registrations(input);
        assert!(!clean);
        let mut v: Vec<_> = groups.into_iter().collect();
        v.sort();
        assert_eq!(v, vec![200, 300], "pgid 1 and negatives are refused");
    }

    #[test]
    fn only_a_last_dot_line_is_a_clean_close() {
        assert!(read_registrations(&b"+100\n-100\n.\n"[..]).1);
        assert!(!read_registrations(&b".\n+100\n"[..]).1);
    }
}
