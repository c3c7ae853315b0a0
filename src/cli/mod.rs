//! Argument parsing (clap derive; help text comes from these doc comments)
//! and one module per subcommand.

mod args;
mod collect;
mod journal;
mod page;
mod progress;
mod queue;
mod report;
mod requeue;
mod resume;
mod run;

use std::io;

use clap::{Parser, Subcommand};

/// jobmill: run jobs from a queue on N workers, exactly once, never losing one.
///
/// `jobmill run -- COMMAND {}` runs COMMAND once per input line, in parallel,
/// without a shell, with retries, timeouts and clean Ctrl-C handling.
#[derive(Debug, Parser)]
#[command(
    name = "jobmill",
    version,
    about,
    long_about,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of `run`'s options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run COMMAND once per input, in parallel.
    ///
    /// Inputs come from stdin (one per line), from `-a FILE`, or from
    /// `::: a b c` and `:::: FILE` after the command; several sources give
    /// every combination (`:::+` and `--link` pair them instead). `{}` in
    /// the command is replaced by the input, `{1}`, `{2}`... by the values
    /// of several sources or columns (`--colsep`, `--csv`) or batches
    /// (`-n`, `-X`, `-m`); without any replacement string the values are
    /// appended as the last arguments. The command is executed directly,
    /// never through a shell, unless `--shell` is given.
    ///
    /// Exit status: 0 if all jobs succeeded; else the number of failed jobs
    /// (at most 101); 130 if interrupted; 255 on a usage or internal error.
    Run(run::RunArgs),
    /// Continue a journaled run (interrupted, killed or crashed): jobs
    /// recorded done never run again; jobs that were running run again.
    ///
    /// Uses the stored command, options and inputs (no stdin needed).
    /// Exit status: as `run`, counting the failed jobs of the whole run.
    Resume(resume::ResumeArgs),
    /// Put jobs on a shared queue (redis://host:port/NAME) for workers on
    /// any host; closes the queue at the end of input unless --keep-open.
    Submit(queue::SubmitArgs),
    /// Run the jobs of a shared queue until it is closed and drained.
    ///
    /// Exit status: 0 once the queue is closed and drained; 3 if its
    /// producer was lost; 130 if interrupted; 255 on an error.
    ///
    /// With a signing key (the file named by JOBMILL_KEY_FILE, or
    /// JOBMILL_KEY), every task must carry the HMAC of that key (the tasks
    /// of a Python `jobmill.Pool(queue=...)`): one that does not is refused
    /// before a worker sees it, recorded dead with the reason and named on
    /// stderr; results go back to the queue, signed, instead of stdout.
    Worker(queue::WorkerArgs),
    /// Put the dead jobs of a shared queue (--queue) back, or its failed
    /// ones (--failed), all or those numbered; each gets a fresh retry
    /// allowance.
    Requeue(requeue::RequeueArgs),
    /// Show a run's counts by state, elapsed time, ETA, slowest jobs and
    /// top failure reasons (RUN_ID|PATH), or a shared queue's (--queue).
    Status(journal::StatusArgs),
    /// Print one row per job of a run (RUN_ID|PATH: tsv, csv, json or
    /// GNU parallel's joblog) or of a shared queue (--queue).
    Results(journal::ResultsArgs),
    /// List the journals in the state directory; --prune AGE deletes
    /// finished runs older than AGE.
    Runs(journal::RunsArgs),
    /// Write one self-contained HTML page of a run (RUN_ID|PATH): a
    /// timeline of every attempt, throughput, histograms, failures.
    Report(page::ReportArgs),
}

/// Refuses to run jobs whose output (or input, with `stdin`) would be
/// lost: a closed stdout, or a closed stdin that the inputs come from.
/// A run that did not run all its jobs never exits 0 (it exits 255).
pub(crate) fn check_stdio(reads_stdin: bool) -> anyhow::Result<()> {
    // As recorded before Rust's runtime put `/dev/null` on a closed one
    // (all open if nothing was recorded).
    let closed = jobmill::sys::closed_stdio_at_start().unwrap_or_default();
    if closed[1] {
        anyhow::bail!("stdout is closed: the jobs' output would be lost (run nothing)");
    }
    if reads_stdin && closed[0] {
        anyhow::bail!("stdin is closed: there are no inputs to read (give them with -a or :::)");
    }
    Ok(())
}

/// Runs the command line; returns the process exit status.
pub fn main() -> u8 {
    main_from(std::env::args_os().collect())
}

/// [`main`] with the command line given (program name first): the Python
/// package's `jobmill` command runs the CLI in its own process this way.
pub fn main_from(args: Vec<std::ffi::OsString>) -> u8 {
    if let Some(code) = hidden_modes(&args) {
        return code;
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                // `jobmill` alone: the help, on stderr, with clap's usage
                // status.
                let _ = e.print();
                return 2;
            }
            eprintln!(
                "jobmill: {} (see `jobmill --help`)",
                one_line(&e.to_string())
            );
            return 255;
        }
    };
    let result = match cli.command {
        Command::Run(mut args) => match args.queue.take() {
            Some(url) => queue::run_on_queue(&url, args),
            None => run::run(args),
        },
        Command::Resume(args) => resume::resume(args),
        Command::Submit(args) => queue::submit(args),
        Command::Worker(args) => queue::worker(args),
        Command::Requeue(args) => requeue::requeue(args),
        Command::Status(args) => journal::status(args),
        Command::Results(args) => journal::results(args),
        Command::Runs(args) => journal::runs(args),
        Command::Report(args) => page::report(args),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("jobmill: {e:#}");
            255
        }
    }
}

/// A clap error message in one line: its text up to the usage, the lines
/// joined (so a list of missing arguments is kept).
fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.trim_start_matches("error: "));
        }
    }
    if parts.is_empty() {
        return "invalid arguments".to_string();
    }
    parts.join(" ")
}

/// Modes of the binary that are not user commands: the guardian process.
fn hidden_modes(args: &[std::ffi::OsString]) -> Option<u8> {
    let mut args = args.iter().skip(1).cloned();
    if args.next()?.to_str()? == jobmill::exec::guardian::GUARDIAN_ARG {
        let grace_ms: u64 = args
            .next()
            .and_then(|a| a.to_str()?.parse().ok())
            .unwrap_or(2000);
        let token = args.next().and_then(|a| a.into_string().ok());
        jobmill::exec::guardian::run_guardian(
            std::time::Duration::from_millis(grace_ms),
            token.as_deref(),
        );
    }
    None
}

/// The program that runs the guardian (`jobmill __guardian`): this one, or
/// `$JOBMILL_GUARDIAN_EXE` when the CLI runs inside another program (the
/// Python package's `jobmill` command, whose process is `python`).
pub(crate) fn guardian_exe() -> Option<std::path::PathBuf> {
    std::env::var_os("JOBMILL_GUARDIAN_EXE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
}

/// Prints a run's fatal error, with its chain of causes, on stderr.
fn report_error(summary: &jobmill::events::RunSummary) {
    if let Some(e) = &summary.error {
        eprintln!("jobmill: {}", jobmill::events::error_chain(e.as_ref()));
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
