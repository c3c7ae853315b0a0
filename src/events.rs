//! The events of a run, and the one [`Observer`] trait that receives them.
//!
//! The engine is the only source of these events, whatever the front end
//! (`run`, `run --persistent`, `run --queue`, `worker`, `resume`). The
//! journal, the printer of job output, the progress bar and the messages
//! to the user are observers of them; so the library itself never prints.
//!
//! ```text
//!  job_read ─▶ (input_complete) ─▶ attempt_started ─▶ attempt_finished ─▶ … ─▶ run_finished
//!                                         notice (any time: messages for the user)
//! ```
//!
//! Observers are called from the engine's threads, so an implementation
//! must be cheap or hand work to a thread of its own (the journal batches
//! events into group commits). An error from an observer is fatal to the
//! run: it drains, and the error is in [`RunSummary::error`].

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::job::{FailReason, JobState, NewJob, WorkerId};
use crate::outcome::{exit, Outcome};

/// An error of any kind, kept with its chain of sources.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// `error` and its chain of sources as one line, `: `-separated, the way
/// the CLI shows an error; a source whose text its wrapper already ends
/// with is not repeated. The one place errors are rendered with their
/// causes for a person.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

/// A failure reported by an [`Observer`]; it stops the run from starting
/// more jobs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source}")]
pub struct ObserverError {
    /// What failed, with its sources.
    #[source]
    pub source: SharedError,
}

impl ObserverError {
    /// Wraps any error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> ObserverError {
        ObserverError {
            source: Arc::new(e),
        }
    }

    /// An error that is only a message.
    pub fn msg(message: impl Into<String>) -> ObserverError {
        ObserverError::new(Message(message.into()))
    }
}

/// An error that is only a message (the leaf of a chain).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Message(pub String);

/// What one finished attempt meant for its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// It succeeded; the job is done.
    Done,
    /// It failed (or was lost) and the job was requeued for another attempt.
    Requeued {
        /// Why.
        reason: FailReason,
    },
    /// The job is out of attempts: [`JobState::Failed`] or [`JobState::Dead`].
    Final(JobState),
    /// jobmill stopped it, or its lease had been taken over (a worker
    /// presumed lost): the job has no final state from this attempt and
    /// runs again (on resume, or on another worker).
    Interrupted,
}

impl Resolution {
    /// Whether this attempt is the job's last (its output is the job's).
    pub fn is_final(&self) -> bool {
        matches!(self, Resolution::Done | Resolution::Final(_))
    }
}

/// Who runs an attempt, beyond its slot (what the journal records as the
/// attempt's `worker` and `host`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runner {
    /// The long-lived worker process (`--persistent`) that runs it;
    /// `None` when each attempt is a process of its own.
    pub worker: Option<WorkerId>,
    /// The host that runs it, when the run names one (a worker on a shared
    /// queue); `None`: this machine.
    pub host: Option<Arc<str>>,
}

/// An attempt about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptStart {
    /// The job's sequence number.
    pub seq: u64,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The slot it runs in, from 1 (for long-lived workers: the worker's slot).
    pub slot: usize,
    /// Who runs it.
    pub runner: Runner,
    /// When it starts.
    pub at: SystemTime,
}

/// Output a job wrote, as observers may read it.
pub trait JobOutput {
    /// Bytes written in all.
    fn len(&self) -> u64;
    /// Whether nothing was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The first `limit` bytes, and whether there was more.
    ///
    /// # Errors
    ///
    /// When spilled output cannot be read back.
    fn head(&mut self, limit: usize) -> io::Result<(Vec<u8>, bool)>;
    /// Writes all of it to `w` (by default through [`JobOutput::head`]).
    ///
    /// # Errors
    ///
    /// When spilled output cannot be read back, or `w` fails.
    fn copy_to(&mut self, w: &mut dyn io::Write) -> io::Result<()> {
        let (bytes, _) = self.head(usize::MAX)?;
        w.write_all(&bytes)
    }
}

/// One finished attempt, as observers see it.
pub struct AttemptReport<'a> {
    /// The job's sequence number.
    pub seq: u64,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The slot it ran in, from 1.
    pub slot: usize,
    /// Who ran it.
    pub runner: Runner,
    /// How it ended, with what was measured.
    pub outcome: &'a Outcome,
    /// What it meant for the job.
    pub resolution: &'a Resolution,
    /// What the attempt wrote to stdout (for a worker: its result).
    pub stdout: &'a mut dyn JobOutput,
    /// What the attempt wrote to stderr.
    pub stderr: &'a mut dyn JobOutput,
}

/// A message for the person running jobmill. The library never prints:
/// the front end renders these (the CLI writes them to stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A job ended failed or dead for a reason other than its exit code.
    JobEnded {
        /// The job.
        seq: u64,
        /// Why.
        reason: FailReason,
    },
    /// A worker reported that an attempt failed.
    AttemptFailed {
        /// The job.
        seq: u64,
        /// The attempt.
        attempt: u32,
        /// The worker's message.
        message: String,
    },
    /// A stop started draining: no new job starts.
    Draining {
        /// Jobs still running.
        running: usize,
        /// The cause (a signal name, `--halt`, an error).
        cause: String,
    },
    /// A stop started killing the running jobs.
    Killing {
        /// Jobs still running.
        running: usize,
        /// Time between TERM and KILL.
        grace: Duration,
        /// The cause.
        cause: String,
    },
    /// A lease was taken over by another worker meanwhile (this one was
    /// presumed lost); the attempt's result is not recorded.
    Stale {
        /// The job.
        seq: u64,
        /// The attempt.
        attempt: u32,
    },
    /// Something about the workers or the backend, as one line.
    Info(String),
    /// A line a long-lived worker wrote to its stdout or stderr.
    WorkerOutput {
        /// The worker's slot.
        slot: usize,
        /// Whether the worker wrote it to its stderr (else its stdout).
        stderr: bool,
        /// The line, without its newline.
        line: Vec<u8>,
    },
    /// A slot of long-lived workers gave up restarting them (its workers
    /// kept dying without finishing a job, or failed their handshake):
    /// fewer workers than asked are left.
    WorkerGaveUp {
        /// The slot, from 1.
        slot: usize,
        /// Why, as one line.
        detail: String,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        match self {
            Notice::JobEnded { seq, reason } => write!(f, "job {seq} {reason}"),
            Notice::AttemptFailed {
                seq,
                attempt,
                message,
            } => write!(f, "job {seq} attempt {attempt} failed: {message}"),
            Notice::Draining { running, cause } => write!(
                f,
                "{cause}: starting no new jobs; waiting for {running} running job{}. \
                 Press Ctrl-C again to stop them.",
                plural(*running)
            ),
            Notice::Killing {
                running,
                grace,
                cause,
            } => write!(
                f,
                "{cause}: stopping {running} running job{} (TERM, then KILL after {grace:?})",
                plural(*running)
            ),
            Notice::Stale { seq, attempt } => write!(
                f,
                "job {seq} attempt {attempt}: the lease was taken over by another worker \
                 (this worker was presumed lost); its result is not recorded"
            ),
            Notice::Info(line) => f.write_str(line),
            Notice::WorkerOutput { slot, line, .. } => {
                write!(f, "[worker {slot}] {}", String::from_utf8_lossy(line))
            }
            Notice::WorkerGaveUp { detail, .. } => f.write_str(detail),
        }
    }
}

/// Why a run stopped before its queue was drained, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopCause {
    /// It did not stop early.
    #[default]
    None,
    /// A signal (SIGINT, SIGTERM, SIGHUP).
    Signal(i32),
    /// `--halt`.
    Halt,
    /// stdout's reader went away.
    OutputClosed,
    /// The shared queue's producer disappeared.
    ProducerLost,
    /// An error (see [`RunSummary::error`]).
    Error,
    /// The library front end that started the run asked it to stop (a
    /// [`StopHandle`](crate::engine::stop::StopHandle): the Python pool's
    /// `terminate`, a `jobmill::Pool` map dropped midway). Exits and is
    /// recorded as a signal's stop is: 130, interrupted.
    Requested,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Jobs read from the input (0 for a worker, which reads none).
    pub read: u64,
    /// Jobs done.
    pub done: u64,
    /// Jobs failed (final).
    pub failed: u64,
    /// Jobs dead (final).
    pub dead: u64,
    /// Attempts that failed and requeued their job.
    pub requeued: u64,
    /// Attempts whose lease had been taken over meanwhile (not recorded).
    pub stale: u64,
    /// Attempts stopped by jobmill.
    pub stopped: u64,
    /// Why the run stopped early, the first cause seen.
    pub stop: StopCause,
    /// The input was read to its end.
    pub input_complete: bool,
    /// The first fatal error (input, journal, backend, output), with its
    /// sources.
    pub error: Option<SharedError>,
}

impl RunSummary {
    /// Whether a signal, or the front end's request, stopped the run.
    pub fn interrupted(&self) -> bool {
        matches!(self.stop, StopCause::Signal(_) | StopCause::Requested)
    }

    /// Whether `--halt` stopped the run.
    pub fn halted(&self) -> bool {
        self.stop == StopCause::Halt
    }

    /// The exit status, in this order: 255 on an error; 130 when a signal
    /// or the front end's request stopped it (even if every running job
    /// then finished); 141 when
    /// stdout's reader went away; 3 when a worker's producer was lost;
    /// otherwise the number of failed and dead jobs, capped at 101. A run
    /// stopped by `--halt` exits with its failures, as in GNU parallel.
    pub fn exit_code(&self) -> i32 {
        if self.error.is_some() {
            return exit::ERROR;
        }
        match self.stop {
            StopCause::Error => exit::ERROR,
            StopCause::Signal(_) | StopCause::Requested => exit::INTERRUPTED,
            StopCause::OutputClosed => exit::OUTPUT_CLOSED,
            StopCause::ProducerLost => exit::PRODUCER_LOST,
            StopCause::None | StopCause::Halt => exit::failures(self.failed + self.dead),
        }
    }

    /// The exit status of a worker on a shared queue, whose jobs' failures
    /// are recorded in the queue, not in its status: 0 once the queue is
    /// closed and drained, else as [`RunSummary::exit_code`] (255, 130,
    /// 141, or 3 when the producer was lost).
    pub fn worker_exit_code(&self) -> i32 {
        if self.error.is_none() && matches!(self.stop, StopCause::None | StopCause::Halt) {
            exit::SUCCESS
        } else {
            self.exit_code()
        }
    }

    /// How the run ended, as one word for the journal: `error`, `interrupted`,
    /// `halted`, `output-closed`, `producer-lost`, `complete` or `stopped`.
    pub fn ending(&self) -> &'static str {
        if self.error.is_some() {
            return "error";
        }
        match self.stop {
            StopCause::Error => "error",
            StopCause::Signal(_) | StopCause::Requested => "interrupted",
            StopCause::Halt => "halted",
            StopCause::OutputClosed => "output-closed",
            StopCause::ProducerLost => "producer-lost",
            StopCause::None if self.input_complete => "complete",
            StopCause::None => "stopped",
        }
    }
}

/// Receives the events of a run. Every method has a no-op default.
pub trait Observer: Send + Sync {
    /// A job was read (before it can start).
    ///
    /// # Errors
    ///
    /// Fatal to the run: it drains.
    fn job_read(&self, _job: &NewJob) -> Result<(), ObserverError> {
        Ok(())
    }
    /// The input ended after `total` jobs.
    ///
    /// # Errors
    ///
    /// Fatal to the run: it drains.
    fn input_complete(&self, _total: u64) -> Result<(), ObserverError> {
        Ok(())
    }
    /// An attempt is about to start. The attempt does not start until every
    /// observer returned; an error gives the job back unrun.
    ///
    /// # Errors
    ///
    /// Fatal to the run: it drains.
    fn attempt_started(&self, _start: &AttemptStart) -> Result<(), ObserverError> {
        Ok(())
    }
    /// An attempt ended.
    ///
    /// # Errors
    ///
    /// Fatal to the run: it drains.
    fn attempt_finished(&self, _report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        Ok(())
    }
    /// A message for the person running jobmill.
    fn notice(&self, _notice: &Notice) {}
    /// The run ended (called once, after the last job event).
    ///
    /// # Errors
    ///
    /// Reported in the summary.
    fn run_finished(&self, _summary: &RunSummary) -> Result<(), ObserverError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_exits_130_even_when_every_job_finished() {
        let s = RunSummary {
            read: 4,
            done: 4,
            stop: StopCause::Signal(1),
            input_complete: true,
            ..RunSummary::default()
        };
        assert_eq!(s.exit_code(), 130);
        assert_eq!(s.ending(), "interrupted");
    }

    #[test]
    fn a_front_ends_requested_stop_exits_130_and_is_recorded_interrupted() {
        let s = RunSummary {
            done: 2,
            stop: StopCause::Requested,
            input_complete: true,
            ..RunSummary::default()
        };
        assert_eq!(s.exit_code(), 130);
        assert_eq!(s.ending(), "interrupted");
        assert!(s.interrupted());
    }

    #[test]
    fn a_closed_output_exits_141_and_an_error_255() {
        let s = RunSummary {
            stop: StopCause::OutputClosed,
            ..RunSummary::default()
        };
        assert_eq!(s.exit_code(), 141);
        let s = RunSummary {
            error: Some(Arc::new(Message("x".into()))),
            stop: StopCause::OutputClosed,
            ..RunSummary::default()
        };
        assert_eq!(s.exit_code(), 255);
    }

    #[test]
    fn failures_decide_the_status_of_a_complete_or_halted_run() {
        let s = RunSummary {
            failed: 150,
            dead: 3,
            stop: StopCause::Halt,
            ..RunSummary::default()
        };
        assert_eq!(s.exit_code(), 101);
        assert_eq!(s.ending(), "halted");
    }
}
