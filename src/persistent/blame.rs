//! The end of a worker's life: who is blamed when it dies. The job it was
//! running fails with its attempt counted; the others it held go back
//! uncounted.

use std::collections::VecDeque;

use crate::job::{FailReason, WorkerId};

use super::link::{InFlight, Link};
use super::proc::{describe_peak, describe_status, Ended, Life, Proc};
use super::{Ctx, Outcome, OutcomeKind, WorkerEvent, EXIT_GRACE};

impl Ctx<'_> {
    /// Ends a worker's life: reaps it, resolves its in-flight jobs, reports.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bury(
        &self,
        slot: usize,
        worker: WorkerId,
        name: &str,
        proc: &mut Proc,
        link: Option<&Link>,
        ended: Ended,
        completed: u64,
    ) -> Life {
        if !matches!(
            ended,
            Ended::Closed | Ended::Eof | Ended::EarlyExit | Ended::Refused(_)
        ) {
            proc.kill_group();
        }
        self.observer.reaping(slot, worker, proc.pid);
        let (status, max_rss_kib) = proc.reap(EXIT_GRACE);
        let (inflight, taken, parked) = match link {
            Some(link) => {
                let mut f = link.flight();
                (
                    std::mem::take(&mut f.inflight),
                    f.taken,
                    std::mem::take(&mut f.parked),
                )
            }
            None => (VecDeque::new(), None, VecDeque::new()),
        };
        // Jobs that waited for room in the arena were never sent.
        for lease in &parked {
            let _ = self.queue.release(lease);
        }
        // The arena goes with the worker (a replacement gets a fresh one):
        // whatever its unanswered jobs held there is reclaimed.
        let reclaimed: u64 = inflight
            .iter()
            .filter(|h| h.region.is_some())
            .map(|h| h.lease.job.payload.len() as u64)
            .sum();
        if reclaimed > 0 {
            self.summary_mut().arena_reclaimed += reclaimed;
        }
        // Which in-flight jobs did the worker start? If it said LEAVING, the
        // first `taken`; if it keeps the state page, the one named there;
        // otherwise the oldest, since workers answer in order.
        let page_running = proc.running();
        let started = |i: usize, held: &InFlight| match (taken, page_running) {
            (Some(t), _) => held.index < t,
            (None, Some(id)) => held.lease.job.id.0 == id,
            (None, None) => i == 0,
        };
        let running = inflight
            .iter()
            .enumerate()
            .find(|(i, h)| taken.is_none() && started(*i, h))
            .map(|(_, h)| h.lease.job.id);
        // A worker that died on its own may have died of memory: the job
        // it was running then fails with that cause.
        let memory_death = match ended {
            Ended::Eof => proc.memory_death(status),
            _ => None,
        };
        let what = match &ended {
            Ended::Closed => format!("{name} finished ({})", describe_status(status)),
            Ended::Eof => format!("{name} {}", describe_status(status)),
            Ended::EarlyExit => format!(
                "{name} {} before the protocol handshake (is it a jobmill worker?)",
                describe_status(status)
            ),
            Ended::NoHello(t) => format!(
                "{name} sent no HELLO within {t:?} (is it a jobmill worker?) and was killed"
            ),
            Ended::Protocol(d) => format!("{name} broke the protocol ({d}) and was killed"),
            Ended::Refused(d) => format!("{name} was refused: {d}"),
            Ended::Io(d) => format!("{name} channel failed ({d}); killed"),
            Ended::Timeout => format!(
                "{name} ran {} past the timeout of {:?} and was killed",
                running.map_or("a job".into(), |id| id.to_string()),
                self.config.timeout.unwrap_or_default()
            ),
            Ended::Silent => format!("{name} stopped heartbeating and was killed"),
            Ended::Killed => format!("{name} was stopped"),
            Ended::Queue(e) => format!("{name} stopped: {}", crate::events::error_chain(e)),
        };
        let held = inflight.len();
        // The worker's peak memory (wait4's rusage) names what a worker
        // killed for memory had grown to.
        let peak = if matches!(ended, Ended::Closed | Ended::Killed) {
            String::new()
        } else {
            describe_peak(max_rss_kib)
        };
        let detail = match (running, taken) {
            (_, Some(_)) | (None, _) => format!("{what}{peak}"),
            (Some(id), None) => format!("{what} while running {id}{peak}"),
        };
        // A worker that said LEAVING told how many jobs it took; without it,
        // the oldest in-flight job is taken to be the one it was running.
        let killed = matches!(ended, Ended::Killed);
        let mut lost_jobs = 0;
        for (i, held) in inflight.iter().enumerate() {
            let was_started = started(i, held);
            if !was_started || killed {
                let _ = self.queue.release(&held.lease);
                continue;
            }
            lost_jobs += 1;
            let is_running = Some(held.lease.job.id) == running;
            let reason = match (&ended, &memory_death) {
                (Ended::Timeout, _) if is_running => FailReason::Timeout,
                (_, Some(reason)) if is_running => reason.clone(),
                _ => FailReason::WorkerLost {
                    detail: detail.clone(),
                },
            };
            match self.queue.fail(&held.lease, reason.clone()) {
                Ok(disposition) => self.observer.outcome(Outcome {
                    slot,
                    worker,
                    job: held.lease.job.clone(),
                    kind: OutcomeKind::Failed {
                        reason,
                        disposition,
                    },
                }),
                Err(_) => {
                    // The backend failed; worker_lost below tries again.
                }
            }
        }
        // Anything still leased to this incarnation (nothing, normally).
        if let Ok(rest) = self.queue.worker_lost(worker, &detail) {
            lost_jobs += rest.len();
        }
        let clean_exit = status.success() && lost_jobs == 0;
        let life = match ended {
            Ended::Closed => Life::Done,
            Ended::Killed => Life::Done,
            Ended::Eof if clean_exit => Life::Left,
            _ => Life::Lost {
                progressed: completed > 0,
                detail: detail.clone(),
            },
        };
        let lost = matches!(life, Life::Lost { .. });
        if lost {
            self.summary_mut().lost += 1;
        }
        let detail = if held > 0 && lost {
            format!(
                "{detail}; {held} job(s) were in flight, {lost_jobs} counted as failed attempts"
            )
        } else {
            detail
        };
        self.observer.worker(WorkerEvent::Ended {
            slot,
            worker,
            lost,
            detail,
        });
        life
    }
}
