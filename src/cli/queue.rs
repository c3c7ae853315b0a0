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
use jobmill::queue::redis::{OpenError, ProducerState, RedisConfig, RedisQueue};
use jobmill::queue::signed::Signed;
use jobmill::queue::{PutError, Queue};
use jobmill::sign::{Key, Refusal, KEY_ENV, KEY_FILE_ENV};
use jobmill::template::Template;

use super::report::Reporter;

use super::args;
use super::args::resolve_program;
use super::run::{split_command, RunArgs};

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

    /// A job whose worker vanished (its lease idled past --visibility, or
    /// its long-lived worker died) runs again without using up a retry, up
    /// to N times; the loss after that makes it dead with the cause "worker
    /// lost" (a setting of the queue; default 3).
    #[arg(long, value_name = "N")]
    pub max_lost: Option<u32>,

    /// A lease not extended by its worker's heartbeat for this long is
    /// taken over and the job runs again as lost (see --max-lost); at
    /// least 1s (a setting of the queue; default 30s).
    #[arg(long, value_name = "DURATION", value_parser = visibility)]
    pub visibility: Option<Duration>,

    /// Most jobs waiting in the queue before submit waits, at least 1 (a
    /// setting of the queue; default 100000).
    #[arg(long, value_name = "N", value_parser = capacity)]
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
    /// stopped) is killed and replaced, and the job it was running is
    /// lost: it runs again (not counted against --retries) unless it was
    /// lost more than the queue's --max-lost times.
    #[arg(long, value_name = "DURATION", value_parser = args::duration, requires = "persistent")]
    pub heartbeat: Option<Duration>,

    /// With --persistent: how long a new worker may take to complete its
    /// handshake (imports, model loads) before it is given up on.
    #[arg(long, value_name = "DURATION", value_parser = args::duration, default_value = "10s", requires = "persistent")]
    pub handshake_timeout: Duration,

    /// Retry policies by cause and memory-aware starts (this worker's own:
    /// --retries and --max-lost are the queue's, set by its producer).
    #[command(flatten)]
    pub policy: super::run::PolicyArgs,

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

/// Parses `--visibility`: a duration of at least 1 s.
fn visibility(s: &str) -> Result<Duration, String> {
    let d = args::duration(s)?;
    if d < MIN_VISIBILITY {
        return Err(format!(
            "a visibility timeout of {s} is too short: workers extend their leases every \
             third of it, and a lease not extended in time is taken from a healthy worker and \
             its job run again; use at least 1s"
        ));
    }
    Ok(d)
}

/// Parses `--capacity`: at least 1.
fn capacity(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid capacity {s:?}: expected a whole number of jobs"))?;
    if n == 0 {
        return Err(
            "a capacity of 0 would let no job wait in the queue, so nothing could be \
             submitted; use at least 1"
                .into(),
        );
    }
    Ok(n)
}

/// The shortest visibility timeout the command line accepts.
const MIN_VISIBILITY: Duration = Duration::from_secs(1);

/// Environment variable naming a PEM file of certificate authorities to
/// trust for `rediss://` (a private CA) instead of the built-in web roots.
pub const CA_ENV: &str = "JOBMILL_REDIS_CA";

fn connect(url: &str, policy: RetryPolicy) -> anyhow::Result<RedisQueue> {
    open_queue_with(url, true, policy)
}

/// Opens the queue; with `create` false a queue that does not exist is an
/// error (read-only commands).
pub(super) fn open_queue(url: &str, create: bool) -> anyhow::Result<RedisQueue> {
    open_queue_with(url, create, RetryPolicy::default())
}

/// As [`open_queue`], with this client's retry policy (its `--max-oom`,
/// `--retry-on` and retry delays; attempts and losses are the queue's).
fn open_queue_with(url: &str, create: bool, policy: RetryPolicy) -> anyhow::Result<RedisQueue> {
    let mut config = RedisConfig {
        create,
        policy,
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
fn batches(source: Source, separator: u8, skip: u64) -> mpsc::Receiver<Result<NewJob, InputError>> {
    let (tx, rx) = mpsc::sync_channel(4 * SUBMIT_BATCH);
    std::thread::spawn(move || {
        for (r, seq) in Records::new(source, separator).zip(1u64..) {
            if seq <= skip && r.is_ok() {
                continue;
            }
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
    submit_from(queue, source, separator, keep_open, 0)
}

/// As [`submit_all`], skipping the first `skip` inputs (already on the
/// queue; they keep their sequence numbers).
fn submit_from(
    queue: &RedisQueue,
    source: Source,
    separator: u8,
    keep_open: bool,
    skip: u64,
) -> anyhow::Result<u64> {
    let rx = batches(source, separator, skip);
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
    max_lost: Option<u32>,
    visibility: Option<Duration>,
    capacity: Option<u64>,
) -> anyhow::Result<()> {
    if retries.is_none() && max_lost.is_none() && visibility.is_none() && capacity.is_none() {
        return Ok(());
    }
    let mut policy = queue.policy();
    if let Some(r) = retries {
        policy = policy.with_max_attempts(r.saturating_add(1));
    }
    if let Some(m) = max_lost {
        policy = policy.max_lost(m);
    }
    queue.set_settings(
        policy,
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
    let queue = open_queue(&a.queue, true)?;
    apply_settings(&queue, a.retries, a.max_lost, a.visibility, a.capacity)?;
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
    handshake_timeout: Duration,
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
            w.config.handshake_timeout = self.handshake_timeout;
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
fn work(plan: Plan, queue: Arc<dyn Queue>) -> anyhow::Result<RunSummary> {
    let reporter: Arc<dyn Observer> = Arc::new(Reporter::new(false));
    let summary = plan
        .run(queue, None, vec![reporter])
        .context("cannot start the workers")?;
    super::report_error(&summary);
    Ok(summary)
}

/// `jobmill worker`.
pub fn worker(a: WorkerArgs) -> anyhow::Result<u8> {
    let policy = a.policy.retry_policy(0, jobmill::job::DEFAULT_MAX_LOST)?;
    let throttle = a.policy.queue_throttle(&a.command, a.persistent)?;
    let memory = a.policy.queue_memory()?;
    let mut plan = WorkSpec {
        command: a.command,
        shell: a.shell,
        jobs: a.jobs,
        timeout: a.timeout,
        grace: a.grace,
        output_memory: a.output_memory,
        persistent: a.persistent,
        window: a.window,
        heartbeat: a.heartbeat,
        handshake_timeout: a.handshake_timeout,
    }
    .into_plan()?;
    plan.throttle = Some(throttle);
    plan.memory = memory;
    super::check_stdio(false)?;
    let key = Key::from_env()?;
    let redis = Arc::new(open_existing(&a.queue, policy)?);
    let summary = match key {
        None => work(plan, redis)?,
        Some(key) => {
            let mut plan = plan;
            // Signed tasks (jobmill.Pool(queue=...)): each is checked before
            // a worker process sees it; results go back to the queue,
            // signed, instead of to stdout.
            redis.keep_results(true);
            plan.print_output = false;
            if let Work::Persistent(opts) = &mut plan.work {
                opts.config
                    .env
                    .push((TASKS_VERIFIED_ENV.into(), "1".into()));
            }
            let on_refused = Box::new(|job: &jobmill::job::Job, why: &Refusal| {
                eprintln!(
                    "jobmill: refused {} (seq {}): {why}; it was not run and is dead \
                     (its producer and this worker need the same {KEY_FILE_ENV} or {KEY_ENV})",
                    job.id, job.seq
                );
            });
            work(plan, Arc::new(Signed::new(redis, key, on_refused)))?
        }
    };
    Ok(summary.worker_exit_code() as u8)
}

/// Set in the environment of the worker processes of a `jobmill worker`
/// that checks task signatures: the Python worker (`python -m
/// jobmill.worker`) refuses to run on a shared queue without it.
const TASKS_VERIFIED_ENV: &str = "JOBMILL_TASKS_VERIFIED";

/// How often a worker looks for a queue that does not exist yet.
const QUEUE_POLL: Duration = Duration::from_millis(500);

/// Opens a queue that a producer creates: a worker started before its
/// `submit` (or on a misspelled name) says so once and waits, creating
/// nothing, until the queue exists.
fn open_existing(url: &str, policy: RetryPolicy) -> anyhow::Result<RedisQueue> {
    let mut said = false;
    loop {
        match open_queue_with(url, false, policy) {
            Err(e) => match e.downcast_ref::<OpenError>() {
                Some(OpenError::Missing {
                    url: shown,
                    name,
                    endpoint,
                }) => {
                    if !said {
                        eprintln!(
                            "jobmill: there is no queue named {name:?} on {endpoint} (yet): \
                             waiting for `jobmill submit --queue {shown}` to create it; nothing \
                             is created meanwhile (check the name if none is coming; Ctrl-C \
                             stops)"
                        );
                        said = true;
                    }
                    std::thread::sleep(QUEUE_POLL);
                }
                _ => return Err(e),
            },
            Ok(q) => {
                if said {
                    eprintln!("jobmill: queue {} was created; working", q.url());
                }
                return Ok(q);
            }
        }
    }
}

/// `jobmill run --queue URL`: submits the inputs, works on them locally
/// (other workers may join), and reports like `run`; then collects the
/// queue's results into a journal in the state directory (src/cli/collect.rs).
pub fn run_on_queue(url: &str, mut a: RunArgs) -> anyhow::Result<u8> {
    if a.timeout.is_some_and(|t| t.is_zero()) {
        a.timeout = None;
    }
    if a.arg_file.len() > 1
        || a.link
        || a.colsep.is_some()
        || a.header.is_some()
        || a.csv
        || a.trim.is_some()
        || a.max_args.is_some()
        || a.context_replace
        || a.multi
        || a.dry_run
    {
        bail!(
            "--queue takes one input source, without --link, --colsep, --header, --csv, \
             --trim, -n, -X, -m or --dry-run"
        );
    }
    if a.results.is_some()
        || a.joblog.is_some()
        || a.delay.is_some()
        || a.memfree.is_some()
        || a.load.is_some()
        || a.tag
        || a.tagstring.is_some()
        || a.line_buffer
        || a.ungroup
    {
        bail!(
            "--tag, --tagstring, --line-buffer, -u, --results, --joblog, --delay, --memfree \
             and --load are \
             not supported with --queue yet (for a joblog: `jobmill results --queue URL \
             --format joblog`)"
        );
    }
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
    let policy = a.policy.retry_policy(a.retries, a.max_lost)?;
    let throttle = a.policy.queue_throttle(&command, a.persistent)?;
    let memory = a.policy.queue_memory()?;
    let mut plan = WorkSpec {
        command,
        shell: a.shell,
        jobs: a.jobs,
        timeout: a.timeout,
        grace: a.grace,
        output_memory: a.output_memory,
        persistent: a.persistent,
        window: a.window,
        heartbeat: None,
        handshake_timeout: a.handshake_timeout,
    }
    .into_plan()?;
    plan.throttle = Some(throttle);
    plan.memory = memory;
    let source = input_source(inputs, &a.arg_file.first().cloned())?;
    let queue = Arc::new(connect(url, policy)?);
    let submit = resume_plan(&queue)?;
    apply_settings(&queue, Some(a.retries), Some(a.max_lost), None, None)?;
    let submitter = match submit {
        Submit::Skip(n) => {
            let queue = Arc::clone(&queue);
            let separator = if a.null { 0 } else { b'\n' };
            Some(
                std::thread::Builder::new()
                    .name("jobmill-submit".into())
                    .spawn(move || submit_from(&queue, source, separator, false, n))?,
            )
        }
        Submit::Nothing => None,
    };
    let summary = work(plan, Arc::clone(&queue) as Arc<dyn Queue>)?;
    if summary.worker_exit_code() != exit::SUCCESS {
        // The submitter may be blocked on input; do not wait for it.
        return Ok(summary.worker_exit_code() as u8);
    }
    match submitter.map(std::thread::JoinHandle::join) {
        None | Some(Ok(Ok(_))) => {}
        Some(Ok(Err(e))) => {
            eprintln!("jobmill: {e:#}");
            return Ok(255);
        }
        Some(Err(_)) => bail!("internal error: the submit thread panicked"),
    }
    let c = queue.counts()?;
    Ok(exit::failures(c.failed + c.dead) as u8)
}

/// What `run --queue` submits.
enum Submit {
    /// The inputs after the first N (N = 0: a new queue).
    Skip(u64),
    /// Nothing: the queue was filled and closed by an earlier run.
    Nothing,
}

/// `run --queue` on a queue that already holds jobs (the same command run
/// again, e.g. after the earlier one was killed):
///
/// - closed: the earlier run submitted everything; work on what is
///   unfinished without submitting again;
/// - open, left open on purpose (`submit --keep-open`) or new: submit every
///   input, adding to it;
/// - open, its producer gone without closing (killed mid-submission):
///   resume the submission after the jobs it holds;
/// - open, its producer heard from within its liveness TTL: wait for the
///   TTL to tell whether it is gone (then resume) or alive (then refuse).
fn resume_plan(queue: &RedisQueue) -> anyhow::Result<Submit> {
    let url = queue.url();
    let mut s = queue.status()?;
    if s.producer == ProducerState::Alive && !s.counts.closed {
        let ttl = queue.producer_ttl();
        eprintln!(
            "jobmill: queue {url} is open and its producer was heard from within the last \
             {ttl:?}: waiting up to {ttl:?} to see whether it is still alive (an earlier run \
             killed mid-submission is not)"
        );
        let deadline = std::time::Instant::now() + ttl + Duration::from_secs(1);
        while s.producer == ProducerState::Alive && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            s = queue.status()?;
        }
        if s.producer == ProducerState::Alive && !s.counts.closed {
            bail!(
                "queue {url} is being filled by another producer right now ({} jobs so far): \
                 work on it with `jobmill worker --queue {url}`, or use a new queue name",
                s.counts.produced
            );
        }
    }
    let c = s.counts;
    let leased_note = || {
        if c.leased > 0 {
            eprintln!(
                "jobmill: {} job{} still leased by workers that may be gone (such as the \
                 earlier run): they run again, here or elsewhere, once their leases idle out \
                 (visibility timeout {:?})",
                c.leased,
                if c.leased == 1 { " is" } else { "s are" },
                queue.visibility_timeout()
            );
        }
    };
    if c.closed {
        eprintln!(
            "jobmill: queue {url} already holds {} job{} from an earlier submission and is \
             closed: not submitting the input again; {} ({} queued, {} running; {} done, {} \
             failed, {} dead). Run new inputs on a new queue name; put failed or dead jobs \
             back with `jobmill requeue --queue {url}`",
            c.produced,
            if c.produced == 1 { "" } else { "s" },
            if c.queued + c.leased == 0 {
                "every job has ended"
            } else {
                "working on what is unfinished"
            },
            c.queued,
            c.leased,
            c.done,
            c.failed,
            c.dead
        );
        leased_note();
        return Ok(Submit::Nothing);
    }
    if c.produced == 0 || s.producer != ProducerState::Lost {
        return Ok(Submit::Skip(0));
    }
    eprintln!(
        "jobmill: queue {url} is open and holds {} job{} from an earlier submission whose \
         producer vanished before the end of its input: resuming it, submitting the inputs \
         after the first {} (this assumes the same input as before)",
        c.produced,
        if c.produced == 1 { "" } else { "s" },
        c.produced
    );
    leased_note();
    queue.announce_producer()?;
    Ok(Submit::Skip(c.produced))
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
        "settings: {} attempts per job, max {} lost, visibility timeout {:?}, capacity {}",
        queue.policy().max_attempts,
        queue.policy().max_lost,
        queue.visibility_timeout(),
        queue.capacity()
    )?;
    if c.failed + c.dead > 0 {
        writeln!(
            out,
            "requeue:  jobmill requeue --queue {} puts the dead jobs back (--failed: the \
             failed ones)",
            queue.url()
        )?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_visibility_under_one_second_is_refused_with_the_reason() {
        assert_eq!(visibility("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(visibility("2m").unwrap(), Duration::from_secs(120));
        for short in ["0", "1ms", "500ms", "0.9"] {
            let e = visibility(short).unwrap_err();
            assert!(e.contains("too short") && e.contains("at least 1s"), "{e}");
        }
        assert!(visibility("soon").is_err());
    }

    #[test]
    fn a_capacity_of_zero_is_refused_with_the_reason() {
        assert_eq!(capacity("1").unwrap(), 1);
        assert_eq!(capacity("100000").unwrap(), 100_000);
        let e = capacity("0").unwrap_err();
        assert!(e.contains("no job wait") && e.contains("at least 1"), "{e}");
        assert!(capacity("-1").is_err());
        assert!(capacity("lots").is_err());
    }
}
