//! The public types of the Redis backend: settings, errors, status and the
//! records kept for finished jobs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::RetryPolicy;
use crate::queue::{Counts, PutError, QueueError};

use super::url::UrlError;

/// Settings of a [`RedisQueue`](super::RedisQueue).
///
/// `policy`, `visibility_timeout` and `capacity` belong to the queue: the
/// client that creates it records them in Redis, and every later client
/// uses the recorded values (see [`RedisQueue::policy`](super::RedisQueue::policy)).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Attempts per job, if this client creates the queue.
    pub policy: RetryPolicy,
    /// A lease not extended for this long is taken over and its attempt
    /// failed as lost (see the lost-worker rule in [`crate::job`]: the job
    /// runs again unless it was lost `policy.max_lost` times before), if
    /// this client creates the queue.
    pub visibility_timeout: Duration,
    /// Most jobs waiting to be leased before `put` blocks, if this client
    /// creates the queue.
    pub capacity: u64,
    /// Extend this client's leases automatically from a background thread
    /// (every third of the visibility timeout). Turn off only to simulate a
    /// hung worker or to call [`RedisQueue::heartbeat`](super::RedisQueue::heartbeat) yourself.
    pub lease_heartbeat: bool,
    /// Time after which a producer that stopped refreshing its liveness key
    /// (it refreshes every third of this) is reported lost.
    pub producer_ttl: Duration,
    /// Time allowed to open one connection. An unreachable server at
    /// [`RedisQueue::connect`](super::RedisQueue::connect) fails after this.
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

/// Why [`RedisQueue::connect`](super::RedisQueue::connect) failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is malformed.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The queue does not exist and [`RedisConfig::create`] was off
    /// (nothing was created).
    #[error("cannot open queue {url}: there is no queue named {name:?} on {endpoint}")]
    Missing {
        /// The queue URL, password redacted.
        url: String,
        /// The queue's name.
        name: String,
        /// The server, `host:port`.
        endpoint: String,
    },
    /// The server could not be reached or refused the setup.
    #[error("cannot open queue {url}")]
    Queue {
        /// The queue URL, password redacted.
        url: String,
        /// What failed.
        #[source]
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
/// with [`RedisQueue::complete_with`](super::RedisQueue::complete_with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub job: u64,
    /// Its sequence number.
    pub seq: u64,
    /// `"done"`, `"failed"` or `"dead"`.
    pub state: String,
    /// Attempts made, lost ones included.
    pub attempts: u32,
    /// How many of `attempts` were lost (their worker vanished without a
    /// verdict); 0 is not stored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u32,
    /// The last attempt's failure, in words.
    pub reason: String,
    /// The last attempt's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the last attempt, when one did.
    pub signal: Option<i32>,
    /// How the last attempt ended: `succeeded`, or its failure's
    /// [`FailReason::cause`](crate::job::FailReason::cause) (records
    /// written before jobmill recorded causes have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The queue's id of the worker that held the last attempt's lease,
    /// when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u64>,
    /// The host that ran the last attempt, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How long the last attempt ran, in milliseconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// When the record was written (the job ended), Unix milliseconds by
    /// the clock of the client that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// The job's input (its payload), kept when it is at most
    /// [`RECORD_INPUT_LIMIT`] bytes and the client that ended the job held
    /// it (a job failed after its idle lease was reclaimed has none).
    /// Stored base64-encoded as `input_b64`.
    #[serde(
        default,
        rename = "input_b64",
        skip_serializing_if = "Option::is_none",
        with = "b64"
    )]
    pub input: Option<Vec<u8>>,
    /// The input's length in bytes, when the client that ended the job
    /// held it (also when the input itself is not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
    /// The job's result (what its worker answered), kept only by a queue
    /// client told to ([`RedisQueue::keep_results`](super::RedisQueue::keep_results)):
    /// the signed results of `jobmill.Pool(queue=...)`. Stored
    /// base64-encoded as `output_b64`.
    #[serde(
        default,
        rename = "output_b64",
        skip_serializing_if = "Option::is_none",
        with = "b64"
    )]
    pub output: Option<Vec<u8>>,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Largest input kept in a [`JobRecord`]: larger inputs are recorded by
/// length only (the payload key is deleted when the job ends).
pub const RECORD_INPUT_LIMIT: usize = 16 * 1024;

impl JobRecord {
    /// Fills `input`/`input_bytes` from the job's payload and `ended_ms`
    /// from the clock.
    pub(super) fn with_input(mut self, payload: Option<&[u8]>) -> JobRecord {
        if let Some(p) = payload {
            self.input_bytes = Some(p.len() as u64);
            if p.len() <= RECORD_INPUT_LIMIT {
                self.input = Some(p.to_vec());
            }
        }
        self.ended_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64);
        self
    }

    /// Sets the input's size when known apart from its bytes (a payload in
    /// its own key, which the reclaimer does not fetch): the bytes are kept
    /// only if they are the whole input.
    pub(super) fn with_size(mut self, size: Option<u64>) -> JobRecord {
        if let Some(n) = size {
            self.input_bytes = Some(n);
            if self.input.as_ref().map(|b| b.len() as u64) != Some(n) {
                self.input = None;
            }
        }
        self
    }
}

/// Base64 (standard alphabet, padded) for bytes in JSON records.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)]
    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        v.map(|s| {
            STANDARD
                .decode(s)
                .map_err(|e| serde::de::Error::custom(format!("invalid base64 in a record: {e}")))
        })
        .transpose()
    }
}

pub use crate::queue::AttemptInfo;

/// `put_many` stopped before putting every job.
#[derive(Debug, thiserror::Error)]
#[error("put {put} jobs of the batch, then: {source}")]
pub struct PutManyError {
    /// How many jobs (a prefix of the batch) were put.
    pub put: usize,
    /// Why the rest was not.
    pub source: PutError,
}
