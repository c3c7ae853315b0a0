//! The client's side of the protocol: the queue's keys, each script call
//! with its reply decoded, the reclaim pass and the heartbeat thread.
//! [`super::RedisQueue`] is the public face over this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::{Connection, Script, Value};
use bytes::Bytes;

use crate::job::{FailReason, Job, JobId, JobState, NewJob, RetryPolicy, Transition, WorkerId};
use crate::queue::{Counts, Disposition, Lease, LeaseToken, QueueError};

use super::conn::Pool;
use super::scripts;
use super::types::{AttemptInfo, JobRecord, ProducerState, QueueStatus};
use super::url::QueueUrl;
use super::INLINE_LIMIT;

/// The keys of one queue, all under the hash tag `{NAME}`.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
    /// m, s, l, e, d, rp, pr, r — in the order the scripts expect.
    pub(super) all: [String; 8],
}

impl Keys {
    pub(super) fn new(name: &str) -> Keys {
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
    pub(super) fn stream(&self) -> &str {
        &self.all[1]
    }
    pub(super) fn wake(&self) -> &str {
        &self.all[3]
    }
    pub(super) fn dead(&self) -> &str {
        &self.all[4]
    }
    pub(super) fn results(&self) -> &str {
        &self.all[7]
    }
}

/// A lease as the server records it: entry id and `attempt|consumer`.
pub(super) struct Settle {
    pub(super) entry: String,
    pub(super) expected: String,
    pub(super) action: &'static str,
    pub(super) attempts: u32,
    pub(super) record: String,
    /// Job id and whether its payload has its own key (used by 'd').
    pub(super) job: u64,
    pub(super) ext: bool,
    /// Lost and OOM-killed attempts the requeued copy carries, packed by
    /// [`pack_counts`] (used by 'q').
    pub(super) lost: u64,
    /// A 'q' waits this long in the delayed set before it may be leased
    /// (`--retry-delay`); 0: at once.
    pub(super) delay_ms: u64,
}

/// The lost and OOM counts of a job as its stream entry's `l` field keeps
/// them: `lost + oom × 2^32` (entries written before OOM counts existed
/// hold the lost count alone, which reads back with no OOM kills). The
/// scripts pass the field through unchanged.
pub(super) fn pack_counts(lost: u32, oom: u32) -> u64 {
    u64::from(lost) | (u64::from(oom) << 32)
}

/// The lost and OOM counts of a packed `l` field (see [`pack_counts`]).
pub(super) fn unpack_counts(l: u64) -> (u32, u32) {
    (l as u32, (l >> 32) as u32)
}

/// How a script call is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// Retried on a new connection, with replay protection (state changes).
    Replayed,
    /// Retried on a new connection (idempotent reads and writes).
    Plain,
    /// Tried once (heartbeats retry at their next tick; clean-up on drop).
    Once,
}

/// A lease as the server knows it, about to be failed.
pub(super) struct HeldLease {
    pub(super) entry: String,
    pub(super) expected: String,
    pub(super) job: u64,
    pub(super) seq: u64,
    pub(super) worker: WorkerId,
    pub(super) attempt: u32,
    pub(super) lost: u32,
    pub(super) oom: u32,
}

/// A job's input as a record keeps it: the bytes when known (at most the
/// record limit is kept) and the size.
pub(super) struct RecordInput<'a> {
    pub(super) bytes: Option<&'a [u8]>,
    pub(super) size: Option<u64>,
}

impl<'a> RecordInput<'a> {
    /// The whole payload.
    pub(super) fn payload(p: &'a [u8]) -> RecordInput<'a> {
        RecordInput {
            bytes: Some(p),
            size: Some(p.len() as u64),
        }
    }
}

/// What the lease script says when nothing was queued.
pub(super) struct EmptyInfo {
    pub(super) closed: bool,
    pub(super) produced: u64,
    pub(super) finals: u64,
    pub(super) producer_seen: bool,
    pub(super) producer_alive: bool,
    pub(super) leased: u64,
    pub(super) stream_last: String,
    pub(super) wake_last: String,
    /// How long until the next delayed retry is due, if one waits.
    pub(super) due_in: Option<Duration>,
}

impl EmptyInfo {
    pub(super) fn drained(&self) -> bool {
        self.closed && self.finals == self.produced
    }
    pub(super) fn producer_lost(&self) -> bool {
        !self.closed
            && self.producer_seen
            && !self.producer_alive
            && self.leased == 0
            && self.finals == self.produced
    }
}

pub(super) struct Inner {
    pub(super) url: QueueUrl,
    pub(super) keys: Keys,
    pub(super) pool: Pool,
    pub(super) instance: u64,
    /// The queue's settings as last seen (every lease reply carries them).
    pub(super) max_attempts: AtomicU32,
    pub(super) max_lost: AtomicU32,
    /// The policy this client was opened with (see [`Inner::policy`]).
    pub(super) local_policy: RetryPolicy,
    pub(super) visibility_ms: AtomicU64,
    pub(super) capacity: AtomicU64,
    pub(super) producer_ttl: Duration,
    pub(super) lease_heartbeat: bool,
    pub(super) io_timeout: Duration,
    /// Leases this client holds, for the heartbeat: token → `attempt|consumer`.
    pub(super) held: Mutex<HashMap<LeaseToken, String>>,
    /// Whether this client put jobs and has not closed the queue.
    pub(super) producing: AtomicBool,
    /// XAUTOCLAIM cursor and the time of the last reclaim pass.
    pub(super) reclaim: Mutex<(String, Option<Instant>)>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn protocol(operation: &'static str, what: impl std::fmt::Display) -> QueueError {
    QueueError::backend(operation, format!("unexpected reply from redis: {what}"))
}

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(super) fn array(operation: &'static str, v: Value) -> Result<Vec<Value>, QueueError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(protocol(operation, format!("{other:?}"))),
    }
}

pub(super) fn token_of(entry: &str) -> Option<LeaseToken> {
    let (ms, seq) = entry.split_once('-')?;
    Some(LeaseToken {
        hi: ms.parse().ok()?,
        lo: seq.parse().ok()?,
    })
}

pub(super) fn entry_of(token: LeaseToken) -> String {
    format!("{}-{}", token.hi, token.lo)
}

impl Inner {
    /// Runs `script` with the queue's keys, the prefix and this call's
    /// replay identity, then `args`.
    pub(super) fn run(
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

    /// The retry policy: `max_attempts` and `max_lost` are the queue's (as
    /// last seen); `max_oom`, `--retry-on` and the retry delays are this
    /// client's own.
    pub(super) fn policy(&self) -> RetryPolicy {
        self.local_policy
            .max_lost(self.max_lost.load(Ordering::Relaxed))
            .with_max_attempts(self.max_attempts.load(Ordering::Relaxed).max(1))
    }

    pub(super) fn visibility(&self) -> Duration {
        Duration::from_millis(self.visibility_ms.load(Ordering::Relaxed).max(1))
    }

    /// Takes the settings from a lease reply.
    pub(super) fn follow_settings(
        &self,
        max_attempts: Option<i64>,
        visibility_ms: Option<i64>,
        max_lost: Option<i64>,
    ) {
        if let Some(m) = max_attempts.filter(|m| *m > 0) {
            self.max_attempts.store(m as u32, Ordering::Relaxed);
        }
        if let Some(m) = max_lost.filter(|m| *m >= 0) {
            self.max_lost
                .store(u32::try_from(m).unwrap_or(u32::MAX), Ordering::Relaxed);
        }
        if let Some(v) = visibility_ms.filter(|v| *v > 0) {
            self.visibility_ms.store(v as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn consumer(&self, worker: WorkerId) -> String {
        format!("{}.{}", self.instance, worker.0)
    }

    pub(super) fn expected(&self, lease: &Lease) -> String {
        format!("{}|{}", lease.job.attempts, self.consumer(lease.worker))
    }

    /// One lease attempt: up to `max` new entries, or what the queue looks
    /// like when none is queued.
    pub(super) fn lease_once(
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
        let max_lost = a.next().as_ref().and_then(int);
        self.follow_settings(max_attempts, visibility_ms, max_lost);
        match status {
            Some(1) => {
                let rest: Vec<Value> = a.collect();
                if rest.len() % 6 != 0 {
                    return Err(protocol(OP, "lease entries not in sixes"));
                }
                let mut leases = Vec::with_capacity(rest.len() / 6);
                let mut it = rest.into_iter();
                while let (Some(id), Some(j), Some(s), Some(att), Some(lo), Some(p)) = (
                    it.next(),
                    it.next(),
                    it.next(),
                    it.next(),
                    it.next(),
                    it.next(),
                ) {
                    let bad = || protocol(OP, "malformed lease entry");
                    let entry = text(&id).ok_or_else(bad)?;
                    let token = token_of(&entry).ok_or_else(bad)?;
                    let job_id = int(&j).ok_or_else(bad)? as u64;
                    let seq = int(&s).ok_or_else(bad)? as u64;
                    let recorded = int(&att).ok_or_else(bad)? as u32;
                    let (lost, oom) = unpack_counts(int(&lo).ok_or_else(bad)? as u64);
                    // The script counted the attempt; the state machine must agree.
                    let next = JobState::Queued {
                        attempts: recorded.saturating_sub(1),
                        lost,
                        oom,
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
                            lost,
                            oom,
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
                if v.len() != 11 {
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
                    due_in: int(&v[10])
                        .filter(|ms| *ms >= 0)
                        .map(|ms| Duration::from_millis(ms as u64)),
                }))
            }
            _ => Err(protocol(OP, "lease status")),
        }
    }

    /// Blocks until the job stream or the wake-up stream gets an entry
    /// after the given ids, or `wait` passes.
    pub(super) fn wait_wake(
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
    pub(super) fn settle(&self, items: &[Settle]) -> Result<Vec<bool>, QueueError> {
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
                        .arg(if s.ext { "1" } else { "0" })
                        .arg(s.lost)
                        .arg(s.delay_ms);
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
    pub(super) fn fail_item(
        &self,
        held: HeldLease,
        reason: FailReason,
        info: &AttemptInfo,
        input: RecordInput<'_>,
    ) -> Result<(Settle, Disposition), QueueError> {
        let HeldLease {
            entry,
            expected,
            job,
            seq,
            worker,
            attempt,
            lost,
            oom,
        } = held;
        let next = JobState::Leased {
            worker,
            attempt,
            lost,
            oom,
        }
        .apply(
            Transition::Fail {
                reason: reason.clone(),
            },
            self.policy(),
        )
        .map_err(|e| protocol("fail", e))?;
        let (action, attempts, lost, record) = match &next {
            JobState::Queued {
                attempts,
                lost,
                oom,
            } => ("q", *attempts, pack_counts(*lost, *oom), String::new()),
            JobState::Failed { attempts, .. } | JobState::Dead { attempts, .. } => {
                // The record counts every lost attempt, this one included.
                let lost = lost + u32::from(reason.is_lost());
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
                    lost,
                    reason: reason.to_string(),
                    exit_code,
                    signal,
                    cause: Some(reason.cause().to_string()),
                    worker: Some(worker.0),
                    host: info.host.clone(),
                    duration_ms: info.duration.map(|d| d.as_millis() as u64),
                    ended_ms: None,
                    input: None,
                    input_bytes: None,
                    output: None,
                }
                .with_input(input.bytes)
                .with_size(input.size);
                let json = serde_json::to_string(&rec).map_err(|e| protocol("fail", e))?;
                let action = if matches!(next, JobState::Failed { .. }) {
                    "f"
                } else {
                    "x"
                };
                (action, *attempts, u64::from(lost), json)
            }
            other => return Err(protocol("fail", format!("fail led to {other:?}"))),
        };
        let delay = self.policy().requeue_delay(&reason, &next, seq);
        let disposition = match next {
            JobState::Queued { attempts, .. } => Disposition::Requeued { attempts },
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
                lost,
                delay_ms: delay.as_millis() as u64,
            },
            disposition,
        ))
    }

    pub(super) fn reclaim_interval(&self) -> Duration {
        (self.visibility() / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// Takes over leases idle past the visibility timeout and fails each
    /// with `WorkerLost`, if a reclaim pass is due (or `force`). Returns how
    /// many were taken over.
    pub(super) fn reclaim(&self, force: bool) -> Result<usize, QueueError> {
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
        if rest.len() % 8 != 0 {
            return Err(protocol(OP, "reclaim entries not in eights"));
        }
        let mut items = Vec::new();
        for c in rest.chunks(8) {
            let bad = || protocol(OP, "malformed reclaim entry");
            let entry = text(&c[0]).ok_or_else(bad)?;
            let job = int(&c[1]).ok_or_else(bad)? as u64;
            let seq = int(&c[2]).ok_or_else(bad)? as u64;
            let attempt = int(&c[3]).ok_or_else(bad)? as u32;
            let (lost, oom) = unpack_counts(int(&c[4]).ok_or_else(bad)? as u64);
            let owner = text(&c[5]).unwrap_or_default();
            let inline = match &c[6] {
                Value::BulkString(b) => b.as_slice(),
                _ => &[],
            };
            let size = int(&c[7]).map(|n| n as u64);
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
                lost,
                oom,
            };
            let input = RecordInput {
                bytes: Some(inline),
                size,
            };
            let (item, _) = self.fail_item(held, reason, &AttemptInfo::default(), input)?;
            items.push(item);
        }
        let n = items.len();
        self.settle(&items)?;
        Ok(n)
    }

    pub(super) fn status(&self) -> Result<QueueStatus, QueueError> {
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
    pub(super) fn beat(&self) -> Result<(), QueueError> {
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

    pub(super) fn put_chunk(&self, jobs: &[NewJob]) -> Result<PutChunk, QueueError> {
        const OP: &str = "put";
        let ttl = self.producer_ttl.as_millis() as u64;
        let v = self.run(OP, &scripts::scripts().put, Call::Replayed, None, &|inv| {
            inv.arg(ttl).arg(jobs.len());
            for j in jobs {
                inv.arg(j.seq)
                    .arg(j.attempts)
                    .arg(pack_counts(j.lost, j.oom))
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

pub(super) enum PutChunk {
    Closed,
    Full(String),
    Put(usize, u64),
}

pub(super) fn heartbeat_loop(inner: &Inner, stop: &(Mutex<bool>, Condvar)) {
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
