//! The executor of long-lived workers (`--persistent`): the
//! [`persistent`](crate::persistent) coordinator, with `-j` worker processes
//! of the command and a window of jobs in flight to each, over the run's
//! queue (the engine's [`Gate`](super::Gate)).
//!
//! The coordinator leases and settles in batches (one lock, or one Redis
//! round trip, per batch), so it hands the engine each attempt already
//! settled: [`Dispatch::report`](super::Dispatch::report) with the queue's
//! verdict. What this adapter adds:
//!
//! - a job sent to a worker is an attempt started;
//! - a result is the attempt's stdout, one record: a newline is added when
//!   the result does not already end with one, or every result ends with a
//!   NUL with [`ResultEnd::Nul`] (`--print0`), for binary results; or,
//!   for a library front end that reads results back (`jobmill::Pool`),
//!   nothing is added ([`ResultEnd::Raw`]);
//! - a worker's result carries no duration or memory of its own (the worker
//!   runs many jobs in one process), so the [`Outcome`] says `None` for
//!   both;
//! - the run's stop level is the coordinator's stop source;
//! - worker process groups are registered with the run's guardian, so they
//!   are stopped even if jobmill is killed;
//! - worker output lines ([`Notice::WorkerOutput`], saying which stream),
//!   lost workers and dropped output ([`Notice::Info`]) and a slot that gave
//!   up ([`Notice::WorkerGaveUp`]) become notices.

use std::ffi::OsString;
use std::sync::Arc;

use crate::events::{Notice, Resolution, SharedError};
use crate::exec::{Capture, Supervisor};
use crate::job::WorkerId;
use crate::outcome::{AttemptEnd, Outcome};
use crate::persistent::{
    self, Config, OutcomeKind, PersistentError, StopLevel, StopSource, Stream, WorkerEvent,
};
use crate::queue::QueueError;

use super::stop::Level;
use super::{Dispatch, Executor};

/// How a worker's result is ended, as its attempt's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultEnd {
    /// One line: a newline is added when the result does not already end
    /// with one (the default).
    #[default]
    Newline,
    /// A NUL is added to every result (`--print0`), for binary results.
    Nul,
    /// Nothing is added: the stdout is the result, byte for byte (a front
    /// end that reads results back, `jobmill::Pool`).
    Raw,
}

/// The options of the long-lived-worker executor.
#[derive(Debug, Clone)]
pub struct WorkersOptions {
    /// The coordinator's configuration: the command, `-j` workers, the
    /// window, the arena, timeouts.
    pub config: Config,
    /// How each result is ended.
    pub result_end: ResultEnd,
}

impl WorkersOptions {
    /// Options for `workers` processes of `command`, with the coordinator's
    /// defaults.
    pub fn new(command: Vec<OsString>, workers: usize) -> WorkersOptions {
        WorkersOptions {
            config: Config::new(command, workers.max(1)),
            result_end: ResultEnd::Newline,
        }
    }

    /// Options for the workers of `config`, with results ended as
    /// `result_end`.
    pub fn from_config(config: Config, result_end: ResultEnd) -> WorkersOptions {
        WorkersOptions { config, result_end }
    }
}

/// Runs the jobs through long-lived worker processes.
pub struct Workers {
    supervisor: Arc<Supervisor>,
    opts: WorkersOptions,
}

impl Workers {
    /// An executor of `opts`, registering its workers with `supervisor`'s
    /// guardian.
    pub fn new(supervisor: Arc<Supervisor>, mut opts: WorkersOptions) -> Workers {
        if let Some((key, value)) = supervisor.guard_env() {
            opts.config.env.push((key.into(), value.into()));
        }
        opts.config.memory = supervisor.memory().cloned();
        Workers { supervisor, opts }
    }
}

impl Executor for Workers {
    fn execute(&self, d: &Dispatch) -> Result<(), SharedError> {
        if let Some(notice) = self.supervisor.memory().and_then(|m| m.notice()) {
            d.notice(Notice::Info(notice));
        }
        let adapter = Adapter { d, workers: self };
        match persistent::run(&d.queue(), &self.opts.config, &adapter, &adapter) {
            Ok(_) => Ok(()),
            // The gate already stopped the run for these.
            Err(PersistentError::Queue(QueueError::ProducerLost { .. })) => Ok(()),
            Err(PersistentError::Queue(_)) if d.failed() => Ok(()),
            Err(e) => Err(Arc::new(e)),
        }
    }

    fn kill(&self) {
        // The coordinator polls the stop level and kills its workers; jobs
        // it leased and never sent are released.
    }
}

struct Adapter<'a> {
    d: &'a Dispatch,
    workers: &'a Workers,
}

impl StopSource for Adapter<'_> {
    fn level(&self) -> StopLevel {
        match self.d.level() {
            Level::Running => StopLevel::Running,
            Level::Draining => StopLevel::Draining,
            Level::Killing => StopLevel::Killing,
        }
    }
}

impl persistent::Observer for Adapter<'_> {
    fn sent(&self, slot: usize, worker: WorkerId, job: &crate::job::Job) {
        // A job already in a worker's window cannot be taken back: if its
        // start cannot be recorded, the run drains and the job still runs.
        self.d.start(job, slot, Some(worker));
    }

    fn outcome(&self, o: persistent::Outcome) {
        let d = self.d;
        let mut stdout = Capture::new(d.budget().clone());
        let (end, resolution) = match o.kind {
            OutcomeKind::Done { result, completion } => {
                stdout.append(&result);
                match self.workers.opts.result_end {
                    ResultEnd::Nul => stdout.append(b"\0"),
                    ResultEnd::Newline if result.last() != Some(&b'\n') => {
                        stdout.append(b"\n");
                    }
                    ResultEnd::Newline | ResultEnd::Raw => {}
                }
                (AttemptEnd::Succeeded, Resolution::of_completion(completion))
            }
            OutcomeKind::Failed {
                reason,
                disposition,
            } => {
                let resolution = Resolution::of_disposition(disposition, reason.clone());
                (AttemptEnd::Failed(reason), resolution)
            }
        };
        let outcome = Outcome::unmeasured(end);
        let stderr = Capture::new(d.budget().clone());
        d.report(
            &o.job,
            o.slot,
            Some(o.worker),
            &outcome,
            resolution,
            stdout,
            stderr,
        );
    }

    fn spawned(&self, _slot: usize, _worker: WorkerId, pid: u32) {
        self.d.check_guardian(&self.workers.supervisor);
        self.workers.supervisor.guard_group(pid);
    }

    fn reaping(&self, _slot: usize, _worker: WorkerId, pid: u32) {
        self.workers.supervisor.unguard_group(pid);
    }

    fn worker(&self, event: WorkerEvent) {
        match event {
            WorkerEvent::Ended {
                lost: true, detail, ..
            }
            | WorkerEvent::OutputDropped { detail, .. } => self.d.notice(Notice::Info(detail)),
            WorkerEvent::GaveUp { slot, detail } => {
                self.d.notice(Notice::WorkerGaveUp { slot, detail });
            }
            _ => {}
        }
    }

    fn output(&self, slot: usize, _worker: WorkerId, stream: Stream, line: &[u8]) {
        self.d.notice(Notice::WorkerOutput {
            slot,
            stderr: stream == Stream::Stderr,
            line: line.to_vec(),
        });
    }
}
