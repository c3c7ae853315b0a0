//! The engine: the one dispatcher under every front end.
//!
//! ```text
//!  JobSource ─[input thread]─put─▶ Queue ◀─lease / settle─ Gate ◀─── Executor
//!  (optional)   job_read                                    │        (Processes: a process per
//!                                                           │         attempt; Workers: long-lived
//!                         Dispatch::start ◀─────────────────┤         worker processes)
//!                         Dispatch::finish (resolve) ◀──────┘
//!                                 │  Outcome + Resolution
//!                                 ▼
//!               observers (journal, reporter) · Printer · halt · counts
//! ```
//!
//! A front end is this engine with a queue, an executor and observers:
//!
//! | front end | queue | input | executor |
//! |---|---|---|---|
//! | `run` | [`MemoryQueue`](crate::queue::memory::MemoryQueue) | the inputs | [`Processes`] |
//! | `run --persistent` | `MemoryQueue` | the inputs | [`Workers`] |
//! | `run --queue URL` | [`RedisQueue`](crate::queue::redis::RedisQueue) | the inputs | `Processes` or `Workers` |
//! | `worker --queue URL` | `RedisQueue` | none | `Processes` or `Workers` |
//! | `resume` | `MemoryQueue` | the journal's unfinished jobs, then the rest of the input | as the run was |
//! | [`jobmill::Pool`](crate::pool::Pool) (a map) | `MemoryQueue` | none: the map's iterator puts the items | `Workers` (results kept byte for byte) |
//! | the Python bindings' `Pool` | `MemoryQueue` | none: the Python side puts the tasks | `Workers` |
//!
//! What happens when an attempt ends is decided here once:
//! [`Dispatch::finish`] resolves the lease against the queue (complete,
//! fail — which requeues under the retry and lost-worker rules of
//! [`JobState::apply`](crate::job::JobState::apply) — or release), then
//! [`Dispatch::report`] tells the observers, prints the job's output,
//! counts, and checks `--halt`. An executor that settles leases in batches
//! (the long-lived workers, to keep Redis round trips few) calls `report`
//! with the queue's verdict, mapped by the one function
//! [`Resolution::of_disposition`].
//!
//! Stopping is modelled once, in [`stop`]: running → draining → killing,
//! with one signal thread for every front end, and one
//! [`StopHandle`](stop::StopHandle) ([`Options::stop`]) through which a
//! library front end stops its run from outside.
//!
//! Options of GNU parallel live in this one loop too: `--delay`,
//! `--memfree` and `--load` are a [`throttle::Throttle`] that
//! [`Dispatch::lease`] consults before every start, whatever the executor
//! (with `--memfree`, a watcher thread also stops the youngest attempt
//! through [`Executor::stop_youngest`] when memory runs low). So are
//! `--mem-per-job` and the cap on jobs at once after an OOM kill, which the
//! throttle learns from every attempt's end in [`Dispatch::report`]. A
//! retry delayed by `--retry-delay` waits in the queue, not in a slot
//! (see [`crate::queue::memory`]). `--tag` is a
//! [`output::Tag`] of the printer; `--joblog` and `--results` are observers
//! ([`joblog::Joblog`], [`results::Results`]).

mod gate;
pub mod halt;
pub mod joblog;
pub mod output;
mod plan;
mod process;
pub mod results;
pub mod stop;
pub mod throttle;
mod workers;

pub use gate::Gate;
pub use plan::{Plan, Work};
pub use process::Processes;
pub use workers::{ResultEnd, Workers, WorkersOptions};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::events::{
    AttemptReport, AttemptStart, Message, Notice, Observer, ObserverError, Resolution, RunSummary,
    Runner, SharedError, StopCause,
};
use crate::exec::{Capture, SpillBudget};
use crate::input::InputError;
use crate::job::{FailReason, Job, JobState, NewJob, WorkerId};
use crate::outcome::{AttemptEnd, Outcome};
use crate::queue::{AttemptInfo, Completion, Disposition, GetError, Lease, PutError, Queue};

use halt::{Halt, When};
use output::Printer;
use stop::{Control, Level, SignalThread};

/// Where a run's jobs come from.
pub type JobSource = Box<dyn Iterator<Item = Result<NewJob, InputError>> + Send>;

/// How long a lease waits for a job before checking whether to stop.
const POLL: Duration = Duration::from_millis(250);

/// What runs the attempts: a process per attempt ([`Processes`]) or
/// long-lived workers ([`Workers`]).
///
/// An executor leases jobs through the [`Dispatch`] it is given (or through
/// its [`Dispatch::queue`], for batches), calls [`Dispatch::start`] before
/// an attempt starts and [`Dispatch::finish`] (or [`Dispatch::report`])
/// when it ends, and returns once the dispatch gives it nothing more.
pub trait Executor: Send + Sync {
    /// Runs jobs until the queue is drained or the run stops.
    ///
    /// # Errors
    ///
    /// A failure of the executor itself (its workers cannot be started);
    /// it ends the run with that error.
    fn execute(&self, dispatch: &Dispatch) -> Result<(), SharedError>;

    /// The kill stage of a stop: stop every running attempt now (TERM, KILL
    /// after the grace). Called from the signal thread or a slot thread.
    fn kill(&self);

    /// `--memfree`: stops the attempt that started last, so that its job
    /// runs again later without counting an attempt (it ends as
    /// [`AttemptEnd::Stopped`]). Returns its job's number, or `None` when
    /// the executor cannot (the default) or nothing runs.
    fn stop_youngest(&self) -> Option<u64> {
        None
    }
}

/// Everything that shapes the engine, whatever the executor.
pub struct Options {
    /// Print output in input order.
    pub keep_order: bool,
    /// When to stop early.
    pub halt: Option<Halt>,
    /// The spill budget every captured output of the run shares (the
    /// executor's captures and the engine's).
    pub budget: SpillBudget,
    /// Install SIGINT/SIGTERM/SIGHUP handlers for the run's duration.
    pub handle_signals: bool,
    /// Time between TERM and KILL when stopping a job (for messages).
    pub grace: Duration,
    /// What the queue stores of each attempt (the host, for Redis).
    pub host: Option<String>,
    /// Print each job's output (default). Off for front ends that collect
    /// results with an [`Observer`] instead (`jobmill::Pool`, the Python
    /// bindings' `Pool`).
    pub print_output: bool,
    /// Prefix every line of a job's output (`--tag`, `--tagstring`).
    pub tag: Option<output::Tag>,
    /// Print output as it comes (`--line-buffer`, `-u`) instead of whole
    /// when each job ends. Only for an executor that prints a running job's
    /// output itself ([`Processes`]); [`Plan`] sets it only
    /// then (a long-lived worker's output arrives whole, and is printed
    /// whole).
    pub live: Option<output::Live>,
    /// Throttles consulted before each start (`--delay`, `--memfree`,
    /// `--load`, `--mem-per-job`, the OOM cap); `None`: start as soon as a
    /// slot is free, and no cap after an OOM kill.
    pub throttle: Option<Arc<throttle::Throttle>>,
    /// A stop asked from outside the run, by a library front end
    /// (`jobmill::Pool`, the Python bindings' pool): the run drains or is
    /// killed when the handle says so, with the cause
    /// [`StopCause::Requested`]. `None`: only signals (with
    /// [`Options::handle_signals`]) and the run's own causes stop it.
    pub stop: Option<stop::StopHandle>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keep_order: false,
            halt: None,
            budget: SpillBudget::new(64 << 20),
            handle_signals: false,
            grace: Duration::from_secs(2),
            host: None,
            print_output: true,
            tag: None,
            live: None,
            throttle: None,
            stop: None,
        }
    }
}

/// The run as executors see it: leasing, starting and finishing attempts,
/// the stop level, and messages. One per run, shared by every thread.
pub struct Dispatch {
    queue: Arc<dyn Queue>,
    observers: Vec<Arc<dyn Observer>>,
    control: Control,
    printer: Printer,
    opts: Options,
    /// The run owns its queue's input: a stop closes the queue, so that the
    /// input reader and waiting leases end. A worker on a shared queue
    /// never closes it.
    owns_queue: bool,
    kill: Mutex<Option<Arc<dyn Executor>>>,
    read: AtomicU64,
    /// The loss of the guardian was told.
    guardian_told: AtomicBool,
    /// Jobs that ended failed or dead with the cause `--halt` counts.
    halt_cause: AtomicU64,
    input_complete: AtomicBool,
    running: AtomicUsize,
    done: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    requeued: AtomicU64,
    stale: AtomicU64,
    stopped: AtomicU64,
    /// The backend failed: later calls are not tried (see [`Dispatch::queue`]).
    backend_failed: AtomicBool,
    /// Jobs whose failed attempt the queue has settled (and may have
    /// requeued) but observers have not seen end yet; see
    /// [`Dispatch::wait_reported`].
    ending: Mutex<std::collections::HashSet<u64>>,
    /// How many entries `ending` has: starts skip its lock when none.
    ending_count: AtomicUsize,
    /// Signalled when an entry leaves `ending`.
    reported: std::sync::Condvar,
    error: Mutex<Option<SharedError>>,
    /// [`Options::host`], shared by every attempt's [`Runner`].
    host: Option<Arc<str>>,
}

impl Dispatch {
    /// The stop level.
    pub fn level(&self) -> Level {
        self.control.level()
    }

    /// Whether new attempts may start.
    pub fn may_start(&self) -> bool {
        self.control.may_start()
    }

    /// The spill budget that every captured output of the run shares.
    pub fn budget(&self) -> &SpillBudget {
        &self.opts.budget
    }

    /// Whether a fatal error was recorded.
    pub fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Attempts running now (started and not yet finished).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// The run's queue, for executors that lease and settle in batches. It
    /// is the engine's [`Gate`] over the backend: a lease is refused once
    /// the run stops; a lost producer drains the run; a backend failure
    /// stops it once and later calls are not tried.
    pub fn queue(&self) -> Gate<'_> {
        Gate { d: self }
    }

    /// Sends a message to the observers.
    pub fn notice(&self, notice: Notice) {
        for o in &self.observers {
            o.notice(&notice);
        }
    }

    /// Raises the stop level for `cause`, closing an owned queue and, at
    /// the kill stage, stopping every running attempt.
    pub fn stop(&self, level: Level, cause: StopCause) {
        if self.control.raise(level, cause) {
            if self.owns_queue {
                let _ = self.queue.close();
            }
            if level == Level::Killing {
                let executor = self.kill.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(e) = executor {
                    e.kill();
                }
            }
        }
    }

    /// Records a fatal error (the first one is kept) and drains the run.
    pub fn fatal(&self, error: SharedError) {
        {
            let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
            if e.is_none() {
                *e = Some(error);
            }
        }
        self.stop(Level::Draining, StopCause::Error);
    }

    fn fatal_msg(&self, message: String) {
        self.fatal(Arc::new(Message(message)));
    }

    /// Leases the next job for `worker`, waiting as long as it takes (and
    /// as the throttles say: `--memfree` and `--load` before taking a job,
    /// `--delay` once it holds one).
    /// `None` when the executor should end: the queue is closed and
    /// drained, or the run is stopping (a lease taken meanwhile is given
    /// back unrun).
    pub fn lease(&self, worker: WorkerId) -> Option<Lease> {
        let gate = self.queue();
        let go_on = || self.may_start();
        loop {
            if !self.may_start() {
                return None;
            }
            // --memfree, --load, then --mem-per-job and the OOM cap
            // (admission, counted): before taking a job, so that another
            // worker on a shared queue may take it meanwhile.
            let throttle = self.opts.throttle.as_deref();
            if let Some(t) = throttle {
                if !t.wait_system(&go_on) || !t.admit(&go_on) {
                    return None;
                }
            }
            match gate.get(worker, Some(POLL)) {
                Ok(lease) => {
                    // --delay: counted from the previous start.
                    let delayed = throttle.is_none_or(|t| t.wait_delay(&go_on));
                    if let Some(t) = throttle {
                        t.bind(lease.job.seq);
                    }
                    if !delayed || !self.may_start() {
                        self.give_back(&lease);
                        return None;
                    }
                    return Some(lease);
                }
                Err(e) => {
                    if let Some(t) = throttle {
                        t.unadmit();
                    }
                    match e {
                        GetError::Timeout => continue,
                        GetError::Closed | GetError::Backend(_) => return None,
                    }
                }
            }
        }
    }

    /// Gives a lease back unrun (the attempt is not counted).
    pub fn give_back(&self, lease: &Lease) {
        if let Some(t) = &self.opts.throttle {
            t.unbind(lease.job.seq);
        }
        if self.queue().release(lease).is_ok() {
            let _ = self.printer.skip(lease.job.seq);
        }
    }

    /// Who runs an attempt on long-lived worker `worker` (`None`: a
    /// process of its own), on this run's host.
    fn runner(&self, worker: Option<WorkerId>) -> Runner {
        Runner {
            worker,
            host: self.host.clone(),
        }
    }

    /// An attempt of `job` is about to start in `slot`, on long-lived
    /// worker `worker` (`None`: a process of its own). Returns false when
    /// it must not start (an observer such as the journal failed to record
    /// it; the run is draining) — the caller gives the lease back.
    pub fn start(&self, job: &Job, slot: usize, worker: Option<WorkerId>) -> bool {
        self.wait_reported(job.seq);
        let start = AttemptStart {
            seq: job.seq,
            attempt: job.attempts,
            slot,
            runner: self.runner(worker),
            at: std::time::SystemTime::now(),
        };
        if !self.observe(|o| o.attempt_started(&start)) {
            return false;
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// The attempt of `lease` in `slot` ended: resolves the lease against
    /// the queue, then [`Dispatch::report`]s it.
    pub fn finish(
        &self,
        lease: &Lease,
        slot: usize,
        outcome: &Outcome,
        stdout: Capture,
        stderr: Capture,
    ) {
        let info = AttemptInfo {
            host: self.opts.host.clone(),
            duration: outcome.duration,
        };
        let gate = self.queue();
        let resolution = match &outcome.end {
            AttemptEnd::Succeeded => match gate.complete_with(lease, &info) {
                Ok(c) => Resolution::of_completion(c),
                Err(_) => Resolution::Interrupted,
            },
            AttemptEnd::Stopped => {
                let _ = gate.release(lease);
                Resolution::Interrupted
            }
            AttemptEnd::Failed(reason) => match gate.fail_with(lease, reason.clone(), &info) {
                Ok(d) => Resolution::of_disposition(d, reason.clone()),
                Err(_) => Resolution::Interrupted,
            },
        };
        self.report(&lease.job, slot, None, outcome, resolution, stdout, stderr);
    }

    /// An attempt of `job` in `slot` (on long-lived worker `worker`, or
    /// `None`) ended and the queue has settled it as `resolution`:
    /// observers, output, counts, messages and `--halt`.
    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &self,
        job: &Job,
        slot: usize,
        worker: Option<WorkerId>,
        outcome: &Outcome,
        resolution: Resolution,
        mut stdout: Capture,
        mut stderr: Capture,
    ) {
        // Saturating: an executor may report an attempt it could not
        // announce (a payload it could not send fails without starting).
        let _ = self
            .running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        // --mem-per-job learns its peak; an OOM kill lowers the cap on
        // jobs at once.
        if let Some(t) = &self.opts.throttle {
            let before = t.oom_cap();
            t.ended(job.seq, outcome);
            match (before, t.oom_cap()) {
                (b, Some(cap)) if b.is_none_or(|b| cap < b) => {
                    self.notice(Notice::Info(format!(
                        "job {} was killed out of memory: at most {cap} job{} at once for now",
                        job.seq,
                        if cap == 1 { "" } else { "s" }
                    )));
                }
                _ => {}
            }
        }
        {
            let mut report = AttemptReport {
                seq: job.seq,
                attempt: job.attempts,
                slot,
                runner: self.runner(worker),
                outcome,
                resolution: &resolution,
                stdout: &mut stdout,
                stderr: &mut stderr,
            };
            self.observe(|o| o.attempt_finished(&mut report));
        }
        self.mark_reported(job.seq);
        if let AttemptEnd::Failed(FailReason::Reported { message }) = &outcome.end {
            self.notice(Notice::AttemptFailed {
                seq: job.seq,
                attempt: job.attempts,
                message: message.clone(),
            });
        }
        let stale = resolution == Resolution::Interrupted && outcome.end != AttemptEnd::Stopped;
        if stale {
            self.stale.fetch_add(1, Ordering::SeqCst);
            self.notice(Notice::Stale {
                seq: job.seq,
                attempt: job.attempts,
            });
        }
        // The job's output is printed once, with its last attempt (or the
        // attempt a stop cut short; not one that `--memfree` stopped while
        // the run goes on: its job runs again).
        let cut_short = outcome.end == AttemptEnd::Stopped && !self.may_start();
        // Printed as it came instead, under `--line-buffer` or `-u`.
        let printed_live = self.live_output().is_some();
        if self.opts.print_output && !printed_live && (resolution.is_final() || cut_short) {
            let tag = self.tag(job, slot);
            if let Err(e) = self.printer.tagged_output(job.seq, tag, stdout, stderr) {
                self.output_failed(job.seq, &e);
            }
        }
        match &resolution {
            Resolution::Done => {
                self.done.fetch_add(1, Ordering::SeqCst);
            }
            Resolution::Final(state) => {
                if let JobState::Failed { reason, .. } | JobState::Dead { reason, .. } = state {
                    if !matches!(
                        reason,
                        FailReason::Exit { .. } | FailReason::Reported { .. }
                    ) {
                        self.notice(Notice::JobEnded {
                            seq: job.seq,
                            reason: reason.clone(),
                        });
                    }
                }
                if let JobState::Failed { reason, .. } | JobState::Dead { reason, .. } = state {
                    if self.opts.halt.and_then(|h| h.cause()) == Some(reason.cause()) {
                        self.halt_cause.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if matches!(state, JobState::Dead { .. }) {
                    self.dead.fetch_add(1, Ordering::SeqCst);
                } else {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
            Resolution::Requeued { .. } => {
                self.requeued.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Resolution::Interrupted => {
                if !stale {
                    self.stopped.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
        }
        self.check_halt();
    }

    /// The prefix of every line of `job`'s output in `slot` (`--tag`,
    /// `--tagstring`); empty without one.
    pub fn tag(&self, job: &Job, slot: usize) -> Vec<u8> {
        match &self.opts.tag {
            Some(t) => t.render(&job.payload, job.seq, slot),
            None => Vec::new(),
        }
    }

    /// How output is printed as it comes (`--line-buffer`, `-u`), when it
    /// is, for executors that read a running job's output. `None`: print
    /// each job's output whole (or not at all, with `--results`).
    pub fn live_output(&self) -> Option<output::Live> {
        self.opts.live.filter(|_| self.opts.print_output)
    }

    /// Tells once (as a [`Notice::Info`]) that `supervisor`'s guardian
    /// is gone for good. Executors call it as attempts end: one atomic load
    /// while the guardian is there.
    pub fn check_guardian(&self, supervisor: &crate::exec::Supervisor) {
        if let Some(why) = supervisor.guardian_lost() {
            if !self.guardian_told.swap(true, Ordering::SeqCst) {
                self.notice(Notice::Info(why));
            }
        }
    }

    /// Writing job `seq`'s output failed with `e`: a closed stdout stops
    /// the run quietly, anything else is fatal.
    pub fn output_failed(&self, seq: u64, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // Nobody reads our output any more: stop quietly.
            self.stop(Level::Killing, StopCause::OutputClosed);
        } else {
            self.fatal_msg(format!("cannot write the output of job {seq}: {e}"));
        }
    }

    /// A failed attempt of job `seq` is about to be settled: the queue may
    /// requeue the job, and another slot or worker may lease it before
    /// this attempt's end is reported. Its next start waits for that
    /// report (`Dispatch::wait_reported`), so observers (the journal)
    /// always see an attempt end before the next attempt of the job starts.
    fn mark_ending(&self, seq: u64) {
        let mut e = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        if e.insert(seq) {
            self.ending_count.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn mark_reported(&self, seq: u64) {
        if self.ending_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut e = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        if e.remove(&seq) {
            self.ending_count.fetch_sub(1, Ordering::SeqCst);
            drop(e);
            self.reported.notify_all();
        }
    }

    /// Waits until the previous attempt of job `seq`, if its end is being
    /// settled, has been reported. Bounded: an executor that settles an
    /// attempt and never reports it delays the next start by 1 s at most.
    fn wait_reported(&self, seq: u64) {
        if self.ending_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut e = self.ending.lock().unwrap_or_else(|e| e.into_inner());
        while e.contains(&seq) {
            let now = std::time::Instant::now();
            if now >= deadline {
                return;
            }
            e = self
                .reported
                .wait_timeout(e, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn check_halt(&self) {
        let Some(halt) = self.opts.halt else { return };
        let succeeded = self.done.load(Ordering::SeqCst);
        let failed = self.failed.load(Ordering::SeqCst) + self.dead.load(Ordering::SeqCst);
        let of_cause = self.halt_cause.load(Ordering::SeqCst);
        if !halt.triggered(succeeded, failed, of_cause) || !self.may_start() {
            return;
        }
        let running = self.running();
        let cause = format!("--halt {halt} reached");
        match halt.when {
            When::Soon => {
                self.notice(Notice::Draining { running, cause });
                self.stop(Level::Draining, StopCause::Halt);
            }
            When::Now => {
                self.notice(Notice::Killing {
                    running,
                    grace: self.opts.grace,
                    cause,
                });
                self.stop(Level::Killing, StopCause::Halt);
            }
        }
    }

    /// Calls `f` on every observer; an error is fatal (the run drains).
    /// Returns whether all succeeded.
    fn observe(&self, mut f: impl FnMut(&dyn Observer) -> Result<(), ObserverError>) -> bool {
        let mut ok = true;
        for o in &self.observers {
            if let Err(e) = f(o.as_ref()) {
                self.fatal(Arc::new(e));
                ok = false;
            }
        }
        ok
    }

    /// Handles one signal: the stop model's rule, a message, the stop.
    fn on_signal(&self, signal: i32) {
        let to = stop::level_for_signal(signal, self.level());
        let cause = StopCause::Signal(signal);
        if self.level() >= to {
            // Still record the first cause (a SIGHUP while halting, say).
            self.control.raise(to, cause);
            return;
        }
        let running = self.running();
        let name = crate::job::signal_name(signal);
        let notice = match to {
            Level::Draining => Notice::Draining {
                running,
                cause: format!("interrupted ({name})"),
            },
            _ => Notice::Killing {
                running,
                grace: self.opts.grace,
                cause: format!("interrupted ({name})"),
            },
        };
        self.notice(notice);
        self.stop(to, cause);
    }

    fn read_input(&self, jobs: JobSource) {
        let mut total = 0u64;
        for item in jobs {
            if !self.may_start() {
                return;
            }
            let job = match item {
                Ok(job) => job,
                Err(e) => {
                    self.fatal(Arc::new(e));
                    return;
                }
            };
            self.observe(|o| o.job_read(&job));
            self.printer.expect(job.seq);
            let seq = job.seq;
            match self.queue.put(job) {
                Ok(_) => {
                    total += 1;
                    self.read.store(total, Ordering::SeqCst);
                }
                Err(PutError::Closed(_)) => {
                    let _ = self.printer.skip(seq);
                    return;
                }
                Err(PutError::Backend(e)) => {
                    let _ = self.printer.skip(seq);
                    self.fatal(Arc::new(e));
                    return;
                }
            }
        }
        self.input_complete.store(true, Ordering::SeqCst);
        self.observe(|o| o.input_complete(total));
        if let Err(e) = self.queue.close() {
            self.fatal(Arc::new(e));
        }
    }

    fn summary(&self) -> RunSummary {
        let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
        RunSummary {
            read: n(&self.read),
            done: n(&self.done),
            failed: n(&self.failed),
            dead: n(&self.dead),
            requeued: n(&self.requeued),
            stale: n(&self.stale),
            stopped: n(&self.stopped),
            stop: self.control.cause(),
            input_complete: self.input_complete.load(Ordering::SeqCst),
            error: self.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl crate::events::JobOutput for Capture {
    fn len(&self) -> u64 {
        Capture::len(self)
    }

    fn head(&mut self, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
        Capture::head(self, limit)
    }

    fn copy_to(&mut self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        Capture::copy_to(self, w)
    }
}

impl Resolution {
    /// What a queue's [`Completion`] means for the job.
    pub fn of_completion(c: Completion) -> Resolution {
        match c {
            Completion::Recorded => Resolution::Done,
            Completion::Stale => Resolution::Interrupted,
        }
    }

    /// What a queue's [`Disposition`] of a failure for `reason` means for
    /// the job.
    pub fn of_disposition(d: Disposition, reason: FailReason) -> Resolution {
        match d {
            Disposition::Requeued { .. } => Resolution::Requeued { reason },
            Disposition::Final(state) => Resolution::Final(state),
            Disposition::Stale => Resolution::Interrupted,
        }
    }
}

/// How long the memory watcher leaves the system after stopping a job,
/// for the memory to come back, before it may stop another.
const MEMFREE_COOLDOWN: Duration = Duration::from_secs(2);

/// `--memfree`: while the run goes on, when the available memory falls
/// below half of SIZE and more than one attempt runs, stops the youngest
/// (it runs again later, uncounted). One attempt always may run, so the
/// run makes progress. Returns the flag that ends the thread, and the
/// thread.
#[allow(clippy::type_complexity)]
fn memory_watcher(
    d: &Arc<Dispatch>,
    executor: &Arc<dyn Executor>,
) -> std::io::Result<Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>> {
    let Some(throttle) = d.opts.throttle.clone().filter(|t| t.watches_memory()) else {
        return Ok(None);
    };
    let done = Arc::new(AtomicBool::new(false));
    let (d, executor, flag) = (Arc::clone(d), Arc::clone(executor), Arc::clone(&done));
    let handle = thread::Builder::new()
        .name("jobmill-memfree".into())
        .spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                thread::sleep(throttle::POLL);
                if !d.may_start() || d.running() < 2 || !throttle.memory_critical() {
                    continue;
                }
                if let Some(seq) = executor.stop_youngest() {
                    d.notice(Notice::Info(format!(
                        "memory available fell below half of --memfree: stopped job {seq}, \
                         the last started; it runs again later"
                    )));
                    let until = std::time::Instant::now() + MEMFREE_COOLDOWN;
                    while std::time::Instant::now() < until && !flag.load(Ordering::SeqCst) {
                        thread::sleep(throttle::POLL);
                    }
                }
            }
        })?;
    Ok(Some((done, handle)))
}

/// Runs the jobs of `queue` through `executor`, reporting to `observers`.
///
/// With `input`, the run owns the queue: a reader thread puts the inputs on
/// it (waiting while it is full, so memory stays bounded) and closes it at
/// the end of the input, and a stop closes it. Without, the queue is shared
/// (a worker on a Redis queue) and the run ends when it is closed and
/// drained, or when it stops.
///
/// # Errors
///
/// `Err` only if the run could not start (the signal handlers or a thread
/// could not be set up). Failures during the run are in the summary.
pub fn run(
    queue: Arc<dyn Queue>,
    input: Option<JobSource>,
    executor: Arc<dyn Executor>,
    observers: Vec<Arc<dyn Observer>>,
    opts: Options,
) -> std::io::Result<RunSummary> {
    let d = Arc::new(Dispatch {
        queue,
        observers,
        control: Control::default(),
        printer: Printer::new(opts.keep_order),
        owns_queue: input.is_some(),
        kill: Mutex::new(Some(Arc::clone(&executor))),
        read: AtomicU64::new(0),
        guardian_told: AtomicBool::new(false),
        halt_cause: AtomicU64::new(0),
        input_complete: AtomicBool::new(false),
        running: AtomicUsize::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dead: AtomicU64::new(0),
        requeued: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        stopped: AtomicU64::new(0),
        backend_failed: AtomicBool::new(false),
        ending: Mutex::new(std::collections::HashSet::new()),
        ending_count: AtomicUsize::new(0),
        reported: std::sync::Condvar::new(),
        error: Mutex::new(None),
        host: opts.host.as_deref().map(Arc::from),
        opts,
    });
    let signals = if d.opts.handle_signals {
        let d = Arc::clone(&d);
        Some(SignalThread::start(move |sig| d.on_signal(sig))?)
    } else {
        None
    };
    if let Some(jobs) = input {
        let d = Arc::clone(&d);
        // Not joined: while draining it may be blocked reading a stdin that
        // never ends; the run does not wait for it.
        thread::Builder::new()
            .name("jobmill-input".into())
            .spawn(move || d.read_input(jobs))?;
    }
    let watcher = memory_watcher(&d, &executor)?;
    // A library front end's stop: one thread sleeps on the handle until it
    // is asked or the executor returns.
    let requested = d.opts.stop.clone();
    // One asked before the run started applies before any job starts.
    if let Some(level) = requested
        .as_ref()
        .map(stop::StopHandle::asked)
        .filter(|&l| l > Level::Running)
    {
        d.stop(level, StopCause::Requested);
    }
    let ended = AtomicBool::new(false);
    thread::scope(|s| -> std::io::Result<()> {
        if let Some(handle) = &requested {
            let (d, ended) = (&d, &ended);
            thread::Builder::new()
                .name("jobmill-stop".into())
                .spawn_scoped(s, move || {
                    handle.watch(ended, |level| d.stop(level, StopCause::Requested));
                })?;
        }
        if let Err(e) = executor.execute(&d) {
            d.fatal(e);
        }
        if let Some(handle) = &requested {
            handle.wake(&ended);
        }
        Ok(())
    })?;
    if let Some((done, thread)) = watcher {
        done.store(true, Ordering::SeqCst);
        let _ = thread.join();
    }
    if let Err(e) = d.printer.finish() {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            d.control.raise(Level::Draining, StopCause::OutputClosed);
        } else {
            d.fatal_msg(format!("cannot write output: {e}"));
        }
    }
    drop(signals);
    // The executor (and its supervisor) must not outlive the run through
    // the dispatch.
    d.kill.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut summary = d.summary();
    for o in &d.observers {
        if let Err(e) = o.run_finished(&summary) {
            if summary.error.is_none() {
                summary.error = Some(Arc::new(e));
            }
        }
    }
    Ok(summary)
}
