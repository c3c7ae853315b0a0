//! One self-contained HTML page from a run's journal (`jobmill report`).
//!
//! [`build`] reads the journal read-only (through [`Journal::open`] and
//! [`read::open_read_only`], the readers' own safety checks) and returns
//! the page as a string: a header, a timeline of every attempt by slot (by
//! worker and host where the journal records them: persistent and Redis
//! runs), throughput over time (with queued jobs, from the read times),
//! histograms of duration and peak memory, failures grouped by cause and
//! exit status with their inputs and stderr tails, and the slowest and
//! largest jobs. A schema v1 journal (written by an older jobmill) lacks
//! the workers, hosts, causes and read times: the causes are worked out
//! from its reasons (`journal::cause_from_v1`), and the page says
//! what else is missing. The data is embedded as one JSON blob (every `<`
//! written as `\u003c`, so no `</script>` can end it early); the inline
//! script draws everything in the browser. The page makes no network
//! request. Limits are in `docs/REPORT.md`.
//!
//! The library never prints: the caller writes the string where it wants.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;

use crate::journal::read::{self, format_utc, Journal, Liveness};
use crate::journal::{cause_from_v1, JournalError};
use crate::outcome::CAUSES;

/// Above this many attempts the timeline is drawn on a canvas instead of
/// one DOM element per attempt.
pub const DOM_BAR_LIMIT: usize = 2000;

/// At most this many failed jobs are listed (with their inputs) on the
/// page; the groups still count every one.
pub const FAILED_JOBS_LIMIT: usize = 5000;

/// At most this many failed jobs show the tail of their stored stderr.
pub const STDERR_TAILS_LIMIT: usize = 500;

/// Lines of stderr shown per failed job.
pub const STDERR_TAIL_LINES: usize = 6;

/// Bytes of stderr shown per failed job (the end of the stored stderr).
pub const STDERR_TAIL_BYTES: usize = 1200;

/// Characters of each input kept for the timeline's hover text.
pub const HOVER_INPUT_CHARS: usize = 160;

/// Characters of each input kept in the tables.
pub const TABLE_INPUT_CHARS: usize = 2000;

/// Jobs in the slowest and the largest tables.
pub const TOP_N: usize = 15;

/// How to build a page.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Escapes input bytes (and stderr lines) for display: the readers'
    /// reversible convention (`\\`, `\t`, `\n`, `\xHH`, ...), so inputs
    /// that are not UTF-8 show exactly.
    pub escape: fn(&[u8], &mut Vec<u8>),
    /// Now, Unix seconds (the end of the timeline of a live run, and the
    /// "generated" line).
    pub now: f64,
}

/// What [`build`] made.
#[derive(Debug, Clone)]
pub struct Page {
    /// The HTML document.
    pub html: String,
    /// The run id.
    pub run_id: String,
    /// Attempts drawn on the timeline.
    pub attempts: usize,
    /// Whether the timeline is drawn on a canvas (more than
    /// [`DOM_BAR_LIMIT`] attempts).
    pub canvas: bool,
}

/// The outcomes of attempts, by the index the page's data uses.
const OUTCOMES: [&str; 6] = [
    "done",
    "requeued",
    "failed",
    "dead",
    "interrupted",
    "running",
];

#[derive(Serialize)]
struct Data {
    run: RunData,
    sessions: Vec<SessionData>,
    counts: CountsData,
    /// The timeline's rows, labelled: `slot N`, `worker N`, each with
    /// `@ host` when another host ran it.
    lanes: Vec<String>,
    /// What the rows are: `slot`, `worker`, or `worker and host`.
    lane_kind: &'static str,
    jobs: Jobs,
    att: Attempts,
    reasons: Vec<String>,
    /// Hosts that ran attempts, when the journal names them.
    hosts: Vec<String>,
    outcomes: [&'static str; 6],
    causes: [&'static str; crate::outcome::CAUSES.len()],
    /// The journal's schema version.
    schema: i64,
    /// Whether every job's read time is known (queued counts are drawn).
    read_times: bool,
    failures: Vec<FailGroup>,
    failed_total: u64,
    failed_listed: usize,
    slowest: Vec<TopRow>,
    largest: Vec<TopRow>,
    notes: Vec<String>,
    dom_bar_limit: usize,
    /// Seconds from the run's start to the timeline's end.
    span: f64,
    /// Attempts without an end that were cut off by the end of their
    /// session: attempt index → where to end the bar (seconds from start).
    open_end: std::collections::BTreeMap<usize, f64>,
}

#[derive(Serialize)]
struct RunData {
    run_id: String,
    command: String,
    options: serde_json::Value,
    host: String,
    cwd: String,
    started_at: f64,
    started_utc: String,
    ended_at: Option<f64>,
    ended_utc: Option<String>,
    end_reason: Option<String>,
    state: String,
    input_complete: bool,
    total_jobs: Option<u64>,
    version: String,
    generated_utc: String,
}

#[derive(Serialize)]
struct SessionData {
    id: i64,
    kind: String,
    start: f64,
    end: Option<f64>,
    end_reason: Option<String>,
}

#[derive(Serialize)]
struct CountsData {
    queued: u64,
    running: u64,
    done: u64,
    failed: u64,
    dead: u64,
}

/// Jobs, column by column (index = position, not seq).
#[derive(Serialize, Default)]
struct Jobs {
    seq: Vec<u64>,
    /// Escaped input, cut to [`HOVER_INPUT_CHARS`].
    input: Vec<String>,
    state: Vec<String>,
    /// When it was read, seconds from the run's start (`null`: not known).
    read: Vec<Option<f64>>,
    /// When it reached its final state, seconds from the run's start.
    fin: Vec<Option<f64>>,
}

/// Attempts, column by column, in start order. Times are seconds from the
/// run's start, rounded to the millisecond.
#[derive(Serialize, Default)]
struct Attempts {
    /// Index into `jobs`.
    job: Vec<u32>,
    /// Attempt number, from 1.
    n: Vec<u32>,
    slot: Vec<u32>,
    /// Index into `lanes`.
    lane: Vec<u32>,
    /// The long-lived worker that ran it, if recorded.
    worker: Vec<Option<i64>>,
    /// The host that ran it, if not the run's (index into `hosts`).
    host: Vec<Option<u32>>,
    /// Index into `causes` (`null`: not known).
    cause: Vec<Option<u8>>,
    t0: Vec<f64>,
    /// Duration (`null`: no end recorded).
    dur: Vec<Option<f64>>,
    /// Index into `outcomes`.
    out: Vec<u8>,
    exit: Vec<Option<i64>>,
    sig: Vec<Option<i64>>,
    /// Peak RSS, KiB.
    rss: Vec<Option<i64>>,
    /// Index into `reasons`.
    why: Vec<Option<u32>>,
    /// Timed out (1) or not (0).
    to: Vec<u8>,
}

#[derive(Serialize)]
struct FailGroup {
    /// The cause and, for `exit` and `signal`, the status: `exit: exit
    /// code 3`, `signal: SIGKILL`, `timeout`.
    reason: String,
    count: u64,
    jobs: Vec<FailJob>,
}

#[derive(Serialize)]
struct FailJob {
    seq: u64,
    input: String,
    state: String,
    attempts: i64,
    exit: Option<i64>,
    sig: Option<i64>,
    /// Why it failed, in words.
    why: Option<String>,
    /// The last lines of the stored stderr, escaped line by line.
    stderr: Option<String>,
    stderr_bytes: u64,
}

#[derive(Serialize)]
struct TopRow {
    seq: u64,
    attempt: u32,
    outcome: String,
    duration: Option<f64>,
    rss: Option<i64>,
    input: String,
}

/// A row of the timeline: a slot of the run's host, or a long-lived
/// worker, on a host (`None`: the run's own). Ordered: the run's host
/// first, slots before workers, by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct LaneKey {
    host: Option<String>,
    worker: Option<i64>,
    /// The slot, when no worker is recorded (else 0).
    slot: u32,
}

impl LaneKey {
    fn label(&self) -> String {
        let who = match self.worker {
            Some(w) => format!("worker {w}"),
            None => format!("slot {}", self.slot),
        };
        match &self.host {
            Some(h) => format!("{who} @ {h}"),
            None => who,
        }
    }
}

fn ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

/// `bytes` escaped with `escape`, cut to `max` characters (with `…`).
fn shown(escape: fn(&[u8], &mut Vec<u8>), bytes: &[u8], max: usize, buf: &mut Vec<u8>) -> String {
    buf.clear();
    escape(bytes, buf);
    let s = String::from_utf8_lossy(buf);
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.into_owned(),
    }
}

/// The last [`STDERR_TAIL_LINES`] lines of `data` (at most
/// [`STDERR_TAIL_BYTES`] bytes), each escaped, joined by newlines.
fn tail(escape: fn(&[u8], &mut Vec<u8>), data: &[u8]) -> String {
    let mut data = data.strip_suffix(b"\n").unwrap_or(data);
    let mut cut_front = false;
    if data.len() > STDERR_TAIL_BYTES {
        data = &data[data.len() - STDERR_TAIL_BYTES..];
        cut_front = true;
    }
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let skip = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let mut out = String::new();
    if skip > 0 || cut_front {
        out.push_str("…\n");
    }
    let mut buf = Vec::new();
    for (i, l) in lines[skip..].iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        buf.clear();
        escape(l, &mut buf);
        out.push_str(&String::from_utf8_lossy(&buf));
    }
    out
}

fn sql(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError {
    JournalError::sqlite(path, op)
}

/// Builds the page of the journal at `path`, reading it without changing
/// it.
///
/// # Errors
///
/// The errors of [`Journal::open`] (a file that is not a readable
/// journal), or [`JournalError::Sqlite`] on a read error.
pub fn build(path: &Path, opts: &Options) -> Result<Page, JournalError> {
    let j = Journal::open(path)?;
    let conn = read::open_read_only(path).map_err(|e| JournalError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(sql(path, "set busy timeout"))?;
    build_from(&j, &conn, opts)
}

fn build_from(j: &Journal, conn: &Connection, opts: &Options) -> Result<Page, JournalError> {
    let path = j.path();
    let info = j.run()?;
    let live = j.liveness()?;
    let counts = j.counts()?;
    let sessions = j.sessions()?;
    let t_start = info.started_at;
    let end = match (&live, info.ended_at) {
        (Liveness::Running { .. }, _) => opts.now,
        (_, Some(t)) => t,
        (_, None) => j.last_activity()?,
    };
    let esc = opts.escape;
    let mut buf = Vec::new();
    // A v1 journal has no read times, causes, workers or hosts: its
    // queries read NULL in their place, and causes worked out from what it
    // kept.
    let schema: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql(path, "read the schema version"))?;
    let v2 = schema >= 2;
    let v1_cause = cause_from_v1("outcome", "reason", "timed_out", "signal", "exit_code");
    let (read_at, cause_col, worker_col, host_col) = if v2 {
        (
            "read_at".to_string(),
            format!("COALESCE(cause, {v1_cause})"),
            "worker",
            "host",
        )
    } else {
        ("NULL".to_string(), v1_cause, "NULL", "NULL")
    };
    let rel = |t: f64| ms(t - t_start);

    // Every job (seq → index).
    let mut jobs = Jobs::default();
    let mut index = std::collections::HashMap::new();
    let mut unread = 0u64;
    {
        let mut st = conn
            .prepare(&format!(
                "SELECT seq, input, state, finished_at, {read_at} FROM job ORDER BY seq"
            ))
            .map_err(sql(path, "read jobs"))?;
        let mut rows = st.query([]).map_err(sql(path, "read jobs"))?;
        while let Some(r) = rows.next().map_err(sql(path, "read jobs"))? {
            let seq = r.get::<_, i64>(0).map_err(sql(path, "read jobs"))?.max(0) as u64;
            let input = match r.get_ref(1).map_err(sql(path, "read jobs"))? {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b,
                _ => &[],
            };
            let input = shown(esc, input, HOVER_INPUT_CHARS, &mut buf);
            let state: String = r.get(2).map_err(sql(path, "read jobs"))?;
            let fin: Option<f64> = r.get(3).map_err(sql(path, "read jobs"))?;
            let read: Option<f64> = r.get(4).map_err(sql(path, "read jobs"))?;
            unread += u64::from(read.is_none());
            index.insert(seq, jobs.seq.len() as u32);
            jobs.seq.push(seq);
            jobs.input.push(input);
            jobs.state.push(state);
            jobs.read.push(read.map(rel));
            jobs.fin.push(fin.map(rel));
        }
    }

    // Every attempt, in start order.
    let running = matches!(live, Liveness::Running { .. });
    let live_session = sessions
        .iter()
        .rev()
        .find(|s| s.ended_at.is_none())
        .map(|s| s.id);
    let mut att = Attempts::default();
    let mut reasons: Vec<String> = Vec::new();
    let mut reason_ix = std::collections::HashMap::new();
    // Timeline rows by (host, worker, slot); numbered in first-seen order
    // here, sorted below.
    let mut lane_ix: std::collections::HashMap<LaneKey, u32> = std::collections::HashMap::new();
    let mut lane_keys: Vec<LaneKey> = Vec::new();
    let mut hosts: Vec<String> = Vec::new();
    let mut host_ix = std::collections::HashMap::new();
    let mut open_end = std::collections::BTreeMap::new();
    {
        let mut st = conn
            .prepare(&format!(
                "SELECT seq, attempt, slot, started_at, ended_at, duration, outcome, exit_code, \
                 signal, timed_out, reason, max_rss_kb, session, {cause_col}, {worker_col}, \
                 {host_col} FROM attempt ORDER BY started_at, seq, attempt"
            ))
            .map_err(sql(path, "read attempts"))?;
        let mut rows = st.query([]).map_err(sql(path, "read attempts"))?;
        while let Some(r) = rows.next().map_err(sql(path, "read attempts"))? {
            let e = |x| sql(path, "read attempts")(x);
            let seq = r.get::<_, i64>(0).map_err(e)?.max(0) as u64;
            let Some(&ji) = index.get(&seq) else { continue };
            let slot = r.get::<_, i64>(2).map_err(e)?.max(0) as u32;
            let t0: f64 = r.get(3).map_err(e)?;
            let ended: Option<f64> = r.get(4).map_err(e)?;
            let duration: Option<f64> = r.get(5).map_err(e)?;
            let outcome: Option<String> = r.get(6).map_err(e)?;
            let session: i64 = r.get(12).map_err(e)?;
            let out = match outcome.as_deref() {
                Some("done") => 0,
                Some("requeued") => 1,
                Some("failed") => 2,
                Some("dead") => 3,
                Some(_) => 4,
                // No outcome: in flight now, or cut off by a crash.
                None if running && Some(session) == live_session => 5,
                None => 4,
            };
            let dur = duration
                .or_else(|| ended.map(|x| x - t0))
                .map(|d| ms(d.max(0.0)));
            if dur.is_none() && out == 4 {
                // Cut off by the end of its session: drawn up to where the
                // session ended, or the next one started.
                let cap = sessions.iter().position(|s| s.id == session).and_then(|k| {
                    sessions[k]
                        .ended_at
                        .or_else(|| sessions.get(k + 1).map(|n| n.started_at))
                });
                if let Some(cap) = cap {
                    open_end.insert(att.job.len(), ms((cap - t_start).max(t0 - t_start)));
                }
            }
            let why = r.get::<_, Option<String>>(10).map_err(e)?.map(|w| {
                *reason_ix.entry(w.clone()).or_insert_with(|| {
                    reasons.push(w);
                    (reasons.len() - 1) as u32
                })
            });
            let cause: Option<String> = r.get(13).map_err(e)?;
            let worker: Option<i64> = r.get(14).map_err(e)?;
            let host: Option<String> = r.get(15).map_err(e)?;
            // The run's own host is no host of its own.
            let host = host.filter(|h| *h != info.host);
            let key = LaneKey {
                host: host.clone(),
                worker,
                slot: if worker.is_some() { 0 } else { slot },
            };
            // Looked up before inserting: no allocation per attempt.
            let lane = match lane_ix.get(&key) {
                Some(&l) => l,
                None => {
                    let l = lane_keys.len() as u32;
                    lane_ix.insert(key.clone(), l);
                    lane_keys.push(key);
                    l
                }
            };
            let host = host.map(|h| match host_ix.get(&h) {
                Some(&i) => i,
                None => {
                    let i = hosts.len() as u32;
                    host_ix.insert(h.clone(), i);
                    hosts.push(h);
                    i
                }
            });
            att.job.push(ji);
            att.n.push(r.get::<_, i64>(1).map_err(e)?.max(0) as u32);
            att.slot.push(slot);
            att.lane.push(lane);
            att.worker.push(worker);
            att.host.push(host);
            att.cause.push(
                cause
                    .and_then(|c| CAUSES.iter().position(|k| *k == c))
                    .map(|k| k as u8),
            );
            att.t0.push(ms(t0 - t_start));
            att.dur.push(dur);
            att.out.push(out);
            att.exit.push(r.get(7).map_err(e)?);
            att.sig.push(r.get(8).map_err(e)?);
            att.to.push(u8::from(r.get::<_, i64>(9).map_err(e)? != 0));
            att.why.push(why);
            att.rss.push(r.get(11).map_err(e)?);
        }
    }

    // The timeline's rows in order.
    let mut order: Vec<u32> = (0..lane_keys.len() as u32).collect();
    order.sort_by(|a, b| lane_keys[*a as usize].cmp(&lane_keys[*b as usize]));
    let mut rank = vec![0u32; order.len()];
    for (r, &l) in order.iter().enumerate() {
        rank[l as usize] = r as u32;
    }
    for l in &mut att.lane {
        *l = rank[*l as usize];
    }
    let lanes: Vec<String> = order
        .iter()
        .map(|&l| lane_keys[l as usize].label())
        .collect();
    let by_worker = lane_keys.iter().any(|k| k.worker.is_some());
    let lane_kind = match (by_worker, hosts.is_empty()) {
        (true, false) => "worker and host",
        (true, true) => "worker",
        (false, false) => "slot and host",
        (false, true) => "slot",
    };

    // Failed and dead jobs, grouped by the cause of their last attempt
    // (and the exit code or signal). A job's cause: its last attempt's, or
    // worked out from the job's own reason and status (v1 journals, and
    // jobs without an attempt row).
    let job_cause = cause_from_v1("j.state", "j.reason", "0", "j.signal", "j.exit_code");
    let last_cause = if v2 {
        "(SELECT a.cause FROM attempt a WHERE a.seq = j.seq ORDER BY a.attempt DESC LIMIT 1)"
    } else {
        "NULL"
    };
    let mut failures: Vec<FailGroup> = Vec::new();
    let mut failed_total = 0u64;
    let mut listed = 0usize;
    let mut tails = 0usize;
    {
        let mut st = conn
            .prepare(&format!(
                "WITH f AS (SELECT j.seq, j.input, j.state, j.attempts, j.exit_code, j.signal, \
                   j.reason, COALESCE({last_cause}, {job_cause}, 'unknown') AS cause \
                   FROM job j WHERE j.state IN ('failed', 'dead')), \
                 k AS (SELECT f.*, CASE WHEN cause = 'exit' THEN exit_code END AS kx, \
                   CASE WHEN cause = 'signal' THEN signal END AS ks FROM f), \
                 g AS (SELECT cause, kx, ks, COUNT(*) AS n FROM k GROUP BY 1, 2, 3) \
                 SELECT k.cause, k.kx, k.ks, k.seq, k.input, k.state, k.attempts, k.exit_code, \
                   k.signal, o.data, o.total_bytes, g.n, k.reason \
                 FROM k JOIN g ON g.cause = k.cause AND g.kx IS k.kx AND g.ks IS k.ks \
                 LEFT JOIN output o ON o.seq = k.seq AND o.stream = 2 \
                 ORDER BY g.n DESC, k.cause, k.kx, k.ks, k.seq"
            ))
            .map_err(sql(path, "read failures"))?;
        let mut rows = st.query([]).map_err(sql(path, "read failures"))?;
        while let Some(r) = rows.next().map_err(sql(path, "read failures"))? {
            let e = |x| sql(path, "read failures")(x);
            let cause: String = r.get(0).map_err(e)?;
            let reason = match (
                r.get::<_, Option<i64>>(1).map_err(e)?,
                r.get::<_, Option<i64>>(2).map_err(e)?,
            ) {
                (Some(code), _) => format!("{cause}: exit code {code}"),
                (None, Some(sig)) => format!(
                    "{cause}: {}",
                    crate::job::signal_name(i32::try_from(sig).unwrap_or(0))
                ),
                (None, None) => cause,
            };
            let count = r.get::<_, i64>(11).map_err(e)?.max(0) as u64;
            failed_total += 1;
            if failures.last().is_none_or(|g| g.reason != reason) {
                failures.push(FailGroup {
                    reason,
                    count,
                    jobs: Vec::new(),
                });
            }
            if listed >= FAILED_JOBS_LIMIT {
                continue;
            }
            listed += 1;
            let input = match r.get_ref(4).map_err(e)? {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b,
                _ => &[],
            };
            let input = shown(esc, input, TABLE_INPUT_CHARS, &mut buf);
            let stderr = match r.get_ref(9).map_err(e)? {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b)
                    if !b.is_empty() && tails < STDERR_TAILS_LIMIT =>
                {
                    tails += 1;
                    Some(tail(esc, b))
                }
                _ => None,
            };
            let group = failures.last_mut().expect("pushed above");
            group.jobs.push(FailJob {
                seq: r.get::<_, i64>(3).map_err(e)?.max(0) as u64,
                input,
                state: r.get(5).map_err(e)?,
                attempts: r.get(6).map_err(e)?,
                exit: r.get(7).map_err(e)?,
                sig: r.get(8).map_err(e)?,
                why: r.get(12).map_err(e)?,
                stderr,
                stderr_bytes: r.get::<_, Option<i64>>(10).map_err(e)?.unwrap_or(0).max(0) as u64,
            });
        }
    }

    // The slowest and the largest attempts (one per job).
    let top = |order: &str| -> Result<Vec<TopRow>, JournalError> {
        let q = format!(
            "SELECT a.seq, a.attempt, a.outcome, a.duration, a.max_rss_kb, j.input \
             FROM attempt a JOIN job j ON j.seq = a.seq \
             WHERE a.{order} IS NOT NULL AND a.attempt = (SELECT a2.attempt FROM attempt a2 \
               WHERE a2.seq = a.seq AND a2.{order} IS NOT NULL \
               ORDER BY a2.{order} DESC, a2.attempt LIMIT 1) \
             ORDER BY a.{order} DESC, a.seq LIMIT ?1"
        );
        let mut st = conn.prepare(&q).map_err(sql(path, "read the top jobs"))?;
        let mut rows = st
            .query([TOP_N as i64])
            .map_err(sql(path, "read the top jobs"))?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(r) = rows.next().map_err(sql(path, "read the top jobs"))? {
            let e = |x| sql(path, "read the top jobs")(x);
            let input = match r.get_ref(5).map_err(e)? {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b,
                _ => &[],
            };
            out.push(TopRow {
                seq: r.get::<_, i64>(0).map_err(e)?.max(0) as u64,
                attempt: r.get::<_, i64>(1).map_err(e)?.max(0) as u32,
                outcome: r
                    .get::<_, Option<String>>(2)
                    .map_err(e)?
                    .unwrap_or_else(|| "running".into()),
                duration: r.get(3).map_err(e)?,
                rss: r.get(4).map_err(e)?,
                input: shown(esc, input, 300, &mut buf),
            });
        }
        Ok(out)
    };
    let slowest = top("duration")?;
    let largest = top("max_rss_kb")?;

    let collected = info.options.get("source").is_some();
    let read_times = v2 && unread == 0 && !jobs.seq.is_empty();
    let mut notes = Vec::new();
    if !v2 {
        notes.push(
            "This journal has schema v1 (an older jobmill wrote it): it does not record which \
             worker or host ran each attempt, so the timeline has one row per slot ({%}) of \
             the run's host; nor how each attempt ended, so the failures are grouped by causes \
             worked out from their reasons and exit statuses."
                .to_string(),
        );
        notes.push(
            "It does not record when each job was read either, so the number of queued jobs \
             over time cannot be drawn (only finished and running)."
                .to_string(),
        );
    } else if unread > 0 && !collected {
        notes.push(format!(
            "{unread} of the {} jobs were recorded before this journal was migrated from \
             schema v1: their read times, and the workers and hosts of their attempts, are \
             not known, so queued jobs over time are not drawn.",
            jobs.seq.len()
        ));
    }
    notes.push(
        "Stored output is kept for each job's last finished attempt only: the stderr shown \
         for a failure is that of its final attempt."
            .to_string(),
    );
    if collected {
        notes.push(
            "This journal was collected from a shared queue: it holds each job's last \
             attempt only, without its slot (drawn by the worker and host its record names, \
             when it names them), its read time, its peak memory or its output (no stderr)."
                .to_string(),
        );
    }
    if info.persistent() {
        notes.push(if by_worker {
            "A persistent run: each row is one long-lived worker process (a worker that \
             was restarted is a new row); the attempts are the jobs it was sent."
                .to_string()
        } else {
            "A persistent run: each slot is one long-lived worker process; the attempts \
             are the jobs it was sent."
                .to_string()
        });
    }
    if att.job.len() > DOM_BAR_LIMIT {
        notes.push(format!(
            "{} attempts: the timeline is drawn on a canvas (one DOM element per attempt \
             only up to {DOM_BAR_LIMIT}).",
            att.job.len()
        ));
    }

    let attempts = att.job.len();
    let canvas = attempts > DOM_BAR_LIMIT;
    let data = Data {
        run: RunData {
            run_id: info.run_id.clone(),
            command: info.command_display.clone(),
            options: info.options.clone(),
            host: info.host.clone(),
            cwd: String::from_utf8_lossy(&{
                let mut b = Vec::new();
                esc(
                    std::os::unix::ffi::OsStrExt::as_bytes(info.cwd.as_os_str()),
                    &mut b,
                );
                b
            })
            .into_owned(),
            started_at: info.started_at,
            started_utc: format_utc(info.started_at),
            ended_at: info.ended_at,
            ended_utc: info.ended_at.map(format_utc),
            end_reason: info.end_reason.clone(),
            state: match &live {
                Liveness::Running { pid } => format!("running (pid {pid})"),
                other => other.as_str().to_string(),
            },
            input_complete: info.input_complete,
            total_jobs: info.total_jobs,
            version: info.jobmill_version.clone(),
            generated_utc: format_utc(opts.now),
        },
        sessions: sessions
            .iter()
            .map(|s| SessionData {
                id: s.id,
                kind: s.kind.clone(),
                start: ms(s.started_at - t_start),
                end: s.ended_at.map(|e| ms(e - t_start)),
                end_reason: s.end_reason.clone(),
            })
            .collect(),
        counts: CountsData {
            queued: counts.queued,
            running: counts.running,
            done: counts.done,
            failed: counts.failed,
            dead: counts.dead,
        },
        lanes,
        lane_kind,
        jobs,
        att,
        reasons,
        hosts,
        outcomes: OUTCOMES,
        causes: CAUSES,
        schema,
        read_times,
        failures,
        failed_total,
        failed_listed: listed,
        slowest,
        largest,
        notes,
        dom_bar_limit: DOM_BAR_LIMIT,
        span: ms((end - t_start).max(0.0)),
        open_end,
    };
    let json = serde_json::to_string(&data).map_err(|e| JournalError::Invalid {
        path: path.to_path_buf(),
        detail: format!("encoding the report's data: {e}"),
    })?;
    Ok(Page {
        html: render(&info.run_id, &json),
        run_id: info.run_id,
        attempts,
        canvas,
    })
}

const CSS: &str = include_str!("report.css");
const JS: &str = include_str!("report.js");

/// Text safe inside an HTML element or attribute.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside a `<script>` element: every `<` as `\u003c` (so
/// neither `</script>` nor `<!--` appears), which JSON reads back as `<`.
/// `<` can only occur inside JSON strings, where the escape is valid.
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
}

fn render(run_id: &str, json: &str) -> String {
    let mut html = String::with_capacity(json.len() + CSS.len() + JS.len() + 4096);
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n",
    );
    html.push_str("<link rel=\"icon\" href=\"data:,\">\n");
    html.push_str(&format!(
        "<title>jobmill run {}</title>\n<style>\n",
        html_escape(run_id)
    ));
    html.push_str(CSS);
    html.push_str("</style>\n</head>\n<body>\n<div id=\"app\"><p class=\"loading\">Drawing the run…</p></div>\n");
    html.push_str("<div id=\"tip\" hidden></div>\n");
    html.push_str("<footer>Made by <code>jobmill report</code>. Page load: <span id=\"load-ms\">?</span> ms.</footer>\n");
    html.push_str("<script type=\"application/json\" id=\"data\">");
    html.push_str(&script_safe(json));
    html.push_str("</script>\n<script>\n");
    html.push_str(JS);
    html.push_str("</script>\n</body>\n</html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(b: &[u8], out: &mut Vec<u8>) {
        for chunk in b.utf8_chunks() {
            out.extend_from_slice(chunk.valid().as_bytes());
            for &x in chunk.invalid() {
                out.extend_from_slice(format!("\\x{x:02x}").as_bytes());
            }
        }
    }

    #[test]
    fn the_data_cannot_close_its_script_element() {
        let s = script_safe(r#"{"a":"</script><!-- x"}"#);
        assert!(!s.contains('<'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["a"], "</script><!-- x");
    }

    #[test]
    fn tails_keep_the_last_lines_escaped() {
        let t = tail(esc, b"1\n2\n3\n4\n5\n6\n7\nlast \xff\n");
        assert_eq!(t, "…\n3\n4\n5\n6\n7\nlast \\xff");
        assert_eq!(tail(esc, b"one"), "one");
    }

    #[test]
    fn shown_cuts_on_characters() {
        let mut buf = Vec::new();
        assert_eq!(shown(esc, "ééé".as_bytes(), 2, &mut buf), "éé…");
        assert_eq!(shown(esc, b"ab", 2, &mut buf), "ab");
    }
}
