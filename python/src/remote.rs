//! The core of `jobmill.Pool(queue="redis://host:port/NAME")`: the same
//! pickled tasks as a local pool's, put on a shared Redis queue
//! ([`RedisQueue`]) for `jobmill worker --queue URL --persistent -- python
//! -m jobmill.worker` on any host, with their results taken back from the
//! queue's result records ([`RedisQueue::take_results`]).
//!
//! Every task is signed and every result, and every failure message, is
//! checked before the Python side unpickles it ([`jobmill::sign`]); the
//! key comes from `JOBMILL_KEY_FILE` or `JOBMILL_KEY` and never goes to
//! the queue. Without a key the pool does not start.
//!
//! The interface is [`super::pool::PoolCore`]'s, so the Python `Pool` is
//! the same code over either core.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobmill::job::{NewJob, RetryPolicy};
use jobmill::queue::redis::{JobRecord, RedisConfig, RedisQueue};
use jobmill::queue::Queue;
use jobmill::sign::Key;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::pool::{DONE, LOST, OTHER, RAISED, REFUSED, TIMED_OUT};

/// Time between two looks for results when none came.
const POLL: Duration = Duration::from_millis(20);
/// Result records taken at most per look.
const TAKE: usize = 256;

/// A pool's shared queue (Python: `jobmill._jobmill.RemoteCore`).
#[pyclass(module = "jobmill._jobmill", frozen)]
pub struct RemoteCore {
    queue: RedisQueue,
    key: Key,
    first_seq: u64,
    /// Jobs put and not yet answered.
    outstanding: AtomicU64,
    closed: AtomicBool,
    terminated: AtomicBool,
}

fn err(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(format!("jobmill.Pool: {e}"))
}

impl RemoteCore {
    /// What the Python side gets for one result record: `(seq, code,
    /// data)`, every signature checked.
    fn answer(&self, r: &JobRecord) -> (u64, u8, Vec<u8>) {
        let seq = r.seq;
        match r.state.as_str() {
            "done" => match &r.output {
                Some(out) => match self.key.verify_result(seq, out) {
                    Ok(body) => {
                        let body = body.strip_suffix(b"\n").unwrap_or(body);
                        (seq, DONE, body.to_vec())
                    }
                    Err(refusal) => (
                        seq,
                        OTHER,
                        format!("its result was refused: {refusal}").into_bytes(),
                    ),
                },
                None => (
                    seq,
                    OTHER,
                    b"its worker kept no result (is that `jobmill worker` started with JOBMILL_KEY_FILE or JOBMILL_KEY?)"
                        .to_vec(),
                ),
            },
            _ => {
                let reason = r.reason.as_str();
                if let Some(message) = reason.strip_prefix("worker reported failure: ") {
                    match self.key.verify_message(seq, message) {
                        Ok(m) => (seq, RAISED, m.as_bytes().to_vec()),
                        Err(refusal) => (
                            seq,
                            OTHER,
                            format!("its failure message was refused: {refusal}").into_bytes(),
                        ),
                    }
                } else if let Some(why) = reason.strip_prefix("refused: ") {
                    (seq, REFUSED, why.as_bytes().to_vec())
                } else if let Some(detail) = reason.strip_prefix("worker lost: ") {
                    (seq, LOST, detail.as_bytes().to_vec())
                } else if reason == "timed out" {
                    (seq, TIMED_OUT, Vec::new())
                } else {
                    (seq, OTHER, reason.as_bytes().to_vec())
                }
            }
        }
    }
}

#[pymethods]
impl RemoteCore {
    /// Connects to the queue at `url` (creating it, with the retry policy
    /// given), as its producer. Needs the signing key.
    #[new]
    #[pyo3(signature = (url, retries = 0, max_lost = 3))]
    fn new(py: Python<'_>, url: String, retries: u32, max_lost: u32) -> PyResult<RemoteCore> {
        let key = Key::from_env()
            .map_err(|e| PyValueError::new_err(format!("jobmill.Pool(queue=...): {e}")))?
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "jobmill.Pool(queue=...): {} (a Redis password alone is not enough: \
                     anyone who can write to the queue could run code on every worker)",
                    jobmill::sign::KeyError::Missing
                ))
            })?;
        let config = RedisConfig {
            policy: RetryPolicy::with_retries(retries).max_lost(max_lost),
            create: true,
            ..RedisConfig::default()
        };
        let queue = py
            .allow_threads(|| RedisQueue::connect(&url, config))
            .map_err(|e| PyOSError::new_err(format!("jobmill.Pool(queue=...): {e}")))?;
        let counts = py.allow_threads(|| queue.counts()).map_err(err)?;
        if counts.closed {
            return Err(PyValueError::new_err(format!(
                "jobmill.Pool(queue=...): the queue {} was closed by an earlier producer; \
                 give the pool a queue name of its own",
                queue.url()
            )));
        }
        py.allow_threads(|| queue.announce_producer())
            .map_err(err)?;
        Ok(RemoteCore {
            queue,
            key,
            // After the jobs an earlier producer put, so that no result
            // record of theirs is taken for one of ours.
            first_seq: counts.produced + 1,
            outstanding: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            terminated: AtomicBool::new(false),
        })
    }

    /// Puts the payloads, signed, as jobs `seqs` (`inputs`: unused, for
    /// the local core's signature).
    #[pyo3(signature = (seqs, payloads, inputs = None))]
    fn submit_jobs(
        &self,
        py: Python<'_>,
        seqs: Vec<u64>,
        payloads: Vec<Bound<'_, PyBytes>>,
        inputs: Option<Vec<Bound<'_, PyBytes>>>,
    ) -> PyResult<()> {
        let _ = inputs;
        if seqs.len() != payloads.len() {
            return Err(err("as many sequence numbers as payloads are needed"));
        }
        let jobs: Vec<NewJob> = seqs
            .iter()
            .zip(&payloads)
            .map(|(&seq, p)| {
                NewJob::new(
                    seq,
                    bytes::Bytes::from(self.key.sign_task(seq, p.as_bytes())),
                )
            })
            .collect();
        self.outstanding
            .fetch_add(jobs.len() as u64, Ordering::SeqCst);
        py.allow_threads(|| self.queue.put_many(&jobs))
            .map(|_| ())
            .map_err(err)
    }

    /// The results ready now, waiting at most `timeout` seconds for the
    /// first: `(seq, code, data)`. Ctrl-C interrupts the wait.
    fn collect(&self, py: Python<'_>, timeout: f64) -> PyResult<Vec<(u64, u8, Py<PyBytes>)>> {
        let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
        loop {
            if self.terminated.load(Ordering::SeqCst) {
                return Ok(Vec::new());
            }
            let records = py
                .allow_threads(|| self.queue.take_results(TAKE))
                .map_err(err)?;
            if !records.is_empty() {
                // Records of an earlier producer's jobs are taken too, and
                // ignored: they answer none of ours.
                let n = records.iter().filter(|r| r.seq >= self.first_seq).count() as u64;
                let _ = self
                    .outstanding
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| {
                        Some(o.saturating_sub(n))
                    });
                return Ok(records
                    .iter()
                    .map(|r| {
                        let (s, c, d) = self.answer(r);
                        (s, c, PyBytes::new(py, &d).unbind())
                    })
                    .collect());
            }
            py.check_signals()?;
            let now = Instant::now();
            if now >= deadline || self.finished() {
                return Ok(Vec::new());
            }
            py.allow_threads(|| std::thread::sleep(POLL.min(deadline - now)));
        }
    }

    /// Whether the pool is over: terminated, or closed with every job
    /// answered.
    #[getter]
    fn finished(&self) -> bool {
        self.terminated.load(Ordering::SeqCst)
            || (self.closed.load(Ordering::SeqCst) && self.outstanding.load(Ordering::SeqCst) == 0)
    }

    /// No more jobs: the queue is closed, so its workers end once it is
    /// drained.
    fn close(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = py.allow_threads(|| self.queue.close());
    }

    /// Stops waiting for results and closes the queue (workers finish what
    /// is queued; the results are not collected).
    fn terminate(&self, py: Python<'_>) {
        self.terminated.store(true, Ordering::SeqCst);
        self.close(py);
    }

    /// Returns whether the pool is over (nothing runs here to wait for).
    #[pyo3(signature = (timeout = None))]
    fn join(&self, timeout: Option<f64>) -> bool {
        let _ = timeout;
        self.finished()
    }

    /// No engine runs here: never an error.
    #[getter]
    fn error(&self) -> Option<String> {
        None
    }

    /// The first sequence number of this pool's jobs.
    #[getter]
    fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// No journal here: nothing recorded.
    fn journal_jobs(&self) -> Vec<(Py<PyBytes>, u64, bool)> {
        Vec::new()
    }

    /// No journal here: nothing recorded.
    fn recorded(&self, seq: u64) -> Option<Py<PyBytes>> {
        let _ = seq;
        None
    }
}
