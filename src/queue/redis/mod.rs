//! The Redis Streams backend: the same [`Queue`] on a Redis (7.0 or newer)
//! or Valkey server, shared by any number of hosts.
//!
//! A queue named `NAME` is a stream `jm:{NAME}:s` with one consumer group;
//! the group's pending-entries list is the set of leases. Every state change
//! is one Lua script (module `scripts`), and the counters that decide
//! "drained" live in one hash updated by the same scripts. The protocol is
//! described key by key in `docs/REDIS.md`.
//!
//! - **Lease**: `XREADGROUP >` inside a script that records `attempt|consumer`
//!   for the entry in the lease hash. The attempt count lives in that hash and
//!   in the entry's `a` field, never in the delivery counter.
//! - **Complete / fail / release**: one `SETTLE` script; it acts only if the
//!   lease hash still names this lease *and* `XACK` returns 1, so a late ack
//!   of a lease that was taken over is [`Completion::Stale`]. A requeue is a
//!   new entry (XADD) carrying the attempts made; release requeues with the
//!   attempt given back.
//! - **Dead or hung workers**: a lease idle for the visibility timeout is
//!   taken over with `XAUTOCLAIM` and failed with [`FailReason::WorkerLost`]
//!   (attempt counted). A live worker's leases are extended by a heartbeat
//!   thread (`XCLAIM` min-idle 0 `JUSTID` of its own entries).
//! - **Waiting** never polls: a consumer with nothing to lease blocks in
//!   `XREAD` on the job stream and a small wake-up stream (close, drained,
//!   room) from the ids the lease script returned, on a pooled connection
//!   whose read timeout is raised for the call.
//! - **Backpressure**: `put` fails fast inside the script when
//!   `queued >= capacity` and blocks on the wake-up stream until a lease
//!   makes room.
//! - **Reconnection**: every call is retried with backoff on a new
//!   connection, with replay protection so it takes effect once.

mod conn;
mod scripts;
mod url;

pub use self::url::{QueueUrl, UrlError};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::redis::{Connection, Script, Value};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::job::{FailReason, Job, JobId, JobState, NewJob, RetryPolicy, Transition, WorkerId};

use self::conn::{ConnSettings, Pool};
use super::{
    Completion, Counts, Disposition, GetError, Lease, LeaseToken, PutError, Queue, QueueError,
    TryGetError,
};

/// Largest payload accepted: Redis' default `proto-max-bulk-len` (512 MiB).
pub const MAX_PAYLOAD: usize = 512 * 1024 * 1024;

/// Payloads larger than this are stored in their own key beside the stream
/// entry (`jm:{NAME}:p:<job id>`) and fetched by the worker that leases the
/// job; smaller ones travel inside the entry.
pub const INLINE_LIMIT: usize = 16 * 1024;

/// Most bytes of payload sent in one `put_many` script call.
const PUT_CHUNK_BYTES: usize = 32 * 1024 * 1024;

/// Most jobs sent in one `put_many` script call.
const PUT_CHUNK_JOBS: usize = 2000;

/// Settings of a [`RedisQueue`].
///
/// `policy`, `visibility_timeout` and `capacity` belong to the queue: the
/// client that creates it records them in Redis, and every later client
/// uses the recorded values (see [`RedisQueue::policy`]).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Attempts per job, if this client creates the queue.
    pub policy: RetryPolicy,
    /// A lease not extended for this long is taken over and its attempt
    /// counted as failed (worker lost), if this client creates the queue.
    pub visibility_timeout: Duration,
    /// Most jobs waiting to be leased before `put` blocks, if this client
    /// creates the queue.
    pub capacity: u64,
    /// Extend this client's leases automatically from a background thread
    /// (every third of the visibility timeout). Turn off only to simulate a
    /// hung worker or to call [`RedisQueue::heartbeat`] yourself.
    pub lease_heartbeat: bool,
    /// Time after which a producer that stopped refreshing its liveness key
    /// (it refreshes every third of this) is reported lost.
    pub producer_ttl: Duration,
    /// Time allowed to open one connection. An unreachable server at
    /// [`RedisQueue::connect`] fails after this.
    pub connect_timeout: Duration,
    /// Read/write timeout of ordinary commands.
    pub io_timeout: Duration,
    /// How long a call keeps reconnecting (with backoff) when the server
    /// goes away mid-run, e.g. while it restarts.
    pub reconnect_for: Duration,
    /// For `rediss://`: PEM certificates of the authorities to trust
    /// instead of the built-in web roots (a private CA). The CLI reads them
    /// from the file named by `JOBMILL_REDIS_CA`.
    pub tls_ca: Option<Vec<u8>>,
    /// Create the queue if it does not exist (`false`: fail instead; for
    /// read-only uses such as `jobmill status`, so a mistyped name is an
    /// error rather than a new empty queue).
    pub create: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            policy: RetryPolicy::default(),
            visibility_timeout: Duration::from_secs(30),
            capacity: 100_000,
            lease_heartbeat: true,
            producer_ttl: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(60),
            reconnect_for: Duration::from_secs(60),
            tls_ca: None,
            create: true,
        }
    }
}

/// Why [`RedisQueue::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is malformed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The server could not be reached or refused the setup.
    #[error("cannot open queue {url}: {error}")]
    Queue {
        /// The queue URL, password redacted.
        url: String,
        /// What failed.
        error: QueueError,
    },
}

/// What is known of a queue's producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerState {
    /// No job was ever put and the queue is open: a producer may still come.
    NotSeen,
    /// A producer refreshed its liveness key within its TTL.
    Alive,
    /// The queue is closed: no producer is expected.
    Closed,
    /// The queue is open, jobs were put, but the producer's liveness key
    /// expired: it died or was cut off without closing the queue.
    Lost,
}

/// Counts plus what is known of the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStatus {
    /// Jobs by state.
    pub counts: Counts,
    /// The producer.
    pub producer: ProducerState,
}

/// The record kept for a job that reached a final state: always for
/// failed and dead jobs (the dead letters), for done jobs when completed
/// with [`RedisQueue::complete_with`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub job: u64,
    /// Its sequence number.
    pub seq: u64,
    /// `"done"`, `"failed"` or `"dead"`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's failure, in words.
    pub reason: String,
    /// The last attempt's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the last attempt, when one did.
    pub signal: Option<i32>,
    /// The host that ran the last attempt, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How long the last attempt ran, in milliseconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// What a worker observed of an attempt, stored in the job's record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptInfo {
    /// The host that ran it.
    pub host: Option<String>,
    /// How long it ran.
    pub duration: Option<Duration>,
}

/// `put_many` stopped before putting every job.
#[derive(Debug, thiserror::Error)]
#[error("put {put} jobs of the batch, then: {source}")]
pub struct PutManyError {
    /// How many jobs (a prefix of the batch) were put.
    pub put: usize,
    /// Why the rest was not.
    pub source: PutError,
}

/// The keys of one queue, all under the hash tag `{NAME}`.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    /// m, s, l, e, d, rp, pr, r — in the order the scripts expect.
    all: [String; 8],
}

impl Keys {
    fn new(name: &str) -> Keys {
        let prefix = format!("jm:{{{name}}}:");
        let k = |s: &str| format!("{prefix}{s}");
        Keys {
            all: [
                k("m"),
                k("s"),
                k("l"),
                k("e"),
                k("d"),
                k("rp"),
                k("pr"),
                k("r"),
            ],
            prefix,
        }
    }
    fn stream(&self) -> &str {
        &self.all[1]
    }
    fn wake(&self) -> &str {
        &self.all[3]
    }
    fn dead(&self) -> &str {
        &self.all[4]
    }
    fn results(&self) -> &str {
        &self.all[7]
    }
}

/// A lease as the server records it: entry id and `attempt|consumer`.
struct Settle {
    entry: String,
    expected: String,
    action: &'static str,
    attempts: u32,
    record: String,
    /// Job id and whether its payload has its own key (used by 'd').
    job: u64,
    ext: bool,
}

/// How a script call is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Retried on a new connection, with replay protection (state changes).
    Replayed,
    /// Retried on a new connection (idempotent reads and writes).
    Plain,
    /// Tried once (heartbeats retry at their next tick; clean-up on drop).
    Once,
}

/// A lease as the server knows it, about to be failed.
struct HeldLease {
    entry: String,
    expected: String,
    job: u64,
    seq: u64,
    worker: WorkerId,
    attempt: u32,
}

/// What the lease script says when nothing was queued.
struct EmptyInfo {
    closed: bool,
    produced: u64,
    finals: u64,
    producer_seen: bool,
    producer_alive: bool,
    leased: u64,
    stream_last: String,
    wake_last: String,
}

impl EmptyInfo {
    fn drained(&self) -> bool {
        self.closed && self.finals == self.produced
    }
    fn producer_lost(&self) -> bool {
        !self.closed
            && self.producer_seen
            && !self.producer_alive
            && self.leased == 0
            && self.finals == self.produced
    }
}

struct Inner {
    url: QueueUrl,
    keys: Keys,
    pool: Pool,
    instance: u64,
    /// The queue's settings as last seen (every lease reply carries them).
    max_attempts: AtomicU32,
    visibility_ms: AtomicU64,
    capacity: AtomicU64,
    producer_ttl: Duration,
    lease_heartbeat: bool,
    io_timeout: Duration,
    /// Leases this client holds, for the heartbeat: token → `attempt|consumer`.
    held: Mutex<HashMap<LeaseToken, String>>,
    /// Whether this client put jobs and has not closed the queue.
    producing: AtomicBool,
    /// XAUTOCLAIM cursor and the time of the last reclaim pass.
    reclaim: Mutex<(String, Option<Instant>)>,
}

/// A [`Queue`] on Redis Streams. See the module documentation.
///
/// Cloning is not offered; share it behind an `Arc` (all methods take
/// `&self` and are thread-safe: each call takes a pooled connection).
pub struct RedisQueue {
    inner: Arc<Inner>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    heartbeat: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("url", &self.inner.url)
            .field("instance", &self.inner.instance)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn protocol(operation: &'static str, what: impl std::fmt::Display) -> QueueError {
    QueueError::Backend {
        operation,
        detail: format!("unexpected reply from redis: {what}"),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn array(operation: &'static str, v: Value) -> Result<Vec<Value>, QueueError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(protocol(operation, format!("{other:?}"))),
    }
}

fn token_of(entry: &str) -> Option<LeaseToken> {
    let (ms, seq) = entry.split_once('-')?;
    Some(LeaseToken {
        hi: ms.parse().ok()?,
        lo: seq.parse().ok()?,
    })
}

fn entry_of(token: LeaseToken) -> String {
    format!("{}-{}", token.hi, token.lo)
}

impl Inner {
    /// Runs `script` with the queue's keys, the prefix and this call's
    /// replay identity, then `args`.
    fn run(
        &self,
        operation: &'static str,
        script: &Script,
        mode: Call,
        read_timeout: Option<Duration>,
        args: &dyn Fn(&mut ::redis::ScriptInvocation<'_>),
    ) -> Result<Value, QueueError> {
        let replay = mode == Call::Replayed;
        self.pool.call_with(
            operation,
            read_timeout,
            mode != Call::Once,
            |con: &mut Connection, slot, n| {
                let mut inv = script.prepare_invoke();
                for k in &self.keys.all {
                    inv.key(k);
                }
                inv.arg(&self.keys.prefix);
                if replay {
                    inv.arg(slot).arg(n);
                } else {
                    inv.arg("").arg(0);
                }
                args(&mut inv);
                inv.invoke::<Value>(con)
            },
        )
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.load(Ordering::Relaxed).max(1),
        }
    }

    fn visibility(&self) -> Duration {
        Duration::from_millis(self.visibility_ms.load(Ordering::Relaxed).max(1))
    }

    /// Takes the settings from a lease reply.
    fn follow_settings(&self, max_attempts: Option<i64>, visibility_ms: Option<i64>) {
        if let Some(m) = max_attempts.filter(|m| *m > 0) {
            self.max_attempts.store(m as u32, Ordering::Relaxed);
        }
        if let Some(v) = visibility_ms.filter(|v| *v > 0) {
            self.visibility_ms.store(v as u64, Ordering::Relaxed);
        }
    }

    fn consumer(&self, worker: WorkerId) -> String {
        format!("{}.{}", self.instance, worker.0)
    }

    fn expected(&self, lease: &Lease) -> String {
        format!("{}|{}", lease.job.attempts, self.consumer(lease.worker))
    }

    /// One lease attempt: up to `max` new entries, or what the queue looks
    /// like when none is queued.
    fn lease_once(
        &self,
        worker: WorkerId,
        max: usize,
    ) -> Result<Result<Vec<Lease>, EmptyInfo>, QueueError> {
        const OP: &str = "lease";
        let consumer = self.consumer(worker);
        let v = self.run(
            OP,
            &scripts::scripts().lease,
            Call::Replayed,
            None,
            &|inv| {
                inv.arg(&consumer).arg(max.max(1));
            },
        )?;
        let mut a = array(OP, v)?.into_iter();
        let status = a.next().as_ref().and_then(int);
        let max_attempts = a.next().as_ref().and_then(int);
        let visibility_ms = a.next().as_ref().and_then(int);
        self.follow_settings(max_attempts, visibility_ms);
        match status {
            Some(1) => {
                let rest: Vec<Value> = a.collect();
                if rest.len() % 5 != 0 {
                    return Err(protocol(OP, "lease entries not in fives"));
                }
                let mut leases = Vec::with_capacity(rest.len() / 5);
                let mut it = rest.into_iter();
                while let (Some(id), Some(j), Some(s), Some(att), Some(p)) =
                    (it.next(), it.next(), it.next(), it.next(), it.next())
                {
                    let bad = || protocol(OP, "malformed lease entry");
                    let entry = text(&id).ok_or_else(bad)?;
                    let token = token_of(&entry).ok_or_else(bad)?;
                    let job_id = int(&j).ok_or_else(bad)? as u64;
                    let seq = int(&s).ok_or_else(bad)? as u64;
                    let recorded = int(&att).ok_or_else(bad)? as u32;
                    // The script counted the attempt; the state machine must agree.
                    let next = JobState::Queued {
                        attempts: recorded.saturating_sub(1),
                    }
                    .apply(Transition::Lease { worker }, self.policy())
                    .map_err(|e| protocol(OP, e))?;
                    let JobState::Leased { attempt, .. } = next else {
                        return Err(protocol(OP, "lease did not lead to Leased"));
                    };
                    if attempt != recorded || recorded == 0 {
                        return Err(protocol(OP, "attempt count disagrees"));
                    }
                    let payload = match p {
                        Value::BulkString(b) => Bytes::from(b),
                        Value::Nil => Bytes::new(),
                        other => return Err(protocol(OP, format!("payload {other:?}"))),
                    };
                    let lease = Lease {
                        job: Job {
                            id: JobId(job_id),
                            seq,
                            payload,
                            attempts: attempt,
                        },
                        worker,
                        token,
                    };
                    if self.lease_heartbeat {
                        lock(&self.held).insert(token, self.expected(&lease));
                    }
                    leases.push(lease);
                }
                Ok(Ok(leases))
            }
            Some(0) => {
                let v: Vec<Value> = a.collect();
                if v.len() != 10 {
                    return Err(protocol(OP, "empty reply has wrong length"));
                }
                let n = |i: usize| int(&v[i]).unwrap_or(0) as u64;
                Ok(Err(EmptyInfo {
                    closed: n(0) == 1,
                    produced: n(1),
                    finals: n(2) + n(3) + n(4),
                    producer_seen: n(5) == 1,
                    producer_alive: n(6) == 1,
                    leased: n(7),
                    stream_last: text(&v[8]).unwrap_or_else(|| "0-0".into()),
                    wake_last: text(&v[9]).unwrap_or_else(|| "0-0".into()),
                }))
            }
            _ => Err(protocol(OP, "lease status")),
        }
    }

    /// Blocks until the job stream or the wake-up stream gets an entry
    /// after the given ids, or `wait` passes.
    fn wait_wake(
        &self,
        stream_last: Option<&str>,
        wake_last: &str,
        wait: Duration,
    ) -> Result<(), QueueError> {
        let ms = wait.as_millis().clamp(1, u64::MAX as u128) as u64;
        let timeout = wait + self.io_timeout;
        self.pool.call("wait", Some(timeout), |con, _, _| {
            let mut cmd = ::redis::cmd("XREAD");
            cmd.arg("COUNT").arg(1).arg("BLOCK").arg(ms).arg("STREAMS");
            match stream_last {
                Some(last) => {
                    cmd.arg(self.keys.stream())
                        .arg(self.keys.wake())
                        .arg(last)
                        .arg(wake_last);
                }
                None => {
                    cmd.arg(self.keys.wake()).arg(wake_last);
                }
            }
            cmd.query::<Value>(con).map(|_| ())
        })
    }

    /// Resolves leases in one script; `true` for each one that was current.
    fn settle(&self, items: &[Settle]) -> Result<Vec<bool>, QueueError> {
        const OP: &str = "settle";
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let v = self.run(
            OP,
            &scripts::scripts().settle,
            Call::Replayed,
            None,
            &|inv| {
                inv.arg(items.len());
                for s in items {
                    inv.arg(&s.entry)
                        .arg(&s.expected)
                        .arg(s.action)
                        .arg(s.attempts)
                        .arg(&s.record)
                        .arg(s.job)
                        .arg(if s.ext { "1" } else { "0" });
                }
            },
        )?;
        let out: Vec<bool> = array(OP, v)?.iter().map(|x| int(x) == Some(1)).collect();
        if out.len() != items.len() {
            return Err(protocol(OP, "settle reply length"));
        }
        if self.lease_heartbeat {
            let mut held = lock(&self.held);
            for s in items {
                if let Some(t) = token_of(&s.entry) {
                    held.remove(&t);
                }
            }
        }
        Ok(out)
    }

    /// The settle item for a failed attempt, and the disposition it gives.
    fn fail_item(
        &self,
        held: HeldLease,
        reason: FailReason,
        info: &AttemptInfo,
    ) -> Result<(Settle, Disposition), QueueError> {
        let HeldLease {
            entry,
            expected,
            job,
            seq,
            worker,
            attempt,
        } = held;
        let next = JobState::Leased { worker, attempt }
            .apply(
                Transition::Fail {
                    reason: reason.clone(),
                },
                self.policy(),
            )
            .map_err(|e| protocol("fail", e))?;
        let (action, attempts, record) = match &next {
            JobState::Queued { attempts } => ("q", *attempts, String::new()),
            JobState::Failed { attempts, .. } | JobState::Dead { attempts, .. } => {
                let (exit_code, signal) = match &reason {
                    FailReason::Exit { code } => (Some(*code), None),
                    FailReason::Signal { signal } => (None, Some(*signal)),
                    _ => (None, None),
                };
                let rec = JobRecord {
                    job,
                    seq,
                    state: next.name().to_string(),
                    attempts: *attempts,
                    reason: reason.to_string(),
                    exit_code,
                    signal,
                    host: info.host.clone(),
                    duration_ms: info.duration.map(|d| d.as_millis() as u64),
                };
                let json = serde_json::to_string(&rec).map_err(|e| protocol("fail", e))?;
                let action = if matches!(next, JobState::Failed { .. }) {
                    "f"
                } else {
                    "x"
                };
                (action, *attempts, json)
            }
            other => return Err(protocol("fail", format!("fail led to {other:?}"))),
        };
        let disposition = match next {
            JobState::Queued { attempts } => Disposition::Requeued { attempts },
            fin => Disposition::Final(fin),
        };
        Ok((
            Settle {
                entry,
                expected,
                action,
                attempts,
                record,
                job,
                ext: false,
            },
            disposition,
        ))
    }

    fn reclaim_interval(&self) -> Duration {
        (self.visibility() / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// Takes over leases idle past the visibility timeout and fails each
    /// with `WorkerLost`, if a reclaim pass is due (or `force`). Returns how
    /// many were taken over.
    fn reclaim(&self, force: bool) -> Result<usize, QueueError> {
        const OP: &str = "reclaim";
        let cursor = {
            let mut r = lock(&self.reclaim);
            let due = match r.1 {
                None => true,
                Some(t) => t.elapsed() >= self.reclaim_interval(),
            };
            if !due && !force {
                return Ok(0);
            }
            r.1 = Some(Instant::now());
            r.0.clone()
        };
        let consumer = format!("{}.reclaim", self.instance);
        let vis_ms = self.visibility().as_millis() as u64;
        let v = self.run(
            OP,
            &scripts::scripts().reclaim,
            Call::Replayed,
            None,
            &|inv| {
                inv.arg(&consumer).arg(vis_ms).arg(100).arg(&cursor);
            },
        )?;
        let a = array(OP, v)?;
        let next = a
            .first()
            .and_then(text)
            .ok_or_else(|| protocol(OP, "cursor"))?;
        lock(&self.reclaim).0 = next;
        let rest = &a[1..];
        if rest.len() % 5 != 0 {
            return Err(protocol(OP, "reclaim entries not in fives"));
        }
        let mut items = Vec::new();
        for c in rest.chunks(5) {
            let bad = || protocol(OP, "malformed reclaim entry");
            let entry = text(&c[0]).ok_or_else(bad)?;
            let job = int(&c[1]).ok_or_else(bad)? as u64;
            let seq = int(&c[2]).ok_or_else(bad)? as u64;
            let attempt = int(&c[3]).ok_or_else(bad)? as u32;
            let owner = text(&c[4]).unwrap_or_default();
            let reason = FailReason::WorkerLost {
                detail: format!(
                    "consumer {owner} held the lease for {} ms without a heartbeat",
                    vis_ms
                ),
            };
            let expected = format!("{attempt}|{consumer}");
            // Any worker id serves: the reclaimer's consumer is named directly.
            let held = HeldLease {
                entry,
                expected,
                job,
                seq,
                worker: WorkerId(0),
                attempt: attempt.max(1),
            };
            let (item, _) = self.fail_item(held, reason, &AttemptInfo::default())?;
            items.push(item);
        }
        let n = items.len();
        self.settle(&items)?;
        Ok(n)
    }

    fn status(&self) -> Result<QueueStatus, QueueError> {
        const OP: &str = "counts";
        let v = self.run(OP, &scripts::scripts().counts, Call::Plain, None, &|_| {})?;
        let a = array(OP, v)?;
        if a.len() != 9 {
            return Err(protocol(OP, "counts reply length"));
        }
        let n = |i: usize| int(&a[i]).unwrap_or(0) as u64;
        let leased = n(6);
        let unfinished = n(1).saturating_sub(n(2) + n(3) + n(4));
        let counts = Counts {
            produced: n(1),
            queued: unfinished.saturating_sub(leased),
            leased,
            done: n(2),
            failed: n(3),
            dead: n(4),
            closed: n(0) == 1,
        };
        let producer = if counts.closed {
            ProducerState::Closed
        } else if n(7) == 1 {
            ProducerState::Alive
        } else if n(8) == 1 {
            ProducerState::Lost
        } else {
            ProducerState::NotSeen
        };
        Ok(QueueStatus { counts, producer })
    }

    /// One heartbeat round: extends the held leases and refreshes the
    /// producer key.
    fn beat(&self) -> Result<(), QueueError> {
        let held: Vec<(LeaseToken, String)> = lock(&self.held)
            .iter()
            .map(|(t, e)| (*t, e.clone()))
            .collect();
        for chunk in held.chunks(1000) {
            let v = self.run(
                "heartbeat",
                &scripts::scripts().heartbeat,
                Call::Once,
                None,
                &|inv| {
                    inv.arg(chunk.len());
                    for (t, e) in chunk {
                        inv.arg(entry_of(*t)).arg(e);
                    }
                },
            )?;
            let a = array("heartbeat", v)?;
            let mut map = lock(&self.held);
            for ((t, e), ok) in chunk.iter().zip(a.iter()) {
                if int(ok) != Some(1) && map.get(t) == Some(e) {
                    map.remove(t);
                }
            }
        }
        if self.producing.load(Ordering::Relaxed) {
            let ttl = self.producer_ttl.as_millis() as u64;
            let v = self.run(
                "producer heartbeat",
                &scripts::scripts().producer_alive,
                Call::Once,
                None,
                &|inv| {
                    inv.arg(ttl);
                },
            )?;
            if int(&v) == Some(0) {
                self.producing.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn put_chunk(&self, jobs: &[NewJob]) -> Result<PutChunk, QueueError> {
        const OP: &str = "put";
        let ttl = self.producer_ttl.as_millis() as u64;
        let v = self.run(OP, &scripts::scripts().put, Call::Replayed, None, &|inv| {
            inv.arg(ttl).arg(jobs.len());
            for j in jobs {
                inv.arg(j.seq)
                    .arg(j.attempts)
                    .arg(if j.payload.len() > INLINE_LIMIT {
                        "1"
                    } else {
                        "0"
                    })
                    .arg(&j.payload[..]);
            }
        })?;
        let a = array(OP, v)?;
        match a.first().and_then(int) {
            Some(0) => Ok(PutChunk::Closed),
            Some(-1) => Ok(PutChunk::Full(
                a.get(1).and_then(text).unwrap_or_else(|| "0-0".into()),
            )),
            Some(n) if n > 0 => {
                let first = a
                    .get(1)
                    .and_then(int)
                    .ok_or_else(|| protocol(OP, "first id"))?;
                self.producing.store(true, Ordering::Relaxed);
                Ok(PutChunk::Put(n as usize, first as u64))
            }
            _ => Err(protocol(OP, "put status")),
        }
    }
}

enum PutChunk {
    Closed,
    Full(String),
    Put(usize, u64),
}

impl RedisQueue {
    /// Connects to the queue named by `url`, creating it if it does not
    /// exist (with `config`'s policy, visibility timeout and capacity).
    ///
    /// # Errors
    ///
    /// [`OpenError::Url`] for a malformed URL; [`OpenError::Queue`] when the
    /// server cannot be reached within `config.connect_timeout`, refuses
    /// authentication, or fails the setup script.
    pub fn connect(url: &str, config: RedisConfig) -> Result<RedisQueue, OpenError> {
        let url = QueueUrl::parse(url)?;
        let shown = url.to_string();
        let fail = |detail: String| OpenError::Queue {
            url: shown.clone(),
            error: QueueError::Backend {
                operation: "connect",
                detail,
            },
        };
        let settings = ConnSettings {
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            reconnect_for: config.reconnect_for,
        };
        let pool = Pool::new(
            &url.server_url(),
            url.endpoint(),
            settings,
            config.tls_ca.clone(),
        )
        .map_err(|e| fail(format!("bad server address: {e}")))?;
        let keys = Keys::new(&url.name);
        // The setup runs on its own connection, before any pooled slot gets
        // a replay name (which needs the instance number this returns).
        let mut con = pool.connect().map_err(|e| {
            let waited = if e.is_timeout() {
                format!(
                    " (no answer within {:.1} s)",
                    config.connect_timeout.as_secs_f64()
                )
            } else {
                String::new()
            };
            fail(format!(
                "redis at {} is unreachable: {e}{waited}",
                url.endpoint()
            ))
        })?;
        let mut inv = scripts::scripts().init.prepare_invoke();
        for k in &keys.all {
            inv.key(k);
        }
        inv.arg(&keys.prefix)
            .arg("")
            .arg(0)
            .arg(config.policy.max_attempts.max(1))
            .arg(config.visibility_timeout.as_millis().max(1) as u64)
            .arg(config.capacity.max(1))
            .arg(if config.create { "1" } else { "0" });
        let v: Vec<i64> = inv
            .invoke(&mut con)
            .map_err(|e| fail(format!("setup script failed on {}: {e}", url.endpoint())))?;
        if v[..] == [0] {
            return Err(fail(format!(
                "there is no queue named {:?} on {}",
                url.name,
                url.endpoint()
            )));
        }
        let [instance, max_attempts, vis_ms, capacity] = v[..] else {
            return Err(fail("setup script returned a malformed reply".into()));
        };
        drop(con);
        pool.set_instance(instance as u32);
        let inner = Arc::new(Inner {
            keys,
            pool,
            instance: instance as u64,
            max_attempts: AtomicU32::new(max_attempts.max(1) as u32),
            visibility_ms: AtomicU64::new(vis_ms.max(1) as u64),
            capacity: AtomicU64::new(capacity.max(1) as u64),
            producer_ttl: config.producer_ttl.max(Duration::from_millis(30)),
            lease_heartbeat: config.lease_heartbeat,
            io_timeout: config.io_timeout,
            held: Mutex::new(HashMap::new()),
            producing: AtomicBool::new(false),
            reclaim: Mutex::new(("0-0".to_string(), None)),
            url,
        });
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let heartbeat = {
            let inner = Arc::clone(&inner);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("jobmill-redis-heartbeat-{}", inner.instance))
                .spawn(move || heartbeat_loop(&inner, &stop))
                .map_err(|e| fail(format!("cannot start the heartbeat thread: {e}")))?
        };
        Ok(RedisQueue {
            inner,
            stop,
            heartbeat: Some(heartbeat),
        })
    }

    /// The queue's URL (password redacted when displayed).
    pub fn url(&self) -> &QueueUrl {
        &self.inner.url
    }

    /// The retry policy recorded for the queue (by whoever created it, or
    /// the last [`RedisQueue::set_settings`]), as last seen.
    pub fn policy(&self) -> RetryPolicy {
        self.inner.policy()
    }

    /// The visibility timeout recorded for the queue, as last seen.
    pub fn visibility_timeout(&self) -> Duration {
        self.inner.visibility()
    }

    /// Records new settings for the queue, overriding those of its creator
    /// (used by `jobmill submit`, whose options are authoritative even when
    /// a worker created the queue first). Other clients follow on their
    /// next lease; a job's attempts are judged by the policy in force when
    /// its attempt is resolved.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    pub fn set_settings(
        &self,
        policy: RetryPolicy,
        visibility_timeout: Duration,
        capacity: u64,
    ) -> Result<(), QueueError> {
        let key = &self.inner.keys.all[0];
        let max = policy.max_attempts.max(1);
        let vis = visibility_timeout.as_millis().max(1) as u64;
        self.inner.pool.call("set settings", None, |con, _, _| {
            ::redis::cmd("HSET")
                .arg(key)
                .arg("max_attempts")
                .arg(max)
                .arg("visibility_ms")
                .arg(vis)
                .arg("capacity")
                .arg(capacity.max(1))
                .query::<i64>(con)
        })?;
        self.inner
            .follow_settings(Some(i64::from(max)), Some(vis as i64));
        self.inner
            .capacity
            .store(capacity.max(1), Ordering::Relaxed);
        Ok(())
    }

    /// The capacity recorded for the queue, as seen at connect or set by
    /// [`RedisQueue::set_settings`].
    pub fn capacity(&self) -> u64 {
        self.inner.capacity.load(Ordering::Relaxed)
    }

    /// Counts and producer state, from one atomic snapshot.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] when the server cannot be reached.
    pub fn status(&self) -> Result<QueueStatus, QueueError> {
        self.inner.status()
    }

    /// Puts jobs in order, in as few round trips as the capacity allows,
    /// blocking while the queue is full. Returns the ids given.
    ///
    /// # Errors
    ///
    /// [`PutManyError`] with how many were put before the queue was closed,
    /// a payload was too large, or the server failed.
    pub fn put_many(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, PutManyError> {
        let mut ids = Vec::with_capacity(jobs.len());
        let mut i = 0;
        while i < jobs.len() {
            let mut end = i;
            let mut bytes = 0;
            while end < jobs.len() && end - i < PUT_CHUNK_JOBS {
                let size = jobs[end].payload.len();
                if size > MAX_PAYLOAD {
                    return Err(PutManyError {
                        put: ids.len(),
                        source: PutError::Backend(QueueError::TooLarge {
                            size,
                            limit: MAX_PAYLOAD,
                        }),
                    });
                }
                if end > i && bytes + size > PUT_CHUNK_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let err = |source: PutError| PutManyError {
                put: ids.len(),
                source,
            };
            match self.inner.put_chunk(&jobs[i..end]) {
                Ok(PutChunk::Put(n, first)) => {
                    ids.extend((0..n as u64).map(|k| JobId(first + k)));
                    i += n;
                }
                Ok(PutChunk::Closed) => return Err(err(PutError::Closed(jobs[i].clone()))),
                Ok(PutChunk::Full(wake)) => {
                    self.inner
                        .wait_wake(None, &wake, Duration::from_secs(1))
                        .map_err(|e| err(PutError::Backend(e)))?;
                }
                Err(e) => return Err(err(PutError::Backend(e))),
            }
        }
        Ok(ids)
    }

    /// Leases up to `max` jobs for `worker` in one round trip, waiting up to
    /// `timeout` (`None`: forever) for at least one.
    ///
    /// # Errors
    ///
    /// As [`Queue::get`]; additionally [`QueueError::ProducerLost`] (inside
    /// [`GetError::Backend`]) when nothing is left to do, the queue is
    /// open, and its producer's liveness key expired.
    pub fn get_many(
        &self,
        worker: WorkerId,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Lease>, GetError> {
        let inner = &self.inner;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            inner.reclaim(false)?;
            let info = match inner.lease_once(worker, max)? {
                Ok(leases) => return Ok(leases),
                Err(info) => info,
            };
            if info.drained() {
                return Err(GetError::Closed);
            }
            if info.producer_lost() {
                return Err(GetError::Backend(self.producer_lost_error()));
            }
            if info.leased > 0 && inner.reclaim(false)? > 0 {
                continue;
            }
            let mut wait = inner.reclaim_interval();
            if !info.closed && info.leased == 0 {
                // Nothing can idle out; wake for the producer's liveness.
                wait = wait.max(inner.producer_ttl / 2);
            }
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return Err(GetError::Timeout);
                }
                wait = wait.min(d - now);
            }
            inner.wait_wake(Some(&info.stream_last), &info.wake_last, wait)?;
        }
    }

    /// Marks many leases done in one round trip (no result records).
    ///
    /// # Errors
    ///
    /// Only backend failures.
    pub fn complete_many(&self, leases: &[Lease]) -> Result<Vec<Completion>, QueueError> {
        self.complete_records(leases, None)
    }

    /// Marks a lease done and stores the job's result record (see
    /// [`RedisQueue::results`]) in the same step.
    ///
    /// # Errors
    ///
    /// Only backend failures. A stale lease gives `Ok(Completion::Stale)`.
    pub fn complete_with(
        &self,
        lease: &Lease,
        info: &AttemptInfo,
    ) -> Result<Completion, QueueError> {
        self.complete_records(std::slice::from_ref(lease), Some(info))?
            .pop()
            .ok_or_else(|| protocol("complete", "no reply"))
    }

    /// As [`Queue::fail`], storing `info` in the record kept if the job
    /// ends failed or dead.
    ///
    /// # Errors
    ///
    /// Only backend failures. A stale lease gives `Ok(Disposition::Stale)`.
    pub fn fail_with(
        &self,
        lease: &Lease,
        reason: FailReason,
        info: &AttemptInfo,
    ) -> Result<Disposition, QueueError> {
        let inner = &self.inner;
        let held = HeldLease {
            entry: entry_of(lease.token),
            expected: inner.expected(lease),
            job: lease.job.id.0,
            seq: lease.job.seq,
            worker: lease.worker,
            attempt: lease.job.attempts,
        };
        let (item, disposition) = inner.fail_item(held, reason, info)?;
        Ok(if inner.settle(&[item])?.first() == Some(&true) {
            disposition
        } else {
            Disposition::Stale
        })
    }

    fn complete_records(
        &self,
        leases: &[Lease],
        info: Option<&AttemptInfo>,
    ) -> Result<Vec<Completion>, QueueError> {
        let mut items = Vec::with_capacity(leases.len());
        for lease in leases {
            let record = match info {
                None => String::new(),
                Some(info) => serde_json::to_string(&JobRecord {
                    job: lease.job.id.0,
                    seq: lease.job.seq,
                    state: "done".into(),
                    attempts: lease.job.attempts,
                    reason: String::new(),
                    exit_code: Some(0),
                    signal: None,
                    host: info.host.clone(),
                    duration_ms: info.duration.map(|d| d.as_millis() as u64),
                })
                .map_err(|e| protocol("complete", e))?,
            };
            JobState::Leased {
                worker: lease.worker,
                attempt: lease.job.attempts,
            }
            .apply(Transition::Complete, self.inner.policy())
            .map_err(|e| protocol("complete", e))?;
            items.push(Settle {
                entry: entry_of(lease.token),
                expected: self.inner.expected(lease),
                action: "d",
                attempts: lease.job.attempts,
                record,
                job: lease.job.id.0,
                ext: lease.job.payload.len() > INLINE_LIMIT,
            });
        }
        Ok(self
            .inner
            .settle(&items)?
            .into_iter()
            .map(|ok| {
                if ok {
                    Completion::Recorded
                } else {
                    Completion::Stale
                }
            })
            .collect())
    }

    /// Extends `leases` now; `true` for each one still held. (A background
    /// thread does this for every held lease when
    /// [`RedisConfig::lease_heartbeat`] is on.)
    ///
    /// # Errors
    ///
    /// Only backend failures.
    pub fn heartbeat(&self, leases: &[Lease]) -> Result<Vec<bool>, QueueError> {
        let v = self.inner.run(
            "heartbeat",
            &scripts::scripts().heartbeat,
            Call::Plain,
            None,
            &|inv| {
                inv.arg(leases.len());
                for l in leases {
                    inv.arg(entry_of(l.token)).arg(self.inner.expected(l));
                }
            },
        )?;
        Ok(array("heartbeat", v)?
            .iter()
            .map(|x| int(x) == Some(1))
            .collect())
    }

    /// Ends this client's production without closing the queue, on
    /// purpose: workers keep waiting for a later producer (another
    /// `submit`) instead of reporting this one lost.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    pub fn leave_open(&self) -> Result<(), QueueError> {
        self.inner.producing.store(false, Ordering::Relaxed);
        self.inner.run(
            "leave open",
            &scripts::scripts().leave_open,
            Call::Plain,
            None,
            &|_| {},
        )?;
        Ok(())
    }

    /// Takes over leases idle past the visibility timeout now (normally done
    /// by `get` when due). Returns how many were taken over.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    pub fn reclaim_idle(&self) -> Result<usize, QueueError> {
        self.inner.reclaim(true)
    }

    /// The dead-letter records (jobs that ended failed or dead), by job id.
    ///
    /// # Errors
    ///
    /// Backend failures, or a record that is not valid JSON.
    pub fn dead_letters(&self) -> Result<Vec<JobRecord>, QueueError> {
        self.records("dead letters", self.inner.keys.dead())
    }

    /// The result records of jobs that ended: every failed or dead job, and
    /// done jobs completed with [`RedisQueue::complete_with`]; by sequence
    /// number.
    ///
    /// # Errors
    ///
    /// Backend failures, or a record that is not valid JSON.
    pub fn results(&self) -> Result<Vec<JobRecord>, QueueError> {
        self.records("results", self.inner.keys.results())
    }

    fn records(&self, operation: &'static str, key: &str) -> Result<Vec<JobRecord>, QueueError> {
        let map: HashMap<String, String> = self.inner.pool.call(operation, None, |con, _, _| {
            ::redis::cmd("HGETALL").arg(key).query(con)
        })?;
        let mut out = Vec::with_capacity(map.len());
        for (_, json) in map {
            out.push(serde_json::from_str::<JobRecord>(&json).map_err(|e| protocol(operation, e))?);
        }
        out.sort_by_key(|d| (d.seq, d.job));
        Ok(out)
    }

    /// Deletes every key of the queue. Only for a queue nobody uses any
    /// more: leases held elsewhere become stale and their jobs are gone.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    pub fn destroy(&self) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        let pattern = format!("{}p:*", keys.prefix);
        self.inner.pool.call("destroy", None, |con, _, _| {
            // SCAN, not KEYS: never block a busy server.
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) = ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(con)?;
                if !found.is_empty() {
                    ::redis::cmd("DEL").arg(&found).query::<i64>(con)?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            ::redis::cmd("DEL")
                .arg(&keys.all[..])
                .query::<i64>(con)
                .map(|_| ())
        })
    }

    fn producer_lost_error(&self) -> QueueError {
        QueueError::ProducerLost {
            queue: self.inner.url.to_string(),
            ttl: self.inner.producer_ttl,
        }
    }
}

fn heartbeat_loop(inner: &Inner, stop: &(Mutex<bool>, Condvar)) {
    let mut stopped = lock(&stop.0);
    loop {
        let every = (inner.visibility() / 3)
            .min(inner.producer_ttl / 3)
            .max(Duration::from_millis(10));
        // Checks the flag before sleeping too: a drop that came before this
        // thread first took the lock must not cost a whole tick.
        let (guard, _) = stop
            .1
            .wait_timeout_while(stopped, every, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        stopped = guard;
        if *stopped {
            return;
        }
        drop(stopped);
        // A failed round is not retried: the next tick tries again, and a
        // lease only idles out after three missed rounds.
        let _ = inner.beat();
        stopped = lock(&stop.0);
    }
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        // Best effort: forget this client's replay slots.
        let names = self.inner.pool.slot_names();
        if !names.is_empty() {
            let _ = self.inner.run(
                "forget",
                &scripts::scripts().forget,
                Call::Once,
                None,
                &|inv| {
                    for n in &names {
                        inv.arg(n);
                    }
                },
            );
        }
    }
}

impl Queue for RedisQueue {
    fn put(&self, job: NewJob) -> Result<JobId, PutError> {
        match self.put_many(std::slice::from_ref(&job)) {
            Ok(ids) => ids
                .into_iter()
                .next()
                .ok_or_else(|| PutError::Backend(protocol("put", "no id"))),
            Err(e) => Err(match e.source {
                PutError::Closed(_) => PutError::Closed(job),
                other => other,
            }),
        }
    }

    fn get(&self, worker: WorkerId, timeout: Option<Duration>) -> Result<Lease, GetError> {
        let mut v = self.get_many(worker, 1, timeout)?;
        v.pop()
            .ok_or_else(|| GetError::Backend(protocol("lease", "no entry")))
    }

    fn try_get(&self, worker: WorkerId) -> Result<Lease, TryGetError> {
        let inner = &self.inner;
        for _ in 0..2 {
            inner.reclaim(false)?;
            match inner.lease_once(worker, 1)? {
                Ok(mut v) => {
                    return v
                        .pop()
                        .ok_or_else(|| TryGetError::Backend(protocol("lease", "no entry")))
                }
                Err(info) => {
                    if info.drained() {
                        return Err(TryGetError::Closed);
                    }
                    if info.producer_lost() {
                        return Err(TryGetError::Backend(self.producer_lost_error()));
                    }
                    if info.leased == 0 || inner.reclaim(false)? == 0 {
                        break;
                    }
                }
            }
        }
        Err(TryGetError::Empty)
    }

    fn complete(&self, lease: &Lease) -> Result<Completion, QueueError> {
        self.complete_many(std::slice::from_ref(lease))?
            .pop()
            .ok_or_else(|| protocol("complete", "no reply"))
    }

    fn fail(&self, lease: &Lease, reason: FailReason) -> Result<Disposition, QueueError> {
        self.fail_with(lease, reason, &AttemptInfo::default())
    }

    fn release(&self, lease: &Lease) -> Result<(), QueueError> {
        let inner = &self.inner;
        let next = JobState::Leased {
            worker: lease.worker,
            attempt: lease.job.attempts,
        }
        .apply(Transition::Release, inner.policy())
        .map_err(|e| protocol("release", e))?;
        let JobState::Queued { attempts } = next else {
            return Err(protocol("release", "release did not lead to Queued"));
        };
        inner.settle(&[Settle {
            entry: entry_of(lease.token),
            expected: inner.expected(lease),
            action: "q",
            attempts,
            record: String::new(),
            job: lease.job.id.0,
            ext: false,
        }])?;
        Ok(())
    }
    fn worker_lost(
        &self,
        worker: WorkerId,
        detail: &str,
    ) -> Result<Vec<(JobId, Disposition)>, QueueError> {
        const OP: &str = "worker lost";
        let inner = &self.inner;
        let consumer = inner.consumer(worker);
        let v = inner.run(OP, &scripts::scripts().held, Call::Plain, None, &|inv| {
            inv.arg(&consumer);
        })?;
        let a = array(OP, v)?;
        if a.len() % 4 != 0 {
            return Err(protocol(OP, "held entries not in fours"));
        }
        let mut items = Vec::new();
        let mut outcomes = Vec::new();
        for c in a.chunks(4) {
            let bad = || protocol(OP, "malformed held entry");
            let entry = text(&c[0]).ok_or_else(bad)?;
            let job = int(&c[1]).ok_or_else(bad)? as u64;
            let seq = int(&c[2]).ok_or_else(bad)? as u64;
            let held = text(&c[3]).ok_or_else(bad)?;
            let attempt: u32 = held
                .split_once('|')
                .and_then(|(a, _)| a.parse().ok())
                .ok_or_else(bad)?;
            let reason = FailReason::WorkerLost {
                detail: detail.to_string(),
            };
            let held = HeldLease {
                entry,
                expected: held,
                job,
                seq,
                worker,
                attempt,
            };
            let (item, d) = inner.fail_item(held, reason, &AttemptInfo::default())?;
            items.push(item);
            outcomes.push((JobId(job), d));
        }
        let applied = inner.settle(&items)?;
        Ok(outcomes
            .into_iter()
            .zip(applied)
            .map(|((id, d), ok)| (id, if ok { d } else { Disposition::Stale }))
            .collect())
    }

    fn close(&self) -> Result<(), QueueError> {
        self.inner.run(
            "close",
            &scripts::scripts().close,
            Call::Plain,
            None,
            &|_| {},
        )?;
        self.inner.producing.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn counts(&self) -> Result<Counts, QueueError> {
        Ok(self.inner.status()?.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("jobs");
        for key in &k.all {
            assert!(key.starts_with("jm:{jobs}:"), "{key}");
        }
        assert_eq!(k.stream(), "jm:{jobs}:s");
    }

    #[test]
    fn lease_token_round_trips_the_entry_id() {
        let t = token_of("1700000000000-42").unwrap();
        assert_eq!(
            t,
            LeaseToken {
                hi: 1700000000000,
                lo: 42
            }
        );
        assert_eq!(entry_of(t), "1700000000000-42");
        assert!(token_of("nope").is_none());
    }

    #[test]
    fn unreachable_server_is_a_clear_error_naming_the_address() {
        // Port 1 on loopback: nothing listens there.
        let cfg = RedisConfig {
            connect_timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        };
        let e = RedisQueue::connect("redis://127.0.0.1:1/q", cfg).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("127.0.0.1:1"), "{msg}");
        assert!(msg.contains("unreachable"), "{msg}");
    }
}
