//! A typed process pool: run a Rust function over serde-typed items in
//! worker processes of the same binary.
//!
//! ```no_run
//! use jobmill::pool::{self, Pool, Task};
//!
//! // A task: a name the workers know it by, and a function (or a closure
//! // that captures nothing).
//! static SQUARE: Task<u64, u64> = Task::new("square", |x| x * x);
//!
//! fn main() -> Result<(), jobmill::pool::PoolError> {
//!     // First thing in main: in a worker process this serves SQUARE and
//!     // exits; in the program it records the task names and returns.
//!     pool::init(&[&SQUARE]);
//!
//!     let pool = Pool::builder().workers(4).retries(1).build()?;
//!     // Results in input order; the input is read lazily.
//!     let mut total = 0;
//!     for result in pool.map(&SQUARE, 1..=1000) {
//!         total += result?;
//!     }
//!     assert_eq!(total, 333_833_500);
//!     // Results as they come.
//!     let n = pool.map_unordered(&SQUARE, 1..=1000).filter(Result::is_ok).count();
//!     assert_eq!(n, 1000);
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//!
//! On the first `next()` of a map, the [`Pool`] hands it the workers it
//! kept from an earlier map, or starts [`PoolBuilder::workers`] copies of
//! the running program (`std::env::current_exe()`) with [`WORKER_ENV`] in
//! their environment; the map feeds them the items through a bounded
//! [`MemoryQueue`](crate::queue::memory::MemoryQueue) and the
//! long-lived worker protocol ([`crate::persistent`]), run by the one
//! engine ([`crate::engine::run`] with the [`Workers`](crate::engine::Workers)
//! executor, on a thread of its own, stopped through a
//! [`StopHandle`](crate::engine::stop::StopHandle)); each item carries
//! its task's name. In the workers, [`init`] sees [`WORKER_ENV`], runs the
//! named task on every item it is sent, and exits when the pool closes:
//! that is why it must be called at the top of `main`, before the program
//! does anything else, with every task the program maps. Items and results
//! are serialised with bincode (or JSON, [`Codec`]).
//!
//! # Workers between maps
//!
//! A map that finishes cleanly (its input read to the end and every
//! result in) hands its workers back to the pool, and the next map, of
//! any task, runs on them: no process start, and what a worker set up
//! (a model loaded in a `OnceLock`) stays. The pool keeps one such set;
//! maps that run at the same time start their own. A map dropped before
//! it finished kills its workers instead (so that nothing it queued runs
//! for nobody, and an item stuck forever does not hold a worker). The
//! workers kept are stopped and reaped when the last clone of the pool,
//! and the last iterator, is dropped.
//!
//! # Bounded memory
//!
//! The input iterator is consumed lazily, on the caller's thread (it need
//! not be `Send`), and never more than [`PoolBuilder::buffer`] items ahead of
//! the results yielded: an item is read only when fewer than `buffer` items
//! are read and not yet yielded. For [`Pool::map`] that count includes the
//! results waiting in the reorder buffer for an earlier, slower item, so the
//! reorder buffer holds at most `buffer - 1` results; when it is full, no
//! more input is read until the earliest item's result is yielded
//! (backpressure). An infinite input is fine: take what you need and drop
//! the iterator. Beyond half the buffer, input is read only while no result
//! is waiting, so an expensive input does not hold back ready results.
//!
//! # Failures
//!
//! Each item's outcome is a `Result<R, PoolError>`, and the pool goes on
//! after any of them:
//!
//! - a **panic** in the function is caught in the worker, which carries on;
//!   the item fails with [`PoolError::Panicked`] (message and location);
//! - a worker that **dies** while running an item (`std::process::abort`,
//!   a segfault, `exit`, SIGKILL from the OOM killer or anyone) is replaced.
//!   The item is *lost*, not failed (the lost-worker rule of
//!   [`crate::job`]): it runs again on a fresh worker, up to
//!   [`PoolBuilder::max_lost`] times (default 3), without counting against
//!   the retries; after that it fails with [`PoolError::WorkerDied`]. The
//!   other items the dead worker held are sent again with no attempt
//!   counted;
//! - an item running longer than [`PoolBuilder::timeout`] has its worker
//!   killed and replaced, and fails with [`PoolError::Timeout`].
//!
//! With [`PoolBuilder::retries`]`(n)`, an item that fails (a panic, a
//! timeout, or an input the worker could not decode) is run again, up to
//! `n` more times, before its error is yielded.
//! If a slot's workers die [`PoolBuilder::max_failed_starts`] times in a
//! row without finishing an item (say the program does not call [`init`]
//! first), that slot gives up; once every slot has, the items read and not
//! run end with [`PoolError::NotRun`], and, if input was left unread, the
//! iterator ends with [`PoolError::Stopped`]. Nothing hangs, and the next
//! map starts new workers.
//!
//! # Stopping
//!
//! Dropping an iterator before it finished kills its workers (each is in
//! its own process group) and reaps them before `drop` returns; dropping
//! the pool does the same for the workers it kept. No zombie, no orphan,
//! even with a worker stuck in an endless item. If the program itself
//! dies, by Ctrl-C or even SIGKILL, the kernel kills its workers
//! (`PR_SET_PDEATHSIG`, set by each worker in [`init`]); since they are in
//! their own process groups, the terminal's Ctrl-C does not reach them
//! directly, so the program decides: with Rust's default handling it dies
//! and the workers with it; a program that handles SIGINT itself can drop
//! its iterators and its pool to stop them.
//!
//! Worker output (`println!`, `eprintln!` in the function) is forwarded
//! line by line to the program's stdout and stderr.

mod builder;
mod engine;
mod iter;
mod task;

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use builder::{Pool, PoolBuilder};
pub use iter::{Map, MapUnordered};
pub use task::{init, AnyTask, Task, CODEC_ENV, PARENT_ENV, WORKER_ENV};

/// How items and results are serialised between the program and its
/// workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// bincode 1: compact and fast. It cannot decode types that need
    /// `deserialize_any` (`#[serde(untagged)]`, `#[serde(flatten)]`,
    /// `serde_json::Value`); use [`Codec::Json`] for those.
    #[default]
    Bincode,
    /// JSON (serde_json): slower and larger, but handles every serde type.
    Json,
}

impl Codec {
    fn env_value(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Json => "json",
        }
    }

    /// Serialises `value` at the end of `out`.
    ///
    /// # Errors
    ///
    /// The value cannot be serialised with this codec.
    pub fn encode_into<T: Serialize + ?Sized>(
        self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match self {
            Codec::Bincode => bincode::serialize_into(out, value).map_err(|e| e.to_string()),
            Codec::Json => serde_json::to_writer(out, value).map_err(|e| e.to_string()),
        }
    }

    /// Deserialises a value from `bytes`.
    ///
    /// # Errors
    ///
    /// The bytes are not a valid `T` in this codec.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Codec::Bincode => bincode::deserialize(bytes).map_err(|e| e.to_string()),
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// Why an item, or the pool, failed. Item errors name the item by its
/// index in the input, from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The function panicked on the item (on its last allowed attempt). The
    /// worker caught the panic and went on.
    #[error("item {index}: the function panicked (attempt {attempts}): {message}")]
    Panicked {
        /// The item's index in the input.
        index: u64,
        /// Attempts made.
        attempts: u32,
        /// The panic message and its location.
        message: String,
    },
    /// The worker running the item died: it aborted, crashed, exited, or
    /// was killed (e.g. by the OOM killer), on the item's last allowed
    /// attempt. The worker was replaced.
    #[error("item {index}: the worker died (attempt {attempts}): {detail}")]
    WorkerDied {
        /// The item's index in the input.
        index: u64,
        /// Attempts made.
        attempts: u32,
        /// What was observed, e.g. "worker 3 (pid 123, slot 1) was killed
        /// by SIGABRT while running job 8".
        detail: String,
    },
    /// The item ran past [`PoolBuilder::timeout`]; its worker was killed
    /// and replaced.
    #[error("item {index}: timed out after {timeout:?} (attempt {attempts})")]
    Timeout {
        /// The item's index in the input.
        index: u64,
        /// Attempts made.
        attempts: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// The item or its result could not be serialised or deserialised
    /// (in the program or in the worker), or was larger than
    /// [`PoolBuilder::max_frame`].
    #[error("item {index}: {detail}")]
    Codec {
        /// The item's index in the input.
        index: u64,
        /// What failed.
        detail: String,
    },
    /// The pool stopped before the item could be run (every worker slot
    /// gave up, or workers could not be started).
    #[error("item {index} was not run: {detail}")]
    NotRun {
        /// The item's index in the input.
        index: u64,
        /// Why the pool stopped.
        detail: String,
    },
    /// The last item of an iterator whose pool stopped before the input
    /// was exhausted: items from `next` on were not read.
    #[error("the pool stopped; input items from {next} on were not read: {detail}")]
    Stopped {
        /// The index of the first input item not read.
        next: u64,
        /// Why the pool stopped.
        detail: String,
    },
    /// The pool cannot run: bad configuration, [`init`] not called, an
    /// unknown task, or used inside a pool worker. Yielded once, as the
    /// iterator's only item.
    #[error("the pool cannot run: {detail}")]
    Setup {
        /// What is wrong.
        detail: String,
    },
}

impl PoolError {
    /// The index of the item the error is about, if it is about one.
    pub fn index(&self) -> Option<u64> {
        match self {
            PoolError::Panicked { index, .. }
            | PoolError::WorkerDied { index, .. }
            | PoolError::Timeout { index, .. }
            | PoolError::Codec { index, .. }
            | PoolError::NotRun { index, .. } => Some(*index),
            PoolError::Stopped { .. } | PoolError::Setup { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_codecs_round_trip_a_value() {
        for codec in [Codec::Bincode, Codec::Json] {
            let mut buf = Vec::new();
            codec
                .encode_into(&(7u64, "x".to_string()), &mut buf)
                .unwrap();
            let back: (u64, String) = codec.decode(&buf).unwrap();
            assert_eq!(back, (7, "x".into()));
        }
    }

    #[test]
    fn only_json_decodes_self_describing_values() {
        let v = serde_json::json!({"a": [1, 2]});
        let mut buf = Vec::new();
        Codec::Json.encode_into(&v, &mut buf).unwrap();
        assert_eq!(Codec::Json.decode::<serde_json::Value>(&buf).unwrap(), v);
        let mut buf = Vec::new();
        Codec::Bincode.encode_into(&v, &mut buf).unwrap();
        assert!(Codec::Bincode.decode::<serde_json::Value>(&buf).is_err());
    }
}
