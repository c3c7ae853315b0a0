//! Typed tasks, their registration ([`init`]) and the worker side of a pool.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::worker::{Worker, WorkerError};

use super::Codec;

/// Set in a pool worker's environment: marks the process as a pool worker
/// (each item names its task).
pub const WORKER_ENV: &str = "JOBMILL_POOL_WORKER";

/// Set in a pool worker's environment: the codec ("bincode" or "json").
pub const CODEC_ENV: &str = "JOBMILL_POOL_CODEC";

/// Set in a pool worker's environment: the pid of the program that started
/// it, so that a worker whose parent died before it could arrange to die
/// with it exits at once.
pub const PARENT_ENV: &str = "JOBMILL_POOL_PARENT";

/// Prefix of a failure message for a panic in the function.
pub(crate) const PANIC_TAG: &str = "pool-panic:";

/// Prefix of a failure message for an item or a result that could not be
/// (de)serialised in the worker.
pub(crate) const CODEC_TAG: &str = "pool-codec:";

/// A named function from `A` to `R`, run by a [`Pool`](super::Pool) in
/// worker processes. Declare it as a `static` (or `const`) so that the
/// program's `main` can list it in [`init`] and pass it to
/// [`Pool::map`](super::Pool::map):
///
/// ```
/// use jobmill::pool::Task;
///
/// static SQUARE: Task<u64, u64> = Task::new("square", |x| x * x);
/// ```
///
/// The name identifies the function to the worker process (it travels
/// with each item), so it must be unique among the tasks given to [`init`],
/// and at most 255 bytes long. To fail an item without panicking, return a
/// `Result` (it is serialised like any other value).
pub struct Task<A, R> {
    name: &'static str,
    f: fn(A) -> R,
}

impl<A, R> Task<A, R> {
    /// A task named `name` running `f` (a function or a closure that
    /// captures nothing).
    ///
    /// # Panics
    ///
    /// If `name` is longer than 255 bytes (at compile time, in a `static`).
    pub const fn new(name: &'static str, f: fn(A) -> R) -> Task<A, R> {
        assert!(name.len() <= 255, "a task name is at most 255 bytes");
        Task { name, f }
    }

    /// The task's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Calls the function in this process (no worker involved).
    pub fn call(&self, item: A) -> R {
        (self.f)(item)
    }
}

impl<A, R> Clone for Task<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, R> Copy for Task<A, R> {}

impl<A, R> std::fmt::Debug for Task<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).finish()
    }
}

/// A [`Task`] with its types erased, as listed in [`init`].
pub trait AnyTask: Sync {
    /// The task's name.
    fn name(&self) -> &'static str;

    /// Decodes an item from `input` with `codec`, runs the function and
    /// encodes its result into `out`. A decode or encode failure is an
    /// `Err` with the reason; a panic in the function unwinds.
    ///
    /// # Errors
    ///
    /// The item or the result could not be (de)serialised.
    fn run_encoded(&self, codec: Codec, input: &[u8], out: &mut Vec<u8>) -> Result<(), String>;
}

impl<A, R> AnyTask for Task<A, R>
where
    A: DeserializeOwned,
    R: Serialize,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run_encoded(&self, codec: Codec, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let item: A = codec
            .decode(input)
            .map_err(|e| format!("cannot decode the item in the worker: {e}"))?;
        let result = (self.f)(item);
        codec
            .encode_into(&result, out)
            .map_err(|e| format!("cannot encode the result in the worker: {e}"))
    }
}

/// The task names given to [`init`] in this process.
static REGISTERED: OnceLock<Vec<&'static str>> = OnceLock::new();

/// The names registered by [`init`], or `None` if it was not called.
pub(crate) fn registered() -> Option<&'static [&'static str]> {
    REGISTERED.get().map(Vec::as_slice)
}

/// Registers the program's tasks and, if this process was started as a
/// pool worker, serves them and exits. Call it first thing in `main`.
///
/// In the program itself (no [`WORKER_ENV`] in the environment) it only
/// records the task names, so that [`Pool::map`](super::Pool::map) can
/// check a task is known to the workers, and returns. In a worker process
/// it never returns: it runs, on every item the pool sends, the task the
/// item names, then exits with status 0 (1 if the connection to the pool
/// failed).
///
/// A worker process arranges to be killed if the thread that started it
/// dies (`PR_SET_PDEATHSIG`), so that no worker outlives its program, even
/// one killed by Ctrl-C or SIGKILL.
///
/// Calling `init` again has no effect in the program (the first list
/// stays).
///
/// # Panics
///
/// If two tasks in `tasks` have the same name (a worker could not tell
/// them apart), or a name is longer than 255 bytes.
pub fn init(tasks: &[&dyn AnyTask]) {
    let names: Vec<&'static str> = tasks.iter().map(|t| t.name()).collect();
    for (i, n) in names.iter().enumerate() {
        assert!(
            n.len() <= 255,
            "jobmill::pool::init: task name {n:?} is longer than 255 bytes"
        );
        assert!(
            !names[..i].contains(n),
            "jobmill::pool::init: two tasks are named {n:?}"
        );
    }
    let _ = REGISTERED.set(names);
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    std::process::exit(worker_main(tasks));
}

/// The life of a worker process; returns its exit status.
fn worker_main(tasks: &[&dyn AnyTask]) -> i32 {
    die_with_parent();
    let codec = match std::env::var(CODEC_ENV).as_deref() {
        Ok("json") => Codec::Json,
        _ => Codec::Bincode,
    };
    install_panic_hook();
    match serve(tasks, codec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jobmill pool worker: {e}");
            1
        }
    }
}

/// Splits a job's payload into the task's name and the encoded item.
pub(crate) fn split_task(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = payload.split_first()?;
    let len = usize::from(len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Asks the kernel to SIGKILL this process when the thread that spawned it
/// ends, and exits at once if the program is already gone. The spawning
/// thread is the coordinator's slot thread, which lives until the worker is
/// reaped, so the signal comes only when the program dies.
fn die_with_parent() {
    #[cfg(target_os = "linux")]
    {
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    }
    let expected: Option<i32> = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok());
    if let Some(expected) = expected {
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        let program_gone = rustix::process::Pid::from_raw(expected)
            .is_none_or(|p| rustix::process::test_kill_process(p).is_err());
        if parent != expected && program_gone {
            // Reparented: the program died before the death signal was
            // set. (A different parent with the program alive is a wrapper
            // that did not exec, e.g. `program("sh")`: carry on.)
            std::process::exit(1);
        }
    }
}

thread_local! {
    /// The last panic's message and location, recorded by the hook.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the panic hook: a panic in the function becomes the item's
/// error (message and location) instead of a message on stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".into());
        let text = match info.location() {
            Some(l) => format!("{msg} (at {}:{}:{})", l.file(), l.line(), l.column()),
            None => msg,
        };
        // Built with panic = "abort", the process is about to die and the
        // message could not reach the item's error: print it (the pool
        // forwards worker stderr).
        if cfg!(panic = "abort") {
            eprintln!("jobmill pool worker: panicked: {text}");
        }
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
    }));
}

/// Runs the task each job names until the pool closes the queue.
fn serve(tasks: &[&dyn AnyTask], codec: Codec) -> Result<(), WorkerError> {
    let mut worker = Worker::connect()?;
    let mut out = Vec::new();
    let mut last = 0;
    while let Some(job) = worker.next_job()? {
        out.clear();
        let Some((name, item)) = split_task(&job.payload) else {
            worker.fail(job, &format!("{CODEC_TAG}the item does not name its task"))?;
            continue;
        };
        // Usually the same task as the previous item.
        let found = match tasks.get(last) {
            Some(t) if t.name().as_bytes() == name => Some(last),
            _ => tasks.iter().position(|t| t.name().as_bytes() == name),
        };
        let Some(i) = found else {
            let known: Vec<_> = tasks.iter().map(|t| t.name()).collect();
            let msg = format!(
                "{CODEC_TAG}this worker has no task named {:?} (jobmill::pool::init was given {known:?})",
                String::from_utf8_lossy(name)
            );
            worker.fail(job, &msg)?;
            continue;
        };
        last = i;
        let task = tasks[i];
        let ran = catch_unwind(AssertUnwindSafe(|| task.run_encoded(codec, item, &mut out)));
        let message = match ran {
            Ok(Ok(())) => {
                match worker.complete(job, &out) {
                    // Reported to the pool as a failure of that item.
                    Ok(()) | Err(WorkerError::ResultTooLarge { .. }) => {}
                    Err(e) => return Err(e),
                }
                // Do not keep a huge result's buffer for the next item.
                if out.capacity() > 1 << 20 {
                    out = Vec::new();
                }
                continue;
            }
            Ok(Err(detail)) => format!("{CODEC_TAG}{detail}"),
            Err(_) => {
                let text = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "unknown panic".into());
                format!("{PANIC_TAG}{text}")
            }
        };
        worker.fail(job, &message)?;
    }
    worker.close()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_splits_into_task_name_and_item() {
        assert_eq!(
            split_task(b"\x06square\x01\x02"),
            Some((&b"square"[..], &b"\x01\x02"[..]))
        );
        assert_eq!(split_task(b"\x00"), Some((&b""[..], &b""[..])));
        assert_eq!(split_task(b""), None);
        assert_eq!(split_task(b"\x09short"), None);
    }

    #[test]
    fn a_task_runs_on_its_encoded_item() {
        static DOUBLE: Task<u32, u64> = Task::new("double", |x| u64::from(x) * 2);
        let mut item = Vec::new();
        Codec::Bincode.encode_into(&21u32, &mut item).unwrap();
        let mut out = Vec::new();
        DOUBLE.run_encoded(Codec::Bincode, &item, &mut out).unwrap();
        assert_eq!(Codec::Bincode.decode::<u64>(&out).unwrap(), 42);
        let err = DOUBLE
            .run_encoded(Codec::Bincode, b"\x01", &mut out)
            .unwrap_err();
        assert!(err.contains("cannot decode the item"), "{err}");
        assert_eq!(DOUBLE.call(5), 10);
    }
}
