//! The journal as an observer of a run: turns the dispatcher's events
//! into journal records. The only part of the journal that knows the
//! dispatcher (`crate::run`) and the executor (`crate::exec`); everything
//! else goes through [`Journal`]'s `record_*` methods.

use crate::exec::End;
use crate::job::{JobState, NewJob};
use crate::run::{AttemptOutcome, AttemptReport, Observer, ObserverError, RunSummary};

use super::completions::{self, Completion};
use super::writer::{now, unix, Journal};
use super::JournalError;

fn observer_error(e: JournalError) -> ObserverError {
    ObserverError(e.to_string())
}

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
        self.record_job(job.seq, &job.payload)
            .map_err(observer_error)
    }

    fn input_complete(&self, _total: u64) -> Result<(), ObserverError> {
        self.record_input_complete().map_err(observer_error)
    }

    fn attempt_started(
        &self,
        seq: u64,
        _attempt: u32,
        slot: usize,
        at: std::time::SystemTime,
    ) -> Result<(), ObserverError> {
        self.record_start(seq, slot, at).map_err(observer_error)
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
        let cap = self.output_cap();
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
        let started_at = self.take_started(report.seq);
        let completion = Completion {
            session: self.session(),
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
        self.record_end(completion).map_err(observer_error)
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
        self.close(&reason).map_err(observer_error)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    use rusqlite::{Connection, OpenFlags};

    use super::*;
    use crate::exec::{Attempt, Capture, SpillBudget};
    use crate::journal::writer::{create, RunRecord, WriterConfig, DEFAULT_SYNC_INTERVAL};

    fn record() -> RunRecord {
        RunRecord {
            run_id: "20261130-000000-test".into(),
            command: vec!["echo".into(), "{}".into()],
            options: serde_json::json!({"jobs": 2}),
            cwd: PathBuf::from("/"),
        }
    }

    fn read(path: &Path) -> Connection {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    fn attempt(stdout: &[u8], end: End) -> Attempt {
        let budget = SpillBudget::new(1 << 20);
        let mut out = Capture::new(budget.clone());
        out.append(stdout);
        Attempt {
            started: SystemTime::now(),
            duration: Duration::from_millis(5),
            end,
            timed_out: false,
            terminated: false,
            max_rss_kib: 1234,
            stdout: out,
            stderr: Capture::new(budget),
        }
    }

    fn finish(j: &Journal, seq: u64, slot: usize, a: &mut Attempt, outcome: AttemptOutcome) {
        let mut report = AttemptReport {
            seq,
            attempt: 1,
            slot,
            attempt_result: a,
            outcome: &outcome,
        };
        j.attempt_finished(&mut report).unwrap();
    }

    #[test]
    fn attempts_outputs_and_the_end_are_recorded_with_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let config = WriterConfig {
            output_cap: 4,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        };
        let j = create(&path, &record(), config).unwrap();
        j.job_read(&NewJob::new(1, &b"\xff\x00x"[..])).unwrap();
        j.input_complete(1).unwrap();
        j.attempt_started(1, 1, 2, SystemTime::now()).unwrap();
        finish(
            &j,
            1,
            2,
            &mut attempt(b"hello world", End::Exited(3)),
            AttemptOutcome::Requeued {
                reason: crate::job::FailReason::Exit { code: 3 },
            },
        );
        j.attempt_started(1, 2, 2, SystemTime::now()).unwrap();
        finish(
            &j,
            1,
            2,
            &mut attempt(b"ok", End::Exited(0)),
            AttemptOutcome::Done,
        );
        j.run_finished(&RunSummary {
            read: 1,
            done: 1,
            input_complete: true,
            ..RunSummary::default()
        })
        .unwrap();
        drop(j);
        assert!(
            !PathBuf::from(format!("{}-wal", path.display())).exists(),
            "a finished journal is one file"
        );
        super::super::check(&path).unwrap();
        let c = read(&path);
        let (input, state, attempts, complete): (Vec<u8>, String, i64, bool) = c
            .query_row(
                "SELECT input, state, attempts, (SELECT input_complete FROM run) FROM job",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(input, b"\xff\x00x");
        assert_eq!((state.as_str(), attempts, complete), ("done", 2, true));
        let outcomes: Vec<(i64, String, Option<i64>, i64)> = c
            .prepare("SELECT attempt, outcome, exit_code, max_rss_kb FROM attempt ORDER BY attempt")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (1, "requeued".to_string(), Some(3), 1234),
                (2, "done".to_string(), Some(0), 1234)
            ]
        );
        // The output of the last attempt only; "ok" fits the cap of 4.
        let out: (Vec<u8>, i64, bool) = c
            .query_row(
                "SELECT data, total_bytes, truncated FROM output WHERE seq = 1 AND stream = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(out, (b"ok".to_vec(), 2, false));
        let reason: String = c
            .query_row("SELECT end_reason FROM run", [], |r| r.get(0))
            .unwrap();
        assert_eq!(reason, "complete");
    }

    #[test]
    fn output_past_the_cap_is_truncated_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let config = WriterConfig {
            output_cap: 5,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        };
        let j = create(&path, &record(), config).unwrap();
        j.job_read(&NewJob::new(1, "a")).unwrap();
        j.attempt_started(1, 1, 1, SystemTime::now()).unwrap();
        finish(
            &j,
            1,
            1,
            &mut attempt(b"0123456789", End::Exited(0)),
            AttemptOutcome::Done,
        );
        j.close("complete").unwrap();
        let out: (Vec<u8>, i64, bool) = read(&path)
            .query_row("SELECT data, total_bytes, truncated FROM output", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(out, (b"01234".to_vec(), 10, true));
    }
}
