//! Collecting a shared queue's results into a local journal: what
//! `jobmill results --queue`, `status --queue` and `run --queue` use, so
//! that the journal commands render them (one formatter) and work offline
//! afterwards.
//!
//! The mapping from the Redis backend's [`JobRecord`] to the journal's
//! backend-free [`JobSnapshot`] lives here: the journal never imports a
//! backend.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};

use jobmill::journal;
use jobmill::journal::read::JobState;
use jobmill::journal::snapshot::{JobSnapshot, RunHeader, Snapshot, SnapshotSummary};
use jobmill::queue::redis::{JobRecord, LiveJob, RedisQueue, RECORD_INPUT_LIMIT};

/// What the collecting command knows of the run beyond the queue.
#[derive(Debug, Default)]
pub struct RunContext {
    /// The run id of a journal created (a new one if `None`).
    pub run_id: Option<String>,
    /// The command template, when this process ran it (`run --queue`).
    pub command: Vec<OsString>,
    /// Options to record (e.g. `shell`).
    pub options: serde_json::Map<String, serde_json::Value>,
    /// When the run started (Unix seconds), if known.
    pub started_at: Option<f64>,
}

/// The outcome of [`collect`].
#[derive(Debug)]
pub struct Collected {
    /// What was written.
    pub summary: SnapshotSummary,
    /// Result records of jobs whose input the queue does not keep.
    pub inputs_missing: u64,
}

/// The time now, Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Maps one result record onto a journal job. The journal's sequence
/// number is the queue's job id: unique in the queue (several `submit`s
/// each number their inputs from 1), and equal to the sequence number
/// (`{#}`) when one submit filled the queue.
fn job_of(r: &JobRecord) -> anyhow::Result<JobSnapshot<'_>> {
    let state = match r.state.as_str() {
        "done" => JobState::Done,
        "failed" => JobState::Failed,
        "dead" => JobState::Dead,
        other => bail!(
            "job {} has a result record in unknown state {other:?}",
            r.job
        ),
    };
    Ok(JobSnapshot {
        seq: r.job,
        input: r.input.as_deref(),
        state,
        attempts: r.attempts,
        exit_code: r.exit_code.map(i64::from),
        signal: r.signal.map(i64::from),
        reason: Some(r.reason.clone()).filter(|s| !s.is_empty()),
        timed_out: r.reason == "timed out",
        finished_at: r.ended_ms.map(|ms| ms as f64 / 1000.0),
        duration: r.duration_ms.map(|ms| ms as f64 / 1000.0),
        cause: r.cause.clone(),
        worker: r.worker,
        host: r.host.clone(),
    })
}

/// Writes a snapshot of `queue`'s jobs (its result records, and the jobs
/// still queued or running in its stream) into
/// the journal at `path`, creating it or updating it in place (one
/// transaction; collecting again never duplicates a job).
///
/// # Errors
///
/// A file that is not a readable journal, or holds another run, is refused
/// and left unchanged; backend errors stop the collection with nothing
/// written.
pub fn collect(queue: &RedisQueue, path: &Path, ctx: RunContext) -> anyhow::Result<Collected> {
    let status = queue.status()?;
    let c = status.counts;
    let drained = c.is_drained();
    let taken = unix_now();
    let header = RunHeader {
        run_id: ctx.run_id.unwrap_or_else(journal::new_run_id),
        source: queue.url().to_string(),
        command: ctx.command,
        options: ctx.options,
        cwd: std::env::current_dir().unwrap_or_default(),
        host: jobmill::sys::hostname(),
        started_at: ctx.started_at.unwrap_or(taken),
        ended_at: Some(taken),
        end_reason: Some(if drained {
            "complete".into()
        } else {
            format!(
                "snapshot of a queue not drained ({}; {} queued, {} running)",
                if c.closed { "closed" } else { "open" },
                c.queued,
                c.leased
            )
        }),
        input_complete: c.closed,
        total_jobs: Some(c.produced).filter(|_| c.closed),
    };
    let mut snap = Snapshot::begin(path, &header)?;
    // Jobs whose input is not known (bounded by the jobs with large inputs).
    let mut missing = std::collections::BTreeSet::new();
    // Unfinished jobs first, then the results: a job that ends while the
    // scan runs is recorded in its final state.
    queue.for_each_unfinished(|j: LiveJob| -> anyhow::Result<()> {
        if j.input.is_none() {
            missing.insert(j.job);
        }
        snap.job(&JobSnapshot {
            seq: j.job,
            input: j.input.as_deref(),
            state: if j.leased {
                JobState::Running
            } else {
                JobState::Queued
            },
            attempts: j.attempts,
            exit_code: None,
            signal: None,
            reason: None,
            timed_out: false,
            finished_at: None,
            duration: None,
            cause: None,
            worker: None,
            host: None,
        })?;
        Ok(())
    })?;
    queue.for_each_result(|r: JobRecord| -> anyhow::Result<()> {
        if r.input.is_none() {
            missing.insert(r.job);
        } else {
            missing.remove(&r.job);
        }
        snap.job(&job_of(&r)?)?;
        Ok(())
    })?;
    let summary = snap.commit()?;
    Ok(Collected {
        summary,
        inputs_missing: missing.len() as u64,
    })
}

/// Notes on stderr about what a collected journal lacks.
pub fn report(c: &Collected) {
    if c.inputs_missing > 0 {
        eprintln!(
            "jobmill: {} job{} ha{} no input in the queue's records (records keep inputs up \
             to {} KiB; a failed or dead job's larger input stays in the queue for `jobmill \
             requeue`): recorded as empty",
            c.inputs_missing,
            if c.inputs_missing == 1 { "" } else { "s" },
            if c.inputs_missing == 1 { "s" } else { "ve" },
            RECORD_INPUT_LIMIT / 1024
        );
    }
}

/// Collects into a temporary journal (for `results`/`status --queue`
/// without `--save`): it lives as long as the returned directory.
///
/// # Errors
///
/// As [`collect`].
pub fn collect_temporary(
    queue: &RedisQueue,
) -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf, Collected)> {
    let dir = tempfile::Builder::new()
        .prefix("jobmill-collect")
        .tempdir()
        .context("cannot create a temporary directory for the collected results")?;
    let path = dir.path().join(format!("queue.{}", journal::EXTENSION));
    let c = collect(queue, &path, RunContext::default())?;
    Ok((dir, path, c))
}

/// `jobmill run --queue`: collects the queue's results into a new journal
/// in the state directory, named by a new run id, and prints its path
/// (a failure is reported, not fatal: the results stay in the queue).
pub fn collect_run(
    queue: &RedisQueue,
    command: Vec<OsString>,
    shell: bool,
    persistent: bool,
    started_at: f64,
) {
    let dir = journal::state_dir();
    let result = journal::private::ensure_private_dir(&dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))
        .and_then(|warnings| {
            for w in warnings {
                eprintln!("jobmill: {w}");
            }
            let run_id = journal::new_run_id();
            let path = journal::path_of(&dir, &run_id);
            let mut options = serde_json::Map::new();
            options.insert("shell".into(), shell.into());
            options.insert("persistent".into(), persistent.into());
            collect(
                queue,
                &path,
                RunContext {
                    run_id: Some(run_id),
                    command,
                    options,
                    started_at: Some(started_at),
                },
            )
        });
    match result {
        Ok(c) => {
            report(&c);
            eprintln!(
                "jobmill: journal {} (run {}): `jobmill results {}` and `status` read it offline",
                c.summary.path.display(),
                c.summary.run_id,
                c.summary.run_id
            );
        }
        Err(e) => eprintln!(
            "jobmill: the results were not collected into a journal (they stay in {}): {e:#}",
            queue.url()
        ),
    }
}
