//! `jobmill run --persistent`: long-lived workers instead of a process per
//! job.
//!
//! The run is the same (input reader, queue, observers, printer, halt,
//! Ctrl-C); only the slot threads are replaced by one
//! [`crate::persistent::run`] coordinator over the run's queue, with `-j`
//! worker processes of the command. This module adapts the coordinator's
//! reports to the run's:
//!
//! - a job sent to a worker is an attempt started ([`Observer::attempt_started`]);
//! - a result is the attempt's stdout, and the attempt ends like a command
//!   that exited 0; a failure reported by the worker ends like exit 1 (its
//!   message is printed); a lost worker like a kill by SIGKILL; a timeout
//!   as timed out;
//! - the run's stop [`Control`] is the coordinator's stop source: draining
//!   stops sending jobs and lets sent ones finish, killing kills the workers
//!   and leaves their unfinished jobs for resume;
//! - worker output lines and lost workers are printed to stderr;
//! - worker process groups are registered with the run's guardian, so they
//!   are stopped even if jobmill is killed.
//!
//! Long-lived workers do not report a per-job runtime or resource usage:
//! attempts carry a zero duration.
//!
//! [`Observer::attempt_started`]: super::Observer::attempt_started

use std::ffi::OsString;
use std::time::{Duration, SystemTime};

use crate::exec::{Attempt, Capture, End};
use crate::job::{FailReason, JobState, WorkerId};
use crate::persistent::{
    self, Config, Outcome, OutcomeKind, StopLevel, StopSource, Stream, WorkerEvent,
};
use crate::queue::{Completion, Disposition};

use super::control::{Control, Level};
use super::{after_outcome, AttemptOutcome, AttemptReport, Ctx};

/// The options of `--persistent`.
#[derive(Debug, Clone)]
pub struct PersistentOptions {
    /// The worker command, run as is (no input substitution): inputs are
    /// sent to the workers as job payloads.
    pub command: Vec<OsString>,
    /// Most jobs in flight per worker.
    pub window: usize,
    /// Size of each area of a worker's payload arena
    /// ([`Config::arena`]); 0 for none.
    pub arena: usize,
}

struct ControlStop<'a>(&'a Control);

impl StopSource for ControlStop<'_> {
    fn level(&self) -> StopLevel {
        match self.0.level() {
            Level::Running => StopLevel::Running,
            Level::Draining => StopLevel::Draining,
            Level::Killing => StopLevel::Killing,
        }
    }
}

struct Adapter<'a> {
    ctx: &'a Ctx,
}

impl persistent::Observer for Adapter<'_> {
    fn sent(&self, slot: usize, _worker: WorkerId, job: &crate::job::Job) {
        self.ctx
            .observe(|o| o.attempt_started(job.seq, job.attempts, slot, SystemTime::now()));
    }

    fn outcome(&self, o: Outcome) {
        let ctx = self.ctx;
        let mut stdout = Capture::new(ctx.budget.clone());
        let (outcome, end, timed_out) = match o.kind {
            OutcomeKind::Done { result, completion } => {
                stdout.append(&result);
                let outcome = match completion {
                    Completion::Recorded => AttemptOutcome::Done,
                    Completion::Stale => AttemptOutcome::Interrupted,
                };
                (outcome, End::Exited(0), false)
            }
            OutcomeKind::Failed {
                reason,
                disposition,
            } => {
                let end = match reason {
                    FailReason::Reported { .. } => End::Exited(1),
                    _ => End::Signaled(9),
                };
                let timed_out = reason == FailReason::Timeout;
                if let FailReason::Reported { message } = &reason {
                    ctx.progress.println(&format!(
                        "jobmill: job {} attempt {} failed: {message}",
                        o.job.seq, o.job.attempts
                    ));
                }
                let outcome = match disposition {
                    Disposition::Requeued { .. } => AttemptOutcome::Requeued { reason },
                    Disposition::Final(state) => AttemptOutcome::Final(state),
                    Disposition::Stale => AttemptOutcome::Interrupted,
                };
                (outcome, end, timed_out)
            }
        };
        let mut attempt = Attempt {
            started: SystemTime::now(),
            duration: Duration::ZERO,
            end,
            timed_out,
            terminated: false,
            max_rss_kib: 0,
            stdout,
            stderr: Capture::new(ctx.budget.clone()),
        };
        let mut report = AttemptReport {
            seq: o.job.seq,
            attempt: o.job.attempts,
            slot: o.slot,
            attempt_result: &mut attempt,
            outcome: &outcome,
        };
        ctx.observe(|obs| obs.attempt_finished(&mut report));
        print(ctx, o.job.seq, attempt, &outcome);
        after_outcome(ctx, &outcome);
    }

    fn spawned(&self, _slot: usize, _worker: WorkerId, pid: u32) {
        self.ctx.supervisor.guard_group(pid);
    }

    fn reaping(&self, _slot: usize, _worker: WorkerId, pid: u32) {
        self.ctx.supervisor.unguard_group(pid);
    }

    fn worker(&self, event: WorkerEvent) {
        match event {
            WorkerEvent::Ended {
                lost: true, detail, ..
            }
            | WorkerEvent::GaveUp { detail, .. } => {
                self.ctx.progress.println(&format!("jobmill: {detail}"));
            }
            _ => {}
        }
    }

    fn output(&self, slot: usize, _worker: WorkerId, _stream: Stream, line: &[u8]) {
        self.ctx.progress.println(&format!(
            "[worker {slot}] {}",
            String::from_utf8_lossy(line)
        ));
    }
}

/// Prints a finished job's output, as `run_lease` does for a command.
fn print(ctx: &Ctx, seq: u64, attempt: Attempt, outcome: &AttemptOutcome) {
    if matches!(outcome, AttemptOutcome::Requeued { .. }) {
        return;
    }
    if let Err(e) = ctx.printer.job_output(seq, attempt.stdout, attempt.stderr) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            ctx.stop(Level::Killing);
        } else {
            ctx.fatal(format!("cannot write output of job {seq}: {e}"));
        }
    }
    if let AttemptOutcome::Final(JobState::Failed { reason, .. } | JobState::Dead { reason, .. }) =
        outcome
    {
        if !matches!(reason, FailReason::Reported { .. }) {
            ctx.progress
                .println(&format!("jobmill: job {seq} {reason}"));
        }
    }
}

/// Runs the run's queue through long-lived workers until it is closed and
/// drained, or the run stops. Takes the place of the slot threads.
pub(super) fn drive(ctx: &Ctx, p: &PersistentOptions) {
    let mut config = Config::new(p.command.clone(), ctx.opts.jobs.max(1));
    config.window = p.window.max(1);
    config.arena = p.arena;
    config.timeout = ctx.opts.timeout;
    if let Some((key, value)) = ctx.supervisor.guard_env() {
        config.env.push((key.into(), value.into()));
    }
    let stop = ControlStop(&ctx.control);
    if let Err(e) = persistent::run(&ctx.queue, &config, &Adapter { ctx }, &stop) {
        ctx.fatal(e.to_string());
    }
}
