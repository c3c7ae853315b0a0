//! The one outcome type: how an attempt of a job ended, whatever ran it.
//!
//! Every executor (a process per attempt, or a long-lived worker) reports an
//! [`Outcome`]; the engine resolves it against the queue, and the journal,
//! the printer and the progress bar observe it. There is no other
//! description of an attempt's end, so that the journal records exactly what
//! the engine decided on.
//!
//! ```text
//!  AttemptEnd::Succeeded          the job's verdict: success
//!  AttemptEnd::Failed(reason)     exited with a code, killed by a signal, timed out,
//!                                 failure reported by a worker, worker lost, could not start
//!  AttemptEnd::Stopped            stopped by jobmill itself (--halt now, the kill stage
//!                                 of a stop): no verdict, the job runs again on resume
//! ```
//!
//! Duration and peak memory are `Option`s: a long-lived worker runs many
//! jobs in one process, so its share of the process's memory is not known,
//! and the outcome says so instead of writing 0.

use std::time::{Duration, SystemTime};

use crate::job::FailReason;

/// Every name [`AttemptEnd::cause`] gives, in a fixed order (the
/// journal's `attempt.cause` column holds one of them).
pub const CAUSES: [&str; 11] = [
    "succeeded",
    "stopped",
    "exit",
    "signal",
    "timeout",
    "reported",
    "lost",
    "spawn",
    "oom",
    "memory-limit",
    "refused",
];

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The job succeeded (exit status 0, or a result from a worker).
    Succeeded,
    /// The attempt failed; the reason says how (and whether it was the
    /// job's own verdict, see [`FailReason::is_verdict`]).
    Failed(FailReason),
    /// jobmill stopped it (`--halt now`, the kill stage of a stop). Not the
    /// job's fault: the attempt is not counted and the job keeps no final
    /// state, so `jobmill resume` runs it again.
    Stopped,
}

impl AttemptEnd {
    /// A short, stable name, as the journal stores it: `succeeded`,
    /// `stopped`, or the failure's [`FailReason::cause`].
    pub fn cause(&self) -> &'static str {
        match self {
            AttemptEnd::Succeeded => "succeeded",
            AttemptEnd::Stopped => "stopped",
            AttemptEnd::Failed(reason) => reason.cause(),
        }
    }

    /// The exit code, when the attempt was a process that exited.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            AttemptEnd::Succeeded => None,
            AttemptEnd::Failed(FailReason::Exit { code }) => Some(*code),
            _ => None,
        }
    }

    /// The signal, when the attempt was a process killed by one.
    pub fn signal(&self) -> Option<i32> {
        match self {
            AttemptEnd::Failed(FailReason::Signal { signal }) => Some(*signal),
            // The OOM killer and a cgroup's limit kill with SIGKILL.
            AttemptEnd::Failed(
                FailReason::OutOfMemory { .. } | FailReason::MemoryLimit { likely: false, .. },
            ) => Some(9),
            _ => None,
        }
    }
}

/// Everything known about one finished attempt, whatever ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub end: AttemptEnd,
    /// When it started (wall clock).
    pub started: SystemTime,
    /// How long it ran; `None` where the executor cannot tell.
    pub duration: Option<Duration>,
    /// Peak resident memory in KiB; `None` where it is not known (a
    /// long-lived worker's share of its process).
    pub max_rss_kib: Option<u64>,
    /// The exit code of a process that exited 0 after its timeout's TERM is
    /// still a timeout; this keeps the code the process gave, for the record.
    pub exit_code: Option<i32>,
}

impl Outcome {
    /// An outcome with nothing measured: `started` now, no duration, no RSS.
    pub fn unmeasured(end: AttemptEnd) -> Outcome {
        Outcome {
            exit_code: end.exit_code(),
            end,
            started: SystemTime::now(),
            duration: None,
            max_rss_kib: None,
        }
    }
}

/// The exit statuses of jobmill, decided in this one place.
pub mod exit {
    /// Every job succeeded (or, for a worker, the queue was drained).
    pub const SUCCESS: i32 = 0;
    /// The queue's producer disappeared (`jobmill worker`).
    pub const PRODUCER_LOST: i32 = 3;
    /// The most failed jobs counted in the exit status: more also give 101.
    pub const FAILED_CAP: i32 = 101;
    /// Stopped by a signal (SIGINT, SIGTERM, SIGHUP).
    pub const INTERRUPTED: i32 = 130;
    /// Stopped because stdout's reader went away, as GNU parallel does.
    pub const OUTPUT_CLOSED: i32 = 141;
    /// A usage or internal error, or stdin/stdout could not be used.
    pub const ERROR: i32 = 255;

    /// The status for `n` failed (or dead) jobs: `n`, capped at
    /// [`FAILED_CAP`].
    pub fn failures(n: u64) -> i32 {
        n.min(FAILED_CAP as u64) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_capped_at_101() {
        assert_eq!(exit::failures(0), 0);
        assert_eq!(exit::failures(7), 7);
        assert_eq!(exit::failures(101), 101);
        assert_eq!(exit::failures(100_000), 101);
    }

    #[test]
    fn causes_are_stable_names() {
        assert_eq!(AttemptEnd::Succeeded.cause(), "succeeded");
        assert_eq!(AttemptEnd::Stopped.cause(), "stopped");
        assert_eq!(
            AttemptEnd::Failed(FailReason::WorkerLost { detail: "x".into() }).cause(),
            "lost"
        );
        assert_eq!(AttemptEnd::Failed(FailReason::Timeout).cause(), "timeout");
        for end in [
            AttemptEnd::Succeeded,
            AttemptEnd::Stopped,
            AttemptEnd::Failed(FailReason::Exit { code: 1 }),
            AttemptEnd::Failed(FailReason::Signal { signal: 9 }),
            AttemptEnd::Failed(FailReason::Timeout),
            AttemptEnd::Failed(FailReason::Reported {
                message: "m".into(),
            }),
            AttemptEnd::Failed(FailReason::WorkerLost { detail: "d".into() }),
            AttemptEnd::Failed(FailReason::Spawn { error: "e".into() }),
            AttemptEnd::Failed(FailReason::OutOfMemory { likely: true }),
            AttemptEnd::Failed(FailReason::MemoryLimit {
                limit: 1,
                likely: false,
            }),
        ] {
            assert!(CAUSES.contains(&end.cause()), "{end:?}");
        }
    }

    #[test]
    fn unmeasured_outcomes_say_so() {
        let o = Outcome::unmeasured(AttemptEnd::Failed(FailReason::Exit { code: 3 }));
        assert_eq!(o.duration, None);
        assert_eq!(o.max_rss_kib, None);
        assert_eq!(o.exit_code, Some(3));
    }
}
