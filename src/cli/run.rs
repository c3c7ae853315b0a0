//! `jobmill run`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use jobmill::engine::halt::Halt;
use jobmill::engine::joblog::{self, Joblog};
use jobmill::engine::output::{Live, Tag};
use jobmill::engine::results::{Results, Target};
use jobmill::engine::throttle::{MemPerJob, ProcSource, Throttle};
use jobmill::engine::{JobSource, Plan, ResultEnd, Work, WorkersOptions};
use jobmill::events::{Observer, RunSummary};
use jobmill::exec::MemoryOptions;
use jobmill::input::plan::Payloads;
use jobmill::input::{
    Batch, Columns, Header, Plan as InputPlan, Shape, SourceDef, SourceSpec, Trim,
};
use jobmill::job::NewJob;
use jobmill::job::RetryPolicy;
use jobmill::journal::options::{StoredInput, StoredOptions, OPTIONS_VERSION};
use jobmill::journal::resume::{json_to_bytes, os_to_json};
use jobmill::journal::writer::DEFAULT_OUTPUT_CAP;
#[cfg(test)]
use jobmill::journal::writer::DEFAULT_SYNC_INTERVAL;
use jobmill::journal::{self, Journal, JournalError, RunRecord};
use jobmill::queue::memory::MemoryQueue;
use jobmill::template::Template;

use super::report::Reporter;

use super::args;

/// [`DEFAULT_SYNC_INTERVAL`] as text, for clap.
const DEFAULT_SYNC_TEXT: &str = "50ms";

/// Options of `jobmill run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Jobs to run at once (default: the number of CPU threads): N, +N or
    /// -N (CPU threads plus or minus N), or P% of the CPU threads.
    #[arg(short = 'j', long = "jobs", value_name = "N", allow_hyphen_values = true,
          value_parser = args::jobs)]
    pub jobs: Option<usize>,

    /// Print each job's output in input order (output of jobs that finish
    /// early waits, spilled to a temporary file past the memory cap).
    #[arg(short = 'k', long = "keep-order")]
    pub keep_order: bool,

    /// Inputs are separated by NUL instead of newline.
    #[arg(short = '0', long = "null")]
    pub null: bool,

    /// Read inputs from FILE instead of stdin (`-` is stdin). Repeat for
    /// several input sources, as `:::: FILE`.
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    pub arg_file: Vec<PathBuf>,

    /// Pair the input sources (first with first, second with second...)
    /// instead of running every combination; shorter ones start over.
    #[arg(long, visible_alias = "xapply")]
    pub link: bool,

    /// Split each input into columns {1}, {2}... at matches of REGEX.
    #[arg(long, value_name = "REGEX")]
    pub colsep: Option<String>,

    /// Remove white space from the start (l), end (r) or both (lr) of each
    /// input, or of each column with --colsep; n: none. Default: lr with
    /// --colsep (not --csv), else n.
    #[arg(long, value_name = "n|l|r|lr")]
    pub trim: Option<String>,

    /// Take column names from the first input of each source, for {name}:
    /// `:` or a REGEX the first input must match.
    #[arg(long, value_name = ":|REGEX")]
    pub header: Option<String>,

    /// Read inputs as CSV (fields separated by --colsep, default `,`;
    /// quoted fields may hold separators, `""` and line breaks).
    #[arg(long)]
    pub csv: bool,

    /// Put up to N inputs in each command, as {1}...{N}.
    #[arg(short = 'n', long = "max-args", value_name = "N")]
    pub max_args: Option<usize>,

    /// Put as many inputs as fit the command-line limit in each command;
    /// `{}` in a word is repeated for each (context replace).
    #[arg(short = 'X')]
    pub context_replace: bool,

    /// Put as many inputs as fit the command-line limit in each command,
    /// `{}` standing for all of them.
    #[arg(short = 'm')]
    pub multi: bool,

    /// Print each command, shell-quoted, instead of running it (no journal).
    #[arg(long, visible_alias = "dryrun")]
    pub dry_run: bool,

    /// Run the command with `sh -c`, every substituted value shell-quoted.
    #[arg(long)]
    pub shell: bool,

    /// Re-run a failed job up to N more times (GNU parallel's N counts
    /// all attempts).
    #[arg(long, value_name = "N", default_value_t = 0, allow_hyphen_values = true,
          value_parser = args::retries)]
    pub retries: u32,

    /// Run a job whose worker vanished without a verdict (a long-lived
    /// worker that died holding it, a remote worker whose lease expired)
    /// again up to N times. Such losses do not count against --retries;
    /// the loss after the Nth leaves the job dead with the cause "lost".
    #[arg(long, value_name = "N", default_value_t = jobmill::job::DEFAULT_MAX_LOST)]
    pub max_lost: u32,

    /// Stop an attempt after DURATION (e.g. 30, 1.5s, 10m): TERM to its
    /// process group, KILL after --grace. 0: no timeout.
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub timeout: Option<Duration>,

    /// Time between TERM and KILL when stopping a job.
    #[arg(long, value_name = "DURATION", value_parser = args::duration, default_value = "2s")]
    pub grace: Duration,

    /// Stop early: `soon|now,fail|success|done=N|P%` (GNU parallel's
    /// meaning); `0` never, `1` is `soon,fail=1`, `2` is `now,fail=1`.
    #[arg(long, value_name = "WHEN,WHAT=N")]
    pub halt: Option<String>,

    /// Show a live progress bar on stderr (only on a terminal).
    #[arg(long, visible_aliases = ["bar", "eta"])]
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

    /// The command and its arguments, then optionally input sources:
    /// `::: INPUT...`, `:::: FILE...`, `:::+`/`::::+` to pair with the
    /// previous source.
    #[arg(value_name = "COMMAND", required = true, trailing_var_arg = true)]
    pub command: Vec<OsString>,

    /// Prefix each line of a job's output (stdout and stderr) with its
    /// input and a TAB (GNU parallel's --tag).
    #[arg(long)]
    pub tag: bool,

    /// Print each job's output as it comes, a whole line at a time, instead
    /// of whole when the job ends: lines of different jobs interleave, but
    /// never half a line. Cannot be used with --keep-order.
    #[arg(long = "line-buffer", visible_alias = "lb", conflicts_with = "ungroup")]
    pub line_buffer: bool,

    /// Print each job's output as it comes, unbuffered: lines of different
    /// jobs may mix. Cannot be used with --keep-order.
    #[arg(short = 'u', long = "ungroup")]
    pub ungroup: bool,

    /// Prefix each line of a job's output with STR (replacement strings
    /// work: `{}`, `{#}`, `{%}`, ...) and a TAB.
    #[arg(long, value_name = "STR")]
    pub tagstring: Option<String>,

    /// Keep each job's stdout, stderr and sequence number in files under
    /// DIR, in GNU parallel's layout (DIR/1/INPUT/stdout ...), or, for a
    /// name ending in .csv, .tsv or .json, one row per job in that table.
    /// The output is then not printed.
    #[arg(long, value_name = "DIR|FILE")]
    pub results: Option<PathBuf>,

    /// Write GNU parallel's joblog to FILE, one line per finished job, as
    /// jobs finish. With --resume, continue the run that wrote FILE.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,

    /// With --joblog FILE: continue the run that wrote FILE (as `jobmill
    /// resume`); a fresh run if no journal recorded FILE.
    #[arg(long, requires = "joblog")]
    pub resume: bool,

    /// As --resume, also running failed and dead jobs again.
    #[arg(long, requires = "joblog")]
    pub resume_failed: bool,

    /// Wait DURATION between two job starts.
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub delay: Option<Duration>,

    /// Start a job only while the system has at least SIZE of memory
    /// available (MemAvailable).
    #[arg(long, value_name = "SIZE", value_parser = args::size)]
    pub memfree: Option<usize>,

    /// Start a job only while fewer than N processes are running on the
    /// system (N% of the CPU threads with a `%`).
    #[arg(long, value_name = "N")]
    pub load: Option<String>,

    /// Retry policies by cause and memory-aware starts.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Options shared by `run` and `worker`: which failures are retried and
/// when, and memory-aware starts.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Run a job killed out of memory (by the kernel's OOM killer or the
    /// run's memory cgroup; not its own --mem-limit) again up to N times,
    /// with fewer jobs beside it. Such kills do not count against
    /// --retries; the one after the Nth leaves the job dead with the cause
    /// "oom".
    #[arg(long, value_name = "N", default_value_t = jobmill::job::DEFAULT_MAX_OOM)]
    pub max_oom: u32,

    /// Re-run only these failures under --retries: a comma-separated list
    /// of exit=CODES (codes and ranges: exit=3,4,10-20), signal, timeout.
    /// Any other failure ends the job at once. Default: every failure.
    #[arg(long, value_name = "LIST", value_parser = retry_on)]
    pub retry_on: Option<String>,

    /// Wait D before the first retry of a failed job (e.g. 5s, 1m); each
    /// later retry waits --retry-backoff times longer, up to
    /// --retry-max-delay, with ±20% jitter. A waiting job holds no slot.
    #[arg(long, value_name = "D", value_parser = args::duration)]
    pub retry_delay: Option<Duration>,

    /// With --retry-delay: each retry waits F times longer than the one
    /// before (at least 1).
    #[arg(long, value_name = "F", default_value_t = jobmill::job::DEFAULT_RETRY_BACKOFF)]
    pub retry_backoff: f64,

    /// With --retry-delay: no retry waits longer than D (before jitter).
    #[arg(long, value_name = "D", value_parser = args::duration, default_value = "10m")]
    pub retry_max_delay: Duration,

    /// Start a job only while the memory available (MemAvailable, or the
    /// run's memory cgroup limit less its usage) covers SIZE for each job
    /// running plus this one. `auto`: learn SIZE as the 95th percentile of
    /// the peak memory of the jobs finished so far and of earlier runs of
    /// the same command (one job at a time until the first estimate).
    #[arg(long, value_name = "SIZE|auto", value_parser = mem_per_job)]
    pub mem_per_job: Option<String>,

    /// Limit each job to SIZE of memory (e.g. 512M, 2G): the whole process
    /// tree of each attempt runs in a memory cgroup of its own with that
    /// limit, and a job over it ends with the cause "memory-limit". Where
    /// no cgroup can be made (not root, no memory controller), SIZE is the
    /// RLIMIT_AS (address space) of each process of the job instead, and a
    /// failure that names an allocation failure is "likely" over the limit.
    /// With --persistent, the limit applies to each worker. Also measures
    /// each job's peak memory over its whole tree (see README, "Memory").
    #[arg(long, value_name = "SIZE", value_parser = args::size)]
    pub mem_limit: Option<usize>,
}

impl PolicyArgs {
    /// Checks the values clap cannot, naming the option.
    fn check(&self) -> anyhow::Result<()> {
        if !self.retry_backoff.is_finite() || self.retry_backoff < 1.0 {
            bail!(
                "invalid --retry-backoff {}: a factor of at least 1 (e.g. 2)",
                self.retry_backoff
            );
        }
        if self.retry_delay.is_some() && self.retry_max_delay.is_zero() {
            bail!("--retry-max-delay must be more than 0 with --retry-delay");
        }
        Ok(())
    }

    /// The retry policy with `retries` and `max_lost` (`worker` and
    /// `run --queue`, which keep no journal options).
    pub fn retry_policy(&self, retries: u32, max_lost: u32) -> anyhow::Result<RetryPolicy> {
        self.check()?;
        let retry_on = match &self.retry_on {
            Some(text) => jobmill::job::RetryOn::parse(text)?,
            None => jobmill::job::RetryOn::ALL,
        };
        Ok(RetryPolicy::with_retries(retries)
            .max_lost(max_lost)
            .max_oom(self.max_oom)
            .retry_on(retry_on)
            .backoff(jobmill::job::Backoff {
                delay: self.retry_delay.unwrap_or_default(),
                factor: self.retry_backoff,
                max: self.retry_max_delay,
            }))
    }

    /// The memory options of a run on a shared queue (`worker`, `run
    /// --queue`): with `--mem-limit` or `--mem-per-job`, each job (each
    /// worker, with --persistent) gets a memory cgroup of its own.
    pub(super) fn queue_memory(&self) -> anyhow::Result<Option<MemoryOptions>> {
        if self.mem_limit == Some(0) {
            bail!("--mem-limit must be more than 0");
        }
        Ok(
            (self.mem_limit.is_some() || self.mem_per_job.is_some()).then_some(MemoryOptions {
                limit: self.mem_limit.map(|m| m as u64),
            }),
        )
    }

    /// The throttle of a run on a shared queue (`worker`, `run --queue`):
    /// `--mem-per-job` (each host learns and limits for itself) and the
    /// cap after an OOM kill.
    pub(super) fn queue_throttle(
        &self,
        command: &[OsString],
        persistent: bool,
    ) -> anyhow::Result<Arc<Throttle>> {
        let mem_per_job = stored_mem_per_job(self.mem_per_job.as_deref())?;
        if mem_per_job.is_some() && persistent {
            bail!("--mem-per-job cannot be used with --persistent (the workers are long-lived)");
        }
        let throttle =
            Throttle::new(None, None, None, Arc::new(ProcSource)).with_mem_per_job(mem_per_job);
        seed_peaks(&throttle, command);
        Ok(Arc::new(throttle))
    }

    /// Writes these options into `o`.
    fn store(&self, o: &mut StoredOptions) {
        o.max_oom = self.max_oom;
        o.retry_on = self.retry_on.clone();
        o.retry_delay = self.retry_delay.map(|d| d.as_secs_f64());
        o.retry_backoff = self.retry_backoff;
        o.retry_max_delay = self.retry_max_delay.as_secs_f64();
        o.mem_per_job = self.mem_per_job.clone();
    }
}

/// Parses `--retry-on` (kept as given, once valid).
fn retry_on(s: &str) -> Result<String, String> {
    jobmill::job::RetryOn::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// Parses `--mem-per-job`: `auto`, or a size (kept as bytes).
fn mem_per_job(s: &str) -> Result<String, String> {
    if s.trim() == "auto" {
        return Ok("auto".into());
    }
    match args::size(s) {
        Ok(0) => Err("--mem-per-job must be more than 0 (or auto)".into()),
        Ok(n) => Ok(n.to_string()),
        Err(e) => Err(format!("{e}, or auto")),
    }
}

/// The throttle's `--mem-per-job` from its stored form.
pub(super) fn stored_mem_per_job(s: Option<&str>) -> anyhow::Result<Option<MemPerJob>> {
    Ok(match s {
        None => None,
        Some("auto") => Some(MemPerJob::Auto),
        Some(n) => {
            Some(MemPerJob::Size(n.parse().map_err(|_| {
                anyhow::anyhow!("invalid stored --mem-per-job {n:?}")
            })?))
        }
    })
}

/// Seeds `--mem-per-job auto` with the peaks of earlier runs of `command`
/// found in the state directory; returns how many.
pub(super) fn seed_peaks(throttle: &Throttle, command: &[OsString]) -> usize {
    if throttle.mem_per_job() != Some(MemPerJob::Auto) {
        return 0;
    }
    let peaks = journal::prune::earlier_peaks(&journal::state_dir(), command, SEED_PEAKS);
    for p in &peaks {
        throttle.learn_peak(*p);
    }
    peaks.len()
}

/// At most this many peaks of earlier runs seed `--mem-per-job auto`.
const SEED_PEAKS: usize = 10_000;

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

/// Splits `COMMAND... ::: A... :::: FILE... :::+ B...` into the command and
/// its input sources, in order.
pub(super) fn split_sources(
    words: Vec<OsString>,
) -> anyhow::Result<(Vec<OsString>, Vec<SourceDef>)> {
    let mut command = Vec::new();
    let mut sources: Vec<SourceDef> = Vec::new();
    // The separator in effect: (files?, linked?).
    let mut mode: Option<(bool, bool)> = None;
    for w in words {
        let sep = match w.to_str() {
            Some(":::") => Some((false, false)),
            Some(":::+") => Some((false, true)),
            Some("::::") => Some((true, false)),
            Some("::::+") => Some((true, true)),
            _ => None,
        };
        if let Some((files, linked)) = sep {
            mode = Some((files, linked));
            if !files {
                sources.push(SourceDef {
                    spec: SourceSpec::Args(Vec::new()),
                    linked: linked && !sources.is_empty(),
                });
            }
            continue;
        }
        match mode {
            None => command.push(w),
            Some((true, linked)) => {
                let spec = if w == "-" {
                    SourceSpec::Stdin
                } else {
                    SourceSpec::File(PathBuf::from(w))
                };
                sources.push(SourceDef {
                    spec,
                    linked: linked && !sources.is_empty(),
                });
                // Only the first file after `::::+` pairs with the previous.
                mode = Some((true, false));
            }
            Some((false, _)) => match sources.last_mut().map(|s| &mut s.spec) {
                Some(SourceSpec::Args(list)) => list.push(w),
                _ => unreachable!("`:::` opens an argument source"),
            },
        }
    }
    if command.is_empty() {
        bail!(
            "no command given: put the command after `--`, e.g. `jobmill run -- echo {{}} ::: a b`"
        );
    }
    Ok((command, sources))
}

/// The input of a run beyond one plain source, as stored in its journal to
/// rebuild the same jobs on resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StoredPlan {
    /// Each source: `{"kind": "stdin"}`, `{"kind": "file", "path": P}` or
    /// `{"kind": "args", "args": [...]}` (as `StoredOptions::input`), plus
    /// `"linked": true` for `:::+`.
    pub sources: Vec<serde_json::Value>,
    #[serde(default)]
    pub link: bool,
    #[serde(default)]
    pub colsep: Option<String>,
    #[serde(default)]
    pub csv: bool,
    /// `--trim` as given; absent: GNU parallel's default.
    #[serde(default)]
    pub trim: Option<String>,
    #[serde(default)]
    pub header: Option<String>,
    /// `-n N`.
    #[serde(default)]
    pub max_args: Option<usize>,
    /// `-X`/`-m`: `[budget, overhead]` in bytes, and the job slots the
    /// last inputs are spread over.
    #[serde(default)]
    pub fit: Option<(usize, usize, usize)>,
    /// `-X`.
    #[serde(default)]
    pub context: bool,
}

/// GNU parallel's longest command line (`parallel --max-line-length-allowed`
/// on Linux), which `-X` and `-m` fill.
const MAX_LINE: usize = 130_000;

impl StoredPlan {
    /// The input plan, with relative paths taken from the current directory.
    pub fn plan(&self, null: bool) -> anyhow::Result<InputPlan> {
        let mut sources = Vec::with_capacity(self.sources.len());
        for v in &self.sources {
            let linked = v.get("linked").and_then(|l| l.as_bool()).unwrap_or(false);
            let spec = stored_source(v)?;
            sources.push(SourceDef { spec, linked });
        }
        let columns = match (&self.colsep, self.csv) {
            (None, false) => Columns::Whole,
            (Some(re), false) => Columns::Regex(
                regex::bytes::Regex::new(re).with_context(|| format!("--colsep {re:?}"))?,
            ),
            (sep, true) => {
                let sep = sep.as_deref().unwrap_or(",");
                match sep.as_bytes() {
                    [b] => Columns::Csv(*b),
                    b"\\t" => Columns::Csv(b'\t'),
                    _ => bail!("--csv needs --colsep to be one character, not {sep:?}"),
                }
            }
        };
        let trim = match self.trim.as_deref() {
            Some(t) => Trim::parse(t)
                .with_context(|| format!("invalid --trim {t:?} (expected n, l, r or lr)"))?,
            None if self.colsep.is_some() && !self.csv => Trim::parse("lr").expect("lr"),
            None => Trim::default(),
        };
        let header = match self.header.as_deref() {
            None => None,
            Some(":") => Some(Header::FirstLine),
            Some(re) => Some(Header::Matching(
                regex::bytes::Regex::new(re).with_context(|| format!("--header {re:?}"))?,
            )),
        };
        let batch = match (self.max_args, self.fit) {
            (Some(0), _) => bail!("-n must be at least 1"),
            (Some(n), _) => Batch::Count(n),
            (None, Some((budget, overhead, slots))) => Batch::Fit {
                budget,
                overhead,
                slots,
            },
            (None, None) => Batch::One,
        };
        Ok(InputPlan {
            sources,
            link: self.link,
            separator: if null { 0 } else { b'\n' },
            columns,
            trim,
            header,
            batch,
            context: self.context,
        })
    }
}

fn source_to_json(def: &SourceDef, cwd: &Path) -> serde_json::Value {
    let mut v = match &def.spec {
        SourceSpec::Stdin => serde_json::json!({ "kind": "stdin" }),
        SourceSpec::File(p) => serde_json::json!({
            "kind": "file",
            "path": os_to_json(cwd.join(p).as_os_str()),
        }),
        SourceSpec::Args(list) => serde_json::json!({
            "kind": "args",
            "args": list.iter().map(|x| os_to_json(x)).collect::<Vec<_>>(),
        }),
    };
    if def.linked {
        v["linked"] = serde_json::Value::Bool(true);
    }
    v
}

/// The input plan of a stored run: its `plan`, or the one source of its
/// `input`.
pub(super) fn input_plan(o: &StoredOptions) -> anyhow::Result<InputPlan> {
    if let Some(p) = &o.plan {
        let p: StoredPlan = serde_json::from_value(p.clone())
            .with_context(|| format!("the stored input plan is invalid: {p}"))?;
        return p.plan(o.null);
    }
    let spec = match &o.input {
        StoredInput::Stdin => SourceSpec::Stdin,
        StoredInput::File { path } => SourceSpec::File(PathBuf::from(path)),
        StoredInput::Args { args } => SourceSpec::Args(args.clone()),
        StoredInput::Plan => bail!("the stored input names a plan, but the journal holds none"),
    };
    let mut plan = InputPlan::new(vec![SourceDef {
        spec,
        linked: false,
    }]);
    plan.separator = o.separator();
    Ok(plan)
}

/// One source of a [`StoredPlan`], as stored: `{"kind": "stdin"}`,
/// `{"kind": "file", "path": P}` or `{"kind": "args", "args": [...]}`.
fn stored_source(input: &serde_json::Value) -> anyhow::Result<SourceSpec> {
    use std::os::unix::ffi::OsStringExt;
    let bad = || anyhow::anyhow!("the stored input source is invalid: {}", input);
    let kind = input.get("kind").and_then(|k| k.as_str()).ok_or_else(bad)?;
    Ok(match kind {
        "stdin" => SourceSpec::Stdin,
        "file" => {
            let p = input.get("path").and_then(json_to_bytes).ok_or_else(bad)?;
            SourceSpec::File(PathBuf::from(OsString::from_vec(p)))
        }
        "args" => {
            let list = input
                .get("args")
                .and_then(|a| a.as_array())
                .ok_or_else(bad)?;
            let mut args = Vec::with_capacity(list.len());
            for a in list {
                args.push(OsString::from_vec(json_to_bytes(a).ok_or_else(bad)?));
            }
            SourceSpec::Args(args)
        }
        _ => return Err(bad()),
    })
}

/// A run ready to start: what `jobmill run` and `jobmill resume` share.
pub(super) struct Prepared {
    pub plan: Plan,
    pub policy: RetryPolicy,
    /// `--joblog`, `--results`: the observers [`Prepared::outputs`] makes.
    pub outputs: Outputs,
}

/// The files a run writes besides its output and journal.
pub(super) struct Outputs {
    joblog: Option<PathBuf>,
    results: Option<PathBuf>,
    command: joblog::Command,
    /// How payloads split into values (`--results`' V1...Vn).
    shape: Shape,
}

impl Prepared {
    /// The run's payloads turned out to have `shape` (several values per
    /// job): the tag, the joblog's and the results' commands and values
    /// follow it.
    fn reshape(&mut self, shape: &Shape) {
        if let Some(tag) = &self.plan.tag {
            self.plan.tag = Some(tag.with_shape(shape.clone()));
        }
        if let joblog::Command::Template(t) = &self.outputs.command {
            self.outputs.command = joblog::Command::Template(t.with_shape(shape.clone()));
        }
        self.outputs.shape = shape.clone();
    }

    /// The observers writing `--joblog` and `--results`; with `append` (a
    /// resumed run), they add to the files instead of replacing them.
    pub fn outputs(&self, append: bool) -> anyhow::Result<Vec<Arc<dyn Observer>>> {
        let o = &self.outputs;
        let mut observers: Vec<Arc<dyn Observer>> = Vec::new();
        if let Some(path) = &o.joblog {
            let j = Joblog::create(path, o.command.clone(), append)
                .with_context(|| format!("cannot write the joblog {}", path.display()))?;
            observers.push(Arc::new(j));
        }
        if let Some(path) = &o.results {
            let shape = o.shape.clone();
            let split = move |payload: &[u8]| {
                let mut values = Vec::new();
                shape.split(payload, &mut values);
                values.iter().map(|v| v.to_vec()).collect()
            };
            let r = Results::create(Target::of(path), o.command.clone(), Box::new(split), append)
                .with_context(|| format!("cannot write the results to {}", path.display()))?;
            observers.push(Arc::new(r));
        }
        Ok(observers)
    }
}

/// Parses `--load`: N processes, or N% of the CPU threads.
fn parse_load(s: &str) -> anyhow::Result<f64> {
    let bad = || anyhow::anyhow!("invalid --load value {s:?} (expected e.g. 4, 2.5 or 80%)");
    let (num, percent) = match s.trim().strip_suffix('%') {
        Some(n) => (n, true),
        None => (s.trim(), false),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 {
        return Err(bad());
    }
    Ok(if percent {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        v * cpus as f64 / 100.0
    } else {
        v
    })
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
    let command_as_given = command.to_vec();
    let mut command = command.to_vec();
    if command.is_empty() {
        bail!("no command given after `--`");
    }
    // The joblog's and the results' Command column: as given, as GNU
    // parallel logs it (not the resolved program).
    let output_command = if o.persistent {
        joblog::Command::Fixed(command.clone())
    } else {
        joblog::Command::Template(Template::parse_shaped(&command, o.shell, o.shape.clone())?)
    };
    if !o.shell {
        // Resolve the program once, not in every job's spawn.
        if let Some(path) = args::resolve_program(&command[0])? {
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
        w.config.arena = o.arena.unwrap_or(jobmill::persistent::DEFAULT_ARENA);
        w.config.handshake_timeout = Duration::from_secs_f64(o.handshake_timeout.max(0.0));
        if o.print0 {
            w.result_end = ResultEnd::Nul;
        }
        Work::Persistent(w)
    } else {
        Work::Command(Template::parse_shaped(&command, o.shell, o.shape.clone())?)
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
    let tagstring = o.tagstring.as_deref().or(o.tag.then_some("{}"));
    if let Some(text) = tagstring {
        let template = Template::parse_shaped(&[OsString::from(text)], false, o.shape.clone())?;
        plan.tag = Some(Tag::new(text.as_bytes(), template));
    }
    if o.live.is_some() && o.keep_order {
        bail!(
            "--line-buffer and -u print output as it comes, so they cannot be used with \
             --keep-order"
        );
    }
    plan.live = o.live;
    if o.results.is_some() {
        // As GNU parallel: the output goes to the results only.
        plan.print_output = false;
        plan.keep_order = false;
    }
    let mem_per_job = stored_mem_per_job(o.mem_per_job.as_deref())?;
    if mem_per_job.is_some() && o.persistent {
        bail!("--mem-per-job cannot be used with --persistent (the workers are long-lived)");
    }
    // Always a throttle: with nothing set it still caps the jobs at once
    // after an OOM kill.
    let throttle = Throttle::new(
        o.delay.map(|d| Duration::from_secs_f64(d.max(0.0))),
        o.memfree,
        o.load,
        Arc::new(ProcSource),
    )
    .with_mem_per_job(mem_per_job);
    seed_peaks(&throttle, &command_as_given);
    plan.throttle = Some(Arc::new(throttle));
    if o.mem_limit == Some(0) {
        bail!("--mem-limit must be more than 0");
    }
    // A memory option gives each job a cgroup of its own (where one can be
    // made): its OOM kills and whole-tree peak are then known, which
    // `--mem-per-job` learns from and requeues by.
    if o.mem_limit.is_some() || mem_per_job.is_some() {
        plan.memory = Some(MemoryOptions { limit: o.mem_limit });
    }
    Ok(Prepared {
        plan,
        policy: o.retry_policy().map_err(anyhow::Error::msg)?,
        outputs: Outputs {
            joblog: o.joblog.clone(),
            results: o.results.clone(),
            command: output_command,
            shape: o.shape.clone(),
        },
    })
}

/// Jobs numbered from `first` from payloads.
pub(super) fn numbered(
    records: impl Iterator<Item = Result<Vec<u8>, jobmill::input::InputError>> + Send + 'static,
    first: u64,
) -> JobSource {
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
    if a.timeout.is_some_and(|t| t.is_zero()) {
        a.timeout = None;
    }
    a.halt = a.halt.as_deref().and_then(args::halt);
    if a.no_journal && a.journal.is_some() {
        bail!("give either --journal PATH or --no-journal, not both");
    }
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    if a.resume || a.resume_failed {
        if let Some(code) = resume_by_joblog(&a, &cwd)? {
            return Ok(code);
        }
    }
    let (command, input, plan) = input_of(&mut a, &cwd)?;
    let mut stored = StoredOptions {
        version: OPTIONS_VERSION,
        jobs: a.jobs.unwrap_or_else(args::cpu_threads),
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
        arena: Some(a.arena),
        handshake_timeout: a.handshake_timeout.as_secs_f64(),
        print0: a.print0,
        journal_output_cap: a.journal_output_cap,
        journal_fsync: a.journal_fsync.as_secs_f64(),
        tag: a.tag,
        tagstring: a.tagstring.clone(),
        live: if a.line_buffer {
            Some(Live::Lines)
        } else if a.ungroup {
            Some(Live::Ungrouped)
        } else {
            None
        },
        results: a.results.as_ref().map(|p| cwd.join(p)),
        joblog: a.joblog.as_ref().map(|p| cwd.join(p)),
        delay: a.delay.map(|d| d.as_secs_f64()),
        memfree: a.memfree.map(|m| m as u64),
        mem_limit: a.policy.mem_limit.map(|m| m as u64),
        load: a.load.as_deref().map(parse_load).transpose()?,
        max_oom: a.policy.max_oom,
        retry_on: None,
        retry_delay: None,
        retry_backoff: a.policy.retry_backoff,
        retry_max_delay: a.policy.retry_max_delay.as_secs_f64(),
        mem_per_job: None,
        input,
        shape: Shape::default(),
        plan,
    };
    a.policy.check()?;
    a.policy.store(&mut stored);
    if a.dry_run {
        let (payloads, shape) = input_plan(&stored)?.open().map_err(one_error)?;
        stored.shape = shape;
        return dry_run(&command, &stored, payloads);
    }
    let mut prepared = prepare(&command, &stored)?;
    let input_plan = input_plan(&stored)?;
    super::check_stdio(
        input_plan
            .sources
            .iter()
            .any(|s| s.spec == SourceSpec::Stdin),
    )?;
    let (payloads, shape) = input_plan.open().map_err(one_error)?;
    if shape != stored.shape {
        prepared.reshape(&shape);
        match &mut prepared.plan.work {
            Work::Command(t) => *t = t.with_shape(shape.clone()),
            _ if shape.joined => bail!(
                "--persistent takes one value per job: not several sources, columns or batches"
            ),
            _ => {}
        }
        stored.shape = shape;
    }
    let jobs = numbered(payloads, 1);

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
    let mut observers: Vec<Arc<dyn Observer>> = journal
        .iter()
        .map(|(j, _)| Arc::clone(j) as Arc<dyn Observer>)
        .collect();
    observers.extend(prepared.outputs(false)?);
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

/// `run --resume|--resume-failed --joblog FILE`: continues the run whose
/// journal recorded FILE as its joblog, as `jobmill resume [--failed]`
/// does. `None` when no journal recorded it: the run starts afresh (as GNU
/// parallel does with a joblog that does not exist yet).
fn resume_by_joblog(a: &RunArgs, cwd: &Path) -> anyhow::Result<Option<u8>> {
    let Some(joblog) = &a.joblog else {
        bail!("--resume and --resume-failed need --joblog FILE");
    };
    let joblog = cwd.join(joblog);
    let Some((path, stored_command)) = journal_of_joblog(&joblog, a.journal.as_deref())? else {
        if a.verbose {
            eprintln!(
                "jobmill: no journal recorded the joblog {}: starting a new run",
                joblog.display()
            );
        }
        return Ok(None);
    };
    let Some(run) = path.to_str() else {
        bail!(
            "the journal {} of the joblog {} has a name that is not UTF-8: \
             resume it with `jobmill resume`",
            path.display(),
            joblog.display()
        );
    };
    if a.verbose {
        eprintln!(
            "jobmill: the joblog {} was written by the run of {}: resuming it",
            joblog.display(),
            path.display()
        );
    }
    let (given, _) = split_command(a.command.clone())?;
    if !stored_command.is_empty() && given != stored_command {
        eprintln!(
            "jobmill: resuming the run that wrote {} with its own command and inputs \
             (as recorded in {}), not the command given",
            joblog.display(),
            path.display()
        );
    }
    super::resume::resume(super::resume::ResumeArgs {
        run: run.to_string(),
        failed: a.resume_failed,
        progress: a.progress,
        verbose: a.verbose,
    })
    .map(Some)
}

/// The journal whose run wrote the joblog `joblog`: `journal` if given,
/// else the newest journal recording it among the `.sqlite` files beside
/// the joblog and in the state directory.
pub(super) fn journal_of_joblog(
    joblog: &Path,
    journal: Option<&Path>,
) -> anyhow::Result<Option<(PathBuf, Vec<OsString>)>> {
    if let Some(j) = journal {
        if !j.is_file() {
            return Ok(None);
        }
        let command = jobmill::journal::read::Journal::open_header_only(j)
            .and_then(|r| r.run())
            .map(|run| run.command)
            .unwrap_or_default();
        return Ok(Some((j.to_path_buf(), command)));
    }
    let same = |stored: &Path| {
        stored == joblog
            || matches!(
                (stored.canonicalize(), joblog.canonicalize()),
                (Ok(x), Ok(y)) if x == y
            )
    };
    let mut dirs = vec![journal::state_dir()];
    if let Some(parent) = joblog.parent() {
        dirs.push(parent.to_path_buf());
    }
    let mut best: Option<(f64, PathBuf, Vec<OsString>)> = None;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("sqlite") {
                continue;
            }
            let Ok(j) = jobmill::journal::read::Journal::open_header_only(&p) else {
                continue;
            };
            let Ok(run) = j.run() else { continue };
            let stored = run
                .options
                .get("joblog")
                .and_then(|v| v.as_str())
                .map(PathBuf::from);
            if stored.as_deref().is_some_and(same)
                && best.as_ref().is_none_or(|(t, _, _)| run.started_at > *t)
            {
                best = Some((run.started_at, p, run.command));
            }
        }
    }
    Ok(best.map(|(_, p, c)| (p, c)))
}

/// The command, and the run's input as stored: `input`, and the plan when
/// there is more than one plain source.
fn input_of(
    a: &mut RunArgs,
    cwd: &Path,
) -> anyhow::Result<(Vec<OsString>, StoredInput, Option<serde_json::Value>)> {
    let (command, given) = split_sources(std::mem::take(&mut a.command))?;
    let mut sources: Vec<SourceDef> = a
        .arg_file
        .iter()
        .map(|p| SourceDef {
            spec: if p.as_os_str() == "-" {
                SourceSpec::Stdin
            } else {
                SourceSpec::File(p.clone())
            },
            linked: false,
        })
        .collect();
    sources.extend(given);
    if sources.is_empty() {
        sources.push(SourceDef {
            spec: SourceSpec::Stdin,
            linked: false,
        });
    }
    let batched = a.max_args.is_some() || a.context_replace || a.multi;
    if sources.len() == 1
        && !a.link
        && a.colsep.is_none()
        && !a.csv
        && a.trim.is_none()
        && a.header.is_none()
        && !batched
    {
        // One plain source: stored as always.
        let input = match &sources[0].spec {
            SourceSpec::Stdin => StoredInput::Stdin,
            SourceSpec::File(p) => StoredInput::File {
                path: cwd.join(p).into_os_string(),
            },
            SourceSpec::Args(list) => StoredInput::Args { args: list.clone() },
        };
        return Ok((command, input, None));
    }
    if a.context_replace && a.multi {
        bail!("give -X or -m, not both");
    }
    let fit = if a.context_replace || a.multi {
        let shape = Shape {
            joined: true,
            names: Vec::new(),
            context: a.context_replace,
        };
        let t = Template::parse_shaped(&command, a.shell, shape)?;
        Some((
            MAX_LINE.saturating_sub(t.fixed_len()),
            t.value_overhead(),
            a.jobs.unwrap_or_else(args::cpu_threads),
        ))
    } else {
        None
    };
    let plan = StoredPlan {
        sources: sources.iter().map(|s| source_to_json(s, cwd)).collect(),
        link: a.link,
        colsep: a.colsep.clone(),
        csv: a.csv,
        trim: a.trim.clone(),
        header: a.header.clone(),
        max_args: a.max_args,
        fit,
        context: a.context_replace,
    };
    let plan = serde_json::to_value(&plan).context("cannot encode the run's input plan")?;
    Ok((command, StoredInput::Plan, Some(plan)))
}

/// An input error as one message (its text already holds its cause).
pub(super) fn one_error(e: jobmill::input::InputError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// `--dry-run`: prints each command, shell-quoted, without running it.
fn dry_run(command: &[OsString], stored: &StoredOptions, payloads: Payloads) -> anyhow::Result<u8> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let template = Template::parse_shaped(command, stored.shell, stored.shape.clone())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut argv = Vec::new();
    let mut line = Vec::new();
    for (r, seq) in payloads.zip(1u64..) {
        let payload = r.map_err(one_error)?;
        let slot = ((seq - 1) % stored.jobs.max(1) as u64) as usize + 1;
        template.render(&payload, seq, slot, &mut argv);
        line.clear();
        if stored.shell {
            line.extend_from_slice(argv[2].as_bytes());
        } else {
            for (i, w) in argv.iter().enumerate() {
                if i > 0 {
                    line.push(b' ');
                }
                gnu_quote_into(w.as_bytes(), &mut line);
            }
        }
        line.push(b'\n');
        out.write_all(&line)?;
    }
    out.flush()?;
    Ok(0)
}

/// Quotes a word for `sh` as GNU parallel prints it: as is when it holds
/// only `[-_.+a-zA-Z0-9/]`, else single-quoted, a `'` as `'"'"'`.
pub(super) fn gnu_quote_into(w: &[u8], out: &mut Vec<u8>) {
    if w.is_empty() {
        out.extend_from_slice(b"''");
        return;
    }
    if w.iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.+/".contains(b))
    {
        out.extend_from_slice(w);
        return;
    }
    let mut q = vec![b'\''];
    let mut i = 0;
    while i < w.len() {
        if w[i] == b'\'' {
            let run = w[i..].iter().take_while(|&&b| b == b'\'').count();
            q.extend_from_slice(b"'\"");
            q.extend_from_slice(&w[i..i + run]);
            q.extend_from_slice(b"\"'");
            i += run;
        } else {
            q.push(w[i]);
            i += 1;
        }
    }
    q.push(b'\'');
    let mut s: &[u8] = &q;
    if let Some(rest) = s.strip_prefix(b"''") {
        s = rest;
    }
    if let Some(rest) = s.strip_suffix(b"''") {
        s = rest;
    }
    out.extend_from_slice(s);
}

/// Creates the run's journal: `--journal PATH`, or a new file in the state
/// directory.
fn create_journal(
    a: &RunArgs,
    command: &[OsString],
    stored: &StoredOptions,
    cwd: &Path,
) -> anyhow::Result<(Arc<Journal>, String)> {
    let options = stored.to_json();
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
    for w in journal::private::ensure_private_dir(&dir)
        .with_context(|| format!("cannot create the journal directory {}", dir.display()))?
    {
        eprintln!("jobmill: {w}");
    }
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

    fn words(w: &[&str]) -> Vec<OsString> {
        w.iter().map(Into::into).collect()
    }

    #[test]
    fn sources_are_split_in_order_with_their_links() {
        let (cmd, s) = split_sources(words(&[
            "echo", "{}", ":::", "a", "b", ":::+", "1", "::::", "f", "-", "::::+", "g", ":::",
        ]))
        .unwrap();
        assert_eq!(cmd, words(&["echo", "{}"]));
        let specs: Vec<_> = s.iter().map(|d| (d.spec.clone(), d.linked)).collect();
        assert_eq!(
            specs,
            vec![
                (SourceSpec::Args(words(&["a", "b"])), false),
                (SourceSpec::Args(words(&["1"])), true),
                (SourceSpec::File("f".into()), false),
                (SourceSpec::Stdin, false),
                (SourceSpec::File("g".into()), true),
                (SourceSpec::Args(vec![]), false),
            ]
        );
        assert!(split_sources(words(&[":::", "a"])).is_err());
    }

    #[test]
    fn dry_run_quotes_like_gnu_parallel() {
        let q = |w: &str| {
            let mut out = Vec::new();
            gnu_quote_into(w.as_bytes(), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(q("a/b-c_d.e+f"), "a/b-c_d.e+f");
        assert_eq!(q(""), "''");
        assert_eq!(q("a b"), "'a b'");
        assert_eq!(q("it's"), "'it'\"'\"'s'");
        assert_eq!(q("'x"), "\"'\"'x'");
        assert_eq!(q("x$y"), "'x$y'");
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
