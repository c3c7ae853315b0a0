//! A map's engine: the coordinator thread driving the pool's workers
//! ([`crate::persistent`] over a [`MemoryQueue`]), and the `Router` that
//! turns its reports into item results and forwards worker output.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::job::{FailReason, RetryPolicy, WorkerId};
use crate::persistent::{self, Observer, Outcome, OutcomeKind, Stop, Stream};
use crate::queue::memory::MemoryQueue;
use crate::queue::{Completion, Disposition, Queue};

use super::{task, Pool, PoolError};

/// What the coordinator reports to an iterator.
pub(super) enum Event {
    /// An item's final outcome.
    Outcome(u64, Result<Bytes, PoolError>),
    /// The coordinator returned; `Some` if it stopped abnormally.
    Ended(Option<String>),
}

/// The [`Observer`] of a pool's coordinator: final outcomes go to the
/// iterator, worker output to the program's stdout and stderr.
struct Router {
    tx: Sender<Event>,
    timeout: Option<Duration>,
    gave_up: Arc<AtomicBool>,
}

impl Observer for Router {
    fn outcome(&self, o: Outcome) {
        let index = o.job.seq;
        let attempts = o.job.attempts;
        let result = match o.kind {
            OutcomeKind::Done {
                result,
                completion: Completion::Recorded,
            } => Ok(result),
            OutcomeKind::Done { .. } => return,
            OutcomeKind::Failed {
                reason,
                disposition: Disposition::Final(_),
            } => Err(item_error(index, attempts, reason, self.timeout)),
            OutcomeKind::Failed { .. } => return,
        };
        let _ = self.tx.send(Event::Outcome(index, result));
    }

    fn worker(&self, event: persistent::WorkerEvent) {
        // Deaths reach the caller as item errors; nothing is printed. A
        // slot that gave up makes the engine unfit for another map.
        if let persistent::WorkerEvent::GaveUp { .. } = event {
            self.gave_up.store(true, Ordering::SeqCst);
        }
    }

    fn output(&self, _slot: usize, _worker: WorkerId, stream: Stream, line: &[u8]) {
        let write = |w: &mut dyn Write| {
            let _ = w.write_all(line);
            let _ = w.write_all(b"\n");
        };
        match stream {
            Stream::Stdout => write(&mut std::io::stdout().lock()),
            Stream::Stderr => write(&mut std::io::stderr().lock()),
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

/// A coordinator and its workers. One iterator uses it at a time; the pool
/// keeps the last one whose map finished cleanly, for the next map.
/// Dropping it kills the workers and waits until they are reaped.
pub(super) struct Engine {
    pub(super) queue: Arc<MemoryQueue>,
    stop: Arc<Stop>,
    pub(super) rx: Receiver<Event>,
    run: Option<JoinHandle<()>>,
    /// A worker slot gave up: fewer workers than asked are left.
    gave_up: Arc<AtomicBool>,
}

impl Engine {
    pub(super) fn start(pool: &Pool) -> Result<Engine, PoolError> {
        let (tx, rx) = mpsc::channel();
        let gave_up = Arc::new(AtomicBool::new(false));
        let router = Router {
            tx,
            timeout: pool.builder.timeout,
            gave_up: Arc::clone(&gave_up),
        };
        // Room for every item an iterator may have read and not yielded,
        // so that `put` never blocks.
        let queue = Arc::new(MemoryQueue::new(
            pool.buffer + 1,
            RetryPolicy::with_retries(pool.builder.retries).max_lost(pool.builder.max_lost),
        ));
        let stop = Arc::new(Stop::new());
        let config = pool.config.clone();
        let (q, s) = (Arc::clone(&queue), Arc::clone(&stop));
        let run = std::thread::Builder::new()
            .name("jobmill-pool".into())
            .spawn(move || {
                let result = persistent::run(&*q, &config, &router, &*s);
                let _ = router
                    .tx
                    .send(Event::Ended(result.err().map(|e| e.to_string())));
            })
            .map_err(|e| PoolError::Setup {
                detail: format!("cannot start the pool's coordinator thread: {e}"),
            })?;
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
