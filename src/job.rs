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
//!    │ (unrun,          ▼
//!    │  not counted)  attempts left? ── yes ──▶ Queued   (requeued)
//!    └──────────────────┘     │
//!                             no
//!                             ▼
//!              reason is the job's own verdict? ── yes ──▶ Failed
//!                             │
//!                             no (signal, timeout, lost worker, spawn error)
//!                             ▼
//!                            Dead
//! ```
//!
//! An attempt is counted when a job is leased. `release` returns a leased job
//! that was never started (for example after the first Ctrl-C) and gives the
//! attempt back.

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
}

impl NewJob {
    /// A fresh job with no attempts made.
    pub fn new(seq: u64, payload: impl Into<Bytes>) -> Self {
        NewJob {
            seq,
            payload: payload.into(),
            attempts: 0,
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
}

impl FailReason {
    /// Whether this failure is the job's own verdict (it ran to the end and
    /// said "failed"), as opposed to the job being stopped before it could
    /// give one. After the last attempt a verdict makes the job
    /// [`JobState::Failed`]; anything else makes it [`JobState::Dead`].
    pub fn is_verdict(&self) -> bool {
        matches!(self, FailReason::Exit { .. } | FailReason::Reported { .. })
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
        }
    }
}

/// The name of a signal number, such as `SIGKILL`, or `signal N` when unknown.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// How many attempts a job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts allowed, at least 1. `--retries N` means `N + 1`.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// A policy allowing `retries` re-runs after the first attempt.
    pub fn with_retries(retries: u32) -> Self {
        RetryPolicy {
            max_attempts: retries.saturating_add(1),
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 1 }
    }
}

/// The state of one job. Variants carry the data that state needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting to be leased. `attempts` were made before (a requeued job).
    Queued {
        /// Attempts made so far.
        attempts: u32,
    },
    /// Held by a worker, running attempt number `attempt` (from 1).
    Leased {
        /// The worker holding the lease.
        worker: WorkerId,
        /// The attempt now running, from 1.
        attempt: u32,
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
            (JobState::Queued { attempts }, Transition::Lease { worker }) => JobState::Leased {
                worker: *worker,
                attempt: attempts + 1,
            },
            (JobState::Leased { attempt, .. }, Transition::Complete) => {
                JobState::Done { attempts: *attempt }
            }
            (JobState::Leased { attempt, .. }, Transition::Release) => JobState::Queued {
                attempts: attempt - 1,
            },
            (JobState::Leased { attempt, .. }, Transition::Fail { reason }) => {
                if *attempt < policy.max_attempts {
                    JobState::Queued { attempts: *attempt }
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
        JobState::Leased { worker: W, attempt }
    }

    #[test]
    fn lease_counts_an_attempt() {
        let s = JobState::Queued { attempts: 2 };
        let next = s
            .apply(Transition::Lease { worker: W }, RetryPolicy::default())
            .unwrap();
        assert_eq!(next, leased(3));
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
        assert_eq!(next, JobState::Queued { attempts: 1 });
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
    fn last_attempt_lost_worker_is_dead_and_keeps_reason() {
        let reason = FailReason::WorkerLost {
            detail: "killed".into(),
        };
        let next = leased(1)
            .apply(
                Transition::Fail {
                    reason: reason.clone(),
                },
                RetryPolicy::default(),
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
    fn release_gives_the_attempt_back() {
        let next = leased(1)
            .apply(Transition::Release, RetryPolicy::default())
            .unwrap();
        assert_eq!(next, JobState::Queued { attempts: 0 });
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
        let s = JobState::Queued { attempts: 0 };
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
        assert_eq!(signal_name(77), "signal 77");
    }
}
