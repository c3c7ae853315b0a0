//! [`PoolBuilder`] and [`Pool`]: the configuration, checked once, and the
//! pool that owns the workers kept between maps.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::persistent::Config;

use super::engine::Engine;
use super::{Codec, PoolError, CODEC_ENV, PARENT_ENV, WORKER_ENV};

/// Configures a [`Pool`]; see [`Pool::builder`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: usize,
    window: usize,
    buffer: Option<usize>,
    pub(super) retries: u32,
    pub(super) max_lost: u32,
    pub(super) timeout: Option<Duration>,
    max_frame: usize,
    max_failed_starts: u32,
    pub(super) codec: Codec,
    program: Option<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            window: 4,
            buffer: None,
            retries: 0,
            max_lost: crate::job::DEFAULT_MAX_LOST,
            timeout: None,
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            max_failed_starts: 5,
            codec: Codec::Bincode,
            program: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl PoolBuilder {
    /// Worker processes (default: the number of CPUs). Each map running
    /// at the same time as another has its own.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Items in flight per worker (default 4): larger pipelines tiny items
    /// better, 1 balances long items best.
    pub fn window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }

    /// Most items read from the input and not yet yielded, per iterator
    /// (default: `max(64, 4 × workers × window)`). Bounds the memory of the
    /// input read ahead and of [`Pool::map`]'s reorder buffer. Raised to
    /// `workers × window` if smaller, so that every worker can be fed.
    pub fn buffer(mut self, n: usize) -> Self {
        self.buffer = Some(n);
        self
    }

    /// Runs a failed item (panic, timeout) up to `n` more times before
    /// yielding its error (default 0).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Runs an item whose worker died while running it again, up to `n`
    /// times, on a fresh worker (default 3); the death after that yields
    /// [`PoolError::WorkerDied`]. Such losses do not count against
    /// [`PoolBuilder::retries`].
    pub fn max_lost(mut self, n: u32) -> Self {
        self.max_lost = n;
        self
    }

    /// Kills (and replaces) a worker whose item runs longer than this; the
    /// item fails with [`PoolError::Timeout`] (default: no timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Largest serialised item or result, in bytes (default 64 MiB);
    /// larger ones fail with [`PoolError::Codec`].
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Consecutive worker deaths without a finished item after which a
    /// worker slot gives up (default 5).
    pub fn max_failed_starts(mut self, n: u32) -> Self {
        self.max_failed_starts = n;
        self
    }

    /// How items and results are serialised (default [`Codec::Bincode`]).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The worker program (default: `std::env::current_exe()`). It must
    /// call [`init`](super::init) with the same tasks at the top of its `main`.
    pub fn program(mut self, program: impl Into<OsString>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Arguments for the worker processes (default: none). Useful when the
    /// binary needs arguments to reach the [`init`](super::init) call, e.g. a test
    /// binary that must run one test.
    pub fn worker_args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// An extra environment variable for the worker processes.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Checks the configuration and makes the pool. No process is started
    /// until a map is iterated.
    ///
    /// # Errors
    ///
    /// [`PoolError::Setup`] if `workers`, `window` or `max_failed_starts` is
    /// zero, if the program's path cannot be found, or if this process is
    /// itself a pool worker (it would start workers of its own, without
    /// end: call [`init`](super::init) first thing in `main`).
    pub fn build(self) -> Result<Pool, PoolError> {
        let setup = |detail: &str| PoolError::Setup {
            detail: detail.into(),
        };
        if let Some(err) = worker_guard() {
            return Err(err);
        }
        if self.workers == 0 || self.window == 0 {
            return Err(setup("workers and window must be at least 1"));
        }
        if self.max_failed_starts == 0 {
            return Err(setup("max_failed_starts must be at least 1"));
        }
        if self.max_frame < 64 {
            return Err(setup("max_frame must be at least 64 bytes"));
        }
        let program = match self.program.clone() {
            Some(p) => p,
            None => std::env::current_exe()
                .map_err(|e| PoolError::Setup {
                    detail: format!("cannot find this program's path to start workers: {e}"),
                })?
                .into_os_string(),
        };
        let per_round = self.workers.saturating_mul(self.window);
        let buffer = self
            .buffer
            .unwrap_or_else(|| per_round.saturating_mul(4).max(64))
            .max(per_round)
            .max(1);
        let mut command = vec![program];
        command.extend(self.args.iter().cloned());
        let mut config = Config::new(command, self.workers);
        config.window = self.window;
        config.timeout = self.timeout;
        config.max_frame = self.max_frame;
        config.max_failed_starts = self.max_failed_starts;
        config.env = self.env.clone();
        config.env.push((WORKER_ENV.into(), "1".into()));
        config
            .env
            .push((CODEC_ENV.into(), self.codec.env_value().into()));
        config
            .env
            .push((PARENT_ENV.into(), std::process::id().to_string().into()));
        Ok(Pool {
            config,
            buffer,
            builder: self,
            idle: Arc::new(Mutex::new(None)),
        })
    }
}

/// An error if this process is a pool worker.
pub(super) fn worker_guard() -> Option<PoolError> {
    std::env::var_os(WORKER_ENV).map(|_| PoolError::Setup {
        detail: format!(
            "this process is a pool worker ({WORKER_ENV} is set): a pool cannot be used inside a pool worker; \
             the program must call jobmill::pool::init first thing in main"
        ),
    })
}

/// Runs [`Task`](super::Task)s over items in worker processes; see the
/// [module docs](super).
///
/// Clones share the workers kept between maps; they are stopped and reaped
/// when the last clone (and the last iterator) is dropped.
#[derive(Clone)]
pub struct Pool {
    pub(super) builder: PoolBuilder,
    pub(super) config: Config,
    pub(super) buffer: usize,
    /// The workers of the last map that finished cleanly, kept for the
    /// next one.
    pub(super) idle: Arc<Mutex<Option<Engine>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("builder", &self.builder)
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A builder with the defaults: one worker per CPU, window 4, buffer
    /// `max(64, 4 × workers × window)`, no retries, no timeout, bincode.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The most items read ahead of the results yielded, per iterator.
    pub fn buffer(&self) -> usize {
        self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_sized_pool_is_refused() {
        assert!(matches!(
            Pool::builder().workers(0).build(),
            Err(PoolError::Setup { .. })
        ));
        assert!(matches!(
            Pool::builder().window(0).build(),
            Err(PoolError::Setup { .. })
        ));
    }

    #[test]
    fn the_buffer_can_feed_every_worker() {
        let pool = Pool::builder()
            .workers(3)
            .window(8)
            .buffer(2)
            .build()
            .unwrap();
        assert_eq!(pool.buffer(), 24);
        let pool = Pool::builder().workers(1).window(1).build().unwrap();
        assert_eq!(pool.buffer(), 64);
    }
}
