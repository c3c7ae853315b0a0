//! The worker protocol's frame codec: pure functions from frames to bytes
//! and back, with no I/O, so that it can be fuzzed.
//!
//! The wire format is specified byte by byte in `docs/PROTOCOL.md`. In
//! short, every frame is
//!
//! ```text
//! u32 LE  body length (the bytes after this 5-byte header)
//! u8      frame type
//! [body]
//! ```
//!
//! and all integers are little-endian. [`decode`] takes a byte slice and
//! returns [`Decoded::Incomplete`] when more bytes are needed, or one
//! [`Frame`] borrowing from the slice, or a typed [`DecodeError`]. The
//! `encode_*` functions append one frame to a `Vec<u8>`; several frames
//! encoded into one buffer go out in one write, which is how both sides
//! batch.
//!
//! Payloads carry a one-byte kind: [`Payload::Inline`] bytes in the frame,
//! or (version 2, when the arena was granted) [`Payload::Arena`], an
//! `(offset, len)` reference into the worker's shared-memory arena
//! (`docs/PAYLOADS.md`).
//!
//! [`io`] adds buffered reading of whole frames from a stream.

pub mod io;

/// The protocol version this crate speaks (the highest it accepts).
pub const VERSION: u16 = 2;

/// The lowest protocol version a coordinator of this crate accepts: a
/// version-1 worker gets a version-1 WELCOME and no arena.
pub const MIN_VERSION: u16 = 1;

/// Environment variable naming the worker's payload arena, a shared memory
/// file for payloads above the threshold (`docs/PAYLOADS.md`).
pub const ARENA_FD_ENV: &str = "JOBMILL_ARENA_FD";

/// Capability bit (version 2): the worker maps the arena named by
/// [`ARENA_FD_ENV`] and accepts [`Payload::Arena`] references. Granted only
/// together with [`CAP_RUNNING_PAGE`] (the page carries the count of
/// consumed arena results).
pub const CAP_ARENA: u32 = 2;

/// Slot of the state page (a `u64`) where the coordinator counts the arena
/// results it has consumed, so the worker can reuse their space.
pub const RESULTS_CONSUMED_SLOT: usize = 1;

/// The four bytes every HELLO starts with.
pub const MAGIC: [u8; 4] = *b"JMWP";

/// Length of a frame header: `u32` body length and `u8` type.
pub const HEADER_LEN: usize = 5;

/// Default cap on a frame body, in bytes (64 MiB).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Environment variable naming the worker's protocol file descriptor.
pub const FD_ENV: &str = "JOBMILL_FD";

/// Environment variable naming the worker's state page, a shared memory
/// file where the worker keeps the id of the job it is running.
pub const STATE_FD_ENV: &str = "JOBMILL_STATE_FD";

/// Capability bit: the worker writes the id of the job it is running (0
/// when none) as a `u64` at offset 0 of the state page.
pub const CAP_RUNNING_PAGE: u32 = 1;

/// Frame type codes (the byte after the length).
pub mod kind {
    /// Worker → coordinator: magic, version, capabilities, name.
    pub const HELLO: u8 = 0x01;
    /// Coordinator → worker: the handshake is accepted.
    pub const WELCOME: u8 = 0x02;
    /// Coordinator → worker: the handshake is refused; the connection ends.
    pub const REFUSE: u8 = 0x03;
    /// Coordinator → worker: one job.
    pub const JOB: u8 = 0x10;
    /// Coordinator → worker: end of the answer to a POLL.
    pub const POLL_END: u8 = 0x11;
    /// Coordinator → worker: no more jobs will come.
    pub const CLOSED: u8 = 0x12;
    /// Worker → coordinator: a job's result.
    pub const RESULT: u8 = 0x20;
    /// Worker → coordinator: a job's failure.
    pub const FAILURE: u8 = 0x21;
    /// Worker → coordinator: RESULT and FAILURE frames in one frame.
    pub const BATCH: u8 = 0x22;
    /// Worker → coordinator: "my buffer is empty, send what you have".
    pub const POLL: u8 = 0x23;
    /// Worker → coordinator: "I am leaving; I took this many jobs".
    pub const LEAVING: u8 = 0x24;
    /// Either way: a sign of life.
    pub const HEARTBEAT: u8 = 0x30;
}

/// Payload kinds (the byte before a payload).
pub mod payload_kind {
    /// The payload's bytes follow, to the end of the frame.
    pub const INLINE: u8 = 0;
    /// Version 2: `u64 offset`, `u64 len` of a region of the worker's arena
    /// follow, ending the frame.
    pub const ARENA: u8 = 1;
}

/// A job's or result's payload as carried in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The bytes, inline in the frame.
    Inline(&'a [u8]),
    /// A region of the worker's shared-memory arena (version 2).
    Arena {
        /// Byte offset from the start of the arena file.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl<'a> Payload<'a> {
    /// The inline bytes, or `None` for an arena reference.
    pub fn inline(&self) -> Option<&'a [u8]> {
        match self {
            Payload::Inline(b) => Some(b),
            Payload::Arena { .. } => None,
        }
    }

    /// The payload's length in bytes, wherever it is.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Inline(b) => b.len() as u64,
            Payload::Arena { len, .. } => *len,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// HELLO: the worker's opening frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The protocol version the worker speaks.
    pub version: u16,
    /// Capability bits the worker offers ([`CAP_RUNNING_PAGE`]).
    pub capabilities: u32,
    /// Free-form name of the worker library, e.g. `rust/0.1` (for logs).
    pub name: &'a [u8],
}

/// WELCOME: the coordinator accepts the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The version both sides now speak.
    pub version: u16,
    /// Most jobs the coordinator keeps in flight to this worker.
    pub window: u32,
    /// Largest frame body the coordinator accepts from the worker.
    pub max_frame: u32,
    /// How often the worker should send a HEARTBEAT while alive, in
    /// milliseconds; 0 means never.
    pub heartbeat_ms: u32,
    /// Capability bits granted (a subset of those offered).
    pub capabilities: u32,
    /// Version 2 only (0 in version 1): payloads of at least this many bytes
    /// go through the arena, if granted.
    pub arena_threshold: u32,
    /// Version 2 only: length of the job area, at offset 0 of the arena
    /// (0 when the arena is not granted).
    pub arena_jobs: u64,
    /// Version 2 only: length of the result area, which follows the job
    /// area.
    pub arena_results: u64,
}

/// Length of a WELCOME body in version 1.
pub const WELCOME_V1_LEN: usize = 18;

/// Length of a WELCOME body from version 2 on.
pub const WELCOME_V2_LEN: usize = 38;

/// REFUSE: the coordinator rejects the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refuse<'a> {
    /// The version the coordinator speaks.
    pub version: u16,
    /// Why, in UTF-8 (not validated).
    pub reason: &'a [u8],
}

/// JOB: one job for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobFrame<'a> {
    /// The queue's job id; the worker answers with it.
    pub id: u64,
    /// The job's sequence number in input order, from 1.
    pub seq: u64,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The job's input.
    pub payload: Payload<'a>,
}

/// RESULT: a job succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultFrame<'a> {
    /// The job's id, as received in its JOB frame.
    pub id: u64,
    /// The result bytes.
    pub payload: Payload<'a>,
}

/// FAILURE: a job failed, by the worker's own verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureFrame<'a> {
    /// The job's id.
    pub id: u64,
    /// Why, in UTF-8 (not validated; shown lossily).
    pub message: &'a [u8],
}

/// One entry of a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEntry<'a> {
    /// A RESULT frame.
    Result(ResultFrame<'a>),
    /// A FAILURE frame.
    Failure(FailureFrame<'a>),
}

/// BATCH: a body made of complete RESULT and FAILURE frames, validated when
/// decoded. Iterate with [`Batch::iter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> Batch<'a> {
    /// The number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries, in order.
    pub fn iter(&self) -> BatchIter<'a> {
        BatchIter { rest: self.body }
    }
}

/// Iterator over the entries of a [`Batch`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = BatchEntry<'a>;

    fn next(&mut self) -> Option<BatchEntry<'a>> {
        // The body was validated when the batch was decoded, so an error
        // here cannot happen; stopping is the safe answer if it did.
        match decode_batch_entry(self.rest) {
            Ok(Some((entry, used))) => {
                self.rest = &self.rest[used..];
                Some(entry)
            }
            _ => None,
        }
    }
}

/// One decoded frame, borrowing its variable parts from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`Hello`].
    Hello(Hello<'a>),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Refuse`].
    Refuse(Refuse<'a>),
    /// See [`JobFrame`].
    Job(JobFrame<'a>),
    /// End of the coordinator's answer to a POLL: every job it had for the
    /// worker when the POLL arrived was sent before this frame.
    PollEnd,
    /// No more jobs will come: the queue is closed and drained (or the run
    /// is stopping). The worker finishes what it holds and exits.
    Closed,
    /// See [`ResultFrame`].
    Result(ResultFrame<'a>),
    /// See [`FailureFrame`].
    Failure(FailureFrame<'a>),
    /// See [`Batch`].
    Batch(Batch<'a>),
    /// The worker holds no unread job and asks for what is available.
    Poll,
    /// The worker is leaving of its own accord.
    Leaving {
        /// How many JOB frames the worker handed to its code, in order.
        /// Jobs sent after those were never started and are put back
        /// without counting an attempt.
        taken: u64,
    },
    /// A sign of life.
    Heartbeat {
        /// Any value (the sender's clock, a counter); ignored.
        nonce: u64,
    },
}

impl Frame<'_> {
    /// The frame's type code.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Welcome(_) => kind::WELCOME,
            Frame::Refuse(_) => kind::REFUSE,
            Frame::Job(_) => kind::JOB,
            Frame::PollEnd => kind::POLL_END,
            Frame::Closed => kind::CLOSED,
            Frame::Result(_) => kind::RESULT,
            Frame::Failure(_) => kind::FAILURE,
            Frame::Batch(_) => kind::BATCH,
            Frame::Poll => kind::POLL,
            Frame::Leaving { .. } => kind::LEAVING,
            Frame::Heartbeat { .. } => kind::HEARTBEAT,
        }
    }

    /// The frame type's name as in `docs/PROTOCOL.md`, for messages.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }
}

/// The name of a frame type code, or `"unknown"`.
pub fn kind_name(code: u8) -> &'static str {
    match code {
        kind::HELLO => "HELLO",
        kind::WELCOME => "WELCOME",
        kind::REFUSE => "REFUSE",
        kind::JOB => "JOB",
        kind::POLL_END => "POLL_END",
        kind::CLOSED => "CLOSED",
        kind::RESULT => "RESULT",
        kind::FAILURE => "FAILURE",
        kind::BATCH => "BATCH",
        kind::POLL => "POLL",
        kind::LEAVING => "LEAVING",
        kind::HEARTBEAT => "HEARTBEAT",
        _ => "unknown",
    }
}

/// Bytes that are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces a body longer than the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced body length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The type byte is not a known frame type.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The body does not match its frame type's layout.
    #[error("malformed {frame} frame: {detail}")]
    Malformed {
        /// The frame type's name.
        frame: &'static str,
        /// What is wrong.
        detail: &'static str,
    },
    /// A payload kind this version does not know.
    #[error("unknown payload kind {kind} in {frame} frame")]
    UnknownPayloadKind {
        /// The frame type's name.
        frame: &'static str,
        /// The kind byte.
        kind: u8,
    },
    /// A HELLO that does not start with the magic bytes: the peer does not
    /// speak this protocol at all.
    #[error("not a jobmill worker: HELLO does not start with \"JMWP\"")]
    BadMagic,
}

/// A frame too large to encode under the given cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the limit of {max} bytes")]
pub struct FrameTooLarge {
    /// The body length the frame would have.
    pub len: usize,
    /// The cap.
    pub max: usize,
}

/// What [`decode`] found at the start of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The input holds only part of a frame; at least `needed` bytes in
    /// total are required before trying again.
    Incomplete {
        /// Total bytes needed (header plus body once the header is known).
        needed: usize,
    },
    /// One complete frame, which took `len` bytes of the input.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes used, header included.
        len: usize,
    },
}

/// Reads the header at the start of `buf`: the total frame length (header
/// included), checked against `max_frame`, or `None` if fewer than
/// [`HEADER_LEN`] bytes are there.
///
/// # Errors
///
/// [`DecodeError::FrameTooLarge`] if the body length exceeds `max_frame`.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(Some(HEADER_LEN + len))
}

/// Decodes the frame at the start of `buf`, whose body may be at most
/// `max_frame` bytes.
///
/// # Errors
///
/// A [`DecodeError`] when the bytes cannot be a valid frame. The decoder
/// never panics, whatever the input.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Decoded<'_>, DecodeError> {
    let Some(total) = frame_len(buf, max_frame)? else {
        return Ok(Decoded::Incomplete { needed: HEADER_LEN });
    };
    if buf.len() < total {
        return Ok(Decoded::Incomplete { needed: total });
    }
    let frame = decode_body(buf[4], &buf[HEADER_LEN..total])?;
    Ok(Decoded::Frame { frame, len: total })
}

/// A little cursor over a frame body.
struct Body<'a> {
    rest: &'a [u8],
    frame: &'static str,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Malformed {
                frame: self.frame,
                detail: "body too short",
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn payload(&mut self) -> Result<Payload<'a>, DecodeError> {
        match self.u8()? {
            payload_kind::INLINE => Ok(Payload::Inline(std::mem::take(&mut self.rest))),
            payload_kind::ARENA => Ok(Payload::Arena {
                offset: self.u64()?,
                len: self.u64()?,
            }),
            other => Err(DecodeError::UnknownPayloadKind {
                frame: self.frame,
                kind: other,
            }),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed {
                frame: self.frame,
                detail: "trailing bytes after the body",
            })
        }
    }
}

fn decode_body(code: u8, body: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let name = kind_name(code);
    let mut b = Body {
        rest: body,
        frame: name,
    };
    let frame = match code {
        kind::HELLO => {
            if b.take(4).map_err(|_| DecodeError::BadMagic)? != MAGIC {
                return Err(DecodeError::BadMagic);
            }
            Frame::Hello(Hello {
                version: b.u16()?,
                capabilities: b.u32()?,
                name: b.rest(),
            })
        }
        kind::WELCOME => {
            let version = b.u16()?;
            let window = b.u32()?;
            let max_frame = b.u32()?;
            let heartbeat_ms = b.u32()?;
            let capabilities = b.u32()?;
            let (arena_threshold, arena_jobs, arena_results) = if version >= 2 {
                (b.u32()?, b.u64()?, b.u64()?)
            } else {
                (0, 0, 0)
            };
            Frame::Welcome(Welcome {
                version,
                window,
                max_frame,
                heartbeat_ms,
                capabilities,
                arena_threshold,
                arena_jobs,
                arena_results,
            })
        }
        kind::REFUSE => Frame::Refuse(Refuse {
            version: b.u16()?,
            reason: b.rest(),
        }),
        kind::JOB => Frame::Job(JobFrame {
            id: b.u64()?,
            seq: b.u64()?,
            attempt: b.u32()?,
            payload: b.payload()?,
        }),
        kind::POLL_END => Frame::PollEnd,
        kind::CLOSED => Frame::Closed,
        kind::RESULT => Frame::Result(ResultFrame {
            id: b.u64()?,
            payload: b.payload()?,
        }),
        kind::FAILURE => Frame::Failure(FailureFrame {
            id: b.u64()?,
            message: b.rest(),
        }),
        kind::BATCH => {
            let mut rest = b.rest();
            let mut count = 0usize;
            while !rest.is_empty() {
                match decode_batch_entry(rest)? {
                    Some((_, used)) => {
                        rest = &rest[used..];
                        count += 1;
                    }
                    None => {
                        return Err(DecodeError::Malformed {
                            frame: "BATCH",
                            detail: "an entry runs past the end of the batch",
                        })
                    }
                }
            }
            Frame::Batch(Batch { body, count })
        }
        kind::POLL => Frame::Poll,
        kind::LEAVING => Frame::Leaving { taken: b.u64()? },
        kind::HEARTBEAT => Frame::Heartbeat { nonce: b.u64()? },
        other => return Err(DecodeError::UnknownType(other)),
    };
    b.end()?;
    Ok(frame)
}

/// Decodes one entry at the start of a batch body: `None` when the entry is
/// cut short.
fn decode_batch_entry(buf: &[u8]) -> Result<Option<(BatchEntry<'_>, usize)>, DecodeError> {
    // Entries are bounded by the batch, itself bounded by the cap.
    match decode(buf, usize::MAX)? {
        Decoded::Incomplete { .. } => Ok(None),
        Decoded::Frame { frame, len } => match frame {
            Frame::Result(r) => Ok(Some((BatchEntry::Result(r), len))),
            Frame::Failure(f) => Ok(Some((BatchEntry::Failure(f), len))),
            _ => Err(DecodeError::Malformed {
                frame: "BATCH",
                detail: "an entry is neither RESULT nor FAILURE",
            }),
        },
    }
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

#[cfg(test)]
mod tests;
