//! Connections to the server: a small pool of synchronous connections, each
//! with a *slot* number and a call counter used for replay protection, and
//! reconnection with exponential backoff.
//!
//! A call that fails on a broken connection (server restarting, network
//! cut, server still loading its AOF) is retried on a fresh connection, with
//! backoff, until the configured `reconnect_for` has passed. The retry
//! carries the same (slot, call number), so a script that had already run
//! returns its stored reply instead of running twice (see `scripts`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::redis::{Client, Connection, ErrorKind, RedisError, RedisResult, ServerErrorKind};

use crate::queue::QueueError;

/// One pooled connection and its replay identity.
pub(crate) struct Slot {
    con: Option<Connection>,
    /// Replay slot name, `<instance>:<slot number>`.
    pub name: String,
    /// Number of the last call made through this slot.
    pub calls: u64,
}

/// Connection settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnSettings {
    /// Time allowed to establish one connection.
    pub connect_timeout: Duration,
    /// Read/write timeout for ordinary (non-blocking) commands.
    pub io_timeout: Duration,
    /// How long to keep retrying a call on a broken connection.
    pub reconnect_for: Duration,
}

/// The pool.
pub(crate) struct Pool {
    client: Client,
    endpoint: String,
    idle: Mutex<Vec<Slot>>,
    next_slot: AtomicU32,
    instance: AtomicU32,
    settings: ConnSettings,
}

/// Whether an error means "the connection or the server is not usable right
/// now, try again on a new connection".
pub(crate) fn is_transient(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        return true;
    }
    match e.kind() {
        ErrorKind::Io => true,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown,
        ) => true,
        _ => {
            let s = e.to_string();
            // "BUSY Redis is busy running a script" and a server shutting down.
            s.starts_with("BUSY") || s.contains("shutdown") || s.contains("LOADING")
        }
    }
}

impl Pool {
    /// A pool for `server_url` (credentials included); `endpoint` is the
    /// redacted `host:port` used in messages. `tls_ca`: PEM root
    /// certificates to trust instead of the built-in roots (`rediss://`).
    pub fn new(
        server_url: &str,
        endpoint: String,
        settings: ConnSettings,
        tls_ca: Option<Vec<u8>>,
    ) -> RedisResult<Pool> {
        let client = match tls_ca {
            Some(pem) => Client::build_with_tls(
                server_url,
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )?,
            None => Client::open(server_url)?,
        };
        Ok(Pool {
            client,
            endpoint,
            idle: Mutex::new(Vec::new()),
            next_slot: AtomicU32::new(0),
            instance: AtomicU32::new(0),
            settings,
        })
    }

    /// Sets the instance number used in replay slot names (after INIT).
    pub fn set_instance(&self, instance: u32) {
        self.instance.store(instance, Ordering::Relaxed);
    }

    /// Opens one connection, once, within the connect timeout.
    pub fn connect(&self) -> RedisResult<Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.settings.connect_timeout)?;
        con.set_read_timeout(Some(self.settings.io_timeout))?;
        con.set_write_timeout(Some(self.settings.io_timeout))?;
        Ok(con)
    }

    fn take(&self) -> Slot {
        if let Some(s) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return s;
        }
        let n = self.next_slot.fetch_add(1, Ordering::Relaxed);
        Slot {
            con: None,
            name: format!("{}:{n}", self.instance.load(Ordering::Relaxed)),
            calls: 0,
        }
    }

    fn give_back(&self, slot: Slot) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
    }

    /// Names of the replay slots this pool created.
    pub fn slot_names(&self) -> Vec<String> {
        let inst = self.instance.load(Ordering::Relaxed);
        (0..self.next_slot.load(Ordering::Relaxed))
            .map(|n| format!("{inst}:{n}"))
            .collect()
    }

    /// Runs `f` on a pooled connection, as one logical call: `f` gets the
    /// slot name and call number to pass to a script. Transient failures are
    /// retried on a new connection with backoff (same call number) until
    /// `reconnect_for` passes. `read_timeout` overrides the I/O timeout for
    /// this call (blocking reads).
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] naming `operation` and the server when the
    /// call fails for good or the server stays unreachable.
    pub fn call<T>(
        &self,
        operation: &'static str,
        read_timeout: Option<Duration>,
        f: impl FnMut(&mut Connection, &str, u64) -> RedisResult<T>,
    ) -> Result<T, QueueError> {
        self.call_with(operation, read_timeout, true, f)
    }

    /// As [`Pool::call`]; with `retry` false a transient failure is
    /// returned at once instead of reconnecting (heartbeats, which try
    /// again at their next tick, and clean-up on drop).
    ///
    /// # Errors
    ///
    /// As for [`Pool::call`].
    pub fn call_with<T>(
        &self,
        operation: &'static str,
        read_timeout: Option<Duration>,
        retry: bool,
        mut f: impl FnMut(&mut Connection, &str, u64) -> RedisResult<T>,
    ) -> Result<T, QueueError> {
        let mut slot = self.take();
        slot.calls += 1;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let result = loop {
            let attempt = match slot.con.as_mut() {
                Some(con) => Ok(con),
                None => self.connect().map(|c| slot.con.insert(c)),
            }
            .and_then(|con| {
                if let Some(t) = read_timeout {
                    con.set_read_timeout(Some(t))?;
                }
                let r = f(con, &slot.name, slot.calls);
                if read_timeout.is_some() && r.is_ok() {
                    con.set_read_timeout(Some(self.settings.io_timeout))?;
                }
                r
            });
            match attempt {
                Ok(v) => break Ok(v),
                Err(e) if is_transient(&e) => {
                    slot.con = None;
                    if !retry || started.elapsed() + backoff > self.settings.reconnect_for {
                        break Err(QueueError::backend_caused(
                            operation,
                            format!(
                                "redis at {} unreachable for {:.1} s",
                                self.endpoint,
                                started.elapsed().as_secs_f64()
                            ),
                            e,
                        ));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    // The connection may be mid-reply: never reuse it.
                    slot.con = None;
                    break Err(QueueError::backend_caused(
                        operation,
                        format!("redis at {}", self.endpoint),
                        e,
                    ));
                }
            }
        };
        self.give_back(slot);
        result
    }
}
