//! The completions log: where a finished attempt becomes durable before
//! the journal's next group commit.
//!
//! No attempt may start until every attempt end recorded before it would
//! survive a crash (the durability gate, `docs/JOURNAL.md`). An SQLite
//! commit per finished job on that path cost 8% of the throughput of 2000
//! `true` jobs; an append to this log costs one `write(2)`, shared by the
//! ends buffered since the last start. So:
//!
//! ```text
//! attempt ends ──► its record is buffered ──► written before the next start (one write(2))
//!              └─► queue the event ──► group commit into SQLite (writer thread, every 50 ms)
//! ```
//!
//! A record holds everything the journal stores of the attempt (times,
//! slot, exit, reason, capped output), framed as `length (u32 LE) ·
//! CRC-32 of the body (u32 LE) · body`. After a group commit reaches the
//! disk, the records it covers are dropped (the file is truncated).
//! Closing the journal removes the file. When jobmill dies, the file holds
//! the ends that the journal may lack; [`recover`] (run by `jobmill
//! resume` and the read commands, whenever no jobmill holds the journal)
//! writes them into it in one transaction, skipping those already there,
//! then removes the file.
//!
//! The codec (`encode`, `decode`) does no I/O; a malformed record is an
//! error, never a panic. Reading stops at the first record that is
//! incomplete (a write torn by a machine crash: nothing after it was
//! acknowledged) or fails its checksum; in the second case the file is
//! kept, renamed `<journal>-completions.corrupt`, and the report says so.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};

use super::JournalError;

/// The log of journal `journal`: `<journal>-completions`.
pub fn path_of(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push("-completions");
    PathBuf::from(p)
}

/// Largest record body accepted when reading (two capped outputs of up to
/// 1 GiB each and the rest); a larger length is corruption.
const MAX_BODY: u32 = u32::MAX / 2;

/// Byte that starts the body of an attempt's end as jobmill wrote it for
/// journal schema version 1 (the log's first format held only these);
/// still read, never written.
const VERSION: u8 = 1;

/// Byte that starts the body of an attempt's start (schema version 1
/// layout: no worker or host); still read, never written.
const KIND_START: u8 = 2;

/// Byte that starts the body of an attempt's end: the version 1 layout
/// followed by its cause, worker and host (journal schema version 2).
const KIND_END_V2: u8 = 3;

/// Byte that starts the body of an attempt's start with its worker and
/// host (journal schema version 2).
const KIND_START_V2: u8 = 4;

/// How attempts can end (the `attempt.cause` column), by their code in a
/// record.
pub(crate) use crate::outcome::CAUSES;

/// Who ran an attempt, beyond its slot (the `attempt.worker` and
/// `attempt.host` columns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RanBy {
    /// The long-lived worker; `None` for a process per attempt.
    pub worker: Option<u64>,
    /// The host; `None`: the run's host.
    pub host: Option<String>,
}

/// What attempts can end as (the `attempt.outcome` column).
pub(crate) const OUTCOMES: [&str; 5] = ["done", "requeued", "failed", "dead", "interrupted"];

/// What a job can be left as after an attempt (the `job.state` column).
pub(crate) const JOB_STATES: [&str; 5] = ["queued", "running", "done", "failed", "dead"];

/// One attempt's end, with what is needed to record its start too.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Completion {
    /// The session (journal row id) the attempt ran in.
    pub session: i64,
    /// The job's sequence number.
    pub seq: u64,
    /// The slot it ran in.
    pub slot: u64,
    /// When it started (Unix seconds; the value its start was recorded
    /// with, so the two can be matched).
    pub started_at: f64,
    /// When it ended (Unix seconds).
    pub ended_at: f64,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Signal, if one killed it.
    pub signal: Option<i32>,
    /// Stopped by its timeout.
    pub timed_out: bool,
    /// One of [`OUTCOMES`].
    pub outcome: &'static str,
    /// One of [`JOB_STATES`]: what the job is after this attempt.
    pub job_state: &'static str,
    /// Why it failed, died or was requeued.
    pub reason: Option<String>,
    /// Seconds it ran; `None` when not known (a long-lived worker's job).
    pub duration: Option<f64>,
    /// Peak RSS in KiB; `None` when not known.
    pub max_rss_kib: Option<u64>,
    /// One of [`CAUSES`]; `None` when not known (a record of schema
    /// version 1).
    pub cause: Option<&'static str>,
    /// Who ran it.
    pub ran_by: RanBy,
    /// Kept stdout (index 0) and stderr (index 1), if any.
    pub output: [Option<Output>; 2],
}

/// One attempt's start: written in the same `write(2)` as the ends
/// buffered before it, before the attempt runs, so that an attempt that
/// ran is in the log even if jobmill dies before the next batch commit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Start {
    /// The session (journal row id) the attempt runs in.
    pub session: i64,
    /// The job's sequence number.
    pub seq: u64,
    /// The slot it runs in.
    pub slot: u64,
    /// When it started (Unix seconds; as its start event records it).
    pub started_at: f64,
    /// Who runs it.
    pub ran_by: RanBy,
}

/// A record of the log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// An attempt started.
    Start(Start),
    /// An attempt ended.
    End(Box<Completion>),
}

/// A stream's kept output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Output {
    /// At most the cap.
    pub data: Vec<u8>,
    /// Bytes the job wrote.
    pub total: u64,
    /// `data` holds less than `total`.
    pub truncated: bool,
}

impl Completion {
    /// When the job reached its final state, if this attempt ended it.
    pub fn final_at(&self) -> Option<f64> {
        matches!(self.job_state, "done" | "failed" | "dead").then_some(self.ended_at)
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame says: the end of a torn write.
    #[error("incomplete record ({have} of {need} bytes)")]
    Incomplete {
        /// Bytes available.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// The checksum does not match the body.
    #[error("checksum mismatch")]
    Checksum,
    /// The body does not parse.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

const FLAG_EXIT: u8 = 1;
const FLAG_SIGNAL: u8 = 2;
const FLAG_TIMED_OUT: u8 = 4;
const FLAG_REASON: u8 = 8;
const FLAG_OUT: [u8; 2] = [16, 32];

/// Appends the framed record of `c` to `buf`.
///
/// # Panics
///
/// If `c.outcome` or `c.job_state` is not one of [`OUTCOMES`] /
/// [`JOB_STATES`] (a bug: they come from this crate's constants), or the
/// body exceeds [`MAX_BODY`] (outputs are capped well below it).
pub(crate) fn encode(c: &Completion, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    let body = buf.len();
    let code = |table: &[&str], s: &str| {
        table
            .iter()
            .position(|t| *t == s)
            .expect("outcome and job state come from the tables") as u8
    };
    let mut flags = 0;
    if c.exit_code.is_some() {
        flags |= FLAG_EXIT;
    }
    if c.signal.is_some() {
        flags |= FLAG_SIGNAL;
    }
    if c.timed_out {
        flags |= FLAG_TIMED_OUT;
    }
    if c.reason.is_some() {
        flags |= FLAG_REASON;
    }
    for (i, o) in c.output.iter().enumerate() {
        if o.is_some() {
            flags |= FLAG_OUT[i];
        }
    }
    buf.push(KIND_END_V2);
    buf.push(flags);
    buf.push(code(&OUTCOMES, c.outcome));
    buf.push(code(&JOB_STATES, c.job_state));
    buf.extend_from_slice(&c.session.to_le_bytes());
    buf.extend_from_slice(&c.seq.to_le_bytes());
    buf.extend_from_slice(&c.slot.to_le_bytes());
    buf.extend_from_slice(&c.started_at.to_le_bytes());
    buf.extend_from_slice(&c.ended_at.to_le_bytes());
    // Unknown values are written as NaN and u64::MAX (never measured).
    buf.extend_from_slice(&c.duration.unwrap_or(f64::NAN).to_le_bytes());
    buf.extend_from_slice(&c.max_rss_kib.unwrap_or(u64::MAX).to_le_bytes());
    buf.extend_from_slice(&c.exit_code.unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&c.signal.unwrap_or(0).to_le_bytes());
    if let Some(r) = &c.reason {
        buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
        buf.extend_from_slice(r.as_bytes());
    }
    for o in c.output.iter().flatten() {
        buf.extend_from_slice(&o.total.to_le_bytes());
        buf.push(u8::from(o.truncated));
        buf.extend_from_slice(&(o.data.len() as u32).to_le_bytes());
        buf.extend_from_slice(&o.data);
    }
    buf.push(c.cause.map_or(u8::MAX, |cause| code(&CAUSES, cause)));
    encode_ran_by(&c.ran_by, buf);
    let len = u32::try_from(buf.len() - body)
        .ok()
        .filter(|l| *l <= MAX_BODY)
        .expect("record body within MAX_BODY");
    let crc = crc32fast::hash(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends the framed record of start `st` to `buf`.
pub(crate) fn encode_start(st: &Start, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    let body = buf.len();
    buf.push(KIND_START_V2);
    buf.extend_from_slice(&st.session.to_le_bytes());
    buf.extend_from_slice(&st.seq.to_le_bytes());
    buf.extend_from_slice(&st.slot.to_le_bytes());
    buf.extend_from_slice(&st.started_at.to_le_bytes());
    encode_ran_by(&st.ran_by, buf);
    let len = (buf.len() - body) as u32;
    let crc = crc32fast::hash(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `r`: the worker (`u64::MAX`: none), then a host flag (0 or 1)
/// and the host's length-prefixed bytes.
fn encode_ran_by(r: &RanBy, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&r.worker.unwrap_or(u64::MAX).to_le_bytes());
    match &r.host {
        Some(h) => {
            buf.push(1);
            buf.extend_from_slice(&(h.len() as u32).to_le_bytes());
            buf.extend_from_slice(h.as_bytes());
        }
        None => buf.push(0),
    }
}

/// Reads what [`encode_ran_by`] wrote.
fn decode_ran_by(r: &mut Reader<'_>) -> Result<RanBy, DecodeError> {
    let worker = Some(r.u64()?).filter(|&w| w != u64::MAX);
    let host = match r.u8()? {
        0 => None,
        1 => Some(
            std::str::from_utf8(r.bytes()?)
                .map_err(|_| DecodeError::Malformed("host is not UTF-8"))?
                .to_owned(),
        ),
        _ => return Err(DecodeError::Malformed("bad host flag")),
    };
    Ok(RanBy { worker, host })
}

/// A cursor over a body that fails instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Malformed("body ends early"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_le_bytes)
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_le_bytes)
    }
    fn f64(&mut self) -> Result<f64, DecodeError> {
        self.array().map(f64::from_le_bytes)
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The length of the frame at the start of `bytes`, once its 8-byte
/// header is there.
///
/// # Errors
///
/// [`DecodeError::Incomplete`] with fewer than 8 bytes;
/// [`DecodeError::Malformed`] for a length past `MAX_BODY`.
pub fn frame_len(bytes: &[u8]) -> Result<usize, DecodeError> {
    if bytes.len() < 8 {
        return Err(DecodeError::Incomplete {
            have: bytes.len(),
            need: 8,
        });
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if len > MAX_BODY {
        return Err(DecodeError::Malformed("length past the limit"));
    }
    Ok(8 + len as usize)
}

/// Decodes the record at the start of `bytes`; returns it and the bytes
/// it took.
///
/// # Errors
///
/// [`DecodeError`]: incomplete, checksum mismatch or malformed. Never
/// panics, whatever the bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
    let need = frame_len(bytes)?;
    if bytes.len() < need {
        return Err(DecodeError::Incomplete {
            have: bytes.len(),
            need,
        });
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[8..need];
    if crc32fast::hash(body) != crc {
        return Err(DecodeError::Checksum);
    }
    let mut r = Reader { bytes: body };
    let kind = r.u8()?;
    match kind {
        VERSION | KIND_END_V2 => {}
        KIND_START | KIND_START_V2 => {
            let mut st = Start {
                session: r.i64()?,
                seq: r.u64()?,
                slot: r.u64()?,
                started_at: r.f64()?,
                ran_by: RanBy::default(),
            };
            if kind == KIND_START_V2 {
                st.ran_by = decode_ran_by(&mut r)?;
            }
            if !r.bytes.is_empty() {
                return Err(DecodeError::Malformed("trailing bytes"));
            }
            return Ok((Record::Start(st), need));
        }
        _ => return Err(DecodeError::Malformed("unknown version")),
    }
    let flags = r.u8()?;
    let outcome = *OUTCOMES
        .get(usize::from(r.u8()?))
        .ok_or(DecodeError::Malformed("unknown outcome"))?;
    let job_state = *JOB_STATES
        .get(usize::from(r.u8()?))
        .ok_or(DecodeError::Malformed("unknown job state"))?;
    let session = r.i64()?;
    let seq = r.u64()?;
    let slot = r.u64()?;
    let started_at = r.f64()?;
    let ended_at = r.f64()?;
    let duration = Some(r.f64()?).filter(|d| !d.is_nan());
    let max_rss_kib = Some(r.u64()?).filter(|&k| k != u64::MAX);
    let exit_code = r.i32()?;
    let signal = r.i32()?;
    let reason = if flags & FLAG_REASON != 0 {
        let b = r.bytes()?;
        Some(
            std::str::from_utf8(b)
                .map_err(|_| DecodeError::Malformed("reason is not UTF-8"))?
                .to_owned(),
        )
    } else {
        None
    };
    let mut output: [Option<Output>; 2] = [None, None];
    for (i, slot_out) in output.iter_mut().enumerate() {
        if flags & FLAG_OUT[i] != 0 {
            let total = r.u64()?;
            let truncated = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Malformed("bad truncated flag")),
            };
            let data = r.bytes()?.to_vec();
            *slot_out = Some(Output {
                data,
                total,
                truncated,
            });
        }
    }
    let (cause, ran_by) = if kind == KIND_END_V2 {
        let cause = match r.u8()? {
            u8::MAX => None,
            c => Some(
                *CAUSES
                    .get(usize::from(c))
                    .ok_or(DecodeError::Malformed("unknown cause"))?,
            ),
        };
        (cause, decode_ran_by(&mut r)?)
    } else {
        (None, RanBy::default())
    };
    if !r.bytes.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok((
        Record::End(Box::new(Completion {
            session,
            seq,
            slot,
            started_at,
            ended_at,
            exit_code: (flags & FLAG_EXIT != 0).then_some(exit_code),
            signal: (flags & FLAG_SIGNAL != 0).then_some(signal),
            timed_out: flags & FLAG_TIMED_OUT != 0,
            outcome,
            job_state,
            reason,
            duration,
            max_rss_kib,
            cause,
            ran_by,
            output,
        })),
        need,
    ))
}

/// The open log of a running journal, appended to by slots and truncated
/// by the writer thread once a synced commit covers every record.
#[derive(Debug)]
pub(crate) struct Log {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    pub len: u64,
    /// Encoded records not written yet.
    buf: Vec<u8>,
    /// The journal ticket of the last record buffered.
    pub buffered_ticket: u64,
}

impl Log {
    /// Creates the log of `journal`, which must not exist.
    ///
    /// # Errors
    ///
    /// [`JournalError::Invalid`] if it exists (an unrecovered log is never
    /// overwritten); [`JournalError::Io`] if it cannot be created.
    pub fn create(journal: &Path) -> Result<Log, JournalError> {
        let path = path_of(journal);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(super::private::FILE_MODE)
            .open(&path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    JournalError::Invalid {
                        path: journal.to_path_buf(),
                        detail: format!(
                            "{} exists and was not recovered; run `jobmill resume` on the journal first",
                            path.display()
                        ),
                    }
                } else {
                    JournalError::Io {
                        path: path.clone(),
                        cause: source,
                    }
                }
            })?;
        Ok(Log {
            path,
            file,
            len: 0,
            buf: Vec::with_capacity(4096),
            buffered_ticket: 0,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the record of `c` to the records waiting for [`Log::write`].
    pub fn buffer(&mut self, c: &Completion) {
        encode(c, &mut self.buf);
    }

    /// Adds the record of start `st` to the records waiting for
    /// [`Log::write`].
    pub fn buffer_start(&mut self, st: &Start) {
        encode_start(st, &mut self.buf);
    }

    /// Whether records wait for [`Log::write`].
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Appends the buffered records in one `write(2)`; with `sync`, waits
    /// until they are on disk.
    ///
    /// # Errors
    ///
    /// The write or sync failed (disk full, I/O error). The caller must
    /// stop. The file is cut back to its last whole record (best effort;
    /// [`recover`] ignores a partial one anyway).
    pub fn write(&mut self, sync: bool) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// A second descriptor of the file, to sync it without the log's lock.
    pub fn sync_handle(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Drops every record (all are committed and synced in the journal).
    ///
    /// # Errors
    ///
    /// The truncation failed; the records stay, and recovery would skip
    /// them as already recorded.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    /// Removes the file (the journal holds every record, on disk).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What [`recover`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Attempt ends written into the journal.
    pub applied: u64,
    /// Attempt starts written into the journal (attempts that started but
    /// whose start was not committed; without an end, `jobmill resume`
    /// records them `interrupted`).
    pub started: u64,
    /// Records that the journal already held.
    pub already: u64,
    /// Where the log was kept because a record failed its checksum or did
    /// not parse (the records before it were recovered).
    pub kept_as: Option<PathBuf>,
    /// Why it was kept.
    pub problem: Option<String>,
}

/// Writes the records of `journal`'s completions log that the journal
/// lacks into it, in one `FULL` transaction (which first migrates a
/// journal of an older schema version, `schema::migrate_in`),
/// then removes the log. The caller holds the journal's lock and has
/// checked the journal.
///
/// Does nothing when there is no log.
///
/// # Errors
///
/// The log cannot be read, or the journal cannot be written (then neither
/// file is changed: the transaction is rolled back).
pub fn recover(journal: &Path) -> Result<Recovered, JournalError> {
    let path = path_of(journal);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => f
            .read_to_end(&mut bytes)
            .map_err(|source| JournalError::Io {
                path: path.clone(),
                cause: source,
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(source) => {
            return Err(JournalError::Io {
                path,
                cause: source,
            })
        }
    };
    let mut report = Recovered::default();
    if !bytes.is_empty() {
        let mut conn = super::writer::open_rw(journal)?;
        let tx = conn
            .transaction()
            .map_err(JournalError::sqlite(journal, "begin recovery"))?;
        // A log left by a jobmill of schema version 1 goes into the
        // journal migrated first, in the same transaction.
        super::schema::migrate_in(&tx, journal)?;
        let mut at = 0;
        while at < bytes.len() {
            match decode(&bytes[at..]) {
                Ok((Record::End(c), n)) => {
                    at += n;
                    if apply(&tx, &c).map_err(JournalError::sqlite(journal, "recover"))? {
                        report.applied += 1;
                    } else {
                        report.already += 1;
                    }
                }
                Ok((Record::Start(st), n)) => {
                    at += n;
                    if apply_start(&tx, &st).map_err(JournalError::sqlite(journal, "recover"))? {
                        report.started += 1;
                    } else {
                        report.already += 1;
                    }
                }
                // A write torn by a machine crash: nothing after it was
                // acknowledged to a slot.
                Err(DecodeError::Incomplete { .. }) => break,
                Err(e) => {
                    report.problem = Some(format!("{e} at byte {at} of {}", path.display()));
                    break;
                }
            }
        }
        tx.commit()
            .map_err(JournalError::sqlite(journal, "commit recovery"))?;
    }
    if report.problem.is_some() {
        let kept = unused_name(&path, "corrupt");
        std::fs::rename(&path, &kept).map_err(|source| JournalError::Io {
            path: path.clone(),
            cause: source,
        })?;
        report.kept_as = Some(kept);
    } else {
        std::fs::remove_file(&path).map_err(|source| JournalError::Io {
            path,
            cause: source,
        })?;
    }
    Ok(report)
}

/// `<path>.<suffix>`, or `<path>.<suffix>.N` for the first N free.
fn unused_name(path: &Path, suffix: &str) -> PathBuf {
    let base = format!("{}.{suffix}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}

/// Records `c` unless the journal has it; returns whether it wrote.
fn apply(tx: &rusqlite::Transaction<'_>, c: &Completion) -> rusqlite::Result<bool> {
    let seq = c.seq as i64;
    let known: Option<Option<String>> = tx
        .query_row(
            "SELECT outcome FROM attempt WHERE seq = ?1 AND session = ?2 AND started_at = ?3",
            params![seq, c.session, c.started_at],
            |r| r.get(0),
        )
        .optional()?;
    match known {
        Some(Some(_)) => Ok(false),
        Some(None) => {
            super::writer::record_end(tx, c, super::writer::StartRow::Recorded, true)?;
            Ok(true)
        }
        None => {
            let job: Option<i64> = tx
                .query_row("SELECT seq FROM job WHERE seq = ?1", [seq], |r| r.get(0))
                .optional()?;
            if job.is_none() {
                // Cannot happen (a job's row is committed before it
                // starts); nothing to attach the end to.
                return Ok(false);
            }
            super::writer::record_end(tx, c, super::writer::StartRow::Missing, true)?;
            Ok(true)
        }
    }
}

/// Records start `st` unless the journal has it (or has no row for its
/// job); returns whether it wrote.
fn apply_start(tx: &rusqlite::Transaction<'_>, st: &Start) -> rusqlite::Result<bool> {
    let seq = st.seq as i64;
    let known: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM attempt WHERE seq = ?1 AND session = ?2 AND started_at = ?3",
            params![seq, st.session, st.started_at],
            |r| r.get(0),
        )
        .optional()?;
    if known.is_some() {
        return Ok(false);
    }
    let job: Option<i64> = tx
        .query_row("SELECT seq FROM job WHERE seq = ?1", [seq], |r| r.get(0))
        .optional()?;
    if job.is_none() {
        return Ok(false);
    }
    super::rows::record_start(
        tx,
        st.seq,
        st.session,
        st.slot as usize,
        st.started_at,
        &st.ran_by,
    )?;
    Ok(true)
}

/// Runs [`recover`] if a completions log exists and no jobmill holds the
/// journal (one that does owns its log). For the read commands.
///
/// # Errors
///
/// As [`recover`].
pub fn recover_if_idle(journal: &Path) -> Result<Option<Recovered>, JournalError> {
    if !path_of(journal).exists() {
        return Ok(None);
    }
    let _lock = match super::JournalLock::acquire(journal) {
        Ok(lock) => lock,
        Err(JournalError::Locked { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    recover(journal).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Completion {
        Completion {
            session: 2,
            seq: 17,
            slot: 3,
            started_at: 1_790_000_000.25,
            ended_at: 1_790_000_001.5,
            exit_code: Some(3),
            signal: None,
            timed_out: false,
            outcome: "failed",
            job_state: "failed",
            reason: Some("exit status 3".into()),
            duration: Some(1.25),
            max_rss_kib: Some(4096),
            cause: Some("exit"),
            ran_by: RanBy {
                worker: Some(4),
                host: Some("node-7".into()),
            },
            output: [
                Some(Output {
                    data: b"out\n".to_vec(),
                    total: 4,
                    truncated: false,
                }),
                None,
            ],
        }
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        let (c, n) = decode(&buf).unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(c, Record::End(Box::new(sample())));
    }

    #[test]
    fn a_start_record_decodes_to_what_was_encoded_and_tears_as_incomplete() {
        let st = Start {
            session: 3,
            seq: 42,
            slot: 2,
            started_at: 1_790_000_000.5,
            ran_by: RanBy {
                worker: Some(9),
                host: None,
            },
        };
        let mut buf = Vec::new();
        encode_start(&st, &mut buf);
        encode(&sample(), &mut buf);
        let (r, n) = decode(&buf).unwrap();
        assert_eq!(r, Record::Start(st.clone()));
        assert_eq!(
            decode(&buf[n..]).unwrap().0,
            Record::End(Box::new(sample()))
        );
        for cut in 0..n {
            assert!(matches!(
                decode(&buf[..cut]),
                Err(DecodeError::Incomplete { .. })
            ));
        }
    }

    #[test]
    fn a_torn_record_is_incomplete_and_a_flipped_bit_fails_the_checksum() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut]), Err(DecodeError::Incomplete { .. })),
                "cut at {cut}"
            );
        }
        for i in 8..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad).unwrap_err(), DecodeError::Checksum, "byte {i}");
        }
    }

    /// `c` framed as jobmill wrote it for journal schema version 1: the
    /// version byte 1 and no cause, worker or host.
    fn encode_v1(c: &Completion) -> Vec<u8> {
        let mut v2 = Vec::new();
        let mut c = c.clone();
        c.cause = None;
        c.ran_by = RanBy::default();
        encode(&c, &mut v2);
        // The version 2 body ends with: cause (1), worker (8), host flag (1).
        let mut body = v2[8..v2.len() - 10].to_vec();
        body[0] = VERSION;
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        buf
    }

    #[test]
    fn records_of_schema_version_1_still_decode_without_cause_worker_or_host() {
        let buf = encode_v1(&sample());
        let (r, n) = decode(&buf).unwrap();
        assert_eq!(n, buf.len());
        let mut expected = sample();
        expected.cause = None;
        expected.ran_by = RanBy::default();
        assert_eq!(r, Record::End(Box::new(expected)));
        // A version 1 start: kind 2, no worker or host.
        let mut body = vec![KIND_START];
        body.extend_from_slice(&3i64.to_le_bytes());
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        body.extend_from_slice(&1.5f64.to_le_bytes());
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        let st = Start {
            session: 3,
            seq: 42,
            slot: 2,
            started_at: 1.5,
            ran_by: RanBy::default(),
        };
        assert_eq!(decode(&buf).unwrap().0, Record::Start(st));
    }

    #[test]
    fn recovering_an_older_jobmills_log_into_its_v1_journal_migrates_the_journal_first() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("old.sqlite");
        let conn = rusqlite::Connection::open(&journal).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(include_str!("../../tests/fixtures/journal_v1_schema.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../../tests/fixtures/journal_v1_rows.sql"))
            .unwrap();
        drop(conn);
        // The end of job 5's attempt, which the v1 journal lacks, as a v1
        // jobmill logged it: it timed out.
        let end = Completion {
            session: 1,
            seq: 5,
            slot: 1,
            started_at: 1_790_000_001.6,
            ended_at: 1_790_000_003.0,
            exit_code: None,
            signal: Some(15),
            timed_out: true,
            outcome: "dead",
            job_state: "dead",
            reason: Some("timed out".into()),
            duration: Some(1.4),
            max_rss_kib: Some(900),
            cause: None,
            ran_by: RanBy::default(),
            output: [None, None],
        };
        std::fs::write(path_of(&journal), encode_v1(&end)).unwrap();
        let r = recover(&journal).unwrap();
        assert_eq!((r.applied, r.already, r.problem), (1, 0, None));
        let db = rusqlite::Connection::open(&journal).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let causes: Vec<(i64, Option<String>, Option<String>)> = db
            .prepare("SELECT seq, outcome, cause FROM attempt ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            causes,
            [
                (1, s("done"), s("succeeded")),
                (2, s("done"), s("succeeded")),
                (3, s("failed"), s("exit")),
                (4, s("dead"), s("timeout")),
                (5, s("dead"), s("timeout")),
            ],
            "back-filled by the migration, and worked out for the recovered v1 record"
        );
    }

    fn completion() -> impl Strategy<Value = Completion> {
        let out = proptest::option::of(
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<u64>(),
                any::<bool>(),
            )
                .prop_map(|(data, total, truncated)| Output {
                    data,
                    total,
                    truncated,
                }),
        );
        (
            (any::<i64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            (
                proptest::option::of(any::<i32>()),
                proptest::option::of(any::<i32>()),
                any::<bool>(),
                0..OUTCOMES.len(),
                0..JOB_STATES.len(),
            ),
            proptest::option::of(".{0,20}"),
            (out.clone(), out),
        )
            .prop_map(
                |(
                    (session, seq, slot, rss),
                    (exit_code, signal, timed_out, o, s),
                    reason,
                    (a, b),
                )| {
                    Completion {
                        session,
                        seq,
                        slot,
                        started_at: seq as f64 / 3.0,
                        ended_at: slot as f64 * 1.5,
                        exit_code,
                        signal,
                        timed_out,
                        outcome: OUTCOMES[o],
                        job_state: JOB_STATES[s],
                        reason,
                        duration: Some(0.5),
                        max_rss_kib: Some(rss),
                        cause: CAUSES.get(o * 2).copied(),
                        ran_by: RanBy {
                            worker: Some(slot).filter(|s| s % 2 == 0),
                            host: Some(format!("h{session}")).filter(|_| seq % 2 == 0),
                        },
                        output: [a, b],
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn records_roundtrip_back_to_back(cs in proptest::collection::vec(completion(), 1..8)) {
            let mut buf = Vec::new();
            for c in &cs {
                encode(c, &mut buf);
            }
            let mut at = 0;
            for c in &cs {
                let (d, n) = decode(&buf[at..]).unwrap();
                prop_assert_eq!(&d, &Record::End(Box::new(c.clone())));
                at += n;
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_valid_frame_around_a_random_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut buf = (body.len() as u32).to_le_bytes().to_vec();
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
            let _ = decode(&buf);
        }
    }
}
