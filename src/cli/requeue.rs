//! `jobmill requeue --queue URL [--dead] [--failed] [JOB...]`: puts the
//! dead (or failed) jobs of a shared queue back, each with a fresh retry
//! allowance.

use std::collections::BTreeSet;

use anyhow::bail;
use clap::Args;

use jobmill::queue::redis::Requeue;

use super::queue::open_queue;

/// Options of `jobmill requeue`.
#[derive(Debug, Args)]
pub struct RequeueArgs {
    /// The queue: redis://[:password@]host:port/NAME (rediss:// for TLS).
    #[arg(long, value_name = "URL")]
    pub queue: String,

    /// Put back dead jobs: killed, timed out, could not start, or lost
    /// more than --max-lost times (the default when neither --dead nor
    /// --failed is given).
    #[arg(long)]
    pub dead: bool,

    /// Put back failed jobs: their last attempt exited non-zero (or its
    /// worker reported a failure) with no retry left.
    #[arg(long)]
    pub failed: bool,

    /// Only these jobs, by the number `jobmill results --queue` shows
    /// (the queue's job id). Without any, every selected job.
    #[arg(value_name = "JOB")]
    pub jobs: Vec<u64>,
}

/// `jobmill requeue`. Exit status 0 when every selected job went back (or
/// none was selected), 1 when some could not, 255 on an error (a job
/// number that is not dead/failed as selected: nothing is requeued).
pub fn requeue(a: RequeueArgs) -> anyhow::Result<u8> {
    let mut states = Vec::new();
    if a.dead || !a.failed {
        states.push("dead");
    }
    if a.failed {
        states.push("failed");
    }
    let wanted: BTreeSet<u64> = a.jobs.iter().copied().collect();
    let queue = open_queue(&a.queue, false)?;
    let url = queue.url().to_string();
    if !wanted.is_empty() {
        // Check every number first: a typo requeues nothing.
        let records = queue.dead_letters()?;
        let mut problems = Vec::new();
        for id in &wanted {
            match records.iter().find(|r| r.job == *id) {
                Some(r) if states.contains(&r.state.as_str()) => {}
                Some(r) => problems.push(format!(
                    "job {id} is {}, not {} (add --{})",
                    r.state,
                    states.join(" or "),
                    r.state
                )),
                None => problems.push(format!(
                    "job {id} is not failed or dead (it is done, queued or running, or there \
                     is no such job)"
                )),
            }
        }
        if !problems.is_empty() {
            bail!("nothing requeued: {}", problems.join("; "));
        }
    }
    let out = queue.requeue(|r| {
        states.contains(&r.state.as_str()) && (wanted.is_empty() || wanted.contains(&r.job))
    })?;
    let mut put = 0u64;
    let mut refused = 0u64;
    for (rec, what) in &out {
        match what {
            Requeue::Requeued => put += 1,
            Requeue::Changed => {
                refused += 1;
                eprintln!(
                    "jobmill: job {} changed meanwhile (requeued by another client?): skipped",
                    rec.job
                );
            }
            Requeue::InputNotKept => {
                refused += 1;
                eprintln!(
                    "jobmill: job {} cannot be requeued: the queue did not keep its input (a \
                     record from an older jobmill)",
                    rec.job
                );
            }
        }
    }
    if out.is_empty() {
        eprintln!(
            "jobmill: nothing to requeue: queue {url} has no {} job",
            states.join(" or ")
        );
        return Ok(0);
    }
    eprintln!(
        "jobmill: requeued {put} job{} on {url}, each with a fresh retry allowance (attempts \
         count from 1 again); workers still on the queue run them, else start one with \
         `jobmill worker --queue {url} -- COMMAND`",
        if put == 1 { "" } else { "s" },
    );
    Ok(u8::from(refused > 0))
}
