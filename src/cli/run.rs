//! `jobmill run`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use jobmill::engine::halt::Halt;
use jobmill::engine::{JobSource, Plan, Work, WorkersOptions};
use jobmill::events::{Observer, RunSummary};
use jobmill::input::{Records, Source};
use jobmill::job::NewJob;
use jobmill::job::RetryPolicy;
use jobmill::journal::resume::{json_to_bytes, os_to_json};
use jobmill::journal::writer::DEFAULT_OUTPUT_CAP;
#[cfg(test)]
use jobmill::journal::writer::DEFAULT_SYNC_INTERVAL;
use jobmill::journal::{self, Journal, JournalError, RunRecord, WriterConfig};
use jobmill::queue::memory::MemoryQueue;
use jobmill::template::Template;

use super::report::Reporter;

use super::args;

/// [`DEFAULT_SYNC_INTERVAL`] as text, for clap.
const DEFAULT_SYNC_TEXT: &str = "50ms";

/// Options of `jobmill run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Jobs to run at once (default: the number of CPUs).
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    pub jobs: Option<usize>,

    /// Print each job's output in input order (output of jobs that finish
    /// early waits, spilled to a temporary file past the memory cap).
    #[arg(short = 'k', long = "keep-order")]
    pub keep_order: bool,

    /// Inputs are separated by NUL instead of newline.
    #[arg(short = '0', long = "null")]
    pub null: bool,

    /// Read inputs from FILE instead of stdin.
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    pub arg_file: Option<PathBuf>,

    /// Run the command with `sh -c`, every substituted value shell-quoted.
    #[arg(long)]
    pub shell: bool,

    /// Re-run a failed job up to N more times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// Run a job whose worker vanished without a verdict (a long-lived
    /// worker that died holding it, a remote worker whose lease expired)
    /// again up to N times. Such losses do not count against --retries;
    /// the loss after the Nth leaves the job dead with the cause "lost".
    #[arg(long, value_name = "N", default_value_t = jobmill::job::DEFAULT_MAX_LOST)]
    pub max_lost: u32,

    /// Stop an attempt after DURATION (e.g. 30, 1.5s, 10m): TERM to its
    /// process group, KILL after --grace.
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub timeout: Option<Duration>,

    /// Time between TERM and KILL when stopping a job.
    #[arg(long, value_name = "DURATION", value_parser = args::duration, default_value = "2s")]
    pub grace: Duration,

    /// Stop early: `soon|now,fail|success|done=N|P%` (GNU parallel's meaning).
    #[arg(long, value_name = "WHEN,WHAT=N")]
    pub halt: Option<String>,

    /// Show a live progress bar on stderr (only on a terminal).
    #[arg(long)]
    pub progress: bool,

    /// Job output held in memory before spilling to temporary files.
    #[arg(long, value_name = "SIZE", value_parser = args::size, default_value = "64M")]
    pub output_memory: usize,

    /// Start -j long-lived copies of COMMAND and send them the inputs as
    /// jobs over the worker protocol (docs/PROTOCOL.md) instead of starting
    /// a process per input. COMMAND is run as is, without substitution;
    /// each job's result is printed as its output.
    #[arg(long)]
    pub persistent: bool,

    /// With --persistent: most jobs in flight per worker. Large windows
    /// pipeline small jobs; 1 or 2 balance long jobs best.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "persistent")]
    pub window: usize,

    /// With --persistent: size of each worker's shared-memory arena for
    /// large payloads (one area for jobs, one for results, each SIZE;
    /// sparse, so only what is used takes memory). Payloads of 64K and more
    /// go through it; a larger one goes inline if under 64M, else fails.
    /// 0: no arena. See docs/PAYLOADS.md.
    #[arg(long, value_name = "SIZE", value_parser = args::size, default_value = "2G", requires = "persistent")]
    pub arena: usize,

    /// With --persistent: how long a new worker may take to complete its
    /// handshake (imports, model loads) before it is given up on.
    #[arg(long, value_name = "DURATION", value_parser = args::duration, default_value = "10s", requires = "persistent")]
    pub handshake_timeout: Duration,

    /// With --persistent: end every result with a NUL byte instead of a
    /// newline (for binary results). Without it, a newline is added to each
    /// result that does not already end with one, so every result is one
    /// record.
    #[arg(long, requires = "persistent")]
    pub print0: bool,

    /// Run on a shared queue (redis://host:port/NAME) instead of in
    /// memory: inputs are submitted to it and worked on here; workers on
    /// other hosts may join with `jobmill worker --queue URL`.
    #[arg(long, value_name = "URL")]
    pub queue: Option<String>,

    /// Journal the run in FILE instead of a new file in the state
    /// directory ($XDG_STATE_HOME/jobmill). FILE must not exist: to
    /// continue a journaled run use `jobmill resume`.
    #[arg(long, value_name = "FILE")]
    pub journal: Option<PathBuf>,

    /// Do not journal the run (it cannot be resumed).
    #[arg(long)]
    pub no_journal: bool,

    /// Output kept in the journal per stream per job; the rest is counted
    /// and marked truncated.
    #[arg(long, value_name = "SIZE", value_parser = args::size, default_value_t = DEFAULT_OUTPUT_CAP)]
    pub journal_output_cap: usize,

    /// Most time between two syncs of the journal to disk (fsync); 0 syncs
    /// every commit and every attempt end before the next job starts.
    /// Everything recorded survives a crash of jobmill itself; this bounds
    /// what a power loss can take (docs/JOURNAL.md).
    #[arg(long, value_name = "DURATION", value_parser = args::duration,
          default_value = DEFAULT_SYNC_TEXT)]
    pub journal_fsync: Duration,

    /// Print the journal's path and run id at the start.
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// The command and its arguments, then optionally `::: INPUT...`.
    #[arg(value_name = "COMMAND", required = true, trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

/// Splits `COMMAND... ::: INPUT...` into the command and the inputs.
pub(super) fn split_command(
    words: Vec<OsString>,
) -> anyhow::Result<(Vec<OsString>, Option<Vec<OsString>>)> {
    let Some(pos) = words.iter().position(|w| w == ":::") else {
        return Ok((words, None));
    };
    let mut command = words;
    let inputs = command.split_off(pos + 1);
    command.pop();
    if inputs.iter().any(|w| w == ":::") {
        bail!("only one `:::` input list is supported");
    }
    Ok((command, Some(inputs)))
}

/// The options of a run as stored in its journal: everything `jobmill
/// resume` needs to continue it (docs/JOURNAL.md, "The run's options").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredOptions {
    pub jobs: usize,
    pub keep_order: bool,
    pub null: bool,
    pub shell: bool,
    pub retries: u32,
    #[serde(default = "default_max_lost")]
    pub max_lost: u32,
    /// Seconds.
    pub timeout: Option<f64>,
    /// Seconds.
    pub grace: f64,
    pub halt: Option<String>,
    pub output_memory: usize,
    pub persistent: bool,
    pub window: usize,
    /// Bytes of each persistent worker's shared-memory arena.
    #[serde(default = "default_arena")]
    pub arena: usize,
    /// Seconds.
    #[serde(default = "default_handshake")]
    pub handshake_timeout: f64,
    #[serde(default)]
    pub print0: bool,
    pub journal_output_cap: usize,
    /// Seconds.
    pub journal_fsync: f64,
    /// `{"kind": "stdin"}`, `{"kind": "file", "path": P}` (absolute) or
    /// `{"kind": "args", "args": [...]}`; paths and arguments are strings,
    /// or `{"hex": ...}` when not UTF-8.
    pub input: serde_json::Value,
}

fn default_arena() -> usize {
    jobmill::persistent::DEFAULT_ARENA
}

fn default_max_lost() -> u32 {
    jobmill::job::DEFAULT_MAX_LOST
}

fn default_handshake() -> f64 {
    jobmill::engine::DEFAULT_HANDSHAKE.as_secs_f64()
}

/// Where the inputs of a run come from, as stored.
pub(super) enum StoredInput {
    Stdin,
    File(PathBuf),
    Args(Vec<OsString>),
}

impl StoredOptions {
    pub fn input(&self) -> anyhow::Result<StoredInput> {
        use std::os::unix::ffi::OsStringExt;
        let bad = || anyhow::anyhow!("the stored input source is invalid: {}", self.input);
        let kind = self
            .input
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(bad)?;
        Ok(match kind {
            "stdin" => StoredInput::Stdin,
            "file" => {
                let p = self
                    .input
                    .get("path")
                    .and_then(json_to_bytes)
                    .ok_or_else(bad)?;
                StoredInput::File(PathBuf::from(OsString::from_vec(p)))
            }
            "args" => {
                let list = self
                    .input
                    .get("args")
                    .and_then(|a| a.as_array())
                    .ok_or_else(bad)?;
                let mut args = Vec::with_capacity(list.len());
                for a in list {
                    args.push(OsString::from_vec(json_to_bytes(a).ok_or_else(bad)?));
                }
                StoredInput::Args(args)
            }
            _ => return Err(bad()),
        })
    }

    pub fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            output_cap: self.journal_output_cap,
            sync_interval: Duration::from_secs_f64(self.journal_fsync.max(0.0)),
        }
    }
}

/// A run ready to start: what `jobmill run` and `jobmill resume` share.
pub(super) struct Prepared {
    pub plan: Plan,
    pub policy: RetryPolicy,
}

impl Prepared {
    /// Runs the jobs of `input` on an in-memory queue, reporting to
    /// `reporter` and `observers`.
    pub fn run(
        self,
        input: JobSource,
        reporter: Arc<Reporter>,
        mut observers: Vec<Arc<dyn Observer>>,
    ) -> anyhow::Result<RunSummary> {
        observers.push(reporter);
        let queue = Arc::new(MemoryQueue::new(QUEUE_CAPACITY, self.policy));
        self.plan
            .run(queue, Some(input), observers)
            .context("cannot start the run")
    }
}

/// Jobs read ahead of the slots: the bound on memory of a lazy input.
const QUEUE_CAPACITY: usize = 1024;

/// Builds the run from the command (as given, before the program is
/// resolved) and the stored options.
pub(super) fn prepare(command: &[OsString], o: &StoredOptions) -> anyhow::Result<Prepared> {
    let mut command = command.to_vec();
    if command.is_empty() {
        bail!("no command given after `--`");
    }
    if !o.shell {
        // Resolve the program once, not in every job's spawn.
        if let Some(path) = resolve_program(&command[0])? {
            command[0] = path.into_os_string();
        }
    }
    if o.persistent && o.shell {
        bail!("--shell cannot be used with --persistent: the worker command is run as is");
    }
    if o.window == 0 {
        bail!("--window must be at least 1");
    }
    if o.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let work = if o.persistent {
        let mut w = WorkersOptions::new(command.clone(), o.jobs);
        w.config.window = o.window;
        w.config.arena = o.arena;
        w.config.hello_timeout = Duration::from_secs_f64(o.handshake_timeout.max(0.0));
        w.nul_records = o.print0;
        Work::Persistent(w)
    } else {
        Work::Command(Template::parse(&command, o.shell)?)
    };
    let halt: Option<Halt> = o.halt.as_deref().map(str::parse).transpose()?;
    let mut plan = Plan::new(work);
    plan.jobs = o.jobs;
    plan.keep_order = o.keep_order;
    plan.timeout = o.timeout.map(Duration::from_secs_f64);
    plan.grace = Duration::from_secs_f64(o.grace);
    plan.halt = halt;
    plan.output_memory = o.output_memory;
    plan.guardian = super::guardian_exe();
    plan.handle_signals = true;
    Ok(Prepared {
        plan,
        policy: RetryPolicy::with_retries(o.retries).max_lost(o.max_lost),
    })
}

/// Jobs numbered from `first` from records.
pub(super) fn numbered(records: Records, first: u64) -> JobSource {
    Box::new(
        records
            .zip(first..)
            .map(|(r, seq)| r.map(|payload| NewJob::new(seq, payload))),
    )
}

/// How to name a journal in a `jobmill resume` hint: the run id when it
/// lives in the state directory, else its path.
pub(super) fn resume_name(path: &Path, run_id: &str) -> String {
    if path == journal::path_of(&journal::state_dir(), run_id) {
        run_id.to_string()
    } else {
        path.display().to_string()
    }
}

/// The line naming the journal, printed to stderr.
pub(super) fn journal_line(path: &Path, run_id: &str) -> String {
    format!(
        "jobmill: journal {} (run {run_id}); resume with: jobmill resume {}",
        path.display(),
        resume_name(path, run_id)
    )
}

/// Runs `jobmill run`; returns the exit status.
pub fn run(mut a: RunArgs) -> anyhow::Result<u8> {
    if let Some(url) = a.queue.take() {
        return super::queue::run_on_queue(&url, a);
    }
    if a.no_journal && a.journal.is_some() {
        bail!("give either --journal PATH or --no-journal, not both");
    }
    let (command, inputs) = split_command(std::mem::take(&mut a.command))?;
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let input = match (&inputs, &a.arg_file) {
        (Some(_), Some(_)) => bail!("give inputs either with `:::` or with --arg-file, not both"),
        (Some(list), None) => serde_json::json!({
            "kind": "args",
            "args": list.iter().map(|x| os_to_json(x)).collect::<Vec<_>>(),
        }),
        (None, Some(path)) => serde_json::json!({
            "kind": "file",
            "path": os_to_json(cwd.join(path).as_os_str()),
        }),
        (None, None) => serde_json::json!({ "kind": "stdin" }),
    };
    let stored = StoredOptions {
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        keep_order: a.keep_order,
        null: a.null,
        shell: a.shell,
        retries: a.retries,
        max_lost: a.max_lost,
        timeout: a.timeout.map(|t| t.as_secs_f64()),
        grace: a.grace.as_secs_f64(),
        halt: a.halt.clone(),
        output_memory: a.output_memory,
        persistent: a.persistent,
        window: a.window,
        arena: a.arena,
        handshake_timeout: a.handshake_timeout.as_secs_f64(),
        print0: a.print0,
        journal_output_cap: a.journal_output_cap,
        journal_fsync: a.journal_fsync.as_secs_f64(),
        input,
    };
    let prepared = prepare(&command, &stored)?;

    super::check_stdio(inputs.is_none() && a.arg_file.is_none())?;
    let source = match (inputs, &a.arg_file) {
        (Some(list), _) => Source::Args(list),
        (None, Some(path)) => Source::file(path)?,
        (None, None) => Source::stdin(),
    };
    let separator = if a.null { 0 } else { b'\n' };
    let jobs = numbered(Records::new(source, separator), 1);

    let journal = if a.no_journal {
        None
    } else {
        Some(create_journal(&a, &command, &stored, &cwd)?)
    };
    let reporter = Arc::new(Reporter::new(a.progress));
    if let Some((j, id)) = &journal {
        if a.verbose || a.progress {
            reporter.line(&journal_line(j.path(), id));
        }
    }
    let observers: Vec<Arc<dyn Observer>> = journal
        .iter()
        .map(|(j, _)| Arc::clone(j) as Arc<dyn Observer>)
        .collect();
    let summary = prepared.run(jobs, Arc::clone(&reporter), observers)?;
    super::report_error(&summary);
    if let Some((j, id)) = &journal {
        let _ = j.close("ended");
        if summary.exit_code() != 0 {
            reporter.line(&journal_line(j.path(), id));
        }
    }
    Ok(summary.exit_code() as u8)
}

/// Creates the run's journal: `--journal PATH`, or a new file in the state
/// directory.
fn create_journal(
    a: &RunArgs,
    command: &[OsString],
    stored: &StoredOptions,
    cwd: &Path,
) -> anyhow::Result<(Arc<Journal>, String)> {
    let options = serde_json::to_value(stored).context("cannot encode the run's options")?;
    let config = stored.writer_config();
    let mut record = RunRecord {
        run_id: journal::new_run_id(),
        command: command.to_vec(),
        options,
        cwd: cwd.to_path_buf(),
    };
    if let Some(path) = &a.journal {
        let j = journal::create(path, &record, config)?;
        return Ok((Arc::new(j), record.run_id));
    }
    let dir = journal::state_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the journal directory {}", dir.display()))?;
    // Run ids carry 16 random bits: on the rare clash, take another.
    for _ in 0..16 {
        let path = journal::path_of(&dir, &record.run_id);
        match journal::create(&path, &record, config) {
            Ok(j) => return Ok((Arc::new(j), record.run_id)),
            Err(JournalError::Exists { .. }) => record.run_id = journal::new_run_id(),
            Err(e) => return Err(e.into()),
        }
    }
    bail!("cannot find a free run id in {}", dir.display())
}

/// Finds the program on `PATH` once, instead of in every job's spawn, and
/// refuses one that cannot be found instead of failing every job. `None`
/// when the program name comes from the input (`{}` in it).
pub(super) fn resolve_program(program: &OsString) -> anyhow::Result<Option<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    if program.as_bytes().contains(&b'{') {
        return Ok(None);
    }
    let found = if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        is_executable(&p).then_some(p)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| is_executable(p))
        })
    };
    match found {
        Some(p) => Ok(Some(p)),
        None => bail!(
            "command not found or not executable: {}",
            program.to_string_lossy()
        ),
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_fsync_interval_text_matches_the_library_default() {
        assert_eq!(
            args::duration(DEFAULT_SYNC_TEXT).unwrap(),
            DEFAULT_SYNC_INTERVAL
        );
    }

    #[test]
    fn inputs_after_triple_colon_are_split_off() {
        let words: Vec<OsString> = ["echo", "{}", ":::", "a", "b"]
            .iter()
            .map(Into::into)
            .collect();
        let (cmd, inputs) = split_command(words).unwrap();
        assert_eq!(cmd, vec![OsString::from("echo"), OsString::from("{}")]);
        assert_eq!(
            inputs.unwrap(),
            vec![OsString::from("a"), OsString::from("b")]
        );
    }
}
