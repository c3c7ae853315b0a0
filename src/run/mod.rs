//! The dispatcher of `jobmill run`: input → queue → slots → executor →
//! outcome → output, journal and progress.
//!
//! One thread reads the input lazily and puts each job on a bounded
//! [`MemoryQueue`] (so a fast producer waits for the slots: memory stays
//! bounded on any input size). `-j` slot threads lease jobs, run one attempt
//! each through the [`Supervisor`], and resolve the lease: complete, or fail
//! (which requeues the job while attempts remain). Every event goes to the
//! [`Observer`]s (the journal is one) and final outcomes to the [`Printer`].
//!
//! Stopping is modelled once in [`control::Control`]: the first Ctrl-C
//! drains, the second (or SIGTERM) kills. A lease taken while draining is
//! released unrun; an attempt stopped by the kill is reported as
//! interrupted and its job left for `jobmill resume`.

pub mod control;
pub mod halt;
pub mod output;
pub mod persistent;
pub mod progress;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::exec::{Attempt, AttemptSpec, Capture, End, SpillBudget, Supervisor};
use crate::input::InputError;
use crate::job::{FailReason, JobState, NewJob, RetryPolicy, WorkerId};
use crate::queue::memory::MemoryQueue;
use crate::queue::{Completion, Disposition, GetError, Lease, PutError, Queue};
use crate::template::Template;

use control::{Control, Level};
use halt::{Halt, When};
use output::Printer;
use progress::Progress;

/// Everything that shapes a run.
pub struct RunOptions {
    /// The command template.
    pub template: Template,
    /// Number of slots (jobs running at once), at least 1.
    pub jobs: usize,
    /// Print output in input order.
    pub keep_order: bool,
    /// Re-runs allowed after a failed attempt.
    pub retries: u32,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Time between TERM and KILL when stopping a job.
    pub grace: Duration,
    /// When to stop early.
    pub halt: Option<Halt>,
    /// Show a progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
    /// Bytes of job output held in memory before spilling to files.
    pub output_memory: usize,
    /// Jobs waiting in the queue before the input reader waits.
    pub queue_capacity: usize,
    /// The jobmill binary, to start the guardian that stops every job if
    /// jobmill itself is killed; `None` runs without one.
    pub guardian: Option<PathBuf>,
    /// Install SIGINT/SIGTERM/SIGHUP handlers for the run's duration.
    pub handle_signals: bool,
    /// Run the jobs in long-lived workers (`--persistent`) instead of a
    /// process per job; the template is then unused.
    pub persistent: Option<persistent::PersistentOptions>,
}

impl RunOptions {
    /// Options with the defaults of `jobmill run` for `template`.
    pub fn new(template: Template) -> RunOptions {
        RunOptions {
            template,
            jobs: thread::available_parallelism().map_or(1, |n| n.get()),
            keep_order: false,
            retries: 0,
            timeout: None,
            grace: Duration::from_secs(2),
            halt: None,
            progress: false,
            output_memory: 64 << 20,
            queue_capacity: 1024,
            guardian: None,
            handle_signals: false,
            persistent: None,
        }
    }
}

/// A failure reported by an [`Observer`]; it stops the run from starting
/// more jobs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ObserverError(pub String);

/// How one attempt ended, from the run's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// It succeeded; the job is done.
    Done,
    /// It failed and the job was requeued for another attempt.
    Requeued {
        /// Why it failed.
        reason: FailReason,
    },
    /// It failed and the job is out of attempts: `Failed` or `Dead`.
    Final(JobState),
    /// jobmill stopped it (second Ctrl-C, SIGTERM, `--halt now`); the job
    /// has no final state and runs again on resume.
    Interrupted,
}

/// One finished attempt, as observers see it.
pub struct AttemptReport<'a> {
    /// The job's sequence number.
    pub seq: u64,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The slot it ran in, from 1.
    pub slot: usize,
    /// What the executor observed (exit, timing, output).
    pub attempt_result: &'a mut Attempt,
    /// What it meant for the job.
    pub outcome: &'a AttemptOutcome,
}

/// Receives the events of a run. Every method has a no-op default.
///
/// Methods are called from the input thread and from slot threads, so an
/// implementation must be cheap or hand off to a thread of its own (the
/// journal batches them into group commits).
pub trait Observer: Send + Sync {
    /// A job was read (before it can start).
    fn job_read(&self, _job: &NewJob) -> Result<(), ObserverError> {
        Ok(())
    }
    /// The input ended after `total` jobs.
    fn input_complete(&self, _total: u64) -> Result<(), ObserverError> {
        Ok(())
    }
    /// An attempt is about to start.
    fn attempt_started(
        &self,
        _seq: u64,
        _attempt: u32,
        _slot: usize,
        _at: SystemTime,
    ) -> Result<(), ObserverError> {
        Ok(())
    }
    /// An attempt ended.
    fn attempt_finished(&self, _report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        Ok(())
    }
    /// The run ended (called once, after the last job event).
    fn run_finished(&self, _summary: &RunSummary) -> Result<(), ObserverError> {
        Ok(())
    }
}

/// Where a run's jobs come from.
pub type JobSource = Box<dyn Iterator<Item = Result<NewJob, InputError>> + Send>;

/// The result of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Jobs read from the input.
    pub read: u64,
    /// Jobs done.
    pub done: u64,
    /// Jobs failed (final).
    pub failed: u64,
    /// Jobs dead (final).
    pub dead: u64,
    /// Stopped by a signal.
    pub interrupted: bool,
    /// Stopped by `--halt`.
    pub halted: bool,
    /// The input was read to its end.
    pub input_complete: bool,
    /// A fatal error (input, journal, backend), as one line.
    pub error: Option<String>,
}

impl RunSummary {
    /// The exit status: 0 when all jobs succeeded; the number of failed
    /// jobs capped at 101; 130 when interrupted; 255 on an error.
    pub fn exit_code(&self) -> i32 {
        if self.error.is_some() {
            255
        } else if self.interrupted {
            130
        } else {
            (self.failed + self.dead).min(101) as i32
        }
    }
}

struct Ctx {
    opts: RunOptions,
    queue: MemoryQueue,
    supervisor: Supervisor,
    budget: SpillBudget,
    control: Control,
    printer: Printer,
    progress: Progress,
    observers: Vec<Arc<dyn Observer>>,
    done: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    read: AtomicU64,
    input_complete: std::sync::atomic::AtomicBool,
    running: AtomicUsize,
    halted: std::sync::atomic::AtomicBool,
    error: Mutex<Option<String>>,
}

impl Ctx {
    /// Raises the stop level and acts on it: close the queue so the reader
    /// stops; stop running jobs when killing.
    fn stop(&self, level: Level) {
        if self.control.raise(level) {
            let _ = self.queue.close();
            if level == Level::Killing {
                self.supervisor.terminate_all();
            }
        }
    }

    fn fatal(&self, message: String) {
        {
            let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
            if e.is_none() {
                self.progress.println(&format!("jobmill: {message}"));
                *e = Some(message);
            }
        }
        self.stop(Level::Draining);
    }

    /// Calls `f` on every observer; an error is fatal (the run drains).
    /// Returns whether all succeeded.
    fn observe(&self, mut f: impl FnMut(&dyn Observer) -> Result<(), ObserverError>) -> bool {
        let mut ok = true;
        for o in &self.observers {
            if let Err(e) = f(o.as_ref()) {
                self.fatal(e.0);
                ok = false;
            }
        }
        ok
    }
}

/// Runs every job of `jobs` under `opts`, reporting to `observers`, and
/// returns when all jobs reached a final state or the run was stopped.
///
/// # Errors
///
/// Returns `Err` only if the run could not start (the guardian or the
/// signal handlers could not be set up). Failures during the run are in the
/// summary.
pub fn run(
    opts: RunOptions,
    jobs: JobSource,
    observers: Vec<Arc<dyn Observer>>,
) -> std::io::Result<RunSummary> {
    let budget = SpillBudget::new(opts.output_memory);
    let supervisor =
        Supervisor::with_guardian_grace(opts.guardian.as_deref(), opts.grace, budget.clone())?;
    let ctx = Arc::new(Ctx {
        queue: MemoryQueue::new(opts.queue_capacity, RetryPolicy::with_retries(opts.retries)),
        supervisor,
        budget,
        control: Control::default(),
        printer: Printer::new(opts.keep_order),
        progress: Progress::new(opts.progress),
        observers,
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dead: AtomicU64::new(0),
        read: AtomicU64::new(0),
        input_complete: Default::default(),
        running: AtomicUsize::new(0),
        halted: Default::default(),
        error: Mutex::new(None),
        opts,
    });

    let signals = if ctx.opts.handle_signals {
        Some(spawn_signal_thread(Arc::clone(&ctx))?)
    } else {
        None
    };

    {
        let ctx = Arc::clone(&ctx);
        // Not joined: while draining it may be blocked reading a stdin that
        // never ends; the run does not wait for it.
        thread::Builder::new()
            .name("jobmill-input".into())
            .spawn(move || read_input(&ctx, jobs))?;
    }

    // `--persistent`: one coordinator of long-lived workers replaces the
    // slot threads (see `persistent`).
    let slots: Vec<_> = if ctx.opts.persistent.is_some() {
        let ctx = Arc::clone(&ctx);
        vec![thread::Builder::new()
            .name("jobmill-persistent".into())
            .spawn(move || {
                if let Some(p) = &ctx.opts.persistent {
                    persistent::drive(&ctx, p)
                }
            })?]
    } else {
        (1..=ctx.opts.jobs.max(1))
            .map(|slot| {
                let ctx = Arc::clone(&ctx);
                thread::Builder::new()
                    .name(format!("jobmill-slot-{slot}"))
                    .spawn(move || slot_loop(&ctx, slot))
            })
            .collect::<Result<_, _>>()?
    };
    for s in slots {
        if s.join().is_err() {
            ctx.fatal("internal error: a slot thread panicked".into());
        }
    }

    if let Err(e) = ctx.printer.finish() {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            ctx.fatal(format!("cannot write output: {e}"));
        }
    }
    ctx.progress.finish();
    if let Some((handle, thread)) = signals {
        handle.close();
        let _ = thread.join();
    }
    let summary = RunSummary {
        read: ctx.read.load(Ordering::SeqCst),
        done: ctx.done.load(Ordering::SeqCst),
        failed: ctx.failed.load(Ordering::SeqCst),
        dead: ctx.dead.load(Ordering::SeqCst),
        interrupted: ctx.control.interrupted(),
        halted: ctx.halted.load(Ordering::SeqCst),
        input_complete: ctx.input_complete.load(Ordering::SeqCst),
        error: ctx.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    ctx.observe(|o| o.run_finished(&summary));
    let mut summary = summary;
    summary.error = ctx.error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(summary)
}

fn read_input(ctx: &Ctx, jobs: JobSource) {
    let mut total = 0u64;
    for item in jobs {
        if !ctx.control.may_start() {
            return;
        }
        let job = match item {
            Ok(job) => job,
            Err(e) => {
                ctx.fatal(e.to_string());
                return;
            }
        };
        ctx.observe(|o| o.job_read(&job));
        ctx.printer.expect(job.seq);
        let seq = job.seq;
        match ctx.queue.put(job) {
            Ok(_) => {
                total += 1;
                ctx.read.store(total, Ordering::SeqCst);
            }
            Err(PutError::Closed(_)) => {
                let _ = ctx.printer.skip(seq);
                return;
            }
            Err(PutError::Backend(e)) => {
                ctx.fatal(e.to_string());
                return;
            }
        }
    }
    ctx.input_complete.store(true, Ordering::SeqCst);
    ctx.progress.set_total(total);
    ctx.observe(|o| o.input_complete(total));
    let _ = ctx.queue.close();
}

fn slot_loop(ctx: &Ctx, slot: usize) {
    let worker = WorkerId(slot as u64);
    let mut argv: Vec<OsString> = Vec::new();
    loop {
        if !ctx.control.may_start() {
            return;
        }
        let lease = match ctx.queue.get(worker, None) {
            Ok(lease) => lease,
            Err(GetError::Closed) => return,
            Err(GetError::Timeout) => continue,
            Err(GetError::Backend(e)) => {
                ctx.fatal(e.to_string());
                return;
            }
        };
        if !ctx.control.may_start() {
            let _ = ctx.queue.release(&lease);
            let _ = ctx.printer.skip(lease.job.seq);
            return;
        }
        run_lease(ctx, slot, &lease, &mut argv);
    }
}

fn run_lease(ctx: &Ctx, slot: usize, lease: &Lease, argv: &mut Vec<OsString>) {
    let job = &lease.job;
    ctx.opts.template.render(&job.payload, job.seq, slot, argv);
    let env = [
        ("JOBMILL_SEQ", OsString::from(job.seq.to_string())),
        ("JOBMILL_SLOT", OsString::from(slot.to_string())),
    ];
    let spec = AttemptSpec {
        argv,
        env: &env,
        timeout: ctx.opts.timeout,
        grace: ctx.opts.grace,
    };
    if !ctx.observe(|o| o.attempt_started(job.seq, job.attempts, slot, SystemTime::now())) {
        // The start could not be recorded (the journal failed): the run
        // drains, and this job is given back unrun.
        let _ = ctx.queue.release(lease);
        let _ = ctx.printer.skip(job.seq);
        return;
    }
    ctx.running.fetch_add(1, Ordering::SeqCst);
    let mut attempt = ctx.supervisor.run(&spec);
    ctx.running.fetch_sub(1, Ordering::SeqCst);

    let outcome = resolve(ctx, lease, &attempt);
    let mut report = AttemptReport {
        seq: job.seq,
        attempt: job.attempts,
        slot,
        attempt_result: &mut attempt,
        outcome: &outcome,
    };
    ctx.observe(|o| o.attempt_finished(&mut report));

    match &outcome {
        AttemptOutcome::Requeued { .. } => {}
        AttemptOutcome::Done | AttemptOutcome::Final(_) | AttemptOutcome::Interrupted => {
            let stdout = std::mem::replace(&mut attempt.stdout, Capture::new(ctx.budget.clone()));
            let stderr = std::mem::replace(&mut attempt.stderr, Capture::new(ctx.budget.clone()));
            if let Err(e) = ctx.printer.job_output(job.seq, stdout, stderr) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    // Nobody reads our output any more: stop quietly.
                    ctx.stop(Level::Killing);
                } else {
                    ctx.fatal(format!("cannot write output of job {}: {e}", job.seq));
                }
            }
        }
    }
    if let AttemptOutcome::Final(JobState::Failed { reason, .. } | JobState::Dead { reason, .. }) =
        &outcome
    {
        if !matches!(reason, FailReason::Exit { .. }) {
            ctx.progress
                .println(&format!("jobmill: job {} {}", job.seq, reason));
        }
    }
    after_outcome(ctx, &outcome);
}

/// Resolves the lease from what the executor saw.
fn resolve(ctx: &Ctx, lease: &Lease, attempt: &Attempt) -> AttemptOutcome {
    if attempt.terminated {
        let _ = ctx.queue.release(lease);
        return AttemptOutcome::Interrupted;
    }
    let reason = match &attempt.end {
        End::Exited(0) if !attempt.timed_out => {
            return match ctx.queue.complete(lease) {
                Ok(Completion::Recorded) => AttemptOutcome::Done,
                Ok(Completion::Stale) => AttemptOutcome::Interrupted,
                Err(e) => {
                    ctx.fatal(e.to_string());
                    AttemptOutcome::Interrupted
                }
            };
        }
        _ if attempt.timed_out => FailReason::Timeout,
        End::Exited(code) => FailReason::Exit { code: *code },
        End::Signaled(signal) => FailReason::Signal { signal: *signal },
        End::SpawnFailed(error) => FailReason::Spawn {
            error: error.clone(),
        },
    };
    match ctx.queue.fail(lease, reason.clone()) {
        Ok(Disposition::Requeued { .. }) => AttemptOutcome::Requeued { reason },
        Ok(Disposition::Final(state)) => AttemptOutcome::Final(state),
        Ok(Disposition::Stale) => AttemptOutcome::Interrupted,
        Err(e) => {
            ctx.fatal(e.to_string());
            AttemptOutcome::Interrupted
        }
    }
}

fn after_outcome(ctx: &Ctx, outcome: &AttemptOutcome) {
    match outcome {
        AttemptOutcome::Done => {
            ctx.done.fetch_add(1, Ordering::SeqCst);
        }
        AttemptOutcome::Final(JobState::Dead { .. }) => {
            ctx.dead.fetch_add(1, Ordering::SeqCst);
        }
        AttemptOutcome::Final(_) => {
            ctx.failed.fetch_add(1, Ordering::SeqCst);
        }
        AttemptOutcome::Requeued { .. } | AttemptOutcome::Interrupted => return,
    }
    let succeeded = ctx.done.load(Ordering::SeqCst);
    let failed = ctx.failed.load(Ordering::SeqCst) + ctx.dead.load(Ordering::SeqCst);
    ctx.progress.update(
        succeeded + failed,
        failed,
        ctx.running.load(Ordering::SeqCst),
    );
    if let Some(halt) = ctx.opts.halt {
        if halt.triggered(succeeded, failed) && ctx.control.may_start() {
            ctx.halted.store(true, Ordering::SeqCst);
            let running = ctx.running.load(Ordering::SeqCst);
            let (level, what) = match halt.when {
                When::Soon => (
                    Level::Draining,
                    format!("waiting for {running} running jobs"),
                ),
                When::Now => (Level::Killing, format!("stopping {running} running jobs")),
            };
            ctx.progress
                .println(&format!("jobmill: --halt {halt} reached; {what}"));
            ctx.stop(level);
        }
    }
}

type SignalThread = (signal_hook::iterator::Handle, thread::JoinHandle<()>);

fn spawn_signal_thread(ctx: Arc<Ctx>) -> std::io::Result<SignalThread> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let handle = signals.handle();
    let thread = thread::Builder::new()
        .name("jobmill-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let running = ctx.running.load(Ordering::SeqCst);
                let to = match sig {
                    SIGINT if ctx.control.level() == Level::Running => Level::Draining,
                    SIGHUP => Level::Draining,
                    _ => Level::Killing,
                };
                if sig != SIGHUP {
                    ctx.control.set_interrupted();
                }
                if ctx.control.level() >= to {
                    continue;
                }
                let msg = match to {
                    Level::Draining => format!(
                        "jobmill: interrupted: starting no new jobs; waiting for {running} running job{}. Press Ctrl-C again to stop them.",
                        if running == 1 { "" } else { "s" }
                    ),
                    _ => format!(
                        "jobmill: stopping {running} running job{} (TERM, then KILL after {:?})",
                        if running == 1 { "" } else { "s" },
                        ctx.opts.grace
                    ),
                };
                ctx.progress.println(&msg);
                ctx.stop(to);
            }
        })?;
    Ok((handle, thread))
}
