//! Process supervision: one attempt of a command, from spawn to reaping.
//!
//! ## The model
//!
//! - **Spawn.** One `clone(CLONE_VM | CLONE_VFORK)` on a stack reused by
//!   the thread, then `exec` ([`crate::sys::spawn`]): independent of the
//!   parent's size, with only the setup a job needs, and without the
//!   stack that `posix_spawnp` maps and unmaps for every child. The environment block is built once per supervisor (so
//!   jobs see jobmill's environment as it was when the supervisor was
//!   made); only the per-job variables are added per spawn. The program is
//!   looked up in `PATH`; arguments are passed as bytes, unchanged.
//! - **One process group per job** (`process_group(0)`): the job's
//!   grandchildren share its group, so a signal to the group reaches all of
//!   them, and the terminal's Ctrl-C (sent to jobmill's foreground group)
//!   does not reach jobs at all. stdin is `/dev/null`; stdout and stderr are
//!   two pipes, captured separately.
//! - **Waiting.** One thread per running attempt polls the two pipes and
//!   the supervisor's stop event, with the timeout as the poll deadline,
//!   and a pidfd of the main process once the job has run 5 ms or its
//!   pipes reached end of file before it exited. A short job usually needs
//!   none: its pipes hang up as it exits, and after a `sched_yield` (its
//!   files are released just before it becomes a zombie) one `waitid`
//!   finds it exited. Output is read as it comes, so a job writing more
//!   than a pipe holds never blocks.
//! - **Exit.** When the main process has exited (still unreaped, so its pid —
//!   the group id — cannot be reused), jobmill sends SIGKILL to the rest of
//!   its process group, then takes what is left in the pipes and reaps the
//!   main process with `wait4`, which also gives its peak memory. A job
//!   killed by a signal ends [`End::Signaled`].
//! - **Detached leftovers.** A process that left the job's group (`setsid`,
//!   a daemon) escapes that kill. Every job carries `JOBMILL_GUARD=<token>`
//!   (one token per supervisor) and `JOBMILL_GUARD_ID=<n>` (one number per
//!   attempt), which its descendants inherit; the attempt's sweep kills
//!   every live process whose environment holds both, and the groups they
//!   lead, never another attempt's (`exec/sweep.rs`). The sweep reads `/proc`
//!   (about 0.7 ms with 110 processes), so it runs only when the attempt's
//!   end is suspect: the attempt was stopped (timeout, `terminate_all`:
//!   swept at once), or an output pipe is still open after the group kill
//!   and the drain. Such a pipe is held by a group member still dying,
//!   another slot's child between spawn and `exec` (which holds a copy of
//!   every descriptor), or a detached process; the attempt returns at once
//!   and hands the pipe to a thread of the supervisor
//!   (`exec/leftovers.rs`), which sweeps the attempt's marks if the pipe
//!   is still held 20 ms later. A `true` that exits alone closes both
//!   pipes and costs nothing more.
//!   What this trigger misses: a detached process that holds neither pipe
//!   (`setsid cmd >/dev/null 2>&1 &`, a daemon that closes its
//!   descriptors) after a normal end. No cheap signal points to it: it is
//!   in no group of the job, not a child of jobmill, and the group kill's
//!   result is success as long as the unreaped main process is in the
//!   group. It is killed when the supervisor is dropped (a sweep for the
//!   token, every attempt being over), or by the guardian if jobmill is
//!   killed. A process started with a cleared environment (`env -i`)
//!   carries no marks and is never found.
//! - **Timeout.** SIGTERM to the whole group (followed by SIGCONT, so that a
//!   stopped job gets to handle it), SIGKILL to the group `grace` later if
//!   the main process is still there; the attempt is marked `timed_out`.
//! - **Interrupt.** [`Supervisor::terminate_all`] does the same to every
//!   running attempt (and to any started after it), marking them
//!   `terminated`: stopped by jobmill, not the job's fault.
//! - **jobmill dies.** The [`guardian`] process stops every registered job,
//!   and every process carrying the token. A guardian that dies is noticed
//!   (a pidfd, or a failed write) and replaced at once, with the live
//!   groups and the same token.
//! - **Output.** Each stream goes to a [`Capture`]: in memory while the
//!   run's [`SpillBudget`] allows, then spilled to the run's one unlinked
//!   temporary file, so output waiting to be printed is never held in
//!   memory without bound, and thousands of waiting outputs cost one file
//!   descriptor. Reads go through a 64 KiB stack buffer; a stream that fills
//!   it gets its pipe enlarged to 1 MiB and a 1 MiB buffer, so small jobs
//!   allocate nothing and large outputs move in few system calls.
//! - **Memory** (only with a memory option, [`Supervisor::with_memory`]):
//!   the attempt runs in a cgroup of its own ([`cgroup`]), joined by the
//!   child before `exec` (on the same spawn path), or under `RLIMIT_AS`
//!   where no cgroup can be made.
//!   While it runs, the watch loop also samples the cgroup's memory (5 ms,
//!   doubling to 100 ms); after reaping, the cgroup's counters say whether
//!   it died of memory and its tree's peak, and the cgroup is removed.
//!   Without a cgroup, a SIGKILL during which the kernel's OOM kill count
//!   rose is "likely out of memory" ([`memory`]).
//! - **Cost per attempt**, beyond the spawn and two pipes: one or
//!   two `poll`s, for a short job a `sched_yield` and a `waitid` (a longer
//!   one gets a `pidfd_open` instead), a read per stream that had output
//!   (a hung-up empty pipe is not read), one `kill` of the group, `wait4`,
//!   and with a guardian two 8-byte writes (under a lock that also keeps
//!   the set of live groups for a new guardian). On 2,000 `true 1` jobs at
//!   `-j2`, jobmill's own threads make about 19 system calls per job
//!   (the spawn itself 3 of them: `clone` and two `pthread_sigmask`), 23
//!   with the journal.
//!
//! A supervisor never installs signal handlers and never reaps other
//! children. It needs `SIGCHLD` not to be ignored (auto-reaping would take
//! the job's status away).

mod capture;
pub mod cgroup;
pub mod guardian;
mod leftovers;
pub mod memory;
mod supervisor;
mod sweep;

pub use capture::{Capture, SpillBudget};
pub use memory::MemoryOptions;
pub use supervisor::{Supervisor, DEFAULT_GUARDIAN_GRACE, ID_VAR};

use std::ffi::OsString;
use std::time::{Duration, SystemTime};

/// Called with each chunk of output as it is read from a running job:
/// `false` for its stdout, `true` for its stderr, then the bytes. The
/// chunk is also captured as usual. Used for `--line-buffer` and `-u`.
pub type OutputHook<'a> = &'a dyn Fn(bool, &[u8]);

/// What to run for one attempt.
#[derive(Clone, Copy)]
pub struct AttemptSpec<'a> {
    /// The program (`argv[0]`, looked up in jobmill's `PATH` unless it
    /// holds a `/`) and its arguments.
    pub argv: &'a [OsString],
    /// Extra environment variables for the job (e.g. `JOBMILL_SEQ`), on top
    /// of jobmill's own environment (as it was when the supervisor was
    /// made), replacing variables of the same name.
    pub env: &'a [(&'a str, OsString)],
    /// Stop the attempt after this long; `None` lets it run.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when stopping the attempt.
    pub grace: Duration,
    /// Sees every chunk of output as it is read; `None`: the output is only
    /// captured.
    pub on_output: Option<OutputHook<'a>>,
}

impl std::fmt::Debug for AttemptSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptSpec")
            .field("argv", &self.argv)
            .field("env", &self.env)
            .field("timeout", &self.timeout)
            .field("grace", &self.grace)
            .field("on_output", &self.on_output.is_some())
            .finish()
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The main process exited with this status code.
    Exited(i32),
    /// The main process was killed by this signal (see [`signal_name`]).
    Signaled(i32),
    /// The program could not be run (or, very rarely, its status was lost
    /// because something else reaped it). The message names the program.
    SpawnFailed(String),
}

impl End {
    /// Whether the attempt succeeded (exit status 0).
    pub fn is_success(&self) -> bool {
        matches!(self, End::Exited(0))
    }
}

/// The result of one attempt.
#[derive(Debug)]
pub struct Attempt {
    /// When the attempt started (wall clock).
    pub started: SystemTime,
    /// How long it ran, from spawn to reaping.
    pub duration: Duration,
    /// How it ended.
    pub end: End,
    /// Stopped by its timeout (TERM was sent), whatever `end` says: a job
    /// that handles TERM may still exit with status 0.
    pub timed_out: bool,
    /// Stopped by [`Supervisor::terminate_all`] (an interrupt): not the
    /// job's fault. Not set when the timeout had already stopped it.
    pub terminated: bool,
    /// Peak resident set size in KiB: of the main process (`ru_maxrss`),
    /// or with a memory option of the whole tree where its cgroup measured
    /// more (see [`memory`]).
    pub max_rss_kib: u64,
    /// Set when the attempt failed and memory is why
    /// ([`FailReason::OutOfMemory`](crate::job::FailReason::OutOfMemory) or
    /// [`FailReason::MemoryLimit`](crate::job::FailReason::MemoryLimit),
    /// see [`memory`]).
    pub memory: Option<crate::job::FailReason>,
    /// Everything the job wrote to its stdout.
    pub stdout: Capture,
    /// Everything the job wrote to its stderr.
    pub stderr: Capture,
}

impl Attempt {
    /// What this attempt means in the model: stopped by jobmill, timed out
    /// (whatever the status after the TERM), succeeded, exited with a code,
    /// killed by a signal, died of memory, or could not start; with its
    /// duration and peak RSS.
    pub fn outcome(&self) -> crate::outcome::Outcome {
        use crate::job::FailReason;
        use crate::outcome::{AttemptEnd, Outcome};
        let end = if self.terminated {
            AttemptEnd::Stopped
        } else if self.timed_out {
            AttemptEnd::Failed(FailReason::Timeout)
        } else if let Some(reason) = &self.memory {
            AttemptEnd::Failed(reason.clone())
        } else {
            match &self.end {
                End::Exited(0) => AttemptEnd::Succeeded,
                End::Exited(code) => AttemptEnd::Failed(FailReason::Exit { code: *code }),
                End::Signaled(signal) => AttemptEnd::Failed(FailReason::Signal { signal: *signal }),
                End::SpawnFailed(error) => AttemptEnd::Failed(FailReason::Spawn {
                    error: error.clone(),
                }),
            }
        };
        let spawned = !matches!(self.end, End::SpawnFailed(_));
        Outcome {
            end,
            started: self.started,
            duration: Some(self.duration),
            max_rss_kib: spawned.then_some(self.max_rss_kib),
            exit_code: match self.end {
                End::Exited(code) => Some(code),
                _ => None,
            },
        }
    }
}

pub use crate::job::signal_name;
