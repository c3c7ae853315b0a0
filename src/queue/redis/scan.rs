//! Reading the jobs not finished yet from the stream, page by page (for a
//! snapshot of the queue, e.g. `jobmill results --queue --save`).

use std::collections::HashMap;

use ::redis::Value;

use super::core::protocol;
use super::RedisQueue;
use crate::queue::QueueError;

/// A job not finished yet, as the stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveJob {
    /// The job's id.
    pub job: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Attempts started: the one in progress for a leased job, those made
    /// before for a queued one.
    pub attempts: u32,
    /// How many of the attempts made before were lost.
    pub lost: u32,
    /// Leased by a worker (running) rather than waiting.
    pub leased: bool,
    /// Its input, when stored inside the stream entry (at most
    /// [`INLINE_LIMIT`](super::INLINE_LIMIT) bytes; larger payloads are
    /// not fetched).
    pub input: Option<Vec<u8>>,
}

/// A stream id `ms-seq` as a comparable pair.
fn id_of(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

impl RedisQueue {
    /// Streams the jobs that are queued or leased to `f`: the stream's
    /// entries in the lease hash (leased) or after the consumer group's
    /// last delivered entry (queued), 1000 entries per call. Not one
    /// atomic view: a job may end while the scan runs (read the results
    /// after this, and let them win).
    ///
    /// # Errors
    ///
    /// Backend failures, a malformed entry, or the error of `f` (which
    /// stops the scan).
    pub fn for_each_unfinished<E, F>(&self, mut f: F) -> Result<(), E>
    where
        E: From<QueueError>,
        F: FnMut(LiveJob) -> Result<(), E>,
    {
        const OP: &str = "unfinished jobs";
        let keys = &self.inner.keys;
        let stream = keys.stream();
        let leases_key = &keys.all[2];
        let groups: Vec<HashMap<String, Value>> = self.inner.pool.call(OP, None, |con, _, _| {
            ::redis::cmd("XINFO").arg("GROUPS").arg(stream).query(con)
        })?;
        let last = groups
            .iter()
            .find(|g| g.get("name").and_then(bytes) == Some(b"g"))
            .and_then(|g| g.get("last-delivered-id").and_then(bytes))
            .and_then(|b| id_of(std::str::from_utf8(b).ok()?))
            .ok_or_else(|| protocol(OP, "no consumer group g on the stream"))?;
        let leases: HashMap<String, String> = self.inner.pool.call(OP, None, |con, _, _| {
            ::redis::cmd("HGETALL").arg(leases_key).query(con)
        })?;
        let mut start = "-".to_string();
        loop {
            let page: Vec<(String, Vec<Vec<u8>>)> =
                self.inner.pool.call(OP, None, |con, _, _| {
                    ::redis::cmd("XRANGE")
                        .arg(stream)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(1000)
                        .query(con)
                })?;
            let Some((last_id, _)) = page.last() else {
                return Ok(());
            };
            start = format!("({last_id}");
            for (id, fields) in &page {
                let bad = || protocol(OP, format!("malformed stream entry {id}"));
                let held = leases.get(id);
                let queued = id_of(id).ok_or_else(bad)? > last;
                if held.is_none() && !queued {
                    continue; // settled, not trimmed yet
                }
                let mut job = None;
                let mut seq = None;
                let mut made = 0u32;
                let mut lost = 0u32;
                let mut input = None;
                for kv in fields.chunks(2) {
                    let [k, v] = kv else { return Err(bad().into()) };
                    let num = || -> Option<u64> { std::str::from_utf8(v).ok()?.parse().ok() };
                    match k.as_slice() {
                        b"j" => job = num(),
                        b"s" => seq = num(),
                        b"a" => made = num().unwrap_or(0) as u32,
                        b"l" => lost = super::core::unpack_counts(num().unwrap_or(0)).0,
                        b"p" => input = Some(v.clone()),
                        _ => {}
                    }
                }
                let attempts = match held {
                    Some(h) => h
                        .split_once('|')
                        .and_then(|(a, _)| a.parse().ok())
                        .ok_or_else(bad)?,
                    None => made,
                };
                f(LiveJob {
                    job: job.ok_or_else(bad)?,
                    seq: seq.ok_or_else(bad)?,
                    attempts,
                    lost,
                    leased: held.is_some(),
                    input,
                })?;
            }
        }
    }
}
