//! `jobmill resume`: continue a journaled run.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use jobmill::events::{Observer, StopCause};
use jobmill::input::SourceSpec;
use jobmill::journal::options::StoredInput;
use jobmill::journal::{self, resume, Warning};
use jobmill::outcome::exit;

use super::report::Reporter;
use super::run::{input_plan, journal_line, one_error, prepare};

/// Options of `jobmill resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run: its id (or a unique prefix) in the state directory, or the
    /// path of its journal.
    #[arg(value_name = "RUN_ID|PATH")]
    pub run: String,

    /// Also run the jobs that failed or died again (with a fresh
    /// allowance of --retries).
    #[arg(long)]
    pub failed: bool,

    /// Show a live progress bar on stderr (only on a terminal).
    #[arg(long)]
    pub progress: bool,

    /// Print the journal's path, run id and what is resumed.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// Runs `jobmill resume`; returns the exit status.
pub fn resume(a: ResumeArgs) -> anyhow::Result<u8> {
    super::check_stdio(false)?;
    let path = journal::locate(&a.run)?;
    // Absolute: resume moves to the run's working directory.
    let path = std::path::absolute(&path)
        .with_context(|| format!("cannot resolve the path {}", path.display()))?;
    let r = resume::open(&path)?;
    if r.run.options.get("pool").and_then(|v| v.as_str()) == Some("python") {
        anyhow::bail!(
            "{} is the journal of a Python jobmill.Pool(journal=...): run the Python script again to resume it (its tasks already done return their recorded results)",
            path.display()
        );
    }
    super::journal::report_recovered(&path, &r.recovered);
    if a.verbose && r.recovered.applied + r.recovered.started > 0 {
        eprintln!(
            "jobmill: recorded {} attempt ends and {} attempt starts from the completions log of {}",
            r.recovered.applied,
            r.recovered.started,
            path.display()
        );
    }
    let cwd = r.run.cwd.clone();
    std::env::set_current_dir(&cwd).with_context(|| {
        format!(
            "cannot resume in the run's working directory {}",
            cwd.display()
        )
    })?;
    let prepared = prepare(&r.run.command, &r.options)?;
    let reporter = Arc::new(Reporter::new(a.progress));
    let plan = if r.options.input == StoredInput::Plan && !r.run.input_complete {
        // Several sources, columns or batches: rebuild the same payloads.
        let input = input_plan(&r.options)?;
        if input.sources.iter().any(|s| s.spec == SourceSpec::Stdin) {
            let warning = Warning::StdinNotRead { jobs: r.run.jobs };
            r.plan_with(a.failed, None, vec![warning])?
        } else {
            let (payloads, _) = input.open().map_err(one_error)?;
            let rest = (payloads, "the run's input sources".to_string());
            r.plan_with(a.failed, Some(rest), Vec::new())?
        }
    } else {
        r.plan(a.failed)?
    };
    for w in &plan.warnings {
        reporter.line(&format!("jobmill: {w}"));
    }
    let run = plan.run;
    let journal = Arc::new(plan.journal);
    if a.verbose || a.progress {
        reporter.line(&journal_line(journal.path(), &run.run_id));
    }
    if a.verbose {
        eprintln!(
            "jobmill: resuming run {}: {} jobs recorded ({} done, {} failed, {} dead){}",
            run.run_id,
            run.jobs,
            run.done,
            run.failed,
            run.dead,
            if plan.whole_input {
                ", then the rest of the input"
            } else {
                ""
            }
        );
    }
    let mut observers: Vec<Arc<dyn Observer>> = vec![Arc::clone(&journal) as Arc<dyn Observer>];
    observers.extend(prepared.outputs(true)?);
    let summary = prepared.run(plan.jobs, Arc::clone(&reporter), observers)?;
    super::report_error(&summary);
    let _ = journal.close("ended");
    let path = journal.path().to_path_buf();
    drop(journal);
    if summary.error.is_some() || summary.stop != StopCause::None {
        eprintln!("{}", journal_line(&path, &run.run_id));
        return Ok(summary.exit_code() as u8);
    }
    // The run as a whole: jobs failed or dead, in this session or before.
    let (failed, unfinished) = resume::final_counts(&path)?;
    if failed > 0 || unfinished > 0 {
        eprintln!("{}", journal_line(&path, &run.run_id));
    }
    if a.verbose {
        eprintln!(
            "jobmill: run {}: {failed} jobs failed or dead, {unfinished} unfinished",
            run.run_id
        );
    }
    Ok(exit::failures(failed) as u8)
}
