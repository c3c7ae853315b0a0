//! `jobmill worker --queue URL --persistent`: long-lived worker processes
//! fed from a shared Redis queue.
//!
//! The [`crate::persistent`] coordinator runs as it does for `jobmill run
//! --persistent`, over a [`RedisQueue`] instead of the in-memory queue:
//! `-j` worker processes of the command, a window of jobs in flight to
//! each, leased and acknowledged in batches (one script call per batch,
//! through the queue's `try_get_many` / `complete_many`). This module adds
//! what a worker on a shared queue needs around it:
//!
//! - **Records.** A thin [`Queue`] adapter over the [`RedisQueue`] stores
//!   the same result records as the per-process worker (state, attempts,
//!   reason, host) with every completion and final failure; long-lived
//!   workers report no per-job runtime, so `duration_ms` is absent.
//! - **Leases stay alive** while this process lives: the queue's heartbeat
//!   thread extends every lease it holds (the jobs in the workers' windows
//!   included). If this process is killed, its leases idle out and a peer
//!   takes them over (attempt counted); the guardian kills the workers.
//! - **Lost worker processes.** A worker process that dies mid-job is
//!   replaced by the coordinator; the job it was running fails with
//!   `WorkerLost` (its attempt counted: requeued, or dead-lettered after the
//!   queue's retries), the unstarted jobs of its window are released.
//! - **Hung worker processes** are caught with a protocol heartbeat when
//!   [`PersistentWorkOptions::heartbeat`] is set (`--heartbeat`).
//! - **Ending.** Exit 0 once the queue is closed and drained. The queue's
//!   producer being lost drains the workers (exit 3). A backend failure
//!   (the server gone past the reconnect window) stops them (exit 255)
//!   without trying the server again for each lease held: those leases
//!   idle out and peers take them over.
//! - **Signals.** The first SIGINT (or a SIGHUP) drains: no new lease, the
//!   jobs already sent finish. A second SIGINT or a SIGTERM kills the
//!   workers and releases every lease they held, attempts not counted, so
//!   other workers run those jobs.
//! - **Output.** Each done job's result is printed to stdout, like a
//!   command's output; workers' own stdout/stderr lines go to stderr as
//!   `[worker SLOT] line`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::exec::{Capture, SpillBudget, Supervisor};
use crate::job::{FailReason, JobId, JobState, NewJob, WorkerId};
use crate::persistent::{
    self, Config, Observer, Outcome, OutcomeKind, PersistentError, Stop, StopLevel, StopSource,
    WorkerEvent,
};
use crate::queue::redis::{AttemptInfo, RedisQueue};
use crate::queue::{
    Completion, Counts, Disposition, GetError, Lease, PutError, Queue, QueueError, TryGetError,
};
use crate::run::output::Printer;

use super::{hostname, WorkSummary};

/// Everything that shapes `jobmill worker --persistent`.
#[derive(Debug, Clone)]
pub struct PersistentWorkOptions {
    /// The worker command: program and arguments, run as is (no shell, no
    /// substitution); jobs reach it over the worker protocol.
    pub command: Vec<OsString>,
    /// Worker processes, at least 1.
    pub workers: usize,
    /// Most jobs in flight per worker process, at least 1.
    pub window: usize,
    /// Per-job time limit; the worker process running a job past it is
    /// killed and the job fails with a timeout.
    pub timeout: Option<Duration>,
    /// Ask the worker processes for a heartbeat this often; one that holds
    /// jobs and sends nothing for four intervals (hung, stopped) is killed
    /// and replaced, and the job it was running fails with `WorkerLost`.
    /// `None`: no heartbeat required.
    pub heartbeat: Option<Duration>,
    /// Bytes of results held in memory before spilling to files.
    pub output_memory: usize,
    /// The jobmill binary, to start the guardian that kills the worker
    /// processes if this process is killed; `None` runs without one.
    pub guardian: Option<PathBuf>,
    /// Install SIGINT/SIGTERM/SIGHUP handlers while working.
    pub handle_signals: bool,
    /// This host's name, stored in each job's record.
    pub host: String,
}

impl PersistentWorkOptions {
    /// Options with the defaults of `jobmill worker --persistent`: one
    /// worker per CPU, a window of 16.
    pub fn new(command: Vec<OsString>) -> PersistentWorkOptions {
        PersistentWorkOptions {
            command,
            workers: thread::available_parallelism().map_or(1, |n| n.get()),
            window: 16,
            timeout: None,
            heartbeat: None,
            output_memory: 64 << 20,
            guardian: None,
            handle_signals: false,
            host: hostname(),
        }
    }
}

/// The [`RedisQueue`] as the coordinator sees it: completions and failures
/// store result records; a lost producer drains instead of failing; a
/// backend failure stops the run (the queue has already retried it for its
/// reconnect window).
struct Recording<'a> {
    queue: &'a RedisQueue,
    info: AttemptInfo,
    stop: &'a Stop,
    producer_lost: AtomicBool,
    error: Mutex<Option<String>>,
    /// The backend failed (after retrying for its reconnect window): later
    /// calls fail at once instead of retrying again, so that stopping does
    /// not wait a reconnect window per lease. Those leases idle out and
    /// peers take them over.
    failed: AtomicBool,
    released: AtomicU64,
}

impl Recording<'_> {
    fn backend(&self, e: QueueError) -> QueueError {
        if let QueueError::ProducerLost { .. } = e {
            self.lost_producer(&e);
            return e;
        }
        let mut first = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            eprintln!("jobmill: {e}; stopping the workers");
            *first = Some(e.to_string());
        }
        drop(first);
        self.failed.store(true, Ordering::SeqCst);
        self.stop.kill();
        e
    }

    /// `Err` once the backend has failed: the call is not tried.
    fn usable(&self, operation: &'static str) -> Result<(), QueueError> {
        if !self.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let earlier = self
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        Err(QueueError::Backend {
            operation,
            detail: format!("not tried after an earlier failure: {earlier}"),
        })
    }

    fn lost_producer(&self, e: &QueueError) {
        if !self.producer_lost.swap(true, Ordering::SeqCst) {
            eprintln!(
                "jobmill: {e}; stopping (run `jobmill submit` again to add jobs, or an \
                 empty submit to close it)"
            );
        }
        self.stop.drain();
    }
}

impl Queue for Recording<'_> {
    fn put(&self, job: NewJob) -> Result<JobId, PutError> {
        self.usable("put")?;
        self.queue.put(job)
    }

    fn get(&self, worker: WorkerId, timeout: Option<Duration>) -> Result<Lease, GetError> {
        self.usable("lease")?;
        match self.queue.get(worker, timeout) {
            Err(GetError::Backend(e @ QueueError::ProducerLost { .. })) => {
                // Nothing is queued or leased anywhere: drain and end.
                self.lost_producer(&e);
                Err(GetError::Timeout)
            }
            Err(GetError::Backend(e)) => Err(GetError::Backend(self.backend(e))),
            other => other,
        }
    }

    fn try_get(&self, worker: WorkerId) -> Result<Lease, TryGetError> {
        let mut v = Vec::with_capacity(1);
        self.try_get_many(worker, 1, &mut v)?;
        v.pop().ok_or(TryGetError::Empty)
    }

    fn try_get_many(
        &self,
        worker: WorkerId,
        max: usize,
        out: &mut Vec<Lease>,
    ) -> Result<usize, TryGetError> {
        self.usable("lease")?;
        match self.queue.try_get_many(worker, max, out) {
            Err(TryGetError::Backend(e @ QueueError::ProducerLost { .. })) => {
                self.lost_producer(&e);
                Err(TryGetError::Empty)
            }
            Err(TryGetError::Backend(e)) => Err(TryGetError::Backend(self.backend(e))),
            other => other,
        }
    }

    fn complete_many(&self, leases: &[Lease]) -> Result<Vec<Completion>, QueueError> {
        self.usable("complete")?;
        self.queue
            .complete_many_with(leases, &self.info)
            .map_err(|e| self.backend(e))
    }

    fn complete(&self, lease: &Lease) -> Result<Completion, QueueError> {
        self.usable("complete")?;
        self.queue
            .complete_with(lease, &self.info)
            .map_err(|e| self.backend(e))
    }

    fn fail(&self, lease: &Lease, reason: FailReason) -> Result<Disposition, QueueError> {
        self.usable("fail")?;
        self.queue
            .fail_with(lease, reason, &self.info)
            .map_err(|e| self.backend(e))
    }

    fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        self.usable("release")?;
        self.queue.release(lease).map_err(|e| self.backend(e))?;
        // Releases also give back the unstarted jobs of a lost worker
        // process; only those of a stop count as interrupted.
        if self.stop.level() == StopLevel::Killing {
            self.released.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn worker_lost(
        &self,
        worker: WorkerId,
        detail: &str,
    ) -> Result<Vec<(JobId, Disposition)>, QueueError> {
        self.usable("worker lost")?;
        self.queue
            .worker_lost(worker, detail)
            .map_err(|e| self.backend(e))
    }

    fn close(&self) -> Result<(), QueueError> {
        self.usable("close")?;
        self.queue.close().map_err(|e| self.backend(e))
    }

    fn counts(&self) -> Result<Counts, QueueError> {
        self.usable("counts")?;
        self.queue.counts().map_err(|e| self.backend(e))
    }
}

/// Counts outcomes, prints results, registers workers with the guardian.
struct Report<'a> {
    supervisor: &'a Supervisor,
    budget: SpillBudget,
    printer: Printer,
    stop: &'a Stop,
    done: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    requeued: AtomicU64,
    stale: AtomicU64,
    output_error: Mutex<Option<String>>,
}

impl Report<'_> {
    fn stale(&self, o: &Outcome) {
        self.stale.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "jobmill: job {} attempt {}: the lease was taken over by another worker \
             (this worker was presumed lost); its result is not recorded",
            o.job.seq, o.job.attempts
        );
    }
}

impl Observer for Report<'_> {
    fn outcome(&self, o: Outcome) {
        match &o.kind {
            OutcomeKind::Done { result, completion } => {
                if *completion == Completion::Stale {
                    self.stale(&o);
                    return;
                }
                self.done.fetch_add(1, Ordering::Relaxed);
                let mut stdout = Capture::new(self.budget.clone());
                stdout.append(result);
                let stderr = Capture::new(self.budget.clone());
                if let Err(e) = self.printer.job_output(o.job.seq, stdout, stderr) {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        let mut first = self.output_error.lock().unwrap_or_else(|p| p.into_inner());
                        if first.is_none() {
                            eprintln!("jobmill: cannot write output of job {}: {e}", o.job.seq);
                            *first = Some(format!("cannot write output: {e}"));
                        }
                    }
                    self.stop.kill();
                }
            }
            OutcomeKind::Failed {
                reason,
                disposition,
            } => {
                if let FailReason::Reported { message } = reason {
                    eprintln!(
                        "jobmill: job {} attempt {} failed: {message}",
                        o.job.seq, o.job.attempts
                    );
                }
                match disposition {
                    Disposition::Requeued { .. } => {
                        self.requeued.fetch_add(1, Ordering::Relaxed);
                    }
                    Disposition::Final(state) => {
                        if let JobState::Dead { .. } = state {
                            self.dead.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        if !matches!(reason, FailReason::Reported { .. }) {
                            eprintln!("jobmill: job {} {reason}", o.job.seq);
                        }
                    }
                    Disposition::Stale => self.stale(&o),
                }
            }
        }
    }

    fn spawned(&self, _slot: usize, _worker: WorkerId, pid: u32) {
        self.supervisor.guard_group(pid);
    }

    fn reaping(&self, _slot: usize, _worker: WorkerId, pid: u32) {
        self.supervisor.unguard_group(pid);
    }

    fn worker(&self, event: WorkerEvent) {
        match event {
            WorkerEvent::Ended {
                lost: true, detail, ..
            }
            | WorkerEvent::GaveUp { detail, .. } => eprintln!("jobmill: {detail}"),
            _ => {}
        }
    }
}

/// Runs long-lived worker processes on `queue` until it is closed and
/// drained (or the producer is lost, an error happens, or a signal stops
/// the worker). See the module documentation.
///
/// # Errors
///
/// `Err` only if the worker could not start (guardian or signal handlers).
/// Failures while working, including a worker command that cannot be
/// started, are in the summary.
pub fn work_persistent(
    queue: Arc<RedisQueue>,
    opts: PersistentWorkOptions,
) -> std::io::Result<WorkSummary> {
    let budget = SpillBudget::new(opts.output_memory);
    let supervisor = Supervisor::new(opts.guardian.as_deref(), budget.clone())?;
    let stop = Stop::new();
    let signalled = Arc::new(AtomicBool::new(false));
    let recording = Recording {
        queue: &queue,
        info: AttemptInfo {
            host: Some(opts.host.clone()),
            duration: None,
        },
        stop: &stop,
        producer_lost: AtomicBool::new(false),
        error: Mutex::new(None),
        failed: AtomicBool::new(false),
        released: AtomicU64::new(0),
    };
    let report = Report {
        supervisor: &supervisor,
        budget,
        printer: Printer::new(false),
        stop: &stop,
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dead: AtomicU64::new(0),
        requeued: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        output_error: Mutex::new(None),
    };
    let mut config = Config::new(opts.command.clone(), opts.workers.max(1));
    config.window = opts.window.max(1);
    config.timeout = opts.timeout;
    config.heartbeat = opts.heartbeat;
    let result = thread::scope(|s| -> std::io::Result<_> {
        let signals = if opts.handle_signals {
            Some(spawn_signal_thread(s, &stop, &signalled)?)
        } else {
            None
        };
        let result = persistent::run(&recording, &config, &report, &stop);
        if let Some(handle) = signals {
            handle.close();
        }
        Ok(result)
    })?;
    let mut error = recording
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .or_else(|| {
            report
                .output_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
    let producer_lost = recording.producer_lost.load(Ordering::SeqCst);
    match result {
        Ok(_) => {}
        Err(PersistentError::Queue(QueueError::ProducerLost { .. })) if producer_lost => {}
        Err(e) => {
            if error.is_none() {
                eprintln!("jobmill: {e}");
                error = Some(e.to_string());
            }
        }
    }
    if let Err(e) = report.printer.finish() {
        if e.kind() != std::io::ErrorKind::BrokenPipe && error.is_none() {
            eprintln!("jobmill: cannot write output: {e}");
            error = Some(format!("cannot write output: {e}"));
        }
    }
    let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
    Ok(WorkSummary {
        done: n(&report.done),
        failed: n(&report.failed),
        dead: n(&report.dead),
        requeued: n(&report.requeued),
        stale: n(&report.stale),
        interrupted: n(&recording.released),
        signalled: signalled.load(Ordering::SeqCst),
        producer_lost,
        error,
    })
}

fn spawn_signal_thread<'scope>(
    s: &'scope thread::Scope<'scope, '_>,
    stop: &'scope Stop,
    signalled: &'scope AtomicBool,
) -> std::io::Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("jobmill-worker-signals".into())
        .spawn_scoped(s, move || {
            for sig in signals.forever() {
                if sig != SIGHUP {
                    signalled.store(true, Ordering::SeqCst);
                }
                if sig == SIGTERM || (sig == SIGINT && stop.is_stopping()) {
                    if stop.level() != StopLevel::Killing {
                        eprintln!(
                            "jobmill: stopping the workers; the jobs they held go back to the queue"
                        );
                    }
                    stop.kill();
                } else if !stop.is_stopping() {
                    stop.drain();
                    eprintln!(
                        "jobmill: interrupted: leasing no new jobs; waiting for the jobs sent \
                         to the workers. Press Ctrl-C again to stop them."
                    );
                }
            }
        })?;
    Ok(handle)
}
