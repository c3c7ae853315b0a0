//! The journal as an observer of a run: turns the dispatcher's events
//! into journal records. The only part of the journal that knows the
//! dispatcher (`crate::run`) and the executor (`crate::exec`).

use std::time::SystemTime;

use crate::exec::End;
use crate::job::{JobState, NewJob};
use crate::run::{AttemptOutcome, AttemptReport, Observer, ObserverError, RunSummary};

use super::commit::Event;
use super::completions::{self, Completion};
use super::writer::{now, unix, Journal};

fn end_fields(end: &End) -> (Option<i32>, Option<i32>) {
    match end {
        End::Exited(c) => (Some(*c), None),
        End::Signaled(s) => (None, Some(*s)),
        End::SpawnFailed(_) => (None, None),
    }
}

/// (attempt outcome, job state, reason) of an outcome.
fn outcome_fields(outcome: &AttemptOutcome) -> (&'static str, &'static str, Option<String>) {
    match outcome {
        AttemptOutcome::Done => ("done", "done", None),
        AttemptOutcome::Requeued { reason } => ("requeued", "queued", Some(reason.to_string())),
        AttemptOutcome::Final(JobState::Failed { reason, .. }) => {
            ("failed", "failed", Some(reason.to_string()))
        }
        AttemptOutcome::Final(JobState::Dead { reason, .. }) => {
            ("dead", "dead", Some(reason.to_string()))
        }
        AttemptOutcome::Final(other) => ("failed", "failed", Some(format!("{other:?}"))),
        AttemptOutcome::Interrupted => (
            "interrupted",
            "queued",
            Some("stopped by jobmill (interrupted)".to_string()),
        ),
    }
}

impl Observer for Journal {
    fn job_read(&self, job: &NewJob) -> Result<(), ObserverError> {
        if job.seq <= self.known_jobs {
            // Recorded by an earlier session.
            return Ok(());
        }
        let mut st = self.shared.lock();
        let ticket = self.push_locked(
            &mut st,
            Event::Job {
                seq: job.seq,
                input: job.payload.clone(),
            },
        )?;
        st.job_tickets.push_back((job.seq, ticket));
        Ok(())
    }

    fn input_complete(&self, _total: u64) -> Result<(), ObserverError> {
        self.push(Event::InputComplete).map(drop)
    }

    fn attempt_started(
        &self,
        seq: u64,
        _attempt: u32,
        slot: usize,
        at: SystemTime,
    ) -> Result<(), ObserverError> {
        // The durability gate: every attempt end recorded so far survives
        // jobmill's death before anything new starts.
        self.write_log()?;
        let mut st = self.shared.lock();
        // The job's row must be in the file before the job runs (its end
        // refers to it). It usually is: rows are committed as they are
        // read, long before their turn.
        let pending = st
            .job_tickets
            .binary_search_by_key(&seq, |&(s, _)| s)
            .ok()
            .map(|i| st.job_tickets[i].1);
        if let Some(ticket) = pending {
            st = self.shared.wait_committed(st, ticket)?;
        }
        let at = unix(at);
        st.started.insert(seq, at);
        self.push_locked(&mut st, Event::Started { seq, slot, at })
            .map(drop)
    }

    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        let a = &mut *report.attempt_result;
        let (exit_code, signal) = end_fields(&a.end);
        let (outcome, job_state, mut reason) = outcome_fields(report.outcome);
        if let End::SpawnFailed(e) = &a.end {
            if reason.is_none() {
                reason = Some(e.clone());
            }
        }
        let cap = self.config.output_cap;
        let mut output: [Option<completions::Output>; 2] = [None, None];
        for (i, cap_of) in [&mut a.stdout, &mut a.stderr].into_iter().enumerate() {
            let total = cap_of.len();
            if total == 0 {
                continue;
            }
            let (data, truncated) = match cap_of.head(cap) {
                Ok(v) => v,
                Err(e) => (format!("(output lost: {e})").into_bytes(), true),
            };
            output[i] = Some(completions::Output {
                data,
                total,
                truncated,
            });
        }
        let started_at = self.shared.lock().started.remove(&report.seq);
        let completion = Completion {
            session: self.session,
            seq: report.seq,
            slot: report.slot as u64,
            started_at: started_at.unwrap_or_else(|| unix(a.started)),
            ended_at: now(),
            exit_code,
            signal,
            timed_out: a.timed_out,
            outcome,
            job_state,
            reason,
            duration: a.duration.as_secs_f64(),
            max_rss_kib: a.max_rss_kib,
            output,
        };
        // Buffered: written to the completions log, in one write(2) with
        // any others, before the next attempt starts anywhere.
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        let Some(log) = log.as_mut() else {
            return Err(ObserverError(format!(
                "journal {}: written after it was closed",
                self.path.display()
            )));
        };
        let mut st = self.shared.lock();
        let ticket = self.push_locked(&mut st, Event::Finished(Box::new(completion)))?;
        if let Some(Event::Finished(c)) = st.events.last() {
            log.buffer(c);
        }
        log.buffered_ticket = ticket;
        Ok(())
    }

    fn run_finished(&self, summary: &RunSummary) -> Result<(), ObserverError> {
        let reason = if let Some(e) = &summary.error {
            format!("error: {e}")
        } else if summary.halted {
            "halted".to_string()
        } else if summary.interrupted {
            "interrupted".to_string()
        } else if summary.input_complete {
            "complete".to_string()
        } else {
            "stopped".to_string()
        };
        self.close(&reason)
    }
}
