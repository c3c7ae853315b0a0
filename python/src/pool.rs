//! The core of `jobmill.Pool`: the engine (`jobmill::engine`) with a
//! [`MemoryQueue`] and the long-lived-worker executor ([`Workers`]), whose
//! workers are `python -m jobmill.worker` processes. Results are not
//! printed (`Options::print_output` is off): an [`Observer`] collects each
//! job's final result for the Python side, which waits for them in
//! [`PoolCore::collect`] with the GIL released.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jobmill::engine::stop::Level;
use jobmill::engine::{self, Dispatch, Executor, Options, Workers, WorkersOptions};
use jobmill::events::{
    AttemptReport, Notice, Observer, ObserverError, Resolution, RunSummary, SharedError, StopCause,
};
use jobmill::exec::{SpillBudget, Supervisor};
use jobmill::job::{FailReason, JobState, NewJob, RetryPolicy};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::Queue;
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// How a job ended, as the Python side sees it.
pub const DONE: u8 = 0;
/// The task raised: the data is the worker's report.
pub const RAISED: u8 = 1;
/// The task ran past the timeout.
pub const TIMED_OUT: u8 = 2;
/// The worker died with the task, `max_lost` times.
pub const LOST: u8 = 3;
/// Any other failure (the data says what).
pub const OTHER: u8 = 4;

const TICK: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Results {
    ready: Mutex<VecDeque<(u64, u8, Vec<u8>)>>,
    cond: Condvar,
}

struct Collector {
    results: Arc<Results>,
}

impl Collector {
    fn push(&self, seq: u64, code: u8, data: Vec<u8>) {
        let mut r = self.results.ready.lock().unwrap_or_else(|e| e.into_inner());
        r.push_back((seq, code, data));
        drop(r);
        self.results.cond.notify_all();
    }
}

fn failure(reason: &FailReason) -> (u8, Vec<u8>) {
    match reason {
        FailReason::Reported { message } => (RAISED, message.clone().into_bytes()),
        FailReason::Timeout => (TIMED_OUT, Vec::new()),
        FailReason::WorkerLost { detail } => (LOST, detail.clone().into_bytes()),
        FailReason::Signal { signal } => (
            LOST,
            format!("killed by {}", jobmill::job::signal_name(*signal)).into_bytes(),
        ),
        other => (OTHER, other.to_string().into_bytes()),
    }
}

impl Observer for Collector {
    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        match report.resolution {
            Resolution::Done => {
                let len = usize::try_from(report.stdout.len()).unwrap_or(usize::MAX);
                let (mut data, _) = report.stdout.head(len).map_err(ObserverError::new)?;
                // Every result ends with the newline the worker added.
                if data.last() == Some(&b'\n') {
                    data.pop();
                }
                self.push(report.seq, DONE, data);
            }
            Resolution::Final(JobState::Failed { reason, .. } | JobState::Dead { reason, .. }) => {
                let (code, data) = failure(reason);
                self.push(report.seq, code, data);
            }
            // Not the job's end: it runs again (or the pool was stopped).
            Resolution::Final(_) | Resolution::Requeued { .. } | Resolution::Interrupted => {}
        }
        Ok(())
    }

    fn notice(&self, notice: &Notice) {
        let mut err = std::io::stderr().lock();
        let _ = match notice {
            Notice::WorkerOutput { slot, line } => {
                let _ = write!(err, "[worker {slot}] ");
                let _ = err.write_all(line);
                writeln!(err)
            }
            // Task failures reach the caller as exceptions.
            Notice::AttemptFailed { .. } | Notice::JobEnded { .. } => Ok(()),
            Notice::Info(line) if line.contains("lost") || line.contains("gave up") => {
                writeln!(err, "jobmill: {line}")
            }
            _ => Ok(()),
        };
    }
}

/// The Workers executor, stoppable from outside the run (`close` drains,
/// `terminate` kills).
struct Stoppable {
    inner: Workers,
    level: Arc<AtomicU8>,
}

impl Executor for Stoppable {
    fn execute(&self, d: &Dispatch) -> Result<(), SharedError> {
        let finished = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut raised = 0;
                while !finished.load(Ordering::SeqCst) {
                    let want = self.level.load(Ordering::SeqCst);
                    if want > raised {
                        raised = want;
                        let level = if want >= 2 {
                            Level::Killing
                        } else {
                            Level::Draining
                        };
                        d.stop(level, StopCause::Signal(libc::SIGTERM));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let r = self.inner.execute(d);
            finished.store(true, Ordering::SeqCst);
            r
        })
    }

    fn kill(&self) {
        self.inner.kill();
    }
}

/// A pool's engine (Python: `jobmill._jobmill.PoolCore`).
#[pyclass(module = "jobmill._jobmill", frozen)]
pub struct PoolCore {
    queue: Arc<MemoryQueue>,
    results: Arc<Results>,
    level: Arc<AtomicU8>,
    run: Mutex<Option<JoinHandle<std::io::Result<RunSummary>>>>,
    finished: Arc<AtomicBool>,
    summary: Mutex<Option<String>>,
}

#[pymethods]
impl PoolCore {
    /// Starts `workers` processes of `command` (with `env` added), feeding
    /// them the jobs submitted.
    #[new]
    #[pyo3(signature = (command, env, workers, retries = 0, max_lost = 3, timeout = None, window = 64))]
    fn new(
        command: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        workers: usize,
        retries: u32,
        max_lost: u32,
        timeout: Option<f64>,
        window: usize,
    ) -> PyResult<PoolCore> {
        let policy = RetryPolicy::with_retries(retries).max_lost(max_lost);
        let queue = Arc::new(MemoryQueue::new(usize::MAX / 2, policy));
        let budget = SpillBudget::new(1 << 30);
        let supervisor = Arc::new(
            Supervisor::new(None, budget.clone())
                .map_err(|e| PyOSError::new_err(format!("jobmill.Pool: {e}")))?,
        );
        let mut wopts = WorkersOptions::new(command, workers.max(1));
        wopts.config.env.extend(env);
        wopts.config.window = window.max(1);
        wopts.config.timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        let level = Arc::new(AtomicU8::new(0));
        let executor: Arc<dyn Executor> = Arc::new(Stoppable {
            inner: Workers::new(supervisor, wopts),
            level: Arc::clone(&level),
        });
        let results = Arc::new(Results::default());
        let observer: Arc<dyn Observer> = Arc::new(Collector {
            results: Arc::clone(&results),
        });
        let opts = Options {
            budget,
            print_output: false,
            ..Options::default()
        };
        let finished = Arc::new(AtomicBool::new(false));
        let run = {
            let queue: Arc<dyn Queue> = queue.clone();
            let finished = Arc::clone(&finished);
            let results = Arc::clone(&results);
            std::thread::Builder::new()
                .name("jobmill-pool".into())
                .spawn(move || {
                    let r = engine::run(queue, None, executor, vec![observer], opts);
                    finished.store(true, Ordering::SeqCst);
                    results.cond.notify_all();
                    r
                })
                .map_err(|e| PyOSError::new_err(format!("jobmill.Pool: {e}")))?
        };
        Ok(PoolCore {
            queue,
            results,
            level,
            run: Mutex::new(Some(run)),
            finished,
            summary: Mutex::new(None),
        })
    }

    /// Queues the payloads as jobs `first`, `first + 1`, …
    fn submit(
        &self,
        py: Python<'_>,
        first: u64,
        payloads: Vec<Bound<'_, PyBytes>>,
    ) -> PyResult<()> {
        // One memcpy each (a `Vec<u8>` argument would be extracted item by
        // item through the sequence protocol: 25 MB/s).
        let payloads: Vec<Bytes> = payloads
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        py.allow_threads(|| {
            for (i, p) in payloads.into_iter().enumerate() {
                self.queue
                    .put(NewJob::new(first + i as u64, p))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .map_err(|e: String| PyRuntimeError::new_err(format!("jobmill.Pool: {e}")))
    }

    /// The results ready now, waiting at most `timeout` seconds for the
    /// first: `(seq, code, data)`. Ctrl-C interrupts the wait.
    fn collect(&self, py: Python<'_>, timeout: f64) -> PyResult<Vec<(u64, u8, Py<PyBytes>)>> {
        let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
        loop {
            let batch: Vec<(u64, u8, Vec<u8>)> = py.allow_threads(|| {
                let mut r = self.results.ready.lock().unwrap_or_else(|e| e.into_inner());
                let wait = deadline.saturating_duration_since(Instant::now()).min(TICK);
                if r.is_empty() && !wait.is_zero() && !self.finished.load(Ordering::SeqCst) {
                    r = self
                        .results
                        .cond
                        .wait_timeout(r, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                r.drain(..).collect()
            });
            if !batch.is_empty() {
                return Ok(batch
                    .into_iter()
                    .map(|(s, c, d)| (s, c, PyBytes::new(py, &d).unbind()))
                    .collect());
            }
            py.check_signals()?;
            if Instant::now() >= deadline || self.finished.load(Ordering::SeqCst) {
                return Ok(Vec::new());
            }
        }
    }

    /// Whether the engine has ended (after `close` and the last job, after
    /// `terminate`, or on an error).
    #[getter]
    fn finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// No more jobs: the workers end once every job is done.
    fn close(&self) {
        let _ = self.queue.close();
    }

    /// Stops now: the workers are killed, jobs not done are dropped.
    fn terminate(&self) {
        let _ = self.queue.close();
        self.level.store(2, Ordering::SeqCst);
    }

    /// Waits for the engine to end (at most `timeout` seconds; `None`: as
    /// long as it takes). Returns whether it ended. Ctrl-C interrupts.
    #[pyo3(signature = (timeout = None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        while !self.finished.load(Ordering::SeqCst) {
            py.allow_threads(|| {
                let r = self.results.ready.lock().unwrap_or_else(|e| e.into_inner());
                if !self.finished.load(Ordering::SeqCst) {
                    let _ = self.results.cond.wait_timeout(r, TICK);
                }
            });
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
        let handle = self.run.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let text = match py.allow_threads(|| h.join()) {
                Ok(Ok(s)) => s.error.map(|e| error_chain(&*e)),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the engine panicked".to_string()),
            };
            *self.summary.lock().unwrap_or_else(|e| e.into_inner()) = text;
        }
        Ok(true)
    }

    /// The engine's fatal error, once joined (`None` if it had none).
    #[getter]
    fn error(&self) -> Option<String> {
        self.summary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

impl Drop for PoolCore {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::SeqCst) {
            let _ = self.queue.close();
            self.level.store(2, Ordering::SeqCst);
        }
    }
}
