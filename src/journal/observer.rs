//! The journal as an observer of a run: turns the engine's events (the
//! model's [`crate::events`]) into journal records through [`Journal`]'s
//! `record_*` methods. The journal knows nothing of the engine or the
//! executors: only the model.

use crate::events::{
    AttemptReport, AttemptStart, Observer, ObserverError, Resolution, RunSummary, Runner,
};
use crate::job::{FailReason, JobState, NewJob};
use crate::outcome::AttemptEnd;

use super::completions::{self, Completion, RanBy};
use super::writer::{now, unix, Journal};
use super::JournalError;

fn observer_error(e: JournalError) -> ObserverError {
    ObserverError::new(e)
}

/// What the journal records of who ran an attempt.
fn ran_by(runner: &Runner) -> RanBy {
    RanBy {
        worker: runner.worker.map(|w| w.0),
        host: runner.host.as_deref().map(str::to_owned),
    }
}

/// (attempt outcome, job state, reason) of what an attempt meant.
fn outcome_fields(
    resolution: &Resolution,
    end: &AttemptEnd,
) -> (&'static str, &'static str, Option<String>) {
    match resolution {
        Resolution::Done => ("done", "done", None),
        Resolution::Requeued { reason } => ("requeued", "queued", Some(reason.to_string())),
        Resolution::Final(JobState::Failed { reason, .. }) => {
            ("failed", "failed", Some(reason.to_string()))
        }
        Resolution::Final(JobState::Dead { reason, .. }) => {
            ("dead", "dead", Some(reason.to_string()))
        }
        Resolution::Final(other) => ("failed", "failed", Some(format!("{other:?}"))),
        Resolution::Interrupted if *end == AttemptEnd::Stopped => (
            "interrupted",
            "queued",
            Some("stopped by jobmill (interrupted)".to_string()),
        ),
        Resolution::Interrupted => (
            "interrupted",
            "queued",
            Some("the lease was taken over by another worker".to_string()),
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

    fn attempt_started(&self, start: &AttemptStart) -> Result<(), ObserverError> {
        self.record_start(start.seq, start.slot, ran_by(&start.runner), start.at)
            .map_err(observer_error)
    }

    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        let o = report.outcome;
        let (outcome, job_state, mut reason) = outcome_fields(report.resolution, &o.end);
        if let AttemptEnd::Failed(FailReason::Spawn { error }) = &o.end {
            if reason.is_none() {
                reason = Some(error.clone());
            }
        }
        let cap = self.output_cap();
        let mut output: [Option<completions::Output>; 2] = [None, None];
        for (i, stream) in [&mut *report.stdout, &mut *report.stderr]
            .into_iter()
            .enumerate()
        {
            let total = stream.len();
            if total == 0 {
                continue;
            }
            let (data, truncated) = match stream.head(cap) {
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
            started_at: started_at.unwrap_or_else(|| unix(o.started)),
            ended_at: now(),
            exit_code: o.exit_code,
            signal: o.end.signal(),
            timed_out: o.end == AttemptEnd::Failed(FailReason::Timeout),
            outcome,
            job_state,
            reason,
            duration: o.duration.map(|d| d.as_secs_f64()),
            max_rss_kib: o.max_rss_kib,
            cause: Some(o.end.cause()),
            ran_by: ran_by(&report.runner),
            output,
        };
        self.record_end(completion).map_err(observer_error)
    }

    fn run_finished(&self, summary: &RunSummary) -> Result<(), ObserverError> {
        let reason = match &summary.error {
            Some(e) => format!("error: {e}"),
            None => summary.ending().to_string(),
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
    use crate::events::JobOutput;
    use crate::journal::writer::{create, RunRecord, WriterConfig, DEFAULT_SYNC_INTERVAL};
    use crate::outcome::Outcome;

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

    /// Output held in memory, as observers read it.
    struct Bytes(Vec<u8>);

    impl JobOutput for Bytes {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn head(&mut self, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
            let n = self.0.len().min(limit);
            Ok((self.0[..n].to_vec(), self.0.len() > limit))
        }
    }

    /// A process attempt that exited with `code` after writing `stdout`.
    struct Exited<'a>(&'a [u8], i32);

    fn attempt(stdout: &[u8], code: i32) -> Exited<'_> {
        Exited(stdout, code)
    }

    fn finish(j: &Journal, seq: u64, slot: usize, a: &mut Exited<'_>, resolution: Resolution) {
        let end = if a.1 == 0 {
            AttemptEnd::Succeeded
        } else {
            AttemptEnd::Failed(crate::job::FailReason::Exit { code: a.1 })
        };
        let outcome = Outcome {
            end,
            started: SystemTime::now(),
            duration: Some(Duration::from_millis(5)),
            max_rss_kib: Some(1234),
            exit_code: Some(a.1),
        };
        let mut stdout = Bytes(a.0.to_vec());
        let mut stderr = Bytes(Vec::new());
        let mut report = AttemptReport {
            seq,
            attempt: 1,
            slot,
            runner: Runner::default(),
            outcome: &outcome,
            resolution: &resolution,
            stdout: &mut stdout,
            stderr: &mut stderr,
        };
        j.attempt_finished(&mut report).unwrap();
    }

    fn started(j: &Journal, seq: u64, attempt: u32, slot: usize) {
        j.attempt_started(&AttemptStart {
            seq,
            attempt,
            slot,
            runner: Runner::default(),
            at: SystemTime::now(),
        })
        .unwrap();
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
        started(&j, 1, 1, 2);
        finish(
            &j,
            1,
            2,
            &mut attempt(b"hello world", 3),
            Resolution::Requeued {
                reason: crate::job::FailReason::Exit { code: 3 },
            },
        );
        started(&j, 1, 2, 2);
        finish(&j, 1, 2, &mut attempt(b"ok", 0), Resolution::Done);
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
        started(&j, 1, 1, 1);
        finish(&j, 1, 1, &mut attempt(b"0123456789", 0), Resolution::Done);
        j.close("complete").unwrap();
        let out: (Vec<u8>, i64, bool) = read(&path)
            .query_row("SELECT data, total_bytes, truncated FROM output", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(out, (b"01234".to_vec(), 10, true));
    }
}
