//! The job model: what a job is, how an attempt can fail, and the one state
//! machine every queue backend follows.
//!
//! This module knows nothing of processes, command lines or backends. It is
//! pure data plus [`JobState::apply`], the single place where a job's state
//! transitions are defined:
//!
//! ```text
//!            lease                complete
//!  Queued ──────────▶ Leased ───────────────▶ Done
//!    ▲                  │
//!    │ release          │ fail(reason)
//!    │ (unrun,          ├─ reason is "worker lost" ──▶ lost < max_lost? ── yes ──▶ Queued
//!    │  not counted)    │                                  │ no            (lost + 1)
//!    └──────────────────┤                                  ▼
//!                       │                                 Dead
//!                       ├─ reason is "oom" ──────────▶ oom < max_oom? ──── yes ──▶ Queued
//!                       │                                  │ no            (oom + 1)
//!                       │                                  ▼
//!                       │                                 Dead
//!                       ▼
//!     selected by --retry-on (all, without it)
//!     and counted attempts left? ── yes ──▶ Queued   (requeued, after the retry delay)
//!                       │
//!                       no
//!                       ▼
//!              reason is the job's own verdict? ── yes ──▶ Failed
//!                       │
//!                       no (signal, timeout, spawn error, memory limit)
//!                       ▼
//!                      Dead
//! ```
//!
//! An attempt is counted when a job is leased. `release` returns a leased job
//! that was never started (for example after the first Ctrl-C) and gives the
//! attempt back.
//!
//! **The lost-worker rule.** A job is *lost* when whoever held it vanished
//! without a verdict: a remote worker whose lease expired, or a long-lived
//! worker that died while holding it. A lost attempt is recorded (it is in
//! `attempts`) but does not count against the retries of
//! [`RetryPolicy::max_attempts`], because the job did not fail; instead
//! [`RetryPolicy::max_lost`] bounds how often a job may be lost, so a job
//! that kills every worker still ends [`JobState::Dead`] with the cause
//! "worker lost". A process-per-job attempt killed by a signal is the job's
//! own death ([`FailReason::Signal`]) and counts against the retries.
//!
//! **The out-of-memory rule.** An attempt killed for memory that was not its
//! own limit ([`FailReason::OutOfMemory`]) is the same kind of non-fault: it
//! is recorded, requeued without counting against the retries, and bounded
//! by [`RetryPolicy::max_oom`] (`--max-oom`, default 3); the OOM kill after
//! that makes the job [`JobState::Dead`] with the cause "oom". (The engine
//! then runs fewer jobs beside it: see `engine::throttle`.) An attempt over
//! its *own* limit ([`FailReason::MemoryLimit`]) is an ordinary failure.
//!
//! **Which failures are retried.** Without `--retry-on`, every counted
//! failure is retried while attempts are left. [`RetryOn`] narrows that to
//! chosen exit codes, signals and timeouts; a failure it does not select
//! ends the job at once (Failed for a verdict, Dead otherwise), whatever
//! attempts are left. Lost workers and OOM kills follow their own bounds
//! regardless.
//!
//! **Retry delays.** [`RetryPolicy::retry_delay`] gives how long a retried
//! job waits before it may be leased again: the n-th retry waits
//! `min(D × F^(n-1), max)`, times a jitter factor drawn uniformly from
//! [0.8, 1.2] (±20%), from a hash of the job and the attempt (so it is
//! reproducible, and different jobs that fail together spread out). Only
//! retries counted against `--retries` wait; lost and OOM requeues do not.
//! The queue holds the waiting job (it holds no slot).

use std::fmt;

use bytes::Bytes;

/// Identifies a job within one queue. Unique for the queue's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

/// Identifies a consumer of a queue: a slot of `jobmill run`, a long-lived
/// worker process, or a remote worker. A lease belongs to exactly one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {}", self.0)
    }
}

/// A job to be put on a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Sequence number in input order, from 1. `{#}` expands to it.
    pub seq: u64,
    /// The input bytes, passed to the job unchanged (not necessarily UTF-8).
    pub payload: Bytes,
    /// Attempts already made before this put: 0 for a new job, more when a
    /// resumed run puts back a job that had been started.
    pub attempts: u32,
    /// How many of those attempts were lost (see the lost-worker rule).
    pub lost: u32,
    /// How many of those attempts were killed out of memory (see the
    /// out-of-memory rule).
    pub oom: u32,
}

impl NewJob {
    /// A fresh job with no attempts made.
    pub fn new(seq: u64, payload: impl Into<Bytes>) -> Self {
        NewJob {
            seq,
            payload: payload.into(),
            attempts: 0,
            lost: 0,
            oom: 0,
        }
    }
}

/// A job as handed out by a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The queue's id for the job.
    pub id: JobId,
    /// Sequence number in input order, from 1.
    pub seq: u64,
    /// The input bytes, unchanged. Cloning is cheap (reference counted).
    pub payload: Bytes,
    /// Attempts counted so far, including the current one while leased.
    pub attempts: u32,
    /// How many of `attempts` were lost (see the lost-worker rule).
    pub lost: u32,
    /// How many of `attempts` were killed out of memory (see the
    /// out-of-memory rule).
    pub oom: u32,
}

impl Job {
    /// The state of this job as a queue hands it out: leased by `worker`,
    /// running attempt `attempts`.
    pub fn leased_by(&self, worker: WorkerId) -> JobState {
        JobState::Leased {
            worker,
            attempt: self.attempts,
            lost: self.lost,
            oom: self.oom,
        }
    }
}

/// Why one attempt of a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// The command ran and exited with a non-zero code.
    Exit {
        /// The exit code, 1..=255.
        code: i32,
    },
    /// The worker reported a failure for the job (long-lived workers).
    Reported {
        /// The worker's message.
        message: String,
    },
    /// The process was killed by a signal it did not ask for.
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// The attempt ran past its timeout and was stopped.
    Timeout,
    /// The worker holding the lease died or stopped heartbeating.
    WorkerLost {
        /// What was observed, e.g. "worker 3 exited with signal SIGKILL".
        detail: String,
    },
    /// The command could not be started.
    Spawn {
        /// The operating system's error, with the program named.
        error: String,
    },
    /// The attempt was killed for memory that was not its own limit: by the
    /// kernel's OOM killer, or by the memory cgroup of the run (or of the
    /// machine). Such an attempt is not the job's fault; it follows
    /// `--max-oom`, not the retries.
    OutOfMemory {
        /// `true` when it was inferred rather than read from a cgroup: a
        /// SIGKILL during which the kernel's `oom_kill` counter rose.
        likely: bool,
    },
    /// The job was refused before it ran: a worker holding a signing key
    /// found its task unsigned or wrongly signed (see [`crate::sign`]).
    /// Never retried: the job is dead at once.
    Refused {
        /// Why, e.g. "the task is not signed".
        why: String,
    },
    /// The attempt went over its own memory limit (`--mem-limit`).
    MemoryLimit {
        /// The limit, in bytes.
        limit: u64,
        /// `true` when the limit was RLIMIT_AS, under which the job only
        /// sees allocation failures, so the cause is inferred.
        likely: bool,
    },
}

impl FailReason {
    /// Whether this failure is the job's own verdict (it ran to the end and
    /// said "failed"), as opposed to the job being stopped before it could
    /// give one. After the last attempt a verdict makes the job
    /// [`JobState::Failed`]; anything else makes it [`JobState::Dead`].
    pub fn is_verdict(&self) -> bool {
        matches!(self, FailReason::Exit { .. } | FailReason::Reported { .. })
    }

    /// Whether the attempt was lost: its holder vanished without a verdict.
    /// Lost attempts follow [`RetryPolicy::max_lost`], not the retries.
    pub fn is_lost(&self) -> bool {
        matches!(self, FailReason::WorkerLost { .. })
    }

    /// A short, stable name of the cause, as stored in journals and shown by
    /// `status`: `exit`, `signal`, `timeout`, `reported`, `lost`, `spawn`,
    /// `oom`, `memory-limit`, `refused`.
    pub fn cause(&self) -> &'static str {
        match self {
            FailReason::Exit { .. } => "exit",
            FailReason::Reported { .. } => "reported",
            FailReason::Signal { .. } => "signal",
            FailReason::Timeout => "timeout",
            FailReason::WorkerLost { .. } => "lost",
            FailReason::Spawn { .. } => "spawn",
            FailReason::OutOfMemory { .. } => "oom",
            FailReason::MemoryLimit { .. } => "memory-limit",
            FailReason::Refused { .. } => "refused",
        }
    }

    /// Whether the attempt was killed for memory that was not its own limit
    /// ([`FailReason::OutOfMemory`]). Such attempts follow
    /// `--max-oom`, not the retries.
    pub fn is_oom(&self) -> bool {
        matches!(self, FailReason::OutOfMemory { .. })
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::Exit { code } => write!(f, "exited with code {code}"),
            FailReason::Reported { message } => write!(f, "worker reported failure: {message}"),
            FailReason::Signal { signal } => {
                write!(f, "killed by signal {}", signal_name(*signal))
            }
            FailReason::Timeout => write!(f, "timed out"),
            FailReason::WorkerLost { detail } => write!(f, "worker lost: {detail}"),
            FailReason::Spawn { error } => write!(f, "could not start: {error}"),
            FailReason::Refused { why } => write!(f, "refused: {why}"),
            FailReason::OutOfMemory { likely: false } => {
                write!(f, "killed by the kernel's OOM killer (out of memory)")
            }
            FailReason::OutOfMemory { likely: true } => write!(
                f,
                "likely out of memory (SIGKILL while the kernel's OOM kill count rose)"
            ),
            FailReason::MemoryLimit { limit, likely } => {
                let mib = *limit as f64 / (1024.0 * 1024.0);
                if *likely {
                    write!(
                        f,
                        "likely over its memory limit of {mib:.0} MiB (RLIMIT_AS: an allocation failed)"
                    )
                } else {
                    write!(f, "over its memory limit of {mib:.0} MiB")
                }
            }
        }
    }
}

/// The name of a signal number, such as `SIGKILL` (Linux numbering), or
/// `SIGRTMIN+N` for a real-time signal, or `signal N` when unknown. The one
/// place signal numbers are named.
pub fn signal_name(signal: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    // glibc reserves 32 and 33; SIGRTMIN is 34 and SIGRTMAX 64 on Linux.
    const RTMIN: i32 = 34;
    const RTMAX: i32 = 64;
    match usize::try_from(signal).ok().and_then(|i| NAMES.get(i)) {
        Some(name) if !name.is_empty() => (*name).to_owned(),
        _ if (RTMIN..=RTMAX).contains(&signal) => format!("SIGRTMIN+{}", signal - RTMIN),
        _ => format!("signal {signal}"),
    }
}

/// Which counted failures `--retries` re-runs (`--retry-on`): any of
/// chosen exit codes, death by a signal, a timeout. [`RetryOn::ALL`] (the
/// default, no `--retry-on`) re-runs every failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// Every failure is selected (no `--retry-on`).
    all: bool,
    /// Exit codes 0..=255, one bit each.
    exit: [u64; 4],
    /// [`FailReason::Signal`] is selected.
    signal: bool,
    /// [`FailReason::Timeout`] is selected.
    timeout: bool,
}

/// A `--retry-on` list that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --retry-on {item:?}: {why} (expected a comma-separated list of exit=CODES, signal, timeout; CODES like 3,4,10-20)")]
pub struct RetryOnError {
    /// The part of the list that was refused.
    pub item: String,
    /// Why.
    pub why: &'static str,
}

impl RetryOn {
    /// Every failure is retried (the default).
    pub const ALL: RetryOn = RetryOn {
        all: true,
        exit: [0; 4],
        signal: false,
        timeout: false,
    };

    /// Nothing is retried (a starting point for building a list).
    pub const NONE: RetryOn = RetryOn {
        all: false,
        exit: [0; 4],
        signal: false,
        timeout: false,
    };

    /// Whether every failure is selected (no `--retry-on`).
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// The same selection, also selecting exit `code`.
    pub fn with_exit(mut self, code: u8) -> RetryOn {
        self.exit[usize::from(code / 64)] |= 1 << (code % 64);
        self
    }

    /// Whether a counted failure for `reason` is re-run.
    pub fn selects(&self, reason: &FailReason) -> bool {
        if self.all {
            return true;
        }
        match reason {
            FailReason::Exit { code } => u8::try_from(*code)
                .is_ok_and(|c| self.exit[usize::from(c / 64)] & (1 << (c % 64)) != 0),
            FailReason::Signal { .. } => self.signal,
            FailReason::Timeout => self.timeout,
            _ => false,
        }
    }

    /// Parses a `--retry-on` list: comma-separated `exit=CODES`, `signal`,
    /// `timeout`, where CODES are codes and ranges (`exit=3,4,10-20`: the
    /// items after `exit=` that are numbers or ranges belong to it).
    ///
    /// # Errors
    ///
    /// [`RetryOnError`] naming the item refused: an unknown word, a code
    /// outside 1..=255, a backward range, or an empty list.
    pub fn parse(text: &str) -> Result<RetryOn, RetryOnError> {
        let mut on = RetryOn::NONE;
        let mut in_exit = false;
        let mut any = false;
        for raw in text.split(',') {
            let item = raw.trim();
            let bad = |why| RetryOnError {
                item: item.to_string(),
                why,
            };
            let codes = if let Some(rest) = item.strip_prefix("exit=") {
                in_exit = true;
                rest
            } else if item == "signal" {
                in_exit = false;
                on.signal = true;
                any = true;
                continue;
            } else if item == "timeout" {
                in_exit = false;
                on.timeout = true;
                any = true;
                continue;
            } else if in_exit && item.starts_with(|c: char| c.is_ascii_digit()) {
                item
            } else {
                return Err(bad("unknown cause"));
            };
            let code = |t: &str| -> Result<u8, RetryOnError> {
                match t.trim().parse::<u16>() {
                    Ok(n @ 1..=255) => Ok(n as u8),
                    _ => Err(bad("an exit code is a number from 1 to 255")),
                }
            };
            let (lo, hi) = match codes.split_once('-') {
                Some((a, b)) => (code(a)?, code(b)?),
                None => {
                    let c = code(codes)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(bad("a range goes from low to high"));
            }
            for c in lo..=hi {
                on = on.with_exit(c);
            }
            any = true;
        }
        if !any {
            return Err(RetryOnError {
                item: text.to_string(),
                why: "empty list",
            });
        }
        Ok(on)
    }
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn::ALL
    }
}

/// How long a retried job waits before it runs again (`--retry-delay`,
/// `--retry-backoff`, `--retry-max-delay`). See [`RetryPolicy::retry_delay`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first retry's delay; zero: no delay (the default).
    pub delay: std::time::Duration,
    /// Each later retry waits this many times longer (default 2).
    pub factor: f64,
    /// No delay is longer than this, before jitter (default 10 minutes).
    pub max: std::time::Duration,
}

/// The default of `--retry-backoff`.
pub const DEFAULT_RETRY_BACKOFF: f64 = 2.0;

/// The default of `--retry-max-delay`.
pub const DEFAULT_RETRY_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(600);

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: std::time::Duration::ZERO,
            factor: DEFAULT_RETRY_BACKOFF,
            max: DEFAULT_RETRY_MAX_DELAY,
        }
    }
}

/// How many attempts a job gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Counted attempts allowed, at least 1. `--retries N` means `N + 1`.
    /// Lost and OOM-killed attempts are not counted here.
    pub max_attempts: u32,
    /// How many times a job may be lost and run again (`--max-lost`); the
    /// loss after that makes it [`JobState::Dead`].
    pub max_lost: u32,
    /// How many times a job may be killed out of memory and run again
    /// (`--max-oom`); the OOM kill after that makes it [`JobState::Dead`].
    pub max_oom: u32,
    /// Which counted failures are re-run (`--retry-on`).
    pub retry_on: RetryOn,
    /// How long a retried job waits.
    pub backoff: Backoff,
}

/// The default of `--max-lost`.
pub const DEFAULT_MAX_LOST: u32 = 3;

/// The default of `--max-oom`.
pub const DEFAULT_MAX_OOM: u32 = 3;

impl RetryPolicy {
    /// A policy allowing `retries` re-runs after the first attempt, and the
    /// default [`DEFAULT_MAX_LOST`] losses and [`DEFAULT_MAX_OOM`] OOM
    /// kills; every failure retried at once.
    pub fn with_retries(retries: u32) -> Self {
        RetryPolicy {
            max_attempts: retries.saturating_add(1),
            max_lost: DEFAULT_MAX_LOST,
            max_oom: DEFAULT_MAX_OOM,
            retry_on: RetryOn::ALL,
            backoff: Backoff::default(),
        }
    }

    /// The same policy with `max_attempts` counted attempts allowed.
    pub fn with_max_attempts(self, max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..self
        }
    }

    /// The same policy with `max_lost` losses allowed.
    pub fn max_lost(self, max_lost: u32) -> Self {
        RetryPolicy { max_lost, ..self }
    }

    /// The same policy with `max_oom` OOM kills allowed.
    pub fn max_oom(self, max_oom: u32) -> Self {
        RetryPolicy { max_oom, ..self }
    }

    /// The same policy re-running only the failures `retry_on` selects.
    pub fn retry_on(self, retry_on: RetryOn) -> Self {
        RetryPolicy { retry_on, ..self }
    }

    /// The same policy with retry delays `backoff`.
    pub fn backoff(self, backoff: Backoff) -> Self {
        RetryPolicy { backoff, ..self }
    }

    /// How long the `retry`-th retry (from 1) waits before it may run:
    /// `min(delay × factor^(retry-1), max)`, times a jitter factor uniform
    /// in [0.8, 1.2] drawn from a hash of `salt` (the queue passes the job
    /// and its attempt). Zero when no delay is set.
    pub fn retry_delay(&self, retry: u32, salt: u64) -> std::time::Duration {
        let b = &self.backoff;
        if b.delay.is_zero() || retry == 0 {
            return std::time::Duration::ZERO;
        }
        let factor = if b.factor.is_finite() && b.factor >= 1.0 {
            b.factor
        } else {
            1.0
        };
        let exp = i32::try_from(retry - 1).unwrap_or(i32::MAX);
        let base = (b.delay.as_secs_f64() * factor.powi(exp)).min(b.max.as_secs_f64());
        // splitmix64: a well-spread hash of the salt, as a uniform [0, 1).
        let mut z = salt.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        let jitter = 0.8 + 0.4 * unit;
        std::time::Duration::try_from_secs_f64(base * jitter).unwrap_or(b.max)
    }

    /// How long a job that just went from `leased` (attempt `attempt`) to
    /// `next` after failing for `reason` waits before it may be leased
    /// again: the retry delay for a counted retry, zero for anything else
    /// (a loss, an OOM kill, a final state). `salt` spreads the jitter.
    pub fn requeue_delay(
        &self,
        reason: &FailReason,
        next: &JobState,
        salt: u64,
    ) -> std::time::Duration {
        match next {
            JobState::Queued {
                attempts,
                lost,
                oom,
                ..
            } if !reason.is_lost() && !reason.is_oom() => {
                let counted = attempts.saturating_sub(*lost).saturating_sub(*oom);
                self.retry_delay(counted, salt ^ u64::from(*attempts).rotate_left(32))
            }
            _ => std::time::Duration::ZERO,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::with_retries(0)
    }
}

/// The state of one job. Variants carry the data that state needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting to be leased. `attempts` were made before (a requeued job).
    Queued {
        /// Attempts made so far.
        attempts: u32,
        /// How many of them were lost.
        lost: u32,
        /// How many of them were killed out of memory.
        oom: u32,
    },
    /// Held by a worker, running attempt number `attempt` (from 1).
    Leased {
        /// The worker holding the lease.
        worker: WorkerId,
        /// The attempt now running, from 1.
        attempt: u32,
        /// How many earlier attempts were lost.
        lost: u32,
        /// How many earlier attempts were killed out of memory.
        oom: u32,
    },
    /// Finished successfully. Final.
    Done {
        /// Attempts it took.
        attempts: u32,
    },
    /// Ran out of attempts; the last one ended with the job's own failure
    /// verdict (a non-zero exit, or a failure reported by a worker). Final.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        reason: FailReason,
    },
    /// Ran out of attempts (or its failure was not one `--retry-on`
    /// selects); the last one never reached a verdict (killed by a signal,
    /// timed out, worker lost, out of memory, could not start). Final.
    Dead {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        reason: FailReason,
    },
}

/// An event that moves a job from one state to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// A worker takes the job; an attempt is counted.
    Lease {
        /// The worker taking it.
        worker: WorkerId,
    },
    /// The leased attempt succeeded.
    Complete,
    /// The leased attempt failed.
    Fail {
        /// Why.
        reason: FailReason,
    },
    /// The job was leased but never started; it goes back unchanged and the
    /// attempt is not counted.
    Release,
}

/// A transition that the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition {transition:?} from state {from:?}")]
pub struct InvalidTransition {
    /// The state the job was in.
    pub from: JobState,
    /// The transition that was refused.
    pub transition: Transition,
}

impl JobState {
    /// Whether the job has reached a final state (done, failed or dead).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobState::Done { .. } | JobState::Failed { .. } | JobState::Dead { .. }
        )
    }

    /// Short lowercase name of the state, as stored in journals.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued { .. } => "queued",
            JobState::Leased { .. } => "leased",
            JobState::Done { .. } => "done",
            JobState::Failed { .. } => "failed",
            JobState::Dead { .. } => "dead",
        }
    }

    /// Applies `transition` under `policy`, returning the next state.
    ///
    /// This is the only definition of the job life cycle; every backend
    /// calls it, so they cannot disagree.
    ///
    /// # Errors
    ///
    /// [`InvalidTransition`] when the transition is not allowed from this
    /// state: leasing a job that is not queued, or completing, failing or
    /// releasing a job that is not leased. Final states accept nothing.
    pub fn apply(
        &self,
        transition: Transition,
        policy: RetryPolicy,
    ) -> Result<JobState, InvalidTransition> {
        let next = match (self, &transition) {
            (
                JobState::Queued {
                    attempts,
                    lost,
                    oom,
                },
                Transition::Lease { worker },
            ) => JobState::Leased {
                worker: *worker,
                attempt: attempts + 1,
                lost: *lost,
                oom: *oom,
            },
            (JobState::Leased { attempt, .. }, Transition::Complete) => {
                JobState::Done { attempts: *attempt }
            }
            (
                JobState::Leased {
                    attempt, lost, oom, ..
                },
                Transition::Release,
            ) => JobState::Queued {
                attempts: attempt - 1,
                lost: *lost,
                oom: *oom,
            },
            // A refused task never runs: dead at once, whatever is left.
            (JobState::Leased { attempt, .. }, Transition::Fail { reason })
                if matches!(reason, FailReason::Refused { .. }) =>
            {
                JobState::Dead {
                    attempts: *attempt,
                    reason: reason.clone(),
                }
            }
            // Lost and OOM-killed attempts do not count against the
            // retries; each kind has its own bound.
            (
                JobState::Leased {
                    attempt, lost, oom, ..
                },
                Transition::Fail { reason },
            ) if reason.is_lost() || reason.is_oom() => {
                let (so_far, bound) = if reason.is_lost() {
                    (*lost, policy.max_lost)
                } else {
                    (*oom, policy.max_oom)
                };
                if so_far < bound {
                    JobState::Queued {
                        attempts: *attempt,
                        lost: lost + u32::from(reason.is_lost()),
                        oom: oom + u32::from(reason.is_oom()),
                    }
                } else {
                    JobState::Dead {
                        attempts: *attempt,
                        reason: reason.clone(),
                    }
                }
            }
            (
                JobState::Leased {
                    attempt, lost, oom, ..
                },
                Transition::Fail { reason },
            ) => {
                // Lost and OOM-killed attempts do not count against the
                // retries.
                let counted = attempt.saturating_sub(*lost).saturating_sub(*oom);
                if counted < policy.max_attempts && policy.retry_on.selects(reason) {
                    JobState::Queued {
                        attempts: *attempt,
                        lost: *lost,
                        oom: *oom,
                    }
                } else if reason.is_verdict() {
                    JobState::Failed {
                        attempts: *attempt,
                        reason: reason.clone(),
                    }
                } else {
                    JobState::Dead {
                        attempts: *attempt,
                        reason: reason.clone(),
                    }
                }
            }
            _ => {
                return Err(InvalidTransition {
                    from: self.clone(),
                    transition,
                })
            }
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: WorkerId = WorkerId(7);

    fn leased(attempt: u32) -> JobState {
        JobState::Leased {
            worker: W,
            attempt,
            lost: 0,
            oom: 0,
        }
    }

    #[test]
    fn lease_counts_an_attempt() {
        let s = JobState::Queued {
            attempts: 2,
            lost: 0,
            oom: 0,
        };
        let next = s
            .apply(Transition::Lease { worker: W }, RetryPolicy::default())
            .unwrap();
        assert_eq!(next, leased(3));
    }

    #[test]
    fn refused_task_is_dead_at_once_with_retries_left() {
        let reason = FailReason::Refused {
            why: "the task is not signed".into(),
        };
        let next = leased(1)
            .apply(
                Transition::Fail {
                    reason: reason.clone(),
                },
                RetryPolicy::with_retries(5),
            )
            .unwrap();
        assert_eq!(
            next,
            JobState::Dead {
                attempts: 1,
                reason: reason.clone()
            }
        );
        assert_eq!(reason.cause(), "refused");
        assert_eq!(reason.to_string(), "refused: the task is not signed");
    }

    #[test]
    fn fail_with_attempts_left_requeues_with_attempt_kept() {
        let next = leased(1)
            .apply(
                Transition::Fail {
                    reason: FailReason::Exit { code: 3 },
                },
                RetryPolicy::with_retries(1),
            )
            .unwrap();
        assert_eq!(
            next,
            JobState::Queued {
                attempts: 1,
                lost: 0,
                oom: 0
            }
        );
    }

    #[test]
    fn last_attempt_exit_failure_is_failed_and_keeps_reason() {
        let next = leased(2)
            .apply(
                Transition::Fail {
                    reason: FailReason::Exit { code: 3 },
                },
                RetryPolicy::with_retries(1),
            )
            .unwrap();
        assert_eq!(
            next,
            JobState::Failed {
                attempts: 2,
                reason: FailReason::Exit { code: 3 }
            }
        );
    }

    #[test]
    fn lost_attempt_is_requeued_without_counting_against_retries() {
        let reason = FailReason::WorkerLost {
            detail: "killed".into(),
        };
        // No retries at all, yet a lost job runs again.
        let next = leased(1)
            .apply(
                Transition::Fail {
                    reason: reason.clone(),
                },
                RetryPolicy::with_retries(0),
            )
            .unwrap();
        assert_eq!(
            next,
            JobState::Queued {
                attempts: 1,
                lost: 1,
                oom: 0
            }
        );
        // Its next, real failure is judged on counted attempts only: with
        // no retries, it is final at once.
        let leased_again = next
            .apply(
                Transition::Lease { worker: W },
                RetryPolicy::with_retries(0),
            )
            .unwrap();
        let end = leased_again
            .apply(
                Transition::Fail {
                    reason: FailReason::Exit { code: 2 },
                },
                RetryPolicy::with_retries(0),
            )
            .unwrap();
        assert_eq!(
            end,
            JobState::Failed {
                attempts: 2,
                reason: FailReason::Exit { code: 2 }
            }
        );
    }

    #[test]
    fn loss_past_max_lost_is_dead_with_the_cause_lost() {
        let reason = FailReason::WorkerLost {
            detail: "killed".into(),
        };
        let policy = RetryPolicy::with_retries(5).max_lost(2);
        let mut state = JobState::Queued {
            attempts: 0,
            lost: 0,
            oom: 0,
        };
        let mut losses = 0;
        loop {
            state = state
                .apply(Transition::Lease { worker: W }, policy)
                .unwrap();
            state = state
                .apply(
                    Transition::Fail {
                        reason: reason.clone(),
                    },
                    policy,
                )
                .unwrap();
            losses += 1;
            if state.is_final() {
                break;
            }
        }
        // Two losses are forgiven, the third is final.
        assert_eq!(losses, 3);
        assert_eq!(
            state,
            JobState::Dead {
                attempts: 3,
                reason
            }
        );
    }

    #[test]
    fn max_lost_zero_makes_the_first_loss_final() {
        let reason = FailReason::WorkerLost {
            detail: "segfault".into(),
        };
        let next = leased(1)
            .apply(
                Transition::Fail {
                    reason: reason.clone(),
                },
                RetryPolicy::with_retries(3).max_lost(0),
            )
            .unwrap();
        assert_eq!(
            next,
            JobState::Dead {
                attempts: 1,
                reason
            }
        );
    }

    #[test]
    fn release_keeps_the_lost_count() {
        let s = JobState::Leased {
            worker: W,
            attempt: 3,
            lost: 2,
            oom: 0,
        };
        assert_eq!(
            s.apply(Transition::Release, RetryPolicy::default())
                .unwrap(),
            JobState::Queued {
                attempts: 2,
                lost: 2,
                oom: 0
            }
        );
    }

    #[test]
    fn release_gives_the_attempt_back() {
        let next = leased(1)
            .apply(Transition::Release, RetryPolicy::default())
            .unwrap();
        assert_eq!(
            next,
            JobState::Queued {
                attempts: 0,
                lost: 0,
                oom: 0
            }
        );
    }

    #[test]
    fn final_states_accept_no_transition() {
        let finals = [
            JobState::Done { attempts: 1 },
            JobState::Failed {
                attempts: 1,
                reason: FailReason::Exit { code: 1 },
            },
            JobState::Dead {
                attempts: 1,
                reason: FailReason::Timeout,
            },
        ];
        let transitions = [
            Transition::Lease { worker: W },
            Transition::Complete,
            Transition::Release,
            Transition::Fail {
                reason: FailReason::Timeout,
            },
        ];
        for s in &finals {
            assert!(s.is_final());
            for t in &transitions {
                assert!(s.apply(t.clone(), RetryPolicy::default()).is_err());
            }
        }
    }

    #[test]
    fn queued_cannot_complete_or_fail() {
        let s = JobState::Queued {
            attempts: 0,
            lost: 0,
            oom: 0,
        };
        assert!(s
            .apply(Transition::Complete, RetryPolicy::default())
            .is_err());
        assert!(s
            .apply(Transition::Release, RetryPolicy::default())
            .is_err());
    }

    fn fail(state: JobState, reason: FailReason, policy: RetryPolicy) -> JobState {
        state.apply(Transition::Fail { reason }, policy).unwrap()
    }

    fn lease(state: JobState, policy: RetryPolicy) -> JobState {
        state
            .apply(Transition::Lease { worker: W }, policy)
            .unwrap()
    }

    const OOM: FailReason = FailReason::OutOfMemory { likely: false };

    #[test]
    fn oom_kill_is_requeued_without_counting_against_retries() {
        let policy = RetryPolicy::with_retries(0);
        let next = fail(leased(1), OOM, policy);
        assert_eq!(
            next,
            JobState::Queued {
                attempts: 1,
                lost: 0,
                oom: 1
            }
        );
        // Its next, real failure is judged on counted attempts only: with
        // no retries, it is final at once.
        let end = fail(lease(next, policy), FailReason::Exit { code: 2 }, policy);
        assert_eq!(
            end,
            JobState::Failed {
                attempts: 2,
                reason: FailReason::Exit { code: 2 }
            }
        );
    }

    #[test]
    fn oom_past_max_oom_is_dead_with_the_cause_oom() {
        let policy = RetryPolicy::with_retries(5).max_oom(2);
        let mut state = JobState::Queued {
            attempts: 0,
            lost: 0,
            oom: 0,
        };
        let mut kills = 0;
        while !state.is_final() {
            state = fail(lease(state, policy), OOM, policy);
            kills += 1;
        }
        assert_eq!(kills, 3, "two OOM kills are forgiven, the third is final");
        assert_eq!(
            state,
            JobState::Dead {
                attempts: 3,
                reason: OOM
            }
        );
        assert!(state.apply(Transition::Release, policy).is_err());
    }

    #[test]
    fn oom_and_lost_counts_are_kept_apart_and_survive_release() {
        let policy = RetryPolicy::with_retries(0).max_oom(1).max_lost(1);
        let lost = FailReason::WorkerLost {
            detail: "gone".into(),
        };
        let s = fail(leased(1), OOM, policy);
        let s = fail(lease(s, policy), lost.clone(), policy);
        assert_eq!(
            s,
            JobState::Queued {
                attempts: 2,
                lost: 1,
                oom: 1
            }
        );
        let held = lease(s, policy);
        assert_eq!(
            held.apply(Transition::Release, policy).unwrap(),
            JobState::Queued {
                attempts: 2,
                lost: 1,
                oom: 1
            }
        );
        // The second OOM kill is past --max-oom 1, whatever the losses.
        assert!(
            matches!(fail(held, OOM, policy), JobState::Dead { reason, .. } if reason.is_oom())
        );
    }

    #[test]
    fn memory_limit_is_an_ordinary_counted_failure() {
        let policy = RetryPolicy::with_retries(1);
        let over = FailReason::MemoryLimit {
            limit: 1 << 20,
            likely: false,
        };
        let s = fail(leased(1), over.clone(), policy);
        assert_eq!(
            s,
            JobState::Queued {
                attempts: 1,
                lost: 0,
                oom: 0
            }
        );
        assert!(matches!(
            fail(lease(s, policy), over, policy),
            JobState::Dead { .. }
        ));
    }

    #[test]
    fn retry_on_retries_only_the_selected_failures() {
        let on = RetryOn::parse("exit=3,10-12,signal").unwrap();
        let policy = RetryPolicy::with_retries(2).retry_on(on);
        for code in [3, 10, 11, 12] {
            assert!(
                matches!(
                    fail(leased(1), FailReason::Exit { code }, policy),
                    JobState::Queued { .. }
                ),
                "exit {code}"
            );
        }
        for code in [1, 4, 9, 13, 255] {
            assert_eq!(
                fail(leased(1), FailReason::Exit { code }, policy),
                JobState::Failed {
                    attempts: 1,
                    reason: FailReason::Exit { code }
                },
                "exit {code} is not selected: failed at once"
            );
        }
        assert!(matches!(
            fail(leased(1), FailReason::Signal { signal: 9 }, policy),
            JobState::Queued { .. }
        ));
        assert_eq!(
            fail(leased(1), FailReason::Timeout, policy),
            JobState::Dead {
                attempts: 1,
                reason: FailReason::Timeout
            },
            "a timeout is not selected: dead at once"
        );
        // Losses and OOM kills follow their own bounds regardless.
        let lost = FailReason::WorkerLost { detail: "x".into() };
        assert!(matches!(
            fail(leased(1), lost, policy),
            JobState::Queued { lost: 1, .. }
        ));
        assert!(matches!(
            fail(leased(1), OOM, policy),
            JobState::Queued { oom: 1, .. }
        ));
        // Selected failures still stop at the last attempt.
        assert!(matches!(
            fail(leased(3), FailReason::Exit { code: 3 }, policy),
            JobState::Failed { attempts: 3, .. }
        ));
    }

    #[test]
    fn retry_on_without_a_list_retries_everything() {
        let all = RetryOn::default();
        assert!(all.is_all());
        for r in [
            FailReason::Exit { code: 1 },
            FailReason::Timeout,
            FailReason::Signal { signal: 15 },
            FailReason::Spawn { error: "x".into() },
            FailReason::Reported {
                message: "x".into(),
            },
        ] {
            assert!(all.selects(&r), "{r:?}");
        }
    }

    #[test]
    fn retry_on_lists_parse_and_bad_ones_are_named() {
        let on = RetryOn::parse("timeout, exit=1-2,255").unwrap();
        assert!(on.selects(&FailReason::Timeout));
        assert!(on.selects(&FailReason::Exit { code: 255 }));
        assert!(on.selects(&FailReason::Exit { code: 2 }));
        assert!(!on.selects(&FailReason::Exit { code: 3 }));
        assert!(!on.selects(&FailReason::Signal { signal: 9 }));
        for bad in [
            "", "exit=", "exit=0", "exit=256", "exit=5-3", "oom", "4", "signal,4", "exit=a",
        ] {
            let e = RetryOn::parse(bad).unwrap_err();
            assert!(e.to_string().contains("--retry-on"), "{bad}: {e}");
        }
    }

    #[test]
    fn retry_delays_grow_by_the_factor_up_to_the_cap_within_the_jitter() {
        let policy = RetryPolicy::with_retries(10).backoff(Backoff {
            delay: std::time::Duration::from_secs(1),
            factor: 2.0,
            max: std::time::Duration::from_secs(5),
        });
        for salt in 0..200u64 {
            let d: Vec<f64> = (1..=5)
                .map(|n| policy.retry_delay(n, salt).as_secs_f64())
                .collect();
            for (n, (got, base)) in d.iter().zip([1.0, 2.0, 4.0, 5.0, 5.0]).enumerate() {
                assert!(
                    *got >= base * 0.8 - 1e-9 && *got <= base * 1.2 + 1e-9,
                    "retry {} salt {salt}: {got} vs {base}",
                    n + 1
                );
            }
        }
        // The jitter spreads: not every salt gives the same delay.
        let first: std::collections::HashSet<u128> = (0..50)
            .map(|s| policy.retry_delay(1, s).as_micros())
            .collect();
        assert!(first.len() > 40);
        assert_eq!(
            RetryPolicy::default().retry_delay(3, 1),
            std::time::Duration::ZERO
        );
    }

    #[test]
    fn only_counted_retries_wait() {
        let policy = RetryPolicy::with_retries(3).backoff(Backoff {
            delay: std::time::Duration::from_secs(1),
            ..Backoff::default()
        });
        let exit = FailReason::Exit { code: 1 };
        let next = fail(leased(1), exit.clone(), policy);
        assert!(policy.requeue_delay(&exit, &next, 7) >= std::time::Duration::from_millis(800));
        let next = fail(leased(1), OOM, policy);
        assert!(policy.requeue_delay(&OOM, &next, 7).is_zero());
        let done = fail(leased(4), exit.clone(), policy);
        assert!(policy.requeue_delay(&exit, &done, 7).is_zero());
    }

    #[test]
    fn signal_names_are_readable() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(34), "SIGRTMIN+0");
        assert_eq!(signal_name(0), "signal 0");
        assert_eq!(signal_name(77), "signal 77");
    }
}
