//! [`Supervisor`]: spawns one attempt, captures its output, enforces its
//! timeout, reaps it and cleans up its process group.

use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{
    kill_process_group, pidfd_open, waitid, Pid, PidfdFlags, Signal, WaitId, WaitIdOptions,
};

use super::capture::{Capture, SpillBudget};
use super::cgroup::JobCgroup;
use super::guardian::GuardianLink;
use super::leftovers::Leftovers;
use super::memory::{self, AttemptMemory, MemoryControl, MemoryOptions};
use super::{Attempt, AttemptSpec, End, OutputHook};
use crate::sys::process::wait4;
use crate::sys::spawn::Spawner;

/// Grace period the guardian gives jobs between TERM and KILL when jobmill
/// dies, unless set with [`Supervisor::with_guardian_grace`].
pub const DEFAULT_GUARDIAN_GRACE: Duration = Duration::from_secs(2);

/// Size of the stack buffer each read from a job's pipe goes through
/// (the default pipe capacity on Linux).
const READ_CHUNK: usize = 64 * 1024;

/// Pipe size and read buffer for a stream that turned out to be large (a
/// read filled the whole small buffer): fewer wake-ups and system calls
/// per byte. 1 MiB is the default `/proc/sys/fs/pipe-max-size`.
const BIG_CHUNK: usize = 1 << 20;

/// After the main process of a job has exited, how long to keep reading
/// what is left in its pipes (bounds the case of a process that left the
/// job's group and keeps writing).
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// How long a job may run before its exit is watched on a pidfd. A pidfd
/// costs a file (`pidfd_open`, `close`: about 5 µs of jobmill's CPU per
/// job, the most of any one step of a short job's supervision), and most
/// short jobs need none: their main process exits, their pipes reach end
/// of file, and one `waitid` confirms the exit. A job still running after
/// this delay, or whose pipes closed before it exited, is watched on a
/// pidfd as before. The price: a main process that exits within the delay
/// while something else still holds its output pipes is seen to have
/// exited only when the delay runs out (its group is killed then), at most
/// this much later.
const LAZY_PIDFD: Duration = Duration::from_millis(5);

/// How many times to yield the CPU, once a job's pipes are at end of file,
/// for its main process to finish exiting before it is watched on a pidfd
/// (each a `sched_yield` and a `waitid`, cheaper than a pidfd).
const EXIT_YIELDS: usize = 4;

/// Poll interval when `pidfd_open` is unavailable (old kernel, or out of
/// file descriptors) and exit must be detected by polling `waitid`.
const FALLBACK_TICK: Duration = Duration::from_millis(10);

/// Runs attempts of commands and keeps track of them. `Send + Sync`: the
/// slot threads of a run share one through an `Arc`.
#[derive(Debug)]
pub struct Supervisor {
    budget: SpillBudget,
    guardian: Option<GuardianLink>,
    /// Event fd that becomes (and stays) readable once `terminate_all` is
    /// called; every running attempt polls it.
    stop: OwnedFd,
    stopping: AtomicBool,
    running: AtomicUsize,
    /// Whether to wait on a pidfd (false only in tests of the fallback).
    use_pidfd: bool,
    /// The value of `JOBMILL_GUARD` in this supervisor's jobs (and its
    /// guardian's token): unique to this supervisor.
    token: String,
    /// The number of the next attempt, its `JOBMILL_GUARD_ID`.
    next_id: AtomicU64,
    /// Sweeps what finished attempts left outside their group.
    leftovers: Leftovers,
    /// Starts the jobs; holds the environment block, built once, with
    /// `JOBMILL_GUARD` in it.
    spawner: Spawner,
    /// Memory options: a cgroup (or `RLIMIT_AS`) per attempt. `None`: no
    /// cgroup, nothing set up in the child.
    memory: Option<Arc<MemoryControl>>,
}

impl Supervisor {
    /// A supervisor whose captures share `budget`. `guardian`: the path of
    /// the jobmill binary, to start the guardian process (see
    /// [`super::guardian`]) with [`DEFAULT_GUARDIAN_GRACE`]; `None` runs
    /// without one (library use, tests).
    ///
    /// # Errors
    ///
    /// The guardian cannot be started or did not answer, or no event fd
    /// could be created.
    pub fn new(guardian: Option<&Path>, budget: SpillBudget) -> io::Result<Self> {
        Self::with_guardian_grace(guardian, DEFAULT_GUARDIAN_GRACE, budget)
    }

    /// As [`Supervisor::new`], with the guardian's grace period between
    /// TERM and KILL set to `guardian_grace`.
    ///
    /// # Errors
    ///
    /// As for [`Supervisor::new`].
    pub fn with_guardian_grace(
        guardian: Option<&Path>,
        guardian_grace: Duration,
        budget: SpillBudget,
    ) -> io::Result<Self> {
        let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("eventfd: {e}")))?;
        let token = new_token();
        let spawner = Spawner::new(&[(super::guardian::TOKEN_VAR, OsStr::new(&token))])?;
        let leftovers = Leftovers::start(format!("{}={token}", super::guardian::TOKEN_VAR))?;
        let guardian = match guardian {
            Some(exe) => Some(GuardianLink::start(exe, guardian_grace, token.clone())?),
            None => None,
        };
        Ok(Self {
            budget,
            guardian,
            stop,
            stopping: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            use_pidfd: true,
            token,
            next_id: AtomicU64::new(1),
            spawner,
            leftovers,
            memory: None,
        })
    }

    /// Runs every attempt from now on under `options`: in a cgroup of its
    /// own, or under `RLIMIT_AS` where no cgroup can be made (see
    /// [`super::memory`]). Without this, attempts start with
    /// nothing set up in the child and no cgroup.
    pub fn with_memory(mut self, options: MemoryOptions) -> Self {
        self.memory = Some(Arc::new(MemoryControl::new(options)));
        self
    }

    /// The memory control set with [`Supervisor::with_memory`].
    pub fn memory(&self) -> Option<&Arc<MemoryControl>> {
        self.memory.as_ref()
    }

    /// The process id of the guardian running now (it changes when a dead
    /// guardian is replaced); `None` without one.
    pub fn guardian_pid(&self) -> Option<u32> {
        self.guardian.as_ref().and_then(GuardianLink::pid)
    }

    /// Number of attempts running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Whether [`Supervisor::terminate_all`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Registers a process group that this supervisor did not start (a
    /// long-lived worker) with the guardian, so that it is stopped if
    /// jobmill dies. Pair with [`Supervisor::unguard_group`] before reaping.
    pub fn guard_group(&self, pgid: u32) {
        if let Some(g) = &self.guardian {
            g.register(pgid as i32);
        }
    }

    /// The environment variable and value that mark a process as one of
    /// this supervisor's (`JOBMILL_GUARD`, see [`super::guardian`]): give
    /// it to processes started elsewhere and passed to
    /// [`Supervisor::guard_group`], so that the guardian finds them even if
    /// jobmill dies before registering them. `None` without a guardian.
    pub fn guard_env(&self) -> Option<(&'static str, &str)> {
        self.guardian
            .as_ref()
            .map(|g| (super::guardian::TOKEN_VAR, g.token()))
    }

    /// How many attempts so far searched `/proc` for leftovers (an output
    /// pipe still held 20 ms after their group was killed, or a stopped
    /// attempt): for benchmarks and tests of that cost. The search for a
    /// held pipe runs on a thread of the supervisor after the attempt has
    /// returned.
    pub fn sweeps(&self) -> u64 {
        self.leftovers.sweeps()
    }

    /// Kills every process left by this supervisor's jobs that carries its
    /// token and is still alive (a detached daemon whose job has ended),
    /// whatever its attempt. Only call it when no attempt is running (a
    /// running job carries the token too); dropping the supervisor does it.
    /// Returns how many processes were found.
    pub fn sweep_leftovers(&self) -> usize {
        let needle = format!("{}={}", super::guardian::TOKEN_VAR, self.token);
        super::sweep::kill_marked(&[needle.as_bytes()])
    }

    /// Removes a group registered with [`Supervisor::guard_group`]; call it
    /// before reaping the group's leader.
    pub fn unguard_group(&self, pgid: u32) {
        if let Some(g) = &self.guardian {
            g.unregister(pgid as i32);
        }
    }

    /// Why the guardian is gone, when it was started, died, and no new one
    /// could be started: jobs are then no longer protected against
    /// jobmill's death. (A guardian that dies is replaced, see
    /// [`super::guardian`].) One atomic load while it is not.
    pub fn guardian_lost(&self) -> Option<String> {
        self.guardian.as_ref().and_then(GuardianLink::lost)
    }

    /// Sends TERM to every running job's process group now; each gets KILL
    /// after its grace period, and its attempt is marked `terminated`.
    ///
    /// This is sticky: an attempt started afterwards is terminated at once
    /// (this closes the race with a slot that is spawning right now).
    pub fn terminate_all(&self) {
        self.stopping.store(true, Ordering::Release);
        // The event fd's counter only has to be non-zero; it is never read.
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }

    /// Runs one attempt to its end, blocking the calling thread. Never
    /// panics: a program that cannot be started gives
    /// [`End::SpawnFailed`].
    pub fn run(&self, spec: &AttemptSpec<'_>) -> Attempt {
        let started = SystemTime::now();
        let t0 = Instant::now();
        let mut attempt = Attempt {
            started,
            duration: Duration::ZERO,
            end: End::SpawnFailed(String::new()),
            timed_out: false,
            terminated: false,
            max_rss_kib: 0,
            memory: None,
            stdout: Capture::new(self.budget.clone()),
            stderr: Capture::new(self.budget.clone()),
        };
        let Some(program) = spec.argv.first() else {
            attempt.end = End::SpawnFailed("empty command: no program to run".to_owned());
            return attempt;
        };
        // Found by the guardian's sweep if jobmill dies before the
        // registration below (JOBMILL_GUARD, in the spawner's fixed
        // environment), and by this attempt's own sweep at its end.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut id_buf = [0u8; 20];
        let vars = std::iter::once((ID_VAR, decimal(id, &mut id_buf)))
            .chain(spec.env.iter().map(|(k, v)| (*k, v.as_bytes())));
        // With a memory option: the attempt's cgroup (or RLIMIT_AS),
        // joined by the child before `exec`.
        let mem = match self.memory.as_ref().map(|m| m.for_attempt()) {
            None => None,
            Some(Ok(mem)) => Some(mem),
            Some(Err(e)) => {
                attempt.end = End::SpawnFailed(format!("cannot run {}: {e}", quoted(program)));
                attempt.duration = t0.elapsed();
                return attempt;
            }
        };
        // The kernel's OOM kill count as the attempt starts, where no
        // cgroup tells (a shared sample, no system call per job).
        let oom_at_start = match &mem {
            Some(AttemptMemory::Cgroup(_)) => None,
            _ => memory::recent_oom_kills(),
        };
        let spawned = match &mem {
            None => self.spawner.spawn(spec.argv, vars),
            Some(mem) => self.spawner.spawn_with_setup(spec.argv, vars, mem.setup()),
        };
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                attempt.end = End::SpawnFailed(format!("cannot run {}: {e}", quoted(program)));
                attempt.duration = t0.elapsed();
                return attempt;
            }
        };
        let raw_pid = child.pid;
        let Some(pid) = Pid::from_raw(raw_pid) else {
            attempt.end = End::SpawnFailed(format!("cannot run {}: no pid", quoted(program)));
            return attempt;
        };
        // Register first, then count: `running() > 0` means the guardian
        // has been told (the write is in its pipe even if jobmill dies
        // now). A `kill -9` of jobmill in the few microseconds before this
        // write leaves the job unregistered; the guardian's sweep finds it
        // by its token (docs/ARCHITECTURE.md, "Stopping").
        if let Some(g) = &self.guardian {
            g.register(raw_pid);
        }
        self.running.fetch_add(1, Ordering::AcqRel);

        let pipes = (Some(child.stdout), Some(child.stderr));
        let flags = Watch {
            pid,
            timeout: spec.timeout,
            grace: spec.grace,
            on_output: spec.on_output,
            cgroup: mem.as_ref().and_then(AttemptMemory::cgroup),
        }
        .watch(self, pipes, &mut attempt);
        let (flags, held) = flags;
        attempt.timed_out = flags.timed_out;
        attempt.terminated = flags.terminated;
        if flags.timed_out || flags.terminated {
            // A stopped job: kill whatever carries this attempt's marks.
            self.leftovers.sweep_now(id);
        } else if !held.is_empty() {
            // Some process outside the main one still holds an output
            // pipe: the leftovers thread finds out whether it lets go.
            self.leftovers.check(id, held);
        }
        // The whole group has had SIGKILL by now: nothing is left for the
        // guardian to stop. Unregistering before reaping means the
        // guardian never holds a group id that could be reused.
        if let Some(g) = &self.guardian {
            g.unregister(raw_pid);
        }

        attempt.end = match wait4(raw_pid) {
            Ok(reaped) => {
                attempt.max_rss_kib = reaped.max_rss_kib;
                let status = ExitStatus::from_raw(reaped.status);
                match (status.code(), status.signal()) {
                    (Some(code), _) => End::Exited(code),
                    (None, Some(sig)) => End::Signaled(sig),
                    (None, None) => End::Exited(-1),
                }
            }
            Err(e) => End::SpawnFailed(format!(
                "lost track of {} (pid {raw_pid}): {e}",
                quoted(program)
            )),
        };
        let killed_by = match attempt.end {
            End::Signaled(sig) => Some(sig),
            _ => None,
        };
        let failed = matches!(attempt.end, End::Exited(c) if c != 0) || killed_by.is_some();
        if let Some(mem) = &mem {
            let tail = if failed && matches!(mem, AttemptMemory::Rlimit(Some(_))) {
                attempt.stderr.tail(memory::STDERR_TAIL).unwrap_or_default()
            } else {
                Vec::new()
            };
            let verdict = mem.verdict(killed_by, &tail);
            if let Some(peak) = verdict.peak_kib {
                // The whole tree's, or the main process's if it was more
                // (a peak between two samples).
                attempt.max_rss_kib = attempt.max_rss_kib.max(peak);
            }
            if failed {
                attempt.memory = verdict.reason;
            }
        }
        if failed && attempt.memory.is_none() {
            attempt.memory = memory::likely_oom(killed_by, oom_at_start);
        }
        // Removes the cgroup, killing whatever is still in it.
        drop(mem);
        self.running.fetch_sub(1, Ordering::AcqRel);
        attempt.duration = t0.elapsed();
        attempt
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // No attempt runs any more (`run` borrows the supervisor): anything
        // carrying the token is a leftover that no attempt's sweep caught
        // (one that closed or redirected the job's output pipes).
        self.sweep_leftovers();
    }
}

/// The environment variable holding an attempt's number, unique within
/// its supervisor: with `JOBMILL_GUARD` it marks the attempt's processes.
pub const ID_VAR: &str = "JOBMILL_GUARD_ID";

/// `n` in decimal, written into `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A token unique to one supervisor: pid, time and a counter.
fn new_token() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos:x}-{n}", std::process::id())
}

/// The program name for messages, in backquotes, with control characters
/// escaped so that the message stays one printable line.
fn quoted(program: &OsStr) -> String {
    let mut out = String::from("`");
    for c in program.to_string_lossy().chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

/// How an attempt was stopped, if it was.
#[derive(Debug, Default, Clone, Copy)]
struct Stopped {
    timed_out: bool,
    terminated: bool,
}

/// Watching one running attempt until its main process has exited.
struct Watch<'a> {
    pid: Pid,
    timeout: Option<Duration>,
    grace: Duration,
    on_output: Option<OutputHook<'a>>,
    /// The attempt's cgroup, whose memory is sampled while it runs.
    cgroup: Option<&'a JobCgroup>,
}

/// The first interval between two samples of a job cgroup's memory; it
/// doubles up to [`SAMPLE_EVERY`], so short jobs are sampled early and long
/// ones cost ten reads of `memory.stat` a second.
const FIRST_SAMPLE: Duration = Duration::from_millis(5);

/// The longest interval between two samples of a job cgroup's memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One of the job's output pipes while it is open.
type Pipe<T> = Option<T>;

impl Watch<'_> {
    /// Reads the job's output until its main process exits, enforcing the
    /// timeout and `terminate_all`; then kills what is left of its process
    /// group and drains the pipes. Does not reap the main process.
    fn watch(
        &self,
        sup: &Supervisor,
        pipes: (Pipe<OwnedFd>, Pipe<OwnedFd>),
        attempt: &mut Attempt,
    ) -> (Stopped, Vec<OwnedFd>) {
        let (mut out, mut err) = pipes;
        let mut stopped = Stopped::default();
        let mut buf = ReadBuf::new();
        // The pidfd is opened only for a job that outlives its pipes or
        // [`LAZY_PIDFD`] (see there): most short jobs end with their pipes
        // at end of file and a `waitid`, with no pidfd at all. Without a
        // pidfd (`pidfd_open` unavailable), exit is found by polling
        // `waitid` every tick.
        let mut pidfd: Option<OwnedFd> = None;
        let mut pidfd_at = if sup.use_pidfd {
            Instant::now().checked_add(LAZY_PIDFD)
        } else {
            None
        };
        // A timeout too large to represent is no timeout.
        let mut term_at = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let mut kill_at: Option<Instant> = None;
        let mut stop_seen = false;
        let sampled = self.cgroup.filter(|cg| cg.needs_sampling());
        let mut sample_every = FIRST_SAMPLE;
        let mut sample_at = sampled.and_then(|_| Instant::now().checked_add(sample_every));

        loop {
            let mut wait = None;
            if pidfd.is_none() && out.is_none() && err.is_none() {
                // Both pipes at end of file: the main process is most
                // likely in its last microseconds of exiting (a process's
                // files are released before it becomes a zombie; a check
                // at once nearly always comes too early), or has exited:
                // a few yields let it finish. If not, it is waited for on
                // a pidfd.
                if (0..EXIT_YIELDS).any(|_| {
                    std::thread::yield_now();
                    self.exited_without_pidfd()
                }) {
                    break;
                }
                if pidfd_at.is_some() {
                    pidfd_at = None;
                    pidfd = pidfd_open(self.pid, PidfdFlags::empty()).ok();
                }
            }
            if term_at.is_some() || kill_at.is_some() || sample_at.is_some() || pidfd_at.is_some() {
                let now = Instant::now();
                if pidfd_at.is_some_and(|t| now >= t) {
                    pidfd_at = None;
                    pidfd = pidfd_open(self.pid, PidfdFlags::empty()).ok();
                }
                if let (Some(cg), Some(at)) = (sampled, sample_at) {
                    if now >= at {
                        cg.sample();
                        sample_every = (sample_every * 2).min(SAMPLE_EVERY);
                        sample_at = now.checked_add(sample_every);
                    }
                }
                if term_at.is_some_and(|t| now >= t) {
                    term_at = None;
                    stopped.timed_out = true;
                    self.stop_gently();
                    kill_at = earliest(kill_at, now.checked_add(self.grace));
                }
                if kill_at.is_some_and(|k| now >= k) {
                    kill_at = None;
                    self.signal(Signal::KILL);
                }
                wait = [term_at, kill_at, sample_at, pidfd_at]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|d| d.saturating_duration_since(now));
            }
            if pidfd.is_none() && pidfd_at.is_none() {
                wait = Some(wait.map_or(FALLBACK_TICK, |w| w.min(FALLBACK_TICK)));
            }
            let placeholder = &sup.stop;
            let mut fds = [
                poll_entry(out.as_ref(), placeholder),
                poll_entry(err.as_ref(), placeholder),
                poll_entry(pidfd.as_ref(), placeholder),
                PollFd::new(
                    &sup.stop,
                    if stop_seen {
                        PollFlags::empty()
                    } else {
                        PollFlags::IN
                    },
                ),
            ];
            let timeout = wait.and_then(|w| Timespec::try_from(w).ok());
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(_) => {
                    // Cannot wait properly (out of memory in the kernel):
                    // stop the job rather than spin or hang.
                    self.signal(Signal::KILL);
                    break;
                }
            }
            let ready = [
                !fds[0].revents().is_empty(),
                !fds[1].revents().is_empty(),
                !fds[2].revents().is_empty(),
                !fds[3].revents().is_empty(),
            ];
            let eof = [hung_up(&fds[0]), hung_up(&fds[1])];
            if eof[0]
                || ready[0] && !buf.read_once(out.as_ref(), &mut attempt.stdout, self.tee(false))
            {
                out = None;
            }
            if eof[1]
                || ready[1] && !buf.read_once(err.as_ref(), &mut attempt.stderr, self.tee(true))
            {
                err = None;
            }
            let exited = match &pidfd {
                Some(_) => ready[2],
                // Still within the pidfd's delay: exit is looked for once
                // both pipes are at end of file, at the top of the loop.
                None if pidfd_at.is_some() => false,
                None => self.exited_without_pidfd(),
            };
            if exited {
                // An attempt that ended by itself is not marked terminated,
                // even if `terminate_all` came in the same instant.
                break;
            }
            if ready[3] && !stop_seen {
                stop_seen = true;
                if !stopped.timed_out {
                    stopped.terminated = true;
                    self.stop_gently();
                    kill_at = earliest(kill_at, Instant::now().checked_add(self.grace));
                }
            }
        }

        // What the rest of the tree holds as the main process ends.
        if let Some(cg) = sampled {
            cg.sample();
        }
        // The main process has exited (and is not reaped yet, so its pid,
        // which is the group id, cannot be reused): kill whatever it left
        // running in its group, then take what is left in the pipes.
        // A pipe still open after this (not at end of file) is held by some
        // other process; it is returned, for the leftovers thread.
        self.signal(Signal::KILL);
        let drain_until = Instant::now() + DRAIN_LIMIT;
        while out.is_some() || err.is_some() {
            let placeholder = &sup.stop;
            let mut fds = [
                poll_entry(out.as_ref(), placeholder),
                poll_entry(err.as_ref(), placeholder),
            ];
            match poll(&mut fds, Some(&Timespec::default())) {
                Ok(0) => break,
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(_) => break,
            }
            let ready = [!fds[0].revents().is_empty(), !fds[1].revents().is_empty()];
            let eof = [hung_up(&fds[0]), hung_up(&fds[1])];
            if eof[0]
                || ready[0] && !buf.read_once(out.as_ref(), &mut attempt.stdout, self.tee(false))
            {
                out = None;
            }
            if eof[1]
                || ready[1] && !buf.read_once(err.as_ref(), &mut attempt.stderr, self.tee(true))
            {
                err = None;
            }
            if Instant::now() >= drain_until {
                break;
            }
        }
        (stopped, out.into_iter().chain(err).collect())
    }

    /// The hook for one stream (`stderr` false: stdout), if any.
    fn tee(&self, stderr: bool) -> Option<(OutputHook<'_>, bool)> {
        self.on_output.map(|h| (h, stderr))
    }

    /// SIGTERM to the job's process group, then SIGCONT so that a stopped
    /// job gets to handle it (KILL follows after the grace period anyway).
    fn stop_gently(&self) {
        self.signal(Signal::TERM);
        self.signal(Signal::CONT);
    }

    /// Sends `sig` to the job's process group. Errors (the group is gone)
    /// are of no interest.
    fn signal(&self, sig: Signal) {
        let _ = kill_process_group(self.pid, sig);
    }

    /// Whether the main process has exited, without reaping it.
    fn exited_without_pidfd(&self) -> bool {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        loop {
            match waitid(WaitId::Pid(self.pid), options) {
                Ok(status) => return status.is_some(),
                Err(Errno::INTR) => continue,
                // Not our child any more: nothing left to wait for.
                Err(_) => return true,
            }
        }
    }
}

/// Whether a pipe polled with `entry` is at end of file without a read:
/// hung up (no writer left) with nothing to read (a pipe with data left
/// reports `IN` too). Saves the `read` that would return 0.
fn hung_up(entry: &PollFd<'_>) -> bool {
    let revents = entry.revents();
    revents.contains(PollFlags::HUP) && !revents.contains(PollFlags::IN)
}

/// A poll entry watching `fd` for input, or an inert entry on
/// `placeholder` (an event fd polled for nothing reports nothing).
fn poll_entry<'a, F: AsFd>(fd: Option<&'a F>, placeholder: &'a OwnedFd) -> PollFd<'a> {
    match fd {
        Some(fd) => PollFd::new(fd, PollFlags::IN),
        None => PollFd::new(placeholder, PollFlags::empty()),
    }
}

/// The buffer reads from a job's pipes go through: [`READ_CHUNK`] bytes on
/// the stack, which is all small outputs ever use (no allocation). When a
/// read fills it, the stream is large: its pipe is enlarged to
/// [`BIG_CHUNK`] (one `fcntl`, failure ignored) and reads go through a heap
/// buffer of that size from then on.
struct ReadBuf {
    small: [MaybeUninit<u8>; READ_CHUNK],
    big: Vec<MaybeUninit<u8>>,
    /// Pipe descriptors already enlarged.
    boosted: [Option<i32>; 2],
}

impl ReadBuf {
    fn new() -> Self {
        Self {
            small: [MaybeUninit::uninit(); READ_CHUNK],
            big: Vec::new(),
            boosted: [None; 2],
        }
    }

    /// Reads once from a pipe that poll reported ready into `capture`, and
    /// hands what was read to `tee` (a hook and its stream). Returns false
    /// at end of file (or on an error, which ends the stream too).
    fn read_once<F: AsFd>(
        &mut self,
        fd: Option<&F>,
        capture: &mut Capture,
        tee: Option<(OutputHook<'_>, bool)>,
    ) -> bool {
        let Some(fd) = fd else { return false };
        let buf: &mut [MaybeUninit<u8>] = if self.big.is_empty() {
            &mut self.small
        } else {
            &mut self.big
        };
        let full = buf.len();
        let n = loop {
            match rustix::io::read(fd, &mut *buf) {
                Ok(([], _)) => return false,
                Ok((data, _)) => {
                    capture.append(data);
                    if let Some((hook, stderr)) = tee {
                        hook(stderr, data);
                    }
                    break data.len();
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return true,
                Err(_) => return false,
            }
        };
        if n == full {
            self.boost(fd);
        }
        true
    }

    /// Enlarges the pipe behind `fd` (once) and switches to the big buffer.
    fn boost<F: AsFd>(&mut self, fd: &F) {
        use std::os::fd::AsRawFd;
        let raw = fd.as_fd().as_raw_fd();
        if self.boosted.contains(&Some(raw)) {
            return;
        }
        if let Some(slot) = self.boosted.iter_mut().find(|b| b.is_none()) {
            *slot = Some(raw);
        }
        let _ = rustix::pipe::fcntl_setpipe_size(fd, BIG_CHUNK);
        if self.big.is_empty() {
            self.big = vec![MaybeUninit::uninit(); BIG_CHUNK];
        }
    }
}

/// The earlier of two deadlines, `None` being never.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    //! The `waitid` fallback used when no pidfd can be had; the pidfd path
    //! is covered by `tests/exec_supervisor.rs`.
    use super::*;
    use std::ffi::OsString;

    fn fallback_supervisor() -> Supervisor {
        let mut sup = Supervisor::new(None, SpillBudget::new(1 << 20)).unwrap();
        sup.use_pidfd = false;
        sup
    }

    fn run(sup: &Supervisor, script: &str, timeout: Option<Duration>) -> Attempt {
        let argv: Vec<OsString> = ["sh", "-c", script].iter().map(OsString::from).collect();
        sup.run(&AttemptSpec {
            argv: &argv,
            env: &[],
            timeout,
            grace: Duration::from_secs(5),
            on_output: None,
        })
    }

    #[test]
    fn without_pidfd_exit_and_output_are_reported() {
        let sup = fallback_supervisor();
        let mut a = run(&sup, "echo out; echo err >&2; exit 3", None);
        assert_eq!(a.end, End::Exited(3));
        assert_eq!(a.stdout.to_vec().unwrap(), b"out\n");
        assert_eq!(a.stderr.to_vec().unwrap(), b"err\n");
    }

    #[test]
    fn without_pidfd_a_job_leaving_a_background_child_ends() {
        // The background sleep holds the pipes: only exit detection by
        // `waitid` lets the attempt end, and the group kill stops the sleep.
        let sup = fallback_supervisor();
        let a = run(&sup, "sleep 100 & exit 0", None);
        assert_eq!(a.end, End::Exited(0));
    }

    #[test]
    fn without_pidfd_timeout_stops_the_job() {
        let sup = fallback_supervisor();
        let a = run(&sup, "exec sleep 100", Some(Duration::from_millis(100)));
        assert!(a.timed_out);
        assert_eq!(a.end, End::Signaled(libc::SIGTERM));
    }
}
