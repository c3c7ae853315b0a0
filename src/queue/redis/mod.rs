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
//!   taken over with `XAUTOCLAIM` and failed with [`FailReason::WorkerLost`]:
//!   a lost attempt, which the job's `lost` count (in its stream entry)
//!   records and the lost-worker rule judges (runs again unless lost more
//!   than the queue's `max_lost` times; not counted against the retries).
//!   A live worker's leases are extended by a heartbeat thread (`XCLAIM`
//!   min-idle 0 `JUSTID` of its own entries).
//! - **Waiting** never polls: a consumer with nothing to lease blocks in
//!   `XREAD` on the job stream and a small wake-up stream (close, drained,
//!   room) from the ids the lease script returned, on a pooled connection
//!   whose read timeout is raised for the call.
//! - **Backpressure**: `put` fails fast inside the script when
//!   `queued >= capacity` and blocks on the wake-up stream until a lease
//!   makes room.
//! - **Dead jobs** keep their input (in their record, or in their payload
//!   key), and [`RedisQueue::requeue`] puts them back.
//! - **Reconnection**: every call is retried with backoff on a new
//!   connection, with replay protection so it takes effect once.

mod conn;
mod core;
mod scan;
mod scripts;
mod types;
mod url;

pub use self::scan::LiveJob;
pub use self::types::{
    AttemptInfo, JobRecord, OpenError, ProducerState, PutManyError, QueueStatus, RedisConfig,
    RECORD_INPUT_LIMIT,
};
pub use self::url::{QueueUrl, UrlError};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::redis::Value;

use crate::job::{FailReason, JobId, JobState, NewJob, RetryPolicy, Transition, WorkerId};

use self::conn::{ConnSettings, Pool};
use self::core::{
    array, entry_of, heartbeat_loop, int, lock, protocol, text, Call, HeldLease, Inner, Keys,
    PutChunk, RecordInput, Settle,
};
use super::{
    Completion, Counts, Disposition, GetError, Lease, PutError, Queue, QueueError, TryGetError,
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

/// A clear message for an authentication failure, if `e` is one.
fn auth_problem(e: &::redis::RedisError, url: &QueueUrl) -> Option<String> {
    let text = format!("{e} {}", e.code().unwrap_or(""));
    let endpoint = url.endpoint();
    if text.contains("NOAUTH") || text.contains("unauthenticated") {
        Some(format!(
            "the Redis server at {endpoint} requires a password: put it in the URL as \
             redis://:PASSWORD@{endpoint}/{name} (or redis://USER:PASSWORD@… for an ACL user)",
            name = url.name
        ))
    } else if e.kind() == ::redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("uthentication failed")
    {
        Some(format!(
            "the Redis server at {endpoint} refused the password (or user) in the URL {url} \
             (a server with no password set refuses any: then leave it out of the URL)"
        ))
    } else {
        None
    }
}

/// What [`RedisQueue::requeue`] did with one failed or dead job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Back in the queue, with no attempts made.
    Requeued,
    /// Its record changed meanwhile (another client requeued it): nothing
    /// done.
    Changed,
    /// Its input was not kept (a record written before inputs were kept
    /// for every dead job): it cannot run again.
    InputNotKept,
}

/// A [`Queue`] on Redis Streams. See the module documentation.
///
/// Cloning is not offered; share it behind an `Arc` (all methods take
/// `&self` and are thread-safe: each call takes a pooled connection).
pub struct RedisQueue {
    inner: Arc<Inner>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    heartbeat: Option<JoinHandle<()>>,
    /// Keep the results given to `complete_many_results` in the records.
    keep_results: AtomicBool,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("url", &self.inner.url)
            .field("instance", &self.inner.instance)
            .finish()
    }
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
            error: QueueError::backend("connect", detail),
        };
        // As `fail`, keeping the client's error as the source.
        let fail_by = |detail: String, e: ::redis::RedisError| OpenError::Queue {
            url: shown.clone(),
            error: QueueError::backend_caused("connect", detail, e),
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
        .map_err(|e| fail_by("bad server address".into(), e))?;
        let keys = Keys::new(&url.name);
        // The setup runs on its own connection, before any pooled slot gets
        // a replay name (which needs the instance number this returns).
        let auth = |e: &::redis::RedisError| auth_problem(e, &url);
        let mut con = pool.connect().map_err(|e| {
            if let Some(m) = auth(&e) {
                return fail(m);
            }
            let waited = if e.is_timeout() {
                format!(
                    " (no answer within {:.1} s)",
                    config.connect_timeout.as_secs_f64()
                )
            } else {
                String::new()
            };
            fail_by(
                format!("redis at {} is unreachable{waited}", url.endpoint()),
                e,
            )
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
            .arg(if config.create { "1" } else { "0" })
            .arg(config.policy.max_lost);
        // A server wanting a password answers NOAUTH to a PING; to the setup
        // script (a long command) it would only say "Protocol error:
        // unauthenticated multibulk length".
        ::redis::cmd("PING")
            .query::<String>(&mut con)
            .map_err(|e| match auth(&e) {
                Some(m) => fail(m),
                None => fail_by(format!("redis at {}", url.endpoint()), e),
            })?;
        let v: Vec<i64> = inv.invoke(&mut con).map_err(|e| match auth(&e) {
            Some(m) => fail(m),
            None => fail_by(format!("setup script failed on {}", url.endpoint()), e),
        })?;
        if v[..] == [0] {
            return Err(OpenError::Missing {
                url: shown.clone(),
                name: url.name.clone(),
                endpoint: url.endpoint(),
            });
        }
        let [instance, max_attempts, vis_ms, capacity, max_lost] = v[..] else {
            return Err(fail("setup script returned a malformed reply".into()));
        };
        drop(con);
        pool.set_instance(instance as u32);
        let inner = Arc::new(Inner {
            keys,
            pool,
            instance: instance as u64,
            max_attempts: AtomicU32::new(max_attempts.max(1) as u32),
            max_lost: AtomicU32::new(max_lost.max(0) as u32),
            local_policy: config.policy,
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
            keep_results: AtomicBool::new(false),
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
                .arg("max_lost")
                .arg(policy.max_lost)
                .arg("visibility_ms")
                .arg(vis)
                .arg("capacity")
                .arg(capacity.max(1))
                .query::<i64>(con)
        })?;
        self.inner.follow_settings(
            Some(i64::from(max)),
            Some(vis as i64),
            Some(i64::from(policy.max_lost)),
        );
        self.inner
            .capacity
            .store(capacity.max(1), Ordering::Relaxed);
        Ok(())
    }

    /// How long this client's producer liveness signal lasts
    /// ([`RedisConfig::producer_ttl`]).
    pub fn producer_ttl(&self) -> Duration {
        self.inner.producer_ttl
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
            if let Some(due) = info.due_in {
                // A delayed retry: look again when it is due.
                wait = wait.min(due.max(Duration::from_millis(1)));
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
        self.complete_records(leases, None, None)
    }

    /// Makes this client keep the results given to
    /// [`Queue::complete_many_results`] in the jobs' result records
    /// ([`JobRecord::output`]), for [`RedisQueue::take_results`] to hand
    /// to the producer. Off by default: a queue keeps no output.
    pub fn keep_results(&self, on: bool) {
        self.keep_results.store(on, Ordering::SeqCst);
    }

    /// Takes result records out of the queue: returns up to about `max` of
    /// them (one `HSCAN` page) and deletes them (`HDEL`), so each is taken
    /// once and the next call finds the rest. For a producer that
    /// collects its results as they come (`jobmill.Pool(queue=...)`);
    /// records taken are no longer seen by `results`, `status` or
    /// `requeue`.
    ///
    /// # Errors
    ///
    /// Backend failures, or a record that is not valid JSON.
    pub fn take_results(&self, max: usize) -> Result<Vec<JobRecord>, QueueError> {
        const OP: &str = "take results";
        let key = self.inner.keys.results();
        let (_, flat): (u64, Vec<Vec<u8>>) = self.inner.pool.call(OP, None, |con, _, _| {
            ::redis::cmd("HSCAN")
                .arg(key)
                .arg(0)
                .arg("COUNT")
                .arg(max.max(1))
                .query(con)
        })?;
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut records = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [field, json] = pair else {
                return Err(protocol(OP, "HSCAN reply"));
            };
            records.push(serde_json::from_slice::<JobRecord>(json).map_err(|e| protocol(OP, e))?);
            fields.push(field.clone());
        }
        if !fields.is_empty() {
            // Idempotent: replayed after a reconnection, it deletes nothing more.
            let _: i64 = self.inner.pool.call(OP, None, |con, _, _| {
                ::redis::cmd("HDEL").arg(key).arg(&fields).query(con)
            })?;
        }
        Ok(records)
    }

    /// Marks many leases done in one round trip (one SETTLE script), storing
    /// a result record (see [`RedisQueue::results`]) for each one recorded,
    /// with `info` (the same host and duration for all; e.g. a duration of
    /// `None` when the worker does not measure one). As
    /// [`RedisQueue::complete_with`] for each lease, in one atomic step.
    ///
    /// # Errors
    ///
    /// Only backend failures. Stale leases give `Completion::Stale`.
    pub fn complete_many_with(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
    ) -> Result<Vec<Completion>, QueueError> {
        self.complete_records(leases, Some(info), None)
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
        self.complete_records(std::slice::from_ref(lease), Some(info), None)?
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
            lost: lease.job.lost,
            oom: lease.job.oom,
        };
        let (item, disposition) =
            inner.fail_item(held, reason, info, RecordInput::payload(&lease.job.payload))?;
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
        results: Option<&[bytes::Bytes]>,
    ) -> Result<Vec<Completion>, QueueError> {
        let mut items = Vec::with_capacity(leases.len());
        for (i, lease) in leases.iter().enumerate() {
            let output = results.and_then(|r| r.get(i)).map(|b| b.to_vec());
            let record = match info {
                None => String::new(),
                Some(info) => serde_json::to_string(
                    &JobRecord {
                        job: lease.job.id.0,
                        seq: lease.job.seq,
                        state: "done".into(),
                        attempts: lease.job.attempts,
                        lost: lease.job.lost,
                        reason: String::new(),
                        exit_code: Some(0),
                        signal: None,
                        cause: Some("succeeded".into()),
                        worker: Some(lease.worker.0),
                        host: info.host.clone(),
                        duration_ms: info.duration.map(|d| d.as_millis() as u64),
                        ended_ms: None,
                        input: None,
                        input_bytes: None,
                        output,
                    }
                    .with_input(Some(&lease.job.payload)),
                )
                .map_err(|e| protocol("complete", e))?,
            };
            JobState::Leased {
                worker: lease.worker,
                attempt: lease.job.attempts,
                lost: lease.job.lost,
                oom: lease.job.oom,
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
                lost: 0,
                delay_ms: 0,
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

    /// Declares this client the queue's producer before its first put
    /// (refreshing the liveness key from then on), so that workers do not
    /// report an earlier, vanished producer lost while this one is about to
    /// put (`run --queue` resuming a submission).
    ///
    /// # Errors
    ///
    /// Only backend failures.
    pub fn announce_producer(&self) -> Result<(), QueueError> {
        let ttl = self.inner.producer_ttl.as_millis() as u64;
        self.inner.run(
            "producer heartbeat",
            &scripts::scripts().producer_alive,
            Call::Plain,
            None,
            &|inv| {
                inv.arg(ttl);
            },
        )?;
        self.inner.producing.store(true, Ordering::Relaxed);
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

    /// Streams the result records (see [`RedisQueue::results`]) to `f`,
    /// one page of `HSCAN` (about 1000 records) at a time, so memory stays
    /// bounded for any number of jobs. In no particular order, and, as
    /// `HSCAN` guarantees only that every record present throughout is
    /// seen at least once, a record may be given more than once: callers
    /// must be idempotent (the journal snapshot upserts by job).
    ///
    /// # Errors
    ///
    /// Backend failures, a record that is not valid JSON, or the error of
    /// `f` (which stops the scan).
    pub fn for_each_result<E, F>(&self, mut f: F) -> Result<(), E>
    where
        E: From<QueueError>,
        F: FnMut(JobRecord) -> Result<(), E>,
    {
        const OP: &str = "results";
        self.scan_records(OP, self.inner.keys.results(), |rec, _| f(rec))
    }

    /// Calls `f` with every JSON record of the hash at `key` (and its
    /// text), scanned in pages of 1000 (`HSCAN`; a page may repeat one).
    fn scan_records<E, F>(&self, op: &'static str, key: &str, mut f: F) -> Result<(), E>
    where
        E: From<QueueError>,
        F: FnMut(JobRecord, &str) -> Result<(), E>,
    {
        let mut cursor = 0u64;
        loop {
            let (next, flat): (u64, Vec<String>) =
                self.inner.pool.call(op, None, |con, _, _| {
                    ::redis::cmd("HSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query(con)
                })?;
            for pair in flat.chunks(2) {
                let json = pair.get(1).ok_or_else(|| protocol(op, "HSCAN reply"))?;
                f(
                    serde_json::from_str::<JobRecord>(json).map_err(|e| protocol(op, e))?,
                    json,
                )?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Puts back the failed and dead jobs whose dead-letter record
    /// `select` accepts (`jobmill requeue`). Each goes back as a new job
    /// copy with no attempts made and no losses (a fresh retry allowance
    /// under the queue's policy), keeping its job id and sequence number;
    /// its dead-letter record and result are removed and the failed/dead
    /// counter goes down, so the queue is no longer drained until it has
    /// run. Returns each selected record with what happened to it, by job id.
    ///
    /// # Errors
    ///
    /// Backend failures, or a record that is not valid JSON.
    pub fn requeue<F>(&self, mut select: F) -> Result<Vec<(JobRecord, Requeue)>, QueueError>
    where
        F: FnMut(&JobRecord) -> bool,
    {
        const OP: &str = "requeue";
        let key = self.inner.keys.dead();
        // HSCAN in pages, keeping only the selected records (by job id: a
        // page may repeat one), so a few jobs picked among many dead
        // letters cost little memory; requeued in job order.
        let mut picked: HashMap<u64, (JobRecord, String)> = HashMap::new();
        self.scan_records(OP, key, |rec, json| {
            if select(&rec) {
                picked.insert(rec.job, (rec, json.to_string()));
            }
            Ok::<(), QueueError>(())
        })?;
        let mut picked: Vec<(JobRecord, String)> = picked.into_values().collect();
        picked.sort_by_key(|(r, _)| r.job);
        let mut out = Vec::with_capacity(picked.len());
        for chunk in picked.chunks(500) {
            let v = self.inner.run(
                OP,
                &scripts::scripts().requeue,
                Call::Replayed,
                None,
                &|inv| {
                    inv.arg(chunk.len());
                    for (rec, json) in chunk {
                        let counter = if rec.state == "failed" {
                            "failed"
                        } else {
                            "dead"
                        };
                        inv.arg(rec.job).arg(json).arg(counter).arg(rec.seq);
                        match &rec.input {
                            Some(b) => inv.arg("1").arg(&b[..]),
                            None => inv.arg("0").arg(""),
                        };
                    }
                },
            )?;
            let a = array(OP, v)?;
            if a.len() != chunk.len() {
                return Err(protocol(OP, "reply length"));
            }
            for ((rec, _), r) in chunk.iter().zip(a) {
                let what = match int(&r) {
                    Some(1) => Requeue::Requeued,
                    Some(-1) => Requeue::InputNotKept,
                    _ => Requeue::Changed,
                };
                out.push((rec.clone(), what));
            }
        }
        Ok(out)
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
                .arg(format!("{}w", keys.prefix))
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
    fn complete_with(&self, lease: &Lease, info: &AttemptInfo) -> Result<Completion, QueueError> {
        RedisQueue::complete_with(self, lease, info)
    }

    fn complete_many_with(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
    ) -> Result<Vec<Completion>, QueueError> {
        RedisQueue::complete_many_with(self, leases, info)
    }

    fn fail_with(
        &self,
        lease: &Lease,
        reason: FailReason,
        info: &AttemptInfo,
    ) -> Result<Disposition, QueueError> {
        RedisQueue::fail_with(self, lease, reason, info)
    }

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
        let mut v = Vec::with_capacity(1);
        self.try_get_many(worker, 1, &mut v)?;
        v.pop()
            .ok_or_else(|| TryGetError::Backend(protocol("lease", "no entry")))
    }

    /// One LEASE script (`XREADGROUP … COUNT max`) for the whole batch:
    /// one round trip, one atomic step (plus a RECLAIM pass when one is due).
    fn try_get_many(
        &self,
        worker: WorkerId,
        max: usize,
        out: &mut Vec<Lease>,
    ) -> Result<usize, TryGetError> {
        let inner = &self.inner;
        if max == 0 {
            return Ok(0);
        }
        for _ in 0..2 {
            inner.reclaim(false)?;
            match inner.lease_once(worker, max)? {
                Ok(v) if v.is_empty() => {
                    return Err(TryGetError::Backend(protocol("lease", "no entry")))
                }
                Ok(v) => {
                    let n = v.len();
                    out.extend(v);
                    return Ok(n);
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

    /// One SETTLE script for the whole batch: one round trip, one atomic
    /// step; each lease is recorded only if it is still current.
    fn complete_many(&self, leases: &[Lease]) -> Result<Vec<Completion>, QueueError> {
        self.complete_records(leases, None, None)
    }

    fn complete_many_results(
        &self,
        leases: &[Lease],
        info: &AttemptInfo,
        results: &[bytes::Bytes],
    ) -> Result<Vec<Completion>, QueueError> {
        let keep = self.keep_results.load(Ordering::SeqCst);
        self.complete_records(leases, Some(info), keep.then_some(results))
    }

    fn complete(&self, lease: &Lease) -> Result<Completion, QueueError> {
        self.complete_records(std::slice::from_ref(lease), None, None)?
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
            lost: lease.job.lost,
            oom: lease.job.oom,
        }
        .apply(Transition::Release, inner.policy())
        .map_err(|e| protocol("release", e))?;
        let JobState::Queued {
            attempts,
            lost,
            oom,
        } = next
        else {
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
            lost: core::pack_counts(lost, oom),
            delay_ms: 0,
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
        if a.len() % 7 != 0 {
            return Err(protocol(OP, "held entries not in sevens"));
        }
        let mut items = Vec::new();
        let mut outcomes = Vec::new();
        for c in a.chunks(7) {
            let bad = || protocol(OP, "malformed held entry");
            let entry = text(&c[0]).ok_or_else(bad)?;
            let job = int(&c[1]).ok_or_else(bad)? as u64;
            let seq = int(&c[2]).ok_or_else(bad)? as u64;
            let held = text(&c[3]).ok_or_else(bad)?;
            let (lost, oom) = core::unpack_counts(int(&c[4]).ok_or_else(bad)? as u64);
            let inline = match &c[5] {
                Value::BulkString(b) => b.as_slice(),
                _ => &[],
            };
            let input = RecordInput {
                bytes: Some(inline),
                size: int(&c[6]).map(|n| n as u64),
            };
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
                lost,
                oom,
            };
            let (item, d) = inner.fail_item(held, reason, &AttemptInfo::default(), input)?;
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
    use super::core::token_of;
    use super::*;
    use crate::queue::LeaseToken;

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
        let msg = crate::events::error_chain(&e);
        assert!(msg.contains("refused"), "the client's error is kept: {msg}");
        assert!(msg.contains("127.0.0.1:1"), "{msg}");
        assert!(msg.contains("unreachable"), "{msg}");
    }
}
