//! The core of `jobmill.Pool`: the engine (`jobmill::engine`) with a
//! [`MemoryQueue`] and the long-lived-worker executor ([`Workers`]), whose
//! workers are `python -m jobmill.worker` processes. Results are not
//! printed (`Options::print_output` is off): an [`Observer`] collects each
//! job's final result for the Python side, which waits for them in
//! [`PoolCore::collect`] with the GIL released. `close` closes the queue
//! (the workers end once every job is done); `terminate`, and dropping
//! the core unfinished, kill the run through its [`StopHandle`] (the
//! engine's stop for library front ends: no polling).
//!
//! With a journal (`jobmill.Pool(journal=PATH)`), the run's journal (the
//! same file and writer as `jobmill run`'s, [`jobmill::journal`]) is an
//! observer too: every task is a job whose input starts with its key line
//! (chosen by the Python side), and whose kept stdout is its pickled
//! result. Opening an existing journal continues it (a new session, as
//! `jobmill resume` does); [`PoolCore::journal_jobs`] and
//! [`PoolCore::recorded`] give the Python side the recorded jobs by key
//! and their reusable results ([`jobmill::journal::keyed`]).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jobmill::engine::stop::StopHandle;
use jobmill::engine::{self, Executor, Options, Workers, WorkersOptions};
use jobmill::events::{
    AttemptReport, AttemptStart, Notice, Observer, ObserverError, Resolution, RunSummary, StopCause,
};
use jobmill::exec::{SpillBudget, Supervisor};
use jobmill::job::{FailReason, JobState, NewJob, RetryPolicy};
use jobmill::journal::keyed::{Keyed, KeyedJob};
use jobmill::journal::options::{StoredInput, OPTIONS_VERSION};
use jobmill::journal::{self, resume, Journal, JournalError, RunRecord, StoredOptions};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::Queue;
use numpy::PyReadonlyArray1;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::shared::{SharedArena, ARENA_FD_ENV};

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
/// A worker refused the task: unsigned or wrongly signed (shared queues;
/// the data says why).
pub const REFUSED: u8 = 5;

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
        FailReason::Refused { why } => (REFUSED, why.clone().into_bytes()),
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
            // Both streams to stderr, tagged with the slot.
            Notice::WorkerOutput { slot, line, .. } => {
                let _ = write!(err, "[worker {slot}] ");
                let _ = err.write_all(line);
                writeln!(err)
            }
            // Task failures reach the caller as exceptions.
            Notice::AttemptFailed { .. } | Notice::JobEnded { .. } => Ok(()),
            Notice::WorkerGaveUp { detail, .. } => writeln!(err, "jobmill: {detail}"),
            Notice::Info(line) if line.contains("lost") => writeln!(err, "jobmill: {line}"),
            _ => Ok(()),
        };
    }
}

/// A pool's engine (Python: `jobmill._jobmill.PoolCore`).
#[pyclass(module = "jobmill._jobmill", frozen)]
pub struct PoolCore {
    queue: Arc<MemoryQueue>,
    results: Arc<Results>,
    /// `terminate` (and dropping the core) kills the run through it.
    stop: StopHandle,
    run: Mutex<Option<JoinHandle<std::io::Result<RunSummary>>>>,
    finished: Arc<AtomicBool>,
    summary: Mutex<Option<String>>,
    /// The journal, until the engine has ended (then dropped, which
    /// releases its lock for the next pool on the file).
    journal: Mutex<Option<JournalSide>>,
    first_seq: u64,
    /// Closed by the Python side with every task submitted.
    closed: Arc<AtomicBool>,
    /// Where large out-of-band buffers are placed once (`shared_arena`
    /// bytes; none if 0).
    shared: Option<SharedArena>,
}

/// The journal of a pool run with `journal=PATH`.
struct JournalSide {
    journal: Arc<Journal>,
    keyed: Mutex<Keyed>,
    /// The jobs recorded by earlier sessions, by key (taken once).
    jobs: Mutex<Vec<KeyedJob>>,
    /// The first sequence number free for new jobs.
    first_seq: u64,
}

/// The journal as the pool run's observer: [`Journal`]'s own, except
/// that a pool closed with every task submitted (`closed`) and ended
/// without a stop or an error records its run `complete` (the engine has
/// no input of its own to say so).
struct PoolJournal {
    journal: Arc<Journal>,
    closed: Arc<AtomicBool>,
}

impl Observer for PoolJournal {
    fn attempt_started(&self, start: &AttemptStart) -> Result<(), ObserverError> {
        self.journal.attempt_started(start)
    }

    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        self.journal.attempt_finished(report)
    }

    fn run_finished(&self, summary: &RunSummary) -> Result<(), ObserverError> {
        let graceful = self.closed.load(Ordering::SeqCst)
            && summary.error.is_none()
            && matches!(summary.stop, StopCause::None);
        if graceful {
            self.journal.close("complete").map_err(ObserverError::new)
        } else {
            self.journal.run_finished(summary)
        }
    }
}

/// The key in `run.options` that marks a journal of `jobmill.Pool`.
pub const POOL_MARK: &str = "pool";

/// What a pool's journal records about its run.
struct JournalSpec<'a> {
    path: &'a Path,
    command: Vec<OsString>,
    workers: usize,
    policy: RetryPolicy,
    timeout: Option<f64>,
    window: usize,
    result_cap: usize,
}

/// Creates the journal of `spec`, or continues it if the file exists
/// (closing the books of the session a crash or a kill left open).
fn open_journal(spec: &JournalSpec<'_>) -> Result<JournalSide, JournalError> {
    let path = spec.path;
    if path.exists() {
        let r = resume::open(path)?;
        if r.run.options.get(POOL_MARK).and_then(|v| v.as_str()) != Some("python") {
            return Err(JournalError::Invalid {
                path: path.to_path_buf(),
                detail: "it is the journal of a `jobmill run`, not of a jobmill.Pool; \
                         give the pool a journal file of its own"
                    .into(),
            });
        }
        let first_seq = r.run.jobs + 1;
        let config = r.options.writer_config();
        // The session's tasks are the whole run's: its end is the input's.
        let (journal, _pending) = r.start(false, true, config)?;
        let keyed = Keyed::open(path)?;
        let jobs = keyed.jobs()?;
        return Ok(JournalSide {
            journal: Arc::new(journal),
            keyed: Mutex::new(keyed),
            jobs: Mutex::new(jobs),
            first_seq,
        });
    }
    let options = StoredOptions {
        version: OPTIONS_VERSION,
        jobs: spec.workers,
        keep_order: true,
        null: false,
        shell: false,
        retries: spec.policy.max_attempts.saturating_sub(1),
        max_lost: spec.policy.max_lost,
        timeout: spec.timeout,
        grace: 0.0,
        halt: None,
        output_memory: 0,
        persistent: true,
        window: spec.window,
        arena: None,
        handshake_timeout: 10.0,
        print0: false,
        shape: Default::default(),
        plan: None,
        tag: false,
        tagstring: None,
        live: None,
        results: None,
        joblog: None,
        delay: None,
        memfree: None,
        mem_limit: None,
        load: None,
        max_oom: spec.policy.max_oom,
        retry_on: None,
        retry_delay: None,
        retry_backoff: jobmill::job::DEFAULT_RETRY_BACKOFF,
        retry_max_delay: spec.policy.backoff.max.as_secs_f64(),
        mem_per_job: None,
        journal_output_cap: spec.result_cap,
        journal_fsync: journal::writer::DEFAULT_SYNC_INTERVAL.as_secs_f64(),
        input: StoredInput::Plan,
    };
    let mut json = options.to_json();
    if let Some(o) = json.as_object_mut() {
        o.insert(POOL_MARK.into(), "python".into());
    }
    let record = RunRecord {
        run_id: journal::new_run_id(),
        command: spec.command.clone(),
        options: json,
        cwd: std::env::current_dir().unwrap_or_default(),
    };
    let journal = journal::create(path, &record, options.writer_config())?;
    let keyed = Keyed::open(path)?;
    Ok(JournalSide {
        journal: Arc::new(journal),
        keyed: Mutex::new(keyed),
        jobs: Mutex::new(Vec::new()),
        first_seq: 1,
    })
}

#[pymethods]
impl PoolCore {
    /// Starts `workers` processes of `command` (with `env` added), feeding
    /// them the jobs submitted. With `journal`, records the run in that
    /// journal file (continuing it if it exists), as `run_command`, with
    /// results kept whole up to `result_cap` bytes. With `shared_arena`
    /// bytes, the workers share an arena of that size for large
    /// out-of-band buffers ([`crate::shared`]).
    #[new]
    #[pyo3(signature = (command, env, workers, retries = 0, max_lost = 3, timeout = None, window = 64,
                        journal = None, run_command = Vec::new(), result_cap = 64 << 20,
                        shared_arena = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        command: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        workers: usize,
        retries: u32,
        max_lost: u32,
        timeout: Option<f64>,
        window: usize,
        journal: Option<PathBuf>,
        run_command: Vec<OsString>,
        result_cap: usize,
        shared_arena: usize,
    ) -> PyResult<PoolCore> {
        let policy = RetryPolicy::with_retries(retries).max_lost(max_lost);
        let journal = match &journal {
            Some(path) => Some(
                open_journal(&JournalSpec {
                    path,
                    command: run_command,
                    workers,
                    policy,
                    timeout,
                    window,
                    result_cap,
                })
                .map_err(|e| PyOSError::new_err(format!("jobmill.Pool: {e}")))?,
            ),
            None => None,
        };
        let queue = Arc::new(MemoryQueue::new(usize::MAX / 2, policy));
        let budget = SpillBudget::new(1 << 30);
        let supervisor = Arc::new(
            Supervisor::new(None, budget.clone())
                .map_err(|e| PyOSError::new_err(format!("jobmill.Pool: {e}")))?,
        );
        let mut wopts = WorkersOptions::new(command, workers.max(1));
        wopts.config.env.extend(env);
        let shared = match shared_arena {
            0 => None,
            len => {
                let arena = SharedArena::create(len).map_err(|e| {
                    PyOSError::new_err(format!(
                        "jobmill.Pool: cannot create a shared arena of {len} bytes: {e}"
                    ))
                })?;
                wopts
                    .config
                    .env
                    .push((ARENA_FD_ENV.into(), arena.fd().to_string().into()));
                wopts.config.inherit_fds.push(arena.fd());
                Some(arena)
            }
        };
        wopts.config.window = window.max(1);
        wopts.config.timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        let stop = StopHandle::new();
        let executor: Arc<dyn Executor> = Arc::new(Workers::new(supervisor, wopts));
        let results = Arc::new(Results::default());
        let collector: Arc<dyn Observer> = Arc::new(Collector {
            results: Arc::clone(&results),
        });
        // The journal first: a result the caller has seen is recorded.
        let closed = Arc::new(AtomicBool::new(false));
        let mut observers: Vec<Arc<dyn Observer>> = Vec::new();
        if let Some(j) = &journal {
            observers.push(Arc::new(PoolJournal {
                journal: Arc::clone(&j.journal),
                closed: Arc::clone(&closed),
            }));
        }
        observers.push(collector);
        let opts = Options {
            budget,
            print_output: false,
            stop: Some(stop.clone()),
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
                    let r = engine::run(queue, None, executor, observers, opts);
                    finished.store(true, Ordering::SeqCst);
                    results.cond.notify_all();
                    r
                })
                .map_err(|e| PyOSError::new_err(format!("jobmill.Pool: {e}")))?
        };
        Ok(PoolCore {
            queue,
            results,
            stop,
            run: Mutex::new(Some(run)),
            finished,
            summary: Mutex::new(None),
            first_seq: journal.as_ref().map_or(1, |j| j.first_seq),
            journal: Mutex::new(journal),
            closed,
            shared,
        })
    }

    /// Whether the pool has a shared arena.
    #[getter]
    fn has_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Lays out a task's payload of `total` bytes once in the shared arena:
    /// `prefix` at the start of a new region and each `(offset, array)` of
    /// `parts` (one-dimensional `uint8` numpy arrays over the out-of-band
    /// buffers) at its offset. Returns the region's offset, or `None` when
    /// the pool has no shared arena or no room in it now (then the payload
    /// goes whole, as bytes). The GIL stays held: no Python code can change
    /// the buffers while they are copied ([`crate::shared`]).
    fn shared_place(
        &self,
        prefix: &[u8],
        parts: Vec<(u64, PyReadonlyArray1<'_, u8>)>,
        total: u64,
    ) -> PyResult<Option<u64>> {
        let Some(arena) = &self.shared else {
            return Ok(None);
        };
        let slices = parts
            .iter()
            .map(|(at, a)| Ok((*at, a.as_slice()?)))
            .collect::<Result<Vec<_>, numpy::NotContiguousError>>()
            .map_err(|e| PyValueError::new_err(format!("jobmill.Pool: {e}")))?;
        arena
            .place(prefix, &slices, total)
            .map_err(|e| PyOSError::new_err(format!("jobmill.Pool: {e}")))
    }

    /// Gives back the shared region at `offset` once its task has its final
    /// outcome (an offset not given out is ignored).
    fn shared_release(&self, offset: u64) {
        if let Some(arena) = &self.shared {
            arena.release(offset);
        }
    }

    /// Bytes of the shared arena in regions not given back.
    #[getter]
    fn shared_in_use(&self) -> u64 {
        self.shared.as_ref().map_or(0, |a| a.in_use())
    }

    /// Queues the payloads as jobs `first`, `first + 1`, …
    fn submit(
        &self,
        py: Python<'_>,
        first: u64,
        payloads: Vec<Bound<'_, PyBytes>>,
    ) -> PyResult<()> {
        let seqs: Vec<u64> = (first..first + payloads.len() as u64).collect();
        self.submit_jobs(py, seqs, payloads, None)
    }

    /// Queues the payloads as jobs `seqs`; with a journal, each job is
    /// first recorded with its input from `inputs` (jobs recorded by an
    /// earlier session keep their row).
    #[pyo3(signature = (seqs, payloads, inputs = None))]
    fn submit_jobs(
        &self,
        py: Python<'_>,
        seqs: Vec<u64>,
        payloads: Vec<Bound<'_, PyBytes>>,
        inputs: Option<Vec<Bound<'_, PyBytes>>>,
    ) -> PyResult<()> {
        if seqs.len() != payloads.len() || inputs.as_ref().is_some_and(|i| i.len() != seqs.len()) {
            return Err(PyRuntimeError::new_err(
                "jobmill.Pool: as many sequence numbers, payloads and inputs are needed",
            ));
        }
        // One memcpy each (a `Vec<u8>` argument would be extracted item by
        // item through the sequence protocol: 25 MB/s).
        let payloads: Vec<Bytes> = payloads
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        let inputs: Option<Vec<Bytes>> = inputs.map(|i| {
            i.iter()
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .collect()
        });
        py.allow_threads(|| {
            let journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
            for (i, (seq, p)) in seqs.into_iter().zip(payloads).enumerate() {
                if let (Some(j), Some(inputs)) = (&*journal, &inputs) {
                    j.journal
                        .record_job(seq, &inputs[i])
                        .map_err(|e| e.to_string())?;
                }
                self.queue
                    .put(NewJob::new(seq, p))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .map_err(|e: String| PyRuntimeError::new_err(format!("jobmill.Pool: {e}")))
    }

    /// With a journal: the first sequence number free for new jobs.
    #[getter]
    fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// With a journal: the jobs earlier sessions recorded, as `(key, seq,
    /// reusable)` in sequence order (given once; then empty).
    fn journal_jobs(&self, py: Python<'_>) -> Vec<(Py<PyBytes>, u64, bool)> {
        let journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        let Some(j) = &*journal else {
            return Vec::new();
        };
        let jobs = std::mem::take(&mut *j.jobs.lock().unwrap_or_else(|e| e.into_inner()));
        jobs.into_iter()
            .map(|k| (PyBytes::new(py, &k.key).unbind(), k.seq, k.reusable))
            .collect()
    }

    /// With a journal: the recorded result of job `seq` (its whole
    /// stdout), if it is done and was kept whole.
    fn recorded(&self, py: Python<'_>, seq: u64) -> PyResult<Option<Py<PyBytes>>> {
        let data = py
            .allow_threads(|| {
                let journal = self.journal.lock().unwrap_or_else(|e| e.into_inner());
                match &*journal {
                    Some(j) => j
                        .keyed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .result(seq),
                    None => Ok(None),
                }
            })
            .map_err(|e| PyOSError::new_err(format!("jobmill.Pool: {e}")))?;
        Ok(data.map(|d| PyBytes::new(py, &d).unbind()))
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

    /// No more jobs: the workers end once every job is done. With a
    /// journal, the run's input is recorded complete.
    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            if let Some(j) = &*self.journal.lock().unwrap_or_else(|e| e.into_inner()) {
                let _ = j.journal.record_input_complete();
            }
        }
        let _ = self.queue.close();
    }

    /// Stops now: the workers are killed, jobs not done are dropped.
    fn terminate(&self) {
        let _ = self.queue.close();
        self.stop.kill();
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
                Ok(Ok(s)) => s.error.map(|e| jobmill::events::error_chain(&*e)),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the engine panicked".to_string()),
            };
            *self.summary.lock().unwrap_or_else(|e| e.into_inner()) = text;
            // The engine (and its observers) ended: the journal is closed;
            // dropping it releases its lock.
            self.journal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
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

impl Drop for PoolCore {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::SeqCst) {
            let _ = self.queue.close();
            self.stop.kill();
        }
    }
}
