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
//!                       ▼
//!            counted attempts left? ── yes ──▶ Queued   (requeued)
//!                       │
//!                       no
//!                       ▼
//!              reason is the job's own verdict? ── yes ──▶ Failed
//!                       │
//!                       no (signal, timeout, spawn error)
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
}

impl NewJob {
    /// A fresh job with no attempts made.
    pub fn new(seq: u64, payload: impl Into<Bytes>) -> Self {
        NewJob {
            seq,
            payload: payload.into(),
            attempts: 0,
            lost: 0,
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

/// How many attempts a job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Counted attempts allowed, at least 1. `--retries N` means `N + 1`.
    /// Lost attempts are not counted here.
    pub max_attempts: u32,
    /// How many times a job may be lost and run again (`--max-lost`); the
    /// loss after that makes it [`JobState::Dead`].
    pub max_lost: u32,
}

/// The default of `--max-lost`.
pub const DEFAULT_MAX_LOST: u32 = 3;

impl RetryPolicy {
    /// A policy allowing `retries` re-runs after the first attempt, and the
    /// default [`DEFAULT_MAX_LOST`] losses.
    pub fn with_retries(retries: u32) -> Self {
        RetryPolicy {
            max_attempts: retries.saturating_add(1),
            max_lost: DEFAULT_MAX_LOST,
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
    },
    /// Held by a worker, running attempt number `attempt` (from 1).
    Leased {
        /// The worker holding the lease.
        worker: WorkerId,
        /// The attempt now running, from 1.
        attempt: u32,
        /// How many earlier attempts were lost.
        lost: u32,
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
    /// Ran out of attempts; the last one never reached a verdict (killed by a
    /// signal, timed out, worker lost, could not start). Final.
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
            (JobState::Queued { attempts, lost }, Transition::Lease { worker }) => {
                JobState::Leased {
                    worker: *worker,
                    attempt: attempts + 1,
                    lost: *lost,
                }
            }
            (JobState::Leased { attempt, .. }, Transition::Complete) => {
                JobState::Done { attempts: *attempt }
            }
            (JobState::Leased { attempt, lost, .. }, Transition::Release) => JobState::Queued {
                attempts: attempt - 1,
                lost: *lost,
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
            (JobState::Leased { attempt, lost, .. }, Transition::Fail { reason })
                if reason.is_lost() =>
            {
                if *lost < policy.max_lost {
                    JobState::Queued {
                        attempts: *attempt,
                        lost: lost + 1,
                    }
                } else {
                    JobState::Dead {
                        attempts: *attempt,
                        reason: reason.clone(),
                    }
                }
            }
            (JobState::Leased { attempt, lost, .. }, Transition::Fail { reason }) => {
                // Lost attempts do not count against the retries.
                let counted = attempt.saturating_sub(*lost);
                if counted < policy.max_attempts {
                    JobState::Queued {
                        attempts: *attempt,
                        lost: *lost,
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
        }
    }

    #[test]
    fn lease_counts_an_attempt() {
        let s = JobState::Queued {
            attempts: 2,
            lost: 0,
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
                lost: 0
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
                lost: 1
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
        };
        assert_eq!(
            s.apply(Transition::Release, RetryPolicy::default())
                .unwrap(),
            JobState::Queued {
                attempts: 2,
                lost: 2
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
                lost: 0
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
        };
        assert!(s
            .apply(Transition::Complete, RetryPolicy::default())
            .is_err());
        assert!(s
            .apply(Transition::Release, RetryPolicy::default())
            .is_err());
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
