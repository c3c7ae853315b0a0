//! The commands on a shared Redis queue: `submit`, `worker`, `status`,
//! `results`, and `run --queue`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use jobmill::engine::{Plan, Work, WorkersOptions};
use jobmill::events::{Observer, RunSummary};
use jobmill::input::{InputError, Records, Source};
use jobmill::job::{NewJob, RetryPolicy};
use jobmill::outcome::exit;
use jobmill::queue::redis::{ProducerState, RedisConfig, RedisQueue};
use jobmill::queue::{PutError, Queue};
use jobmill::template::Template;

use super::report::Reporter;

use super::args;
use super::run::{resolve_program, split_command, RunArgs};

/// Most jobs sent to Redis in one call by `submit`.
const SUBMIT_BATCH: usize = 1000;

/// Options of `jobmill submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The queue: redis://[:password@]host:port/NAME (rediss:// for TLS).
    #[arg(long, value_name = "URL")]
    pub queue: String,

    /// Inputs are separated by NUL instead of newline.
    #[arg(short = '0', long = "null")]
    pub null: bool,

    /// Read inputs from FILE instead of stdin.
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    pub arg_file: Option<PathBuf>,

    /// Leave the queue open at the end of input (another submit may add
    /// jobs; an empty submit closes it).
    #[arg(long)]
    pub keep_open: bool,

    /// Re-run a failed job up to N more times (a setting of the queue).
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,

    /// A lease not extended by its worker's heartbeat for this long is
    /// taken over and its attempt counted as failed (a setting of the
    /// queue; default 30s).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub visibility: Option<Duration>,

    /// Most jobs waiting in the queue before submit waits (a setting of
    /// the queue; default 100000).
    #[arg(long, value_name = "N")]
    pub capacity: Option<u64>,

    /// `::: INPUT...` gives the inputs on the command line.
    #[arg(
        value_name = "::: INPUT",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub inputs: Vec<OsString>,
}

/// Options of `jobmill worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The queue: redis://[:password@]host:port/NAME (rediss:// for TLS).
    #[arg(long, value_name = "URL")]
    pub queue: String,

    /// Jobs to run at once (default: the number of CPUs).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,

    /// Run the command with `sh -c`, every substituted value shell-quoted.
    #[arg(long)]
    pub shell: bool,

    /// Stop an attempt after DURATION: TERM to its process group, KILL
    /// after --grace.
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub timeout: Option<Duration>,

    /// Time between TERM and KILL when stopping a job.
    #[arg(long, value_name = "DURATION", value_parser = args::duration, default_value = "2s")]
    pub grace: Duration,

    /// Job output held in memory before spilling to temporary files.
    #[arg(long, value_name = "SIZE", value_parser = args::size, default_value = "64M")]
    pub output_memory: usize,

    /// Start -j long-lived copies of COMMAND and send them the queue's
    /// jobs over the worker protocol (docs/PROTOCOL.md) instead of starting
    /// a process per job. COMMAND is run as is, without substitution; each
    /// done job's result is printed as its output.
    #[arg(long)]
    pub persistent: bool,

    /// With --persistent: most jobs in flight per worker. Large windows
    /// pipeline small jobs (and lease/ack them in larger batches); 1 or 2
    /// balance long jobs best.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "persistent")]
    pub window: usize,

    /// With --persistent: ask the workers for a heartbeat this often; a
    /// worker that holds jobs and stays silent for four intervals (hung,
    /// stopped) is killed and replaced, and the job it was running fails
    /// as worker lost (its attempt counted).
    #[arg(long, value_name = "DURATION", value_parser = args::duration, requires = "persistent")]
    pub heartbeat: Option<Duration>,

    /// The command and its arguments.
    #[arg(value_name = "COMMAND", required = true, trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

/// Options of `jobmill status --queue` and `jobmill results --queue`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The queue: redis://[:password@]host:port/NAME (rediss:// for TLS).
    #[arg(long, value_name = "URL")]
    pub queue: String,
}

/// Environment variable naming a PEM file of certificate authorities to
/// trust for `rediss://` (a private CA) instead of the built-in web roots.
pub const CA_ENV: &str = "JOBMILL_REDIS_CA";

fn connect(url: &str) -> anyhow::Result<RedisQueue> {
    open_queue(url, true)
}

/// Opens the queue; with `create` false a queue that does not exist is an
/// error (read-only commands).
pub(super) fn open_queue(url: &str, create: bool) -> anyhow::Result<RedisQueue> {
    let mut config = RedisConfig {
        create,
        ..RedisConfig::default()
    };
    if let Some(path) = std::env::var_os(CA_ENV) {
        config.tls_ca =
            Some(std::fs::read(&path).with_context(|| {
                format!("cannot read {CA_ENV}={}", PathBuf::from(&path).display())
            })?);
    }
    Ok(RedisQueue::connect(url, config)?)
}

/// Reads `source` on a thread and hands jobs over in batches: as many as
/// are ready, up to `SUBMIT_BATCH`, so a trickling input is not delayed.
fn batches(source: Source, separator: u8) -> mpsc::Receiver<Result<NewJob, InputError>> {
    let (tx, rx) = mpsc::sync_channel(4 * SUBMIT_BATCH);
    std::thread::spawn(move || {
        for (r, seq) in Records::new(source, separator).zip(1u64..) {
            let item = r.map(|payload| NewJob::new(seq, payload));
            let stop = item.is_err();
            if tx.send(item).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// Puts every input on `queue`; closes it at the end unless `keep_open`.
/// Returns the number of jobs put.
fn submit_all(
    queue: &RedisQueue,
    source: Source,
    separator: u8,
    keep_open: bool,
) -> anyhow::Result<u64> {
    let rx = batches(source, separator);
    let mut total = 0u64;
    let mut batch = Vec::with_capacity(SUBMIT_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first?);
        while batch.len() < SUBMIT_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item?),
                Err(_) => break,
            }
        }
        match queue.put_many(&batch) {
            Ok(ids) => total += ids.len() as u64,
            Err(e) => {
                let put = total + e.put as u64;
                return Err(match e.source {
                    PutError::Closed(_) => anyhow::anyhow!(
                        "queue {} is closed: {put} jobs were submitted, the rest were not \
                         (a closed queue takes no more jobs; use another queue name)",
                        queue.url()
                    ),
                    other => anyhow::Error::new(other)
                        .context(format!("after submitting {put} jobs to {}", queue.url())),
                });
            }
        }
        batch.clear();
    }
    if keep_open {
        queue.leave_open()?;
    } else {
        queue.close()?;
    }
    Ok(total)
}

fn input_source(
    inputs: Option<Vec<OsString>>,
    arg_file: &Option<PathBuf>,
) -> anyhow::Result<Source> {
    Ok(match (inputs, arg_file) {
        (Some(_), Some(_)) => bail!("give inputs either with `:::` or with --arg-file, not both"),
        (Some(list), None) => Source::Args(list),
        (None, Some(path)) => Source::file(path)?,
        (None, None) => Source::stdin(),
    })
}

/// Applies the queue settings given on the command line, keeping the
/// queue's current values for the others.
fn apply_settings(
    queue: &RedisQueue,
    retries: Option<u32>,
    visibility: Option<Duration>,
    capacity: Option<u64>,
) -> anyhow::Result<()> {
    if retries.is_none() && visibility.is_none() && capacity.is_none() {
        return Ok(());
    }
    queue.set_settings(
        retries.map_or(queue.policy(), RetryPolicy::with_retries),
        visibility.unwrap_or(queue.visibility_timeout()),
        capacity.unwrap_or(queue.capacity()),
    )?;
    Ok(())
}

/// `jobmill submit`.
pub fn submit(a: SubmitArgs) -> anyhow::Result<u8> {
    let inputs = match a.inputs.split_first() {
        None => None,
        Some((first, rest)) if first == ":::" => Some(rest.to_vec()),
        Some((first, _)) => bail!(
            "unexpected argument {:?}: inputs on the command line follow `:::`",
            first.to_string_lossy()
        ),
    };
    let source = input_source(inputs, &a.arg_file)?;
    let queue = connect(&a.queue)?;
    apply_settings(&queue, a.retries, a.visibility, a.capacity)?;
    let n = submit_all(&queue, source, if a.null { 0 } else { b'\n' }, a.keep_open)?;
    eprintln!(
        "jobmill: submitted {n} job{} to {}{}",
        if n == 1 { "" } else { "s" },
        queue.url(),
        if a.keep_open {
            " (left open)"
        } else {
            " (closed)"
        }
    );
    Ok(0)
}

fn template_of(command: Vec<OsString>, shell: bool) -> anyhow::Result<Template> {
    let mut command = command;
    if command.is_empty() {
        bail!("no command given after `--`");
    }
    if !shell {
        if let Some(path) = resolve_program(&command[0])? {
            command[0] = path.into_os_string();
        }
    }
    Ok(Template::parse(&command, shell)?)
}

/// What `-j`, `--timeout`, `--grace`, `--output-memory`, `--shell`,
/// `--persistent`, `--window` and `--heartbeat` make of the command.
struct WorkSpec {
    command: Vec<OsString>,
    shell: bool,
    jobs: Option<usize>,
    timeout: Option<Duration>,
    grace: Duration,
    output_memory: usize,
    persistent: bool,
    window: usize,
    heartbeat: Option<Duration>,
}

impl WorkSpec {
    fn into_plan(self) -> anyhow::Result<Plan> {
        if self.jobs == Some(0) {
            bail!("--jobs must be at least 1");
        }
        let work = if self.persistent {
            if self.shell {
                bail!("--shell cannot be used with --persistent: the worker command is run as is");
            }
            if self.window == 0 {
                bail!("--window must be at least 1");
            }
            let mut command = self.command;
            if command.is_empty() {
                bail!("no command given after `--`");
            }
            if let Some(path) = resolve_program(&command[0])? {
                command[0] = path.into_os_string();
            }
            let mut w = WorkersOptions::new(command, 1);
            w.config.window = self.window;
            w.config.heartbeat = self.heartbeat;
            Work::Persistent(w)
        } else {
            Work::Command(template_of(self.command, self.shell)?)
        };
        let mut plan = Plan::new(work);
        if let Some(j) = self.jobs {
            plan.jobs = j;
        }
        plan.timeout = self.timeout;
        plan.grace = self.grace;
        plan.output_memory = self.output_memory;
        plan.guardian = super::guardian_exe();
        plan.handle_signals = true;
        plan.host = Some(jobmill::sys::hostname());
        Ok(plan)
    }
}

/// Works on the shared `queue` under `plan` until it is closed and drained,
/// or the worker stops.
fn work(plan: Plan, queue: Arc<RedisQueue>) -> anyhow::Result<RunSummary> {
    let reporter: Arc<dyn Observer> = Arc::new(Reporter::new(false));
    let summary = plan
        .run(queue, None, vec![reporter])
        .context("cannot start the workers")?;
    super::report_error(&summary);
    Ok(summary)
}

/// `jobmill worker`.
pub fn worker(a: WorkerArgs) -> anyhow::Result<u8> {
    let plan = WorkSpec {
        command: a.command,
        shell: a.shell,
        jobs: a.jobs,
        timeout: a.timeout,
        grace: a.grace,
        output_memory: a.output_memory,
        persistent: a.persistent,
        window: a.window,
        heartbeat: a.heartbeat,
    }
    .into_plan()?;
    super::check_stdio(false)?;
    let queue = Arc::new(connect(&a.queue)?);
    let summary = work(plan, queue)?;
    Ok(summary.worker_exit_code() as u8)
}

/// `jobmill run --queue URL`: submits the inputs, works on them locally
/// (other workers may join), and reports like `run`; then collects the
/// queue's results into a journal in the state directory (src/cli/collect.rs).
pub fn run_on_queue(url: &str, a: RunArgs) -> anyhow::Result<u8> {
    let started_at = super::collect::unix_now();
    let (command, _) = split_command(a.command.clone())?;
    let (shell, persistent) = (a.shell, a.persistent);
    let code = submit_and_work(url, a)?;
    // 255: an error (e.g. the server is gone); nothing to collect from.
    if code != 255 {
        let queue = open_queue(url, false)?;
        super::collect::collect_run(&queue, command, shell, persistent, started_at);
    }
    Ok(code)
}

fn submit_and_work(url: &str, a: RunArgs) -> anyhow::Result<u8> {
    if a.keep_order || a.halt.is_some() {
        bail!("--keep-order and --halt are not supported with --queue yet");
    }
    let (command, inputs) = split_command(a.command)?;
    let plan = WorkSpec {
        command,
        shell: a.shell,
        jobs: a.jobs,
        timeout: a.timeout,
        grace: a.grace,
        output_memory: a.output_memory,
        persistent: a.persistent,
        window: a.window,
        heartbeat: None,
    }
    .into_plan()?;
    let source = input_source(inputs, &a.arg_file)?;
    let queue = Arc::new(connect(url)?);
    apply_settings(&queue, Some(a.retries), None, None)?;
    let submitter = {
        let queue = Arc::clone(&queue);
        let separator = if a.null { 0 } else { b'\n' };
        std::thread::Builder::new()
            .name("jobmill-submit".into())
            .spawn(move || submit_all(&queue, source, separator, false))?
    };
    let summary = work(plan, Arc::clone(&queue))?;
    if summary.worker_exit_code() != exit::SUCCESS {
        // The submitter may be blocked on input; do not wait for it.
        return Ok(summary.worker_exit_code() as u8);
    }
    match submitter.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            eprintln!("jobmill: {e:#}");
            return Ok(255);
        }
        Err(_) => bail!("internal error: the submit thread panicked"),
    }
    let c = queue.counts()?;
    Ok(exit::failures(c.failed + c.dead) as u8)
}

/// `jobmill status --queue URL`.
pub fn status(a: QueueArgs) -> anyhow::Result<u8> {
    let queue = open_queue(&a.queue, false)?;
    let s = queue.status()?;
    let c = s.counts;
    let state = if c.is_drained() {
        "drained"
    } else if c.closed {
        "closed"
    } else {
        "open"
    };
    let producer = match s.producer {
        ProducerState::NotSeen => "none (waiting for a submit)",
        ProducerState::Alive => "alive",
        ProducerState::Closed => "finished",
        ProducerState::Lost => "LOST (open queue, producer not heard from)",
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "queue:    {}", queue.url())?;
    writeln!(out, "state:    {state}")?;
    writeln!(out, "producer: {producer}")?;
    writeln!(
        out,
        "jobs:     {} produced, {} queued, {} running, {} done, {} failed, {} dead",
        c.produced, c.queued, c.leased, c.done, c.failed, c.dead
    )?;
    writeln!(
        out,
        "settings: {} attempts per job, visibility timeout {:?}, capacity {}",
        queue.policy().max_attempts,
        queue.visibility_timeout(),
        queue.capacity()
    )?;
    Ok(0)
}
