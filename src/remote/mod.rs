//! Workers on a shared Redis queue (`jobmill worker --queue URL`): `-j`
//! slot threads lease jobs from a [`RedisQueue`], run each attempt through
//! the executor ([`Supervisor`], one process per attempt), and resolve the
//! lease with the attempt's record (host, duration, exit status).
//!
//! A worker ends when the queue is closed **and drained** (every job final),
//! when the queue's producer is lost, on an error, or on a signal: the
//! first SIGINT (or a SIGHUP) drains — no new lease, running jobs finish —
//! and the second SIGINT or a SIGTERM stops the running jobs, whose leases
//! are released without counting the attempt, so another worker runs them.
//! A worker that is killed outright holds its leases until they idle past
//! the queue's visibility timeout; then a peer takes them over and the
//! attempt counts as failed (worker lost).
//!
//! With `--persistent`, [`work_persistent`] runs long-lived worker
//! processes over the worker protocol instead (module `persistent`).

mod persistent;

pub use self::persistent::{work_persistent, PersistentWorkOptions};

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::exec::{Attempt, AttemptSpec, Capture, End, SpillBudget, Supervisor};
use crate::job::{FailReason, JobState, WorkerId};
use crate::queue::redis::{AttemptInfo, RedisQueue};
use crate::queue::{Completion, Disposition, GetError, Lease, Queue, QueueError};
use crate::run::control::{Control, Level};
use crate::run::output::Printer;
use crate::template::Template;

/// How long a slot waits for a job before checking whether it should stop.
const POLL: Duration = Duration::from_millis(500);

/// Everything that shapes a worker.
pub struct WorkOptions {
    /// The command template.
    pub template: Template,
    /// Slots (jobs running at once), at least 1.
    pub jobs: usize,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Time between TERM and KILL when stopping a job.
    pub grace: Duration,
    /// Bytes of job output held in memory before spilling to files.
    pub output_memory: usize,
    /// The jobmill binary, to start the guardian that stops every job if
    /// the worker itself is killed; `None` runs without one.
    pub guardian: Option<PathBuf>,
    /// Install SIGINT/SIGTERM/SIGHUP handlers while working.
    pub handle_signals: bool,
    /// This host's name, stored in each job's record.
    pub host: String,
}

impl WorkOptions {
    /// Options with the defaults of `jobmill worker` for `template`.
    pub fn new(template: Template) -> WorkOptions {
        WorkOptions {
            template,
            jobs: thread::available_parallelism().map_or(1, |n| n.get()),
            timeout: None,
            grace: Duration::from_secs(2),
            output_memory: 64 << 20,
            guardian: None,
            handle_signals: false,
            host: hostname(),
        }
    }
}

/// What a worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkSummary {
    /// Attempts that ended the job done.
    pub done: u64,
    /// Attempts that ended the job failed (final).
    pub failed: u64,
    /// Attempts that ended the job dead (final).
    pub dead: u64,
    /// Attempts that failed and requeued the job.
    pub requeued: u64,
    /// Attempts whose lease had been taken over meanwhile (not recorded).
    pub stale: u64,
    /// Attempts stopped by a signal; their leases were released.
    pub interrupted: u64,
    /// Stopped by a signal.
    pub signalled: bool,
    /// The queue was left open by a producer that disappeared.
    pub producer_lost: bool,
    /// A fatal error (backend, output), as one line.
    pub error: Option<String>,
}

impl WorkSummary {
    /// 0 when the worker ended because the queue was drained; 130 when
    /// stopped by a signal; 3 when the producer was lost; 255 on an error.
    pub fn exit_code(&self) -> i32 {
        if self.error.is_some() {
            255
        } else if self.signalled {
            130
        } else if self.producer_lost {
            3
        } else {
            0
        }
    }
}

/// This machine's host name (from the kernel), or `"unknown"`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

struct Ctx {
    queue: Arc<RedisQueue>,
    opts: WorkOptions,
    supervisor: Supervisor,
    budget: SpillBudget,
    control: Control,
    printer: Printer,
    done: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
    requeued: AtomicU64,
    stale: AtomicU64,
    interrupted: AtomicU64,
    producer_lost: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Ctx {
    fn fatal(&self, message: String) {
        let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            eprintln!("jobmill: {message}");
            *e = Some(message);
        }
        drop(e);
        self.control.raise(Level::Draining);
    }
}

/// Works on `queue` until it is closed and drained (or the producer is
/// lost, an error happens, or a signal stops the worker).
///
/// # Errors
///
/// `Err` only if the worker could not start (guardian or signal handlers).
/// Failures while working are in the summary.
pub fn work(queue: Arc<RedisQueue>, opts: WorkOptions) -> std::io::Result<WorkSummary> {
    let budget = SpillBudget::new(opts.output_memory);
    let supervisor = Supervisor::new(opts.guardian.as_deref(), budget.clone())?;
    let ctx = Arc::new(Ctx {
        queue,
        supervisor,
        budget,
        control: Control::default(),
        printer: Printer::new(false),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dead: AtomicU64::new(0),
        requeued: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        interrupted: AtomicU64::new(0),
        producer_lost: AtomicBool::new(false),
        error: Mutex::new(None),
        opts,
    });
    let signals = if ctx.opts.handle_signals {
        Some(spawn_signal_thread(Arc::clone(&ctx))?)
    } else {
        None
    };
    let slots: Vec<_> = (1..=ctx.opts.jobs.max(1))
        .map(|slot| {
            let ctx = Arc::clone(&ctx);
            thread::Builder::new()
                .name(format!("jobmill-worker-slot-{slot}"))
                .spawn(move || slot_loop(&ctx, slot))
        })
        .collect::<Result<_, _>>()?;
    for s in slots {
        if s.join().is_err() {
            ctx.fatal("internal error: a worker slot panicked".into());
        }
    }
    if let Err(e) = ctx.printer.finish() {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            ctx.fatal(format!("cannot write output: {e}"));
        }
    }
    if let Some((handle, t)) = signals {
        handle.close();
        let _ = t.join();
    }
    let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let error = ctx.error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let summary = WorkSummary {
        done: n(&ctx.done),
        failed: n(&ctx.failed),
        dead: n(&ctx.dead),
        requeued: n(&ctx.requeued),
        stale: n(&ctx.stale),
        interrupted: n(&ctx.interrupted),
        signalled: ctx.control.interrupted(),
        producer_lost: ctx.producer_lost.load(Ordering::SeqCst),
        error,
    };
    Ok(summary)
}

fn slot_loop(ctx: &Ctx, slot: usize) {
    let worker = WorkerId(slot as u64);
    let mut argv: Vec<OsString> = Vec::new();
    while ctx.control.may_start() {
        let lease = match ctx.queue.get(worker, Some(POLL)) {
            Ok(lease) => lease,
            Err(GetError::Timeout) => continue,
            Err(GetError::Closed) => return,
            Err(GetError::Backend(QueueError::ProducerLost { queue, ttl })) => {
                if !ctx.producer_lost.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "jobmill: producer lost: queue {queue} is open but its producer has \
                         not been heard from for {ttl:?}; stopping (run `jobmill submit` \
                         again to add jobs, or an empty submit to close it)"
                    );
                }
                ctx.control.raise(Level::Draining);
                return;
            }
            Err(GetError::Backend(e)) => {
                ctx.fatal(e.to_string());
                return;
            }
        };
        if !ctx.control.may_start() {
            if let Err(e) = ctx.queue.release(&lease) {
                ctx.fatal(e.to_string());
            }
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
        ("JOBMILL_ATTEMPT", OsString::from(job.attempts.to_string())),
    ];
    let spec = AttemptSpec {
        argv,
        env: &env,
        timeout: ctx.opts.timeout,
        grace: ctx.opts.grace,
    };
    let mut attempt = ctx.supervisor.run(&spec);
    let final_output = resolve(ctx, lease, &attempt);
    if final_output {
        let stdout = std::mem::replace(&mut attempt.stdout, Capture::new(ctx.budget.clone()));
        let stderr = std::mem::replace(&mut attempt.stderr, Capture::new(ctx.budget.clone()));
        if let Err(e) = ctx.printer.job_output(job.seq, stdout, stderr) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                ctx.control.raise(Level::Killing);
                ctx.supervisor.terminate_all();
            } else {
                ctx.fatal(format!("cannot write output of job {}: {e}", job.seq));
            }
        }
    }
}

/// Resolves the lease from what the executor saw; returns whether the
/// job's output should be printed (its attempt was the final one).
fn resolve(ctx: &Ctx, lease: &Lease, attempt: &Attempt) -> bool {
    let info = AttemptInfo {
        host: Some(ctx.opts.host.clone()),
        duration: Some(attempt.duration),
    };
    if attempt.terminated {
        // Stopped by us: give the job back, attempt not counted.
        if let Err(e) = ctx.queue.release(lease) {
            ctx.fatal(e.to_string());
        }
        ctx.interrupted.fetch_add(1, Ordering::SeqCst);
        return false;
    }
    let reason = match &attempt.end {
        End::Exited(0) if !attempt.timed_out => match ctx.queue.complete_with(lease, &info) {
            Ok(Completion::Recorded) => {
                ctx.done.fetch_add(1, Ordering::SeqCst);
                return true;
            }
            Ok(Completion::Stale) => {
                stale(ctx, lease);
                return false;
            }
            Err(e) => {
                ctx.fatal(e.to_string());
                return false;
            }
        },
        _ if attempt.timed_out => FailReason::Timeout,
        End::Exited(code) => FailReason::Exit { code: *code },
        End::Signaled(signal) => FailReason::Signal { signal: *signal },
        End::SpawnFailed(error) => FailReason::Spawn {
            error: error.clone(),
        },
    };
    match ctx.queue.fail_with(lease, reason.clone(), &info) {
        Ok(Disposition::Requeued { .. }) => {
            ctx.requeued.fetch_add(1, Ordering::SeqCst);
            false
        }
        Ok(Disposition::Final(state)) => {
            if let JobState::Dead { .. } = state {
                ctx.dead.fetch_add(1, Ordering::SeqCst);
            } else {
                ctx.failed.fetch_add(1, Ordering::SeqCst);
            }
            if !matches!(reason, FailReason::Exit { .. }) {
                eprintln!("jobmill: job {} {}", lease.job.seq, reason);
            }
            true
        }
        Ok(Disposition::Stale) => {
            stale(ctx, lease);
            false
        }
        Err(e) => {
            ctx.fatal(e.to_string());
            false
        }
    }
}

fn stale(ctx: &Ctx, lease: &Lease) {
    ctx.stale.fetch_add(1, Ordering::SeqCst);
    eprintln!(
        "jobmill: job {} attempt {}: the lease was taken over by another worker \
         (this worker was presumed lost); its result is not recorded",
        lease.job.seq, lease.job.attempts
    );
}

type SignalThread = (signal_hook::iterator::Handle, thread::JoinHandle<()>);

fn spawn_signal_thread(ctx: Arc<Ctx>) -> std::io::Result<SignalThread> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let handle = signals.handle();
    let t = thread::Builder::new()
        .name("jobmill-worker-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let to = match sig {
                    SIGINT if ctx.control.level() == Level::Running => Level::Draining,
                    SIGHUP => Level::Draining,
                    _ => Level::Killing,
                };
                if sig != SIGHUP {
                    ctx.control.set_interrupted();
                }
                if !ctx.control.raise(to) {
                    continue;
                }
                if to == Level::Killing {
                    eprintln!("jobmill: stopping running jobs; their leases go back to the queue");
                    ctx.supervisor.terminate_all();
                } else {
                    eprintln!(
                        "jobmill: interrupted: leasing no new jobs; waiting for running ones. \
                         Press Ctrl-C again to stop them."
                    );
                }
            }
        })?;
    Ok((handle, t))
}
