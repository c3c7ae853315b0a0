//! `jobmill run`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use jobmill::input::{Records, Source};
use jobmill::job::NewJob;
use jobmill::run::halt::Halt;
use jobmill::run::persistent::PersistentOptions;
use jobmill::run::{self as runner, JobSource, RunOptions};
use jobmill::template::Template;

use super::args;

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

    /// Run on a shared queue (redis://host:port/NAME) instead of in
    /// memory: inputs are submitted to it and worked on here; workers on
    /// other hosts may join with `jobmill worker --queue URL`.
    #[arg(long, value_name = "URL")]
    pub queue: Option<String>,

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

/// Runs `jobmill run`; returns the exit status.
pub fn run(mut a: RunArgs) -> anyhow::Result<u8> {
    if let Some(url) = a.queue.take() {
        return super::queue::run_on_queue(&url, a);
    }
    let (mut command, inputs) = split_command(a.command)?;
    if command.is_empty() {
        bail!("no command given after `--`");
    }
    if !a.shell {
        // Resolve the program once, not in every job's spawn.
        if let Some(path) = resolve_program(&command[0])? {
            command[0] = path.into_os_string();
        }
    }
    if a.persistent && a.shell {
        bail!("--shell cannot be used with --persistent: the worker command is run as is");
    }
    if a.window == 0 {
        bail!("--window must be at least 1");
    }
    let persistent = a.persistent.then(|| PersistentOptions {
        command: command.clone(),
        window: a.window,
        arena: a.arena,
    });
    let template = Template::parse(&command, a.shell)?;
    let halt: Option<Halt> = a.halt.as_deref().map(str::parse).transpose()?;
    if a.jobs == Some(0) {
        bail!("--jobs must be at least 1");
    }

    let source = match (inputs, &a.arg_file) {
        (Some(_), Some(_)) => bail!("give inputs either with `:::` or with --arg-file, not both"),
        (Some(list), None) => Source::Args(list),
        (None, Some(path)) => Source::file(path)?,
        (None, None) => Source::stdin(),
    };
    let separator = if a.null { 0 } else { b'\n' };
    let jobs: JobSource = Box::new(
        Records::new(source, separator)
            .zip(1u64..)
            .map(|(r, seq)| r.map(|payload| NewJob::new(seq, payload))),
    );

    let mut opts = RunOptions::new(template);
    if let Some(j) = a.jobs {
        opts.jobs = j;
    }
    opts.keep_order = a.keep_order;
    opts.retries = a.retries;
    opts.timeout = a.timeout;
    opts.grace = a.grace;
    opts.halt = halt;
    opts.progress = a.progress;
    opts.output_memory = a.output_memory;
    opts.guardian = std::env::current_exe().ok();
    opts.handle_signals = true;
    opts.persistent = persistent;

    let summary = runner::run(opts, jobs, Vec::new()).context("cannot start the run")?;
    if let Some(e) = &summary.error {
        // Already printed when it happened.
        let _ = e;
    }
    Ok(summary.exit_code() as u8)
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
