//! The SQL rows of the journal's events: what one event writes.

use std::collections::HashSet;

use rusqlite::params;
use sha2::{Digest, Sha256};

use super::commit::{Event, Plan};
use super::completions::{Completion, RanBy};
use super::writer::now;

/// Writes event `e` as `plan` says. `retried`: [`Writer::retried`].
pub(super) fn apply(
    tx: &rusqlite::Transaction<'_>,
    e: &Event,
    plan: Plan,
    session: i64,
    known_jobs: u64,
    whole_input: bool,
    retried: &mut HashSet<u64>,
) -> rusqlite::Result<()> {
    match (e, plan) {
        (_, Plan::Skip) => {}
        // Only jobs new to the journal are queued ([`Journal::job_read`]).
        (
            Event::Job {
                seq,
                input,
                read_at,
            },
            _,
        ) => {
            let hash = Sha256::digest(input);
            tx.prepare_cached(
                "INSERT INTO job (seq, input, hash, read_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![*seq as i64, &input[..], &hash[..], read_at])?;
        }
        (Event::InputComplete, _) => {
            if whole_input {
                tx.prepare_cached(
                    "UPDATE run SET input_complete = 1,
                            total_jobs = (SELECT COUNT(*) FROM job) WHERE id = 1",
                )?
                .execute([])?;
            }
        }
        (
            Event::Started {
                seq,
                slot,
                at,
                ran_by,
            },
            _,
        ) => {
            record_start(tx, *seq, session, *slot, *at, ran_by)?;
        }
        (Event::Finished(c), _) => {
            let start = if plan == Plan::Insert {
                StartRow::Missing
            } else {
                StartRow::Recorded
            };
            // Output rows to replace: only an earlier session's, or an
            // earlier attempt's of this session.
            let replace = c.seq <= known_jobs || retried.contains(&c.seq);
            record_end(tx, c, start, replace)?;
            if c.final_at().is_some() {
                retried.remove(&c.seq);
            } else {
                retried.insert(c.seq);
            }
        }
        (Event::RunFinished { reason }, _) => {
            let at = now();
            tx.prepare_cached("UPDATE session SET ended_at = ?2, end_reason = ?3 WHERE id = ?1")?
                .execute(params![session, at, reason])?;
            tx.prepare_cached("UPDATE run SET ended_at = ?1, end_reason = ?2 WHERE id = 1")?
                .execute(params![at, reason])?;
        }
    }
    Ok(())
}

/// Records that an attempt of job `seq` started: its `attempt` row (the
/// job's next attempt number, who runs it, no end yet) and the job
/// `running`.
pub(crate) fn record_start(
    tx: &rusqlite::Transaction<'_>,
    seq: u64,
    session: i64,
    slot: usize,
    at: f64,
    ran_by: &RanBy,
) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE job SET state = 'running', attempts = attempts + 1 WHERE seq = ?1")?
        .execute(params![seq as i64])?;
    tx.prepare_cached(
        "INSERT INTO attempt (seq, attempt, session, slot, started_at, worker, host)
         VALUES (?1, (SELECT attempts FROM job WHERE seq = ?1), ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        seq as i64,
        session,
        slot as i64,
        at,
        ran_by.worker.map(|w| w as i64),
        ran_by.host
    ])?;
    Ok(())
}

/// Whether the journal already has the row of an attempt's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartRow {
    /// Committed: the end updates it (matched by job, session and start
    /// time).
    Recorded,
    /// Not written (its start came in the same batch, or never reached the
    /// journal): the end inserts the whole row and counts the attempt.
    Missing,
}

/// Records the end of attempt `c`: its `attempt` row, the job's state
/// after it, and its kept output (first deleting the job's earlier output
/// rows if `replace`: they may exist).
pub(crate) fn record_end(
    tx: &rusqlite::Transaction<'_>,
    c: &Completion,
    start: StartRow,
    replace: bool,
) -> rusqlite::Result<()> {
    let seq = c.seq as i64;
    let (attempt_sql, new_attempts) = match start {
        StartRow::Missing => (
            "INSERT INTO attempt (seq, attempt, session, slot, started_at,
                    ended_at, exit_code, signal, timed_out, outcome, reason,
                    duration, max_rss_kb, cause, worker, host)
             VALUES (?1, (SELECT attempts FROM job WHERE seq = ?1) + 1, ?2, ?3,
                     ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            1,
        ),
        StartRow::Recorded => (
            "UPDATE attempt SET slot = ?3, ended_at = ?5, exit_code = ?6, signal = ?7,
                    timed_out = ?8, outcome = ?9, reason = ?10, duration = ?11,
                    max_rss_kb = ?12, cause = ?13, worker = ?14, host = ?15
             WHERE seq = ?1 AND session = ?2 AND started_at = ?4",
            0,
        ),
    };
    tx.prepare_cached(attempt_sql)?.execute(params![
        seq,
        c.session,
        c.slot as i64,
        c.started_at,
        c.ended_at,
        c.exit_code,
        c.signal,
        c.timed_out,
        c.outcome,
        c.reason,
        c.duration,
        c.max_rss_kib.map(|k| k as i64),
        c.cause,
        c.ran_by.worker.map(|w| w as i64),
        c.ran_by.host,
    ])?;
    if c.cause.is_none() {
        // A record of schema version 1 (recovered from an older jobmill's
        // completions log): its cause is worked out as the migration does.
        tx.prepare_cached(&format!(
            "UPDATE attempt SET cause = {} WHERE seq = ?1 AND session = ?2 AND started_at = ?3",
            super::schema::cause_from_v1("outcome", "reason", "timed_out", "signal", "exit_code")
        ))?
        .execute(params![seq, c.session, c.started_at])?;
    }
    tx.prepare_cached(
        "UPDATE job SET attempts = attempts + ?7, state = ?2, exit_code = ?3,
                signal = ?4, reason = ?5, finished_at = ?6 WHERE seq = ?1",
    )?
    .execute(params![
        seq,
        c.job_state,
        c.exit_code,
        c.signal,
        c.reason,
        c.final_at(),
        new_attempts,
    ])?;
    write_output(tx, c, replace)
}

/// Replaces job `c.seq`'s kept output with this attempt's.
pub(super) fn write_output(
    tx: &rusqlite::Transaction<'_>,
    c: &Completion,
    replace: bool,
) -> rusqlite::Result<()> {
    let seq = c.seq as i64;
    if replace {
        tx.prepare_cached("DELETE FROM output WHERE seq = ?1")?
            .execute(params![seq])?;
    }
    for (i, o) in c.output.iter().enumerate() {
        if let Some(o) = o {
            tx.prepare_cached(
                "INSERT INTO output (seq, stream, data, total_bytes, truncated)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                seq,
                i as i64 + 1,
                o.data,
                o.total as i64,
                o.truncated
            ])?;
        }
    }
    Ok(())
}
