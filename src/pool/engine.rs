//! A map's engine: [`engine::run`](crate::engine::run) with the pool's
//! [`MemoryQueue`], the long-lived-worker executor ([`Workers`], results
//! kept byte for byte) and one observer, the `Router`, that turns each
//! item's final outcome into its result and forwards worker output. The
//! run is stopped from outside through its [`StopHandle`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::engine::stop::StopHandle;
use crate::engine::{self, Executor, Options, ResultEnd, Workers, WorkersOptions};
use crate::events::{self, AttemptReport, Notice, Observer, ObserverError, Resolution};
use crate::exec::{SpillBudget, Supervisor};
use crate::job::{FailReason, JobState, RetryPolicy};
use crate::queue::memory::MemoryQueue;
use crate::queue::Queue;

use super::{task, Pool, PoolError};

/// What the engine reports to an iterator.
pub(super) enum Event {
    /// An item's final outcome.
    Outcome(u64, Result<Bytes, PoolError>),
    /// The engine's run returned; `Some` if it stopped abnormally.
    Ended(Option<String>),
}

/// The [`Observer`] of a pool's run: final outcomes go to the iterator,
/// worker output to the program's stdout and stderr.
struct Router {
    tx: Sender<Event>,
    timeout: Option<Duration>,
    gave_up: Arc<AtomicBool>,
}

impl Observer for Router {
    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        let index = report.seq;
        let result = match report.resolution {
            Resolution::Done => {
                let len = usize::try_from(report.stdout.len()).unwrap_or(usize::MAX);
                let (data, _) = report.stdout.head(len).map_err(ObserverError::new)?;
                Ok(Bytes::from(data))
            }
            Resolution::Final(JobState::Failed { reason, .. } | JobState::Dead { reason, .. }) => {
                Err(item_error(
                    index,
                    report.attempt,
                    reason.clone(),
                    self.timeout,
                ))
            }
            // Not the item's end: it runs again (or the map was stopped).
            Resolution::Final(_) | Resolution::Requeued { .. } | Resolution::Interrupted => {
                return Ok(())
            }
        };
        let _ = self.tx.send(Event::Outcome(index, result));
        Ok(())
    }

    fn notice(&self, notice: &Notice) {
        // Deaths reach the caller as item errors; nothing else is printed.
        match notice {
            Notice::WorkerOutput { stderr, line, .. } => {
                let write = |w: &mut dyn Write| {
                    let _ = w.write_all(line);
                    let _ = w.write_all(b"\n");
                };
                if *stderr {
                    write(&mut std::io::stderr().lock());
                } else {
                    write(&mut std::io::stdout().lock());
                }
            }
            // A slot that gave up makes the engine unfit for another map.
            Notice::WorkerGaveUp { .. } => self.gave_up.store(true, Ordering::SeqCst),
            _ => {}
        }
    }
}

fn item_error(
    index: u64,
    attempts: u32,
    reason: FailReason,
    timeout: Option<Duration>,
) -> PoolError {
    match reason {
        FailReason::Reported { message } => {
            if let Some(m) = message.strip_prefix(task::PANIC_TAG) {
                PoolError::Panicked {
                    index,
                    attempts,
                    message: m.to_string(),
                }
            } else if let Some(m) = message.strip_prefix(task::CODEC_TAG) {
                PoolError::Codec {
                    index,
                    detail: m.to_string(),
                }
            } else {
                // The coordinator's or the worker library's own verdicts:
                // an item or a result over the frame limit.
                PoolError::Codec {
                    index,
                    detail: message,
                }
            }
        }
        FailReason::Timeout => PoolError::Timeout {
            index,
            attempts,
            timeout: timeout.unwrap_or_default(),
        },
        other => PoolError::WorkerDied {
            index,
            attempts,
            detail: match other {
                FailReason::WorkerLost { detail } => detail,
                other => other.to_string(),
            },
        },
    }
}

/// A run of the engine and its workers. One iterator uses it at a time;
/// the pool keeps the last one whose map finished cleanly, for the next
/// map. Dropping it kills the workers and waits until they are reaped.
pub(super) struct Engine {
    pub(super) queue: Arc<MemoryQueue>,
    stop: StopHandle,
    pub(super) rx: Receiver<Event>,
    run: Option<JoinHandle<()>>,
    /// A worker slot gave up: fewer workers than asked are left.
    gave_up: Arc<AtomicBool>,
}

/// The memory that results in transit may take before they spill to a
/// temporary file (each is held only from its arrival to its hand-over).
const RESULT_BUDGET: usize = 1 << 30;

impl Engine {
    pub(super) fn start(pool: &Pool) -> Result<Engine, PoolError> {
        let setup = |what: &str, e: std::io::Error| PoolError::Setup {
            detail: format!("cannot start the pool's {what}: {e}"),
        };
        let (tx, rx) = mpsc::channel();
        let gave_up = Arc::new(AtomicBool::new(false));
        let router: Arc<dyn Observer> = Arc::new(Router {
            tx: tx.clone(),
            timeout: pool.builder.timeout,
            gave_up: Arc::clone(&gave_up),
        });
        // Room for every item an iterator may have read and not yielded,
        // so that `put` never blocks.
        let queue = Arc::new(MemoryQueue::new(
            pool.buffer + 1,
            RetryPolicy::with_retries(pool.builder.retries).max_lost(pool.builder.max_lost),
        ));
        let budget = SpillBudget::new(RESULT_BUDGET);
        // No guardian: the workers die with the program by
        // `PR_SET_PDEATHSIG` (set in `init`).
        let supervisor =
            Arc::new(Supervisor::new(None, budget.clone()).map_err(|e| setup("supervisor", e))?);
        let executor: Arc<dyn Executor> = Arc::new(Workers::new(
            supervisor,
            WorkersOptions::from_config(pool.config.clone(), ResultEnd::Raw),
        ));
        let stop = StopHandle::new();
        let opts = Options {
            budget,
            print_output: false,
            stop: Some(stop.clone()),
            ..Options::default()
        };
        let q: Arc<dyn Queue> = queue.clone();
        let run = std::thread::Builder::new()
            .name("jobmill-pool".into())
            .spawn(move || {
                let detail = match engine::run(q, None, executor, vec![router], opts) {
                    Ok(summary) => summary.error.map(|e| events::error_chain(&*e)),
                    Err(e) => Some(format!("cannot start the pool's engine: {e}")),
                };
                let _ = tx.send(Event::Ended(detail));
            })
            .map_err(|e| setup("engine thread", e))?;
        Ok(Engine {
            queue,
            stop,
            rx,
            run: Some(run),
            gave_up,
        })
    }

    /// Whether another map can use it: every slot still runs, and no
    /// event is left over.
    pub(super) fn reusable(&self) -> bool {
        !self.gave_up.load(Ordering::SeqCst)
            && self.run.as_ref().is_some_and(|h| !h.is_finished())
            && matches!(self.rx.try_recv(), Err(TryRecvError::Empty))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Kill the workers (items in flight are abandoned) and wait until
        // every one is reaped.
        self.stop.kill();
        let _ = self.queue.close();
        if let Some(h) = self.run.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_failures_map_to_item_errors() {
        let reported = |m: &str| FailReason::Reported { message: m.into() };
        assert_eq!(
            item_error(4, 2, reported("pool-panic:boom (at a.rs:1:2)"), None),
            PoolError::Panicked {
                index: 4,
                attempts: 2,
                message: "boom (at a.rs:1:2)".into()
            }
        );
        assert_eq!(
            item_error(4, 1, reported("pool-codec:bad item"), None),
            PoolError::Codec {
                index: 4,
                detail: "bad item".into()
            }
        );
        assert!(matches!(
            item_error(4, 1, reported("payload of 9 bytes exceeds the worker frame limit"), None),
            PoolError::Codec { index: 4, detail } if detail.contains("frame limit")
        ));
        let t = Duration::from_secs(3);
        assert_eq!(
            item_error(4, 1, FailReason::Timeout, Some(t)),
            PoolError::Timeout {
                index: 4,
                attempts: 1,
                timeout: t
            }
        );
        let lost = FailReason::WorkerLost {
            detail: "worker 2 was killed by SIGKILL".into(),
        };
        assert_eq!(
            item_error(4, 3, lost, None),
            PoolError::WorkerDied {
                index: 4,
                attempts: 3,
                detail: "worker 2 was killed by SIGKILL".into()
            }
        );
    }
}
