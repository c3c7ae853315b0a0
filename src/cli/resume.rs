//! `jobmill resume`: continue a journaled run.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use jobmill::engine::JobSource;
use jobmill::events::Observer;
use jobmill::input::plan::Payloads;
use jobmill::input::{Records, Source, SourceSpec};
use jobmill::journal::{self, resume};

use super::report::Reporter;

use super::run::{journal_line, numbered, prepare, StoredInput, StoredOptions};

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
    super::journal::report_recovered(&path, &r.recovered);
    if a.verbose && r.recovered.applied > 0 {
        eprintln!(
            "jobmill: recorded {} attempt ends from the completions log of {}",
            r.recovered.applied,
            path.display()
        );
    }
    let run = r.run.clone();
    let stored: StoredOptions = serde_json::from_value(run.options.clone()).with_context(|| {
        format!(
            "journal {}: the stored options are not those of `jobmill run`",
            path.display()
        )
    })?;
    std::env::set_current_dir(&run.cwd).with_context(|| {
        format!(
            "cannot resume in the run's working directory {}",
            run.cwd.display()
        )
    })?;
    let prepared = prepare(&run.command, &stored)?;
    let reporter = Arc::new(Reporter::new(a.progress));

    // The input past the recorded jobs, when the run had not read it all.
    let separator = if stored.null { 0 } else { b'\n' };
    let mut rest: Option<Payloads> = None;
    if !run.input_complete && stored.plan.is_some() {
        // Several sources, columns or batches: rebuild the same jobs.
        let plan = stored.input_plan()?;
        if plan.sources.iter().any(|s| s.spec == SourceSpec::Stdin) {
            eprintln!(
                "jobmill: the run read stdin and did not read its input to the end: \
                 resuming the {} recorded jobs only (the rest of that input is not in the journal)",
                run.jobs
            );
        } else {
            let (mut payloads, _) = plan.open().map_err(super::run::one_error)?;
            r.verify_prefix(&mut payloads, "the run's input sources")?;
            rest = Some(payloads);
        }
    } else if !run.input_complete {
        let input = stored.input()?;
        let (source, name) = match input {
            StoredInput::Stdin => {
                eprintln!(
                    "jobmill: the run's input was stdin and it was not read to its end: \
                     resuming the {} recorded jobs only (the rest of that input is not in the journal)",
                    run.jobs
                );
                (None, String::new())
            }
            StoredInput::File(p) => {
                let name = p.display().to_string();
                (Some(Source::file(&p)?), name)
            }
            StoredInput::Args(list) => (Some(Source::Args(list)), "the `:::` inputs".to_string()),
        };
        if let Some(source) = source {
            let mut records = Records::new(source, separator);
            r.verify_prefix(&mut records, &name)?;
            rest = Some(Box::new(records));
        }
    }
    let whole_input = rest.is_some();
    let known = run.jobs;
    let (journal, pending) = r.start(a.failed, whole_input, stored.writer_config())?;
    let journal = Arc::new(journal);
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
            if whole_input {
                ", then the rest of the input"
            } else {
                ""
            }
        );
    }
    let mut jobs: JobSource = Box::new(pending);
    if let Some(records) = rest {
        jobs = Box::new(jobs.chain(numbered(records, known + 1)));
    }
    let mut observers: Vec<Arc<dyn Observer>> = vec![Arc::clone(&journal) as Arc<dyn Observer>];
    observers.extend(prepared.outputs(true)?);
    let summary = prepared.run(jobs, Arc::clone(&reporter), observers)?;
    super::report_error(&summary);
    let _ = journal.close("ended");
    let path = journal.path().to_path_buf();
    drop(journal);
    if summary.error.is_some() || summary.stop != jobmill::events::StopCause::None {
        eprintln!("{}", journal_line(&path, &run.run_id));
        return Ok(summary.exit_code() as u8);
    }
    // The run as a whole: jobs failed or dead, in this session or before.
    let (failed, unfinished) = final_counts(&path)?;
    if failed > 0 || unfinished > 0 {
        eprintln!("{}", journal_line(&path, &run.run_id));
    }
    if a.verbose {
        eprintln!(
            "jobmill: run {}: {failed} jobs failed or dead, {unfinished} unfinished",
            run.run_id
        );
    }
    Ok(failed.min(101) as u8)
}

/// Jobs failed or dead, and jobs not final, in the journal.
fn final_counts(path: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot read journal {}", path.display()))?;
    let (failed, unfinished): (i64, i64) = conn
        .query_row(
            "SELECT COALESCE(SUM(state IN ('failed', 'dead')), 0),
                    COALESCE(SUM(state NOT IN ('done', 'failed', 'dead')), 0) FROM job",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .with_context(|| format!("cannot read journal {}", path.display()))?;
    Ok((failed as u64, unfinished as u64))
}
