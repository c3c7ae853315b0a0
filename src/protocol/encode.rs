//! Encoding: each function appends one frame to a `Vec<u8>`, checked
//! against a body cap ([`FrameTooLarge`], nothing appended), and
//! [`BatchBuilder`] builds a BATCH frame in place.

use super::{
    kind, payload_kind, Frame, Payload, HEADER_LEN, MAGIC, WELCOME_V1_LEN, WELCOME_V2_LEN,
};

/// A frame too large to encode under the given cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the limit of {max} bytes")]
pub struct FrameTooLarge {
    /// The body length the frame would have.
    pub len: usize,
    /// The cap.
    pub max: usize,
}

fn check(len: usize, max_frame: usize) -> Result<(), FrameTooLarge> {
    let max = max_frame.min(u32::MAX as usize);
    if len > max {
        Err(FrameTooLarge { len, max })
    } else {
        Ok(())
    }
}

fn header(out: &mut Vec<u8>, len: usize, code: u8) {
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(code);
}

/// Body length of a payload reference into the arena (kind byte included).
const ARENA_REF_LEN: usize = 1 + 8 + 8;

/// Body length of a JOB frame with an inline payload of `payload_len` bytes.
pub fn job_body_len(payload_len: usize) -> usize {
    8 + 8 + 4 + 1 + payload_len
}

/// Body length of a RESULT frame with an inline payload of `payload_len` bytes.
pub fn result_body_len(payload_len: usize) -> usize {
    8 + 1 + payload_len
}

/// Appends a JOB frame with an inline payload.
///
/// # Errors
///
/// [`FrameTooLarge`] (nothing appended) if the body would exceed `max_frame`.
pub fn encode_job(
    out: &mut Vec<u8>,
    id: u64,
    seq: u64,
    attempt: u32,
    payload: &[u8],
    max_frame: usize,
) -> Result<(), FrameTooLarge> {
    let len = job_body_len(payload.len());
    check(len, max_frame)?;
    out.reserve(HEADER_LEN + len);
    header(out, len, kind::JOB);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&attempt.to_le_bytes());
    out.push(payload_kind::INLINE);
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends a JOB frame whose payload is the arena region `offset`, `len`
/// (version 2).
pub fn encode_job_arena(out: &mut Vec<u8>, id: u64, seq: u64, attempt: u32, offset: u64, len: u64) {
    header(out, 8 + 8 + 4 + ARENA_REF_LEN, kind::JOB);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&attempt.to_le_bytes());
    push_arena_ref(out, offset, len);
}

fn push_arena_ref(out: &mut Vec<u8>, offset: u64, len: u64) {
    out.push(payload_kind::ARENA);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

/// Appends a RESULT frame whose payload is the arena region `offset`, `len`
/// (version 2).
pub fn encode_result_arena(out: &mut Vec<u8>, id: u64, offset: u64, len: u64) {
    header(out, 8 + ARENA_REF_LEN, kind::RESULT);
    out.extend_from_slice(&id.to_le_bytes());
    push_arena_ref(out, offset, len);
}

/// Appends a RESULT frame with an inline payload.
///
/// # Errors
///
/// [`FrameTooLarge`] (nothing appended) if the body would exceed `max_frame`.
pub fn encode_result(
    out: &mut Vec<u8>,
    id: u64,
    payload: &[u8],
    max_frame: usize,
) -> Result<(), FrameTooLarge> {
    let len = result_body_len(payload.len());
    check(len, max_frame)?;
    out.reserve(HEADER_LEN + len);
    header(out, len, kind::RESULT);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(payload_kind::INLINE);
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends a FAILURE frame.
///
/// # Errors
///
/// [`FrameTooLarge`] (nothing appended) if the body would exceed `max_frame`.
pub fn encode_failure(
    out: &mut Vec<u8>,
    id: u64,
    message: &[u8],
    max_frame: usize,
) -> Result<(), FrameTooLarge> {
    let len = 8 + message.len();
    check(len, max_frame)?;
    header(out, len, kind::FAILURE);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(message);
    Ok(())
}

/// Appends a frame with an empty body (POLL_END, CLOSED or POLL) given its
/// type code.
pub fn encode_empty(out: &mut Vec<u8>, code: u8) {
    header(out, 0, code);
}

/// Appends any frame.
///
/// # Errors
///
/// [`FrameTooLarge`] (nothing appended) if the body would exceed `max_frame`.
pub fn encode(out: &mut Vec<u8>, frame: &Frame<'_>, max_frame: usize) -> Result<(), FrameTooLarge> {
    match frame {
        Frame::Hello(h) => {
            let len = 4 + 2 + 4 + h.name.len();
            check(len, max_frame)?;
            header(out, len, kind::HELLO);
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&h.version.to_le_bytes());
            out.extend_from_slice(&h.capabilities.to_le_bytes());
            out.extend_from_slice(h.name);
        }
        Frame::Welcome(w) => {
            let len = if w.version >= 2 {
                WELCOME_V2_LEN
            } else {
                WELCOME_V1_LEN
            };
            check(len, max_frame)?;
            header(out, len, kind::WELCOME);
            out.extend_from_slice(&w.version.to_le_bytes());
            out.extend_from_slice(&w.window.to_le_bytes());
            out.extend_from_slice(&w.max_frame.to_le_bytes());
            out.extend_from_slice(&w.heartbeat_ms.to_le_bytes());
            out.extend_from_slice(&w.capabilities.to_le_bytes());
            if w.version >= 2 {
                out.extend_from_slice(&w.arena_threshold.to_le_bytes());
                out.extend_from_slice(&w.arena_jobs.to_le_bytes());
                out.extend_from_slice(&w.arena_results.to_le_bytes());
            }
        }
        Frame::Refuse(r) => {
            let len = 2 + r.reason.len();
            check(len, max_frame)?;
            header(out, len, kind::REFUSE);
            out.extend_from_slice(&r.version.to_le_bytes());
            out.extend_from_slice(r.reason);
        }
        Frame::Job(j) => match j.payload {
            Payload::Inline(p) => encode_job(out, j.id, j.seq, j.attempt, p, max_frame)?,
            Payload::Arena { offset, len } => {
                check(8 + 8 + 4 + ARENA_REF_LEN, max_frame)?;
                encode_job_arena(out, j.id, j.seq, j.attempt, offset, len);
            }
        },
        Frame::Result(r) => match r.payload {
            Payload::Inline(p) => encode_result(out, r.id, p, max_frame)?,
            Payload::Arena { offset, len } => {
                check(8 + ARENA_REF_LEN, max_frame)?;
                encode_result_arena(out, r.id, offset, len);
            }
        },
        Frame::Failure(f) => encode_failure(out, f.id, f.message, max_frame)?,
        Frame::Batch(b) => {
            check(b.body.len(), max_frame)?;
            header(out, b.body.len(), kind::BATCH);
            out.extend_from_slice(b.body);
        }
        Frame::PollEnd | Frame::Closed | Frame::Poll => encode_empty(out, frame.kind()),
        Frame::Leaving { taken: n } | Frame::Heartbeat { nonce: n } => {
            header(out, 8, frame.kind());
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    Ok(())
}

/// Builds a BATCH frame in place at the end of a buffer: [`begin`] writes a
/// placeholder header, each `push_*` appends one entry, [`finish`] writes the
/// length (or removes the header again if the batch stayed empty).
///
/// [`begin`]: BatchBuilder::begin
/// [`finish`]: BatchBuilder::finish
#[derive(Debug)]
pub struct BatchBuilder {
    start: usize,
    count: usize,
    max_frame: usize,
}

impl BatchBuilder {
    /// Starts a batch at the end of `out`, whose body may be at most
    /// `max_frame` bytes.
    pub fn begin(out: &mut Vec<u8>, max_frame: usize) -> BatchBuilder {
        let start = out.len();
        header(out, 0, kind::BATCH);
        BatchBuilder {
            start,
            count: 0,
            max_frame: max_frame.min(u32::MAX as usize),
        }
    }

    /// Bytes in the batch body so far.
    pub fn body_len(&self, out: &[u8]) -> usize {
        out.len() - self.start - HEADER_LEN
    }

    /// Entries so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether a RESULT with an inline payload of `payload_len` bytes still
    /// fits under the cap.
    pub fn fits_result(&self, out: &[u8], payload_len: usize) -> bool {
        self.body_len(out) + HEADER_LEN + result_body_len(payload_len) <= self.max_frame
    }

    /// Whether a FAILURE with a message of `message_len` bytes still fits.
    pub fn fits_failure(&self, out: &[u8], message_len: usize) -> bool {
        self.body_len(out) + HEADER_LEN + 8 + message_len <= self.max_frame
    }

    /// Appends a RESULT entry.
    ///
    /// # Errors
    ///
    /// [`FrameTooLarge`] (nothing appended) if the batch would exceed its cap.
    pub fn push_result(
        &mut self,
        out: &mut Vec<u8>,
        id: u64,
        payload: &[u8],
    ) -> Result<(), FrameTooLarge> {
        if !self.fits_result(out, payload.len()) {
            return Err(FrameTooLarge {
                len: self.body_len(out) + HEADER_LEN + result_body_len(payload.len()),
                max: self.max_frame,
            });
        }
        encode_result(out, id, payload, usize::MAX)?;
        self.count += 1;
        Ok(())
    }

    /// Appends a RESULT entry whose payload is the arena region `offset`,
    /// `len` (version 2).
    ///
    /// # Errors
    ///
    /// [`FrameTooLarge`] (nothing appended) if the batch would exceed its cap.
    pub fn push_result_arena(
        &mut self,
        out: &mut Vec<u8>,
        id: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), FrameTooLarge> {
        let entry = HEADER_LEN + 8 + ARENA_REF_LEN;
        if self.body_len(out) + entry > self.max_frame {
            return Err(FrameTooLarge {
                len: self.body_len(out) + entry,
                max: self.max_frame,
            });
        }
        encode_result_arena(out, id, offset, len);
        self.count += 1;
        Ok(())
    }

    /// Appends a FAILURE entry.
    ///
    /// # Errors
    ///
    /// [`FrameTooLarge`] (nothing appended) if the batch would exceed its cap.
    pub fn push_failure(
        &mut self,
        out: &mut Vec<u8>,
        id: u64,
        message: &[u8],
    ) -> Result<(), FrameTooLarge> {
        if !self.fits_failure(out, message.len()) {
            return Err(FrameTooLarge {
                len: self.body_len(out) + HEADER_LEN + 8 + message.len(),
                max: self.max_frame,
            });
        }
        encode_failure(out, id, message, usize::MAX)?;
        self.count += 1;
        Ok(())
    }

    /// Completes the frame. An empty batch is removed from `out` entirely.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.count == 0 {
            out.truncate(self.start);
            return;
        }
        let len = (self.body_len(out) as u32).to_le_bytes();
        out[self.start..self.start + 4].copy_from_slice(&len);
    }
}
