//! The frames as typed values, borrowing their variable parts from the
//! bytes they were decoded from: [`Frame`] and its bodies, [`Payload`],
//! and the entries of a [`Batch`].

use super::decode::decode_batch_entry;
use super::kind;

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
    /// Capability bits the worker offers ([`CAP_RUNNING_PAGE`](super::CAP_RUNNING_PAGE)).
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
    pub(super) body: &'a [u8],
    pub(super) count: usize,
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
